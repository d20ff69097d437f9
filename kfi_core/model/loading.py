"""Load the base SVD img2vid model in every form users keep it, plus an optional KFI adapter.

Forms:
- a diffusers folder (``model_index.json`` with unet/, vae/, image_encoder/, scheduler/,
  feature_extractor/), as stabilityai's img2vid and img2vid-xt repositories are laid out;
- a single-file ``.safetensors`` checkpoint with the original (sgm) key names, as
  ``svd.safetensors`` / ``svd_xt.safetensors`` in ComfyUI's ``models/checkpoints``
  (see :mod:`kfi_core.model.single_file`).

Frame count, default resolution and variant come from the loaded config, never assumed.
Only safetensors are read: pickle formats are refused with a message saying how to convert.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kfi_core.errors import ModelFileError, SettingsError, UnknownNameError
from kfi_core.model.adapter import load_adapter
from kfi_core.model.lora import lora_layers
from kfi_core.model.lora import merge_lora as _merge
from kfi_core.model.offload import check_offload, remove_offload, set_offload
from kfi_core.model.single_file import load_single_file

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
COMPONENT_FOLDERS = ("unet", "vae", "image_encoder", "scheduler", "feature_extractor")
# UNet widths of Stability's released SVD img2vid models; other widths are "custom".
SVD_BLOCK_OUT_CHANNELS = (320, 640, 1280, 1280)
VARIANT_BY_FRAMES = {14: "svd", 25: "svd-xt"}


@dataclass
class KfiModel:
    """Everything a KFI run needs, loaded and placed on its device.

    ``unet`` takes 8 input channels (stock SVD, training-free mode) or 12 (KFI adapter).
    """

    unet: Any
    vae: Any
    image_encoder: Any
    feature_extractor: Any
    scheduler_config: dict
    num_frames: int
    variant: str
    source: str
    dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    adapter: Any = None  # kfi_core.model.adapter.AdapterInfo when an adapter is loaded
    offload: str = "none"  # kfi_core.model.offload.OFFLOAD_MODES; set by place_model
    offload_state: Any = field(default=None, repr=False)

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Frame sides must be multiples of this: VAE scale times the UNet's downsampling."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def default_size(self) -> tuple[int, int]:
        """(height, width) the model was made for; SVD's config has a square sample_size,
        and its real default is 576x1024, so the released variants report that."""
        if self.variant in VARIANT_BY_FRAMES.values():
            return 576, 1024
        side = int(self.unet.config.sample_size) * self.vae_scale_factor
        return side, side

    @property
    def lora_rank(self) -> int | None:
        return None if self.adapter is None else int(self.adapter.rank)


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UnknownNameError(f"dtype: got {name!r}; choose one of {', '.join(DTYPES)}.")
    return DTYPES[name]


def variant_for(unet_config: Any, num_frames: int) -> str:
    if tuple(unet_config.block_out_channels) == SVD_BLOCK_OUT_CHANNELS and num_frames in VARIANT_BY_FRAMES:
        return VARIANT_BY_FRAMES[num_frames]
    return "custom"


def check_not_pickle(path: Path, what: str) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelFileError(
            f"{what}: {path.name} is a pickle file ({path.suffix}); KFI loads only .safetensors, because pickle "
            "files can run code when opened. Convert it to .safetensors (for example with safetensors' "
            "`save_file(torch.load(path, weights_only=True), new_path)` in a trusted environment)."
        )


def _load_diffusers_folder(path: Path) -> dict:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    missing = [name for name in COMPONENT_FOLDERS if not (path / name).is_dir()]
    if missing:
        raise ModelFileError(
            f"model: {path} is not a complete SVD img2vid diffusers folder; missing sub-folders: "
            f"{', '.join(missing)}. Give the folder that holds model_index.json with unet/, vae/, image_encoder/, "
            "scheduler/ and feature_extractor/."
        )
    for name in ("unet", "vae", "image_encoder"):
        weights = list((path / name).glob("*.safetensors"))
        if not weights:
            pickles = [p.name for p in (path / name).iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
            hint = f" (found pickle weights: {', '.join(pickles)}; convert them to .safetensors)" if pickles else ""
            raise ModelFileError(f"model: {path / name} has no .safetensors weights{hint}.")
    try:
        unet = UNetSpatioTemporalConditionModel.from_pretrained(path, subfolder="unet", use_safetensors=True)
        vae = AutoencoderKLTemporalDecoder.from_pretrained(path, subfolder="vae", use_safetensors=True)
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(
            path, subfolder="image_encoder", use_safetensors=True
        )
        feature_extractor = CLIPImageProcessor.from_pretrained(path, subfolder="feature_extractor")
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelFileError(f"model: could not load the diffusers folder {path}: {err}") from err
    scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    return {
        "unet": unet,
        "vae": vae,
        "image_encoder": image_encoder,
        "feature_extractor": feature_extractor,
        "scheduler_config": scheduler_config,
        "num_frames": int(unet.config.num_frames),
    }


def _load_single_file(path: Path, num_frames: int | None) -> dict:

    parts = load_single_file(path, num_frames=num_frames)
    return {
        "unet": parts["unet"],
        "vae": parts["vae"],
        "image_encoder": parts["image_encoder"],
        "feature_extractor": parts["feature_extractor"],
        "scheduler_config": dict(parts["scheduler"].config),
        "num_frames": int(parts["num_frames"]),
    }


def load_kfi_model(
    model: str | os.PathLike,
    *,
    adapter: str | os.PathLike | None = None,
    dtype: str | torch.dtype = "fp32",
    vae_dtype: str | torch.dtype = "fp32",
    device: str | torch.device = "cpu",
    num_frames: int | None = None,
    merge_lora: bool = False,
    channels_last: bool = False,
    compile_unet: bool = False,
    offload: str = "none",
) -> KfiModel:
    """Load a base model (diffusers folder or single-file checkpoint) and optionally an adapter.

    ``dtype`` applies to the UNet and the image encoder; the VAE keeps ``vae_dtype`` (fp32 by
    default: SVD's VAE is known to overflow in fp16). ``num_frames`` only matters for single
    files, whose weights do not record it. ``merge_lora`` folds the adapter's LoRA into the
    UNet weights (faster inference, same outputs within rounding; ``kfi_core.model.lora.unmerge_lora``
    undoes it). ``channels_last`` and ``compile_unet`` are opt-in fast paths, off by default
    (:func:`optimize_unet`). ``offload`` keeps weights on the host while ``device`` computes
    (:mod:`kfi_core.model.offload`).
    """
    if check_offload(offload) == "sequential" and (channels_last or compile_unet):
        raise SettingsError(
            "offload: sequential offload keeps the UNet's weights off the device between layers, so channels_last "
            "and compile_unet cannot apply; turn them off, or use offload 'model'."
        )
    path = Path(model)
    unet_dtype, vae_dt, dev = parse_dtype(dtype), parse_dtype(vae_dtype), torch.device(device)
    if merge_lora and adapter is None:
        raise ModelFileError("merge_lora: there is no adapter to merge; give an adapter or leave merging off.")
    if not path.exists():
        raise ModelFileError(f"model: {path} does not exist. Give a diffusers folder or a .safetensors file.")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelFileError(
                f"model: {path} has no model_index.json, so it is not a diffusers pipeline folder. Give the folder "
                "that holds model_index.json, or a single-file .safetensors checkpoint."
            )
        parts = _load_diffusers_folder(path)
        if num_frames is not None and num_frames != parts["num_frames"]:
            logger.warning("num_frames=%d ignored: the folder's UNet config says %d", num_frames, parts["num_frames"])
    else:
        check_not_pickle(path, "model")
        if path.suffix.lower() != ".safetensors":
            raise ModelFileError(f"model: {path.name} is not a .safetensors file or a diffusers folder.")
        parts = _load_single_file(path, num_frames)

    unet = parts["unet"]
    frames = parts["num_frames"]
    kfi = KfiModel(
        unet=unet,
        vae=parts["vae"],
        image_encoder=parts["image_encoder"],
        feature_extractor=parts["feature_extractor"],
        scheduler_config=parts["scheduler_config"],
        num_frames=frames,
        variant=variant_for(unet.config, frames),
        source=str(path),
    )
    if adapter is not None:
        check_not_pickle(Path(adapter), "adapter")
        kfi.adapter = load_adapter(unet, adapter, base_variant=kfi.variant, num_frames=frames)
        if merge_lora:
            _merge(unet)
    place_model(kfi, dtype=unet_dtype, vae_dtype=vae_dt, device=dev, offload=offload)
    if channels_last or compile_unet:
        optimize_unet(kfi, channels_last=channels_last, compile_unet=compile_unet)
    logger.info(
        "loaded %s (%s, %d frames, UNet %d input channels, %s%s) from %s",
        kfi.variant,
        "diffusers folder" if path.is_dir() else "single file",
        frames,
        kfi.in_channels,
        str(unet_dtype).replace("torch.", ""),
        f", adapter rank {kfi.lora_rank}" if kfi.adapter else ", no adapter (training-free mode)",
        path,
    )
    return kfi


def place_model(
    kfi: KfiModel, *, dtype: torch.dtype, vae_dtype: torch.dtype, device: torch.device, offload: str = "none"
) -> KfiModel:
    """Put the components in their dtypes (UNet and image encoder ``dtype``, VAE ``vae_dtype``) and on ``device``;
    with ``offload`` ``model`` or ``sequential``, on the host, ``device`` computing (:mod:`kfi_core.model.offload`)."""
    check_offload(offload)
    remove_offload(kfi)
    for module in (kfi.unet, kfi.vae, kfi.image_encoder):
        module.eval()
        module.requires_grad_(False)
    # torch's own Module.to: diffusers' ModelMixin.to (0.42) adds only a spurious warning about an
    # empty list of fp32 modules for these classes (they are not quantized).
    at = device if offload == "none" else torch.device("cpu")
    torch.nn.Module.to(kfi.unet, device=at, dtype=dtype)
    torch.nn.Module.to(kfi.image_encoder, device=at, dtype=dtype)
    torch.nn.Module.to(kfi.vae, device=at, dtype=vae_dtype)
    kfi.dtype, kfi.vae_dtype, kfi.device = dtype, vae_dtype, device
    set_offload(kfi, offload, device)
    return kfi


def optimize_unet(kfi: KfiModel, *, channels_last: bool = False, compile_unet: bool = False) -> KfiModel:
    """Opt-in fast paths for the UNet; outputs stay equal within float rounding.

    ``channels_last``: the UNet's 4-D weights (convolutions) in channels-last memory format,
    which cuDNN and oneDNN convolutions prefer; the UNet's 5-D latents are reshaped to 4-D per
    frame inside the model, so callers change nothing.
    ``compile_unet``: ``torch.compile`` of the UNet's forward. Compilation happens on the first
    call; if it fails there (no C++ compiler, an unsupported op, an old GPU), a WARNING is logged
    and the UNet runs eagerly from then on, so a run never fails because of this option.
    """
    unet = kfi.unet
    if channels_last:
        # per tensor: Module.to(memory_format=...) refuses the temporal blocks' 5-D Conv3d weights
        with torch.no_grad():
            count = 0
            for param in unet.parameters():
                if param.ndim == 4:
                    param.data = param.data.contiguous(memory_format=torch.channels_last)
                    count += 1
        logger.info("UNet: %d 4-D weights in channels-last memory format", count)
    if compile_unet and not getattr(unet, "_kfi_compiled", False):
        eager = unet.forward
        try:
            compiled = torch.compile(eager)
        except Exception as err:  # noqa: BLE001 - any failure means: run eagerly
            logger.warning(
                "torch.compile of the UNet failed (%s: %s); running the UNet eagerly.", type(err).__name__, err
            )
            return kfi
        state = {"failed": False}

        def forward(*args, **kwargs):
            if not state["failed"]:
                try:
                    return compiled(*args, **kwargs)
                except Exception as err:  # noqa: BLE001 - compile errors surface at the first call
                    state["failed"] = True
                    logger.warning(
                        "torch.compile of the UNet failed on the first call (%s: %s); running the UNet "
                        "eagerly from now on. Leave compile off to skip this attempt.",
                        type(err).__name__,
                        str(err).splitlines()[0] if str(err) else "",
                    )
            return eager(*args, **kwargs)

        unet.forward = forward  # instance attribute: nn.Module.__call__ looks up self.forward
        unet._kfi_compiled = True
        logger.info("UNet forward wrapped in torch.compile (compiles on the first call)")
    return kfi


def _lora_merged(unet) -> bool:

    layers = lora_layers(unet)
    return bool(layers) and all(layer.merged for layer in layers.values())


def adapter_parameter_count(info) -> int:
    return sum(math.prod(shape) for shape in info.tensor_shapes.values())


def describe_model(kfi: KfiModel) -> dict:
    """A JSON-ready description of what was loaded (``python -m kfi_core info``)."""
    height, width = kfi.default_size
    return {
        "source": kfi.source,
        "variant": kfi.variant,
        "num_frames": kfi.num_frames,
        "unet_in_channels": kfi.in_channels,
        "mode": "kfi-adapter" if kfi.adapter else "training-free",
        "lora_rank": kfi.lora_rank,
        "lora_merged": bool(kfi.adapter) and _lora_merged(kfi.unet),
        "lora_alpha": None if kfi.adapter is None else kfi.adapter.alpha,
        # what KFI trains (LoRA + input conv) = what the adapter file holds
        "trainable_parameters": adapter_parameter_count(kfi.adapter) if kfi.adapter else 0,
        "unet_parameters": sum(p.numel() for p in kfi.unet.parameters()),
        "dtype": str(kfi.dtype).replace("torch.", ""),
        "vae_dtype": str(kfi.vae_dtype).replace("torch.", ""),
        "device": str(kfi.device),
        "default_height": height,
        "default_width": width,
        "size_multiple": kfi.size_multiple,
    }
