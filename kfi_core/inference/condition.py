"""The symmetric masked-pixel condition (VideoRepainter supplement, A.2 and Fig. 3).

Every frame is VAE-encoded twice: once with its masked region filled black and once filled
white. The two latents (4 + 4 channels) replace stock SVD's repeated first-frame latent, so
the UNet input is [noisy latent | black-filled | white-filled] = 12 channels. Keyframes enter
as fully known frames: their mask is empty, so both encodings are the same clean frame.

Choices where the paper is silent, following SVD and diffusers:
- pixels are scaled to -1..1 before encoding and the latent is the posterior mode, not
  multiplied by the VAE scaling factor (as the SVD pipeline treats its image latent);
- SVD's conditioning noise augmentation is applied to the filled frames before encoding
  (the same noise for both fills, so the two encodings differ only inside the mask), and
  its strength is passed to the UNet as SVD's third time id.

Layouts: ``frames`` [F, 3, H, W] in 0..1 (or 8-bit 0..255 at the clip's full size, :mod:`kfi_core.media.pixels`:
the model's entry points work on a float copy, the working-size paths a frame at a time); ``masks`` [F, 1, H, W]
with 1 = fill;
condition latents [1, F, 8, h, w] as diffusers' [B, F, C, h, w].
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import torch

from kfi_core.errors import InputMismatchError, NonFiniteError
from kfi_core.inference.memory import retry_on_oom
from kfi_core.media.keyframes import check_frame_index, insert_keyframes
from kfi_core.media.mask_ops import DEFAULT_THRESHOLD, binarize, expand_masks, grow
from kfi_core.media.pixels import is_eight_bit, like_values, to_unit
from kfi_core.model.offload import execution_device

logger = logging.getLogger(__name__)

CONDITION_CHANNELS = 8  # black-filled (4) + white-filled (4)


@dataclass
class ClipInputs:
    """A checked clip: frames with keyframes in place, binary masks (empty at keyframes)."""

    frames: torch.Tensor
    masks: torch.Tensor
    keyframe_indices: list[int] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[-2]), int(self.frames.shape[-1])


def check_frames(frames: torch.Tensor, name: str = "frames") -> None:
    """Raise unless ``frames`` is a finite float RGB clip [F, 3, H, W] with values in 0..1."""
    if frames.ndim != 4:
        raise InputMismatchError(f"{name}: expected [frames, channels, height, width], got shape {list(frames.shape)}.")
    channels = frames.shape[1]
    if channels == 1:
        raise InputMismatchError(f"{name}: got grayscale frames (1 channel); convert them to RGB first.")
    if channels == 4:
        raise InputMismatchError(
            f"{name}: got RGBA frames (4 channels); drop the alpha channel (convert to RGB) first."
        )
    if channels != 3:
        raise InputMismatchError(f"{name}: expected 3 colour channels (RGB), got {channels}.")
    if frames.shape[0] < 1:
        raise InputMismatchError(f"{name}: the clip has no frames.")
    if is_eight_bit(frames):
        return  # 0..255: every value is valid
    if not frames.is_floating_point():
        raise InputMismatchError(
            f"{name}: expected float values in 0..1 (or uint8 0..255), got dtype {frames.dtype}; divide by 255."
        )
    # the extremes are NaN or infinite exactly when a value is: no full-size temporaries, unlike isfinite()
    lo, hi = (float(v) for v in torch.aminmax(frames))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise NonFiniteError(f"{name}: contains NaN or infinity; check the node or file that produced the frames.")
    if lo < 0.0 or hi > 1.0:
        hint = (
            " They look like 0..255 values: divide by 255."
            if hi > 1.5
            else " Small overshoots come from bicubic resizing: clamp the images to 0..1, or resize with bilinear, "
            "area or lanczos."
        )
        raise InputMismatchError(f"{name}: values must lie in 0..1, got {lo:g}..{hi:g}.{hint}")


def prepare_clip(
    frames: torch.Tensor,
    masks: torch.Tensor,
    *,
    keyframes: torch.Tensor | None = None,
    keyframe_indices: list[int] | tuple[int, ...] = (),
    threshold: float = DEFAULT_THRESHOLD,
    grow_pixels: int = 0,
) -> ClipInputs:
    """Check frames, masks and keyframes against each other and return them ready to encode.

    ``masks`` may hold one mask per frame or a single mask for all frames. Masks are
    binarised at ``threshold`` and grown (or eroded, negative) by ``grow_pixels``.
    ``keyframes`` [K, 3, H, W] are the edited frames placed at ``keyframe_indices``; when
    ``keyframes`` is None the indices name frames of the clip that are already edited.

    Without ``keyframes`` the returned clip holds ``frames`` itself, not a copy: the library never writes into a
    clip's frames, and a long full-size clip costs one copy less (inserting keyframes makes the one copy it needs).
    Frames laid out channels-last (ComfyUI's IMAGE [F, H, W, C] viewed as [F, C, H, W]) are welcome: results at
    the clip's size come back in the same layout (:func:`like_frames`).
    """
    check_frames(frames)
    masks = expand_masks(masks, frames.shape[0], frames.shape[-2:], copy=False)
    masks = binarize(masks, threshold)  # a new tensor: clearing keyframes below never writes into the caller's
    if grow_pixels:
        masks = grow(masks, grow_pixels)
    indices = [check_frame_index(i, frames.shape[0]) for i in keyframe_indices]
    if len(set(indices)) != len(indices):
        raise InputMismatchError(f"keyframe_index: {list(keyframe_indices)} names a frame twice; give each once.")
    if keyframes is not None:
        check_frames(keyframes, "keyframes")
        frames = insert_keyframes(frames, like_values(keyframes, frames), list(indices))
    for i in indices:
        masks[i] = 0.0  # keyframes are fully known
    return ClipInputs(frames=frames, masks=masks, keyframe_indices=sorted(indices))


def unit_clip(clip: ClipInputs) -> ClipInputs:
    """The clip with float frames in 0..1 (itself when they are): the model's entry points work on floats."""
    if not is_eight_bit(clip.frames):
        return clip
    return replace(clip, frames=to_unit(clip.frames))


def check_mask_coverage(clip: ClipInputs, threshold: float = DEFAULT_THRESHOLD) -> None:
    """Refuse a clip with nothing to inpaint; warn when everything is masked and nothing is known.

    An all-empty mask (after binarising, growing and clearing keyframes) is an error, not a silent
    no-op: it almost always means the wrong mask channel, an inverted or eroded-away mask, or a
    threshold above the mask's values. A fully masked clip without keyframes is allowed (the model
    generates every pixel from nothing known) but logged as a WARNING: the mask may be inverted.
    """
    if not bool((clip.masks > 0).any()):
        raise InputMismatchError(
            f"masks: nothing to inpaint: every mask is empty after binarising (values above {threshold:g} mark the "
            "region), growing and clearing keyframe frames. Check the mask: white = region to inpaint; pick the "
            "image channel that holds it, lower the threshold, or grow instead of erode."
        )
    if not clip.keyframe_indices and bool((clip.masks > 0).all()):
        logger.warning(
            "masks: every pixel of every frame is masked and there is no keyframe: the model generates the whole "
            "clip from nothing known. Check that the mask is not inverted (white = region to inpaint)."
        )


def fill_masked(frames: torch.Tensor, masks: torch.Tensor, value: float) -> torch.Tensor:
    """Frames with the masked region replaced by ``value`` (0 = black, 1 = white), in the frames' layout; one
    result's memory (and the mask's) beside the input."""
    out = frames * (1.0 - masks)
    return out.add_(masks * value) if value else out


def like_frames(frames: torch.Tensor) -> torch.memory_format:
    """The memory layout to allocate results at a clip's size in: channels-last when ``frames`` are laid out so
    (ComfyUI's IMAGE [F, H, W, C] viewed as [F, C, H, W]), so the caller turns them back without a copy; else the
    ordinary contiguous layout."""
    if not frames.is_contiguous() and frames.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@torch.no_grad()
def encode_frames(vae, pixels: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """VAE posterior modes of pixels [N, 3, H, W] in -1..1, ``chunk_size`` frames at a time -> [N, 4, h, w]."""

    dtype = next(vae.parameters()).dtype
    device = execution_device(vae)

    def run(size: int) -> torch.Tensor:
        out = []
        for start in range(0, pixels.shape[0], size):
            # contiguous: the VAE's attention views its activations, which a channels-last chunk would refuse
            chunk = pixels[start : start + size].to(device=device, dtype=dtype).contiguous()
            out.append(vae.encode(chunk).latent_dist.mode())
        return torch.cat(out)

    # out of device memory: retried with smaller chunks down to one frame (WARNING logged)
    return retry_on_oom(run, max(1, chunk_size), what="encode_chunk_size")


@torch.no_grad()
def encode_symmetric(
    vae,
    clip: ClipInputs,
    *,
    noise_aug_strength: float = 0.02,
    generator: torch.Generator | None = None,
    chunk_size: int = 8,
) -> torch.Tensor:
    """The symmetric condition latents [1, F, 8, h, w]: black-filled then white-filled encodings."""
    noise = None
    if noise_aug_strength > 0:
        noise = torch.randn(clip.frames.shape, generator=generator, dtype=torch.float32, device="cpu")
    halves = []
    for value in (0.0, 1.0):
        pixels = fill_masked(clip.frames.float().cpu(), clip.masks.float().cpu(), value) * 2.0 - 1.0
        if noise is not None:
            pixels = pixels + noise_aug_strength * noise
        halves.append(encode_frames(vae, pixels, chunk_size))
    latents = torch.cat(halves, dim=1)  # [F, 8, h, w]
    return latents[None]  # [1, F, 8, h, w]


def first_frame_for_embedding(clip: ClipInputs) -> torch.Tensor:
    """The image the cross-attention embedding comes from: the first keyframe, else frame 0
    with its masked region filled with the mean colour of its known pixels ([3, H, W])."""
    if clip.keyframe_indices:
        return clip.frames[clip.keyframe_indices[0]]
    frame, mask = clip.frames[0], clip.masks[0]
    known = 1.0 - mask
    if known.sum() > 0:
        mean = (frame * known).sum(dim=(1, 2)) / known.sum()
    else:
        mean = torch.full((3,), 0.5, dtype=frame.dtype)
    return frame * known + mean.view(3, 1, 1) * mask
