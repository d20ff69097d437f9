"""Faults: out of device memory (retried with smaller chunks), cancel (nothing left referenced), failed writes."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from kfi_core.errors import CancelledError
from kfi_core.inference.condition import prepare_clip
from kfi_core.inference.executor import propagate
from kfi_core.inference.memory import is_out_of_memory, retry_on_oom
from kfi_core.inference.settings import PropagateSettings

ROOT = Path(__file__).resolve().parents[1]


def _clip(n=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 1, size, size)
    masks[:, :, 16:40, 20:44] = 1.0
    return prepare_clip(torch.rand(n, 3, size, size, generator=g), masks)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from kfi_core.model.loading import load_kfi_model

    return load_kfi_model(tiny_model_dir)


# --------------------------------------------------------------------------- out of memory


def test_is_out_of_memory_recognises_torch_and_runtime_errors():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_retry_halves_down_to_the_floor_then_reraises(caplog):
    calls = []

    def fn(chunk):
        calls.append(chunk)
        if chunk > 3:
            raise torch.OutOfMemoryError(f"out of memory at {chunk}")
        return chunk

    with caplog.at_level(logging.WARNING, logger="kfi_core.inference.memory"):
        assert retry_on_oom(fn, 16) == 2
    assert calls == [16, 8, 4, 2]
    assert caplog.text.count("out of device memory with decode_chunk_size") == 3

    calls.clear()
    with pytest.raises(torch.OutOfMemoryError, match="at 4"):
        retry_on_oom(fn, 16, floor=4)
    assert calls == [16, 8, 4]
    with pytest.raises(ValueError):  # other errors are not retried
        retry_on_oom(lambda c: (_ for _ in ()).throw(ValueError("bad")), 8)


@pytest.mark.parametrize("limit, reached", [(1, 1), (3, 2), (4, 4)])
def test_decode_out_of_memory_retries_and_matches_the_small_chunk_run(model, monkeypatch, caplog, limit, reached):
    """A VAE that 'runs out of memory' above ``limit`` frames gives the result of a run with the chunk the
    halving reaches (8 -> 4 -> 2 -> 1)."""
    clip = _clip(n=6)
    reference = propagate(model, clip, PropagateSettings(steps=1, decode_chunk_size=reached))
    real_decode = type(model.vae).decode
    sizes = []

    def decode(self, z, *args, num_frames=None, **kwargs):
        sizes.append(z.shape[0])
        if z.shape[0] > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated, {z.shape[0]} frames)")
        return real_decode(self, z, *args, num_frames=num_frames, **kwargs)

    monkeypatch.setattr(type(model.vae), "decode", decode)
    with caplog.at_level(logging.WARNING, logger="kfi_core.inference.memory"):
        got = propagate(model, clip, PropagateSettings(steps=1, decode_chunk_size=8))
    assert torch.equal(got, reference)
    assert "out of device memory with decode_chunk_size=8" in caplog.text
    assert sizes[0] == 6 and reached in sizes, sizes
    assert all(s <= reached for s in sizes[sizes.index(reached) :]), sizes


def test_decode_out_of_memory_at_one_frame_is_raised(model, monkeypatch):
    def decode(self, z, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(type(model.vae), "decode", decode)
    with pytest.raises(torch.OutOfMemoryError):
        propagate(model, _clip(), PropagateSettings(steps=1))


def test_encode_out_of_memory_retries(model, monkeypatch, caplog):
    clip = _clip(n=6)
    reference = propagate(model, clip, PropagateSettings(steps=1, encode_chunk_size=2))
    real_encode = type(model.vae).encode

    def encode(self, x, *args, **kwargs):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_encode(self, x, *args, **kwargs)

    monkeypatch.setattr(type(model.vae), "encode", encode)
    with caplog.at_level(logging.WARNING, logger="kfi_core.inference.memory"):
        got = propagate(model, clip, PropagateSettings(steps=1, encode_chunk_size=8))
    assert torch.allclose(got, reference, atol=1e-6)
    assert "encode_chunk_size=8" in caplog.text


# --------------------------------------------------------------------------- cancel


def _cancelled_run(model, refs: list) -> int:
    """Run until step 2, cancel there; keep only weak references to the latents the sampler saw."""
    steps = {"n": 0}

    def callback(info):
        refs.append(weakref.ref(info["x"]))
        refs.append(weakref.ref(info["denoised"]))

    def check_cancel():
        steps["n"] += 1
        if steps["n"] > 2:
            raise CancelledError("cancelled by the test")

    try:
        propagate(model, _clip(), PropagateSettings(steps=10), callback=callback, check_cancel=check_cancel)
    except CancelledError:
        pass
    return steps["n"]


def test_cancel_stops_within_a_step_and_leaves_nothing_referenced(model):
    refs: list = []
    calls = _cancelled_run(model, refs)
    assert calls == 3, "stopped at the first check after the cancel"
    assert len(refs) == 4, "two steps ran, none after the cancel"
    gc.collect()
    alive = [r for r in refs if r() is not None]
    assert not alive, f"{len(alive)} latent tensors still referenced after the cancelled run"


# --------------------------------------------------------------------------- failed writes

FAILING_WRITE = r"""
import sys, av
real_open = av.open
class Failing:  # the real output container, but the disk "fills up" at the second packet
    def __init__(self, c): self.c, self.n = c, 0
    def __getattr__(self, name): return getattr(self.c, name)
    def __enter__(self): return self
    def __exit__(self, *exc): return self.c.__exit__(*exc)
    def mux(self, packets):
        self.n += 1
        if self.n > 1:
            raise OSError(28, "No space left on device (simulated)")
        return self.c.mux(packets)
def fake_open(path, mode="r", **kw):
    return Failing(real_open(path, mode, **kw)) if mode == "w" else real_open(path, mode, **kw)
av.open = fake_open
from kfi_core.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_cli_write_that_fails_leaves_no_partial_output(tmp_path, tiny_model_dir):
    from kfi_core.bundled import SAMPLE_DIR

    out = tmp_path / "out" / "result.mp4"
    out.parent.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            FAILING_WRITE,
            "inpaint",
            "--model",
            str(tiny_model_dir),
            "--video",
            str(SAMPLE_DIR / "frames"),
            "--mask",
            str(SAMPLE_DIR / "masks"),
            "--out",
            str(out),
            "--steps",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "cannot write it" in proc.stderr and "No space left" in proc.stderr and "Traceback" not in proc.stderr
    assert list(out.parent.iterdir()) == [], "no partial or temporary file is left"
