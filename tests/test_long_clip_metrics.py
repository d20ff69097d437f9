"""Long-clip metrics: a planted seam is found at a window boundary and not inside a window, a seamless clip scores
about 1, the decay slope and the beyond/within means are recovered analytically, the plot is a PNG of the stated size
that follows the data, and ``eval --schedule --window --plot`` works end to end and rejects bad inputs clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kfi_core.cli import main
from kfi_core.errors import InputMismatchError, ScheduleError, SettingsError
from kfi_core.evaluation.long_clip import (
    SEAM_EPS,
    edit_decay,
    keyframe_distance,
    long_clip_metrics,
    seam_jumps,
)
from kfi_core.evaluation.long_clip_plot import write_long_clip_plot
from kfi_core.inference import build_schedule
from kfi_core.inference.schedules import classify_transitions, frame_sources, load_schedule_file
from kfi_core.media import write_frames

ROOT = Path(__file__).resolve().parents[1]
FRAMES, WINDOW, SIZE = 24, 8, 16
BOX = (slice(4, 12), slice(4, 12))


@pytest.fixture(autouse=True)
def _quiet(caplog):
    caplog.set_level("WARNING")


def autoregressive():
    """Windows generate 1-7, 8-13, 14-19, 20-23 (keyframe 0): boundaries at transitions 7, 13, 19."""
    return build_schedule("autoregressive", FRAMES, WINDOW, [0])


def box_mask(frames: int = FRAMES) -> np.ndarray:
    m = np.zeros((frames, 1, SIZE, SIZE))
    m[:, :, BOX[0], BOX[1]] = 1
    return m


def ramp_clip(frames: int = FRAMES) -> np.ndarray:
    """A smooth clip: R rises 0.01 per frame, G falls 0.005, B stays (so B's change is 0 everywhere)."""
    clip = np.full((frames, 3, SIZE, SIZE), 0.4)
    t = np.arange(frames)[:, None, None]
    clip[:, 0] += 0.01 * t
    clip[:, 1] -= 0.005 * t
    return clip


def with_step(clip: np.ndarray, start: int, step: float = 0.1) -> np.ndarray:
    """Brighten the fill by ``step`` from frame ``start`` on."""
    out = clip.copy()
    out[start:, :, BOX[0], BOX[1]] += step
    return out


# --------------------------------------------------------------------------- seams


def test_transitions_follow_the_schedule():
    s = autoregressive()
    kinds = classify_transitions(s)
    assert kinds["boundary"] == [7, 13, 19]
    assert kinds["skipped"] == [0]  # 0 -> 1 touches the keyframe
    assert kinds["inside"] == [t for t in range(1, FRAMES - 1) if t not in (7, 13, 19)]
    fused = build_schedule("multidiffusion", 16, 8)  # windows 0-7, 4-11, 8-15, fused
    sources = frame_sources(fused)
    assert sources[3] == {(0, 0)} and sources[4] == {(0, 0), (0, 1)}
    assert classify_transitions(fused)["boundary"] == [3, 7, 11]


def test_planted_seam_at_a_boundary_is_found_and_inside_a_window_is_not():
    gt, m, s = ramp_clip(), box_mask(), autoregressive()
    at_boundary = seam_jumps(with_step(gt, 8), gt, m, s)
    assert at_boundary["seam_ratio"] > 3 and at_boundary["seam_ratio_gt"] > 3
    # brightness: boundary jumps 0.1 + ramp at one of three boundaries; the ramp's luma change elsewhere
    luma_ramp = abs(0.299 * 0.01 - 0.587 * 0.005)
    expected = ((0.1 + luma_ramp + 2 * luma_ramp) / 3 + SEAM_EPS) / (luma_ramp + SEAM_EPS)
    assert at_boundary["seam_ratio_per_channel"]["brightness"] == pytest.approx(expected, rel=1e-9)
    inside = seam_jumps(with_step(gt, 10), gt, m, s)
    assert inside["seam_ratio"] < 1.05 and inside["seam_ratio_gt"] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("strategy", ["autoregressive", "anchor", "multidiffusion"])
def test_seamless_clip_scores_about_one(strategy):
    s = build_schedule(strategy, FRAMES, WINDOW, [0] if strategy != "multidiffusion" else [])
    gt = ramp_clip()
    pred = gt.copy()
    pred[:, :, BOX[0], BOX[1]] *= 0.9  # a fill that differs from the truth but changes the same everywhere
    out = seam_jumps(pred, gt, box_mask(), s)
    assert out["boundaries"]
    assert out["seam_ratio"] == pytest.approx(1.0, abs=0.1)
    assert out["seam_ratio_gt"] == pytest.approx(1.0, abs=0.1)


def test_keyframe_seam_is_found_and_a_fill_that_continues_the_keyframe_scores_about_one():
    """The fill from frame 1 on is offset from the keyframe (frame 0) by 0.1: the transition 0 -> 1 jumps; the same
    offset from frame 1 in the truth (the keyframe itself differs) is seamless against the truth."""
    gt, m, s = ramp_clip(), box_mask(), autoregressive()
    popped = with_step(gt, 1)
    out = seam_jumps(popped, gt, m, s)
    assert out["keyframe_transitions"] == [0]
    assert out["keyframe_seam_ratio"] > 3 and out["keyframe_seam_ratio_gt"] > 3
    assert out["seam_ratio"] == pytest.approx(1.0, abs=0.1), "no window seam: the offset is the same everywhere"
    smooth = seam_jumps(gt, gt, m, s)
    assert smooth["keyframe_seam_ratio"] == pytest.approx(1.0, abs=0.1) and smooth["keyframe_seam_ratio_gt"] == 1.0
    middle = build_schedule("anchor", FRAMES, WINDOW, [12])
    assert seam_jumps(gt, gt, m, middle)["keyframe_transitions"] == [11, 12], "both sides of a keyframe inside"
    no_fill = m.copy()
    no_fill[1] = 0
    out = seam_jumps(popped, gt, no_fill, s)
    assert out["keyframe_seam_ratio"] is None and "keyframe" in out["unavailable"]["keyframe_seam_ratio"]


def test_static_clip_is_seamless_and_empty_masks_are_skipped():
    gt, m, s = np.full((FRAMES, 3, SIZE, SIZE), 0.5), box_mask(), autoregressive()
    assert seam_jumps(gt, gt, m, s)["seam_ratio"] == 1.0  # 0 / 0 becomes eps / eps
    m[8] = 0  # the frame after the first boundary has no fill: transitions 7 and 8 are left out
    pred = with_step(gt, 8)
    pred[9:, :, BOX[0], BOX[1]] -= 0.1  # the step lives only in frame 8, which has no mask
    out = seam_jumps(pred, gt, m, s)
    assert 7 not in out["boundaries"] and 8 not in out["inside"]
    assert out["seam_ratio"] == 1.0


def textured_clip(frames: int = FRAMES, seed: int = 0) -> np.ndarray:
    """A mid-grey clip with smooth stripes (one period across the frame, a random phase per channel) that move one
    pixel right per frame: every transition changes the detail a little, and the same amount."""
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, size=(3, 1, 1))
    x = np.arange(SIZE)[None, None, :]
    stripes = [
        np.broadcast_to(0.5 + 0.2 * np.sin(2 * np.pi * (x - t) / SIZE + phase), (3, SIZE, SIZE)) for t in range(frames)
    ]
    return np.stack(stripes)


def test_texture_seam_is_found_where_the_mean_colour_is_seamless():
    """From frame 8 (the first boundary) on the fill's texture is another with the truth's mean colour: the colour
    jumps are the truth's (seam ratio vs GT 1), the texture seam ratio is far above 1; the same swap inside a window
    is not a seam."""
    gt, m, s = textured_clip(), box_mask(), autoregressive()
    for start, boundary in ((8, True), (10, False)):
        pred = gt.copy()
        other = textured_clip(seed=1)
        region = (slice(start, None), slice(None), BOX[0], BOX[1])
        pred[region] = (
            other[region] - other[region].mean(axis=(2, 3), keepdims=True) + gt[region].mean(axis=(2, 3), keepdims=True)
        )
        out = seam_jumps(pred, gt, m, s)
        assert out["seam_ratio_gt"] == pytest.approx(1.0)
        if boundary:
            assert out["texture_seam_ratio"] > 1.3 and out["texture_seam_ratio_gt"] > 1.3
        else:
            # the swapped stripes have another phase, so the box (half a period) sees a slightly different change
            assert out["texture_seam_ratio"] < 1.15 and out["texture_seam_ratio_gt"] == pytest.approx(1.0, abs=0.15)


@pytest.mark.parametrize("strategy", ["autoregressive", "anchor", "multidiffusion"])
def test_moving_texture_without_seams_scores_about_one(strategy):
    s = build_schedule(strategy, FRAMES, WINDOW, [0] if strategy != "multidiffusion" else [])
    gt = textured_clip()
    out = seam_jumps(gt * 0.9 + 0.05, gt, box_mask(), s)
    assert out["texture_seam_ratio"] == pytest.approx(1.0, abs=0.1)
    assert out["texture_seam_ratio_gt"] == pytest.approx(0.9, abs=0.02)  # the fill's detail is 0.9 of the truth's


def test_texture_ratio_needs_overlapping_masks():
    gt, s = textured_clip(), autoregressive()
    m = np.zeros((FRAMES, 1, SIZE, SIZE))
    m[0::2, :, 0:4, 0:4] = 1  # even frames here, odd frames there: no transition's masks overlap
    m[1::2, :, 8:12, 8:12] = 1
    out = seam_jumps(gt, gt, m, s)
    assert out["texture_seam_ratio"] is None and "overlap" in out["unavailable"]["texture_seam_ratio"]


def test_single_window_has_no_seam_ratio():
    s = build_schedule("autoregressive", WINDOW, WINDOW, [0])
    out = seam_jumps(ramp_clip(WINDOW), ramp_clip(WINDOW), box_mask(WINDOW), s)
    assert out["seam_ratio"] is None and "no window boundary" in out["unavailable"]["seam_ratio"]


# --------------------------------------------------------------------------- decay


def decaying_clip(keyframes, slope: float = -0.5, start: float = 40.0):
    """pred = gt + e_t inside the mask, with e_t chosen so that PSNR_t = start + slope * distance_t exactly; the
    keyframes themselves are reproduced exactly (100 dB, which would skew the fit if they were not left out)."""
    gt = np.full((FRAMES, 3, SIZE, SIZE), 0.5)
    distance = keyframe_distance(FRAMES, keyframes)
    target = start + slope * distance
    pred = gt.copy()
    for t in set(range(FRAMES)) - set(keyframes):
        pred[t, :, BOX[0], BOX[1]] += np.sqrt(10 ** (-target[t] / 10))
    return pred, gt, target


def test_decay_slope_and_window_means_are_recovered():
    keys = [0, 20]
    pred, gt, target = decaying_clip(keys)
    out = edit_decay(pred, gt, box_mask(), keys, WINDOW)
    assert out["distance"][:3] == [0, 1, 2] and out["distance"][19:22] == [1, 0, 1]
    assert out["slope_db_per_frame"] == pytest.approx(-0.5, abs=1e-9)
    frames = np.arange(FRAMES)
    use = ~np.isin(frames, keys)  # keyframes are inputs: left out of the fit and the means
    within = target[use & (frames < WINDOW)].mean()  # frames 1..7: 40 - 0.5 * (1..7) -> 38.0
    beyond = target[use & (frames >= WINDOW)].mean()
    assert within == pytest.approx(38.0)
    assert out["psnr_within_first_window"] == pytest.approx(within, abs=1e-9)
    assert out["psnr_beyond_first_window"] == pytest.approx(beyond, abs=1e-9)
    assert out["beyond_minus_within_db"] == pytest.approx(beyond - within, abs=1e-9)
    assert out["psnr_per_frame"][0] == 100.0  # the keyframe itself is reproduced (capped), not fitted


def test_decay_without_keyframes_or_window_says_why():
    pred, gt, _ = decaying_clip([0])
    out = edit_decay(pred, gt, box_mask())
    assert out["slope_db_per_frame"] is None and "no keyframes" in out["unavailable"]["slope_db_per_frame"]
    assert out["psnr_within_first_window"] is None and out["unavailable"]["psnr_within_first_window"]
    m = box_mask()
    m[5] = 0
    assert edit_decay(pred, gt, m, [0], WINDOW)["psnr_per_frame"][5] is None


# --------------------------------------------------------------------------- plot


def test_plot_is_a_png_of_the_size_and_follows_the_data(tmp_path):
    gt, m, s = ramp_clip(), box_mask(), autoregressive()
    smooth = long_clip_metrics(gt * 0.95, gt, m, schedule=s)
    seam = long_clip_metrics(with_step(gt, 8), gt, m, schedule=s)
    a = write_long_clip_plot(smooth, tmp_path / "a.png")
    b = write_long_clip_plot(seam, tmp_path / "b.png", size=(800, 400))
    c = write_long_clip_plot(seam, tmp_path / "c.png")
    with Image.open(a) as ia, Image.open(b) as ib, Image.open(c) as ic:
        assert ia.format == "PNG" and ia.size == (1000, 500) and ib.size == (800, 400)
        assert np.asarray(ia.convert("RGB")).std() > 0
        assert not np.array_equal(np.asarray(ia), np.asarray(ic))
    no_schedule = long_clip_metrics(gt, gt, m, window=WINDOW)  # no seams: still PSNR and colour
    write_long_clip_plot(no_schedule, tmp_path / "d.png")
    with pytest.raises(SettingsError, match="ending in .png"):
        write_long_clip_plot(smooth, tmp_path / "a.jpg")


# --------------------------------------------------------------------------- CLI


def schedule_json(tmp_path: Path, frames: int = FRAMES, strategy: str = "autoregressive") -> Path:
    cmd = [sys.executable, "-m", "kfi_core", "schedule", "--frames", str(frames), "--window", str(WINDOW)]
    cmd += ["--strategy", strategy, "--keyframes", "0", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)
    path = tmp_path / f"s{frames}.json"
    path.write_text(proc.stdout)
    return path


def write_clip(tmp_path: Path, name: str, clip: np.ndarray) -> str:
    write_frames(torch.from_numpy(clip).float(), tmp_path / name)
    return str(tmp_path / name)


def test_cli_eval_schedule_window_plot(tmp_path, capsys):
    gt = ramp_clip()
    s_path = schedule_json(tmp_path)
    assert load_schedule_file(s_path).num_frames == FRAMES
    files = {
        "--gt": write_clip(tmp_path, "gt", gt),
        "--pred": write_clip(tmp_path, "pred", with_step(gt, 8)),
        "--mask": write_clip(tmp_path, "mask", np.repeat(box_mask(), 3, axis=1)),
    }
    base = ["eval", *[x for kv in files.items() for x in kv], "--schedule", str(s_path)]
    plot = tmp_path / "plot.png"
    assert main([*base, "--plot", str(plot), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["long_clip"]
    assert out["decay"]["window"] == WINDOW and out["decay"]["keyframes"] == [0]  # from the schedule
    assert out["seams"]["boundaries"] == [7, 13, 19] and out["seams"]["seam_ratio"] > 3
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.size == (1000, 500)

    assert main([*base, "--window", "4"]) == 0
    table = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1] for line in table}
    assert float(rows["seam_ratio"]) > 3 and rows["psnr_within_window"] != "-"
    assert float(rows["texture_seam_ratio"]) == pytest.approx(1.0, abs=0.01), "a brightness step is no texture seam"

    files["--pred"] = files["--gt"]  # a perfect, seamless fill
    assert main(["eval", *[x for kv in files.items() for x in kv], "--window", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["long_clip"]
    assert out["seams"] is None and out["decay"]["slope_db_per_frame"] is None


def test_cli_eval_long_clip_errors(tmp_path, capsys):
    gt = ramp_clip()
    gt_dir, mask_dir = write_clip(tmp_path, "gt", gt), write_clip(tmp_path, "mask", np.repeat(box_mask(), 3, axis=1))
    short = write_clip(tmp_path, "short", gt[:20])
    s24, s20 = schedule_json(tmp_path), schedule_json(tmp_path, 20)

    def error(*argv: str) -> str:
        assert main(["eval", *argv]) == 2
        return capsys.readouterr().err

    err = error("--pred", short, "--gt", gt_dir, "--mask", mask_dir, "--schedule", str(s24))
    assert f"--pred {short} has 20 frames but --gt {gt_dir} has 24" in err
    err = error("--pred", gt_dir, "--gt", gt_dir, "--mask", mask_dir, "--schedule", str(s20))
    assert f"--schedule {s20}: made for 20 frames, the clip has 24" in err and "--frames 24" in err
    assert "--mask" in error("--pred", gt_dir, "--gt", gt_dir, "--schedule", str(s24))
    assert "give --window N" in error("--pred", gt_dir, "--gt", gt_dir, "--mask", mask_dir, "--plot", "x.png")
    assert "ending in .png" in error(
        "--pred", gt_dir, "--gt", gt_dir, "--mask", mask_dir, "--window", "8", "--plot", "x"
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "not valid JSON" in error("--pred", gt_dir, "--gt", gt_dir, "--mask", mask_dir, "--schedule", str(bad))
    missing = tmp_path / "none.json"
    assert "cannot read" in error("--pred", gt_dir, "--gt", gt_dir, "--mask", mask_dir, "--schedule", str(missing))
    with pytest.raises(ScheduleError, match="made for 20 frames"):
        long_clip_metrics(gt, gt, box_mask(), schedule=load_schedule_file(s20))
    with pytest.raises(InputMismatchError, match="no mask given"):
        long_clip_metrics(gt, gt, None, window=8)
