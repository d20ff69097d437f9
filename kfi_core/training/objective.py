"""The training objective of a KFI adapter: what trains (LoRA + the 12-channel input conv of SVD), on which inputs,
with which loss, at which learning rate; in EDM v-prediction.

**Objective.** For a clean clip with latents ``x0 = vae.encode(2 * frames - 1).mode() * scaling_factor``
[B, F, 4, h, w], a noise level ``ln(sigma) ~ N(P_mean, P_std^2)`` per clip and noise ``n ~ N(0, I)``:

    x_t = x0 + sigma * n
    v   = UNet([c_in * x_t | condition], c_noise(sigma), CLIP embedding, added_time_ids)
    D   = c_skip * x_t + c_out * v                       (kfi_core.inference.denoiser, EDM Table 1, sigma_data = 1)
    loss = mean over B, F, C, h, w of  W * w(sigma) * (D - x0)^2,   w(sigma) = (sigma^2 + 1) / sigma^2

with ``W = 1 + (masked_loss_weight - 1) * latent_mask`` (region-aware weighting; 1 everywhere by default).
Samples with a keyframe may draw ``ln(sigma)`` from their own ``N(keyframe_p_mean, keyframe_p_std^2)``
(each defaults to P_mean, P_std), because the keyframe decides the hole's content only where the noise hides
it, at high sigma.
Since ``w(sigma) = 1 / c_out^2``, this is exactly the v-MSE ``W * (v - v_target)^2`` with
``v_target = (x0 - c_skip * x_t) / c_out`` (= ``(n - sigma * x0) / sqrt(sigma^2 + 1)``); the code computes
this form, which stays well conditioned at small sigma (:func:`v_target`, :func:`kfi_loss`).

**Inputs exactly as inference builds them** (:func:`kfi_core.inference.window.sample_window_latents`): the
condition is :func:`kfi_core.inference.condition.encode_symmetric` of the masked clip (keyframe fully known) with SVD's
noise augmentation, concatenated *unscaled* after ``c_in * x_t``; ``timestep = sigma_to_timestep(sigma)``
(0.25 ln sigma); ``encoder_hidden_states`` the CLIP embedding of
:func:`~kfi_core.inference.condition.first_frame_for_embedding`; ``added_time_ids = [fps - 1, motion_bucket_id,
noise_aug_strength]``. With probability ``cond_dropout_prob`` a clip gets a zero embedding and zero condition
latents, the unconditional input that classifier-free guidance uses at inference (:class:`SVDDenoiser`).

**Determinism.** Every random draw of a sample (sigma, noise, dropout, augmentation strength and noise)
comes from a ``torch.Generator`` seeded by ``(seed, stage, sample number)`` (:func:`sample_generator`); the data
sample by the same numbers (:mod:`kfi_core.training.data`). Nothing depends on global RNG state, so a resumed run
repeats the uninterrupted one exactly.

**What trains.** Only the widened conv_in and the LoRA weights (:func:`setup_trainable_unet`), in fp32, on a stock
8-channel SVD img2vid base (:func:`load_base_model`); ``from_adapter`` starts them from an adapter file
(:func:`start_from_adapter`). The learning rate follows :func:`lr_scale` (warmup, constant, optional decay).
The defaults where the paper is silent are documented in :mod:`kfi_core.training.trainer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kfi_core.errors import AdapterMismatchError, TrainConfigError
from kfi_core.inference.condition import encode_frames, encode_symmetric, first_frame_for_embedding, prepare_clip
from kfi_core.inference.denoiser import edm_scalings, scale_model_input, sigma_to_timestep
from kfi_core.inference.window import latent_masks
from kfi_core.model.adapter import load_adapter, read_adapter_metadata
from kfi_core.model.conv_in import expand_conv_in
from kfi_core.model.encoders import encode_image_clip
from kfi_core.model.loading import load_kfi_model
from kfi_core.model.lora import add_lora, is_lora_parameter, mark_trainable
from kfi_core.training.config import TrainConfig

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- what trains


def setup_trainable_unet(unet, rank: int, alpha: float | None = None) -> int:
    """Widen conv_in to 12 channels, add LoRA, leave only LoRA and conv_in trainable; return that count."""

    expand_conv_in(unet)
    add_lora(unet, rank=rank, alpha=alpha)
    count = mark_trainable(unet)
    check_trainable(unet)
    return count


def start_from_adapter(model, config: TrainConfig) -> None:
    """Start the trainable weights from ``config.from_adapter`` (fine-tuning an adapter): the file is checked as any
    adapter load is (base model, frames, rank, keys, shapes; kfi_core.model.adapter.load_adapter) and its LoRA and
    conv_in
    tensors replace the fresh ones; a resumed run then overwrites them with its checkpoint's."""

    path = Path(config.from_adapter)
    if not path.is_file():
        raise TrainConfigError(
            f"from_adapter: {path}: no such file. Give an adapter .safetensors (a run's "
            "adapter.safetensors, or export-adapter's output), or leave it unset for a fresh "
            "adapter."
        )
    alpha = float(config.lora_alpha if config.lora_alpha is not None else config.rank)
    file_settings = read_adapter_metadata(path).lora_settings
    if (file_settings.rank, float(file_settings.alpha)) != (config.rank, alpha):
        raise TrainConfigError(
            f"from_adapter: {path} has LoRA rank {file_settings.rank} alpha "
            f"{file_settings.alpha:g}, "
            f"this run rank {config.rank} alpha {alpha:g}; set rank and lora_alpha to the file's."
        )
    try:
        load_adapter(model.unet, path, base_variant=model.variant, num_frames=model.num_frames, rank=config.rank)
    except AdapterMismatchError as err:
        raise TrainConfigError(f"from_adapter: {err}") from err
    check_trainable(model.unet)
    logger.info("trainable weights start from adapter %s", path)


def is_trainable_name(name: str) -> bool:

    return is_lora_parameter(name) or name.startswith("conv_in.")


def check_trainable(unet) -> None:
    """Raise AssertionError unless exactly the LoRA and conv_in parameters require grad (a bug otherwise)."""
    wrong = [n for n, p in unet.named_parameters() if p.requires_grad != is_trainable_name(n)]
    if wrong:
        raise AssertionError(
            f"trainable parameters: {len(wrong)} parameters have the wrong requires_grad, e.g. "
            f"{wrong[:3]}; only LoRA and conv_in may train"
        )


def optimizer_groups(unet, config: TrainConfig) -> list[dict]:
    """AdamW parameter groups: every trainable parameter at ``lr``, or, with ``lora_lr`` set, conv_in at ``lr``
    and the LoRA weights at ``lora_lr`` (a slower LoRA keeps more of what the frozen UNet does)."""

    params = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    if config.lora_lr is None:
        return [{"params": [p for _, p in params]}]
    lora = [p for n, p in params if is_lora_parameter(n)]
    others = [p for n, p in params if not is_lora_parameter(n)]  # conv_in (check_trainable allows nothing else)
    return [{"params": others, "lr": config.lr}, {"params": lora, "lr": config.lora_lr}]


def trainable_state_dict(unet) -> dict[str, torch.Tensor]:
    """Name -> parameter for every trainable parameter (live tensors, not copies)."""
    return {n: p for n, p in unet.named_parameters() if is_trainable_name(n)}


def load_base_model(path, num_frames: int | None = None):
    """The stock SVD img2vid model (8-channel UNet) an adapter trains on; refuse any other."""

    model = load_kfi_model(path, num_frames=num_frames)
    if model.in_channels != 8:
        raise TrainConfigError(
            f"--model {path}: the UNet takes {model.in_channels} input channels; training "
            "starts from a stock SVD img2vid model (8 channels)."
        )
    return model


# --------------------------------------------------------------------------- objective


def sample_generator(seed: int, stage: int, sample: int) -> torch.Generator:
    """The CPU generator of one training sample (sigma, noise, dropout, augmentation)."""
    state = np.random.SeedSequence([int(seed), int(stage), int(sample)]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def v_target(x0: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The v the network should output: ``(x0 - c_skip * x_t) / c_out`` (so that D(x_t) = x0)."""

    c_skip, c_out, _ = edm_scalings(sigma)
    return (x0 - c_skip * x_t) / c_out


def kfi_loss(
    v: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """mean(W * (v - v_target)^2) = mean(W * w(sigma) * (D - x0)^2), w = (sigma^2 + 1) / sigma^2.

    ``sigma`` broadcasts against the latents ([B, 1, 1, 1, 1]); ``weight`` W likewise (None = 1).
    """
    err = (v.float() - v_target(x0, x_t, sigma)) ** 2
    if weight is not None:
        err = err * weight
    return err.mean()


@dataclass
class UNetInputs:
    """One batch ready for the UNet, plus what the loss and the log need."""

    model_in: torch.Tensor  # [B, F, 4 + 8, h, w]: c_in * x_t | condition
    timestep: torch.Tensor  # [B]: 0.25 ln sigma
    encoder_hidden_states: torch.Tensor  # [B, 1, D]
    added_time_ids: torch.Tensor  # [B, 3]
    x0: torch.Tensor  # [B, F, 4, h, w]
    x_t: torch.Tensor  # [B, F, 4, h, w]
    sigma: torch.Tensor  # [B]
    weight: torch.Tensor | None  # region [B, F, 1, h, w] and/or channel [1, 1, C, 1, 1] loss weight, or None
    dropped: torch.Tensor  # [B] bool: conditioning dropped (unconditional)


@torch.no_grad()
def build_unet_inputs(
    model, batch: dict, config: TrainConfig, generators: list[torch.Generator], device: torch.device
) -> UNetInputs:
    """Encode a batch the way inference does (see the module docstring). No gradients flow here."""

    scaling = float(model.vae.config.scaling_factor)
    latent_channels = int(model.vae.config.latent_channels)
    items = {k: [] for k in ("x0", "noise", "sigma", "cond", "emb", "ids", "lmask", "drop")}
    for b, gen in enumerate(generators):
        kf = int(batch["keyframe_index"][b])
        clip = prepare_clip(batch["frames"][b], batch["masks"][b], keyframe_indices=[kf] if kf >= 0 else [])
        # draws in a fixed order from the sample's own generator
        p_mean, p_std = config.p_mean, config.p_std
        if kf >= 0:
            p_mean = p_mean if config.keyframe_p_mean is None else config.keyframe_p_mean
            p_std = p_std if config.keyframe_p_std is None else config.keyframe_p_std
        sigma = torch.exp(p_mean + p_std * torch.randn((), generator=gen))
        if config.noise_aug_strength is None:
            aug = float(torch.exp(config.noise_aug_mean + config.noise_aug_std * torch.randn((), generator=gen)))
        else:
            aug = float(config.noise_aug_strength)
        drop = bool(torch.rand((), generator=gen) < config.cond_dropout_prob)
        cond = encode_symmetric(
            model.vae, clip, noise_aug_strength=aug, generator=gen, chunk_size=config.encode_chunk_size
        )  # [1, F, 8, h, w]
        h, w = cond.shape[-2:]
        noise = torch.randn((clip.num_frames, latent_channels, h, w), generator=gen)
        x0 = encode_frames(model.vae, clip.frames.float() * 2.0 - 1.0, config.encode_chunk_size).float() * scaling
        emb = encode_image_clip(
            model.image_encoder, model.feature_extractor, first_frame_for_embedding(clip)[None].float()
        )  # [1, 1, D]
        if drop:  # SVD's unconditional input: zero image embedding and zero condition latents
            cond, emb = torch.zeros_like(cond), torch.zeros_like(emb)
        items["x0"].append(x0.cpu())
        items["noise"].append(noise)
        items["sigma"].append(sigma)
        items["cond"].append(cond[0].float().cpu())
        items["emb"].append(emb[0].float().cpu())
        items["ids"].append(torch.tensor([config.fps - 1, config.motion_bucket_id, aug], dtype=torch.float32))
        items["lmask"].append(latent_masks(clip.masks, model.vae_scale_factor)[0])  # [F, 1, h, w]
        items["drop"].append(drop)

    x0 = torch.stack(items["x0"]).to(device)  # [B, F, 4, h, w]
    noise = torch.stack(items["noise"]).to(device)
    sigma = torch.stack(items["sigma"]).float().to(device)  # [B]
    sigma5 = sigma.reshape(-1, 1, 1, 1, 1)  # [B] -> [B, 1, 1, 1, 1]
    x_t = x0 + sigma5 * noise
    cond = torch.stack(items["cond"]).to(device)  # [B, F, 8, h, w], not scaled by c_in (as SVD)
    model_in = torch.cat([scale_model_input(x_t, sigma5), cond], dim=2)  # [B, F, 12, h, w]
    weight = None
    if config.masked_loss_weight != 1.0:
        lmask = torch.stack(items["lmask"]).to(device)  # [B, F, 1, h, w]
        weight = 1.0 + (config.masked_loss_weight - 1.0) * lmask
    if config.latent_channel_weights is not None:
        if len(config.latent_channel_weights) != latent_channels:
            raise TrainConfigError(
                f"latent_channel_weights: got {len(config.latent_channel_weights)} weights but the "
                f"model's VAE has {latent_channels} latent channels; give one per channel."
            )
        per_channel = torch.tensor(config.latent_channel_weights, dtype=torch.float32, device=device)
        per_channel = per_channel.view(1, 1, latent_channels, 1, 1)  # [C] -> [1, 1, C, 1, 1]
        weight = per_channel if weight is None else weight * per_channel  # [B, F, C, h, w] or broadcastable
    return UNetInputs(
        model_in=model_in,
        timestep=sigma_to_timestep(sigma),
        encoder_hidden_states=torch.stack(items["emb"]).to(device),
        added_time_ids=torch.stack(items["ids"]).to(device),
        x0=x0,
        x_t=x_t,
        sigma=sigma,
        weight=weight,
        dropped=torch.tensor(items["drop"]),
    )


def compute_loss(unet, inputs: UNetInputs, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Run the UNet on ``inputs`` and return the scalar loss (:func:`kfi_loss`)."""
    v = unet(
        inputs.model_in.to(dtype),
        inputs.timestep,
        encoder_hidden_states=inputs.encoder_hidden_states.to(dtype),
        added_time_ids=inputs.added_time_ids.to(dtype),
        return_dict=False,
    )[0]
    return kfi_loss(v, inputs.x0, inputs.x_t, inputs.sigma.reshape(-1, 1, 1, 1, 1), inputs.weight)


# --------------------------------------------------------------------------- learning rate


def lr_scale(step: int, total: int, warmup: int, decay_fraction: float) -> float:
    """The learning rate's factor at optimizer step ``step`` (0-based) of ``total``: linear warmup over ``warmup``
    steps, constant, then a linear decay to 10 % over the last ``decay_fraction`` of the steps (annealing: the
    weights settle instead of ending wherever the last constant-rate steps left them)."""
    scale = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    decay_start = total * (1.0 - decay_fraction)
    if decay_fraction > 0 and step >= decay_start:
        scale *= 1.0 - 0.9 * min(1.0, (step - decay_start) / max(1.0, total - decay_start))
    return scale


def lr_lambda(config: TrainConfig):
    total, warmup, decay = config.total_steps, config.lr_warmup_steps, float(config.lr_decay_fraction)
    return lambda step: lr_scale(step, total, warmup, decay)
