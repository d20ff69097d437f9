"""Crop a whole clip to one box around its masks, at the model's aspect ratio, and stitch the fill back.

A small hole in a large clip (a 4K frame, a 1920x1080 one) is filled at the model's full detail when the
model sees only a box around the hole, scaled to its working size, instead of the whole frame scaled down.
This is what Inpaint-CropAndStitch does for images, with one box for every frame of the clip.

Layouts: ``frames`` [F, C, H, W] float in 0..1; ``masks`` [F, 1, H, W] with values above 0 = region to fill.
A box is ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive, always inside the frame.

Planning (:func:`plan_clip_box`): the bounding box of the union of the masks over all frames, ``padding``
pixels added on each side (cut at the frame border), then grown to the aspect ratio ``width:height`` of the
working size (its short side lengthened), centred on the masks and shifted (never shrunk) to lie inside the
frame. Where the lengthened side would exceed the frame, the box takes that whole axis and keeps its other
side (the padded masks): it is then off the aspect ratio (a mask spanning most of a frame of another shape),
the working-size resize stretches it a little, and the stitch stretches the fill back. The box never
reaches outside the frame, so nothing is invented around it.

Stitching (:func:`stitch_clip`): the fill, at box size, is pasted into the box; over ``feather`` pixels
inside the box edges that lie inside the frame it is blended into the frame (masked pixels always take the
fill). Pixels outside the box are exactly the input's.
"""

from __future__ import annotations

import logging

import torch

from kfi_core.errors import InputMismatchError, UnsupportedSizeError
from kfi_core.media.crop import edge_ramp, place_span

logger = logging.getLogger(__name__)

DEFAULT_CLIP_PADDING = 32  # pixels of context around the union of the masks
DEFAULT_STITCH_FEATHER = 8  # pixels of blending inside the box edges

Box = tuple[int, int, int, int]


def mask_bounds(masks: torch.Tensor) -> Box:
    """(x0, y0, x1, y1) of the union of ``masks`` [F, 1, H, W] (or [H, W]) over all frames; x1/y1 exclusive."""
    union = masks > 0
    while union.ndim > 2:
        union = union.any(dim=0)
    rows = torch.nonzero(union.any(dim=1)).flatten()
    cols = torch.nonzero(union.any(dim=0)).flatten()
    if rows.numel() == 0:
        h, w = masks.shape[-2:]
        raise InputMismatchError(
            f"--mask: the mask is empty on every frame ({w}x{h}), so --crop mask has no region to crop around. "
            "Draw the region to fill (white = fill), or drop --crop."
        )
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _grow_to(short: int, target: int, dim: int) -> int:
    """The new length of a side of length ``short`` that should be ``target``, at most ``dim``, never shorter."""
    return max(short, min(target, dim))


def plan_clip_box(masks: torch.Tensor, aspect: tuple[int, int], padding: int = DEFAULT_CLIP_PADDING) -> Box:
    """One box (x0, y0, x1, y1) for the whole clip: the union of ``masks`` [F, 1, H, W], ``padding`` pixels
    on each side, grown to ``aspect`` = (width, height) of the working size and kept inside the frame
    (module docstring). Raises on an empty mask or a negative padding."""
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise UnsupportedSizeError(
            f"--crop-padding: got {padding!r}; give 0 or more pixels of context around the mask (default "
            f"{DEFAULT_CLIP_PADDING})."
        )
    aw, ah = int(aspect[0]), int(aspect[1])
    if aw < 1 or ah < 1:
        raise UnsupportedSizeError(f"crop aspect: got {aw}x{ah} (width x height); give the positive working size.")
    height, width = int(masks.shape[-2]), int(masks.shape[-1])

    # 1. Union of the masks, padded, cut at the frame
    left, top, right, bottom = mask_bounds(masks)
    left, top = max(0, left - padding), max(0, top - padding)
    right, bottom = min(width, right + padding), min(height, bottom + padding)
    bw, bh = right - left, bottom - top

    # 2. Lengthen the short side to the aspect ratio, as far as the frame allows
    # (when the lengthened side is cut at the frame, the other side is already longer than the aspect asks)
    if bw * ah < bh * aw:  # too narrow
        bw = _grow_to(bw, -(-bh * aw // ah), width)
    else:  # too flat (or exact)
        bh = _grow_to(bh, -(-bw * ah // aw), height)

    # 3. Place it centred on the padded masks, shifted inside the frame
    x0 = place_span(left, right - left, bw, width)
    y0 = place_span(top, bottom - top, bh, height)
    box = (x0, y0, x0 + bw, y0 + bh)
    if abs(bw * ah - bh * aw) > max(aw, ah):
        logger.info(
            "crop: box %dx%d is off the working aspect %d:%d (the masks span most of the %dx%d frame); "
            "the working-size resize stretches it",
            bw,
            bh,
            aw,
            ah,
            width,
            height,
        )
    logger.debug("crop: masks x %d..%d, y %d..%d -> box %s", left, right, top, bottom, box)
    return box


def _check_box(x: torch.Tensor, box: Box, name: str) -> None:
    x0, y0, x1, y1 = box
    h, w = x.shape[-2:]
    if x.ndim != 4 or not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise InputMismatchError(
            f"{name}: box {box} does not fit {list(x.shape)}; give [frames, channels, height, width] of the frame "
            "size the box was planned on."
        )


def crop_clip(x: torch.Tensor, box: Box, name: str = "frames") -> torch.Tensor:
    """The box out of frames, masks or keyframes [F, C, H, W] -> [F, C, y1 - y0, x1 - x0], a view (no copy of a
    full-size clip; the library only reads it)."""
    _check_box(x, box, name)
    x0, y0, x1, y1 = box
    return x[:, :, y0:y1, x0:x1]


def box_weights(box: Box, size: tuple[int, int], feather: int = DEFAULT_STITCH_FEATHER, device=None) -> torch.Tensor:
    """[H, W] weights: 0 outside the box, rising linearly to 1 over ``feather`` pixels inside the box edges
    that lie inside the frame (an edge on the frame border needs no blending)."""
    if isinstance(feather, bool) or not isinstance(feather, int) or feather < 0:
        raise UnsupportedSizeError(f"feather: got {feather!r}; give 0 (hard edge) or a width in pixels.")
    h, w = size
    x0, y0, x1, y1 = box
    return edge_ramp(size, box, (x0 > 0, y0 > 0, x1 < w, y1 < h), feather, device)


def stitch_clip(
    frames: torch.Tensor,
    fill: torch.Tensor,
    box: Box,
    masks: torch.Tensor | None = None,
    *,
    feather: int = DEFAULT_STITCH_FEATHER,
) -> torch.Tensor:
    """Paste ``fill`` [F, 3, y1 - y0, x1 - x0] into ``frames`` [F, 3, H, W] at ``box`` with a feathered edge
    inside the box; where ``masks`` [F, 1, H, W] (full frame) are above 0 the fill is taken whole. Pixels
    outside the box are exactly ``frames``'."""
    _check_box(frames, box, "frames")
    x0, y0, x1, y1 = box
    if tuple(fill.shape) != (frames.shape[0], frames.shape[1], y1 - y0, x1 - x0):
        raise InputMismatchError(
            f"fill: shape {list(fill.shape)} does not match the box {box} of {list(frames.shape)}; give the fill at "
            "box size, one frame per input frame."
        )
    # the weights are 0 outside the box, so only the box is blended (a full-size clip needs one copy, not several)
    weights = stitch_weights(box, tuple(frames.shape[-2:]), masks, feather, frames.device).to(frames.dtype)
    out = frames.clone()
    for t in range(frames.shape[0]):  # a frame at a time: the temporaries are one frame's box
        stitch_frame(out[t], fill[t], box, weights[t if weights.shape[0] > 1 else 0])
    return out


def stitch_weights(
    box: Box,
    size: tuple[int, int],
    masks: torch.Tensor | None = None,
    feather: int = DEFAULT_STITCH_FEATHER,
    device=None,
) -> torch.Tensor:
    """The fill's weights inside ``box`` [F or 1, 1, y1 - y0, x1 - x0]: :func:`box_weights`, 1 wherever ``masks``
    [F, 1, H, W] (full frame) are above 0."""
    x0, y0, x1, y1 = box
    weights = box_weights(box, size, feather, device)[None, None, y0:y1, x0:x1]
    if masks is not None:
        inner = masks[:, :, y0:y1, x0:x1]
        weights = torch.where((inner > 0) & (weights > 0), torch.ones_like(weights), weights)
    return weights


def stitch_frame(frame: torch.Tensor, fill: torch.Tensor, box: Box, weights: torch.Tensor) -> torch.Tensor:
    """Blend ``fill`` [3, y1 - y0, x1 - x0] into float ``frame`` [3, H, W] at ``box`` with ``weights`` (one frame's
    :func:`stitch_weights`), in place; returns ``frame``."""
    x0, y0, x1, y1 = box
    region = frame[:, y0:y1, x0:x1]
    frame[:, y0:y1, x0:x1] = torch.where(weights > 0, region + weights * (fill.to(frame.dtype) - region), region)
    return frame
