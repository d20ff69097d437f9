"""Train the demo model from scratch on procedural clips: VAE, then backbone, then the KFI adapter.

No SVD weights can be downloaded where KFI is built, so the project proves its method end to end at
small scale: a small model of the real architecture (diffusers' AutoencoderKLTemporalDecoder and
UNetSpatioTemporalConditionModel, transformers' CLIPVisionModelWithProjection, shapes from
:mod:`kfi_core.tiny`) is trained on :mod:`kfi_core.procedural` clips, then the KFI adapter is
trained on it exactly as the method says (:mod:`kfi_core.train`: LoRA and the 12-channel input conv
only). One command runs every phase (``python -m kfi_core train-demo --config
configs/demo/recipe.json --out runs/demo``); each phase saves checkpoints and a rerun resumes from
the newest, so training may span several runs (``--max-minutes`` ends a run cleanly).

Phases
    data      procedural clips (seeds below ``EVAL_SEED_BASE``) written as PNG frame folders for the
              adapter phase, which reads datasets from disk like any user's.
    vae       the VAE alone: L1 + MSE reconstruction of 8-frame clips through the temporal decoder, a
              tiny KL term. Then the latent standard deviation is measured and ``scaling_factor`` set to
              its inverse: EDM assumes unit-variance data. (decoder, where the recipe gives it steps: the
              decoder alone, encoder frozen.) With ``balance_latents`` the finished VAE's latent channels are then
              scaled to one spread (:func:`balance_vae`, an exact reparametrisation; no training), saved to
              ``<out>/vae/balanced``, which the backbone and everything after it use.
    backbone  UNet and image encoder together, VAE frozen, with SVD's stock image-to-video conditioning:
              the first frame's latent (noise-augmented, log-normal strength, not scaled) concatenated to
              every frame, its CLIP embedding as cross-attention context, added time ids
              [fps - 1, motion bucket, noise strength], 10 % of samples unconditional (zero embedding and
              condition), EDM v-prediction. Written as a diffusers StableVideoDiffusionPipeline folder.
    tune      (where the recipe gives it steps) the backbone phase's UNet and image encoder trained further
              with the ``tune`` settings, from its weights (a fresh optimizer): a run can change how the
              backbone is conditioned without training it again from scratch. Written to ``<out>/backbone_tuned``,
              which the adapter and the package then use.
    adapter   :func:`kfi_core.train.train` on that folder and the data folder.
    adapter_tune  (where the recipe has an ``adapter_tune`` section) the finished adapter fine-tuned further, in
              one round or several (a list of sections): round k starts from round k-1's adapter (round 1 from the
              adapter phase's; ``from_adapter``) with the adapter phase's settings plus that round's changes, on the
              data folder's clips plus its ``recolour_clips`` recoloured ones (``adapter_tune_recolour_clips`` for
              a single section) and its ``removal_clips`` removal ones (clean clips with holes/), written to
              ``<out>/data_tune`` (round k > 1: ``data_tune<k>``); its adapter goes to ``<out>/adapter_tuned``
              (``adapter_tuned<k>``), and the last round's is the one the package ships.
    decoder_tune  (where the recipe gives it steps) the finished decoder trained further, encoder frozen (a fresh
              optimizer, its own data stream): the latents, and so the backbone and the adapter trained on them,
              stay exactly as they are; only how latents become pixels improves. Written to
              ``<out>/vae/decoder_tuned``, which the package then ships as its VAE.
    package   backbone folder + ``adapter.safetensors`` in ``<out>/demo_model``, size checked.

Where the seeds are silent (written down here and in ``configs/demo/recipe.json``): the noise level
distribution is shifted lower than SVD's (P_mean -0.5 instead of 0.7; 16x16 latents lose their
signal at lower noise than SVD's 72x128), and the sampler's ``sigma_max`` is EDM's 80 instead of
SVD's 700, so no sampling step falls where training never went.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import NonFiniteError, ResumeError, TrainConfigError
from .optim_state import load_optimizer, save_optimizer
from .procedural import EVAL_SEED_BASE

logger = logging.getLogger(__name__)

PHASES = ("data", "vae", "decoder", "backbone", "tune", "adapter", "adapter_tune", "decoder_tune", "package")
# Training steps draw procedural seeds below TRAIN_SEED_LIMIT; the seeds from there up to EVAL_SEED_BASE are the
# VAE's validation clips and latent-statistics clips; EVAL_SEED_BASE and above are held out for docs/RESULTS.md.
TRAIN_SEED_LIMIT = EVAL_SEED_BASE - 1000
EASY_SEED_BASE = TRAIN_SEED_LIMIT // 2  # seeds of the easy clips (data_easy_clips): seed EASY_SEED_BASE + i
# seeds of the recoloured clips (data_recolour_clips): seed RECOLOUR_SEED_BASE + i
RECOLOUR_SEED_BASE = EASY_SEED_BASE + (TRAIN_SEED_LIMIT - EASY_SEED_BASE) // 2
# seeds of the removal clips (data_removal_clips): seed REMOVAL_SEED_BASE + i, up to TRAIN_SEED_LIMIT
REMOVAL_SEED_BASE = RECOLOUR_SEED_BASE + (TRAIN_SEED_LIMIT - RECOLOUR_SEED_BASE) // 2
CHECKPOINT_PREFIX = "step_"
MAX_PACKAGE_MB = 30.0
PACKAGE_ADAPTER = "adapter.safetensors"  # the packaged model's default adapter (kfi_core.sample.DEMO_ADAPTER)
_ROUND_KEYS = ("removal_clips", "package_as")  # an adapter_tune round's keys that are not TrainConfig fields
_DATA_STREAM, _VAE_STREAM, _BACKBONE_STREAM, _DECODER_STREAM, _TUNE_STREAM = 11, 12, 13, 14, 15
_EASY_DATA_STREAM, _RECOLOUR_DATA_STREAM, _DECODER_TUNE_STREAM, _REMOVAL_DATA_STREAM = 16, 17, 18, 19
_PHASE_FIELDS = ("vae", "decoder", "backbone", "tune", "decoder_tune")  # the DemoRecipe fields that are PhaseConfigs
_BACKBONE_FOLDERS = {"backbone": "backbone", "tune": "backbone_tuned"}
_DATA_FOLDER = "data"  # the data phase's clips; the adapter_tune rounds' are TuneRound.data_folder
_ADAPTER_FOLDER = "adapter"  # the adapter phase's; the adapter_tune rounds' are TuneRound.adapter_folder
# under <out>/vae/; "balance" is not a phase but the finished VAE with its latent channels balanced (balance_latents)
_VAE_FOLDERS = {"vae": "final", "decoder": "decoder_final", "balance": "balanced", "decoder_tune": "decoder_tuned"}
FIRST_FRAME_ONLY_FILLS = ("zeros", "black")


# --------------------------------------------------------------------------- recipe


@dataclass
class PhaseConfig:
    """One phase's settings (vae, decoder, backbone, tune or decoder_tune)."""

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
    # vae only
    kl_weight: float = 1e-6
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    chroma_weight: float = 0.0  # extra MSE on chroma (RGB minus its grey): see :func:`chroma_mse`
    anchor_weight: float = 0.0  # latent channels 0-2 pulled toward the pooled RGB: see :func:`colour_anchor_mse`
    norm_reference: float = 0.0  # initialisation shift before the last GroupNorms: see :func:`add_norm_reference`
    crop_size: int = 0  # train on random square crops of this size (0 = whole frames): see :func:`random_crops`
    crop_frames: int = 0  # ... and this many consecutive frames (0 = all)
    # decoder phases only: each sample's latent gets Gaussian noise of std u * latent_noise (u ~ U(0, 1), in units of
    # the diffusion's scaled latents), so the decoder learns to decode imperfect latents: see :func:`vae_loss`
    latent_noise: float = 0.0
    # backbone and tune only
    p_mean: float = -0.5
    p_std: float = 1.4
    noise_aug_mean: float = -3.0
    noise_aug_std: float = 0.5
    cond_dropout_prob: float = 0.1
    # the image latent on frame 0 only (zeros on the others) for this fraction of samples: see backbone_inputs
    first_frame_only_prob: float = 0.0
    # what the other frames' condition holds in those samples: "zeros", or "black" (the latent of a black frame,
    # which is what KFI's black-filled condition holds wherever a frame is masked): see backbone_inputs
    first_frame_only_fill: str = "zeros"
    fps: int = 7
    motion_bucket_id: int = 127
    train_image_encoder: bool = True


@dataclass
class DemoRecipe:
    """Everything ``train-demo`` does. Loaded from JSON; keys starting with ``_`` are comments."""

    seed: int = 0
    num_frames: int = 8
    resolution: tuple[int, int] = (64, 64)
    data_clips: int = 600
    data_frames: int = 12  # frames per written clip (the adapter phase crops num_frames of them)
    # extra clips at the benchmark's "easy" preset, each showing its target with masks (see training_easy_clip)
    data_easy_clips: int = 0
    # extra clips of the easy or medium preset whose target is shown as it is or recoloured (training_recolour_clip)
    data_recolour_clips: int = 0
    # extra clips of the easy or medium preset with their target removed, its track as holes/ (training_removal_clip)
    data_removal_clips: int = 0
    vae: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=1500, lr=1e-3))
    backbone: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=3000, batch_size=2, lr=5e-4))
    # the VAE's decoder alone, encoder frozen (steps 0 = skip): see :func:`train_decoder`
    decoder: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=0))
    # the backbone trained further from the backbone phase's weights (steps 0 = skip): see :func:`tune_backbone`
    tune: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=0))
    # the finished decoder trained further, encoder frozen (steps 0 = skip): see :func:`tune_decoder`
    decoder_tune: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=0))
    adapter: dict = field(default_factory=dict)  # kfi_core.train.TrainConfig fields (model/data/out are set here)
    # the finished adapter fine-tuned further (empty = skip): TrainConfig fields that change the adapter phase's
    # settings (model/data/out/from_adapter are set here), trained on the data clips plus adapter_tune_recolour_clips
    # recoloured ones; or a list of such sections, rounds that each start from the one before, each giving its own
    # ``recolour_clips`` (:meth:`tune_rounds`, :func:`tune_dataset`, :func:`adapter_config` with ``tune_round``);
    # a round's ``package_as`` names the file the package ships its adapter as (:func:`trained_adapters`)
    adapter_tune: dict | list = field(default_factory=dict)
    adapter_tune_recolour_clips: int = 0  # the single-section form's recoloured clips
    scheduler: dict = field(default_factory=lambda: {"sigma_max": 80.0})  # overrides of SVD's scheduler config
    vae_config: dict = field(default_factory=dict)  # overrides of kfi_core.tiny.TINY_VAE_CONFIG
    # after the decoder phase, scale each latent channel to the same spread (an exact reparametrisation of the VAE)
    # before the backbone trains on it: see :func:`balance_latent_channels`
    balance_latents: bool = False

    def check(self) -> "DemoRecipe":
        h, w = self.resolution
        if h % 64 or w % 64:
            raise TrainConfigError(f"resolution: got {h}x{w}; give multiples of 64 (VAE 4x down, UNet 2 levels).")
        if not 1 <= self.num_frames <= self.data_frames:
            raise TrainConfigError(f"num_frames {self.num_frames} / data_frames {self.data_frames}: need "
                                   "1 <= num_frames <= data_frames.")
        if self.data_clips < 1 or self.data_clips > TRAIN_SEED_LIMIT:
            raise TrainConfigError(f"data_clips: got {self.data_clips}; give 1 .. {TRAIN_SEED_LIMIT} (seeds from "
                                   f"{TRAIN_SEED_LIMIT} are held out for validation and evaluation).")
        for name, room in (("data_easy_clips", RECOLOUR_SEED_BASE - EASY_SEED_BASE),
                           ("data_recolour_clips", REMOVAL_SEED_BASE - RECOLOUR_SEED_BASE),
                           ("data_removal_clips", TRAIN_SEED_LIMIT - REMOVAL_SEED_BASE)):
            if not 0 <= getattr(self, name) <= room:
                raise TrainConfigError(f"{name}: got {getattr(self, name)}; give 0 .. {room}.")
        self._check_adapter_tune()
        for name in _PHASE_FIELDS:
            phase = getattr(self, name)
            if phase.steps < 0 or phase.batch_size < 1 or not phase.lr > 0 or phase.checkpoint_every < 1:
                raise TrainConfigError(f"{name}: steps >= 0, batch_size >= 1, lr > 0 and checkpoint_every >= 1 "
                                       f"are needed; got {dataclasses.asdict(phase)}.")
            if phase.first_frame_only_fill not in FIRST_FRAME_ONLY_FILLS:
                raise TrainConfigError(f"{name}.first_frame_only_fill: got {phase.first_frame_only_fill!r}; choose "
                                       f"one of {', '.join(FIRST_FRAME_ONLY_FILLS)}.")
            for prob in ("cond_dropout_prob", "first_frame_only_prob"):
                if not 0.0 <= getattr(phase, prob) <= 1.0:
                    raise TrainConfigError(f"{name}.{prob}: got {getattr(phase, prob)}; give a probability from 0 to 1.")
            if phase.crop_size and not (phase.crop_size % 8 == 0 and 8 <= phase.crop_size <= min(h, w)):
                raise TrainConfigError(f"{name}.crop_size: got {phase.crop_size}; give 0 (whole frames) or a "
                                       f"multiple of 8 from 8 to {min(h, w)}.")
            if not 0 <= phase.crop_frames <= self.num_frames:
                raise TrainConfigError(f"{name}.crop_frames: got {phase.crop_frames}; give 0 (all) or 1 to "
                                       f"num_frames ({self.num_frames}).")
            if phase.latent_noise < 0 or (phase.latent_noise and name not in ("decoder", "decoder_tune")):
                raise TrainConfigError(f"{name}.latent_noise: got {phase.latent_noise}; give a std >= 0, in the "
                                       "decoder or decoder_tune phase only (the vae phase's latents are not final).")
            if name in ("decoder", "decoder_tune") and (phase.anchor_weight or phase.norm_reference):
                raise TrainConfigError(f"{name}.anchor_weight / norm_reference: the {name} phase keeps the encoder "
                                       "frozen and starts from the trained decoder; set them in the vae phase.")
            if name in ("backbone", "tune") and (phase.crop_size or phase.crop_frames):  # whole clips only
                raise TrainConfigError(f"{name}.crop_size / crop_frames: only the vae phase trains on crops; "
                                       "the backbone needs whole clips.")
            for weight in ("chroma_weight", "anchor_weight"):
                if getattr(phase, weight) < 0:
                    raise TrainConfigError(f"{name}.{weight}: got {getattr(phase, weight)}; give a weight >= 0 "
                                           "(0 turns the term off).")
        return self

    def _check_adapter_tune(self) -> None:
        from .train import TrainConfig

        if not isinstance(self.adapter_tune, (dict, list)):
            raise TrainConfigError(f"adapter_tune: got {type(self.adapter_tune).__name__}; give a section (an object "
                                   "of kfi_core.train settings) or a list of them, one per round.")
        if isinstance(self.adapter_tune, list):
            if self.adapter_tune_recolour_clips:
                raise TrainConfigError("adapter_tune_recolour_clips: set, but adapter_tune is a list of rounds; give "
                                       "each round its own recolour_clips and remove adapter_tune_recolour_clips.")
            for i, section in enumerate(self.adapter_tune, start=1):
                if not isinstance(section, dict):
                    raise TrainConfigError(f"adapter_tune round {i}: got {type(section).__name__}; give an object "
                                           "of kfi_core.train settings (and recolour_clips).")
        elif self.adapter_tune_recolour_clips and not self.adapter_tune:
            raise TrainConfigError("adapter_tune_recolour_clips: set, but the recipe has no adapter_tune section to "
                                   "train on them; add one (kfi_core.train settings) or set it to 0.")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        recolour_room = REMOVAL_SEED_BASE - RECOLOUR_SEED_BASE - self.data_recolour_clips
        removal_room = TRAIN_SEED_LIMIT - REMOVAL_SEED_BASE - self.data_removal_clips
        for tune in self.tune_rounds():
            bad = sorted(set(tune.changes) - known)
            if bad:
                raise TrainConfigError(f"{tune.label}: unknown key(s) {', '.join(bad)}; give kfi_core.train settings "
                                       "(TrainConfig fields)" + (", recolour_clips" if tune.listed else "")
                                       + ", removal_clips and package_as.")
            if not (isinstance(tune.recolour_clips, int) and 0 <= tune.recolour_clips <= recolour_room):
                raise TrainConfigError(f"{tune.clips_key}: got {tune.recolour_clips!r}; give 0 .. {recolour_room} "
                                       "(the recoloured seeds left after data_recolour_clips).")
            if not (isinstance(tune.removal_clips, int) and 0 <= tune.removal_clips <= removal_room):
                raise TrainConfigError(f"{tune.label}.removal_clips: got {tune.removal_clips!r}; give 0 .. "
                                       f"{removal_room} (the removal seeds left after data_removal_clips).")
        self._check_package_as()

    def _check_package_as(self) -> None:
        named = [tune for tune in self.tune_rounds() if tune.package_as is not None]
        for tune in named:
            name = tune.package_as
            if not (isinstance(name, str) and name.endswith(".safetensors") and name == Path(name).name
                    and not name.startswith(".")):
                raise TrainConfigError(f"{tune.label}.package_as: got {name!r}; give a file name ending in "
                                       ".safetensors, no folder (e.g. adapter-removal.safetensors).")
        names = [tune.package_as for tune in named]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise TrainConfigError(f"adapter_tune: package_as {', '.join(twice)} is given to more than one round; "
                                   "give each shipped adapter its own file name.")
        if named and PACKAGE_ADAPTER not in names:
            raise TrainConfigError(f"adapter_tune: rounds name the adapters the package ships (package_as) but none "
                                   f"is {PACKAGE_ADAPTER}, the model's default adapter; set package_as "
                                   f"\"{PACKAGE_ADAPTER}\" on the round that should be it.")

    def tune_rounds(self) -> list["TuneRound"]:
        """The adapter_tune phase's rounds, in order (none where the recipe has no adapter_tune section)."""
        def changes(section: dict, clip_keys: tuple[str, ...]) -> dict:
            return {k: v for k, v in section.items() if k not in clip_keys}

        if isinstance(self.adapter_tune, dict):  # its recoloured clips are adapter_tune_recolour_clips
            section = self.adapter_tune
            return [TuneRound(1, changes(section, _ROUND_KEYS), self.adapter_tune_recolour_clips,
                              removal_clips=section.get("removal_clips", 0),
                              package_as=section.get("package_as"))] if section else []
        return [TuneRound(i, changes(section, ("recolour_clips",) + _ROUND_KEYS), section.get("recolour_clips", 0),
                          listed=True, removal_clips=section.get("removal_clips", 0),
                          package_as=section.get("package_as"))
                for i, section in enumerate(self.adapter_tune, start=1)]

    def tune_round(self, number: int) -> "TuneRound":
        """Round ``number`` (from 1) of the adapter_tune phase; a :class:`TrainConfigError` past the recipe's rounds."""
        rounds = self.tune_rounds()
        if not 1 <= number <= len(rounds):
            raise TrainConfigError(f"adapter_tune: round {number} asked for; the recipe has {len(rounds)}.")
        return rounds[number - 1]


@dataclass(frozen=True)
class TuneRound:
    """One round of the adapter_tune phase: kfi_core.train settings that change the adapter phase's, trained from the
    previous round's adapter (round 1: the adapter phase's) on the data clips plus ``recolour_clips`` recoloured
    ones and ``removal_clips`` removal ones. Round 1 keeps the folder names of the single-section form."""

    number: int
    changes: dict
    recolour_clips: int
    listed: bool = False  # from the list form (errors name the round)
    removal_clips: int = 0  # the section's own key in either form
    # the file name under which the package ships this round's adapter (None: not shipped, unless no round of the
    # recipe names one, when the last round ships as adapter.safetensors): see :func:`trained_adapters`
    package_as: str | None = None

    @property
    def label(self) -> str:
        return f"adapter_tune round {self.number}" if self.listed else "adapter_tune"

    @property
    def clips_key(self) -> str:  # where the recipe sets recolour_clips
        return f"{self.label}.recolour_clips" if self.listed else "adapter_tune_recolour_clips"

    @property
    def data_folder(self) -> str:
        return "data_tune" if self.number == 1 else f"data_tune{self.number}"

    @property
    def adapter_folder(self) -> str:
        return "adapter_tuned" if self.number == 1 else f"adapter_tuned{self.number}"


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
                raise TrainConfigError(f"{source}: {name}: unknown key(s) {', '.join(bad)}; known: "
                                       f"{', '.join(sorted(phase_keys))}.")
            data[name] = PhaseConfig(**phase)
    for name in ("scheduler", "vae_config"):
        if name in data:
            data[name] = _without_comments(data[name])
    tune = data.get("adapter_tune")
    if isinstance(tune, dict):
        data["adapter_tune"] = _without_comments(tune)
    elif isinstance(tune, list):
        data["adapter_tune"] = [_without_comments(section) if isinstance(section, dict) else section
                                for section in tune]
    if "resolution" in data:
        data["resolution"] = tuple(data["resolution"])
    try:
        return DemoRecipe(**data).check()
    except TrainConfigError as err:  # name the file: the checks only know the setting
        raise TrainConfigError(f"{source}: {err}") from None


def load_recipe(path: str | os.PathLike) -> DemoRecipe:
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"--config {path}: no such file. Give a recipe JSON such as configs/demo/recipe.json.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TrainConfigError(f"--config {path}: not valid JSON ({err}).") from err
    return recipe_from_dict(data, source=f"--config {path}")


# --------------------------------------------------------------------------- data


_DATA_VERSION = "2"  # .done content; "2": clips showing the target carry masks/ (an empty .done: version 1)


def training_clip_with_masks(seed: int, num_frames: int, height: int,
                            width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A procedural training clip [F, 3, H, W] in 0..1 with seed-drawn difficulty knobs, and the masks of
    its moving target object [F, 1, H, W] (grown by a pixel), or None when the clip does not show it.

    Half the clips show the target object (moving, occluding; in its original or edited appearance), half
    the clean scene; all stay below :data:`EVAL_SEED_BASE` so no evaluation clip is ever trained on.
    """
    from .procedural import TEXTURES, ProceduralConfig, make_procedural_clip

    if not 0 <= seed < EVAL_SEED_BASE:
        raise TrainConfigError(f"training seed {seed}: must be below {EVAL_SEED_BASE} (held-out evaluation seeds).")
    rng = np.random.default_rng([int(seed), _DATA_STREAM])
    cfg = ProceduralConfig(
        texture=str(rng.choice(TEXTURES)), texture_period=float(rng.uniform(3.0, 14.0)),
        max_pan=float(rng.uniform(0.0, 3.0)), object_speed=float(rng.uniform(0.0, 3.0)),
        distractor=bool(rng.random() < 0.7), lighting_change=float(rng.uniform(0.0, 0.5)))
    task = "edit" if rng.random() < 0.5 else "removal"
    clip = make_procedural_clip(task, num_frames=num_frames, height=height, width=width, seed=int(seed), config=cfg)
    truth = rng.random() < 0.5
    if truth and task == "removal":
        return clip.ground_truth, None  # the clean scene: nothing to track
    return (clip.ground_truth if truth else clip.frames), clip.masks


def _target_shown_either_way(seed: int, rng: np.random.Generator, num_frames: int, height: int, width: int,
                             **clip_options) -> tuple[torch.Tensor, torch.Tensor]:
    """The edit clip of training ``seed`` (``clip_options`` go to make_procedural_clip), its target shown edited or
    as it is by one draw of ``rng``, and the target's masks: the extra clips of :func:`write_dataset`."""
    from .procedural import make_procedural_clip

    if not 0 <= seed < TRAIN_SEED_LIMIT:
        raise TrainConfigError(f"training seed {seed}: must be below {TRAIN_SEED_LIMIT} (held-out seeds above).")
    clip = make_procedural_clip("edit", num_frames=num_frames, height=height, width=width, seed=int(seed),
                                **clip_options)
    return (clip.ground_truth if rng.random() < 0.5 else clip.frames), clip.masks


def training_easy_clip(seed: int, num_frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip of the benchmark's ``easy`` preset (slow target, little pan, constant light) that always shows the
    target, in its original or edited appearance, and the target's masks: what teaches the adapter to carry a
    keyframe's appearance into the hole, which on the random clips of :func:`training_clip_with_masks` (mostly
    moving fast, under pans) it does not learn in a CPU run (README, 'Teaching the adapter to read the keyframe')."""
    rng = np.random.default_rng([int(seed), _EASY_DATA_STREAM])
    return _target_shown_either_way(seed, rng, num_frames, height, width, difficulty="easy")


def training_recolour_clip(seed: int, num_frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip of the ``easy`` or ``medium`` preset (seed-chosen) that always shows the target, as it is or recoloured
    (the edit task's ``recolour`` pattern: its stripes in two new colours), and the target's masks. Unlike the
    checker of :func:`training_easy_clip`'s edited targets, which at 64x64 is finer than the latent keeps, a
    recoloured target is something the VAE holds, so copying it from the keyframe pays in the loss."""
    from .procedural import ProceduralConfig, with_config

    rng = np.random.default_rng([int(seed), _RECOLOUR_DATA_STREAM])
    preset = "easy" if rng.random() < 0.5 else "medium"
    cfg = with_config(ProceduralConfig.preset(preset), edit_pattern="recolour")
    return _target_shown_either_way(seed, rng, num_frames, height, width, config=cfg)


def training_removal_clip(seed: int, num_frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A removal clip of the ``easy`` or ``medium`` preset (seed-chosen): the clean scene, the target removed, and
    the removed target's masks, written as the clip's ``holes/`` (kfi_core.data step 6). The hole is where the target
    was and the answer under it is the background, partly shown by the other frames as the target moves: object
    removal as the benchmark asks it. The object masks of the other clips (``masks/``) cannot teach this: the answer
    under them is the target itself, which without a keyframe nothing shows."""
    from .procedural import ProceduralConfig, make_procedural_clip

    if not REMOVAL_SEED_BASE <= seed < TRAIN_SEED_LIMIT:
        raise TrainConfigError(f"removal training seed {seed}: give {REMOVAL_SEED_BASE} .. {TRAIN_SEED_LIMIT - 1}.")
    rng = np.random.default_rng([int(seed), _REMOVAL_DATA_STREAM])
    preset = "easy" if rng.random() < 0.5 else "medium"
    clip = make_procedural_clip("removal", num_frames=num_frames, height=height, width=width, seed=int(seed),
                                config=ProceduralConfig.preset(preset))
    return clip.ground_truth, clip.masks


def training_clip(seed: int, num_frames: int, height: int, width: int) -> torch.Tensor:
    """The frames of :func:`training_clip_with_masks`."""
    return training_clip_with_masks(seed, num_frames, height, width)[0]


def training_batch(seed: int, stream: int, step: int, batch_size: int, num_frames: int,
                   height: int, width: int) -> torch.Tensor:
    """The clips of one optimizer step [B, F, 3, H, W]: fixed by (seed, stream, step), so a resumed run
    sees the same data as an uninterrupted one."""
    base = np.random.SeedSequence([int(seed), int(stream), int(step)]).generate_state(1)[0]
    seeds = [int((int(base) + i * 7919) % TRAIN_SEED_LIMIT) for i in range(batch_size)]
    return torch.stack([training_clip(s, num_frames, height, width) for s in seeds])


def random_crops(clips: torch.Tensor, size: int, frames: int, generator: torch.Generator) -> torch.Tensor:
    """Random crops ``[B, frames, 3, size, size]`` of clips ``[B, F, 3, H, W]``: consecutive frames and a square
    window, drawn per clip from ``generator``; 0 keeps that axis whole. The VAE is convolutional, so it trains
    on crops several times faster and then encodes whole frames (the temporal decoder sees fewer frames)."""
    b, f, _, h, w = clips.shape
    size_h, size_w, frames = size or h, size or w, frames or f
    out = []
    for i in range(b):
        t0, y0, x0 = (int(torch.randint(0, n + 1, (1,), generator=generator))
                      for n in (f - frames, h - size_h, w - size_w))
        out.append(clips[i, t0:t0 + frames, :, y0:y0 + size_h, x0:x0 + size_w])
    return torch.stack(out)


def step_generator(seed: int, stream: int, step: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(stream), int(step), 1]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def write_dataset(out: Path, recipe: DemoRecipe, reuse: tuple[Path, ...] = ()) -> Path:
    """Write ``recipe.data_clips`` procedural clips as PNG folders (seeds 0..N-1), then ``recipe.data_easy_clips``
    easy ones (``easy_NNNNNN``, seeds from :data:`EASY_SEED_BASE`) and ``recipe.data_recolour_clips`` recoloured ones
    (``recolour_NNNNNN``, seeds from :data:`RECOLOUR_SEED_BASE`), each clip that shows the target
    object with its masks in ``masks/`` (kfi_core.data's track masks), and ``recipe.data_removal_clips`` removal
    ones (``removal_NNNNNN``, seeds from :data:`REMOVAL_SEED_BASE`), clean, with the removed target's masks in
    ``holes/``. Skips finished clips; a clip finished by an
    older version without its masks gets them (the clips are seeded, so the frames are the same). A clip finished
    under the same name in one of the ``reuse`` folders (data folders of this run, written from the same recipe) is
    linked from there (:func:`_link_clip`) rather than made again."""
    from PIL import Image

    from .data import HOLE_MASK_FOLDER, TRACK_MASK_FOLDER

    def save(images: torch.Tensor, folder: Path) -> None:
        folder.mkdir(exist_ok=True)
        for t, image in enumerate(images):
            pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
            path = folder / f"{t:04d}.png"
            path.unlink(missing_ok=True)  # never write through a link into another folder's clip
            Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)

    h, w = recipe.resolution
    out.mkdir(parents=True, exist_ok=True)
    kinds = [("clip", training_clip_with_masks, 0, recipe.data_clips, TRACK_MASK_FOLDER),
             ("easy", training_easy_clip, EASY_SEED_BASE, recipe.data_easy_clips, TRACK_MASK_FOLDER),
             ("recolour", training_recolour_clip, RECOLOUR_SEED_BASE, recipe.data_recolour_clips, TRACK_MASK_FOLDER),
             ("removal", training_removal_clip, REMOVAL_SEED_BASE, recipe.data_removal_clips, HOLE_MASK_FOLDER)]
    clips = [(f"{prefix}_{i:06d}", lambda make=make, seed=base + i: make(seed, recipe.data_frames, h, w), folder)
             for prefix, make, base, count, folder in kinds for i in range(count)]
    linked = 0
    for name, make, mask_folder in clips:
        folder = out / name
        if _finished_clip(folder):
            continue
        source = next((root / name for root in reuse if _finished_clip(root / name)), None)
        if source is not None:
            _link_clip(source, folder)
            linked += 1
            continue
        frames, masks = make()
        save(frames, folder)
        if masks is not None:
            save(masks, folder / mask_folder)
        (folder / ".done").unlink(missing_ok=True)
        (folder / ".done").write_text(_DATA_VERSION)
    logger.info("dataset: %d procedural clips (%d easy, %d recoloured, %d removal; %d linked from earlier data "
                "folders) in %s", len(clips), recipe.data_easy_clips, recipe.data_recolour_clips,
                recipe.data_removal_clips, linked, out)
    return out


def _finished_clip(folder: Path) -> bool:
    done = folder / ".done"
    return done.is_file() and done.read_text().strip() == _DATA_VERSION


def _link_clip(source: Path, folder: Path) -> None:
    """Give ``folder`` the files of the finished clip ``source`` as hard links (copies where the file system makes
    none), through a hidden temporary folder renamed at the end, so an interrupted run leaves no half-linked clip
    (kfi_core.data skips hidden folders). :func:`write_dataset` unlinks a file before writing it, so remaking a
    clip in one folder never changes another's."""
    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, copy_function=link_or_copy)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


# --------------------------------------------------------------------------- checkpoints (safetensors only)


def list_phase_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    root = folder / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and (path / "state.json").is_file():
            try:
                found.append((int(path.name[len(CHECKPOINT_PREFIX):]), path))
            except ValueError:
                continue
    return sorted(found)


def save_phase_checkpoint(folder: Path, step: int, modules: dict[str, torch.nn.Module],
                          optimizer: torch.optim.Optimizer, fingerprint: dict, keep: int) -> Path:
    """Write modules (safetensors), optimizer and step atomically (a temporary folder renamed)."""
    from safetensors.torch import save_model

    final = folder / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        save_model(module, str(tmp / f"{name}.safetensors"))
    save_optimizer(optimizer, tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for _, old in list_phase_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_phase_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                          fingerprint: dict) -> int:
    """Load a checkpoint strictly; refuse one written by a different recipe."""
    from safetensors.torch import load_model

    state = json.loads((path / "state.json").read_text())
    saved = state.get("fingerprint") or {}
    if any(key in saved and saved[key] != value for key, value in fingerprint.items()):
        raise ResumeError(
            f"{path}: written by a different recipe ({state.get('fingerprint')} here, {fingerprint} now). Resume "
            "with the recipe that started it, or give a new --out.")
    for name, module in modules.items():
        try:
            load_model(module, str(path / f"{name}.safetensors"), strict=True)
        except Exception as err:  # noqa: BLE001 - any failure to read is a damaged checkpoint to the user
            raise ResumeError(f"{path / (name + '.safetensors')}: cannot load ({type(err).__name__}: {err}). "
                              "Delete this checkpoint to resume from the one before.") from err
    load_optimizer(optimizer, path / "optimizer.safetensors")
    return int(state["step"])


# --------------------------------------------------------------------------- a generic loop


def lr_at(phase: PhaseConfig, step: int) -> float:
    """Linear warmup, constant, then a linear decay to 10 % over the last ``decay_fraction`` of steps."""
    from .train import lr_scale

    return phase.lr * lr_scale(step, phase.steps, phase.warmup_steps, phase.decay_fraction)


@dataclass
class PhaseRun:
    """What :func:`run_phase` needs: the trainable modules, the loss of one step and where to write."""

    name: str
    folder: Path
    phase: PhaseConfig
    modules: dict[str, torch.nn.Module]  # saved in checkpoints (trainable ones)
    loss_fn: Callable[[int], tuple[torch.Tensor, dict]]  # step -> (loss, log extras)
    fingerprint: dict


def run_phase(run: PhaseRun, deadline: float | None) -> bool:
    """Optimise from the newest checkpoint to ``phase.steps``. Returns True when the phase is complete,
    False when ``deadline`` (time.monotonic) passed first (a checkpoint is saved; run again to resume)."""
    phase = run.phase
    params = [p for m in run.modules.values() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=phase.lr, weight_decay=phase.weight_decay)
    step = 0
    checkpoints = list_phase_checkpoints(run.folder)
    if checkpoints:
        step = load_phase_checkpoint(checkpoints[-1][1], run.modules, optimizer, run.fingerprint)
        logger.info("%s: resumed at step %d from %s", run.name, step, checkpoints[-1][1])
    run.folder.mkdir(parents=True, exist_ok=True)
    log_path = run.folder / "train_log.jsonl"
    if step < phase.steps:
        logger.info("%s: steps %d..%d, %d trainable parameters", run.name, step, phase.steps,
                    sum(p.numel() for p in params))
    losses: list[float] = []
    start = time.monotonic()
    while step < phase.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(phase, step)
        loss, extras = run.loss_fn(step)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"{run.name}: the loss became {loss.item()} at step {step}; lower lr in the recipe "
                                 "and resume from the last checkpoint.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if phase.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, phase.max_grad_norm)
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % phase.log_every == 0 or step == phase.steps:
            entry = {"step": step, "loss": float(np.mean(losses)), "lr": lr_at(phase, step - 1),
                     "s_per_step": (time.monotonic() - start) / len(losses), **extras}
            with log_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")
            logger.info("%s step %d/%d loss %.4f (%.2f s/step)", run.name, step, phase.steps, entry["loss"],
                        entry["s_per_step"])
            losses, start = [], time.monotonic()
        out_of_time = deadline is not None and time.monotonic() > deadline
        if step % phase.checkpoint_every == 0 or step == phase.steps or out_of_time:
            save_phase_checkpoint(run.folder, step, run.modules, optimizer, run.fingerprint, phase.keep_checkpoints)
        if out_of_time and step < phase.steps:
            logger.info("%s: time is up at step %d of %d; run the same command again to resume", run.name, step,
                        phase.steps)
            return False
    return True


def _fingerprint(recipe: DemoRecipe, phase_name: str) -> dict:
    """What a checkpoint must share with the recipe that resumes it. ``steps`` is not part of it: a phase may be
    lengthened or shortened between runs (the LR schedule follows the new length from the resumed step)."""
    values = {"seed": recipe.seed, "num_frames": recipe.num_frames, "resolution": list(recipe.resolution),
              "phase": phase_name, "batch_size": getattr(recipe, phase_name).batch_size,
              "vae_config": recipe.vae_config}
    if phase_name not in ("vae", "decoder"):  # the phases that train on the (balanced or plain) finished latents
        values["balance_latents"] = recipe.balance_latents  # checkpoints from before the setting lack it and resume
    return values


# --------------------------------------------------------------------------- vae


def new_components(recipe: DemoRecipe) -> dict:
    """Fresh random components of the demo architecture (kfi_core.tiny shapes, VAE widths from the recipe)."""
    from .tiny import build_tiny_components

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
    colour there instead of settling on brightness (README, 'Why the keyframe cannot help yet'); the
    remaining channels stay free for detail. The anchor also makes the latent a small image, which is what
    the backbone's diffusion then models.
    """
    if latent_mean.shape[1] < 3:
        raise TrainConfigError(f"anchor_weight: the latent has {latent_mean.shape[1]} channels; the colour anchor "
                               "needs 3 or more (vae_config latent_channels), or set anchor_weight to 0.")
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
    if phase.latent_noise:  # drawn only then, so older recipes see the same numbers
        # sampled latents are never exact: per sample a noise level u * latent_noise in scaled-latent units
        level = torch.rand(b, generator=generator).repeat_interleave(f) * phase.latent_noise
        noise = torch.randn(z.shape, generator=generator)
        z = z + (level / vae.config.scaling_factor).view(-1, 1, 1, 1) * noise
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
    narrower than channel 3 (README, 'A sharper decoder shows what the adapter gets wrong'): noise drowns them at a
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
    from diffusers import AutoencoderKLTemporalDecoder

    final = vae_folder(out, "balance")
    if (final / "config.json").is_file():
        return AutoencoderKLTemporalDecoder.from_pretrained(final, use_safetensors=True)
    vae.eval()
    std = statistics_latents(vae, recipe).transpose(0, 1).flatten(1).std(dim=1)
    gains = std.max() / std
    balance_latent_channels(vae, gains)
    scaled = measure_latent_std(vae, recipe)
    vae.register_to_config(scaling_factor=1.0 / scaled)
    vae.save_pretrained(final, safe_serialization=True)
    logger.info("balance: latent std per channel %s -> gains %s, scaling_factor %.4f; saved %s",
                [round(float(v), 4) for v in std], [round(float(g), 3) for g in gains], 1.0 / scaled, final)
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
    """Phase decoder: the VAE's decoder alone, its encoder frozen (``recipe.decoder``; 0 steps = the VAE as it is).

    The latents, and so everything the backbone and the adapter learn on them, stay exactly as the vae phase
    left them; only how they are decoded improves. The demo VAE needs it for colour: trained jointly, its
    encoder learns to keep colour (bench/vae_colour.py's linear probe) well before its decoder shows it.
    Returns the VAE with the new decoder (saved to ``<out>/vae/decoder_final``), or None if out of time."""
    if recipe.decoder.steps == 0:
        return vae
    return _fit_decoder(recipe, "decoder", vae, vae_folder(out, "decoder"), _DECODER_STREAM, deadline)


def _fit_decoder(recipe: DemoRecipe, name: str, vae, final: Path, stream: int, deadline: float | None):
    """Train ``vae``'s decoder alone with the ``name`` phase's settings (encoder and quant_conv frozen, so every
    latent stays as it was) and save the VAE to ``final``; the saved one if ``final`` exists, None if out of time."""
    from diffusers import AutoencoderKLTemporalDecoder

    if (final / "config.json").is_file():
        return AutoencoderKLTemporalDecoder.from_pretrained(final, use_safetensors=True)
    vae.train()
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    run = PhaseRun(name, final.parent / name, getattr(recipe, name), {"decoder": vae.decoder},
                   _vae_loss_fn(vae, recipe, name, stream), _fingerprint(recipe, name))
    if not run_phase(run, deadline):
        return None
    vae.eval().requires_grad_(True)
    vae.save_pretrained(final, safe_serialization=True)  # scaling_factor unchanged: the latents are the same
    logger.info("%s: saved %s", name, final)
    return vae


def vae_folder(out: Path, phase_name: str) -> Path:
    """Where the ``vae``, ``decoder`` or ``decoder_tune`` phase saves its finished VAE."""
    return out / "vae" / _VAE_FOLDERS[phase_name]


def finished_vae_folder(recipe: DemoRecipe, out: Path) -> Path:
    """Where the vae (and decoder) phases, and the balancing where the recipe asks, left the VAE the backbone was
    trained on."""
    if recipe.balance_latents:
        return vae_folder(out, "balance")
    return vae_folder(out, "decoder" if recipe.decoder.steps else "vae")


def tune_decoder(recipe: DemoRecipe, out: Path, deadline: float | None) -> Path | None:
    """Phase decoder_tune: the finished VAE's decoder trained further with ``recipe.decoder_tune`` (a fresh AdamW,
    its own data stream), the encoder frozen. Any time after the decoder phase: the latents, and everything the
    backbone and the adapter learned on them, stay exactly as they are. Returns ``<out>/vae/decoder_tuned``, or
    None if out of time."""
    from diffusers import AutoencoderKLTemporalDecoder

    final = vae_folder(out, "decoder_tune")
    if (final / "config.json").is_file():
        return final
    source = finished_vae_folder(recipe, out)
    if not (source / "config.json").is_file():
        raise TrainConfigError(f"decoder_tune: {source} holds no finished VAE; run the vae and decoder phases first.")
    vae = AutoencoderKLTemporalDecoder.from_pretrained(source, use_safetensors=True)
    if _fit_decoder(recipe, "decoder_tune", vae, final, _DECODER_TUNE_STREAM, deadline) is None:
        return None
    return final


def train_vae(recipe: DemoRecipe, out: Path, deadline: float | None):
    """Phase vae: returns the trained VAE with ``scaling_factor`` = 1 / latent std, or None if out of time."""
    from diffusers import AutoencoderKLTemporalDecoder

    final = vae_folder(out, "vae")
    if (final / "config.json").is_file():
        return AutoencoderKLTemporalDecoder.from_pretrained(final, use_safetensors=True)
    vae = new_components(recipe)["vae"].train()
    if recipe.vae.norm_reference:
        add_norm_reference(vae, recipe.vae.norm_reference)  # a resumed checkpoint overwrites it, as it should

    run = PhaseRun("vae", out / "vae", recipe.vae, {"vae": vae}, _vae_loss_fn(vae, recipe, "vae", _VAE_STREAM),
                   _fingerprint(recipe, "vae"))
    if not run_phase(run, deadline):
        return None
    vae.eval()
    std = measure_latent_std(vae, recipe)
    vae.register_to_config(scaling_factor=1.0 / std)
    vae.save_pretrained(final, safe_serialization=True)
    logger.info("vae: latent std %.4f -> scaling_factor %.4f; saved %s", std, 1.0 / std, final)
    return vae


# --------------------------------------------------------------------------- backbone


def clip_embedding(image_encoder, feature_extractor, images: torch.Tensor) -> torch.Tensor:
    """SVD's image embedding of [B, 3, H, W] in 0..1 -> [B, 1, D], with gradients (see svd_stock)."""
    from .svd_stock import clip_pixels

    return image_encoder(clip_pixels(feature_extractor, images)).image_embeds[:, None]


def backbone_inputs(vae, clips: torch.Tensor, phase: PhaseConfig, generator: torch.Generator) -> dict:
    """Stock SVD img2vid training inputs for clips [B, F, 3, H, W] (no gradients; the VAE is frozen).

    With ``phase.first_frame_only_prob`` > 0 that fraction of samples gets the first frame's latent on frame 0
    alone instead of on every frame, so the temporal layers must carry its appearance to the other frames: what
    KFI asks of them, where a keyframe's latent sits on its own frame only. The other frames hold zeros
    (``first_frame_only_fill`` "zeros") or the latent of a black frame, noise-augmented like the first ("black"):
    KFI's black-filled condition holds exactly that wherever a frame is masked, so the backbone learns to carry
    the keyframe's appearance into what KFI will show it as a hole. Unconditional samples stay all zeros.
    """
    from .denoiser import scale_model_input, sigma_to_timestep

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
            absent = torch.zeros_like(cond)
            if phase.first_frame_only_fill == "black":  # drawn only then, as above
                black = -1.0 + aug.reshape(b, 1, 1, 1) * torch.randn(first.shape, generator=generator)
                absent = vae.encode(black).latent_dist.mode()[:, None].expand(-1, f, -1, -1, -1)
                absent = absent * keep.reshape(b, 1, 1, 1, 1)
            cond = cond * frames + absent * (1.0 - frames)
        sigma = torch.exp(phase.p_mean + phase.p_std * torch.randn(b, generator=generator))
        x_t = x0 + sigma.reshape(b, 1, 1, 1, 1) * torch.randn(x0.shape, generator=generator)
        model_in = torch.cat([scale_model_input(x_t, sigma.reshape(b, 1, 1, 1, 1)), cond], dim=2)
        ids = torch.stack([torch.full((b,), float(phase.fps - 1)), torch.full((b,), float(phase.motion_bucket_id)),
                           aug], dim=1)
    return {"model_in": model_in, "timestep": sigma_to_timestep(sigma), "added_time_ids": ids, "x0": x0,
            "x_t": x_t, "sigma": sigma, "keep": keep, "first": clips[:, 0]}


def backbone_loss(unet, image_encoder, feature_extractor, inputs: dict) -> torch.Tensor:
    from .train import kfi_loss

    emb = clip_embedding(image_encoder, feature_extractor, inputs["first"])
    emb = emb * inputs["keep"].reshape(-1, 1, 1)  # unconditional samples: zero embedding, as SVD
    v = unet(inputs["model_in"], inputs["timestep"], encoder_hidden_states=emb,
             added_time_ids=inputs["added_time_ids"], return_dict=False)[0]
    return kfi_loss(v, inputs["x0"], inputs["x_t"], inputs["sigma"].reshape(-1, 1, 1, 1, 1))


def scheduler_config(recipe: DemoRecipe) -> dict:
    from .tiny import SVD_SCHEDULER_CONFIG

    return {**SVD_SCHEDULER_CONFIG, **recipe.scheduler}


def _fit_backbone(recipe: DemoRecipe, name: str, parts: dict, vae, out: Path, deadline: float | None) -> Path | None:
    """Train ``parts``' UNet and image encoder with the ``name`` phase's settings (``backbone`` or ``tune``); write
    the pipeline folder (``<out>/backbone`` or ``<out>/backbone_tuned``), or return None if out of time."""
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline

    folder = out / _BACKBONE_FOLDERS[name]
    phase = getattr(recipe, name)
    stream = _BACKBONE_STREAM if name == "backbone" else _TUNE_STREAM
    unet, image_encoder, fe = parts["unet"].train(), parts["image_encoder"], parts["feature_extractor"]
    image_encoder.train(phase.train_image_encoder)
    image_encoder.requires_grad_(phase.train_image_encoder)
    unet.requires_grad_(True)
    vae.eval().requires_grad_(False)
    h, w = recipe.resolution

    def loss_fn(step: int):
        clips = training_batch(recipe.seed, stream, step, phase.batch_size, recipe.num_frames, h, w)
        inputs = backbone_inputs(vae, clips, phase, step_generator(recipe.seed, stream, step))
        return backbone_loss(unet, image_encoder, fe, inputs), {}

    modules = {"unet": unet, "image_encoder": image_encoder}
    run = PhaseRun(name, out / f"{folder.name}_train", phase, modules, loss_fn, _fingerprint(recipe, name))
    if not run_phase(run, deadline):
        return None
    for module in (unet, image_encoder):
        module.eval().requires_grad_(False)
    scheduler = EulerDiscreteScheduler.from_config(scheduler_config(recipe))
    pipe = StableVideoDiffusionPipeline(unet=unet, vae=vae, image_encoder=image_encoder, scheduler=scheduler,
                                        feature_extractor=fe)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)
    logger.info("%s: wrote %s", name, folder)
    return folder


def train_backbone(recipe: DemoRecipe, vae, out: Path, deadline: float | None) -> Path | None:
    """Phase backbone: UNet + image encoder on the frozen VAE; writes ``<out>/backbone`` (diffusers folder)."""
    folder = out / _BACKBONE_FOLDERS["backbone"]
    if (folder / "model_index.json").is_file():
        return folder
    return _fit_backbone(recipe, "backbone", new_components(recipe), vae, out, deadline)


def tune_backbone(recipe: DemoRecipe, vae, out: Path, deadline: float | None) -> Path | None:
    """Phase tune: the finished backbone (``<out>/backbone``) trained further with ``recipe.tune`` (a fresh AdamW;
    the LR schedule of its own steps). Returns the folder the adapter trains on: ``<out>/backbone`` itself when
    the recipe gives the phase no steps, else ``<out>/backbone_tuned``; None if out of time."""
    from diffusers import UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    folder = trained_backbone(recipe, out)
    if recipe.tune.steps == 0 or (folder / "model_index.json").is_file():
        return folder
    backbone = out / _BACKBONE_FOLDERS["backbone"]
    if not (backbone / "model_index.json").is_file():
        raise TrainConfigError(f"tune: {backbone} is not a finished backbone; run the backbone phase first.")
    parts = {"unet": UNetSpatioTemporalConditionModel.from_pretrained(backbone / "unet", use_safetensors=True),
             "image_encoder": CLIPVisionModelWithProjection.from_pretrained(backbone / "image_encoder",
                                                                            use_safetensors=True),
             "feature_extractor": CLIPImageProcessor.from_pretrained(backbone / "feature_extractor")}
    return _fit_backbone(recipe, "tune", parts, vae, out, deadline)


def trained_backbone(recipe: DemoRecipe, out: Path) -> Path:
    """The backbone folder the adapter and the package use: the tuned one where the recipe tunes."""
    return out / _BACKBONE_FOLDERS["tune" if recipe.tune.steps else "backbone"]


# --------------------------------------------------------------------------- adapter and package


def adapter_config(recipe: DemoRecipe, backbone: Path, data: Path, out: Path, tune_from: Path | None = None,
                   tune_round: int = 1):
    """The adapter phase's kfi_core.train config; with ``tune_from`` (an adapter file) the adapter_tune phase's round
    ``tune_round``: the adapter phase's settings with that round's changes, starting from that file."""
    from .train import config_from_dict, list_checkpoints

    values = {"stages": [{"name": "demo", "steps": 1000, "resolution": list(recipe.resolution), "batch_size": 1}],
              "seed": recipe.seed, **recipe.adapter}
    section, changes, set_here = "adapter", recipe.adapter, ("model", "data", "out", "resume")
    if tune_from is not None:
        tune = recipe.tune_round(tune_round)
        section, changes, set_here = tune.label, tune.changes, set_here + ("from_adapter",)
    for key in set_here:
        if key in changes:
            raise TrainConfigError(f"recipe {section}.{key}: set by train-demo; remove it from the recipe.")
    if tune_from is not None:
        values.update(changes, from_adapter=str(tune_from))
    values.update(model=str(backbone), data=str(data), out=str(out))
    config = config_from_dict(values, source=f"recipe {section}")
    if list_checkpoints(out):
        config.resume = "latest"
    return config


def tune_dataset(recipe: DemoRecipe, out: Path, tune_round: int = 1) -> Path:
    """Write the data of the adapter_tune phase's round ``tune_round``, ``<out>/data_tune`` (``data_tune<k>``): the
    data folder's clips plus that round's ``recolour_clips`` recoloured ones (the next recoloured seeds) and
    ``removal_clips`` removal ones (the next removal seeds), so the tuned
    adapter still sees every clip the adapter phase did. Clips already written to the data folder or an earlier
    round's are linked from there."""
    tune = recipe.tune_round(tune_round)
    extra = dataclasses.replace(recipe, data_recolour_clips=recipe.data_recolour_clips + tune.recolour_clips,
                                data_removal_clips=recipe.data_removal_clips + tune.removal_clips)
    earlier = tuple(out / r.data_folder for r in reversed(recipe.tune_rounds()[:tune_round - 1]))
    earlier += (out / _DATA_FOLDER,)
    return write_dataset(out / tune.data_folder, extra, reuse=earlier)


_RUN_PATHS = ("model", "data", "out", "from_adapter", "resume")  # TrainConfig fields that train-demo sets per run


def check_finished_round(recipe: DemoRecipe, out: Path, tune: "TuneRound", backbone: Path, start: Path) -> None:
    """Refuse a finished round whose saved settings (``train_config.json``) are not the ones ``recipe`` gives that
    round: another recipe's round of the same number trained in ``out`` (e.g. recipe-four-rounds.json's round 4 in a
    run of recipe.json), which train-demo would otherwise skip and ship as this one. Paths are not compared (a run
    folder may be moved)."""
    saved_path = out / tune.adapter_folder / "train_config.json"
    if not saved_path.is_file():
        return
    from .train import TrainConfig

    # a setting added to TrainConfig after the round was trained is missing from its file: it ran with the default
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    saved = {**json.loads(json.dumps(defaults, default=str)), **json.loads(saved_path.read_text())}
    want = json.loads(json.dumps(adapter_config(recipe, backbone, out / tune.data_folder, out / tune.adapter_folder,
                                                tune_from=start, tune_round=tune.number).to_dict(), default=str))
    differ = sorted(k for k in want if k not in _RUN_PATHS and saved.get(k) != want[k])
    if differ:
        shown = ", ".join(f"{k} {saved.get(k)!r} (the recipe: {want[k]!r})" for k in differ[:4])
        raise TrainConfigError(f"{tune.label}: {out / tune.adapter_folder} was trained with other settings: {shown}"
                               f"{' ...' if len(differ) > 4 else ''}: another recipe's round {tune.number}, or this "
                               "round changed since it finished. Move that folder (and its data folder) aside to "
                               "train it again, or give this recipe another --out.")


def trained_adapters(recipe: DemoRecipe, out: Path) -> dict[str, Path]:
    """The adapter files the package ships, by the name each gets there: the rounds' that set ``package_as``, or,
    where none does, the adapter_tune phase's last round's (the adapter phase's without rounds) as
    :data:`PACKAGE_ADAPTER`."""
    rounds = recipe.tune_rounds()
    named = {tune.package_as: out / tune.adapter_folder / "adapter.safetensors"
             for tune in rounds if tune.package_as is not None}
    if named:
        return named
    return {PACKAGE_ADAPTER: out / (rounds[-1].adapter_folder if rounds else _ADAPTER_FOLDER) / "adapter.safetensors"}


def check_adapter_backbone(adapter_out: Path, backbone: Path) -> None:
    """Refuse to continue or package an adapter that was trained on the other backbone folder of this run (the
    ``tune`` phase turned on or off between runs): it would pair LoRA weights with a UNet they were not trained on."""
    saved = adapter_out / "train_config.json"
    if not saved.is_file():
        return
    trained_on = Path(str(json.loads(saved.read_text()).get("model", ""))).name
    if trained_on and trained_on != backbone.name:
        raise ResumeError(
            f"adapter: {adapter_out} was trained on {trained_on}/, but this recipe's adapter needs {backbone.name}/ "
            "(the tune phase was turned on or off). Move that folder aside to train a new adapter, or use the recipe "
            "that made it.")


def check_same_encoder(vae_folder: Path, backbone: Path,
                       fix: str = "a decoder_tune phase must start from this run's finished VAE (move the folder "
                                  "aside and rerun decoder_tune)", what: str = "package") -> None:
    """Refuse a VAE whose encoder (or quant_conv) differs from the one the backbone was trained on: its latents would
    not be the ones the UNet and the adapter learned."""
    from safetensors.torch import load_file

    def encoder_side(folder: Path) -> dict:
        weights = load_file(folder / "diffusion_pytorch_model.safetensors")
        return {k: v for k, v in weights.items() if k.startswith(("encoder.", "quant_conv."))}

    ours, theirs = encoder_side(vae_folder), encoder_side(backbone / "vae")
    if ours.keys() != theirs.keys() or any(not torch.equal(ours[k], theirs[k]) for k in ours):
        raise TrainConfigError(f"{what}: the encoder of {vae_folder} is not the one {backbone} was trained on; "
                               f"{fix}.")


def package(backbone: Path, adapters: dict[str, Path], dest: Path, vae: Path | None = None) -> Path:
    """Copy the backbone folder and the adapters (file name in ``dest`` -> adapter file) into ``dest`` (with ``vae``'s
    folder as its VAE where given: the decoder_tune phase's, checked to share the backbone's encoder); refuse above
    :data:`MAX_PACKAGE_MB`."""
    if vae is not None:
        check_same_encoder(vae, backbone)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(backbone, tmp)
    if vae is not None:
        shutil.rmtree(tmp / "vae")
        shutil.copytree(vae, tmp / "vae")
    for name, adapter in adapters.items():
        shutil.copy2(adapter, tmp / name)
    size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) / 2**20
    if size > MAX_PACKAGE_MB:
        raise TrainConfigError(f"package: {size:.1f} MB is above the {MAX_PACKAGE_MB:.0f} MB the repository ships; "
                               "shrink the architecture in the recipe.")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    logger.info("package: %s (%.1f MB)", dest, size)
    return dest


def train_demo(recipe: DemoRecipe, out: str | os.PathLike, *, max_minutes: float | None = None,
               phases: tuple[str, ...] = PHASES) -> Path | None:
    """Run the phases in order, resuming each from its newest checkpoint. Returns the packaged model folder (``out``
    when ``package`` is not among ``phases``), or None when ``max_minutes`` ran out first (run again to resume)."""
    from .train import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=1))
    deadline = time.monotonic() + 60.0 * max_minutes if max_minutes else None
    data = out / _DATA_FOLDER
    if "data" in phases:
        write_dataset(data, recipe)
    if {"vae", "decoder", "backbone", "tune"} & set(phases):  # the backbone trains on (and saves) the finished VAE
        vae = train_vae(recipe, out, deadline)
        if vae is None:
            return None
        if {"decoder", "backbone", "tune"} & set(phases):
            vae = train_decoder(recipe, vae, out, deadline)
            if vae is None:
                return None
            if recipe.balance_latents:
                vae = balance_vae(recipe, vae, out)
                backbone = out / _BACKBONE_FOLDERS["backbone"]
                if (backbone / "model_index.json").is_file():  # finished before balance_latents was turned on
                    check_same_encoder(vae_folder(out, "balance"), backbone, what="balance_latents",
                                       fix="that backbone was trained on the unbalanced latents; move it (and the "
                                           "tune and adapter folders) aside to train them on the balanced ones")
    if "backbone" in phases:
        if train_backbone(recipe, vae, out, deadline) is None:
            return None
    if "tune" in phases:
        if tune_backbone(recipe, vae, out, deadline) is None:
            return None
    backbone = trained_backbone(recipe, out)
    adapter_out = out / _ADAPTER_FOLDER
    rounds = recipe.tune_rounds()
    if {"adapter", "adapter_tune", "package"} & set(phases):
        for folder in [adapter_out] + [out / tune.adapter_folder for tune in rounds]:
            check_adapter_backbone(folder, backbone)
    if "adapter" in phases:
        if not (adapter_out / "adapter.safetensors").is_file():
            if train(adapter_config(recipe, backbone, data, adapter_out), deadline=deadline) is None:
                return None
    previous, previous_name = adapter_out / "adapter.safetensors", "the adapter phase"
    for tune in rounds if {"adapter_tune", "package"} & set(phases) else []:
        tuned = out / tune.adapter_folder / "adapter.safetensors"
        if tuned.is_file():
            check_finished_round(recipe, out, tune, backbone, previous)
        elif "adapter_tune" in phases:
            if not previous.is_file():
                raise TrainConfigError(f"{tune.label}: {previous} is not finished; run {previous_name} first.")
            config = adapter_config(recipe, backbone, tune_dataset(recipe, out, tune.number), tuned.parent,
                                    tune_from=previous, tune_round=tune.number)
            if train(config, deadline=deadline) is None:
                return None
        previous, previous_name = tuned, tune.label
    tuned_vae = None
    if recipe.decoder_tune.steps:
        if "decoder_tune" in phases:
            tuned_vae = tune_decoder(recipe, out, deadline)
            if tuned_vae is None:
                return None
        elif "package" in phases:
            tuned_vae = vae_folder(out, "decoder_tune")
            if not (tuned_vae / "config.json").is_file():
                raise TrainConfigError(f"package: the recipe tunes the decoder but {tuned_vae} is not finished; "
                                       "run the decoder_tune phase first.")
    if "package" in phases:
        adapters = trained_adapters(recipe, out)
        for adapter in adapters.values():
            if not adapter.is_file():
                raise TrainConfigError(f"package: {adapter} is not finished; run the "
                                       f"{'adapter_tune' if rounds else 'adapter'} phase first.")
        return package(backbone, adapters, out / "demo_model", vae=tuned_vae)
    return out


