"""Running long-video schedules: one-window identity, a 100-frame clip, MultiDiffusion, memory shape."""

from __future__ import annotations

import pytest
import torch
from kfi_testing import load_with_random_adapter

from kfi_core.errors import ScheduleError
from kfi_core.inference.condition import prepare_clip
from kfi_core.inference.executor import inpaint, propagate, run_schedule, total_steps
from kfi_core.inference.schedule_builders import SCHEDULES, build_schedule
from kfi_core.inference.settings import PropagateSettings

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
        masks[t, :, 16:40, x : x + 20] = 1.0
    return prepare_clip(frames, masks, keyframe_indices=list(keyframes))


@pytest.mark.parametrize("strategy", sorted(SCHEDULES))
@pytest.mark.slow
def test_a_clip_that_fits_one_window_gives_the_single_window_result(model, strategy):
    clip = make_clip(6, keyframes=[2])
    want = propagate(model, clip, PropagateSettings(seed=5, **FAST))
    got = inpaint(model, clip, PropagateSettings(seed=5, **FAST), strategy=strategy)
    assert torch.equal(got, want)


def _unet_frames(model):
    seen = []
    handle = model.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(args[0].shape[1]), with_kwargs=True
    )
    return seen, handle


@pytest.mark.slow
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
@pytest.mark.slow
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


@pytest.mark.slow
def test_keyframe_colour_matching_in_windows(model):
    """Mode keyframe fits on each window's fully known frames: one window matches propagate's composite; on a long
    clip every window has known frames (keyframes or anchors), so the result differs from the ring-only fit."""
    clip = make_clip(6, keyframes=[2])
    settings = PropagateSettings(seed=5, color_match="keyframe", **FAST)
    torch.testing.assert_close(inpaint(model, clip, settings), propagate(model, clip, settings), atol=1e-5, rtol=0)
    long = make_clip(20, keyframes=[0, 13])
    for strategy in ("anchor", "multidiffusion"):
        outs = {
            mode: inpaint(model, long, PropagateSettings(seed=1, color_match=mode, **FAST), strategy=strategy)
            for mode in ("none", "affine", "keyframe")
        }
        keep = (long.masks == 0).expand_as(outs["none"])
        for out in outs.values():
            assert torch.equal(out[keep], long.frames[keep])
        assert not torch.equal(outs["keyframe"], outs["affine"]) and not torch.equal(outs["keyframe"], outs["none"])


# --------------------------------------------------------------------------- mean of samples (num_samples)


@pytest.mark.parametrize(
    "length,strategy,feather_px,color_match",
    [(6, None, 0, "none"), (6, None, 3, "affine"), (20, "anchor", 3, "affine")],
)
@pytest.mark.slow
def test_num_samples_is_the_mean_of_one_sample_runs_with_consecutive_seeds(
    model, length, strategy, feather_px, color_match
):
    """Oracle: the mean of num_samples=3 equals the mean of three one-sample runs (seeds 7, 8, 9), whatever the
    schedule, feather and colour matching; what the composite keeps stays bit-exact; sample 0 is the seed's own run."""
    clip = make_clip(length, keyframes=[2])
    base = dict(FAST, feather=feather_px, color_match=color_match)
    singles = [inpaint(model, clip, PropagateSettings(seed=s, **base), strategy=strategy) for s in (7, 8, 9)]
    got = inpaint(model, clip, PropagateSettings(seed=7, num_samples=3, **base), strategy=strategy)
    torch.testing.assert_close(got, sum(singles) / 3, rtol=0, atol=1e-6)
    assert not torch.allclose(singles[0], singles[1]), "the samples differ (different seeds)"
    from kfi_core.inference.window import composite_mask

    keep = (composite_mask(clip, feather_px) == 0).expand_as(got)
    assert torch.equal(got[keep], clip.frames[keep]), "pixels the composite keeps, keyframe included, are exact"
    assert torch.equal(got[2], clip.frames[2])
    if feather_px:  # the feathered ring outside the hole is a blend, not reset to the input
        ring = (composite_mask(clip, feather_px) > 0) & (clip.masks == 0)
        assert not torch.equal(got[ring.expand_as(got)], clip.frames[ring.expand_as(got)])


def test_num_samples_through_propagate_and_uncomposited(model):
    clip = make_clip(6)
    singles = [propagate(model, clip, PropagateSettings(seed=s, composite=False, **FAST)) for s in (0, 1)]
    got = propagate(model, clip, PropagateSettings(seed=0, composite=False, num_samples=2, **FAST))
    torch.testing.assert_close(got, (singles[0] + singles[1]) / 2, rtol=0, atol=1e-6)
    # the mean of samples differs less from each sample than the samples differ from each other
    assert (got - singles[0]).abs().mean() < (singles[1] - singles[0]).abs().mean()


def test_num_samples_progress_counts_every_sample(model):
    clip = make_clip(20)
    steps = []
    inpaint(
        model,
        clip,
        PropagateSettings(num_samples=2, **FAST),
        callback=lambda d: steps.append((d["i"], d["total"], d["sample"])),
    )
    one = total_steps(build_schedule("anchor", 20, model.num_frames, []), 2)
    assert [i for i, _, _ in steps] == list(range(2 * one))
    assert {t for _, t, _ in steps} == {2 * one}
    assert [s for _, _, s in steps] == [0] * one + [1] * one


def test_num_samples_is_checked(model):
    from kfi_core.errors import InputMismatchError

    for bad in (0, -1, 65, 2.0, True):
        with pytest.raises(InputMismatchError, match="num_samples"):
            PropagateSettings(num_samples=bad).check()


def test_num_samples_with_a_working_size_averages_at_the_input_size(model):
    """jobs.inpaint_clip with a working size (CLI --width/--height): each sample is brought back to the input size
    and composited (colour-matched) there, then averaged, as num_samples does without resizing."""
    from kfi_core.jobs import inpaint_clip

    g = torch.Generator().manual_seed(3)
    frames, masks = torch.rand(6, 3, 56, 72, generator=g), torch.zeros(6, 1, 56, 72)
    masks[:, :, 16:40, 20:44] = 1.0
    base = dict(FAST, color_match="affine")
    singles = [
        inpaint_clip(model, frames, masks, settings=PropagateSettings(seed=s, **base), size=(64, 64))[0] for s in (2, 3)
    ]
    got, _ = inpaint_clip(
        model, frames, masks, settings=PropagateSettings(seed=2, num_samples=2, **base), size=(64, 64)
    )
    assert got.shape == frames.shape
    torch.testing.assert_close(got, (singles[0] + singles[1]) / 2, rtol=0, atol=1e-6)
    keep = (masks == 0).expand_as(got)
    assert torch.equal(got[keep], frames[keep])
