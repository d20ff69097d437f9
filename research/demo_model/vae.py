"""Phases vae and decoder: the demo VAE trained from scratch (reconstruction through the temporal decoder, a tiny KL
term and the colour terms that made it keep colour), its ``scaling_factor`` measured, and the optional balancing of
its latent channels (an exact reparametrisation)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLTemporalDecoder

from kfi_core.errors import TrainConfigError
from kfi_core.evaluation.procedural import EVAL_SEED_BASE
from kfi_core.files import atomic_folder
from kfi_core.model.tiny import build_tiny_components

from .data import random_crops, step_generator, training_batch, training_clip
from .loop import PhaseRun, fingerprint, run_phase
from .recipe import DemoRecipe, PhaseConfig

logger = logging.getLogger(__name__)

_VAE_STREAM, _DECODER_STREAM = 12, 14
# under <out>/vae/; "balance" is not a phase but the finished VAE with its latent channels balanced (balance_latents)
_VAE_FOLDERS = {"vae": "final", "decoder": "decoder_final", "balance": "balanced"}


def new_components(recipe: DemoRecipe) -> dict:
    """Fresh random components of the demo architecture (kfi_core.model.tiny shapes, VAE widths from the recipe)."""
    return build_tiny_components(num_frames=recipe.num_frames, seed=recipe.seed, vae_config=recipe.vae_config)


def chroma_mse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the chroma of two ``[N, 3, H, W]`` images (each pixel's RGB minus the mean of its channels).

    A VAE trained on L1 + MSE alone learns brightness first (most of the pixel variance) and, on a few
    thousand CPU steps, can stall there: the demo's first VAE decoded every colour as grey. This term puts
    the colour error's gradient back at a weight the recipe chooses (``chroma_weight``).
    """
    return (((recon - recon.mean(1, keepdim=True)) - (target - target.mean(1, keepdim=True))) ** 2).mean()


def colour_anchor_mse(latent_mean: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """MSE between the first three latent channels of ``[N, C, h, w]`` and ``[N, 3, H, W]`` pixels (-1..1)
    average-pooled to ``h x w``.

    Anchors the latent to hold each cell's mean colour from the first step, so the decoder learns to read
    colour there instead of settling on brightness (NOTES.md, 'Why the keyframe cannot help yet'); the
    remaining channels stay free for detail. The anchor also makes the latent a small image, which is what
    the backbone's diffusion then models.
    """
    if latent_mean.shape[1] < 3:
        raise TrainConfigError(
            f"anchor_weight: the latent has {latent_mean.shape[1]} channels; the colour anchor "
            "needs 3 or more (vae_config latent_channels), or set anchor_weight to 0."
        )
    pooled = torch.nn.functional.adaptive_avg_pool2d(pixels, latent_mean.shape[-2:])
    return ((latent_mean[:, :3] - pooled) ** 2).mean()


@torch.no_grad()
def add_norm_reference(vae, value: float) -> None:
    """Initialisation: shift every other channel that feeds the encoder's and the decoder's last GroupNorm by
    ``value``, through the conv2 biases of their last residual blocks (the diffusers classes unchanged).

    GroupNorm(32) over 64 channels normalises 2 channels per group over the frame, so a flat region's absolute
    colour is divided away; with one channel of each group near ``value`` the group's spread is about
    ``value / 2`` whatever the frame holds, and colour passes through the norm almost linearly.
    """
    encoder_last = vae.encoder.mid_block.resnets[-1]
    encoder_last.conv2.bias[::2] += value * encoder_last.output_scale_factor
    decoder_last = vae.decoder.up_blocks[-1].resnets[-1]
    # the spatial block's shift passes through the temporal block's residual and the mixer (a convex mix)
    decoder_last.spatial_res_block.conv2.bias[::2] += value * decoder_last.spatial_res_block.output_scale_factor


def vae_loss(vae, clips: torch.Tensor, generator: torch.Generator, phase: PhaseConfig) -> tuple[torch.Tensor, dict]:
    """Reconstruction of clips [B, F, 3, H, W] in 0..1 through the temporal decoder (+ tiny KL)."""
    b, f = clips.shape[:2]
    pixels = clips.flatten(0, 1) * 2.0 - 1.0
    posterior = vae.encode(pixels).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    recon = vae.decode(z, num_frames=f).sample
    l1 = (recon - pixels).abs().mean()
    mse = ((recon - pixels) ** 2).mean()
    kl = posterior.kl().mean() / pixels[0].numel()
    loss = phase.l1_weight * l1 + phase.mse_weight * mse + phase.kl_weight * kl
    if phase.chroma_weight:
        loss = loss + phase.chroma_weight * chroma_mse(recon, pixels)
    if phase.anchor_weight:
        loss = loss + phase.anchor_weight * colour_anchor_mse(posterior.mean, pixels)
    psnr = float(10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10)))  # range 2 (-1..1)
    return loss, {"psnr": psnr}


@torch.no_grad()
def validation_psnr(vae, recipe: DemoRecipe, clips: int = 4) -> float:
    """Mean reconstruction PSNR (dB) of a few fixed clips that no training step draws (seeds above
    :data:`TRAIN_SEED_LIMIT`)."""
    h, w = recipe.resolution
    was_training = vae.training
    vae.eval()
    values = []
    for i in range(clips):
        pixels = training_clip(EVAL_SEED_BASE - 100 - i, recipe.num_frames, h, w) * 2.0 - 1.0
        recon = vae.decode(vae.encode(pixels).latent_dist.mode(), num_frames=recipe.num_frames).sample
        values.append(float(10 * torch.log10(4.0 / ((recon - pixels) ** 2).mean())))
    vae.train(was_training)
    return float(np.mean(values))


@torch.no_grad()
def statistics_latents(vae, recipe: DemoRecipe, clips: int = 16) -> torch.Tensor:
    """The unscaled latents ``[N, C, h, w]`` of the clips the VAE's statistics are measured on (seeds that no training
    step draws)."""
    h, w = recipe.resolution
    latents = []
    for i in range(clips):
        frames = training_clip(EVAL_SEED_BASE - 1 - i, recipe.num_frames, h, w)
        latents.append(vae.encode(frames * 2.0 - 1.0).latent_dist.mode())
    return torch.cat(latents)


def measure_latent_std(vae, recipe: DemoRecipe, clips: int = 16) -> float:
    return float(statistics_latents(vae, recipe, clips).std())


@torch.no_grad()
def balance_latent_channels(vae, gains: torch.Tensor) -> None:
    """Multiply latent channel ``c`` by ``gains[c]`` in place, an exact reparametrisation of the VAE: the encoder's
    ``quant_conv`` scales the posterior's mean by the gain (and its std, through the log-variance), the decoder's
    ``conv_in`` divides its input weights by it, so every decoded frame stays as it was.

    Why: one ``scaling_factor`` (all SVD supports) leaves channels of different spreads unequal, and the diffusion
    loss and noise see them so. The demo VAE's colour anchor makes channels 0-2 the pooled colours, about 12x
    narrower than channel 3 (NOTES.md, 'A sharper decoder shows what the adapter gets wrong'): noise drowns them at a
    small sigma and the loss barely weighs them.
    """
    c = vae.config.latent_channels
    if gains.shape != (c,) or not bool(torch.all(gains > 0)):
        raise TrainConfigError(f"balance_latent_channels: gains must be {c} positive numbers; got {gains.tolist()}.")
    gains = gains.to(vae.quant_conv.weight.dtype)
    vae.quant_conv.weight[:c] *= gains.view(-1, 1, 1, 1)
    vae.quant_conv.bias[:c] *= gains
    vae.quant_conv.bias[c:] += 2.0 * torch.log(gains)  # log-variance: the std scales with the mean
    vae.decoder.conv_in.weight /= gains.view(1, -1, 1, 1)


def balance_vae(recipe: DemoRecipe, vae, out: Path):
    """The finished VAE with every latent channel scaled to the widest channel's std on the statistics clips
    (:func:`balance_latent_channels`) and ``scaling_factor`` = 1 / the balanced latents' std; saved to
    ``<out>/vae/balanced`` (loaded from there when it exists). Deterministic: no training, no random draw."""
    final = vae_folder(out, "balance")
    if (final / "config.json").is_file():
        return AutoencoderKLTemporalDecoder.from_pretrained(final, use_safetensors=True)
    vae.eval()
    std = statistics_latents(vae, recipe).transpose(0, 1).flatten(1).std(dim=1)
    gains = std.max() / std
    balance_latent_channels(vae, gains)
    scaled = measure_latent_std(vae, recipe)
    vae.register_to_config(scaling_factor=1.0 / scaled)
    save_vae(vae, final)
    logger.info(
        "balance: latent std per channel %s -> gains %s, scaling_factor %.4f; saved %s",
        [round(float(v), 4) for v in std],
        [round(float(g), 3) for g in gains],
        1.0 / scaled,
        final,
    )
    return vae


def _vae_loss_fn(vae, recipe: DemoRecipe, phase_name: str, stream: int):
    """step -> (loss, extras) of the vae or decoder phase: the step's clips (random crops if the phase asks),
    :func:`vae_loss`, and the validation PSNR every 4 log intervals."""
    phase = getattr(recipe, phase_name)
    h, w = recipe.resolution

    def loss_fn(step: int):
        clips = training_batch(recipe.seed, stream, step, phase.batch_size, recipe.num_frames, h, w)
        generator = step_generator(recipe.seed, stream, step)
        if phase.crop_size or phase.crop_frames:
            clips = random_crops(clips, phase.crop_size, phase.crop_frames, generator)
        loss, extras = vae_loss(vae, clips, generator, phase)
        if (step + 1) % (4 * phase.log_every) == 0:
            extras["val_psnr"] = validation_psnr(vae, recipe)
        return loss, extras

    return loss_fn


def train_decoder(recipe: DemoRecipe, vae, out: Path, deadline: float | None):
    """Phase decoder: the VAE's decoder alone, its encoder and quant_conv frozen (``recipe.decoder``; 0 steps = the
    VAE as it is).

    The latents, and so everything the backbone and the adapter learn on them, stay exactly as the vae phase
    left them; only how they are decoded improves. The demo VAE needs it for colour: trained jointly, its
    encoder learns to keep colour (research/demo_model/bench/vae_colour.py's linear probe) well before its decoder
    shows it.
    Returns the VAE with the new decoder (saved to ``<out>/vae/decoder_final``), or None if out of time."""
    if recipe.decoder.steps == 0:
        return vae
    final = vae_folder(out, "decoder")
    if (final / "config.json").is_file():
        return AutoencoderKLTemporalDecoder.from_pretrained(final, use_safetensors=True)
    vae.train()
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    run = PhaseRun(
        "decoder",
        final.parent / "decoder",
        recipe.decoder,
        {"decoder": vae.decoder},
        _vae_loss_fn(vae, recipe, "decoder", _DECODER_STREAM),
        fingerprint(recipe, "decoder"),
    )
    if not run_phase(run, deadline):
        return None
    vae.eval().requires_grad_(True)
    save_vae(vae, final)  # scaling_factor unchanged: the latents are the same
    logger.info("decoder: saved %s", final)
    return vae


def save_vae(vae, final: Path) -> None:
    """Save a finished VAE as a diffusers folder, atomically: its config.json marks the phase finished, so a folder
    cut off half-written must never appear under that name."""
    with atomic_folder(final) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)


def vae_folder(out: Path, phase_name: str) -> Path:
    """Where the ``vae`` or ``decoder`` phase (or the balancing, ``"balance"``) saves its finished VAE."""
    return out / "vae" / _VAE_FOLDERS[phase_name]


def finished_vae_folder(recipe: DemoRecipe, out: Path) -> Path:
    """Where the vae (and decoder) phases, and the balancing where the recipe asks, left the VAE the backbone was
    trained on."""
    if recipe.balance_latents:
        return vae_folder(out, "balance")
    return vae_folder(out, "decoder" if recipe.decoder.steps else "vae")


def train_vae(recipe: DemoRecipe, out: Path, deadline: float | None):
    """Phase vae: returns the trained VAE with ``scaling_factor`` = 1 / latent std, or None if out of time."""
    final = vae_folder(out, "vae")
    if (final / "config.json").is_file():
        return AutoencoderKLTemporalDecoder.from_pretrained(final, use_safetensors=True)
    vae = new_components(recipe)["vae"].train()
    if recipe.vae.norm_reference:
        add_norm_reference(vae, recipe.vae.norm_reference)  # a resumed checkpoint overwrites it, as it should

    run = PhaseRun(
        "vae",
        out / "vae",
        recipe.vae,
        {"vae": vae},
        _vae_loss_fn(vae, recipe, "vae", _VAE_STREAM),
        fingerprint(recipe, "vae"),
    )
    if not run_phase(run, deadline):
        return None
    vae.eval()
    std = measure_latent_std(vae, recipe)
    vae.register_to_config(scaling_factor=1.0 / std)
    save_vae(vae, final)
    logger.info("vae: latent std %.4f -> scaling_factor %.4f; saved %s", std, 1.0 / std, final)
    return vae
