"""The KFI adapter file: LoRA weights + the 12-channel conv_in in one ``.safetensors`` file.

Layout (safetensors, no pickle ever)::

    conv_in.weight                                   [C, 12, 3, 3]   whole widened conv, not only channels 8..12
    conv_in.bias                                     [C]
    <module>.lora_A.weight                           [rank, in]      e.g. down_blocks.0.attentions.0.
    <module>.lora_B.weight                           [out, rank]          transformer_blocks.0.attn1.to_q.lora_A.weight

Tensor keys are the UNet's module names without peft's adapter name (``.default``), so the
file reads like peft's own ``adapter_model.safetensors`` of a bare UNet. String metadata
(``__metadata__``), all keys prefixed ``kfi.``:

    format "kfi-adapter", format_version "1", version (kfi_core's), base_variant,
    base_num_frames, base_fingerprint (hash of :data:`FINGERPRINT_FIELDS` of the UNet config),
    base_architecture (those fields as JSON, to say what differs), lora_rank, lora_alpha,
    lora_target_modules (JSON list), in_channels "12", training_resolution (JSON [h, w], optional).

Format version 2 added ``reference_attention`` (an attention option measured to gain nothing, since removed): such a
file is refused with that reason, never run without the attention it was trained with.

:func:`read_adapter_metadata` reads only the header (bounded: :data:`MAX_HEADER_BYTES`) and
checks the file is complete; :func:`load_adapter` checks base, rank, keys and shapes before
touching the UNet, then widens conv_in, injects LoRA and copies every tensor (strict: every
key used, none missing, every shape equal).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from kfi_core import __version__
from kfi_core.errors import (
    AdapterMismatchError,
    CheckpointFormatError,
    KfiError,
    LoraError,
    ModelFileError,
    UnknownNameError,
    UnsupportedSizeError,
)
from kfi_core.files import atomic_file
from kfi_core.model.conv_in import KFI_IN_CHANNELS, check_conv_in, expand_conv_in
from kfi_core.model.lora import (
    LoraSettings,
    add_lora,
    check_lora_settings,
    expected_lora_shapes,
    get_lora_settings,
    lora_layers,
    lora_state_dict,
)

logger = logging.getLogger(__name__)

ADAPTER_FORMAT = "kfi-adapter"
ADAPTER_FORMAT_VERSION = 1  # the one this KFI writes and reads (version 2: reference attention, removed)
ADAPTER_SUFFIX = ".safetensors"
MAX_HEADER_BYTES = 1 << 20  # a KFI adapter header is ~100 KB for svd-xt; refuse anything past 1 MiB unread
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
CONV_IN_KEYS = ("conv_in.weight", "conv_in.bias")
# UNet config fields that fix weight shapes (and the head split): two UNets with equal values take the same adapter.
# in_channels is left out (8 before widening, 12 after), and so are num_frames and sample_size (no weight
# depends on them).
FINGERPRINT_FIELDS = (
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
    "layers_per_block",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "num_attention_heads",
)
_MISSING = "<missing>"


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter file says about itself (from its header; no tensor data read)."""

    path: Path
    format_version: int
    kfi_version: str
    base_variant: str
    num_frames: int
    base_fingerprint: str
    base_architecture: dict
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    in_channels: int
    training_resolution: tuple[int, int] | None
    tensor_shapes: dict[str, tuple[int, ...]] = field(repr=False)

    @property
    def lora_settings(self):

        return LoraSettings(rank=self.rank, alpha=self.alpha, target_modules=self.target_modules)


# --------------------------------------------------------------------------- fingerprint


def base_architecture(unet_config) -> dict:
    """The :data:`FINGERPRINT_FIELDS` of a UNet config, JSON-ready (tuples as lists)."""
    config = dict(unet_config)
    return {
        name: (list(config[name]) if isinstance(config.get(name), (list, tuple)) else config.get(name, _MISSING))
        for name in FINGERPRINT_FIELDS
    }


def architecture_fingerprint(unet_config) -> str:
    """Short hash of the weight-shaping UNet config fields (16 hex digits)."""
    text = json.dumps(base_architecture(unet_config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- save


def _check_save_args(path: Path, base_variant, num_frames, training_resolution) -> None:
    if path.suffix.lower() != ADAPTER_SUFFIX:
        raise ModelFileError(
            f"adapter path {path}: KFI adapters are safetensors files; name it {path.with_suffix(ADAPTER_SUFFIX).name}."
        )
    if not isinstance(base_variant, str) or not base_variant.strip():
        raise UnknownNameError(
            f"base_variant: got {base_variant!r}; give the base model's variant name, e.g. 'svd-xt' or 'svd'."
        )
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise UnsupportedSizeError(
            f"num_frames: got {num_frames!r}; give the base model's frame count (25 for svd-xt, 14 for svd)."
        )
    if training_resolution is not None:
        ok = (
            isinstance(training_resolution, (tuple, list))
            and len(training_resolution) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in training_resolution)
        )
        if not ok:
            raise UnsupportedSizeError(
                f"training_resolution: got {training_resolution!r}; give (height, width) "
                "in pixels, e.g. (576, 1024), or None."
            )


def save_adapter(
    unet, path, *, base_variant: str, num_frames: int, training_resolution: tuple[int, int] | None = None
) -> Path:
    """Write the LoRA and conv_in of ``unet`` to ``path`` (a ``.safetensors`` file); return the path.

    The file is written to a temporary name next to ``path`` and renamed into place, so a crash
    never leaves a partial adapter. Tensors are saved in their own dtype, on CPU.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    _check_save_args(path, base_variant, num_frames, training_resolution)
    settings = get_lora_settings(unet)
    if settings is None:
        raise LoraError(
            f"save_adapter {path}: the UNet has no LoRA layers. Call add_lora(unet) (and train) or "
            "load_adapter(unet, ...) first."
        )
    channels = check_conv_in(unet)
    if channels != KFI_IN_CHANNELS:
        raise LoraError(
            f"save_adapter {path}: conv_in takes {channels} input channels, a KFI UNet takes "
            f"{KFI_IN_CHANNELS}. Call expand_conv_in(unet) before training and saving."
        )
    config_frames = unet.config.get("num_frames")
    if config_frames is not None and config_frames != num_frames:
        logger.warning(
            "save_adapter: num_frames=%d but the UNet config says %d frames; the adapter records %d",
            num_frames,
            config_frames,
            num_frames,
        )

    tensors = {}
    with torch.no_grad():
        for key, tensor in lora_state_dict(unet).items():
            tensors[key] = tensor.detach().to("cpu").contiguous().clone()
        tensors["conv_in.weight"] = unet.conv_in.weight.detach().to("cpu").contiguous().clone()
        tensors["conv_in.bias"] = unet.conv_in.bias.detach().to("cpu").contiguous().clone()
    metadata = {
        "kfi.format": ADAPTER_FORMAT,
        "kfi.format_version": str(ADAPTER_FORMAT_VERSION),
        "kfi.version": __version__,
        "kfi.base_variant": base_variant,
        "kfi.base_num_frames": str(num_frames),
        "kfi.base_fingerprint": architecture_fingerprint(unet.config),
        "kfi.base_architecture": json.dumps(base_architecture(unet.config), sort_keys=True),
        "kfi.lora_rank": str(settings.rank),
        "kfi.lora_alpha": repr(float(settings.alpha)),
        "kfi.lora_target_modules": json.dumps(list(settings.target_modules)),
        "kfi.in_channels": str(KFI_IN_CHANNELS),
    }
    if training_resolution is not None:
        metadata["kfi.training_resolution"] = json.dumps([int(v) for v in training_resolution])

    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    logger.info(
        "saved KFI adapter (%s, %d frames, LoRA rank %d, %d tensors) to %s",
        base_variant,
        num_frames,
        settings.rank,
        len(tensors),
        path,
    )
    return path


# --------------------------------------------------------------------------- read


def _looks_like_pickle(head: bytes) -> bool:
    # torch.save (zip container) or a raw pickle stream (PROTO opcode 0x80 and protocol 2..5).
    return head[:4] == b"PK\x03\x04" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _pickle_error(path: Path) -> ModelFileError:
    return ModelFileError(
        f"adapter {path}: this is a pickle file (torch.save / .pt / .pth / .ckpt / .bin); KFI never loads pickles "
        "because they can run code. Convert it to safetensors (load it yourself in a trusted environment and "
        "write it with safetensors.torch.save_file), or re-export the adapter with save_adapter."
    )


def _read_header(path: Path) -> tuple[dict, int]:
    """The safetensors header dict and the file size; raise ModelFileError for anything that is not one."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise _pickle_error(path)
    if not path.is_file():
        raise ModelFileError(f"adapter {path}: no such file. Check the path, or pick a file from the loras folder.")
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(9)
        if len(head) < 9:
            raise ModelFileError(
                f"adapter {path}: the file is {size} bytes, too short for a safetensors file "
                "(truncated or empty). Copy or download it again."
            )
        header_len = int.from_bytes(head[:8], "little")
        plausible = 2 <= header_len <= MAX_HEADER_BYTES and 8 + header_len <= size and head[8:9] == b"{"
        if not plausible:
            if _looks_like_pickle(head):
                raise _pickle_error(path)
            if header_len > MAX_HEADER_BYTES:
                raise ModelFileError(
                    f"adapter {path}: the safetensors header claims {header_len} bytes, over KFI's limit of "
                    f"{MAX_HEADER_BYTES} bytes (a KFI adapter's header is far smaller). It is not a KFI adapter or "
                    "it is damaged; re-export it with save_adapter."
                )
            if 8 + header_len > size:
                raise ModelFileError(
                    f"adapter {path}: truncated: the header alone needs {8 + header_len} bytes but the file has "
                    f"{size}. Copy or download it again."
                )
            raise ModelFileError(
                f"adapter {path}: not a safetensors file (no JSON header). Give a KFI adapter "
                ".safetensors file written by save_adapter."
            )
        raw = head[8:] + fh.read(header_len - 1)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(
            f"adapter {path}: the safetensors header is not valid JSON ({err}); the file is "
            "damaged. Copy or re-export it."
        ) from err
    if not isinstance(header, dict):
        raise ModelFileError(f"adapter {path}: the safetensors header is not a JSON object; the file is damaged.")
    data_len = size - 8 - header_len
    needed = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, end = entry["data_offsets"]
            needed = max(needed, int(end))
        except (TypeError, KeyError, ValueError) as err:
            raise ModelFileError(
                f"adapter {path}: tensor {key} has no valid data_offsets in the header; the file "
                "is damaged. Re-export it with save_adapter."
            ) from err
    if needed > data_len:
        raise ModelFileError(
            f"adapter {path}: truncated: the header needs {needed} bytes of tensor data but the file holds "
            f"{data_len} ({size} bytes in all). Copy or download it again."
        )
    if needed < data_len:
        raise ModelFileError(
            f"adapter {path}: {data_len - needed} bytes after the last tensor; the file is damaged or not "
            "written by safetensors. Re-export it with save_adapter."
        )
    return header, size


def _check_is_kfi_adapter(path: Path, header: dict, metadata: dict) -> None:
    if metadata.get("kfi.format") != ADAPTER_FORMAT:
        lora_like = sum(1 for key in header if ".lora_" in key or "lora_up" in key or "lora_down" in key)
        hint = (
            f" It holds {lora_like} LoRA tensors but no KFI metadata: a plain LoRA is not a KFI adapter (KFI "
            "also needs the 12-channel conv_in)."
            if lora_like
            else ""
        )
        raise ModelFileError(
            f"adapter {path}: not a KFI adapter (metadata kfi.format is "
            f"{metadata.get('kfi.format', 'absent')!r}, expected {ADAPTER_FORMAT!r}).{hint} Give a file written by "
            "KFI's save_adapter / training script."
        )


def _check_format_version(path: Path, metadata: dict, version: int) -> None:
    """Format 1 loads; 2 (reference attention, removed) and newer ones are refused with the reason."""
    written_by = metadata.get("kfi.version", "?")
    if "kfi.reference_attention" in metadata or version == 2:
        raise AdapterMismatchError(
            f"adapter {path}: trained with reference_attention (format version {version}), an option that was "
            "measured to gain nothing and removed from KFI; this KFI would run it without the attention it was "
            f"trained with. Load it with kfi_core {written_by}, which wrote it, or train the adapter again without "
            "reference_attention."
        )
    if version > ADAPTER_FORMAT_VERSION:
        raise AdapterMismatchError(
            f"adapter {path}: format version {version} is newer than this KFI reads (version "
            f"{ADAPTER_FORMAT_VERSION}); it was written by kfi_core {written_by}. Update KFI to load it."
        )
    if version < 1:
        raise ModelFileError(f"adapter {path}: format version {version} does not exist; the file is damaged.")


def read_adapter_metadata(path) -> AdapterInfo:
    """Read and check an adapter's header only (cheap, bounded by :data:`MAX_HEADER_BYTES`)."""

    path = Path(path)
    header, _ = _read_header(path)
    metadata = header.get("__metadata__") or {}
    _check_is_kfi_adapter(path, header, metadata)

    def get(name: str) -> str:
        value = metadata.get(f"kfi.{name}")
        if value is None:
            raise ModelFileError(
                f"adapter {path}: metadata kfi.{name} is missing; the file is damaged or was "
                "edited. Re-export it with save_adapter."
            )
        return value

    def parse(name: str, convert):
        value = get(name)
        try:
            return convert(value)
        except (ValueError, TypeError) as err:
            raise ModelFileError(
                f"adapter {path}: metadata kfi.{name} = {value!r} cannot be read ({err}); "
                "the file is damaged. Re-export it with save_adapter."
            ) from err

    version = parse("format_version", int)
    _check_format_version(path, metadata, version)

    def json_list(value):
        loaded = json.loads(value)
        if not isinstance(loaded, list):
            raise ValueError("expected a JSON list")
        return loaded

    resolution = None
    if "kfi.training_resolution" in metadata:
        resolution = parse("training_resolution", lambda v: tuple(int(x) for x in json_list(v)))
    architecture = parse("base_architecture", json.loads)
    try:
        settings = check_lora_settings(
            parse("lora_rank", int), parse("lora_alpha", float), tuple(parse("lora_target_modules", json_list))
        )
    except KfiError as err:
        raise ModelFileError(f"adapter {path}: its LoRA metadata is invalid: {err}") from err
    shapes = {key: tuple(entry.get("shape", ())) for key, entry in header.items() if key != "__metadata__"}
    return AdapterInfo(
        path=path,
        format_version=version,
        kfi_version=metadata.get("kfi.version", "?"),
        base_variant=get("base_variant"),
        num_frames=parse("base_num_frames", int),
        base_fingerprint=get("base_fingerprint"),
        base_architecture=architecture if isinstance(architecture, dict) else {},
        rank=settings.rank,
        alpha=settings.alpha,
        target_modules=settings.target_modules,
        in_channels=parse("in_channels", int),
        training_resolution=resolution,
        tensor_shapes=shapes,
    )


# --------------------------------------------------------------------------- load


def check_adapter_base(info: AdapterInfo, unet, *, base_variant: str, num_frames: int, rank: int | None = None) -> None:
    """Raise :class:`AdapterMismatchError` if ``info`` was made for another base, frame count or rank."""

    path = info.path
    if info.base_variant == base_variant and info.num_frames != num_frames:
        raise AdapterMismatchError(
            f"adapter {path}: made for {base_variant!r} with {info.num_frames} frames, but the loaded base takes "
            f"{num_frames} frames. Load the base with {info.num_frames} frames (a single file: set frames / --frames "
            f"to {info.num_frames}), or pick an adapter trained for {num_frames} frames."
        )
    if info.base_variant != base_variant or info.num_frames != num_frames:
        raise AdapterMismatchError(
            f"adapter {path}: made for base {info.base_variant!r} with {info.num_frames} frames, but the loaded "
            f"base is {base_variant!r} with {num_frames} frames. Load the {info.base_variant!r} base model, or "
            f"pick an adapter trained for {base_variant!r}."
        )
    fingerprint = architecture_fingerprint(unet.config)
    if info.base_fingerprint != fingerprint:
        ours = base_architecture(unet.config)
        diffs = [
            f"{name}: adapter {info.base_architecture.get(name, _MISSING)} vs UNet {ours[name]}"
            for name in FINGERPRINT_FIELDS
            if info.base_architecture.get(name, _MISSING) != ours[name]
        ]
        raise AdapterMismatchError(
            f"adapter {path}: made for a UNet architecture with fingerprint {info.base_fingerprint}, this UNet's is "
            f"{fingerprint} ({'; '.join(diffs) or 'fields equal, hash differs: the file was edited'}). The "
            f"variant names agree ({base_variant!r}) but the weights would not fit; load the base model the "
            "adapter was trained on."
        )
    if rank is not None and rank != info.rank:
        raise AdapterMismatchError(
            f"adapter {path}: LoRA rank {info.rank}, but rank {rank} was requested. Ask for rank {info.rank} "
            f"(or leave the rank out to use the file's), or use an adapter trained with rank {rank}."
        )
    if info.in_channels != KFI_IN_CHANNELS:
        raise AdapterMismatchError(
            f"adapter {path}: conv_in for {info.in_channels} input channels, KFI uses {KFI_IN_CHANNELS}. "
            "Re-export the adapter with this KFI's save_adapter."
        )


def _check_tensor_layout(info: AdapterInfo, expected: dict[str, tuple[int, ...]]) -> None:
    path = info.path
    got = info.tensor_shapes
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing:
        raise CheckpointFormatError(
            f"adapter {path}: {len(missing)} of {len(expected)} expected tensors are missing (e.g. {missing[0]}). "
            f"For LoRA rank {info.rank} on {list(info.target_modules)} this UNet needs {len(expected)} tensors, the "
            f"file has {len(got)}. The file is incomplete or was made for another UNet; re-export it with "
            "save_adapter."
        )
    if extra:
        raise CheckpointFormatError(
            f"adapter {path}: {len(extra)} unexpected tensors (e.g. {extra[0]}) that this UNet has no place for; "
            f"for LoRA on {list(info.target_modules)} it needs exactly {len(expected)} tensors, the file has "
            f"{len(got)}. The file was made for another UNet or edited; use the adapter made for this base or "
            "re-export it with save_adapter."
        )
    for key in sorted(expected):
        if tuple(got[key]) != tuple(expected[key]):
            raise CheckpointFormatError(
                f"adapter {path}: tensor {key} has shape {list(got[key])}, this UNet needs {list(expected[key])} "
                f"(LoRA rank {info.rank}, conv_in with 12 input channels). The file was made for another UNet or "
                "edited; use the adapter made for this base or re-export it with save_adapter."
            )


def load_adapter(unet, path, *, base_variant: str, num_frames: int, rank: int | None = None) -> AdapterInfo:
    """Load a KFI adapter into ``unet`` (in place): widen conv_in, inject LoRA, copy all tensors strictly.

    Every check (pickle, truncation, format, version, base variant / frames / architecture,
    ``rank`` if given, missing / extra keys, shapes) runs before ``unet`` is modified. A UNet
    that already has LoRA with the file's settings (not merged) gets its weights replaced.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    # 1. Header: format, version, metadata; base and rank.
    info = read_adapter_metadata(path)
    check_adapter_base(info, unet, base_variant=base_variant, num_frames=num_frames, rank=rank)
    settings = info.lora_settings

    # 2. The UNet's state: conv_in 8 or 12 channels; LoRA absent or equal to the file's, not merged.
    check_conv_in(unet)
    existing = get_lora_settings(unet)
    if existing is not None and existing != settings:
        raise AdapterMismatchError(
            f"adapter {path}: the UNet already has LoRA rank {existing.rank} alpha {existing.alpha:g} on "
            f"{list(existing.target_modules)}, the file has rank {settings.rank} alpha {settings.alpha:g} on "
            f"{list(settings.target_modules)}. Load the adapter into a freshly loaded base UNet."
        )
    if existing is not None and any(layer.merged for layer in lora_layers(unet).values()):
        raise LoraError(
            f"adapter {path}: the UNet's LoRA is merged; call unmerge_lora(unet) before loading "
            "another adapter, or load into a freshly loaded base UNet."
        )

    # 3. Keys and shapes, from the header, before reading any tensor data.
    conv = unet.conv_in
    expected = expected_lora_shapes(unet, settings)
    expected["conv_in.weight"] = (conv.out_channels, KFI_IN_CHANNELS, *conv.kernel_size)
    expected["conv_in.bias"] = (conv.out_channels,)
    _check_tensor_layout(info, expected)

    # 4. Tensor data.
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ModelFileError(
            f"adapter {path}: cannot read the tensor data ({err}); the file is damaged. Copy or re-export it."
        ) from err
    not_float = sorted(key for key, tensor in tensors.items() if not tensor.is_floating_point())
    if not_float:
        raise CheckpointFormatError(
            f"adapter {path}: tensor {not_float[0]} has dtype {tensors[not_float[0]].dtype}; "
            "adapter tensors are floating point. Re-export it with save_adapter."
        )

    # 5. Modify the UNet: widen conv_in, inject LoRA, copy every tensor.
    expand_conv_in(unet)
    if existing is None:
        add_lora(unet, settings.rank, settings.alpha, target_modules=settings.target_modules)
    targets = lora_state_dict(unet)
    targets["conv_in.weight"] = unet.conv_in.weight
    targets["conv_in.bias"] = unet.conv_in.bias
    if set(targets) != set(tensors):  # checked above against the same expectation: a bug if it fires
        raise AssertionError(f"adapter keys {len(tensors)} vs model keys {len(targets)}")
    with torch.no_grad():
        for key, param in targets.items():
            param.copy_(tensors[key])
    logger.info(
        "loaded KFI adapter %s (base %s, %d frames, LoRA rank %d, %d tensors)",
        path,
        info.base_variant,
        info.num_frames,
        info.rank,
        len(tensors),
    )
    return info
