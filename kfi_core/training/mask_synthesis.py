"""Random training masks, synthesised on the fly (paper, supplementary A.3 "Mask Synthesis").

The paper trains on in-the-wild videos with random masks: full, grid, scribble (free-form strokes,
Yu et al. 2019, "Free-form image inpainting with gated convolution") and square (Kim et al. 2019,
"Deep video inpainting") masks, plus mask inversion and spatio-temporal augmentation so that masks
change location and shape over time. Blob masks (smooth random regions, like the blob masks of the
BDD-Inpainting set in "Semantically Consistent Video Inpainting with Conditional Diffusion Models")
are added as a fifth type; grids there also come as horizontal or vertical lines (``axes``).

The generators (spatial patterns, motion, inversion) are in
:mod:`kfi_core.training.mask_generators`; all return float32 ``masks`` [F, 1, H, W] with values
0/1, 1 = region to inpaint. This module draws from them:

- :class:`MaskConfig` and :func:`sample_masks` draw a type, its parameters, motion and inversion,
  and re-draw until every frame's coverage is within the configured limits.
- :func:`render_preview` lays samples out on a sheet (``python -m kfi_core masks --preview``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kfi_core.errors import MaskSynthesisError, UnknownNameError
from kfi_core.training.mask_generators import (
    GRID_AXES,
    Rng,
    animate,
    as_rng,
    blob_mask,
    check_int_range,
    check_range,
    check_size,
    coverage,
    full_mask,
    grid_cell_pixels,
    grid_mask,
    invert,
    scribble_mask,
    square_mask,
    stationary,
    uniform_in,
)

logger = logging.getLogger(__name__)

MASK_TYPES = ("full", "grid", "scribble", "square", "blob")


# --------------------------------------------------------------------------- sampling


def _weights_default() -> dict[str, float]:
    return {"full": 0.05, "grid": 0.2, "scribble": 0.35, "square": 0.25, "blob": 0.15}


@dataclass
class MaskConfig:
    """How :func:`sample_masks` draws training masks. Lengths are fractions of the shorter side."""

    type_weights: dict[str, float] = field(
        default_factory=_weights_default,
        metadata={"help": f"relative probability of each mask type ({', '.join(MASK_TYPES)}); missing types get 0"},
    )
    invert_prob: float = field(
        default=0.25,
        metadata={"help": "probability of swapping fill and keep regions (never for 'full', whose inverse is empty)"},
    )
    motion_prob: float = field(
        default=0.5,
        metadata={"help": "probability that the mask moves/deforms over time (else stationary; 'full' never moves)"},
    )
    min_coverage: float = field(
        default=0.02,
        metadata={"help": "lowest fraction of pixels to fill allowed in any frame; draws outside are re-drawn"},
    )
    max_coverage: float = field(
        default=1.0,
        metadata={
            "help": "highest fraction of pixels to fill allowed in any frame (must be 1 while 'full' has weight)"
        },
    )
    max_tries: int = field(default=50, metadata={"help": "draws before sample_masks gives up with an error"})

    grid_cell: tuple[float, float] = field(default=(0.06, 0.3), metadata={"help": "grid period range"})
    grid_line_ratio: tuple[float, float] = field(default=(0.1, 0.5), metadata={"help": "line width / period range"})
    grid_axes: tuple[str, ...] = field(
        default=("both", "both", "rows", "cols"),
        metadata={"help": "grid axes drawn uniformly from this tuple (repeat a name to weight it)"},
    )
    scribble_strokes: tuple[int, int] = field(default=(1, 5), metadata={"help": "strokes per mask"})
    scribble_vertices: tuple[int, int] = field(default=(4, 12), metadata={"help": "segments per stroke"})
    scribble_max_length: float = field(default=0.25, metadata={"help": "longest segment"})
    scribble_width: tuple[float, float] = field(default=(0.03, 0.12), metadata={"help": "brush width range"})
    square_boxes: tuple[int, int] = field(default=(1, 3), metadata={"help": "boxes per mask"})
    square_size: tuple[float, float] = field(default=(0.15, 0.6), metadata={"help": "box side range"})
    square_aspect_jitter: float = field(default=0.4, metadata={"help": "0 = squares; see square_mask"})
    blob_coverage: tuple[float, float] = field(default=(0.05, 0.6), metadata={"help": "blob coverage range"})
    blob_feature_size: tuple[float, float] = field(default=(0.15, 0.5), metadata={"help": "blob size range"})

    max_speed: float = field(default=0.04, metadata={"help": "largest speed per frame (random direction)"})
    max_scale_rate: float = field(default=0.03, metadata={"help": "scale change per frame drawn in +-this"})
    max_rotation: float = field(default=3.0, metadata={"help": "degrees per frame drawn in +-this"})
    max_elastic: float = field(default=0.03, metadata={"help": "elastic warp amplitude drawn in [0, this]"})
    max_dilate: float = field(default=0.02, metadata={"help": "dilate/erode jitter amplitude drawn in [0, this]"})

    def __post_init__(self):
        unknown = sorted(set(self.type_weights) - set(MASK_TYPES))
        if unknown:
            raise UnknownNameError(
                f"MaskConfig.type_weights: unknown mask type(s) {unknown}; use {', '.join(MASK_TYPES)}."
            )
        self.type_weights = {k: float(self.type_weights.get(k, 0.0)) for k in MASK_TYPES}
        if (
            any(not math.isfinite(w) or w < 0 for w in self.type_weights.values())
            or sum(self.type_weights.values()) <= 0
        ):
            raise MaskSynthesisError(
                f"MaskConfig.type_weights: got {self.type_weights}; give non-negative weights, at least one > 0."
            )
        for name in ("invert_prob", "motion_prob", "min_coverage", "max_coverage"):
            check_range(getattr(self, name), f"MaskConfig.{name}", 0.0, 1.0)
        if self.min_coverage > self.max_coverage:
            raise MaskSynthesisError(
                f"MaskConfig.min_coverage, max_coverage: got {self.min_coverage:g} > {self.max_coverage:g}; "
                "give min_coverage <= max_coverage."
            )
        if self.type_weights["full"] > 0 and self.max_coverage < 1.0:
            raise MaskSynthesisError(
                f"MaskConfig: type_weights['full'] is {self.type_weights['full']:g} but max_coverage is "
                f"{self.max_coverage:g}, so every full mask would be rejected. Set type_weights['full'] = 0 "
                "or max_coverage = 1."
            )
        if isinstance(self.max_tries, bool) or not isinstance(self.max_tries, int) or self.max_tries < 1:
            raise MaskSynthesisError(f"MaskConfig.max_tries: got {self.max_tries!r}; give an integer >= 1.")
        bad_axes = [a for a in self.grid_axes if a not in GRID_AXES]
        if not self.grid_axes or bad_axes:
            raise UnknownNameError(
                f"MaskConfig.grid_axes: got {tuple(self.grid_axes)}; use names from {', '.join(GRID_AXES)}."
            )
        self.grid_cell = check_range(self.grid_cell, "MaskConfig.grid_cell", 0.0, 1e6, lo_open=True)
        self.grid_line_ratio = check_range(self.grid_line_ratio, "MaskConfig.grid_line_ratio", 0.0, 1.0, lo_open=True)
        self.scribble_strokes = check_int_range(self.scribble_strokes, "MaskConfig.scribble_strokes")
        self.scribble_vertices = check_int_range(self.scribble_vertices, "MaskConfig.scribble_vertices")
        check_range(self.scribble_max_length, "MaskConfig.scribble_max_length", 0.0, 1e6, lo_open=True)
        self.scribble_width = check_range(self.scribble_width, "MaskConfig.scribble_width", 0.0, 1e6, lo_open=True)
        self.square_boxes = check_int_range(self.square_boxes, "MaskConfig.square_boxes")
        self.square_size = check_range(self.square_size, "MaskConfig.square_size", 0.0, 1.0, lo_open=True)
        check_range(self.square_aspect_jitter, "MaskConfig.square_aspect_jitter", 0.0, 3.0)
        self.blob_coverage = check_range(self.blob_coverage, "MaskConfig.blob_coverage", 0.0, 0.999, lo_open=True)
        self.blob_feature_size = check_range(
            self.blob_feature_size, "MaskConfig.blob_feature_size", 0.0, 1e6, lo_open=True
        )
        for name in ("max_speed", "max_elastic", "max_dilate", "max_rotation"):
            check_range(getattr(self, name), f"MaskConfig.{name}", 0.0, 1e6)
        check_range(self.max_scale_rate, "MaskConfig.max_scale_rate", 0.0, 0.99)


@dataclass
class MaskInfo:
    """What :func:`sample_masks_with_info` drew: enough to label a preview or log a batch."""

    kind: str
    params: dict[str, Any]
    motion: dict[str, Any] | None
    inverted: bool
    coverage: float  # mean over frames
    tries: int

    @property
    def label(self) -> str:
        return " ".join([self.kind] + (["inv"] if self.inverted else []) + (["moving"] if self.motion else []))


def _draw_spatial(kind: str, gen: np.random.Generator, height: int, width: int, cfg: MaskConfig):
    """One mask [1, 1, H, W] of ``kind`` with parameters drawn from ``cfg``, and those parameters."""
    if kind == "full":
        return full_mask(height, width), {}
    if kind == "grid":
        params = {
            "cell": uniform_in(gen, cfg.grid_cell),
            "line_ratio": uniform_in(gen, cfg.grid_line_ratio),
            "offset": (float(gen.uniform()), float(gen.uniform())),
            "axes": str(cfg.grid_axes[int(gen.integers(len(cfg.grid_axes)))]),
        }
        return grid_mask(height, width, **params), params
    if kind == "scribble":
        params = {
            "num_strokes": cfg.scribble_strokes,
            "num_vertices": cfg.scribble_vertices,
            "max_length": cfg.scribble_max_length,
            "brush_width": cfg.scribble_width,
        }
        return scribble_mask(height, width, gen, **params), params
    if kind == "square":
        params = {"num_boxes": cfg.square_boxes, "size": cfg.square_size, "aspect_jitter": cfg.square_aspect_jitter}
        return square_mask(height, width, gen, **params), params
    params = {"coverage": uniform_in(gen, cfg.blob_coverage), "feature_size": uniform_in(gen, cfg.blob_feature_size)}
    return blob_mask(height, width, gen, **params), params


def _draw_motion(gen: np.random.Generator, cfg: MaskConfig) -> dict[str, Any]:
    speed = gen.uniform(0.0, cfg.max_speed)
    heading = gen.uniform(0.0, 2.0 * math.pi)
    return {
        "velocity": (float(speed * math.sin(heading)), float(speed * math.cos(heading))),
        "scale_rate": float(gen.uniform(-cfg.max_scale_rate, cfg.max_scale_rate)),
        "rotation": float(gen.uniform(-cfg.max_rotation, cfg.max_rotation)),
        "elastic": float(gen.uniform(0.0, cfg.max_elastic)),
        "dilate": float(gen.uniform(0.0, cfg.max_dilate)),
    }


def _animate_grid(
    params: dict[str, Any], num_frames: int, height: int, width: int, gen: np.random.Generator, motion: dict[str, Any]
) -> torch.Tensor:
    """Animate a grid as a periodic pattern, so that no edge shows when it moves, shrinks or turns.

    The grid is drawn on a canvas that is a whole number of periods (same period in pixels as at
    height x width), animated with ``wrap=True`` and cropped back to height x width.
    """
    short = min(height, width)
    period, _ = grid_cell_pixels(height, width, params["cell"], params["line_ratio"])
    ch, cw = -(-height // period) * period, -(-width // period) * period  # ceil to whole periods
    ratio = short / min(ch, cw)  # lengths in fractions of the frame's short side -> of the canvas's
    tile = grid_mask(ch, cw, **{**params, "cell": period / min(ch, cw)})
    moved = animate(
        tile,
        num_frames,
        gen,
        wrap=True,
        **{
            **motion,
            "velocity": tuple(v * ratio for v in motion["velocity"]),
            "elastic": motion["elastic"] * ratio,
            "dilate": motion["dilate"] * ratio,
        },
    )
    return moved[:, :, :height, :width]


def sample_masks_with_info(
    num_frames: int,
    height: int,
    width: int,
    generator: Rng,
    config: MaskConfig | None = None,
) -> tuple[torch.Tensor, MaskInfo]:
    """:func:`sample_masks`, also returning what was drawn (type, parameters, motion, inversion, tries)."""
    check_size(height, width, num_frames)
    cfg = config if config is not None else MaskConfig()
    if not isinstance(cfg, MaskConfig):
        raise MaskSynthesisError(f"config: expected a MaskConfig, got {type(cfg).__name__}.")
    gen = as_rng(generator, "generator")
    kinds = list(MASK_TYPES)
    weights = np.array([cfg.type_weights[k] for k in kinds], dtype=np.float64)
    weights /= weights.sum()
    rejected: list[str] = []
    for attempt in range(1, cfg.max_tries + 1):
        kind = kinds[int(gen.choice(len(kinds), p=weights))]
        moving = kind != "full" and gen.uniform() < cfg.motion_prob
        motion = _draw_motion(gen, cfg) if moving else None
        base, params = _draw_spatial(kind, gen, height, width, cfg)
        if motion is not None and kind == "grid":
            masks = _animate_grid(params, num_frames, height, width, gen, motion)
        elif motion is not None and kind == "blob":
            masks = animate(base, num_frames, gen, wrap=True, **motion)  # the blob field tiles
        else:
            masks = animate(base, num_frames, gen, **motion) if motion else stationary(base, num_frames)
        inverted = kind != "full" and gen.uniform() < cfg.invert_prob
        if inverted:
            masks = invert(masks)
        cover = coverage(masks)
        lo, hi = float(cover.min()), float(cover.max())
        if cfg.min_coverage <= lo and hi <= cfg.max_coverage:
            info = MaskInfo(kind, params, motion, inverted, float(cover.mean()), attempt)
            logger.debug("mask %s: coverage %.3f..%.3f after %d tries", info.label, lo, hi, attempt)
            return masks.contiguous(), info
        rejected.append(f"{kind}{' inverted' if inverted else ''}{' moving' if motion else ''} {lo:.3f}..{hi:.3f}")
    shown = "; ".join(rejected[-3:])
    raise MaskSynthesisError(
        f"sample_masks: no {height}x{width} mask ({num_frames} frames) had every frame's coverage within "
        f"[{cfg.min_coverage:g}, {cfg.max_coverage:g}] in {cfg.max_tries} tries (last: {shown}). Widen "
        "MaskConfig.min_coverage/max_coverage, raise max_tries, or change type_weights and the size ranges."
    )


def sample_masks(
    num_frames: int,
    height: int,
    width: int,
    generator: Rng,
    config: MaskConfig | None = None,
) -> torch.Tensor:
    """Draw one random training mask clip [F, 1, H, W] (float32, values 0/1, 1 = fill).

    Draws a type by ``config.type_weights``, its parameters from the config's ranges, then motion
    (with ``motion_prob``; else stationary) and inversion (with ``invert_prob``). A draw with any
    frame's coverage outside [min_coverage, max_coverage] is re-drawn, up to ``max_tries`` times,
    then :class:`~kfi_core.errors.MaskSynthesisError` is raised.

    ``generator`` is a ``numpy.random.Generator`` (advanced in place, so successive calls give
    new masks) or an int seed (the same seed always gives the same masks). Nothing else is random.
    """
    return sample_masks_with_info(num_frames, height, width, generator, config)[0]


# --------------------------------------------------------------------------- preview sheet

PREVIEW_LABEL_WIDTH = 132
PREVIEW_GAP = 4
PREVIEW_HEADER = 16
PREVIEW_MAX_TILE = 128
PREVIEW_MIN_ROW = 44  # three lines of label text


def preview_columns(num_frames: int, columns: int = 4) -> list[int]:
    """The frame indices a preview shows: up to ``columns`` evenly spaced, first and last included."""
    n = min(num_frames, columns)
    return sorted({int(round(i * (num_frames - 1) / max(n - 1, 1))) for i in range(n)})


def preview_tile_size(height: int, width: int) -> tuple[int, int]:
    """A tile's (height, width) on the sheet: the mask size, shrunk to at most PREVIEW_MAX_TILE high."""
    scale = min(1.0, PREVIEW_MAX_TILE / height)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def preview_sheet_size(count: int, num_frames: int, height: int, width: int, columns: int = 4) -> tuple[int, int]:
    """The sheet's (width, height) in pixels, as PIL gives it."""
    th, tw = preview_tile_size(height, width)
    cols = len(preview_columns(num_frames, columns))
    row = max(th, PREVIEW_MIN_ROW)
    return PREVIEW_LABEL_WIDTH + cols * (tw + PREVIEW_GAP) + PREVIEW_GAP, PREVIEW_HEADER + count * (row + PREVIEW_GAP)


def render_preview(samples: Sequence[tuple[torch.Tensor, MaskInfo]], columns: int = 4):
    """Draw mask samples as a PIL image: a row per sample (label, then a few frames), white = fill.

    All samples must share one size and frame count. Returns a ``PIL.Image.Image`` (mode "RGB").
    """
    from PIL import Image, ImageDraw, ImageFont

    if not samples:
        raise MaskSynthesisError("samples: nothing to draw; pass at least one (masks, info) pair.")
    num_frames, _, height, width = samples[0][0].shape
    for masks, _ in samples:
        if tuple(masks.shape) != (num_frames, 1, height, width):
            raise MaskSynthesisError(
                f"samples: shapes differ ({list(masks.shape)} vs {[num_frames, 1, height, width]}); "
                "draw samples of one size and frame count."
            )
    frames = preview_columns(num_frames, columns)
    th, tw = preview_tile_size(height, width)
    row = max(th, PREVIEW_MIN_ROW)
    sheet = Image.new("RGB", preview_sheet_size(len(samples), num_frames, height, width, columns), (48, 48, 56))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for c, f in enumerate(frames):
        draw.text((PREVIEW_LABEL_WIDTH + c * (tw + PREVIEW_GAP), 2), f"frame {f}", fill=(200, 200, 200), font=font)
    for r, (masks, info) in enumerate(samples):
        top = PREVIEW_HEADER + r * (row + PREVIEW_GAP)
        lines = [
            f"{r}: {info.kind}",
            ("inverted " if info.inverted else "") + ("moving" if info.motion else "still"),
            f"cover {info.coverage:.2f}",
        ]
        draw.multiline_text((4, top + 1), "\n".join(lines), fill=(235, 235, 235), font=font, spacing=2)
        for c, f in enumerate(frames):
            tile = Image.fromarray((masks[f, 0].numpy() * 255).astype(np.uint8), mode="L")
            if (th, tw) != (height, width):
                tile = tile.resize((tw, th), Image.Resampling.NEAREST)
            left = PREVIEW_LABEL_WIDTH + c * (tw + PREVIEW_GAP)
            # a thin red frame marks the tile's edge, so an all-white (full) or all-black mask stays readable
            draw.rectangle((left - 1, top - 1, left + tw, top + th), outline=(200, 60, 60))
            sheet.paste(tile.convert("RGB"), (left, top))
    return sheet
