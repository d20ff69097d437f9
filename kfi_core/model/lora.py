"""LoRA on every attention projection of the SVD UNet, through peft.

Paper, supplementary A.2 "Low-Rank Adapter": LoRA on "the spatial and temporal
self-/cross-attention layers", on "the linear layers for Q, K, V, and the output
projection", rank 32. In diffusers' ``UNetSpatioTemporalConditionModel`` those are the
``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` linears of ``attn1`` (self) and ``attn2``
(cross, context = CLIP image embedding, 1024-d in SVD) of every ``transformer_blocks.N``
(spatial) and ``temporal_transformer_blocks.N`` (temporal) of every
``TransformerSpatioTemporalModel`` in the down, mid and up blocks. :func:`add_lora` targets
exactly those with a peft ``LoraConfig`` whose ``target_modules`` is a regex
(:func:`lora_target_regex`), injected with ``peft.inject_adapter_in_model``. peft's
default init zeroes ``lora_B``, so a fresh LoRA changes nothing.

Trainable parameter count for svd-xt (:data:`SVD_XT_UNET_CONFIG`, rank 32, computed by
:func:`count_kfi_trainable_parameters` on the meta device; checked in tests/test_lora.py)::

    LoRA, all 16 targets (spatial+temporal x self+cross x q,k,v,out)   13,279,232
      spatial self-attention  (attn1 of transformer_blocks)             3,194,880
      spatial cross-attention (attn2 of transformer_blocks)             3,444,736
      temporal self-attention (attn1 of temporal_transformer_blocks)    3,194,880
      temporal cross-attention (attn2 of temporal_transformer_blocks)   3,444,736
    conv_in, 12 input channels (weight 320x12x3x3 + bias 320)               34,880
      of which new (channels 8..12)                                         11,520
    total trainable                                                     13,314,112

A rank-r LoRA on a linear ``in -> out`` adds ``r * (in + out)`` parameters. There are 16
transformer blocks of each kind (down 2+2+2, mid 1, up 3+3+3) at widths 320/640/1280, so
every q/k/v/out projection of a self-attention adds ``32 * 2 * C`` summed over blocks
(798,720 per projection type), and the cross-attention K/V take a 1024-d context
(923,648 each). The paper's "about 29 M" is about 2.2x this, and no choice among the
attention targets reaches it, because including everything is the maximum: dropping the
temporal attention halves it (6.64 M), dropping the cross-attention K/V gives 9.58 M,
self-attention only 6.39 M. What would give ~29 M at rank 32: adding the feed-forward
layers (spatial ``ff``, temporal ``ff`` and ``ff_in``: +16.77 M, total 30.05 M, which is
28.7 "M" if M means 2^20), or attention + ``proj_in/proj_out`` + two feed-forwards +
the resnets' ``time_emb_proj`` (29.15 M). Attention only needs rank ~70 for 29 M (rank 64
gives 26.56 M). We cannot tell which the authors did; we follow the text (attention
Q/K/V/out only, rank 32) and report the count we get. ``target_modules`` and ``rank`` are
configurable, and the adapter file records them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from kfi_core.errors import CheckpointFormatError, LoraError, UnknownNameError
from kfi_core.model.conv_in import KFI_IN_CHANNELS, STOCK_IN_CHANNELS, check_conv_in, expand_conv_in

logger = logging.getLogger(__name__)

LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
DEFAULT_LORA_RANK = 32
# peft's adapter name; it appears in parameter names (``...to_q.lora_A.default.weight``) but not in adapter files.
LORA_ADAPTER_NAME = "default"

# stabilityai/stable-video-diffusion-img2vid-xt unet/config.json (weight-shaping fields and frames).
SVD_XT_UNET_CONFIG = {
    "sample_size": 96,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": (
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    ),
    "up_block_types": (
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    ),
    "block_out_channels": (320, 640, 1280, 1280),
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 768,
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "transformer_layers_per_block": 1,
    "num_attention_heads": (5, 10, 20, 20),
    "num_frames": 25,
}

# Groups of attention modules, for counts: (name of the transformer block list, attention name) -> label.
ATTENTION_GROUPS = {
    ("transformer_blocks", "attn1"): "spatial self-attention",
    ("transformer_blocks", "attn2"): "spatial cross-attention",
    ("temporal_transformer_blocks", "attn1"): "temporal self-attention",
    ("temporal_transformer_blocks", "attn2"): "temporal cross-attention",
}

_GROUP_RE = re.compile(r"(?:^|\.)(temporal_transformer_blocks|transformer_blocks)\.\d+\.(attn[12])\.")


@dataclass(frozen=True)
class LoraSettings:
    """What :func:`add_lora` injected: rank, alpha (scale = alpha / rank) and target linears."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...] = LORA_TARGET_MODULES

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class KfiParameterCount:
    """Trainable parameters KFI adds to a UNet: LoRA and the (whole, 12-channel) conv_in."""

    rank: int
    lora: int
    conv_in: int
    conv_in_new: int  # the zero-initialised channels 8..12 alone (part of conv_in)
    base: int  # the UNet as configured (LoRA excluded, conv_in before widening)
    lora_by_group: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.lora + self.conv_in


# --------------------------------------------------------------------------- settings


def check_lora_settings(rank: int, alpha: float | None = None, target_modules=LORA_TARGET_MODULES) -> LoraSettings:
    """Validate rank, alpha and targets; return them as :class:`LoraSettings` (alpha defaults to rank)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LoraError(f"LoRA rank: got {rank!r}; give a positive integer ({DEFAULT_LORA_RANK} is the paper's).")
    if alpha is None:
        alpha = float(rank)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise LoraError(
            f"LoRA alpha: got {alpha!r}; give a positive number, or leave it out to use the rank ({rank}, scale 1)."
        )
    targets = tuple(target_modules)
    unknown = [t for t in targets if t not in LORA_TARGET_MODULES]
    if unknown or not targets or len(set(targets)) != len(targets):
        raise UnknownNameError(
            f"LoRA target modules: got {list(targets)}; choose one or more of {list(LORA_TARGET_MODULES)}, "
            "each once (the attention projections of the SVD UNet)."
        )
    # A fixed order so that equal settings compare equal and the adapter metadata is stable.
    targets = tuple(t for t in LORA_TARGET_MODULES if t in targets)
    return LoraSettings(rank=rank, alpha=float(alpha), target_modules=targets)


def lora_target_regex(target_modules=LORA_TARGET_MODULES) -> str:
    """The peft ``target_modules`` regex (full match on module names) for the given projections.

    Matches ``<...>.transformer_blocks.N.attn1.to_q`` and the like, spatial and temporal, self
    and cross, in down, mid and up blocks; nothing else in the UNet.
    """
    names = "|".join(re.escape(t) for t in target_modules)
    return rf"(?:.*\.)?(?:temporal_)?transformer_blocks\.\d+\.attn[12]\.(?:{names})"


def build_lora_config(settings: LoraSettings):
    """A peft ``LoraConfig`` for ``settings`` (no dropout, no bias, peft's default init: lora_B = 0)."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        target_modules=lora_target_regex(settings.target_modules),
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=True,
    )


def lora_target_names(unet, target_modules=LORA_TARGET_MODULES) -> list[str]:
    """Names of the linears :func:`add_lora` wraps in ``unet`` (before or after wrapping)."""
    pattern = re.compile(lora_target_regex(target_modules))
    return [name for name, _ in unet.named_modules() if pattern.fullmatch(name)]


def attention_group(module_name: str) -> str:
    """'spatial self-attention', ... for a module inside an attention block."""
    match = _GROUP_RE.search(module_name)
    if not match:
        raise CheckpointFormatError(f"{module_name}: not inside an attention block of an SVD UNet.")
    return ATTENTION_GROUPS[(match.group(1), match.group(2))]


# --------------------------------------------------------------------------- inject / inspect


def lora_layers(unet) -> dict:
    """Module name -> peft LoRA layer, for every LoRA-wrapped module of ``unet``."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in unet.named_modules() if isinstance(module, LoraLayer)}


def get_lora_settings(unet) -> LoraSettings | None:
    """The settings of the LoRA in ``unet``, or None when it has none."""
    layers = lora_layers(unet)
    if not layers:
        return None
    ranks = {layer.r[LORA_ADAPTER_NAME] for layer in layers.values()}
    alphas = {layer.lora_alpha[LORA_ADAPTER_NAME] for layer in layers.values()}
    if len(ranks) != 1 or len(alphas) != 1:
        raise LoraError(
            f"UNet LoRA: layers have ranks {sorted(ranks)} and alphas {sorted(alphas)}; KFI uses one "
            "rank and alpha for all layers. Rebuild the UNet and add LoRA once."
        )
    suffixes = {t for name in layers for t in LORA_TARGET_MODULES if name.endswith("." + t)}
    return LoraSettings(
        rank=ranks.pop(),
        alpha=float(alphas.pop()),
        target_modules=tuple(t for t in LORA_TARGET_MODULES if t in suffixes),
    )


def add_lora(
    unet, rank: int = DEFAULT_LORA_RANK, alpha: float | None = None, *, target_modules=LORA_TARGET_MODULES
) -> LoraSettings:
    """Inject LoRA (peft, adapter name 'default') into every attention projection of ``unet``.

    ``alpha`` defaults to ``rank`` (scale 1). The new LoRA is a no-op (lora_B = 0). Only the LoRA
    parameters are left trainable by peft; call :func:`mark_trainable` to add conv_in.
    Modifies ``unet`` in place; raises :class:`LoraError` if it already has LoRA.
    """
    from peft import inject_adapter_in_model

    settings = check_lora_settings(rank, alpha, target_modules)
    existing = lora_layers(unet)
    if existing:
        raise LoraError(
            f"add_lora: the UNet already has LoRA on {len(existing)} modules (e.g. {next(iter(existing))}). "
            "Add LoRA once, to a freshly loaded base UNet."
        )
    targets = lora_target_names(unet, settings.target_modules)
    if not targets:
        raise CheckpointFormatError(
            f"add_lora: {type(unet).__name__} has no attention projections named {list(settings.target_modules)} "
            "inside transformer_blocks / temporal_transformer_blocks; KFI needs an SVD UNet "
            "(UNetSpatioTemporalConditionModel)."
        )
    inject_adapter_in_model(build_lora_config(settings), unet, adapter_name=LORA_ADAPTER_NAME)
    wrapped = sorted(lora_layers(unet))
    if wrapped != sorted(targets):  # peft matched something else: a bug here, not user input
        raise AssertionError(f"peft wrapped {len(wrapped)} modules, expected {len(targets)}")
    logger.info(
        "added LoRA rank %d alpha %g to %d attention projections (%s)",
        settings.rank,
        settings.alpha,
        len(wrapped),
        ", ".join(settings.target_modules),
    )
    return settings


def _require_lora(unet, what: str) -> dict:
    layers = lora_layers(unet)
    if not layers:
        raise LoraError(f"{what}: the UNet has no LoRA layers. Call add_lora(unet) or load_adapter(unet, path) first.")
    return layers


def merge_lora(unet) -> None:
    """Fold every LoRA update into its base weight (W += scale * B @ A), for faster inference.

    Outputs stay the same within float rounding. Raises :class:`LoraError` without LoRA or when merged.
    """
    layers = _require_lora(unet, "merge_lora")
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise LoraError(
            f"merge_lora: {len(merged)} of {len(layers)} LoRA layers are already merged "
            f"(e.g. {merged[0]}). Call unmerge_lora(unet) first, or merge only once."
        )
    for layer in layers.values():
        layer.merge()
    logger.info("merged LoRA into %d layers", len(layers))


def unmerge_lora(unet) -> None:
    """Undo :func:`merge_lora` (W -= scale * B @ A; exact up to float rounding)."""
    layers = _require_lora(unet, "unmerge_lora")
    unmerged = [name for name, layer in layers.items() if not layer.merged]
    if unmerged:
        raise LoraError(
            f"unmerge_lora: {len(unmerged)} of {len(layers)} LoRA layers are not merged "
            f"(e.g. {unmerged[0]}). Call merge_lora(unet) before unmerge_lora(unet)."
        )
    for layer in layers.values():
        layer.unmerge()
    logger.info("unmerged LoRA from %d layers", len(layers))


def is_lora_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def mark_trainable(unet) -> int:
    """Make only the LoRA parameters and conv_in trainable; return the trainable parameter count.

    Needs LoRA (:func:`add_lora`) and the 12-channel conv_in (:func:`~kfi_core.model.conv_in.expand_conv_in`).
    """

    _require_lora(unet, "mark_trainable")
    channels = check_conv_in(unet)
    if channels != KFI_IN_CHANNELS:
        raise LoraError(
            f"mark_trainable: conv_in takes {channels} input channels; KFI trains the "
            f"{KFI_IN_CHANNELS}-channel conv_in. Call expand_conv_in(unet) first."
        )
    for name, param in unet.named_parameters():
        param.requires_grad_(is_lora_parameter(name) or name.startswith("conv_in."))
    count = trainable_parameter_count(unet)
    logger.info("trainable parameters: %d (LoRA + conv_in)", count)
    return count


def trainable_parameter_count(unet) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(param.numel() for param in unet.parameters() if param.requires_grad)


def lora_state_dict(unet) -> dict:
    """LoRA tensors keyed without peft's adapter name: ``<module>.lora_A.weight`` / ``<module>.lora_B.weight``.

    The values are the live parameters (not copies).
    """
    out = {}
    for name, layer in _require_lora(unet, "lora_state_dict").items():
        out[f"{name}.lora_A.weight"] = layer.lora_A[LORA_ADAPTER_NAME].weight
        out[f"{name}.lora_B.weight"] = layer.lora_B[LORA_ADAPTER_NAME].weight
    return out


def expected_lora_shapes(unet, settings: LoraSettings) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the LoRA tensors :func:`add_lora` with ``settings`` creates (or created) in ``unet``."""
    shapes = {}
    for name in lora_target_names(unet, settings.target_modules):
        module = unet.get_submodule(name)
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        shapes[f"{name}.lora_A.weight"] = (settings.rank, base.in_features)
        shapes[f"{name}.lora_B.weight"] = (base.out_features, settings.rank)
    return shapes


# --------------------------------------------------------------------------- counting


def count_kfi_trainable_parameters(
    unet_config: dict, rank: int = DEFAULT_LORA_RANK, *, target_modules=LORA_TARGET_MODULES
) -> KfiParameterCount:
    """Count KFI's trainable parameters for a UNet config without allocating weights (meta device).

    ``unet_config`` is a diffusers ``UNetSpatioTemporalConditionModel`` config (e.g.
    :data:`SVD_XT_UNET_CONFIG`, or a loaded ``config.json``; private ``_*`` keys are ignored).
    """
    import torch
    from diffusers import UNetSpatioTemporalConditionModel

    settings = check_lora_settings(rank, None, target_modules)
    config = {key: value for key, value in dict(unet_config).items() if not key.startswith("_")}
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(**config)
        base = sum(p.numel() for p in unet.parameters())
        expand_conv_in(unet)
        add_lora(unet, settings.rank, settings.alpha, target_modules=settings.target_modules)
    by_group: dict[str, int] = {label: 0 for label in ATTENTION_GROUPS.values()}
    lora = 0
    for key, tensor in lora_state_dict(unet).items():
        by_group[attention_group(key)] += tensor.numel()
        lora += tensor.numel()
    conv = unet.conv_in
    conv_in = sum(p.numel() for p in conv.parameters())
    conv_in_new = conv.weight[:, STOCK_IN_CHANNELS:].numel()
    return KfiParameterCount(
        rank=settings.rank, lora=lora, conv_in=conv_in, conv_in_new=conv_in_new, base=base, lora_by_group=by_group
    )
