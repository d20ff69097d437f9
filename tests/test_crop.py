"""kfi_core.media.crop: square crop around the mask for an image inpainter, and the stitch back."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kfi_core.errors import InputMismatchError, KfiError, UnsupportedSizeError
from kfi_core.media.crop import CropBox, crop_for_inpaint, crop_mask, crop_to_square, plan_square_crop, stitch_crop


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), right/bottom exclusive, of nonzero pixels, with numpy."""
    ys, xs = np.nonzero(mask.reshape(-1, *mask.shape[-2:]).numpy().max(axis=0) > 0)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _smooth_image(channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency content, so that resampling errors stay small."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None, :]
    out = []
    for _ in range(channels):
        a, b, c = (torch.rand(3, generator=g) * 2 * math.pi).tolist()
        out.append(0.5 + 0.3 * torch.sin(a + 2.0 * x + 1.5 * y) * torch.cos(b + 1.2 * y - c * 0.3 * x))
    return torch.stack(out).float()


def _rect_mask(height: int, width: int, top: int, left: int, h: int, w: int) -> torch.Tensor:
    mask = torch.zeros(1, height, width)
    mask[:, top : top + h, left : left + w] = 1.0
    return mask


def _dilate(region: torch.Tensor, pixels: int) -> torch.Tensor:
    """Chebyshev (square) dilation of a bool [.., H, W] map by ``pixels`` (independent of mask_ops)."""
    x = region.float().reshape(-1, 1, *region.shape[-2:])
    if pixels > 0:
        x = F.max_pool2d(x, 2 * pixels + 1, stride=1, padding=pixels)
    return (x > 0).reshape(region.shape)


def _box_region(box: CropBox) -> torch.Tensor:
    inside = torch.zeros(box.frame_height, box.frame_width, dtype=torch.bool)
    inside[max(box.y0, 0) : box.y1, max(box.x0, 0) : box.x1] = True
    return inside


# --------------------------------------------------------------------------- planning


@pytest.mark.parametrize("seed", range(6))
def test_box_is_a_square_holding_the_bbox_with_padding_inside_the_frame(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        height, width = int(rng.integers(8, 160)), int(rng.integers(8, 160))
        mask = torch.zeros(1, height, width)
        for _ in range(int(rng.integers(1, 4))):  # a few rectangles and stray pixels
            y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
            h, w = int(rng.integers(1, height)), int(rng.integers(1, width))
            mask[:, y0 : y0 + h, x0 : x0 + w] = float(rng.uniform(0.1, 1))
        padding = float(rng.choice([0.0, 0.1, 0.2, 0.5, 1.0]))
        min_side = int(rng.choice([0, 0, 32, 200]))
        box = plan_square_crop(mask, padding=padding, min_side=min_side, size=64)
        left, top, right, bottom = _bbox(mask)
        extent = max(right - left, bottom - top)
        assert box.side == max(extent + 2 * round(padding * extent), min_side)  # smallest such square
        assert (box.frame_width, box.frame_height, box.size) == (width, height, 64)
        assert box.x0 <= left and box.x1 >= right and box.y0 <= top and box.y1 >= bottom
        for start, dim in ((box.x0, width), (box.y0, height)):
            if box.side <= dim:  # fits: shifted into the frame, not shrunk
                assert 0 <= start and start + box.side <= dim
            else:  # larger than the frame: covers the whole axis
                assert start <= 0 and start + box.side >= dim


def test_padding_is_a_fraction_of_the_longer_bbox_side_on_every_side():
    mask = _rect_mask(400, 500, top=150, left=200, h=60, w=100)
    box = plan_square_crop(mask, padding=0.2, size=768)
    assert box.side == 140
    assert (200 - box.x0, box.x1 - 300) == (20, 20)  # 0.2 * 100 on the long axis
    assert (150 - box.y0, box.y1 - 210) == (40, 40)  # centred on the short axis
    assert box.scale == pytest.approx(768 / 140)


def test_box_is_shifted_not_shrunk_at_frame_borders():
    corner = plan_square_crop(_rect_mask(100, 120, top=0, left=0, h=10, w=10), padding=0.5)
    assert (corner.x0, corner.y0, corner.side) == (0, 0, 20)
    far = plan_square_crop(_rect_mask(100, 120, top=95, left=112, h=5, w=8), padding=0.5)
    assert (far.x1, far.y1, far.side) == (120, 100, 16)


def test_box_larger_than_the_frame_covers_it_centred_on_the_mask():
    box = plan_square_crop(_rect_mask(50, 200, top=20, left=0, h=10, w=200), padding=0.2)
    assert box.side == 280
    assert (box.x0, box.x1) == (-40, 240)  # whole width, 40 pixels of filler on each side
    assert (box.y0, box.y1) == (-115, 165)  # centred on rows 20..30


def test_box_covers_the_union_of_a_batch_of_masks():
    masks = torch.zeros(3, 1, 90, 120)
    masks[0, :, 10:20, 10:20] = 1
    masks[2, :, 60:70, 90:100] = 1
    box = plan_square_crop(masks, padding=0.0, size=48)
    assert (box.x0, box.y0, box.side) == (10, 0, 90)  # rows 10..70 centred at -5, shifted into the frame
    frames = _smooth_image(3, 90, 120)[None].expand(3, -1, -1, -1)
    crops, cropped_masks, box2 = crop_for_inpaint(frames, masks, size=48, padding=0.0)
    assert box2 == box and crops.shape == (3, 3, 48, 48) and cropped_masks.shape == (3, 1, 48, 48)


def test_crop_box_is_json_ready():
    box = plan_square_crop(_rect_mask(64, 64, 10, 10, 20, 20))
    data = json.loads(json.dumps(box.to_dict()))
    assert CropBox.from_dict(data) == box
    with pytest.raises(InputMismatchError, match="crop: the crop info lacks side"):
        CropBox.from_dict({k: v for k, v in data.items() if k != "side"})


# --------------------------------------------------------------------------- cropping


@pytest.mark.parametrize("pad_mode", ["reflect", "edge"])
def test_crop_outside_the_frame_is_filled_like_numpy_pad(pad_mode):
    image = torch.rand(3, 7, 11, generator=torch.Generator().manual_seed(0))
    box = CropBox(x0=-5, y0=-20, side=40, frame_width=11, frame_height=7, size=40)  # 20+ pixels beyond a 7-pixel axis
    got = crop_to_square(image, box, pad_mode=pad_mode)
    padded = np.pad(image.numpy(), ((0, 0), (20, 40 - 20 - 7), (5, 40 - 5 - 11)), mode=pad_mode)
    np.testing.assert_array_equal(got.numpy(), padded)


def test_crop_is_the_square_resized_and_the_mask_is_zero_outside_the_frame():
    image = _smooth_image(3, 60, 80)
    box = CropBox(x0=50, y0=-10, side=40, frame_width=80, frame_height=60, size=40)
    assert torch.equal(crop_to_square(image, box)[:, 10:, :30], image[:, :30, 50:80])
    mask = torch.rand(60, 80, generator=torch.Generator().manual_seed(1))
    cropped = crop_mask(mask, box)
    assert cropped.shape == (40, 40)
    assert torch.equal(cropped[10:, :30], mask[:30, 50:80])
    assert cropped[:10].abs().sum() == 0 and cropped[:, 30:].abs().sum() == 0
    # resized: the requested size, values stay in 0..1, the input is not modified
    box = CropBox(x0=50, y0=-10, side=40, frame_width=80, frame_height=60, size=64)
    before = image.clone()
    out = crop_to_square(image, box)
    assert out.shape == (3, 64, 64) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert torch.equal(image, before)


# --------------------------------------------------------------------------- stitching


@pytest.mark.parametrize("size", [24, 64, 96])  # shrink, enlarge, and the box's own size (no resampling)
def test_crop_then_stitch_unchanged_reproduces_the_original(size):
    image = _smooth_image(3, 90, 130, seed=size)
    mask = torch.zeros(1, 90, 130)
    mask[:, 30:55, 60:90] = 1.0
    mask[:, 50:60, 85:95] = 0.4  # a soft part counts too
    box = plan_square_crop(mask, padding=0.3, size=size, min_side=96 if size == 96 else 0)
    out = stitch_crop(image, crop_to_square(image, box), box, mask, feather=6)
    band = _dilate(mask[0] > 0, 6) & _box_region(box)
    assert torch.equal(out[:, ~band], image[:, ~band]), "outside the feathered mask: exactly the original"
    err = (out - image).abs()
    if box.side == size:
        assert float(err.max()) == 0.0
    else:  # two resamplings of smooth content; bicubic error well under one 8-bit level on average
        assert float(err.max()) < 0.02 and float(err.mean()) < 1e-3


def test_a_solid_edit_changes_only_the_feathered_mask():
    image = _smooth_image(3, 80, 100, seed=3)
    mask = _rect_mask(80, 100, top=20, left=30, h=20, w=25)
    box = plan_square_crop(mask, padding=0.5, size=64)
    red = torch.tensor([1.0, 0.0, 0.0])[:, None, None].expand(3, 64, 64)
    out = stitch_crop(image, red, box, mask, feather=8)
    changed = (out != image).any(dim=0)
    region = mask[0] > 0
    assert not (changed & ~_dilate(region, 8)).any(), "a pixel beyond the feather band changed"
    assert not (changed & ~_box_region(box)).any(), "a pixel outside the box changed"
    assert torch.allclose(out[:, region], red[:, :1, 0].expand(-1, int(region.sum())), atol=1e-5), (
        "the mask is fully the edit"
    )
    ring = _dilate(region, 3) & ~region
    assert changed[ring].all() and (out[0, ring] < 1 - 1e-3).any(), "the band near the mask is blended"
    # feather 0: exactly the mask
    hard = stitch_crop(image, red, box, mask, feather=0)
    assert torch.equal((hard != image).any(dim=0), region)


def test_without_a_mask_the_whole_box_is_pasted_with_a_soft_inner_edge():
    image = _smooth_image(3, 80, 100, seed=4)
    mask = _rect_mask(80, 100, top=30, left=40, h=10, w=10)
    box = plan_square_crop(mask, padding=1.0, size=32)  # 30x30 square at (30, 20)
    red = torch.tensor([1.0, 0.0, 0.0])[:, None, None].expand(3, 32, 32).clone()
    out = stitch_crop(image, red, box, feather=5)
    changed = (out != image).any(dim=0)
    assert torch.equal(changed, _box_region(box))
    inner = out[:, box.y0 + 5 : box.y1 - 5, box.x0 + 5 : box.x1 - 5]
    assert torch.allclose(inner, red[:, :1, :1].expand_as(inner), atol=1e-5)
    edge = out[0, box.y0, box.x0 + 10]
    assert float(image[0, box.y0, box.x0 + 10]) < float(edge) < 1 - 1e-3


def test_stitch_of_a_square_larger_than_the_frame_pastes_its_in_frame_part():
    image = _smooth_image(3, 50, 200, seed=5)
    frames = torch.stack([image, image.flip(-1)])  # [2, C, H, W]
    mask = torch.ones(1, 1, 50, 200)
    crops, _, box = crop_for_inpaint(frames, mask, size=280, padding=0.2)
    assert box.side == 280 and box.x0 < 0 and box.y0 < 0
    out = stitch_crop(frames, 1.0 - crops, box, mask, feather=8)
    assert out.shape == frames.shape
    assert torch.allclose(out, 1.0 - frames, atol=1e-6)


def test_stitch_does_not_modify_its_inputs():
    image = _smooth_image(3, 40, 40)
    mask = _rect_mask(40, 40, 10, 10, 10, 10)
    box = plan_square_crop(mask, size=16)
    edit = torch.rand(3, 16, 16)
    copies = [t.clone() for t in (image, mask, edit)]
    stitch_crop(image, edit, box, mask)
    assert all(torch.equal(a, b) for a, b in zip((image, mask, edit), copies))


# --------------------------------------------------------------------------- errors


def test_an_empty_mask_asks_for_a_mask():
    with pytest.raises(InputMismatchError) as err:
        plan_square_crop(torch.zeros(1, 32, 48))
    message = str(err.value)
    assert message.startswith("mask: the mask is empty") and "32" in message and "48" in message
    assert "Draw a mask" in message
    assert isinstance(err.value, KfiError) and isinstance(err.value, ValueError)


def test_stitch_size_mismatches_name_both_sizes():
    image = _smooth_image(3, 60, 80)
    mask = _rect_mask(60, 80, 10, 10, 20, 20)
    box = plan_square_crop(mask, size=64)
    with pytest.raises(InputMismatchError, match=r"edited_crop: size 72x72 .* does not match the crop's 64x64"):
        stitch_crop(image, torch.zeros(3, 72, 72), box)
    with pytest.raises(InputMismatchError, match=r"image: size 81x60 .* does not match the crop's frame size 80x60"):
        stitch_crop(torch.zeros(3, 60, 81), torch.zeros(3, 64, 64), box)
    with pytest.raises(
        InputMismatchError,
        match=r"mask: size 64x64 .* does not match the image's 80x60.*not the "
        r"cropped mask",
    ):
        stitch_crop(image, torch.zeros(3, 64, 64), box, torch.ones(1, 64, 64))
    with pytest.raises(InputMismatchError, match="edited_crop: got 2 edited crops for 1 images"):
        stitch_crop(image[None], torch.zeros(2, 3, 64, 64), box)
    with pytest.raises(InputMismatchError, match="edited_crop: 4 channels, but the image has 3"):
        stitch_crop(image, torch.zeros(4, 64, 64), box)
    with pytest.raises(InputMismatchError, match=r"image: size 81x60"):
        crop_to_square(torch.zeros(3, 60, 81), box)


def test_bad_settings_are_refused():
    mask = _rect_mask(32, 32, 4, 4, 8, 8)
    with pytest.raises(UnsupportedSizeError, match="size: got 0"):
        plan_square_crop(mask, size=0)
    with pytest.raises(UnsupportedSizeError, match="padding: got -0.1"):
        plan_square_crop(mask, padding=-0.1)
    with pytest.raises(InputMismatchError, match=r"mask: values must lie in 0..1, got 0..255"):
        plan_square_crop(mask * 255)
    box = plan_square_crop(mask, size=16)
    with pytest.raises(UnsupportedSizeError, match="feather: got -1"):
        stitch_crop(torch.zeros(3, 32, 32), torch.zeros(3, 16, 16), box, mask, feather=-1)
    with pytest.raises(InputMismatchError, match="pad_mode: got 'wrap'"):
        crop_to_square(torch.zeros(3, 32, 32), box, pad_mode="wrap")
