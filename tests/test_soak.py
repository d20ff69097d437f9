"""A bounded soak of the real ComfyUI server (loopback only): many prompts, mixed, and memory back near baseline.

110 prompts in a fixed order: mask preparations (values checked against kfi_core), short sampler runs (4 frames,
1 step; pixels outside the mask checked), malformed prompts (refused at validation, or execution errors from
bad inputs) and cancels (POST /interrupt during a 200-step run). The server must stay up, every valid prompt must
give the right values, and the server's resident memory after the run must be within
``max(1.5 x baseline, baseline + 300 MB)`` of its value after a warm-up of each kind.
"""

from __future__ import annotations

import json
import time

import numpy as np
import psutil
import pytest
import torch
from kfi_testing import encode_node, sampler_node, tiny_model_node
from PIL import Image

PROMPTS = 110
RSS_FACTOR, RSS_SLACK_MB = 1.5, 300
COLOR = 0x406080  # EmptyImage colour: R 0x40, G 0x60, B 0x80
H = W = 64


def _mask_array() -> np.ndarray:
    m = np.zeros((H, W), dtype=np.float32)
    m[20:36, 16:40] = 1.0
    return m


def mask_prompt(i: int) -> dict:
    grow = i % 7 - 3
    threshold = 0.3 + (i % 50) / 100  # masks are 0/1, so the result is the same; a new value defeats the cache
    return {
        "1": {"class_type": "LoadImageMask", "inputs": {"image": "kfi_soak_mask.png", "channel": "red"}},
        "2": {
            "class_type": "KFIMaskPrepare",
            "inputs": {"mask": ["1", 0], "threshold": threshold, "grow": grow, "temporal_dilation": 0, "feather": 0},
        },
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": f"kfi_soak_mask_{i}"}},
    }


def sampler_prompt(i: int, steps: int = 1, frames: int = 4, mask_frames: int | None = None, index: str = "") -> dict:
    mask = (
        {"class_type": "LoadImageMask", "inputs": {"image": "kfi_soak_mask.png", "channel": "red"}}
        if mask_frames is None
        else {"class_type": "ImageToMask", "inputs": {"image": ["mi", 0], "channel": "red"}}
    )
    prompt = {
        "m": tiny_model_node(),
        "img": {"class_type": "EmptyImage", "inputs": {"width": W, "height": H, "batch_size": frames, "color": COLOR}},
        "mask": mask,
        "enc": encode_node("m", ["img", 0], ["mask", 0], keyframe_indices=index),
        "s": sampler_node("m", "enc", seed=i, steps=steps),
        "out": {"class_type": "SaveImage", "inputs": {"images": ["s", 0], "filename_prefix": f"kfi_soak_run_{i}"}},
    }
    if mask_frames is not None:
        prompt["mi"] = {
            "class_type": "EmptyImage",
            "inputs": {"width": W, "height": H, "batch_size": mask_frames, "color": 0xFFFFFF},
        }
    return prompt


def _saved(server, entry, node: str) -> np.ndarray:
    images = entry["outputs"][node]["images"]
    return np.stack(
        [np.asarray(Image.open(server.base / "output" / im["subfolder"] / im["filename"])) for im in images]
    )


def _errors(entry) -> list[dict]:
    return [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]


def _wait_running(server, prompt_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = server.get("/queue")["queue_running"]
        if any(item[1] == prompt_id for item in running):
            return
        time.sleep(0.05)
    raise TimeoutError(f"prompt {prompt_id} did not start")


def _wait_history(server, prompt_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            return entry
        time.sleep(0.1)
    raise TimeoutError(f"prompt {prompt_id} did not finish")


class Soak:
    def __init__(self, server):
        from kfi_core.media.mask_ops import grow

        self.server = server
        self.counts = {"mask": 0, "sample": 0, "rejected": 0, "error": 0, "cancel": 0}
        self.failures: list[str] = []
        self.stop_seconds: list[float] = []
        mask = torch.from_numpy(_mask_array())[None, None]
        self.want_masks = {g: grow(mask, g)[0, 0].numpy() > 0.5 for g in range(-3, 4)}
        self.color = torch.tensor([(COLOR >> 16) & 255, (COLOR >> 8) & 255, COLOR & 255], dtype=torch.uint8).numpy()

    def fail(self, i: int, kind: str, detail: str) -> None:
        self.failures.append(f"#{i} {kind}: {detail[:500]}")

    def run(self, i: int) -> None:
        kind = i % 10
        if kind < 6:
            self.mask(i)
        elif kind == 6:
            self.sample(i)
        elif kind == 7:
            self.rejected(i)
        elif kind == 8:
            self.error(i)
        else:
            self.cancel(i)

    def mask(self, i: int) -> None:
        self.counts["mask"] += 1
        entry = self.server.run_prompt(mask_prompt(i))
        if entry["status"]["status_str"] != "success":
            return self.fail(i, "mask", json.dumps(entry["status"]))
        got = _saved(self.server, entry, "4")[0][..., 0] > 127
        if not np.array_equal(got, self.want_masks[i % 7 - 3]):
            self.fail(i, "mask", f"wrong mask for grow {i % 7 - 3}")

    def sample(self, i: int) -> None:
        self.counts["sample"] += 1
        entry = self.server.run_prompt(sampler_prompt(i))
        if entry["status"]["status_str"] != "success":
            return self.fail(i, "sample", json.dumps(entry["status"]))
        out = _saved(self.server, entry, "out")  # [F, H, W, 3] uint8
        keep = _mask_array() == 0
        # SaveImage truncates x*255: the exact input colour may come back one level lower
        diff = np.abs(out[:, keep].astype(int) - self.color.astype(int))
        if out.shape != (4, H, W, 3) or diff.max() > 1:
            self.fail(i, "sample", f"shape {out.shape}, max difference outside the mask {diff.max()}")

    def rejected(self, i: int) -> None:
        self.counts["rejected"] += 1
        bad = [
            {"1": {"class_type": "KFINoSuchNode", "inputs": {}}},
            {"1": {"class_type": "KFIMaskPrepare", "inputs": {"threshold": 0.5}}},
            sampler_prompt(i, steps=0),
        ][i // 10 % 3]
        status, body = self.server.post("/prompt", {"prompt": bad})
        if status != 400:
            self.fail(i, "rejected", f"HTTP {status}: {json.dumps(body)}")

    def error(self, i: int) -> None:
        self.counts["error"] += 1
        prompt, text = [
            (sampler_prompt(i, mask_frames=3), "got 3 masks for 4 frames"),
            (sampler_prompt(i, index="9"), "got 9 for a clip of 4 frames"),
        ][i // 10 % 2]
        entry = self.server.run_prompt(prompt)
        errors = _errors(entry)
        if entry["status"]["status_str"] != "error" or not errors or text not in errors[0]["exception_message"]:
            self.fail(i, "error", json.dumps(entry["status"]))

    def cancel(self, i: int) -> None:
        self.counts["cancel"] += 1
        status, body = self.server.post("/prompt", {"prompt": sampler_prompt(i, steps=200, frames=8)})
        if status != 200:
            return self.fail(i, "cancel", json.dumps(body))
        prompt_id = body["prompt_id"]
        _wait_running(self.server, prompt_id)
        time.sleep(0.3)
        t0 = time.monotonic()
        self.server.post("/interrupt", {})
        entry = _wait_history(self.server, prompt_id)
        self.stop_seconds.append(time.monotonic() - t0)
        if "execution_interrupted" not in [m[0] for m in entry["status"]["messages"]]:
            self.fail(i, "cancel", json.dumps(entry["status"]))


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


@pytest.mark.slow
def test_soak_mixed_prompts(comfy_server):
    from kfi_core.media.video import write_frames  # noqa: F401 - the pack's deps import in this process too

    Image.fromarray((_mask_array() * 255).astype(np.uint8), mode="L").save(
        comfy_server.base / "input" / "kfi_soak_mask.png"
    )
    soak = Soak(comfy_server)
    pid = comfy_server.proc.pid
    t0 = time.monotonic()
    for i in range(10):  # warm-up: each kind once (models loaded, caches filled)
        soak.run(i)
    baseline = _rss_mb(pid)
    for i in range(10, 10 + PROMPTS):
        soak.run(i)
        assert comfy_server.proc.poll() is None, f"the server died at prompt {i}:\n{comfy_server.log_tail()}"
    time.sleep(1.0)
    after = _rss_mb(pid)
    elapsed = time.monotonic() - t0
    limit = max(RSS_FACTOR * baseline, baseline + RSS_SLACK_MB)
    print(
        f"\nsoak: {PROMPTS} prompts after a 10-prompt warm-up in {elapsed:.1f} s: {soak.counts}; "
        f"failures {len(soak.failures)}; cancels stopped in at most {max(soak.stop_seconds):.2f} s; "
        f"server RSS {baseline:.0f} MB after warm-up -> {after:.0f} MB after the run (limit {limit:.0f} MB)"
    )
    assert not soak.failures, "\n".join(soak.failures)
    assert sum(soak.counts.values()) == PROMPTS + 10
    assert max(soak.stop_seconds) < 10
    assert after < limit, f"server RSS grew from {baseline:.0f} MB to {after:.0f} MB"
    # still serving
    assert comfy_server.run_prompt(mask_prompt(3))["status"]["status_str"] == "success"
