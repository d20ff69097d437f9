"""Shared fixtures. Models come only from kfi_core.model.tiny: built once per test run, no downloads."""

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
    from kfi_core.model.tiny import build_tiny_pipeline_folder

    return build_tiny_pipeline_folder(tmp_path_factory.mktemp("models") / "tiny-svd", num_frames=8, seed=0)


@pytest.fixture(scope="session")
def tiny_components() -> dict:
    """Fresh in-memory tiny components (8 frames, seed 0). Do not modify them in a test."""
    from kfi_core.model.tiny import build_tiny_components

    return build_tiny_components(num_frames=8, seed=0)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """One real ComfyUI server for the session: pack linked in, tiny model in models/diffusers."""
    import subprocess

    from comfyhost import ComfyServer, make_base_dir

    base = make_base_dir(tmp_path_factory.mktemp("comfy-base"), tiny_model=True)
    tiny = base / "models" / "diffusers" / "tiny-svd"
    # a single-file copy (as svd_xt.safetensors would sit in checkpoints) and a fresh adapter
    for args in (
        ["convert", str(tiny), str(base / "models" / "checkpoints" / "svd_tiny_xt.safetensors")],
        ["init-adapter", str(tiny), str(base / "models" / "kfi_adapters" / "kfi_tiny.safetensors")],
    ):
        subprocess.run([sys.executable, "-m", "kfi_core", *args], check=True, capture_output=True, cwd=ROOT)
    with ComfyServer(base) as server:
        yield server


# Tests that start a real ComfyUI server (or drive its editor in a browser) are marked by the fixtures they use, so a
# new test gets its mark without anyone remembering it: `pytest -m "not slow and not comfy and not browser"` is the
# fast loop (pyproject.toml declares the marks).
_SERVER_FIXTURES = {"comfy_server", "browser_server"}
_BROWSER_FIXTURES = {"browser_server", "page"}


def pytest_collection_modifyitems(items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & _SERVER_FIXTURES or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.comfy)
        if used & _BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)
