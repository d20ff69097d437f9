"""One command for every phase (:func:`train_demo`), and the package: the backbone folder with the shipped adapters,
as ``kfi_core/assets/demo_model`` holds it."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from kfi_core.errors import TrainConfigError
from kfi_core.files import atomic_folder, atomic_write_text
from kfi_core.training import train

from .adapter import ADAPTER_FOLDER, DATA_FOLDER, adapter_config, check_finished_round, trained_adapters, tune_dataset
from .backbone import BACKBONE_FOLDER, train_backbone
from .data import write_dataset
from .recipe import PHASES, DemoRecipe
from .vae import balance_vae, train_decoder, train_vae, vae_folder

logger = logging.getLogger(__name__)

MAX_PACKAGE_MB = 30.0


def check_same_encoder(vae_folder: Path, backbone: Path, fix: str, what: str) -> None:
    """Refuse a VAE whose encoder (or quant_conv) differs from the one the backbone was trained on: its latents would
    not be the ones the UNet and the adapter learned."""

    def encoder_side(folder: Path) -> dict:
        weights = load_file(folder / "diffusion_pytorch_model.safetensors")
        return {k: v for k, v in weights.items() if k.startswith(("encoder.", "quant_conv."))}

    ours, theirs = encoder_side(vae_folder), encoder_side(backbone / "vae")
    if ours.keys() != theirs.keys() or any(not torch.equal(ours[k], theirs[k]) for k in ours):
        raise TrainConfigError(f"{what}: the encoder of {vae_folder} is not the one {backbone} was trained on; {fix}.")


def package(backbone: Path, adapters: dict[str, Path], dest: Path) -> Path:
    """Copy the backbone folder and the adapters (file name in ``dest`` -> adapter file) into ``dest`` (a temporary
    folder renamed: :func:`kfi_core.files.atomic_folder`); refuse above :data:`MAX_PACKAGE_MB`."""
    with atomic_folder(dest, create=False) as tmp:
        shutil.copytree(backbone, tmp)
        for name, adapter in adapters.items():
            shutil.copy2(adapter, tmp / name)
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) / 2**20
        if size > MAX_PACKAGE_MB:
            raise TrainConfigError(
                f"package: {size:.1f} MB is above the {MAX_PACKAGE_MB:.0f} MB the repository "
                "ships; shrink the architecture in the recipe."
            )
    logger.info("package: %s (%.1f MB)", dest, size)
    return dest


def _vae_phases(recipe: DemoRecipe, out: Path, phases: tuple[str, ...], deadline: float | None):
    """The finished (and, with balance_latents, balanced) VAE the backbone trains on; None if out of time."""
    vae = train_vae(recipe, out, deadline)
    if vae is None or not {"decoder", "backbone"} & set(phases):
        return vae
    vae = train_decoder(recipe, vae, out, deadline)
    if vae is None or not recipe.balance_latents:
        return vae
    vae = balance_vae(recipe, vae, out)
    backbone = out / BACKBONE_FOLDER
    if (backbone / "model_index.json").is_file():  # finished before balance_latents was turned on
        check_same_encoder(
            vae_folder(out, "balance"),
            backbone,
            what="balance_latents",
            fix="that backbone was trained on the unbalanced latents; move it (and the adapter "
            "folders) aside to train them on the balanced ones",
        )
    return vae


def _adapter_phases(
    recipe: DemoRecipe, out: Path, backbone: Path, phases: tuple[str, ...], deadline: float | None
) -> bool:
    """The adapter phase, then the adapter_tune rounds in turn; False if out of time."""
    adapter_out = out / ADAPTER_FOLDER
    if "adapter" in phases and not (adapter_out / "adapter.safetensors").is_file():
        if train(adapter_config(recipe, backbone, out / DATA_FOLDER, adapter_out), deadline=deadline) is None:
            return False
    previous, previous_name = adapter_out / "adapter.safetensors", "the adapter phase"
    for tune in recipe.tune_rounds() if {"adapter_tune", "package"} & set(phases) else []:
        tuned = out / tune.adapter_folder / "adapter.safetensors"
        if tuned.is_file():
            check_finished_round(recipe, out, tune, backbone, previous)
        elif "adapter_tune" in phases:
            if not previous.is_file():
                raise TrainConfigError(f"{tune.label}: {previous} is not finished; run {previous_name} first.")
            config = adapter_config(
                recipe,
                backbone,
                tune_dataset(recipe, out, tune.number),
                tuned.parent,
                tune_from=previous,
                tune_round=tune.number,
            )
            if train(config, deadline=deadline) is None:
                return False
        previous, previous_name = tuned, tune.label
    return True


def train_demo(
    recipe: DemoRecipe, out: str | os.PathLike, *, max_minutes: float | None = None, phases: tuple[str, ...] = PHASES
) -> Path | None:
    """Run the phases in order, resuming each from its newest checkpoint. Returns the packaged model folder (``out``
    when ``package`` is not among ``phases``), or None when ``max_minutes`` ran out first (run again to resume)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.json", json.dumps(dataclasses.asdict(recipe), indent=1))
    deadline = time.monotonic() + 60.0 * max_minutes if max_minutes else None
    if "data" in phases:
        write_dataset(out / DATA_FOLDER, recipe)
    if {"vae", "decoder", "backbone"} & set(phases):  # the backbone trains on (and saves) the finished VAE
        vae = _vae_phases(recipe, out, phases, deadline)
        if vae is None:
            return None
    if "backbone" in phases and train_backbone(recipe, vae, out, deadline) is None:
        return None
    backbone = out / BACKBONE_FOLDER
    if not _adapter_phases(recipe, out, backbone, phases, deadline):
        return None
    if "package" not in phases:
        return out
    adapters = trained_adapters(recipe, out)
    for adapter in adapters.values():
        if not adapter.is_file():
            raise TrainConfigError(
                f"package: {adapter} is not finished; run the "
                f"{'adapter_tune' if recipe.tune_rounds() else 'adapter'} phase first."
            )
    return package(backbone, adapters, out / "demo_model")
