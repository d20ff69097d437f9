"""bench/keyframe_use.py: the with/without-keyframe denoiser probe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from conftest import load_with_random_adapter
from kfi_core.procedural import make_procedural_clip

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from keyframe_use import probe_clip  # noqa: E402


def _clip(seed: int = 3):
    return make_procedural_clip("edit", num_frames=8, height=64, width=64, seed=seed, difficulty="easy")


def test_keyframe_equal_to_its_known_frame_changes_nothing(tiny_model_dir):
    """Invariant: a keyframe that is the frame itself, on a frame with no hole, gives the UNet the same
    condition and embedding as no keyframe, so both errors are equal to the bit."""
    model = load_with_random_adapter(tiny_model_dir)
    clip = _clip()
    masks = clip.masks.clone()
    masks[0] = 0.0
    out = probe_clip(model, clip.frames, masks, clip.ground_truth, clip.frames[0], 0, [0.5, 5.0], seed=1)
    for with_kf, without in out.values():
        assert with_kf == without


def test_an_edited_keyframe_changes_the_denoiser(tiny_model_dir):
    model = load_with_random_adapter(tiny_model_dir)
    clip = _clip()
    out = probe_clip(model, clip.frames, clip.masks, clip.ground_truth, clip.keyframe, clip.keyframe_index,
                     [2.0], seed=1)
    with_kf, without = out[2.0]
    assert torch.isfinite(torch.tensor([with_kf, without])).all()
    assert with_kf > 0 and with_kf != without


def test_cli_prints_a_row_per_sigma(tiny_model_dir, tmp_path):
    adapter = tmp_path / "fresh.safetensors"
    subprocess.run([sys.executable, "-m", "kfi_core", "init-adapter", str(tiny_model_dir), str(adapter)],
                   check=True, capture_output=True, cwd=ROOT)
    run = subprocess.run([sys.executable, "bench/keyframe_use.py", "--model", str(tiny_model_dir), "--adapter",
                          str(adapter), "--clips", "1", "--sigmas", "1,8", "--task", "copy", "--static"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines() if line.strip() and line.split()[0] in ("1.00", "8.00")]
    assert [r[0] for r in rows] == ["1.00", "8.00"]
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
