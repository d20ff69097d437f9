"""LoadKFInpaintModel: the base SVD model (single file or diffusers folder) plus a KFI adapter."""

from __future__ import annotations

from comfy_api.latest import io, ui

from . import bridge
from .types import KfiModel

DTYPE_CHOICES = ["auto", "fp32", "fp16", "bf16"]


class LoadKFInpaintModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadKFInpaintModel",
            display_name="Load KFI Inpaint Model",
            category="KFI",
            description=(
                "Load Stable Video Diffusion img2vid (svd 14 frames or svd-xt 25 frames) from models/checkpoints "
                "(single .safetensors file) or models/diffusers (folder), plus a KFI adapter from "
                "models/kfi_adapters or models/loras. With no adapter KFI runs its training-free mode "
                "(lower quality). The bundled 64 px demo model has two adapters: kfi-demo-64px for carrying a "
                "keyframe edit, kfi-demo-64px-removal for removing objects."
            ),
            inputs=[
                io.Combo.Input("model", options=bridge.list_base_models(),
                               tooltip="Base model: checkpoints/... single files or diffusers/... folders."),
                io.Combo.Input("adapter", options=bridge.list_adapters(), default=bridge.NONE,
                               tooltip="KFI adapter (LoRA + 12-channel input conv); 'none' = training-free mode. "
                                       "bundled/...-removal is the demo model's adapter tuned on removal."),
                io.Combo.Input("dtype", options=DTYPE_CHOICES, default="auto",
                               tooltip="UNet precision. auto: bf16 or fp16 on GPU, fp32 on CPU. The VAE stays fp32."),
                io.Boolean.Input("merge_lora", default=True, optional=True,
                                 tooltip="Fold the adapter's LoRA into the UNet weights: faster sampling, same "
                                         "result within rounding. Ignored without an adapter."),
                io.Int.Input("frames", default=0, min=0, max=128,
                             tooltip="Frame count of a single-file model (0 = from the file name: *xt* = 25, else "
                                     "14). Diffusers folders say it in their config."),
            ],
            outputs=[KfiModel.Output(display_name="kfi_model", tooltip="The loaded model, for the KFI nodes.")],
        )

    @classmethod
    def execute(cls, model, adapter, dtype, frames, merge_lora=True) -> io.NodeOutput:
        from kfi_core.loading import load_kfi_model

        device = bridge.load_device()
        adapter_path = bridge.resolve_adapter(adapter)
        kfi = load_kfi_model(
            bridge.resolve_base_model(model),
            adapter=adapter_path,
            merge_lora=merge_lora and adapter_path is not None,
            dtype=bridge.auto_dtype(device) if dtype == "auto" else dtype,
            device=bridge.offload_device(),
            num_frames=frames or None,
        )
        return io.NodeOutput(kfi)


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

        from kfi_core.loading import describe_model

        text = json.dumps(describe_model(kfi_model), indent=2)
        return io.NodeOutput(text, ui=ui.PreviewText(text))
