"""Building blocks of the schedule builders (:mod:`kfi_core.inference.schedule_builders`): argument checks, even
spreads of anchor points, windows under construction (dicts frame -> role) and their merging, context frames,
autoregressive passes, and :func:`assemble`, which freezes the stages into a validated
:class:`~kfi_core.inference.schedules.Schedule`."""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Sequence
from typing import Any

from kfi_core.errors import KeyframeError, ScheduleError, UnsupportedSizeError
from kfi_core.inference.schedules import CONTEXT, GENERATE, KNOWN, Schedule, Stage, Window

#: Smallest window a builder accepts: one generated frame between two known ones.
MIN_WINDOW = 3

Roles = dict  # a window under construction: frame -> role (insertion order free; sorted when frozen)


def check_build_args(num_frames: int, window: int, keyframes: Iterable[int]) -> tuple[int, ...]:
    """Check the common builder inputs; return the keyframes as sorted indices (-1 = last frame)."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise UnsupportedSizeError(f"num_frames: got {num_frames!r}; give the clip's frame count (at least 1).")
    if isinstance(window, bool) or not isinstance(window, int) or window < MIN_WINDOW:
        raise UnsupportedSizeError(
            f"window: got {window!r}; give the number of frames the model sees at once, at least {MIN_WINDOW} "
            "(SVD: 14 or 25; the tiny test model: 8)."
        )
    keys = []
    for k in keyframes:
        if isinstance(k, bool) or not isinstance(k, int) or not -num_frames <= k < num_frames:
            raise KeyframeError(
                f"keyframes: got {k!r} for a clip of {num_frames} frames. Give indices from 0 to "
                f"{num_frames - 1} (or -1 for the last frame)."
            )
        keys.append(k % num_frames)
    if len(set(keys)) != len(keys):
        raise KeyframeError(f"keyframes: {list(keyframes)} name the same frame twice; give each frame once.")
    return tuple(sorted(keys))


def check_int_option(name: str, value: Any, lo: int, hi: int, why: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ScheduleError(f"{name}: got {value!r}; give a whole number from {lo} to {hi} ({why}).")
    return value


def even_positions(lo: int, hi: int, pieces: int) -> list[int]:
    """The ``pieces - 1`` points that cut [lo, hi] into ``pieces`` near-equal parts (needs hi - lo >= pieces)."""
    span = hi - lo
    return [lo + (j * span + pieces // 2) // pieces for j in range(1, pieces)]


def spread_over(coords: Sequence[int], base: Iterable[int], cap: int) -> list[int]:
    """Up to ``cap`` points of ``coords`` (sorted frames) spread evenly: every ``base`` point, then more.

    Points go one at a time into the interval between base points whose parts would hold the
    most ``coords`` steps, until ``cap`` points are reached or every part is a single step. The
    base points are always kept, even when they alone exceed ``cap``.
    """
    index = {f: i for i, f in enumerate(coords)}
    base_idx = sorted(index[f] for f in set(base))
    if len(base_idx) >= cap:
        return [coords[i] for i in base_idx]
    steps = [b - a for a, b in zip(base_idx, base_idx[1:])]
    counts = [0] * len(steps)
    heap = [(-c, k) for k, c in enumerate(steps)]  # (-steps in the longest part, interval)
    heapq.heapify(heap)
    total = len(base_idx)
    while total < cap and heap:
        neg_longest, k = heapq.heappop(heap)
        if -neg_longest <= 1:
            break
        counts[k] += 1
        total += 1
        longest = -(-steps[k] // (counts[k] + 1))  # ceil(steps / parts)
        heapq.heappush(heap, (-longest, k))
    chosen = list(base_idx)
    for (a, b), c in zip(zip(base_idx, base_idx[1:]), counts):
        chosen.extend(even_positions(a, b, c + 1))
    return [coords[i] for i in sorted(chosen)]


def parts(steps: int, window: int) -> int:
    """Into how many parts to cut a gap of ``steps`` leaf intervals: all of them when they fit in
    one window, else the fewest parts that each complete in the same number of further stages."""
    if steps <= window - 1:
        return steps
    cap = window - 1
    while -(-steps // cap) > window - 1:
        cap *= window - 1
    return -(-steps // cap)


def window_over(points: Sequence[int], done: set[int]) -> Roles:
    """A window holding ``points``: frames in ``done`` (keyframes, earlier stages) known, the rest generated."""
    return {f: (KNOWN if f in done else GENERATE) for f in points}


def top_windows(points: Sequence[int], keyset: set[int], window: int) -> list[Roles]:
    """The first stage over the top-level points: one window when they fit, else one per new end frame."""
    if len(points) <= window:
        return [window_over(points, keyset)]
    # Only when keyframes alone overflow a window: the new points are then the first/last frame,
    # each generated next to its nearest keyframes.
    out = []
    if points[0] not in keyset:
        out.append(window_over(points[:window], keyset))
    if points[-1] not in keyset:
        out.append(window_over(points[-window:], keyset))
    return out


def merge_windows(windows: list[Roles], window: int) -> list[Roles]:
    """Greedily merge windows of one stage whose spans touch or overlap while the union fits.

    Merging never changes a frame's role (a frame held by two windows of one non-fused stage is
    known in both), it only saves the evaluations of shared known frames.
    """
    out: list[Roles] = []
    for w in sorted(windows, key=lambda w: (min(w), max(w))):
        if out:
            last = out[-1]
            if min(w) <= max(last) and len(last.keys() | w.keys()) <= window:
                for f, r in w.items():
                    if last.get(f, r) != r:  # pragma: no cover - a builder bug
                        raise AssertionError(f"merge: frame {f} is {last[f]} and {r} in one stage")
                    last[f] = r
                continue
        out.append(dict(w))
    return out


def fill_context(stages: list[list[Roles]], window: int, keyset: set[int], per_frame: int) -> None:
    """Add context frames to windows with room left (in place).

    Candidates are frames between the window's first and last frame that a LATER stage
    generates, nearest to a frame the window generates first (ties: lower index); a window takes
    at most ``per_frame`` per frame it generates, and never grows past ``window``.
    """
    later: dict[int, int] = {}
    for si, ws in enumerate(stages):
        for w in ws:
            for f, r in w.items():
                if r == GENERATE:
                    later[f] = si
    for si, ws in enumerate(stages):
        for w in ws:
            gen = sorted(f for f, r in w.items() if r == GENERATE)
            room = min(window - len(w), per_frame * len(gen))
            if room <= 0:
                continue
            lo, hi = min(w), max(w)
            cands = [f for f in range(lo + 1, hi) if f not in w and f not in keyset and later.get(f, -1) > si]
            cands.sort(key=lambda f: (distance_to(gen, f), f))
            for f in cands[:room]:
                w[f] = CONTEXT


def add_keyframes(stages: list[list[Roles]], window: int, keys: Sequence[int]) -> None:
    """Give every window that generates frames the keyframe nearest to them as a known frame (in place).

    A window that holds a keyframe already, or is full, is left as it is; so is every window without keyframes.
    Keyframes are known wherever they appear, so this only adds conditioning: the edit is seen by every window
    that generates frames, as far-future conditioning shows far frames."""
    if not keys:
        return
    keyset = set(keys)
    for ws in stages:
        for w in ws:
            gen = sorted(f for f, r in w.items() if r == GENERATE)
            if not gen or len(w) >= window or keyset & w.keys():
                continue
            w[min(keys, key=lambda k: (distance_to(gen, k), k))] = KNOWN


def distance_to(sorted_frames: list[int], f: int) -> int:
    """Distance from ``f`` to the nearest of ``sorted_frames`` (non-empty)."""
    i = bisect.bisect_left(sorted_frames, f)
    best = abs(sorted_frames[i] - f) if i < len(sorted_frames) else 1 << 30
    if i:
        best = min(best, f - sorted_frames[i - 1])
    return best


def ar_pass(grid: Sequence[int], done: set[int], window: int, overlap: int, future: int, mode: str) -> list[Roles]:
    """One autoregressive sweep over ``grid`` (sorted frames), left to right; one window per stage.

    Each window: up to ``overlap`` grid frames before the first frame still to do (all done:
    ``known``), then a block of consecutive grid frames (done ones ``known``, others generated),
    then ``future`` grid frames after the block (``mode="near"``: the next ones; ``"far"``: spread
    evenly over the rest of the grid, the last grid frame included; ``""``: none), ``context``
    unless already done. When the rest of the grid fits, the last window takes it all and fills
    its room with more past frames. Generated frames are added to ``done``.
    """
    out = []
    n = len(grid)
    i = 0
    while True:
        while i < n and grid[i] in done:
            i += 1
        if i == n:
            return out
        past = list(grid[max(0, i - overlap) : i])
        ahead: list[int] = []
        if n - i <= window - len(past):  # the rest fits: last window, more past instead of future
            block = list(grid[i:])
            past = list(grid[max(0, i - (window - len(block))) : i])
        else:
            ctx = future if mode else 0
            block = list(grid[i : i + window - len(past) - ctx])
            rest = grid[i + len(block) :]
            if mode == "near":
                ahead = list(rest[:ctx])
            elif mode == "far":
                ahead = [rest[(j * len(rest)) // ctx - 1] for j in range(1, ctx + 1)]
        roles: Roles = {f: KNOWN for f in past}
        roles.update(window_over(block, done))
        roles.update({f: (KNOWN if f in done else CONTEXT) for f in ahead})
        out.append(roles)
        done.update(block)
        i += len(block)


def gap_ar(a: int, b: int, window: int, overlap: int) -> list[Roles]:
    """Windows that fill the frames strictly between known frames ``a`` and ``b``, one per stage.

    A gap that fits is one window [a..b]; a longer one is swept left to right, each window holding
    up to ``overlap`` frames just done (``a`` first), a block, and ``b`` (known).
    """
    if b - a + 1 <= window:
        return [window_over(range(a, b + 1), {a, b})]
    out = []
    s = a + 1
    while s < b:
        past_lo = max(a, s - overlap)
        room = window - (s - past_lo) - 1
        if b - s <= room:  # the rest fits: take it all, more past in the room left
            past_lo = max(a, s - (window - 1 - (b - s)))
            end = b
        else:
            end = s + room
        roles = {f: KNOWN for f in range(past_lo, s)}
        roles.update({f: GENERATE for f in range(s, end)})
        roles[b] = KNOWN
        out.append(roles)
        s = end
    return out


def assemble(
    strategy: str,
    num_frames: int,
    window: int,
    keyframes: tuple[int, ...],
    stages: list[list[Roles]],
    options: dict,
    fused: Sequence[bool] = (),
) -> Schedule:
    """Freeze windows under construction into a validated :class:`Schedule`.

    Windows that generate nothing (all their frames keyframes) and stages left empty are dropped.
    """
    out = []
    for si, ws in enumerate(stages):
        frozen = []
        for w in sorted(ws, key=lambda w: (min(w), max(w))):
            if GENERATE not in w.values():
                continue
            frames = tuple(sorted(w))
            frozen.append(Window(frames=frames, roles=tuple(w[f] for f in frames)))
        if frozen:
            out.append(Stage(windows=tuple(frozen), fused=bool(fused[si]) if si < len(fused) else False))
    return Schedule(strategy, num_frames, window, keyframes, tuple(out), options).validate()


def single_window(strategy: str, num_frames: int, window: int, keyframes: tuple[int, ...], options: dict):
    """The schedule of a clip no longer than one window: one stage, one window, keyframes known."""
    return assemble(
        strategy, num_frames, window, keyframes, [[window_over(range(num_frames), set(keyframes))]], options
    )


def mirror(schedule: Schedule, strategy: str) -> Schedule:
    """The same schedule with time reversed (frame f -> num_frames - 1 - f)."""
    last = schedule.num_frames - 1
    stages = [[{last - f: r for f, r in zip(w.frames, w.roles)} for w in s.windows] for s in schedule.stages]
    keys = tuple(sorted(last - k for k in schedule.keyframes))
    return assemble(
        strategy,
        schedule.num_frames,
        schedule.window,
        keys,
        stages,
        dict(schedule.options),
        [s.fused for s in schedule.stages],
    )


def default_overlap(window: int) -> int:
    return max(1, window // 4)
