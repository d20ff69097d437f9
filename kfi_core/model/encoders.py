"""The image and VAE-decoder paths that SVD's pipeline uses, shared by inference, training and the stock reference.

``encode_image_clip`` is SVD's CLIP image embedding (anti-aliased resize to 224, the feature extractor's
normalisation, ``image_embeds``); ``decode_latents`` is the pipeline's chunked temporal-decoder call. Both follow
diffusers' ``StableVideoDiffusionPipeline`` exactly (tests/test_sampling.py compares with it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kfi_core.errors import SettingsError
from kfi_core.model.offload import execution_device

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
    """Where the component computes (the offload's device where one is set: :mod:`kfi_core.model.offload`)."""
    return execution_device(module)


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


#: Tiled decoding's defaults, in latent cells: 32 cells (256 pixels on SVD's VAE) a side, 8 cells of overlap.
DECODE_TILE = 32
DECODE_OVERLAP = 8


def default_overlap(tile: int) -> int:
    """The overlap that goes with a tile of ``tile`` latent cells: a quarter of it (8 for 32), at least 1."""
    return max(1, tile // 4)


def check_tiling(tile: Any, overlap: Any) -> None:
    """Raise :class:`SettingsError` unless ``tile`` and ``overlap`` are whole numbers >= 1 with overlap < tile."""
    for name, value in (("tile", tile), ("overlap", overlap)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SettingsError(
                f"decode {name}: got {value!r}; give a whole number of latent cells >= 1 "
                f"(tile {DECODE_TILE} with overlap {DECODE_OVERLAP} is the default)."
            )
    if overlap >= tile:
        raise SettingsError(
            f"decode overlap: got {overlap} latent cells for tiles of {tile}; the overlap must be smaller than the "
            f"tile (a quarter of it, e.g. {default_overlap(tile)}, is a good choice)."
        )


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` cells covering ``size`` cells, ``tile - overlap`` apart; the last tile ends
    at ``size`` (so it may overlap its neighbour by more). One tile at 0 when ``tile >= size``."""
    if tile >= size:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return [*starts, size - tile]


def blend_weights(size: int, starts: list[int], tile: int, ramp: int) -> torch.Tensor:
    """Per-tile weights [T, size] along one axis that sum to 1 at every position.

    Each tile's raw weight rises linearly over ``ramp`` positions from each edge it shares with a neighbour (the
    image's own edges stay at full weight); the raw weights are then divided by their sum. Where two tiles overlap by
    exactly ``ramp`` the raw weights already sum to 1 (a plain linear cross-fade, as diffusers' ``blend_h/blend_v``);
    the division covers the last tile's larger overlap."""
    positions = torch.arange(size, dtype=torch.float64) + 0.5  # pixel centres
    raw = torch.zeros(len(starts), size, dtype=torch.float64)
    for i, start in enumerate(starts):
        end = min(start + tile, size)
        weight = torch.ones(size, dtype=torch.float64)
        if i > 0:
            weight = torch.minimum(weight, (positions - start) / ramp)
        if i < len(starts) - 1:
            weight = torch.minimum(weight, (end - positions) / ramp)
        inside = (positions > start) & (positions < end)
        raw[i] = torch.where(inside, weight.clamp(min=0.0), torch.zeros_like(weight))
    return (raw / raw.sum(dim=0, keepdim=True)).float()


@torch.no_grad()
def decode_latents_tiled(
    vae: torch.nn.Module,
    latents: torch.Tensor,
    decode_chunk_size: int | None = None,
    *,
    tile: int = DECODE_TILE,
    overlap: int = DECODE_OVERLAP,
) -> torch.Tensor:
    """:func:`decode_latents` in spatial tiles of ``tile`` x ``tile`` latent cells overlapping by ``overlap`` cells.

    Same contract: latents [B, F, C, h, w] -> frames [B, F, 3, H, W] in -1..1 (float32). Tiles are decoded one at a
    time (each in chunks of ``decode_chunk_size`` frames), so the decoder's peak memory is that of one tile, and
    cross-faded over their overlap with weights that sum to 1 (:func:`blend_weights`). The temporal decoder mixes
    frames, not distant pixels, so with a few cells of overlap the result is the untiled decode within a small
    tolerance (docs/PERFORMANCE.md); a tile that covers the whole latent is exactly :func:`decode_latents`.
    """
    check_tiling(tile, overlap)
    height, width = latents.shape[-2:]
    if tile >= height and tile >= width:
        return decode_latents(vae, latents, decode_chunk_size)
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    out = weights_y = weights_x = None
    scale = 0
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            part = latents[..., top : top + tile, left : left + tile]
            decoded = decode_latents(vae, part, decode_chunk_size)  # [B, F, 3, th * scale, tw * scale]
            if out is None:
                scale = decoded.shape[-1] // part.shape[-1]
                out = decoded.new_zeros((*decoded.shape[:3], height * scale, width * scale))
                weights_y = blend_weights(height * scale, [r * scale for r in rows], tile * scale, overlap * scale)
                weights_x = blend_weights(width * scale, [c * scale for c in cols], tile * scale, overlap * scale)
            y0, y1 = top * scale, top * scale + decoded.shape[-2]
            x0, x1 = left * scale, left * scale + decoded.shape[-1]
            wy = weights_y[i, y0:y1].to(decoded.device)[:, None]
            wx = weights_x[j, x0:x1].to(decoded.device)[None, :]
            out[..., y0:y1, x0:x1] += decoded * (wy * wx)
            del decoded
    return out
