"""SymmetricMaskEncode: frames + masks (+ keyframes) -> a checked KFI condition."""

from __future__ import annotations

from comfy_api.latest import io

from . import bridge
from .types import KfiCondition, KfiModel


class SymmetricMaskEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SymmetricMaskEncode",
            display_name="KFI Symmetric Mask Encode",
            category="KFI",
            description=(
                "Prepare a clip for KFI: frames, their masks (white = inpaint; one per frame, or one mask for every "
                "frame) and optional edited keyframes. Keyframes enter as fully known frames. The sampler "
                "VAE-encodes every frame twice, the hole filled black and filled white (the symmetric condition), "
                "window by window. Checks frame, mask and keyframe counts and sizes now, with a clear message; any "
                "frame size works (the sampler's working size)."
            ),
            inputs=[
                KfiModel.Input("kfi_model", tooltip="From Load KFI Inpaint Model."),
                io.Image.Input("images", tooltip="The clip's frames."),
                io.Mask.Input("mask", tooltip="Masks, white = region to inpaint: one per frame, or one for all."),
                io.Image.Input(
                    "keyframes",
                    optional=True,
                    tooltip="Edited keyframe image(s), same size as the frames (e.g. from FLUX Fill).",
                ),
                io.String.Input(
                    "keyframe_indices",
                    default="",
                    tooltip="Frame index of each keyframe, comma-separated ('0' or '0, 40'). Without "
                    "keyframe images, the indices name frames of 'images' already edited. Empty: "
                    "no keyframe (object removal).",
                ),
                io.Int.Input(
                    "grow",
                    default=0,
                    min=-64,
                    max=64,
                    tooltip="Grow (positive) or erode (negative) the masks by pixels.",
                ),
            ],
            outputs=[
                KfiCondition.Output(display_name="condition", tooltip="For KFI Keyframe Propagate Sampler."),
                io.Image.Output(
                    display_name="masked_preview",
                    tooltip="The frames with the hole filled black: what the model must fill.",
                ),
            ],
        )

    @classmethod
    def execute(cls, kfi_model, images, mask, keyframe_indices, grow, keyframes=None) -> io.NodeOutput:
        from kfi_core.inference import check_mask_coverage, fill_masked, prepare_clip

        clip = prepare_clip(
            bridge.image_to_frames(images),
            bridge.mask_to_masks(mask),
            keyframes=None if keyframes is None else bridge.image_to_frames(keyframes),
            keyframe_indices=bridge.parse_keyframe_indices(keyframe_indices),
            grow_pixels=grow,
        )
        check_mask_coverage(clip)
        preview = fill_masked(clip.frames, clip.masks, 0.0)
        return io.NodeOutput(clip, bridge.frames_to_image(preview))
