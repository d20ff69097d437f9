"""Crop mode: one box around a clip's masks at the model's aspect ratio, stitched back (kfi_core.media.clip_crop)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from kfi_core.errors import InputMismatchError, UnknownNameError, UnsupportedSizeError
from kfi_core.inference import PropagateSettings
from kfi_core.inference.condition import ClipInputs
from kfi_core.inference.window import composite
from kfi_core.jobs import inpaint_clip
from kfi_core.media.clip_crop import box_weights, crop_clip, mask_bounds, plan_clip_box, stitch_clip
from kfi_core.media.video import read_frames, write_frames
from kfi_core.model import load_kfi_model


def masks_with(height, width, *rects, frames=None):
    """[F, 1, H, W] masks; rect (frame, x0, y0, x1, y1) sets that frame's box to 1 (frame None: all frames)."""
    n = frames or max(1, *(r[0] + 1 for r in rects if r[0] is not None))
    masks = torch.zeros(n, 1, height, width)
    for f, x0, y0, x1, y1 in rects:
        masks[slice(None) if f is None else f, :, y0:y1, x0:x1] = 1
    return masks


def contains(box, inner):
    return box[0] <= inner[0] and box[1] <= inner[1] and box[2] >= inner[2] and box[3] >= inner[3]


def test_box_covers_the_union_of_all_frames_masks():
    masks = masks_with(300, 400, (0, 100, 100, 120, 130), (2, 200, 150, 260, 170), frames=3)
    assert mask_bounds(masks) == (100, 100, 260, 170)
    box = plan_clip_box(masks, (2, 1), padding=0)
    assert contains(box, (100, 100, 260, 170))


def test_padding_and_aspect_ratio():
    masks = masks_with(600, 800, (None, 300, 250, 340, 270), frames=2)
    box = plan_clip_box(masks, (128, 64), padding=10)
    x0, y0, x1, y1 = box
    assert contains(box, (290, 240, 350, 280))  # the mask plus 10 pixels a side
    assert (x1 - x0, y1 - y0) == (80, 40)  # widened 60x40 -> 2:1
    assert (x0 + x1) / 2 == 320 and (y0 + y1) / 2 == 260  # centred on the mask
    tall = plan_clip_box(masks, (64, 128), padding=10)  # a 1:2 working size lengthens the height
    assert (tall[2] - tall[0], tall[3] - tall[1]) == (60, 120)
    assert plan_clip_box(masks, (128, 64), padding=0) == (300, 250, 340, 270)  # exactly 2:1 already


def test_box_is_shifted_inside_the_frame_not_shrunk():
    free = plan_clip_box(masks_with(200, 400, (0, 180, 90, 200, 110)), (2, 1), padding=4)
    left = plan_clip_box(masks_with(200, 400, (0, 0, 90, 20, 110)), (2, 1), padding=4)
    right = plan_clip_box(masks_with(200, 400, (0, 380, 90, 400, 110)), (2, 1), padding=4)
    size = (free[2] - free[0], free[3] - free[1])
    for box in (left, right):
        assert (box[2] - box[0], box[3] - box[1]) == size
        assert 0 <= box[0] and box[2] <= 400 and 0 <= box[1] and box[3] <= 200
    assert left[0] == 0 and right[2] == 400


def test_mask_touching_a_corner():
    masks = masks_with(1080, 1920, (0, 0, 0, 30, 10))
    box = plan_clip_box(masks, (128, 64), padding=32)
    # padded 62x42 at the corner (padding cut at the frame), widened to 2:1 and kept inside the frame
    assert box == (0, 0, 84, 42)
    corner = plan_clip_box(masks_with(1080, 1920, (0, 1900, 1060, 1920, 1080)), (1, 1), padding=8)
    assert corner[2:] == (1920, 1080) and corner[2] - corner[0] == corner[3] - corner[1] == 28


def test_box_larger_than_the_frame_takes_the_whole_axis():
    # a 2:1 box around an 80x80 mask would be 160 wide in a 100-wide frame: the whole width, the height kept
    box = plan_clip_box(masks_with(100, 100, (0, 10, 10, 90, 90)), (2, 1), padding=0)
    assert box == (0, 10, 100, 90)
    # a mask over the whole frame: the box is the frame
    assert plan_clip_box(torch.ones(2, 1, 48, 64), (1, 2), padding=16) == (0, 0, 64, 48)


def test_empty_mask_and_bad_padding_raise():
    with pytest.raises(InputMismatchError, match="--crop mask"):
        plan_clip_box(torch.zeros(3, 1, 32, 32), (2, 1))
    with pytest.raises(UnsupportedSizeError, match="--crop-padding"):
        plan_clip_box(masks_with(32, 32, (0, 4, 4, 8, 8)), (2, 1), padding=-1)


def test_crop_and_stitch_round_trip_exact_outside_the_mask():
    torch.manual_seed(0)
    frames = torch.rand(3, 3, 120, 200)
    masks = masks_with(120, 200, (0, 60, 40, 90, 60), (1, 70, 50, 100, 70), frames=3)
    box = plan_clip_box(masks, (2, 1), padding=12)
    x0, y0, x1, y1 = box
    crop = crop_clip(frames, box)
    assert crop.shape == (3, 3, y1 - y0, x1 - x0)
    assert torch.equal(crop_clip(masks, box, "masks").sum(), masks.sum())  # the whole mask lies in the box
    assert torch.equal(stitch_clip(frames, crop, box, masks), frames)  # the crop itself stitches back exactly

    fill = torch.rand_like(crop)
    stitched = stitch_clip(frames, fill, box, masks, feather=6)
    outside_box = torch.ones(120, 200, dtype=torch.bool)
    outside_box[y0:y1, x0:x1] = False
    assert torch.equal(stitched[..., outside_box], frames[..., outside_box])
    inside = (masks > 0).expand_as(frames)
    assert torch.allclose(stitched[inside], _paste(frames, fill, box)[inside])  # masked pixels take the fill
    weights = box_weights(box, (120, 200), 6)
    assert weights[y0, x0] == pytest.approx(1 / 7) and weights[(y0 + y1) // 2, (x0 + x1) // 2] == 1

    out = composite(ClipInputs(frames=frames, masks=masks), stitched)
    keep = (masks == 0).expand_as(frames)
    assert torch.equal(out[keep], frames[keep])


def _paste(frames, fill, box):
    x0, y0, x1, y1 = box
    out = frames.clone()
    out[:, :, y0:y1, x0:x1] = fill
    return out


def test_stitch_edge_on_the_frame_border_is_not_feathered():
    box = (0, 0, 40, 20)
    weights = box_weights(box, (60, 100), 4)
    assert weights[0, 0] == 1 and weights[19, 0] == pytest.approx(1 / 5) and weights[0, 39] == pytest.approx(1 / 5)
    assert weights[20:].sum() == 0 and weights[:, 40:].sum() == 0


def test_inpaint_clip_crop_mode_only_touches_the_box(tiny_model_dir):
    model = load_kfi_model(tiny_model_dir)
    torch.manual_seed(0)
    frames = torch.rand(2, 3, 96, 160)
    masks = masks_with(96, 160, (None, 100, 60, 116, 72), frames=2)
    raw = PropagateSettings(steps=1, composite=False)
    result, _ = inpaint_clip(model, frames, masks, settings=raw, crop="mask", crop_padding=8)  # model's 64x64
    box = plan_clip_box(masks, (64, 64), padding=8)
    x0, y0, x1, y1 = box
    outside = torch.ones(96, 160, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert result.shape == frames.shape
    assert torch.equal(result[..., outside], frames[..., outside]), "even without compositing, only the box changes"
    assert not torch.equal(result[..., ~outside], frames[..., ~outside])
    done, _ = inpaint_clip(model, frames, masks, settings=PropagateSettings(steps=1), crop="mask", size=(32, 64))
    keep = (masks == 0).expand_as(frames)
    assert torch.equal(done[keep], frames[keep])
    with pytest.raises(UnknownNameError, match="--crop"):
        inpaint_clip(model, frames, masks, settings=raw, crop="box")


# --------------------------------------------------------------------------- the CLI on a 1920x1080 clip


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "kfi_core", *map(str, args)], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def full_hd_clip(tmp_path_factory):
    """A 1920x1080 clip of 3 frames with a small moving hole, as PNG folders: (frames dir, masks dir, frames, masks)."""
    root = tmp_path_factory.mktemp("fullhd")
    g = torch.Generator().manual_seed(1)
    y = torch.linspace(0, 1, 1080).view(1, 1, 1080, 1)
    x = torch.linspace(0, 1, 1920).view(1, 1, 1, 1920)
    base = torch.cat([x.expand(1, 1, 1080, 1920), y.expand(1, 1, 1080, 1920), (x * y).expand(1, 1, 1080, 1920)], 1)
    frames = (base.repeat(3, 1, 1, 1) * 0.8 + 0.2 * torch.rand(3, 3, 1080, 1920, generator=g)).clamp(0, 1)
    frames = (frames * 255).round() / 255
    masks = torch.zeros(3, 1, 1080, 1920)
    for i in range(3):
        masks[i, :, 500 + 4 * i : 560 + 4 * i, 900 + 10 * i : 980 + 10 * i] = 1
    write_frames(frames, root / "frames")
    write_frames(masks.expand(-1, 3, -1, -1), root / "masks")
    return root / "frames", root / "masks", frames, masks


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags",
    [("--crop", "mask", "--width", 128, "--height", 64), ("--width", 128, "--height", 64), ("--crop", "mask"), ()],
    ids=["crop-mask", "working-size", "crop-mask-native", "native-default"],
)
def test_full_hd_clip_through_the_cli(tmp_path, tiny_model_dir, full_hd_clip, flags):
    frames_dir, masks_dir, frames, masks = full_hd_clip
    out = tmp_path / "out"
    proc = run_cli(
        "inpaint",
        "--model",
        tiny_model_dir,
        "--video",
        frames_dir,
        "--mask",
        masks_dir,
        "--out",
        out,
        *flags,
        "--steps",
        1,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result, _ = read_frames(out)
    assert result.shape == (3, 3, 1080, 1920)
    keep = (masks == 0).expand_as(frames)
    assert torch.equal(result[keep], frames[keep]), "every pixel outside the mask is the input's"
    assert not torch.equal(result[~keep], frames[~keep])


@pytest.mark.slow
def test_cli_refuses_a_bad_padding_and_an_empty_mask(tmp_path, tiny_model_dir):
    frames = torch.rand(2, 3, 64, 64)
    write_frames(frames, tmp_path / "frames")
    write_frames(torch.zeros(2, 3, 64, 64), tmp_path / "masks")
    common = ("inpaint", "--model", tiny_model_dir, "--video", tmp_path / "frames", "--out", tmp_path / "out")
    bad = run_cli(*common, "--mask", tmp_path / "masks", "--crop", "mask", "--crop-padding", "-3")
    assert bad.returncode == 2 and "--crop-padding" in bad.stderr and "Traceback" not in bad.stderr
    empty = run_cli(*common, "--mask", tmp_path / "masks", "--crop", "mask", "--steps", "1")
    assert empty.returncode == 2 and "--crop mask" in empty.stderr and "Traceback" not in empty.stderr
    assert not (tmp_path / "out").exists()
