"""The KFI loaders: the base SVD model plus a KFI adapter.

Load KFI Inpaint Model (checkpoint) lists models/checkpoints by plain file name, as ComfyUI's own loaders do, so a
workflow's ``properties.models`` entry (name, url, directory) matches the widget value and the editor's
missing-models dialog offers the download. Load KFI Inpaint Model takes diffusers folders and the bundled demo model,
and still runs graphs saved when it listed single files as ``checkpoints/<file>``.
"""

from __future__ import annotations

from comfy_api.latest import io, ui

from . import bridge
from .types import KfiModel

DTYPE_CHOICES = ["auto", "fp32", "fp16", "bf16"]


def _common_inputs() -> list:
    """The inputs both loaders share, after the base model's own."""
    return [
        io.Combo.Input(
            "adapter",
            options=bridge.list_adapters(),
            default=bridge.NONE,
            tooltip="KFI adapter (LoRA + 12-channel input conv); 'none' = training-free mode. "
            "bundled/...-removal is the demo model's adapter tuned on removal.",
        ),
        io.Combo.Input(
            "dtype",
            options=DTYPE_CHOICES,
            default="auto",
            tooltip="UNet precision. auto: bf16 or fp16 on GPU, fp32 on CPU. The VAE stays fp32.",
        ),
        io.Boolean.Input(
            "merge_lora",
            default=True,
            optional=True,
            tooltip="Fold the adapter's LoRA into the UNet weights: faster sampling, same "
            "result within rounding. Ignored without an adapter.",
        ),
        io.Int.Input(
            "frames",
            default=0,
            min=0,
            max=128,
            tooltip="Frame count of a single-file model (0 = from the file name: *xt* = 25, else "
            "14). Diffusers folders say it in their config.",
        ),
    ]


def _load(base_path: str, adapter: str, dtype: str, frames: int, merge_lora: bool) -> io.NodeOutput:
    from kfi_core.model import load_kfi_model

    device = bridge.load_device()
    adapter_path = bridge.resolve_adapter(adapter)
    kfi = load_kfi_model(
        base_path,
        adapter=adapter_path,
        merge_lora=merge_lora and adapter_path is not None,
        dtype=bridge.auto_dtype(device) if dtype == "auto" else dtype,
        device=bridge.offload_device(),
        num_frames=frames or None,
    )
    return io.NodeOutput(kfi)


_OUTPUT = "The loaded model, for the KFI nodes."


def _refusal(input_name: str, value: str, where_and_fix: str) -> str:
    """validate_inputs' message for a name the dropdown does not list: a pickle file, or one not in the folder."""
    return bridge.pickle_problem(input_name, value) or f"{input_name}: {value!r} is not in {where_and_fix}"


class LoadKFInpaintCheckpoint(io.ComfyNode):
    """Single-file SVD from models/checkpoints; choices are plain file names, as ComfyUI's own loaders list them."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadKFInpaintCheckpoint",
            display_name="Load KFI Inpaint Model (checkpoint)",
            category="KFI",
            description=(
                "Load Stable Video Diffusion img2vid as one .safetensors file from models/checkpoints (svd_xt: 25 "
                "frames, svd: 14), plus a KFI adapter from models/kfi_adapters or models/loras. With no adapter KFI "
                "runs its training-free mode (lower quality). Diffusers folders and the bundled demo model: Load "
                "KFI Inpaint Model."
            ),
            inputs=[
                io.Combo.Input(
                    "ckpt_name",
                    options=bridge.list_checkpoints(),
                    tooltip="SVD img2vid single file in models/checkpoints (svd_xt.safetensors).",
                )
            ]
            + _common_inputs(),
            outputs=[KfiModel.Output(display_name="kfi_model", tooltip=_OUTPUT)],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name) -> bool | str:
        # ComfyUI 0.3.75 does not check V3 combo values: refuse a missing file before anything runs
        return ckpt_name in bridge.list_checkpoints() or _refusal(
            "ckpt_name",
            ckpt_name,
            "models/checkpoints. Download it (the link is in the node's properties; the "
            "missing-models dialog offers it) into models/checkpoints, then refresh (press R).",
        )

    @classmethod
    def execute(cls, ckpt_name, adapter, dtype, frames, merge_lora=True) -> io.NodeOutput:
        return _load(bridge.resolve_checkpoint(ckpt_name), adapter, dtype, frames, merge_lora)


class LoadKFInpaintModel(io.ComfyNode):
    """Diffusers folders and the bundled demo model. Also runs workflows saved when this node listed single files as
    ``checkpoints/<file>`` (validate_inputs accepts them; new graphs use Load KFI Inpaint Model (checkpoint))."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadKFInpaintModel",
            display_name="Load KFI Inpaint Model",
            category="KFI",
            description=(
                "Load Stable Video Diffusion img2vid from a diffusers folder in models/diffusers, or the bundled 64 px "
                "demo model, plus a KFI adapter from models/kfi_adapters or models/loras. The demo model has two "
                "adapters: kfi-demo-64px for carrying a keyframe edit, kfi-demo-64px-removal for removing objects. "
                "Single files (svd_xt.safetensors): Load KFI Inpaint Model (checkpoint)."
            ),
            inputs=[
                io.Combo.Input(
                    "model",
                    options=bridge.list_base_models(),
                    tooltip="bundled/kfi-demo-64px (the demo model that ships with the pack) or diffusers/... folders.",
                )
            ]
            + _common_inputs(),
            outputs=[KfiModel.Output(display_name="kfi_model", tooltip=_OUTPUT)],
        )

    @classmethod
    def validate_inputs(cls, model) -> bool | str:
        # replaces ComfyUI's list check for 'model': a legacy 'checkpoints/<file>' value is accepted too
        return (
            model in bridge.list_base_models()
            or bridge.is_legacy_checkpoint(model)
            or _refusal(
                "model",
                model,
                "models/diffusers. Put the folder there and refresh (press R), or load a single file "
                "with Load KFI Inpaint Model (checkpoint).",
            )
        )

    @classmethod
    def execute(cls, model, adapter, dtype, frames, merge_lora=True) -> io.NodeOutput:
        return _load(bridge.resolve_base_model(model), adapter, dtype, frames, merge_lora)


class KFIModelInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFIModelInfo",
            display_name="KFI Model Info",
            category="KFI/utils",
            description="Show what was loaded: variant, frames, input channels, LoRA rank, dtype, default size.",
            inputs=[KfiModel.Input("kfi_model", tooltip="A model from Load KFI Inpaint Model.")],
            outputs=[io.String.Output(display_name="info", tooltip="The description as JSON text.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, kfi_model) -> io.NodeOutput:
        import json

        from kfi_core.model import describe_model

        text = json.dumps(describe_model(kfi_model), indent=2)
        return io.NodeOutput(text, ui=ui.PreviewText(text))
