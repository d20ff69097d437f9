"""The graph editor (ComfyUI's frontend, served by the test host) loads every shipped workflow
with no missing-node or error dialog. Driven headless with Debian's chromium through Playwright.
Screenshots go to $KFI_SCREENSHOT_DIR (default: the test's temporary folder)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from comfyhost import ROOT, ComfyServer, make_base_dir

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser_server(tmp_path_factory):
    from kfi_core.sample import make_sample_clip
    from kfi_core.video_io import write_frames

    base = make_base_dir(tmp_path_factory.mktemp("browser-base"), tiny_model=True)
    (base / "custom_nodes" / "recorded_nodes").symlink_to(ROOT / "tests" / "data" / "recorded_nodes")
    clip = make_sample_clip()
    write_frames(clip["frames"], base / "input" / "kfi_sample.mp4")
    write_frames(clip["masks"].expand(-1, 3, -1, -1), base / "input" / "kfi_sample_mask.mp4")
    with ComfyServer(base) as server:
        # a returning user: no first-run template gallery; model files are not needed to lay a graph out
        for key, value in (("Comfy.TutorialCompleted", True), ("Comfy.Workflow.ShowMissingModelsWarning", False),
                           ("LiteGraph.Canvas.LowQualityRenderingZoomThreshold", 0.2)):
            status, _ = server.post(f"/settings/{key}", value)
            assert status == 200
        yield server


@pytest.fixture(scope="module")
def page(browser_server):
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"chromium not found at {CHROMIUM}: `bash scripts/dev setup` installs it "
                           "(apt-get install chromium)")
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
        .map(d => d.innerText.slice(0, 500))""")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_graph_editor_loads_workflow(page, path, tmp_path):
    workflow = json.loads(path.read_text())
    page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
    page.wait_for_timeout(1500)
    state = page.evaluate("""() => {
        const nodes = window.app.graph._nodes;
        return {
            count: nodes.length,
            missing: nodes.filter(n => !window.LiteGraph.registered_node_types[n.type]).map(n => n.type),
            types: nodes.map(n => n.type),
        };
    }""")
    # frame the whole graph for the screenshot (the same command as the editor's "fit view" key)
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_timeout(500)
    shots = Path(os.environ.get("KFI_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"{path.stem}.png"))
    assert state["missing"] == [], f"missing node types: {state['missing']}"
    assert state["count"] == len(workflow["nodes"])
    dialogs = _visible_dialogs(page)
    assert dialogs == [], f"dialogs after loading: {dialogs}"
    assert not page.errors, page.errors
