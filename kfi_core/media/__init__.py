"""Media: video and mask files, 8-bit and float pixels, mask operations, keyframe handling, crops around the mask
(images and clips)."""

from kfi_core.media.clip_crop import crop_clip, plan_clip_box, stitch_clip
from kfi_core.media.crop import (
    DEFAULT_FEATHER,
    DEFAULT_PADDING,
    DEFAULT_SIZE,
    MAX_SIZE,
    CropBox,
    crop_for_inpaint,
    stitch_crop,
)
from kfi_core.media.keyframes import check_frame_index, insert_keyframes, parse_indices, select_frame
from kfi_core.media.mask_ops import expand_masks, grow, prepare_masks
from kfi_core.media.pixels import to_eight_bit, to_unit
from kfi_core.media.video import atomic_path, read_frames, read_masks, to_uint8, write_frames

__all__ = [
    "crop_clip",
    "plan_clip_box",
    "stitch_clip",
    "CropBox",
    "DEFAULT_FEATHER",
    "DEFAULT_PADDING",
    "DEFAULT_SIZE",
    "MAX_SIZE",
    "atomic_path",
    "check_frame_index",
    "crop_for_inpaint",
    "expand_masks",
    "grow",
    "insert_keyframes",
    "parse_indices",
    "prepare_masks",
    "read_frames",
    "read_masks",
    "select_frame",
    "stitch_crop",
    "to_eight_bit",
    "to_uint8",
    "to_unit",
    "write_frames",
]
