"""Colour matching (kfi_core.inference.color_match): analytic recoveries, invariants, errors, and the whole path."""

from __future__ import annotations

import pytest
import torch

from kfi_core.errors import InputMismatchError, UnknownNameError
from kfi_core.inference.color_match import MIN_PIXELS, fit_color_transform, match_colors, ring_width
from kfi_core.inference.condition import prepare_clip
from kfi_core.inference.settings import PropagateSettings
from kfi_core.inference.window import composite


def clip(n=3, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    reference = torch.rand(n, 3, h, w, generator=g) * 0.6 + 0.2
    masks = torch.zeros(n, 1, h, w)
    masks[:, :, 16:32, 20:44] = 1.0
    return reference, masks


def distort(frames: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Per-pixel colour transform frames' = matrix @ frames + offset (what a drifting decoder does)."""
    return torch.einsum("ij,fjhw->fihw", matrix, frames) + offset.view(1, 3, 1, 1)


def test_affine_undoes_a_colour_transform_inside_the_hole():
    reference, masks = clip()
    matrix = torch.tensor([[0.6, 0.2, 0.0], [0.1, 0.5, 0.1], [0.0, 0.3, 0.7]])
    generated = distort(reference, matrix, torch.tensor([0.05, 0.1, -0.02]))
    hole = masks.bool().expand_as(reference)
    before = (generated - reference)[hole].abs().max()
    fixed = match_colors(generated, reference, masks, "affine")
    # the ridge towards the identity leaves a small bias (RIDGE = 1e-4 per pixel against a colour variance near 0.01)
    assert (fixed - reference)[hole].abs().max() < 0.05 * before
    assert (fixed - reference)[hole].abs().mean() < 0.01


def test_mean_undoes_an_offset_exactly():
    reference, masks = clip()
    generated = reference + torch.tensor([0.1, -0.05, 0.02]).view(1, 3, 1, 1)
    fixed = match_colors(generated, reference, masks, "mean")
    torch.testing.assert_close(fixed, reference, atol=1e-6, rtol=0)


def test_a_perfect_decoder_is_left_alone_and_none_is_a_no_op():
    reference, masks = clip()
    torch.testing.assert_close(match_colors(reference, reference, masks, "affine"), reference, atol=1e-6, rtol=0)
    generated = reference * 0.5
    assert match_colors(generated, reference, masks, "none") is generated


def test_the_fit_uses_only_the_ring_around_the_hole():
    """A colour cast far from the hole (outside the ring) must not enter the fit."""
    reference, masks = clip(h=64, w=128)
    generated = reference.clone()
    generated[..., 100:] += 0.3  # far right: more than ring_width pixels from the hole (columns 20..44)
    assert 100 - 44 > ring_width(64, 128)
    fixed = match_colors(generated, reference, masks, "affine")
    hole = masks.bool().expand_as(reference)
    torch.testing.assert_close(fixed[hole], reference[hole], atol=1e-5, rtol=0)


def test_frames_without_enough_known_pixels_stay_as_generated():
    reference, masks = clip()
    masks[1] = 1.0  # a fully masked frame: nothing to fit on
    generated = reference * 0.8
    fixed = match_colors(generated, reference, masks, "affine")
    torch.testing.assert_close(fixed[1], generated[1], atol=0, rtol=0)
    assert not torch.allclose(fixed[0], generated[0])
    assert MIN_PIXELS > 12, "at least the 12 parameters of the affine fit"


def test_composite_keeps_known_pixels_exact_with_colour_matching():
    reference, masks = clip()
    generated = reference * 0.7 + 0.1
    prepared = prepare_clip(reference, masks)
    out = composite(prepared, generated, color_match="affine")
    keep = masks.expand_as(reference) == 0
    assert torch.equal(out[keep], reference[keep])
    assert (out - reference)[~keep].abs().max() < 0.01 < (generated - reference)[~keep].abs().max()


def test_fit_solution_is_identity_for_uncorrelated_flat_rings():
    """A flat ring carries no information on the 3x3 part: the ridge keeps A = I and only the offset moves."""
    g = torch.full((200, 3), 0.4)
    r = torch.full((200, 3), 0.5)
    w = fit_color_transform(g, r, "affine")
    torch.testing.assert_close(w[:3], torch.eye(3, dtype=w.dtype), atol=1e-6, rtol=0)
    torch.testing.assert_close(w[3], torch.full((3,), 0.1, dtype=w.dtype), atol=1e-6, rtol=0)


def edit_clip(n=4, h=48, w=64, keyframe=0):
    """An edit: a square object whose colours appear nowhere around the hole, except in the keyframe (fully known)."""
    g = torch.Generator().manual_seed(3)
    reference = torch.rand(n, 3, h, w, generator=g) * 0.3 + 0.1  # dark, greyish background
    masks = torch.zeros(n, 1, h, w)
    for t in range(n):
        x = 12 + 4 * t  # the object moves right
        reference[t, :, 16:32, x : x + 16] = torch.tensor([0.2, 0.9, 0.3]).view(3, 1, 1) + 0.1 * torch.rand(
            3, 16, 16, generator=g
        )  # a saturated green object
        if t != keyframe:
            masks[t, :, 16:32, x : x + 16] = 1.0
    return reference, masks


def test_keyframe_mode_fits_the_edit_colours_the_ring_never_shows():
    reference, masks = edit_clip()
    matrix = torch.tensor([[0.5, 0.3, 0.1], [0.2, 0.4, 0.2], [0.1, 0.3, 0.5]])  # drift towards grey
    generated = distort(reference, matrix, torch.tensor([0.05, 0.02, 0.0]))
    hole = masks.bool().expand_as(reference)
    ring = match_colors(generated, reference, masks, "affine")
    keyed = match_colors(generated, reference, masks, "keyframe", keyframes=[0])
    error = {
        name: (out - reference)[hole].abs().mean()
        for name, out in (("generated", generated), ("ring", ring), ("keyframe", keyed))
    }
    assert error["keyframe"] < 0.01 < error["ring"] and error["keyframe"] < 0.1 * error["generated"], error
    # one transform for the whole clip: a colour maps to the same colour in every frame
    same = generated.clone()
    same[1:, :, 16:32] = generated[1:2, :, 16:32]
    keyed_same = match_colors(same, reference, masks, "keyframe", keyframes=[0])
    for t in (2, 3):
        torch.testing.assert_close(
            keyed_same[t, :, 16:32][hole[t, :, 16:32]],
            match_colors(same, reference, masks, "keyframe", keyframes=[0])[t, :, 16:32][hole[t, :, 16:32]],
        )
        torch.testing.assert_close(keyed_same[t, :, 16:32, 30:36], keyed_same[1, :, 16:32, 30:36])


def test_keyframe_mode_without_a_usable_keyframe_is_affine():
    reference, masks = edit_clip()
    generated = reference * 0.7 + 0.1
    affine = match_colors(generated, reference, masks, "affine")
    torch.testing.assert_close(match_colors(generated, reference, masks, "keyframe"), affine, atol=0, rtol=0)
    # a "keyframe" that still has a hole is not known, so it is not fitted on
    torch.testing.assert_close(
        match_colors(generated, reference, masks, "keyframe", keyframes=[2]), affine, atol=0, rtol=0
    )


def test_keyframe_mode_through_composite_uses_the_clip_keyframes():
    reference, masks = edit_clip()
    generated = distort(
        reference, torch.tensor([[0.5, 0.3, 0.1], [0.2, 0.4, 0.2], [0.1, 0.3, 0.5]]), torch.tensor([0.05, 0.02, 0.0])
    )
    prepared = prepare_clip(reference, masks, keyframe_indices=[0])
    out = composite(prepared, generated, color_match="keyframe")
    keep = masks.expand_as(reference) == 0
    assert torch.equal(out[keep], reference[keep])
    without = composite(prepare_clip(reference, masks), generated, color_match="keyframe")  # no keyframe: the ring
    assert (out - reference)[~keep].abs().mean() < 0.01 < (without - reference)[~keep].abs().mean()


def test_errors_name_the_input():
    reference, masks = clip()
    with pytest.raises(UnknownNameError, match="color_match: got 'auto'; choose one of none, mean, affine"):
        match_colors(reference, reference, masks, "auto")
    with pytest.raises(UnknownNameError, match="color_match: got 'auto'"):
        PropagateSettings(color_match="auto").check()
    with pytest.raises(InputMismatchError, match=r"color_match: masks \[2, 1, 48, 64\] do not match"):
        match_colors(reference, reference, masks[:2], "affine")
    with pytest.raises(InputMismatchError, match="must both be"):
        match_colors(reference[:, :2], reference[:, :2], masks, "affine")
    with pytest.raises(InputMismatchError, match="ring: got 0"):
        match_colors(reference, reference, masks, "affine", ring=0)


def test_inpaint_command_takes_the_option(tiny_model_dir, tmp_path):
    from kfi_core import cli
    from kfi_core.bundled import make_sample_clip
    from kfi_core.media.video import read_frames, write_frames

    sample = make_sample_clip(num_frames=8)
    write_frames(sample["frames"], tmp_path / "in")
    write_frames(sample["masks"].expand(-1, 3, -1, -1), tmp_path / "mask")
    outs = {}
    for mode in ("none", "affine"):
        out = tmp_path / f"out_{mode}"  # no suffix: a PNG folder, lossless
        args = [
            "inpaint",
            "--model",
            str(tiny_model_dir),
            "--video",
            str(tmp_path / "in"),
            "--mask",
            str(tmp_path / "mask"),
            "--out",
            str(out),
            "--steps",
            "2",
            "--color-match",
            mode,
        ]
        assert cli.main(args) == 0
        outs[mode] = read_frames(out)[0]
    keep = sample["masks"].expand_as(outs["none"]) == 0
    assert torch.equal(outs["none"][keep], outs["affine"][keep])
    assert not torch.equal(outs["none"], outs["affine"])
