"""The long-clip section's text: tables, the issue's verdict, the decay's cause, the levers (bench/long_clips.py
measures, this module writes; ``--render-only`` rewrites the section from the kept rows with it alone)."""

from __future__ import annotations

from pathlib import Path

BEGIN, END = "<!-- long_clips:begin -->", "<!-- long_clips:end -->"
LEVER_NOTES = {
    "keyframe-windows": "every window that generates frames also holds the keyframe as a known frame "
    "(anchor option keyframe_windows)",
    "shared-noise": "every window starts from the same noise frames (run_schedule noise='shared', FreeNoise-style)",
    "colour-match-known": "each window's colours fitted to its known frames (anchors, keyframes; "
    "color_match='keyframe') instead of the ring around the hole",
    "seam smoothing": "after the last window each generated frame's fill is shifted so its mean colour is the mean "
    "over the frames within r frames, keyframes fixed, each keyframe's colour is carried into the fill next to it "
    "(a ramp whose steps are no larger than the fill's steps elsewhere), and the fill's detail is cross-faded across "
    "each window boundary until it changes no more than inside the windows (kfi_core.inference.seams; "
    "seam_smoothing=r; a "
    "post-process of the same sample, so the '+ seam smoothing' rows cost nothing more)",
}
ORACLE = "GT mean colour per frame (oracle)"
#: The rows whose first clip gets a plot (besides the baselines and the oracle).
PLOT_ROWS = ("multidiffusion", "autoregressive", "anchor, no seam smoothing")
#: Schedules that also get a '+ seam smoothing' row (the done-when compares the default with them).
SMOOTHED_TOO = ("multidiffusion", "autoregressive")
COLUMNS = (
    ("psnr_mask", "PSNR mask"),
    ("within", "within 1st window"),
    ("beyond", "beyond 1st window"),
    ("beyond_minus_within", "beyond - within"),
    ("slope", "slope dB/frame"),
    ("seam", "seam ratio"),
    ("seam_gt", "seam ratio vs GT"),
    ("tex_seam", "texture seam ratio"),
    ("kf_seam", "keyframe seam ratio"),
    ("warp", "warp err mask"),
    ("evals", "evals/frame"),
)


def default_label() -> str:
    from kfi_core.inference.executor import DEFAULT_SCHEDULE
    from kfi_core.inference.settings import DEFAULT_SEAM_SMOOTHING

    if DEFAULT_SEAM_SMOOTHING:
        return f"{DEFAULT_SCHEDULE} + seam smoothing {DEFAULT_SEAM_SMOOTHING} (default)"
    return f"{DEFAULT_SCHEDULE} (default)"


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and abs(v) < 1 and v != 0:
        return f"{v:.3f}"
    return f"{v:.{digits}f}"


def table(rows) -> str:
    head = "| method | " + " | ".join(title for _, title in COLUMNS) + " | s/clip |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for label, mean, _, seconds in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(mean.get(k)) for k, _ in COLUMNS) + f" | {seconds:.1f} |")
    return "\n".join(lines) + "\n"


def _mean(rows, label: str, key: str):
    for lab, mean, _, _ in rows:
        if lab == label:
            return mean[key]
    return None


def verdict(results: dict[str, list]) -> list[str]:
    """The issue's done-when, judged on the numbers: lines of text."""
    from kfi_core.inference.settings import DEFAULT_SEAM_SMOOTHING

    d = default_label()
    kf0 = results.get("kf0") or []
    within, beyond = _mean(kf0, d, "within"), _mean(kf0, d, "beyond")
    free = _mean(kf0, f"training-free, {d.replace(' (default)', '')}", "beyond")
    mean_fill = _mean(kf0, "mean fill (baseline)", "beyond")
    if within is None or beyond is None:
        return ["- The default schedule was not run on the 4x keyframe-at-0 clips: no verdict."]

    def ok(flag: bool) -> str:
        return "**holds**" if flag else "**does not hold**"

    out = [
        f"- Edit held (beyond within 1 dB of within, 4x keyframe at 0): {_fmt(beyond)} vs {_fmt(within)} dB "
        f"({_fmt(beyond - within)} dB): {ok(beyond - within >= -1.0)}.",
    ]
    if free is not None and mean_fill is not None:
        out.append(
            f"- Beyond the first window above the training-free mode ({_fmt(free)} dB) and mean fill "
            f"({_fmt(mean_fill)} dB): {ok(beyond > free and beyond > mean_fill)}."
        )
    for key in ("kf0", "real"):
        rows = results.get(key)
        if not rows:
            continue
        seam = _mean(rows, d, "seam")
        names = [*SMOOTHED_TOO, *(f"{n} + seam smoothing {DEFAULT_SEAM_SMOOTHING}" for n in SMOOTHED_TOO)]
        others = {n: _mean(rows, n, "seam") for n in names}
        others = {n: v for n, v in others.items() if v is not None}
        if seam is None:
            continue
        designed = {n: others[n] for n in SMOOTHED_TOO if n in others}
        below = bool(designed) and all(seam < v for v in designed.values())
        vs = ", ".join(f"{n} {_fmt(v)}" for n, v in designed.items()) or "not run"
        smoothed = ", ".join(f"{n} {_fmt(v)}" for n, v in others.items() if n not in designed)
        out.append(
            f"- Seam ratio of the default on {'real footage' if key == 'real' else '4x keyframe-at-0 clips'}: "
            f"{_fmt(seam)} (at most 1.2: {ok(seam <= 1.2)}; below the schedules as designed, {vs}: {ok(below)}"
            + (f"; for reference, with the default's seam smoothing added to them: {smoothed}" if smoothed else "")
            + ")."
        )
        out.extend(_texture_line(rows, key, d))
    return out + _keyframe_lines(results, d)


def _keyframe_lines(results: dict[str, list], d: str) -> list[str]:
    """The keyframe seam ratio of the default against the same schedule without smoothing (not in the done-when)."""
    where = {"kf0": "4x keyframe at 0", "kfmid": "4x keyframe in the middle", "real": "real footage"}
    parts = []
    for key, name in where.items():
        rows = results.get(key) or []
        got, raw = _mean(rows, d, "kf_seam"), _mean(rows, "anchor, no seam smoothing", "kf_seam")
        if got is not None:
            parts.append(f"{name} {_fmt(raw)} -> {_fmt(got)}")
    if not parts:
        return []
    return [
        "- Keyframe seam ratio (the jump between a keyframe and its generated neighbours over the jumps inside "
        f"windows; not in the done-when), without -> with the default's seam smoothing: {'; '.join(parts)}."
    ]


def _texture_line(rows, key: str, d: str) -> list[str]:
    """The texture seam ratio of the default against the schedules as designed (not part of the done-when)."""
    tex = _mean(rows, d, "tex_seam")
    if tex is None:
        return []
    others = ", ".join(f"{n} {_fmt(v)}" for n in SMOOTHED_TOO if (v := _mean(rows, n, "tex_seam")) is not None)
    where = "real footage" if key == "real" else "4x keyframe-at-0 clips"
    return [f"- Texture seam ratio of the default on {where} (not in the done-when): {_fmt(tex)} ({others or '-'})."]


def write_section(path: Path, text: str) -> None:
    """Put ``text`` between the markers in ``path`` (the markers appended at the end when absent)."""
    old = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text.rstrip()}\n{END}"
    if BEGIN in old and END in old and old.index(BEGIN) < old.index(END):
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END) :]
    else:
        new = old.rstrip("\n") + ("\n\n" if old.strip() else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def cause_lines(results: dict[str, list]) -> list[str]:
    """What the decay is made of, read off the rows: each row's drop beyond the first window, and that minus the
    oracle's (the ground truth's own change)."""
    out = []
    for key, what in (
        ("kf0", "4x, keyframe at 0"),
        ("light", "4x, keyframe at 0, constant light"),
        ("long", "12x, keyframe at 0"),
    ):
        rows = results.get(key) or []
        oracle = _mean(rows, ORACLE, "beyond_minus_within")
        parts = []
        for label, _, _, _ in rows:
            gap = _mean(rows, label, "beyond_minus_within")
            if gap is None or label == ORACLE:
                continue
            own = "" if oracle is None else f" (own {_fmt(gap - oracle)})"
            parts.append(f"{label} {_fmt(gap)}{own}")
        if parts:
            head = f"oracle {_fmt(oracle)}; " if oracle is not None else ""
            out.append(f"- {what}: {head}" + "; ".join(parts) + ".")
    return out


def lever_lines(results: dict[str, list]) -> list[str]:
    """Each lever against the row it changes (the default schedule without seam smoothing), per condition."""
    from kfi_core.inference.executor import DEFAULT_SCHEDULE
    from kfi_core.inference.settings import DEFAULT_SEAM_SMOOTHING

    base = f"{DEFAULT_SCHEDULE}, no seam smoothing" if DEFAULT_SEAM_SMOOTHING else default_label()
    out = []
    for key, what in (("kf0", "4x keyframe at 0"), ("real", "real footage")):
        rows = results.get(key) or []
        if _mean(rows, base, "beyond") is None:
            continue
        levers = [lab for lab, _, _, _ in rows if lab.endswith("(lever)")]
        if DEFAULT_SEAM_SMOOTHING:
            levers.append(default_label())
        parts = []
        for lab in levers:
            if _mean(rows, lab, "beyond") is None:
                continue
            name = "seam smoothing" if lab == default_label() else _lever_name(lab)
            parts.append(
                f"{name}: beyond {_fmt(_mean(rows, lab, 'beyond') - _mean(rows, base, 'beyond'))} dB, beyond - "
                f"within {_fmt(_mean(rows, base, 'beyond_minus_within'))} -> {_fmt(_mean(rows, lab, 'beyond_minus_within'))}"
                f", seam ratio {_fmt(_mean(rows, base, 'seam'))} -> {_fmt(_mean(rows, lab, 'seam'))}, evals/frame "
                f"{_fmt(_mean(rows, lab, 'evals'))}"
            )
        if parts:
            out.append(f"- {what}, against `{base}`: " + "; ".join(parts) + ".")
    return out


def _lever_name(label: str) -> str:
    """'anchor + keyframe-windows, no seam smoothing (lever)' -> 'keyframe-windows'; a smoothed lever keeps its
    '+ seam smoothing r'."""
    return label.split(" + ", 1)[1].split(",")[0].removesuffix(" (lever)")


def reading_lines(results: dict[str, list]) -> list[str]:
    """The decay's cause in one sentence, from the constant-light diagnostic against the lit clips."""
    d = default_label()
    lit, flat = results.get("kf0") or [], results.get("light") or []
    # the model's own sample (no post-process), so the lighting's share is not mixed with the keyframe ramp's
    sample = "anchor, no seam smoothing" if _mean(lit, "anchor, no seam smoothing", "within") is not None else d
    values = [
        _mean(lit, sample, "beyond_minus_within"),
        _mean(lit, ORACLE, "beyond_minus_within"),
        _mean(flat, sample, "beyond_minus_within"),
        _mean(flat, ORACLE, "beyond_minus_within"),
    ]
    if any(v is None for v in values):
        return []
    gap, oracle, flat_gap, flat_oracle = values
    lines = [
        f"Reading: on the lit 4x clips, beyond - within is {_fmt(oracle)} dB for the oracle, which knows each "
        f"frame's true mean colour, and {_fmt(gap)} dB for `{sample}`; with the light held constant (same seeds) "
        f"it is {_fmt(flat_oracle)} dB for the oracle and {_fmt(flat_gap)} dB for `{sample}`. So at 4x the drop is "
        "the ground truth getting brighter and higher in contrast later in the clip (the same fill error costs more "
        "dB there), not the model forgetting the edit; the flow warp of the keyframe, which carries the "
        "keyframe's pixels along, falls fastest at 4x. A flat fill of the true colour (the oracle) drops by more "
        "than 1 dB on these clips, and the demo model's fill is little better than a flat colour, so that part of "
        "the done-when measures the clips' lighting here; a model that reproduces texture would be judged by it."
    ]
    lines.extend(_ramp_reading(lit, d))
    long = results.get("long") or []
    long_gap, long_oracle = _mean(long, d, "beyond_minus_within"), _mean(long, ORACLE, "beyond_minus_within")
    mean_fill = _mean(long, "mean fill (baseline)", "beyond_minus_within")
    if None not in (long_gap, long_oracle, mean_fill):
        lines.append(
            f"At 12x the oracle's is flat ({_fmt(long_oracle)} dB) but the default's is {_fmt(long_gap)} dB, about "
            f"as low as mean fill's ({_fmt(mean_fill)} dB): far from the keyframe the fill does lose ground there, "
            "as a per-frame mean colour does; the 12x row is few clips, too few to tell the model's share from the "
            "scene's."
        )
    return lines


def _ramp_reading(rows, d: str) -> list[str]:
    """What the keyframe ramp of the default's seam smoothing does to the two means the done-when compares."""
    raw = "anchor, no seam smoothing"
    within = [_mean(rows, label, "within") for label in (raw, d)]
    beyond = [_mean(rows, label, "beyond") for label in (raw, d)]
    if None in within or None in beyond:
        return []
    return [
        f"Against `{raw}`, the default's seam smoothing raises PSNR within the first window by "
        f"{_fmt(within[1] - within[0])} dB and beyond it by {_fmt(beyond[1] - beyond[0])} dB: carrying the "
        "keyframe's colour into the frames after it helps most next to the keyframe, so it widens beyond - within "
        "while raising both; the done-when's difference penalises a gain near the keyframe."
    ]


def merged(kept: dict, fresh: dict) -> dict:
    """``kept`` (the last whole run's state) with the conditions ``fresh`` measured again: their rows and sections
    replaced in place, the wall time adjusted; the command stays the whole run's."""
    out = dict(kept, results={**kept["results"], **fresh["results"]}, date=fresh["date"])
    new = {sec.get("key"): sec for sec in fresh["sections"]}
    out["sections"] = [new.get(sec.get("key"), sec) for sec in kept["sections"]]
    old_seconds = sum(sec.get("seconds", 0) for sec in kept["sections"] if sec.get("key") in new)
    out["seconds"] = kept["seconds"] - old_seconds + sum(sec.get("seconds", 0) for sec in fresh["sections"])
    return out


def render(state: dict, command: str, out: Path, images: Path) -> str:
    """The section's text from :func:`measure_all`'s state."""
    results, d = state["results"], state["default"]
    sections = []
    for sec in state["sections"]:
        if "key" not in sec:
            sections.append(f"### {sec['title']}\n\nNot run: {sec['reason']}.\n")
            continue
        sections.append(
            f"### {sec['title']}\n\n{sec['clips']} clip(s) of {sec['frames']} frames ({sec['names']}); "
            f"{sec['seconds']:.0f} s.\n\n" + table(results[sec["key"]])
        )
    rel = lambda p: Path(p).relative_to(out.parent) if Path(p).is_relative_to(out.parent) else Path(p)  # noqa: E731
    plot_lines = [f"![{p.stem}]({rel(p).as_posix()})" for p in sorted(images.glob("kf0-*.png"))]
    sampling = ", ".join(f"{k}={v}" for k, v in state["sampling"].items())
    return "\n".join(
        [
            "## Long clips",
            "",
            f"Generated by `{command.strip()}` (bench/long_clips.py; do not edit by hand between the markers); "
            f"{state['date']}, CPU, wall time {state['seconds']:.0f} s.",
            "",
            f"Bundled demo model (window {state['window']} frames, 64x64): edit adapter on the edit clips, removal "
            f"adapter on removal and real footage, no adapter for the training-free rows; {state['steps']} steps, "
            f"seed {state['seed']}, the demo sampling ({sampling}). Default: schedule `{d['schedule']}`, noise "
            f"`{d['noise']}`, seam smoothing {d['seam_smoothing']} frames. Procedural clips: held-out seeds, "
            "difficulty medium (its lighting gain rises by 30% over the clip, whatever its length, and the target "
            "moves up to 2 px/frame, centred on the middle frame).",
            "",
            *INTRO,
            "",
            "**Verdict** (the issue's done-when):",
            "",
            *verdict(results),
            "",
            "**Where the decay comes from** (beyond - within, dB; the oracle fills each frame's hole with the "
            "ground truth's own mean colour there, so its drop is the ground truth changing, not a method "
            "forgetting; 'own' is a row's drop minus the oracle's):",
            "",
            *cause_lines(results),
            "",
            *reading_lines(results),
            "",
            "**Levers** (each against the schedule it changes; beyond = PSNR beyond the first window):",
            "",
            *lever_lines(results),
            "",
            *sections,
            "### Plots (first 4x keyframe-at-0 clip)",
            "",
            *plot_lines,
            "",
        ]
    )


INTRO = [
    "Columns (kfi_core.evaluation.long_clip): PSNR in the mask over all frames but keyframes; its mean within "
    "the first window and beyond it, and their difference (the done-when asks >= -1 dB); the decay slope "
    "(dB per frame of distance to the nearest keyframe); the seam ratio (mean jump of the fill's colour "
    "across window boundaries over that inside windows; max over R, G, B, brightness; 1 is seamless) and "
    "against the ground truth's jump at the same boundaries; the texture seam ratio (the same for the fill's "
    "detail, its mean colour removed); the keyframe seam ratio (the jump between a keyframe and the generated "
    "frames next to it over the jumps inside windows: an edited keyframe that flashes); flow warping error in the "
    "mask (lower is better); UNet frame-evaluations per output frame per step. Baselines and the oracle have no "
    "windows: "
    "their seam ratios are measured at the default schedule's boundaries (what a method without seams "
    "scores there).",
    "",
    "Levers (anchor schedule): " + "; ".join(f"**{k}**: {v}" for k, v in LEVER_NOTES.items()) + ".",
]
