"""Mask preparation node: binarise, grow or erode, temporal dilation, feather."""

from __future__ import annotations

from comfy_api.latest import io

from . import bridge


class KFIMaskPrepare(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFIMaskPrepare",
            display_name="KFI Mask Prepare",
            category="KFI/masks",
            description=(
                "Binarise masks at a threshold, grow (positive) or erode (negative) them by a number of pixels, "
                "widen them over neighbouring frames, and optionally feather the edge. SAM masks work best "
                "slightly eroded for background edits and slightly grown for object removal."
            ),
            inputs=[
                io.Mask.Input("mask", tooltip="One mask per frame (white = region to inpaint), or a single mask."),
                io.Float.Input(
                    "threshold",
                    default=0.5,
                    min=0.0,
                    max=0.99,
                    step=0.01,
                    tooltip="Mask values above this count as 'inpaint'.",
                ),
                io.Int.Input(
                    "grow",
                    default=0,
                    min=-256,
                    max=256,
                    step=1,
                    tooltip="Pixels to grow the mask by; negative values erode it.",
                ),
                io.Int.Input(
                    "temporal_dilation",
                    default=0,
                    min=0,
                    max=16,
                    step=1,
                    tooltip="Also mark pixels masked in this many frames before and after (fast motion).",
                ),
                io.Int.Input(
                    "feather",
                    default=0,
                    min=0,
                    max=128,
                    step=1,
                    tooltip="Soft edge width in pixels (0 keeps a hard edge).",
                ),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="The prepared masks, one per input mask.")],
        )

    @classmethod
    def execute(cls, mask, threshold, grow, temporal_dilation, feather) -> io.NodeOutput:
        from kfi_core.media import prepare_masks

        masks = prepare_masks(
            bridge.mask_to_masks(mask),
            threshold=threshold,
            grow_pixels=grow,
            temporal_frames=temporal_dilation,
            feather_pixels=feather,
        )
        return io.NodeOutput(bridge.masks_to_mask(masks))
