"""Memory at the clip's own size: a 1080p clip is far larger than the model's working size, so what the library
allocates at full size (compositing, stitching a crop back, bringing the fill back) is what a long clip's host memory
is made of. Measured as the peak bytes of the tensor storages ops allocate (tests/live_bytes.py), as a multiple of
the clip's frames: each full-size copy is one more."""

from __future__ import annotations

import pytest
import torch
from live_bytes import LiveBytes

from kfi_core.inference.condition import prepare_clip
from kfi_core.inference.settings import PropagateSettings
from kfi_core.inference.window import composite
from kfi_core.inference.working_size import inpaint_at_size
from kfi_core.media.clip_crop import stitch_clip
from kfi_core.model.loading import load_kfi_model

F, H, W = 8, 192, 320


def _clip(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(F, 3, H, W, generator=g)
    masks = torch.zeros(F, 1, H, W)
    masks[:, :, 40:120, 60:200] = 1.0
    masks[2, :, 10:20, 10:30] = 0.5  # a soft edge somewhere
    return prepare_clip(frames, masks), torch.rand(F, 3, H, W, generator=g)


def _peak(fn) -> float:
    with torch.no_grad(), LiveBytes() as counter:
        fn()
    return counter.peak


def _reference_composite(clip, generated, mask):
    frames = clip.frames.float()
    return torch.where(mask == 0, frames, frames * (1.0 - mask) + generated * mask)


@pytest.mark.parametrize("feather", [0, 4])
def test_composite_is_the_blend_computed_a_frame_at_a_time(feather):
    from kfi_core.inference.window import composite_mask

    clip, generated = _clip()
    want = _reference_composite(clip, generated, composite_mask(clip, feather))
    assert torch.equal(composite(clip, generated, feather), want)
    into = generated.clone()
    assert composite(clip, into, feather, out=into) is into and torch.equal(into, want)
    frame_bytes = clip.frames.nbytes
    # the result, the feathered mask and one frame's temporaries; the whole-clip formula needed 3.3 frames' worth
    assert _peak(lambda: composite(clip, generated, feather)) < 2.0 * frame_bytes
    assert _peak(lambda: composite(clip, generated.clone(), feather, out=None)) < 3.0 * frame_bytes


def test_stitching_a_crop_back_blends_only_the_box():
    clip, generated = _clip()
    box = (40, 30, 220, 150)
    fill = generated[:, :, 30:150, 40:220].contiguous()
    out = stitch_clip(clip.frames, fill, box, clip.masks)
    outside = torch.ones(H, W, dtype=torch.bool)
    outside[30:150, 40:220] = False
    assert torch.equal(out[..., outside], clip.frames[..., outside])
    inner = clip.masks[:, :, 30:150, 40:220].expand_as(fill) > 0
    assert torch.equal(out[:, :, 30:150, 40:220][inner], fill[inner])
    # the result and the box's temporaries (here a third of the frame); pasting into a full copy first took 3.4
    assert _peak(lambda: stitch_clip(clip.frames, fill, box, clip.masks)) < 2.5 * clip.frames.nbytes


@pytest.mark.parametrize(("crop", "bound"), [("none", 2.0), ("mask", 3.5)])
def test_a_clip_larger_than_the_working_size_needs_few_full_size_copies(tiny_model_dir, monkeypatch, crop, bound):
    """inpaint_at_size's work at the clip's size, the model's own run replaced by a composite of noise at the working
    size (the tiny model's 64x64): the fill comes back and is composited in place, the crop is stitched back a frame
    at a time. Before, with whole-clip blends and a copying clamp, these peaks were 4.0 and 5.5 copies."""
    import importlib

    ws = importlib.import_module("kfi_core.inference.working_size")
    monkeypatch.setattr(ws, "inpaint", lambda model, c, s, **kw: composite(c, torch.rand(c.frames.shape)))
    model = load_kfi_model(tiny_model_dir)
    clip, _ = _clip()
    peak = _peak(lambda: inpaint_at_size(model, clip, PropagateSettings(steps=1), size="native", crop=crop))
    assert peak < bound * clip.frames.nbytes, peak / clip.frames.nbytes


def test_inpainting_files_holds_the_clip_once(tiny_model_dir, monkeypatch, tmp_path):
    """inpaint_files (the CLI's path: read, inpaint, write) drops its read copy of the frames once the clip holds its
    own, with the model's run replaced as above. Reading, the clip, the work at full size and writing peaked at 5.7
    copies while the read copy stayed alive."""
    import importlib

    from kfi_core.jobs import inpaint_files
    from kfi_core.media.video import write_frames

    ws = importlib.import_module("kfi_core.inference.working_size")
    monkeypatch.setattr(ws, "inpaint", lambda model, c, s, **kw: composite(c, torch.rand(c.frames.shape)))
    clip, _ = _clip()
    write_frames(clip.frames, tmp_path / "frames")
    write_frames(clip.masks.expand(-1, 3, -1, -1), tmp_path / "masks")
    model = load_kfi_model(tiny_model_dir)
    run = dict(video=tmp_path / "frames", mask=tmp_path / "masks", out=tmp_path / "out", size="native")
    peak = _peak(lambda: inpaint_files(model, settings=PropagateSettings(steps=1), **run))
    assert peak < 5.0 * clip.frames.nbytes, peak / clip.frames.nbytes
