"""Offload (kfi_core.model.offload): each mode gives the same frames as none, model offload keeps one component
resident at a time and in the order of the phases, sequential offload runs through accelerate's hooks with weights
on the meta device, and switching back restores real weights."""

from __future__ import annotations

import pytest
import torch
from kfi_testing import load_with_random_adapter

from kfi_core.errors import SettingsError
from kfi_core.inference.condition import prepare_clip
from kfi_core.inference.executor import inpaint
from kfi_core.inference.settings import PropagateSettings
from kfi_core.model.loading import load_kfi_model, place_model
from kfi_core.model.offload import OFFLOAD_MODES, ModelOffload, execution_device

CPU = torch.device("cpu")


def _clip(frames: int = 8):
    g = torch.Generator().manual_seed(3)
    video = torch.rand(frames, 3, 64, 64, generator=g)
    masks = torch.zeros(frames, 1, 64, 64)
    masks[:, :, 16:40, 20:44] = 1.0
    return prepare_clip(video, masks)


def _run(model, clip, frames_out=None):
    settings = PropagateSettings(steps=2, seed=1, decode_chunk_size=3)
    return inpaint(model, clip, settings)


@pytest.fixture()
def adapted(tiny_model_dir):
    return load_with_random_adapter(tiny_model_dir)


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_every_mode_gives_the_frames_of_no_offload(adapted, mode):
    clip = _clip()
    want = _run(adapted, clip)
    place_model(adapted, dtype=torch.float32, vae_dtype=torch.float32, device=CPU, offload=mode)
    assert adapted.offload == mode
    got = _run(adapted, clip)
    assert torch.equal(got, want)
    # back to none: ordinary modules with real weights, the same frames again
    place_model(adapted, dtype=torch.float32, vae_dtype=torch.float32, device=CPU)
    assert adapted.offload == "none" and adapted.offload_state is None
    assert all(p.device == CPU for m in (adapted.unet, adapted.vae, adapted.image_encoder) for p in m.parameters())
    assert not any(hasattr(m, "_hf_hook") for m in adapted.unet.modules())
    assert torch.equal(_run(adapted, clip), want)


def test_sequential_offload_keeps_weights_off_the_device(adapted):
    place_model(adapted, dtype=torch.float32, vae_dtype=torch.float32, device=CPU, offload="sequential")
    # accelerate's hooks: the modules hold meta tensors; the host copy is streamed in layer by layer
    assert {p.device.type for p in adapted.unet.parameters()} == {"meta"}
    assert execution_device(adapted.unet) == CPU and execution_device(adapted.vae) == CPU


def test_model_offload_keeps_one_component_resident_in_phase_order(adapted):
    place_model(adapted, dtype=torch.float32, vae_dtype=torch.float32, device=CPU, offload="model")
    state = adapted.offload_state
    assert isinstance(state, ModelOffload)
    seen = []

    def spy(name):
        def hook(_module, _args, _out):
            seen.append((name, state.resident))

        return hook

    handles = [
        adapted.image_encoder.register_forward_hook(spy("image_encoder")),
        adapted.vae.encoder.register_forward_hook(spy("vae.encoder")),
        adapted.unet.register_forward_hook(spy("unet")),
        adapted.vae.decoder.register_forward_hook(spy("vae.decoder")),
    ]
    try:
        _run(adapted, _clip())
    finally:
        for h in handles:
            h.remove()
    # while each part runs, its own component is the resident one
    assert all(resident == name.split(".")[0] for name, resident in seen)
    order = [name for i, (name, _) in enumerate(seen) if i == 0 or seen[i - 1][0] != name]
    assert order == ["vae.encoder", "image_encoder", "unet", "vae.decoder"]


def test_model_offload_moves_components(adapted):
    """The moves themselves, observed through the device a fake 'device' move records (only a CPU here)."""
    place_model(adapted, dtype=torch.float32, vae_dtype=torch.float32, device=CPU, offload="model")
    state = adapted.offload_state
    moves = []
    original = torch.nn.Module.to

    def recording_to(module, *args, **kwargs):
        for name in ("image_encoder", "vae", "unet"):
            if module is getattr(adapted, name):
                moves.append((name, str(kwargs.get("device", args[0] if args else None))))
        return original(module, *args, **kwargs)

    torch.nn.Module.to = recording_to
    try:
        state.activate("vae")
        state.activate("vae")  # already resident: nothing moves
        state.activate("unet")
    finally:
        torch.nn.Module.to = original
    assert moves[:3] == [("image_encoder", "cpu"), ("unet", "cpu"), ("vae", "cpu")]
    assert moves[3:] == [("image_encoder", "cpu"), ("vae", "cpu"), ("unet", "cpu")]


def test_unknown_mode_is_a_settings_error(adapted):
    with pytest.raises(SettingsError, match="offload: got 'gpu'.*none, model, sequential"):
        place_model(adapted, dtype=torch.float32, vae_dtype=torch.float32, device=CPU, offload="gpu")


def test_sequential_refuses_compile_and_channels_last(tiny_model_dir):
    with pytest.raises(SettingsError, match="sequential offload.*channels_last"):
        load_kfi_model(tiny_model_dir, offload="sequential", channels_last=True)


@pytest.mark.parametrize("mode", OFFLOAD_MODES)
def test_load_with_offload(tiny_model_dir, mode):
    model = load_kfi_model(tiny_model_dir, offload=mode)
    assert model.offload == mode
