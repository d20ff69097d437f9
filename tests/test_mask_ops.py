"""Mask preparation and keyframe helpers: analytic cases and invariants."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from kfi_core.errors import InputMismatchError, KeyframeError, NonFiniteError
from kfi_core.media.keyframes import check_frame_index, insert_keyframes, parse_indices, select_frame
from kfi_core.media.mask_ops import binarize, expand_masks, feather, grow, prepare_masks, temporal_dilate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from mask_grow import grow_by_convolution  # noqa: E402


def dot(size=21, at=(10, 10)):
    m = torch.zeros(1, 1, size, size)
    m[0, 0, at[0], at[1]] = 1.0
    return m


def test_grow_single_pixel_gives_a_disk_of_that_radius():
    out = grow(dot(), 3)[0, 0]
    yy, xx = torch.meshgrid(torch.arange(21), torch.arange(21), indexing="ij")
    disk = ((yy - 10) ** 2 + (xx - 10) ** 2) <= 9.5
    assert torch.equal(out.bool(), disk)


@pytest.mark.parametrize("shape", [(3, 1, 37, 53), (2, 1, 5, 40), (1, 1, 64, 9)])
def test_grow_matches_the_disk_convolution(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    for density in (0.003, 0.05, 0.5, 0.97):
        masks = (torch.rand(shape, generator=gen) < density).float()
        for pixels in (1, 2, 3, 5, 8, 13, 41, -1, -2, -4, -7, -19):
            want = grow_by_convolution(masks, pixels)  # the direct O(r^2) definition
            assert torch.equal(grow(masks, pixels), want), (density, pixels)


def test_erode_undoes_grow_on_a_square_and_shrinks_it():
    sq = torch.zeros(1, 1, 30, 30)
    sq[..., 10:20, 10:20] = 1
    assert torch.equal(grow(grow(sq, 2), -2), sq)  # closing of a convex shape is the shape
    eroded = grow(sq, -2)
    assert eroded.sum() == 6 * 6
    assert torch.equal(grow(sq, 0), sq)


def test_erode_keeps_masks_touching_the_border():
    full = torch.ones(1, 1, 8, 8)
    assert torch.equal(grow(full, -3), full)


def test_inputs_are_never_modified():
    m = dot()
    before = m.clone()
    for fn in (lambda x: grow(x, 2), lambda x: grow(x, -2), lambda x: feather(x, 3), lambda x: temporal_dilate(x, 1)):
        fn(m)
    assert torch.equal(m, before)


def test_binarize_threshold():
    m = torch.tensor([0.2, 0.5, 0.51, 1.0]).view(1, 1, 1, 4)
    assert binarize(m).flatten().tolist() == [0, 0, 1, 1]
    with pytest.raises(InputMismatchError, match="threshold"):
        binarize(m, 1.5)


def test_feather_is_soft_and_bounded():
    sq = torch.zeros(1, 1, 40, 40)
    sq[..., 10:30, 10:30] = 1
    f = feather(sq, 4)
    assert f.min() >= 0 and f.max() <= 1
    assert 0 < f[0, 0, 10, 20] < 1  # edge softened
    assert f[0, 0, 20, 20] > 0.99 and f[0, 0, 0, 0] < 0.01


def test_temporal_dilation_spreads_over_neighbours_only():
    m = torch.zeros(7, 1, 4, 4)
    m[3, 0, 1, 1] = 1
    out = temporal_dilate(m, 2)
    assert out[:, 0, 1, 1].tolist() == [0, 1, 1, 1, 1, 1, 0]
    assert out.sum() == 5


def test_prepare_masks_checks_values():
    with pytest.raises(InputMismatchError, match="divide it by 255"):
        prepare_masks(torch.full((2, 1, 4, 4), 255.0))
    with pytest.raises(NonFiniteError, match="NaN"):  # as NaN frames and NaN metrics inputs
        prepare_masks(torch.full((2, 1, 4, 4), float("nan")))
    for bad in (float("nan"), float("inf"), float("-inf")):  # one bad value among valid ones is found
        masks = torch.rand(2, 1, 4, 4)
        masks[1, 0, 2, 3] = bad
        with pytest.raises(NonFiniteError, match="NaN or infinity"):
            prepare_masks(masks)
    with pytest.raises(InputMismatchError, match="single-channel"):
        prepare_masks(torch.zeros(2, 3, 4, 4))


def test_expand_masks_count_and_size():
    one = torch.zeros(1, 1, 8, 10)
    assert expand_masks(one, 5, (8, 10)).shape == (5, 1, 8, 10)
    assert expand_masks(one, 5, (8, 10)).data_ptr() != one.data_ptr()  # a copy by default
    assert expand_masks(one, 5, (8, 10), copy=False).data_ptr() == one.data_ptr()  # or a view for callers that copy
    with pytest.raises(InputMismatchError, match="got 3 masks for 5 frames"):
        expand_masks(torch.zeros(3, 1, 8, 10), 5, (8, 10))
    with pytest.raises(InputMismatchError, match=r"mask size 10x8 .* frames' 12x8"):
        expand_masks(one, 5, (8, 12))


def test_keyframe_select_insert_and_errors():
    frames = torch.rand(6, 3, 8, 8)
    kf = torch.rand(2, 3, 8, 8)
    out = insert_keyframes(frames, kf, [0, -1])
    assert torch.equal(out[0], kf[0]) and torch.equal(out[5], kf[1]) and torch.equal(out[1:5], frames[1:5])
    assert torch.equal(select_frame(frames, -2)[0], frames[4])
    assert check_frame_index(-1, 6) == 5
    with pytest.raises(KeyframeError, match="got 6 for a clip of 6 frames"):
        select_frame(frames, 6)
    with pytest.raises(KeyframeError, match="same frame twice"):
        insert_keyframes(frames, kf, [1, -5])
    with pytest.raises(KeyframeError, match="2 indices for 1 keyframe"):
        insert_keyframes(frames, kf[:1], [0, 1])
    with pytest.raises(InputMismatchError, match="does not match"):
        insert_keyframes(frames, torch.rand(1, 3, 8, 9), [0])
    assert parse_indices("0, 40;-1") == [0, 40, -1]
    with pytest.raises(KeyframeError, match="whole frame numbers"):
        parse_indices("zero")
