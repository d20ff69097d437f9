"""Metrics: exact values on analytic cases, an independent SSIM oracle, warping error on a known motion,
mask handling, the eval command on PNG folders and mp4, and every error class with its message."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kfi_core.cli import main
from kfi_core.errors import InputMismatchError, KeyframeError, NonFiniteError, UnknownNameError, UnsupportedSizeError
from kfi_core.evaluation import metrics
from kfi_core.evaluation.metrics import (
    METRIC_KEYS,
    compute_gt_flow,
    evaluate,
    flicker_delta,
    keyframe_fidelity,
    psnr,
    ssim,
    temporal_flicker,
    warping_error,
)
from kfi_core.media.video import write_frames

ROOT = Path(__file__).resolve().parents[1]
H, W = 48, 64  # H != W catches transposed axes
DX, DY = 2, 1  # per-frame shift of the translating clip (pixels)


def smooth_texture(h: int, w: int, seed: int) -> np.ndarray:
    """[3, h, w] in 0..1: blurred noise (well-defined flow, smooth enough for bilinear warping)."""
    import cv2

    noise = np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)
    tex = cv2.GaussianBlur(noise, (0, 0), 2.0).astype(np.float64)
    return ((tex - tex.min()) / (tex.max() - tex.min())).transpose(2, 0, 1)


def translating_clip(n: int = 6, seed: int = 0) -> np.ndarray:
    """[n, 3, H, W]: a window sliding (DX, DY) per frame over a texture, so content moves by (-DX, -DY)."""
    tex = smooth_texture(H + n * DY, W + n * DX, seed)
    return np.stack([tex[:, t * DY : t * DY + H, t * DX : t * DX + W] for t in range(n)])


def static_clip(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.repeat(smooth_texture(H, W, seed)[None], n, axis=0)


def box_mask(n: int, top=16, bottom=32, left=24, right=44) -> np.ndarray:
    m = np.zeros((n, 1, H, W))
    m[:, :, top:bottom, left:right] = 1
    return m


# --------------------------------------------------------------------------- PSNR


def test_identical_clips_hit_the_caps():
    clip = translating_clip()
    assert psnr(clip, clip) == metrics.PSNR_CAP_DB == 100.0  # MSE 0: the cap, not inf
    assert psnr(clip, clip, box_mask(len(clip))) == 100.0
    assert ssim(clip, clip) == pytest.approx(1.0, abs=1e-12)
    assert ssim(clip, clip, box_mask(len(clip))) == pytest.approx(1.0, abs=1e-12)


def test_known_mse_gives_exact_psnr_and_frames_are_averaged_not_pixels():
    gt = np.full((2, 3, H, W), 0.5)
    pred = gt.copy()
    pred[0] += 0.1  # MSE 1e-2 -> 20 dB
    pred[1] += 0.01  # MSE 1e-4 -> 40 dB
    assert psnr(pred[:1], gt[:1]) == pytest.approx(20.0, abs=1e-9)
    assert psnr(pred[1:], gt[1:]) == pytest.approx(40.0, abs=1e-9)
    # mean over frames of per-frame PSNR (30 dB), not PSNR of the pooled MSE (22.97 dB)
    assert psnr(pred, gt) == pytest.approx(30.0, abs=1e-9)
    assert 10 * math.log10(1 / ((1e-2 + 1e-4) / 2)) == pytest.approx(22.967, abs=1e-3)


def test_torch_and_numpy_inputs_agree_and_are_not_modified():
    gt = translating_clip()
    pred = np.clip(gt + np.random.default_rng(1).normal(0, 0.03, gt.shape), 0, 1)
    pred_t = torch.from_numpy(pred).float()
    before = pred_t.clone()
    assert psnr(pred_t, torch.from_numpy(gt)) == pytest.approx(psnr(pred.astype(np.float32), gt), abs=1e-9)
    assert torch.equal(pred_t, before)


def test_masked_psnr_and_ssim_only_look_inside_the_mask():
    gt = translating_clip()
    mask = box_mask(len(gt))  # rows 16..31, cols 24..43
    pred = np.clip(gt + np.random.default_rng(2).normal(0, 0.02, gt.shape), 0, 1)
    base_psnr, base_ssim = psnr(pred, gt, mask), ssim(pred, gt, mask)
    outside = pred.copy()
    outside[..., :, :12] = 0.0  # columns 0..11: more than the SSIM window radius (5 px) away from the mask
    outside[..., 40:, :] = 1.0  # rows 40..47: also farther than 5 px
    assert psnr(outside, gt, mask) == base_psnr
    assert ssim(outside, gt, mask) == pytest.approx(base_ssim, abs=1e-12)
    assert psnr(outside, gt) < psnr(pred, gt) - 3 and ssim(outside, gt) < ssim(pred, gt) - 0.05  # whole frame sees it
    inside = pred.copy()
    inside[..., 20:28, 30:40] = 0.0
    assert psnr(inside, gt, mask) < base_psnr - 3 and ssim(inside, gt, mask) < base_ssim - 0.05


def test_one_mask_broadcasts_to_every_frame():
    gt = translating_clip()
    pred = np.clip(gt + 0.05, 0, 1)
    mask = box_mask(len(gt))
    assert psnr(pred, gt, mask[:1]) == psnr(pred, gt, mask)


# --------------------------------------------------------------------------- SSIM


def ssim_brute_force(a: np.ndarray, b: np.ndarray) -> float:
    """Independent SSIM: direct weighted moments in each full 11x11 window, 2-D Gaussian built from the radius."""
    r = np.arange(11) - 5
    win = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    win /= win.sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for c in range(a.shape[0]):
        for y in range(5, a.shape[1] - 5):
            for x in range(5, a.shape[2] - 5):
                pa, pb = a[c, y - 5 : y + 6, x - 5 : x + 6], b[c, y - 5 : y + 6, x - 5 : x + 6]
                ma, mb = (win * pa).sum(), (win * pb).sum()
                va, vb = (win * (pa - ma) ** 2).sum(), (win * (pb - mb) ** 2).sum()
                cov = (win * (pa - ma) * (pb - mb)).sum()
                vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_an_independent_brute_force_implementation():
    gt = smooth_texture(22, 26, seed=3)
    rng = np.random.default_rng(4)
    for pred in (np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1), 1 - gt, np.clip(gt * 0.7 + 0.2, 0, 1)):
        expected = ssim_brute_force(pred, gt)
        assert ssim(pred[None], gt[None]) == pytest.approx(expected, abs=1e-10)  # float64 rounding only
    assert ssim((1 - gt)[None], gt[None]) < 0  # anti-correlated structure: negative SSIM


def test_ssim_of_constant_images_is_the_hand_derived_luminance_term():
    # variances and covariance are 0, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1) at every pixel
    a, b = 0.5, 0.6
    expected = (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)  # = 0.6001 / 0.6101
    assert expected == pytest.approx(0.983609, abs=1e-6)
    gt, pred = np.full((1, 3, 16, 16), a), np.full((1, 3, 16, 16), b)
    assert ssim(pred, gt) == pytest.approx(expected, abs=1e-12)
    assert ssim(pred, gt, np.ones((1, 1, 16, 16))) == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------- warping error


def test_gt_flow_recovers_the_known_shift_and_masks_disoccluded_borders():
    gt = translating_clip()
    flow = compute_gt_flow(gt)
    assert flow.forward.shape == (5, H, W, 2) and flow.valid.shape == (5, H, W)
    assert np.median(flow.forward.reshape(-1, 2), axis=0) == pytest.approx([-DX, -DY], abs=0.05)
    # x + f(x) leaves the frame for the first DX columns and DY rows: those pixels have no match in t+1
    assert not flow.valid[:, :, :DX].any() and not flow.valid[:, :DY, :].any()
    assert flow.valid[:, 4:-4, 4:-4].mean() > 0.99


def test_occlusion_check_excludes_background_covered_by_a_moving_object():
    h, w, size, speed = 96, 128, 32, 4  # a 32 px square moving 4 px right per frame over a static background
    bg, fg = smooth_texture(h, w, 0), smooth_texture(size, size, 1) * 0.5 + 0.5
    gt = np.repeat(bg[None], 5, axis=0)
    for t in range(5):
        gt[t, :, 32 : 32 + size, 8 + speed * t : 8 + speed * t + size] = fg
    flow = compute_gt_flow(gt)
    # the strip just right of the square at t is covered at t+1: it has no match (occluded)
    covered = np.mean(
        [flow.valid[t, 34:62, 8 + speed * t + size : 8 + speed * (t + 1) + size].mean() for t in range(4)]
    )
    far = np.mean([flow.valid[t, :, 8 + speed * t + size + 12 :].mean() for t in range(4)])
    assert covered < 0.5 and far > 0.95  # measured 0.29 and 0.98 (DIS smears flow a little across the edge)
    unmasked = warping_error(gt, gt, flow=compute_gt_flow(gt, occlusion=False))
    assert warping_error(gt, gt, flow=flow) < 0.5 * unmasked  # measured 4.8e-4 vs 1.5e-3


def test_warping_error_is_zero_for_a_prediction_that_moves_like_the_truth():
    gt = translating_clip()
    flow = compute_gt_flow(gt)
    exact = warping_error(gt, gt, flow=flow)
    assert exact < 2e-5  # measured ~4e-6: sub-pixel flow error on a smooth texture
    # other content, same motion: temporally just as consistent (the metric is not about fidelity)
    assert warping_error(translating_clip(seed=5), gt, flow=flow) < 2e-5
    # without the occlusion mask the disoccluded border (compared with replicated edge pixels) dominates
    assert warping_error(gt, gt, flow=compute_gt_flow(gt, occlusion=False)) > 20 * exact
    # a static clip with pred == gt: zero flow, zero error
    still = static_clip()
    assert warping_error(still, still) < 1e-9


def test_warping_error_grows_with_noise_and_a_shuffled_frame():
    gt = translating_clip()
    flow = compute_gt_flow(gt)
    exact = warping_error(gt, gt, flow=flow)
    rng = np.random.default_rng(6)
    noisy = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)  # expected ~ 3 ch * 2 * 0.05^2 = 0.015
    shuffled = gt[[0, 1, 3, 2, 4, 5]]
    for bad in (noisy, shuffled):
        err = warping_error(bad, gt, flow=flow)
        assert err > 0.005 and err > 100 * exact  # measured: ~3500x (noise), ~5000x (swap) the exact error
    assert warping_error(noisy, gt, flow=flow) == pytest.approx(3 * 2 * 0.05**2, rel=0.15)


def test_masked_warping_error_only_counts_the_mask():
    gt = translating_clip()
    mask = box_mask(len(gt))
    flow = compute_gt_flow(gt)
    pred = gt.copy()
    pred[3, :, :, :8] = np.random.default_rng(7).random((3, H, 8))  # damage far left of the mask only
    assert warping_error(pred, gt, flow=flow) > 1e-3
    assert warping_error(pred, gt, mask, flow=flow) < 2e-5


def test_farneback_flow_works_too_and_unknown_methods_are_named():
    gt = translating_clip()
    assert warping_error(gt, gt, flow_method="farneback") < 2e-5
    with pytest.raises(UnknownNameError, match=r"'raft'.*dis, farneback"):
        warping_error(gt, gt, flow_method="raft")


# --------------------------------------------------------------------------- flicker, keyframes


def test_flicker_of_a_static_clip_is_zero_and_grows_with_noise():
    still = static_clip()
    assert temporal_flicker(still) == 0.0
    rng = np.random.default_rng(8)
    values = [temporal_flicker(np.clip(still + rng.normal(0, s, still.shape), 0, 1)) for s in (0.01, 0.02, 0.04)]
    assert 0 < values[0] < values[1] < values[2]
    assert values[1] == pytest.approx(0.02 * 2 / math.sqrt(math.pi), rel=0.05)  # E|N(0,2s^2)| = 2s/sqrt(pi)
    mask = box_mask(len(still))
    outside_noise = still + (1 - mask) * rng.normal(0, 0.02, still.shape)
    assert temporal_flicker(np.clip(outside_noise, 0, 1), mask) == 0.0
    assert flicker_delta(still, still, mask) == 0.0
    assert flicker_delta(np.clip(still + rng.normal(0, 0.02, still.shape), 0, 1), still, mask) > 0.01


def test_keyframe_fidelity():
    gt = translating_clip()
    pred = gt.copy()
    pred[2] = np.clip(gt[2] + 0.1, 0, 1)
    assert keyframe_fidelity(pred, {0: gt[0]}) == 100.0
    key = np.full((3, H, W), 0.5)
    pred[4] = 0.6  # MSE 0.01 against the keyframe: 20 dB
    assert keyframe_fidelity(pred, {4: torch.from_numpy(key)[None]}) == pytest.approx(20.0, abs=1e-9)
    assert keyframe_fidelity(pred, {0: gt[0], 4: key}) == pytest.approx(60.0, abs=1e-9)
    with pytest.raises(KeyframeError, match=r"keyframe index 6: out of range for a clip of 6 frames"):
        keyframe_fidelity(pred, {6: key})
    with pytest.raises(KeyframeError, match=r"keyframe 1: shape \[3, 32, 32\], expected \[3, 48, 64\]"):
        keyframe_fidelity(pred, {1: np.zeros((3, 32, 32))})


# --------------------------------------------------------------------------- evaluate


def test_evaluate_returns_every_key_as_json_ready_values(monkeypatch):
    monkeypatch.delenv("KFI_LPIPS_WEIGHTS", raising=False)
    monkeypatch.setenv("KFI_VFID_WEIGHTS", "/nonexistent/i3d.pt")
    gt = translating_clip()
    pred = np.clip(gt + np.random.default_rng(9).normal(0, 0.02, gt.shape), 0, 1)
    out = evaluate(torch.from_numpy(pred).float(), gt, box_mask(len(gt)), keyframes={0: gt[0], 5: gt[5]})
    json.dumps(out, allow_nan=False)
    assert set(METRIC_KEYS) <= set(out)
    computed = [k for k in METRIC_KEYS if k not in ("lpips", "vfid")]
    assert all(isinstance(out[k], float) for k in computed), {k: out[k] for k in computed}
    assert out["lpips"] is None and "KFI_LPIPS_WEIGHTS" in out["unavailable"]["lpips"]
    assert "/nonexistent/i3d.pt is not a file" in out["unavailable"]["vfid"]
    assert set(out["keyframe_psnr_per_index"]) == {"0", "5"}
    assert out["flicker_delta"] == pytest.approx(out["temporal_flicker"] - out["temporal_flicker_gt"])
    assert out["psnr"] == pytest.approx(psnr(pred, gt)) and out["warping_error_gt"] < 2e-5
    bare = evaluate(gt[:1], gt[:1])  # one frame, no mask, no keyframes: those keys are None, with a reason
    assert bare["psnr"] == 100.0 and bare["warping_error"] is None and bare["psnr_mask"] is None
    assert set(bare["unavailable"]) == {k for k in METRIC_KEYS if bare[k] is None}
    assert "need at least 2" in bare["unavailable"]["temporal_flicker"]


# --------------------------------------------------------------------------- errors


def test_mismatched_inputs_raise_clear_errors_before_any_compute():
    gt = translating_clip()
    with pytest.raises(InputMismatchError, match=r"pred has 5 frames but gt has 6"):
        evaluate(gt[:5], gt)
    with pytest.raises(InputMismatchError, match=r"pred frames are 32x48 \(WxH\) but gt frames are 64x48"):
        psnr(gt[..., :32], gt)
    with pytest.raises(InputMismatchError, match=r"got 4 masks for 6 frames\. Give one mask per frame"):
        evaluate(gt, gt, box_mask(4))
    with pytest.raises(InputMismatchError, match=r"mask: masks are 64x24 \(WxH\), frames are 64x48"):
        ssim(gt, gt, box_mask(6)[:, :, :24])
    with pytest.raises(InputMismatchError, match=r"empty in all 6 frames"):
        evaluate(gt, gt, np.zeros((6, 1, H, W)))
    with pytest.raises(InputMismatchError, match=r"pred: values must lie in 0\.\.1, got 0\S*\.\.255\. Divide 8-bit"):
        psnr(gt * 255, gt)
    with pytest.raises(InputMismatchError, match=r"pred: expected frames \[frames, 3, height, width\], got shape \[4"):
        psnr(gt[0].transpose(1, 2, 0), gt[0])
    bad = gt.copy()
    bad[2, 0, 3, 3] = np.nan
    with pytest.raises(NonFiniteError, match=r"gt: contains NaN"):
        psnr(gt, bad)
    with pytest.raises(UnsupportedSizeError, match=r"10x8; SSIM needs at least 11x11"):
        ssim(gt[..., :8, :10], gt[..., :8, :10])
    with pytest.raises(KeyframeError, match=r"\[2\] given more than once"):
        metrics.check_keyframe_indices([2, 4, 2], 6)


# --------------------------------------------------------------------------- CLI


def as_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).float()


def test_cli_eval_on_png_folders_and_mp4(tmp_path, capsys):
    gt = translating_clip()
    pred = np.clip(gt + np.random.default_rng(10).normal(0, 0.02, gt.shape), 0, 1)
    write_frames(as_tensor(gt), tmp_path / "gt")
    write_frames(as_tensor(pred), tmp_path / "pred")
    write_frames(as_tensor(np.repeat(box_mask(1), 3, axis=1)), tmp_path / "mask.png")
    write_frames(as_tensor(pred), tmp_path / "pred.mp4")

    argv = [
        "eval",
        "--pred",
        str(tmp_path / "pred"),
        "--gt",
        str(tmp_path / "gt"),
        "--mask",
        str(tmp_path / "mask.png"),
        "--keyframe-index",
        "0",
        "3",
        "--json",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert all(k in out for k in METRIC_KEYS) and out["settings"]["frames"] == 6
    assert all(out[k] is not None for k in METRIC_KEYS if k not in ("lpips", "vfid"))
    assert out["psnr"] == pytest.approx(psnr(pred, gt), abs=0.1)  # 8-bit PNGs: ~0.01 dB off

    argv = ["eval", "--pred", str(tmp_path / "pred.mp4"), "--gt", str(tmp_path / "gt"), "--json"]
    assert main(argv) == 0
    out_mp4 = json.loads(capsys.readouterr().out)
    assert all(k in out_mp4 for k in METRIC_KEYS) and out_mp4["psnr_mask"] is None
    assert 25 < out_mp4["psnr"] < out["psnr"] + 1  # H.264 (crf 16) loses a little, not everything

    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
    table = capsys.readouterr().out
    assert all(line.split()[0] in METRIC_KEYS for line in table.splitlines()) and "no mask given" in table


def test_cli_eval_mismatch_is_a_clear_error_with_exit_code_2(tmp_path):
    gt = translating_clip()
    write_frames(as_tensor(gt), tmp_path / "gt")
    write_frames(as_tensor(gt[:4]), tmp_path / "pred")
    proc = subprocess.run(
        [sys.executable, "-m", "kfi_core", "eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"--pred {tmp_path / 'pred'} has 4 frames but --gt {tmp_path / 'gt'} has 6" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_chroma_gain_is_one_for_kept_colours_zero_for_grey_and_the_slope_between():
    rng = np.random.default_rng(3)
    ref = rng.uniform(0.2, 0.8, size=(2, 3, 8, 8))
    grey = np.repeat(ref.mean(axis=1, keepdims=True), 3, axis=1)
    half = grey + 0.5 * (ref - grey)
    assert metrics.chroma_gain(ref, ref) == pytest.approx(1.0)
    assert metrics.chroma_gain(grey, ref) == pytest.approx(0.0, abs=1e-12)
    assert metrics.chroma_gain(half, ref) == pytest.approx(0.5)
    # brightness does not enter: a brighter copy keeps every colour
    assert metrics.chroma_gain(np.clip(ref + 0.1, 0, 1), ref) == pytest.approx(1.0)
    # the mask selects the region: grey inside, exact outside
    mask = np.zeros((2, 1, 8, 8))
    mask[:, :, 2:5, 2:6] = 1
    mixed = np.where(mask > 0, grey, ref)
    assert metrics.chroma_gain(mixed, ref, mask) == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < metrics.chroma_gain(mixed, ref) < 1.0


def test_chroma_gain_of_a_grey_reference_is_a_clear_error():
    grey = np.full((1, 3, 4, 4), 0.5)
    with pytest.raises(InputMismatchError, match="ref: has no colour"):
        metrics.chroma_gain(grey, grey)
