"""File-level jobs behind the CLI: read a clip, masks and keyframes, inpaint, write results.

Sizes: a clip the model cannot take is an error unless the caller asks for a working size
(``size=(height, width)``); then frames, masks and keyframes are resized to it, and the result
is resized back to the input size and composited over the original frames with the original
masks, so pixels outside the mask stay exactly the input's.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .condition import ClipInputs, prepare_clip
from .errors import KeyframeError, VideoFileError
from .mask_ops import binarize, expand_masks
from .executor import inpaint
from .propagate import PropagateSettings, composite
from .video_io import DEFAULT_FPS, atomic_path, read_frames, read_masks, to_uint8, write_frames

logger = logging.getLogger(__name__)


@dataclass
class InpaintResult:
    frames: torch.Tensor  # [F, 3, H, W] in 0..1 at the input size
    output: Path
    preview: Path | None
    fps: float


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames.clone()
    return F.interpolate(frames, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.clone()
    # area-average then 'any coverage' keeps thin masks from vanishing when shrinking
    return (F.interpolate(masks.float(), size=size, mode="area") > 0).float()


def load_keyframes(paths: list[str | os.PathLike]) -> torch.Tensor | None:
    if not paths:
        return None
    images = []
    for path in paths:
        frames, _ = read_frames(path)
        if frames.shape[0] != 1:
            raise KeyframeError(f"keyframe {path}: holds {frames.shape[0]} frames; give one image per --keyframe.")
        images.append(frames)
    return torch.cat(images)


def inpaint_clip(
    model,
    frames: torch.Tensor,
    masks: torch.Tensor,
    *,
    keyframes: torch.Tensor | None = None,
    keyframe_indices: list[int] = (),
    settings: PropagateSettings | None = None,
    size: tuple[int, int] | None = None,
    grow_pixels: int = 0,
    strategy: str | None = None,
    callback: Callable[[dict], Any] | None = None,
    check_cancel: Callable[[], Any] | None = None,
) -> tuple[torch.Tensor, ClipInputs]:
    """Inpaint in-memory frames of any length; returns (frames at the input size, the checked clip).

    Clips longer than the model's window run a long-video schedule (``strategy``, default anchor).
    """
    settings = (settings or PropagateSettings()).check()
    clip = prepare_clip(frames, masks, keyframes=keyframes, keyframe_indices=list(keyframe_indices),
                        grow_pixels=grow_pixels)
    if size is None or tuple(size) == clip.size:
        return inpaint(model, clip, settings, strategy=strategy, callback=callback, check_cancel=check_cancel), clip
    logger.info("resizing %dx%d -> %dx%d for the model (the result goes back to the input size)",
                clip.size[1], clip.size[0], size[1], size[0])
    work = ClipInputs(frames=resize_frames(clip.frames, size), masks=resize_masks(clip.masks, size),
                      keyframe_indices=clip.keyframe_indices)
    generated = inpaint(model, work, PropagateSettings(**{**settings.__dict__, "composite": False}),
                        strategy=strategy, callback=callback, check_cancel=check_cancel)
    back = resize_frames(generated, clip.size)
    return (composite(clip, back, settings.feather) if settings.composite else back), clip


def preview_image(clip: ClipInputs, result: torch.Tensor, max_rows: int = 4, min_side: int = 192) -> np.ndarray:
    """Side-by-side sheet [rows*H, 2*W, 3] uint8: input with the mask tinted red | result; a few frames."""
    n = clip.num_frames
    rows = sorted({round(i * (n - 1) / max(1, max_rows - 1)) for i in range(min(max_rows, n))})
    mask = clip.masks[rows].float()
    tinted = clip.frames[rows] * (1 - 0.5 * mask) + torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1) * 0.5 * mask
    sheet = torch.cat([tinted, result[rows]], dim=3)  # [R, 3, H, 2W]
    sheet = torch.cat(list(sheet), dim=1)[None]  # [1, 3, R*H, 2W]
    scale = max(1, -(-min_side // clip.size[0]))
    if scale > 1:
        sheet = F.interpolate(sheet, scale_factor=scale, mode="nearest")
    return to_uint8(sheet)[0]


def write_preview(image: np.ndarray, path: Path) -> Path:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def inpaint_files(
    model,
    *,
    video: str | os.PathLike,
    mask: str | os.PathLike,
    out: str | os.PathLike,
    keyframe_paths: list[str | os.PathLike] = (),
    keyframe_indices: list[int] = (),
    settings: PropagateSettings | None = None,
    size: tuple[int, int] | None = None,
    grow_pixels: int = 0,
    preview: str | os.PathLike | None = None,
    strategy: str | None = None,
    callback: Callable[[dict], Any] | None = None,
) -> InpaintResult:
    """Read ``video`` and ``mask`` (files or PNG folders), inpaint, write ``out`` (+ ``preview`` PNG)."""
    for name, source in (("--video", video), ("--mask", mask), *(("--keyframe", k) for k in keyframe_paths)):
        if Path(out).resolve() == Path(source).resolve():
            raise VideoFileError(
                f"--out {out}: is also the {name} input; writing would replace the input. Give another output name."
            )
    frames, fps = read_frames(video)
    masks = expand_masks(read_masks(mask), frames.shape[0], frames.shape[-2:])
    keyframes = load_keyframes(list(keyframe_paths))
    if keyframes is not None and len(keyframe_paths) != len(keyframe_indices):
        raise KeyframeError(
            f"--keyframe-index: got {len(keyframe_indices)} indices for {len(keyframe_paths)} --keyframe images; "
            "give one --keyframe-index after each --keyframe."
        )
    result, clip = inpaint_clip(model, frames, binarize(masks), keyframes=keyframes,
                                keyframe_indices=list(keyframe_indices), settings=settings, size=size,
                                grow_pixels=grow_pixels, strategy=strategy, callback=callback)
    fps = fps or DEFAULT_FPS
    out_path = write_frames(result, out, fps=fps)
    preview_path = write_preview(preview_image(clip, result), Path(preview)) if preview else None
    logger.info("wrote %s (%d frames)%s", out_path, result.shape[0], f" and preview {preview_path}" if preview else "")
    return InpaintResult(frames=result, output=out_path, preview=preview_path, fps=fps)
