"""Pixel values in two types: float 0..1 (what the model and every blend work in) and 8-bit 0..255 (what video
files hold, a quarter of the memory).

A clip read from a file may stay 8-bit at its full size while only the frame being worked on is float
(:func:`kfi_core.jobs.inpaint_files`): a 1920x1080 frame is 6 MB as 8-bit and 25 MB as float32. The two
conversions here are the only ones: ``to_unit`` is exact (k -> k / 255 in float32, what reading a file gives) and
``to_eight_bit`` rounds (what writing a file does), so an 8-bit round trip of float frames read from 8-bit data
gives the same bytes.
"""

from __future__ import annotations

import torch

EIGHT_BIT = torch.uint8


def is_eight_bit(x: torch.Tensor) -> bool:
    return x.dtype == EIGHT_BIT


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Float32 in 0..1: 8-bit values divided by 255 (a new tensor), float values as float32 (``x`` itself when it
    already is)."""
    if is_eight_bit(x):
        return x.float().div_(255.0)
    return x.float()


def to_eight_bit(x: torch.Tensor) -> torch.Tensor:
    """8-bit values of float ``x`` in 0..1: clamped, scaled by 255 and rounded half to even (a new tensor in
    ``x``'s layout, converted a frame at a time along the first dimension of a clip); 8-bit ``x`` as it is."""
    if is_eight_bit(x):
        return x
    if x.ndim < 4:
        return x.float().clamp(0, 1).mul_(255).round_().to(EIGHT_BIT)
    out = torch.empty_like(x, dtype=EIGHT_BIT)
    for t in range(x.shape[0]):
        out[t] = x[t].float().clamp(0, 1).mul_(255).round_()
    return out


def like_values(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``x`` in ``reference``'s type: 8-bit for an 8-bit reference, else float32 0..1."""
    return to_eight_bit(x) if is_eight_bit(reference) else to_unit(x)
