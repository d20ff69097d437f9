"""Long-video schedules as data: which frames each model call sees, and what it does with them.

An SVD img2vid UNet sees ``window`` frames at once (14 or 25; the tiny test model 8). A longer clip
is inpainted in several model calls. A :class:`Schedule` says which ones, and nothing else: it is
plain data (JSON round trip, :meth:`Schedule.validate`), built by a function in :data:`SCHEDULES`
and run by the executor, which never needs to know which strategy made it.

Data model
----------
``Schedule.stages`` run one after the other. A :class:`Stage` holds :class:`Window` s that do not
depend on each other: they may run in any order or in parallel. A window lists at most ``window``
frame indices in **ascending order**, which is the order the model sees them (SVD's temporal layers
assume time runs forward through the window; the indices need not be consecutive). Each frame of a
window has exactly one role:

``generate``
    the window inpaints the frame and its output is kept. Outside a fused stage, every frame that
    is not a keyframe is generated exactly once in the whole schedule.
``known``
    the frame enters fully known (mask empty): a keyframe (a user-edited frame), or a frame
    generated in an EARLIER stage. A frame generated in stage s is never ``known`` in stage s.
``context``
    the frame's observed pixels condition the window (its mask is the user's mask) and what the
    window generates for it is thrown away: "conditioning on incomplete frames" (Hoppe et al.,
    "Diffusion Models for Video Prediction and Infilling", Sec. 4.4), which KFI's symmetric mask
    condition supports directly. A context frame must not be generated yet, neither before nor in
    its own stage (it is generated in a later one); otherwise it would be ``known``. So a context
    frame only ever uses the original video, and windows of one stage stay independent.

Keyframes are ``known`` wherever they appear and never generated. A stage with ``fused=True``
(MultiDiffusion) lets several of its windows generate the same frame: the executor averages their
denoised estimates at every step (Bar-Tal et al., "MultiDiffusion", 2023).

A clip no longer than one window gets one stage with one window under every strategy, generating
every frame that is not a keyframe, so its result is identical to a single-window run.

Strategies (:data:`SCHEDULES`)
------------------------------
``anchor`` (KFI's coarse-to-fine default; the KFI paper's supplement, Fig. 4), ``multidiffusion``
(temporal MultiDiffusion, the baseline of that figure), and the sampling schemes of Hoppe et al.
(Sec. 4.5, Figs. 3 and 5, App. C): ``autoregressive``, ``hierarchy2``, ``improved-ar``,
``far-future``, ``3-res``, ``reverse``. Each builder's docstring states its choices.

Cost: :func:`schedule_cost` counts UNet frame-evaluations per output frame (per denoising step and
per guidance pass): every frame in a window costs one, whatever its role.
"""

from __future__ import annotations

import bisect
import heapq
import inspect
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kfi_core.errors import KeyframeError, ScheduleError, UnknownNameError, UnsupportedSizeError

logger = logging.getLogger(__name__)

#: The roles a frame can have in a window.
ROLES = ("generate", "known", "context")
GENERATE, KNOWN, CONTEXT = ROLES

#: Smallest window a builder accepts: one generated frame between two known ones.
MIN_WINDOW = 3

#: Written into every schedule's JSON; bump when the layout changes.
SCHEDULE_FORMAT = "kfi-schedule"
SCHEDULE_FORMAT_VERSION = 1

#: 3-res strides of Hoppe et al. Sec. 4.5: every 15th frame, then every 5th, then all.
DEFAULT_3RES_STRIDES = (15, 5)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Window:
    """One model call: ``frames`` (ascending, the order the model sees them) and one role per frame."""

    frames: tuple[int, ...]
    roles: tuple[str, ...]

    @property
    def generate(self) -> tuple[int, ...]:
        return tuple(f for f, r in zip(self.frames, self.roles) if r == GENERATE)

    @property
    def known(self) -> tuple[int, ...]:
        return tuple(f for f, r in zip(self.frames, self.roles) if r == KNOWN)

    @property
    def context(self) -> tuple[int, ...]:
        return tuple(f for f, r in zip(self.frames, self.roles) if r == CONTEXT)

    def role_of(self, frame: int) -> str | None:
        """The role of ``frame`` in this window, or None when the window does not hold it."""
        for f, r in zip(self.frames, self.roles):
            if f == frame:
                return r
        return None

    def to_dict(self) -> dict:
        return {"frames": list(self.frames), "roles": list(self.roles)}


@dataclass(frozen=True)
class Stage:
    """Windows that run after every earlier stage and do not depend on each other.

    ``fused``: several windows may generate the same frame; their estimates are averaged at
    every denoising step (MultiDiffusion). Otherwise each frame is generated by one window.
    """

    windows: tuple[Window, ...]
    fused: bool = False

    def to_dict(self) -> dict:
        return {"fused": self.fused, "windows": [w.to_dict() for w in self.windows]}


@dataclass(frozen=True)
class Schedule:
    """A long-video schedule: stages of windows over a clip of ``num_frames`` frames.

    ``strategy`` and ``options`` record how it was built (informative only; the stages are the
    schedule). ``keyframes`` are sorted frame indices. Frame, stage and window numbers in error
    messages and summaries count stages and windows from 1, frames from 0.
    """

    strategy: str
    num_frames: int
    window: int
    keyframes: tuple[int, ...] = ()
    stages: tuple[Stage, ...] = ()
    options: dict = field(default_factory=dict)

    # ---- views

    @property
    def windows(self) -> list[Window]:
        """All windows, stage by stage."""
        return [w for s in self.stages for w in s.windows]

    def generated_in(self) -> dict[int, int]:
        """Frame -> index (from 0) of the stage that generates it (keyframes are absent)."""
        out: dict[int, int] = {}
        for si, stage in enumerate(self.stages):
            for w in stage.windows:
                for f in w.generate:
                    out.setdefault(f, si)
        return out

    # ---- JSON

    def to_dict(self) -> dict:
        return {
            "format": SCHEDULE_FORMAT,
            "version": SCHEDULE_FORMAT_VERSION,
            "strategy": self.strategy,
            "num_frames": self.num_frames,
            "window": self.window,
            "keyframes": list(self.keyframes),
            "options": dict(self.options),
            "stages": [s.to_dict() for s in self.stages],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping) -> Schedule:
        """Read a dict written by :meth:`to_dict`, then :meth:`validate` it."""
        if not isinstance(data, Mapping):
            raise ScheduleError(f"schedule: got {type(data).__name__}; give the JSON object written by to_json().")
        if data.get("format") != SCHEDULE_FORMAT or data.get("version") != SCHEDULE_FORMAT_VERSION:
            raise ScheduleError(
                f"schedule: format {data.get('format')!r} version {data.get('version')!r}; this KFI reads "
                f"{SCHEDULE_FORMAT!r} version {SCHEDULE_FORMAT_VERSION}. Rebuild the schedule with this version."
            )
        try:
            stages = tuple(
                Stage(
                    windows=tuple(
                        Window(frames=tuple(_as_int(f) for f in w["frames"]), roles=tuple(str(r) for r in w["roles"]))
                        for w in s["windows"]
                    ),
                    fused=_as_bool(s.get("fused", False)),
                )
                for s in data["stages"]
            )
            schedule = cls(
                strategy=str(data["strategy"]),
                num_frames=_as_int(data["num_frames"]),
                window=_as_int(data["window"]),
                keyframes=tuple(_as_int(k) for k in data.get("keyframes", ())),
                stages=stages,
                options=dict(data.get("options", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ScheduleError(
                f"schedule: malformed JSON ({type(err).__name__}: {err}). Each stage needs 'windows' (and "
                "'fused'), each window 'frames' and 'roles' lists; write schedules with Schedule.to_json()."
            ) from None
        schedule.validate()
        return schedule

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        """Parse JSON written by :meth:`to_json` and validate it."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as err:
            raise ScheduleError(f"schedule: not valid JSON ({err}); give the text written by to_json().") from None
        return cls.from_dict(data)

    # ---- checks

    def validate(self) -> Schedule:
        """Raise :class:`ScheduleError` unless every rule of the module docstring holds; return self."""
        n, size = self.num_frames, self.window
        if not isinstance(n, int) or n < 1:
            raise ScheduleError(f"schedule.num_frames: got {n!r}; a clip has at least 1 frame.")
        if not isinstance(size, int) or size < 1:
            raise ScheduleError(f"schedule.window: got {size!r}; the model sees at least 1 frame.")
        keys = self.keyframes
        if list(keys) != sorted(set(keys)) or any(not 0 <= k < n for k in keys):
            raise ScheduleError(
                f"schedule.keyframes: got {list(keys)}; give distinct indices from 0 to {n - 1} in ascending order."
            )
        keyset = set(keys)
        generated: dict[int, int] = {}  # frame -> stage index
        for si, stage in enumerate(self.stages):
            where = f"stage {si + 1}"
            if not stage.windows:
                raise ScheduleError(f"schedule: {where} has no windows; remove empty stages.")
            in_stage: set[int] = set()
            context_here: list[tuple[int, str]] = []
            for wi, win in enumerate(stage.windows):
                where = f"stage {si + 1}, window {wi + 1}"
                frames, roles = win.frames, win.roles
                if len(frames) != len(roles):
                    raise ScheduleError(
                        f"schedule: {where} has {len(frames)} frames but {len(roles)} roles; give one role per frame."
                    )
                if not 1 <= len(frames) <= size:
                    raise ScheduleError(
                        f"schedule: {where} holds {len(frames)} frames; the model sees 1 to {size} (window={size}). "
                        "Split it or rebuild the schedule for this window size."
                    )
                if any(not isinstance(f, int) or not 0 <= f < n for f in frames):
                    raise ScheduleError(f"schedule: {where} has frames {list(frames)} outside 0..{n - 1}.")
                if any(a >= b for a, b in zip(frames, frames[1:])):
                    raise ScheduleError(
                        f"schedule: {where} frames {list(frames)} are not strictly ascending; list each frame once, "
                        "in the order the model sees them (time order)."
                    )
                bad = [r for r in roles if r not in ROLES]
                if bad:
                    raise ScheduleError(f"schedule: {where} has roles {bad}; use one of {list(ROLES)}.")
                if GENERATE not in roles:
                    raise ScheduleError(f"schedule: {where} generates no frame; drop the window.")
                for f, r in zip(frames, roles):
                    if f in keyset and r != KNOWN:
                        raise ScheduleError(
                            f"schedule: keyframe {f} has role {r!r} in {where}; keyframes are always 'known'."
                        )
                    if r == KNOWN:
                        if f not in keyset and f not in generated:
                            later = " (it is generated in this stage)" if f in in_stage else ""
                            raise ScheduleError(
                                f"schedule: frame {f} is 'known' in {where} but no earlier stage generated it{later}. "
                                "Generate it in an earlier stage or make it 'context'."
                            )
                    elif r == GENERATE:
                        if f in generated:
                            raise ScheduleError(
                                f"schedule: frame {f} is generated in {where} and already in stage "
                                f"{generated[f] + 1}; generate each frame in one stage (use 'known' afterwards)."
                            )
                        if f in in_stage and not stage.fused:
                            raise ScheduleError(
                                f"schedule: frame {f} is generated by two windows of stage {si + 1}; give it to one "
                                "window, or mark the stage fused=True to average them (MultiDiffusion)."
                            )
                        in_stage.add(f)
                    else:  # context
                        if f in generated:
                            raise ScheduleError(
                                f"schedule: frame {f} is 'context' in {where} but stage {generated[f] + 1} already "
                                "generated it; use it as 'known'."
                            )
                        context_here.append((f, where))
            for f, w in context_here:
                if f in in_stage:
                    raise ScheduleError(
                        f"schedule: frame {f} is 'context' in {w} and generated in the same stage; windows of a "
                        "stage must not depend on each other. Use it in a later stage as 'known'."
                    )
            for f in in_stage:
                generated[f] = si
        missing = [f for f in range(n) if f not in keyset and f not in generated]
        if missing:
            raise ScheduleError(
                f"schedule: frames {_format_ranges(missing)} are never generated (and are not keyframes); every "
                "frame of the clip needs a window that generates it."
            )
        return self


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a whole number, got {value!r}")
    return value


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


# --------------------------------------------------------------------------- building blocks

Roles = dict  # a window under construction: frame -> role (insertion order free; sorted when frozen)


def _check_build_args(num_frames: int, window: int, keyframes: Iterable[int]) -> tuple[int, ...]:
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


def _check_int_option(name: str, value: Any, lo: int, hi: int, why: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ScheduleError(f"{name}: got {value!r}; give a whole number from {lo} to {hi} ({why}).")
    return value


def _even_positions(lo: int, hi: int, pieces: int) -> list[int]:
    """The ``pieces - 1`` points that cut [lo, hi] into ``pieces`` near-equal parts (needs hi - lo >= pieces)."""
    span = hi - lo
    return [lo + (j * span + pieces // 2) // pieces for j in range(1, pieces)]


def _spread_over(coords: Sequence[int], base: Iterable[int], cap: int) -> list[int]:
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
        chosen.extend(_even_positions(a, b, c + 1))
    return [coords[i] for i in sorted(chosen)]


def _parts(steps: int, window: int) -> int:
    """Into how many parts to cut a gap of ``steps`` leaf intervals: all of them when they fit in
    one window, else the fewest parts that each complete in the same number of further stages."""
    if steps <= window - 1:
        return steps
    cap = window - 1
    while -(-steps // cap) > window - 1:
        cap *= window - 1
    return -(-steps // cap)


def _window_over(points: Sequence[int], done: set[int]) -> Roles:
    """A window holding ``points``: frames in ``done`` (keyframes, earlier stages) known, the rest generated."""
    return {f: (KNOWN if f in done else GENERATE) for f in points}


def _top_windows(points: Sequence[int], keyset: set[int], window: int) -> list[Roles]:
    """The first stage over the top-level points: one window when they fit, else one per new end frame."""
    if len(points) <= window:
        return [_window_over(points, keyset)]
    # Only when keyframes alone overflow a window: the new points are then the first/last frame,
    # each generated next to its nearest keyframes.
    out = []
    if points[0] not in keyset:
        out.append(_window_over(points[:window], keyset))
    if points[-1] not in keyset:
        out.append(_window_over(points[-window:], keyset))
    return out


def _merge_windows(windows: list[Roles], window: int) -> list[Roles]:
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


def _fill_context(stages: list[list[Roles]], window: int, keyset: set[int], per_frame: int) -> None:
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
            cands.sort(key=lambda f: (_distance_to(gen, f), f))
            for f in cands[:room]:
                w[f] = CONTEXT


def _distance_to(sorted_frames: list[int], f: int) -> int:
    """Distance from ``f`` to the nearest of ``sorted_frames`` (non-empty)."""
    i = bisect.bisect_left(sorted_frames, f)
    best = abs(sorted_frames[i] - f) if i < len(sorted_frames) else 1 << 30
    if i:
        best = min(best, f - sorted_frames[i - 1])
    return best


def _ar_pass(grid: Sequence[int], done: set[int], window: int, overlap: int, future: int, mode: str) -> list[Roles]:
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
        roles.update(_window_over(block, done))
        roles.update({f: (KNOWN if f in done else CONTEXT) for f in ahead})
        out.append(roles)
        done.update(block)
        i += len(block)


def _gap_ar(a: int, b: int, window: int, overlap: int) -> list[Roles]:
    """Windows that fill the frames strictly between known frames ``a`` and ``b``, one per stage.

    A gap that fits is one window [a..b]; a longer one is swept left to right, each window holding
    up to ``overlap`` frames just done (``a`` first), a block, and ``b`` (known).
    """
    if b - a + 1 <= window:
        return [_window_over(range(a, b + 1), {a, b})]
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


def _assemble(
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


def _single_window(strategy: str, num_frames: int, window: int, keyframes: tuple[int, ...], options: dict):
    """The schedule of a clip no longer than one window: one stage, one window, keyframes known."""
    return _assemble(strategy, num_frames, window, keyframes, [[_window_over(range(num_frames), set(keyframes))]],
                     options)


def _mirror(schedule: Schedule, strategy: str) -> Schedule:
    """The same schedule with time reversed (frame f -> num_frames - 1 - f)."""
    last = schedule.num_frames - 1
    stages = [[{last - f: r for f, r in zip(w.frames, w.roles)} for w in s.windows] for s in schedule.stages]
    keys = tuple(sorted(last - k for k in schedule.keyframes))
    return _assemble(strategy, schedule.num_frames, schedule.window, keys, stages, dict(schedule.options),
                     [s.fused for s in schedule.stages])


def _default_overlap(window: int) -> int:
    return max(1, window // 4)


# --------------------------------------------------------------------------- builders


def build_anchor_schedule(
    num_frames: int, window: int, keyframes: Iterable[int] = (), *, anchor_spacing: int | None = None,
    context: int = 2,
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

    With more than ``window - 2`` keyframes stage 1 cannot hold them all; it then only generates
    the first and last frames (when not keyframes) next to their nearest keyframes, and the
    keyframes bracket the gaps.
    """
    keys = _check_build_args(num_frames, window, keyframes)
    spacing = window - 1 if anchor_spacing is None else anchor_spacing
    spacing = _check_int_option("anchor_spacing", spacing, 2, window - 1,
                                "frames between neighbouring anchors; a gap must fit in one window")
    context = _check_int_option("context", context, 0, window, "context frames per generated frame; 0 for none")
    options = {"anchor_spacing": spacing, "context": context}
    if num_frames <= window:
        return _single_window("anchor", num_frames, window, keys, options)

    keyset = set(keys)
    # Leaf grid: first, last and keyframes, each gap cut into near-equal parts of <= spacing frames.
    base = sorted({0, num_frames - 1, *keys})
    grid = list(base)
    for a, b in zip(base, base[1:]):
        grid.extend(_even_positions(a, b, -(-(b - a) // spacing)))
    grid.sort()
    index = {f: i for i, f in enumerate(grid)}
    base_idx = [index[f] for f in base]
    if len(grid) <= window:
        points = grid
    elif len(base) >= window:
        points = base
    else:  # fewest top anchors from which every gap completes in the same number of stages
        cap = window - 1
        while sum(-(-(j - i) // cap) for i, j in zip(base_idx, base_idx[1:])) + 1 > window:
            cap *= window - 1
        cuts = list(base_idx)
        for i, j in zip(base_idx, base_idx[1:]):
            cuts.extend(_even_positions(i, j, -(-(j - i) // cap)))
        points = [grid[k] for k in sorted(cuts)]
    stages: list[list[Roles]] = [_top_windows(points, keyset, window)]

    def subdivide(i: int, j: int, depth: int) -> None:
        """Fill grid[i]..grid[j] (both known by stage ``depth``)."""
        while len(stages) <= depth:
            stages.append([])
        a, b = grid[i], grid[j]
        if j - i == 1:
            if b - a > 1:
                stages[depth].append(_window_over(range(a, b + 1), {a, b}))
            return
        cuts = [i, *_even_positions(i, j, _parts(j - i, window)), j]
        stages[depth].append(_window_over([grid[k] for k in cuts], {a, b}))
        for x, y in zip(cuts, cuts[1:]):
            subdivide(x, y, depth + 1)

    for a, b in zip(points, points[1:]):
        subdivide(index[a], index[b], 1)
    stages = [_merge_windows(ws, window) for ws in stages if ws]
    if context:
        _fill_context(stages, window, keyset, context)
    return _assemble("anchor", num_frames, window, keys, stages, options)


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
    keys = _check_build_args(num_frames, window, keyframes)
    overlap = window // 2 if overlap is None else overlap
    overlap = _check_int_option("overlap", overlap, 0, window - 1, "frames shared by neighbouring windows")
    options = {"overlap": overlap}
    if num_frames <= window:
        return _single_window("multidiffusion", num_frames, window, keys, options)
    stride = window - overlap
    starts = list(range(0, num_frames - window, stride)) + [num_frames - window]
    keyset = set(keys)
    ws = [_window_over(range(s, s + window), keyset) for s in starts]
    return _assemble("multidiffusion", num_frames, window, keys, [ws], options, fused=[True])


def _ar_options(window: int, overlap: int | None, future: int | None, with_future: bool) -> dict:
    overlap = _default_overlap(window) if overlap is None else overlap
    hi = window - 1 - (1 if with_future else 0)
    overlap = _check_int_option("overlap", overlap, 0, hi, "known frames each window takes from the ones before it")
    options = {"overlap": overlap}
    if with_future:
        future = _default_overlap(window) if future is None else future
        future = _check_int_option("future", future, 1, window - 1 - overlap,
                                   f"context frames ahead; overlap + future must leave room to generate in a "
                                   f"window of {window}")
        options["future"] = future
    return options


def _build_ar(strategy: str, num_frames: int, window: int, keyframes: Iterable[int], overlap: int | None,
              future: int | None, mode: str) -> Schedule:
    """One left-to-right sweep, one window per stage; ``mode`` picks the future context ("" none,
    "near" the next frames, "far" spread over the rest of the clip)."""
    keys = _check_build_args(num_frames, window, keyframes)
    options = _ar_options(window, overlap, future, with_future=bool(mode))
    if num_frames <= window:
        return _single_window(strategy, num_frames, window, keys, options)
    ws = _ar_pass(range(num_frames), set(keys), window, options["overlap"], options.get("future", 0), mode)
    return _assemble(strategy, num_frames, window, keys, [[w] for w in ws], options)


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
    keys = _check_build_args(num_frames, window, keyframes)
    last = num_frames - 1
    forward = build_autoregressive_schedule(num_frames, window, [last - k for k in keys], overlap=overlap)
    return _mirror(forward, "reverse")


def build_improved_ar_schedule(
    num_frames: int, window: int, keyframes: Iterable[int] = (), *, overlap: int | None = None,
    future: int | None = None,
) -> Schedule:
    """Improved AR (Hoppe et al. Sec. 4.5, Fig. 5(a)): AR that also sees the frames right after it.

    Each window: ``overlap`` known frames before (default ``window // 4``), a block of generated
    frames, then the next ``future`` frames (default ``window // 4``) as context (known if they are
    keyframes). The last window has no future and takes more past frames instead.
    """
    return _build_ar("improved-ar", num_frames, window, keyframes, overlap, future, "near")


def build_far_future_schedule(
    num_frames: int, window: int, keyframes: Iterable[int] = (), *, overlap: int | None = None,
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
    keys = _check_build_args(num_frames, window, keyframes)
    overlap = _default_overlap(window) if overlap is None else overlap
    overlap = _check_int_option("overlap", overlap, 1, window - 2, "known frames carried along a long gap")
    options = {"overlap": overlap}
    if num_frames <= window:
        return _single_window("hierarchy2", num_frames, window, keys, options)
    keyset = set(keys)
    points = _spread_over(range(num_frames), {0, num_frames - 1, *keys}, window)
    stages: list[list[Roles]] = [_top_windows(points, keyset, window)]
    for a, b in zip(points, points[1:]):
        for depth, w in enumerate(_gap_ar(a, b, window, overlap) if b - a > 1 else [], start=1):
            while len(stages) <= depth:
                stages.append([])
            stages[depth].append(w)
    stages = [_merge_windows(ws, window) for ws in stages]
    return _assemble("hierarchy2", num_frames, window, keys, stages, options)


def build_3res_schedule(
    num_frames: int, window: int, keyframes: Iterable[int] = (), *, strides: Sequence[int] = DEFAULT_3RES_STRIDES,
    overlap: int | None = None, future: int | None = None,
) -> Schedule:
    """3-Res. Improved AR (Hoppe et al. Sec. 4.5, Fig. 5(c)): Improved AR at three resolutions.

    First an ``improved-ar`` sweep over every ``strides[0]``-th frame (default 15, as the paper),
    then over every ``strides[1]``-th frame (default 5) with the frames already done known
    wherever they fall in a window, then over all frames. Each sweep is the ``improved-ar`` rule
    on its grid (``overlap`` and ``future`` counted in grid frames, defaults ``window // 4``).
    Any number of strides works (``[3]`` is the paper's 2-res), descending, each > 1.
    """
    keys = _check_build_args(num_frames, window, keyframes)
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
        return _single_window("3-res", num_frames, window, keys, options)
    done = set(keys)
    stages: list[list[Roles]] = []
    for step in [*strides, 1]:
        grid = range(0, num_frames, step)
        stages.extend([w] for w in _ar_pass(grid, done, window, options["overlap"], options["future"], "near"))
    return _assemble("3-res", num_frames, window, keys, stages, options)


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
        raise UnknownNameError(
            f"schedule: unknown strategy {name!r}; choose one of {', '.join(SCHEDULES)}."
        ) from None


def build_schedule(name: str, num_frames: int, window: int, keyframes: Iterable[int] = (), **options) -> Schedule:
    """Build the schedule of strategy ``name`` (a key of :data:`SCHEDULES`) and log its cost."""
    builder = _lookup(name)
    accepted = schedule_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ScheduleError(
            f"schedule {name!r}: unknown options {unknown}; it takes {sorted(accepted) or 'none'}."
        )
    schedule = builder(num_frames, window, tuple(keyframes), **options)
    if logger.isEnabledFor(logging.INFO):
        cost = schedule_cost(schedule)
        logger.info(
            "schedule %s: %d frames, window %d, %d keyframes -> %d stages, %d windows, %.3f frame-evaluations "
            "per output frame", name, num_frames, window, len(schedule.keyframes), cost["stages"], cost["windows"],
            cost["evaluations_per_output_frame"],
        )
    return schedule


# --------------------------------------------------------------------------- reports


def schedule_cost(schedule: Schedule) -> dict:
    """UNet frame-evaluations of a schedule, per denoising step and guidance pass.

    Every frame in a window costs one evaluation whatever its role (the model processes all of
    them). ``evaluations_per_output_frame`` = sum of window sizes / frames generated (frames that
    are not keyframes); 1.0 is the floor of a non-fused schedule, 0.0 when nothing is generated.
    """
    windows = schedule.windows
    counts = {role: sum(w.roles.count(role) for w in windows) for role in ROLES}
    evaluations = sum(len(w.frames) for w in windows)
    generated = schedule.num_frames - len(schedule.keyframes)
    return {
        "strategy": schedule.strategy,
        "frames": schedule.num_frames,
        "window": schedule.window,
        "keyframes": len(schedule.keyframes),
        "generated": generated,
        "evaluations": evaluations,
        "evaluations_per_output_frame": evaluations / generated if generated else 0.0,
        "generate_evaluations": counts[GENERATE],
        "known_evaluations": counts[KNOWN],
        "context_evaluations": counts[CONTEXT],
        "windows": len(windows),
        "stages": len(schedule.stages),
        "max_windows_per_stage": max((len(s.windows) for s in schedule.stages), default=0),
    }


def _format_ranges(frames: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    frames = sorted(frames)
    parts = []
    i = 0
    while i < len(frames):
        j = i
        while j + 1 < len(frames) and frames[j + 1] == frames[j] + 1:
            j += 1
        parts.append(str(frames[i]) if i == j else f"{frames[i]}-{frames[j]}")
        i = j + 1
    return ",".join(parts) or "-"


def format_schedule_summary(schedule: Schedule) -> str:
    """A compact human summary: one line per window (G generate, K known, C context) and the cost."""
    cost = schedule_cost(schedule)
    keys = _format_ranges(schedule.keyframes) if schedule.keyframes else "none"
    lines = [
        f"{schedule.strategy}: {schedule.num_frames} frames, window {schedule.window}, keyframes {keys}, "
        f"options {json.dumps(schedule.options)}"
    ]
    for si, stage in enumerate(schedule.stages):
        fused = ", fused" if stage.fused else ""
        lines.append(f"stage {si + 1} ({len(stage.windows)} window{'s' * (len(stage.windows) != 1)}{fused})")
        for wi, w in enumerate(stage.windows):
            text = f"  w{wi + 1} [{len(w.frames):>2}]  G {_format_ranges(w.generate)}"
            if w.known:
                text += f"  K {_format_ranges(w.known)}"
            if w.context:
                text += f"  C {_format_ranges(w.context)}"
            lines.append(text)
    lines.append(
        f"cost: {cost['evaluations_per_output_frame']:.3f} frame-evaluations per output frame "
        f"({cost['evaluations']} for {cost['generated']} generated frames), {cost['windows']} windows, "
        f"{cost['stages']} stages"
    )
    return "\n".join(lines)


#: Preview colours (RGB) per role; "keyframe" is a known keyframe, "absent" a frame not in the window.
PREVIEW_COLOURS = {
    "generate": (44, 160, 44),
    "known": (31, 119, 180),
    "context": (255, 160, 40),
    "keyframe": (214, 39, 40),
    "absent": (236, 236, 236),
}


def render_schedule_preview(schedule: Schedule, max_width: int = 1200):
    """Draw the schedule: frames along x, one row per window (stage by stage) along y.

    Returns a numpy uint8 image [H, W, 3]: a title line with the cost, one coloured cell per
    frame and window (colours :data:`PREVIEW_COLOURS`), stage labels on the left, a line between
    stages, the first and last frame numbers below, and a legend.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    n = schedule.num_frames
    rows = [(si, wi, w) for si, s in enumerate(schedule.stages) for wi, w in enumerate(s.windows)]
    label_w, pad, text_h = 64, 8, 14
    cell_w = max(1, min(16, (max_width - label_w - 2 * pad) // n))
    row_h = 12 if len(rows) <= 80 else max(2, 960 // len(rows))
    gap = 1 if row_h >= 4 else 0
    stage_sep = 3
    grid_w = cell_w * n
    grid_h = len(rows) * (row_h + gap) + stage_sep * max(0, len(schedule.stages) - 1)
    legend = list(PREVIEW_COLOURS)
    legend_w = 90 * len(legend)
    width = max(label_w + grid_w + 2 * pad, legend_w + 2 * pad, 420)
    height = pad + text_h + 4 + grid_h + 4 + text_h + 6 + text_h + pad
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    cost = schedule_cost(schedule)
    draw.text(
        (pad, pad),
        f"{schedule.strategy}: {n} frames, window {schedule.window}, {cost['stages']} stages, {cost['windows']} "
        f"windows, {cost['evaluations_per_output_frame']:.2f} evals/frame",
        fill=(0, 0, 0), font=font,
    )
    top = pad + text_h + 4
    x0 = pad + label_w
    keyset = set(schedule.keyframes)
    y = top
    last_stage = -1
    for si, wi, w in rows:
        if si != last_stage:
            if last_stage >= 0:
                draw.rectangle([x0, y, x0 + grid_w - 1, y + stage_sep - 2], fill=(90, 90, 90))
                y += stage_sep
            if row_h >= 10:
                fused = " fused" if schedule.stages[si].fused else ""
                draw.text((pad, y), f"S{si + 1}{fused}", fill=(0, 0, 0), font=font)
            last_stage = si
        draw.rectangle([x0, y, x0 + grid_w - 1, y + row_h - 1], fill=PREVIEW_COLOURS["absent"])
        for f, r in zip(w.frames, w.roles):
            colour = PREVIEW_COLOURS["keyframe" if (r == KNOWN and f in keyset) else r]
            draw.rectangle([x0 + f * cell_w, y, x0 + (f + 1) * cell_w - 1, y + row_h - 1], fill=colour)
        y += row_h + gap
    y = top + grid_h + 4
    draw.text((x0, y), "0", fill=(0, 0, 0), font=font)
    last_label = str(n - 1)
    draw.text((x0 + max(grid_w - 6 * len(last_label), 12), y), last_label, fill=(0, 0, 0), font=font)
    y += text_h + 6
    for j, name in enumerate(legend):
        lx = pad + 90 * j
        draw.rectangle([lx, y + 1, lx + 10, y + 11], fill=PREVIEW_COLOURS[name], outline=(0, 0, 0))
        draw.text((lx + 14, y), name, fill=(0, 0, 0), font=font)
    return np.asarray(img, dtype=np.uint8).copy()
