"""Keyframe propagation on the tiny model: invariants, determinism, both modes, clear errors."""

from __future__ import annotations

import pytest
import torch
from kfi_testing import load_with_random_adapter

from kfi_core.errors import (
    CancelledError,
    InputMismatchError,
    KeyframeError,
    NonFiniteError,
    UnknownNameError,
    UnsupportedSizeError,
)
from kfi_core.inference.condition import prepare_clip
from kfi_core.inference.executor import propagate
from kfi_core.inference.settings import PropagateSettings
from kfi_core.model.loading import load_kfi_model

FAST = dict(steps=2, decode_chunk_size=4)


@pytest.fixture(scope="module")
def base_model(tiny_model_dir):
    return load_kfi_model(tiny_model_dir)


@pytest.fixture(scope="module")
def kfi_model(tiny_model_dir):
    """Tiny model with a 12-channel conv and a random (non-zero) LoRA, as after some training."""
    return load_with_random_adapter(tiny_model_dir)


def make_clip(n=8, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(n, 3, h, w, generator=g)
    masks = torch.zeros(n, 1, h, w)
    masks[:, :, 20:44, 16:40] = 1.0
    return frames, masks


@pytest.mark.parametrize("which", ["base_model", "kfi_model"])
@pytest.mark.parametrize("kf_index", [0, 3, 7])
def test_unmasked_pixels_and_keyframes_are_exact(request, which, kf_index):
    model = request.getfixturevalue(which)
    frames, masks = make_clip()
    keyframe = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    clip = prepare_clip(frames, masks, keyframes=keyframe, keyframe_indices=[kf_index])
    out = propagate(model, clip, PropagateSettings(**FAST))
    assert out.shape == frames.shape and out.dtype == torch.float32
    keep = (masks == 0).expand_as(frames).clone()
    keep[kf_index] = True
    expected = frames.clone()
    expected[kf_index] = keyframe[0]
    assert torch.equal(out[keep], expected[keep])
    assert torch.equal(out[kf_index], keyframe[0])
    assert not torch.equal(out[~keep], frames[~keep]), "the hole must be generated"


def test_determinism_by_seed_and_samplers(kfi_model):
    frames, masks = make_clip()
    clip = prepare_clip(frames, masks)
    a = propagate(kfi_model, clip, PropagateSettings(seed=1, **FAST))
    b = propagate(kfi_model, clip, PropagateSettings(seed=1, **FAST))
    c = propagate(kfi_model, clip, PropagateSettings(seed=2, **FAST))
    h = propagate(kfi_model, clip, PropagateSettings(seed=1, sampler="heun", **FAST))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, h) and torch.isfinite(h).all()


def test_progress_callback_and_cancel(kfi_model):
    frames, masks = make_clip(n=4)
    clip = prepare_clip(frames, masks)
    seen = []
    propagate(kfi_model, clip, PropagateSettings(steps=3), callback=lambda d: seen.append((d["i"], d["total"])))
    assert seen == [(0, 3), (1, 3), (2, 3)]

    calls = {"n": 0}

    def cancel_after_one():
        calls["n"] += 1
        if calls["n"] == 2:
            raise CancelledError("cancelled by the test")

    with pytest.raises(CancelledError):
        propagate(kfi_model, clip, PropagateSettings(steps=5), check_cancel=cancel_after_one)
    assert calls["n"] == 2, "cancel is checked between steps and stops within one step"


@pytest.mark.parametrize("which, blend", [("base_model", "auto"), ("base_model", "on"), ("kfi_model", "on")])
def test_latent_blending_keeps_the_known_region_on_the_input_latents(request, which, blend):
    """Latent blending (the training-free mode's default, opt-in with an adapter): the sampled latents outside
    the (latent) mask equal the input's clean latents, and a mid-clip keyframe is known throughout."""
    from kfi_core.inference.condition import encode_frames
    from kfi_core.inference.window import latent_masks, sample_window_latents

    model = request.getfixturevalue(which)
    frames, masks = make_clip()
    clip = prepare_clip(frames, masks, keyframe_indices=[4])
    lat = sample_window_latents(model, clip, PropagateSettings(steps=3, blend_known=blend).check())
    known = encode_frames(model.vae, clip.frames * 2 - 1, 8)[None] * model.vae.config.scaling_factor
    keep = (latent_masks(clip.masks, model.vae_scale_factor) == 0).expand_as(lat)
    torch.testing.assert_close(lat[keep], known[keep], atol=1e-5, rtol=1e-5)
    assert keep[0, 4].all(), "the keyframe is fully known"
    assert not torch.allclose(lat[~keep], known[~keep], atol=1e-3)


@pytest.mark.parametrize("which, blend", [("kfi_model", "auto"), ("kfi_model", "off"), ("base_model", "off")])
def test_without_latent_blending_the_known_region_is_sampled(request, which, blend):
    """Off (the adapter's default, or asked for): the known latents are the model's own, not the input's, and the
    composite still restores every known pixel exactly."""
    from kfi_core.inference.condition import encode_frames
    from kfi_core.inference.window import latent_masks, sample_window_latents

    model = request.getfixturevalue(which)
    frames, masks = make_clip()
    clip = prepare_clip(frames, masks, keyframe_indices=[4])
    settings = PropagateSettings(steps=3, blend_known=blend).check()
    lat = sample_window_latents(model, clip, settings)
    known = encode_frames(model.vae, clip.frames * 2 - 1, 8)[None] * model.vae.config.scaling_factor
    keep = (latent_masks(clip.masks, model.vae_scale_factor) == 0).expand_as(lat)
    assert not torch.allclose(lat[keep], known[keep], atol=1e-3)
    out = propagate(model, clip, settings)
    known_px = clip.masks.expand_as(out) == 0
    assert torch.equal(out[known_px], clip.frames[known_px])


def test_composite_off_and_feather(kfi_model):
    frames, masks = make_clip(n=4)
    clip = prepare_clip(frames, masks)
    raw = propagate(kfi_model, clip, PropagateSettings(composite=False, **FAST))
    assert not torch.equal(raw[masks.expand_as(raw) == 0], frames[masks.expand_as(frames) == 0])
    soft = propagate(kfi_model, clip, PropagateSettings(feather=4, **FAST))
    hard = propagate(kfi_model, clip, PropagateSettings(**FAST))
    inside = masks.bool().expand_as(frames)
    assert torch.equal(soft[inside], hard[inside])
    assert torch.equal(soft[:, :, :8], frames[:, :, :8]), "far from the hole nothing changes"
    assert not torch.equal(soft, hard), "the edge just outside the hole is blended"


@pytest.mark.parametrize(
    "settings, error, match",
    [
        (dict(steps=0), InputMismatchError, "steps: got 0"),
        (dict(min_guidance=-1.0), InputMismatchError, "min_guidance: got -1.0"),
        (dict(min_guidance=3.0, max_guidance=1.0), InputMismatchError, "swap them"),
        (dict(sampler="dpm"), UnknownNameError, "choose one of euler, heun"),
        (dict(seed=-5), InputMismatchError, "seed: got -5"),
        (dict(seed=2**64), InputMismatchError, "seed"),
        (dict(noise_aug_strength=float("nan")), InputMismatchError, "noise_aug_strength"),
        (dict(blend_known="yes"), UnknownNameError, "blend_known: got 'yes'; choose one of auto, on, off"),
    ],
)
def test_bad_settings(settings, error, match):
    with pytest.raises(error, match=match):
        PropagateSettings(**settings).check()


def test_bad_clips(kfi_model):
    frames, masks = make_clip()
    with pytest.raises(UnsupportedSizeError, match="multiples of 8. Nearest sizes: width 56 or 64"):
        propagate(kfi_model, prepare_clip(frames[..., :60], masks[..., :60]), PropagateSettings(**FAST))
    long_frames, long_masks = make_clip(n=9)
    with pytest.raises(UnsupportedSizeError, match="9 frames but this model .* at most 8"):
        propagate(kfi_model, prepare_clip(long_frames, long_masks), PropagateSettings(**FAST))
    with pytest.raises(InputMismatchError, match="got 7 masks for 8 frames"):
        prepare_clip(frames, masks[:7])
    with pytest.raises(KeyframeError, match="got 8 for a clip of 8 frames"):
        prepare_clip(frames, masks, keyframe_indices=[8])


def test_nan_in_the_model_names_the_step(kfi_model):
    frames, masks = make_clip(n=4)
    clip = prepare_clip(frames, masks)
    handle = kfi_model.unet.conv_out.register_forward_hook(lambda mod, inp, out: out * float("nan"))
    try:
        with pytest.raises(NonFiniteError, match="step 1 of 2"):
            propagate(kfi_model, clip, PropagateSettings(**FAST))
    finally:
        handle.remove()
