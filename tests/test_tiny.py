"""The tiny model is a real SVD img2vid pipeline: diffusers loads and runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from kfi_core.errors import KfiError
from kfi_core.model.tiny import build_tiny_components, build_tiny_pipeline_folder


def test_folder_loads_in_diffusers_and_runs(tiny_model_dir):
    from diffusers import StableVideoDiffusionPipeline
    from PIL import Image

    pipe = StableVideoDiffusionPipeline.from_pretrained(tiny_model_dir)
    assert pipe.unet.config.num_frames == 8
    assert pipe.unet.config.in_channels == 8
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    image = Image.new("RGB", (64, 64), (120, 40, 200))
    frames = pipe(
        image,
        height=64,
        width=64,
        num_frames=8,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).frames
    assert frames.shape == (1, 8, 64, 64, 3)


def test_same_seed_same_weights_other_seed_differs():
    a = build_tiny_components(seed=3)["unet"].state_dict()
    b = build_tiny_components(seed=3)["unet"].state_dict()
    c = build_tiny_components(seed=4)["unet"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_frames_are_configurable_and_folder_is_small(tmp_path):
    out = build_tiny_pipeline_folder(tmp_path / "m14", num_frames=14, seed=1)
    import json

    assert json.loads((out / "unet" / "config.json").read_text())["num_frames"] == 14
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 16 * 2**20, f"tiny model is {size / 2**20:.1f} MB"
    assert not list(out.rglob("*.bin")), "weights must be safetensors"


def test_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("user data")
    with pytest.raises(KfiError, match="already exists"):
        build_tiny_pipeline_folder(tmp_path / "x")


@pytest.mark.slow
def test_cli_make_tiny_model(tmp_path):
    out = tmp_path / "cli-model"
    proc = subprocess.run(
        [sys.executable, "-m", "kfi_core", "make-tiny-model", str(out), "--frames", "6", "--seed", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "model_index.json").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "kfi_core", "make-tiny-model", str(out)], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2
    assert "already exists" in bad.stderr and "Traceback" not in bad.stderr
