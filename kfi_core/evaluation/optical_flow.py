"""Optical flow between consecutive frames, for the warping error and the flow-guided baselines.

OpenCV's DIS (medium preset) or Farneback flow on BT.601 grayscale (:func:`optical_flow_fn`), and
:func:`flow_between_frames`: the forward flow between consecutive frames with the non-occlusion
mask M_t of Lai et al. 2018 (target inside the frame, the forward-backward check of Ruder et al.
2016, no motion boundary). :func:`kfi_core.evaluation.metrics.compute_gt_flow` checks its input
and calls it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from kfi_core.errors import UnknownNameError

logger = logging.getLogger(__name__)

FLOW_METHODS = ("dis", "farneback")
DEFAULT_FLOW_METHOD = "dis"
# Occlusion test of Ruder et al. 2016 as used by Lai et al. 2018 (squared pixels): forward-backward
# consistency |f + b(x + f)|^2 <= FB_REL (|f|^2 + |b(x + f)|^2) + FB_ABS, and no motion boundary,
# |grad f|^2 <= MB_REL |f|^2 + MB_ABS.
FB_REL = 0.01
FB_ABS = 0.5
MB_REL = 0.01
MB_ABS = 0.002


@dataclass
class GtFlow:
    """Optical flow between consecutive ground-truth frames, for the warping error.

    ``forward[t]`` [H, W, 2] (dx, dy) maps GT frame t to t+1: gt[t](x) ~ gt[t+1](x + forward[t](x));
    ``valid[t]`` [H, W] bool is the non-occlusion mask M_t (target inside the frame, the
    forward-backward check passed, not on a motion boundary). ``t`` runs over 0..F-2.
    """

    forward: np.ndarray  # [F-1, H, W, 2] float32
    valid: np.ndarray  # [F-1, H, W] bool
    method: str


def _gray_uint8(frame: np.ndarray) -> np.ndarray:
    import cv2

    rgb = np.ascontiguousarray((np.clip(frame, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # [H, W] uint8, BT.601 luma


def optical_flow_fn(method: str, *, levels: int = 4, winsize: int = 15):
    """``calc(a, b) -> flow [H, W, 2]`` on uint8 grayscale frames with OpenCV: DIS (medium preset)
    or Farneback (pyramid ``levels``, window ``winsize``). Shared by the metrics and the baselines."""
    import cv2

    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return lambda a, b: dis.calc(a, b, None)
    if method == "farneback":
        return lambda a, b: cv2.calcOpticalFlowFarneback(
            a, b, None, pyr_scale=0.5, levels=levels, winsize=winsize, iterations=5, poly_n=5, poly_sigma=1.1, flags=0
        )
    raise UnknownNameError(f"flow_method: unknown {method!r}; choose one of {', '.join(FLOW_METHODS)}.")


def sample_bilinear(img: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """Bilinear lookup of img [H, W, C] at (map_x, map_y) [H, W]; replicate outside (masked anyway)."""
    import cv2

    out = cv2.remap(img, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(*map_x.shape, img.shape[2])


def _motion_boundary(flow: np.ndarray) -> np.ndarray:
    """[H, W, 2] -> [H, W] bool: |grad u|^2 + |grad v|^2 > MB_REL |f|^2 + MB_ABS (forward differences, 0 at the end)."""
    grad = np.zeros(flow.shape[:2], dtype=np.float64)
    grad[:, :-1] += ((flow[:, :-1] - flow[:, 1:]) ** 2).sum(-1)  # d/dx of u and v
    grad[:-1, :] += ((flow[:-1, :] - flow[1:, :]) ** 2).sum(-1)  # d/dy of u and v
    return grad > MB_REL * (flow.astype(np.float64) ** 2).sum(-1) + MB_ABS


def flow_between_frames(g: np.ndarray, flow_method: str = DEFAULT_FLOW_METHOD, occlusion: bool = True) -> GtFlow:
    """Flow between consecutive frames of ``g`` (checked float64 [F, 3, H, W], F >= 2) and the
    non-occlusion masks M_t (see :class:`GtFlow`); ``occlusion=False`` keeps every pixel."""
    calc = optical_flow_fn(flow_method)
    height, width = g.shape[2:]
    gx, gy = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    gray = [_gray_uint8(f) for f in g]
    forward, valid = [], []
    for t in range(g.shape[0] - 1):
        fwd = calc(gray[t], gray[t + 1]).astype(np.float32)  # [H, W, 2]: t -> t+1
        map_x, map_y = gx + fwd[..., 0], gy + fwd[..., 1]
        ok = np.ones((height, width), dtype=bool)
        if occlusion:
            bwd = calc(gray[t + 1], gray[t]).astype(np.float32)  # t+1 -> t
            bwd_at = sample_bilinear(bwd, map_x, map_y)  # b_t(x + f_t(x))
            inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
            err = ((fwd + bwd_at) ** 2).sum(-1)
            bound = FB_REL * ((fwd**2).sum(-1) + (bwd_at**2).sum(-1)) + FB_ABS
            ok = inside & (err <= bound) & ~_motion_boundary(fwd)
        forward.append(fwd)
        valid.append(ok)
        logger.debug("flow %d->%d: %.1f%% pixels non-occluded", t, t + 1, 100.0 * ok.mean())
    return GtFlow(np.stack(forward), np.stack(valid), flow_method)
