"""KFISampleClip: the pack's bundled sample clip, its masks and an edited keyframe, read from the pack's assets.

The demo workflows start here so that they run as loaded: nothing to copy into ComfyUI's input folder. To use your
own footage, replace this one node by Load Video (+ Get Video Components) and a mask source.
"""

from __future__ import annotations

from comfy_api.latest import io

from . import bridge


class KFISampleClip(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFISampleClip",
            display_name="KFI Sample Clip",
            category="KFI/inputs",
            description=(
                "The sample clip that ships with the pack (8 frames, 64x64: a red ball crossing a panning scene), "
                "masks over the ball, and frame 0 with the ball recoloured blue as an edited keyframe. Read from the "
                "pack's files; nothing is written. Replace this node by Load Video to use your own clip."
            ),
            inputs=[],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The sample's frames (8 x 64 x 64)."),
                io.Mask.Output(display_name="mask", tooltip="One mask per frame over the ball (white = inpaint)."),
                io.Image.Output(
                    display_name="edited_keyframe",
                    tooltip="The keyframe with a visible edit (the ball recoloured blue).",
                ),
                io.Int.Output(display_name="keyframe_index", tooltip="The edited keyframe's frame index."),
                io.String.Output(
                    display_name="keyframe_indices",
                    tooltip="The same index as text, for KFI Symmetric Mask Encode's keyframe_indices.",
                ),
                io.Float.Output(display_name="fps", tooltip="The sample's frame rate (for Create Video)."),
            ],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        from kfi_core.bundled import load_sample_clip

        clip = load_sample_clip()
        index = clip["keyframe_index"]
        return io.NodeOutput(
            bridge.frames_to_image(clip["frames"]),
            bridge.masks_to_mask(clip["masks"]),
            bridge.frames_to_image(clip["edited_keyframe"][None]),
            index,
            str(index),
            clip["fps"],
        )
