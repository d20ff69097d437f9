"""Shared bench helpers: models (tiny and mid-size, random weights, built in-process) and A/B timing.

Timing rule (the machine is shared): never report an absolute time alone. Every figure is a
ratio of two candidates measured in the same process, on the same model and inputs, with the
repetitions interleaved (A, B, A, B, ...) so that load from other jobs hits both alike; the
ratio is of medians, and the spread is the ratio's range over the per-repetition pairs.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: The mid-size UNet: tiny.py's config widened to three levels (64, 128, 128), two layers per
#: block, 8 frames; VAE and CLIP stay tiny. About 10x the tiny UNet's parameters (see describe()).
MID_UNET_OVERRIDES = {
    "down_block_types": (
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    ),
    "up_block_types": ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    "block_out_channels": (64, 128, 128),
    "num_attention_heads": (2, 4, 4),
    "layers_per_block": 2,
}

MODEL_SIZES = ("tiny", "mid")


def build_components(size: str = "tiny", num_frames: int = 8, seed: int = 0) -> dict:
    """The five SVD pipeline components with random weights: ``tiny`` (kfi_core.model.tiny) or ``mid``."""
    import torch
    from diffusers import UNetSpatioTemporalConditionModel

    from kfi_core.model import build_tiny_components, tiny_unet_config

    components = build_tiny_components(num_frames=num_frames, seed=seed)
    if size == "mid":
        config = {**tiny_unet_config(num_frames), **copy.deepcopy(MID_UNET_OVERRIDES)}
        torch.manual_seed(seed * 1000 + 7)
        components["unet"] = UNetSpatioTemporalConditionModel(**config).eval()
    elif size != "tiny":
        raise SystemExit(f"--size: got {size!r}; choose one of {', '.join(MODEL_SIZES)}")
    return components


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(components: dict) -> str:
    unet = components["unet"]
    return (
        f"UNet {tuple(unet.config.block_out_channels)} {parameter_count(unet) / 1e6:.2f} M params, "
        f"VAE {parameter_count(components['vae']) / 1e6:.2f} M, CLIP {parameter_count(components['image_encoder']) / 1e6:.2f} M"
    )


def kfi_model_from_components(components: dict):
    """A kfi_core.model.loading.KfiModel over in-memory components (no files)."""
    import torch

    from kfi_core.model import KfiModel, place_model, variant_for

    unet = components["unet"]
    model = KfiModel(
        unet=unet,
        vae=components["vae"],
        image_encoder=components["image_encoder"],
        feature_extractor=components["feature_extractor"],
        scheduler_config=dict(components["scheduler"].config),
        num_frames=int(unet.config.num_frames),
        variant=variant_for(unet.config, int(unet.config.num_frames)),
        source="<bench>",
    )
    return place_model(model, dtype=torch.float32, vae_dtype=torch.float32, device=torch.device("cpu"))


def median(values):
    return statistics.median(values)


def interleave(candidates: dict[str, Callable[[], float]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each candidate ``warmup`` times, then ``reps`` rounds of A, B, ... (order alternating per round).

    A candidate returns its own measurement (seconds), so it can exclude set-up it does not
    want timed (e.g. encode/decode). Returns name -> list of measurements.
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    out = {name: [] for name in names}
    for r in range(reps):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            out[name].append(candidates[name]())
    return out


def ratio_line(label: str, a: list[float], b: list[float], target: str = "") -> str:
    """'label: median(a)/median(b) = R (pairwise spread lo..hi, n reps)'."""
    r = median(a) / median(b)
    pairs = sorted(x / y for x, y in zip(a, b))
    lo, hi = pairs[0], pairs[-1]
    extra = f"  target {target}" if target else ""
    return f"{label:<58} {r:6.3f}x  (pairwise {lo:.3f}..{hi:.3f}, n={len(pairs)}){extra}"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class StepTimer:
    """A per-step callback recording time stamps; ``per_step()`` is the median gap between steps.

    The gap between consecutive callbacks is one denoising step (UNet call(s) + sampler update),
    and contains neither the image encoding before the loop nor the decoding after it.
    """

    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, *args, **kwargs):
        self.stamps.append(time.perf_counter())
        # diffusers' callback_on_step_end must return the callback kwargs dict
        return args[3] if len(args) >= 4 else {}

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]

    def per_step(self) -> float:
        return median(self.gaps())
