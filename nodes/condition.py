"""KFISymmetricMaskEncode: frames + masks (+ keyframes) -> a checked KFI condition; KFIConditionPreview: what the
model must fill, drawn from a condition.

The preview is its own node so that a graph pays for it (one full copy of the clip, held in ComfyUI's cache) only
when it shows it. The first Encode node, which had the preview as a second output, stays loadable in
:mod:`nodes.deprecated`.
"""

from __future__ import annotations

from comfy_api.latest import io, ui

from . import bridge
from .types import KfiCondition, KfiModel

ENCODE_DESCRIPTION = (
    "Prepare a clip for KFI: frames, their masks (white = inpaint; one per frame, or one mask for every "
    "frame) and optional edited keyframes. Keyframes enter as fully known frames. The sampler "
    "VAE-encodes every frame twice, the hole filled black and filled white (the symmetric condition), "
    "window by window. Checks frame, mask and keyframe counts and sizes now, with a clear message; any "
    "frame size works (the sampler's working size). The condition holds the frames without copying them."
)


def encode_inputs() -> list:
    """The Encode node's inputs (the deprecated node with the preview output takes the same)."""
    return [
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
    ]


def condition_output() -> io.Output:
    return KfiCondition.Output(display_name="condition", tooltip="For KFI Keyframe Propagate Sampler.")


def encode(images, mask, keyframe_indices, grow, keyframes=None):
    """The checked condition (kfi_core's ClipInputs) for the nodes' inputs."""
    from kfi_core.inference import check_mask_coverage, prepare_clip

    clip = prepare_clip(
        bridge.image_to_frames(images),
        bridge.mask_to_masks(mask),
        keyframes=None if keyframes is None else bridge.image_to_frames(keyframes, "keyframes"),
        keyframe_indices=bridge.parse_keyframe_indices(keyframe_indices),
        grow_pixels=grow,
    )
    check_mask_coverage(clip)
    return clip


def hole_preview(clip):
    """The clip's frames with the hole filled black, as a ComfyUI IMAGE (a new tensor)."""
    from kfi_core.inference import fill_masked

    return bridge.frames_to_image(fill_masked(clip.frames, clip.masks, 0.0))


class KFISymmetricMaskEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFISymmetricMaskEncode",
            display_name="KFI Symmetric Mask Encode",
            category="KFI",
            description=ENCODE_DESCRIPTION + " KFI Condition Preview shows what the model must fill.",
            inputs=encode_inputs(),
            outputs=[condition_output()],
        )

    @classmethod
    def execute(cls, kfi_model, images, mask, keyframe_indices, grow, keyframes=None) -> io.NodeOutput:
        return io.NodeOutput(encode(images, mask, keyframe_indices, grow, keyframes))


class KFIConditionPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFIConditionPreview",
            display_name="KFI Condition Preview",
            category="KFI",
            description=(
                "Shows what the model must fill: the condition's frames with the hole filled black, after the "
                "Encode node's binarising and growing; keyframes are shown whole (they are fully known). The images "
                "are also an output. A new image batch the size of the clip (and a PNG per frame in ComfyUI's temp "
                "folder): leave this node out of long full-size runs you do not look at."
            ),
            inputs=[KfiCondition.Input("condition", tooltip="From KFI Symmetric Mask Encode.")],
            outputs=[io.Image.Output(display_name="images", tooltip="The frames with the hole filled black.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, condition) -> io.NodeOutput:
        images = hole_preview(condition)
        return io.NodeOutput(images, ui=ui.PreviewImage(images, cls=cls))
