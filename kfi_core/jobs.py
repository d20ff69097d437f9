"""File-level jobs behind the CLI: read a clip, masks and keyframes, inpaint, write results.

Sizes and crop mode are :mod:`kfi_core.inference.working_size`'s: the clip runs at a working size (the CLI's default:
the model's native size by orientation) or on a box around its masks, and comes back at the input size with pixels
outside the mask exactly the input's. Here ``size=None`` means the clip's own size.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kfi_core.errors import BatchError, KeyframeError, VideoFileError
from kfi_core.inference.condition import ClipInputs, prepare_clip
from kfi_core.inference.schedules import Schedule
from kfi_core.inference.settings import PropagateSettings
from kfi_core.inference.working_size import check_crop, inpaint_at_size
from kfi_core.media.clip_crop import DEFAULT_CLIP_PADDING
from kfi_core.media.mask_ops import expand_masks
from kfi_core.media.pixels import to_unit
from kfi_core.media.video import (
    DEFAULT_FPS,
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    atomic_path,
    read_frames,
    read_masks,
    to_uint8,
    write_frames,
)

logger = logging.getLogger(__name__)


@dataclass
class InpaintResult:
    frames: torch.Tensor  # [F, 3, H, W] uint8 0..255 at the input size, as written
    output: Path
    preview: Path | None
    fps: float


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
    size: Any = None,
    grow_pixels: int = 0,
    strategy: str | None = None,
    callback: Callable[[dict], Any] | None = None,
    check_cancel: Callable[[], Any] | None = None,
    crop: str = "none",
    crop_padding: int = DEFAULT_CLIP_PADDING,
    schedule: Schedule | None = None,
) -> tuple[torch.Tensor, ClipInputs]:
    """Inpaint in-memory frames of any length; returns (frames at the input size, the checked clip).

    ``size``: the working size, ``"native"``, ``"input"`` (or None, the library's default) or (height, width);
    ``crop="mask"`` inpaints only a box around the masks (:mod:`kfi_core.inference.working_size`). Clips longer than
    the model's window run a long-video schedule: ``schedule`` (a :class:`~kfi_core.inference.Schedule`, e.g. read
    with :func:`~kfi_core.inference.schedules.load_schedule_file`) or the one ``strategy`` names (default anchor).
    """
    check_crop(crop, "--crop")  # before any work
    settings = (settings or PropagateSettings()).check()
    clip = prepare_clip(
        frames, masks, keyframes=keyframes, keyframe_indices=list(keyframe_indices), grow_pixels=grow_pixels
    )
    run = {"strategy": strategy, "schedule": schedule, "callback": callback, "check_cancel": check_cancel}
    return inpaint_prepared(model, clip, settings, size=size, crop=crop, crop_padding=crop_padding, **run), clip


def inpaint_prepared(
    model, clip: ClipInputs, settings: PropagateSettings, *, size: Any = None, crop: str = "none", **run: Any
) -> torch.Tensor:
    """:func:`inpaint_clip` after :func:`~kfi_core.inference.prepare_clip`, for callers that keep the prepared clip
    (it holds their frames without a copy unless keyframes were inserted). ``run``: the
    other keywords of :func:`~kfi_core.inference.working_size.inpaint_at_size` (``crop_padding``, ``strategy``,
    ``schedule``, ``callback``, ``check_cancel``)."""
    check_crop(crop, "--crop")
    return inpaint_at_size(model, clip, settings.check(), size="input" if size is None else size, crop=crop, **run)


def preview_image(clip: ClipInputs, result: torch.Tensor, max_rows: int = 4, min_side: int = 192) -> np.ndarray:
    """Side-by-side sheet [rows*H, 2*W, 3] uint8: input with the mask tinted red | result; a few frames."""
    n = clip.num_frames
    rows = sorted({round(i * (n - 1) / max(1, max_rows - 1)) for i in range(min(max_rows, n))})
    mask = clip.masks[rows].float()
    tinted = to_unit(clip.frames[rows]) * (1 - 0.5 * mask) + torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1) * 0.5 * mask
    sheet = torch.cat([tinted, to_unit(result[rows])], dim=3)  # [R, 3, H, 2W]
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
    crop: str = "none",
    crop_padding: int = DEFAULT_CLIP_PADDING,
    schedule: Schedule | None = None,
) -> InpaintResult:
    """Read ``video`` and ``mask`` (files or PNG folders), inpaint, write ``out`` (+ ``preview`` PNG). The frames stay
    8-bit at their size, as read (:mod:`kfi_core.media.pixels`): the result is the float path's, rounded as writing
    rounds it, in a quarter of the memory."""
    for name, source in (("--video", video), ("--mask", mask), *(("--keyframe", k) for k in keyframe_paths)):
        if Path(out).resolve() == Path(source).resolve():
            raise VideoFileError(
                f"--out {out}: is also the {name} input; writing would replace the input. Give another output name."
            )
    check_crop(crop, "--crop")  # before reading anything
    settings = (settings or PropagateSettings()).check()
    frames, fps = read_frames(video, eight_bit=True)
    masks = expand_masks(read_masks(mask), frames.shape[0], frames.shape[-2:], copy=False)  # checked early
    keyframes = load_keyframes(list(keyframe_paths))
    if keyframes is not None and len(keyframe_paths) != len(keyframe_indices):
        raise KeyframeError(
            f"--keyframe-index: got {len(keyframe_indices)} indices for {len(keyframe_paths)} --keyframe images; "
            "give one --keyframe-index after each --keyframe."
        )
    clip = prepare_clip(
        frames, masks, keyframes=keyframes, keyframe_indices=list(keyframe_indices), grow_pixels=grow_pixels
    )
    del frames, masks, keyframes  # the clip holds the frames (its own copy where keyframes were inserted)
    run = {"crop_padding": crop_padding, "strategy": strategy, "schedule": schedule, "callback": callback}
    result = inpaint_prepared(model, clip, settings, size=size, crop=crop, **run)
    fps = fps or DEFAULT_FPS
    out_path = write_frames(result, out, fps=fps)
    preview_path = write_preview(preview_image(clip, result), Path(preview)) if preview else None
    logger.info("wrote %s (%d frames)%s", out_path, result.shape[0], f" and preview {preview_path}" if preview else "")
    return InpaintResult(frames=result, output=out_path, preview=preview_path, fps=fps)


# --------------------------------------------------------------------------- batch mode

BATCH_MASK_TAG = "_mask"
BATCH_KEY_PATTERN = re.compile(r"^(?P<name>.+)_key(?P<index>-?\d+)$")
BATCH_OUTPUT_FORMATS = {"mp4": ".mp4", "webm": ".webm", "mov": ".mov", "png": ""}  # png: a folder of PNG frames


@dataclass(frozen=True)
class BatchJob:
    """One clip of a batch folder: its input, mask, keyframes ``(index, image)`` sorted by index."""

    name: str
    video: Path
    mask: Path
    keyframes: tuple[tuple[int, Path], ...] = ()

    def output(self, out_dir: str | os.PathLike, fmt: str = "mp4") -> Path:
        return Path(out_dir) / f"{self.name}{BATCH_OUTPUT_FORMATS[fmt]}"


def _is_visible(path: Path) -> bool:
    return not path.name.startswith(".")


def batch_jobs(folder: str | os.PathLike) -> list[BatchJob]:
    """Find the clips of a batch folder by naming convention; sorted by name.

    In ``folder``:
    - a clip is ``<name>.mp4`` (any of VIDEO_SUFFIXES) or a folder ``<name>/`` of frame images;
    - its mask is exactly one of ``<name>_mask.mp4`` (mask video), ``<name>_mask.png`` (any image
      suffix: one mask for every frame) or ``<name>_mask/`` (a folder of mask images);
    - optional keyframes are images ``<name>_key<INDEX>.png``: the edited frame ``INDEX``
      (0-based; negative counts from the end).
    Hidden entries (``.name``, e.g. half-written outputs) are ignored. A clip without a mask, a
    mask or keyframe with no clip, and two masks for one clip are errors listing every offender.
    """

    root = Path(folder)
    if not root.is_dir():
        raise BatchError(f"--batch: {root} is not a folder. Give the folder that holds the clips and their masks.")
    clips: dict[str, Path] = {}
    masks: dict[str, list[Path]] = {}
    keys: dict[str, list[tuple[int, Path]]] = {}
    for entry in sorted(filter(_is_visible, root.iterdir())):
        stem, suffix = (entry.name, "") if entry.is_dir() else (entry.stem, entry.suffix.lower())
        is_video, is_image = suffix in VIDEO_SUFFIXES, suffix in IMAGE_SUFFIXES
        if not (entry.is_dir() or is_video or is_image):
            logger.debug("batch: ignoring %s (not a video, image or folder)", entry)
            continue
        key = BATCH_KEY_PATTERN.match(stem)
        if stem.endswith(BATCH_MASK_TAG) and len(stem) > len(BATCH_MASK_TAG):
            masks.setdefault(stem[: -len(BATCH_MASK_TAG)], []).append(entry)
        elif key and is_image:
            keys.setdefault(key.group("name"), []).append((int(key.group("index")), entry))
        elif entry.is_dir() or is_video:
            clips[stem] = entry
        else:
            logger.debug("batch: ignoring image %s (not <name>_mask or <name>_key<INDEX>)", entry)
    problems = []
    for name, clip in clips.items():
        found = masks.get(name, [])
        if not found:
            problems.append(f"{clip.name} has no mask (add {name}_mask.mp4, {name}_mask.png or a folder {name}_mask/)")
        elif len(found) > 1:
            problems.append(f"{clip.name} has {len(found)} masks ({', '.join(p.name for p in found)}); keep one")
    for name, found in masks.items():
        if name not in clips:
            problems.append(f"{found[0].name} has no clip {name}.mp4 or folder {name}/ (check the name)")
    for name, found in keys.items():
        if name not in clips:
            problems.append(f"{found[0][1].name} has no clip {name}.mp4 or folder {name}/ (check the name)")
    if problems:
        raise BatchError(
            f"--batch {root}: " + "; ".join(problems) + ". Clips are <name>.mp4 or <name>/ with "
            "<name>_mask.mp4|.png|/ beside them and optional keyframes <name>_key<INDEX>.png."
        )
    if not clips:
        raise BatchError(
            f"--batch {root}: no clips found. Put <name>.mp4 (or a frame folder <name>/) and its mask "
            "<name>_mask.mp4|.png|/ in the folder."
        )
    return [
        BatchJob(name=name, video=clips[name], mask=masks[name][0], keyframes=tuple(sorted(keys.get(name, []))))
        for name in sorted(clips)
    ]


def shard_rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: RANK/WORLD_SIZE as set by ``accelerate launch`` and ``torchrun``,
    else an already-initialised accelerate ``PartialState``, else (0, 1)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    else:
        rank, world = 0, 1
        try:
            from accelerate.state import PartialState

            if PartialState._shared_state:  # only read a state someone initialised; never start one here
                state = PartialState()
                rank, world = state.process_index, state.num_processes
        except ImportError:
            pass
    if world < 1 or not 0 <= rank < world:
        raise BatchError(
            f"RANK/WORLD_SIZE: got rank {rank} of {world}; need 0 <= RANK < WORLD_SIZE. Launch with "
            "`accelerate launch` or `torchrun`, or unset both for one process."
        )
    return rank, world


@dataclass
class BatchReport:
    rank: int
    world: int
    assigned: list[str]
    done: list[Path]
    skipped: list[Path]


def run_batch(
    model,
    folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fmt: str = "mp4",
    settings: PropagateSettings | None = None,
    size: tuple[int, int] | None = None,
    grow_pixels: int = 0,
    strategy: str | None = None,
    rank: int | None = None,
    world: int | None = None,
    callback: Callable[[dict], Any] | None = None,
    crop: str = "none",
    crop_padding: int = DEFAULT_CLIP_PADDING,
) -> BatchReport:
    """Inpaint every clip of ``folder`` (:func:`batch_jobs`) into ``out_dir/<name>.mp4`` (or ``<name>/`` for png).

    Clip ``i`` (in name order) belongs to process ``i % world``; rank and world default to
    :func:`shard_rank_world`. A clip whose output exists is skipped: outputs are written under a
    hidden temporary name and renamed when complete, so a half-written one never counts.
    ``model`` is a loaded model or a zero-argument callable loading it, called only if this
    process has a clip left to do.
    """
    if fmt not in BATCH_OUTPUT_FORMATS:
        raise BatchError(f"--batch-format: got {fmt!r}; choose one of {', '.join(BATCH_OUTPUT_FORMATS)}.")
    jobs = batch_jobs(folder)
    if rank is None or world is None:
        rank, world = shard_rank_world()
    mine = [job for i, job in enumerate(jobs) if i % world == rank]
    report = BatchReport(rank=rank, world=world, assigned=[job.name for job in mine], done=[], skipped=[])
    logger.info("batch: %d clips in %s; process %d of %d takes %d", len(jobs), folder, rank, world, len(mine))
    loaded = None
    for job in mine:
        out = job.output(out_dir, fmt)
        if out.exists():
            logger.info("batch: %s exists, skipping %s", out, job.name)
            report.skipped.append(out)
            continue
        if loaded is None:
            loaded = model() if callable(model) and not hasattr(model, "unet") else model
        inpaint_files(
            loaded,
            video=job.video,
            mask=job.mask,
            out=out,
            keyframe_paths=[p for _, p in job.keyframes],
            keyframe_indices=[k for k, _ in job.keyframes],
            settings=settings,
            size=size,
            grow_pixels=grow_pixels,
            strategy=strategy,
            callback=callback,
            crop=crop,
            crop_padding=crop_padding,
        )
        report.done.append(out)
    return report
