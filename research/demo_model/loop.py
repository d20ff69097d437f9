"""The loop every from-scratch phase (vae, decoder, backbone) runs: AdamW from the newest checkpoint to the phase's step
count, with a deadline that ends a run cleanly. Checkpoints (``<run>/checkpoints/step_NNNNNNNN/``: one safetensors
file per trainable module, the optimizer, ``state.json``) go through kfi_core's checkpoint writer
(:func:`kfi_core.training.checkpoints.save_checkpoint_folder`), the one the adapter trainer uses."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kfi_core.errors import NonFiniteError, ResumeError
from kfi_core.training.checkpoints import (
    OPTIMIZER_FILE,
    list_checkpoint_folders,
    load_checkpoint_modules,
    save_checkpoint_folder,
)
from kfi_core.training.objective import lr_scale
from kfi_core.training.optim_state import load_optimizer

from .recipe import DemoRecipe, PhaseConfig

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step_"
STATE_FILE = "state.json"  # the phases' checkpoint state (the adapter trainer's is training_state.json)


def list_phase_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, checkpoint) of every complete checkpoint of the phase run in ``folder``, oldest first."""
    return list_checkpoint_folders(folder / "checkpoints", CHECKPOINT_PREFIX, marker=STATE_FILE)


def save_phase_checkpoint(
    folder: Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    fingerprint: dict,
    keep: int,
) -> Path:
    """Write modules (safetensors), optimizer and step atomically, with kfi_core's checkpoint writer."""
    return save_checkpoint_folder(
        folder / "checkpoints",
        CHECKPOINT_PREFIX,
        step,
        modules,
        optimizer,
        {"step": step, "fingerprint": fingerprint},
        state_file=STATE_FILE,
        keep=keep,
    )


def load_phase_checkpoint(
    path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, fingerprint: dict
) -> int:
    """Load a checkpoint strictly; refuse one written by a different recipe."""
    state = json.loads((path / STATE_FILE).read_text())
    saved = state.get("fingerprint") or {}
    if any(key in saved and saved[key] != value for key, value in fingerprint.items()):
        raise ResumeError(
            f"{path}: written by a different recipe ({state.get('fingerprint')} here, {fingerprint} now). Resume "
            "with the recipe that started it, or give a new --out."
        )
    load_checkpoint_modules(path, modules)
    load_optimizer(optimizer, path / OPTIMIZER_FILE)
    return int(state["step"])


def lr_at(phase: PhaseConfig, step: int) -> float:
    """Linear warmup, constant, then a linear decay to 10 % over the last ``decay_fraction`` of steps."""
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
        logger.info(
            "%s: steps %d..%d, %d trainable parameters", run.name, step, phase.steps, sum(p.numel() for p in params)
        )
    losses: list[float] = []
    start = time.monotonic()
    while step < phase.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(phase, step)
        loss, extras = run.loss_fn(step)
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"{run.name}: the loss became {loss.item()} at step {step}; lower lr in the recipe "
                "and resume from the last checkpoint."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if phase.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, phase.max_grad_norm)
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % phase.log_every == 0 or step == phase.steps:
            entry = {
                "step": step,
                "loss": float(np.mean(losses)),
                "lr": lr_at(phase, step - 1),
                "s_per_step": (time.monotonic() - start) / len(losses),
                **extras,
            }
            with log_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")
            logger.info(
                "%s step %d/%d loss %.4f (%.2f s/step)", run.name, step, phase.steps, entry["loss"], entry["s_per_step"]
            )
            losses, start = [], time.monotonic()
        out_of_time = deadline is not None and time.monotonic() > deadline
        if step % phase.checkpoint_every == 0 or step == phase.steps or out_of_time:
            save_phase_checkpoint(run.folder, step, run.modules, optimizer, run.fingerprint, phase.keep_checkpoints)
        if out_of_time and step < phase.steps:
            logger.info(
                "%s: time is up at step %d of %d; run the same command again to resume", run.name, step, phase.steps
            )
            return False
    return True


def fingerprint(recipe: DemoRecipe, phase_name: str) -> dict:
    """What a checkpoint must share with the recipe that resumes it. ``steps`` is not part of it: a phase may be
    lengthened or shortened between runs (the LR schedule follows the new length from the resumed step)."""
    values = {
        "seed": recipe.seed,
        "num_frames": recipe.num_frames,
        "resolution": list(recipe.resolution),
        "phase": phase_name,
        "batch_size": getattr(recipe, phase_name).batch_size,
        "vae_config": recipe.vae_config,
    }
    if phase_name not in ("vae", "decoder"):  # the phases that train on the (balanced or plain) finished latents
        values["balance_latents"] = recipe.balance_latents  # checkpoints from before the setting lack it and resume
    return values
