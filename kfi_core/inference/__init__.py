"""Inference: the checked entry points (:func:`inpaint`, :func:`propagate`, :func:`run_schedule`), the long-video
schedules they plan, and one window's steps (condition, denoiser, sampler, decode, composite)."""

from kfi_core.inference.color_match import COLOR_MATCH_MODES
from kfi_core.inference.condition import ClipInputs, check_mask_coverage, fill_masked, prepare_clip
from kfi_core.inference.denoiser import SVDDenoiser, per_frame_guidance
from kfi_core.inference.executor import inpaint, propagate, run_schedule
from kfi_core.inference.plan import plan_memory
from kfi_core.inference.sampling import SAMPLERS, get_sigmas_svd, sample_euler
from kfi_core.inference.schedule_builders import SCHEDULES, build_schedule
from kfi_core.inference.schedules import Schedule, format_schedule_summary, render_schedule_preview, schedule_cost
from kfi_core.inference.settings import BLEND_KNOWN_MODES, PropagateSettings, check_size
from kfi_core.inference.window import composite
from kfi_core.inference.working_size import CROP_MODES, WORKING_SIZES, inpaint_at_size, working_size

__all__ = [
    "BLEND_KNOWN_MODES",
    "COLOR_MATCH_MODES",
    "CROP_MODES",
    "ClipInputs",
    "PropagateSettings",
    "SAMPLERS",
    "SCHEDULES",
    "SVDDenoiser",
    "Schedule",
    "WORKING_SIZES",
    "build_schedule",
    "check_mask_coverage",
    "check_size",
    "composite",
    "fill_masked",
    "format_schedule_summary",
    "get_sigmas_svd",
    "inpaint",
    "inpaint_at_size",
    "per_frame_guidance",
    "plan_memory",
    "prepare_clip",
    "propagate",
    "render_schedule_preview",
    "run_schedule",
    "sample_euler",
    "schedule_cost",
    "working_size",
]
