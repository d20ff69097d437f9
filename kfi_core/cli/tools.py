"""Inspection tools: ``eval`` (metrics of a result), ``masks`` (training mask sheet), ``schedule`` (long-video plan).

Each ``add_*_parser(subparsers)`` declares one sub-command's flags; its handler follows it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from kfi_core.errors import InputMismatchError, KeyframeError, MaskSynthesisError, ScheduleError, SettingsError
from kfi_core.evaluation import METRIC_KEYS, check_keyframe_indices, evaluate
from kfi_core.evaluation.long_clip import check_schedule_for_clip, long_clip_metrics
from kfi_core.evaluation.long_clip_plot import write_long_clip_plot
from kfi_core.files import atomic_file
from kfi_core.inference import build_schedule, format_schedule_summary, render_schedule_preview, schedule_cost
from kfi_core.inference.schedules import load_schedule_file
from kfi_core.media import atomic_path, read_frames, read_masks
from kfi_core.training import render_preview, sample_masks_with_info

logger = logging.getLogger("kfi_core.cli")  # the name the log lines have always shown

# --------------------------------------------------------------------------- eval


def add_eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="compare an inpainted clip with its ground truth: PSNR, SSIM, warping error, flicker, keyframes",
        description=(
            "Compute the metrics of kfi_core.evaluation.metrics for PRED against GT (and inside MASK when given). "
            "Each of PRED, GT and MASK is a video file, a folder of frames or one image; frame counts and sizes must "
            "match. Warping error uses optical flow on GT (OpenCV). LPIPS/VFID are reported as null unless "
            "local weights are configured; nothing is downloaded."
        ),
    )
    p.add_argument("--pred", required=True, help="the inpainted clip (video, frame folder or image)")
    p.add_argument("--gt", required=True, help="the ground-truth clip (video, frame folder or image)")
    p.add_argument(
        "--mask", default=None, help="inpainted region, 1 = white (video, folder or one image for all frames)"
    )
    p.add_argument(
        "--keyframe-index",
        type=int,
        nargs="+",
        action="extend",
        default=[],
        metavar="K",
        help="frame index whose GT frame served as a keyframe; repeatable (keyframe_psnr)",
    )
    p.add_argument(
        "--flow",
        default="dis",
        metavar="METHOD",
        help="OpenCV optical flow on GT for the warping error: dis (default) or farneback",
    )
    p.add_argument(
        "--schedule",
        default=None,
        metavar="S.json",
        help="the schedule the clip was inpainted with (what `schedule --json` prints): adds the seam ratios, "
        "and its window and keyframes are the defaults of --window and --keyframe-index for the long-clip metrics",
    )
    p.add_argument(
        "--window",
        type=int,
        default=None,
        metavar="N",
        help="the model's window in frames: PSNR beyond the first N frames against within them (default: the "
        "schedule's window)",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="OUT.png",
        help="draw per-frame PSNR and the fill's mean colour, with window boundaries and keyframes, to a PNG",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON (null = not applicable)")
    p.set_defaults(func=_cmd_eval)


# The long-clip numbers printed after METRIC_KEYS: (printed name, section of the report, key there).
LONG_CLIP_ROWS = (
    ("psnr_slope_db_per_frame", "decay", "slope_db_per_frame"),
    ("psnr_within_window", "decay", "psnr_within_first_window"),
    ("psnr_beyond_window", "decay", "psnr_beyond_first_window"),
    ("psnr_beyond_minus_within", "decay", "beyond_minus_within_db"),
    ("seam_ratio", "seams", "seam_ratio"),
    ("seam_ratio_gt", "seams", "seam_ratio_gt"),
    ("texture_seam_ratio", "seams", "texture_seam_ratio"),
    ("texture_seam_ratio_gt", "seams", "texture_seam_ratio_gt"),
    ("keyframe_seam_ratio", "seams", "keyframe_seam_ratio"),
    ("keyframe_seam_ratio_gt", "seams", "keyframe_seam_ratio_gt"),
)


def _long_clip_inputs(args: argparse.Namespace, num_frames: int):
    """Check the long-clip flags before any compute; return ``(schedule or None, window)``."""
    if args.mask is None:
        raise InputMismatchError(
            "--mask: the long-clip metrics (--schedule, --window, --plot) measure the fill inside the mask; "
            "pass --mask with the mask the clip was inpainted with."
        )
    if args.plot is not None and Path(args.plot).suffix.lower() != ".png":
        raise SettingsError(f"--plot: got {args.plot!r}; the plot is a PNG, give a file name ending in .png.")
    schedule = None
    if args.schedule is not None:
        schedule = load_schedule_file(args.schedule, f"--schedule {args.schedule}")
        check_schedule_for_clip(schedule, num_frames, f"--schedule {args.schedule}")
    window = args.window if args.window is not None else (schedule.window if schedule else None)
    if window is None:
        raise SettingsError(
            "--window: the long-clip metrics need the model's window (PSNR beyond the first window against "
            "within it); give --window N (e.g. 8 or 14) or --schedule S.json."
        )
    if window < 1:
        raise SettingsError(f"--window: got {window}; give the model's window in frames (1 or more), e.g. 14.")
    return schedule, window


def _cmd_eval(args: argparse.Namespace) -> int:
    names = {"pred": f"--pred {args.pred}", "gt": f"--gt {args.gt}", "mask": f"--mask {args.mask}"}
    pred, _ = read_frames(args.pred)
    gt, _ = read_frames(args.gt)
    mask = read_masks(args.mask) if args.mask else None
    long_clip = args.schedule is not None or args.window is not None or args.plot is not None
    schedule, window = _long_clip_inputs(args, gt.shape[0]) if long_clip else (None, None)
    keyframes = None
    if args.keyframe_index:
        # The reference for keyframe k is the ground-truth frame k (the frame a perfect edit reproduces).
        keyframes = {k: gt[k] for k in check_keyframe_indices(args.keyframe_index, gt.shape[0])}
    result = evaluate(pred, gt, mask, keyframes=keyframes, flow_method=args.flow, names=names)
    if long_clip:
        names["schedule"] = f"--schedule {args.schedule}"
        key_list = list(keyframes) if keyframes else None
        report = long_clip_metrics(pred, gt, mask, key_list, window, schedule, names)
        result["long_clip"] = report
        if args.plot is not None:
            write_long_clip_plot(report, args.plot, label=f"--plot {args.plot}")
            logger.info("long-clip plot written to %s", args.plot)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for key in METRIC_KEYS:
        value = result[key]
        print(f"{key:<22}{'-' if value is None else f'{value:.6g}':>14}  {result['unavailable'].get(key, '')}")
    if long_clip:
        _print_long_clip(result["long_clip"], schedule is not None)
    return 0


def _print_long_clip(report: dict, with_schedule: bool) -> None:
    """The long-clip rows in eval's table format: name, value (``-`` when undefined), reason."""
    for name, section, key in LONG_CLIP_ROWS:
        part = report[section]
        if part is None:
            value, reason = None, "no --schedule given" if not with_schedule else ""
        else:
            value, reason = part[key], part["unavailable"].get(key, "")
        print(f"{name:<26}{'-' if value is None else f'{value:.6g}':>10}  {reason}")


# --------------------------------------------------------------------------- masks


def add_masks_parser(sub) -> None:
    p = sub.add_parser(
        "masks",
        help="draw random training masks (full, grid, scribble, square, blob; moving, inverted) on a preview sheet",
        description=(
            "Sample random training masks the way training draws them "
            "(kfi_core.training.mask_synthesis.sample_masks, default MaskConfig) and draw a PNG sheet: one row per "
            "sample, labelled with its type, showing a few frames. "
            "White = region to inpaint. Sample i is drawn from numpy.random.default_rng([seed, i])."
        ),
    )
    p.add_argument("--preview", required=True, metavar="OUT.png", help="PNG sheet to write")
    p.add_argument("--count", type=int, default=16, help="number of samples (rows; default 16)")
    p.add_argument("--frames", type=int, default=8, help="frames per sample (default 8; up to 4 are shown)")
    p.add_argument("--size", default="64x64", metavar="HxW", help="mask height x width in pixels (default 64x64)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.set_defaults(func=_cmd_masks)


def _cmd_masks(args: argparse.Namespace) -> int:
    size = args.size.lower().split("x")
    if len(size) != 2 or not all(s.strip().isdigit() and int(s) > 0 for s in size):
        raise MaskSynthesisError(f"--size: got {args.size!r}; give HEIGHTxWIDTH in pixels, e.g. 64x64 or 320x576.")
    height, width = (int(s) for s in size)
    if args.count < 1 or args.seed < 0:
        raise MaskSynthesisError(f"--count, --seed: got {args.count}, {args.seed}; give a count >= 1 and a seed >= 0.")
    out = Path(args.preview)
    if out.suffix.lower() != ".png":
        raise MaskSynthesisError(f"--preview: got {out.name!r}; the sheet is a PNG, give a name ending in .png.")
    # sample i uses its own stream (seed, i), so one sample can be reproduced alone
    samples = [
        sample_masks_with_info(args.frames, height, width, np.random.default_rng([args.seed, i]))
        for i in range(args.count)
    ]
    with atomic_path(out) as tmp:
        render_preview(samples).save(tmp, format="PNG")
    logger.info("wrote %d mask samples (%d frames, %dx%d) to %s", args.count, args.frames, height, width, out)
    print(out)
    return 0


# --------------------------------------------------------------------------- schedule


def add_schedule_parser(sub) -> None:
    p = sub.add_parser(
        "schedule",
        help="build a long-video schedule (stages of windows) and print it with its cost",
        description=(
            "Build the schedule a long clip is inpainted with: which frames each model call generates, takes as "
            "known (keyframes, frames done earlier) or as context (observed pixels only). Prints a summary, or "
            "JSON with --json, and the cost in UNet frame-evaluations per output frame."
        ),
    )
    p.add_argument("--frames", type=int, required=True, help="frames in the clip")
    p.add_argument("--window", type=int, default=14, help="frames the model sees at once (SVD 14 or 25; default 14)")
    p.add_argument(
        "--strategy",
        default="anchor",
        help="anchor (default), multidiffusion, autoregressive, hierarchy2, improved-ar, far-future, 3-res or reverse",
    )
    p.add_argument("--keyframes", default="", help="keyframe indices, comma separated (e.g. 0,40; -1 = last)")
    p.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a strategy option, repeatable (e.g. overlap=4, anchor_spacing=10, strides=[15,5])",
    )
    p.add_argument("--json", action="store_true", help="print the schedule and its cost as JSON")
    p.add_argument("--preview", default=None, metavar="OUT.png", help="also draw the schedule to a PNG image")
    p.set_defaults(func=_cmd_schedule)


def _schedule_options(items: list[str]) -> dict:
    """``-o KEY=VALUE`` items as keyword arguments: a value is read as JSON, else kept as text."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ScheduleError(f"--option: got {item!r}; write KEY=VALUE, e.g. --option overlap=4.")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


def _cmd_schedule(args: argparse.Namespace) -> int:
    try:
        keyframes = [int(k) for k in args.keyframes.replace(";", ",").split(",") if k.strip()]
    except ValueError:
        raise KeyframeError(
            f"--keyframes: could not read {args.keyframes!r}; give frame numbers separated by commas, e.g. 0,40."
        ) from None
    options = _schedule_options(args.option)
    schedule = build_schedule(args.strategy, args.frames, args.window, keyframes, **options)
    if args.json:
        print(json.dumps({"schedule": schedule.to_dict(), "cost": schedule_cost(schedule)}, indent=2))
    else:
        print(format_schedule_summary(schedule))
    if args.preview:
        from PIL import Image

        out = Path(args.preview)
        if out.suffix.lower() != ".png":
            raise ScheduleError(f"--preview: got {str(out)!r}; give a file name ending in .png.")
        with atomic_file(out) as tmp:
            Image.fromarray(render_schedule_preview(schedule)).save(tmp, format="PNG")
        logger.info("schedule preview written to %s", out)
    return 0
