"""`python -m kfi_core inpaint` and `demo` end to end on the tiny model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from kfi_core.bundled import SAMPLE_DIR, make_sample_clip
from kfi_core.media.video import read_frames, read_masks, write_frames


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "kfi_core", *map(str, args)], capture_output=True, text=True, check=False, cwd=cwd
    )


def test_bundled_sample_matches_its_generator():
    clip = make_sample_clip()
    frames, _ = read_frames(SAMPLE_DIR / "frames")
    masks = read_masks(SAMPLE_DIR / "masks")
    assert torch.equal(frames, (clip["frames"] * 255).round() / 255)
    assert torch.equal(masks, clip["masks"])


@pytest.mark.slow
def test_inpaint_png_folders_keeps_unmasked_pixels(tmp_path, tiny_model_dir):
    out = tmp_path / "result"
    proc = run_cli(
        "inpaint",
        "--model",
        tiny_model_dir,
        "--video",
        SAMPLE_DIR / "frames",
        "--mask",
        SAMPLE_DIR / "masks",
        "--out",
        out,
        "--steps",
        "2",
        "--preview",
        tmp_path / "p.png",
        "--num-samples",
        "2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames, _ = read_frames(SAMPLE_DIR / "frames")
    masks = read_masks(SAMPLE_DIR / "masks")
    result, _ = read_frames(out)
    keep = (masks == 0).expand_as(frames)
    assert result.shape == frames.shape
    assert torch.equal(result[keep], frames[keep]), "PNG output is lossless: unmasked pixels are the input's"
    assert (tmp_path / "p.png").is_file()
    assert "step" in proc.stderr  # the progress bar
    assert "4/4" in proc.stderr, "progress counts both samples' steps (--num-samples 2, one window, 2 steps)"
    assert not torch.equal(result[~keep], frames[~keep])


@pytest.mark.slow
def test_inpaint_mp4_with_a_keyframe_and_a_single_mask_image(tmp_path, tiny_model_dir):
    clip = make_sample_clip()
    write_frames(clip["frames"], tmp_path / "in.mp4", fps=10)
    write_frames(clip["masks"][3:4].expand(-1, 3, -1, -1), tmp_path / "mask.png")
    write_frames(clip["ground_truth"][2:3], tmp_path / "edit.png")
    proc = run_cli(
        "inpaint",
        "--model",
        tiny_model_dir,
        "--video",
        tmp_path / "in.mp4",
        "--mask",
        tmp_path / "mask.png",
        "--keyframe",
        tmp_path / "edit.png",
        "--keyframe-index",
        2,
        "--out",
        tmp_path / "out.mp4",
        "--steps",
        "2",
        "--sampler",
        "heun",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result, fps = read_frames(tmp_path / "out.mp4")
    assert result.shape == clip["frames"].shape and fps == pytest.approx(10)
    # the keyframe is reproduced (up to the codec)
    assert (result[2] - clip["ground_truth"][2]).abs().mean() < 0.03


@pytest.mark.slow
def test_any_size_runs_at_the_native_size_and_comes_back(tmp_path, tiny_model_dir):
    """A 70x60 clip (no side a multiple of the tiny model's 8): refused only when asked to run at its own size; by
    default it runs at the model's native 64x64 and comes back at 70x60, exact outside the mask; --width/--height
    choose the working size; --offload model gives the same frames."""
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(4, 3, 60, 70, generator=g)
    write_frames(frames, tmp_path / "odd")
    m = torch.zeros(1, 3, 60, 70)
    m[..., 20:40, 20:40] = 1
    write_frames(m, tmp_path / "m.png")
    base = ["inpaint", "--model", tiny_model_dir, "--video", tmp_path / "odd", "--mask", tmp_path / "m.png"]
    refused = run_cli(*base, "--out", tmp_path / "o", "--steps", "1", "--working-size", "input")
    assert refused.returncode == 2 and "multiples of 8" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "o").exists()
    inp, _ = read_frames(tmp_path / "odd")
    keep = (m[:, :1] == 0).expand(4, 3, -1, -1)
    results = {}
    for name, extra in {
        "native": [],
        "offload": ["--offload", "model"],
        "custom": ["--width", "32", "--height", "48"],
    }.items():
        ok = run_cli(*base, "--out", tmp_path / name, "--steps", "1", *extra)
        assert ok.returncode == 0, ok.stderr[-3000:]
        result, _ = read_frames(tmp_path / name)
        assert result.shape == (4, 3, 60, 70), "the output goes back to the input size"
        assert torch.equal(result[keep], inp[keep])
        results[name] = result
    assert torch.equal(results["offload"], results["native"])
    assert not torch.equal(results["custom"], results["native"]), "another working size, another fill"


@pytest.mark.slow
def test_clear_errors(tmp_path, tiny_model_dir):
    write_frames(make_sample_clip()["frames"][:1], tmp_path / "kf.png")
    cases = [
        (["--mask", SAMPLE_DIR / "masks", "--keyframe", tmp_path / "kf.png"], "0 indices for 1 --keyframe"),
        (
            ["--mask", SAMPLE_DIR / "masks", "--keyframe", tmp_path / "kf.png", "--keyframe-index", "12"],
            "got 12 for a clip of 8 frames",
        ),
        (["--mask", tmp_path / "missing.png"], "no such file"),
        (["--mask", SAMPLE_DIR / "masks", "--sampler", "ddim"], "choose one of euler, heun"),
        (["--mask", SAMPLE_DIR / "masks", "--steps", "0"], "steps: got 0"),
        (["--mask", SAMPLE_DIR / "masks", "--num-samples", "0"], "num_samples: got 0"),
    ]
    for args, want in cases:
        proc = run_cli(
            "inpaint", "--model", tiny_model_dir, "--video", SAMPLE_DIR / "frames", "--out", tmp_path / "x", *args
        )
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert want in proc.stderr and "Traceback" not in proc.stderr, (want, proc.stderr[-2000:])


@pytest.mark.slow
def test_demo_writes_video_and_preview(tmp_path):
    proc = run_cli("demo", "--out", tmp_path / "demo", "--steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "with its removal adapter (adapter-removal.safetensors)" in proc.stdout  # the sample clip is a removal
    frames, _ = read_frames(tmp_path / "demo" / "result.mp4")
    assert frames.shape == (8, 3, 64, 64)
    from PIL import Image

    preview = np.asarray(Image.open(tmp_path / "demo" / "preview.png"))
    assert preview.shape[1] == 2 * preview.shape[0] // 4 and preview.shape[2] == 3


def test_demo_without_its_model_says_how_to_restore_it(tmp_path, monkeypatch, capsys):
    """A partial checkout without kfi_core/assets/demo_model is an error naming the folder and the fixes, not a
    silent fall back to random weights; --tiny asks for those weights by name and runs the pipeline on them."""
    import kfi_core.bundled as sample
    from kfi_core import cli

    missing = tmp_path / "no_demo_model"
    monkeypatch.setattr(sample, "DEMO_MODEL_DIR", missing)
    monkeypatch.setattr(sample, "DEMO_ADAPTER", missing / "adapter.safetensors")
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "git checkout -- kfi_core/assets/demo_model" in err and "--tiny" in err
    assert not (tmp_path / "demo" / "result.mp4").exists()
    assert cli.main(["demo", "--tiny", "--out", str(tmp_path / "demo"), "--steps", "1"]) == 0
    frames, _ = read_frames(tmp_path / "demo" / "result.mp4")
    assert frames.shape == (8, 3, 64, 64)
    assert (tmp_path / "demo" / "model" / "model_index.json").is_file()


def _long_sample(tmp_path):
    """The sample twice over (16 frames, two windows of the tiny model) as PNG folders, and frame 0's truth."""
    clip = make_sample_clip()
    frames, masks = clip["frames"].repeat(2, 1, 1, 1), clip["masks"].repeat(2, 1, 1, 1)
    write_frames(frames, tmp_path / "frames")
    write_frames(masks.expand(-1, 3, -1, -1), tmp_path / "masks")
    write_frames(clip["ground_truth"][0:1], tmp_path / "edit.png")
    return tmp_path / "frames", tmp_path / "masks", tmp_path / "edit.png"


@pytest.mark.slow
def test_inpaint_runs_a_schedule_file_with_its_options(tmp_path, tiny_model_dir):
    """`schedule --json` with an option the strategy names cannot carry (keyframe_windows), then `inpaint --schedule
    S.json`: the result is the library's run of that schedule (within PNG rounding), not the default anchor plan."""
    from kfi_core.inference import PropagateSettings, prepare_clip, run_schedule
    from kfi_core.inference.schedules import load_schedule_file
    from kfi_core.model import load_kfi_model

    video, mask, edit = _long_sample(tmp_path)
    plan = run_cli(
        "schedule", "--frames", "16", "--window", "8", "--keyframes", "0", "-o", "keyframe_windows=true", "--json"
    )
    assert plan.returncode == 0, plan.stderr[-3000:]
    (tmp_path / "s.json").write_text(plan.stdout)
    common = ["--model", tiny_model_dir, "--video", video, "--mask", mask, "--keyframe", edit, "--keyframe-index", "0"]
    common += ["--working-size", "input", "--steps", "1", "--seam-smoothing", "0"]
    for name, schedule in (("file", tmp_path / "s.json"), ("anchor", "anchor")):
        proc = run_cli("inpaint", *common, "--schedule", schedule, "--out", tmp_path / name)
        assert proc.returncode == 0, proc.stderr[-3000:]
    frames, _ = read_frames(video)
    masks = read_masks(mask)
    keyframe, _ = read_frames(edit)
    schedule = load_schedule_file(tmp_path / "s.json")
    assert schedule.options.get("keyframe_windows") is True
    clip = prepare_clip(frames, masks, keyframes=keyframe, keyframe_indices=[0])
    want = run_schedule(
        load_kfi_model(str(tiny_model_dir)), clip, schedule, PropagateSettings(steps=1, seam_smoothing=0)
    )
    got, _ = read_frames(tmp_path / "file")
    anchor, _ = read_frames(tmp_path / "anchor")
    assert (got - want).abs().max() <= 1 / 255 + 1e-6
    assert (anchor - got).abs().max() > 4 / 255, "the file's schedule, not the default plan"


@pytest.mark.slow
def test_a_schedule_file_that_does_not_fit_the_clip_is_refused(tmp_path, tiny_model_dir):
    video, mask, _ = _long_sample(tmp_path)
    plan = run_cli("schedule", "--frames", "12", "--window", "8", "--json")
    (tmp_path / "s12.json").write_text(plan.stdout)
    args = ["inpaint", "--model", tiny_model_dir, "--video", video, "--mask", mask, "--working-size", "input"]
    proc = run_cli(*args, "--steps", "1", "--schedule", tmp_path / "s12.json", "--out", tmp_path / "o")
    assert proc.returncode != 0
    assert "schedule: made for 12 frames but the clip has 16" in proc.stderr
    proc = run_cli(*args[:3], "--batch", tmp_path, "--schedule", tmp_path / "s12.json", "--out", tmp_path / "o")
    assert proc.returncode != 0 and "with --batch give a strategy name" in proc.stderr, proc.stderr[-2000:]
    proc = run_cli(*args, "--schedule", tmp_path / "missing.json", "--out", tmp_path / "o")
    assert "--schedule " in proc.stderr and "cannot read the schedule file" in proc.stderr
    assert not (tmp_path / "o").exists()
