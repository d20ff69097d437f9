"""Crop a square around the mask for an image inpainter (FLUX Fill at 768x768), stitch the edit back."""

from __future__ import annotations

from comfy_api.latest import io

from . import bridge
from .types import KfiCrop


class KFICropForInpaint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from kfi_core.media import DEFAULT_PADDING, DEFAULT_SIZE, MAX_SIZE

        return io.Schema(
            node_id="KFICropForInpaint",
            display_name="KFI Crop For Inpaint",
            category="KFI/keyframes",
            description=(
                "Crop the smallest square holding the mask (plus padding) out of the keyframe and resize it to the "
                "image inpainter's size (768 for FLUX Fill), as in the KFI paper. The square is shifted, not "
                "shrunk, to stay inside the frame; where it is larger than the frame, the rest is filled with a "
                "mirror image of the frame (dropped again when stitching). A batch of frames is cropped with one "
                "square covering the union of all their masks. Send the crop to the inpainter, then the result to "
                "KFI Stitch Crop with the crop info."
            ),
            inputs=[
                io.Image.Input(
                    "image", tooltip="The keyframe to edit, or a batch of frames (all cropped with one box)."
                ),
                io.Mask.Input("mask", tooltip="White = region to edit: one mask, or one per frame. Must not be empty."),
                io.Int.Input(
                    "size",
                    default=DEFAULT_SIZE,
                    min=64,
                    max=MAX_SIZE,
                    step=8,
                    tooltip="Side of the output crop in pixels: the inpainter's working size (768 for FLUX Fill).",
                ),
                io.Float.Input(
                    "padding",
                    default=DEFAULT_PADDING,
                    min=0.0,
                    max=4.0,
                    step=0.05,
                    tooltip="Context around the mask on each side, as a fraction of the mask's longer "
                    "side (0.2: a 100-pixel object gets 20 pixels on every side).",
                ),
            ],
            outputs=[
                io.Image.Output(
                    display_name="cropped_image", tooltip="The square crop(s), size x size, for the inpainter."
                ),
                io.Mask.Output(
                    display_name="cropped_mask", tooltip="The mask(s) cropped the same way, for the inpainter."
                ),
                KfiCrop.Output(display_name="crop", tooltip="Where the crop came from: connect it to KFI Stitch Crop."),
            ],
        )

    @classmethod
    def execute(cls, image, mask, size, padding) -> io.NodeOutput:
        from kfi_core.media import crop_for_inpaint

        frames, masks, box = crop_for_inpaint(
            bridge.image_to_frames(image, "image"), bridge.mask_to_masks(mask), size=size, padding=padding
        )
        return io.NodeOutput(bridge.frames_to_image(frames), bridge.masks_to_mask(masks), box)


class KFIStitchCrop(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from kfi_core.media import DEFAULT_FEATHER

        return io.Schema(
            node_id="KFIStitchCrop",
            display_name="KFI Stitch Crop",
            category="KFI/keyframes",
            description=(
                "Resize the inpainter's edited crop back and paste it into the original image where the crop came "
                "from. With a mask, only the masked region plus a soft band of 'feather' pixels changes; without "
                "one, the whole square is pasted with a soft inner edge. Every other pixel is exactly the original."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The original image (or batch) given to KFI Crop For Inpaint."),
                io.Image.Input("edited_crop", tooltip="The inpainter's result for the crop, at the crop size."),
                KfiCrop.Input("crop", tooltip="The crop info from KFI Crop For Inpaint."),
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip="Optional: the full-frame mask given to the crop node (not the cropped mask). "
                    "Limits the paste to the masked region plus the feather band.",
                ),
                io.Int.Input(
                    "feather",
                    default=DEFAULT_FEATHER,
                    min=0,
                    max=256,
                    step=1,
                    tooltip="Width in pixels of the soft blend band outside the mask (or inside the "
                    "square's edges without a mask); 0 = hard edge.",
                ),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The original image(s) with the edit pasted in.")],
        )

    @classmethod
    def execute(cls, image, edited_crop, crop, feather, mask=None) -> io.NodeOutput:
        from kfi_core.media import stitch_crop

        out = stitch_crop(
            bridge.image_to_frames(image, "image"),
            bridge.image_to_frames(edited_crop, "edited_crop"),
            crop,
            None if mask is None else bridge.mask_to_masks(mask),
            feather=feather,
        )
        return io.NodeOutput(bridge.frames_to_image(out))
