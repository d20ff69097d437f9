"""Symmetric masked-pixel condition: checks, keyframes as known frames, the two fills."""

from __future__ import annotations

import pytest
import torch

from kfi_core.errors import InputMismatchError, KeyframeError, NonFiniteError
from kfi_core.inference.condition import (
    check_frames,
    encode_symmetric,
    fill_masked,
    first_frame_for_embedding,
    prepare_clip,
)


def clip(n=4, h=64, w=64):
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(n, 3, h, w, generator=g)
    masks = torch.zeros(n, 1, h, w)
    masks[:, :, 16:40, 20:44] = 1.0
    return frames, masks


def _with(value: float) -> torch.Tensor:
    frames = torch.rand(2, 3, 8, 8)
    frames[1, 2, 5, 6] = value
    return frames


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(2, 1, 8, 8), "grayscale"),
        (torch.rand(2, 4, 8, 8), "RGBA"),
        (torch.rand(2, 3, 8, 8) * 255, "divide by 255"),
        (torch.full((2, 3, 8, 8), float("nan")), "NaN"),
        *[(_with(v), "NaN or infinity") for v in (float("nan"), float("inf"), -float("inf"))],  # one bad value
        (torch.zeros(2, 3, 8, 8, dtype=torch.int32), "float values in 0..1 \\(or uint8 0..255\\)"),  # 8-bit: valid
    ],
)
def test_check_frames_errors(bad, match):
    with pytest.raises((InputMismatchError, NonFiniteError), match=match):
        check_frames(bad)


def test_prepare_clip_keyframes_are_known_and_placed():
    frames, masks = clip()
    kf = torch.ones(1, 3, 64, 64) * 0.25
    c = prepare_clip(frames, masks, keyframes=kf, keyframe_indices=[2])
    assert torch.equal(c.frames[2], kf[0]) and torch.equal(c.frames[0], frames[0])
    assert c.masks[2].sum() == 0 and c.masks[1].sum() == 24 * 24
    assert c.keyframe_indices == [2]
    assert torch.equal(frames, clip()[0]), "inputs must not be modified"
    assert torch.equal(masks, clip()[1]), "clearing the keyframe's mask must not write into the caller's masks"
    one = masks[1:2].clone()  # one mask for every frame: the clip gets its own masks, the caller's stay as given
    c = prepare_clip(frames, one, keyframe_indices=[0])
    assert c.masks[0].sum() == 0 and c.masks[1].sum() == 24 * 24 and torch.equal(one, masks[1:2])


def test_prepare_clip_errors():
    frames, masks = clip()
    with pytest.raises(InputMismatchError, match="got 3 masks for 4 frames"):
        prepare_clip(frames, masks[:3])
    with pytest.raises(KeyframeError, match="got 9 for a clip of 4 frames"):
        prepare_clip(frames, masks, keyframe_indices=[9])
    with pytest.raises(InputMismatchError, match="does not match"):
        prepare_clip(frames, masks, keyframes=torch.rand(1, 3, 64, 32), keyframe_indices=[0])


def test_fill_masked():
    frames, masks = clip(n=1)
    black, white = fill_masked(frames, masks, 0.0), fill_masked(frames, masks, 1.0)
    inside = masks.bool().expand_as(frames)
    assert (black[inside] == 0).all() and (white[inside] == 1).all()
    assert torch.equal(black[~inside], frames[~inside]) and torch.equal(white[~inside], frames[~inside])


def test_symmetric_encoding_halves(tiny_components):
    vae = tiny_components["vae"]
    frames, masks = clip()
    c = prepare_clip(frames, masks, keyframe_indices=[0])
    lat = encode_symmetric(vae, c, noise_aug_strength=0.02, generator=torch.Generator().manual_seed(1), chunk_size=3)
    assert lat.shape == (1, 4, 8, 16, 16)
    black, white = lat[0, :, :4], lat[0, :, 4:]
    assert torch.equal(black[0], white[0]), "a keyframe is fully known: both fills encode the same frame"
    assert not torch.allclose(black[1], white[1]), "inside the mask the two fills differ"
    again = encode_symmetric(vae, c, noise_aug_strength=0.02, generator=torch.Generator().manual_seed(1), chunk_size=4)
    assert torch.allclose(lat, again, atol=1e-5), "chunking and seeding must not change the result"


def test_embedding_frame():
    frames, masks = clip()
    c = prepare_clip(frames, masks)
    emb = first_frame_for_embedding(c)
    inside = masks[0].bool().expand(3, -1, -1)
    assert torch.equal(emb[~inside], frames[0][~inside])
    assert torch.allclose(emb[:, 20, 30], emb[:, 30, 25])  # flat mean colour inside the hole
    c2 = prepare_clip(frames, masks, keyframe_indices=[3])
    assert torch.equal(first_frame_for_embedding(c2), frames[3])
