"""Schedule builders: one function per long-video strategy, in the name table :data:`SCHEDULES`.

A builder takes ``(num_frames, window, keyframes=(), **options)`` and returns a validated
:class:`~kfi_core.inference.schedules.Schedule`; :func:`build_schedule` picks one by name. Strategies:
``anchor`` (KFI's coarse-to-fine default; KFI supplement, Fig. 4), ``multidiffusion`` (its baseline) and
the schemes of Hoppe et al. (Sec. 4.5, Figs. 3 and 5, App. C): ``autoregressive``, ``hierarchy2``,
``improved-ar``, ``far-future``, ``3-res``, ``reverse``. Each builder's docstring states its choices.
Builders work on windows under construction (dicts frame -> role), which
:func:`~kfi_core.inference.schedule_blocks.assemble` freezes.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kfi_core.errors import ScheduleError, UnknownNameError
from kfi_core.inference import schedule_blocks as blocks
from kfi_core.inference.schedules import Schedule, schedule_cost

logger = logging.getLogger(__name__)

MIN_WINDOW = blocks.MIN_WINDOW

#: 3-res strides of Hoppe et al. Sec. 4.5: every 15th frame, then every 5th, then all.
DEFAULT_3RES_STRIDES = (15, 5)


# --------------------------------------------------------------------------- builders


def _top_anchors(grid: list[int], base: list[int], index: dict[int, int], window: int) -> list[int]:
    """The anchor schedule's stage-1 points: the whole grid when it fits in a window, the base points (first, last,
    keyframes) when they fill it, else the fewest grid points from which every gap completes in the same number of
    stages."""
    base_idx = [index[f] for f in base]
    if len(grid) <= window:
        return grid
    if len(base) >= window:
        return base
    cap = window - 1
    while sum(-(-(j - i) // cap) for i, j in zip(base_idx, base_idx[1:])) + 1 > window:
        cap *= window - 1
    cuts = list(base_idx)
    for i, j in zip(base_idx, base_idx[1:]):
        cuts.extend(blocks.even_positions(i, j, -(-(j - i) // cap)))
    return [grid[k] for k in sorted(cuts)]


def _anchor_options(window: int, anchor_spacing: int | None, context: int, keyframe_windows: bool) -> dict:
    """The anchor schedule's checked options, with the default spacing filled in."""
    if not isinstance(keyframe_windows, bool):
        raise ScheduleError(f"keyframe_windows: got {keyframe_windows!r}; give true or false.")
    room = 2 if keyframe_windows and window > MIN_WINDOW else 1  # frames a gap window leaves for its keyframe + 1
    spacing = window - room if anchor_spacing is None else anchor_spacing
    spacing = blocks.check_int_option(
        "anchor_spacing", spacing, 2, window - 1, "frames between neighbouring anchors; a gap must fit in one window"
    )
    context = blocks.check_int_option("context", context, 0, window, "context frames per generated frame; 0 for none")
    options = {"anchor_spacing": spacing, "context": context}
    if keyframe_windows:  # recorded only when on, so existing schedules' JSON stays as it was
        options["keyframe_windows"] = True
    return options


def build_anchor_schedule(
    num_frames: int,
    window: int,
    keyframes: Iterable[int] = (),
    *,
    anchor_spacing: int | None = None,
    context: int = 2,
    keyframe_windows: bool = False,
) -> Schedule:
    """KFI's coarse-to-fine schedule (KFI supplement, Fig. 4): anchors over the whole clip first.

    Anchor grid: the first frame, the last frame and every keyframe, with each gap between them
    cut into near-equal parts of at most ``anchor_spacing`` frames (default ``window - 1``, so a
    part fills in one window with both ends known). Stage 1 generates anchors spread evenly over
    the WHOLE clip in one window, keyframes among them (known): the whole grid when it fits in a
    window, else the fewest grid points from which every gap completes in the same number of
    stages. Each later stage fills the gaps left by earlier ones, conditioned on the anchors at
    both ends (known): a gap of one grid part is filled whole; a longer one gets its grid points
    (all when they fit, else evenly spread ones) and is filled in the next stage, recursively.
    Touching windows of one stage are merged while they fit (shared known frames count once).

    ``context`` (default 2): a window with room left also takes up to ``context`` context frames
    per frame it generates, the nearest frames of its span that a later stage generates. So sparse
    anchors see the observed pixels around them, which Hoppe et al. (Sec. 5.5.1) find Hierarchy-2
    lacks. Gap-filling windows are full, so long clips pay little for it; ``context=0`` is the
    cheapest schedule: about ``1 + 2 / (window - 1)`` evaluations per output frame for long clips
    (each anchor is generated once and known in its two gap windows).

    ``keyframe_windows`` (default off): every window that generates frames also holds the nearest keyframe as a
    known frame (:func:`~kfi_core.inference.schedule_blocks.add_keyframes`, before the context frames), so each
    window sees the edit itself rather than only anchors made from it. The default ``anchor_spacing`` is then
    ``window - 2``, which leaves a gap window room for the keyframe; a full window goes without.

    With more than ``window - 2`` keyframes stage 1 cannot hold them all; it then only generates
    the first and last frames (when not keyframes) next to their nearest keyframes, and the
    keyframes bracket the gaps.
    """
    keys = blocks.check_build_args(num_frames, window, keyframes)
    options = _anchor_options(window, anchor_spacing, context, keyframe_windows)
    spacing, context = options["anchor_spacing"], options["context"]
    if num_frames <= window:
        return blocks.single_window("anchor", num_frames, window, keys, options)

    keyset = set(keys)
    # Leaf grid: first, last and keyframes, each gap cut into near-equal parts of <= spacing frames.
    base = sorted({0, num_frames - 1, *keys})
    grid = list(base)
    for a, b in zip(base, base[1:]):
        grid.extend(blocks.even_positions(a, b, -(-(b - a) // spacing)))
    grid.sort()
    index = {f: i for i, f in enumerate(grid)}
    points = _top_anchors(grid, base, index, window)
    stages: list[list[blocks.Roles]] = [blocks.top_windows(points, keyset, window)]

    def subdivide(i: int, j: int, depth: int) -> None:
        """Fill grid[i]..grid[j] (both known by stage ``depth``)."""
        while len(stages) <= depth:
            stages.append([])
        a, b = grid[i], grid[j]
        if j - i == 1:
            if b - a > 1:
                stages[depth].append(blocks.window_over(range(a, b + 1), {a, b}))
            return
        cuts = [i, *blocks.even_positions(i, j, blocks.parts(j - i, window)), j]
        stages[depth].append(blocks.window_over([grid[k] for k in cuts], {a, b}))
        for x, y in zip(cuts, cuts[1:]):
            subdivide(x, y, depth + 1)

    for a, b in zip(points, points[1:]):
        subdivide(index[a], index[b], 1)
    stages = [blocks.merge_windows(ws, window) for ws in stages if ws]
    if keyframe_windows:
        blocks.add_keyframes(stages, window, keys)
    if context:
        blocks.fill_context(stages, window, keyset, context)
    return blocks.assemble("anchor", num_frames, window, keys, stages, options)


def build_multidiffusion_schedule(
    num_frames: int, window: int, keyframes: Iterable[int] = (), *, overlap: int | None = None
) -> Schedule:
    """Temporal MultiDiffusion (Bar-Tal et al. 2023), the baseline of the KFI supplement's Fig. 4.

    One fused stage of windows of ``window`` consecutive frames, ``window - overlap`` apart
    (default overlap ``window // 2``), the last one ending at the last frame; a frame held by
    several windows gets the average of their estimates at every denoising step. Keyframes are
    known in every window; windows holding only keyframes are dropped. About ``window /
    (window - overlap)`` evaluations per frame: 2 at half overlap.
    """
    keys = blocks.check_build_args(num_frames, window, keyframes)
    overlap = window // 2 if overlap is None else overlap
    overlap = blocks.check_int_option("overlap", overlap, 0, window - 1, "frames shared by neighbouring windows")
    options = {"overlap": overlap}
    if num_frames <= window:
        return blocks.single_window("multidiffusion", num_frames, window, keys, options)
    stride = window - overlap
    starts = list(range(0, num_frames - window, stride)) + [num_frames - window]
    keyset = set(keys)
    ws = [blocks.window_over(range(s, s + window), keyset) for s in starts]
    return blocks.assemble("multidiffusion", num_frames, window, keys, [ws], options, fused=[True])


def _ar_options(window: int, overlap: int | None, future: int | None, with_future: bool) -> dict:
    overlap = blocks.default_overlap(window) if overlap is None else overlap
    hi = window - 1 - (1 if with_future else 0)
    overlap = blocks.check_int_option(
        "overlap", overlap, 0, hi, "known frames each window takes from the ones before it"
    )
    options = {"overlap": overlap}
    if with_future:
        future = blocks.default_overlap(window) if future is None else future
        future = blocks.check_int_option(
            "future",
            future,
            1,
            window - 1 - overlap,
            f"context frames ahead; overlap + future must leave room to generate in a window of {window}",
        )
        options["future"] = future
    return options


def _build_ar(
    strategy: str,
    num_frames: int,
    window: int,
    keyframes: Iterable[int],
    overlap: int | None,
    future: int | None,
    mode: str,
) -> Schedule:
    """One left-to-right sweep, one window per stage; ``mode`` picks the future context ("" none,
    "near" the next frames, "far" spread over the rest of the clip)."""
    keys = blocks.check_build_args(num_frames, window, keyframes)
    options = _ar_options(window, overlap, future, with_future=bool(mode))
    if num_frames <= window:
        return blocks.single_window(strategy, num_frames, window, keys, options)
    ws = blocks.ar_pass(range(num_frames), set(keys), window, options["overlap"], options.get("future", 0), mode)
    return blocks.assemble(strategy, num_frames, window, keys, [[w] for w in ws], options)


def build_autoregressive_schedule(
    num_frames: int, window: int, keyframes: Iterable[int] = (), *, overlap: int | None = None
) -> Schedule:
    """Autoregressive (AR, Hoppe et al. Fig. 3(a)): left to right, one window per stage.

    Each window takes the last ``overlap`` frames before it as known (default ``window // 4``, at
    least 1; Hoppe et al. and FDM use half the window) and generates the next ``window - overlap``
    frames (keyframes among them known). The last window takes more past frames to stay full.
    """
    return _build_ar("autoregressive", num_frames, window, keyframes, overlap, None, "")


def build_reverse_schedule(
    num_frames: int, window: int, keyframes: Iterable[int] = (), *, overlap: int | None = None
) -> Schedule:
    """Reverse AR (Hoppe et al. Tables 4-5, App. F.2): ``autoregressive`` run from the last frame back.

    The exact mirror image of ``autoregressive`` (frame f -> N - 1 - f): it propagates content
    backwards in time, e.g. an object revealed late in the clip into the frames before it.
    """
    keys = blocks.check_build_args(num_frames, window, keyframes)
    last = num_frames - 1
    forward = build_autoregressive_schedule(num_frames, window, [last - k for k in keys], overlap=overlap)
    return blocks.mirror(forward, "reverse")


def build_improved_ar_schedule(
    num_frames: int,
    window: int,
    keyframes: Iterable[int] = (),
    *,
    overlap: int | None = None,
    future: int | None = None,
) -> Schedule:
    """Improved AR (Hoppe et al. Sec. 4.5, Fig. 5(a)): AR that also sees the frames right after it.

    Each window: ``overlap`` known frames before (default ``window // 4``), a block of generated
    frames, then the next ``future`` frames (default ``window // 4``) as context (known if they are
    keyframes). The last window has no future and takes more past frames instead.
    """
    return _build_ar("improved-ar", num_frames, window, keyframes, overlap, future, "near")


def build_far_future_schedule(
    num_frames: int,
    window: int,
    keyframes: Iterable[int] = (),
    *,
    overlap: int | None = None,
    future: int | None = None,
) -> Schedule:
    """Improved AR w/ Far Future (Hoppe et al. Sec. 4.5, Fig. 5(b)): context from far ahead.

    As ``improved-ar``, but the ``future`` context frames (default ``window // 4``) are spread
    evenly over all frames after the block, the last frame of the clip always among them (the
    paper shows far frames but gives no rule; this one reaches as far as the clip goes, and its
    spacing shrinks as the sweep nears the end).
    """
    return _build_ar("far-future", num_frames, window, keyframes, overlap, future, "far")


def build_hierarchy2_schedule(
    num_frames: int, window: int, keyframes: Iterable[int] = (), *, overlap: int | None = None
) -> Schedule:
    """Hierarchy-2 (FDM; Hoppe et al. Fig. 3(c)): a sparse window over the clip, then fill in.

    Stage 1: one full window of frames spread evenly over the whole clip (first, last and every
    keyframe among them; no context: this is the scheme that cannot use incomplete frames).
    Stage 2: each gap between those frames is filled conditioned on its two ends (touching gaps
    share a window while they fit). A gap too long for one window (clips over about
    ``window * (window - 1)`` frames) is swept left to right over several stages, each window
    holding ``overlap`` just-done frames (default ``window // 4``) and the far end (known).
    """
    keys = blocks.check_build_args(num_frames, window, keyframes)
    overlap = blocks.default_overlap(window) if overlap is None else overlap
    overlap = blocks.check_int_option("overlap", overlap, 1, window - 2, "known frames carried along a long gap")
    options = {"overlap": overlap}
    if num_frames <= window:
        return blocks.single_window("hierarchy2", num_frames, window, keys, options)
    keyset = set(keys)
    points = blocks.spread_over(range(num_frames), {0, num_frames - 1, *keys}, window)
    stages: list[list[blocks.Roles]] = [blocks.top_windows(points, keyset, window)]
    for a, b in zip(points, points[1:]):
        for depth, w in enumerate(blocks.gap_ar(a, b, window, overlap) if b - a > 1 else [], start=1):
            while len(stages) <= depth:
                stages.append([])
            stages[depth].append(w)
    stages = [blocks.merge_windows(ws, window) for ws in stages]
    return blocks.assemble("hierarchy2", num_frames, window, keys, stages, options)


def build_3res_schedule(
    num_frames: int,
    window: int,
    keyframes: Iterable[int] = (),
    *,
    strides: Sequence[int] = DEFAULT_3RES_STRIDES,
    overlap: int | None = None,
    future: int | None = None,
) -> Schedule:
    """3-Res. Improved AR (Hoppe et al. Sec. 4.5, Fig. 5(c)): Improved AR at three resolutions.

    First an ``improved-ar`` sweep over every ``strides[0]``-th frame (default 15, as the paper),
    then over every ``strides[1]``-th frame (default 5) with the frames already done known
    wherever they fall in a window, then over all frames. Each sweep is the ``improved-ar`` rule
    on its grid (``overlap`` and ``future`` counted in grid frames, defaults ``window // 4``).
    Any number of strides works (``[3]`` is the paper's 2-res), descending, each > 1.
    """
    keys = blocks.check_build_args(num_frames, window, keyframes)
    options = _ar_options(window, overlap, future, with_future=True)
    try:
        strides = [int(s) for s in strides]
    except (TypeError, ValueError):
        strides = None
    if not strides or any(s < 2 for s in strides) or any(a <= b for a, b in zip(strides, strides[1:])):
        raise ScheduleError(
            f"strides: got {strides!r}; give descending whole numbers above 1, e.g. [15, 5] (every 15th frame, "
            "then every 5th, then all)."
        )
    options["strides"] = strides
    if num_frames <= window:
        return blocks.single_window("3-res", num_frames, window, keys, options)
    done = set(keys)
    stages: list[list[blocks.Roles]] = []
    for step in [*strides, 1]:
        grid = range(0, num_frames, step)
        stages.extend([w] for w in blocks.ar_pass(grid, done, window, options["overlap"], options["future"], "near"))
    return blocks.assemble("3-res", num_frames, window, keys, stages, options)


#: Strategy name -> builder ``(num_frames, window, keyframes=(), **options) -> Schedule``; the
#: first is the default. Feeds the schedule node's Combo and the CLI's --strategy.
SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "anchor": build_anchor_schedule,
    "multidiffusion": build_multidiffusion_schedule,
    "autoregressive": build_autoregressive_schedule,
    "hierarchy2": build_hierarchy2_schedule,
    "improved-ar": build_improved_ar_schedule,
    "far-future": build_far_future_schedule,
    "3-res": build_3res_schedule,
    "reverse": build_reverse_schedule,
}


def schedule_options(name: str) -> dict[str, Any]:
    """The options a strategy takes, with their defaults (None: depends on the window)."""
    builder = _lookup(name)
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in inspect.signature(builder).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _lookup(name: str) -> Callable[..., Schedule]:
    try:
        return SCHEDULES[name]
    except (KeyError, TypeError):
        raise UnknownNameError(f"schedule: unknown strategy {name!r}; choose one of {', '.join(SCHEDULES)}.") from None


def build_schedule(name: str, num_frames: int, window: int, keyframes: Iterable[int] = (), **options) -> Schedule:
    """Build the schedule of strategy ``name`` (a key of :data:`SCHEDULES`) and log its cost."""
    builder = _lookup(name)
    accepted = schedule_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ScheduleError(f"schedule {name!r}: unknown options {unknown}; it takes {sorted(accepted) or 'none'}.")
    schedule = builder(num_frames, window, tuple(keyframes), **options)
    if logger.isEnabledFor(logging.INFO):
        cost = schedule_cost(schedule)
        logger.info(
            "schedule %s: %d frames, window %d, %d keyframes -> %d stages, %d windows, %.3f frame-evaluations "
            "per output frame",
            name,
            num_frames,
            window,
            len(schedule.keyframes),
            cost["stages"],
            cost["windows"],
            cost["evaluations_per_output_frame"],
        )
    return schedule
