"""Keyframe propagation: one window of frames through the KFI model.

The inference recipe, in numbered steps: check, encode, sample, decode in chunks, composite.

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

``num_samples`` > 1 runs the whole inpaint that many times, with seeds ``seed``, ``seed + 1``, ...
(:func:`sample_seed`), and returns the mean of the outputs (:func:`mean_of_samples`). Each sample is a
plausible fill; their mean approximates the posterior mean, which minimises the expected squared error
(lower error, higher PSNR) at the cost of detail where the samples disagree: the perception-distortion
trade-off (Blau and Michaeli 2018). The seeds say nothing about this choice; KFI's own. One sample (the
default) is SVD's and the paper's way.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F

from kfi_core.inference.color_match import COLOR_MATCH_MODES, match_colors
from kfi_core.inference.condition import ClipInputs, encode_frames, encode_symmetric, first_frame_for_embedding
from kfi_core.errors import InputMismatchError, KfiError, UnknownNameError, UnsupportedSizeError
from kfi_core.media.mask_ops import feather

logger = logging.getLogger(__name__)

MAX_SEED = 2**64 - 1
MAX_SAMPLES = 64
ProgressCallback = Callable[[dict], Any]


# Latent blending of the known region (RePaint-style replacement of every denoised estimate outside the hole by the
# clean latents of the input, keyframe frames included). "auto": on in the training-free mode, which needs it to see
# the known pixels at all, off with a KFI adapter, which reads them from its condition as the paper trains it.
BLEND_KNOWN_MODES = ("auto", "on", "off")


def blends_known(settings: "PropagateSettings", in_channels: int) -> bool:
    """Whether the sampler blends the known latents for a UNet of ``in_channels`` (8 training-free, 12 KFI)."""
    if settings.blend_known == "auto":
        return in_channels == 8
    return settings.blend_known == "on"


@dataclass
class PropagateSettings:
    """Sampling knobs; defaults are SVD's (25 Euler steps, guidance 1 -> 3, fps 7, motion 127, aug 0.02)."""

    steps: int = 25
    seed: int = 0
    sampler: str = "euler"
    min_guidance: float = 1.0
    max_guidance: float = 3.0
    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    composite: bool = True
    feather: int = 0
    color_match: str = "none"  # kfi_core.inference.color_match: none | mean | affine | keyframe (applied when compositing)
    blend_known: str = "auto"  # latent blending of the known region: auto (on training-free, off KFI) | on | off
    decode_chunk_size: int = 8
    encode_chunk_size: int = 8
    num_samples: int = 1  # > 1: the mean of that many samples (seeds seed, seed + 1, ...): lower error, softer fill

    def check(self) -> "PropagateSettings":
        """Raise a clear error for any value the sampler cannot use."""
        from kfi_core.inference.sampling import SAMPLERS

        if self.sampler not in SAMPLERS:
            raise UnknownNameError(f"sampler: got {self.sampler!r}; choose one of {', '.join(SAMPLERS)}.")
        _int_in("steps", self.steps, 1, 1000, "25 is SVD's default")
        _int_in("seed", self.seed, 0, MAX_SEED, "any whole number from 0 to 2**64 - 1")
        _int_in("fps", self.fps, 1, 240, "SVD is conditioned on fps - 1; 7 is its default")
        _int_in("motion_bucket_id", self.motion_bucket_id, 0, 1023, "127 is SVD's default")
        _int_in("feather", self.feather, 0, 1024, "0 keeps a hard edge")
        _int_in("decode_chunk_size", self.decode_chunk_size, 1, 10_000, "8 frames at a time is the default")
        _int_in("encode_chunk_size", self.encode_chunk_size, 1, 10_000, "8 frames at a time is the default")
        _int_in("num_samples", self.num_samples, 1, MAX_SAMPLES,
                "1 is one sample, the default; 4 averages four, for a lower error and a softer fill")
        for name in ("min_guidance", "max_guidance"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0 or value > 100:
                raise InputMismatchError(f"{name}: got {value}; give a guidance scale from 0 to 100 (SVD: 1.0 to 3.0).")
        if self.min_guidance > self.max_guidance:
            raise InputMismatchError(
                f"min_guidance {self.min_guidance} is larger than max_guidance {self.max_guidance}; "
                "guidance rises from min (first frame) to max (last frame): swap them."
            )
        if self.color_match not in COLOR_MATCH_MODES:
            raise UnknownNameError(f"color_match: got {self.color_match!r}; choose one of "
                                   f"{', '.join(COLOR_MATCH_MODES)} (none keeps the model's colours).")
        if self.blend_known not in BLEND_KNOWN_MODES:
            raise UnknownNameError(f"blend_known: got {self.blend_known!r}; choose one of {', '.join(BLEND_KNOWN_MODES)} "
                                   "(auto blends in the training-free mode only).")
        aug = float(self.noise_aug_strength)
        if not math.isfinite(aug) or not 0.0 <= aug <= 10.0:
            raise InputMismatchError(f"noise_aug_strength: got {aug}; give a value from 0 to 10 (SVD: 0.02).")
        return self


def _int_in(name: str, value: Any, lo: int, hi: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputMismatchError(f"{name}: got {value!r}; give a whole number ({hint}).")
    if not lo <= value <= hi:
        raise InputMismatchError(f"{name}: got {value}; give a value from {lo} to {hi} ({hint}).")


def check_size(model, height: int, width: int) -> None:
    """Raise unless the model can take frames of this size (no silent resizing)."""
    m = model.size_multiple
    if height % m or width % m or height < m or width < m:
        def near(v: int) -> str:
            lo = max(m, v // m * m)
            return f"{lo} or {lo + m}" if lo != v else str(v)

        raise UnsupportedSizeError(
            f"frames: {width}x{height} (width x height) cannot be taken by this model: both sides must be multiples "
            f"of {m}. Nearest sizes: width {near(width)}, height {near(height)}. Resize or crop the clip "
            "(the CLI's --width/--height resize and then restore the input size)."
        )


def check_window(model, num_frames: int) -> None:
    if num_frames > model.num_frames:
        raise UnsupportedSizeError(
            f"frames: the clip has {num_frames} frames but this model ({model.variant}) takes at most "
            f"{model.num_frames} at once. Use a long-video schedule (e.g. schedule 'anchor') for longer clips."
        )


def latent_masks(masks: torch.Tensor, scale: int) -> torch.Tensor:
    """Pixel masks [F, 1, H, W] -> latent masks [1, F, 1, h, w]: a latent cell is 'fill' if any pixel in it is."""
    return F.max_pool2d(masks.float(), kernel_size=scale)[None]


def _image_embedding(model, clip: ClipInputs) -> torch.Tensor:
    from kfi_core.evaluation.stock_pipeline import encode_image_clip

    image = first_frame_for_embedding(clip)[None].float()  # [1, 3, H, W]
    return encode_image_clip(model.image_encoder, model.feature_extractor, image)  # [1, 1, D]


class WindowDenoiser:
    """``denoise(x, sigma)`` for one window: its condition, image embedding and guidance (steps 2 and 4).

    Builds the condition latents first, drawing the noise augmentation from ``generator`` (the
    first draws, as SVD). Where ``settings.blend_known`` says so (by default in the training-free mode, 8-channel
    UNet, only) it blends the denoised estimate with the clean input latents outside the latent mask. With ``resident=False`` the
    window's tensors stay on the host and visit the device only during a call (MultiDiffusion
    keeps many windows at once and must not hold them all on the device).
    """

    def __init__(self, model, clip: ClipInputs, settings: PropagateSettings, generator: torch.Generator, *,
                 resident: bool = True):
        from kfi_core.inference.denoiser import per_frame_guidance

        self.model, self.resident = model, resident
        num_frames = clip.num_frames
        if model.in_channels == 12:
            condition = encode_symmetric(model.vae, clip, noise_aug_strength=settings.noise_aug_strength,
                                         generator=generator, chunk_size=settings.encode_chunk_size)
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
            [[settings.fps - 1, settings.motion_bucket_id, settings.noise_aug_strength]], dtype=torch.float32)
        self.guidance = per_frame_guidance(settings.min_guidance, settings.max_guidance, num_frames)
        self.latent_shape = (1, num_frames, int(model.vae.config.latent_channels), *condition.shape[-2:])
        self._inner = self._build(model.device) if resident else None
        if resident and self.known_latents is not None:
            self.known_latents = self.known_latents.to(model.device)
            self.known_mask = self.known_mask.to(model.device)

    def _build(self, device):
        from kfi_core.inference.denoiser import SVDDenoiser

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
    """Gaussian noise of ``shape`` scaled to the first sigma as SVD's scheduler does (step 3)."""
    from kfi_core.inference.sampling import get_sigmas_svd, init_noise_sigma

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
) -> torch.Tensor:
    """Sample the latents [1, F, 4, h, w] of one window (steps 2-5 of :func:`propagate`)."""
    from kfi_core.inference.sampling import get_sampler, get_sigmas_svd

    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    # 2. + 4. Condition latents (first draws from the generator), embedding, guidance
    denoise = WindowDenoiser(model, clip, settings, generator)
    # 3. Initial noise (the next draw)
    x = initial_latents(denoise.latent_shape, settings, model, generator).to(model.device)
    # 5. Sample
    sigmas = get_sigmas_svd(settings.steps, model.scheduler_config).to(model.device)
    return get_sampler(settings.sampler)(denoise, x, sigmas, callback=callback, check_cancel=check_cancel)


@torch.no_grad()
def decode_window(model, latents: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Latents [1, F, 4, h, w] -> frames [F, 3, H, W] in 0..1 (float32, CPU), decoded in chunks."""
    from kfi_core.inference.memory import retry_on_oom
    from kfi_core.evaluation.stock_pipeline import decode_latents

    # out of device memory: retried with smaller chunks down to one frame (WARNING logged)
    frames = retry_on_oom(lambda c: decode_latents(model.vae, latents, decode_chunk_size=c), chunk_size)[0]
    # [F, 3, H, W] in -1..1
    return ((frames.float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)


def composite_mask(clip: ClipInputs, feather_pixels: int = 0) -> torch.Tensor:
    """The weight [F, 1, H, W] of the generated pixels in :func:`composite`: the mask, feathered outwards only (it
    never drops below the hard mask); 0 where the output is the input's pixel, exactly."""
    mask = clip.masks.float()
    if feather_pixels > 0:
        return torch.maximum(mask, feather(mask, feather_pixels))
    return mask


def composite(clip: ClipInputs, generated: torch.Tensor, feather_pixels: int = 0,
              color_match: str = "none") -> torch.Tensor:
    """Generated pixels inside the mask, the input's outside; exactly the input where the mask is 0.

    ``color_match`` (:func:`kfi_core.inference.color_match.match_colors`) first fits the generated colours to the input on
    known pixels around the hole (mode ``keyframe``: on the clip's keyframes)."""
    generated = match_colors(generated, clip.frames.float(), clip.masks, color_match, keyframes=clip.keyframe_indices)
    mask = composite_mask(clip, feather_pixels)
    frames = clip.frames.float()
    blended = frames * (1.0 - mask) + generated * mask
    return torch.where(mask == 0, frames, blended)


def sample_seed(seed: int, k: int) -> int:
    """The seed of sample ``k`` of a ``num_samples`` run: ``seed + k`` (mod 2**64); sample 0 is the one-sample run."""
    return (seed + k) % 2**64


def mean_of_samples(run: Callable[[PropagateSettings, Any], torch.Tensor], clip: ClipInputs,
                    settings: PropagateSettings, callback: ProgressCallback | None = None) -> torch.Tensor:
    """The mean of ``settings.num_samples`` runs of ``run(one_sample_settings, callback)`` -> frames [F, 3, H, W].

    Sample ``k`` uses :func:`sample_seed` ``(seed, k)`` and otherwise the same settings, so each is composited and
    colour-matched as a one-sample run is; with ``composite`` on, pixels the composite keeps (mask 0 beyond any
    feather, keyframes too) are then set to the input's again, so they stay bit-exact after the division. With it
    off, the mean of the raw outputs. Progress counts the steps of all samples (``i`` and ``total``), with
    ``sample`` the sample's index."""
    n = settings.num_samples
    logger.info("averaging %d samples (seeds %d..%d)", n, settings.seed, settings.seed + n - 1)
    total = None
    for k in range(n):
        report = None
        if callback is not None:
            def report(info: dict, k: int = k) -> None:
                callback({**info, "i": k * info["total"] + info["i"], "total": n * info["total"], "sample": k})
        frames = run(replace(settings, seed=sample_seed(settings.seed, k), num_samples=1), report).float()
        total = frames.clone() if total is None else total.add_(frames)
    mean = total / n
    if settings.composite:
        mean = torch.where(composite_mask(clip, settings.feather) == 0, clip.frames.float(), mean)
    return mean


def propagate(
    model,
    clip: ClipInputs,
    settings: PropagateSettings | None = None,
    *,
    callback: ProgressCallback | None = None,
    check_cancel: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Inpaint one window: ``clip`` (from :func:`kfi_core.inference.condition.prepare_clip`) -> frames [F, 3, H, W] in 0..1.

    With ``settings.composite`` (default) pixels outside the mask and keyframes are the input's,
    exactly. ``callback`` gets a dict per step (``i``, ``total``, ``sigma``, ``x``, ``denoised``);
    ``check_cancel()`` runs between steps and may raise to stop.
    """
    # 1. Check inputs before any compute
    settings = (settings or PropagateSettings()).check()
    if not isinstance(clip, ClipInputs):
        raise KfiError("clip: pass the result of kfi_core.inference.condition.prepare_clip(frames, masks, ...).")
    if settings.num_samples > 1:
        return mean_of_samples(lambda s, cb: propagate(model, clip, s, callback=cb, check_cancel=check_cancel),
                               clip, settings, callback)
    height, width = clip.size
    check_size(model, height, width)
    check_window(model, clip.num_frames)
    logger.info("propagating %d frames %dx%d (%s mode, %d %s steps, seed %d, keyframes %s)", clip.num_frames, width,
                height, "KFI" if model.in_channels == 12 else "training-free", settings.steps, settings.sampler,
                settings.seed, clip.keyframe_indices or "none")

    # 2.-5. Condition, noise, denoiser, sampling
    latents = sample_window_latents(model, clip, settings, callback=callback, check_cancel=check_cancel)

    # 6. Decode in chunks
    generated = decode_window(model, latents, settings.decode_chunk_size)

    # 7. Composite
    return composite(clip, generated, settings.feather, settings.color_match) if settings.composite else generated
