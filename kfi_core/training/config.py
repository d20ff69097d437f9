"""Training settings: :class:`TrainConfig` (every setting, with the paper's values as defaults where it gives them),
its stages, and the config files they come from.

A config is a JSON (or YAML) file of :class:`TrainConfig` fields (``configs/kfi_svd_xt.json`` is the paper's
recipe, ``configs/tiny.json`` a CPU smoke run); keys starting with ``_`` are comments; CLI flags override it
(:func:`apply_overrides`). :func:`read_config_file` is the one reader of such files, shared with the demo model's
recipe (research/demo_model/recipe.py). Options KFI removed (:data:`REMOVED_OPTIONS`) load while they hold their
"off" value and are refused otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfi_core.errors import TrainConfigError

logger = logging.getLogger(__name__)

MIXED_PRECISION = ("no", "fp16", "bf16")
YAML_SUFFIXES = (".yaml", ".yml")
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
    # with or without a keyframe: use the clip's own holes/ folder (kfi_core.training.data, step 6)
    hole_mask_prob: float = 0.0
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

    def check(self) -> TrainConfig:
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
            raise TrainConfigError(
                f"lora_lr: got {self.lora_lr!r}; give a positive learning rate for the LoRA "
                "weights, or leave it out to train them at lr."
            )
        if self.mixed_precision not in MIXED_PRECISION:
            raise TrainConfigError(
                f"mixed_precision: got {self.mixed_precision!r}; choose one of {', '.join(MIXED_PRECISION)}."
            )
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
            raise TrainConfigError(
                f"lr_decay_fraction: got {self.lr_decay_fraction!r}; give the last fraction of "
                "the steps (0 to 1) over which the learning rate decays to 10 %, or 0 for none."
            )
        if self.latent_channel_weights is not None and (
            not self.latent_channel_weights
            or not all(float(w) >= 0 for w in self.latent_channel_weights)
            or not any(float(w) > 0 for w in self.latent_channel_weights)
        ):
            raise TrainConfigError(
                f"latent_channel_weights: got {self.latent_channel_weights!r}; give one weight >= 0 "
                "per latent channel (4 for SVD), not all 0, or null for 1 each."
            )
        if not self.masked_loss_weight > 0:
            raise TrainConfigError(
                f"masked_loss_weight: got {self.masked_loss_weight!r}; give a positive weight "
                "(1 = no region weighting)."
            )
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
    data = check_removed_options(data, source)
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
                raise TrainConfigError(
                    f"{source}: stages[{i}] has unknown setting(s) {bad}; known: {sorted(stage_fields)}."
                )
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


def check_removed_options(data: dict, source: str) -> dict:
    """``data`` without the :data:`REMOVED_OPTIONS` that hold their "off" value (files written before the removal);
    a :class:`TrainConfigError` naming the option where one is on."""
    for name, (off, why) in REMOVED_OPTIONS.items():
        if name in data and data[name] != off:
            raise TrainConfigError(
                f"{source}: {name} = {data[name]!r}, but {why} from this KFI. Remove the setting "
                f"(or set it to {json.dumps(off)}), or use the KFI version that wrote it."
            )
    return {k: v for k, v in data.items() if k not in REMOVED_OPTIONS}


def read_config_file(
    path: str | os.PathLike, *, flag: str = "--config", example: str = "a JSON config such as configs/tiny.json"
) -> dict:
    """The settings object of a config file: JSON, or YAML (``.yaml``/``.yml``, needs PyYAML). ``flag`` names the
    argument that gave the file and ``example`` a file to give instead, in the :class:`TrainConfigError` raised for
    a missing or unparsable file."""
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"{flag} {path}: no such file. Give {example}.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in YAML_SUFFIXES:
        try:
            import yaml
        except ImportError as err:
            raise TrainConfigError(
                f"{flag} {path}: reading YAML needs PyYAML (pip install pyyaml); or write the file as JSON."
            ) from err
        parse, errors = yaml.safe_load, (yaml.YAMLError,)
    else:
        parse, errors = json.loads, (ValueError,)
    try:
        return parse(text)
    except errors as err:
        raise TrainConfigError(f"{flag} {path}: cannot parse it ({err}). Fix the syntax.") from err


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """Read a training config file: JSON, or YAML (``.yaml``/``.yml``, needs PyYAML)."""
    return config_from_dict(read_config_file(path), source=f"--config {path}")


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
        one = dataclasses.replace(
            first,
            steps=first.steps if steps is None else int(steps),
            resolution=tuple(first.resolution if resolution is None else resolution),
            name=first.name or "override",
        )
        if len(cfg.stages) > 1:
            logger.info(
                "--steps/--resolution given: training one stage of %d steps at %dx%d instead of the config's %d stages",
                one.steps,
                one.resolution[0],
                one.resolution[1],
                len(cfg.stages),
            )
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
