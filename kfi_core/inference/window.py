"""One window of frames through the KFI model: encode the condition, sample, decode in chunks, composite.

The inference recipe for one window, in numbered steps (:func:`run_window`); the checks ran at the entry
(:mod:`kfi_core.inference.executor`), so nothing here checks or calls back up.

Two modes, chosen by the UNet's input channels:

- **KFI adapter** (12 channels): the UNet sees [noisy latent | black-filled | white-filled]
  (:mod:`kfi_core.inference.condition`); keyframes are fully known frames.
- **Training-free** (8 channels, stock SVD weights, no adapter): the lower-quality fallback
  until an adapter is trained. The stock first-frame condition is the first keyframe (or the
  first frame with its hole filled), repeated over frames as SVD does; the known region is
  re-imposed at every step from the noised input latents (latent blending): the denoised
  estimate is replaced by the clean input latent outside the mask, so an Euler or Heun step
  moves the known region exactly along ``x0 + sigma * noise``, the same noise that started the
  run, and at sigma 0 it is the input latent. A keyframe anywhere in the clip is known
  throughout, so its content spreads forwards and backwards through temporal attention.

Randomness comes only from a ``torch.Generator`` seeded with ``seed``, in this order: the
condition's noise augmentation, then the initial latents (SVD's order).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from kfi_core.errors import InputMismatchError
from kfi_core.inference.color_match import match_colors
from kfi_core.inference.condition import (
    ClipInputs,
    encode_frames,
    encode_symmetric,
    first_frame_for_embedding,
    like_frames,
)
from kfi_core.inference.denoiser import SVDDenoiser, per_frame_guidance
from kfi_core.inference.memory import retry_on_oom
from kfi_core.inference.sampling import get_sampler, get_sigmas_svd, init_noise_sigma
from kfi_core.inference.settings import ProgressCallback, PropagateSettings, blends_known
from kfi_core.media.mask_ops import feather
from kfi_core.media.pixels import EIGHT_BIT, is_eight_bit, to_eight_bit, to_unit
from kfi_core.model.encoders import (
    DECODE_TILE,
    decode_latents,
    decode_latents_tiled,
    default_overlap,
    encode_image_clip,
)

logger = logging.getLogger(__name__)


def latent_masks(masks: torch.Tensor, scale: int) -> torch.Tensor:
    """Pixel masks [F, 1, H, W] -> latent masks [1, F, 1, h, w]: a latent cell is 'fill' if any pixel in it is."""
    return F.max_pool2d(masks.float(), kernel_size=scale)[None]


def _image_embedding(model, clip: ClipInputs) -> torch.Tensor:
    image = first_frame_for_embedding(clip)[None].float()  # [1, 3, H, W]
    return encode_image_clip(model.image_encoder, model.feature_extractor, image)  # [1, 1, D]


class WindowDenoiser:
    """``denoise(x, sigma)`` for one window: its condition, image embedding and guidance (step 1 of :func:`run_window`).

    Builds the condition latents first, drawing the noise augmentation from ``generator`` (the first draws, as SVD).
    Where ``settings.blend_known`` says so (by default in the training-free mode, 8-channel UNet, only) it blends the
    denoised estimate with the clean input latents outside the latent mask. With ``resident=False`` the window's tensors
    stay on the host and visit the device only during a call (MultiDiffusion keeps many windows at once and must not
    hold them all on the device)."""

    def __init__(
        self, model, clip: ClipInputs, settings: PropagateSettings, generator: torch.Generator, *, resident: bool = True
    ):
        self.model, self.resident = model, resident
        num_frames = clip.num_frames
        if model.in_channels == 12:
            condition = encode_symmetric(
                model.vae,
                clip,
                noise_aug_strength=settings.noise_aug_strength,
                generator=generator,
                chunk_size=settings.encode_chunk_size,
            )
        elif model.in_channels == 8:
            # training-free: stock first-frame condition, repeated over frames
            image = first_frame_for_embedding(clip)[None].float() * 2.0 - 1.0  # [1, 3, H, W]
            aug = torch.randn(image.shape, generator=generator, dtype=torch.float32)
            cond = encode_frames(model.vae, image + settings.noise_aug_strength * aug, 1)  # [1, 4, h, w]
            condition = cond[:, None].repeat(1, num_frames, 1, 1, 1)  # [1, 4, h, w] -> [1, F, 4, h, w]
        else:
            raise InputMismatchError(
                f"model: the UNet takes {model.in_channels} input channels; KFI runs 8 (stock SVD, training-free) "
                "or 12 (with a KFI adapter). Load a stock SVD model, optionally with a KFI adapter."
            )
        self.known_latents = self.known_mask = None
        if blends_known(settings, model.in_channels):
            # clean latents of the known content (keyframes included), in the diffusion's (scaled) latent space
            known = encode_frames(model.vae, clip.frames.float() * 2.0 - 1.0, settings.encode_chunk_size)
            self.known_latents = (known.float() * model.vae.config.scaling_factor)[None].cpu()  # [1, F, 4, h, w]
            self.known_mask = latent_masks(clip.masks, model.vae_scale_factor)  # [1, F, 1, h, w], 1 = fill
        self.condition = condition.cpu()
        self.embedding = _image_embedding(model, clip).cpu()
        self.added_time_ids = torch.tensor(
            [[settings.fps - 1, settings.motion_bucket_id, settings.noise_aug_strength]], dtype=torch.float32
        )
        self.guidance = per_frame_guidance(settings.min_guidance, settings.max_guidance, num_frames)
        self.latent_shape = (1, num_frames, int(model.vae.config.latent_channels), *condition.shape[-2:])
        self._inner = self._build(model.device) if resident else None
        if resident and self.known_latents is not None:
            self.known_latents = self.known_latents.to(model.device)
            self.known_mask = self.known_mask.to(model.device)

    def _build(self, device):
        return SVDDenoiser(
            self.model.unet,
            condition_latents=self.condition.to(device=device, dtype=self.model.dtype),
            encoder_hidden_states=self.embedding.to(device),
            added_time_ids=self.added_time_ids.to(device),
            guidance=self.guidance.to(device),
        )

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        inner = self._inner if self.resident else self._build(x.device)
        denoised = inner(x, sigma)
        if self.known_latents is None:
            return denoised
        known, mask = self.known_latents.to(x.device), self.known_mask.to(x.device)
        # latent blending: outside the mask the estimate is the known clean latent
        return mask * denoised + (1.0 - mask) * known


def initial_latents(shape, settings: PropagateSettings, model, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise of ``shape`` scaled to the first sigma as SVD's scheduler does (step 2)."""
    sigmas = get_sigmas_svd(settings.steps, model.scheduler_config)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    return noise * init_noise_sigma(sigmas, model.scheduler_config)


@torch.no_grad()
def sample_window_latents(
    model,
    clip: ClipInputs,
    settings: PropagateSettings,
    *,
    callback: ProgressCallback | None = None,
    check_cancel: Callable[[], Any] | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample the latents [1, F, 4, h, w] of one window (steps 1-3 of :func:`run_window`).

    ``noise`` (the window's initial latents, already scaled by :func:`initial_latents`) replaces the draw of step 2:
    a schedule's shared noise (:func:`kfi_core.inference.executor.shared_noise`)."""
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    # 1. Condition latents (first draws from the generator), embedding, guidance
    denoise = WindowDenoiser(model, clip, settings, generator)
    # 2. Initial noise (the next draw), unless given
    if noise is None:
        noise = initial_latents(denoise.latent_shape, settings, model, generator)
    elif tuple(noise.shape) != tuple(denoise.latent_shape):
        raise InputMismatchError(f"noise: shape {list(noise.shape)}; this window needs {list(denoise.latent_shape)}.")
    x = noise.to(model.device)
    # 3. Sample
    sigmas = get_sigmas_svd(settings.steps, model.scheduler_config).to(model.device)
    return get_sampler(settings.sampler)(denoise, x, sigmas, callback=callback, check_cancel=check_cancel)


def _decoder(vae, latents: torch.Tensor, tile: int) -> Callable[[int], torch.Tensor]:
    """``decode(chunk)``: whole frames (``tile`` 0) or spatial tiles of ``tile`` latent cells a side."""
    if tile <= 0:
        return lambda c: decode_latents(vae, latents, decode_chunk_size=c)
    overlap = default_overlap(tile)
    return lambda c: decode_latents_tiled(vae, latents, decode_chunk_size=c, tile=tile, overlap=overlap)


@torch.no_grad()
def decode_window(model, latents: torch.Tensor, chunk_size: int, tile: int = 0) -> torch.Tensor:
    """Latents [1, F, 4, h, w] -> frames [F, 3, H, W] in 0..1 (float32, CPU), decoded in chunks.

    ``tile`` > 0 decodes in spatial tiles of that many latent cells a side (``settings.decode_tile``). Out of device
    memory, the chunk is halved down to one frame and then, unless the tiles are already as small, the decode falls
    back to tiles of :data:`DECODE_TILE` cells (WARNINGs logged)."""
    fallback = None
    if (tile <= 0 or tile > DECODE_TILE) and max(latents.shape[-2:]) > DECODE_TILE:
        fallback = _decoder(model.vae, latents, DECODE_TILE)
    frames = retry_on_oom(
        _decoder(model.vae, latents, tile),
        chunk_size,
        fallback=fallback,
        fallback_note=f"tiled decoding (tiles of {DECODE_TILE} latent cells, overlap {default_overlap(DECODE_TILE)}; "
        f"set decode_tile={DECODE_TILE} or lower to skip this)",
    )[0]
    # [F, 3, H, W] in -1..1
    return ((frames.float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)


def composite_mask(clip: ClipInputs, feather_pixels: int = 0) -> torch.Tensor:
    """The weight [F, 1, H, W] of the generated pixels in :func:`composite`: the mask, feathered outwards only (it
    never drops below the hard mask); 0 where the output is the input's pixel, exactly."""
    mask = clip.masks.float()
    if feather_pixels > 0:
        return torch.maximum(mask, feather(mask, feather_pixels))
    return mask


def composite(
    clip: ClipInputs,
    generated: torch.Tensor,
    feather_pixels: int = 0,
    color_match: str = "none",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generated pixels inside the mask, the input's outside; exactly the input where the mask is 0.

    ``color_match`` (:func:`kfi_core.inference.color_match.match_colors`) first fits the generated colours to the input
    on known pixels around the hole (mode ``keyframe``: on the clip's keyframes). Computed a frame at a time into
    ``out`` (a new tensor by default; ``generated`` itself may be passed, each frame depends only on its own values),
    so a full-size clip needs one result's memory beside its inputs, not several; a new result has the clip's
    memory layout (:func:`kfi_core.inference.condition.like_frames`)."""
    if color_match != "none":
        frames = to_unit(clip.frames)
        generated = match_colors(generated, frames, clip.masks, color_match, keyframes=clip.keyframe_indices)
    return composite_frames(clip, generated.__getitem__, feather_pixels, out)


def clip_result(clip: ClipInputs, out: torch.Tensor | None = None) -> torch.Tensor:
    """``out``, or a new tensor for a result at the clip's size: in the clip's layout (a channels-last caller gets
    it back without a copy) and type (8-bit for an 8-bit clip, else float32)."""
    if out is not None:
        return out
    dtype = EIGHT_BIT if is_eight_bit(clip.frames) else torch.float32
    return torch.empty(clip.frames.shape, dtype=dtype, memory_format=like_frames(clip.frames))


def composite_frames(
    clip: ClipInputs,
    fill_at: Callable[[int], torch.Tensor],
    feather_pixels: int = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`composite` with the generated frame ``t`` given by ``fill_at(t)`` (float [3, H, W]), one at a time:
    a fill made at another size is brought to the clip's a frame at a time. The result is :func:`clip_result`'s;
    an 8-bit clip's is rounded to 8 bits, and exactly the input where the mask is 0."""
    mask = composite_mask(clip, feather_pixels)
    out = clip_result(clip, out)
    for t in range(clip.num_frames):
        frame, weight = to_unit(clip.frames[t]), mask[t]
        blended = (frame * (1.0 - weight)).add_(fill_at(t) * weight)
        blended = torch.where(weight == 0, frame, blended)
        out[t] = to_eight_bit(blended) if is_eight_bit(out) else blended
    return out


def run_window(
    model,
    clip: ClipInputs,
    settings: PropagateSettings,
    *,
    callback: ProgressCallback | None = None,
    check_cancel: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """One window, checked settings, one sample: ``clip`` -> frames [F, 3, H, W] in 0..1 on the host.

    1.-3. Condition and denoiser (the generator's first draws), initial noise, sampling (:func:`sample_window_latents`);
    4. decode in chunks (in spatial tiles where ``settings.decode_tile`` asks); 5. composite, where
    ``settings.composite`` asks (pixels outside the mask and keyframes are the input's, exactly)."""
    latents = sample_window_latents(model, clip, settings, callback=callback, check_cancel=check_cancel)
    generated = decode_window(model, latents, settings.decode_chunk_size, settings.decode_tile)
    return composite(clip, generated, settings.feather, settings.color_match) if settings.composite else generated
