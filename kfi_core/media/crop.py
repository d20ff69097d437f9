"""Crop a square around the mask for an image inpainter, and stitch the edited crop back.

Image inpainters work best at their training size (FLUX Fill: 768x768). As in the KFI paper
(supplement A.5), we crop a square region containing the region of interest from the keyframe,
resize it to that size, let the inpainter edit it, then resize the edit back and paste it in.

Layouts: ``image``/``frames`` float [C, H, W] or [F, C, H, W] in 0..1; ``mask`` [H, W],
[1, H, W] or ``masks`` [F, 1, H, W] with 1 = region to edit. Every function returns new tensors.

Which pixels belong to the region: every pixel whose mask value is above 0 (a soft or faint
edge counts too), for the crop box as well as for the stitch.

Frame borders: the square keeps its size and is shifted to lie inside the frame whenever it
fits. Along an axis where it is larger than the frame (a mask spanning most of a wide frame, or a
``min_side`` above the frame's height), the square is not shrunk: it covers the whole axis, centred
on the mask as far as possible, and the part outside the frame is filled with a mirror image of the
frame (``"reflect"``, default; repeated as often as needed) or its edge pixels repeated
(``"edge"``). That filler only gives the inpainter context; the mask is 0 there and the stitch
drops it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from kfi_core.errors import InputMismatchError, UnsupportedSizeError
from kfi_core.media.mask_ops import check_masks, expand_masks
from kfi_core.media.mask_ops import feather as blur_masks
from kfi_core.media.mask_ops import grow as grow_masks

logger = logging.getLogger(__name__)

DEFAULT_SIZE = 768  # FLUX Fill's training resolution
DEFAULT_PADDING = 0.2
DEFAULT_FEATHER = 8
PAD_MODES = ("reflect", "edge")
MAX_SIZE = 8192


@dataclass(frozen=True)
class CropBox:
    """A square ``side`` x ``side`` at (``x0``, ``y0``) in a ``frame_width`` x ``frame_height`` frame,
    resized to ``size`` x ``size`` for the inpainter.

    ``x0``/``y0`` may be negative and ``x0 + side`` may exceed the frame only along an axis where
    the square is larger than the frame. ``to_dict()`` / ``from_dict()`` give a JSON-ready form.
    """

    x0: int
    y0: int
    side: int
    frame_width: int
    frame_height: int
    size: int

    @property
    def x1(self) -> int:
        return self.x0 + self.side

    @property
    def y1(self) -> int:
        return self.y0 + self.side

    @property
    def scale(self) -> float:
        """Crop pixels per frame pixel (> 1: the crop is enlarged for the inpainter)."""
        return self.size / self.side

    def in_frame(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the part of the square inside the frame (x1, y1 exclusive)."""
        return (max(self.x0, 0), max(self.y0, 0), min(self.x1, self.frame_width), min(self.y1, self.frame_height))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CropBox:
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise InputMismatchError(
                f"crop: the crop info lacks {', '.join(missing)}; it needs {', '.join(names)}. "
                "Use the crop info written by plan_square_crop / KFI Crop For Inpaint."
            )
        box = cls(**{n: int(data[n]) for n in names})
        if min(box.side, box.frame_width, box.frame_height, box.size) < 1:
            raise InputMismatchError(f"crop: sizes must be positive, got {box.to_dict()}.")
        return box


# --------------------------------------------------------------------------- checks


def _as_masks(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    # [H, W] -> [1, 1, H, W]; [1, H, W] -> [1, 1, H, W]; [F, 1, H, W] stays
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise InputMismatchError(
            f"{name}: expected [height, width], [1, height, width] or [frames, 1, height, width], got "
            f"{list(mask.shape)}. Pass a single-channel mask."
        )
    check_masks(mask, name)
    return mask


def _as_frames(image: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    # [C, H, W] -> [1, C, H, W] (and remember to squeeze back); [F, C, H, W] stays
    if image.ndim == 3:
        return image[None], True
    if image.ndim == 4:
        return image, False
    raise InputMismatchError(
        f"{name}: expected [channels, height, width] or [frames, channels, height, width], got {list(image.shape)}."
    )


def _check_settings(size: int, padding: float, min_side: int) -> None:
    if not 1 <= int(size) <= MAX_SIZE:
        raise UnsupportedSizeError(
            f"size: got {size}; give the inpainter's working size in pixels, 1..{MAX_SIZE} (768 for FLUX Fill)."
        )
    if not padding >= 0:  # also refuses NaN
        raise UnsupportedSizeError(
            f"padding: got {padding}; give a fraction of the mask's size, 0 or more (0.2 adds 20% on each side)."
        )
    if int(min_side) < 0:
        raise UnsupportedSizeError(f"min_side: got {min_side}; give 0 (no minimum) or a size in pixels.")


def _check_frame_size(frames: torch.Tensor, box: CropBox, name: str) -> None:
    h, w = frames.shape[-2:]
    if (w, h) != (box.frame_width, box.frame_height):
        raise InputMismatchError(
            f"{name}: size {w}x{h} (width x height) does not match the crop's frame size "
            f"{box.frame_width}x{box.frame_height}. Use the same image (and mask) that the crop was planned on."
        )


# --------------------------------------------------------------------------- planning


def place_span(lo: int, extent: int, side: int, dim: int) -> int:
    """Start of a ``side``-long interval containing [lo, lo + extent), centred on it, kept in [0, dim)
    when it fits and covering all of [0, dim) when it does not."""
    start = lo - (side - extent) // 2
    low, high = min(0, dim - side), max(0, dim - side)
    return min(max(start, low), high)


def plan_square_crop(
    mask: torch.Tensor, *, padding: float = DEFAULT_PADDING, min_side: int = 0, size: int = DEFAULT_SIZE
) -> CropBox:
    """The smallest square holding the mask's bounding box plus ``padding`` on each side.

    ``mask``: [H, W], [1, H, W], or [F, 1, H, W] masks, in which case the box covers the union of
    all frames' masks (one box for the batch). ``padding`` is a fraction of the bounding box's longer
    side, added on each side (0.2: a 100-pixel object gets 20 pixels of context on every side, a
    140-pixel square). ``min_side`` enlarges small squares (e.g. ``size`` to avoid enlarging the crop).
    The square is shifted (never shrunk) to stay inside the frame; where it is larger than the frame
    it covers the whole axis and the crop functions fill the rest (see the module docstring).
    """
    # 1. Check inputs
    masks = _as_masks(mask)
    _check_settings(size, padding, min_side)
    height, width = masks.shape[-2:]

    # 2. Bounding box of the union of the masks
    union = (masks > 0).any(dim=0)[0]  # [F, 1, H, W] -> [H, W]
    rows = torch.nonzero(union.any(dim=1)).flatten()
    cols = torch.nonzero(union.any(dim=0)).flatten()
    if rows.numel() == 0:
        raise InputMismatchError(
            f"mask: the mask is empty (all {masks.shape[0]} mask(s) of {width}x{height} are 0), so there is no region "
            "to crop around. Draw a mask over the region to edit (white = edit), e.g. with the mask editor or SAM."
        )
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1

    # 3. Square side: longer bbox side plus padding on both sides, at least min_side
    extent = max(bottom - top, right - left)
    margin = int(round(padding * extent))
    side = max(extent + 2 * margin, int(min_side), 1)

    # 4. Place it: centred on the bbox, shifted into the frame (or over the whole axis)
    box = CropBox(
        x0=place_span(left, right - left, side, width),
        y0=place_span(top, bottom - top, side, height),
        side=side,
        frame_width=int(width),
        frame_height=int(height),
        size=int(size),
    )
    if side > min(width, height):
        logger.info(
            "crop: a %d-pixel square is larger than the %dx%d frame; the part outside is filled with "
            "mirrored content for the inpainter and dropped when stitching",
            side,
            width,
            height,
        )
    logger.debug("crop: mask bbox x %d..%d, y %d..%d -> %s", left, right, top, bottom, box)
    return box


# --------------------------------------------------------------------------- cropping


def _reflect_index(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Mirror indices into 0..n-1 without repeating the edge pixel (like numpy 'reflect'), any distance."""
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def _source_index(start: int, side: int, n: int, pad_mode: str, device) -> torch.Tensor:
    idx = torch.arange(start, start + side, device=device)
    if pad_mode == "reflect":
        return _reflect_index(idx, n)
    return idx.clamp(0, n - 1)


def _resize(x: torch.Tensor, out: int, mode: str) -> torch.Tensor:
    # [N, C, s, s] -> [N, C, out, out]; antialiased when shrinking; identity (exact) when sizes agree
    if x.shape[-1] == out and x.shape[-2] == out:
        return x.clone()
    y = F.interpolate(x.float(), size=(out, out), mode=mode, antialias=True, align_corners=False)
    return y.clamp(0.0, 1.0).to(x.dtype)


def crop_to_square(image: torch.Tensor, box: CropBox, *, pad_mode: str = "reflect") -> torch.Tensor:
    """The box's square out of ``image`` [C, H, W] (or [F, C, H, W]), resized to [.., C, size, size].

    Resizing is bicubic with antialiasing. Outside the frame, ``pad_mode`` "reflect" mirrors the
    frame and "edge" repeats its border pixels.
    """
    if pad_mode not in PAD_MODES:
        raise InputMismatchError(f"pad_mode: got {pad_mode!r}; choose one of {', '.join(PAD_MODES)}.")
    frames, single = _as_frames(image, "image")
    _check_frame_size(frames, box, "image")
    ys = _source_index(box.y0, box.side, box.frame_height, pad_mode, frames.device)
    xs = _source_index(box.x0, box.side, box.frame_width, pad_mode, frames.device)
    square = frames[:, :, ys][:, :, :, xs]  # [F, C, side, side]
    out = _resize(square, box.size, "bicubic")
    return out[0] if single else out


def crop_mask(mask: torch.Tensor, box: CropBox) -> torch.Tensor:
    """The box's square out of ``mask``, resized to ``size`` (antialiased bilinear); 0 outside the frame.

    Returns the input's layout: [H, W] -> [size, size], [1, H, W] -> [1, size, size],
    [F, 1, H, W] -> [F, 1, size, size].
    """
    masks = _as_masks(mask)
    _check_frame_size(masks, box, "mask")
    bx0, by0, bx1, by1 = box.in_frame()
    square = masks.new_zeros(masks.shape[0], 1, box.side, box.side)
    square[:, :, by0 - box.y0 : by1 - box.y0, bx0 - box.x0 : bx1 - box.x0] = masks[:, :, by0:by1, bx0:bx1]
    out = _resize(square, box.size, "bilinear")
    return out.reshape(*mask.shape[:-2], box.size, box.size)


def crop_for_inpaint(
    frames: torch.Tensor,
    masks: torch.Tensor,
    *,
    size: int = DEFAULT_SIZE,
    padding: float = DEFAULT_PADDING,
    min_side: int = 0,
    pad_mode: str = "reflect",
) -> tuple[torch.Tensor, torch.Tensor, CropBox]:
    """Plan one square for all frames (the union of their masks) and crop frames and masks with it.

    ``frames`` [F, C, H, W]; ``masks`` [F, 1, H, W] or one mask [1, 1, H, W] for every frame.
    Returns (frames [F, C, size, size], masks [F, 1, size, size], box).
    """
    masks = expand_masks(masks, frames.shape[0], frames.shape[-2:])
    box = plan_square_crop(masks, padding=padding, min_side=min_side, size=size)
    return crop_to_square(frames, box, pad_mode=pad_mode), crop_mask(masks, box), box


# --------------------------------------------------------------------------- stitching


def edge_ramp(
    size: tuple[int, int], box: tuple[int, int, int, int], soft: tuple[bool, bool, bool, bool], feather: int, device
) -> torch.Tensor:
    """[H, W] weights for a frame of ``size`` (H, W): 0 outside ``box`` (x0, y0, x1, y1, inside the frame), rising
    linearly to 1 over ``feather`` pixels from each box edge that ``soft`` (left, top, right, bottom) marks; a hard
    edge (one on the frame border) needs no blending."""
    h, w = size
    x0, y0, x1, y1 = box
    soft_left, soft_top, soft_right, soft_bottom = soft

    def axis(n: int, lo: int, hi: int, soft_lo: bool, soft_hi: bool) -> torch.Tensor:
        i = torch.arange(n, device=device, dtype=torch.float32)
        inside = (i >= lo) & (i < hi)
        dist = torch.full_like(i, float(n))
        if soft_lo:
            dist = torch.minimum(dist, i - lo)
        if soft_hi:
            dist = torch.minimum(dist, hi - 1 - i)
        ramp = ((dist + 1) / (feather + 1)).clamp(max=1.0)
        return torch.where(inside, ramp, torch.zeros_like(ramp))

    return torch.minimum(
        axis(h, y0, y1, soft_top, soft_bottom)[:, None], axis(w, x0, x1, soft_left, soft_right)[None, :]
    )


def _box_ramp(box: CropBox, feather: int, device) -> torch.Tensor:
    """:func:`edge_ramp` of a square crop box: soft at the box edges that lie inside the frame (edges on or beyond
    the frame border need no blending)."""
    h, w = box.frame_height, box.frame_width
    soft = (box.x0 > 0, box.y0 > 0, box.x1 < w, box.y1 < h)
    return edge_ramp((h, w), box.in_frame(), soft, feather, device)


def stitch_weights(box: CropBox, masks: torch.Tensor | None = None, *, feather: int = DEFAULT_FEATHER) -> torch.Tensor:
    """Blend weights [F, 1, H, W] (or [1, 1, H, W] without masks) for :func:`stitch_crop`.

    With masks: 1 on every pixel whose mask is above 0, falling smoothly to 0 within ``feather``
    pixels outside it (grow by feather/2, then a Gaussian blur of radius feather/2), exactly 0 beyond
    that and outside the box. Without masks: the box, its inner ``feather`` pixels ramping down to 0
    at edges inside the frame.
    """
    if int(feather) < 0:
        raise UnsupportedSizeError(f"feather: got {feather}; give 0 (hard edge) or a width in pixels.")
    ramp = _box_ramp(box, int(feather), masks.device if masks is not None else "cpu")[None, None]
    if masks is None:
        return ramp
    region = (masks > 0).float()  # [F, 1, H, W]
    half = int(feather) // 2
    soft = blur_masks(grow_masks(region, half), feather - half)  # support: region dilated by <= feather pixels
    weights = torch.maximum(region, soft) * (ramp > 0)
    outside = region * (ramp == 0)
    if bool(outside.any()):
        logger.warning(
            "stitch: %d masked pixel(s) lie outside the crop box and keep the original image; plan the "
            "crop on the same mask",
            int(outside.sum()),
        )
    return weights


def stitch_crop(
    image: torch.Tensor,
    edited_crop: torch.Tensor,
    box: CropBox,
    mask: torch.Tensor | None = None,
    *,
    feather: int = DEFAULT_FEATHER,
) -> torch.Tensor:
    """Resize ``edited_crop`` [C, size, size] back to the box and paste it into ``image`` [C, H, W].

    Batches work too: [F, C, H, W] with F edited crops. ``mask`` (full-frame, as given to the
    crop: [H, W], [1, H, W] or [F, 1, H, W]) limits the paste to the masked region plus a
    ``feather``-pixel soft band; without it the whole box is pasted with a ``feather``-pixel soft
    inner edge. Pixels with weight 0 (outside the feathered mask, outside the box) are exactly the
    original image's.
    """
    # 1. Check inputs
    frames, single = _as_frames(image, "image")
    crops, _ = _as_frames(edited_crop, "edited_crop")
    _check_frame_size(frames, box, "image")
    if tuple(crops.shape[-2:]) != (box.size, box.size):
        raise InputMismatchError(
            f"edited_crop: size {crops.shape[-1]}x{crops.shape[-2]} (width x height) does not match the crop's "
            f"{box.size}x{box.size}. Give the inpainter's output for this crop at the crop size, without resizing "
            "it (or resize it back to the crop size first)."
        )
    if crops.shape[1] != frames.shape[1]:
        raise InputMismatchError(
            f"edited_crop: {crops.shape[1]} channels, but the image has {frames.shape[1]}. Give an RGB edit for an "
            "RGB image."
        )
    if crops.shape[0] != frames.shape[0]:
        raise InputMismatchError(
            f"edited_crop: got {crops.shape[0]} edited crops for {frames.shape[0]} images. Give one edited crop per "
            "image (the crop node crops every frame with the same box)."
        )
    masks = None
    if mask is not None:
        masks = _as_masks(mask)
        if tuple(masks.shape[-2:]) != (box.frame_height, box.frame_width):
            raise InputMismatchError(
                f"mask: size {masks.shape[-1]}x{masks.shape[-2]} (width x height) does not match the image's "
                f"{box.frame_width}x{box.frame_height}. Give the full-frame mask that the crop was planned on, "
                "not the cropped mask."
            )
        masks = expand_masks(masks, frames.shape[0], frames.shape[-2:])

    # 2. The crop back at frame scale: [F, C, size, size] -> [F, C, side, side], in-frame part only
    back = _resize(crops.to(frames.dtype), box.side, "bicubic")
    bx0, by0, bx1, by1 = box.in_frame()
    pasted = frames.clone()
    pasted[:, :, by0:by1, bx0:bx1] = back[:, :, by0 - box.y0 : by1 - box.y0, bx0 - box.x0 : bx1 - box.x0]

    # 3. Blend; weight 0 keeps the original pixel exactly
    weights = stitch_weights(box, masks, feather=feather).to(frames.dtype)
    blended = frames + weights * (pasted - frames)
    out = torch.where(weights > 0, blended, frames)
    return out[0] if single else out
