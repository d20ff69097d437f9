"""kfi_core.evaluation.procedural: determinism, shapes, exact masks and ground truth, textures, pan speed."""

from __future__ import annotations

import pytest
import torch

from kfi_core.errors import InputMismatchError, UnknownNameError
from kfi_core.evaluation.procedural import ProceduralConfig, make_procedural_clip, with_config


@pytest.mark.parametrize("task", ["removal", "edit"])
def test_deterministic_by_seed_and_shapes(task):
    a = make_procedural_clip(task, 6, 48, 64, seed=7)
    b = make_procedural_clip(task, 6, 48, 64, seed=7)
    c = make_procedural_clip(task, 6, 48, 64, seed=8)
    assert a.frames.shape == a.ground_truth.shape == (6, 3, 48, 64)
    assert a.masks.shape == a.object_masks.shape == (6, 1, 48, 64)
    assert a.frames.dtype == torch.float32 and a.keyframe.shape == (3, 48, 64)
    for name in ("frames", "masks", "ground_truth", "keyframe"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.frames, c.frames)
    assert 0.0 <= float(a.frames.min()) and float(a.frames.max()) <= 1.0
    assert set(a.masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a.keyframe, a.ground_truth[a.keyframe_index])
    assert list(a.keyframes) == [a.keyframe_index]


def test_both_tasks_share_the_scene():
    r = make_procedural_clip("removal", 5, 64, 64, seed=3)
    e = make_procedural_clip("edit", 5, 64, 64, seed=3)
    assert torch.equal(r.frames, e.frames) and torch.equal(r.masks, e.masks)


@pytest.mark.parametrize("seed", range(6))
def test_removal_ground_truth_equals_frames_outside_the_mask(seed):
    c = make_procedural_clip("removal", 8, 64, 64, seed=seed)
    outside = c.masks == 0
    diff = (c.frames - c.ground_truth).abs().amax(dim=1, keepdim=True)  # [F, 1, H, W]
    assert float(diff[outside.expand_as(diff)].max()) == 0.0
    # and the mask is needed: the object really is in the frames, inside its exact region
    assert float(diff[c.object_masks.bool()].mean()) > 0.02
    # the mask covers the exact object region (grown by mask_grow), nothing else
    assert bool((c.masks >= c.object_masks).all())
    assert float(c.masks.sum()) > float(c.object_masks.sum())


@pytest.mark.parametrize("seed", range(6))
def test_edit_differs_only_inside_the_object(seed):
    c = make_procedural_clip("edit", 8, 64, 64, seed=seed)
    diff = (c.frames - c.ground_truth).abs().amax(dim=1, keepdim=True)
    assert float(diff[c.object_masks == 0].max()) == 0.0
    inside = diff[c.object_masks.bool()]
    assert float((inside > 0.05).float().mean()) > 0.5  # the edit is visible over most of the object
    assert not torch.equal(c.keyframe, c.frames[c.keyframe_index])


def _affine_residual(x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest residual of the best per-channel fit y ~ a * x + b over the pixels given ([N, 3] each)."""
    worst = 0.0
    for ch in range(3):
        design = torch.stack([x[:, ch], torch.ones_like(x[:, ch])], dim=1).double()
        coef = torch.linalg.lstsq(design, y[:, ch : ch + 1].double()).solution
        worst = max(worst, float((design @ coef - y[:, ch : ch + 1].double()).abs().max()))
    return worst


@pytest.mark.parametrize("seed", range(4))
def test_recolour_edit_keeps_the_stripes_and_changes_their_colours(seed):
    # constant light (easy preset): each object pixel is mix(colour 0, colour 1, stripe weight), so a recolour is a
    # per-channel affine map of the original pixels inside the object; the checker swap is not
    cfg = ProceduralConfig.preset("easy")
    recol = make_procedural_clip("edit", 6, 64, 64, seed=seed, config=with_config(cfg, edit_pattern="recolour"))
    swap = make_procedural_clip("edit", 6, 64, 64, seed=seed, config=cfg)
    assert torch.equal(recol.frames, swap.frames) and torch.equal(recol.masks, swap.masks)
    inside = recol.object_masks.bool().expand_as(recol.frames)
    orig = recol.frames.permute(0, 2, 3, 1)[inside[:, 0]]
    new = recol.ground_truth.permute(0, 2, 3, 1)[inside[:, 0]]
    swapped = swap.ground_truth.permute(0, 2, 3, 1)[inside[:, 0]]
    assert _affine_residual(orig, new) < 1e-4
    assert _affine_residual(orig, swapped) > 0.05
    assert float((new - orig).abs().amax(dim=1).mean()) > 0.1  # the colours did change
    diff = (recol.frames - recol.ground_truth).abs().amax(dim=1, keepdim=True)
    assert float(diff[recol.object_masks == 0].max()) == 0.0


def _high_frequency_energy(frames: torch.Tensor) -> float:
    """Mean squared difference of horizontal and vertical pixel neighbours (0 for a flat image)."""
    dx = frames[..., :, 1:] - frames[..., :, :-1]
    dy = frames[..., 1:, :] - frames[..., :-1, :]
    return float((dx**2).mean() + (dy**2).mean())


@pytest.mark.parametrize("texture", ["stripes", "checker", "noise", "mixed"])
def test_textures_have_high_frequency_energy(texture):
    cfg = ProceduralConfig(texture=texture, texture_period=4.0)
    c = make_procedural_clip("removal", 2, 64, 64, seed=1, config=cfg)
    smooth = torch.nn.functional.avg_pool2d(c.ground_truth, 5, stride=1)  # no padding: no border edges
    assert _high_frequency_energy(c.ground_truth) > 0.002
    # a 5x5 box blur removes most of the energy: it sits at periods of a few pixels
    assert _high_frequency_energy(c.ground_truth) > 3 * _high_frequency_energy(smooth)


@pytest.mark.parametrize("pan", [(2.0, 0.0), (0.0, 1.0), (-1.0, 3.0)])
def test_pan_moves_content_by_the_requested_speed(pan):
    cfg = ProceduralConfig(pan=pan, distractor=False, lighting_change=0.0)
    c = make_procedural_clip("removal", 4, 64, 64, seed=2, config=cfg)
    g = c.ground_truth  # background only
    dx, dy = int(pan[0]), int(pan[1])
    for t in range(1, 4):
        sx, sy = dx * t, dy * t
        # frame t at (y, x) shows frame 0 at (y - sy, x - sx)
        now = g[t][:, max(sy, 0) : 64 + min(sy, 0), max(sx, 0) : 64 + min(sx, 0)]
        before = g[0][:, max(-sy, 0) : 64 + min(-sy, 0), max(-sx, 0) : 64 + min(-sx, 0)]
        assert torch.allclose(now, before, atol=1e-5), (pan, t)
        assert not torch.allclose(g[t], g[0], atol=1e-3)  # it did move


def test_lighting_changes_over_time():
    still = ProceduralConfig(pan=(0.0, 0.0), distractor=False)
    lit = make_procedural_clip("removal", 6, 64, 64, seed=4, config=with_config(still, lighting_change=0.5))
    flat = make_procedural_clip("removal", 6, 64, 64, seed=4, config=with_config(still, lighting_change=0.0))
    assert torch.equal(flat.ground_truth[0], flat.ground_truth[-1])
    assert float(lit.ground_truth[-1].mean()) > float(lit.ground_truth[0].mean()) + 0.05


def test_distractor_occludes_or_is_occluded():
    # over a few seeds both depth orders occur, and the distractor is never part of the mask
    orders = set()
    for seed in range(8):
        c = make_procedural_clip("removal", 4, 64, 64, seed=seed)
        orders.add(c.params["distractor_in_front"])
    assert orders == {True, False}


def test_bad_knobs_raise():
    with pytest.raises(UnknownNameError, match="task"):
        make_procedural_clip("paint")
    with pytest.raises(UnknownNameError, match="texture"):
        make_procedural_clip(config=ProceduralConfig(texture="wood"))
    with pytest.raises(InputMismatchError, match="keyframe_index"):
        make_procedural_clip(num_frames=4, config=ProceduralConfig(keyframe_index=4))
    with pytest.raises(UnknownNameError, match="difficulty"):
        make_procedural_clip(difficulty="brutal")
    with pytest.raises(UnknownNameError, match="edit_pattern"):
        make_procedural_clip("edit", config=ProceduralConfig(edit_pattern="plaid"))


def test_presets_are_ordered_by_difficulty():
    easy = make_procedural_clip("removal", 8, 64, 64, seed=0, difficulty="easy")
    hard = make_procedural_clip("removal", 8, 64, 64, seed=0, difficulty="hard")
    assert _high_frequency_energy(hard.ground_truth) > _high_frequency_energy(easy.ground_truth)
