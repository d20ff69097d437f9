"""Shared fixtures. Models come only from kfi_core.tiny: built once per test run, no downloads."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

# Two cores: one intra-op thread keeps tests steady when another process (the ComfyUI server) runs.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny SVD img2vid model (8 frames, seed 0) in diffusers folder layout."""
    from kfi_core.tiny import build_tiny_pipeline_folder

    return build_tiny_pipeline_folder(tmp_path_factory.mktemp("models") / "tiny-svd", num_frames=8, seed=0)


@pytest.fixture(scope="session")
def tiny_components() -> dict:
    """Fresh in-memory tiny components (8 frames, seed 0). Do not modify them in a test."""
    from kfi_core.tiny import build_tiny_components

    return build_tiny_components(num_frames=8, seed=0)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """One real ComfyUI server for the session: pack linked in, tiny model in models/diffusers."""
    from comfyhost import ComfyServer, make_base_dir

    import subprocess

    base = make_base_dir(tmp_path_factory.mktemp("comfy-base"), tiny_model=True)
    tiny = base / "models" / "diffusers" / "tiny-svd"
    # a single-file copy (as svd_xt.safetensors would sit in checkpoints) and a fresh adapter
    for args in (["convert", str(tiny), str(base / "models" / "checkpoints" / "svd_tiny_xt.safetensors")],
                 ["init-adapter", str(tiny), str(base / "models" / "kfi_adapters" / "kfi_tiny.safetensors")]):
        subprocess.run([sys.executable, "-m", "kfi_core", *args], check=True, capture_output=True, cwd=ROOT)
    with ComfyServer(base) as server:
        yield server


def load_with_random_adapter(model_dir, rank: int = 4, std: float = 0.05, seed: int = 0):
    """The tiny model as after some training: 12-channel conv_in and LoRA with random (non-zero)
    weights, seeded, frozen. Tests of sampling and adapters use it instead of a trained adapter."""
    import torch

    from kfi_core.conv_in import expand_conv_in
    from kfi_core.loading import load_kfi_model
    from kfi_core.lora import add_lora, lora_state_dict

    model = load_kfi_model(model_dir)
    expand_conv_in(model.unet)
    add_lora(model.unet, rank=rank)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_state_dict(model.unet).values():
            p.copy_(torch.randn(p.shape, generator=g) * std)
        new = model.unet.conv_in.weight[:, 8:]
        new.copy_(torch.randn(new.shape, generator=g) * std)
    model.unet.requires_grad_(False)
    return model


def unet_forward(unet, latents):
    """One UNet call on latents [B, F, C, h, w] with fixed timestep, image embedding and added time ids."""
    import torch

    batch = latents.shape[0]
    image_embeddings = torch.randn(batch, 1, 32, generator=torch.Generator().manual_seed(1))  # [B, 1, D]
    added_time_ids = torch.tensor([[6.0, 127.0, 0.02]] * batch)  # fps - 1, motion bucket, noise aug
    with torch.no_grad():
        return unet(latents, torch.tensor([1.0]), encoder_hidden_states=image_embeddings,
                    added_time_ids=added_time_ids).sample
