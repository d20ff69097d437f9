"""sgm <-> diffusers key conversion for single-file SVD checkpoints: rename tables and key handlers.

:mod:`kfi_core.model.single_file` splits a checkpoint into its three components and calls
:func:`rename_keys` on each; this module holds the tables it runs (the pattern of diffusers'
newer single-file converters):

* a **block table** per component (:func:`unet_blocks`, :func:`vae_blocks`,
  :func:`clip_blocks`) pairs an sgm key prefix with a diffusers key prefix and the
  **rename table** that applies inside that block (``UNET_RESNET_RULES``, ...). The block
  tables depend on a small layout (levels, layers per level, which levels have attention)
  read from the key names of either side, so the same table runs in both directions;
* each rename rule is a pair of patterns over the rest of the key (``{p}`` is
  ``weight|bias``, ``{n}`` a layer number, ...) plus a **special-key handler**
  (:data:`HANDLERS`) for the keys that are not a plain rename: OpenCLIP's fused
  ``attn.in_proj_weight``/``in_proj_bias`` (split into q/k/v), ``proj`` (the visual
  projection, stored transposed) and the VAE's mid-block attention (1x1 convs in sgm,
  linear layers in diffusers);
* a key that no rule knows raises :class:`~kfi_core.errors.CheckpointFormatError` listing
  a few of them.

The one thing that is not a rename: diffusers' ``AutoencoderKLTemporalDecoder`` has a
``quant_conv`` (1x1 conv after the encoder) that sgm's ``AutoencodingEngine`` (and so
ComfyUI) does not have. sgm -> diffusers writes an identity ``quant_conv``
(:func:`identity_quant_conv`); diffusers -> sgm drops an identity one and folds any other
into ``encoder.conv_out`` (:func:`fold_vae_quant_conv`), which keeps the function but not
the bits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kfi_core.errors import CheckpointFormatError

VAE_DECODER_MID_RESNETS = 2  # the only VAE layout both libraries share (see vae_layout)

# --------------------------------------------------------------------------- rename tables
# A rule is (sgm pattern, diffusers pattern or patterns, handler name). Patterns are relative
# to the block prefix; placeholders are listed in _PLACEHOLDERS.

_PLACEHOLDERS = {
    "p": r"weight|bias",
    "n": r"\d+",
    "attn": r"attn1|attn2",
    "qkv": r"to_q|to_k|to_v|to_out\.0",
    "norm": r"norm1|norm2|norm3|norm_in",
    "ff": r"ff|ff_in",
}

WB = [("{p}", "{p}", "copy")]

# UNet VideoResBlock (sgm) <-> SpatioTemporalResBlock (diffusers)
UNET_RESNET_RULES = [
    ("in_layers.0.{p}", "spatial_res_block.norm1.{p}", "copy"),
    ("in_layers.2.{p}", "spatial_res_block.conv1.{p}", "copy"),
    ("emb_layers.1.{p}", "spatial_res_block.time_emb_proj.{p}", "copy"),
    ("out_layers.0.{p}", "spatial_res_block.norm2.{p}", "copy"),
    ("out_layers.3.{p}", "spatial_res_block.conv2.{p}", "copy"),
    ("skip_connection.{p}", "spatial_res_block.conv_shortcut.{p}", "copy"),
    ("time_stack.in_layers.0.{p}", "temporal_res_block.norm1.{p}", "copy"),
    ("time_stack.in_layers.2.{p}", "temporal_res_block.conv1.{p}", "copy"),
    ("time_stack.emb_layers.1.{p}", "temporal_res_block.time_emb_proj.{p}", "copy"),
    ("time_stack.out_layers.0.{p}", "temporal_res_block.norm2.{p}", "copy"),
    ("time_stack.out_layers.3.{p}", "temporal_res_block.conv2.{p}", "copy"),
    ("time_mixer.mix_factor", "time_mixer.mix_factor", "copy"),
]

# UNet SpatialVideoTransformer (sgm) <-> TransformerSpatioTemporalModel (diffusers)
UNET_TRANSFORMER_RULES = [
    ("norm.{p}", "norm.{p}", "copy"),
    ("proj_in.{p}", "proj_in.{p}", "copy"),
    ("proj_out.{p}", "proj_out.{p}", "copy"),
    ("transformer_blocks.{n}.{attn}.{qkv}.{p}", "transformer_blocks.{n}.{attn}.{qkv}.{p}", "copy"),
    ("transformer_blocks.{n}.{norm}.{p}", "transformer_blocks.{n}.{norm}.{p}", "copy"),
    ("transformer_blocks.{n}.{ff}.net.0.proj.{p}", "transformer_blocks.{n}.{ff}.net.0.proj.{p}", "copy"),
    ("transformer_blocks.{n}.{ff}.net.2.{p}", "transformer_blocks.{n}.{ff}.net.2.{p}", "copy"),
    ("time_stack.{n}.{attn}.{qkv}.{p}", "temporal_transformer_blocks.{n}.{attn}.{qkv}.{p}", "copy"),
    ("time_stack.{n}.{norm}.{p}", "temporal_transformer_blocks.{n}.{norm}.{p}", "copy"),
    ("time_stack.{n}.{ff}.net.0.proj.{p}", "temporal_transformer_blocks.{n}.{ff}.net.0.proj.{p}", "copy"),
    ("time_stack.{n}.{ff}.net.2.{p}", "temporal_transformer_blocks.{n}.{ff}.net.2.{p}", "copy"),
    ("time_pos_embed.0.{p}", "time_pos_embed.linear_1.{p}", "copy"),
    ("time_pos_embed.2.{p}", "time_pos_embed.linear_2.{p}", "copy"),
    ("time_mixer.mix_factor", "time_mixer.mix_factor", "copy"),
]

# VAE encoder ResnetBlock <-> ResnetBlock2D
VAE_RESNET_RULES = [
    ("norm1.{p}", "norm1.{p}", "copy"),
    ("conv1.{p}", "conv1.{p}", "copy"),
    ("norm2.{p}", "norm2.{p}", "copy"),
    ("conv2.{p}", "conv2.{p}", "copy"),
    ("nin_shortcut.{p}", "conv_shortcut.{p}", "copy"),
]

# VAE temporal decoder VideoResBlock <-> SpatioTemporalResBlock (no time embedding)
VAE_VIDEO_RESNET_RULES = [(s, "spatial_res_block." + d, h) for s, d, h in VAE_RESNET_RULES] + [
    ("time_stack.in_layers.0.{p}", "temporal_res_block.norm1.{p}", "copy"),
    ("time_stack.in_layers.2.{p}", "temporal_res_block.conv1.{p}", "copy"),
    ("time_stack.out_layers.0.{p}", "temporal_res_block.norm2.{p}", "copy"),
    ("time_stack.out_layers.3.{p}", "temporal_res_block.conv2.{p}", "copy"),
    ("mix_factor", "time_mixer.mix_factor", "copy"),
]

# VAE mid-block AttnBlock (1x1 convs) <-> diffusers Attention (linear layers)
VAE_ATTN_RULES = [
    ("norm.{p}", "group_norm.{p}", "copy"),
    ("q.weight", "to_q.weight", "conv1x1_to_linear"),
    ("k.weight", "to_k.weight", "conv1x1_to_linear"),
    ("v.weight", "to_v.weight", "conv1x1_to_linear"),
    ("proj_out.weight", "to_out.0.weight", "conv1x1_to_linear"),
    ("q.bias", "to_q.bias", "copy"),
    ("k.bias", "to_k.bias", "copy"),
    ("v.bias", "to_v.bias", "copy"),
    ("proj_out.bias", "to_out.0.bias", "copy"),
]

# OpenCLIP ResidualAttentionBlock <-> CLIPEncoderLayer
CLIP_LAYER_RULES = [
    ("ln_1.{p}", "layer_norm1.{p}", "copy"),
    ("ln_2.{p}", "layer_norm2.{p}", "copy"),
    ("mlp.c_fc.{p}", "mlp.fc1.{p}", "copy"),
    ("mlp.c_proj.{p}", "mlp.fc2.{p}", "copy"),
    ("attn.out_proj.{p}", "self_attn.out_proj.{p}", "copy"),
    ("attn.in_proj_{p}", ("self_attn.q_proj.{p}", "self_attn.k_proj.{p}", "self_attn.v_proj.{p}"), "split_qkv"),
]

EXACT = [("", "", "copy")]


# --------------------------------------------------------------------------- special-key handlers
# Each handler is (sgm -> diffusers, diffusers -> sgm). A handler takes and returns a list of
# tensors: one sgm tensor, and as many diffusers tensors as the rule has diffusers patterns.


def _conv1x1_to_linear(ts):
    (w,) = ts
    if w.ndim != 4 or w.shape[2:] != (1, 1):
        raise ValueError(f"expected a 1x1 conv weight [C, C, 1, 1], got shape {tuple(w.shape)}")
    return [w[:, :, 0, 0]]


def _linear_to_conv1x1(ts):
    (w,) = ts
    if w.ndim != 2:
        raise ValueError(f"expected a linear weight [C, C], got shape {tuple(w.shape)}")
    return [w[:, :, None, None]]


def _split_qkv(ts):
    (w,) = ts
    if w.shape[0] % 3:
        raise ValueError(f"fused q/k/v projection: first dimension {w.shape[0]} is not divisible by 3")
    return [t.clone() for t in w.chunk(3, dim=0)]  # clones: safetensors refuses shared storage


def _merge_qkv(ts):
    import torch

    return [torch.cat(ts, dim=0)]


def _transpose(ts):
    (w,) = ts
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D projection, got shape {tuple(w.shape)}")
    return [w.t().contiguous()]


def _copy(ts):
    return list(ts)


HANDLERS = {
    "copy": (_copy, _copy),
    "conv1x1_to_linear": (_conv1x1_to_linear, _linear_to_conv1x1),
    "split_qkv": (_split_qkv, _merge_qkv),
    "transpose": (_transpose, _transpose),  # OpenCLIP ``proj`` is x @ proj; nn.Linear is x @ W.T
}


# --------------------------------------------------------------------------- rule engine


@dataclass(frozen=True)
class _Rule:
    sgm: str
    diffusers: tuple
    handler: str

    def patterns(self, to_diffusers: bool):
        return (self.sgm,) if to_diffusers else self.diffusers

    def targets(self, to_diffusers: bool):
        return self.diffusers if to_diffusers else (self.sgm,)


@dataclass(frozen=True)
class _Block:
    sgm: str  # sgm key prefix (without the component prefix)
    diffusers: str  # diffusers key prefix
    rules: tuple


_REGEX_CACHE: dict = {}


def _regex(pattern: str):
    rx = _REGEX_CACHE.get(pattern)
    if rx is None:
        parts = re.split(r"(\{\w+\})", pattern)
        out = []
        for part in parts:
            m = re.fullmatch(r"\{(\w+)\}", part)
            out.append(f"(?P<{m.group(1)}>{_PLACEHOLDERS[m.group(1)]})" if m else re.escape(part))
        rx = _REGEX_CACHE[pattern] = re.compile("".join(out))
    return rx


def _block(sgm: str, diffusers: str, rules) -> _Block:
    return _Block(sgm, diffusers, tuple(_Rule(s, d if isinstance(d, tuple) else (d,), h) for s, d, h in rules))


def _match(key: str, blocks: list, to_diffusers: bool):
    """(block, rule, index of the matched pattern, placeholder values) for key, or None."""
    best = None
    for block in blocks:
        prefix = block.sgm if to_diffusers else block.diffusers
        if key.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            rest = key[len(prefix) :]
            for rule in block.rules:
                for i, pattern in enumerate(rule.patterns(to_diffusers)):
                    m = _regex(pattern).fullmatch(rest)
                    if m:
                        best = (prefix, block, rule, i, m.groupdict())
                        break
                else:
                    continue
                break
    return None if best is None else best[1:]


def rename_keys(sd: Mapping, blocks: list, to_diffusers: bool, what: str, source: str) -> dict:
    """Rename every key of one component's state dict through the block table ``blocks``
    (sgm -> diffusers when ``to_diffusers``, else back), running each rule's handler.

    Raises :class:`CheckpointFormatError` for a key no rule knows, a key whose partners are
    missing (q/k/v), a tensor a handler refuses, or two keys with the same target.
    """
    out: dict = {}
    unknown = []
    done = set()
    for key in sd:
        if key in done:
            continue
        hit = _match(key, blocks, to_diffusers)
        if hit is None:
            unknown.append(key)
            continue
        block, rule, _, groups = hit
        src_prefix, dst_prefix = (block.sgm, block.diffusers) if to_diffusers else (block.diffusers, block.sgm)
        src_keys = [src_prefix + p.format(**groups) for p in rule.patterns(to_diffusers)]
        missing = [k for k in src_keys if k not in sd]
        if missing:
            raise CheckpointFormatError(
                f"{source}: {what} has {key!r} but not {', '.join(map(repr, missing))}, which belong "
                "with it. The file is incomplete or was written by a broken converter."
            )
        to_fn = HANDLERS[rule.handler][0 if to_diffusers else 1]
        try:
            tensors = to_fn([sd[k] for k in src_keys])
        except ValueError as exc:
            raise CheckpointFormatError(f"{source}: {what} key {key!r}: {exc}.") from None
        for pattern, tensor in zip(rule.targets(to_diffusers), tensors):
            new_key = dst_prefix + pattern.format(**groups)
            if new_key in out:
                raise CheckpointFormatError(f"{source}: {what}: two keys map to {new_key!r} (second: {key!r}).")
            out[new_key] = tensor
        done.update(src_keys)
    if unknown:
        raise CheckpointFormatError(
            f"{source}: {len(unknown)} {what} key(s) that the SVD converter does not know, e.g. "
            f"{', '.join(map(repr, sorted(unknown)[:5]))}. This is not a Stable Video Diffusion img2vid "
            "checkpoint, or a variant KFI does not support yet."
        )
    return out


# --------------------------------------------------------------------------- layouts and block tables


def key_indices(keys: Iterable[str], prefix: str) -> list:
    """Sorted distinct integers that follow ``prefix`` in keys (``prefix`` ends with a dot)."""
    found = set()
    for k in keys:
        if k.startswith(prefix):
            head = k[len(prefix) :].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _has_prefix(keys, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


@dataclass(frozen=True)
class UNetLayout:
    levels: int
    layers: int  # resnets per down level (sgm num_res_blocks, diffusers layers_per_block)
    down_attn: tuple  # per down level
    up_attn: tuple  # per diffusers up block (0 = lowest resolution)


def unet_layout_from_sgm(keys: list, source: str) -> UNetLayout:
    blocks = key_indices(keys, "input_blocks.")
    if not blocks or blocks[0] != 0:
        raise CheckpointFormatError(f"{source}: the UNet has no 'input_blocks.0' (conv_in); the file is incomplete.")
    ops = [i for i in blocks if f"input_blocks.{i}.0.op.weight" in keys]
    layers = ops[0] - 1 if ops else blocks[-1]
    levels = len(ops) + 1
    expected = list(range(1 + levels * layers + levels - 1))
    if layers < 1 or blocks != expected or ops != [(lv + 1) * (layers + 1) for lv in range(levels - 1)]:
        raise CheckpointFormatError(
            f"{source}: UNet input blocks {blocks} (downsamplers at {ops}) do not form levels with the same "
            "number of resnets each, which diffusers' UNetSpatioTemporalConditionModel needs."
        )
    down_attn = tuple(_has_prefix(keys, f"input_blocks.{1 + lv * (layers + 1)}.1.") for lv in range(levels))
    up_attn = tuple(_has_prefix(keys, f"output_blocks.{b * (layers + 1)}.1.norm.") for b in range(levels))
    return UNetLayout(levels, layers, down_attn, up_attn)


def unet_layout_from_diffusers(keys: list, source: str) -> UNetLayout:
    levels = len(key_indices(keys, "down_blocks."))
    layers = len(key_indices(keys, "down_blocks.0.resnets."))
    if levels < 1 or layers < 1:
        raise CheckpointFormatError(f"{source}: the UNet state dict has no down_blocks; is it a diffusers UNet?")
    down_attn = tuple(_has_prefix(keys, f"down_blocks.{lv}.attentions.") for lv in range(levels))
    up_attn = tuple(_has_prefix(keys, f"up_blocks.{b}.attentions.") for b in range(levels))
    return UNetLayout(levels, layers, down_attn, up_attn)


def unet_blocks(layout: UNetLayout) -> list:
    """The UNet block table (sgm prefix, diffusers prefix, rename rules) for ``layout``."""
    L = layout.layers
    blocks = [
        _block("time_embed.0.", "time_embedding.linear_1.", WB),
        _block("time_embed.2.", "time_embedding.linear_2.", WB),
        _block("label_emb.0.0.", "add_embedding.linear_1.", WB),
        _block("label_emb.0.2.", "add_embedding.linear_2.", WB),
        _block("input_blocks.0.0.", "conv_in.", WB),
        _block("middle_block.0.", "mid_block.resnets.0.", UNET_RESNET_RULES),
        _block("middle_block.1.", "mid_block.attentions.0.", UNET_TRANSFORMER_RULES),
        _block("middle_block.2.", "mid_block.resnets.1.", UNET_RESNET_RULES),
        _block("out.0.", "conv_norm_out.", WB),
        _block("out.2.", "conv_out.", WB),
    ]
    for lv in range(layout.levels):
        for j in range(L):
            i = 1 + lv * (L + 1) + j
            blocks.append(_block(f"input_blocks.{i}.0.", f"down_blocks.{lv}.resnets.{j}.", UNET_RESNET_RULES))
            if layout.down_attn[lv]:
                blocks.append(
                    _block(f"input_blocks.{i}.1.", f"down_blocks.{lv}.attentions.{j}.", UNET_TRANSFORMER_RULES)
                )
        if lv < layout.levels - 1:
            i = (lv + 1) * (L + 1)
            blocks.append(_block(f"input_blocks.{i}.0.op.", f"down_blocks.{lv}.downsamplers.0.conv.", WB))
    for b in range(layout.levels):  # diffusers up block b = sgm level (levels - 1 - b)
        for j in range(L + 1):
            i = b * (L + 1) + j
            blocks.append(_block(f"output_blocks.{i}.0.", f"up_blocks.{b}.resnets.{j}.", UNET_RESNET_RULES))
            if layout.up_attn[b]:
                blocks.append(_block(f"output_blocks.{i}.1.", f"up_blocks.{b}.attentions.{j}.", UNET_TRANSFORMER_RULES))
        if b < layout.levels - 1:
            i = b * (L + 1) + L
            k = 2 if layout.up_attn[b] else 1  # the Upsample follows the resnet (and the transformer)
            blocks.append(_block(f"output_blocks.{i}.{k}.conv.", f"up_blocks.{b}.upsamplers.0.conv.", WB))
    return blocks


@dataclass(frozen=True)
class VAELayout:
    levels: int
    layers: int  # resnets per encoder level; the decoder has layers + 1


def vae_layout(keys: list, to_diffusers: bool, source: str) -> VAELayout:
    if to_diffusers:
        levels, layers = len(key_indices(keys, "encoder.down.")), len(key_indices(keys, "encoder.down.0.block."))
    else:
        levels = len(key_indices(keys, "encoder.down_blocks."))
        layers = len(key_indices(keys, "encoder.down_blocks.0.resnets."))
    if levels < 1 or layers < 1:
        raise CheckpointFormatError(f"{source}: the VAE has no encoder down blocks; the file is incomplete.")
    mid = layers if to_diffusers else len(key_indices(keys, "decoder.mid_block.resnets."))
    if mid != VAE_DECODER_MID_RESNETS:
        # diffusers' MidBlockTemporalDecoder has layers_per_block resnets and runs its attention only
        # between resnets; sgm's (and ComfyUI's) video decoder always runs resnet, attention, resnet.
        raise CheckpointFormatError(
            f"{source}: VAE with {layers} resnets per level (temporal decoder mid block with {mid} resnets): "
            "diffusers' AutoencoderKLTemporalDecoder and sgm's video decoder agree only for "
            f"layers_per_block={VAE_DECODER_MID_RESNETS}, as in SVD. This VAE cannot be converted."
        )
    return VAELayout(levels, layers)


def vae_blocks(layout: VAELayout) -> list:
    """The VAE block table for ``layout``; sgm decoder level i is diffusers up block levels - 1 - i."""
    n = layout.levels
    blocks = [
        _block("encoder.conv_in.", "encoder.conv_in.", WB),
        _block("encoder.mid.block_1.", "encoder.mid_block.resnets.0.", VAE_RESNET_RULES),
        _block("encoder.mid.attn_1.", "encoder.mid_block.attentions.0.", VAE_ATTN_RULES),
        _block("encoder.mid.block_2.", "encoder.mid_block.resnets.1.", VAE_RESNET_RULES),
        _block("encoder.norm_out.", "encoder.conv_norm_out.", WB),
        _block("encoder.conv_out.", "encoder.conv_out.", WB),
        _block("decoder.conv_in.", "decoder.conv_in.", WB),
        _block("decoder.mid.block_1.", "decoder.mid_block.resnets.0.", VAE_VIDEO_RESNET_RULES),
        _block("decoder.mid.attn_1.", "decoder.mid_block.attentions.0.", VAE_ATTN_RULES),
        _block("decoder.mid.block_2.", "decoder.mid_block.resnets.1.", VAE_VIDEO_RESNET_RULES),
        _block("decoder.norm_out.", "decoder.conv_norm_out.", WB),
        _block("decoder.conv_out.", "decoder.conv_out.", WB),
        _block("decoder.conv_out.time_mix_conv.", "decoder.time_conv_out.", WB),
    ]
    for i in range(n):
        for j in range(layout.layers):
            blocks.append(
                _block(f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.", VAE_RESNET_RULES)
            )
        if i < n - 1:
            blocks.append(
                _block(f"encoder.down.{i}.downsample.conv.", f"encoder.down_blocks.{i}.downsamplers.0.conv.", WB)
            )
    for i in range(n):  # sgm decoder.up.{i} is diffusers decoder.up_blocks.{n - 1 - i}
        b = n - 1 - i
        for j in range(layout.layers + 1):
            blocks.append(
                _block(f"decoder.up.{i}.block.{j}.", f"decoder.up_blocks.{b}.resnets.{j}.", VAE_VIDEO_RESNET_RULES)
            )
        if i > 0:
            blocks.append(_block(f"decoder.up.{i}.upsample.conv.", f"decoder.up_blocks.{b}.upsamplers.0.conv.", WB))
    return blocks


def clip_blocks() -> list:
    """The OpenCLIP visual tower <-> CLIPVisionModelWithProjection block table."""
    return [
        _block("class_embedding", "vision_model.embeddings.class_embedding", EXACT),
        _block("positional_embedding", "vision_model.embeddings.position_embedding.weight", EXACT),
        _block("conv1.", "vision_model.embeddings.patch_embedding.", [("weight", "weight", "copy")]),
        _block("ln_pre.", "vision_model.pre_layrnorm.", WB),  # sic: transformers' spelling
        _block("ln_post.", "vision_model.post_layernorm.", WB),
        _block("proj", "visual_projection.weight", [("", "", "transpose")]),
        _block(
            "transformer.resblocks.",
            "vision_model.encoder.layers.",
            [
                (f"{{n}}.{s}", tuple(f"{{n}}.{x}" for x in (d if isinstance(d, tuple) else (d,))), h)
                for s, d, h in CLIP_LAYER_RULES
            ],
        ),
    ]


# --------------------------------------------------------------------------- quant_conv


def is_identity_quant_conv(weight, bias) -> bool:
    import torch

    c = weight.shape[0]
    if weight.shape != (c, c, 1, 1):
        return False
    eye = torch.eye(c, dtype=weight.dtype, device=weight.device)[:, :, None, None]
    return bool(torch.equal(weight, eye) and torch.equal(bias, torch.zeros_like(bias)))


def identity_quant_conv(like) -> tuple:
    import torch

    c = like.shape[0]
    return (torch.eye(c, dtype=like.dtype)[:, :, None, None].contiguous(), torch.zeros(c, dtype=like.dtype))


def fold_vae_quant_conv(vae_sd: Mapping) -> dict:
    """Return a copy of a diffusers temporal-decoder VAE state dict with ``quant_conv`` folded
    into ``encoder.conv_out`` and set to the identity (the form sgm files can hold).

    ``quant_conv`` is a 1x1 conv applied right after ``encoder.conv_out``, so
    ``W_q (W_c x + b_c) + b_q == (W_q W_c) x + (W_q b_c + b_q)``: the encoder computes the same
    function, up to float rounding (the product is formed in float64, then cast back).
    """
    import torch

    out = dict(vae_sd)
    for key in ("quant_conv.weight", "quant_conv.bias", "encoder.conv_out.weight", "encoder.conv_out.bias"):
        if key not in out:
            raise CheckpointFormatError(f"VAE state dict has no {key!r}; is it an AutoencoderKLTemporalDecoder?")
    wq, bq = out["quant_conv.weight"], out["quant_conv.bias"]
    if is_identity_quant_conv(wq, bq):
        return out
    wc, bc = out["encoder.conv_out.weight"], out["encoder.conv_out.bias"]
    wq2 = wq[:, :, 0, 0].double()
    out["encoder.conv_out.weight"] = torch.einsum("oc,cihw->oihw", wq2, wc.double()).to(wc.dtype).contiguous()
    out["encoder.conv_out.bias"] = (wq2 @ bc.double() + bq.double()).to(bc.dtype)
    out["quant_conv.weight"], out["quant_conv.bias"] = identity_quant_conv(wq)
    return out
