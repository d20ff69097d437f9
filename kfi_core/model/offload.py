"""Offload: keep the model's weights off the device except where a phase needs them (cards of 8-12 GB).

Modes (``KfiModel.offload``), as diffusers names them for its pipelines:

- ``none``: every component on the device for the whole run (fastest; needs the most memory).
- ``model``: the components stay on the host; each moves to the device whole when it is called and the others go
  back to the host (image encoder, then the VAE encoder, then the UNet for every step, then the VAE decoder). One
  component's weights are on the device at a time: the UNet's, about 3 GB in fp16 for svd-xt. A move costs a host to
  device copy per phase, not per step, so a run is a little slower than ``none``.
- ``sequential``: accelerate's hooks (``accelerate.cpu_offload``) keep every weight on the host and move each
  layer's weights to the device just before it runs: the least memory (one layer's weights at a time) and much slower
  (every step copies the whole UNet).

Code that places tensors asks :func:`execution_device` for a component's device, never its parameters (which are
on the host, or on the ``meta`` device under accelerate's hooks). :func:`set_offload` switches modes; switching
back to ``none`` restores ordinary modules (hooks removed, weights real again). ``kfi_core.inference.plan`` estimates
the peak device memory of each mode.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from kfi_core.errors import SettingsError

logger = logging.getLogger(__name__)

OFFLOAD_MODES = ("none", "model", "sequential")
COMPONENTS = ("image_encoder", "vae", "unet")
HOST = torch.device("cpu")
_DEVICE_ATTR = "_kfi_execution_device"


def check_offload(mode: Any) -> str:
    if mode not in OFFLOAD_MODES:
        raise SettingsError(
            f"offload: got {mode!r}; choose one of {', '.join(OFFLOAD_MODES)} (none: fastest; model: one component "
            "on the device at a time; sequential: one layer at a time, least memory, slowest)."
        )
    return mode


def execution_device(module: torch.nn.Module) -> torch.device:
    """The device a component computes on: the offload's device when one is set, else its weights' device."""
    device = getattr(module, _DEVICE_ATTR, None)
    if device is not None:
        return device
    return next(module.parameters()).device


def _move(module: torch.nn.Module, device: torch.device) -> None:
    # torch's own Module.to: only the device changes, dtypes stay (diffusers' .to adds a spurious warning)
    torch.nn.Module.to(module, device=device)


class ModelOffload:
    """Mode ``model``: a forward pre-hook on each component and on each of its direct children (the VAE's encode and
    decode call its encoder and decoder, not its forward) puts that component on the device and the others on the
    host. ``resident`` names the component on the device now."""

    def __init__(self, kfi, device: torch.device):
        self.kfi, self.device, self.resident = kfi, device, None
        self.handles = []
        for name in COMPONENTS:
            module = getattr(kfi, name)
            _move(module, HOST)
            setattr(module, _DEVICE_ATTR, device)
            for part in (module, *module.children()):
                self.handles.append(part.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name: str):
        def pre_hook(_module, _args):
            self.activate(name)

        return pre_hook

    def activate(self, name: str) -> None:
        if self.resident == name:
            return
        for other in COMPONENTS:
            if other != name:
                _move(getattr(self.kfi, other), HOST)
        _move(getattr(self.kfi, name), self.device)
        self.resident = name
        logger.debug("offload model: %s on %s", name, self.device)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for name in COMPONENTS:
            module = getattr(self.kfi, name)
            _move(module, HOST)
            if hasattr(module, _DEVICE_ATTR):
                delattr(module, _DEVICE_ATTR)


class SequentialOffload:
    """Mode ``sequential``: accelerate's ``cpu_offload`` on each component; the host copy of each component's weights
    is kept here so that :meth:`remove` can give the modules real weights back."""

    def __init__(self, kfi, device: torch.device):
        from accelerate import cpu_offload

        self.kfi, self.device, self.states = kfi, device, {}
        for name in COMPONENTS:
            module = getattr(kfi, name)
            _move(module, HOST)
            state = {k: v.detach() for k, v in module.state_dict().items()}
            self.states[name] = state
            cpu_offload(module, execution_device=device, state_dict=state)
            setattr(module, _DEVICE_ATTR, device)

    def remove(self) -> None:
        from accelerate.hooks import remove_hook_from_module

        for name in COMPONENTS:
            module = getattr(self.kfi, name)
            remove_hook_from_module(module, recurse=True)
            module.load_state_dict(self.states[name], assign=True)
            _move(module, HOST)
            delattr(module, _DEVICE_ATTR)
        self.states = {}


def remove_offload(kfi) -> None:
    """Undo any offload: hooks removed, every weight real and on the host (``place_model`` then moves them)."""
    state = getattr(kfi, "offload_state", None)
    if state is not None:
        state.remove()
    kfi.offload_state, kfi.offload = None, "none"


def set_offload(kfi, mode: str, device: torch.device) -> None:
    """Put ``kfi`` in offload ``mode`` computing on ``device`` (components already in their dtypes)."""
    check_offload(mode)
    remove_offload(kfi)
    if mode == "none":
        return
    if device.type == "cpu":
        logger.info("offload %s on the CPU: nothing to offload to, the run is the same (tests use it)", mode)
    kfi.offload_state = (ModelOffload if mode == "model" else SequentialOffload)(kfi, device)
    kfi.offload = mode
