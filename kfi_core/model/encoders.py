"""The image and VAE-decoder paths that SVD's pipeline uses, shared by inference, training and the stock reference.

``encode_image_clip`` is SVD's CLIP image embedding (anti-aliased resize to 224, the feature extractor's
normalisation, ``image_embeds``); ``decode_latents`` is the pipeline's chunked temporal-decoder call. Both follow
diffusers' ``StableVideoDiffusionPipeline`` exactly (tests/test_sampling.py compares with it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

#: The SVD pipeline always embeds the image at CLIP's 224 x 224.
CLIP_SIZE = 224


def _gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def resize_for_clip(images: torch.Tensor, size: int = CLIP_SIZE) -> torch.Tensor:
    """Anti-aliased resize of [B, 3, H, W] to size x size, as SVD (and the diffusers pipeline) do.

    A separable Gaussian blur of sigma (H / size - 1) / 2 per axis (scikit-image's rule for
    anti-aliasing, floor 0.001 so up-scaling does not blur), kernel about 4 sigma wide and odd,
    reflect padding, horizontal pass first; then bicubic interpolation with aligned corners.
    """
    batch, channels, height, width = images.shape
    sigmas = (max((height / size - 1.0) / 2.0, 0.001), max((width / size - 1.0) / 2.0, 0.001))
    size_y, size_x = (int(max(4.0 * s, 3)) | 1 for s in sigmas)  # odd kernel sizes
    kernel_x = _gaussian_kernel(size_x, sigmas[1]).to(images).reshape(1, 1, 1, size_x)
    kernel_y = _gaussian_kernel(size_y, sigmas[0]).to(images).reshape(1, 1, size_y, 1)
    flat = images.reshape(batch * channels, 1, height, width)  # [B*3, 1, H, W]: one channel per image
    flat = F.conv2d(F.pad(flat, (size_x // 2, size_x // 2, 0, 0), mode="reflect"), kernel_x)
    flat = F.conv2d(F.pad(flat, (0, 0, size_y // 2, size_y // 2), mode="reflect"), kernel_y)
    blurred = flat.reshape(batch, channels, height, width)
    return F.interpolate(blurred, size=(size, size), mode="bicubic", align_corners=True)


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def encode_image_clip(image_encoder: torch.nn.Module, feature_extractor: Any, image: torch.Tensor) -> torch.Tensor:
    """CLIP image embedding of [1, 3, H, W] in 0..1 -> encoder_hidden_states [1, 1, D], as SVD computes it.

    The pipeline resizes in -1..1 with anti-aliasing to 224 x 224, goes back to 0..1, normalises
    with the feature extractor's mean and std (no crop, no rescale) and takes
    ``image_embeds`` (the projected pooled output).
    """
    pixels = clip_pixels(feature_extractor, image)
    pixels = pixels.to(device=module_device(image_encoder), dtype=module_dtype(image_encoder))
    return image_encoder(pixels).image_embeds[:, None]  # [1, D] -> [1, 1, D]


def clip_pixels(feature_extractor: Any, image: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in 0..1 -> the image encoder's input [B, 3, 224, 224], as SVD prepares it (differentiable)."""
    resized = (resize_for_clip(image * 2.0 - 1.0) + 1.0) / 2.0  # [B, 3, 224, 224] in 0..1
    mean = torch.tensor(feature_extractor.image_mean, dtype=torch.float32).reshape(1, 3, 1, 1)
    std = torch.tensor(feature_extractor.image_std, dtype=torch.float32).reshape(1, 3, 1, 1)
    return (resized - mean.to(resized)) / std.to(resized)


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
    """Latents [B, F, C, h, w] -> frames [B, F, 3, H, W] in -1..1 (float32), ``decode_chunk_size`` frames at a time.

    As the pipeline's ``decode_latents``: undo the VAE scaling factor, decode with the temporal
    decoder told how many frames each chunk holds (``num_frames``; without it its temporal layers
    would see one frame).
    """
    batch, frames = latents.shape[:2]
    chunk = decode_chunk_size or frames
    flat = latents.flatten(0, 1)  # [B, F, C, h, w] -> [B*F, C, h, w]
    flat = (1 / vae.config.scaling_factor * flat).to(module_dtype(vae))
    pieces = []
    for start in range(0, flat.shape[0], chunk):
        part = flat[start : start + chunk]
        pieces.append(vae.decode(part, num_frames=part.shape[0]).sample)
    decoded = torch.cat(pieces).float()  # [B*F, 3, H, W]
    return decoded.reshape(batch, frames, *decoded.shape[1:])  # [B*F, 3, H, W] -> [B, F, 3, H, W]
