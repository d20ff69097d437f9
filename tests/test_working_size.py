"""kfi_core.inference.working_size: which size the model runs at, and that a clip off that size goes through the
same steps as one at it (a long clip's seam smoothing included) and comes back exact outside the mask."""

from __future__ import annotations

import logging

import pytest
import torch

from kfi_core.errors import SettingsError, UnknownNameError
from kfi_core.inference import executor
from kfi_core.inference.condition import prepare_clip
from kfi_core.inference.settings import PropagateSettings
from kfi_core.inference.working_size import inpaint_at_size, working_size
from kfi_core.model.loading import load_kfi_model


class Model:
    default_size = (576, 1024)


@pytest.mark.parametrize(
    ("clip_size", "size", "want"),
    [
        ((1080, 1920), "native", (576, 1024)),
        ((1920, 1080), "native", (1024, 576)),
        ((512, 512), "native", (576, 1024)),  # a square counts as landscape
        ((1080, 1920), "input", (1080, 1920)),
        ((1080, 1920), None, (1080, 1920)),
        ((1080, 1920), (320, 576), (320, 576)),
    ],
)
def test_working_size(clip_size, size, want):
    assert working_size(Model(), clip_size, size) == want


@pytest.mark.parametrize(
    ("size", "error"), [("big", UnknownNameError), ((0, 64), SettingsError), ((64,), SettingsError)]
)
def test_bad_working_size(size, error):
    with pytest.raises(error, match="size: got"):
        working_size(Model(), (64, 64), size)


def test_a_resized_long_clip_is_seam_smoothed_and_exact_outside_the_mask(tiny_model_dir, monkeypatch):
    model = load_kfi_model(tiny_model_dir)  # window 8, native 64x64
    g = torch.Generator().manual_seed(2)
    frames = torch.rand(12, 3, 60, 70, generator=g)
    masks = torch.zeros(12, 1, 60, 70)
    masks[:, :, 20:40, 25:45] = 1.0
    clip = prepare_clip(frames, masks)
    smoothed = []
    original = executor.smooth_fill_colours

    def spy(frames, weights, radius, fixed=()):
        smoothed.append((tuple(frames.shape), radius))
        return original(frames, weights, radius, fixed)

    monkeypatch.setattr(executor, "smooth_fill_colours", spy)
    out = inpaint_at_size(model, clip, PropagateSettings(steps=1, feather=2), size="native")
    assert smoothed == [((12, 3, 64, 64), PropagateSettings().seam_smoothing)], "smoothed at the working size, once"
    assert out.shape == frames.shape
    keep = (torch.nn.functional.max_pool2d(masks, 5, 1, 2) == 0).expand_as(frames)  # the 2-pixel feather
    assert torch.equal(out[keep], frames[keep])


@pytest.mark.parametrize(
    ("size", "crop", "mask_box"),
    [
        ("native", "none", (20, 40, 25, 45)),
        ("input", "none", (20, 40, 25, 45)),
        ((48, 80), "none", (20, 40, 25, 45)),
        ("native", "mask", (5, 55, 30, 40)),  # a tall box in a wide clip: the box runs portrait
        ("input", "mask", (20, 30, 10, 60)),
        ((32, 48), "mask", (20, 40, 25, 45)),
    ],
)
def test_run_size_is_the_size_the_windows_run_at(tiny_model_dir, monkeypatch, size, crop, mask_box):
    """run_size (what memory estimates use) against the frames inpaint_at_size really hands the sampler."""
    import importlib

    ws = importlib.import_module("kfi_core.inference.working_size")  # the module (the package exports the function)

    model = load_kfi_model(tiny_model_dir)
    monkeypatch.setattr(type(model), "default_size", property(lambda self: (32, 48)))  # non-square: orientation shows
    frames, masks = torch.rand(4, 3, 64, 72), torch.zeros(4, 1, 64, 72)
    y0, y1, x0, x1 = mask_box
    masks[:, :, y0:y1, x0:x1] = 1.0
    clip = prepare_clip(frames, masks)
    seen = []
    monkeypatch.setattr(ws, "inpaint", lambda m, c, s, **kw: seen.append(c.size) or c.frames.clone())
    ws.inpaint_at_size(model, clip, PropagateSettings(steps=1), size=size, crop=crop)
    assert seen == [ws.run_size(model, clip, size, crop)]


@pytest.mark.parametrize(("mask_box", "hint"), [((100, 130, 140, 180), True), ((10, 230, 10, 390), False)])
def test_a_small_hole_in_a_shrunk_frame_suggests_crop_mode(tiny_model_dir, monkeypatch, caplog, mask_box, hint):
    """A 400x240 clip run at the tiny model's 64x64 is shrunk 3.75x (its short side): a 40x30 hole in a box of 104
    pixels (32 of context each side) would be filled at 2.3x the detail in crop mode, so the log says so; a hole
    across most of the frame gains nothing and gets no tip."""
    import importlib

    from kfi_core.inference.window import composite

    ws = importlib.import_module("kfi_core.inference.working_size")
    monkeypatch.setattr(ws, "inpaint", lambda model, c, s, **kw: composite(c, torch.rand(c.frames.shape)))
    y0, y1, x0, x1 = mask_box
    masks = torch.zeros(2, 1, 240, 400)
    masks[:, :, y0:y1, x0:x1] = 1.0
    clip = prepare_clip(torch.rand(2, 3, 240, 400), masks)
    with caplog.at_level(logging.INFO, logger="kfi_core.inference.working_size"):
        inpaint_at_size(load_kfi_model(tiny_model_dir), clip, PropagateSettings(steps=1))
    tips = [r.getMessage() for r in caplog.records if "crop 'mask'" in r.getMessage()]
    assert bool(tips) == hint, tips
    if hint:
        assert "in a 104x104 box of the 400x240 frame" in tips[0] and "at 2.3x the detail" in tips[0], tips
