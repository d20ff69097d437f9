"""8-bit clips (kfi_core.media.pixels): a clip kept as uint8 at its full size gives, byte for byte, the float clip's
result rounded as writing a file rounds it, on every path of inpaint_at_size (the working size, crop mode, the
clip's own size, several samples, a long clip with seam smoothing, keyframes, feather, colour matching, no
composite), with pixels outside the mask and keyframes exactly the input's; and it costs a quarter of the memory."""

from __future__ import annotations

import pytest
import torch
from live_bytes import LiveBytes

from kfi_core.inference.condition import prepare_clip
from kfi_core.inference.settings import PropagateSettings
from kfi_core.inference.window import composite_mask
from kfi_core.inference.working_size import inpaint_at_size
from kfi_core.media.pixels import EIGHT_BIT, to_eight_bit, to_unit
from kfi_core.model.loading import load_kfi_model


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_kfi_model(tiny_model_dir)


def _inputs(frames: int = 8, height: int = 96, width: int = 160, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    eight = torch.randint(0, 256, (frames, 3, height, width), generator=g, dtype=torch.uint8)
    masks = torch.zeros(frames, 1, height, width)
    masks[:, :, 30:70, 40:100] = 1.0
    keyframe = torch.rand(1, 3, height, width, generator=g)
    return eight, masks, keyframe


CASES = {
    "working size": ({}, {}),
    "crop": ({}, {"crop": "mask"}),
    "own size": ({}, {"size": "input"}),
    "keyframe, feather, colour match": ({"feather": 3, "color_match": "affine"}, {}),
    "two samples": ({"num_samples": 2}, {}),
    "no composite": ({"composite": False}, {}),
    "crop, no composite": ({"composite": False}, {"crop": "mask"}),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_an_eight_bit_clip_gives_the_float_result_rounded(model, case):
    settings, run = CASES[case]
    eight, masks, keyframe = _inputs(height=64, width=64) if case == "own size" else _inputs()
    keyframe = to_unit(to_eight_bit(keyframe))  # the same keyframe for both (an 8-bit clip holds it as 8 bits)
    keys = {"keyframes": keyframe, "keyframe_indices": [0]} if "keyframe" in case else {}
    settings = PropagateSettings(steps=2, seed=3, min_guidance=1.0, max_guidance=1.0, **settings)
    clip = prepare_clip(eight, masks, **keys)
    got = inpaint_at_size(model, clip, settings, **run)
    want = inpaint_at_size(model, prepare_clip(to_unit(eight), masks, **keys), settings, **run)
    assert got.dtype == EIGHT_BIT and got.shape == eight.shape
    assert torch.equal(got, to_eight_bit(want))
    if settings.composite:
        outside = (composite_mask(clip, settings.feather) == 0).expand_as(eight).clone()  # beyond any feather
        if keys:
            outside[0] = False
            assert torch.equal(got[0], to_eight_bit(keyframe[0]))  # the keyframe, as 8 bits
        assert torch.equal(got[outside], eight[outside])


@pytest.mark.slow
def test_a_long_eight_bit_clip_with_seam_smoothing(model):
    eight, masks, _ = _inputs(frames=14)
    settings = PropagateSettings(steps=2, seed=1, seam_smoothing=3)
    got = inpaint_at_size(model, prepare_clip(eight, masks), settings)
    want = inpaint_at_size(model, prepare_clip(to_unit(eight), masks), settings)
    assert torch.equal(got, to_eight_bit(want))


def test_channels_last_eight_bit_frames_as_read(model):
    """read_frames(eight_bit=True) views the decoded [F, H, W, 3] array as [F, 3, H, W]: the result keeps that
    layout and the same bytes."""
    eight, masks, _ = _inputs()
    viewed = eight.movedim(1, -1).contiguous().movedim(-1, 1)
    settings = PropagateSettings(steps=2)
    got = inpaint_at_size(model, prepare_clip(viewed, masks), settings)
    assert torch.equal(got, inpaint_at_size(model, prepare_clip(eight, masks), settings))
    assert got.movedim(1, -1).is_contiguous()


@pytest.mark.parametrize("crop", ["none", "mask"])
def test_an_eight_bit_clip_needs_a_quarter_of_the_memory(model, monkeypatch, crop):
    """Beyond its own 8-bit frames, a 1-sample run at a working size holds the 8-bit result (a quarter of a float
    copy), the working-size clip and fill (here 64x64 of 320x192, 0.07 of a copy each; 1024x576 of 1920x1080 is
    0.28) and a frame's float temporaries (the model's run replaced by noise at the working size): 0.6 of a float
    copy of the clip, where the float clip's path needs 1.5 (2.1 cropping) beside its frames."""
    import importlib

    from kfi_core.inference.window import composite

    ws = importlib.import_module("kfi_core.inference.working_size")
    monkeypatch.setattr(ws, "inpaint", lambda model, c, s, **kw: composite(c, torch.rand(c.frames.shape)))
    eight, masks, _ = _inputs(frames=32, height=192, width=320)
    clip = prepare_clip(eight, masks)
    float_bytes = eight.numel() * 4
    with torch.no_grad(), LiveBytes() as counter:
        inpaint_at_size(model, clip, PropagateSettings(steps=1), crop=crop)
    assert counter.peak < 0.65 * float_bytes, counter.peak / float_bytes
