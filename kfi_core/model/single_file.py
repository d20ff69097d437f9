"""Single-file SVD checkpoints (Stability's "sgm" key names) <-> diffusers/transformers.

``svd.safetensors`` / ``svd_xt.safetensors`` hold three models under three prefixes
(:data:`SGM_PREFIXES`): the spatio-temporal UNet (``model.diffusion_model.``), the VAE with
its temporal video decoder (``first_stage_model.``) and the OpenCLIP ViT-H/14 image encoder
(``conditioner.embedders.0.open_clip.model.visual.``). diffusers has no ``from_single_file``
for SVD, so this module converts them to the key names of diffusers'
``UNetSpatioTemporalConditionModel`` and ``AutoencoderKLTemporalDecoder`` and transformers'
``CLIPVisionModelWithProjection``, and back: it detects the file (:data:`SGM_SENTINEL_KEYS`),
splits it into components, converts each with the rename tables and key handlers of
:mod:`kfi_core.model.single_file_keys`, infers configs, and loads and writes files.
The only sgm keys skipped on purpose are the ones matched by
:data:`IGNORED_SGM_KEY_PATTERNS` (conditioner parts that are not the image encoder).

sgm's ``AutoencodingEngine`` has no ``quant_conv`` (see
:mod:`kfi_core.model.single_file_keys`). Round trips are therefore bit-exact for sgm ->
diffusers -> sgm always, and for diffusers -> sgm -> diffusers when ``quant_conv`` is the
identity (as in every diffusers conversion of a real SVD checkpoint, and after
:func:`~kfi_core.model.single_file_keys.fold_vae_quant_conv`).

Frame count and attention heads are not stored in the weights. Files written by
:func:`save_single_file` carry the exact diffusers/transformers configs and the frame count
in their safetensors header (``kfi.*`` keys, :data:`METADATA_PREFIX`); for other files
:func:`infer_configs_from_sgm` builds the configs from tensor shapes with SVD's head width
(64 channels per UNet head, 80 per ViT-H/14 head), and :func:`load_single_file` takes the
frame count from the ``num_frames`` argument or, failing that, guesses it from the file name.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

from kfi_core import __version__
from kfi_core.errors import CheckpointFormatError, ModelFileError
from kfi_core.files import atomic_file
from kfi_core.model.single_file_keys import (
    clip_blocks,
    fold_vae_quant_conv,
    identity_quant_conv,
    is_identity_quant_conv,
    key_indices,
    rename_keys,
    unet_blocks,
    unet_layout_from_diffusers,
    unet_layout_from_sgm,
    vae_blocks,
    vae_layout,
)
from kfi_core.model.tiny import SVD_FEATURE_EXTRACTOR_CONFIG, SVD_SCHEDULER_CONFIG

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- constants

SGM_PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "image_encoder": "conditioner.embedders.0.open_clip.model.visual.",
}

# Keys that only an SVD sgm checkpoint has: the UNet's first conv, a temporal (video) resnet in
# the UNet and the VAE's temporal decoder (the same key ComfyUI uses to pick its video VAE).
SGM_SENTINEL_KEYS = (
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.input_blocks.1.0.time_stack.in_layers.0.weight",
    "first_stage_model.decoder.mid.block_1.mix_factor",
)

# sgm keys that are skipped without error, with the reason. SVD's conditioner also holds the
# fps / motion-bucket / noise-augmentation embedders (no parameters), and training checkpoints
# may carry a copy of the VAE encoder used to encode the conditioning frame
# (``VideoPredictionEmbedderWithEncoder``) and OpenCLIP's text-tower leftovers
# (``logit_scale``, text transformer). Inference uses none of them: the pipeline encodes the
# conditioning frame with ``first_stage_model`` and embeds the image with the visual tower.
IGNORED_SGM_KEY_PATTERNS = (
    r"^conditioner\.embedders\.0\.open_clip\.model\.(?!visual\.)",  # OpenCLIP text-tower leftovers
    r"^conditioner\.embedders\.[1-9][0-9]*\.",  # other embedders (conditioning-frame VAE copy)
)

METADATA_PREFIX = "kfi."
METADATA_FORMAT = "kfi.format"
METADATA_FORMAT_VALUE = "svd-sgm-single-file"
METADATA_VERSION = "kfi.format_version"
METADATA_VERSION_VALUE = "1"

# Defaults for what the weights do not say (stabilityai/stable-video-diffusion-img2vid(-xt)).
SVD_UNET_HEAD_DIM = 64  # channels per attention head in the UNet: heads (5, 10, 20, 20)
OPEN_CLIP_HEAD_DIM_BY_WIDTH = {1280: 80}  # ViT-H/14: width 1280, 16 heads of 80
DEFAULT_CLIP_HEAD_DIM = 64  # open_clip's default head_width
SVD_UNET_SAMPLE_SIZE = 96
SVD_VAE_SAMPLE_SIZE = 768
SVD_VAE_SCALING_FACTOR = 0.18215
SVD_FRAMES = 14
SVD_XT_FRAMES = 25

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")

# Fields of CLIPVisionConfig written to the metadata (the rest are training-only or derived).
CLIP_CONFIG_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "projection_dim",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
    "attention_dropout",
    "initializer_range",
    "initializer_factor",
)

# --------------------------------------------------------------------------- public conversion


def is_svd_sgm_checkpoint(keys: Iterable[str]) -> bool:
    """True when keys (of a single-file checkpoint) are those of an SVD img2vid sgm checkpoint."""
    keys = set(keys)
    return all(k in keys for k in SGM_SENTINEL_KEYS)


def _split_components(state_dict: Mapping, source: str) -> tuple:
    parts = {name: {} for name in SGM_PREFIXES}
    ignored, unknown = [], []
    ignored_rx = [re.compile(p) for p in IGNORED_SGM_KEY_PATTERNS]
    for key, tensor in state_dict.items():
        for name, prefix in SGM_PREFIXES.items():
            if key.startswith(prefix):
                parts[name][key[len(prefix) :]] = tensor
                break
        else:
            if any(rx.match(key) for rx in ignored_rx):
                ignored.append(key)
            else:
                unknown.append(key)
    if unknown:
        raise CheckpointFormatError(
            f"{source}: {len(unknown)} key(s) outside the UNet, VAE and image encoder that the SVD converter does "
            f"not know, e.g. {', '.join(map(repr, sorted(unknown)[:5]))}. Expected only keys under "
            f"{', '.join(SGM_PREFIXES.values())} (and ignored conditioner keys)."
        )
    for name, part in parts.items():
        if not part:
            raise CheckpointFormatError(
                f"{source}: no {name} weights (no key starts with {SGM_PREFIXES[name]!r}). A single-file SVD "
                "checkpoint holds the UNet, the VAE and the image encoder; this file lacks one of them."
            )
    if ignored:
        logger.info(
            "%s: ignored %d conditioner key(s) not used for inference (e.g. %s)", source, len(ignored), ignored[0]
        )
    return parts


def convert_sgm_to_diffusers(state_dict: Mapping, *, source: str = "checkpoint") -> dict:
    """Convert an SVD sgm state dict to ``{"unet": ..., "vae": ..., "image_encoder": ...}`` state dicts
    in diffusers / transformers naming. Tensors are shared where no change is needed.

    Raises :class:`CheckpointFormatError` for keys no rule knows (``source`` names the file in messages).
    """
    parts = _split_components(state_dict, source)
    unet_keys = list(parts["unet"])
    unet = rename_keys(parts["unet"], unet_blocks(unet_layout_from_sgm(unet_keys, source)), True, "UNet", source)
    vae_keys = list(parts["vae"])
    vae = rename_keys(parts["vae"], vae_blocks(vae_layout(vae_keys, True, source)), True, "VAE", source)
    if "encoder.conv_out.weight" not in vae:
        raise CheckpointFormatError(f"{source}: the VAE has no 'encoder.conv_out.weight'; the file is incomplete.")
    # sgm's AutoencodingEngine has no quant_conv: diffusers' one must be the identity.
    vae["quant_conv.weight"], vae["quant_conv.bias"] = identity_quant_conv(vae["encoder.conv_out.bias"])
    image_encoder = rename_keys(parts["image_encoder"], clip_blocks(), True, "image encoder", source)
    return {"unet": unet, "vae": vae, "image_encoder": image_encoder}


def convert_diffusers_to_sgm(unet_sd: Mapping, vae_sd: Mapping, image_encoder_sd: Mapping) -> dict:
    """The inverse of :func:`convert_sgm_to_diffusers`: one sgm-layout state dict.

    A ``quant_conv`` that is not the identity is folded into ``encoder.conv_out``
    (:func:`fold_vae_quant_conv`), since sgm files (and ComfyUI) have no place for it.
    """
    source = "diffusers components"
    vae_sd = dict(vae_sd)
    if "quant_conv.weight" not in vae_sd or "quant_conv.bias" not in vae_sd:
        raise CheckpointFormatError(f"{source}: the VAE has no quant_conv; is it an AutoencoderKLTemporalDecoder?")
    if not is_identity_quant_conv(vae_sd["quant_conv.weight"], vae_sd["quant_conv.bias"]):
        logger.info("VAE quant_conv is not the identity: folding it into encoder.conv_out for the sgm layout")
        vae_sd = fold_vae_quant_conv(vae_sd)
    del vae_sd["quant_conv.weight"], vae_sd["quant_conv.bias"]

    out = {}
    unet_table = unet_blocks(unet_layout_from_diffusers(list(unet_sd), source))
    vae_table = vae_blocks(vae_layout(list(vae_sd), False, source))
    for name, sd, blocks, what in (
        ("unet", unet_sd, unet_table, "UNet"),
        ("vae", vae_sd, vae_table, "VAE"),
        ("image_encoder", image_encoder_sd, clip_blocks(), "image encoder"),
    ):
        for key, tensor in rename_keys(sd, blocks, False, what, source).items():
            out[SGM_PREFIXES[name] + key] = tensor
    return out


# --------------------------------------------------------------------------- configs


def _need(sd: Mapping, key: str, source: str):
    if key not in sd:
        raise CheckpointFormatError(
            f"{source}: missing key {key!r}, needed to work out the model's shape. The file is incomplete "
            "or not a Stable Video Diffusion img2vid checkpoint."
        )
    return sd[key]


def _count(keys, prefix: str) -> int:
    return len(key_indices(keys, prefix))


def _infer_unet_config(sd: Mapping, head_dim: int, source: str) -> dict:
    p = SGM_PREFIXES["unet"]
    keys = [k[len(p) :] for k in sd if k.startswith(p)]
    local = {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
    layout = unet_layout_from_sgm(keys, source)
    L = layout.layers
    conv_in = _need(local, "input_blocks.0.0.weight", source)
    channels, depths, cross_dim = [], [], None
    for lv in range(layout.levels):
        i = 1 + lv * (L + 1)
        channels.append(int(_need(local, f"input_blocks.{i}.0.out_layers.3.weight", source).shape[0]))
        if layout.down_attn[lv]:
            depths.append(_count(keys, f"input_blocks.{i}.1.transformer_blocks."))
            if cross_dim is None:
                cross_dim = int(
                    _need(local, f"input_blocks.{i}.1.transformer_blocks.0.attn2.to_k.weight", source).shape[1]
                )
        else:
            depths.append(None)
    mid_depth = _count(keys, "middle_block.1.transformer_blocks.")
    if mid_depth == 0:
        raise CheckpointFormatError(f"{source}: the UNet middle block has no transformer; not an SVD UNet.")
    if cross_dim is None:
        cross_dim = int(_need(local, "middle_block.1.transformer_blocks.0.attn2.to_k.weight", source).shape[1])
    if depths[-1] not in (None, mid_depth):
        raise CheckpointFormatError(
            f"{source}: the last UNet level has {depths[-1]} transformer layers but the middle block {mid_depth}; "
            "diffusers' UNetSpatioTemporalConditionModel needs them equal."
        )
    depths = [d if d is not None else 1 for d in depths[:-1]] + [mid_depth]
    heads = []
    for c in channels:
        if c % head_dim:
            raise CheckpointFormatError(
                f"{source}: UNet width {c} is not a multiple of the attention head width {head_dim}. Pass the "
                "model's head width (head_dim=...) or load a file written by KFI, which records it."
            )
        heads.append(c // head_dim)
    adm = int(_need(local, "label_emb.0.0.weight", source).shape[1])
    if adm % 3:
        raise CheckpointFormatError(
            f"{source}: the UNet's added-time embedding takes {adm} inputs, not 3 x (fps, motion bucket, noise "
            "augmentation) embeddings; not an SVD img2vid UNet."
        )
    return {
        "sample_size": SVD_UNET_SAMPLE_SIZE,
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(_need(local, "out.2.weight", source).shape[0]),
        "down_block_types": [
            "CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in layout.down_attn
        ],
        "up_block_types": ["CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for a in layout.up_attn],
        "block_out_channels": channels,
        "addition_time_embed_dim": adm // 3,
        "projection_class_embeddings_input_dim": adm,
        "layers_per_block": L,
        "cross_attention_dim": cross_dim,
        "transformer_layers_per_block": depths,
        "num_attention_heads": heads,
        "num_frames": None,  # not in the weights: the loader fills it in
    }


def _infer_vae_config(sd: Mapping, source: str) -> dict:
    p = SGM_PREFIXES["vae"]
    local = {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
    layout = vae_layout(list(local), True, source)
    channels = [
        int(_need(local, f"encoder.down.{i}.block.{layout.layers - 1}.conv2.weight", source).shape[0])
        for i in range(layout.levels)
    ]
    return {
        "in_channels": int(_need(local, "encoder.conv_in.weight", source).shape[1]),
        "out_channels": int(_need(local, "decoder.conv_out.weight", source).shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * layout.levels,
        "block_out_channels": channels,
        "layers_per_block": layout.layers,
        "latent_channels": int(_need(local, "decoder.conv_in.weight", source).shape[1]),
        "sample_size": SVD_VAE_SAMPLE_SIZE,
        "scaling_factor": SVD_VAE_SCALING_FACTOR,
        "force_upcast": True,
    }


def _infer_clip_config(sd: Mapping, head_dim: int | None, source: str) -> dict:
    p = SGM_PREFIXES["image_encoder"]
    local = {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
    width = int(_need(local, "class_embedding", source).shape[0])
    conv1 = _need(local, "conv1.weight", source)
    patch = int(conv1.shape[-1])
    positions = int(_need(local, "positional_embedding", source).shape[0])
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise CheckpointFormatError(f"{source}: image encoder has {positions} positions, not 1 + a square grid.")
    if head_dim is None:
        head_dim = OPEN_CLIP_HEAD_DIM_BY_WIDTH.get(width, DEFAULT_CLIP_HEAD_DIM)
    if width % head_dim:
        raise CheckpointFormatError(
            f"{source}: image encoder width {width} is not a multiple of the head width {head_dim}. Pass "
            "clip_head_dim=... or load a file written by KFI, which records it."
        )
    return {
        "hidden_size": width,
        "intermediate_size": int(_need(local, "transformer.resblocks.0.mlp.c_fc.weight", source).shape[0]),
        "projection_dim": int(_need(local, "proj", source).shape[1]),
        "num_hidden_layers": _count(local, "transformer.resblocks."),
        "num_attention_heads": width // head_dim,
        "num_channels": int(conv1.shape[1]),
        "image_size": grid * patch,
        "patch_size": patch,
        "hidden_act": "gelu",  # OpenCLIP ViT-H uses exact GELU
        "layer_norm_eps": 1e-5,
    }


def read_kfi_metadata(metadata: Mapping | None) -> dict:
    """Parse the ``kfi.*`` entries of a safetensors header: configs and frame count, or {}."""
    if not metadata or metadata.get(METADATA_FORMAT) != METADATA_FORMAT_VALUE:
        return {}
    out = {}
    try:
        for name in ("unet", "vae", "image_encoder"):
            if f"kfi.{name}_config" in metadata:
                out[name] = json.loads(metadata[f"kfi.{name}_config"])
        if "kfi.num_frames" in metadata:
            out["num_frames"] = int(metadata["kfi.num_frames"])
    except (ValueError, TypeError) as exc:
        raise CheckpointFormatError(f"the file's kfi.* metadata is unreadable ({exc}); write it again.") from None
    return out


def infer_configs_from_sgm(
    state_dict: Mapping,
    *,
    metadata: Mapping | None = None,
    head_dim: int = SVD_UNET_HEAD_DIM,
    clip_head_dim: int | None = None,
    source: str = "checkpoint",
) -> dict:
    """Build ``dict(unet=..., vae=..., image_encoder=..., num_frames=...)`` for an sgm state dict.

    A file written by :func:`save_single_file` records the exact configs and frame count in its
    ``kfi.*`` metadata, and those win. Otherwise configs come from tensor shapes; what shapes
    cannot tell is taken from SVD: ``head_dim`` channels per UNet attention head (64; SVD has
    heads (5, 10, 20, 20)), ``clip_head_dim`` per image-encoder head (80 for ViT-H/14's width
    1280, else 64), sample sizes 96 (UNet) / 768 (VAE), VAE scaling factor 0.18215.

    ``num_frames`` is not in the weights: it is the metadata's value or None, in which case
    the caller must ask the user (or guess from the file name, as :func:`load_single_file` does).
    The UNet config's ``num_frames`` is the same value.
    """
    meta = read_kfi_metadata(metadata)
    configs = {
        "unet": meta.get("unet") or _infer_unet_config(state_dict, head_dim, source),
        "vae": meta.get("vae") or _infer_vae_config(state_dict, source),
        "image_encoder": meta.get("image_encoder") or _infer_clip_config(state_dict, clip_head_dim, source),
        "num_frames": meta.get("num_frames"),
    }
    configs["unet"] = {**configs["unet"], "num_frames": configs["num_frames"]}
    return configs


def _public_config(config: Mapping) -> dict:
    """A JSON-able copy of a diffusers config without its private ``_*`` entries."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


# --------------------------------------------------------------------------- files


# svd_xt.safetensors' header is well under 1 MiB; anything far beyond is not a checkpoint
MAX_HEADER_BYTES = 64 * 2**20


def _check_safetensors_file(path: Path) -> None:
    """Refuse pickles and check the header and the data length before any tensor is read."""
    name = path.name
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file. Put the checkpoint in ComfyUI's models/checkpoints folder.")
    with open(path, "rb") as f:
        head = f.read(8)
        if path.suffix.lower() in PICKLE_SUFFIXES or head[:2] == b"PK" or head[:1] == b"\x80":
            raise ModelFileError(
                f"{name}: this is a pickle (.ckpt/.pt/.pth/.bin) checkpoint. KFI loads safetensors only, because "
                "pickle files can run code when loaded. Convert it to .safetensors (e.g. torch.load it in a "
                "trusted environment and save it with safetensors.torch.save_file) and load that file."
            )
        size = path.stat().st_size
        if len(head) < 8:
            raise ModelFileError(f"{name}: {size} bytes, too short for a safetensors file. Download it again.")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_HEADER_BYTES:
            raise ModelFileError(
                f"{name}: the safetensors header claims {header_len} bytes, more than the {MAX_HEADER_BYTES} a "
                "checkpoint needs; the file is corrupt or not a model. Download it again."
            )
        if header_len > size - 8:
            raise ModelFileError(
                f"{name}: header claims {header_len} bytes but the file has {size}: the file is truncated or not "
                "safetensors. Download it again."
            )
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            raise ModelFileError(
                f"{name}: the safetensors header is not valid JSON: the file is corrupt. Download it again."
            ) from None
    ends = [
        v["data_offsets"][1]
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    needed = 8 + header_len + max(ends, default=0)
    if needed > size:
        raise ModelFileError(
            f"{name}: the file is truncated ({size} bytes, its header needs {needed}). Download it again."
        )


def read_single_file(path: str | os.PathLike) -> tuple:
    """Read a safetensors checkpoint: ``(state_dict, metadata)``; ModelFileError on a bad file."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    _check_safetensors_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path.name}: cannot read it as safetensors ({exc}). Download it again.") from None
    return state_dict, metadata


def _frames_from_name(path: Path) -> int:
    """25 (SVD-XT) when the file name has 'xt' as a word (svd_xt, svd-xt-1-1), else 14 (SVD)."""
    return SVD_XT_FRAMES if re.search(r"(^|[^a-z])xt([^a-z]|$)", path.stem.lower()) else SVD_FRAMES


def _check_and_assign(module, sd: Mapping, component: str, path: Path) -> None:
    """Strict load with a complete, readable check first: every parameter, right shape."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} parameter(s), e.g. {', '.join(map(repr, missing[:5]))}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} parameter(s), e.g. {', '.join(map(repr, unexpected[:5]))}")
        raise CheckpointFormatError(
            f"{path.name}: the {component} does not match its config: {'; '.join(parts)}. The file is incomplete, "
            "or its configs (kfi.* metadata, or the shapes KFI inferred) describe another model."
        )
    for key, ref in expected.items():
        got = sd[key]
        if tuple(got.shape) != tuple(ref.shape):
            raise CheckpointFormatError(
                f"{path.name}: {component} parameter {key!r}: expected shape {tuple(ref.shape)} from the config, "
                f"got {tuple(got.shape)} in the file. The file does not match its config; write it again "
                "(or pass head_dim=... if the config was inferred)."
            )
    module.load_state_dict(dict(sd), strict=True, assign=True)


def load_single_file(
    path: str | os.PathLike,
    *,
    num_frames: int | None = None,
    head_dim: int = SVD_UNET_HEAD_DIM,
    clip_head_dim: int | None = None,
) -> dict:
    """Load a single-file SVD img2vid checkpoint (sgm layout, safetensors) as diffusers components.

    Returns ``unet``, ``vae``, ``image_encoder`` (strictly loaded, in eval mode, in the file's
    dtype), ``scheduler``, ``feature_extractor`` and ``num_frames``. The frame count comes from
    the file's ``kfi.*`` metadata, else ``num_frames``, else the file name (25 for "xt", 14).
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    path = Path(path)
    state_dict, metadata = read_single_file(path)
    if not is_svd_sgm_checkpoint(state_dict):
        missing = [k for k in SGM_SENTINEL_KEYS if k not in state_dict]
        raise CheckpointFormatError(
            f"{path.name}: not a single-file Stable Video Diffusion img2vid checkpoint (no {missing[0]!r}). "
            "KFI loads SVD / SVD-XT files in Stability's layout, or diffusers folders."
        )
    try:
        configs = infer_configs_from_sgm(
            state_dict, metadata=metadata, head_dim=head_dim, clip_head_dim=clip_head_dim, source=path.name
        )
    except CheckpointFormatError as exc:
        if str(exc).startswith(path.name):
            raise
        raise CheckpointFormatError(f"{path.name}: {exc}") from None
    sds = convert_sgm_to_diffusers(state_dict, source=path.name)
    del state_dict

    frames = configs["num_frames"]
    if frames is not None:
        if num_frames is not None and num_frames != frames:
            logger.warning("%s: the file records %d frames; ignoring num_frames=%d", path.name, frames, num_frames)
    elif num_frames is not None:
        frames = int(num_frames)
    else:
        frames = _frames_from_name(path)
        logger.info(
            "%s: the file does not record its frame count; assuming %d from the file name (25 if it contains "
            "'xt', else 14). Pass num_frames=... to override.",
            path.name,
            frames,
        )

    with init_empty_weights(include_buffers=False):
        unet = UNetSpatioTemporalConditionModel.from_config({**configs["unet"], "num_frames": frames})
        vae = AutoencoderKLTemporalDecoder.from_config(configs["vae"])
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**configs["image_encoder"]))
    for module, name in ((unet, "unet"), (vae, "vae"), (image_encoder, "image_encoder")):
        _check_and_assign(module, sds[name], name, path)
        module.eval()
        leftover = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
        if leftover:  # cannot happen after a strict load; a guard against silent meta tensors
            raise CheckpointFormatError(f"{path.name}: {name} tensors left uninitialised: {leftover[:5]}")
    dtype = next(unet.parameters()).dtype
    logger.info("loaded %s: SVD single file, %d frames, %s", path.name, frames, str(dtype).replace("torch.", ""))
    return {
        "unet": unet,
        "vae": vae,
        "image_encoder": image_encoder,
        "scheduler": EulerDiscreteScheduler.from_config(SVD_SCHEDULER_CONFIG),
        "feature_extractor": CLIPImageProcessor(**SVD_FEATURE_EXTRACTOR_CONFIG),
        "num_frames": frames,
    }


def save_single_file(components: Mapping, path: str | os.PathLike, *, num_frames: int) -> Path:
    """Write ``components`` (``unet``, ``vae``, ``image_encoder`` modules) as one sgm-layout
    safetensors file with ``kfi.*`` metadata (exact configs and frame count). The file is written
    next to ``path`` and renamed into place, so a crash leaves no half-written checkpoint.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelFileError(f"{path.name}: single-file checkpoints are written as .safetensors; change the name.")
    if int(num_frames) < 1:
        raise ModelFileError(f"num_frames: got {num_frames}; give the frame count the model was made for (14, 25).")
    unet, vae, image_encoder = components["unet"], components["vae"], components["image_encoder"]
    sd = convert_diffusers_to_sgm(unet.state_dict(), vae.state_dict(), image_encoder.state_dict())
    sd = {k: v.detach().contiguous() for k, v in sd.items()}
    clip_config = image_encoder.config.to_dict()
    metadata = {
        METADATA_FORMAT: METADATA_FORMAT_VALUE,
        METADATA_VERSION: METADATA_VERSION_VALUE,
        "kfi.library_version": __version__,
        "kfi.num_frames": str(int(num_frames)),
        "kfi.unet_config": json.dumps({**_public_config(unet.config), "num_frames": int(num_frames)}),
        "kfi.vae_config": json.dumps(_public_config(vae.config)),
        "kfi.image_encoder_config": json.dumps({k: clip_config[k] for k in CLIP_CONFIG_FIELDS if k in clip_config}),
    }
    with atomic_file(path) as tmp:
        save_file(sd, str(tmp), metadata=metadata)
    logger.info("wrote SVD single file %s (%d tensors, %d frames)", path, len(sd), num_frames)
    return path
