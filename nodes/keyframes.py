"""Keyframe helpers: take a frame (and its mask) out of a batch, put edited frames back."""

from __future__ import annotations

from comfy_api.latest import io

from . import bridge


class KFISelectKeyframe(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFISelectKeyframe",
            display_name="KFI Select Keyframe",
            category="KFI/keyframes",
            description=(
                "Take one frame and its mask out of a clip, to edit it with an image inpainter (FLUX Fill, "
                "Photoshop, ...). Core ComfyUI has no node that takes one mask out of a batch; this one does both."
            ),
            inputs=[
                io.Image.Input("images", tooltip="The clip's frames."),
                io.Mask.Input("mask", tooltip="The clip's masks: one per frame, or one for all frames."),
                io.Int.Input("index", default=0, min=-4096, max=4095, tooltip="Frame to take (0 = first, -1 = last)."),
            ],
            outputs=[
                io.Image.Output(display_name="keyframe", tooltip="The selected frame."),
                io.Mask.Output(display_name="keyframe_mask", tooltip="Its mask."),
                io.Int.Output(display_name="index", tooltip="The frame's index counted from 0."),
                io.String.Output(
                    display_name="keyframe_indices",
                    tooltip="The same index as text, to link into KFI Symmetric Mask Encode's keyframe_indices.",
                ),
            ],
        )

    @classmethod
    def execute(cls, images, mask, index) -> io.NodeOutput:
        from kfi_core.media import check_frame_index, expand_masks, select_frame

        frames = bridge.image_to_frames(images)
        masks = expand_masks(bridge.mask_to_masks(mask), frames.shape[0], frames.shape[-2:])
        i = check_frame_index(index, frames.shape[0], "index")
        return io.NodeOutput(
            bridge.frames_to_image(select_frame(frames, i)), bridge.masks_to_mask(select_frame(masks, i)), i, str(i)
        )


class KFIInsertKeyframes(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFIInsertKeyframes",
            display_name="KFI Insert Keyframes",
            category="KFI/keyframes",
            description="Put edited keyframes back into the clip at their indices (sizes must match the clip).",
            inputs=[
                io.Image.Input("images", tooltip="The clip's frames."),
                io.Image.Input("keyframes", tooltip="Edited keyframe(s), same size as the clip."),
                io.String.Input(
                    "indices",
                    default="0",
                    tooltip="Comma-separated frame indices, one per keyframe image (e.g. '0, 40').",
                ),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The clip with the keyframes in place.")],
        )

    @classmethod
    def execute(cls, images, keyframes, indices) -> io.NodeOutput:
        from kfi_core.media import insert_keyframes, parse_indices

        out = insert_keyframes(
            bridge.image_to_frames(images), bridge.image_to_frames(keyframes, "keyframes"), parse_indices(indices)
        )
        return io.NodeOutput(bridge.frames_to_image(out))
