"""Random training masks: analytic coverage per type, inversion, motion, determinism, limits, errors, preview."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from kfi_core.cli import main as cli_main
from kfi_core.errors import KfiError, MaskSynthesisError, UnknownNameError
from kfi_core.training.mask_generators import (
    animate,
    blob_mask,
    coverage,
    full_mask,
    grid_cell_pixels,
    grid_mask,
    invert,
    scribble_mask,
    square_mask,
    stationary,
)
from kfi_core.training.mask_synthesis import (
    MASK_TYPES,
    MaskConfig,
    preview_sheet_size,
    sample_masks,
    sample_masks_with_info,
)


def assert_binary_masks(m, frames, h, w):
    assert m.shape == (frames, 1, h, w) and m.dtype == torch.float32
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}


def centroid(frame):  # [1, H, W] -> (y, x)
    ys, xs = torch.meshgrid(torch.arange(frame.shape[-2]).float(), torch.arange(frame.shape[-1]).float(), indexing="ij")
    total = frame[0].sum()
    return float((frame[0] * ys).sum() / total), float((frame[0] * xs).sum() / total)


def box(h=96, w=96, top=40, left=40, side=12):
    m = torch.zeros(h, w)
    m[top : top + side, left : left + side] = 1
    return m


# --------------------------------------------------------------------------- spatial types


def test_full_mask_covers_everything():
    m = full_mask(20, 30, num_frames=3)
    assert_binary_masks(m, 3, 20, 30)
    assert torch.equal(coverage(m), torch.ones(3))


@pytest.mark.parametrize(
    "h, w, cell, ratio, offset, axes",
    [
        (64, 64, 0.125, 0.25, (0.0, 0.0), "both"),  # period 8 divides 64: exact
        (64, 64, 0.25, 0.5, (0.3, 0.7), "both"),
        (64, 96, 0.15, 0.3, (0.5, 0.1), "both"),  # period 10 does not divide 64 or 96
        (48, 80, 0.2, 0.4, (0.0, 0.0), "rows"),
        (48, 80, 0.2, 0.4, (0.2, 0.0), "cols"),
    ],
)
def test_grid_coverage_matches_its_line_ratio(h, w, cell, ratio, offset, axes):
    m = grid_mask(h, w, num_frames=2, cell=cell, line_ratio=ratio, offset=offset, axes=axes)
    assert_binary_masks(m, 2, h, w)
    period, line = grid_cell_pixels(h, w, cell, ratio)
    r = line / period
    analytic = {"both": 1 - (1 - r) ** 2, "rows": r, "cols": r}[axes]
    # Tolerance: per axis, an incomplete last period can add or drop at most `line` rows (columns),
    # i.e. line / side of that axis' fraction; combined over two axes, at most the sum.
    tol = {"both": line / h + line / w, "rows": line / h, "cols": line / w}[axes] + 1e-6
    if h % period == 0 and w % period == 0:
        tol = 1e-6  # whole periods: exact
    assert abs(float(coverage(m)[0]) - analytic) <= tol
    assert torch.equal(m[0], m[1])


def test_grid_rows_are_horizontal_lines_with_the_requested_period():
    m = grid_mask(40, 50, cell=0.25, line_ratio=0.2, axes="rows")[0, 0]  # period 10, 2 px lines
    assert torch.equal(m, m[:, :1].expand_as(m))  # constant along each row
    assert m[:, 0].tolist() == ([1.0] * 2 + [0.0] * 8) * 4


@pytest.mark.parametrize("h, w", [(64, 64), (48, 80)])
def test_square_coverage_within_its_size_bounds(h, w):
    short = min(h, w)
    lo, hi = 0.2, 0.45
    a, b = round(lo * short), round(hi * short)
    covs = []
    for seed in range(40):
        m = square_mask(h, w, seed, size=(lo, hi), num_frames=2)
        assert_binary_masks(m, 2, h, w)
        c = int(m[0].sum())
        assert a * a <= c <= b * b, (seed, c)
        # one axis-aligned square: the filled pixels form a single square block
        ys, xs = torch.nonzero(m[0, 0], as_tuple=True)
        side = int(ys.max() - ys.min() + 1)
        assert side == int(xs.max() - xs.min() + 1) and side * side == c
        covs.append(c)
    assert len(set(covs)) > 5  # sizes vary within the range


def test_several_boxes_cover_no_more_than_their_sum():
    for seed in range(20):
        m = square_mask(64, 64, seed, num_boxes=3, size=0.25, aspect_jitter=0.5)
        assert 16 * 16 / 4096 * 0.3 < float(coverage(m)[0]) <= 3 * (16 * math.exp(0.5) + 1) ** 2 / 4096


def test_scribble_is_non_empty_and_bounded():
    h, w, short = 64, 96, 64
    # one stroke, one segment, fixed brush: a capsule at most (L + brush) long and (brush + 2) wide
    for seed in range(20):
        m = scribble_mask(h, w, seed, num_strokes=1, num_vertices=1, max_length=0.3, brush_width=0.1)
        assert_binary_masks(m, 1, h, w)
        brush = round(0.1 * short)
        area = float(m.sum())
        assert math.pi * (brush / 2) ** 2 * 0.7 <= area <= (0.3 * short + brush + 2) * (brush + 2), (seed, area)
    # defaults: several strokes; never empty; below the bound of all capsules and round joints
    for seed in range(30):
        m = scribble_mask(h, w, seed)
        wmax = 0.1 * short + 1
        bound = 4 * 12 * ((0.25 * short + wmax + 2) * (wmax + 2)) / (h * w)
        assert 0 < float(coverage(m)[0]) <= min(bound, 1.0)


def test_blob_coverage_matches_the_request():
    for seed, target in enumerate([0.05, 0.3, 0.6, 0.9]):
        m = blob_mask(48, 80, seed, coverage=target, feature_size=0.3, num_frames=2)
        assert_binary_masks(m, 2, 48, 80)
        assert abs(float(coverage(m)[0]) - target) <= 1 / (48 * 80)  # a rank threshold: within one pixel


def test_blob_feature_size_controls_the_number_of_blobs():
    # smaller features -> more boundary per area; count boundary pixels (a 4-neighbour differs)
    def boundary(m):
        m = m[0, 0]
        return int((m[1:] != m[:-1]).sum() + (m[:, 1:] != m[:, :-1]).sum())

    fine = sum(boundary(blob_mask(96, 96, s, feature_size=0.1)) for s in range(5))
    coarse = sum(boundary(blob_mask(96, 96, s, feature_size=0.5)) for s in range(5))
    assert fine > 2 * coarse


# --------------------------------------------------------------------------- inversion and motion


def test_invert_swaps_regions_and_coverage():
    m = sample_masks(5, 32, 48, 3)
    inv = invert(m)
    assert torch.equal(inv, 1 - m) and torch.equal(invert(inv), m)
    assert torch.allclose(coverage(m) + coverage(inv), torch.ones(5))
    assert_binary_masks(inv, 5, 32, 48)


def test_stationary_and_default_animate_repeat_the_mask():
    m = scribble_mask(40, 60, 0)[0, 0]
    s = stationary(m, 6)
    assert s.shape == (6, 1, 40, 60) and all(torch.equal(f[0], m) for f in s)
    assert torch.equal(animate(m, 6), s)
    assert torch.equal(animate(m[None, None], 6, rng=0), s)  # rng unused without jitter


@pytest.mark.parametrize("velocity", [(0.02, -0.03), (-0.015, 0.0), (0.0, 0.025)])
def test_animated_centroid_moves_by_the_velocity(velocity):
    h, w = 96, 128
    short = min(h, w)
    m = animate(box(h, w), 8, velocity=velocity)
    assert_binary_masks(m, 8, h, w)
    y0, x0 = centroid(m[0])
    for t in range(8):
        y, x = centroid(m[t])
        # nearest-neighbour sampling rounds the whole shift: at most half a pixel per axis
        assert abs(y - y0 - velocity[0] * short * t) <= 0.5 + 1e-4
        assert abs(x - x0 - velocity[1] * short * t) <= 0.5 + 1e-4
        assert m[t].sum() == m[0].sum()  # a pure translation keeps the area


def test_scale_and_rotation_change_area_and_shape_as_asked():
    m = box(96, 96, 36, 36, 24)
    grown = animate(m, 5, scale_rate=0.1)
    areas = grown.flatten(1).sum(1)
    for t in range(5):
        assert abs(float(areas[t]) / 576 - 1.1 ** (2 * t)) < 0.15 * 1.1 ** (2 * t)
    turned = animate(m, 4, rotation=15.0)
    assert abs(float(turned[3].sum()) - 576) < 0.08 * 576  # a turn keeps the area
    assert not torch.equal(turned[3], turned[0])  # ... but not the outline
    assert abs(centroid(turned[3])[0] - centroid(turned[0])[0]) < 0.5  # about the centroid


def test_jitter_changes_shape_but_keeps_coverage_close_and_is_seeded():
    m = box(64, 64, 16, 16, 32)
    a = animate(m, 8, 5, elastic=0.03, dilate=0.03)
    assert torch.equal(a, animate(m, 8, 5, elastic=0.03, dilate=0.03))
    assert not torch.equal(a, animate(m, 8, 6, elastic=0.03, dilate=0.03))
    assert len({tuple(f.flatten().tolist()) for f in a}) > 3  # frames differ
    # dilate radius <= round(0.03 * 64) = 2 px, elastic 1.9 px (about 3x at the peaks): the area
    # stays within the box grown/shrunk by ~8 px of perimeter-width
    for f in a:
        assert (32 - 16) ** 2 <= f.sum() <= (32 + 16) ** 2


def test_a_stationary_sample_does_not_change_and_a_moving_one_does():
    still = moving = 0
    cfg = MaskConfig(type_weights={"square": 1.0}, motion_prob=0.5, invert_prob=0.0)
    for seed in range(30):
        m, info = sample_masks_with_info(6, 48, 48, seed, cfg)
        same = all(torch.equal(m[0], f) for f in m)
        if info.motion is None:
            still += 1
            assert same
        else:
            moving += 1
            assert not same or math.hypot(*info.motion["velocity"]) * 48 * 5 < 1
    assert still > 5 and moving > 5


def test_wrapped_animation_of_a_grid_is_the_grid_shifted():
    # period 12 divides 48 and 72, so the grid tiles; moving it by (2, -3) px per frame with wrap
    # must give exactly the grid drawn with that offset: nothing empty enters from an edge
    tile = grid_mask(48, 72, cell=0.25, line_ratio=0.25)
    moved = animate(tile, 6, velocity=(2 / 48, -3 / 48), wrap=True)
    for t in range(6):
        expected = grid_mask(48, 72, cell=0.25, line_ratio=0.25, offset=(-2 * t / 12, 3 * t / 12))
        assert torch.equal(moved[t], expected[0]), t
    unwrapped = animate(tile, 6, velocity=(2 / 48, -3 / 48))
    assert not unwrapped[5, 0, :10].any()  # without wrap the top band empties: the check above is live


def test_moving_grids_and_blobs_from_sample_masks_keep_covering_the_frame():
    for kind, ratio in (("grid", 0.8), ("blob", 0.6)):  # blobs: a zoom shows another share of the field
        cfg = MaskConfig(
            type_weights={kind: 1.0},
            motion_prob=1.0,
            invert_prob=0.0,
            max_speed=0.05,
            max_scale_rate=0.03,
            max_elastic=0.0,
            max_dilate=0.0,
        )
        for seed in range(6):
            m = sample_masks(12, 48, 64, seed, cfg)
            cov = coverage(m)
            assert float(cov.min()) > ratio * float(cov.max()), (kind, seed, cov.tolist())
            for f in m[:, 0] if kind == "grid" else []:  # each half of the frame still meets the lines
                assert f[:24].any() and f[24:].any() and f[:, :32].any() and f[:, 32:].any()


# --------------------------------------------------------------------------- sampling


def test_sample_masks_is_deterministic_for_a_seed_and_differs_across_seeds():
    a = sample_masks(6, 40, 56, 11)
    assert torch.equal(a, sample_masks(6, 40, 56, 11))
    assert torch.equal(a, sample_masks(6, 40, 56, np.random.default_rng(11)))
    outs = {sample_masks(6, 40, 56, s).numpy().tobytes() for s in range(12)}
    assert len(outs) >= 11  # "full" masks may repeat; nothing else should
    gen = np.random.default_rng(0)
    assert not torch.equal(sample_masks(6, 40, 56, gen), sample_masks(6, 40, 56, gen))  # a Generator advances


def test_no_global_random_state_is_read_or_advanced():
    np_state, torch_state = np.random.get_state(), torch.get_rng_state()
    torch.manual_seed(123)
    np.random.seed(123)
    a = [sample_masks(4, 32, 32, s) for s in range(10)]
    torch.manual_seed(999)
    np.random.seed(999)
    before = (np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    b = [sample_masks(4, 32, 32, s) for s in range(10)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(np.random.get_state()[1], before[0]) and torch.equal(torch.get_rng_state(), before[1])
    np.random.set_state(np_state)
    torch.set_rng_state(torch_state)


def test_sample_masks_respects_coverage_limits_and_draws_every_type():
    cfg = MaskConfig(
        type_weights={k: 1.0 for k in MASK_TYPES if k != "full"},
        min_coverage=0.1,
        max_coverage=0.6,
        invert_prob=0.3,
        motion_prob=0.6,
    )
    kinds, inverted, moving, tries = set(), 0, 0, []
    for seed in range(120):
        m, info = sample_masks_with_info(5, 32, 48, seed, cfg)
        assert_binary_masks(m, 5, 32, 48)
        cov = coverage(m)
        assert 0.1 <= float(cov.min()) and float(cov.max()) <= 0.6, (seed, info, cov.tolist())
        kinds.add(info.kind)
        inverted += info.inverted
        moving += info.motion is not None
        tries.append(info.tries)
    assert kinds == set(MASK_TYPES) - {"full"}
    assert inverted > 10 and moving > 40
    assert max(tries) > 1  # the limits did reject some draws: the check is live


def test_type_weights_select_the_type():
    for kind in MASK_TYPES:
        _, info = sample_masks_with_info(3, 24, 24, 0, MaskConfig(type_weights={kind: 1.0}))
        assert info.kind == kind and info.label.startswith(kind)
    m, info = sample_masks_with_info(
        3, 24, 24, 0, MaskConfig(type_weights={"full": 1.0}, invert_prob=1.0, motion_prob=1.0)
    )
    assert torch.equal(m, torch.ones(3, 1, 24, 24)) and not info.inverted and info.motion is None


def test_default_coverage_stays_within_defaults_at_training_size():
    cfg = MaskConfig()
    for seed in range(4):
        m = sample_masks(14, 320, 576, seed, cfg)
        assert_binary_masks(m, 14, 320, 576)
        assert float(coverage(m).min()) >= cfg.min_coverage


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: grid_mask(32, 32, cell=0.0), r"cell: got \(0, 0\).*\(0, 1e\+06\]"),
        (lambda: grid_mask(32, 32, line_ratio=1.5), r"line_ratio: got \(1\.5, 1\.5\).*\(0, 1\]"),
        (lambda: grid_mask(32, 0), r"width: got 0; give a positive integer"),
        (lambda: square_mask(32, 32, 0, size=(0.5, 0.2)), r"size: got \(0\.5, 0\.2\).*low <= high"),
        (lambda: square_mask(32, 32, 0, num_boxes=0), r"num_boxes: got \(0, 0\).*1 <= low <= high"),
        (lambda: scribble_mask(32, 32, -1), r"rng: got -1.*numpy\.random\.Generator or a non-negative int"),
        (lambda: scribble_mask(32, 32, 0, brush_width="wide"), r"brush_width: got 'wide'; give a number or"),
        (lambda: blob_mask(32, 32, 0, coverage=1.0), r"coverage: got 1; .*full_mask"),
        (lambda: animate(box(), 4, elastic=0.1), r"rng: elastic or dilate jitter is random"),
        (lambda: animate(box(), 4, scale_rate=-1.0), r"scale_rate: got -1; it must be > -1"),
        (lambda: animate(torch.zeros(2, 8, 8), 4), r"mask: expected one mask .* got shape \[2, 8, 8\]"),
        (lambda: stationary(box(), 0), r"num_frames: got 0"),
        (lambda: invert(torch.ones(2, 2, dtype=torch.uint8)), r"masks: expected a float tensor"),
        (lambda: MaskConfig(min_coverage=0.5, max_coverage=0.2, type_weights={"grid": 1}), r"min_coverage <= max"),
        (lambda: MaskConfig(max_coverage=0.9), r"type_weights\['full'\] is 0\.05 but max_coverage is 0\.9"),
        (lambda: MaskConfig(type_weights={"grid": 0.0}), r"at least one > 0"),
        (lambda: MaskConfig(invert_prob=2.0), r"MaskConfig\.invert_prob: got \(2, 2\).*\[0, 1\]"),
        (lambda: MaskConfig(max_tries=0), r"max_tries: got 0"),
        (lambda: sample_masks(4, 32, 32, "seed"), r"generator: got 'seed'"),
    ],
)
def test_bad_parameters_raise_a_clear_mask_synthesis_error(call, match):
    with pytest.raises(MaskSynthesisError, match=match) as err:
        call()
    assert isinstance(err.value, KfiError) and isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: grid_mask(32, 32, axes="diagonal"), r"axes: unknown grid axes 'diagonal'; use one of both, rows"),
        (lambda: MaskConfig(type_weights={"circle": 1.0}), r"unknown mask type\(s\) \['circle'\]; use full, grid"),
    ],
)
def test_unknown_names_raise_unknown_name_error(call, match):
    with pytest.raises(UnknownNameError, match=match):
        call()


def test_unreachable_coverage_gives_up_after_max_tries():
    cfg = MaskConfig(
        type_weights={"square": 1.0},
        square_size=(0.1, 0.1),
        square_boxes=1,
        invert_prob=0.0,
        min_coverage=0.5,
        max_tries=7,
    )
    with pytest.raises(MaskSynthesisError, match=r"within \[0\.5, 1\] in 7 tries \(last: square .*\)\. Widen"):
        sample_masks(3, 32, 32, 0, cfg)


# --------------------------------------------------------------------------- preview sheet (CLI)


def test_cli_preview_sheet_is_a_png_of_the_expected_size(tmp_path):
    from PIL import Image

    out = tmp_path / "sheet.png"
    assert (
        cli_main(["masks", "--preview", str(out), "--count", "5", "--frames", "6", "--size", "40x72", "--seed", "2"])
        == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.size == preview_sheet_size(5, 6, 40, 72)
        # 4 frames of 72 px beside a label column, 5 rows of at least 40 px
        assert im.size[0] > 4 * 72 and im.size[1] > 5 * 40
        tiles = np.asarray(im)
    assert (tiles == 255).all(-1).any() and (tiles == 0).all(-1).any()  # white fill and black keep drawn
    assert not list(tmp_path.glob(".*partial*"))  # the temporary file was renamed away


def test_cli_masks_bad_size_is_a_user_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "kfi_core", "masks", "--preview", str(tmp_path / "a.png"), "--size", "64"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--size: got '64'; give HEIGHTxWIDTH" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "a.png").exists()
