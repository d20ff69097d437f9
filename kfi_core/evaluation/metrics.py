"""Evaluation metrics for inpainted clips: PSNR, SSIM, flow warping error, flicker, keyframe fidelity.

Inputs
    ``pred`` and ``gt`` are frames float [F, 3, H, W] in 0..1, as :class:`torch.Tensor` (any device or
    float dtype) or :class:`numpy.ndarray`; both are read as float64 NumPy arrays on the CPU and never
    written to. ``mask`` is float or bool [F, 1, H, W] (or [1, 1, H, W] for
    one mask for every frame) with 1 = inpainted region; it is binarised at ``> 0.5`` (the threshold
    of :mod:`kfi_core.media.mask_ops`), so a lossy mask video reads as the intended binary mask.

Conventions (every metric follows them)
    * Intensities are on a 0..1 scale (data range 1), RGB, no colour conversion except for the flow.
    * Per-frame values are averaged with equal weight per frame ("mean over frames"). Frames whose mask
      is empty are left out of masked means; a mask empty in every frame is an error.
    * PSNR of a frame is ``min(PSNR_CAP_DB, 10 * log10(1 / MSE))``; identical frames (MSE 0) give
      exactly ``PSNR_CAP_DB`` = 100 dB instead of infinity, so the mean stays finite and JSON-ready.

Metric definitions (the formulas are repeated in each function's docstring)
    psnr              mean_t min(100, 10 log10(1 / MSE_t)); MSE_t over all pixels and the 3 channels
                      (inside the mask: over mask pixels and the 3 channels).
    ssim              Wang et al. 2004 on each RGB channel, Gaussian window 11x11 (sigma 1.5, weights
                      normalised), K1 = 0.01, K2 = 0.03, data range 1, population (not sample) statistics.
                      Whole frame: mean of the SSIM map over the 3 channels and the pixels at least 5 px
                      from the border (the "valid" window positions); this equals scikit-image's
                      ``structural_similarity(..., channel_axis=0, data_range=1, gaussian_weights=True,
                      sigma=1.5, use_sample_covariance=False)``. Masked: the map is computed with
                      half-sample-symmetric ("reflect") padding so every pixel has a value, and averaged over
                      the mask pixels (mask not dilated: a window centred on a mask pixel already sees up to
                      5 px of context across the mask edge).
    warping_error     Lai et al. 2018 (ECCV), "Learning blind video temporal consistency":
                      E = mean_t [ sum_x M_t(x) ||P_t(x) - P_{t+1}(x + f_t(x))||^2 / sum_x M_t(x) ],
                      with f_t the optical flow from GT frame t to GT frame t+1 (OpenCV DIS, or
                      Farneback), ``||.||^2`` the squared L2 norm over the 3 RGB channels (so a value up to
                      3 on the 0..1 scale), P_{t+1} sampled bilinearly, and M_t the non-occlusion mask:
                      x + f_t(x) inside frame t+1 and the forward-backward check of Ruder et al. 2016,
                      |f_t(x) + b_t(x + f_t(x))|^2 <= 0.01 (|f_t(x)|^2 + |b_t(x + f_t(x))|^2) + 0.5 (pixels),
                      b_t the flow from GT frame t+1 to t, and x not on a motion boundary,
                      |grad u|^2 + |grad v|^2 <= 0.01 |f_t(x)|^2 + 0.002 (forward differences), as in Lai
                      et al.'s evaluation code. With a mask, M_t is also restricted to mask_t.
    temporal_flicker  mean_t mean |P_{t+1} - P_t| over pixels and channels (0..1 scale, no motion
                      compensation); with a mask, over pixels in mask_t OR mask_{t+1}.
    flicker_delta     temporal_flicker(pred, mask) - temporal_flicker(gt, mask): > 0 when the prediction
                      changes more from frame to frame than the ground truth does.
    keyframe_psnr     mean over the given keyframe indices k of PSNR(pred[k], keyframe_k) (masked: inside
                      mask_k), with the same 100 dB cap.
    lpips, vfid       need network weights; computed only from local files named by the environment
                      variables ``KFI_LPIPS_WEIGHTS`` / ``KFI_VFID_WEIGHTS`` and never downloaded. This version
                      has only the hook: :func:`evaluate` reports ``None`` with the reason.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from kfi_core.errors import InputMismatchError, KeyframeError, NonFiniteError, UnsupportedSizeError
from kfi_core.evaluation.optical_flow import (
    DEFAULT_FLOW_METHOD,
    GtFlow,
    flow_between_frames,
    optical_flow_fn,
    sample_bilinear,
)

logger = logging.getLogger(__name__)

PSNR_CAP_DB = 100.0
MASK_THRESHOLD = 0.5  # same as kfi_core.media.mask_ops.DEFAULT_THRESHOLD
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Optional learned metrics: environment variable naming a local weights file.
WEIGHTS_ENV = {"lpips": "KFI_LPIPS_WEIGHTS", "vfid": "KFI_VFID_WEIGHTS"}
# Every key :func:`evaluate` returns a value for (None when not applicable, reason under "unavailable").
METRIC_KEYS = (
    "psnr",
    "psnr_mask",
    "ssim",
    "ssim_mask",
    "lpips",
    "vfid",
    "warping_error",
    "warping_error_mask",
    "warping_error_gt",
    "temporal_flicker",
    "temporal_flicker_gt",
    "flicker_delta",
    "keyframe_psnr",
)


# --------------------------------------------------------------------------- input checks


def _to_array(x: Any) -> np.ndarray:
    """torch or numpy -> float64 numpy array on the CPU (shares memory where it can; never written to)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def frames_array(frames: Any, name: str = "frames") -> np.ndarray:
    """Return ``frames`` as float64 [F, 3, H, W]; raise unless finite, RGB, 4-D and in 0..1."""
    arr = _to_array(frames)
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise InputMismatchError(
            f"{name}: expected frames [frames, 3, height, width], got shape {list(arr.shape)}. "
            "Give RGB frames channel-first (a single image as [1, 3, H, W])."
        )
    if arr.shape[0] == 0:
        raise InputMismatchError(f"{name}: the clip has no frames.")
    if not np.isfinite(arr).all():
        raise NonFiniteError(f"{name}: contains NaN or infinity. Check the step that produced these frames.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InputMismatchError(
            f"{name}: values must lie in 0..1, got {lo:g}..{hi:g}. Divide 8-bit values by 255, "
            "or map -1..1 frames with (x + 1) / 2."
        )
    return arr


def mask_array(mask: Any, num_frames: int, size: tuple[int, int], name: str = "mask") -> np.ndarray:
    """Return ``mask`` as bool [F, 1, H, W] (one mask broadcast to every frame), binarised at > 0.5."""
    arr = _to_array(mask)
    if arr.ndim != 4 or arr.shape[1] != 1:
        raise InputMismatchError(
            f"{name}: expected masks [frames, 1, height, width], got shape {list(arr.shape)}. "
            "Pass one single-channel mask per frame."
        )
    if not np.isfinite(arr).all():
        raise NonFiniteError(f"{name}: contains NaN or infinity. Check the file or node that made the mask.")
    if tuple(arr.shape[2:]) != tuple(size):
        raise InputMismatchError(
            f"{name}: masks are {arr.shape[3]}x{arr.shape[2]} (WxH), frames are {size[1]}x{size[0]}. "
            "Give masks of the frame size (resize the mask with nearest-neighbour)."
        )
    if arr.shape[0] not in (1, num_frames):
        raise InputMismatchError(
            f"{name}: got {arr.shape[0]} masks for {num_frames} frames. Give one mask per frame, or one mask "
            "for all frames."
        )
    binary = arr > MASK_THRESHOLD
    return np.broadcast_to(binary, (num_frames, *binary.shape[1:])).copy()


def check_inputs(pred: Any, gt: Any, mask: Any = None, names: Mapping[str, str] | None = None):
    """Validate a prediction, its ground truth and an optional mask; return them as NumPy arrays.

    ``names`` maps "pred", "gt", "mask" to the labels used in error messages (the CLI passes the
    option and file name). Returns ``(pred [F,3,H,W] float64, gt [F,3,H,W] float64, mask [F,1,H,W] bool
    or None)``.
    """
    names = {"pred": "pred", "gt": "gt", "mask": "mask", **(names or {})}
    p = frames_array(pred, names["pred"])
    g = frames_array(gt, names["gt"])
    if p.shape[0] != g.shape[0]:
        raise InputMismatchError(
            f"{names['pred']} has {p.shape[0]} frames but {names['gt']} has {g.shape[0]}. Compare clips of "
            "the same length (trim the longer one, or export the same frame range)."
        )
    if p.shape[2:] != g.shape[2:]:
        raise InputMismatchError(
            f"{names['pred']} frames are {p.shape[3]}x{p.shape[2]} (WxH) but {names['gt']} frames are "
            f"{g.shape[3]}x{g.shape[2]}. Resize or crop the prediction to the ground truth's size."
        )
    m = None if mask is None else mask_array(mask, g.shape[0], g.shape[2:], names["mask"])
    return p, g, m


def _frames_with_mask(mask: np.ndarray | None, num_frames: int, name: str = "mask") -> list[int]:
    if mask is None:
        return list(range(num_frames))
    keep = [t for t in range(num_frames) if mask[t].any()]
    if not keep:
        raise InputMismatchError(
            f"{name}: empty in all {num_frames} frames, so masked metrics are undefined. Check the mask "
            "polarity (1 = inpainted region) or drop the mask."
        )
    return keep


# --------------------------------------------------------------------------- PSNR


def psnr_from_mse(mse: float) -> float:
    if mse <= 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(1.0 / mse))


def masked_mse(a: np.ndarray, b: np.ndarray, m: np.ndarray | None) -> float:
    """a, b [3, H, W]; m [1, H, W] bool or None -> mean squared error over (mask) pixels and channels."""
    sq = (a - b) ** 2
    if m is None:
        return float(sq.mean())
    return float(sq[:, m[0]].mean())


def psnr(pred: Any, gt: Any, mask: Any = None) -> float:
    """Peak signal-to-noise ratio in dB, data range 1: ``mean_t min(100, 10 log10(1 / MSE_t))``.

    MSE_t is over all pixels and the 3 channels of frame t, or with ``mask`` over the mask pixels of
    frame t (frames with an empty mask are left out). Identical frames give exactly 100 dB.
    """
    p, g, m = check_inputs(pred, gt, mask)
    frames = _frames_with_mask(m, p.shape[0])
    return float(np.mean([psnr_from_mse(masked_mse(p[t], g[t], None if m is None else m[t])) for t in frames]))


# --------------------------------------------------------------------------- SSIM


def _gaussian_kernel() -> np.ndarray:
    r = np.arange(SSIM_WINDOW, dtype=np.float64) - SSIM_WINDOW // 2
    k = np.exp(-(r**2) / (2 * SSIM_SIGMA**2))
    return k / k.sum()


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM map of two single-channel images [H, W] in 0..1 (same size, reflect padding).

    ``((2 mu_a mu_b + C1)(2 cov_ab + C2)) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))`` with Gaussian
    local statistics (11 taps, sigma 1.5), C1 = (0.01)^2, C2 = (0.03)^2.
    """
    import cv2

    k = _gaussian_kernel()

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(x, cv2.CV_64F, k, k, borderType=cv2.BORDER_REFLECT)

    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return num / den


def ssim(pred: Any, gt: Any, mask: Any = None) -> float:
    """Structural similarity, mean over frames; each RGB channel separately, then averaged.

    Whole frame: mean of the SSIM map over channels and the pixels at least 5 px from the border
    (scikit-image's convention). With ``mask``: mean of the map (reflect-padded at the frame border) over
    the mask pixels, mask not dilated; frames with an empty mask are left out. See the module docstring.
    """
    p, g, m = check_inputs(pred, gt, mask)
    height, width = g.shape[2:]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise UnsupportedSizeError(
            f"ssim: frames are {width}x{height}; SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels "
            "(its Gaussian window). Evaluate larger frames."
        )
    pad = SSIM_WINDOW // 2
    values = []
    for t in _frames_with_mask(m, p.shape[0]):
        smap = np.mean([ssim_map(p[t, c], g[t, c]) for c in range(3)], axis=0)  # [H, W], channel mean
        values.append(smap[pad:-pad, pad:-pad].mean() if m is None else smap[m[t, 0]].mean())
    return float(np.mean(values))


# --------------------------------------------------------------------------- warping error


def compute_gt_flow(gt: Any, flow_method: str = DEFAULT_FLOW_METHOD, occlusion: bool = True) -> GtFlow:
    """Flow between consecutive GT frames and the non-occlusion masks M_t (see :class:`GtFlow`).

    ``occlusion=False`` keeps every pixel (M_t = 1), for diagnostics and tests only.
    """
    g = frames_array(gt, "gt")
    if g.shape[0] < 2:
        raise InputMismatchError(f"gt: {g.shape[0]} frame; optical flow and the warping error need at least 2 frames.")
    return flow_between_frames(g, flow_method, occlusion)


def warping_error(
    pred: Any, gt: Any, mask: Any = None, flow: GtFlow | None = None, flow_method: str = DEFAULT_FLOW_METHOD
) -> float:
    """Flow warping error of Lai et al. 2018 (ECCV), flow from the ground truth.

    ``mean_t [ sum_x M_t(x) ||pred_t(x) - pred_{t+1}(x + f_t(x))||^2 / sum_x M_t(x) ]``, ||.||^2 summed over the
    3 RGB channels on the 0..1 scale (range 0..3; 0 = the prediction moves exactly as the GT flow says).
    M_t: non-occlusion mask of :func:`compute_gt_flow`, with ``mask`` also restricted to mask_t. Pairs with
    no pixel left are skipped. Pass ``flow`` to reuse the flow computed for another prediction.
    """
    p, g, m = check_inputs(pred, gt, mask)
    if flow is None:
        flow = compute_gt_flow(g, flow_method)
    if flow.forward.shape[:3] != (g.shape[0] - 1, *g.shape[2:]):
        raise InputMismatchError(
            f"flow: made for {flow.forward.shape[0] + 1} frames of {flow.forward.shape[2]}x{flow.forward.shape[1]}, "
            f"the clip has {g.shape[0]} frames of {g.shape[3]}x{g.shape[2]}. Compute the flow from this gt."
        )
    height, width = g.shape[2:]
    gx, gy = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    errors = []
    for t in range(g.shape[0] - 1):
        region = flow.valid[t] if m is None else flow.valid[t] & m[t, 0]
        if not region.any():
            continue
        fwd = flow.forward[t]
        nxt = np.ascontiguousarray(p[t + 1].transpose(1, 2, 0))  # [H, W, 3] float64
        warped = sample_bilinear(nxt, gx + fwd[..., 0], gy + fwd[..., 1]).transpose(2, 0, 1)  # [3, H, W]
        sq = ((p[t] - warped) ** 2).sum(0)  # [H, W], summed over channels
        errors.append(float(sq[region].mean()))
    if not errors:
        where = "inside the mask " if m is not None else ""
        raise InputMismatchError(
            f"warping_error: no non-occluded pixels {where}in any frame pair of the ground truth, so the "
            "warping error is undefined (scene cuts or very fast motion?). Evaluate cut-free segments, or try "
            "flow_method='farneback'."
        )
    return float(np.mean(errors))


# --------------------------------------------------------------------------- flicker


def temporal_flicker(pred: Any, mask: Any = None) -> float:
    """Mean absolute frame-to-frame change: ``mean_t mean |pred_{t+1} - pred_t|`` (0..1 scale).

    Over all pixels and channels, or with ``mask`` over the pixels in mask_t OR mask_{t+1} (pairs where
    both are empty are left out). No motion compensation: a moving scene flickers too, so compare with
    the ground truth (:func:`flicker_delta`).
    """
    p = frames_array(pred, "pred")
    if p.shape[0] < 2:
        raise InputMismatchError(f"pred: {p.shape[0]} frame; temporal flicker needs at least 2 frames.")
    m = None if mask is None else mask_array(mask, p.shape[0], p.shape[2:])
    values = []
    for t in range(p.shape[0] - 1):
        diff = np.abs(p[t + 1] - p[t])  # [3, H, W]
        if m is None:
            values.append(diff.mean())
            continue
        region = m[t, 0] | m[t + 1, 0]
        if region.any():
            values.append(diff[:, region].mean())
    if not values:
        raise InputMismatchError(
            f"mask: empty in all {p.shape[0]} frames, so masked flicker is undefined. Check the mask "
            "polarity (1 = inpainted region) or drop the mask."
        )
    return float(np.mean(values))


def flicker_delta(pred: Any, gt: Any, mask: Any = None) -> float:
    """``temporal_flicker(pred, mask) - temporal_flicker(gt, mask)``; > 0: more flicker than the truth."""
    p, g, m = check_inputs(pred, gt, mask)
    return temporal_flicker(p, m) - temporal_flicker(g, m)


# --------------------------------------------------------------------------- colour


def chroma_gain(pred: Any, ref: Any, mask: Any = None) -> float:
    """How much of ``ref``'s colour ``pred`` keeps: the least-squares slope of pred's chroma on ref's.

    Chroma is a pixel's RGB minus its grey (the mean of its three channels). ``sum <c_pred, c_ref> /
    sum |c_ref|^2`` over all pixels, or with ``mask`` over the mask pixels: 1 when the colours are kept,
    0 when pred is grey (or its colours are unrelated to ref's), 0.5 when they are half as saturated.
    Brightness does not enter. Raises when ref has no colour there (a grey reference says nothing).
    """
    p, g, m = check_inputs(pred, ref, mask, {"gt": "ref"})
    cp, cg = p - p.mean(axis=1, keepdims=True), g - g.mean(axis=1, keepdims=True)
    if m is not None:
        keep = np.broadcast_to(m, cg.shape)
        cp, cg = cp[keep], cg[keep]
    energy = float((cg * cg).sum())
    if energy <= 1e-12:
        raise InputMismatchError(
            "ref: has no colour (every pixel grey) where chroma gain is measured, so the gain is undefined. "
            "Measure it on coloured content."
        )
    return float((cp * cg).sum() / energy)


# --------------------------------------------------------------------------- keyframes


def check_keyframe_indices(indices, num_frames: int) -> list[int]:
    """Return the keyframe indices as sorted ints; raise unless each is in 0..F-1 and given once."""
    out = [int(k) for k in indices]
    if not out:
        raise KeyframeError("keyframes: none given. Pass {frame index: keyframe image}, or no keyframes at all.")
    for k in out:
        if not 0 <= k < num_frames:
            raise KeyframeError(
                f"keyframe index {k}: out of range for a clip of {num_frames} frames. Use 0..{num_frames - 1}."
            )
    repeated = sorted({k for k in out if out.count(k) > 1})
    if repeated:
        raise KeyframeError(f"keyframe indices: {repeated} given more than once. Give each index once.")
    return sorted(out)


def check_keyframes(keyframes: Mapping[int, Any], num_frames: int, shape: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Return ``{index: float64 [3, H, W]}``; raise :class:`KeyframeError` for a bad index or image shape.

    A keyframe may be [3, H, W] or [1, 3, H, W], torch or numpy, values 0..1; ``shape`` is (3, H, W).
    """
    out = {}
    for k in check_keyframe_indices(list(keyframes), num_frames):
        arr = _to_array(keyframes[k])
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]  # [1, 3, H, W] -> [3, H, W]
        if arr.shape != tuple(shape):
            raise KeyframeError(
                f"keyframe {k}: shape {list(arr.shape)}, expected {list(shape)} (3 x the clip's height x width). "
                "Give the keyframe at the clip's size, channel-first, values 0..1."
            )
        out[k] = frames_array(arr[None], f"keyframe {k}")[0]
    return out


def keyframe_psnrs(pred: Any, keyframes: Mapping[int, Any], mask: Any = None) -> dict[int, float]:
    """PSNR (dB, capped at 100) of ``pred[k]`` against each keyframe ``keyframes[k]`` [3, H, W] (or [1, 3, H, W]).

    With ``mask``: inside mask_k only; a keyframe whose mask is empty is left out (with a warning).
    """
    p = frames_array(pred, "pred")
    num_frames = p.shape[0]
    keys = check_keyframes(keyframes, num_frames, p.shape[1:])
    m = None if mask is None else mask_array(mask, num_frames, p.shape[2:])
    out: dict[int, float] = {}
    for k, key in keys.items():
        if m is not None and not m[k].any():
            logger.warning("keyframe %d: the mask is empty in this frame; left out of the masked keyframe PSNR", k)
            continue
        out[k] = psnr_from_mse(masked_mse(p[k], key, None if m is None else m[k]))
    if not out:
        raise KeyframeError(
            "keyframes: the mask is empty at every keyframe index, so the masked keyframe PSNR is undefined. "
            "Check the mask or evaluate without it."
        )
    return out


def keyframe_fidelity(pred: Any, keyframes: Mapping[int, Any], mask: Any = None) -> float:
    """Mean over keyframe indices of :func:`keyframe_psnrs` (dB, each capped at 100)."""
    return float(np.mean(list(keyframe_psnrs(pred, keyframes, mask).values())))


# --------------------------------------------------------------------------- learned metrics (hook only)


def learned_metric_status(name: str) -> tuple[float | None, str]:
    """LPIPS / VFID hook: ``(value, reason)``. Weights come only from a local file, never a download.

    This version computes neither metric: it reports ``None`` and says why (variable unset, file missing,
    or not implemented).
    """
    env = WEIGHTS_ENV[name]
    path = os.environ.get(env)
    if not path:
        return None, f"{name}: not computed; set {env} to a local weights file (weights are never downloaded)."
    if not os.path.isfile(path):
        return None, f"{name}: not computed; {env}={path} is not a file."
    return None, f"{name}: not computed; weights found at {path}, but this version of kfi_core has no {name} network."


# --------------------------------------------------------------------------- everything


def evaluate(
    pred: Any,
    gt: Any,
    mask: Any = None,
    keyframes: Mapping[int, Any] | None = None,
    flow_method: str = DEFAULT_FLOW_METHOD,
    names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Every metric of this module as a JSON-ready dict.

    Keys: each of :data:`METRIC_KEYS` (a float, or ``None`` when not applicable: a ``*_mask`` metric
    without a mask, a temporal metric on one frame, LPIPS/VFID without weights), plus ``"unavailable"``
    ({key: reason} for each ``None``), ``"keyframe_psnr_per_index"`` ({"k": dB}) and ``"settings"``
    (frames, size, PSNR cap, flow method, flicker region). Mismatched inputs raise before any compute.
    With a mask, ``temporal_flicker``, ``temporal_flicker_gt`` and ``flicker_delta`` are measured inside it.
    ``names`` labels "pred", "gt" and "mask" in error messages (the CLI passes the file names).
    """
    # 1. Check inputs
    p, g, m = check_inputs(pred, gt, mask, names)
    if m is not None:
        _frames_with_mask(m, g.shape[0], (names or {}).get("mask", "mask"))
    optical_flow_fn(flow_method)
    if keyframes:
        keyframes = check_keyframes(keyframes, g.shape[0], g.shape[1:])
    num_frames, height, width = g.shape[0], g.shape[2], g.shape[3]
    out: dict[str, Any] = dict.fromkeys(METRIC_KEYS)
    unavailable: dict[str, str] = {}

    def skip(keys, reason):
        for key in keys:
            unavailable[key] = reason

    # 2. Keyframes (cheap, and may still reject the input)
    per_index: dict[str, float] = {}
    if keyframes:
        per_index = {str(k): v for k, v in keyframe_psnrs(p, keyframes, m).items()}
        out["keyframe_psnr"] = float(np.mean(list(per_index.values())))
    else:
        skip(("keyframe_psnr",), "no keyframes given")

    # 3. Per-frame fidelity
    out["psnr"] = psnr(p, g)
    out["ssim"] = ssim(p, g)
    if m is not None:
        out["psnr_mask"] = psnr(p, g, m)
        out["ssim_mask"] = ssim(p, g, m)
    else:
        skip(("psnr_mask", "ssim_mask", "warping_error_mask"), "no mask given")

    # 4. Temporal consistency
    _temporal_metrics(p, g, m, flow_method, out, skip)

    # 5. Learned metrics (local weights only)
    for name in WEIGHTS_ENV:
        out[name], reason = learned_metric_status(name)
        if out[name] is None:
            skip((name,), reason)

    out = {k: (None if v is None else float(v)) for k, v in out.items()}
    out["unavailable"] = {k: unavailable[k] for k in METRIC_KEYS if out[k] is None and k in unavailable}
    out["keyframe_psnr_per_index"] = per_index
    out["settings"] = {
        "frames": num_frames,
        "height": height,
        "width": width,
        "psnr_cap_db": PSNR_CAP_DB,
        "flow_method": flow_method if num_frames > 1 else None,
        "flicker_region": "mask" if m is not None else "frame",
        "masked_frames": None if m is None else int(m.any(axis=(1, 2, 3)).sum()),
    }
    logger.info(
        "evaluated %d frames of %dx%d: PSNR %.2f dB, SSIM %.4f", num_frames, width, height, out["psnr"], out["ssim"]
    )
    return out


def _temporal_metrics(p: np.ndarray, g: np.ndarray, m: np.ndarray | None, flow_method: str, out: dict, skip) -> None:
    """:func:`evaluate`'s step 4: warping errors and flicker into ``out``; ``skip(keys, reason)`` the rest."""
    num_frames = g.shape[0]
    temporal = (
        "warping_error",
        "warping_error_mask",
        "warping_error_gt",
        "temporal_flicker",
        "temporal_flicker_gt",
        "flicker_delta",
    )
    if num_frames < 2:
        skip(temporal, f"the clip has {num_frames} frame; temporal metrics need at least 2")
        return
    flow = compute_gt_flow(g, flow_method)
    try:
        out["warping_error"] = warping_error(p, g, flow=flow)
        out["warping_error_gt"] = warping_error(g, g, flow=flow)
    except InputMismatchError as err:  # every pixel occluded: undefined, say why
        skip(("warping_error", "warping_error_gt"), str(err))
    if m is not None:
        try:
            out["warping_error_mask"] = warping_error(p, g, m, flow=flow)
        except InputMismatchError as err:
            skip(("warping_error_mask",), str(err))
    out["temporal_flicker"] = temporal_flicker(p, m)
    out["temporal_flicker_gt"] = temporal_flicker(g, m)
    out["flicker_delta"] = out["temporal_flicker"] - out["temporal_flicker_gt"]
