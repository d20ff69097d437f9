"""Mask preparation: binarise, grow/erode, feather, temporal dilation.

Layout: ``masks`` are float tensors [F, 1, H, W] with 1 = region to fill (inpaint) and
0 = region to keep. All functions return new tensors and never modify their input.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from kfi_core.errors import InputMismatchError, NonFiniteError

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5


def check_masks(masks: torch.Tensor, name: str = "masks") -> None:
    """Raise unless ``masks`` is a finite float tensor [F, 1, H, W] with values in 0..1."""
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise InputMismatchError(
            f"{name}: expected shape [frames, 1, height, width], got {list(masks.shape)}. "
            "Pass one single-channel mask per frame."
        )
    if not masks.is_floating_point():
        raise InputMismatchError(f"{name}: expected a float tensor with values 0..1, got dtype {masks.dtype}.")
    # the extremes are NaN or infinite exactly when a value is: one pass, no full-size temporaries
    lo, hi = (float(v) for v in torch.aminmax(masks)) if masks.numel() else (0.0, 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise NonFiniteError(f"{name}: contains NaN or infinity. Check the node or file that produced the mask.")
    if lo < 0.0 or hi > 1.0:
        raise InputMismatchError(
            f"{name}: values must lie in 0..1, got {lo:g}..{hi:g}. "
            "If the mask was stored as 0..255, divide it by 255 first."
        )


def binarize(masks: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """1 where ``masks > threshold``, else 0 (same dtype)."""
    if not 0.0 <= threshold < 1.0:
        raise InputMismatchError(f"threshold: got {threshold}; give a value in 0..1 (0.5 is the default).")
    return (masks > threshold).to(masks.dtype)


def _disk(radius: int, device, dtype) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    disk = (r[None, :] ** 2 + r[:, None] ** 2) <= radius * radius + 0.5
    return disk.to(dtype)[None, None]


def _dilate_disk(src: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of bool ``src`` [..., H, W] by :func:`_disk` (pixels outside the frame are 0).

    The disk is split into its rows: row ``dy`` is a horizontal run of half-width ``k(dy)``, so the dilation
    is the union over ``dy`` of a horizontal dilation by ``k(dy)`` shifted ``dy`` rows. Each horizontal
    dilation is a windowed count from one cumulative sum, so the cost is O(radius) per pixel, not the
    O(radius^2) of a convolution with the disk (the same result: tests/test_mask_ops.py checks it against one).
    """
    height, width = src.shape[-2:]
    half = (_disk(radius, "cpu", torch.int64)[0, 0].sum(dim=1) // 2).tolist()  # half-width of each row
    # counts[..., j] = source pixels left of padded column j (radius zero columns padded on both sides)
    counts = F.pad(F.pad(src.to(torch.float32), (radius, radius)).cumsum(dim=-1), (1, 0))
    out = torch.zeros_like(src)
    for dy in range(min(radius, height - 1) + 1):  # the disk's rows dy and -dy have the same half-width
        k = int(half[radius + dy])
        # any source pixel within k columns of x, same row: counts over padded columns x+r-k .. x+r+k
        run = counts[..., radius + k + 1 : radius + k + 1 + width] > counts[..., radius - k : radius - k + width]
        out[..., : height - dy, :] |= run[..., dy:, :]  # output row y reads source row y + dy
        out[..., dy:, :] |= run[..., : height - dy, :]  # and source row y - dy
    return out


def grow(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate (``pixels`` > 0) or erode (``pixels`` < 0) binary masks with a disk of that radius.

    Erosion is the dilation of the complement, so ``grow(grow(m, -r), r)`` is an opening.
    Pixels outside the frame count as "keep" for dilation and as "fill" for erosion, so a
    mask touching the border stays touching it after erosion.
    """
    if pixels == 0:
        return masks.clone()
    src = masks > 0.5 if pixels > 0 else masks <= 0.5  # [F, 1, H, W] bool: the region to dilate
    hit = _dilate_disk(src, abs(int(pixels)))
    return (hit if pixels > 0 else ~hit).to(masks.dtype)


def feather(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """Soften mask edges with a Gaussian blur of about ``pixels`` radius (sigma = pixels / 2)."""
    if pixels <= 0:
        return masks.clone()
    sigma = pixels / 2.0
    radius = int(pixels)
    x = torch.arange(-radius, radius + 1, device=masks.device, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma * sigma))
    g = g / g.sum()
    src = F.pad(masks.float(), (radius,) * 4, mode="replicate")
    out = F.conv2d(src, g.view(1, 1, 1, -1))
    out = F.conv2d(out, g.view(1, 1, -1, 1))
    return out.clamp(0.0, 1.0).to(masks.dtype)


def temporal_dilate(masks: torch.Tensor, frames: int) -> torch.Tensor:
    """Union of each mask with its ``frames`` neighbours before and after (covers fast motion)."""
    if frames <= 0:
        return masks.clone()
    # [F, 1, H, W] -> [1, 1, F, H*W] so that max-pooling runs along time only
    n, _, h, w = masks.shape
    x = masks.float().reshape(1, 1, n, h * w)
    x = F.max_pool2d(x, kernel_size=(2 * frames + 1, 1), stride=1, padding=(frames, 0))
    return x.reshape(n, 1, h, w).to(masks.dtype)


def prepare_masks(
    masks: torch.Tensor,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    grow_pixels: int = 0,
    temporal_frames: int = 0,
    feather_pixels: int = 0,
) -> torch.Tensor:
    """The usual chain: binarise, grow or erode, dilate in time, then feather (soft edges last)."""
    check_masks(masks)
    out = binarize(masks, threshold)
    out = grow(out, grow_pixels)
    out = temporal_dilate(out, temporal_frames)
    return feather(out, feather_pixels)


def expand_masks(
    masks: torch.Tensor, num_frames: int, size: tuple[int, int] | torch.Size, copy: bool = True
) -> torch.Tensor:
    """Check ``masks`` against a clip and return one mask per frame.

    A single mask applies to every frame (it is repeated); otherwise the count must equal
    ``num_frames``. Sizes must match exactly: nothing is resized or truncated. ``copy=False`` returns a view
    (an expanded one for a single mask) for a caller that makes its own new tensor from it.
    """
    check_masks(masks)
    height, width = int(size[0]), int(size[1])
    if tuple(masks.shape[-2:]) != (height, width):
        raise InputMismatchError(
            f"masks: mask size {masks.shape[-1]}x{masks.shape[-2]} (width x height) does not match the frames' "
            f"{width}x{height}. Resize the mask to the video's size (e.g. with an image resize node) first."
        )
    if masks.shape[0] == 1 and num_frames != 1:
        masks = masks.expand(num_frames, -1, -1, -1)
        return masks.clone() if copy else masks
    if masks.shape[0] != num_frames:
        raise InputMismatchError(
            f"masks: got {masks.shape[0]} masks for {num_frames} frames. "
            "Give one mask per frame, or one mask for all frames."
        )
    return masks.clone() if copy else masks
