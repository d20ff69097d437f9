"""Any input size, full-size output: the size the model works at, and crop mode around the mask.

Working size (``size``):

- ``"native"`` (the CLI's and the nodes' default): the model's own size (svd and svd-xt: 1024x576) turned to the
  clip's orientation (576x1024 for a portrait clip; a square clip counts as landscape). A clip already at that
  size runs as it is.
- ``"input"``: the clip's own size; a size the model cannot take is an error (:func:`check_size`).
- ``(height, width)``: a size the user chose.

Off its own size the clip is resized to the working size (frames bicubic with antialiasing, masks by area then
"any coverage" so thin masks survive), inpainted there, and the fill is resized back and composited over the input
frames with the input masks: pixels outside the mask are exactly the input's, keyframes exactly the keyframes.

Crop mode (``crop="mask"``): one box around the union of the clip's masks (:mod:`kfi_core.media.clip_crop`:
``crop_padding`` pixels of context, the working size's aspect ratio) is cut out, run at the working size (native: the
model's own size, turned to the box's orientation) and stitched back with a feathered edge, then composited: a small
hole in a 4K clip is filled at the model's full detail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from kfi_core.errors import SettingsError, UnknownNameError
from kfi_core.inference.condition import ClipInputs, unit_clip
from kfi_core.inference.executor import inpaint, mean_of_samples
from kfi_core.inference.settings import PropagateSettings
from kfi_core.inference.window import clip_result, composite_frames
from kfi_core.media.clip_crop import (
    DEFAULT_CLIP_PADDING,
    Box,
    crop_clip,
    mask_bounds,
    plan_clip_box,
    stitch_frame,
    stitch_weights,
)
from kfi_core.media.pixels import is_eight_bit, like_values, to_eight_bit, to_unit

logger = logging.getLogger(__name__)

CROP_MODES = ("none", "mask")
WORKING_SIZES = ("native", "input")


def resize_frames(
    frames: torch.Tensor, size: tuple[int, int], layout: torch.memory_format = torch.contiguous_format
) -> torch.Tensor:
    """Frames resized to ``size`` (bicubic, anti-aliased, clamped to 0..1), laid out in ``layout`` (contiguous for the
    model; the clip's own, :func:`like_frames`, going back to it). Interpolation keeps its input's layout, so the
    smaller side is the one converted. 8-bit frames are converted to float a frame at a time (the same values as
    converting them whole: interpolation treats each frame on its own)."""
    if is_eight_bit(frames):
        out = torch.empty((frames.shape[0], frames.shape[1], *size), memory_format=layout)
        for t in range(frames.shape[0]):
            out[t] = resize_frames(to_unit(frames[t : t + 1]), size, layout)[0]
        return out
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames.clone(memory_format=layout)
    if frames.shape[-2] * frames.shape[-1] < size[0] * size[1]:
        frames = frames.contiguous(memory_format=layout)
    out = F.interpolate(frames, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    return out.contiguous(memory_format=layout)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.clone()
    # area-average then 'any coverage' keeps thin masks from vanishing when shrinking
    return (F.interpolate(masks.float(), size=size, mode="area") > 0).float()


def native_size(model, tall: bool) -> tuple[int, int]:
    """The model's own (height, width), portrait when ``tall`` else landscape."""
    h, w = model.default_size
    return (max(h, w), min(h, w)) if tall else (min(h, w), max(h, w))


def working_size(model, clip_size: tuple[int, int], size: Any = "native") -> tuple[int, int]:
    """The (height, width) the model runs a clip of ``clip_size`` at, for ``size`` (module docstring)."""
    if size == "input" or size is None:
        return tuple(clip_size)
    if size == "native":
        return native_size(model, tall=clip_size[0] > clip_size[1])
    if isinstance(size, str):
        raise UnknownNameError(f"size: got {size!r}; choose one of {', '.join(WORKING_SIZES)} or give (height, width).")
    if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
        raise SettingsError(f"size: got {size!r}; give (height, width) as two positive whole numbers.")
    return int(size[0]), int(size[1])


def check_crop(crop: str, name: str = "crop") -> None:
    """Raise unless ``crop`` is one of :data:`CROP_MODES`; ``name`` is the input's name in the message (--crop)."""
    if crop not in CROP_MODES:
        raise UnknownNameError(f"{name}: got {crop!r}; choose one of {', '.join(CROP_MODES)}.")


def run_size(model, clip: ClipInputs, size: Any = "native", crop: str = "none") -> tuple[int, int]:
    """The (height, width) the model's windows actually run at for :func:`inpaint_at_size`'s ``size`` and ``crop``:
    :func:`working_size`, except that ``crop="mask"`` with ``native`` or ``input`` runs the box at the model's own
    size turned to the box's orientation. What memory estimates should use."""
    if crop == "mask" and size in ("native", "input", None):
        bounds = mask_bounds(clip.masks)
        return native_size(model, bounds[3] - bounds[1] > bounds[2] - bounds[0])
    return working_size(model, clip.size, size)


def inpaint_at_size(
    model,
    clip: ClipInputs,
    settings: PropagateSettings | None = None,
    *,
    size: Any = "native",
    crop: str = "none",
    crop_padding: int = DEFAULT_CLIP_PADDING,
    schedule=None,
    strategy: str | None = None,
    callback: Callable[[dict], Any] | None = None,
    check_cancel: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Inpaint a prepared clip of any size at the working ``size`` (or on a box around the mask with ``crop="mask"``);
    returns frames at the clip's own size, exact outside the mask where ``settings.composite`` (the default).

    An 8-bit clip (:mod:`kfi_core.media.pixels`) stays 8-bit at its size: only the working-size copy and the frame
    being composited are float, and the result is 8-bit (the float result rounded, byte for byte); with several
    samples, or at the clip's own size, the run works on a float copy."""
    check_crop(crop)
    if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
        raise SettingsError(f"crop_padding: got {crop_padding!r}; give 0 or more pixels of context around the mask.")
    settings = (settings or PropagateSettings()).check()
    run_args = {"schedule": schedule, "strategy": strategy, "check_cancel": check_cancel}
    if is_eight_bit(clip.frames) and settings.num_samples > 1:  # the samples' mean is taken in float
        sizes = {"size": size, "crop": crop, "crop_padding": crop_padding}
        return to_eight_bit(inpaint_at_size(model, unit_clip(clip), settings, callback=callback, **sizes, **run_args))
    if crop == "mask":
        work = run_size(model, clip, size, crop)
        box = plan_clip_box(clip.masks, (work[1], work[0]), crop_padding)
        _log_crop(clip, box, work)
        run = lambda s, cb: _inpaint_cropped(model, clip, s, work, box, run_args, cb)  # noqa: E731
        return _sampled(run, clip, settings, callback)
    work = working_size(model, clip.size, size)
    if work == clip.size:
        return inpaint(model, clip, settings, callback=callback, **run_args)
    logger.info(
        "resizing %dx%d -> %dx%d for the model (the result goes back to the input size)", *clip.size[::-1], *work[::-1]
    )
    _suggest_crop(clip, work, crop_padding)
    return _sampled(lambda s, cb: _inpaint_resized(model, clip, s, work, run_args, cb), clip, settings, callback)


CROP_HINT_GAIN = 2.0  # suggest crop mode when it would fill the hole at this many times the detail, or more


def _suggest_crop(clip: ClipInputs, work: tuple[int, int], crop_padding: int) -> float | None:
    """Log a tip when the whole frame is shrunk for the model but the masks lie in a small part of it: crop mode
    would run a box around them at the working size instead, at several times the detail. Returns that gain (the
    frame's shrink factor over the box's), or None when the masks are empty."""
    if not bool(clip.masks.any()):
        return None
    box = plan_clip_box(clip.masks, (work[1], work[0]), crop_padding)  # the box crop mode would take
    gain = min(clip.size[0] / work[0], clip.size[1] / work[1]) / max((box[3] - box[1]) / work[0], 1.0)
    if gain >= CROP_HINT_GAIN:
        logger.info(
            "the masks lie in a %dx%d box of the %dx%d frame: crop 'mask' (--crop mask) would fill them at %.1fx the "
            "detail of this run, which shrinks the whole frame to %dx%d",
            box[2] - box[0],
            box[3] - box[1],
            clip.size[1],
            clip.size[0],
            gain,
            work[1],
            work[0],
        )
    return gain


def _sampled(run, clip: ClipInputs, settings: PropagateSettings, callback) -> torch.Tensor:
    """Each sample goes back to the input size and is composited there; with several samples, their mean."""
    if settings.num_samples > 1:
        return mean_of_samples(run, clip, settings, callback)
    return run(settings, callback)


def _log_crop(clip: ClipInputs, box: Box, work: tuple[int, int]) -> None:
    logger.info(
        "cropping %dx%d -> box x %d..%d, y %d..%d, worked at %dx%d (the fill goes back into the full frames)",
        clip.size[1],
        clip.size[0],
        box[0],
        box[2],
        box[1],
        box[3],
        work[1],
        work[0],
    )


def _inpaint_resized(model, clip: ClipInputs, settings, size, run_args, callback) -> torch.Tensor:
    """One sample at the working ``size``, brought back to the clip's size a frame at a time and composited there."""
    generated = _fill_at(model, clip, settings, size, run_args, callback)
    return _at_clip_size(clip, lambda t: resize_frames(generated[t : t + 1], clip.size)[0], settings)


def _inpaint_cropped(model, clip: ClipInputs, settings, size, box: Box, run_args, callback) -> torch.Tensor:
    """One sample on the ``box`` of the clip at the working ``size``, stitched into the full frames a frame at a time
    and composited."""
    inner = ClipInputs(
        frames=crop_clip(clip.frames, box),
        masks=crop_clip(clip.masks, box, "masks"),
        keyframe_indices=clip.keyframe_indices,
    )
    generated = _fill_at(model, inner, settings, size, run_args, callback)
    weights = stitch_weights(box, clip.size, clip.masks)
    x0, y0, x1, y1 = box

    def stitched(t: int) -> torch.Tensor:
        fill = resize_frames(generated[t : t + 1], (y1 - y0, x1 - x0))[0]
        frame = to_unit(clip.frames[t]).clone()
        return stitch_frame(frame, fill, box, weights[t if weights.shape[0] > 1 else 0])

    return _at_clip_size(clip, stitched, settings)


def _at_clip_size(clip: ClipInputs, fill_at, settings) -> torch.Tensor:
    """The fill at the clip's size, frame ``t`` from ``fill_at(t)``: composited with the input's own frames and
    masks (and the feather), or as it is without ``settings.composite``; in the clip's layout and type."""
    if settings.composite:
        return composite_frames(clip, fill_at, settings.feather)
    out = clip_result(clip)
    for t in range(clip.num_frames):
        out[t] = like_values(fill_at(t), out)
    return out


def _fill_at(model, clip: ClipInputs, settings, size, run_args, callback) -> torch.Tensor:
    """One sample at the working ``size`` [F, 3, *size]: composited there as the direct path does (colour match, a
    long clip's seam smoothing) but with a hard edge; the caller brings it back to the clip's size and composites
    again there with the input's own frames and masks (and the feather)."""
    work = ClipInputs(
        frames=resize_frames(clip.frames, size),
        masks=resize_masks(clip.masks, size),
        keyframe_indices=clip.keyframe_indices,
    )
    hard_edge = PropagateSettings(**{**settings.__dict__, "feather": 0})
    return inpaint(model, work, hard_edge, callback=callback, **run_args)
