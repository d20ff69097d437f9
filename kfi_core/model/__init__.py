"""The model: SVD loading (diffusers folders and single files), the 12-channel input conv, LoRA, KFI adapter files,
the image and VAE-decoder paths inference uses, and tiny models of the real architecture for tests."""

from kfi_core.model.adapter import AdapterInfo, load_adapter, read_adapter_metadata, save_adapter
from kfi_core.model.conv_in import expand_conv_in
from kfi_core.model.loading import KfiModel, check_not_pickle, describe_model, load_kfi_model, place_model, variant_for
from kfi_core.model.lora import SVD_XT_UNET_CONFIG, add_lora, lora_state_dict, merge_lora
from kfi_core.model.offload import OFFLOAD_MODES, execution_device, set_offload
from kfi_core.model.single_file import save_single_file
from kfi_core.model.tiny import (
    SVD_SCHEDULER_CONFIG,
    build_tiny_components,
    build_tiny_pipeline_folder,
    tiny_unet_config,
)

__all__ = [
    "AdapterInfo",
    "KfiModel",
    "OFFLOAD_MODES",
    "SVD_SCHEDULER_CONFIG",
    "SVD_XT_UNET_CONFIG",
    "add_lora",
    "build_tiny_components",
    "build_tiny_pipeline_folder",
    "check_not_pickle",
    "describe_model",
    "execution_device",
    "expand_conv_in",
    "load_adapter",
    "load_kfi_model",
    "lora_state_dict",
    "merge_lora",
    "place_model",
    "read_adapter_metadata",
    "save_adapter",
    "save_single_file",
    "set_offload",
    "tiny_unet_config",
    "variant_for",
]
