"""Seams of a long clip: where two windows meet, the fill is a new sample, so its colour and its detail step.

Both repairs run after the last window on the composited result (:func:`kfi_core.inference.executor.smooth_seams`),
change only generated pixels inside the mask, and leave keyframes and everything outside the mask exactly as they
were. The long-clip metrics measure both steps (:mod:`kfi_core.evaluation.long_clip`: ``seam_ratio`` for the colour,
``texture_seam_ratio`` for the detail).

- :func:`smooth_fill_colours`: each generated frame's fill is shifted so its mean colour is the mean over the frames
  within ``radius`` frames: a colour step becomes a ramp, a steady change of light or motion passes.
- :func:`crossfade_detail`: at each window boundary t -> t+1 the fill's detail (the fill minus its mean colour) of
  the two frames is blended towards each other, so the detail changes across the boundary by no more than it changes
  across the neighbouring transitions inside the windows: with ``delta`` the detail difference on the pixels both
  masks cover, ``J_b`` its mean absolute value and ``J_in`` the same over the inside transitions t-1 -> t and
  t+1 -> t+2, frame t gets ``+ a * delta`` and frame t+1 ``- a * delta`` with ``a = (1 - J_in / J_b) / 2`` (0 when
  ``J_b <= J_in``), which makes the boundary's change ``J_in``. The seeds are silent on this; it is KFI's choice,
  the detail counterpart of the colour smoothing and of what MultiDiffusion's averaging does where windows overlap.
- :func:`ramp_from_keyframes`: a keyframe is a seam too: its hole holds the edit (or the truth), its neighbours the
  model's fill, and their colours can differ by many times the fill's steps inside windows (the edited keyframe
  flashes, or the clip jumps from its first frame to the second). Per channel, with ``s`` the mean step of the
  fill's colour between generated frames and ``o`` the difference between the keyframe's colour and the
  neighbour's fill, both over the neighbour's hole, less ``s`` (a normal step stays), the next ``n`` generated
  frames are shifted by ``o * (n + 1 - d) / n`` at distance ``d``, ``n`` = max ceil(|o| / s) over the channels so
  that no step exceeds ``s`` by more than ``s``, up to half the way to the next keyframe. KFI's choice too;
  measured by the keyframe seam ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _fill_means(frames: torch.Tensor, weights: torch.Tensor):
    """(weights as float [F, 1, H, W], their area [F], which frames have a fill [F], the fill's weighted mean
    colour [F, 3])."""
    w = weights.float()
    area = w.sum(dim=(1, 2, 3))
    means = (frames.float() * w).sum(dim=(2, 3)) / area.clamp(min=1e-8)[:, None]
    return w, area, area > 0, means


def smooth_fill_colours(
    frames: torch.Tensor, weights: torch.Tensor, radius: int, fixed: Sequence[int] = ()
) -> torch.Tensor:
    """Even out the fill's mean colour over time: ``frames`` [F, 3, H, W] with each frame's fill shifted by an offset.

    ``weights`` [F, 1, H, W] say where the fill is (the composite's weights: 0 keeps the input). The fill's mean
    colour c_t (per channel, weighted) is replaced by its mean over the frames t - ``radius`` .. t + ``radius`` that
    have a fill (``fixed`` frames, e.g. keyframes, count in the means and are not changed): a step in c_t, where
    two windows meet, becomes a ramp, while a steady change (light, motion) passes. Clamped to 0..1."""
    w, area, has, means = _fill_means(frames, weights)
    if radius < 1 or int(has.sum()) < 2:
        return frames
    out = frames.clone()
    keep = {int(k) for k in fixed}
    num = frames.shape[0]
    for t in range(num):
        if not bool(has[t]) or t in keep:
            continue
        near = [u for u in range(max(0, t - radius), min(num, t + radius + 1)) if bool(has[u])]
        target = means[near].mean(dim=0)
        out[t] = frames[t] + (target - means[t]).to(frames.dtype)[:, None, None] * w[t]
    return out.clamp(0.0, 1.0)


def _detail_step(frames: torch.Tensor, masks: torch.Tensor, t: int):
    """(delta [3, N], pixel selection [H, W]) of transition t -> t+1 on the pixels both masks cover; None if none."""
    both = masks[t, 0] & masks[t + 1, 0]
    if not bool(both.any()):
        return None, both
    a, b = frames[t][:, both].float(), frames[t + 1][:, both].float()
    return (b - b.mean(1, keepdim=True)) - (a - a.mean(1, keepdim=True)), both


def crossfade_detail(
    frames: torch.Tensor, masks: torch.Tensor, boundaries: Sequence[int], inside: Sequence[int]
) -> torch.Tensor:
    """Blend the fill's detail across each boundary transition t -> t+1 (``boundaries``) until it changes no more
    than across the neighbouring ``inside`` transitions (module docstring). ``frames`` [F, 3, H, W] in 0..1,
    ``masks`` [F, 1, H, W] (the fill: >= 0.5). Returns a new tensor, clamped to 0..1."""
    hole = masks >= 0.5
    inside_set = {int(u) for u in inside}
    out = frames.clone()
    for t in boundaries:
        delta, both = _detail_step(frames, hole, t)
        if delta is None:
            continue
        near = [_detail_step(frames, hole, u)[0] for u in (t - 1, t + 1) if u in inside_set]
        near = [float(d.abs().mean()) for d in near if d is not None]
        step = float(delta.abs().mean())
        if not near or step <= sum(near) / len(near):
            continue
        a = (1.0 - sum(near) / len(near) / step) / 2.0
        out[t][:, both] += (a * delta).to(out.dtype)
        out[t + 1][:, both] -= (a * delta).to(out.dtype)
    return out.clamp(0.0, 1.0)


MIN_STEP = 1e-3  # a fill steadier than this (a quarter of a level) still gets ramps of at most o / 1e-3 frames


def _mean_step(means: torch.Tensor, has: torch.Tensor, fixed: set[int]) -> torch.Tensor:
    """[3]: per channel, the mean change of the fill's colour over transitions between generated frames with a fill."""
    steps = [
        (means[t + 1] - means[t]).abs()
        for t in range(means.shape[0] - 1)
        if bool(has[t]) and bool(has[t + 1]) and t not in fixed and t + 1 not in fixed
    ]
    if not steps:
        return means.new_full((means.shape[1],), MIN_STEP)
    return sum(steps).div(len(steps)).clamp(min=MIN_STEP)


def ramp_from_keyframes(frames: torch.Tensor, weights: torch.Tensor, keyframes: Sequence[int]) -> torch.Tensor:
    """Carry each keyframe's colour into the fill next to it (module docstring): ``frames`` [F, 3, H, W] in 0..1,
    ``weights`` [F, 1, H, W] the fill (the composite's weights; 0 at keyframes). Keyframes and pixels where the
    weights are 0 are unchanged; returns a new tensor, clamped to 0..1."""
    w, area, has, means = _fill_means(frames, weights)
    keys = sorted({int(k) for k in keyframes})
    if not keys or not bool(has.any()):
        return frames
    step = _mean_step(means, has, set(keys))
    out = frames.clone()
    for i, k in enumerate(keys):
        for side in (-1, 1):
            t = k + side
            if not 0 <= t < frames.shape[0] or t in keys or not bool(has[t]):
                continue
            offset = (frames[k].float() * w[t]).sum(dim=(1, 2)) / area[t] - means[t]  # [3]
            offset = offset.sign() * (offset.abs() - step).clamp(min=0.0)  # a normal step may stay at the keyframe
            reach = _reach(keys, i, side, frames.shape[0])
            n = min(reach, max(1, math.ceil(float((offset.abs() / step).max()))))
            for d in range(1, n + 1):
                u = k + side * d
                if not bool(has[u]):
                    break
                out[u] += (offset * (n + 1 - d) / n).to(out.dtype)[:, None, None] * w[u]
    return out.clamp(0.0, 1.0)


def _reach(keys: list[int], i: int, side: int, num_frames: int) -> int:
    """How many frames keyframe ``keys[i]``'s ramp may cover towards ``side``: to the clip's end, or less than half
    the way to the next keyframe (the two ramps never share a frame; a frame midway between two keyframes is left
    to both ramps' tails)."""
    k = keys[i]
    j = i + side
    if 0 <= j < len(keys):
        return (abs(keys[j] - k) - 1) // 2
    return k if side < 0 else num_frames - 1 - k
