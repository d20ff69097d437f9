"""Opt-in fast paths (channels-last, torch.compile with fallback) and SDPA attention (the GPU bench's dry run is
tests/test_gpu_check.py).

Behaviour only: no timing assertions (the benches in bench/ print ratios).
"""

from __future__ import annotations

import logging

import pytest
import torch

from kfi_core.inference.condition import prepare_clip
from kfi_core.inference.executor import propagate
from kfi_core.inference.settings import PropagateSettings
from kfi_core.model.loading import load_kfi_model, optimize_unet

SETTINGS = PropagateSettings(steps=2, seed=3)


def _clip():
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(8, 3, 64, 64, generator=g)
    masks = torch.zeros(8, 1, 64, 64)
    masks[:, :, 16:48, 16:48] = 1
    return prepare_clip(frames, masks)


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return propagate(load_kfi_model(tiny_model_dir), _clip(), SETTINGS)


def test_defaults_unchanged(tiny_model_dir):
    model = load_kfi_model(tiny_model_dir)
    conv = model.unet.conv_in.weight
    assert conv.is_contiguous() and not getattr(model.unet, "_kfi_compiled", False)
    assert "forward" not in vars(model.unet)


def test_channels_last_matches_default(tiny_model_dir, reference):
    model = load_kfi_model(tiny_model_dir, channels_last=True)
    conv = model.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    out = propagate(model, _clip(), SETTINGS)
    # the same result up to float rounding, which the sampler's steps carry along: channels-last convolutions
    # take other CPU kernels (an AVX2-only machine differed by 1.5e-4 in 11 of 98,304 values), so the bound is a
    # quarter of one 8-bit level; a wrong memory layout errs by whole levels
    torch.testing.assert_close(out, reference, atol=1e-3, rtol=0)


def test_compile_failure_falls_back_with_warning(tiny_model_dir, reference, monkeypatch, caplog):
    def broken_compile(fn, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("simulated inductor failure: no C++ compiler")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING, logger="kfi_core.model.loading"):
        model = load_kfi_model(tiny_model_dir, compile_unet=True)
        out = propagate(model, _clip(), SETTINGS)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "torch.compile" in r.getMessage()]
    assert len(warnings) == 1, "one warning, at the first call; later calls go straight to eager"
    assert "running the UNet eagerly" in warnings[0].getMessage()
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)


def test_compile_wrapper_is_idempotent_and_uses_compiled_forward(tiny_model_dir, monkeypatch):
    calls = []

    def tracing_compile(fn, *args, **kwargs):
        def call(*a, **k):
            calls.append(1)
            return fn(*a, **k)

        return call

    monkeypatch.setattr(torch, "compile", tracing_compile)
    model = load_kfi_model(tiny_model_dir, compile_unet=True)
    optimize_unet(model, compile_unet=True)  # a second request does not wrap twice
    propagate(model, _clip(), PropagateSettings(steps=1))
    assert len(calls) == 1  # one step, one UNet call (CFG is one batch of 2)


def test_cli_accepts_fast_path_flags():
    from kfi_core.cli import build_parser

    args = build_parser().parse_args(
        ["inpaint", "--model", "m", "--video", "v", "--mask", "k", "--out", "o", "--channels-last", "--compile"]
    )
    assert args.channels_last and args.compile


def test_unet_attention_uses_pytorch_sdpa(tiny_model_dir, monkeypatch):
    from diffusers.models.attention_processor import AttnProcessor2_0

    model = load_kfi_model(tiny_model_dir)
    kinds = {type(p) for p in model.unet.attn_processors.values()}
    assert kinds == {AttnProcessor2_0}
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        seen.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    propagate(model, _clip(), PropagateSettings(steps=1))
    # spatial self + cross and temporal self + cross attention on the first level, down and up
    assert len(seen) >= 4
