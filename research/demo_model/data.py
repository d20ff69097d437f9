"""Phase data: the procedural training clips, as tensors for the VAE and backbone phases (drawn per step) and as
PNG folders for the adapter phases (read from disk like any user's dataset)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kfi_core.errors import TrainConfigError
from kfi_core.evaluation.procedural import EVAL_SEED_BASE, TEXTURES, ProceduralConfig, make_procedural_clip, with_config
from kfi_core.files import atomic_folder
from kfi_core.training.data import HOLE_MASK_FOLDER, TRACK_MASK_FOLDER

from .recipe import EASY_SEED_BASE, RECOLOUR_SEED_BASE, REMOVAL_SEED_BASE, TRAIN_SEED_LIMIT, DemoRecipe

logger = logging.getLogger(__name__)

_DATA_STREAM, _EASY_DATA_STREAM, _RECOLOUR_DATA_STREAM, _REMOVAL_DATA_STREAM = 11, 16, 17, 19

_DATA_VERSION = "2"  # .done content; "2": clips showing the target carry masks/ (an empty .done: version 1)


def training_clip_with_masks(
    seed: int, num_frames: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A procedural training clip [F, 3, H, W] in 0..1 with seed-drawn difficulty knobs, and the masks of
    its moving target object [F, 1, H, W] (grown by a pixel), or None when the clip does not show it.

    Half the clips show the target object (moving, occluding; in its original or edited appearance), half
    the clean scene; all stay below :data:`EVAL_SEED_BASE` so no evaluation clip is ever trained on.
    """
    if not 0 <= seed < EVAL_SEED_BASE:
        raise TrainConfigError(f"training seed {seed}: must be below {EVAL_SEED_BASE} (held-out evaluation seeds).")
    rng = np.random.default_rng([int(seed), _DATA_STREAM])
    cfg = ProceduralConfig(
        texture=str(rng.choice(TEXTURES)),
        texture_period=float(rng.uniform(3.0, 14.0)),
        max_pan=float(rng.uniform(0.0, 3.0)),
        object_speed=float(rng.uniform(0.0, 3.0)),
        distractor=bool(rng.random() < 0.7),
        lighting_change=float(rng.uniform(0.0, 0.5)),
    )
    task = "edit" if rng.random() < 0.5 else "removal"
    clip = make_procedural_clip(task, num_frames=num_frames, height=height, width=width, seed=int(seed), config=cfg)
    truth = rng.random() < 0.5
    if truth and task == "removal":
        return clip.ground_truth, None  # the clean scene: nothing to track
    return (clip.ground_truth if truth else clip.frames), clip.masks


def _target_shown_either_way(
    seed: int, rng: np.random.Generator, num_frames: int, height: int, width: int, **clip_options
) -> tuple[torch.Tensor, torch.Tensor]:
    """The edit clip of training ``seed`` (``clip_options`` go to make_procedural_clip), its target shown edited or
    as it is by one draw of ``rng``, and the target's masks: the extra clips of :func:`write_dataset`."""
    if not 0 <= seed < TRAIN_SEED_LIMIT:
        raise TrainConfigError(f"training seed {seed}: must be below {TRAIN_SEED_LIMIT} (held-out seeds above).")
    clip = make_procedural_clip(
        "edit", num_frames=num_frames, height=height, width=width, seed=int(seed), **clip_options
    )
    return (clip.ground_truth if rng.random() < 0.5 else clip.frames), clip.masks


def training_easy_clip(seed: int, num_frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip of the benchmark's ``easy`` preset (slow target, little pan, constant light) that always shows the
    target, in its original or edited appearance, and the target's masks: what teaches the adapter to carry a
    keyframe's appearance into the hole, which on the random clips of :func:`training_clip_with_masks` (mostly
    moving fast, under pans) it does not learn in a CPU run (NOTES.md, 'Teaching the adapter to read the keyframe')."""
    rng = np.random.default_rng([int(seed), _EASY_DATA_STREAM])
    return _target_shown_either_way(seed, rng, num_frames, height, width, difficulty="easy")


def training_recolour_clip(seed: int, num_frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip of the ``easy`` or ``medium`` preset (seed-chosen) that always shows the target, as it is or recoloured
    (the edit task's ``recolour`` pattern: its stripes in two new colours), and the target's masks. Unlike the
    checker of :func:`training_easy_clip`'s edited targets, which at 64x64 is finer than the latent keeps, a
    recoloured target is something the VAE holds, so copying it from the keyframe pays in the loss."""
    rng = np.random.default_rng([int(seed), _RECOLOUR_DATA_STREAM])
    preset = "easy" if rng.random() < 0.5 else "medium"
    cfg = with_config(ProceduralConfig.preset(preset), edit_pattern="recolour")
    return _target_shown_either_way(seed, rng, num_frames, height, width, config=cfg)


def training_removal_clip(seed: int, num_frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A removal clip of the ``easy`` or ``medium`` preset (seed-chosen): the clean scene, the target removed, and
    the removed target's masks, written as the clip's ``holes/`` (kfi_core.training.data step 6). The hole is where
    the target
    was and the answer under it is the background, partly shown by the other frames as the target moves: object
    removal as the benchmark asks it. The object masks of the other clips (``masks/``) cannot teach this: the answer
    under them is the target itself, which without a keyframe nothing shows."""
    if not REMOVAL_SEED_BASE <= seed < TRAIN_SEED_LIMIT:
        raise TrainConfigError(f"removal training seed {seed}: give {REMOVAL_SEED_BASE} .. {TRAIN_SEED_LIMIT - 1}.")
    rng = np.random.default_rng([int(seed), _REMOVAL_DATA_STREAM])
    preset = "easy" if rng.random() < 0.5 else "medium"
    clip = make_procedural_clip(
        "removal",
        num_frames=num_frames,
        height=height,
        width=width,
        seed=int(seed),
        config=ProceduralConfig.preset(preset),
    )
    return clip.ground_truth, clip.masks


def training_clip(seed: int, num_frames: int, height: int, width: int) -> torch.Tensor:
    """The frames of :func:`training_clip_with_masks`."""
    return training_clip_with_masks(seed, num_frames, height, width)[0]


def training_batch(
    seed: int, stream: int, step: int, batch_size: int, num_frames: int, height: int, width: int
) -> torch.Tensor:
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
        t0, y0, x0 = (
            int(torch.randint(0, n + 1, (1,), generator=generator)) for n in (f - frames, h - size_h, w - size_w)
        )
        out.append(clips[i, t0 : t0 + frames, :, y0 : y0 + size_h, x0 : x0 + size_w])
    return torch.stack(out)


def step_generator(seed: int, stream: int, step: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(stream), int(step), 1]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def write_dataset(
    out: Path, recipe: DemoRecipe, *, recolour_clips: int = 0, removal_clips: int = 0, reuse: tuple[Path, ...] = ()
) -> Path:
    """Write ``recipe.data_clips`` procedural clips as PNG folders (seeds 0..N-1), then ``recipe.data_easy_clips``
    easy ones (``easy_NNNNNN``, seeds from :data:`EASY_SEED_BASE`) and ``recolour_clips`` recoloured ones
    (``recolour_NNNNNN``, seeds from :data:`RECOLOUR_SEED_BASE`), each clip that shows the target
    object with its masks in ``masks/`` (kfi_core.training.data's track masks), and ``removal_clips`` removal
    ones (``removal_NNNNNN``, seeds from :data:`REMOVAL_SEED_BASE`), clean, with the removed target's masks in
    ``holes/``. Skips finished clips; a clip finished by an
    older version without its masks gets them (the clips are seeded, so the frames are the same). A clip finished
    under the same name in one of the ``reuse`` folders (data folders of this run, written from the same recipe) is
    linked from there (:func:`_link_clip`) rather than made again."""

    def save(images: torch.Tensor, folder: Path) -> None:
        folder.mkdir(exist_ok=True)
        for t, image in enumerate(images):
            pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
            path = folder / f"{t:04d}.png"
            path.unlink(missing_ok=True)  # never write through a link into another folder's clip
            Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)

    h, w = recipe.resolution
    out.mkdir(parents=True, exist_ok=True)
    kinds = [
        ("clip", training_clip_with_masks, 0, recipe.data_clips, TRACK_MASK_FOLDER),
        ("easy", training_easy_clip, EASY_SEED_BASE, recipe.data_easy_clips, TRACK_MASK_FOLDER),
        ("recolour", training_recolour_clip, RECOLOUR_SEED_BASE, recolour_clips, TRACK_MASK_FOLDER),
        ("removal", training_removal_clip, REMOVAL_SEED_BASE, removal_clips, HOLE_MASK_FOLDER),
    ]
    clips = [
        (f"{prefix}_{i:06d}", lambda make=make, seed=base + i: make(seed, recipe.data_frames, h, w), folder)
        for prefix, make, base, count, folder in kinds
        for i in range(count)
    ]
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
    logger.info(
        "dataset: %d procedural clips (%d easy, %d recoloured, %d removal; %d linked from earlier data folders) in %s",
        len(clips),
        recipe.data_easy_clips,
        recolour_clips,
        removal_clips,
        linked,
        out,
    )
    return out


def _finished_clip(folder: Path) -> bool:
    done = folder / ".done"
    return done.is_file() and done.read_text().strip() == _DATA_VERSION


def _link_clip(source: Path, folder: Path) -> None:
    """Give ``folder`` the files of the finished clip ``source`` as hard links (copies where the file system makes
    none), through a hidden temporary folder renamed at the end (:func:`kfi_core.files.atomic_folder`), so an
    interrupted run leaves no half-linked clip
    (kfi_core.training.data skips hidden folders). :func:`write_dataset` unlinks a file before writing it, so remaking a
    clip in one folder never changes another's."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    with atomic_folder(folder, create=False) as tmp:
        shutil.copytree(source, tmp, copy_function=link_or_copy)
