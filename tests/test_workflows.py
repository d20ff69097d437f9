"""Shipped workflows: valid against the live node schemas, listed as templates, and their KFI
parts run end to end on the tiny model through /prompt."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import torch

from comfyhost import ROOT
from workflow_tools import is_widget, recorded_schemas, schema_inputs, ui_to_api, validate_workflow

WORKFLOW_DIR = ROOT / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"))
LOADERS = {"LoadKFInpaintModel", "UNETLoader", "DualCLIPLoader", "VAELoader", "ControlNetLoader",
           "DownloadAndLoadSAM2Model", "CheckpointLoaderSimple"}
# nodes whose model files the test host cannot have (FLUX, SAM2): their parts are replaced, see _runnable
EXTERNAL_MODEL_NODES = {"UNETLoader", "DualCLIPLoader", "VAELoader", "ControlNetLoader", "CLIPTextEncode",
                        "FluxGuidance", "ConditioningZeroOut", "DifferentialDiffusion", "InpaintModelConditioning",
                        "ControlNetInpaintingAliMamaApply", "VAEEncode", "KSampler", "VAEDecode",
                        "DownloadAndLoadSAM2Model", "Sam2Segmentation", "PrimitiveString"}


def test_there_are_workflows():
    names = {p.stem for p in WORKFLOWS}
    assert {"kfi_object_removal", "kfi_sam2_masks"} <= names


@pytest.fixture(scope="module")
def schemas(comfy_server):
    from test_comfy_server import _sample_inputs

    _sample_inputs(comfy_server)  # the sample clips the workflows name, in the host's input folder
    return {**comfy_server.object_info(), **recorded_schemas()}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_valid_and_documented(path, schemas):
    workflow = json.loads(path.read_text())
    assert validate_workflow(workflow, schemas) == []
    types = [n["type"] for n in workflow["nodes"]]
    notes = [n for n in workflow["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes and len(notes[0]["widgets_values"][0]) > 200, "a note explains the workflow"
    for node in workflow["nodes"]:
        if node["type"] in LOADERS:
            models = node["properties"].get("models")
            assert models, f"{node['type']} has no download links (properties.models)"
            for m in models:
                assert m["url"].startswith("https://") and m["directory"] and m["name"]
    assert any(t.startswith("KFI") or t in ("LoadKFInpaintModel", "SymmetricMaskEncode", "KeyframePropagateSampler")
               for t in types)
    assert path.with_suffix(".jpg").is_file(), "every workflow has a thumbnail of the same name"


def test_workflows_are_listed_as_templates(comfy_server):
    templates = comfy_server.get("/workflow_templates")
    assert sorted(templates["comfyui-kfi"]) == sorted(p.stem for p in WORKFLOWS)


def _runnable(prompt: dict) -> dict:
    """The workflow's core-and-KFI part: the tiny model instead of svd_xt, an identity edit instead of
    FLUX, the mask video instead of SAM2."""
    prompt = json.loads(json.dumps(prompt))
    by_type = {}
    for node_id, node in prompt.items():
        by_type.setdefault(node["class_type"], []).append(node_id)
    for node_id in by_type.get("LoadKFInpaintModel", []):
        prompt[node_id]["inputs"]["model"] = "diffusers/tiny-svd"
    for node_id in by_type.get("KFIStitchCrop", []):
        crop = prompt[node_id]["inputs"]["crop"][0]
        prompt[node_id]["inputs"]["edited_crop"] = [crop, 0]  # the 'edit' is the crop itself
    for node_id in by_type.get("KFIMaskPrepare", []):
        source = prompt[node_id]["inputs"]["mask"][0]
        if prompt[source]["class_type"] == "Sam2Segmentation":
            prompt["901"] = {"class_type": "LoadVideo", "inputs": {"file": "kfi_sample_mask.mp4"}}
            prompt["902"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["901", 0]}}
            prompt["903"] = {"class_type": "ImageToMask", "inputs": {"image": ["902", 0], "channel": "red"}}
            prompt[node_id]["inputs"]["mask"] = ["903", 0]
    for node_id in [k for k, v in prompt.items() if v["class_type"] in EXTERNAL_MODEL_NODES]:
        del prompt[node_id]
    for node in prompt.values():  # nothing left may point at a removed node
        for value in node["inputs"].values():
            assert not (isinstance(value, list) and value[0] not in prompt), f"{node['class_type']} -> {value}"
    return prompt


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_end_to_end_on_the_tiny_model(path, schemas, comfy_server):
    from kfi_core.video_io import read_frames
    from test_comfy_server import _sample_inputs

    frames, masks = _sample_inputs(comfy_server)
    prompt = _runnable(ui_to_api(json.loads(path.read_text()), schemas))
    for node in prompt.values():
        if node["class_type"] == "KeyframePropagateSampler":
            node["inputs"]["steps"] = 3
            # a seed per workflow: identical prompts would be served from ComfyUI's cache with no outputs
            node["inputs"]["seed"] = zlib.crc32(path.stem.encode())
    entry = comfy_server.run_prompt(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000]
    saved = [o for o in entry["outputs"].values() if "images" in o and o.get("animated")]
    assert saved, entry["outputs"].keys()
    item = saved[0]["images"][0]
    out, _ = read_frames(Path(comfy_server.base / "output" / item["subfolder"] / item["filename"]))
    assert out.shape == frames.shape
    keep = (torch.nn.functional.max_pool2d(masks, 9, 1, 4) == 0).expand_as(frames)  # away from the (grown) mask
    # two lossy H.264 passes (input file and output file): small mean error outside the mask
    assert (out[keep] - frames[keep]).abs().mean() < 0.03


def test_a_workflow_saved_before_an_optional_widget_existed_still_runs(schemas, comfy_server):
    """Old saved graphs keep loading: a KeyframePropagateSampler saved before its optional blend_known and
    num_samples widgets (13 widget values) converts as the frontend does (the new widgets keep their defaults) and
    runs."""
    path = WORKFLOW_DIR / "kfi_object_removal.json"
    workflow = json.loads(path.read_text())
    sampler = next(n for n in workflow["nodes"] if n["type"] == "KeyframePropagateSampler")
    names = [name for name, spec, _ in schema_inputs(schemas["KeyframePropagateSampler"]) if is_widget(spec)]
    assert names[-2:] == ["blend_known", "num_samples"], names
    sampler["widgets_values"] = sampler["widgets_values"][:-2]  # as saved before blend_known
    assert validate_workflow(workflow, schemas) == []
    prompt = _runnable(ui_to_api(workflow, schemas))
    node = next(v for v in prompt.values() if v["class_type"] == "KeyframePropagateSampler")
    assert "blend_known" not in node["inputs"] and "num_samples" not in node["inputs"]
    node["inputs"].update(steps=2, seed=zlib.crc32(b"pre-blend_known"))
    entry = comfy_server.run_prompt(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000]
