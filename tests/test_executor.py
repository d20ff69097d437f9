"""Running long-video schedules: one-window identity, a 100-frame clip, MultiDiffusion, memory shape."""

from __future__ import annotations

import pytest
import torch

from kfi_core.condition import prepare_clip
from kfi_core.errors import ScheduleError
from kfi_core.executor import inpaint, run_schedule, total_steps
from kfi_core.loading import load_kfi_model
from kfi_core.propagate import PropagateSettings, propagate
from kfi_core.schedules import SCHEDULES, build_schedule

from conftest import load_with_random_adapter

FAST = dict(steps=2, decode_chunk_size=8)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_with_random_adapter(tiny_model_dir)


def make_clip(n, seed=0, keyframes=()):
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(n, 3, 64, 64, generator=g)
    masks = torch.zeros(n, 1, 64, 64)
    for t in range(n):
        x = 8 + (t * 3) % 32
        masks[t, :, 16:40, x:x + 20] = 1.0
    return prepare_clip(frames, masks, keyframe_indices=list(keyframes))


@pytest.mark.parametrize("strategy", sorted(SCHEDULES))
def test_a_clip_that_fits_one_window_gives_the_single_window_result(model, strategy):
    clip = make_clip(6, keyframes=[2])
    want = propagate(model, clip, PropagateSettings(seed=5, **FAST))
    got = inpaint(model, clip, PropagateSettings(seed=5, **FAST), strategy=strategy)
    assert torch.equal(got, want)


def _unet_frames(model):
    seen = []
    handle = model.unet.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(args[0].shape[1]),
                                                  with_kwargs=True)
    return seen, handle


def test_100_frames_with_the_anchor_schedule(model):
    clip = make_clip(100, keyframes=[0, 57])
    steps = []
    seen, handle = _unet_frames(model)
    try:
        out = inpaint(model, clip, PropagateSettings(**FAST), callback=lambda d: steps.append((d["i"], d["total"])))
    finally:
        handle.remove()
    schedule = build_schedule("anchor", 100, model.num_frames, [0, 57])
    assert out.shape == clip.frames.shape
    keep = (clip.masks == 0).expand_as(out)
    assert torch.equal(out[keep], clip.frames[keep]), "unmasked pixels and keyframes exact"
    assert torch.equal(out[57], clip.frames[57])
    assert not torch.equal(out[~keep], clip.frames[~keep])
    # progress covers every window's steps, in order
    assert [i for i, _ in steps] == list(range(total_steps(schedule, 2)))
    assert {t for _, t in steps} == {total_steps(schedule, 2)}
    # the model never sees more than one window of frames at once: memory does not grow with the clip
    assert max(seen) <= model.num_frames


def test_multidiffusion_runs_and_keeps_the_input(model):
    clip = make_clip(20)
    seen, handle = _unet_frames(model)
    try:
        out = inpaint(model, clip, PropagateSettings(**FAST), strategy="multidiffusion")
    finally:
        handle.remove()
    keep = (clip.masks == 0).expand_as(out)
    assert torch.equal(out[keep], clip.frames[keep])
    assert torch.isfinite(out).all() and max(seen) <= model.num_frames


@pytest.mark.parametrize("strategy", ["autoregressive", "improved-ar", "reverse", "hierarchy2"])
def test_other_strategies_on_a_long_clip(model, strategy):
    clip = make_clip(19, keyframes=[9])
    out = inpaint(model, clip, PropagateSettings(steps=1), strategy=strategy)
    keep = (clip.masks == 0).expand_as(out)
    assert torch.equal(out[keep], clip.frames[keep])


def test_schedule_mismatches(model):
    clip = make_clip(20)
    with pytest.raises(ScheduleError, match="made for 30 frames but the clip has 20"):
        run_schedule(model, clip, build_schedule("anchor", 30, 8), PropagateSettings(**FAST))
    with pytest.raises(ScheduleError, match="windows of 14 frames but the model .* at most 8"):
        run_schedule(model, clip, build_schedule("anchor", 20, 14), PropagateSettings(**FAST))
    with pytest.raises(ScheduleError, match="keyframes"):
        run_schedule(model, clip, build_schedule("anchor", 20, 8, [3]), PropagateSettings(**FAST))


def test_keyframe_colour_matching_in_windows(model):
    """Mode keyframe fits on each window's fully known frames: one window matches propagate's composite; on a long
    clip every window has known frames (keyframes or anchors), so the result differs from the ring-only fit."""
    clip = make_clip(6, keyframes=[2])
    settings = PropagateSettings(seed=5, color_match="keyframe", **FAST)
    torch.testing.assert_close(inpaint(model, clip, settings), propagate(model, clip, settings), atol=1e-5, rtol=0)
    long = make_clip(20, keyframes=[0, 13])
    for strategy in ("anchor", "multidiffusion"):
        outs = {mode: inpaint(model, long, PropagateSettings(seed=1, color_match=mode, **FAST), strategy=strategy)
                for mode in ("none", "affine", "keyframe")}
        keep = (long.masks == 0).expand_as(outs["none"])
        for out in outs.values():
            assert torch.equal(out[keep], long.frames[keep])
        assert not torch.equal(outs["keyframe"], outs["affine"]) and not torch.equal(outs["keyframe"], outs["none"])
