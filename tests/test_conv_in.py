"""conv_in widening 8 -> 12: exact copy of the old weight and bias, zero new channels, same function."""

from __future__ import annotations

import copy

import pytest
import torch
from kfi_testing import unet_forward

from kfi_core.errors import CheckpointFormatError, KfiError
from kfi_core.model.conv_in import KFI_IN_CHANNELS, STOCK_IN_CHANNELS, check_conv_in, expand_conv_in
from kfi_core.model.lora import add_lora
from kfi_core.model.tiny import tiny_unet_config


@pytest.fixture()
def base_unet(tiny_components):
    return copy.deepcopy(tiny_components["unet"])


def test_expand_copies_weight_and_bias_and_zeroes_new_channels(base_unet):
    old_weight = base_unet.conv_in.weight.detach().clone()
    old_bias = base_unet.conv_in.bias.detach().clone()
    assert old_weight.shape[1] == STOCK_IN_CHANNELS
    unet = expand_conv_in(base_unet)
    assert unet is base_unet
    conv = unet.conv_in
    assert conv.weight.shape == (old_weight.shape[0], KFI_IN_CHANNELS, *old_weight.shape[2:])
    assert conv.in_channels == KFI_IN_CHANNELS and unet.config.in_channels == KFI_IN_CHANNELS
    assert torch.equal(conv.weight[:, :STOCK_IN_CHANNELS], old_weight)
    assert torch.equal(conv.bias, old_bias)
    assert torch.count_nonzero(conv.weight[:, STOCK_IN_CHANNELS:]) == 0
    assert conv.weight.dtype == old_weight.dtype and conv.weight.device == old_weight.device
    assert check_conv_in(unet) == KFI_IN_CHANNELS


def test_expand_keeps_dtype(base_unet):
    unet = base_unet.to(torch.bfloat16)
    old_weight = unet.conv_in.weight.detach().clone()
    expand_conv_in(unet)
    assert unet.conv_in.weight.dtype == torch.bfloat16 and unet.conv_in.bias.dtype == torch.bfloat16
    assert torch.equal(unet.conv_in.weight[:, :STOCK_IN_CHANNELS], old_weight)


def test_expand_twice_is_a_no_op(base_unet):
    expand_conv_in(base_unet)
    conv = base_unet.conv_in
    with torch.no_grad():
        conv.weight[:, STOCK_IN_CHANNELS:].fill_(0.5)  # as if trained
    expand_conv_in(base_unet)
    assert base_unet.conv_in is conv
    assert torch.all(base_unet.conv_in.weight[:, STOCK_IN_CHANNELS:] == 0.5)


def test_widened_conv_and_fresh_lora_equal_the_base_unet(tiny_components, base_unet):
    """Identity: [noisy | black-filled | anything] through the KFI UNet == [noisy | black-filled] through the base.

    Exact (torch.equal): the new channels have zero weight, so they add exact zeros, and a fresh
    LoRA adds lora_B(...) = 0 exactly (peft zero-inits lora_B). fp32 on CPU; observed exact here.
    """
    base = tiny_components["unet"]
    kfi = expand_conv_in(base_unet)
    add_lora(kfi, rank=8)
    gen = torch.Generator().manual_seed(0)
    noisy_and_black = torch.randn(2, 8, STOCK_IN_CHANNELS, 16, 16, generator=gen)  # [B, F, 8, h, w]
    expected = unet_forward(base, noisy_and_black)
    for white in (
        torch.rand(2, 8, 4, 16, 16, generator=gen) * 200 - 100,  # anything finite
        torch.ones(2, 8, 4, 16, 16),
        torch.zeros(2, 8, 4, 16, 16),
    ):
        got = unet_forward(kfi, torch.cat([noisy_and_black, white], dim=2))  # [B, F, 12, h, w]
        assert torch.equal(got, expected)


def test_new_channels_reach_the_output_once_nonzero(tiny_components, base_unet):
    """The identity above is not vacuous: the slots 8..12 do feed the network."""
    kfi = expand_conv_in(base_unet)
    with torch.no_grad():
        kfi.conv_in.weight[:, STOCK_IN_CHANNELS:].normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    latents = torch.randn(1, 8, KFI_IN_CHANNELS, 16, 16, generator=torch.Generator().manual_seed(3))
    expected = unet_forward(tiny_components["unet"], latents[:, :, :STOCK_IN_CHANNELS])
    assert not torch.allclose(unet_forward(kfi, latents), expected, atol=1e-3)


def test_other_channel_count_is_refused():
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(**{**tiny_unet_config(), "in_channels": 9})
    with pytest.raises(CheckpointFormatError, match="takes 9 input channels") as info:
        expand_conv_in(unet)
    assert isinstance(info.value, KfiError)
    assert "SVD img2vid" in str(info.value) and "(8 channels" in str(info.value)
    assert unet.conv_in.weight.shape[1] == 9  # untouched


def test_conv_in_disagreeing_with_config_is_refused(base_unet):
    base_unet.register_to_config(in_channels=12)  # config edited, weight still 8 channels
    with pytest.raises(
        CheckpointFormatError, match=r"weight takes 8 input channels .* unet.config.in_channels says 12"
    ):
        expand_conv_in(base_unet)
