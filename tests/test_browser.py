"""Every shipped workflow, opened in the graph editor (ComfyUI's frontend, served by a real test host) and run with
no edits, as a new user would: the demo workflows finish on the CPU with nothing downloaded and give a result of the
input's frame count and size; every other workflow shows the missing-models dialog naming each model file it
declares, and its Run fails only on those files, never on an input file. Driven headless with Debian's chromium
through Playwright. The server's input folder stays empty: a workflow that names an input file fails here.
Screenshots go to $KFI_SCREENSHOT_DIR (default: the test's temporary folder)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from comfyhost import ROOT, ComfyServer, make_base_dir

pytestmark = [pytest.mark.comfy, pytest.mark.browser]

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
DEMOS = [p for p in WORKFLOWS if p.stem.startswith("KFI demo")]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_TIMEOUT_S = 240  # a demo workflow must finish within this (it takes about a minute on 2 cores)


@pytest.fixture(scope="module")
def browser_server(tmp_path_factory):
    base = make_base_dir(tmp_path_factory.mktemp("browser-base"))
    (base / "custom_nodes" / "recorded_nodes").symlink_to(ROOT / "tests" / "data" / "recorded_nodes")
    with ComfyServer(base) as server:
        # a returning user: no first-run template gallery; the missing-models dialog on, as it is by default
        for key, value in (
            ("Comfy.TutorialCompleted", True),
            ("Comfy.Workflow.ShowMissingModelsWarning", True),
            ("LiteGraph.Canvas.LowQualityRenderingZoomThreshold", 0.2),
        ):
            status, _ = server.post(f"/settings/{key}", value)
            assert status == 200
        yield server


@pytest.fixture(scope="module")
def page(browser_server):
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(
            f"chromium not found at {CHROMIUM}: `bash scripts/dev setup` installs it (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(browser_server.url, wait_until="domcontentloaded", timeout=120_000)
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        page.wait_for_timeout(1500)
        page.errors = errors
        yield page
        browser.close()


def _visible_dialogs(page) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll('.p-dialog, .comfy-modal')]
        .filter(d => d.offsetParent !== null || getComputedStyle(d).display !== 'none' && d.getClientRects().length)
        .map(d => d.innerText)""")


def _close_dialogs(page) -> None:
    for _ in range(3):
        if not _visible_dialogs(page):
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)


def _open(page, path: Path) -> dict:
    workflow = json.loads(path.read_text())
    _close_dialogs(page)
    page.evaluate("([wf, name]) => window.app.loadGraphData(wf, true, true, name)", [workflow, path.stem])
    page.wait_for_timeout(2000)
    return workflow


def _press_run(page) -> tuple[int, dict]:
    """Press Run (the editor converts the graph and posts it); the server's answer to that post."""
    with page.expect_response(
        lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST", timeout=60_000
    ) as answer:
        page.evaluate("() => window.app.queuePrompt(0, 1)")
    response = answer.value
    return response.status, response.json()


def _wait_for_history(server, prompt_id: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
            return entry
        time.sleep(0.5)
    server.post("/interrupt", {})
    raise AssertionError(f"the workflow did not finish within {RUN_TIMEOUT_S} s")


def _declared_models(workflow: dict) -> dict[int, list[str]]:
    return {
        n["id"]: [m["name"] for m in n.get("properties", {}).get("models", [])]
        for n in workflow["nodes"]
        if n.get("properties", {}).get("models")
    }


def _screenshot(page, path: Path, tmp_path: Path) -> None:
    shots = Path(os.environ.get("KFI_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"{path.stem}.png"))


def _check_result(server, workflow: dict, entry: dict) -> None:
    """The 'Result' preview holds the input's frame count, each frame of the input's size."""
    from PIL import Image

    from kfi_core.bundled import load_sample_clip

    frames = load_sample_clip()["frames"]
    result_id = next(str(n["id"]) for n in workflow["nodes"] if n.get("title") == "Result")
    images = entry["outputs"][result_id]["images"]
    assert len(images) == frames.shape[0], f"{len(images)} result frames for {frames.shape[0]} input frames"
    for item in images:
        with Image.open(server.base / item["type"] / item["subfolder"] / item["filename"]) as img:
            assert img.size == (frames.shape[-1], frames.shape[-2])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_opens_and_runs_as_shipped(page, browser_server, path, tmp_path):
    workflow = _open(page, path)
    state = page.evaluate("""() => window.app.graph._nodes
        .filter(n => !window.LiteGraph.registered_node_types[n.type]).map(n => n.type)""")
    assert state == [], f"missing node types: {state}"
    _screenshot(page, path, tmp_path)
    declared = _declared_models(workflow)
    dialogs = _visible_dialogs(page)
    if path in DEMOS:
        assert dialogs == [], f"a demo workflow needs nothing, but the editor shows: {dialogs}"
    else:
        missing = sorted({name for names in declared.values() for name in names})
        text = "\n".join(dialogs)
        assert [name for name in missing if name not in text] == [], f"missing-models dialog: {text[:2000]}"
        _close_dialogs(page)
    status, body = _press_run(page)
    if status == 200:
        entry = _wait_for_history(browser_server, body["prompt_id"])
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000]
        if path in DEMOS:
            _check_result(browser_server, workflow, entry)
    else:
        assert path not in DEMOS, f"the demo workflow was refused: {json.dumps(body)[:3000]}"
        # refused: only for model files the workflow declares (and the dialog offered), never an input file
        errors = body.get("node_errors", {})
        assert errors, json.dumps(body)[:3000]
        for node_id, error in errors.items():
            names = declared.get(int(node_id), [])
            for err in error["errors"]:
                # V1 loaders report the value, the KFI loaders' own check names it in the details
                said = f"{err.get('extra_info', {}).get('received_value', '')} {err.get('details', '')}"
                assert any(name in said for name in names), (
                    f"node {node_id} ({error['class_type']}) fails on something the pack does not ship or declare: "
                    f"{json.dumps(err)[:1500]}"
                )
    _close_dialogs(page)
    assert not page.errors, page.errors


OLD_ENCODE_GRAPH = ROOT / "tests" / "data" / "saved_graphs" / "demo 1 with the old encode node (2026-12).json"


def test_a_graph_saved_with_the_old_encode_node_opens_and_runs(page, browser_server, tmp_path):
    """KFI demo 1 as shipped before KFI Condition Preview: the deprecated Encode node (its masked_preview output
    wired to a preview) loads in the editor with no missing node and no dialog, runs, and its preview is the
    sample with the hole filled black (the library's fill_masked), bit for bit through 8-bit PNG."""
    import numpy as np
    import torch
    from PIL import Image

    from kfi_core.bundled import load_sample_clip
    from kfi_core.inference import fill_masked, prepare_clip

    workflow = json.loads(OLD_ENCODE_GRAPH.read_text())
    assert "SymmetricMaskEncode" in [n["type"] for n in workflow["nodes"]]
    sampler = next(n for n in workflow["nodes"] if n["type"] == "KeyframePropagateSampler")
    sampler["widgets_values"][2] = 2  # steps: the run only has to finish
    path = tmp_path / OLD_ENCODE_GRAPH.name
    path.write_text(json.dumps(workflow))
    _open(page, path)
    state = page.evaluate("""() => window.app.graph._nodes
        .filter(n => !window.LiteGraph.registered_node_types[n.type]).map(n => n.type)""")
    assert state == [] and _visible_dialogs(page) == [], (state, _visible_dialogs(page))
    status, body = _press_run(page)
    assert status == 200, json.dumps(body)[:3000]
    entry = _wait_for_history(browser_server, body["prompt_id"])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000]
    _check_result(browser_server, workflow, entry)
    sample = load_sample_clip()
    clip = prepare_clip(sample["frames"], sample["masks"])
    want = (fill_masked(clip.frames, clip.masks, 0.0) * 255).to(torch.uint8)  # PreviewImage truncates, as here
    shown_id = next(str(n["id"]) for n in workflow["nodes"] if n.get("title") == "Input (hole in black)")
    items = entry["outputs"][shown_id]["images"]
    got = []
    for item in items:
        with Image.open(browser_server.base / item["type"] / item["subfolder"] / item["filename"]) as img:
            got.append(torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1))
    assert torch.equal(torch.stack(got), want)
    _close_dialogs(page)
    assert not page.errors, page.errors
