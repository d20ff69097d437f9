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
    viewed = prepare_clip(clip.frames.movedim(1, -1).contiguous().movedim(-1, 1), clip.masks)  # as the node has it
    laid_out = composite(viewed, generated, feather)
    assert torch.equal(laid_out, want) and laid_out.movedim(1, -1).is_contiguous(), "a new result has the clip's layout"
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


@pytest.mark.parametrize(("crop", "bound"), [("none", 2.0), ("mask", 2.2)])
def test_a_clip_larger_than_the_working_size_needs_few_full_size_copies(tiny_model_dir, monkeypatch, crop, bound):
    """inpaint_at_size's work at the clip's size, the model's own run replaced by a composite of noise at the working
    size (the tiny model's 64x64): the fill comes back, is stitched (crop) and composited a frame at a time, the box
    is read as a view. Before, with whole-clip blends and a copying clamp, these peaks were 4.0 and 5.5 copies, then
    1.5 and 2.1 with the whole fill brought back first (1.6 and 1.9 now: the result and the working-size fill)."""
    import importlib

    ws = importlib.import_module("kfi_core.inference.working_size")
    monkeypatch.setattr(ws, "inpaint", lambda model, c, s, **kw: composite(c, torch.rand(c.frames.shape)))
    model = load_kfi_model(tiny_model_dir)
    clip, _ = _clip()
    peak = _peak(lambda: inpaint_at_size(model, clip, PropagateSettings(steps=1), size="native", crop=crop))
    assert peak < bound * clip.frames.nbytes, peak / clip.frames.nbytes


def test_inpainting_files_holds_the_clip_once(tiny_model_dir, monkeypatch, tmp_path):
    """inpaint_files (the CLI's path: read, inpaint, write) holds the read frames as the clip, 8-bit as decoded (no
    copy), and makes an 8-bit result a frame at a time, with the model's run replaced as above. In float32 copies of
    the clip: reading, the clip, the work at full size and writing peaked at 5.7 while the read copy stayed alive,
    4.3 with a copy in the clip and whole-clip conversions, 2.8 with float frames (the clip, its masks, the result);
    1.3 now (the 8-bit clip and result, a quarter each; the masks read and binarised, a third each; the working
    size's clip and fill)."""
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
    assert peak < 1.5 * clip.frames.nbytes, peak / clip.frames.nbytes


@pytest.mark.parametrize(
    ("size", "crop", "samples"), [("input", "none", 1), ("native", "none", 2), ("native", "mask", 1)]
)
def test_channels_last_frames_give_the_same_result_in_their_own_layout(tiny_model_dir, size, crop, samples):
    """ComfyUI's IMAGE [F, H, W, C] viewed as [F, C, H, W] (channels-last strides, no copy) runs as the contiguous
    clip does, bit for bit, on the direct path (the clip at the model's size), resized and cropped; the result comes
    back channels-last (so the node turns it into an IMAGE without a copy) and the caller's frames are untouched."""
    model = load_kfi_model(tiny_model_dir)
    g = torch.Generator().manual_seed(3)
    h, w = (64, 64) if size == "input" else (96, 160)
    image = torch.rand(F, h, w, 3, generator=g)  # ComfyUI's layout
    masks = torch.zeros(F, 1, h, w)
    masks[:, :, 20:44, 30:50] = 1.0
    kept = image.clone()
    settings = PropagateSettings(steps=2, num_samples=samples)
    contiguous = prepare_clip(image.movedim(-1, 1).contiguous(), masks)
    plain = inpaint_at_size(model, contiguous, settings, size=size, crop=crop)
    viewed = prepare_clip(image.movedim(-1, 1), masks)
    assert viewed.frames.data_ptr() == image.data_ptr(), "the clip holds the caller's frames, not a copy"
    out = inpaint_at_size(model, viewed, settings, size=size, crop=crop)
    assert torch.equal(out, plain)
    assert out.movedim(1, -1).is_contiguous(), "the result is laid out as an IMAGE"
    assert torch.equal(image, kept), "the library never writes into the caller's frames"
