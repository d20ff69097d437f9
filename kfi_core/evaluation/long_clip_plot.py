"""A picture of one clip's long-clip metrics, drawn with PIL and NumPy only (matplotlib is not a dependency).

Two panels over the frame axis: per-frame PSNR in the mask (black), and the fill's mean colour (R, G, B as red,
green and blue lines; the ground truth's as thin lighter lines). Window boundaries (transition t -> t+1, drawn at
t + 0.5) are grey dashed verticals, keyframes orange verticals. Frames with an empty mask leave gaps.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from kfi_core.errors import SettingsError
from kfi_core.files import atomic_file

DEFAULT_SIZE = (1000, 500)
BACKGROUND, INK, GRID = (255, 255, 255), (30, 30, 30), (225, 225, 225)
BOUNDARY, KEYFRAME = (130, 130, 130), (240, 140, 0)
RGB_LINES = ((210, 40, 40), (40, 160, 40), (40, 70, 220))
RGB_LIGHT = ((240, 160, 160), (150, 215, 150), (160, 175, 245))
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM, GAP = 64, 20, 34, 40, 36


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # an old Pillow or one without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _nice_step(span: float, count: int = 5) -> float:
    """A 1-2-5 step that cuts ``span`` into about ``count`` parts."""
    raw = max(span, 1e-9) / count
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * power * 1.0001:
            return mult * power
    return 10 * power


class _Panel:
    """A plot area: maps frame index and value to pixels and draws into ``draw``."""

    def __init__(self, draw, box: tuple[int, int, int, int], frames: int, lo: float, hi: float, font):
        self.draw, self.box, self.frames, self.font = draw, box, frames, font
        pad = (hi - lo) * 0.08 or 0.5
        self.lo, self.hi = lo - pad, hi + pad

    def x(self, t: float) -> float:
        x0, _, x1, _ = self.box
        return x0 + (x1 - x0) * (t + 0.5) / self.frames

    def y(self, v: float) -> float:
        _, y0, _, y1 = self.box
        return y1 - (y1 - y0) * (v - self.lo) / (self.hi - self.lo)

    def axes(self, title: str, decimals: int) -> None:
        x0, y0, x1, y1 = self.box
        step = _nice_step(self.hi - self.lo)
        v = step * -(-self.lo // step)
        while v <= self.hi:
            y = self.y(v)
            self.draw.line([(x0, y), (x1, y)], fill=GRID)
            self.draw.text((x0 - 6, y), f"{v:.{decimals}f}", fill=INK, font=self.font, anchor="rm")
            v += step
        xstep = max(1, int(_nice_step(self.frames, 10)))
        for t in range(0, self.frames, xstep):
            self.draw.line([(self.x(t), y1), (self.x(t), y1 + 4)], fill=INK)
            self.draw.text((self.x(t), y1 + 6), str(t), fill=INK, font=self.font, anchor="mt")
        self.draw.rectangle(self.box, outline=INK)
        self.draw.text((x0, y0 - 4), title, fill=INK, font=self.font, anchor="lb")

    def markers(self, boundaries: Sequence[int], keyframes: Sequence[int]) -> None:
        _, y0, _, y1 = self.box
        for t in boundaries:
            x = self.x(t + 0.5)
            for y in range(y0, y1, 8):  # dashed
                self.draw.line([(x, y), (x, min(y + 4, y1))], fill=BOUNDARY, width=1)
        for k in keyframes:
            self.draw.line([(self.x(k), y0), (self.x(k), y1)], fill=KEYFRAME, width=3)

    def series(self, values: Sequence[float | None], colour, width: int) -> None:
        """A line through the values; None leaves a gap; a lone point is a dot."""
        run: list[tuple[float, float]] = []
        for t, v in enumerate([*values, None]):
            if v is not None:
                run.append((self.x(t), self.y(float(v))))
                continue
            if len(run) > 1:
                self.draw.line(run, fill=colour, width=width, joint="curve")
            elif run:
                (px, py), r = run[0], width + 1
                self.draw.ellipse([px - r, py - r, px + r, py + r], fill=colour)
            run = []


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None]


def render_long_clip_plot(report: Mapping[str, Any], size: tuple[int, int] = DEFAULT_SIZE) -> Image.Image:
    """Draw :func:`kfi_core.evaluation.long_clip.long_clip_metrics`'s result as an RGB image of ``size`` (W, H)."""
    width, height = (int(s) for s in size)
    if width < 300 or height < 200:
        raise SettingsError(f"plot size: got {width}x{height}; give at least 300x200 pixels, e.g. 1000x500.")
    decay, seams = report["decay"], report.get("seams")
    frames = int(report["frames"])
    psnrs = decay["psnr_per_frame"]
    fill, truth = report["fill_colour"], report["gt_colour"]
    boundaries = seams["boundaries"] if seams else []
    keyframes = decay["keyframes"]
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw, font = ImageDraw.Draw(image), _font(12)
    panel_h = (height - MARGIN_TOP - MARGIN_BOTTOM - GAP) // 2
    x0, x1 = MARGIN_LEFT, width - MARGIN_RIGHT
    top_box = (x0, MARGIN_TOP, x1, MARGIN_TOP + panel_h)
    bottom_box = (x0, MARGIN_TOP + panel_h + GAP, x1, MARGIN_TOP + 2 * panel_h + GAP)
    p_vals = _finite(psnrs) or [0.0]
    top = _Panel(draw, top_box, frames, min(p_vals), max(p_vals), font)
    c_vals = [v for row in [*fill, *truth] for v in _finite(row[:3])] or [0.0, 1.0]
    bottom = _Panel(draw, bottom_box, frames, min(c_vals), max(c_vals), font)
    top.axes("PSNR in the mask (dB)", 1)
    bottom.axes("fill mean colour, R G B (thin: ground truth)", 2)
    for panel in (top, bottom):
        panel.markers(boundaries, keyframes)
    top.series(psnrs, INK, 2)
    for ch in range(3):
        bottom.series([row[ch] for row in truth], RGB_LIGHT[ch], 1)
    for ch in range(3):
        bottom.series([row[ch] for row in fill], RGB_LINES[ch], 2)
    draw.text((x0 + (x1 - x0) // 2, height - 6), "frame", fill=INK, font=font, anchor="mb")
    _legend(draw, font, x1, 6)
    return image


def _legend(draw, font, right: int, top: int) -> None:
    """The marker legend, right-aligned in the top margin."""
    items = (("window boundary", BOUNDARY), ("keyframe", KEYFRAME))
    x = right
    for label, colour in reversed(items):
        w = draw.textlength(label, font=font)
        draw.text((x, top), label, fill=INK, font=font, anchor="ra")
        draw.line([(x - w - 8, top + 1), (x - w - 8, top + 13)], fill=colour, width=3)
        x -= w + 24


def write_long_clip_plot(
    report: Mapping[str, Any], path: str | os.PathLike, size: tuple[int, int] = DEFAULT_SIZE, label: str = "plot"
) -> Path:
    """Render the plot and write it atomically as a PNG to ``path`` (must end in .png); return the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise SettingsError(f"{label}: got {str(path)!r}; the plot is a PNG, give a file name ending in .png.")
    image = render_long_clip_plot(report, size)
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG")
    return path
