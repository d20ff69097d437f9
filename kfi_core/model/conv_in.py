"""Widen the SVD UNet's input convolution from 8 to 12 channels (KFI's symmetric condition).

Stock SVD img2vid feeds the UNet ``[noisy latent (4) | first-frame latent (4)]``. KFI feeds
``[noisy latent (4) | masked frames filled black, VAE-encoded (4) | masked frames filled
white, VAE-encoded (4)]`` (paper, supplementary A.2 "Input Convolution"). The widened conv
keeps the original weight for channels 0..8 and the original bias, and starts channels
8..12 at zero, so before any training the KFI UNet computes exactly what the base UNet
computes on ``[noisy | black-filled condition]`` whatever the white-filled slots hold.

Same recipe as diffusers' ``examples/instruct_pix2pix/train_instruct_pix2pix.py``, but the
bias is copied too (the pix2pix script forgets it, which is not function-preserving).
"""

from __future__ import annotations

import logging

from kfi_core.errors import CheckpointFormatError

logger = logging.getLogger(__name__)

STOCK_IN_CHANNELS = 8  # noisy latent (4) + first-frame latent condition (4)
KFI_IN_CHANNELS = 12  # noisy latent (4) + black-filled condition (4) + white-filled condition (4)


def check_conv_in(unet) -> int:
    """Return the UNet's input channel count (8 or 12); raise if conv_in and config disagree or it is neither."""
    conv = unet.conv_in
    weight_channels = conv.weight.shape[1]
    config_channels = unet.config.in_channels
    if weight_channels != conv.in_channels or weight_channels != config_channels:
        raise CheckpointFormatError(
            f"UNet conv_in: the weight takes {weight_channels} input channels but the module says "
            f"{conv.in_channels} and unet.config.in_channels says {config_channels}. The UNet was modified by "
            "hand or loaded from a mismatched checkpoint; reload the base model."
        )
    if weight_channels not in (STOCK_IN_CHANNELS, KFI_IN_CHANNELS):
        raise CheckpointFormatError(
            f"UNet conv_in: takes {weight_channels} input channels; KFI needs a stock SVD img2vid UNet "
            f"({STOCK_IN_CHANNELS} channels: noisy latent + first-frame latent) or a KFI UNet "
            f"({KFI_IN_CHANNELS} channels). Load an SVD img2vid (svd or svd-xt) UNet, not an inpainting or "
            "text-to-image one."
        )
    return weight_channels


def expand_conv_in(unet):
    """Replace ``unet.conv_in`` by a 12-channel conv that computes the same thing on channels 0..8.

    weight[:, :8] and the bias are copied exactly, weight[:, 8:] is zero; dtype, device and
    ``requires_grad`` follow the old conv. ``unet.config.in_channels`` becomes 12. A UNet that is
    already 12-channel is returned unchanged; any other channel count raises
    :class:`~kfi_core.errors.CheckpointFormatError`. Modifies ``unet`` in place and returns it.
    """
    import torch

    channels = check_conv_in(unet)
    if channels == KFI_IN_CHANNELS:
        logger.debug("conv_in already has %d input channels; nothing to do", KFI_IN_CHANNELS)
        return unet

    old = unet.conv_in
    new = torch.nn.Conv2d(
        KFI_IN_CHANNELS,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :STOCK_IN_CHANNELS].copy_(old.weight)  # [C_out, 8, k, k] of [C_out, 12, k, k]
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.weight.requires_grad_(old.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)
    new.train(old.training)
    unet.conv_in = new
    unet.register_to_config(in_channels=KFI_IN_CHANNELS)
    logger.info(
        "widened UNet conv_in from %d to %d input channels (new channels zero)", STOCK_IN_CHANNELS, KFI_IN_CHANNELS
    )
    return unet
