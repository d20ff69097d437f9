"""The pack's custom socket types (all prefixed KFI_)."""

from comfy_api.latest import io

KfiModel = io.Custom("KFI_MODEL")
KfiCondition = io.Custom("KFI_CONDITION")
KfiSchedule = io.Custom("KFI_SCHEDULE")
