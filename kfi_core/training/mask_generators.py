"""Mask patterns and their motion: the generators that training-mask synthesis draws from.

Layout: every generator returns float32 ``masks`` [F, 1, H, W] with values exactly 0 or 1,
1 = region to inpaint. Lengths (cell sizes, box sides, brush widths, speeds) are fractions of the
shorter side ``short = min(H, W)``, so one set of parameters gives alike masks at 64x64 and at
576x1024. Randomness comes only from the ``rng`` argument (a ``numpy.random.Generator`` or an int
seed); nothing reads or advances numpy's or torch's global generators, so a seed gives the same
masks on every machine and in every data-loader worker.

- Spatial generators: :func:`full_mask`, :func:`grid_mask`, :func:`scribble_mask` (free-form
  strokes, Yu et al. 2019, "Free-form image inpainting with gated convolution"),
  :func:`square_mask` (Kim et al. 2019, "Deep video inpainting"), :func:`blob_mask` (smooth random
  regions); each makes one pattern, repeated over ``num_frames``.
- Temporal: :func:`stationary` (repeat) and :func:`animate` (per-frame translation, scale,
  rotation, elastic warp and dilate/erode jitter).
- :func:`invert` swaps the regions to fill and to keep.
- Parameter checks shared with :class:`kfi_core.training.mask_synthesis.MaskConfig`:
  :func:`check_range`, :func:`check_int_range`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kfi_core.errors import MaskSynthesisError, UnknownNameError
from kfi_core.media.mask_ops import grow

GRID_AXES = ("both", "rows", "cols")

Rng = np.random.Generator | int
IntRange = int | Sequence[int]
FloatRange = float | Sequence[float]


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


def check_range(value: FloatRange, name: str, lo: float, hi: float, *, lo_open: bool = False) -> tuple[float, float]:
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


def check_int_range(value: IntRange, name: str, lo: int = 1) -> tuple[int, int]:
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


def uniform_in(rng: np.random.Generator, span: tuple[float, float]) -> float:
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
    vy, vx = _check_motion(velocity, scale_rate, rotation, elastic, elastic_cells, dilate, period, rng)
    short = min(height, width)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    cy, cx = _centroid(m, ys, xs)
    field_a, field_b, phase = _draw_jitter(rng, height, width, elastic, elastic_cells, dilate)

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
        frame = _sample_nearest(m, src_y, src_x, wrap)
        if dilate > 0:
            radius = int(round(dilate * short * math.sin(phase + 2.0 * math.pi * t / period)))
            frame = grow(frame[None, None], radius)[0, 0]
        frames.append(frame)
    return torch.stack(frames)[:, None]  # [F, H, W] -> [F, 1, H, W]


def _check_motion(velocity, scale_rate, rotation, elastic, elastic_cells, dilate, period, rng) -> tuple[float, float]:
    """Check :func:`animate`'s motion arguments; return the velocity as (down, right) floats."""
    try:
        vy, vx = (float(v) for v in velocity)
    except (TypeError, ValueError):
        raise MaskSynthesisError(f"velocity: got {velocity!r}; give a (down, right) pair per frame.") from None
    for name, value in (
        ("velocity", vy),
        ("velocity", vx),
        ("scale_rate", scale_rate),
        ("rotation", rotation),
        ("elastic", elastic),
        ("dilate", dilate),
    ):
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
    return vy, vx


def _centroid(m: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> tuple[float, float]:
    """The (y, x) centroid of mask ``m`` [H, W]; the frame's centre when the mask is empty."""
    height, width = m.shape
    total = float(m.sum())
    if total > 0:
        return float((m * ys).sum()) / total, float((m * xs).sum()) / total
    return (height - 1) / 2.0, (width - 1) / 2.0


def _draw_jitter(rng, height: int, width: int, elastic: float, elastic_cells: int, dilate: float) -> tuple:
    """The random parts of :func:`animate`: two warp fields [2, H, W] (or None) and the dilate phase."""
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
    return field_a, field_b, phase


def _sample_nearest(m: torch.Tensor, src_y: torch.Tensor, src_x: torch.Tensor, wrap: bool) -> torch.Tensor:
    """Mask ``m`` [H, W] sampled nearest-neighbour at source pixels (src_y, src_x) -> [H, W].

    Source pixels beyond an edge wrap around when ``wrap``; else they are empty (0).
    """
    height, width = m.shape
    iy = torch.floor(src_y + 0.5).long()
    ix = torch.floor(src_x + 0.5).long()
    if wrap:
        return m[iy % height, ix % width]
    inside = (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
    frame = torch.zeros(height, width, dtype=torch.float32)
    frame[inside] = m[iy[inside], ix[inside]]
    return frame


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
    check_range(cell, "cell", 0.0, 1e6, lo_open=True)
    check_range(line_ratio, "line_ratio", 0.0, 1.0, lo_open=True)
    try:
        oy, ox = (float(v) for v in offset)
    except (TypeError, ValueError):
        raise MaskSynthesisError(
            f"offset: got {offset!r}; give a (down, right) pair in fractions of the cell."
        ) from None
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
    strokes = check_int_range(num_strokes, "num_strokes")
    vertices = check_int_range(num_vertices, "num_vertices")
    check_range(max_length, "max_length", 0.0, 1e6, lo_open=True)
    widths = check_range(brush_width, "brush_width", 0.0, 1e6, lo_open=True)
    check_range(angle_mean, "angle_mean", -2 * math.pi, 2 * math.pi)
    check_range(angle_jitter, "angle_jitter", 0.0, 2 * math.pi)

    short = min(height, width)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(_integers(gen, strokes)):
        brush = max(1, int(round(uniform_in(gen, widths) * short)))
        heading = gen.uniform(0.0, 2.0 * math.pi)
        points = [(float(gen.uniform(0, width - 1)), float(gen.uniform(0, height - 1)))]
        for j in range(_integers(gen, vertices)):
            turn = angle_mean + gen.uniform(-angle_jitter, angle_jitter)
            angle = heading + (turn if j % 2 else -turn)
            length = gen.uniform(0.25, 1.0) * max_length * short
            x, y = points[-1]
            points.append(
                (
                    float(np.clip(x + length * math.cos(angle), 0, width - 1)),
                    float(np.clip(y + length * math.sin(angle), 0, height - 1)),
                )
            )
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
    boxes = check_int_range(num_boxes, "num_boxes")
    sides = check_range(size, "size", 0.0, 1.0, lo_open=True)
    check_range(aspect_jitter, "aspect_jitter", 0.0, 3.0)
    short = min(height, width)
    mask = torch.zeros(height, width, dtype=torch.float32)
    for _ in range(_integers(gen, boxes)):
        side = uniform_in(gen, sides) * short
        u = gen.uniform(-aspect_jitter, aspect_jitter) if aspect_jitter > 0 else 0.0
        bh = min(height, max(1, int(round(side * math.exp(u)))))
        bw = min(width, max(1, int(round(side * math.exp(-u)))))
        y0 = int(gen.integers(0, height - bh + 1))
        x0 = int(gen.integers(0, width - bw + 1))
        mask[y0 : y0 + bh, x0 : x0 + bw] = 1.0
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
    check_range(coverage, "coverage", 0.0, 1.0, lo_open=True)
    if coverage >= 1.0:
        raise MaskSynthesisError(f"coverage: got {coverage:g}; give a value in (0, 1), or use full_mask for 1.")
    check_range(feature_size, "feature_size", 0.0, 1e6, lo_open=True)
    field_ = _periodic_field(gen, height, width, feature_size * min(height, width))
    # rank threshold: exactly round(coverage * H * W) pixels (ties have probability zero)
    count = int(round(coverage * height * width))
    flat = np.zeros(height * width, dtype=np.float32)
    flat[np.argsort(field_, axis=None, kind="stable")[height * width - count :]] = 1.0
    return stationary(torch.from_numpy(flat.reshape(height, width)), num_frames)
