"""The pack's custom socket types (all prefixed KFI_)."""

from comfy_api.latest import io

KfiModel = io.Custom("KFI_MODEL")
KfiCondition = io.Custom("KFI_CONDITION")
KfiSchedule = io.Custom("KFI_SCHEDULE")
KfiCrop = io.Custom("KFI_CROP")  # kfi_core.media.crop.CropBox: where a crop came from, for KFI Stitch Crop
