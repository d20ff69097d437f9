"""Retired nodes, kept so that graphs saved with them still load and run as saved. Hidden from the node search
(``is_deprecated``); each names its replacement."""

from __future__ import annotations

from comfy_api.latest import io

from . import condition


class SymmetricMaskEncode(io.ComfyNode):
    """The first Encode node (until 2026-12): the condition and a masked preview, computed whether or not the
    preview is wired (a full copy of the clip held in ComfyUI's cache). Now KFI Symmetric Mask Encode and KFI
    Condition Preview."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SymmetricMaskEncode",
            display_name="KFI Symmetric Mask Encode (old, with preview)",
            category="KFI/deprecated",
            description=(
                condition.ENCODE_DESCRIPTION + " Deprecated: use KFI Symmetric Mask Encode, and KFI Condition "
                "Preview where you want the preview (this node makes it whether or not it is shown)."
            ),
            inputs=condition.encode_inputs(),
            outputs=[
                condition.condition_output(),
                io.Image.Output(
                    display_name="masked_preview",
                    tooltip="The frames with the hole filled black: what the model must fill.",
                ),
            ],
            is_deprecated=True,
        )

    @classmethod
    def execute(cls, kfi_model, images, mask, keyframe_indices, grow, keyframes=None) -> io.NodeOutput:
        clip = condition.encode(images, mask, keyframe_indices, grow, keyframes)
        return io.NodeOutput(clip, condition.hole_preview(clip))
