"""Planning device memory before a run: per-phase peak estimates from the model's configs, and the fit check.

:func:`plan_memory` estimates, in bytes, the peak device memory of each phase of a KFI run and of the whole run,
from the architecture alone (the UNet, VAE and image-encoder configs; the weights are counted on the meta device,
nothing is loaded). Notation: ``B`` = 2 with classifier-free guidance (1 without), ``F`` = the model's window
(its frame count), ``H x W`` the working size, ``h x w = H/s x W/s`` the latent size (``s`` the VAE scale factor,
8 for SVD), ``C_l`` the UNet ``block_out_channels``, ``L`` its ``layers_per_block``, ``V_l`` the VAE's
``block_out_channels``, ``b`` bytes per element (the UNet and image encoder in ``dtype``, the VAE always fp32),
``n`` the chunk (``decode_chunk_size``; encoding uses ``encode_chunk_size``):

- image encoder (CLIP at 224, one image): ``k_clip * b * (T * (3 D + I) + heads * T^2)`` with ``T = (224 / p)^2 + 1``
  tokens, ``D`` hidden size, ``I`` MLP width, ``p`` patch size;
- VAE encode of one chunk (the symmetric condition encodes every frame twice, one chunk at a time, so the peak is
  one chunk's): ``k_enc * n * H * W * 4 * V_0``;
- one UNet step with guidance (one window): ``k_unet * B * F * h * w * b * (S + 12 C_0)``, where
  ``S = C_0 + sum_l 4^-l (L C_l + [l not last] C_l / 4)`` are the skip connections the down path keeps for the up
  path (conv_in, every resnet, every downsampler, each at its level's resolution) and ``12 C_0`` the working set of
  one full-resolution transformer block (the GEGLU feed-forward's ``8 C_0`` projection and its ``4 C_0`` half);
  attention is memory-efficient (no ``T x T`` scores), as torch's SDPA on CUDA and on CPU;
- VAE decode of one chunk: ``k_dec * n * H * W * 4 * (V_0 + V_1)``: the decoder's last level at full resolution
  (``V_0`` channels) fed by the upsampled ``V_1``.

Weights resident per ``offload``: ``none`` all three components; ``model`` only the component the phase uses;
``sequential`` only the largest single module (its own parameters). The total is the maximum over phases of
(resident weights + the phase's activations).

Calibration (the ``K_*`` constants): live tensor bytes counted on CPU, on the tiny model (``kfi_core.model.tiny``),
at 256x256 (and 64x64), by counting every storage an op allocates until it is freed (a ``TorchDispatchMode``; the
same quantity as CUDA's ``max_memory_allocated``): the UNet step (B 2, F 8) peaked at 221 MiB, the decode of 8
frames at 512 MiB, the encode of 8 frames at 320 MiB. ``tests/test_plan.py`` re-measures them (views such as
``weight.t()`` no longer counted as allocations): estimate / measured UNet step 1.02 on the tiny model and 1.11 on
bench/common.py's mid model (three levels, two layers a block) at every size from 32 to 192 pixels, decode 1.00.
GPU figures come from ``bench/gpu_check.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from kfi_core.errors import OutOfMemoryPlanError, SettingsError
from kfi_core.model import KfiModel
from kfi_core.model.offload import OFFLOAD_MODES

__all__ = [
    "K_CLIP",
    "K_DECODE",
    "K_ENCODE",
    "K_UNET",
    "OFFLOAD_MODES",
    "MemoryPlan",
    "ModelShape",
    "check_fits",
    "model_shape",
    "plan_memory",
]

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
CLIP_SIZE = 224
K_UNET = 1.87  # tiny model, 256x256: measured 884 units of B*F*h*w*b, formula 472 (S 88 + 12 C_0 384)
K_DECODE = 2.67  # tiny model: 256 units of n*H*W*4 for V_0 + V_1 = 96 channels
K_ENCODE = 5.0  # tiny model: 160 units of n*H*W*4 for V_0 = 32 channels
K_CLIP = 1.0  # uncalibrated upper bound (a few MiB even for ViT-H/14; weights dominate this phase)
PHASES = ("image_encoder", "vae_encode", "unet_step", "vae_decode")
PHASE_COMPONENT = {"image_encoder": "image_encoder", "vae_encode": "vae", "unet_step": "unet", "vae_decode": "vae"}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model: its three configs, frame count and weight bytes per parameter count."""

    unet: Mapping
    vae: Mapping
    image_encoder: Mapping
    num_frames: int
    params: Mapping  # component -> parameter count
    largest_module: Mapping  # component -> parameter count of its largest single module
    extra_unet_params: int = 0  # an adapter's parameters (LoRA, the wider input conv)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)


@dataclass
class MemoryPlan:
    """The estimate: bytes per phase (activations and resident weights) and the peak; the inputs it came from."""

    shape: ModelShape = field(repr=False)
    frames: int
    height: int
    width: int
    dtype: str
    offload: str
    decode_chunk_size: int
    encode_chunk_size: int
    guidance: bool
    activations: dict
    resident: dict
    phases: dict
    peak: int
    peak_phase: str

    def to_dict(self) -> dict:
        keep = ("frames", "height", "width", "dtype", "offload", "decode_chunk_size", "encode_chunk_size", "guidance")
        out = {k: getattr(self, k) for k in keep}
        out.update(activations=self.activations, resident=self.resident, phases=self.phases)
        out.update(peak=self.peak, peak_phase=self.peak_phase, window=self.shape.num_frames)
        return out


def _module_counts(module: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, the parameters of the largest single module counted without its children)."""
    total = sum(p.numel() for p in module.parameters())
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in module.modules()), default=0)
    return total, largest


def _config_dict(config: Any) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


def model_shape(unet: Mapping, vae: Mapping, image_encoder: Mapping, num_frames: int) -> ModelShape:
    """A :class:`ModelShape` from configs: the modules are built on the meta device to count their weights."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet, vae, image_encoder = _config_dict(unet), _config_dict(vae), _config_dict(image_encoder)
    with init_empty_weights():
        modules = {
            "unet": UNetSpatioTemporalConditionModel.from_config({**unet, "num_frames": num_frames}),
            "vae": AutoencoderKLTemporalDecoder.from_config(vae),
            "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**image_encoder)),
        }
    counts = {name: _module_counts(m) for name, m in modules.items()}
    return ModelShape(
        unet=unet,
        vae=vae,
        image_encoder=image_encoder,
        num_frames=int(num_frames),
        params={k: c[0] for k, c in counts.items()},
        largest_module={k: c[1] for k, c in counts.items()},
    )


def _shape_of_model(model: KfiModel) -> ModelShape:
    modules = {"unet": model.unet, "vae": model.vae, "image_encoder": model.image_encoder}
    counts = {name: _module_counts(m) for name, m in modules.items()}
    return ModelShape(
        unet=_config_dict(model.unet.config),
        vae=_config_dict(model.vae.config),
        image_encoder=_config_dict(model.image_encoder.config.to_dict()),
        num_frames=int(model.num_frames),
        params={k: c[0] for k, c in counts.items()},
        largest_module={k: c[1] for k, c in counts.items()},
    )


def unet_skip_channels(unet: Mapping) -> float:
    """``S``: the skip connections' channels, each level weighted by its area relative to the latent (4^-l)."""
    channels = list(unet["block_out_channels"])
    layers = unet["layers_per_block"]
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers] * len(channels)
    total = float(channels[0])  # conv_in
    for level, (c, n) in enumerate(zip(channels, layers, strict=True)):
        last = level == len(channels) - 1
        total += (n * c + (0 if last else c / 4)) / 4**level
    return total


def _activations(shape: ModelShape, frames: int, height: int, width: int, b: int, n_dec: int, n_enc: int, cfg: bool):
    """Bytes of activations per phase (the formulas of the module docstring)."""
    clip = shape.image_encoder
    tokens = (clip.get("image_size", CLIP_SIZE) // clip["patch_size"]) ** 2 + 1
    d, inner, heads = clip["hidden_size"], clip["intermediate_size"], clip["num_attention_heads"]
    vc = list(shape.vae["block_out_channels"])
    v1 = vc[1] if len(vc) > 1 else vc[0]
    s = shape.vae_scale
    h, w = math.ceil(height / s), math.ceil(width / s)
    window = min(frames, shape.num_frames)
    c0 = shape.unet["block_out_channels"][0]
    unet_units = (2 if cfg else 1) * window * h * w * b
    pixels = height * width * 4  # the VAE runs in fp32
    return {
        "image_encoder": int(K_CLIP * b * (tokens * (3 * d + inner) + heads * tokens**2)),
        "vae_encode": int(K_ENCODE * min(n_enc, frames) * pixels * vc[0]),
        "unet_step": int(K_UNET * unet_units * (unet_skip_channels(shape.unet) + 12 * c0)),
        "vae_decode": int(K_DECODE * min(n_dec, frames) * pixels * (vc[0] + v1)),
    }


def _resident(shape: ModelShape, b: int, offload: str) -> dict:
    """Weight bytes on the device during each phase."""
    bytes_of = {"unet": b, "image_encoder": b, "vae": 4}
    weights = {k: shape.params[k] * bytes_of[k] for k in bytes_of}
    weights["unet"] += shape.extra_unet_params * b
    if offload == "none":
        return dict.fromkeys(PHASES, sum(weights.values()))
    if offload == "model":
        return {p: weights[PHASE_COMPONENT[p]] for p in PHASES}
    largest = max(shape.largest_module[k] * bytes_of[k] for k in bytes_of)
    return dict.fromkeys(PHASES, largest)


def _check_args(frames, height, width, dtype, offload, decode_chunk_size, encode_chunk_size) -> None:
    for name, value in (("frames", frames), ("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SettingsError(f"plan: {name} must be a whole number >= 1, got {value!r}.")
    for name, value in (("decode_chunk_size", decode_chunk_size), ("encode_chunk_size", encode_chunk_size)):
        if not isinstance(value, int) or value < 1:
            raise SettingsError(f"plan: {name} must be a whole number >= 1, got {value!r}.")
    if dtype not in DTYPE_BYTES:
        raise SettingsError(f"plan: dtype {dtype!r} is unknown; use one of {', '.join(DTYPE_BYTES)}.")
    if offload not in OFFLOAD_MODES:
        raise SettingsError(f"plan: offload {offload!r} is unknown; use one of {', '.join(OFFLOAD_MODES)}.")


def _dtype_name(dtype: str | torch.dtype) -> str:
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    if isinstance(dtype, torch.dtype):
        return names.get(dtype, str(dtype))
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(dtype, dtype)


def plan_memory(
    model_or_config: KfiModel | ModelShape,
    frames: int,
    height: int,
    width: int,
    *,
    dtype: str | torch.dtype = "fp32",
    offload: str = "none",
    decode_chunk_size: int = 8,
    encode_chunk_size: int = 8,
    guidance: bool = True,
) -> MemoryPlan:
    """Estimated peak device memory (bytes) per phase and in all, for ``frames`` frames at ``height x width``.

    ``model_or_config`` is a loaded :class:`KfiModel` or a :class:`ModelShape` (:func:`model_shape`, or
    ``kfi_core.cli.plan.read_model_shape`` from files). The formulas are in the module docstring.
    """
    shape = model_or_config if isinstance(model_or_config, ModelShape) else _shape_of_model(model_or_config)
    dtype = _dtype_name(dtype)
    _check_args(frames, height, width, dtype, offload, decode_chunk_size, encode_chunk_size)
    b = DTYPE_BYTES[dtype]
    act = _activations(shape, frames, height, width, b, decode_chunk_size, encode_chunk_size, guidance)
    resident = _resident(shape, b, offload)
    phases = {p: resident[p] + act[p] for p in PHASES}
    peak_phase = max(PHASES, key=phases.__getitem__)
    return MemoryPlan(
        shape=shape,
        frames=frames,
        height=height,
        width=width,
        dtype=dtype,
        offload=offload,
        decode_chunk_size=decode_chunk_size,
        encode_chunk_size=encode_chunk_size,
        guidance=guidance,
        activations=act,
        resident=resident,
        phases=phases,
        peak=phases[peak_phase],
        peak_phase=peak_phase,
    )


def _replan(plan: MemoryPlan, **changes) -> MemoryPlan:
    kept = {k: getattr(plan, k) for k in _PLAN_INPUTS}
    kept.update(changes)
    frames, height, width = kept.pop("frames"), kept.pop("height"), kept.pop("width")
    return plan_memory(plan.shape, frames, height, width, **kept)


_PLAN_INPUTS = ("frames", "height", "width", "dtype", "offload", "decode_chunk_size", "encode_chunk_size", "guidance")


def _smaller_sizes(plan: MemoryPlan, multiple: int):
    """Working sizes at the plan's aspect ratio, 7/8, 6/8, ... 2/8 of its height, rounded down to ``multiple``."""
    for eighths in range(7, 1, -1):
        h = max(multiple, plan.height * eighths // 8 // multiple * multiple)
        w = max(multiple, plan.width * eighths // 8 // multiple * multiple)
        yield h, w


def fitting_settings(plan: MemoryPlan, free_bytes: int, multiple: int = 64) -> list[tuple[str, Any, int]]:
    """Single changes of the plan's settings that fit in ``free_bytes``: ``(setting, value, peak)``, cheapest first.

    Tried in this order: a smaller decode chunk (and encode chunk), fp16 (for an fp32 plan), offload ``model``
    then ``sequential``, then the largest smaller working size that fits.
    """
    found = []
    for chunk in (4, 2, 1):
        if chunk < plan.decode_chunk_size:
            alt = _replan(plan, decode_chunk_size=chunk, encode_chunk_size=min(chunk, plan.encode_chunk_size))
            if alt.peak <= free_bytes:
                found.append(("decode_chunk_size", chunk, alt.peak))
                break
    if plan.dtype == "fp32":
        alt = _replan(plan, dtype="fp16")
        if alt.peak <= free_bytes:
            found.append(("dtype", "fp16", alt.peak))
    for mode in OFFLOAD_MODES[OFFLOAD_MODES.index(plan.offload) + 1 :]:
        alt = _replan(plan, offload=mode)
        if alt.peak <= free_bytes:
            found.append(("offload", mode, alt.peak))
            break
    for h, w in _smaller_sizes(plan, multiple):
        alt = _replan(plan, height=h, width=w)
        if alt.peak <= free_bytes:
            found.append(("size", (h, w), alt.peak))
            break
    return found


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _describe(setting: str, value: Any, settings_hint: Mapping | None) -> str:
    hint = (settings_hint or {}).get(setting)
    if setting == "size":
        h, w = value
        return hint.format(height=h, width=w) if hint else f"working size {w}x{h}"
    return hint.format(value) if hint else f"{setting}={value}"


def check_fits(estimate: MemoryPlan, free_bytes: int, settings_hint: Mapping | None = None) -> None:
    """Raise :class:`OutOfMemoryPlanError` if ``estimate.peak`` exceeds ``free_bytes``, naming settings that fit.

    ``settings_hint`` maps a setting (``decode_chunk_size``, ``dtype``, ``offload``, ``size``) to how the user
    writes it, a format string (``"--dtype {}"``; size: ``"--width {width} --height {height}"``); settings it
    leaves out are not suggested. ``None`` suggests every setting by its library name.
    """
    if estimate.peak <= free_bytes:
        return
    options = [
        (s, v, p) for s, v, p in fitting_settings(estimate, free_bytes) if settings_hint is None or s in settings_hint
    ]
    if options:
        fix = "; or ".join(f"{_describe(s, v, settings_hint)} (about {_gib(p)})" for s, v, p in options)
        fix = f"Settings that would fit: {fix}."
    else:
        fix = "No single change of decode chunk, dtype, offload or working size fits; free device memory first."
    raise OutOfMemoryPlanError(
        f"device memory: the run needs about {_gib(estimate.peak)} at its peak ({estimate.peak_phase}, "
        f"{estimate.width}x{estimate.height}, {estimate.dtype}, offload {estimate.offload}, decode chunk "
        f"{estimate.decode_chunk_size}) but only {_gib(free_bytes)} is free. {fix}"
    )
