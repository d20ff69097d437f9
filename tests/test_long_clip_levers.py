"""The long-clip levers of issue 45: keyframes in every window (anchor option ``keyframe_windows``), shared noise
across windows (``run_schedule(noise="shared")``) and seam smoothing (``run_schedule(seam_smoothing=r)``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from kfi_testing import load_with_random_adapter

from kfi_core.errors import InputMismatchError, ScheduleError
from kfi_core.inference.condition import prepare_clip
from kfi_core.inference.executor import (
    NOISE_MODES,
    inpaint,
    run_schedule,
    shared_noise,
    smooth_seams,
)
from kfi_core.inference.schedule_builders import build_schedule
from kfi_core.inference.schedules import Schedule
from kfi_core.inference.seams import smooth_fill_colours
from kfi_core.inference.settings import DEFAULT_SEAM_SMOOTHING, PropagateSettings
from kfi_core.inference.window import composite_mask, sample_window_latents

FAST = dict(steps=2, decode_chunk_size=8)


@pytest.mark.parametrize(("frames", "keys"), [(32, [0]), (32, [16]), (96, [0]), (40, [5, 30])])
def test_keyframe_windows_puts_a_keyframe_in_every_window_that_generates(frames, keys):
    schedule = build_schedule("anchor", frames, 8, keys, keyframe_windows=True)
    for w in schedule.windows:
        assert w.generate
        assert set(keys) & set(w.frames), w
        assert all(w.role_of(k) in (None, "known") for k in keys)
    assert schedule.options["keyframe_windows"] is True
    assert schedule.options["anchor_spacing"] == 6  # window - 2: room for the keyframe in a gap window
    assert Schedule.from_json(schedule.to_json()).to_dict() == schedule.to_dict()


def test_keyframe_windows_off_leaves_the_default_schedule_unchanged():
    default = build_schedule("anchor", 32, 8, [0])
    assert "keyframe_windows" not in default.options
    assert build_schedule("anchor", 32, 8, [0], keyframe_windows=False).to_dict() == default.to_dict()


def test_keyframe_windows_without_keyframes_adds_nothing():
    on = build_schedule("anchor", 32, 8, [], keyframe_windows=True, anchor_spacing=7)
    off = build_schedule("anchor", 32, 8, [], anchor_spacing=7)
    assert on.stages == off.stages


def test_keyframe_windows_must_be_a_bool():
    with pytest.raises(ScheduleError, match="keyframe_windows"):
        build_schedule("anchor", 32, 8, [0], keyframe_windows="yes")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_with_random_adapter(tiny_model_dir)


def _clip(n, keyframes=()):
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(n, 3, 64, 64, generator=g)
    masks = torch.zeros(n, 1, 64, 64)
    masks[:, :, 16:40, 20:44] = 1.0
    return prepare_clip(frames, masks, keyframe_indices=list(keyframes))


def test_shared_noise_repeats_one_window_of_noise(model):
    clip = _clip(20)
    noise = shared_noise(model, clip, PropagateSettings(**FAST), model.num_frames)
    assert noise.shape[1] == 20
    for f in range(20):
        assert torch.equal(noise[:, f], noise[:, f % model.num_frames])
    assert not torch.equal(noise[:, 0], noise[:, 1])


def test_shared_noise_runs_every_window_from_its_slice(model, monkeypatch):
    clip = _clip(20, keyframes=[0])
    schedule = build_schedule("anchor", 20, model.num_frames, [0])
    settings = PropagateSettings(**FAST)
    want = shared_noise(model, clip, settings, model.num_frames)
    seen = []
    import kfi_core.inference.executor as executor

    def spy(model_, sub, settings_, *, noise=None, **kwargs):
        seen.append(noise)
        return sample_window_latents(model_, sub, settings_, noise=noise, **kwargs)

    monkeypatch.setattr(executor, "sample_window_latents", spy)
    a = run_schedule(model, clip, schedule, settings, noise="shared")
    assert len(seen) == len(schedule.windows)
    for w, noise in zip(schedule.windows, seen):
        assert torch.equal(noise, want[:, list(w.frames)])
    b = inpaint(model, clip, settings, schedule=schedule, noise="shared")
    assert torch.equal(a, b)  # deterministic
    c = run_schedule(model, clip, schedule, settings, noise="per-window")
    assert not torch.equal(a, c)


def test_shared_noise_with_a_fused_stage(model):
    clip = _clip(20)
    schedule = build_schedule("multidiffusion", 20, model.num_frames)
    out = run_schedule(model, clip, schedule, PropagateSettings(**FAST), noise="shared")
    assert out.shape == clip.frames.shape and torch.isfinite(out).all()


def test_unknown_noise_mode_and_bad_noise_shape(model):
    clip = _clip(20)
    schedule = build_schedule("anchor", 20, model.num_frames)
    with pytest.raises(ScheduleError, match=", ".join(NOISE_MODES)):
        run_schedule(model, clip, schedule, PropagateSettings(**FAST), noise="same")
    with pytest.raises(InputMismatchError, match="noise"):
        sample_window_latents(model, _clip(4), PropagateSettings(**FAST), noise=torch.zeros(1, 3, 4, 8, 8))


# --------------------------------------------------------------------------- seam smoothing


def _step_clip(n=8, step_at=4):
    frames = torch.full((n, 3, 16, 16), 0.2)
    weights = torch.zeros(n, 1, 16, 16)
    weights[:, :, 4:12, 4:12] = 1.0
    for t in range(n):
        frames[t, :, 4:12, 4:12] = 0.3 if t < step_at else 0.5
    return frames, weights


def test_smooth_fill_colours_turns_a_step_into_a_ramp_and_keeps_the_rest():
    frames, weights = _step_clip()
    out = smooth_fill_colours(frames, weights, 2, fixed=[0])
    fill = out[:, 0, 8, 8]
    jumps = (fill[1:] - fill[:-1]).abs()
    assert float(jumps.max()) < 0.2 / 2  # the step of 0.2 is spread over several frames
    assert torch.equal(out[0], frames[0])  # fixed
    assert torch.equal(out[weights.expand_as(out) == 0], frames[weights.expand_as(frames) == 0])  # outside exact
    inside = out[:, :, 4:12, 4:12]
    assert torch.allclose(inside, inside[:, :, :1, :1].expand_as(inside))  # a shift, no texture change


def test_smooth_fill_colours_passes_a_steady_change():
    frames, weights = _step_clip()
    for t in range(8):
        frames[t, :, 4:12, 4:12] = 0.2 + 0.05 * t
    out = smooth_fill_colours(frames, weights, 2)
    assert torch.allclose(out[2:6], frames[2:6], atol=1e-6)  # the interior of a linear ramp is its own mean
    assert torch.equal(smooth_fill_colours(frames, weights, 0), frames)


def test_seam_smoothing_is_the_smoothed_raw_run(model):
    clip = _clip(20, keyframes=[0])
    schedule = build_schedule("anchor", 20, model.num_frames, [0])
    settings = PropagateSettings(**FAST)
    raw = run_schedule(model, clip, schedule, settings, seam_smoothing=0)
    got = run_schedule(model, clip, schedule, settings, seam_smoothing=3)
    assert torch.equal(got, smooth_seams(clip, raw, schedule, settings, 3))
    assert not torch.equal(got, raw)
    assert torch.equal(got[0], clip.frames[0])  # the keyframe stays exact
    outside = clip.masks.expand_as(got) == 0
    assert torch.equal(got[outside], clip.frames[outside])
    assert torch.equal(inpaint(model, clip, settings, schedule=schedule), run_schedule(model, clip, schedule, settings))
    assert settings.seam_smoothing == DEFAULT_SEAM_SMOOTHING > 0, "on by default"
    # the setting and the keyword are the same knob; the keyword wins over the setting
    off = PropagateSettings(**FAST, seam_smoothing=0)
    assert torch.equal(run_schedule(model, clip, schedule, off), raw)
    assert torch.equal(run_schedule(model, clip, schedule, off, seam_smoothing=3), got)


def test_seam_smoothing_of_a_single_window_is_its_keyframes_ramp(model):
    """One window has no window seams: without keyframes it is left alone; with them only the keyframes' ramp runs,
    through inpaint and propagate alike (and not on an uncomposited result)."""
    from kfi_core.inference import propagate
    from kfi_core.inference.seams import ramp_from_keyframes

    settings = PropagateSettings(**FAST)
    clip = _clip(6)
    assert torch.equal(
        inpaint(model, clip, settings, seam_smoothing=3), inpaint(model, clip, settings, seam_smoothing=0)
    )
    clip = _clip(6, keyframes=[0])
    raw = inpaint(model, clip, settings, seam_smoothing=0)
    want = ramp_from_keyframes(raw, composite_mask(clip, settings.feather), [0])
    assert not torch.equal(want, raw), "the random clip's keyframe pops"
    assert torch.equal(inpaint(model, clip, settings, seam_smoothing=3), want)
    assert torch.equal(propagate(model, clip, settings), want)
    assert torch.equal(propagate(model, clip, PropagateSettings(**FAST, seam_smoothing=0)), raw)
    loose = PropagateSettings(**FAST, composite=False)
    assert torch.equal(propagate(model, clip, loose), propagate(model, clip, replace(loose, seam_smoothing=0)))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3", 65])
def test_seam_smoothing_must_be_a_whole_number_of_frames(model, bad):
    clip = _clip(20)
    schedule = build_schedule("anchor", 20, model.num_frames)
    with pytest.raises(InputMismatchError, match="seam_smoothing: got .*0 turns it off"):
        run_schedule(model, clip, schedule, PropagateSettings(**FAST), seam_smoothing=bad)
    with pytest.raises(InputMismatchError, match="seam_smoothing"):
        PropagateSettings(seam_smoothing=bad).check()


# --------------------------------------------------------------------------- keyframe ramps


def _keyframe_clip(n=24, keys=(6,), offset=0.1, drift=0.004):
    """Fill colours rising by ``drift`` a frame; keyframes' holes ``offset`` darker than the fill around them."""
    frames, weights = _step_clip(n, step_at=n)
    for t in range(n):
        frames[t, :, 4:12, 4:12] = 0.3 + drift * t
    for k in keys:
        frames[k, :, 4:12, 4:12] -= offset
        weights[k] = 0.0  # a keyframe is fully known: the composite keeps it
    return frames, weights


def test_a_keyframe_ramps_into_its_neighbours_in_steps_no_larger_than_the_fill_s():
    """Keyframe 6 of 40, 0.1 darker than the fill rising 0.004 a frame: 0.104 - 0.004 is spread over the 25 frames
    after it (26 where rounding tips ceil; steps of 0.004 + 0.004 at most) and the 6 before it (all there are)."""
    from kfi_core.inference.seams import ramp_from_keyframes

    frames, weights = _keyframe_clip(40)
    out = ramp_from_keyframes(frames, weights, [6])
    fill, before = out[:, 0, 8, 8], frames[:, 0, 8, 8]
    assert float((before[7] - before[6]).abs()) > 0.1, "the keyframe popped"
    after = (fill[7:] - fill[6:-1]).abs()
    assert float(after.max()) < 0.008 + 1e-5
    assert float(after[0]) == pytest.approx(0.004, abs=1e-5), "a normal step next to the keyframe"
    changed = [u for u in range(7, 40) if not torch.equal(out[u], frames[u])]
    assert changed[0] == 7 and len(changed) in (25, 26) and changed == list(range(7, 7 + len(changed)))
    assert not torch.equal(out[0], frames[0]), "before it the ramp reaches the clip's start"
    assert torch.equal(out[6], frames[6]), "the keyframe is untouched"
    assert torch.equal(out[weights.expand_as(out) == 0], frames[weights.expand_as(frames) == 0]), "outside exact"
    inside = out[:, :, 4:12, 4:12]
    assert torch.allclose(inside, inside[:, :, :1, :1].expand_as(inside)), "a shift, no texture change"
    assert torch.equal(ramp_from_keyframes(frames, weights, []), frames)


def test_keyframe_ramps_meet_half_way_and_a_steady_fill_is_left_alone():
    from kfi_core.inference.seams import ramp_from_keyframes

    frames, weights = _keyframe_clip(keys=(4, 14), offset=-0.2)
    out = ramp_from_keyframes(frames, weights, [4, 14])
    assert torch.equal(out[9], frames[9]), "frame 9 is 5 frames from keyframe 4 and 14: both ramps stop short"
    assert not torch.equal(out[8], frames[8]) and not torch.equal(out[10], frames[10])
    close, w2 = _keyframe_clip(keys=(4, 6), offset=-0.2)
    assert torch.equal(ramp_from_keyframes(close, w2, [4, 6])[5], close[5]), "midway, not shifted by both ramps"
    steady, w = _keyframe_clip(keys=(6,), offset=0.0)  # the keyframe continues the fill: one normal step each side
    assert torch.allclose(ramp_from_keyframes(steady, w, [6]), steady, atol=1e-6)


# --------------------------------------------------------------------------- detail cross-fade at window boundaries


def _stripes(frames: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    """Smooth stripes (one period across the frame, a random phase per channel) moving one pixel right per frame."""
    phase = torch.rand(3, 1, 1, generator=torch.Generator().manual_seed(seed)) * 2 * torch.pi
    x = torch.arange(size).view(1, 1, size)
    return torch.stack(
        [(0.5 + 0.2 * torch.sin(2 * torch.pi * (x - t) / size + phase)).expand(3, size, size) for t in range(frames)]
    )


def _band_masks(frames: int, size: int = 16) -> torch.Tensor:
    masks = torch.zeros(frames, 1, size, size)
    masks[:, :, 4:12, :] = 1.0  # whole rows: every transition moves the same detail by the same amount
    return masks


def _texture_ratio(frames, masks, schedule) -> float:
    from kfi_core.evaluation.long_clip import seam_jumps

    return seam_jumps(frames, frames, masks, schedule)["texture_seam_ratio"]


def test_crossfade_evens_a_detail_step_at_a_boundary_and_touches_nothing_else():
    from kfi_core.inference.schedules import classify_transitions
    from kfi_core.inference.seams import crossfade_detail

    frames, masks = _stripes(24), _band_masks(24)
    schedule = build_schedule("autoregressive", 24, 8, [0])
    kinds = classify_transitions(schedule)
    t = kinds["boundary"][0]
    stepped = frames.clone()
    other = _stripes(24, seed=1)
    band = (slice(t + 1, None), slice(None), slice(4, 12))
    stepped[band] = other[band] - other[band].mean((2, 3), keepdim=True) + frames[band].mean((2, 3), keepdim=True)
    assert _texture_ratio(stepped, masks, schedule) > 1.3
    out = crossfade_detail(stepped, masks, kinds["boundary"], kinds["inside"])
    assert _texture_ratio(out, masks, schedule) < 1.1
    assert torch.equal(out[masks.expand_as(out) == 0], stepped[masks.expand_as(out) == 0]), "outside the mask exact"
    changed = [u for u in range(24) if not torch.equal(out[u], stepped[u])]
    assert changed == [t, t + 1], "only the two frames of the stepped boundary"
    fill = masks.expand_as(out) > 0
    assert torch.allclose(out[t][fill[t]].view(3, -1).mean(1), stepped[t][fill[t]].view(3, -1).mean(1), atol=1e-6)


def test_crossfade_leaves_steady_detail_alone():
    from kfi_core.inference.schedules import classify_transitions
    from kfi_core.inference.seams import crossfade_detail

    frames, masks = _stripes(24), _band_masks(24)
    kinds = classify_transitions(build_schedule("anchor", 24, 8, [0]))
    out = crossfade_detail(frames, masks, kinds["boundary"], kinds["inside"])
    assert (out - frames).abs().max() < 1e-5


def test_seam_smoothing_cross_fades_the_detail_of_a_run(model):
    """The executor's smoothing of a real run: colour smoothing, the keyframe's ramp, then the cross-fade at the
    schedule's boundaries."""
    from kfi_core.inference.schedules import classify_transitions
    from kfi_core.inference.seams import crossfade_detail, ramp_from_keyframes

    clip = _clip(20, keyframes=[0])
    schedule = build_schedule("anchor", 20, model.num_frames, [0])
    settings = PropagateSettings(**FAST)
    raw = run_schedule(model, clip, schedule, settings, seam_smoothing=0)
    kinds = classify_transitions(schedule, [bool(m.any()) for m in clip.masks >= 0.5])
    weights = composite_mask(clip, settings.feather)
    colour = smooth_fill_colours(raw, weights, 3, fixed=clip.keyframe_indices)
    colour = ramp_from_keyframes(colour, weights, clip.keyframe_indices)
    want = crossfade_detail(colour, clip.masks, kinds["boundary"], kinds["inside"])
    assert torch.equal(run_schedule(model, clip, schedule, settings, seam_smoothing=3), want)
