"""The pack inside a real ComfyUI server (ComfyUI 0.3.75, CPU, loopback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from comfyhost import ROOT, ComfyServer, make_base_dir, missing_nodes
from kfi_testing import encode_node, pack_script, sampler_node, tiny_model_node
from PIL import Image

# Every node the pack registers. A node missing from /object_info means the pack failed to load.
EXPECTED_NODES = [
    "LoadKFInpaintModel",
    "KFISymmetricMaskEncode",
    "KFIConditionPreview",
    "KeyframePropagateSampler",
    "LongVideoAnchorSchedule",
    "KFIModelInfo",
    "KFIMaskPrepare",
    "KFISelectKeyframe",
    "KFIInsertKeyframes",
    "KFICropForInpaint",
    "KFIStitchCrop",
    "LoadKFInpaintCheckpoint",
    "KFISampleClip",
    "SymmetricMaskEncode",  # deprecated: graphs saved with it still run
]


def test_every_node_is_listed_with_display_name_and_category(comfy_server):
    info = comfy_server.object_info()
    assert missing_nodes(info, EXPECTED_NODES) == [], comfy_server.log_tail()
    for name in EXPECTED_NODES:
        node = info[name]
        assert node["display_name"] and node["display_name"] != name
        assert node["category"] == "KFI" or node["category"].startswith("KFI/"), node["category"]
        assert node["description"], f"{name} has no description"
        for spec in {**node["input"].get("required", {}), **node["input"].get("optional", {})}.values():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}: an input has no tooltip"


@pytest.mark.comfy
def test_a_broken_pack_is_detected(tmp_path):
    """ComfyUI keeps going when a pack fails to import, so the check must look for our nodes."""
    pack = tmp_path / "pack"
    shutil.copytree(ROOT, pack, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "tests", "out"))
    init = pack / "nodes" / "__init__.py"
    init.write_text('raise RuntimeError("KFI broken on purpose")\n' + init.read_text())
    base = make_base_dir(tmp_path / "base", pack_dir=pack)
    with ComfyServer(base) as server:
        missing = missing_nodes(server.object_info(), EXPECTED_NODES)
        log = server.log_text()
    assert missing == EXPECTED_NODES
    assert "KFI broken on purpose" in log


def _save_mask_png(path: Path, mask: np.ndarray) -> None:
    Image.fromarray((mask * 255).astype(np.uint8), mode="L").save(path)


def test_mask_prepare_runs_through_prompt(comfy_server):
    from kfi_core.media.mask_ops import grow

    mask = np.zeros((32, 48), dtype=np.float32)
    mask[10:20, 12:30] = 1.0
    _save_mask_png(comfy_server.base / "input" / "kfi_test_mask.png", mask)
    prompt = {
        "1": {"class_type": "LoadImageMask", "inputs": {"image": "kfi_test_mask.png", "channel": "red"}},
        "2": {
            "class_type": "KFIMaskPrepare",
            "inputs": {"mask": ["1", 0], "threshold": 0.5, "grow": 3, "temporal_dilation": 0, "feather": 0},
        },
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "kfi_mask_prepare"}},
    }
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    saved = entry["outputs"]["4"]["images"][0]
    got = np.asarray(Image.open(comfy_server.base / "output" / saved["subfolder"] / saved["filename"]))[..., 0]
    want = grow(torch.from_numpy(mask)[None, None], 3)[0, 0].numpy()
    assert got.shape == mask.shape
    assert np.array_equal(got > 127, want > 0.5)
    assert want.sum() > mask.sum(), "growing must add pixels"


def test_bad_input_comes_back_as_execution_error_and_server_keeps_serving(comfy_server):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 3, "color": 0}},
        "2": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}},
        "3": {"class_type": "KFISelectKeyframe", "inputs": {"images": ["1", 0], "mask": ["2", 0], "index": 7}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["exception_type"].endswith("KeyframeError")
    assert "index: got 7 for a clip of 3 frames" in errors[0]["exception_message"]
    # the server still answers and runs the next prompt
    prompt["3"]["inputs"]["index"] = -1
    assert comfy_server.run_prompt(prompt)["status"]["status_str"] == "success"


def test_importing_the_pack_is_cheap_and_names_missing_dependencies(tmp_path):
    """Heavy libraries load when a node runs, not at ComfyUI start-up; a missing one is named."""
    script = pack_script("""
ext = asyncio.run(pack.comfy_entrypoint())
nodes = asyncio.run(ext.get_node_list())
heavy = [m for m in ("diffusers", "peft", "accelerate") if m in sys.modules]
print("HEAVY", heavy, "NODES", len(nodes))
pack.REQUIRED_MODULES["kfi_no_such_module"] = "kfi-no-such-package"
try:
    asyncio.run(pack.comfy_entrypoint())
except ImportError as err:
    print("ERROR", err)
""")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"HEAVY [] NODES {len(EXPECTED_NODES)}" in proc.stdout
    assert "missing Python packages: kfi-no-such-package" in proc.stdout
    assert "pip install -r" in proc.stdout and "requirements.txt" in proc.stdout


def test_model_dropdowns_list_folders_and_single_files(comfy_server):
    inputs = comfy_server.get("/object_info/LoadKFInpaintModel")["LoadKFInpaintModel"]["input"]["required"]
    models = inputs["model"][0] if isinstance(inputs["model"][0], list) else inputs["model"][1]["options"]
    assert "diffusers/tiny-svd" in models
    assert not any(m.startswith("checkpoints/") for m in models)  # single files: the checkpoint loader
    ckpt = comfy_server.get("/object_info/LoadKFInpaintCheckpoint")["LoadKFInpaintCheckpoint"]["input"]["required"]
    files = ckpt["ckpt_name"][0] if isinstance(ckpt["ckpt_name"][0], list) else ckpt["ckpt_name"][1]["options"]
    # plain names, as properties.models names them (other tests on this server add files of their own)
    assert "svd_tiny_xt.safetensors" in files and all("/" not in f and f.endswith(".safetensors") for f in files)
    adapters = inputs["adapter"][0] if isinstance(inputs["adapter"][0], list) else inputs["adapter"][1]["options"]
    assert adapters[0] == "none" and "kfi_adapters/kfi_tiny.safetensors" in adapters
    # the demo model shipped in the pack is always offered, so workflows run without downloads
    assert "bundled/kfi-demo-64px" in models and "bundled/kfi-demo-64px.safetensors" in adapters
    assert "bundled/kfi-demo-64px-removal.safetensors" in adapters  # its adapter tuned on removal


@pytest.mark.parametrize(
    "model, adapter, channels, rank, frames",
    [
        ("diffusers/tiny-svd", "none", 8, None, 8),
        ("diffusers/tiny-svd", "kfi_adapters/kfi_tiny.safetensors", 12, 32, 8),
        ("checkpoints/svd_tiny_xt.safetensors", "none", 8, None, 8),  # a value saved by older workflows still runs
        ("bundled/kfi-demo-64px", "bundled/kfi-demo-64px.safetensors", 12, 32, 8),
        ("bundled/kfi-demo-64px", "bundled/kfi-demo-64px-removal.safetensors", 12, 32, 8),
    ],
)
def test_load_model_and_show_info_through_prompt(comfy_server, model, adapter, channels, rank, frames):
    prompt = {
        "1": {
            "class_type": "LoadKFInpaintModel",
            "inputs": {"model": model, "adapter": adapter, "dtype": "auto", "frames": 0},
        },
        "2": {"class_type": "KFIModelInfo", "inputs": {"kfi_model": ["1", 0]}},
    }
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    info = json.loads(entry["outputs"]["2"]["text"][0])
    assert (info["unet_in_channels"], info["lora_rank"], info["num_frames"]) == (channels, rank, frames)
    assert info["dtype"] == "float32"  # auto on CPU


def test_single_file_loader_runs_through_prompt(comfy_server):
    prompt = {
        "1": {
            "class_type": "LoadKFInpaintCheckpoint",
            "inputs": {"ckpt_name": "svd_tiny_xt.safetensors", "adapter": "none", "dtype": "auto", "frames": 0},
        },
        "2": {"class_type": "KFIModelInfo", "inputs": {"kfi_model": ["1", 0]}},
    }
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    assert json.loads(entry["outputs"]["2"]["text"][0])["num_frames"] == 8


@pytest.mark.parametrize(
    "node, name, value",
    [
        ("LoadKFInpaintModel", "model", "../../etc/passwd"),
        ("LoadKFInpaintModel", "model", "checkpoints/not_there.safetensors"),
        ("LoadKFInpaintCheckpoint", "ckpt_name", "../../etc/passwd"),
        ("LoadKFInpaintCheckpoint", "ckpt_name", "svd_xt.safetensors"),
    ],
)
def test_model_names_outside_the_lists_are_refused(comfy_server, node, name, value):
    """ComfyUI 0.3.75 does not check V3 combo values itself: the loaders' validate_inputs refuse them before
    anything runs, naming the value (the missing-models dialog matches the same names)."""
    from comfyhost import PromptRejected

    prompt = {
        "1": {"class_type": node, "inputs": {name: value, "adapter": "none", "dtype": "auto", "frames": 0}},
        "2": {"class_type": "KFIModelInfo", "inputs": {"kfi_model": ["1", 0]}},
    }
    with pytest.raises(PromptRejected) as refused:
        comfy_server.run_prompt(prompt)
    errors = refused.value.body["node_errors"]["1"]["errors"]
    assert errors[0]["extra_info"]["input_name"] == name
    assert f"{value!r} is not in models/" in errors[0]["details"]


def _sample_inputs(comfy_server):
    """The sample clip and its masks as mp4 files in ComfyUI's input folder; our own decode of them."""
    from kfi_core.bundled import make_sample_clip
    from kfi_core.media.video import read_frames, write_frames

    clip = make_sample_clip()
    video, mask = comfy_server.base / "input" / "kfi_sample.mp4", comfy_server.base / "input" / "kfi_sample_mask.mp4"
    if not video.exists():
        write_frames(clip["frames"], video)
        write_frames(clip["masks"].expand(-1, 3, -1, -1), mask)
    frames, _ = read_frames(video)
    masks, _ = read_frames(mask)
    return frames, (masks[:, :1] > 0.5).float()


def _removal_prompt(steps=2, keyframe_indices="", seed=0, color_match=None, num_samples=None):
    prompt = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": "kfi_sample.mp4"}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "LoadVideo", "inputs": {"file": "kfi_sample_mask.mp4"}},
        "4": {"class_type": "GetVideoComponents", "inputs": {"video": ["3", 0]}},
        "5": {"class_type": "ImageToMask", "inputs": {"image": ["4", 0], "channel": "red"}},
        "6": tiny_model_node(),
        "7": encode_node("6", ["2", 0], ["5", 0], keyframe_indices=keyframe_indices),
        "8": sampler_node("6", "7", seed=seed, steps=steps),
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": f"kfi_removal_{seed}"}},
    }
    if color_match is not None:  # optional input: prompts from before it existed leave it out
        prompt["8"]["inputs"]["color_match"] = color_match
        prompt["9"]["inputs"]["filename_prefix"] += f"_{color_match}"
    if num_samples is not None:  # optional input, as color_match
        prompt["8"]["inputs"]["num_samples"] = num_samples
        prompt["9"]["inputs"]["filename_prefix"] += f"_n{num_samples}"
    return prompt


def _saved_frames(comfy_server, entry, node="9"):
    images = entry["outputs"][node]["images"]
    arrays = [np.asarray(Image.open(comfy_server.base / "output" / im["subfolder"] / im["filename"])) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def test_object_removal_end_to_end(comfy_server):
    frames, masks = _sample_inputs(comfy_server)
    entry = comfy_server.run_prompt(_removal_prompt(seed=1))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000]
    out = _saved_frames(comfy_server, entry)
    assert out.shape == frames.shape
    keep = (masks == 0).expand_as(frames)
    # SaveImage truncates x*255 to uint8, so an exact input pixel may come back one level lower
    assert (out[keep] - frames[keep]).abs().max() <= 1 / 255 + 1e-6
    assert (out[~keep] - frames[~keep]).abs().mean() > 0.02, "the masked region is generated"
    entry = comfy_server.run_prompt(_removal_prompt(seed=1, color_match="affine"))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000]
    matched = _saved_frames(comfy_server, entry)
    assert torch.equal(matched[keep], out[keep]) and not torch.equal(matched, out)


def test_num_samples_averages_seeds_in_the_server(comfy_server):
    frames, masks = _sample_inputs(comfy_server)
    runs = {}
    for seed, n in ((4, None), (5, None), (4, 2)):
        entry = comfy_server.run_prompt(_removal_prompt(seed=seed, num_samples=n))
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000]
        runs[seed, n] = _saved_frames(comfy_server, entry)
    mean = runs[4, 2]
    keep = (masks == 0).expand_as(frames)
    assert (mean[keep] - frames[keep]).abs().max() <= 1 / 255 + 1e-6
    # the mean of seeds 4 and 5, within SaveImage's truncation to 8 bits (under 1/255 each)
    assert (mean - (runs[4, None] + runs[5, None]) / 2).abs().max() <= 2 / 255
    assert (runs[4, None] - runs[5, None]).abs().max() > 4 / 255, "the two seeds differ"


def test_seam_smoothing_reaches_a_long_clip_in_the_server(comfy_server):
    """A 16-frame clip (the sample twice, RepeatImageBatch) is longer than the tiny model's window, so the sampler runs
    the anchor schedule; seam_smoothing 0 differs from the default 3 inside the mask only, and a prompt without the
    input (saved before it existed) gets the default."""
    frames, masks = _sample_inputs(comfy_server)
    runs = {}
    for value in (None, 0, 3):
        prompt = _removal_prompt(seed=6)
        prompt["10"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 2}}
        prompt["11"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["4", 0], "amount": 2}}
        prompt["5"]["inputs"]["image"] = ["11", 0]
        prompt["7"]["inputs"]["images"] = ["10", 0]
        if value is not None:
            prompt["8"]["inputs"]["seam_smoothing"] = value
        prompt["9"]["inputs"]["filename_prefix"] = f"kfi_seams_{value}"
        entry = comfy_server.run_prompt(prompt)
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000]
        runs[value] = _saved_frames(comfy_server, entry)
    long_frames, keep = frames.repeat(2, 1, 1, 1), (masks == 0).expand_as(frames).repeat(2, 1, 1, 1)
    assert runs[0].shape == long_frames.shape
    for out in runs.values():
        assert (out[keep] - long_frames[keep]).abs().max() <= 1 / 255 + 1e-6
    assert torch.equal(runs[None], runs[3]), "no input = the default, 3 frames"
    assert (runs[0][~keep] - runs[3][~keep]).abs().max() > 2 / 255, "smoothing moved the fill"


def test_the_schedule_node_passes_keyframe_windows(comfy_server):
    """The schedule node's keyframe_windows builds the library's anchor schedule with that option: its preview is
    render_schedule_preview of build_schedule(..., keyframe_windows=True), and differs from the plain plan's."""
    from kfi_core.inference import build_schedule, render_schedule_preview

    previews = {}
    for on in (False, True):
        inputs = {"strategy": "anchor", "window": 8, "anchor_spacing": 0, "frames": 40, "keyframe_indices": "0,30"}
        prompt = {
            "1": {"class_type": "LongVideoAnchorSchedule", "inputs": {**inputs, "keyframe_windows": on}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 1], "filename_prefix": f"kfi_plan_{on}"}},
        }
        entry = comfy_server.run_prompt(prompt)
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000]
        previews[on] = _saved_frames(comfy_server, entry, node="2")[0]
        want = render_schedule_preview(
            build_schedule("anchor", 40, 8, [0, 30], **({"keyframe_windows": True} if on else {}))
        )
        want = torch.from_numpy(np.ascontiguousarray(want)).permute(2, 0, 1).float() / 255
        assert previews[on].shape == want.shape and (previews[on] - want).abs().max() <= 1 / 255 + 1e-6
    assert previews[True].shape != previews[False].shape or not torch.equal(previews[True], previews[False])


def test_sampler_errors_come_back_through_the_server(comfy_server):
    _sample_inputs(comfy_server)
    prompt = _removal_prompt(keyframe_indices="12")
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "error"
    error = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"][0]
    assert error["node_type"] == "KFISymmetricMaskEncode"
    assert "got 12 for a clip of 8 frames" in error["exception_message"]
    prompt = _removal_prompt()
    prompt["5"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 64}}
    entry = comfy_server.run_prompt(prompt)
    error = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"][0]
    assert "mask size 32x64 (width x height) does not match the frames' 64x64" in error["exception_message"]
    assert comfy_server.run_prompt(_removal_prompt(seed=2))["status"]["status_str"] == "success"


def test_cancel_stops_the_sampler_within_a_step(comfy_server):
    import time

    _sample_inputs(comfy_server)
    status, body = comfy_server.post("/prompt", {"prompt": _removal_prompt(steps=200, seed=3)})
    assert status == 200, body
    prompt_id = body["prompt_id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until it is running
        if comfy_server.get("/queue")["queue_running"]:
            break
        time.sleep(0.1)
    time.sleep(1.5)
    t0 = time.monotonic()
    comfy_server.post("/interrupt", {})
    while time.monotonic() < deadline:
        history = comfy_server.get(f"/history/{prompt_id}")
        if prompt_id in history:
            break
        time.sleep(0.05)
    stopped_after = time.monotonic() - t0
    messages = [m[0] for m in history[prompt_id]["status"]["messages"]]
    assert "execution_interrupted" in messages, messages
    assert stopped_after < 10, f"took {stopped_after:.1f} s to stop"  # 200 steps would take far longer
    assert comfy_server.run_prompt(_removal_prompt(seed=4))["status"]["status_str"] == "success"
