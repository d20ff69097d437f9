"""Long-clip metrics: how an edit fades with distance from its keyframe, and how windows show at their seams.

Inputs follow :mod:`kfi_core.evaluation.metrics`: ``pred`` and ``gt`` are frames [F, 3, H, W] in 0..1 (torch or
NumPy), ``mask`` is [F, 1, H, W] (or one mask for all frames), binarised at > 0.5, 1 = the fill. Both metrics are
about the fill, so a mask is required; frames whose mask is empty are skipped everywhere.

Edit decay (:func:`edit_decay`)
    psnr_t        PSNR of frame t inside mask_t (dB, capped at 100 as in ``metrics``); None for an empty mask.
    distance_t    min_k |t - k| over the keyframes k (frames); None without keyframes.
    slope         least-squares slope of psnr_t on distance_t (dB per frame; < 0: the edit fades), fitted over
                  the frames that have a mask and are not keyframes (a keyframe is an input, reproduced exactly).
    within/beyond mean psnr_t over the non-keyframe frames with a mask in [0, window) ("within the first window")
                  and in [window, F) ("beyond it"); ``beyond - within`` < 0 dB when quality drops later.

Seam jumps (:func:`seam_jumps`)
    The fill's mean colour c_t = mean of pred_t over the pixels of mask_t, per RGB channel, and its brightness
    Y_t = 0.299 R + 0.587 G + 0.114 B of c_t (Rec. 601 luma; the mean of the luma equals the luma of the mean).
    The jump of a transition t -> t+1 is |c_{t+1} - c_t| per channel and |Y_{t+1} - Y_t|.
    The source of frame t is the set of windows (stage, window) whose role for t is ``generate`` (one window,
    or several in a fused MultiDiffusion stage); a keyframe has no source. A transition t -> t+1 whose frames
    both have a source and a mask is a *boundary* when the sources differ and *inside* when they are equal;
    transitions touching a keyframe or an empty mask are left out of both.
    seam_ratio_inside[ch] = (J_boundary + eps) / (J_inside + eps), J_* the mean jump over those transitions;
    seam_ratio_gt[ch]     = (J_boundary + eps) / (J_gt_boundary + eps), J_gt_boundary the ground truth's mean
                            jump (its mean colour over the same mask) at the same boundary transitions.
    eps = :data:`SEAM_EPS` = 1e-3 (about a quarter of an 8-bit level) keeps a ratio finite when a denominator is
    zero, and makes a clip that does not change at all score exactly 1. 1.0 is seamless, > 1 a visible seam.
    The headline ``seam_ratio`` and ``seam_ratio_gt`` are the largest over R, G, B and brightness.
    Texture: the mean colour can be seamless while the detail jumps (each window samples its own texture). With the
    fill's detail d_t = pred_t - c_t (its mean colour removed) the texture jump of t -> t+1 is the mean of
    |d_{t+1} - d_t| over the pixels in both masks and the three channels; ``texture_seam_ratio`` and
    ``texture_seam_ratio_gt`` are the same ratios of these jumps (motion moves detail everywhere, so a clip that moves
    steadily scores about 1 too; a transition whose masks do not overlap is left out).
    Keyframes: a keyframe's hole holds the edit (or the truth), its neighbours' the model's fill, so a transition
    between a keyframe and a generated frame (both with a mask) can jump too: the edited keyframe flashes, or the
    clip jumps after its first frame. ``keyframe_seam_ratio`` is the largest channel's (J_keyframe + eps) /
    (J_inside + eps), ``keyframe_seam_ratio_gt`` the same against the ground truth's jump at those transitions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from kfi_core.errors import InputMismatchError, KeyframeError, ScheduleError, SettingsError
from kfi_core.evaluation.metrics import check_inputs, check_keyframe_indices, masked_mse, psnr_from_mse
from kfi_core.inference.schedules import Schedule, classify_transitions, frame_sources

logger = logging.getLogger(__name__)

SEAM_EPS = 1e-3
LUMA = np.array([0.299, 0.587, 0.114])
SEAM_CHANNELS = ("r", "g", "b", "brightness")


def _jsonable(values: Iterable[float]) -> list[float | None]:
    """NaN -> None, so the lists go straight into JSON."""
    return [None if v is None or math.isnan(v) else float(v) for v in values]


def _require_mask(mask: Any, names: Mapping[str, str] | None) -> None:
    if mask is None:
        label = (names or {}).get("mask", "mask")
        raise InputMismatchError(
            f"{label}: no mask given; the long-clip metrics measure the fill, which the mask defines. Pass the mask "
            "the clip was inpainted with (1 = inpainted region)."
        )


def _checked_mask(m: np.ndarray, names: Mapping[str, str] | None) -> np.ndarray:
    """Raise unless some frame has a mask pixel; return the per-frame "has mask" flags [F]."""
    has = m.any(axis=(1, 2, 3))
    if not has.any():
        label = (names or {}).get("mask", "mask")
        raise InputMismatchError(
            f"{label}: empty in all {m.shape[0]} frames, so the long-clip metrics are undefined. Check the mask "
            "polarity (1 = inpainted region)."
        )
    return has


# --------------------------------------------------------------------------- edit decay


def masked_psnr_per_frame(p: np.ndarray, g: np.ndarray, m: np.ndarray) -> np.ndarray:
    """PSNR (dB, capped) of each frame inside its mask, [F] float; NaN where the mask is empty."""
    out = np.full(p.shape[0], np.nan)
    for t in range(p.shape[0]):
        if m[t].any():
            out[t] = psnr_from_mse(masked_mse(p[t], g[t], m[t]))
    return out


def keyframe_distance(num_frames: int, keyframes: Sequence[int]) -> np.ndarray | None:
    """Each frame's distance (frames) to the nearest keyframe, [F] int; None without keyframes."""
    if not keyframes:
        return None
    t = np.arange(num_frames)[:, None]
    return np.abs(t - np.asarray(list(keyframes))[None, :]).min(axis=1)


def least_squares_slope(x: np.ndarray, y: np.ndarray) -> float | None:
    """Slope of the least-squares line y = a x + b; None when x has fewer than 2 distinct values."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0:
        return None
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def edit_decay(
    pred: Any,
    gt: Any,
    mask: Any,
    keyframes: Sequence[int] = (),
    window: int | None = None,
    names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Edit fidelity against distance from the nearest keyframe (see the module docstring), JSON-ready.

    Keys: ``psnr_per_frame`` (list, None for empty masks), ``distance`` (list or None), ``slope_db_per_frame``,
    ``psnr_within_first_window``, ``psnr_beyond_first_window``, ``beyond_minus_within_db`` (each None when
    undefined, with the reason under ``unavailable``), ``window``, ``keyframes``.
    """
    _require_mask(mask, names)
    p, g, m = check_inputs(pred, gt, mask, names)
    num_frames = g.shape[0]
    _checked_mask(m, names)
    keys = check_keyframe_indices(keyframes, num_frames) if keyframes else []
    if window is not None and (isinstance(window, bool) or int(window) < 1):
        raise SettingsError(f"window: got {window!r}; give the model's window in frames (1 or more), e.g. 8 or 14.")
    values = masked_psnr_per_frame(p, g, m)
    distance = keyframe_distance(num_frames, keys)
    use = ~np.isnan(values)
    use[keys] = False
    out: dict[str, Any] = {
        "psnr_per_frame": _jsonable(values),
        "distance": None if distance is None else [int(d) for d in distance],
        "keyframes": keys,
        "window": None if window is None else int(window),
        "slope_db_per_frame": None,
        "psnr_within_first_window": None,
        "psnr_beyond_first_window": None,
        "beyond_minus_within_db": None,
    }
    unavailable: dict[str, str] = {}
    if distance is None:
        unavailable["slope_db_per_frame"] = "no keyframes given, so the distance to a keyframe is undefined"
    else:
        out["slope_db_per_frame"] = least_squares_slope(distance[use], values[use])
        if out["slope_db_per_frame"] is None:
            unavailable["slope_db_per_frame"] = "fewer than 2 distinct keyframe distances among the masked frames"
    if window is None:
        for key in ("psnr_within_first_window", "psnr_beyond_first_window", "beyond_minus_within_db"):
            unavailable[key] = "no window given"
    else:
        frame = np.arange(num_frames)
        within, beyond = use & (frame < int(window)), use & (frame >= int(window))
        if within.any():
            out["psnr_within_first_window"] = float(values[within].mean())
        else:
            unavailable["psnr_within_first_window"] = "no masked non-keyframe frame in the first window"
        if beyond.any():
            out["psnr_beyond_first_window"] = float(values[beyond].mean())
        else:
            unavailable["psnr_beyond_first_window"] = f"no masked non-keyframe frame at or after frame {int(window)}"
        if within.any() and beyond.any():
            out["beyond_minus_within_db"] = out["psnr_beyond_first_window"] - out["psnr_within_first_window"]
        else:
            unavailable["beyond_minus_within_db"] = "one of the two means is undefined"
    out["unavailable"] = unavailable
    return out


# --------------------------------------------------------------------------- seams


def fill_colours(frames: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Mean R, G, B and brightness (Rec. 601 luma) over each frame's mask pixels, [F, 4]; NaN for empty masks."""
    out = np.full((frames.shape[0], 4), np.nan)
    for t in range(frames.shape[0]):
        if m[t].any():
            rgb = frames[t][:, m[t, 0]].mean(axis=1)
            out[t, :3] = rgb
            out[t, 3] = float(rgb @ LUMA)
    return out


def texture_jumps(frames: np.ndarray, m: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """[F-1]: mean |d_{t+1} - d_t| over the pixels in both masks (d = the frame minus its fill's mean colour); NaN
    where the masks do not overlap."""
    out = np.full(frames.shape[0] - 1, np.nan)
    for t in range(frames.shape[0] - 1):
        both = m[t, 0] & m[t + 1, 0]
        if both.any():
            a = frames[t][:, both] - colours[t, :3, None]
            b = frames[t + 1][:, both] - colours[t + 1, :3, None]
            out[t] = float(np.abs(b - a).mean())
    return out


def _texture_ratios(tex: np.ndarray, tex_gt: np.ndarray, b: list[int], i: list[int]) -> dict[str, Any]:
    """The texture part of :func:`seam_jumps`' result."""
    tb, ti = [t for t in b if not np.isnan(tex[t])], [t for t in i if not np.isnan(tex[t])]
    out: dict[str, Any] = {"texture_seam_ratio": None, "texture_seam_ratio_gt": None}
    why = {}
    if not tb:
        why["texture_seam_ratio"] = why["texture_seam_ratio_gt"] = "no boundary whose two masks overlap"
        return {**out, "unavailable": why}
    jb, jg = float(tex[tb].mean()), float(tex_gt[tb].mean())
    out.update(texture_jump_boundary=jb, texture_jump_gt_boundary=jg)
    out["texture_seam_ratio_gt"] = (jb + SEAM_EPS) / (jg + SEAM_EPS)
    if ti:
        out["texture_jump_inside"] = float(tex[ti].mean())
        out["texture_seam_ratio"] = (jb + SEAM_EPS) / (out["texture_jump_inside"] + SEAM_EPS)
    else:
        why["texture_seam_ratio"] = "no transition inside a window whose two masks overlap"
    return {**out, "unavailable": why}


def _ratios(num: np.ndarray, den: np.ndarray) -> dict[str, float]:
    return {ch: float((n + SEAM_EPS) / (d + SEAM_EPS)) for ch, n, d in zip(SEAM_CHANNELS, num, den)}


def check_schedule_for_clip(schedule: Schedule, num_frames: int, label: str = "schedule") -> None:
    """Raise :class:`ScheduleError` unless ``schedule`` was made for a clip of ``num_frames`` frames."""
    if schedule.num_frames != num_frames:
        raise ScheduleError(
            f"{label}: made for {schedule.num_frames} frames, the clip has {num_frames}. Build the schedule for this "
            f"clip: python -m kfi_core schedule --frames {num_frames} --window {schedule.window} "
            f"--strategy {schedule.strategy} --json > S.json"
        )


def seam_jumps(
    pred: Any, gt: Any, mask: Any, schedule: Schedule, names: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Colour and brightness jumps of the fill at window boundaries (see the module docstring), JSON-ready.

    Keys: ``seam_ratio`` and ``seam_ratio_gt`` (the largest channel ratio, or None with the reason under
    ``unavailable``), ``seam_ratio_per_channel`` / ``seam_ratio_gt_per_channel`` ({r, g, b, brightness}),
    ``jump_boundary`` / ``jump_inside`` / ``jump_gt_boundary`` (mean jumps per channel), ``texture_seam_ratio`` /
    ``texture_seam_ratio_gt`` (and their ``texture_jump_*``), ``keyframe_seam_ratio`` / ``keyframe_seam_ratio_gt``
    (and ``jump_keyframe``), ``boundaries``, ``inside`` and ``keyframe_transitions`` (the t of each counted
    transition t -> t+1).
    """
    _require_mask(mask, names)
    p, g, m = check_inputs(pred, gt, mask, names)
    has = _checked_mask(m, names)
    check_schedule_for_clip(schedule, g.shape[0], (names or {}).get("schedule", "schedule"))
    kinds = classify_transitions(schedule, has)
    fill, truth = fill_colours(p, m), fill_colours(g, m)
    jump = np.abs(np.diff(fill, axis=0))  # [F-1, 4]; row t is the transition t -> t+1
    jump_gt = np.abs(np.diff(truth, axis=0))
    b, i = kinds["boundary"], kinds["inside"]
    out: dict[str, Any] = {
        "boundaries": b,
        "inside": i,
        "seam_ratio": None,
        "seam_ratio_gt": None,
        "seam_ratio_per_channel": None,
        "seam_ratio_gt_per_channel": None,
        "jump_boundary": None,
        "jump_inside": None,
        "jump_gt_boundary": None,
        "eps": SEAM_EPS,
    }
    unavailable: dict[str, str] = {}
    if not b:
        reason = "no window boundary between masked generated frames (one window, or the masks are empty there)"
        unavailable["seam_ratio"] = unavailable["seam_ratio_gt"] = reason
    else:
        jb, jg = jump[b].mean(axis=0), jump_gt[b].mean(axis=0)
        out["jump_boundary"] = dict(zip(SEAM_CHANNELS, map(float, jb)))
        out["jump_gt_boundary"] = dict(zip(SEAM_CHANNELS, map(float, jg)))
        out["seam_ratio_gt_per_channel"] = _ratios(jb, jg)
        out["seam_ratio_gt"] = max(out["seam_ratio_gt_per_channel"].values())
        if i:
            ji = jump[i].mean(axis=0)
            out["jump_inside"] = dict(zip(SEAM_CHANNELS, map(float, ji)))
            out["seam_ratio_per_channel"] = _ratios(jb, ji)
            out["seam_ratio"] = max(out["seam_ratio_per_channel"].values())
        else:
            unavailable["seam_ratio"] = "no transition inside a window (every window generates one masked frame)"
    texture = _texture_ratios(texture_jumps(p, m, fill), texture_jumps(g, m, truth), b, i)
    keyframe = _keyframe_ratios(jump, jump_gt, keyframe_transitions(schedule, has), i)
    out["unavailable"] = {**unavailable, **texture.pop("unavailable"), **keyframe.pop("unavailable")}
    return {**out, **texture, **keyframe}


def keyframe_transitions(schedule: Schedule, has_mask: Sequence[bool]) -> list[int]:
    """Transitions t -> t+1 (by t) between a keyframe and a generated frame, both with a mask."""
    sources = frame_sources(schedule)
    return [
        t
        for t in range(schedule.num_frames - 1)
        if bool(sources[t]) != bool(sources[t + 1]) and has_mask[t] and has_mask[t + 1]
    ]


def _keyframe_ratios(jump: np.ndarray, jump_gt: np.ndarray, k: list[int], i: list[int]) -> dict[str, Any]:
    """The keyframe part of :func:`seam_jumps`' result."""
    out: dict[str, Any] = {"keyframe_seam_ratio": None, "keyframe_seam_ratio_gt": None, "keyframe_transitions": k}
    if not k:
        why = "no keyframe next to a generated frame with a mask"
        return {**out, "unavailable": {"keyframe_seam_ratio": why, "keyframe_seam_ratio_gt": why}}
    jk = jump[k].mean(axis=0)
    out["jump_keyframe"] = dict(zip(SEAM_CHANNELS, map(float, jk)))
    out["keyframe_seam_ratio_gt"] = max(_ratios(jk, jump_gt[k].mean(axis=0)).values())
    if not i:
        return {**out, "unavailable": {"keyframe_seam_ratio": "no transition inside a window"}}
    out["keyframe_seam_ratio"] = max(_ratios(jk, jump[i].mean(axis=0)).values())
    return {**out, "unavailable": {}}


# --------------------------------------------------------------------------- files and everything


def long_clip_metrics(
    pred: Any,
    gt: Any,
    mask: Any,
    keyframes: Sequence[int] | None = None,
    window: int | None = None,
    schedule: Schedule | None = None,
    names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """:func:`edit_decay` and (with a schedule) :func:`seam_jumps` in one JSON-ready dict.

    ``keyframes`` default to the schedule's; ``window`` defaults to the schedule's window. Keys: ``decay``,
    ``seams`` (None without a schedule), ``frames``, ``fill_colour`` and ``gt_colour`` (per frame [R, G, B,
    brightness] of the fill and of the ground truth inside the mask, None for empty masks).
    """
    _require_mask(mask, names)
    p, g, m = check_inputs(pred, gt, mask, names)
    if schedule is not None:
        check_schedule_for_clip(schedule, g.shape[0], (names or {}).get("schedule", "schedule"))
        if keyframes is None:
            keyframes = list(schedule.keyframes)
        if window is None:
            window = schedule.window
    if keyframes:
        try:
            keyframes = check_keyframe_indices(keyframes, g.shape[0])
        except KeyframeError as err:
            raise KeyframeError(f"{(names or {}).get('keyframes', 'keyframes')}: {err}") from None
    decay = edit_decay(p, g, m, keyframes or (), window, names)
    seams = None if schedule is None else seam_jumps(p, g, m, schedule, names)
    logger.info(
        "long clip: slope %s dB/frame, seam ratio %s",
        decay["slope_db_per_frame"],
        None if seams is None else seams["seam_ratio"],
    )
    colours = {
        name: [_jsonable(row) for row in fill_colours(x, m)] for name, x in (("fill_colour", p), ("gt_colour", g))
    }
    return {"frames": int(g.shape[0]), "decay": decay, "seams": seams, **colours}
