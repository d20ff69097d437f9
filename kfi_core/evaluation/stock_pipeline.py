"""Stock SVD image-to-video, rebuilt from KFI's own sampling pieces.

``sample_stock_img2vid`` does what diffusers' ``StableVideoDiffusionPipeline.__call__`` does
(pipelines/stable_video_diffusion/pipeline_stable_video_diffusion.py) with
``kfi_core.inference.sampling`` and ``kfi_core.inference.denoiser`` in place of the scheduler loop, and gives the
same frames for the same seed (the oracle test in tests/test_sampling.py). It is the
reference path that proves KFI's sampler, not the inpainting recipe (``propagate``).

Random numbers come from one CPU ``torch.Generator`` seeded with ``seed``, drawn in the
pipeline's order: first the noise-augmentation noise of the conditioning image
([1, 3, H, W]), then the initial latents ([1, F, 4, h, w]).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from kfi_core.errors import InputMismatchError, SettingsError, UnknownNameError, UnsupportedSizeError
from kfi_core.inference.denoiser import SVDDenoiser, per_frame_guidance
from kfi_core.inference.sampling import get_sampler, get_sigmas_svd, init_noise_sigma
from kfi_core.model.encoders import decode_latents, encode_image_clip, module_device, module_dtype

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pt", "np", "latent")
COMPONENT_KEYS = ("unet", "vae", "image_encoder", "scheduler", "feature_extractor")


# --------------------------------------------------------------------------- image handling


def _image_to_tensor(image: Any) -> torch.Tensor:
    """A PIL image or a float tensor [3, H, W] / [1, 3, H, W] in 0..1 -> float32 [1, 3, H, W] in 0..1."""
    import PIL.Image

    if isinstance(image, PIL.Image.Image):
        # uint8 -> float32 / 255, exactly as diffusers' VaeImageProcessor.pil_to_numpy
        # (a channels-last view, as diffusers makes it: convolutions round differently on other layouts)
        array = np.asarray(image.convert("RGB")).astype(np.float32)[None] / 255.0
        return torch.from_numpy(array).permute(0, 3, 1, 2)  # [1, H, W, 3] -> [1, 3, H, W]
    if isinstance(image, torch.Tensor):
        tensor = image[None] if image.ndim == 3 else image
        if tensor.ndim != 4 or tensor.shape[:2] != (1, 3) or not tensor.is_floating_point():
            raise InputMismatchError(
                f"image: got a {image.dtype} tensor of shape {tuple(image.shape)}; pass one RGB image as a float "
                "tensor [3, H, W] or [1, 3, H, W] in 0..1, or a PIL image."
            )
        lo, hi = float(tensor.min()), float(tensor.max())
        if lo < 0.0 or hi > 1.0:
            raise InputMismatchError(
                f"image: values range from {lo:.3g} to {hi:.3g}; pass values in 0..1 "
                "(convert from -1..1 with (x + 1) / 2, from 0..255 with x / 255)."
            )
        # laid out channels-last like the PIL path (fresh strides), so both round the same in the VAE
        return tensor.float().clone(memory_format=torch.channels_last)
    raise InputMismatchError(
        f"image: got {type(image).__name__}; pass a PIL image or a float tensor [3, H, W] in 0..1."
    )


def _check_stock_inputs(
    components: Mapping, num_frames: int, height: int, width: int, output_type: str, decode_chunk_size
) -> None:
    missing = [key for key in COMPONENT_KEYS if key not in components]
    if missing:
        raise SettingsError(
            f"components: missing {', '.join(missing)}; pass the dict of build_tiny_components() or a loaded "
            f"SVD model's components ({', '.join(COMPONENT_KEYS)})."
        )
    if output_type not in OUTPUT_TYPES:
        raise UnknownNameError(f"output_type: got {output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}.")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise UnsupportedSizeError(f"num_frames: got {num_frames!r}; give at least 1 frame (SVD-XT uses 25).")
    if height % 8 or width % 8 or height < 8 or width < 8:
        raise UnsupportedSizeError(
            f"height x width: got {height} x {width}; both must be positive multiples of 8, as the SVD pipeline "
            "requires (e.g. 576 x 1024, or 64 x 64 for the tiny model)."
        )
    if decode_chunk_size is not None and (not isinstance(decode_chunk_size, int) or decode_chunk_size < 1):
        raise SettingsError(
            f"decode_chunk_size: got {decode_chunk_size!r}; give a whole number of frames >= 1, or None to decode "
            "all frames at once."
        )
    unet = components["unet"]
    latent_channels = components["vae"].config.latent_channels
    if unet.config.in_channels != 2 * latent_channels:
        raise InputMismatchError(
            f"components['unet']: in_channels is {unet.config.in_channels}, but stock img2vid concatenates "
            f"{latent_channels} noisy + {latent_channels} image latent channels = {2 * latent_channels}. "
            "Use a stock SVD UNet here; widened KFI UNets go through kfi_core's inpainting path."
        )
    expected = unet.add_embedding.linear_1.in_features
    if unet.config.addition_time_embed_dim * 3 != expected:
        raise InputMismatchError(
            f"components['unet']: addition_time_embed_dim {unet.config.addition_time_embed_dim} x 3 added time ids "
            f"!= add_embedding input {expected}; the UNet config does not match its weights (see "
            "projection_class_embeddings_input_dim)."
        )


@torch.no_grad()
def sample_stock_img2vid(
    components: Mapping[str, Any],
    image: Any,
    *,
    num_frames: int,
    height: int,
    width: int,
    steps: int,
    seed: int,
    min_guidance: float = 1.0,
    max_guidance: float = 3.0,
    fps: int = 7,
    motion_bucket_id: int = 127,
    noise_aug_strength: float = 0.02,
    sampler: str = "euler",
    decode_chunk_size: int | None = None,
    output_type: str = "pt",
    callback: Callable[[dict], Any] | None = None,
    check_cancel: Callable[[], Any] | None = None,
) -> torch.Tensor | np.ndarray:
    """SVD image-to-video as ``StableVideoDiffusionPipeline`` does it, sampled with KFI's sampler.

    ``components``: the dict of ``kfi_core.model.tiny.build_tiny_components()`` (unet, vae,
    image_encoder, scheduler, feature_extractor); only the scheduler's config is read.
    ``image``: a PIL image (as the pipeline takes it) or a float tensor [3, H, W] in 0..1.
    Returns the frames as the pipeline's ``.frames``: ``"pt"`` float32 [1, F, 3, H, W],
    ``"np"`` float32 [1, F, H, W, 3], both in 0..1; ``"latent"`` the sampled latents
    [1, F, C, h, w] before decoding.

    With ``sampler="euler"`` the result equals the pipeline's for the same seed up to float
    rounding (tests/test_sampling.py). Differences from the pipeline: only one image per call;
    latents stay float32 between steps whatever the UNet's dtype; the VAE is not up-cast for
    encoding when float16 (the pipeline does that when ``force_upcast``).
    """
    # 1. Check inputs, before any compute
    sample = get_sampler(sampler)
    _check_stock_inputs(components, num_frames, height, width, output_type, decode_chunk_size)
    unet, vae = components["unet"], components["vae"]
    device, unet_dtype = module_device(unet), module_dtype(unet)
    pixels = _image_to_tensor(image)  # [1, 3, H0, W0] in 0..1, the image's own size
    vae_pixels = _vae_pixels(image, pixels, height, width)
    sigmas = get_sigmas_svd(steps, components["scheduler"].config)
    guidance = per_frame_guidance(min_guidance, max_guidance, num_frames)
    logger.debug(
        "stock img2vid: %d frames %dx%d, %d %s steps, seed %d", num_frames, height, width, steps, sampler, seed
    )

    # 2. CLIP image embedding [1, 1, D]
    image_embeddings = encode_image_clip(components["image_encoder"], components["feature_extractor"], pixels)

    # 3. Noise-augmented image -> VAE latents; the first draw from the generator
    generator = torch.Generator(device="cpu").manual_seed(seed)
    image_latents = _encode_condition_latents(vae, vae_pixels, generator, noise_aug_strength)  # [1, C, h, w]
    # [1, C, h, w] -> [1, F, C, h, w]: the same condition for every frame
    image_latents = image_latents.to(device=device, dtype=unet_dtype)[:, None].repeat(1, num_frames, 1, 1, 1)

    # 4. Micro-conditioning; SVD was trained on fps - 1 (see the pipeline's NOTE)
    added_time_ids = torch.tensor([[fps - 1, motion_bucket_id, noise_aug_strength]], dtype=unet_dtype, device=device)

    # 5. Initial latents: the second draw, scaled as diffusers' scheduler does
    shape = tuple(image_latents.shape)  # [1, F, C, h, w], as the pipeline's (UNet in_channels // 2 channels)
    noise = torch.randn(shape, generator=generator, dtype=image_embeddings.dtype)
    x = (noise * init_noise_sigma(sigmas, components["scheduler"].config)).to(device=device, dtype=torch.float32)

    # 6. Sample
    denoise = SVDDenoiser(
        unet,
        condition_latents=image_latents,
        encoder_hidden_states=image_embeddings.to(device),
        added_time_ids=added_time_ids,
        guidance=guidance,
    )
    latents = sample(denoise, x, sigmas, callback=callback, check_cancel=check_cancel)

    if output_type == "latent":
        return latents

    # 7. Decode and post-process as the pipeline
    return _decode_frames(vae, latents, decode_chunk_size, output_type)


def _vae_pixels(image: Any, pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The image the VAE encodes, [1, 3, H, W] in 0..1: ``pixels`` when already H x W, else the PIL
    image resized with Lanczos as diffusers' VaeImageProcessor does (CLIP still sees the original)."""
    if pixels.shape[-2:] == (height, width):
        return pixels
    import PIL.Image

    if not isinstance(image, PIL.Image.Image):
        raise InputMismatchError(
            f"image: got {pixels.shape[-2]} x {pixels.shape[-1]} pixels for a {height} x {width} clip; "
            "resize the tensor first, or pass a PIL image (resized with Lanczos, as the pipeline does)."
        )
    return _image_to_tensor(image.convert("RGB").resize((width, height), resample=PIL.Image.LANCZOS))


def _encode_condition_latents(
    vae, vae_pixels: torch.Tensor, generator: torch.Generator, noise_aug_strength: float
) -> torch.Tensor:
    """Noise-augment [1, 3, H, W] in 0..1 (one draw from ``generator``) and encode it: -> [1, C, h, w],
    the latent mode, not multiplied by the scaling factor (as the pipeline's ``_encode_vae_image``)."""
    vae_in = vae_pixels * 2.0 - 1.0  # [1, 3, H, W] in -1..1
    aug_noise = torch.randn(vae_in.shape, generator=generator, dtype=vae_in.dtype)
    vae_in = (vae_in + noise_aug_strength * aug_noise).to(device=module_device(vae), dtype=module_dtype(vae))
    return vae.encode(vae_in).latent_dist.mode()


def _decode_frames(
    vae, latents: torch.Tensor, decode_chunk_size: int | None, output_type: str
) -> torch.Tensor | np.ndarray:
    """Decode and post-process as the pipeline: -1..1 -> 0..1, clamped; ``"np"`` as [1, F, H, W, 3]."""
    frames = decode_latents(vae, latents, decode_chunk_size)  # [1, F, 3, H, W]
    frames = (frames * 0.5 + 0.5).clamp(0, 1)
    if output_type == "np":
        return frames.cpu().permute(0, 1, 3, 4, 2).numpy()  # [1, F, 3, H, W] -> [1, F, H, W, 3]
    return frames
