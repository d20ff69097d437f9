"""Evaluation: metrics (PSNR, SSIM, warping error, flicker, keyframe fidelity), baselines, procedural clips with
ground truth, and the stock SVD pipeline rebuilt as a reference (oracles and benches only)."""

from kfi_core.evaluation.baselines import get_baseline
from kfi_core.evaluation.long_clip import long_clip_metrics
from kfi_core.evaluation.long_clip_plot import write_long_clip_plot
from kfi_core.evaluation.metrics import METRIC_KEYS, check_keyframe_indices, chroma_gain, evaluate, psnr, ssim
from kfi_core.evaluation.procedural import (
    DIFFICULTIES,
    EDIT_PATTERNS,
    EVAL_SEED_BASE,
    TASKS,
    ProceduralConfig,
    make_procedural_clip,
    with_config,
)
from kfi_core.evaluation.stock_pipeline import sample_stock_img2vid

__all__ = [
    "DIFFICULTIES",
    "EDIT_PATTERNS",
    "EVAL_SEED_BASE",
    "METRIC_KEYS",
    "ProceduralConfig",
    "TASKS",
    "check_keyframe_indices",
    "chroma_gain",
    "evaluate",
    "get_baseline",
    "long_clip_metrics",
    "make_procedural_clip",
    "psnr",
    "sample_stock_img2vid",
    "ssim",
    "with_config",
    "write_long_clip_plot",
]
