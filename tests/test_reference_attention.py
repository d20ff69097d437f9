"""Reference attention (kfi_core.reference_attention): the stock attention wherever no frame is fully known, the
explicit softmax over a frame's own and the known frames' tokens where one is, found from the UNet input alone, and
carried by the adapter file (on where it was trained with it, off otherwise, refused by a KFI too old to know it)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from kfi_core.adapter import load_adapter, read_adapter_metadata, save_adapter
from kfi_core.conv_in import KFI_IN_CHANNELS, expand_conv_in
from kfi_core.errors import AdapterMismatchError, KfiError, TrainConfigError
from kfi_core.lora import add_lora, lora_state_dict
from kfi_core.reference_attention import (ReferenceAttentionError, ReferenceAttnProcessor, disable_reference_attention,
                                          enable_reference_attention, reference_attention_enabled,
                                          reference_frames)

from conftest import unet_forward

FRAMES = 8


def kfi_input(known: list[int], *, batch: int = 1, seed: int = 3) -> torch.Tensor:
    """A KFI UNet input [B, F, 12, h, w]: noisy latents, then black- and white-filled condition halves that differ on
    every frame except ``known`` (fully known frames: both halves the same latent)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, FRAMES, KFI_IN_CHANNELS, 16, 16, generator=g)
    for f in known:
        x[:, f, 8:] = x[:, f, 4:8]
    return x


@pytest.fixture()
def kfi_unet(tiny_components):
    unet = copy.deepcopy(tiny_components["unet"])
    expand_conv_in(unet)
    add_lora(unet, rank=4)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in lora_state_dict(unet).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        unet.conv_in.weight.normal_(0, 0.05, generator=g)
    return unet.requires_grad_(False)


def test_reference_frames_are_the_frames_whose_condition_halves_agree():
    x = kfi_input([0, 5], batch=2)
    x[1, 5, 8:] += 1.0  # clip 2: frame 5 masked after all
    uncond = torch.zeros_like(x)  # classifier-free guidance's unconditional half: no condition, no references
    uncond[:, :, :4] = x[:, :, :4]
    assert reference_frames(x) == [[0, 5], [0]]
    assert reference_frames(uncond) == [[], []]
    assert reference_frames(x[:, :, :8]) == [[], []]  # a stock 8-channel input has no KFI condition


def test_without_known_frames_the_unet_is_the_stock_one(kfi_unet):
    x = kfi_input([])
    stock = unet_forward(kfi_unet, x)
    enable_reference_attention(kfi_unet)
    assert reference_attention_enabled(kfi_unet)
    torch.testing.assert_close(unet_forward(kfi_unet, x), stock, rtol=0, atol=1e-6)
    # with a known frame the output moves, in the other frames too (the attention reached them)
    y = kfi_input([2])
    moved = (unet_forward(kfi_unet, y) - _stock(kfi_unet, y)).abs().flatten(2).amax(-1)[0]  # [F]
    assert (moved > 1e-4).all(), moved
    disable_reference_attention(kfi_unet)
    assert not reference_attention_enabled(kfi_unet)
    torch.testing.assert_close(unet_forward(kfi_unet, y), _stock(kfi_unet, y), rtol=0, atol=0)


def _stock(unet, x):
    on = reference_attention_enabled(unet)
    disable_reference_attention(unet)
    out = unet_forward(unet, x)
    if on:
        enable_reference_attention(unet)
    return out


def test_processor_is_the_softmax_over_own_and_reference_tokens(kfi_unet):
    """One spatial attn1 layer against the formula written out: softmax(q [k_t; k_r]^T / sqrt(d)) [v_t; v_r]."""
    enable_reference_attention(kfi_unet)
    name = next(n for n in kfi_unet.attn_processors if ".transformer_blocks." in n and n.endswith(".attn1.processor"))
    attn = dict(kfi_unet.named_modules())[name.rsplit(".processor", 1)[0]]
    processor = attn.processor
    assert isinstance(processor, ReferenceAttnProcessor)
    processor.state.num_frames, processor.state.refs = FRAMES, [[1, 6]]
    h = torch.randn(FRAMES, 10, attn.to_q.in_features, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = processor(attn, h)
        q, k, v = attn.to_q(h), attn.to_k(h), attn.to_v(h)
        heads, d = attn.heads, q.shape[-1] // attn.heads
        want = []
        for t in range(FRAMES):
            kt = torch.cat([k[t], k[1], k[6]])  # own tokens, then the references' in order
            vt = torch.cat([v[t], v[1], v[6]])
            per_head = []
            for i in range(heads):
                cols = slice(i * d, (i + 1) * d)
                w = torch.softmax(q[t][:, cols] @ kt[:, cols].T / d ** 0.5, dim=-1)
                per_head.append(w @ vt[:, cols])
            want.append(torch.cat(per_head, -1))
        want = attn.to_out[0](torch.stack(want))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_only_spatial_self_attention_changes(kfi_unet):
    before = dict(kfi_unet.attn_processors)
    enable_reference_attention(kfi_unet)
    enable_reference_attention(kfi_unet)  # idempotent
    after = kfi_unet.attn_processors
    changed = sorted(n for n in after if after[n] is not before[n])
    assert changed and all(".transformer_blocks." in n and n.endswith(".attn1.processor") for n in changed)
    assert not any("temporal" in n for n in changed)
    assert len({id(after[n].state) for n in changed}) == 1  # one shared per-call state
    disable_reference_attention(kfi_unet)
    restored = kfi_unet.attn_processors
    assert all(restored[n] is before[n] for n in before)  # the very processors it replaced, back in place


def test_the_adapter_file_carries_it(kfi_unet, base_unet_factory, tmp_path):
    x = kfi_input([0])
    plain = save_adapter(kfi_unet, tmp_path / "plain.safetensors", base_variant="tiny", num_frames=FRAMES)
    enable_reference_attention(kfi_unet)
    want = unet_forward(kfi_unet, x)
    ref = save_adapter(kfi_unet, tmp_path / "ref.safetensors", base_variant="tiny", num_frames=FRAMES)
    meta = read_adapter_metadata(ref)
    assert meta.reference_attention and meta.format_version == 2
    assert not read_adapter_metadata(plain).reference_attention and read_adapter_metadata(plain).format_version == 1
    unet = base_unet_factory()
    load_adapter(unet, ref, base_variant="tiny", num_frames=FRAMES)
    assert reference_attention_enabled(unet)
    torch.testing.assert_close(unet_forward(unet, x), want, rtol=0, atol=0)
    load_adapter(unet, plain, base_variant="tiny", num_frames=FRAMES)  # same LoRA settings: weights replaced
    assert not reference_attention_enabled(unet)  # and the attention follows the file


def test_unknown_reference_attention_value_is_refused(kfi_unet, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    enable_reference_attention(kfi_unet)
    path = save_adapter(kfi_unet, tmp_path / "ref.safetensors", base_variant="tiny", num_frames=FRAMES)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    save_file(load_file(str(path)), str(tmp_path / "odd.safetensors"),
              metadata={**metadata, "kfi.reference_attention": "all_frames"})
    with pytest.raises(AdapterMismatchError, match=r"kfi.reference_attention = 'all_frames'.*update KFI"):
        read_adapter_metadata(tmp_path / "odd.safetensors")


def test_a_unet_without_svd_spatial_attention_is_refused():
    with pytest.raises(ReferenceAttentionError, match="no spatial self-attention"):
        enable_reference_attention(_NoAttention())
    assert issubclass(ReferenceAttentionError, KfiError)


class _NoAttention(torch.nn.Module):
    attn_processors: dict = {}

    def set_attn_processor(self, processors):  # pragma: no cover - never reached
        raise AssertionError


@pytest.fixture()
def base_unet_factory(tiny_components):
    return lambda: copy.deepcopy(tiny_components["unet"])


def test_train_config_option(tmp_path):
    from kfi_core.train import TrainConfig, config_from_dict

    assert TrainConfig().reference_attention is False
    assert config_from_dict({"reference_attention": True}).reference_attention is True
    with pytest.raises(TrainConfigError, match="reference_attention: got 'yes'; give true or false"):
        TrainConfig(reference_attention="yes").check()
    json.dumps(TrainConfig(reference_attention=True).to_dict())
