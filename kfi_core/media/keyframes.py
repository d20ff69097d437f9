"""Keyframes: pick a frame out of a clip, put edited frames back.

Layout: ``frames`` float [F, C, H, W] in 0..1; ``masks`` [F, 1, H, W].
"""

from __future__ import annotations

import torch

from kfi_core.errors import InputMismatchError, KeyframeError


def check_frame_index(index: int, num_frames: int, name: str = "keyframe_index") -> int:
    """Return ``index`` (negative counts from the end) or raise if it is outside the clip."""
    if not -num_frames <= index < num_frames:
        raise KeyframeError(
            f"{name}: got {index} for a clip of {num_frames} frames. "
            f"Give an index from 0 to {num_frames - 1} (or -1 for the last frame)."
        )
    return index % num_frames


def select_frame(frames: torch.Tensor, index: int) -> torch.Tensor:
    """The frame at ``index`` as a one-frame clip [1, C, H, W] (a copy)."""
    i = check_frame_index(index, frames.shape[0], "index")
    return frames[i : i + 1].clone()


def insert_keyframes(frames: torch.Tensor, keyframes: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """A copy of ``frames`` with ``keyframes[j]`` placed at ``indices[j]``.

    One keyframe per index; sizes and channels must match the clip (nothing is resized).
    """
    if keyframes.shape[0] != len(indices):
        raise KeyframeError(
            f"keyframe_index: got {len(indices)} indices for {keyframes.shape[0]} keyframe images. "
            "Give exactly one index per keyframe image."
        )
    if keyframes.shape[1:] != frames.shape[1:]:
        raise InputMismatchError(
            f"keyframes: image size {list(keyframes.shape[2:])} with {keyframes.shape[1]} channels does not match "
            f"the clip's {list(frames.shape[2:])} with {frames.shape[1]} channels. Crop or stitch the edited "
            "keyframe back to the clip's size before inserting it."
        )
    resolved = [check_frame_index(i, frames.shape[0]) for i in indices]
    if len(set(resolved)) != len(resolved):
        raise KeyframeError(f"keyframe_index: indices {indices} name the same frame twice; give each frame once.")
    out = frames.clone()
    for j, i in enumerate(resolved):
        out[i] = keyframes[j].to(out.dtype)
    return out


def parse_indices(text: str) -> list[int]:
    """``"0, 40,-1"`` -> ``[0, 40, -1]``; a clear error for anything else."""
    parts = [p.strip() for p in str(text).replace(";", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise KeyframeError(
            f"indices: could not read {text!r}; give whole frame numbers separated by commas, e.g. '0, 40'."
        ) from None
    if not values:
        raise KeyframeError("indices: empty; give at least one frame number, e.g. '0'.")
    return values
