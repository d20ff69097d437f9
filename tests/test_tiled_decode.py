"""Spatially tiled VAE decoding (kfi_core.model.encoders.decode_latents_tiled): the blend, its tolerance against the
untiled decode on the tiny model, the settings, the CLI flag and the out-of-memory fallback."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from kfi_core.cli import build_parser
from kfi_core.cli import inpaint as cli_inpaint
from kfi_core.errors import InputMismatchError, SettingsError
from kfi_core.inference import window
from kfi_core.inference.condition import prepare_clip
from kfi_core.inference.executor import propagate
from kfi_core.inference.settings import PropagateSettings
from kfi_core.inference.window import decode_window
from kfi_core.model.encoders import (
    DECODE_OVERLAP,
    DECODE_TILE,
    blend_weights,
    decode_latents,
    decode_latents_tiled,
    tile_starts,
)
from kfi_core.model.loading import load_kfi_model

# Measured on the tiny model (seed 0), latents randn [1, 2, 4, 64, 64] (256 x 256 pixels; unit variance, the scale the
# VAE's scaling factor gives real latents and the sampler works in), tiles of 32 cells with an overlap of 8, torch
# 2.14.1 on CPU: max |tiled - untiled| = 0.076, mean 0.0072, on the decoder's -1..1 scale (seeds 1 and 2: 0.082 and
# 0.071). The error is spread over the whole frame, not at the seams: the decoder's GroupNorm statistics and its
# mid-block self-attention see one tile instead of the whole frame. The bounds are about 2x that. (On latents far
# below unit variance, such as the random-weight tiny VAE's own encodes of images, std 0.06, the per-tile GroupNorm
# statistics differ much more: max 0.36, mean 0.023 for noise images.)
TILED_MAX_ABS = 0.16
TILED_MEAN_ABS = 0.015


class UpsampleVAE(torch.nn.Module):
    """A stand-in decoder without any spatial mixing (nearest 4x upsampling of 3 channels): tiling must be exact."""

    config = SimpleNamespace(scaling_factor=1.0)

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def decode(self, z, num_frames=None):
        return SimpleNamespace(sample=z[:, :3].repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1))


@pytest.fixture(scope="module")
def vae(tiny_components):
    return tiny_components["vae"].eval()


def _latents(height, width, frames=2, seed=0):
    return torch.randn(1, frames, 4, height, width, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- the blend


@pytest.mark.parametrize("size, tile, overlap", [(64, 32, 8), (40, 32, 8), (23, 8, 2), (100, 16, 12), (10, 4, 1)])
def test_blend_weights_cover_every_position_and_sum_to_one(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == size
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    weights = blend_weights(size * 4, [s * 4 for s in starts], tile * 4, overlap * 4)
    assert weights.shape == (len(starts), size * 4)
    assert torch.allclose(weights.sum(0), torch.ones(size * 4), atol=1e-6)
    assert (weights >= 0).all()
    for i, start in enumerate(starts):  # zero outside its tile, ramps from its shared edges
        outside = torch.ones(size * 4, dtype=torch.bool)
        outside[start * 4 : (start + tile) * 4] = False
        assert (weights[i][outside] == 0).all()
    if len(starts) > 1:
        assert weights[0, 0] == 1 and weights[0, starts[1] * 4] > 0.5  # full weight where only it covers
        assert weights[1, starts[1] * 4] < 0.5  # the next tile fades in from its edge


def test_tiling_is_exact_for_a_decoder_without_spatial_mixing():
    """The 2D blend is a partition of unity: a decoder that mixes no pixels gives the untiled frames exactly."""
    fake = UpsampleVAE()
    latents = _latents(37, 50, frames=3)
    untiled = decode_latents(fake, latents, 2)
    for tile, overlap in [(16, 4), (8, 7), (32, 8), (12, 1)]:
        tiled = decode_latents_tiled(fake, latents, 2, tile=tile, overlap=overlap)
        assert tiled.shape == untiled.shape == (1, 3, 3, 148, 200) and tiled.dtype == torch.float32
        assert torch.allclose(tiled, untiled, atol=1e-5), (tile, overlap)


# --------------------------------------------------------------------------- the tiny model


def test_tiled_equals_untiled_within_the_stated_tolerance(vae):
    latents = _latents(64, 64)
    untiled = decode_latents(vae, latents, 2)
    tiled = decode_latents_tiled(vae, latents, 2, tile=DECODE_TILE, overlap=DECODE_OVERLAP)
    assert tiled.shape == untiled.shape == (1, 2, 3, 256, 256) and tiled.dtype == torch.float32
    diff = (tiled - untiled).abs()
    assert diff.max() < TILED_MAX_ABS, diff.max()
    assert diff.mean() < TILED_MEAN_ABS, diff.mean()
    assert diff.max() > 0  # it did tile


def test_a_tile_that_covers_the_latents_decodes_untiled_exactly(vae):
    latents = _latents(24, 32)  # 96 x 128 pixels
    untiled = decode_latents(vae, latents, 2)
    assert torch.equal(decode_latents_tiled(vae, latents, 2, tile=32, overlap=8), untiled)
    assert torch.equal(decode_latents_tiled(vae, latents, 2, tile=500, overlap=499), untiled)
    # tiles along one side only: the other side is one tile
    one_way = decode_latents_tiled(vae, latents, 2, tile=24, overlap=6)
    assert one_way.shape == untiled.shape and (one_way - untiled).abs().max() < TILED_MAX_ABS


@pytest.mark.parametrize(
    "tile, overlap", [(0, 0), (-8, 2), (32, 0), (32, -1), (32, 32), (8, 9), (32.0, 8), (32, 8.5), (True, 1), ("32", 8)]
)
def test_bad_tile_or_overlap_is_a_clear_settings_error(tile, overlap):
    with pytest.raises(SettingsError, match="latent cells"):
        decode_latents_tiled(UpsampleVAE(), _latents(8, 8), 1, tile=tile, overlap=overlap)


# --------------------------------------------------------------------------- settings, CLI


@pytest.mark.parametrize("value", [0, 4, 32, 10_000])
def test_decode_tile_setting_accepts(value):
    assert PropagateSettings(decode_tile=value).check().decode_tile == value
    assert PropagateSettings().decode_tile == 0  # off by default


@pytest.mark.parametrize("value", [-1, 1, 3, 10_001, 32.0, "32", True, None])
def test_decode_tile_setting_rejects(value):
    with pytest.raises(InputMismatchError, match="decode_tile"):
        PropagateSettings(decode_tile=value).check()


def test_cli_decode_tile_flag_reaches_the_settings(monkeypatch, tmp_path):
    parser = build_parser()
    args = parser.parse_args(["inpaint", "--model", "m", "--video", "v", "--mask", "k", "--out", "o"])
    assert cli_inpaint.settings_from_args(args).decode_tile == 0
    args = parser.parse_args(["inpaint", "--model", "m", "--out", "o", "--decode-tile", "32"])
    assert cli_inpaint.settings_from_args(args).decode_tile == 32
    assert cli_inpaint.settings_from_args(parser.parse_args(["demo", "--decode-tile", "16"])).decode_tile == 16

    seen = {}

    def fake_inpaint_files(model, **kwargs):
        seen["settings"] = kwargs["settings"]
        raise SystemExit(0)

    monkeypatch.setattr(cli_inpaint, "_load_model", lambda args: None)
    monkeypatch.setattr(cli_inpaint, "inpaint_files", fake_inpaint_files)
    argv = ["inpaint", "--model", "m", "--video", "v", "--mask", "k", "--out", str(tmp_path / "o"), "--decode-tile"]
    with pytest.raises(SystemExit):
        cli_inpaint._cmd_inpaint(parser.parse_args([*argv, "24"]))
    assert seen["settings"].decode_tile == 24
    with pytest.raises(InputMismatchError, match="decode_tile: got 2"):
        cli_inpaint._cmd_inpaint(parser.parse_args([*argv, "2"]))


# --------------------------------------------------------------------------- out of memory


def _oom_above(limit, real_decode, sizes):
    """A VAE decode that 'runs out of memory' on latents wider or taller than ``limit`` cells, whatever the chunk."""

    def decode(self, z, *args, num_frames=None, **kwargs):
        sizes.append(tuple(z.shape))
        if max(z.shape[-2:]) > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated, {tuple(z.shape)})")
        return real_decode(self, z, *args, num_frames=num_frames, **kwargs)

    return decode


def test_out_of_memory_at_one_frame_falls_back_to_tiles(vae, monkeypatch, caplog):
    latents = _latents(40, 48)
    expected = ((decode_latents_tiled(vae, latents, 1)[0] + 1.0) / 2.0).clamp(0.0, 1.0)
    sizes = []
    monkeypatch.setattr(type(vae), "decode", _oom_above(DECODE_TILE, type(vae).decode, sizes))
    with caplog.at_level(logging.WARNING, logger="kfi_core.inference.memory"):
        got = decode_window(SimpleNamespace(vae=vae), latents, 2)
    assert torch.equal(got, expected)
    assert [s[0] for s in sizes[:2]] == [2, 1]  # whole frames, 2 then 1 at a time, then 4 tiles x 2 frames
    assert all(s[0] == 1 and max(s[-2:]) <= DECODE_TILE for s in sizes[2:]) and len(sizes) == 2 + 4 * 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "falling back to tiled decoding (tiles of 32 latent cells, overlap 8" in warnings[-1].getMessage()
    assert "decode_chunk_size=1" in warnings[-1].getMessage()


def test_out_of_memory_with_tiles_as_small_as_the_fallback_is_raised(vae, monkeypatch):
    sizes = []
    monkeypatch.setattr(type(vae), "decode", _oom_above(4, type(vae).decode, sizes))
    with pytest.raises(torch.OutOfMemoryError):
        decode_window(SimpleNamespace(vae=vae), _latents(40, 48), 2, DECODE_TILE)
    with pytest.raises(torch.OutOfMemoryError):  # the fallback's own out-of-memory error is not retried again
        decode_window(SimpleNamespace(vae=vae), _latents(40, 48), 2)
    sizes.clear()
    with pytest.raises(torch.OutOfMemoryError):  # latents no larger than one tile: no fallback to try
        decode_window(SimpleNamespace(vae=vae), _latents(16, 16), 2)
    assert len(sizes) == 2


# --------------------------------------------------------------------------- the whole inpaint


def test_propagate_with_tiled_decoding_keeps_pixels_outside_the_mask_exact(tiny_model_dir, monkeypatch):
    model = load_kfi_model(tiny_model_dir)
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(4, 3, 96, 128, generator=g)
    masks = torch.zeros(4, 1, 96, 128)
    masks[:, :, 24:72, 40:100] = 1.0
    clip = prepare_clip(frames, masks)
    calls = []
    real_tiled = window.decode_latents_tiled

    def spy(vae, latents, decode_chunk_size=None, **kwargs):
        calls.append(kwargs)
        return real_tiled(vae, latents, decode_chunk_size, **kwargs)

    monkeypatch.setattr(window, "decode_latents_tiled", spy)
    fast = dict(steps=2, decode_chunk_size=4)
    tiled = propagate(model, clip, PropagateSettings(**fast, decode_tile=8))
    assert calls == [{"tile": 8, "overlap": 2}]
    untiled = propagate(model, clip, PropagateSettings(**fast))
    assert len(calls) == 1
    keep = (masks == 0).expand_as(frames)
    assert torch.equal(tiled[keep], frames[keep]) and torch.equal(untiled[keep], frames[keep])
    assert not torch.equal(tiled[~keep], frames[~keep]), "the hole must be generated"
    # the same latents decoded two ways: only the fill differs. Not bounded here: the tiny model's sampled latents are
    # far below unit variance and its random-weight decoder's GroupNorms then differ tile by tile (docs/PERFORMANCE.md)
    assert not torch.equal(tiled, untiled)


def test_inpaint_decodes_in_tiles_when_asked(tiny_model_dir, monkeypatch):
    from kfi_core.inference.executor import inpaint

    model = load_kfi_model(tiny_model_dir)
    frames = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(4, 1, 64, 64)
    masks[:, :, 16:48, 16:48] = 1.0
    calls = []
    real_tiled = window.decode_latents_tiled

    def spy(vae, latents, decode_chunk_size=None, **kwargs):
        calls.append(kwargs)
        return real_tiled(vae, latents, decode_chunk_size, **kwargs)

    monkeypatch.setattr(window, "decode_latents_tiled", spy)
    out = inpaint(model, prepare_clip(frames, masks), PropagateSettings(steps=1, decode_tile=8))
    keep = (masks == 0).expand_as(frames)
    assert torch.equal(out[keep], frames[keep])
    assert calls == [{"tile": 8, "overlap": 2}]
