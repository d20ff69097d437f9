"""KFI: keyframe-guided video inpainting on Stable Video Diffusion.

A pure library (no ComfyUI imports) with a CLI: ``python -m kfi_core --help``. The public API is below; each name is
imported on first use, so ``import kfi_core`` stays free (no torch, no diffusers)::

    import kfi_core

    model = kfi_core.load_kfi_model("svd_xt.safetensors", adapter="kfi.safetensors")
    frames, _ = kfi_core.read_frames("clip.mp4")
    clip = kfi_core.prepare_clip(frames, kfi_core.read_masks("mask.mp4"))
    result = kfi_core.inpaint(model, clip, kfi_core.PropagateSettings(steps=25))
    kfi_core.write_frames(result, "result.mp4")

The subpackages, from the bottom up: ``media`` (files, masks, keyframes, crops), ``model`` (loading, adapters),
``inference`` (condition, sampling, schedules, the executor), ``training`` and ``evaluation``; ``cli`` and ``jobs``
on top.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module (a subpackage's face, or a top-level module) that defines it
_PUBLIC = {
    "KfiError": "kfi_core.errors",
    "KfiModel": "kfi_core.model",
    "load_kfi_model": "kfi_core.model",
    "read_frames": "kfi_core.media",
    "read_masks": "kfi_core.media",
    "write_frames": "kfi_core.media",
    "ClipInputs": "kfi_core.inference",
    "prepare_clip": "kfi_core.inference",
    "PropagateSettings": "kfi_core.inference",
    "inpaint": "kfi_core.inference",
    "propagate": "kfi_core.inference",
    "Schedule": "kfi_core.inference",
    "build_schedule": "kfi_core.inference",
    "TrainConfig": "kfi_core.training",
    "load_train_config": "kfi_core.training",
    "train": "kfi_core.training",
    "evaluate": "kfi_core.evaluation",
    "inpaint_clip": "kfi_core.jobs",
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'kfi_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
