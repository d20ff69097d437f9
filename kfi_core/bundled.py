"""The bundled sample clip: a procedural scene with ground truth, small enough for the tiny model.

A striped, gradient background pans to the right while a red ball crosses it; the mask covers
the ball (grown by 2 pixels), so the task is to remove it. ``make_edited_keyframe`` gives frame 0 with the
ball painted blue: the bundled keyframe edit, for carrying an edit through the clip. ``write_sample_clip``
regenerates every file in ``kfi_core/assets/sample`` (``python -m kfi_core make-sample DIR``);
``load_sample_clip`` reads them (the ComfyUI node KFI Sample Clip).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from kfi_core.errors import VideoFileError
from kfi_core.media.video import read_frames, read_masks, write_frames

SAMPLE_DIR = Path(__file__).resolve().parent / "assets" / "sample"
# The trained demo model (``python -m research.demo_model``, research/demo_model/recipe.json): a diffusers
# folder plus two KFI adapters of the same backbone, the embedded default of ``demo`` and ``bench/results.py``:
# DEMO_ADAPTER, tuned on keyframe edits (carrying an edit through the clip), and DEMO_REMOVAL_ADAPTER, tuned further
# on removal (holes over clean backgrounds, most samples without a keyframe). At the demo model's size one adapter
# trades one task against the other (docs/DEMO_MODEL.md).
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "demo_model"
DEMO_ADAPTER = DEMO_MODEL_DIR / "adapter.safetensors"
DEMO_REMOVAL_ADAPTER = DEMO_MODEL_DIR / "adapter-removal.safetensors"
# Sampling defaults of ``demo`` (and the model rows of bench/results.py) for the demo model, measured on the 6
# held-out clips of docs/RESULTS.md (docs/DEMO_MODEL.md): affine colour matching, since
# its small VAE drifts in colour, and guidance 1.0 on every frame instead of SVD's 1 -> 3, since classifier-free
# guidance lowers this small model's fill (medium removal 15.26 -> 15.80 dB in the mask raw, 18.50 -> 18.66 with
# colour matching). Real SVD models keep SVD's defaults (PropagateSettings).
DEMO_SAMPLING = {"color_match": "affine", "min_guidance": 1.0, "max_guidance": 1.0}


def demo_model_available() -> bool:
    return (DEMO_MODEL_DIR / "model_index.json").is_file() and DEMO_ADAPTER.is_file() and DEMO_REMOVAL_ADAPTER.is_file()


# The bundled keyframe edit: frame SAMPLE_KEYFRAME_INDEX of the sample with the red ball recoloured blue, as a user
# would edit one frame in an image editor. KFI carries it through the clip (the edit adapter's task).
SAMPLE_KEYFRAME_INDEX = 0
SAMPLE_FPS = 7.0
EDITED_KEYFRAME_FILE = "edited_keyframe.png"


def _render_frame(t: int, num_frames: int, height: int, width: int, edited: bool = False):
    """(frame, background, mask grown by 2 px) of time step ``t``, each [C, H, W]; ``edited`` paints the ball blue."""
    yy, xx = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    u = xx + 1.5 * t  # camera pan, pixels per frame
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
    if edited:
        colour = torch.stack([0.1 * shade, 0.3 * shade + 0.05, 0.85 * shade + 0.1])
    else:
        colour = torch.stack([0.85 * shade + 0.1, 0.1 * shade, 0.1 * shade])
    return background * (1 - ball) + colour * ball, background, (dist <= radius + 2).float()[None]


def make_sample_clip(num_frames: int = 8, height: int = 64, width: int = 64) -> dict[str, torch.Tensor]:
    """Frames [F, 3, H, W], masks [F, 1, H, W] and the background without the ball (ground truth)."""
    frames, truth, masks = zip(*(_render_frame(t, num_frames, height, width) for t in range(num_frames)))
    return {"frames": torch.stack(frames), "masks": torch.stack(masks), "ground_truth": torch.stack(truth)}


def make_edited_keyframe(
    num_frames: int = 8, height: int = 64, width: int = 64, index: int = SAMPLE_KEYFRAME_INDEX
) -> torch.Tensor:
    """The sample's frame ``index`` with the ball recoloured blue [3, H, W]: the bundled keyframe edit."""
    return _render_frame(index, num_frames, height, width, edited=True)[0]


def write_sample_clip(folder: str | Path = SAMPLE_DIR) -> Path:

    folder = Path(folder)
    clip = make_sample_clip()
    write_frames(clip["frames"], folder / "frames")
    write_frames(clip["masks"].expand(-1, 3, -1, -1), folder / "masks")
    write_frames(clip["ground_truth"], folder / "ground_truth")
    write_frames(make_edited_keyframe()[None], folder / EDITED_KEYFRAME_FILE)
    return folder


def load_sample_clip(folder: str | Path = SAMPLE_DIR) -> dict:
    """The bundled sample as shipped: frames [F, 3, H, W], masks [F, 1, H, W], edited_keyframe [3, H, W], its index
    and the frame rate. Reads the pack's files only."""

    folder = Path(folder)
    keyframe_file = folder / EDITED_KEYFRAME_FILE
    if not keyframe_file.is_file():
        raise VideoFileError(
            f"sample clip: {keyframe_file} is missing (a partial install?). Reinstall the pack, or regenerate the "
            "sample with kfi_core.bundled.write_sample_clip()."
        )
    frames, _ = read_frames(folder / "frames")
    keyframe, _ = read_frames(keyframe_file)
    return {
        "frames": frames,
        "masks": read_masks(folder / "masks"),
        "edited_keyframe": keyframe[0],
        "keyframe_index": SAMPLE_KEYFRAME_INDEX,
        "fps": SAMPLE_FPS,
    }
