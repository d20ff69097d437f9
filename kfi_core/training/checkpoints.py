"""Training checkpoints: one atomic writer shared by every trainer, and the adapter trainer's checkpoints on it.

:func:`save_checkpoint_folder` writes ``<root>/<prefix><step:08d>/`` through a temporary folder renamed at the end
(:func:`kfi_core.files.atomic_folder`): one ``<name>.safetensors`` per weights entry (a module's whole state, or a
dict of tensors), ``optimizer.safetensors`` (:mod:`kfi_core.training.optim_state`: no pickle) and a JSON state,
written last; then it deletes all but the newest ``keep`` checkpoints beside it. The adapter trainer
(:mod:`kfi_core.training.trainer`) and the demo model's phases (research/demo_model/loop.py) both write with it.

The adapter trainer's layout (kept stable, so older runs resume): ``OUT/checkpoints/checkpoint-NNNNNNNN/`` with
``trainable.safetensors`` (the fp32 LoRA and conv_in weights: the frozen UNet is the base model's),
``optimizer.safetensors`` and ``training_state.json`` (step, data position, LR schedule, the settings that shape the
trajectory, the whole config). Every random draw is seeded by (seed, stage, sample number), so a checkpoint needs no
RNG state. :func:`export_checkpoint` turns a checkpoint into the adapter file the run would have written at that
step.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from kfi_core.errors import ResumeError, TrainConfigError
from kfi_core.files import atomic_folder
from kfi_core.model.adapter import save_adapter
from kfi_core.training.config import TrainConfig, check_removed_options, config_from_dict
from kfi_core.training.objective import load_base_model, setup_trainable_unet, trainable_state_dict
from kfi_core.training.optim_state import save_optimizer, scheduler_state

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_FORMAT = "kfi-train-checkpoint"
CHECKPOINT_FORMAT_VERSION = 2  # 1 (before 2026-12) went through accelerate's save_state, with pickles
TRAINABLE = "trainable"  # the weights entry of the adapter trainer's checkpoints
TRAINABLE_FILE = f"{TRAINABLE}.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "training_state.json"  # written last: its presence marks a complete checkpoint
# Settings that shape the trajectory: resuming with other values would not continue the same run.
RESUME_FINGERPRINT_KEYS = (
    "seed",
    "rank",
    "lora_alpha",
    "lora_lr",
    "p_mean",
    "p_std",
    "frame_stride",
    "keyframe_prob",
    "cond_dropout_prob",
    "masked_loss_weight",
    "keyframe_p_mean",
    "keyframe_p_std",
    "latent_channel_weights",
)


# --------------------------------------------------------------------------- any trainer's checkpoint folders


def list_checkpoint_folders(root: Path, prefix: str, marker: str | None = None) -> list[tuple[int, Path]]:
    """(step, folder) of every folder ``<prefix><digits>`` in ``root``, oldest first; with ``marker``, only the
    folders holding that file."""
    found = []
    if root.is_dir():
        for path in root.iterdir():
            digits = path.name[len(prefix) :]
            if (
                path.is_dir()
                and path.name.startswith(prefix)
                and digits.isdigit()
                and (marker is None or (path / marker).is_file())
            ):
                found.append((int(digits), path))
    return sorted(found)


def save_checkpoint_folder(
    root: Path,
    prefix: str,
    step: int,
    weights: dict[str, torch.nn.Module | dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    state: dict,
    *,
    state_file: str = STATE_FILE,
    keep: int = 0,
) -> Path:
    """Write ``root/<prefix><step:08d>`` atomically (a temporary folder renamed at the end, replacing an older one of
    that step): ``<name>.safetensors`` per ``weights`` entry (a module through safetensors' ``save_model``, a dict
    of tensors as it is), ``optimizer.safetensors``, then ``state`` as JSON in ``state_file``. With ``keep`` > 0,
    delete all but the newest ``keep`` checkpoints in ``root``. Returns the folder."""
    path = root / f"{prefix}{step:08d}"
    with atomic_folder(path) as tmp:
        for name, value in weights.items():
            target = str(tmp / f"{name}.safetensors")
            if isinstance(value, torch.nn.Module):
                save_model(value, target)
            else:
                save_file(value, target)
        save_optimizer(optimizer, tmp / OPTIMIZER_FILE)
        (tmp / state_file).write_text(json.dumps(state, indent=2), encoding="utf-8")  # last: marks completion
    if keep > 0:
        for _, old in list_checkpoint_folders(root, prefix)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint_modules(path: Path, modules: dict[str, torch.nn.Module]) -> None:
    """Load each module of ``modules`` strictly from ``path/<name>.safetensors`` (written by
    :func:`save_checkpoint_folder`); a :class:`ResumeError` naming the file when one cannot be loaded."""
    for name, module in modules.items():
        file = path / f"{name}.safetensors"
        try:
            load_model(module, str(file), strict=True)
        except Exception as err:  # noqa: BLE001 - any failure to read is a damaged checkpoint to the user
            raise ResumeError(
                f"{file}: cannot load ({type(err).__name__}: {err}). Delete this checkpoint to resume "
                "from the one before."
            ) from err


# --------------------------------------------------------------------------- the adapter trainer's checkpoints


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint under OUT/checkpoints, oldest first."""
    return list_checkpoint_folders(out / "checkpoints", CHECKPOINT_PREFIX)


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
        raise ResumeError(
            f"--resume {path}: no such checkpoint folder. Give 'latest' or a folder "
            f"{out / 'checkpoints' / (CHECKPOINT_PREFIX + '00001000')}-style path."
        )
    return path


def read_checkpoint_state(path: Path, what: str = "--resume") -> dict:
    """Check that a checkpoint folder is complete and return its training_state.json (``what`` names the argument
    that gave the folder, in errors)."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise ResumeError(
            f"{what} {path}: no {STATE_FILE}; the checkpoint is incomplete or not a KFI training "
            "checkpoint. Resume from an earlier checkpoint (or 'latest')."
        )
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        step = int(state["step"])
        fmt = state["format"]
    except (ValueError, KeyError, TypeError) as err:
        raise ResumeError(
            f"{what} {path}: {STATE_FILE} is damaged ({err!r}). Resume from an earlier checkpoint."
        ) from err
    version = state.get("format_version")
    if fmt == CHECKPOINT_FORMAT and version == 1:
        raise ResumeError(
            f"{what} {path}: a format-1 checkpoint from an older KFI, which stored the optimizer as a "
            "pickle; this KFI loads safetensors only. Start a new run, or finish this one with the "
            "KFI version that wrote it."
        )
    if fmt != CHECKPOINT_FORMAT or version != CHECKPOINT_FORMAT_VERSION:
        raise ResumeError(
            f"{what} {path}: format {fmt!r} v{version}; this KFI reads "
            f"{CHECKPOINT_FORMAT} v{CHECKPOINT_FORMAT_VERSION}."
        )
    missing = [n for n in (TRAINABLE_FILE, OPTIMIZER_FILE) if not (path / n).is_file()]
    if missing:
        raise ResumeError(
            f"{what} {path}: missing {', '.join(missing)} (step {step}). Resume from an earlier checkpoint."
        )
    if "lr_scheduler" not in state:
        raise ResumeError(
            f"{what} {path}: {STATE_FILE} is damaged (no 'lr_scheduler'). Resume from an earlier checkpoint."
        )
    return state


def resume_fingerprint(config: TrainConfig, world_size: int) -> dict:
    fp = {k: getattr(config, k) for k in RESUME_FINGERPRINT_KEYS}
    fp["world_size"] = world_size
    fp["stages"] = [[list(s.resolution), s.batch_size, s.grad_accum] for s in config.stages]
    return json.loads(json.dumps(fp))  # tuples -> lists, as read back from JSON


def check_resume_compatible(path: Path, state: dict, config: TrainConfig, world_size: int) -> None:
    saved, now = state.get("fingerprint", {}), resume_fingerprint(config, world_size)
    check_removed_options(saved, f"--resume {path}")
    if saved.get("stages") and now["stages"][: len(saved["stages"])] == saved["stages"]:
        saved = {**saved, "stages": now["stages"]}  # stages may be appended, not changed
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in now if saved.get(k) != now[k]]
    if diff:
        raise ResumeError(
            f"--resume {path}: the run's settings changed, so resuming would not continue the same "
            f"run: {'; '.join(diff)}. Use the original settings (steps may grow), or start a new run "
            "in a new --out folder."
        )
    if int(state["step"]) > config.total_steps:
        raise ResumeError(
            f"--resume {path}: the checkpoint is at step {state['step']}, past the {config.total_steps} "
            "steps configured. Raise --steps (or the stages' steps) to train further."
        )


def trainable_tensors(unet) -> dict[str, torch.Tensor]:
    """Copies of the trainable (LoRA + conv_in) weights, fp32 on the CPU: the frozen UNet is the base model's."""
    return {n: p.detach().float().cpu().contiguous().clone() for n, p in trainable_state_dict(unet).items()}


def load_trainable(unet, path: Path, what: str = "--resume") -> None:
    """Load a checkpoint's trainable weights into ``unet`` (set up with :func:`setup_trainable_unet`); a
    :class:`ResumeError` when names or shapes differ (``what`` names the argument that gave the checkpoint)."""
    tensors = load_file(str(path), device="cpu")
    params = trainable_state_dict(unet)
    if set(tensors) != set(params):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise ResumeError(
            f"{what} {path}: the trainable weights do not match this model (missing "
            f"{missing[:3]}, unexpected {extra[:3]}); resume with the same base model and rank."
        )
    with torch.no_grad():
        for name, param in params.items():
            if tuple(tensors[name].shape) != tuple(param.shape):
                raise ResumeError(
                    f"{what} {path}: {name} has shape {list(tensors[name].shape)}, the model "
                    f"needs {list(param.shape)}; resume with the same base model and rank."
                )
            param.copy_(tensors[name])


def checkpoint_state(trainer: Any, stage_index: int) -> dict:
    """The training_state.json of ``trainer`` (a :class:`kfi_core.training.trainer.Trainer`) now."""
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "step": trainer.state.step,
        "stage": stage_index,
        "samples_seen": trainer.state.samples_seen,
        "world_size": trainer.accelerator.num_processes,
        "lr_scheduler": scheduler_state(trainer.lr_scheduler),
        "fingerprint": resume_fingerprint(trainer.config, trainer.accelerator.num_processes),
        "config": json.loads(json.dumps(trainer.config.to_dict(), default=str)),
    }


def save_checkpoint(trainer: Any, step: int, state: dict, keep: int) -> Path:
    """Write OUT/checkpoints/checkpoint-<step> (:func:`save_checkpoint_folder`); keep the last ``keep``.

    The main process writes: data-parallel processes hold the same weights and optimizer state."""
    accelerator = trainer.accelerator
    final = checkpoint_dir(trainer.out, step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        weights = {TRAINABLE: trainable_tensors(accelerator.unwrap_model(trainer.unet))}
        save_checkpoint_folder(final.parent, CHECKPOINT_PREFIX, step, weights, trainer.optimizer, state, keep=keep)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def save_run_adapter(unet, model, config: TrainConfig, path) -> Path:
    """The adapter file of a run with ``config`` on base ``model``: what the run writes at its end, and what
    :func:`export_checkpoint` writes for a checkpoint."""
    return save_adapter(
        unet,
        path,
        base_variant=model.variant,
        num_frames=model.num_frames,
        training_resolution=tuple(int(v) for v in config.final_resolution),
    )


def export_checkpoint(
    checkpoint: str | os.PathLike, out: str | os.PathLike, *, model: str | None = None, num_frames: int | None = None
) -> Path:
    """Write a training checkpoint's LoRA and conv_in as an adapter file, the ``adapter.safetensors`` the run would
    have written had it ended at that step: to try a checkpoint while (or after) a long run trains.

    ``model`` is the base model the run trained on; by default the one its saved settings name."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise ResumeError(
            f"checkpoint {path}: no such folder. Give a checkpoint folder of a training run, such as "
            f"OUT/checkpoints/{CHECKPOINT_PREFIX}00001000."
        )
    state = read_checkpoint_state(path, what="checkpoint")
    if not isinstance(state.get("config"), dict):
        raise ResumeError(
            f"checkpoint {path}: {STATE_FILE} holds no training settings; export needs the run's "
            "LoRA rank and resolution. Use a checkpoint written by this KFI version."
        )
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
