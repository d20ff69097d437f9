"""Training a KFI adapter: LoRA + the 12-channel input conv of SVD, in EDM v-prediction.

Paper (VideoRepainter / KFI supplement A.2-A.4): only the widened input convolution and rank-32 LoRA on
the attention Q/K/V/out projections train; AdamW (beta 0.9 / 0.999) at lr 5e-5; first 45k steps at
320x576, then 5k at 576x1024 with gradient checkpointing; automatic mixed precision; batch 1 per GPU on
16 GPUs. ``configs/kfi_svd_xt.json`` is that recipe, ``configs/tiny.json`` a CPU smoke run.

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

**Inputs exactly as inference builds them** (:func:`kfi_core.inference.propagate.sample_window_latents`): the
condition is :func:`kfi_core.inference.condition.encode_symmetric` of the masked clip (keyframe fully known) with SVD's
noise augmentation, concatenated *unscaled* after ``c_in * x_t``; ``timestep = sigma_to_timestep(sigma)``
(0.25 ln sigma); ``encoder_hidden_states`` the CLIP embedding of
:func:`~kfi_core.inference.condition.first_frame_for_embedding`; ``added_time_ids = [fps - 1, motion_bucket_id,
noise_aug_strength]``. With probability ``cond_dropout_prob`` a clip gets a zero embedding and zero condition
latents, the unconditional input that classifier-free guidance uses at inference (:class:`SVDDenoiser`).

Defaults where the paper is silent (all in :class:`TrainConfig`): ``P_mean = 0.7, P_std = 1.6`` (the
SVD image-to-video fine-tuning setting used by the community SVD fine-tuning scripts, e.g. SVD_Xtend's
``train_svd.py``; more noise than EDM's image default -1.2 / 1.2, as video needs);
noise augmentation ``ln(aug) ~ N(-3.0, 0.5^2)`` (sgm's SVD training, median 0.05; inference uses 0.02);
``cond_dropout_prob = 0.1``; weight decay 0.01 (torch's AdamW default); gradient clipping at norm 1.0;
fps 7 and motion bucket 127 (inference defaults); constant LR, no warmup (``lr_warmup_steps`` and
``lr_decay_fraction``, a linear decay to 10 % at the end, are opt-in; the demo recipe anneals its last 2,000
steps; research/demo_model/NOTES.md, 'Longer adapter runs').

**Determinism.** Every random draw of a sample (sigma, noise, dropout, augmentation strength and noise)
comes from a ``torch.Generator`` seeded by ``(seed, stage, sample number)``; the data sample by the
same numbers (:mod:`kfi_core.training.data`). Nothing depends on global RNG state, so a resumed run repeats the
uninterrupted one exactly, and checkpoints need no RNG state. A checkpoint holds no pickle: the trainable
weights and AdamW's state are safetensors (:mod:`kfi_core.training.optim_state`), the step, LR schedule and settings
JSON.

**Fine-tuning.** ``from_adapter`` starts LoRA and conv_in from an adapter file (checked as any adapter load is,
:func:`kfi_core.model.adapter.load_adapter`) instead of LoRA B = 0 and zero new conv_in channels; the optimizer starts
fresh. The file is read only when the run starts; a resumed run takes its weights from the checkpoint.

The script goes in stages: :func:`train` calls setup (accelerator, model, trainable parameters,
optimizer), resume, the loop per stage (:func:`run_stage`), checkpoints, validation and the final adapter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kfi_core.errors import KfiError, ResumeError, TrainConfigError
from kfi_core.training.optim_state import load_optimizer, load_scheduler_state, save_optimizer, scheduler_state

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_FORMAT = "kfi-train-checkpoint"
CHECKPOINT_FORMAT_VERSION = 2  # 1 (before 2026-12) went through accelerate's save_state, with pickles
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "training_state.json"  # written last: its presence marks a complete checkpoint
LOG_FILE = "train_log.jsonl"
ADAPTER_FILE = "adapter.safetensors"
MIXED_PRECISION = ("no", "fp16", "bf16")
# Settings that shape the trajectory: resuming with other values would not continue the same run.
RESUME_FINGERPRINT_KEYS = ("seed", "rank", "lora_alpha", "lora_lr", "p_mean", "p_std", "frame_stride",
                           "keyframe_prob", "cond_dropout_prob", "masked_loss_weight",
                           "keyframe_p_mean", "keyframe_p_std", "latent_channel_weights")
# Options removed from KFI, with the value that means "off": a saved config or checkpoint holding that value loads
# (the key is dropped); any other value is refused with the reason (research/demo_model/NOTES.md has the history).
REMOVED_OPTIONS = {
    "reference_attention": (False, "reference attention was measured to gain nothing and removed"),
    "repeat_noise_every": (0, "repeating noise draws served one probe and was removed"),
}


# --------------------------------------------------------------------------- config


@dataclass
class StageConfig:
    """One stage of the resolution schedule."""

    steps: int  # optimizer steps in this stage
    resolution: tuple[int, int]  # (height, width) in pixels
    batch_size: int = 1  # clips per process per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    gradient_checkpointing: bool = False
    name: str = ""


@dataclass
class TrainConfig:
    """Every training setting. Loaded from a JSON (or YAML) file by :func:`load_train_config`; CLI flags
    override it (:func:`apply_overrides`). Keys starting with ``_`` in the file are comments."""

    model: str | None = None  # base model: diffusers folder or single-file checkpoint
    data: str | None = None  # dataset folder (kfi_core.training.data)
    out: str | None = None  # output folder: checkpoints/, validation/, train_log.jsonl, adapter.safetensors
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig(steps=1000, resolution=(320, 576))])
    seed: int = 0
    # adapter
    rank: int = 32
    lora_alpha: float | None = None  # None = rank (scale 1)
    from_adapter: str | None = None  # start from this adapter file's LoRA and conv_in (fine-tuning); None = fresh
    # optimizer (paper: AdamW, lr 5e-5, betas 0.9 / 0.999)
    lr: float = 5e-5
    lora_lr: float | None = None  # the LoRA weights' learning rate; None = lr (conv_in always trains at lr)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 1e-2
    lr_warmup_steps: int = 0
    lr_decay_fraction: float = 0.0  # linear decay to 10 % of lr over this last fraction of the steps (0 = constant)
    max_grad_norm: float = 1.0  # 0 = no clipping
    mixed_precision: str = "no"  # no | fp16 | bf16 (accelerate autocast; always fp32 on CPU)
    # objective
    p_mean: float = 0.7
    p_std: float = 1.6
    keyframe_p_mean: float | None = None  # ln(sigma) mean for samples with a keyframe; None = p_mean
    keyframe_p_std: float | None = None  # ln(sigma) spread for samples with a keyframe; None = p_std
    noise_aug_mean: float = -3.0  # ln(noise_aug_strength) ~ N(mean, std^2)
    noise_aug_std: float = 0.5
    noise_aug_strength: float | None = None  # a fixed strength instead of the log-normal draw
    fps: int = 7
    motion_bucket_id: int = 127
    cond_dropout_prob: float = 0.1
    masked_loss_weight: float = 1.0  # loss weight inside the (latent) mask; 1 = plain loss
    # loss weight per latent channel (None = 1 each, as SVD trains): a VAE whose channels differ in spread (the demo
    # VAE's colour channels 0-2 have about a twelfth of channel 3's) otherwise trains on its widest channel alone
    latent_channel_weights: tuple[float, ...] | None = None
    # data
    frame_stride: int = 1
    crop_scale: tuple[float, float] = (0.8, 1.0)
    keyframe_prob: float = 0.5
    track_mask_prob: float = 0.0  # with a keyframe: use the clip's own masks/ folder (kfi_core.training.data, step 5)
    hole_mask_prob: float = 0.0  # with or without a keyframe: use the clip's own holes/ folder (kfi_core.training.data, step 6)
    mask: dict = field(default_factory=dict)  # kfi_core.training.mask_synthesis.MaskConfig fields
    cache_data: bool = False
    num_workers: int = 0
    encode_chunk_size: int = 8
    # bookkeeping
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    validate_every: int = 0  # 0 = no validation videos
    validation_steps: int = 4
    log_every: int = 1
    resume: str | None = None  # None, "latest" or a checkpoint folder

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def final_resolution(self) -> tuple[int, int]:
        return tuple(self.stages[-1].resolution)

    def check(self) -> "TrainConfig":
        """Raise :class:`TrainConfigError` for any value training cannot use."""
        if not self.stages:
            raise TrainConfigError("stages: the schedule is empty; give at least one stage with steps and resolution.")
        for i, stage in enumerate(self.stages):
            where = f"stages[{i}]" + (f" ({stage.name})" if stage.name else "")
            _pos_int(f"{where}.steps", stage.steps, zero_ok=True)
            _pos_int(f"{where}.batch_size", stage.batch_size)
            _pos_int(f"{where}.grad_accum", stage.grad_accum)
            if len(stage.resolution) != 2:
                raise TrainConfigError(f"{where}.resolution: got {stage.resolution!r}; give [height, width].")
            for v in stage.resolution:
                _pos_int(f"{where}.resolution", v)
        if self.total_steps < 1:
            raise TrainConfigError("stages: every stage has 0 steps; give at least one step.")
        _pos_int("rank", self.rank)
        if not _positive_finite(self.lr):
            raise TrainConfigError(f"lr: got {self.lr!r}; give a positive learning rate (5e-5 is the paper's).")
        if self.lora_lr is not None and not _positive_finite(self.lora_lr):
            raise TrainConfigError(f"lora_lr: got {self.lora_lr!r}; give a positive learning rate for the LoRA "
                                   "weights, or leave it out to train them at lr.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise TrainConfigError(f"mixed_precision: got {self.mixed_precision!r}; choose one of "
                                   f"{', '.join(MIXED_PRECISION)}.")
        for name in ("p_mean", "keyframe_p_mean"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(float(value)):
                raise TrainConfigError(f"{name}: got {value!r}; give a finite mean of ln(sigma) (0.7).")
        for name in ("p_std", "keyframe_p_std"):
            value = getattr(self, name)
            if value is not None and not float(value) > 0:
                raise TrainConfigError(f"{name}: got {value!r}; give a positive spread of ln(sigma) (1.6).")
        for name in ("cond_dropout_prob", "keyframe_prob", "track_mask_prob", "hole_mask_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise TrainConfigError(f"{name}: got {getattr(self, name)!r}; give a probability from 0 to 1.")
        if not 0.0 <= float(self.lr_decay_fraction) <= 1.0:
            raise TrainConfigError(f"lr_decay_fraction: got {self.lr_decay_fraction!r}; give the last fraction of "
                                   "the steps (0 to 1) over which the learning rate decays to 10 %, or 0 for none.")
        if self.latent_channel_weights is not None and (
                not self.latent_channel_weights or not all(float(w) >= 0 for w in self.latent_channel_weights)
                or not any(float(w) > 0 for w in self.latent_channel_weights)):
            raise TrainConfigError(f"latent_channel_weights: got {self.latent_channel_weights!r}; give one weight >= 0 "
                                   "per latent channel (4 for SVD), not all 0, or null for 1 each.")
        if not self.masked_loss_weight > 0:
            raise TrainConfigError(f"masked_loss_weight: got {self.masked_loss_weight!r}; give a positive weight "
                                   "(1 = no region weighting).")
        for name in ("checkpoint_every", "validate_every", "lr_warmup_steps", "num_workers"):
            _pos_int(name, getattr(self, name), zero_ok=True)
        for name in ("keep_checkpoints", "validation_steps", "log_every", "frame_stride", "encode_chunk_size"):
            _pos_int(name, getattr(self, name))
        if self.resume is not None and not str(self.resume).strip():
            raise TrainConfigError("resume: got an empty value; give 'latest' or a checkpoint folder.")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _positive_finite(value: Any) -> bool:
    return value > 0 and math.isfinite(value)


def _pos_int(name: str, value: Any, zero_ok: bool = False) -> None:
    lo = 0 if zero_ok else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise TrainConfigError(f"{name}: got {value!r}; give a whole number >= {lo}.")


def _config_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def config_from_dict(data: dict, source: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig` from a plain dict; unknown keys raise (keys starting with ``_`` are comments)."""
    if not isinstance(data, dict):
        raise TrainConfigError(f"{source}: the top level must be an object of settings, got {type(data).__name__}.")
    fields = _config_fields(TrainConfig)
    data = {k: v for k, v in data.items() if not str(k).startswith("_")}
    data = _check_removed_options(data, source)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TrainConfigError(f"{source}: unknown setting(s) {unknown}; known settings: {sorted(fields)}.")
    kwargs = dict(data)
    if "stages" in kwargs:
        stage_fields = _config_fields(StageConfig)
        stages = []
        for i, stage in enumerate(kwargs["stages"] or []):
            stage = {k: v for k, v in dict(stage).items() if not str(k).startswith("_")}
            bad = sorted(set(stage) - set(stage_fields))
            if bad:
                raise TrainConfigError(f"{source}: stages[{i}] has unknown setting(s) {bad}; known: "
                                       f"{sorted(stage_fields)}.")
            if "steps" not in stage or "resolution" not in stage:
                raise TrainConfigError(f"{source}: stages[{i}] needs 'steps' and 'resolution' ([height, width]).")
            stage["resolution"] = tuple(stage["resolution"])
            stages.append(StageConfig(**stage))
        kwargs["stages"] = stages
    for name in ("adam_betas", "crop_scale", "latent_channel_weights"):
        if kwargs.get(name) is not None:
            kwargs[name] = tuple(kwargs[name])
    try:
        return TrainConfig(**kwargs)
    except TypeError as err:
        raise TrainConfigError(f"{source}: {err}") from err


def _check_removed_options(data: dict, source: str) -> dict:
    """``data`` without the :data:`REMOVED_OPTIONS` that hold their "off" value (files written before the removal);
    a :class:`TrainConfigError` naming the option where one is on."""
    for name, (off, why) in REMOVED_OPTIONS.items():
        if name in data and data[name] != off:
            raise TrainConfigError(f"{source}: {name} = {data[name]!r}, but {why} from this KFI. Remove the setting "
                                   f"(or set it to {json.dumps(off)}), or use the KFI version that wrote it.")
    return {k: v for k, v in data.items() if k not in REMOVED_OPTIONS}


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """Read a training config file: JSON, or YAML (``.yaml``/``.yml``, needs PyYAML)."""
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"--config {path}: no such file. Give a JSON config such as configs/tiny.json.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as err:
                raise TrainConfigError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml); or "
                                       "write the config as JSON.") from err
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (ValueError, KfiError) as err:
        if isinstance(err, KfiError):
            raise
        raise TrainConfigError(f"--config {path}: cannot parse it ({err}). Fix the syntax.") from err
    return config_from_dict(data, source=f"--config {path}")


def parse_resolution(text: str) -> tuple[int, int]:
    """'320x576' -> (320, 576) (height x width)."""
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise TrainConfigError(f"--resolution: got {text!r}; give HEIGHTxWIDTH in pixels, e.g. 320x576 or 64x64.")
    return int(parts[0]), int(parts[1])


def apply_overrides(config: TrainConfig, **overrides) -> TrainConfig:
    """Return a copy of ``config`` with the given (not None) settings replaced.

    ``steps`` and ``resolution`` replace the stage schedule by a single stage (keeping the first stage's
    other settings); ``batch_size``, ``grad_accum`` and ``gradient_checkpointing`` apply to every stage.
    Other names are :class:`TrainConfig` fields.
    """
    cfg = dataclasses.replace(config, stages=[dataclasses.replace(s) for s in config.stages])
    given = {k: v for k, v in overrides.items() if v is not None}
    steps, resolution = given.pop("steps", None), given.pop("resolution", None)
    if steps is not None or resolution is not None:
        first = cfg.stages[0]
        one = dataclasses.replace(first, steps=first.steps if steps is None else int(steps),
                                  resolution=tuple(first.resolution if resolution is None else resolution),
                                  name=first.name or "override")
        if len(cfg.stages) > 1:
            logger.info("--steps/--resolution given: training one stage of %d steps at %dx%d instead of the "
                        "config's %d stages", one.steps, one.resolution[0], one.resolution[1], len(cfg.stages))
        cfg.stages = [one]
    for name in ("batch_size", "grad_accum", "gradient_checkpointing"):
        if name in given:
            value = given.pop(name)
            for stage in cfg.stages:
                setattr(stage, name, value)
    fields = _config_fields(TrainConfig)
    for name, value in given.items():
        if name not in fields:
            raise TrainConfigError(f"override {name}: not a training setting; known: {sorted(fields)}.")
        setattr(cfg, name, value)
    return cfg


def stage_at(config: TrainConfig, step: int) -> tuple[int, int]:
    """(stage index, the global step at which it starts) for the optimizer step ``step`` (0-based)."""
    start = 0
    for i, stage in enumerate(config.stages):
        if step < start + stage.steps:
            return i, start
        start += stage.steps
    return len(config.stages) - 1, start - config.stages[-1].steps


# --------------------------------------------------------------------------- model


def setup_trainable_unet(unet, rank: int, alpha: float | None = None) -> int:
    """Widen conv_in to 12 channels, add LoRA, leave only LoRA and conv_in trainable; return that count."""
    from kfi_core.model.conv_in import expand_conv_in
    from kfi_core.model.lora import add_lora, mark_trainable

    expand_conv_in(unet)
    add_lora(unet, rank=rank, alpha=alpha)
    count = mark_trainable(unet)
    check_trainable(unet)
    return count


def start_from_adapter(model, config: TrainConfig) -> None:
    """Start the trainable weights from ``config.from_adapter`` (fine-tuning an adapter): the file is checked as any
    adapter load is (base model, frames, rank, keys, shapes; kfi_core.model.adapter.load_adapter) and its LoRA and conv_in
    tensors replace the fresh ones; a resumed run then overwrites them with its checkpoint's."""
    from kfi_core.model.adapter import load_adapter, read_adapter_metadata
    from kfi_core.errors import AdapterMismatchError

    path = Path(config.from_adapter)
    if not path.is_file():
        raise TrainConfigError(f"from_adapter: {path}: no such file. Give an adapter .safetensors (a run's "
                               "adapter.safetensors, or export-adapter's output), or leave it unset for a fresh adapter.")
    alpha = float(config.lora_alpha if config.lora_alpha is not None else config.rank)
    file_settings = read_adapter_metadata(path).lora_settings
    if (file_settings.rank, float(file_settings.alpha)) != (config.rank, alpha):
        raise TrainConfigError(f"from_adapter: {path} has LoRA rank {file_settings.rank} alpha {file_settings.alpha:g}, "
                               f"this run rank {config.rank} alpha {alpha:g}; set rank and lora_alpha to the file's.")
    try:
        load_adapter(model.unet, path, base_variant=model.variant, num_frames=model.num_frames, rank=config.rank)
    except AdapterMismatchError as err:
        raise TrainConfigError(f"from_adapter: {err}") from err
    check_trainable(model.unet)
    logger.info("trainable weights start from adapter %s", path)


def is_trainable_name(name: str) -> bool:
    from kfi_core.model.lora import is_lora_parameter

    return is_lora_parameter(name) or name.startswith("conv_in.")


def check_trainable(unet) -> None:
    """Raise AssertionError unless exactly the LoRA and conv_in parameters require grad (a bug otherwise)."""
    wrong = [n for n, p in unet.named_parameters() if p.requires_grad != is_trainable_name(n)]
    if wrong:
        raise AssertionError(f"trainable parameters: {len(wrong)} parameters have the wrong requires_grad, e.g. "
                             f"{wrong[:3]}; only LoRA and conv_in may train")


def optimizer_groups(unet, config: TrainConfig) -> list[dict]:
    """AdamW parameter groups: every trainable parameter at ``lr``, or, with ``lora_lr`` set, conv_in at ``lr``
    and the LoRA weights at ``lora_lr`` (a slower LoRA keeps more of what the frozen UNet does)."""
    from kfi_core.model.lora import is_lora_parameter

    params = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    if config.lora_lr is None:
        return [{"params": [p for _, p in params]}]
    lora = [p for n, p in params if is_lora_parameter(n)]
    others = [p for n, p in params if not is_lora_parameter(n)]  # conv_in (check_trainable allows nothing else)
    return [{"params": others, "lr": config.lr}, {"params": lora, "lr": config.lora_lr}]


def trainable_state_dict(unet) -> dict[str, torch.Tensor]:
    """Name -> parameter for every trainable parameter (live tensors, not copies)."""
    return {n: p for n, p in unet.named_parameters() if is_trainable_name(n)}


# --------------------------------------------------------------------------- objective


def sample_generator(seed: int, stage: int, sample: int) -> torch.Generator:
    """The CPU generator of one training sample (sigma, noise, dropout, augmentation)."""
    state = np.random.SeedSequence([int(seed), int(stage), int(sample)]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def v_target(x0: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The v the network should output: ``(x0 - c_skip * x_t) / c_out`` (so that D(x_t) = x0)."""
    from kfi_core.inference.denoiser import edm_scalings

    c_skip, c_out, _ = edm_scalings(sigma)
    return (x0 - c_skip * x_t) / c_out


def kfi_loss(v: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor,
             weight: torch.Tensor | None = None) -> torch.Tensor:
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
def build_unet_inputs(model, batch: dict, config: TrainConfig, generators: list[torch.Generator],
                      device: torch.device) -> UNetInputs:
    """Encode a batch the way inference does (see the module docstring). No gradients flow here."""
    from kfi_core.inference.condition import encode_frames, encode_symmetric, first_frame_for_embedding, prepare_clip
    from kfi_core.inference.denoiser import scale_model_input, sigma_to_timestep
    from kfi_core.inference.propagate import latent_masks
    from kfi_core.evaluation.stock_pipeline import encode_image_clip

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
        cond = encode_symmetric(model.vae, clip, noise_aug_strength=aug, generator=gen,
                                chunk_size=config.encode_chunk_size)  # [1, F, 8, h, w]
        h, w = cond.shape[-2:]
        noise = torch.randn((clip.num_frames, latent_channels, h, w), generator=gen)
        x0 = encode_frames(model.vae, clip.frames.float() * 2.0 - 1.0, config.encode_chunk_size).float() * scaling
        emb = encode_image_clip(model.image_encoder, model.feature_extractor,
                                first_frame_for_embedding(clip)[None].float())  # [1, 1, D]
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
            raise TrainConfigError(f"latent_channel_weights: got {len(config.latent_channel_weights)} weights but the "
                                   f"model's VAE has {latent_channels} latent channels; give one per channel.")
        per_channel = torch.tensor(config.latent_channel_weights, dtype=torch.float32, device=device)
        per_channel = per_channel.view(1, 1, latent_channels, 1, 1)  # [C] -> [1, 1, C, 1, 1]
        weight = per_channel if weight is None else weight * per_channel  # [B, F, C, h, w] or broadcastable
    return UNetInputs(
        model_in=model_in, timestep=sigma_to_timestep(sigma), encoder_hidden_states=torch.stack(items["emb"]).to(device),
        added_time_ids=torch.stack(items["ids"]).to(device), x0=x0, x_t=x_t, sigma=sigma, weight=weight,
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


# --------------------------------------------------------------------------- checkpoints


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under OUT/checkpoints, oldest first."""
    root = out / "checkpoints"
    found = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit():
                found.append((int(p.name[len(CHECKPOINT_PREFIX):]), p))
    return sorted(found)


def resolve_resume(out: Path, resume: str) -> Path:
    """The checkpoint folder ``--resume`` names ('latest' = the newest in OUT/checkpoints)."""
    if str(resume) == "latest":
        found = list_checkpoints(out)
        if not found:
            raise ResumeError(
                f"--resume latest: there is no checkpoint in {out / 'checkpoints'}. Start a new run without "
                "--resume, or give the --out folder of the run to continue."
            )
        return found[-1][1]
    path = Path(resume)
    if not path.is_dir():
        raise ResumeError(f"--resume {path}: no such checkpoint folder. Give 'latest' or a folder "
                          f"{out / 'checkpoints' / (CHECKPOINT_PREFIX + '00001000')}-style path.")
    return path


def read_checkpoint_state(path: Path, what: str = "--resume") -> dict:
    """Check that a checkpoint folder is complete and return its training_state.json (``what`` names the argument
    that gave the folder, in errors)."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise ResumeError(f"{what} {path}: no {STATE_FILE}; the checkpoint is incomplete or not a KFI training "
                          "checkpoint. Resume from an earlier checkpoint (or 'latest').")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        step = int(state["step"])
        fmt = state["format"]
    except (ValueError, KeyError, TypeError) as err:
        raise ResumeError(f"{what} {path}: {STATE_FILE} is damaged ({err!r}). Resume from an earlier "
                          "checkpoint.") from err
    version = state.get("format_version")
    if fmt == CHECKPOINT_FORMAT and version == 1:
        raise ResumeError(f"{what} {path}: a format-1 checkpoint from an older KFI, which stored the optimizer as a "
                          "pickle; this KFI loads safetensors only. Start a new run, or finish this one with the "
                          "KFI version that wrote it.")
    if fmt != CHECKPOINT_FORMAT or version != CHECKPOINT_FORMAT_VERSION:
        raise ResumeError(f"{what} {path}: format {fmt!r} v{version}; this KFI reads "
                          f"{CHECKPOINT_FORMAT} v{CHECKPOINT_FORMAT_VERSION}.")
    missing = [n for n in (TRAINABLE_FILE, OPTIMIZER_FILE) if not (path / n).is_file()]
    if missing:
        raise ResumeError(f"{what} {path}: missing {', '.join(missing)} (step {step}). Resume from an earlier "
                          "checkpoint.")
    if "lr_scheduler" not in state:
        raise ResumeError(f"{what} {path}: {STATE_FILE} is damaged (no 'lr_scheduler'). Resume from an earlier "
                          "checkpoint.")
    return state


def resume_fingerprint(config: TrainConfig, world_size: int) -> dict:
    fp = {k: getattr(config, k) for k in RESUME_FINGERPRINT_KEYS}
    fp["world_size"] = world_size
    fp["stages"] = [[list(s.resolution), s.batch_size, s.grad_accum] for s in config.stages]
    return json.loads(json.dumps(fp))  # tuples -> lists, as read back from JSON


def check_resume_compatible(path: Path, state: dict, config: TrainConfig, world_size: int) -> None:
    saved, now = state.get("fingerprint", {}), resume_fingerprint(config, world_size)
    _check_removed_options(saved, f"--resume {path}")
    if saved.get("stages") and now["stages"][:len(saved["stages"])] == saved["stages"]:
        saved = {**saved, "stages": now["stages"]}  # stages may be appended, not changed
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in now if saved.get(k) != now[k]]
    if diff:
        raise ResumeError(f"--resume {path}: the run's settings changed, so resuming would not continue the same "
                          f"run: {'; '.join(diff)}. Use the original settings (steps may grow), or start a new run "
                          "in a new --out folder.")
    if int(state["step"]) > config.total_steps:
        raise ResumeError(f"--resume {path}: the checkpoint is at step {state['step']}, past the {config.total_steps} "
                          "steps configured. Raise --steps (or the stages' steps) to train further.")


def save_trainable(unet, path: Path) -> None:
    """Only the trainable (LoRA + conv_in) weights, fp32: the frozen UNet is the base model's."""
    from safetensors.torch import save_file

    save_file({n: p.detach().float().cpu().contiguous().clone() for n, p in trainable_state_dict(unet).items()},
              str(path))


def load_trainable(unet, path: Path, what: str = "--resume") -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path), device="cpu")
    params = trainable_state_dict(unet)
    if set(tensors) != set(params):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise ResumeError(f"{what} {path}: the trainable weights do not match this model (missing "
                          f"{missing[:3]}, unexpected {extra[:3]}); resume with the same base model and rank.")
    with torch.no_grad():
        for name, param in params.items():
            if tuple(tensors[name].shape) != tuple(param.shape):
                raise ResumeError(f"{what} {path}: {name} has shape {list(tensors[name].shape)}, the model "
                                  f"needs {list(param.shape)}; resume with the same base model and rank.")
            param.copy_(tensors[name])


def save_checkpoint(trainer: "Trainer", step: int, state: dict, keep: int) -> Path:
    """Write OUT/checkpoints/checkpoint-<step> atomically (temporary folder, then rename); keep the last ``keep``.

    The main process writes: data-parallel processes hold the same weights and optimizer state."""
    accelerator, out = trainer.accelerator, trainer.out
    final = checkpoint_dir(out, step)
    tmp = final.parent / f".tmp-{final.name}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_trainable(accelerator.unwrap_model(trainer.unet), tmp / TRAINABLE_FILE)
        save_optimizer(trainer.optimizer, tmp / OPTIMIZER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")  # last: marks completion
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------- log


class TrainLog:
    """OUT/train_log.jsonl: one JSON object per logged step; on resume, entries after the checkpoint go."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut off by a kill
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, entry: dict) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")


def read_train_log(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- validation


def mask_overlay(frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Frames [F, 3, H, W] with the masked region tinted red (half strength)."""
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return frames * (1 - 0.5 * masks) + red * 0.5 * masks


@torch.no_grad()
def render_validation(model, sample: dict, config: TrainConfig, path: Path, accelerator=None) -> Path:
    """Inpaint the validation clip with the current weights and write a grid video: input+mask | output."""
    from kfi_core.inference.condition import prepare_clip
    from kfi_core.inference.propagate import PropagateSettings, propagate
    from kfi_core.media.video import write_frames

    kf = int(sample["keyframe_index"])
    clip = prepare_clip(sample["frames"], sample["masks"], keyframe_indices=[kf] if kf >= 0 else [])
    settings = PropagateSettings(steps=config.validation_steps, seed=config.seed, fps=config.fps,
                                 motion_bucket_id=config.motion_bucket_id,
                                 noise_aug_strength=0.02 if config.noise_aug_strength is None
                                 else config.noise_aug_strength)
    was_training = model.unet.training
    model.unet.eval()
    try:
        ctx = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()
        with ctx:
            output = propagate(model, clip, settings)
    finally:
        model.unet.train(was_training)
    grid = torch.cat([mask_overlay(clip.frames.float(), clip.masks.float()), output], dim=3)  # [F, 3, H, 2W]
    return write_frames(grid, path, fps=float(config.fps))


# --------------------------------------------------------------------------- loop


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    samples_seen: int = 0  # data position: samples consumed by all processes in the current stage


@dataclass
class Trainer:
    """What the loop needs; built by :func:`setup`."""

    config: TrainConfig
    accelerator: Any
    model: Any  # KfiModel (unet unwrapped)
    unet: Any  # prepared (maybe DDP-wrapped) UNet
    optimizer: Any
    lr_scheduler: Any
    out: Path
    log: TrainLog
    weight_dtype: torch.dtype
    state: TrainState = field(default_factory=TrainState)
    losses: list[float] = field(default_factory=list)
    grads_checked: bool = False
    deadline: float | None = None  # time.monotonic() after which the run checkpoints and stops
    stopped: bool = False


def lr_scale(step: int, total: int, warmup: int, decay_fraction: float) -> float:
    """The learning rate's factor at optimizer step ``step`` (0-based) of ``total``: linear warmup over ``warmup``
    steps, constant, then a linear decay to 10 % over the last ``decay_fraction`` of the steps (annealing: the
    weights settle instead of ending wherever the last constant-rate steps left them)."""
    scale = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    decay_start = total * (1.0 - decay_fraction)
    if decay_fraction > 0 and step >= decay_start:
        scale *= 1.0 - 0.9 * min(1.0, (step - decay_start) / max(1.0, total - decay_start))
    return scale


def load_base_model(path, num_frames: int | None = None):
    """The stock SVD img2vid model (8-channel UNet) an adapter trains on; refuse any other."""
    from kfi_core.model.loading import load_kfi_model

    model = load_kfi_model(path, num_frames=num_frames)
    if model.in_channels != 8:
        raise TrainConfigError(f"--model {path}: the UNet takes {model.in_channels} input channels; training "
                               "starts from a stock SVD img2vid model (8 channels).")
    return model


def _lr_lambda(config: TrainConfig):
    total, warmup, decay = config.total_steps, config.lr_warmup_steps, float(config.lr_decay_fraction)
    return lambda step: lr_scale(step, total, warmup, decay)


def setup(config: TrainConfig):
    """Stages 1-4: accelerator, model, trainable parameters, optimizer and scheduler."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from kfi_core.model.loading import place_model
    from kfi_core.inference.propagate import check_size

    for name in ("model", "data", "out"):
        if not getattr(config, name):
            raise TrainConfigError(f"--{name}: missing; give the base model, the dataset folder and the output folder.")
    config.check()

    # 1. Accelerator: one process or many (accelerate launch / torchrun), mixed precision only on GPU
    cpu = not torch.cuda.is_available()
    mixed = config.mixed_precision
    if cpu and mixed != "no":
        logger.warning("mixed_precision=%s asked for, but there is no GPU: training in fp32 on CPU", mixed)
        mixed = "no"
    accelerator = Accelerator(mixed_precision=mixed, cpu=cpu)
    set_seed(config.seed)  # global RNGs (nothing below draws from them; kept for third-party code)
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed]

    # 2. Model: frozen VAE (fp32: SVD's VAE overflows in fp16) and CLIP; UNet frozen except the adapter
    model = load_base_model(config.model)
    for stage in config.stages:
        check_size(model, *stage.resolution)
    place_model(model, dtype=weight_dtype, vae_dtype=torch.float32, device=accelerator.device)

    # 3. Trainable parameters: 12-channel conv_in + LoRA, in fp32 even when the frozen weights are half
    count = setup_trainable_unet(model.unet, config.rank, config.lora_alpha)
    if config.from_adapter:
        start_from_adapter(model, config)
    for param in model.unet.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    model.unet.train()
    logger.info("training %d parameters (LoRA rank %d + conv_in) of %s on %d process(es), %s", count, config.rank,
                model.variant, accelerator.num_processes, str(accelerator.device))

    # 4. Optimizer (AdamW) and LR schedule (linear warmup, constant, lr_decay_fraction's decay), per optimizer step
    optimizer = torch.optim.AdamW(optimizer_groups(model.unet, config), lr=config.lr, betas=tuple(config.adam_betas),
                                  eps=config.adam_eps, weight_decay=config.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    unet, optimizer = accelerator.prepare(model.unet, optimizer)
    # the scheduler is not prepared: accelerate would step it once per process

    out = Path(config.out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return Trainer(config=config, accelerator=accelerator, model=model, unet=unet, optimizer=optimizer,
                   lr_scheduler=lr_scheduler, out=out, log=TrainLog(out / LOG_FILE, accelerator.is_main_process),
                   weight_dtype=weight_dtype)


def resume(trainer: Trainer) -> None:
    """Stage 5: load a checkpoint (``config.resume``) or refuse clearly; never restart silently."""
    cfg, acc = trainer.config, trainer.accelerator
    path = resolve_resume(trainer.out, cfg.resume)
    state = read_checkpoint_state(path)
    check_resume_compatible(path, state, cfg, acc.num_processes)
    try:
        load_trainable(acc.unwrap_model(trainer.unet), path / TRAINABLE_FILE)
        load_optimizer(trainer.optimizer, path / OPTIMIZER_FILE)
        load_scheduler_state(trainer.lr_scheduler, state["lr_scheduler"])
    except ResumeError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to read is a damaged checkpoint to the user
        raise ResumeError(f"--resume {path}: cannot load the checkpoint ({type(err).__name__}: {err}); it is "
                          "damaged. Resume from an earlier checkpoint.") from err
    trainer.state = TrainState(step=int(state["step"]), samples_seen=int(state["samples_seen"]))
    trainer.log.truncate_after(trainer.state.step)
    logger.info("resumed from %s at step %d", path, trainer.state.step)


def _dataset(config: TrainConfig, model, stage_index: int, *, validation: bool = False):
    from kfi_core.training.data import ClipDataset
    from kfi_core.training.mask_synthesis import MaskConfig

    stage = config.stages[stage_index]
    return ClipDataset(config.data, num_frames=model.num_frames, resolution=tuple(stage.resolution),
                       frame_stride=config.frame_stride, crop_scale=tuple(config.crop_scale),
                       keyframe_prob=config.keyframe_prob, mask_config=MaskConfig(**config.mask),
                       seed=(config.seed, stage_index, 1 if validation else 0), cache=config.cache_data,
                       track_mask_prob=config.track_mask_prob, hole_mask_prob=config.hole_mask_prob)


def _samples_per_step(config: TrainConfig, stage_index: int, world_size: int) -> int:
    stage = config.stages[stage_index]
    return stage.batch_size * stage.grad_accum * world_size


def run_stage(trainer: Trainer, stage_index: int, stage_start: int) -> None:
    """Stage 6: optimizer steps of one resolution stage, from ``trainer.state.step`` to the stage's end."""
    from kfi_core.training.data import StreamSampler, collate_samples

    cfg, acc, state = trainer.config, trainer.accelerator, trainer.state
    stage = cfg.stages[stage_index]
    stage_end = stage_start + stage.steps
    if state.step >= stage_end:
        return
    unwrapped = acc.unwrap_model(trainer.unet)
    if stage.gradient_checkpointing:
        unwrapped.enable_gradient_checkpointing()
    elif unwrapped.is_gradient_checkpointing:
        unwrapped.disable_gradient_checkpointing()
    per_step = _samples_per_step(cfg, stage_index, acc.num_processes)
    expected_seen = (state.step - stage_start) * per_step
    if state.samples_seen != expected_seen:  # a checkpoint from the previous stage's last step
        state.samples_seen = expected_seen
    dataset = _dataset(cfg, trainer.model, stage_index)
    sampler = StreamSampler(state.samples_seen, stage.batch_size, acc.process_index, acc.num_processes)
    loader = torch.utils.data.DataLoader(dataset, batch_size=stage.batch_size, sampler=sampler,
                                         num_workers=cfg.num_workers, collate_fn=collate_samples)
    batches = iter(loader)
    validation_sample = None
    logger.info("stage %d%s: steps %d..%d at %dx%d, batch %d x %d process(es) x %d accumulation%s", stage_index,
                f" ({stage.name})" if stage.name else "", state.step, stage_end, stage.resolution[0],
                stage.resolution[1], stage.batch_size, acc.num_processes, stage.grad_accum,
                ", gradient checkpointing" if stage.gradient_checkpointing else "")

    while state.step < stage_end:
        t0 = time.perf_counter()
        # 6a. micro-batches: gradients summed over grad_accum (each loss / grad_accum), synced on the last
        step_loss = torch.zeros((), device=acc.device)
        sigmas = []
        for micro in range(stage.grad_accum):
            batch = next(batches)
            first = state.samples_seen + (micro * acc.num_processes + acc.process_index) * stage.batch_size
            numbers = [first + j for j in range(stage.batch_size)]
            gens = [sample_generator(cfg.seed, stage_index, n) for n in numbers]
            inputs = build_unet_inputs(trainer.model, batch, cfg, gens, acc.device)
            sync = micro == stage.grad_accum - 1
            ctx = contextlib.nullcontext() if sync else acc.no_sync(trainer.unet)
            with ctx:
                with acc.autocast():
                    loss = compute_loss(trainer.unet, inputs, trainer.weight_dtype)
                acc.backward(loss / stage.grad_accum)
            if not torch.isfinite(loss):
                from kfi_core.errors import NonFiniteError

                raise NonFiniteError(f"training step {state.step + 1}: the loss is {float(loss)}; lower --lr, or use "
                                     "bf16 instead of fp16 (--mixed-precision bf16).")
            step_loss += loss.detach() / stage.grad_accum
            sigmas.append(inputs.sigma.detach())
        if not trainer.grads_checked:  # once per run: gradients reach the adapter and nothing else
            stray = [n for n, p in acc.unwrap_model(trainer.unet).named_parameters()
                     if p.grad is not None and not is_trainable_name(n)]
            if stray:
                raise AssertionError(f"gradients reached frozen parameters, e.g. {stray[:3]}")
            trainer.grads_checked = True
        # 6b. optimizer step
        if cfg.max_grad_norm > 0:
            acc.clip_grad_norm_([p for p in trainer.unet.parameters() if p.requires_grad], cfg.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.samples_seen += per_step

        # 6c. log (losses and sigmas averaged / gathered over processes)
        loss_all = acc.gather(step_loss[None]).mean()
        sigma_all = acc.gather(torch.cat(sigmas))
        trainer.losses.append(float(loss_all))
        if state.step % cfg.log_every == 0 or state.step == stage_end:
            trainer.log.write({
                "step": state.step, "stage": stage_index, "loss": float(loss_all),
                "lr": float(trainer.lr_scheduler.get_last_lr()[0]),
                "sigma_mean": float(sigma_all.mean()), "sigma_min": float(sigma_all.min()),
                "sigma_max": float(sigma_all.max()), "samples_seen": state.samples_seen,
                "step_time_s": round(time.perf_counter() - t0, 4),
            })
            logger.debug("step %d loss %.5f", state.step, float(loss_all))

        # 6d. checkpoint, 6e. validation video
        if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
            save_checkpoint(trainer, state.step, checkpoint_state(trainer, stage_index), cfg.keep_checkpoints)
        if cfg.validate_every and state.step % cfg.validate_every == 0:
            if acc.is_main_process:
                if validation_sample is None:
                    validation_sample = _dataset(cfg, trainer.model, stage_index, validation=True)[0]
                path = trainer.out / "validation" / f"step-{state.step:08d}.mp4"
                render_validation(trainer.model, validation_sample, cfg, path, acc)
                logger.info("wrote validation video %s", path)
            acc.wait_for_everyone()
        # 6f. out of time (train(..., deadline=...)): checkpoint now and stop; the same command resumes
        if trainer.deadline is not None and time.monotonic() > trainer.deadline and state.step < cfg.total_steps:
            if not (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0):
                save_checkpoint(trainer, state.step, checkpoint_state(trainer, stage_index),
                                cfg.keep_checkpoints)
            logger.info("time is up at step %d of %d: checkpoint saved; resume with --resume latest", state.step,
                        cfg.total_steps)
            trainer.stopped = True
            return


def checkpoint_state(trainer: Trainer, stage_index: int) -> dict:
    return {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
        "step": trainer.state.step, "stage": stage_index, "samples_seen": trainer.state.samples_seen,
        "world_size": trainer.accelerator.num_processes,
        "lr_scheduler": scheduler_state(trainer.lr_scheduler),
        "fingerprint": resume_fingerprint(trainer.config, trainer.accelerator.num_processes),
        "config": json.loads(json.dumps(trainer.config.to_dict(), default=str)),
    }


def save_run_adapter(unet, model, config: TrainConfig, path) -> Path:
    """The adapter file of a run with ``config`` on base ``model``: what the run writes at its end, and what
    :func:`export_checkpoint` writes for a checkpoint."""
    from kfi_core.model.adapter import save_adapter

    return save_adapter(unet, path, base_variant=model.variant, num_frames=model.num_frames,
                        training_resolution=tuple(int(v) for v in config.final_resolution))


def save_final_adapter(trainer: Trainer) -> Path | None:
    """Stage 7: OUT/adapter.safetensors (main process), loadable by load_kfi_model(..., adapter=...)."""
    acc = trainer.accelerator
    acc.wait_for_everyone()
    path = None
    if acc.is_main_process:
        path = save_run_adapter(acc.unwrap_model(trainer.unet), trainer.model, trainer.config,
                                trainer.out / ADAPTER_FILE)
    acc.wait_for_everyone()
    return path


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, *, model: str | None = None,
                      num_frames: int | None = None) -> Path:
    """Write a training checkpoint's LoRA and conv_in as an adapter file, the ``adapter.safetensors`` the run would
    have written had it ended at that step: to try a checkpoint while (or after) a long run trains.

    ``model`` is the base model the run trained on; by default the one its saved settings name."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise ResumeError(f"checkpoint {path}: no such folder. Give a checkpoint folder of a training run, such as "
                          f"OUT/checkpoints/{CHECKPOINT_PREFIX}00001000.")
    state = read_checkpoint_state(path, what="checkpoint")
    if not isinstance(state.get("config"), dict):
        raise ResumeError(f"checkpoint {path}: {STATE_FILE} holds no training settings; export needs the run's "
                          "LoRA rank and resolution. Use a checkpoint written by this KFI version.")
    config = config_from_dict(state["config"], source=f"{path / STATE_FILE} config")
    base = model or config.model
    if not base:
        raise TrainConfigError(f"checkpoint {path}: its settings name no base model; give --model.")
    kfi = load_base_model(base, num_frames=num_frames)
    setup_trainable_unet(kfi.unet, config.rank, config.lora_alpha)
    load_trainable(kfi.unet, path / TRAINABLE_FILE, what="checkpoint")
    written = save_run_adapter(kfi.unet, kfi, config, out)
    logger.info("exported %s (step %d) to %s", path, int(state["step"]), written)
    return written


def train(config: TrainConfig, deadline: float | None = None) -> Path | None:
    """Train an adapter as ``config`` says; return OUT/adapter.safetensors (None on non-main processes, and
    when ``deadline``, a ``time.monotonic()`` value, passed first: a checkpoint is saved to resume from; the
    deadline is meant for single-process runs such as the demo model's (research/demo_model), each process reads its own clock)."""
    trainer = setup(config)
    trainer.deadline = deadline
    if config.resume:
        resume(trainer)
    elif trainer.accelerator.is_main_process and list_checkpoints(trainer.out):
        logger.warning("%s already holds checkpoints; this new run will overwrite them as it goes. Pass --resume "
                       "latest to continue the old run instead.", trainer.out / "checkpoints")
    if trainer.accelerator.is_main_process and not config.resume:
        trainer.log.truncate_after(0)  # a new run starts a new log
        (trainer.out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))
    while trainer.state.step < config.total_steps:
        stage_index, stage_start = stage_at(config, trainer.state.step)
        run_stage(trainer, stage_index, stage_start)
        if trainer.stopped:
            trainer.accelerator.end_training()
            return None
    path = save_final_adapter(trainer)
    trainer.accelerator.end_training()
    return path
