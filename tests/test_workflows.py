"""Shipped workflows: valid against the live node schemas, listed as templates, and their KFI
parts run end to end on the tiny model through /prompt."""

from __future__ import annotations

import json
import zlib

import pytest
import torch
from comfyhost import ROOT
from workflow_tools import is_widget, layout_problems, recorded_schemas, schema_inputs, ui_to_api, validate_workflow

WORKFLOW_DIR = ROOT / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"))
LOADERS = {
    "LoadKFInpaintCheckpoint",
    "UNETLoader",
    "DualCLIPLoader",
    "VAELoader",
    "ControlNetLoader",
    "DownloadAndLoadSAM2Model",
    "CheckpointLoaderSimple",
}
# nodes whose model files the test host cannot have (FLUX, SAM2): their parts are replaced, see _runnable
EXTERNAL_MODEL_NODES = {
    "UNETLoader",
    "DualCLIPLoader",
    "VAELoader",
    "ControlNetLoader",
    "CLIPTextEncode",
    "FluxGuidance",
    "ConditioningZeroOut",
    "DifferentialDiffusion",
    "InpaintModelConditioning",
    "ControlNetInpaintingAliMamaApply",
    "VAEEncode",
    "KSampler",
    "VAEDecode",
    "DownloadAndLoadSAM2Model",
    "Sam2Segmentation",
    "PrimitiveString",
}


DEMOS = [p for p in WORKFLOWS if p.stem.startswith("KFI demo")]
REMOVAL = WORKFLOW_DIR / "KFI 3 - object removal (SVD-XT).json"
INPUT_FILE_NODES = {"LoadVideo", "LoadImage", "LoadImageMask", "VHS_LoadVideo"}


def test_there_are_workflows():
    assert len(DEMOS) == 2 and REMOVAL in WORKFLOWS and len(WORKFLOWS) == 7


@pytest.fixture(scope="module")
def schemas(comfy_server):
    return {**comfy_server.object_info(), **recorded_schemas()}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_reads_at_a_glance(path):
    """Stage groups, no link over a node, the note in the saved view at 100 %, packs named for the editor."""
    workflow = json.loads(path.read_text())
    assert layout_problems(workflow) == []
    assert len(workflow["groups"]) >= 3
    view = workflow["extra"]["ds"]
    note = next(n for n in workflow["nodes"] if n["type"] == "Note")
    x, y = (note["pos"][0] + view["offset"][0]) * view["scale"], (note["pos"][1] + view["offset"][1]) * view["scale"]
    assert view["scale"] == 1.0 and 0 <= x <= 200 and 60 <= y <= 200, "the note opens at the window's top left"
    assert x + note["size"][0] <= 1400 and y + note["size"][1] <= 700, "the whole note fits a 1400x700 canvas"
    for node in workflow["nodes"]:
        if node["type"] != "Note":
            assert node["properties"].get("cnr_id") and node["properties"].get("ver"), node["type"]
        assert node["type"] not in INPUT_FILE_NODES, "a shipped workflow names no input file: use KFI Sample Clip"
    sam = [n for n in workflow["nodes"] if n["type"].startswith(("Sam2", "DownloadAndLoadSAM2"))]
    assert all(n["properties"]["cnr_id"] == "comfyui-segment-anything-2" for n in sam)


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
    assert any(t.startswith("KFI") or t in ("LoadKFInpaintModel", "KeyframePropagateSampler") for t in types)
    assert path.with_suffix(".jpg").is_file(), "every workflow has a thumbnail of the same name"


def test_bundled_edited_keyframe_is_regenerable_and_a_visible_edit():
    from kfi_core.bundled import load_sample_clip, make_edited_keyframe

    sample = load_sample_clip()
    key, frame, mask = sample["edited_keyframe"], sample["frames"][sample["keyframe_index"]], sample["masks"][0]
    assert (key - make_edited_keyframe()).abs().max() <= 1 / 255 + 1e-6  # the PNG is the function's output
    assert ((key - frame).abs() * (1 - mask)).max() == 0, "the edit stays inside the mask"
    assert (key - frame).abs().amax(0)[mask[0] > 0].mean() > 0.3, "the edit is plain to see"


def test_thumbnails_show_frames_not_the_graph():
    """input frames above, result frames below: 2 rows of 8 frames of the 64 px sample, scaled 2x"""
    from PIL import Image

    for path in WORKFLOWS:
        with Image.open(path.with_suffix(".jpg")) as img:
            assert img.size == (8 * 128, 2 * 128), path.stem


def test_workflows_are_listed_as_templates(comfy_server):
    templates = comfy_server.get("/workflow_templates")
    assert sorted(templates["comfyui-kfi"]) == sorted(p.stem for p in WORKFLOWS)


def _runnable(prompt: dict) -> dict:
    """The workflow's core-and-KFI part: the tiny single file instead of svd_xt, an identity edit instead of FLUX,
    the sample's masks instead of SAM2."""
    prompt = json.loads(json.dumps(prompt))
    by_type = {}
    for node_id, node in prompt.items():
        by_type.setdefault(node["class_type"], []).append(node_id)
    for node_id in by_type.get("LoadKFInpaintCheckpoint", []):
        prompt[node_id]["inputs"].update(ckpt_name="svd_tiny_xt.safetensors", frames=8)
    for node_id in by_type.get("KFIStitchCrop", []):
        crop = prompt[node_id]["inputs"]["crop"][0]
        prompt[node_id]["inputs"]["edited_crop"] = [crop, 0]  # the 'edit' is the crop itself
    for node_id in by_type.get("KFIMaskPrepare", []):
        source = prompt[node_id]["inputs"]["mask"][0]
        if prompt[source]["class_type"] == "Sam2Segmentation":
            prompt[node_id]["inputs"]["mask"] = [by_type["KFISampleClip"][0], 1]
    for node_id in [k for k, v in prompt.items() if v["class_type"] in EXTERNAL_MODEL_NODES]:
        del prompt[node_id]
    for node in prompt.values():  # nothing left may point at a removed node
        for value in node["inputs"].values():
            assert not (isinstance(value, list) and value[0] not in prompt), f"{node['class_type']} -> {value}"
    return prompt


def _result(comfy_server, workflow: dict, entry: dict) -> torch.Tensor:
    """The frames in the workflow's 'Result' preview [F, 3, H, W]."""
    from kfi_core.media.video import read_frames

    result_id = next(str(n["id"]) for n in workflow["nodes"] if n.get("title") == "Result")
    files = [
        comfy_server.base / i["type"] / i["subfolder"] / i["filename"] for i in entry["outputs"][result_id]["images"]
    ]
    return torch.cat([read_frames(f)[0] for f in files])


@pytest.mark.comfy
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
@pytest.mark.slow
def test_workflow_runs_end_to_end_on_the_tiny_model(path, schemas, comfy_server):
    from kfi_core.bundled import load_sample_clip

    sample = load_sample_clip()
    frames, masks = sample["frames"], sample["masks"]
    workflow = json.loads(path.read_text())
    prompt = _runnable(ui_to_api(workflow, schemas))
    for node in prompt.values():
        if node["class_type"] == "KeyframePropagateSampler":
            node["inputs"]["steps"] = 3
            # a seed per workflow: identical prompts would be served from ComfyUI's cache with no outputs
            node["inputs"]["seed"] = zlib.crc32(path.stem.encode())
    entry = comfy_server.run_prompt(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000]
    out = _result(comfy_server, workflow, entry)
    assert out.shape == frames.shape
    # away from the masks, as grown in space and time (Mask Prepare: grow, temporal_dilation)
    grown = torch.nn.functional.max_pool3d(masks.movedim(0, 1)[None], (3, 9, 9), 1, (1, 4, 4))[0].movedim(0, 1)
    keep = (grown == 0).expand_as(frames).clone()
    if path.stem.startswith("KFI demo 2") or "edit" in path.stem:
        keep[sample["keyframe_index"]] = False  # the keyframe is replaced by its edit
    assert (out[keep] - frames[keep]).abs().mean() < 0.01  # composite: PNG in, PNG out


@pytest.mark.comfy
def test_a_workflow_saved_before_the_checkpoint_loader_still_runs(schemas, comfy_server):
    """Old saved graphs keep loading: Load KFI Inpaint Model with the value 'checkpoints/<file>' it listed before
    single files moved to Load KFI Inpaint Model (checkpoint), and a sampler saved before its optional blend_known,
    num_samples, decode_tile, size and seam_smoothing widgets (13 widget values, the frontend keeps the new widgets'
    defaults), run as saved."""
    workflow = json.loads(REMOVAL.read_text())
    loader = next(n for n in workflow["nodes"] if n["type"] == "LoadKFInpaintCheckpoint")
    loader.update(type="LoadKFInpaintModel", properties={"Node name for S&R": "LoadKFInpaintModel"})
    loader["widgets_values"] = ["checkpoints/svd_tiny_xt.safetensors", "none", "auto", 8, True]
    sampler = next(n for n in workflow["nodes"] if n["type"] == "KeyframePropagateSampler")
    names = [name for name, spec, _ in schema_inputs(schemas["KeyframePropagateSampler"]) if is_widget(spec)]
    later = ["blend_known", "num_samples", "decode_tile", "working_size", "width", "height", "crop", "crop_padding"]
    assert names[-10:] == [*later, "offload", "seam_smoothing"], names
    sampler["widgets_values"] = sampler["widgets_values"][:-10]  # as saved before blend_known
    prompt = _runnable(ui_to_api(workflow, schemas))
    node = next(v for v in prompt.values() if v["class_type"] == "KeyframePropagateSampler")
    assert not {*later, "offload", "seam_smoothing"} & set(node["inputs"])
    node["inputs"].update(steps=2, seed=zlib.crc32(b"legacy checkpoint value"))
    assert (
        next(v for v in prompt.values() if v["class_type"] == "LoadKFInpaintModel")["inputs"]["model"]
        == "checkpoints/svd_tiny_xt.safetensors"
    )
    entry = comfy_server.run_prompt(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000]
