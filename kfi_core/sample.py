"""The bundled sample clip: a procedural scene with ground truth, small enough for the tiny model.

A striped, gradient background pans to the right while a red ball crosses it; the mask covers
the ball (grown by 2 pixels), so the task is to remove it. ``make_sample_clip`` regenerates the
files in ``kfi_core/assets/sample`` (``python -m kfi_core make-sample DIR``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

SAMPLE_DIR = Path(__file__).resolve().parent / "assets" / "sample"
# The trained demo model (``python -m kfi_core train-demo``, configs/demo/recipe.json): a diffusers
# folder plus two KFI adapters of the same backbone, the embedded default of ``demo`` and ``bench/results.py``:
# DEMO_ADAPTER, tuned on keyframe edits (carrying an edit through the clip), and DEMO_REMOVAL_ADAPTER, tuned further
# on removal (holes over clean backgrounds, most samples without a keyframe). At the demo model's size one adapter
# trades one task against the other (README, 'Two adapters: edit and removal').
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "demo_model"
DEMO_ADAPTER = DEMO_MODEL_DIR / "adapter.safetensors"
DEMO_REMOVAL_ADAPTER = DEMO_MODEL_DIR / "adapter-removal.safetensors"
# Sampling defaults of ``demo`` (and the model rows of bench/results.py) for the demo model, measured on the 6
# held-out clips of docs/RESULTS.md (README, 'Sampler settings for the demo model'): affine colour matching, since
# its small VAE drifts in colour, and guidance 1.0 on every frame instead of SVD's 1 -> 3, since classifier-free
# guidance lowers this small model's fill (medium removal 15.26 -> 15.80 dB in the mask raw, 18.50 -> 18.66 with
# colour matching). Real SVD models keep SVD's defaults (PropagateSettings).
DEMO_SAMPLING = {"color_match": "affine", "min_guidance": 1.0, "max_guidance": 1.0}


def demo_model_available() -> bool:
    return (DEMO_MODEL_DIR / "model_index.json").is_file() and DEMO_ADAPTER.is_file() and DEMO_REMOVAL_ADAPTER.is_file()


def make_sample_clip(num_frames: int = 8, height: int = 64, width: int = 64) -> dict[str, torch.Tensor]:
    """Frames [F, 3, H, W], masks [F, 1, H, W] and the background without the ball (ground truth)."""
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    frames, masks, truth = [], [], []
    for t in range(num_frames):
        shift = 1.5 * t  # camera pan, pixels per frame
        u = xx + shift
        stripes = 0.5 + 0.5 * torch.sin(u * 2 * math.pi / 12)
        grass = 0.5 + 0.5 * torch.sin((u * 0.7 + yy * 1.3) * 2 * math.pi / 7)
        sky = (yy < height * 0.45).float()
        r = sky * (0.35 + 0.1 * stripes) + (1 - sky) * (0.25 + 0.15 * grass)
        g = sky * (0.55 + 0.1 * stripes) + (1 - sky) * (0.45 + 0.2 * grass)
        b = sky * (0.85 + 0.05 * stripes) + (1 - sky) * (0.20 + 0.1 * grass)
        background = torch.stack([r, g, b]).clamp(0, 1)
        cx = width * (0.2 + 0.6 * t / max(1, num_frames - 1))
        cy = height * 0.6 + 4 * math.sin(t)
        radius = height * 0.14
        dist = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()
        ball = (dist <= radius).float()
        shade = (1 - 0.5 * dist / radius).clamp(0, 1)
        colour = torch.stack([0.85 * shade + 0.1, 0.1 * shade, 0.1 * shade])
        frames.append(background * (1 - ball) + colour * ball)
        masks.append((dist <= radius + 2).float()[None])
        truth.append(background)
    return {"frames": torch.stack(frames), "masks": torch.stack(masks), "ground_truth": torch.stack(truth)}


def write_sample_clip(folder: str | Path = SAMPLE_DIR) -> Path:
    from .video_io import write_frames

    folder = Path(folder)
    clip = make_sample_clip()
    write_frames(clip["frames"], folder / "frames")
    write_frames(clip["masks"].expand(-1, 3, -1, -1), folder / "masks")
    write_frames(clip["ground_truth"], folder / "ground_truth")
    return folder
