"""Tiny Stable Video Diffusion img2vid models with random weights.

Built from the real classes (diffusers' UNetSpatioTemporalConditionModel and
AutoencoderKLTemporalDecoder, transformers' CLIPVisionModelWithProjection and
CLIPImageProcessor, diffusers' EulerDiscreteScheduler with SVD's EDM v-prediction
config) so that every code path of KFI runs on them exactly as on the real
checkpoints. They are what the tests and the demo use: nothing is downloaded.

Shapes of the tiny model: 64x64 frames, VAE 4x down (latents 16x16, 4 channels, identity
quant_conv as in SVD's converted VAE),
UNet (32, 64) channels with cross-attention on the first level, CLIP ViT with
hidden size 32 on 224x224 inputs (the SVD pipeline always resizes to 224).
Every component is seeded on its own, so a seed gives the same weights on any machine
with the same torch version.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

from kfi_core.errors import ModelFileError, SettingsError
from kfi_core.files import atomic_folder

logger = logging.getLogger(__name__)

TINY_HEIGHT = 64
TINY_WIDTH = 64

# Shapes follow SVD's own config with every width cut down; all widths are multiples
# of 32 because GroupNorm(32) is hard-coded in the temporal blocks.
TINY_UNET_CONFIG = {
    "sample_size": 16,  # latent size: 64 px / VAE scale 4
    "in_channels": 8,  # noisy latent (4) + first-frame latent condition (4), as stock SVD
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    "up_block_types": ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    "block_out_channels": (32, 64),
    "addition_time_embed_dim": 32,
    "projection_class_embeddings_input_dim": 96,  # 3 x addition_time_embed_dim
    "layers_per_block": 1,
    "cross_attention_dim": 32,  # = CLIP projection_dim
    "transformer_layers_per_block": 1,
    "num_attention_heads": (2, 4),  # head dim 16 on both levels
    "num_frames": 8,
}

TINY_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "block_out_channels": (32, 64, 64),  # 2 downsamples: scale factor 4
    # 2 as in SVD: with 1, diffusers' temporal-decoder mid block never runs its attention while
    # sgm's (and ComfyUI's) always runs resnet-attention-resnet, so no single file could hold it.
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 64,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}

TINY_CLIP_VISION_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "gelu",  # OpenCLIP ViT-H uses exact gelu, as SVD's image encoder config says
    "layer_norm_eps": 1e-5,
}

# stabilityai/stable-video-diffusion-img2vid(-xt) scheduler/scheduler_config.json
SVD_SCHEDULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}

# feature_extractor/preprocessor_config.json of the same repositories
SVD_FEATURE_EXTRACTOR_CONFIG = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 224},
}


def tiny_unet_config(num_frames: int = 8) -> dict:
    config = copy.deepcopy(TINY_UNET_CONFIG)
    config["num_frames"] = num_frames
    return config


def _check_frames(num_frames: int) -> None:
    if not 1 <= num_frames <= 128:
        raise SettingsError(f"--frames: got {num_frames}; give a frame count between 1 and 128 (8 is the default).")


def build_tiny_components(num_frames: int = 8, seed: int = 0, vae_config: dict | None = None) -> dict:
    """Return the five pipeline components with random weights, seeded per component.

    ``vae_config`` overrides keys of :data:`TINY_VAE_CONFIG` (the demo model's VAE is wider)."""
    _check_frames(num_frames)
    import torch
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    def seeded(offset: int):
        torch.manual_seed(seed * 1000 + offset)

    seeded(0)
    unet = UNetSpatioTemporalConditionModel(**tiny_unet_config(num_frames))
    seeded(1)
    vae = AutoencoderKLTemporalDecoder(**{**TINY_VAE_CONFIG, **(vae_config or {})})
    with torch.no_grad():
        # SVD's VAE has no quant_conv; diffusers' class has one, identity in the converted weights.
        vae.quant_conv.weight.copy_(torch.eye(vae.quant_conv.weight.shape[0]).view_as(vae.quant_conv.weight))
        vae.quant_conv.bias.zero_()
    seeded(2)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_VISION_CONFIG))
    scheduler = EulerDiscreteScheduler.from_config(SVD_SCHEDULER_CONFIG)
    feature_extractor = CLIPImageProcessor(**SVD_FEATURE_EXTRACTOR_CONFIG)
    for module in (unet, vae, image_encoder):
        module.eval()
    return {
        "unet": unet,
        "vae": vae,
        "image_encoder": image_encoder,
        "scheduler": scheduler,
        "feature_extractor": feature_extractor,
    }


def build_tiny_pipeline(num_frames: int = 8, seed: int = 0):
    """A diffusers ``StableVideoDiffusionPipeline`` over the tiny components."""
    from diffusers import StableVideoDiffusionPipeline

    return StableVideoDiffusionPipeline(**build_tiny_components(num_frames=num_frames, seed=seed))


def build_tiny_pipeline_folder(out_dir: str | os.PathLike, num_frames: int = 8, seed: int = 0) -> Path:
    """Write the tiny pipeline in diffusers folder layout (safetensors) and return the path.

    ``StableVideoDiffusionPipeline.from_pretrained(out_dir)`` loads the result.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelFileError(
            f"make-tiny-model: {out} already exists and is not an empty folder. "
            "Give a new folder name or delete the old one first."
        )
    pipe = build_tiny_pipeline(num_frames=num_frames, seed=seed)
    with atomic_folder(out) as tmp:  # an interrupted write leaves no half model folder
        pipe.save_pretrained(tmp, safe_serialization=True)
    logger.info("wrote tiny SVD img2vid model (%d frames, seed %d) to %s", num_frames, seed, out)
    return out
