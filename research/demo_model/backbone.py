"""Phase backbone: the demo UNet and CLIP image encoder trained from scratch with SVD's stock image-to-video
conditioning on the frozen demo VAE, saved as a diffusers StableVideoDiffusionPipeline folder."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline

from kfi_core.files import atomic_folder
from kfi_core.inference.denoiser import scale_model_input, sigma_to_timestep
from kfi_core.model.encoders import clip_pixels
from kfi_core.model.tiny import SVD_SCHEDULER_CONFIG
from kfi_core.training.objective import kfi_loss

from .data import step_generator, training_batch
from .loop import PhaseRun, fingerprint, run_phase
from .recipe import DemoRecipe, PhaseConfig
from .vae import new_components

logger = logging.getLogger(__name__)

BACKBONE_FOLDER = "backbone"  # under <out>: the pipeline folder the adapter trains on and the package ships
_BACKBONE_STREAM = 13


def clip_embedding(image_encoder, feature_extractor, images: torch.Tensor) -> torch.Tensor:
    """SVD's image embedding of [B, 3, H, W] in 0..1 -> [B, 1, D], with gradients (see svd_stock)."""
    return image_encoder(clip_pixels(feature_extractor, images)).image_embeds[:, None]


def backbone_inputs(vae, clips: torch.Tensor, phase: PhaseConfig, generator: torch.Generator) -> dict:
    """Stock SVD img2vid training inputs for clips [B, F, 3, H, W] (no gradients; the VAE is frozen).

    With ``phase.first_frame_only_prob`` > 0 that fraction of samples gets the first frame's latent on frame 0
    alone instead of on every frame, so the temporal layers must carry its appearance to the other frames: what
    KFI asks of them, where a keyframe's latent sits on its own frame only. The other frames hold zeros.
    Unconditional samples stay all zeros.
    """
    b, f = clips.shape[:2]
    scaling = float(vae.config.scaling_factor)
    with torch.no_grad():
        x0 = vae.encode(clips.flatten(0, 1) * 2.0 - 1.0).latent_dist.mode() * scaling
        x0 = x0.unflatten(0, (b, f))  # [B, F, 4, h, w]
        aug = torch.exp(phase.noise_aug_mean + phase.noise_aug_std * torch.randn(b, generator=generator))
        first = clips[:, 0] * 2.0 - 1.0
        first = first + aug.reshape(b, 1, 1, 1) * torch.randn(first.shape, generator=generator)
        cond = vae.encode(first).latent_dist.mode()[:, None].expand(-1, f, -1, -1, -1)  # not scaled, as SVD
        keep = (torch.rand(b, generator=generator) >= phase.cond_dropout_prob).float()
        cond = cond * keep.reshape(b, 1, 1, 1, 1)
        if phase.first_frame_only_prob > 0:  # drawn only then, so older recipes see the same numbers
            only = torch.rand(b, generator=generator) < phase.first_frame_only_prob
            frames = torch.ones(b, f, 1, 1, 1)
            frames[only, 1:] = 0.0
            cond = cond * frames
        sigma = torch.exp(phase.p_mean + phase.p_std * torch.randn(b, generator=generator))
        x_t = x0 + sigma.reshape(b, 1, 1, 1, 1) * torch.randn(x0.shape, generator=generator)
        model_in = torch.cat([scale_model_input(x_t, sigma.reshape(b, 1, 1, 1, 1)), cond], dim=2)
        ids = torch.stack(
            [torch.full((b,), float(phase.fps - 1)), torch.full((b,), float(phase.motion_bucket_id)), aug], dim=1
        )
    return {
        "model_in": model_in,
        "timestep": sigma_to_timestep(sigma),
        "added_time_ids": ids,
        "x0": x0,
        "x_t": x_t,
        "sigma": sigma,
        "keep": keep,
        "first": clips[:, 0],
    }


def backbone_loss(unet, image_encoder, feature_extractor, inputs: dict) -> torch.Tensor:
    emb = clip_embedding(image_encoder, feature_extractor, inputs["first"])
    emb = emb * inputs["keep"].reshape(-1, 1, 1)  # unconditional samples: zero embedding, as SVD
    v = unet(
        inputs["model_in"],
        inputs["timestep"],
        encoder_hidden_states=emb,
        added_time_ids=inputs["added_time_ids"],
        return_dict=False,
    )[0]
    return kfi_loss(v, inputs["x0"], inputs["x_t"], inputs["sigma"].reshape(-1, 1, 1, 1, 1))


def scheduler_config(recipe: DemoRecipe) -> dict:
    return {**SVD_SCHEDULER_CONFIG, **recipe.scheduler}


def train_backbone(recipe: DemoRecipe, vae, out: Path, deadline: float | None) -> Path | None:
    """Phase backbone: UNet + image encoder on the frozen VAE; writes ``<out>/backbone`` (a diffusers
    StableVideoDiffusionPipeline folder, written to a temporary folder and renamed), or returns None if out of
    time."""
    folder = out / BACKBONE_FOLDER
    if (folder / "model_index.json").is_file():
        return folder
    parts = new_components(recipe)
    phase = recipe.backbone
    unet, image_encoder, fe = parts["unet"].train(), parts["image_encoder"], parts["feature_extractor"]
    image_encoder.train(phase.train_image_encoder)
    image_encoder.requires_grad_(phase.train_image_encoder)
    unet.requires_grad_(True)
    vae.eval().requires_grad_(False)
    h, w = recipe.resolution

    def loss_fn(step: int):
        clips = training_batch(recipe.seed, _BACKBONE_STREAM, step, phase.batch_size, recipe.num_frames, h, w)
        inputs = backbone_inputs(vae, clips, phase, step_generator(recipe.seed, _BACKBONE_STREAM, step))
        return backbone_loss(unet, image_encoder, fe, inputs), {}

    modules = {"unet": unet, "image_encoder": image_encoder}
    run = PhaseRun("backbone", out / f"{folder.name}_train", phase, modules, loss_fn, fingerprint(recipe, "backbone"))
    if not run_phase(run, deadline):
        return None
    for module in (unet, image_encoder):
        module.eval().requires_grad_(False)
    scheduler = EulerDiscreteScheduler.from_config(scheduler_config(recipe))
    pipe = StableVideoDiffusionPipeline(
        unet=unet, vae=vae, image_encoder=image_encoder, scheduler=scheduler, feature_extractor=fe
    )
    with atomic_folder(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    logger.info("backbone: wrote %s", folder)
    return folder
