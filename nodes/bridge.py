"""All glue between ComfyUI's tensor layouts and kfi_core's.

ComfyUI: IMAGE float [B, H, W, C] in 0..1; MASK float [B, H, W] (a single mask may come as
[H, W]). kfi_core: frames float [F, C, H, W], masks [F, 1, H, W] with 1 = fill.
"""

from __future__ import annotations

import torch


def image_to_frames(image: torch.Tensor) -> torch.Tensor:
    # [B, H, W, C] -> [B, C, H, W]
    return image.movedim(-1, 1).contiguous()


def frames_to_image(frames: torch.Tensor) -> torch.Tensor:
    # [F, C, H, W] -> [F, H, W, C]
    return frames.movedim(1, -1).contiguous()


def mask_to_masks(mask: torch.Tensor) -> torch.Tensor:
    # [H, W] or [B, H, W] -> [B, 1, H, W]
    if mask.ndim == 2:
        mask = mask[None]
    return mask[:, None].contiguous()


def masks_to_mask(masks: torch.Tensor) -> torch.Tensor:
    # [F, 1, H, W] -> [F, H, W]
    return masks[:, 0].contiguous()
