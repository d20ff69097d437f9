"""The recipe of a demo-model run: one JSON file (``recipe.json``), read by kfi_core's config reader
(:func:`kfi_core.training.config.read_config_file`, as training configs are) and checked into :class:`DemoRecipe`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from kfi_core.errors import TrainConfigError
from kfi_core.evaluation.procedural import EVAL_SEED_BASE
from kfi_core.training.config import TrainConfig, read_config_file

RECIPE = Path(__file__).resolve().parent / "recipe.json"  # the recipe that built the shipped demo model
PHASES = ("data", "vae", "decoder", "backbone", "adapter", "adapter_tune", "package")
# Training steps draw procedural seeds below TRAIN_SEED_LIMIT; the seeds from there up to EVAL_SEED_BASE are the
# VAE's validation clips and latent-statistics clips; EVAL_SEED_BASE and above are held out for docs/RESULTS.md.
TRAIN_SEED_LIMIT = EVAL_SEED_BASE - 1000
EASY_SEED_BASE = TRAIN_SEED_LIMIT // 2  # seeds of the easy clips (data_easy_clips): seed EASY_SEED_BASE + i
# seeds of the recoloured clips (an adapter_tune round's recolour_clips): seed RECOLOUR_SEED_BASE + i
RECOLOUR_SEED_BASE = EASY_SEED_BASE + (TRAIN_SEED_LIMIT - EASY_SEED_BASE) // 2
# seeds of the removal clips (a round's removal_clips): seed REMOVAL_SEED_BASE + i, up to TRAIN_SEED_LIMIT
REMOVAL_SEED_BASE = RECOLOUR_SEED_BASE + (TRAIN_SEED_LIMIT - RECOLOUR_SEED_BASE) // 2
PACKAGE_ADAPTER = "adapter.safetensors"  # the packaged model's default adapter (kfi_core.bundled.DEMO_ADAPTER)
_ROUND_KEYS = ("recolour_clips", "removal_clips", "package_as")  # a round's keys that are not TrainConfig fields
_PHASE_FIELDS = ("vae", "decoder", "backbone")  # the DemoRecipe fields that are PhaseConfigs


@dataclass
class PhaseConfig:
    """One phase's settings (vae, decoder or backbone)."""

    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-3
    warmup_steps: int = 50
    decay_fraction: float = 0.2  # the last fraction of steps decays the LR linearly to 10 %
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 25
    # vae and decoder only
    kl_weight: float = 1e-6
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    chroma_weight: float = 0.0  # extra MSE on chroma (RGB minus its grey): see vae.chroma_mse
    anchor_weight: float = 0.0  # latent channels 0-2 pulled toward the pooled RGB: see vae.colour_anchor_mse
    norm_reference: float = 0.0  # initialisation shift before the last GroupNorms: see vae.add_norm_reference
    crop_size: int = 0  # train on random square crops of this size (0 = whole frames): see data.random_crops
    crop_frames: int = 0  # ... and this many consecutive frames (0 = all)
    # backbone only
    p_mean: float = -0.5
    p_std: float = 1.4
    noise_aug_mean: float = -3.0
    noise_aug_std: float = 0.5
    cond_dropout_prob: float = 0.1
    # the image latent on frame 0 only (zeros on the others) for this fraction of samples: see backbone.backbone_inputs
    first_frame_only_prob: float = 0.0
    fps: int = 7
    motion_bucket_id: int = 127
    train_image_encoder: bool = True

    def check(self, name: str, num_frames: int, min_side: int) -> None:
        if self.steps < 0 or self.batch_size < 1 or not self.lr > 0 or self.checkpoint_every < 1:
            raise TrainConfigError(
                f"{name}: steps >= 0, batch_size >= 1, lr > 0 and checkpoint_every >= 1 "
                f"are needed; got {dataclasses.asdict(self)}."
            )
        for prob in ("cond_dropout_prob", "first_frame_only_prob"):
            if not 0.0 <= getattr(self, prob) <= 1.0:
                raise TrainConfigError(f"{name}.{prob}: got {getattr(self, prob)}; give a probability from 0 to 1.")
        if self.crop_size and not (self.crop_size % 8 == 0 and 8 <= self.crop_size <= min_side):
            raise TrainConfigError(
                f"{name}.crop_size: got {self.crop_size}; give 0 (whole frames) or a "
                f"multiple of 8 from 8 to {min_side}."
            )
        if not 0 <= self.crop_frames <= num_frames:
            raise TrainConfigError(
                f"{name}.crop_frames: got {self.crop_frames}; give 0 (all) or 1 to num_frames ({num_frames})."
            )
        if name == "decoder" and (self.anchor_weight or self.norm_reference):
            raise TrainConfigError(
                f"{name}.anchor_weight / norm_reference: the {name} phase keeps the encoder "
                "frozen and starts from the trained decoder; set them in the vae phase."
            )
        if name == "backbone" and (self.crop_size or self.crop_frames):  # whole clips only
            raise TrainConfigError(
                f"{name}.crop_size / crop_frames: only the vae phase trains on crops; the backbone needs whole clips."
            )
        for weight in ("chroma_weight", "anchor_weight"):
            if getattr(self, weight) < 0:
                raise TrainConfigError(
                    f"{name}.{weight}: got {getattr(self, weight)}; give a weight >= 0 (0 turns the term off)."
                )


@dataclass(frozen=True)
class TuneRound:
    """One round of the adapter_tune phase: kfi_core.training settings that change the adapter phase's, trained from the
    previous round's adapter (round 1: the adapter phase's) on the data clips plus ``recolour_clips`` recoloured
    ones and ``removal_clips`` removal ones."""

    number: int
    changes: dict
    recolour_clips: int = 0
    removal_clips: int = 0
    # the file name under which the package ships this round's adapter (None: not shipped, unless no round of the
    # recipe names one, when the last round ships as adapter.safetensors): see adapter.trained_adapters
    package_as: str | None = None

    @property
    def label(self) -> str:
        return f"adapter_tune round {self.number}"

    @property
    def data_folder(self) -> str:
        return "data_tune" if self.number == 1 else f"data_tune{self.number}"

    @property
    def adapter_folder(self) -> str:
        return "adapter_tuned" if self.number == 1 else f"adapter_tuned{self.number}"


@dataclass
class DemoRecipe:
    """Everything a demo-model run does. Loaded from JSON; keys starting with ``_`` are comments."""

    seed: int = 0
    num_frames: int = 8
    resolution: tuple[int, int] = (64, 64)
    data_clips: int = 600
    data_frames: int = 12  # frames per written clip (the adapter phase crops num_frames of them)
    # extra clips at the benchmark's "easy" preset, each showing its target with masks (data.training_easy_clip)
    data_easy_clips: int = 0
    vae: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=1500, lr=1e-3))
    backbone: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=3000, batch_size=2, lr=5e-4))
    # the VAE's decoder alone, encoder frozen (steps 0 = skip): see vae.train_decoder
    decoder: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=0))
    # kfi_core.training.config.TrainConfig fields (model/data/out are set here)
    adapter: dict = field(default_factory=dict)
    # the finished adapter fine-tuned further, in rounds (empty = skip): a list of sections, each the TrainConfig
    # fields that change the adapter phase's settings, plus recolour_clips, removal_clips and package_as
    adapter_tune: list = field(default_factory=list)
    scheduler: dict = field(default_factory=lambda: {"sigma_max": 80.0})  # overrides of SVD's scheduler config
    vae_config: dict = field(default_factory=dict)  # overrides of kfi_core.model.tiny.TINY_VAE_CONFIG
    # after the decoder phase, scale each latent channel to the same spread (an exact reparametrisation of the VAE)
    # before the backbone trains on it: see vae.balance_latent_channels
    balance_latents: bool = False

    def check(self) -> DemoRecipe:
        h, w = self.resolution
        if h % 64 or w % 64:
            raise TrainConfigError(f"resolution: got {h}x{w}; give multiples of 64 (VAE 4x down, UNet 2 levels).")
        if not 1 <= self.num_frames <= self.data_frames:
            raise TrainConfigError(
                f"num_frames {self.num_frames} / data_frames {self.data_frames}: need 1 <= num_frames <= data_frames."
            )
        if self.data_clips < 1 or self.data_clips > TRAIN_SEED_LIMIT:
            raise TrainConfigError(
                f"data_clips: got {self.data_clips}; give 1 .. {TRAIN_SEED_LIMIT} (seeds from "
                f"{TRAIN_SEED_LIMIT} are held out for validation and evaluation)."
            )
        if not 0 <= self.data_easy_clips <= RECOLOUR_SEED_BASE - EASY_SEED_BASE:
            raise TrainConfigError(
                f"data_easy_clips: got {self.data_easy_clips}; give 0 .. {RECOLOUR_SEED_BASE - EASY_SEED_BASE}."
            )
        self._check_adapter_tune()
        for name in _PHASE_FIELDS:
            getattr(self, name).check(name, self.num_frames, min(h, w))
        return self

    def _check_adapter_tune(self) -> None:
        if not isinstance(self.adapter_tune, list):
            raise TrainConfigError(
                f"adapter_tune: got {type(self.adapter_tune).__name__}; give a list of rounds, "
                "each an object of kfi_core.training settings (and recolour_clips, removal_clips, "
                "package_as)."
            )
        for i, section in enumerate(self.adapter_tune, start=1):
            if not isinstance(section, dict):
                raise TrainConfigError(
                    f"adapter_tune round {i}: got {type(section).__name__}; give an object "
                    "of kfi_core.training settings (and recolour_clips)."
                )
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        rooms = {
            "recolour_clips": REMOVAL_SEED_BASE - RECOLOUR_SEED_BASE,
            "removal_clips": TRAIN_SEED_LIMIT - REMOVAL_SEED_BASE,
        }
        for tune in self.tune_rounds():
            bad = sorted(set(tune.changes) - known)
            if bad:
                raise TrainConfigError(
                    f"{tune.label}: unknown key(s) {', '.join(bad)}; give kfi_core.training "
                    "settings "
                    "(TrainConfig fields), recolour_clips, removal_clips and package_as."
                )
            for key, room in rooms.items():
                value = getattr(tune, key)
                if not (isinstance(value, int) and 0 <= value <= room):
                    raise TrainConfigError(f"{tune.label}.{key}: got {value!r}; give 0 .. {room}.")
        self._check_package_as()

    def _check_package_as(self) -> None:
        named = [tune for tune in self.tune_rounds() if tune.package_as is not None]
        for tune in named:
            name = tune.package_as
            if not (
                isinstance(name, str)
                and name.endswith(".safetensors")
                and name == Path(name).name
                and not name.startswith(".")
            ):
                raise TrainConfigError(
                    f"{tune.label}.package_as: got {name!r}; give a file name ending in "
                    ".safetensors, no folder (e.g. adapter-removal.safetensors)."
                )
        names = [tune.package_as for tune in named]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise TrainConfigError(
                f"adapter_tune: package_as {', '.join(twice)} is given to more than one round; "
                "give each shipped adapter its own file name."
            )
        if named and PACKAGE_ADAPTER not in names:
            raise TrainConfigError(
                f"adapter_tune: rounds name the adapters the package ships (package_as) but none "
                f"is {PACKAGE_ADAPTER}, the model's default adapter; set package_as "
                f'"{PACKAGE_ADAPTER}" on the round that should be it.'
            )

    def tune_rounds(self) -> list[TuneRound]:
        """The adapter_tune phase's rounds, in order (none where the recipe has no adapter_tune section)."""
        return [
            TuneRound(
                i,
                {k: v for k, v in section.items() if k not in _ROUND_KEYS},
                recolour_clips=section.get("recolour_clips", 0),
                removal_clips=section.get("removal_clips", 0),
                package_as=section.get("package_as"),
            )
            for i, section in enumerate(self.adapter_tune, start=1)
        ]

    def tune_round(self, number: int) -> TuneRound:
        """Round ``number`` (from 1) of the adapter_tune phase; a :class:`TrainConfigError` past the recipe's rounds."""
        rounds = self.tune_rounds()
        if not 1 <= number <= len(rounds):
            raise TrainConfigError(f"adapter_tune: round {number} asked for; the recipe has {len(rounds)}.")
        return rounds[number - 1]


def _without_comments(values: dict) -> dict:
    return {k: v for k, v in values.items() if not k.startswith("_")}


def recipe_from_dict(data: dict, source: str = "recipe") -> DemoRecipe:
    """A checked recipe; keys starting with ``_`` (comments) are dropped here, at every level."""
    data = _without_comments(data)
    known = {f.name for f in dataclasses.fields(DemoRecipe)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TrainConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    phase_keys = {f.name for f in dataclasses.fields(PhaseConfig)}
    for name in _PHASE_FIELDS:
        if name in data:
            phase = _without_comments(data[name])
            bad = sorted(set(phase) - phase_keys)
            if bad:
                raise TrainConfigError(
                    f"{source}: {name}: unknown key(s) {', '.join(bad)}; known: {', '.join(sorted(phase_keys))}."
                )
            data[name] = PhaseConfig(**phase)
    for name in ("scheduler", "vae_config"):
        if name in data:
            data[name] = _without_comments(data[name])
    if isinstance(data.get("adapter_tune"), list):
        data["adapter_tune"] = [
            _without_comments(section) if isinstance(section, dict) else section for section in data["adapter_tune"]
        ]
    if "resolution" in data:
        data["resolution"] = tuple(data["resolution"])
    try:
        return DemoRecipe(**data).check()
    except TrainConfigError as err:  # name the file: the checks only know the setting
        raise TrainConfigError(f"{source}: {err}") from None


def load_recipe(path: str | os.PathLike = RECIPE) -> DemoRecipe:
    """Read and check a recipe file (JSON, or YAML with PyYAML), as training configs are read."""
    data = read_config_file(path, flag="--recipe", example=f"a recipe JSON such as {RECIPE}")
    if not isinstance(data, dict):
        raise TrainConfigError(
            f"--recipe {path}: the top level must be an object of settings, got {type(data).__name__}."
        )
    return recipe_from_dict(data, source=f"--recipe {path}")
