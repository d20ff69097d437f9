"""Sampling settings (:class:`PropagateSettings`) and the checks every inpainting entry point runs once, before any
compute: the settings' values, and whether the model takes the clip's size and length."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kfi_core.errors import InputMismatchError, UnknownNameError, UnsupportedSizeError
from kfi_core.inference.color_match import COLOR_MATCH_MODES
from kfi_core.inference.sampling import SAMPLERS

MAX_SEED = 2**64 - 1
MAX_SAMPLES = 64
_DECODE_TILE_HINT = "0 decodes whole frames, the default; 32 latent cells, 256 pixels, uses less memory"
ProgressCallback = Callable[[dict], Any]


# Latent blending of the known region (RePaint-style replacement of every denoised estimate outside the hole by the
# clean latents of the input, keyframe frames included). "auto": on in the training-free mode, which needs it to see
# the known pixels at all, off with a KFI adapter, which reads them from its condition as the paper trains it.
BLEND_KNOWN_MODES = ("auto", "on", "off")

#: Seam smoothing of a schedule of several windows: after the last window, each generated frame's fill is shifted so
#: its mean colour is the mean over the frames within this many frames, and its detail is cross-faded across window
#: boundaries (:mod:`kfi_core.inference.seams`); each keyframe's colour is carried into the fill next to it, in one
#: window too; 0 turns all three off. Only with ``composite``. Chosen from docs/RESULTS.md "Long clips" (colour seam
#: ratio 1.90 -> 1.04, keyframe seam ratio 13.8 -> 2.2).
DEFAULT_SEAM_SMOOTHING = 3
MAX_SEAM_SMOOTHING = 64


def blends_known(settings: PropagateSettings, in_channels: int) -> bool:
    """Whether the sampler blends the known latents for a UNet of ``in_channels`` (8 training-free, 12 KFI)."""
    if settings.blend_known == "auto":
        return in_channels == 8
    return settings.blend_known == "on"


@dataclass
class PropagateSettings:
    """Sampling knobs; defaults are SVD's (25 Euler steps, guidance 1 -> 3, fps 7, motion 127, aug 0.02)."""

    steps: int = 25
    seed: int = 0
    sampler: str = "euler"
    min_guidance: float = 1.0
    max_guidance: float = 3.0
    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    composite: bool = True
    feather: int = 0
    color_match: str = (
        "none"  # kfi_core.inference.color_match: none | mean | affine | keyframe (applied when compositing)
    )
    blend_known: str = "auto"  # latent blending of the known region: auto (on training-free, off KFI) | on | off
    decode_chunk_size: int = 8
    encode_chunk_size: int = 8
    decode_tile: int = 0  # > 0: decode in spatial tiles of this many latent cells a side (less memory); 0 = off
    num_samples: int = 1  # > 1: the mean of that many samples (seeds seed, seed + 1, ...): lower error, softer fill
    seam_smoothing: int = (
        DEFAULT_SEAM_SMOOTHING  # frames: even the fill's colour and detail at window seams; keyframes' ramps; 0 off
    )

    def check(self) -> PropagateSettings:
        """Raise a clear error for any value the sampler cannot use."""
        if self.sampler not in SAMPLERS:
            raise UnknownNameError(f"sampler: got {self.sampler!r}; choose one of {', '.join(SAMPLERS)}.")
        _int_in("steps", self.steps, 1, 1000, "25 is SVD's default")
        _int_in("seed", self.seed, 0, MAX_SEED, "any whole number from 0 to 2**64 - 1")
        _int_in("fps", self.fps, 1, 240, "SVD is conditioned on fps - 1; 7 is its default")
        _int_in("motion_bucket_id", self.motion_bucket_id, 0, 1023, "127 is SVD's default")
        _int_in("feather", self.feather, 0, 1024, "0 keeps a hard edge")
        _int_in("decode_chunk_size", self.decode_chunk_size, 1, 10_000, "8 frames at a time is the default")
        _int_in("encode_chunk_size", self.encode_chunk_size, 1, 10_000, "8 frames at a time is the default")
        _int_in("decode_tile", self.decode_tile, 0, 10_000, _DECODE_TILE_HINT)
        if self.decode_tile in (1, 2, 3):
            raise InputMismatchError(
                f"decode_tile: got {self.decode_tile}; give 0 or a value from 4 to 10000 ({_DECODE_TILE_HINT})."
            )
        _int_in(
            "num_samples",
            self.num_samples,
            1,
            MAX_SAMPLES,
            "1 is one sample, the default; 4 averages four, for a lower error and a softer fill",
        )
        _int_in(
            "seam_smoothing",
            self.seam_smoothing,
            0,
            MAX_SEAM_SMOOTHING,
            f"frames either side whose fill colours a long clip's frame is evened to; {DEFAULT_SEAM_SMOOTHING} is the "
            "default, 0 turns it off",
        )
        for name in ("min_guidance", "max_guidance"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0 or value > 100:
                raise InputMismatchError(f"{name}: got {value}; give a guidance scale from 0 to 100 (SVD: 1.0 to 3.0).")
        if self.min_guidance > self.max_guidance:
            raise InputMismatchError(
                f"min_guidance {self.min_guidance} is larger than max_guidance {self.max_guidance}; "
                "guidance rises from min (first frame) to max (last frame): swap them."
            )
        if self.color_match not in COLOR_MATCH_MODES:
            raise UnknownNameError(
                f"color_match: got {self.color_match!r}; choose one of "
                f"{', '.join(COLOR_MATCH_MODES)} (none keeps the model's colours)."
            )
        if self.blend_known not in BLEND_KNOWN_MODES:
            raise UnknownNameError(
                f"blend_known: got {self.blend_known!r}; choose one of {', '.join(BLEND_KNOWN_MODES)} "
                "(auto blends in the training-free mode only)."
            )
        aug = float(self.noise_aug_strength)
        if not math.isfinite(aug) or not 0.0 <= aug <= 10.0:
            raise InputMismatchError(f"noise_aug_strength: got {aug}; give a value from 0 to 10 (SVD: 0.02).")
        return self


def _int_in(name: str, value: Any, lo: int, hi: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputMismatchError(f"{name}: got {value!r}; give a whole number ({hint}).")
    if not lo <= value <= hi:
        raise InputMismatchError(f"{name}: got {value}; give a value from {lo} to {hi} ({hint}).")


def check_size(model, height: int, width: int) -> None:
    """Raise unless the model can take frames of this size (no silent resizing)."""
    m = model.size_multiple
    if height % m or width % m or height < m or width < m:

        def near(v: int) -> str:
            lo = max(m, v // m * m)
            return f"{lo} or {lo + m}" if lo != v else str(v)

        raise UnsupportedSizeError(
            f"frames: {width}x{height} (width x height) cannot be taken by this model: both sides must be multiples "
            f"of {m}. Nearest sizes: width {near(width)}, height {near(height)}. Resize or crop the clip "
            "(the CLI's --width/--height resize and then restore the input size)."
        )


def check_window(model, num_frames: int) -> None:
    if num_frames > model.num_frames:
        raise UnsupportedSizeError(
            f"frames: the clip has {num_frames} frames but this model ({model.variant}) takes at most "
            f"{model.num_frames} at once. Use a long-video schedule (e.g. schedule 'anchor') for longer clips."
        )
