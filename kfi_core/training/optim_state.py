"""Optimizer and LR-schedule state in safetensors and JSON: checkpoints never hold a pickle.

torch's ``optimizer.state_dict()`` is nested dicts of tensors and numbers; ``torch.save`` would pickle
it, and ``torch.load`` of a pickle can run code. Here every tensor goes into a safetensors file under
``<parameter index>.<name>`` (AdamW: ``step``, ``exp_avg``, ``exp_avg_sq``) and the param groups
(learning rates, betas, the parameter index lists) into its JSON metadata, so a round trip is exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kfi_core.errors import ResumeError

PARAM_GROUPS_KEY = "param_groups"


def save_optimizer(optimizer: torch.optim.Optimizer, path: str | Path) -> None:
    """Write ``optimizer``'s state to ``path`` (safetensors)."""
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors = {
        f"{idx}.{key}": value.detach().contiguous().cpu()
        for idx, entry in state["state"].items()
        for key, value in entry.items()
        if torch.is_tensor(value)
    }
    save_file(tensors, str(path), metadata={PARAM_GROUPS_KEY: json.dumps(state["param_groups"])})


def load_optimizer(optimizer: torch.optim.Optimizer, path: str | Path) -> None:
    """Load a file written by :func:`save_optimizer` into ``optimizer`` (same parameters, same order).

    Raises :class:`~kfi_core.errors.ResumeError` when the file is not such a file or was written for other
    parameters."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if PARAM_GROUPS_KEY not in metadata:
            raise ResumeError(
                f"{path}: not an optimizer state file (no {PARAM_GROUPS_KEY!r} metadata); resume from "
                "a checkpoint KFI wrote."
            )
        groups = json.loads(metadata[PARAM_GROUPS_KEY])
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key in f.keys():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = f.get_tensor(key)
    saved = [len(g["params"]) for g in groups]
    now = [len(g["params"]) for g in optimizer.param_groups]
    if saved != now:
        raise ResumeError(
            f"{path}: the optimizer state is for parameter groups of sizes {saved}, this model has "
            f"{now}; resume with the same model and adapter settings."
        )
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def scheduler_state(scheduler) -> dict:
    """A torch LR scheduler's state as JSON-able values (lambda functions are code, not state: left out)."""
    state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    return json.loads(json.dumps(state))


def load_scheduler_state(scheduler, state: dict) -> None:
    """Inverse of :func:`scheduler_state` for a scheduler built the same way."""
    values = dict(state)
    if hasattr(scheduler, "lr_lambdas"):
        values["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
    scheduler.load_state_dict(values)
