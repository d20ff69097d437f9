"""kfi_core.evaluation.baselines and the bench/results.py smoke run."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kfi_core.errors import InputMismatchError, KeyframeError, UnknownNameError
from kfi_core.evaluation.baselines import (
    BASELINES,
    flow_warp,
    keyframe_colour_fill,
    keyframe_paste,
    mean_fill,
    nearest_keyframe,
    telea_fill,
    vae_ceiling,
)
from kfi_core.evaluation.metrics import psnr
from kfi_core.evaluation.procedural import ProceduralConfig, make_procedural_clip

ROOT = Path(__file__).resolve().parents[1]


def _clip(task="removal", seed=0, **knobs):
    return make_procedural_clip(task, 6, 64, 64, seed=seed, config=ProceduralConfig(**knobs) if knobs else None)


@pytest.mark.parametrize("name", list(BASELINES))
@pytest.mark.parametrize("task", ["removal", "edit"])
def test_outside_the_mask_every_baseline_returns_the_input(name, task):
    c = _clip(task, seed=1)
    fn, needs_keyframes = BASELINES[name]
    out = fn(c.frames, c.masks, c.keyframes if needs_keyframes else None)
    assert out.shape == c.frames.shape and torch.isfinite(out).all()
    outside = (c.masks == 0).expand_as(out)
    assert torch.equal(out[outside], c.frames[outside])
    # and the hole was filled with something else than the input
    assert not torch.equal(out[~outside], c.frames[~outside])


def test_mean_fill_is_the_analytic_mean():
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(3, 3, 16, 20, generator=g)
    masks = torch.zeros(3, 1, 16, 20)
    masks[0, :, 4:9, 5:12] = 1
    masks[1, :, :, :10] = 1
    masks[2] = 1  # no known pixel: 0.5 grey
    out = mean_fill(frames, masks)
    for t in range(2):
        known = masks[t, 0] == 0
        expected = frames[t][:, known].double().mean(dim=1)  # [3]
        hole = out[t][:, masks[t, 0] == 1]
        assert torch.allclose(hole.double(), expected[:, None].expand_as(hole), atol=1e-6)
    assert torch.equal(out[2], torch.full_like(out[2], 0.5))


def test_keyframe_paste_reproduces_the_keyframe_at_its_index_and_nearest_elsewhere():
    c = _clip("edit", seed=2)
    k = c.keyframe_index
    out = keyframe_paste(c.frames, c.masks, c.keyframes)
    hole = c.masks[k, 0] == 1
    assert torch.equal(out[k][:, hole], c.keyframe[:, hole])
    second = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    out2 = keyframe_paste(c.frames, c.masks, {0: c.keyframe, 5: second})
    hole4 = c.masks[4, 0] == 1
    assert torch.equal(out2[4][:, hole4], second[:, hole4])  # frame 4 is nearer to 5 than to 0
    assert nearest_keyframe(2, [0, 4]) == 0 and nearest_keyframe(3, [0, 4]) == 4


def test_keyframe_colour_fill_puts_the_keyframes_colour_in_every_hole():
    """Analytic: a flat object of colour a moves over a random background; the keyframe (frame 0) shows it recoloured
    to b. Every hole (the object's, grown) is filled with the keyframe's mean inside its own frame's mask, exactly;
    with that mask empty, the keyframe's mean under the frame's own hole; the nearest keyframe wins."""
    g = torch.Generator().manual_seed(0)
    n, h, w = 5, 24, 32
    frames = torch.rand(n, 3, h, w, generator=g)
    masks = torch.zeros(n, 1, h, w)
    a, b = torch.tensor([0.9, 0.1, 0.2]), torch.tensor([0.1, 0.3, 0.8])
    for t in range(n):
        masks[t, :, 6:14, 2 + 3 * t : 10 + 3 * t] = 1
        frames[t][:, masks[t, 0] == 1] = a[:, None]
    keyframe = frames[0].clone()
    keyframe[:, masks[0, 0] == 1] = b[:, None]
    out = keyframe_colour_fill(frames, masks, {0: keyframe})
    for t in range(n):
        hole = masks[t, 0] == 1
        torch.testing.assert_close(out[t][:, hole], b[:, None].expand(3, int(hole.sum())))
        assert torch.equal(out[t][:, ~hole], frames[t][:, ~hole])
    assert torch.equal(out[0], keyframe)  # the keyframe frame is the keyframe
    # the keyframe's frame unmasked (a keyframe the user gave where nothing was masked): its pixels under each hole
    empty = masks.clone()
    empty[0] = 0
    out = keyframe_colour_fill(frames, empty, {0: keyframe})
    for t in range(1, n):
        hole = empty[t, 0] == 1
        expected = keyframe[:, hole].mean(dim=1)
        torch.testing.assert_close(out[t][:, hole], expected[:, None].expand(3, int(hole.sum())))
    # two keyframes: frame 4 takes the nearer one's colour
    other = frames[4].clone()
    other[:, masks[4, 0] == 1] = a[:, None] * 0.5
    out = keyframe_colour_fill(frames, masks, {0: keyframe, 4: other})
    torch.testing.assert_close(out[3][:, masks[3, 0] == 1], (a * 0.5)[:, None].expand(3, 64))
    with pytest.raises(KeyframeError, match="keyframe_colour_fill: needs at least one keyframe"):
        keyframe_colour_fill(frames, masks, None)


@pytest.mark.parametrize("texture", ["stripes", "noise", "mixed"])
def test_flow_warp_recovers_a_translating_clip(texture):
    """Pure camera translation (1 px/frame, constant light, no distractor): warping the clean keyframe by
    the known-region flow gives the background in the hole. Tolerance 27 dB: sub-pixel flow error and
    bilinear resampling of textures with 8-px periods; measured 33-48 dB on these seeds. Paste is wrong
    by the pan (under 25 dB), so the warp must beat it by 5 dB."""
    c = make_procedural_clip(
        "removal",
        8,
        64,
        64,
        seed=5,
        config=ProceduralConfig(
            texture=texture, texture_period=8.0, pan=(1.0, 0.0), distractor=False, lighting_change=0.0
        ),
    )
    scored = c.masks.clone()
    scored[c.keyframe_index] = 0  # the keyframe's own hole is given
    warped = psnr(flow_warp(c.frames, c.masks, c.keyframes, region="known"), c.ground_truth, scored)
    pasted = psnr(keyframe_paste(c.frames, c.masks, c.keyframes), c.ground_truth, scored)
    assert warped > 27.0
    assert warped > pasted + 5.0


def test_telea_fills_the_hole():
    c = _clip("removal", seed=3)
    out = telea_fill(c.frames, c.masks)
    hole = (c.masks == 1).expand_as(out)
    assert torch.isfinite(out).all()
    assert float((out[hole] - c.frames[hole]).abs().mean()) > 0.02
    # the fill comes from the surroundings: closer to the ground truth than the object was
    assert psnr(out, c.ground_truth, c.masks) > psnr(c.frames, c.ground_truth, c.masks)


def test_keyframe_baselines_need_keyframes_and_check_them():
    c = _clip()
    with pytest.raises(KeyframeError, match="keyframe"):
        keyframe_paste(c.frames, c.masks, None)
    with pytest.raises(KeyframeError, match="outside the clip"):
        flow_warp(c.frames, c.masks, {6: c.keyframe})
    with pytest.raises(UnknownNameError, match="region"):
        flow_warp(c.frames, c.masks, c.keyframes, region="inside")
    with pytest.raises(InputMismatchError, match="masks"):
        mean_fill(c.frames, c.masks[:4])


def test_vae_ceiling_is_the_vae_reconstruction_in_the_hole(tiny_components):
    c = _clip()
    vae = tiny_components["vae"]
    out = vae_ceiling(vae, c.ground_truth, c.masks, frames=c.frames)
    outside = (c.masks == 0).expand_as(out)
    assert torch.equal(out[outside], c.frames[outside])
    assert torch.isfinite(out).all() and not torch.equal(out[~outside], c.ground_truth[~outside])


@pytest.mark.slow
def test_results_script_smoke(tmp_path):
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "results.py"),
            "--clips",
            "1",
            "--frames",
            "4",
            "--steps",
            "1",
            "--no-real",
            "--tiny",
            "--difficulty",
            "medium",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "UNTRAINED" in text and "Seeds 1000000..1000000" in text
    for row in ("mean fill", "Telea", "keyframe paste", "flow warp", "training-free, keyframe", "VAE ceiling"):
        assert row in text
    assert text.count("| method |") == 3  # removal, and the edit as a recolour and as a texture swap
    assert "## Edit propagation, recolour (procedural, medium)" in text
    assert "## Edit propagation, texture swap (procedural, medium)" in text
    for name in ("removal", "edit-recolour", "edit-checker"):
        assert (tmp_path / "results" / f"{name}-medium.png").stat().st_size > 1000


@pytest.mark.slow
def test_results_script_defaults_to_the_demo_model_and_summarises(tmp_path):
    import re

    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "results.py"),
            "--clips",
            "1",
            "--steps",
            "2",
            "--no-real",
            "--difficulty",
            "easy",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "kfi_core/assets/demo_model" in text and "UNTRAINED" not in text
    for row in ("KFI adapter, keyframe", "KFI adapter, no keyframe", "training-free, no keyframe"):
        assert text.count(f"| {row} |") == 3, row  # in every task: removal, recolour, texture swap
    assert "removal adapter `kfi_core/assets/demo_model/adapter-removal.safetensors`" in text
    removal_table = text.split("## Object removal (procedural, easy)")[1].split("\n## ")[0]
    for row in ("KFI removal adapter, keyframe", "KFI removal adapter, no keyframe + colour match"):
        assert text.count(f"| {row} |") == 1 and f"| {row} |" in removal_table, row  # the removal table's alone
    for row in (
        "KFI adapter, keyframe + colour match",
        "training-free, keyframe + colour match",
        "VAE ceiling (reference) + colour match",
    ):
        assert text.count(f"| {row} |") == 3, row  # the colour-matched variants (--color-match affine by default)
    summary = text.split("## Summary, easy clips")[1].split("\n## ")[0]
    assert "Edit propagation (recolour)" in summary and "Edit propagation (texture swap)" in summary
    assert "against KFI without the keyframe" in summary
    assert "mean-colour fill" in summary and "ceiling" in summary
    # the removal verdict judges the removal adapter's rows, with their own numbers
    verdict = next(x for x in summary.splitlines() if x.startswith("- **Removal, raw model output**"))
    removal_nokf = re.search(r"\| KFI removal adapter, no keyframe \| [^|]+\| ([0-9.]+) \|", text).group(1)
    assert f"KFI (removal adapter) {removal_nokf} dB in the mask" in verdict
    assert "raw model output" in summary and "with colour matching" in summary
    # --num-samples 4 (the default): the removal adapter's mean of samples, in the removal table alone, and its
    # line under each removal verdict quotes that row's number
    for row in (
        "KFI removal adapter, no keyframe, mean of 4 samples",
        "KFI removal adapter, keyframe, mean of 4 samples",
        "KFI removal adapter, no keyframe, mean of 4 samples + colour match",
    ):
        assert text.count(f"| {row} |") == 1 and f"| {row} |" in removal_table, row
    for row, variant in (
        ("no keyframe, mean of 4 samples", "raw model output"),
        ("no keyframe, mean of 4 samples + colour match", "with colour matching"),
    ):
        number = re.search(rf"\| KFI removal adapter, {re.escape(row)} \| [^|]+\| ([0-9.]+) \|", text).group(1)
        block = summary.split(f"- **Removal, {variant}**")[1].split("\n- **")[0]
        assert (
            f"**no keyframe, mean of 4 samples** (num_samples; lower error, softer fill): KFI (removal adapter) "
            f"{number} dB against mean-colour fill" in block
        ), (row, block)
    assert "| chroma gain mask | s/clip |" in text
    assert "Colour through the VAE" in summary  # the measured chroma gain of the ceiling beside KFI's
    assert text.count("| keyframe colour fill |") == 3  # in every task
    # the edit's headroom, computed: the keyframe colour fill and the ceiling against KFI without the keyframe
    assert "Room the keyframe leaves (recolour)" in summary and "over KFI without the keyframe" in summary
    assert "Room the keyframe leaves (texture swap)" in summary


def test_results_script_task_and_pattern_choices(capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    from results import parse_args, procedural_sections

    args = parse_args(["--tasks", "edit", "--edit-patterns", "checker"])
    assert [(key, task, pattern) for key, task, pattern, _, _ in procedural_sections(args)] == [
        ("edit/checker", "edit", "checker")
    ]
    args = parse_args([])
    assert [key for key, *_ in procedural_sections(args)] == ["removal", "edit/recolour", "edit/checker"]
    for flag, value, name in (("--edit-patterns", "plaid", "--edit-patterns"), ("--tasks", "paint", "--tasks")):
        with pytest.raises(SystemExit):
            parse_args([flag, value])
        assert f"{name}: got {value!r}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--num-samples", "0"])
    assert "--num-samples must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # removal rows stand beside the KFI adapter's rows: both or neither
        parse_args(["--model", "m", "--removal-adapter", "r.safetensors"])
    assert "--removal-adapter: given without --adapter" in capsys.readouterr().err
    args = parse_args(["--model", "m", "--adapter", "a.safetensors", "--removal-adapter", "r.safetensors"])
    assert args.removal_adapter == "r.safetensors"


def test_results_texture_period_overrides_the_presets(capsys):
    """--texture-period P: every procedural clip is the preset's with texture_period P (background and target), the
    same clip make_procedural_clip gives for that config; without it, the preset's own; below 2 px it is refused."""
    sys.path.insert(0, str(ROOT / "bench"))
    from results import EVAL_SEED_BASE, parse_args, procedural_clips

    from kfi_core.evaluation.procedural import with_config

    args = parse_args(["--clips", "1", "--texture-period", "24"])
    clip = procedural_clips("edit", "easy", args, "recolour")[0]
    cfg = with_config(ProceduralConfig.preset("easy"), keyframe_index=0, edit_pattern="recolour", texture_period=24.0)
    want = make_procedural_clip("edit", 8, 64, 64, seed=EVAL_SEED_BASE, config=cfg)
    assert torch.equal(clip["frames"], want.frames) and torch.equal(clip["ground_truth"], want.ground_truth)
    default = procedural_clips("edit", "easy", parse_args(["--clips", "1"]), "recolour")[0]
    assert ProceduralConfig.preset("easy").texture_period != 24.0
    assert not torch.equal(default["frames"], clip["frames"])  # the option changes the clips
    for value in ("1.5", "nan"):
        with pytest.raises(SystemExit):
            parse_args(["--texture-period", value])
        assert "--texture-period: got" in capsys.readouterr().err


@pytest.mark.slow
def test_results_verdict_clips_judge_the_edit_on_more_clips(tmp_path, capsys):
    """--verdict-clips N: the edit summary's verdict compares its three rows on N clips (the table's first), each row's
    number the mean over those clips of the same method scored one clip at a time; the table keeps its own clips."""
    import re

    sys.path.insert(0, str(ROOT / "bench"))
    from results import methods_for, parse_args, procedural_clips, score

    from kfi_core.bundled import DEMO_ADAPTER, DEMO_MODEL_DIR
    from kfi_core.model.loading import load_kfi_model

    out = tmp_path / "RESULTS.md"
    argv = [
        "--clips",
        "1",
        "--verdict-clips",
        "3",
        "--steps",
        "1",
        "--no-real",
        "--difficulty",
        "easy",
        "--tasks",
        "edit",
        "--edit-patterns",
        "recolour",
        "--color-match",
        "none",
        "--out",
        str(out),
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "results.py"), *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "**Verdict clips**" in text and "seeds 1000000..1000002" in text
    line = next(x for x in text.splitlines() if x.startswith("- **Edit propagation (recolour), raw model output"))
    assert line.startswith("- **Edit propagation (recolour), raw model output, 3 clips**")
    verdict_kf = float(re.search(r"reaches ([0-9.]+) dB", line).group(1))
    table_kf = float(re.search(r"\| KFI adapter, keyframe \| [^|]+\| ([0-9.]+) \|", text).group(1))

    args = parse_args(argv)
    model, adapter = load_kfi_model(DEMO_MODEL_DIR), load_kfi_model(DEMO_MODEL_DIR, adapter=DEMO_ADAPTER)
    run = dict(methods_for("edit", model, adapter, args))["KFI adapter, keyframe"]
    clips = procedural_clips("edit", "easy", args, "recolour", count=3)
    values = [score(run(c).float().clamp(0, 1), c)["psnr_mask"] for c in clips]
    assert verdict_kf == pytest.approx(sum(values) / 3, abs=0.006)
    assert table_kf == pytest.approx(values[0], abs=0.006)  # the table: its one clip, the verdict's first
    assert text.count("of 3 clips") == 2  # both comparisons of the raw verdict, paired over the 3 clips
    with pytest.raises(SystemExit):
        parse_args(["--clips", "6", "--verdict-clips", "6"])
    assert "--verdict-clips: got 6 with --clips 6" in capsys.readouterr().err


def test_results_keyframe_colour_match_rows_fit_on_the_decoded_keyframe(tiny_model_dir):
    """--color-match keyframe: a keyframe row's colour-matched output is the executor's own (inpaint with composite and
    colour matching on), which fits the decoded keyframe to the given one; the raw output holds the given keyframe,
    on which that fit would be the identity. Without a keyframe the mode falls back to the ring fit of the raw row."""
    from kfi_testing import load_with_random_adapter

    sys.path.insert(0, str(ROOT / "bench"))
    from results import methods_for, parse_args, sampling_settings

    from kfi_core.inference.condition import prepare_clip
    from kfi_core.inference.executor import inpaint
    from kfi_core.model.loading import load_kfi_model

    args = parse_args(["--steps", "1", "--color-match", "keyframe"])
    model, adapter = load_kfi_model(tiny_model_dir), load_with_random_adapter(tiny_model_dir)
    c = make_procedural_clip("edit", 8, 64, 64, seed=2)
    clip = {
        "name": "c",
        "frames": c.frames,
        "masks": c.masks,
        "ground_truth": c.ground_truth,
        "keyframe_index": 0,
        "keyframe": c.keyframe,
    }
    rows = dict(methods_for("edit", model, adapter, args))
    for m, label in ((model, "training-free, keyframe"), (adapter, "KFI adapter, keyframe")):
        matched, raw = rows[f"{label} + colour match"](clip), rows[label](clip)
        inputs = prepare_clip(c.frames, c.masks, keyframes=c.keyframe[None], keyframe_indices=[0])
        expected = inpaint(m, inputs, replace(sampling_settings(args), composite=True, color_match="keyframe"))
        assert torch.equal(matched, expected), label
        assert not torch.equal(matched, raw), label  # the random model's decoder drifts: the fit is not the identity
        keep = c.masks.expand_as(c.frames) < 0.5
        assert torch.equal(matched[keep], c.frames[keep])  # outside the hole the input, exactly
    assert rows["KFI adapter, no keyframe + colour match"](clip).shape == c.frames.shape


def test_edit_summary_calls_only_a_clear_margin_a_carried_edit():
    sys.path.insert(0, str(ROOT / "bench"))
    from results import CLEAR_GAIN_DB, edit_verdict

    assert edit_verdict(14.0, 13.0, 13.2) == "carries the edit"
    assert edit_verdict(14.0, 13.9, 13.2).startswith("does NOT yet carry the edit: ahead of both, by less than")
    assert edit_verdict(14.0, 14.1, 13.0) == "does NOT yet carry the edit"
    assert edit_verdict(14.0, 14.0 - CLEAR_GAIN_DB, 14.0 - CLEAR_GAIN_DB) == "carries the edit"


def test_edit_summary_counts_the_clips_each_side_wins():
    import numpy as np

    sys.path.insert(0, str(ROOT / "bench"))
    from results import _compare, _paired

    # per-clip differences +1, +2, -0.5: two wins of three, mean +0.83, standard error std(ddof=1)/sqrt(3)
    text = _paired([11.0, 12.0, 9.5], [10.0, 10.0, 10.0])
    expected_se = float(np.std([1.0, 2.0, -0.5], ddof=1) / np.sqrt(3))
    assert "higher on 2 of 3 clips" in text and "+0.83" in text and f"+- {expected_se:.2f} dB" in text
    assert _paired([1.0], [2.0]) == "; higher on 0 of 1 clips, per-clip difference -1.00 dB (mean +- standard error)"
    assert _paired(None, [1.0]) == "" and _paired([1.0, 2.0], [1.0]) == ""  # no per-clip data or mismatched clips
    assert _paired([1.0, None], [1.0, 2.0]) == "" and _paired([float("inf"), 2.0], [1.0, 2.0]) == ""
    a = {"psnr_mask": 12.0, "mse_mask": 0.01, "psnr_mask_clips": [11.0, 13.0]}
    b = {"psnr_mask": 11.0, "mse_mask": 0.02, "psnr_mask_clips": [12.0, 10.0]}
    assert _compare(a, b).startswith("+1.00 dB; in-mask MSE 0.0100 against 0.0200 (2.00x lower); higher on 1 of 2")
