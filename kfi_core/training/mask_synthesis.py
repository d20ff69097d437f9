"""Random training masks, synthesised on the fly (paper, supplementary A.3 "Mask Synthesis").

The paper trains on in-the-wild videos with random masks: full, grid, scribble (free-form strokes,
Yu et al. 2019, "Free-form image inpainting with gated convolution") and square (Kim et al. 2019,
"Deep video inpainting") masks, plus mask inversion and spatio-temporal augmentation so that masks
change location and shape over time. Blob masks (smooth random regions, like the blob masks of the
BDD-Inpainting set in "Semantically Consistent Video Inpainting with Conditional Diffusion Models")
are added as a fifth type; grids there also come as horizontal or vertical lines (``axes``).

Layout: every generator returns float32 ``masks`` [F, 1, H, W] with values exactly 0 or 1,
1 = region to inpaint. Lengths (cell sizes, box sides, brush widths, speeds) are fractions of the
shorter side ``short = min(H, W)``, so one set of parameters gives alike masks at 64x64 and at
576x1024. Randomness comes only from the ``rng`` argument (a ``numpy.random.Generator`` or an int
seed); nothing reads or advances numpy's or torch's global generators, so a seed gives the same
masks on every machine and in every data-loader worker.

- Spatial generators: :func:`full_mask`, :func:`grid_mask`, :func:`scribble_mask`,
  :func:`square_mask`, :func:`blob_mask` (each makes one pattern, repeated over ``num_frames``).
- Temporal: :func:`stationary` (repeat) and :func:`animate` (per-frame translation, scale,
  rotation, elastic warp and dilate/erode jitter).
- :func:`invert` swaps the regions to fill and to keep.
- :class:`MaskConfig` and :func:`sample_masks` draw a type, its parameters, motion and inversion,
  and re-draw until every frame's coverage is within the configured limits.
- :func:`render_preview` lays samples out on a sheet (``python -m kfi_core masks --preview``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from kfi_core.errors import MaskSynthesisError, UnknownNameError
from kfi_core.media.mask_ops import grow

logger = logging.getLogger(__name__)

MASK_TYPES = ("full", "grid", "scribble", "square", "blob")
GRID_AXES = ("both", "rows", "cols")

Rng = Union[np.random.Generator, int]
IntRange = Union[int, Sequence[int]]
FloatRange = Union[float, Sequence[float]]


# --------------------------------------------------------------------------- helpers


def as_rng(rng: Rng | None, name: str = "rng") -> np.random.Generator:
    """Return ``rng`` itself if it is a Generator (it advances), else a new Generator seeded with it."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise MaskSynthesisError(
        f"{name}: got {rng!r}; pass a numpy.random.Generator or a non-negative int seed "
        "(masks never come from a hidden global random state)."
    )


def check_size(height: int, width: int, num_frames: int = 1) -> None:
    """Raise unless the mask size and frame count are positive integers."""
    for name, value in (("height", height), ("width", width), ("num_frames", num_frames)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise MaskSynthesisError(f"{name}: got {value!r}; give a positive integer.")


def _range(value: FloatRange, name: str, lo: float, hi: float, *, lo_open: bool = False) -> tuple[float, float]:
    """Normalise a number or (low, high) pair and check it lies within [lo, hi] (or (lo, hi])."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        a = b = float(value)
    else:
        try:
            a, b = (float(v) for v in value)
        except (TypeError, ValueError):
            raise MaskSynthesisError(f"{name}: got {value!r}; give a number or a (low, high) pair.") from None
    if not (math.isfinite(a) and math.isfinite(b)) or a > b:
        raise MaskSynthesisError(f"{name}: got ({a:g}, {b:g}); give finite numbers with low <= high.")
    if a < lo or b > hi or (lo_open and a <= lo):
        bound = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
        raise MaskSynthesisError(f"{name}: got ({a:g}, {b:g}); values must lie in {bound}.")
    return a, b


def _int_range(value: IntRange, name: str, lo: int = 1) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        a = b = int(value)
    else:
        try:
            a, b = value
        except (TypeError, ValueError):
            raise MaskSynthesisError(f"{name}: got {value!r}; give an integer or a (low, high) pair.") from None
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in (a, b)):
            raise MaskSynthesisError(f"{name}: got {value!r}; give integers.")
        a, b = int(a), int(b)
    if a < lo or a > b:
        raise MaskSynthesisError(f"{name}: got ({a}, {b}); give integers with {lo} <= low <= high.")
    return a, b


def _uniform(rng: np.random.Generator, span: tuple[float, float]) -> float:
    return float(span[0]) if span[0] == span[1] else float(rng.uniform(span[0], span[1]))


def _integers(rng: np.random.Generator, span: tuple[int, int]) -> int:
    return span[0] if span[0] == span[1] else int(rng.integers(span[0], span[1] + 1))


def _as_2d(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """[H, W], [1, H, W] or [1, 1, H, W] -> float32 [H, W] (a copy is made by the callers' ops)."""
    if not isinstance(mask, torch.Tensor):
        raise MaskSynthesisError(f"{name}: expected a torch tensor, got {type(mask).__name__}.")
    shape = list(mask.shape)
    while mask.ndim > 2 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise MaskSynthesisError(
            f"{name}: expected one mask [H, W], [1, H, W] or [1, 1, H, W], got shape {shape}. "
            "Pass a single frame (e.g. masks[0]); animate() makes the frames."
        )
    return mask.float()


def coverage(masks: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels to fill, per frame: [F, 1, H, W] -> [F]."""
    return masks.flatten(1).float().mean(1)


# --------------------------------------------------------------------------- temporal


def stationary(mask: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The same mask on every frame: [H, W] (or [1, H, W], [1, 1, H, W]) -> [F, 1, H, W]."""
    m = _as_2d(mask)
    check_size(*m.shape, num_frames)
    return m[None, None].expand(num_frames, 1, -1, -1).contiguous()


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> torch.Tensor:
    """A smooth random field [H, W] with unit standard deviation at the control points.

    Normal noise on a coarse (cells + 1) grid along the shorter side, upsampled bicubically.
    """
    short = min(height, width)
    gh = max(2, math.ceil(cells * height / short) + 1)
    gw = max(2, math.ceil(cells * width / short) + 1)
    coarse = torch.from_numpy(rng.standard_normal((1, 1, gh, gw)).astype(np.float32))
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)[0, 0]


def animate(
    mask: torch.Tensor,
    num_frames: int,
    rng: Rng | None = None,
    *,
    velocity: tuple[float, float] = (0.0, 0.0),
    scale_rate: float = 0.0,
    rotation: float = 0.0,
    elastic: float = 0.0,
    elastic_cells: int = 3,
    dilate: float = 0.0,
    period: int = 16,
    wrap: bool = False,
) -> torch.Tensor:
    """Make a moving, growing and deforming mask clip from one mask: -> [F, 1, H, W].

    Frame ``t`` (0-based) shows ``mask`` moved by ``t * velocity``, scaled by ``(1 + scale_rate) ** t``
    and rotated by ``t * rotation`` degrees about the mask's centroid, sampled nearest-neighbour (so
    values stay 0/1; what moves out of the frame is lost, nothing moves in). Frame 0 is ``mask``
    unless jitter is on. With all parameters at their defaults the result equals :func:`stationary`.

    Args:
        mask: one binary mask [H, W], [1, H, W] or [1, 1, H, W]. Not modified.
        num_frames: frames to make.
        rng: Generator or seed for the jitter; needed only when ``elastic`` or ``dilate`` > 0.
        velocity: (down, right) displacement per frame, in fractions of the shorter side.
        scale_rate: relative size change per frame (0.02 = 2 % larger each frame); > -1.
        rotation: degrees per frame, counter-clockwise on screen.
        elastic: amplitude of a smooth random warp, in fractions of the shorter side. The warp
            drifts over time (a rotation between two random fields, one turn every ``period``
            frames), so the outline wobbles.
        elastic_cells: control points of the warp along the shorter side (larger = finer wobble).
        dilate: amplitude of a dilate/erode jitter, in fractions of the shorter side; the radius
            follows a sine of ``period`` frames with a random phase, rounded to whole pixels.
        period: frames per cycle of the elastic drift and the dilate sine.
        wrap: treat ``mask`` as one tile of a periodic pattern (a grid whose period divides the
            size): source pixels beyond an edge wrap around instead of being empty, so the pattern
            still covers the frame when it moves, shrinks or turns.
    """
    m = _as_2d(mask)
    height, width = m.shape
    check_size(height, width, num_frames)
    try:
        vy, vx = (float(v) for v in velocity)
    except (TypeError, ValueError):
        raise MaskSynthesisError(f"velocity: got {velocity!r}; give a (down, right) pair per frame.") from None
    for name, value in (("velocity", vy), ("velocity", vx), ("scale_rate", scale_rate), ("rotation", rotation),
                        ("elastic", elastic), ("dilate", dilate)):
        if not math.isfinite(float(value)):
            raise MaskSynthesisError(f"{name}: got {value!r}; give a finite number.")
    if scale_rate <= -1.0:
        raise MaskSynthesisError(f"scale_rate: got {scale_rate:g}; it must be > -1 (the scale is (1 + rate) ** t).")
    if elastic < 0 or dilate < 0:
        raise MaskSynthesisError(f"elastic, dilate: got {elastic:g}, {dilate:g}; amplitudes must be >= 0.")
    if elastic_cells < 1 or period < 1:
        raise MaskSynthesisError(f"elastic_cells, period: got {elastic_cells}, {period}; give integers >= 1.")
    if (elastic > 0 or dilate > 0) and rng is None:
        raise MaskSynthesisError("rng: elastic or dilate jitter is random; pass a numpy Generator or an int seed.")

    short = min(height, width)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    total = float(m.sum())
    if total > 0:
        cy, cx = float((m * ys).sum()) / total, float((m * xs).sum()) / total
    else:
        cy, cx = (height - 1) / 2.0, (width - 1) / 2.0

    field_a = field_b = None
    phase = 0.0
    if rng is not None and (elastic > 0 or dilate > 0):
        gen = as_rng(rng)
        if elastic > 0:
            # [2, H, W] (dy, dx) each: two independent fields, blended by a rotating phase
            field_a = torch.stack([_smooth_field(gen, height, width, elastic_cells) for _ in range(2)])
            field_b = torch.stack([_smooth_field(gen, height, width, elastic_cells) for _ in range(2)])
        if dilate > 0:
            phase = float(gen.uniform(0.0, 2.0 * math.pi))

    frames = []
    for t in range(num_frames):
        scale = (1.0 + scale_rate) ** t
        theta = math.radians(rotation * t)
        cos, sin = math.cos(theta), math.sin(theta)
        # inverse map: output pixel -> source pixel; screen y points down, so "counter-clockwise" flips sin
        dy = ys - cy - vy * short * t
        dx = xs - cx - vx * short * t
        src_y = cy + (cos * dy - sin * dx) / scale
        src_x = cx + (sin * dy + cos * dx) / scale
        if field_a is not None:
            w = 2.0 * math.pi * t / period
            warp = elastic * short * (math.cos(w) * field_a + math.sin(w) * field_b)  # [2, H, W]
            src_y = src_y + warp[0]
            src_x = src_x + warp[1]
        iy = torch.floor(src_y + 0.5).long()
        ix = torch.floor(src_x + 0.5).long()
        if wrap:
            frame = m[iy % height, ix % width]
        else:
            inside = (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
            frame = torch.zeros(height, width, dtype=torch.float32)
            frame[inside] = m[iy[inside], ix[inside]]
        if dilate > 0:
            radius = int(round(dilate * short * math.sin(phase + 2.0 * math.pi * t / period)))
            frame = grow(frame[None, None], radius)[0, 0]
        frames.append(frame)
    return torch.stack(frames)[:, None]  # [F, H, W] -> [F, 1, H, W]


def invert(masks: torch.Tensor) -> torch.Tensor:
    """Swap the regions to fill and to keep: ``1 - masks`` (a new tensor, same shape and dtype)."""
    if not isinstance(masks, torch.Tensor) or not masks.is_floating_point():
        got = masks.dtype if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise MaskSynthesisError(f"masks: expected a float tensor with values 0..1, got {got}.")
    return 1.0 - masks


# --------------------------------------------------------------------------- spatial generators


def full_mask(height: int, width: int, *, num_frames: int = 1) -> torch.Tensor:
    """Fill everything (the paper's "full mask": generation from the keyframe alone)."""
    check_size(height, width, num_frames)
    return torch.ones(num_frames, 1, height, width, dtype=torch.float32)


def grid_cell_pixels(height: int, width: int, cell: float, line_ratio: float) -> tuple[int, int]:
    """The grid's period and line width in pixels: ``max(2, round(cell * short))`` and
    ``round(line_ratio * period)`` clamped to 1..period."""
    period = max(2, int(round(cell * min(height, width))))
    line = min(period, max(1, int(round(line_ratio * period))))
    return period, line


def grid_mask(
    height: int,
    width: int,
    *,
    num_frames: int = 1,
    cell: float = 0.125,
    line_ratio: float = 0.25,
    offset: tuple[float, float] = (0.0, 0.0),
    axes: str = "both",
) -> torch.Tensor:
    """A grid of lines to fill (deterministic; no rng).

    Args:
        cell: grid period, in fractions of the shorter side (see :func:`grid_cell_pixels`).
        line_ratio: line width / period, in (0, 1]. Coverage is about ``1 - (1 - r) ** 2`` for
            ``axes="both"`` and ``r`` for rows or columns alone (exact when the period divides the side).
        offset: (down, right) shift of the grid, in fractions of the period.
        axes: "both" (a grid), "rows" (horizontal lines) or "cols" (vertical lines).
    """
    check_size(height, width, num_frames)
    if axes not in GRID_AXES:
        raise UnknownNameError(f"axes: unknown grid axes {axes!r}; use one of {', '.join(GRID_AXES)}.")
    _range(cell, "cell", 0.0, 1e6, lo_open=True)
    _range(line_ratio, "line_ratio", 0.0, 1.0, lo_open=True)
    try:
        oy, ox = (float(v) for v in offset)
    except (TypeError, ValueError):
        raise MaskSynthesisError(
            f"offset: got {offset!r}; give a (down, right) pair in fractions of the cell.") from None
    period, line = grid_cell_pixels(height, width, cell, line_ratio)
    rows = ((torch.arange(height) + int(round(oy * period))) % period) < line  # [H]
    cols = ((torch.arange(width) + int(round(ox * period))) % period) < line  # [W]
    rows, cols = rows[:, None].expand(height, width), cols[None, :].expand(height, width)
    grid = rows | cols if axes == "both" else (rows if axes == "rows" else cols)
    return stationary(grid.float(), num_frames)


def scribble_mask(
    height: int,
    width: int,
    rng: Rng,
    *,
    num_frames: int = 1,
    num_strokes: IntRange = (1, 4),
    num_vertices: IntRange = (4, 12),
    max_length: float = 0.25,
    brush_width: FloatRange = (0.03, 0.1),
    angle_mean: float = 2.0 * math.pi / 5.0,
    angle_jitter: float = 2.0 * math.pi / 15.0,
) -> torch.Tensor:
    """Free-form brush strokes, after the gated-convolution paper's (Yu et al. 2019) random strokes.

    Each stroke starts at a uniform random point, picks a random heading and a brush width, then
    draws ``num_vertices`` segments whose turn alternates left and right by ``angle_mean``
    +- ``angle_jitter`` radians (a zig-zag), each segment of length uniform in
    [max_length / 4, max_length] and clipped to the frame; joints and ends are round.

    Args:
        num_strokes, num_vertices: an integer, or an inclusive (low, high) range drawn per mask / stroke.
        max_length: longest segment, in fractions of the shorter side.
        brush_width: brush width (or range drawn per stroke), in fractions of the shorter side; at least 1 px.
        angle_mean, angle_jitter: turn per vertex and its uniform jitter, in radians.
    """
    from PIL import Image, ImageDraw

    check_size(height, width, num_frames)
    gen = as_rng(rng)
    strokes = _int_range(num_strokes, "num_strokes")
    vertices = _int_range(num_vertices, "num_vertices")
    _range(max_length, "max_length", 0.0, 1e6, lo_open=True)
    widths = _range(brush_width, "brush_width", 0.0, 1e6, lo_open=True)
    _range(angle_mean, "angle_mean", -2 * math.pi, 2 * math.pi)
    _range(angle_jitter, "angle_jitter", 0.0, 2 * math.pi)

    short = min(height, width)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(_integers(gen, strokes)):
        brush = max(1, int(round(_uniform(gen, widths) * short)))
        heading = gen.uniform(0.0, 2.0 * math.pi)
        points = [(float(gen.uniform(0, width - 1)), float(gen.uniform(0, height - 1)))]
        for j in range(_integers(gen, vertices)):
            turn = angle_mean + gen.uniform(-angle_jitter, angle_jitter)
            angle = heading + (turn if j % 2 else -turn)
            length = gen.uniform(0.25, 1.0) * max_length * short
            x, y = points[-1]
            points.append((float(np.clip(x + length * math.cos(angle), 0, width - 1)),
                           float(np.clip(y + length * math.sin(angle), 0, height - 1))))
        draw.line(points, fill=255, width=brush, joint="curve")
        r = brush / 2.0
        for x, y in points:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    mask = torch.from_numpy((np.asarray(canvas) > 127).astype(np.float32))
    return stationary(mask, num_frames)


def square_mask(
    height: int,
    width: int,
    rng: Rng,
    *,
    num_frames: int = 1,
    num_boxes: IntRange = 1,
    size: FloatRange = (0.1, 0.5),
    aspect_jitter: float = 0.0,
) -> torch.Tensor:
    """Axis-aligned boxes (Kim et al. 2019 train on random squares), each fully inside the frame.

    Args:
        num_boxes: an integer or an inclusive (low, high) range.
        size: box side (or range drawn per box), in fractions of the shorter side, in (0, 1].
            A box's side in pixels is ``max(1, round(size * short))``.
        aspect_jitter: 0 gives squares; a > 0 makes the box ``side * e**u`` tall and ``side * e**-u``
            wide with ``u`` uniform in [-a, a] (clamped to the frame).
    """
    check_size(height, width, num_frames)
    gen = as_rng(rng)
    boxes = _int_range(num_boxes, "num_boxes")
    sides = _range(size, "size", 0.0, 1.0, lo_open=True)
    _range(aspect_jitter, "aspect_jitter", 0.0, 3.0)
    short = min(height, width)
    mask = torch.zeros(height, width, dtype=torch.float32)
    for _ in range(_integers(gen, boxes)):
        side = _uniform(gen, sides) * short
        u = gen.uniform(-aspect_jitter, aspect_jitter) if aspect_jitter > 0 else 0.0
        bh = min(height, max(1, int(round(side * math.exp(u)))))
        bw = min(width, max(1, int(round(side * math.exp(-u)))))
        y0 = int(gen.integers(0, height - bh + 1))
        x0 = int(gen.integers(0, width - bw + 1))
        mask[y0:y0 + bh, x0:x0 + bw] = 1.0
    return stationary(mask, num_frames)


def _periodic_field(rng: np.random.Generator, height: int, width: int, feature_px: float) -> np.ndarray:
    """Gaussian-smoothed white noise [H, W] that tiles seamlessly (built in the Fourier domain).

    The smoothing sigma is ``feature_px / 4.4``: level sets of such a field cross zero about every
    ``pi * sqrt(2) * sigma`` ~= 4.4 sigma, so blobs are about ``feature_px`` across.
    """
    sigma = feature_px / 4.4
    fy = np.fft.fftfreq(height)[:, None]  # cycles per pixel
    fx = np.fft.rfftfreq(width)[None, :]
    envelope = np.exp(-2.0 * (math.pi * sigma) ** 2 * (fy**2 + fx**2))
    spectrum = (rng.standard_normal(envelope.shape) + 1j * rng.standard_normal(envelope.shape)) * envelope
    return np.fft.irfft2(spectrum, s=(height, width))


def blob_mask(
    height: int,
    width: int,
    rng: Rng,
    *,
    num_frames: int = 1,
    coverage: float = 0.3,
    feature_size: float = 0.25,
) -> torch.Tensor:
    """Smooth random blobs: a smoothed noise field thresholded at its ``1 - coverage`` quantile.

    The field tiles seamlessly (it is periodic in height and width), so :func:`animate` with
    ``wrap=True`` can move, shrink or turn blobs without a straight edge entering the frame.

    Args:
        coverage: fraction of the frame to fill, in (0, 1); met to within a pixel.
        feature_size: typical blob diameter, in fractions of the shorter side.
    """
    check_size(height, width, num_frames)
    gen = as_rng(rng)
    _range(coverage, "coverage", 0.0, 1.0, lo_open=True)
    if coverage >= 1.0:
        raise MaskSynthesisError(f"coverage: got {coverage:g}; give a value in (0, 1), or use full_mask for 1.")
    _range(feature_size, "feature_size", 0.0, 1e6, lo_open=True)
    field_ = _periodic_field(gen, height, width, feature_size * min(height, width))
    # rank threshold: exactly round(coverage * H * W) pixels (ties have probability zero)
    count = int(round(coverage * height * width))
    flat = np.zeros(height * width, dtype=np.float32)
    flat[np.argsort(field_, axis=None, kind="stable")[height * width - count:]] = 1.0
    return stationary(torch.from_numpy(flat.reshape(height, width)), num_frames)


# --------------------------------------------------------------------------- sampling


def _weights_default() -> dict[str, float]:
    return {"full": 0.05, "grid": 0.2, "scribble": 0.35, "square": 0.25, "blob": 0.15}


@dataclass
class MaskConfig:
    """How :func:`sample_masks` draws training masks. Lengths are fractions of the shorter side."""

    type_weights: dict[str, float] = field(default_factory=_weights_default, metadata={
        "help": f"relative probability of each mask type ({', '.join(MASK_TYPES)}); missing types get 0"})
    invert_prob: float = field(default=0.25, metadata={
        "help": "probability of swapping fill and keep regions (never for 'full', whose inverse is empty)"})
    motion_prob: float = field(default=0.5, metadata={
        "help": "probability that the mask moves/deforms over time (else stationary; 'full' never moves)"})
    min_coverage: float = field(default=0.02, metadata={
        "help": "lowest fraction of pixels to fill allowed in any frame; draws outside are re-drawn"})
    max_coverage: float = field(default=1.0, metadata={
        "help": "highest fraction of pixels to fill allowed in any frame (must be 1 while 'full' has weight)"})
    max_tries: int = field(default=50, metadata={"help": "draws before sample_masks gives up with an error"})

    grid_cell: tuple[float, float] = field(default=(0.06, 0.3), metadata={"help": "grid period range"})
    grid_line_ratio: tuple[float, float] = field(default=(0.1, 0.5), metadata={"help": "line width / period range"})
    grid_axes: tuple[str, ...] = field(default=("both", "both", "rows", "cols"), metadata={
        "help": "grid axes drawn uniformly from this tuple (repeat a name to weight it)"})
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
                f"MaskConfig.type_weights: unknown mask type(s) {unknown}; use {', '.join(MASK_TYPES)}.")
        self.type_weights = {k: float(self.type_weights.get(k, 0.0)) for k in MASK_TYPES}
        if any(not math.isfinite(w) or w < 0 for w in self.type_weights.values()) or \
                sum(self.type_weights.values()) <= 0:
            raise MaskSynthesisError(
                f"MaskConfig.type_weights: got {self.type_weights}; give non-negative weights, at least one > 0.")
        for name in ("invert_prob", "motion_prob", "min_coverage", "max_coverage"):
            _range(getattr(self, name), f"MaskConfig.{name}", 0.0, 1.0)
        if self.min_coverage > self.max_coverage:
            raise MaskSynthesisError(
                f"MaskConfig.min_coverage, max_coverage: got {self.min_coverage:g} > {self.max_coverage:g}; "
                "give min_coverage <= max_coverage.")
        if self.type_weights["full"] > 0 and self.max_coverage < 1.0:
            raise MaskSynthesisError(
                f"MaskConfig: type_weights['full'] is {self.type_weights['full']:g} but max_coverage is "
                f"{self.max_coverage:g}, so every full mask would be rejected. Set type_weights['full'] = 0 "
                "or max_coverage = 1.")
        if isinstance(self.max_tries, bool) or not isinstance(self.max_tries, int) or self.max_tries < 1:
            raise MaskSynthesisError(f"MaskConfig.max_tries: got {self.max_tries!r}; give an integer >= 1.")
        bad_axes = [a for a in self.grid_axes if a not in GRID_AXES]
        if not self.grid_axes or bad_axes:
            raise UnknownNameError(
                f"MaskConfig.grid_axes: got {tuple(self.grid_axes)}; use names from {', '.join(GRID_AXES)}.")
        self.grid_cell = _range(self.grid_cell, "MaskConfig.grid_cell", 0.0, 1e6, lo_open=True)
        self.grid_line_ratio = _range(self.grid_line_ratio, "MaskConfig.grid_line_ratio", 0.0, 1.0, lo_open=True)
        self.scribble_strokes = _int_range(self.scribble_strokes, "MaskConfig.scribble_strokes")
        self.scribble_vertices = _int_range(self.scribble_vertices, "MaskConfig.scribble_vertices")
        _range(self.scribble_max_length, "MaskConfig.scribble_max_length", 0.0, 1e6, lo_open=True)
        self.scribble_width = _range(self.scribble_width, "MaskConfig.scribble_width", 0.0, 1e6, lo_open=True)
        self.square_boxes = _int_range(self.square_boxes, "MaskConfig.square_boxes")
        self.square_size = _range(self.square_size, "MaskConfig.square_size", 0.0, 1.0, lo_open=True)
        _range(self.square_aspect_jitter, "MaskConfig.square_aspect_jitter", 0.0, 3.0)
        self.blob_coverage = _range(self.blob_coverage, "MaskConfig.blob_coverage", 0.0, 0.999, lo_open=True)
        self.blob_feature_size = _range(self.blob_feature_size, "MaskConfig.blob_feature_size", 0.0, 1e6,
                                        lo_open=True)
        for name in ("max_speed", "max_elastic", "max_dilate", "max_rotation"):
            _range(getattr(self, name), f"MaskConfig.{name}", 0.0, 1e6)
        _range(self.max_scale_rate, "MaskConfig.max_scale_rate", 0.0, 0.99)


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
        params = {"cell": _uniform(gen, cfg.grid_cell), "line_ratio": _uniform(gen, cfg.grid_line_ratio),
                  "offset": (float(gen.uniform()), float(gen.uniform())),
                  "axes": str(cfg.grid_axes[int(gen.integers(len(cfg.grid_axes)))])}
        return grid_mask(height, width, **params), params
    if kind == "scribble":
        params = {"num_strokes": cfg.scribble_strokes, "num_vertices": cfg.scribble_vertices,
                  "max_length": cfg.scribble_max_length, "brush_width": cfg.scribble_width}
        return scribble_mask(height, width, gen, **params), params
    if kind == "square":
        params = {"num_boxes": cfg.square_boxes, "size": cfg.square_size, "aspect_jitter": cfg.square_aspect_jitter}
        return square_mask(height, width, gen, **params), params
    params = {"coverage": _uniform(gen, cfg.blob_coverage), "feature_size": _uniform(gen, cfg.blob_feature_size)}
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


def _animate_grid(params: dict[str, Any], num_frames: int, height: int, width: int, gen: np.random.Generator,
                  motion: dict[str, Any]) -> torch.Tensor:
    """Animate a grid as a periodic pattern, so that no edge shows when it moves, shrinks or turns.

    The grid is drawn on a canvas that is a whole number of periods (same period in pixels as at
    height x width), animated with ``wrap=True`` and cropped back to height x width.
    """
    short = min(height, width)
    period, _ = grid_cell_pixels(height, width, params["cell"], params["line_ratio"])
    ch, cw = -(-height // period) * period, -(-width // period) * period  # ceil to whole periods
    ratio = short / min(ch, cw)  # lengths in fractions of the frame's short side -> of the canvas's
    tile = grid_mask(ch, cw, **{**params, "cell": period / min(ch, cw)})
    moved = animate(tile, num_frames, gen, wrap=True, **{
        **motion, "velocity": tuple(v * ratio for v in motion["velocity"]),
        "elastic": motion["elastic"] * ratio, "dilate": motion["dilate"] * ratio})
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
                "draw samples of one size and frame count.")
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
        lines = [f"{r}: {info.kind}", ("inverted " if info.inverted else "") + ("moving" if info.motion else "still"),
                 f"cover {info.coverage:.2f}"]
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
