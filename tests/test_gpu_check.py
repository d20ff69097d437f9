"""bench/gpu_check.py's dry run: every section runs on CPU with the tiny model (one subprocess, shared by the tests),
the JSON holds every figure and goal, and --write-docs replaces only the marked section of a copy of
docs/PERFORMANCE.md (marked slow: the dry run takes 20-30 s on 2 cores). The GPU figures themselves need a GPU
(docs/PERFORMANCE.md, "GPU check")."""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kfi_core.model import place_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
DOCS = ROOT / "docs" / "PERFORMANCE.md"
SECTIONS = {"a", "b", "c", "d", "offload", "e", "f"}
PHASES = ("image_encoder", "vae_encode", "unet_step", "vae_decode")
GOALS = {"kfi_step_vs_diffusers", "memory_250_vs_25", "fits_24gb_fp16", "fits_12gb_model_offload", "clip_10s_h100"}


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    """(report from --json-out, report printed on stdout, the docs copy before and after --write-docs)."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    docs, out = tmp / "PERFORMANCE.md", tmp / "gpu_check.json"
    docs.write_text(DOCS.read_text())
    cmd = [sys.executable, str(SCRIPT), "--dry-run", "--json-out", str(out), "--write-docs", "--docs", str(docs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), json.loads(proc.stdout), DOCS.read_text(), docs.read_text()


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow  # the shared dry run takes 20-30 s on 2 cores
def test_every_section_ran_without_error(dry):
    report, printed, _, _ = dry
    assert report == printed
    assert report["env"]["mode"] == "dry-run" and "interrupted" not in report
    setup = report["setup"]
    assert setup["status"] == "ok" and setup["in_channels"] == 12, setup
    assert setup["attention"] == ["AttnProcessor2_0"]
    assert set(report["sections"]) == SECTIONS
    for name, section in report["sections"].items():
        assert section["status"] == "ok", (name, section.get("error"))
        assert section["seconds"] >= 0 and section["lines"], name
        assert all(len(line) == 2 and all(isinstance(x, str) and x for x in line) for line in section["lines"])


@pytest.mark.slow
def test_speed_sections_have_timings_and_ratios(dry):
    report = dry[0]
    sizes, a = report["sizes"], report["sections"]["a"]
    gaps = sizes["reps"] * (sizes["a_steps"] - 1)
    for dtype in sizes["dtypes"]:
        for name in ("kfi", "kfi_unmerged", "diffusers"):
            fig = a[dtype][name]
            assert _positive(fig["s_per_step"]) and fig["n_gaps"] == gaps, (dtype, name, fig)
            assert len(fig["per_run"]) == sizes["reps"] and all(_positive(r) for r in fig["pairwise_to_peer"])
        assert _positive(a[dtype]["ratio_kfi_to_diffusers"]) and _positive(a[dtype]["ratio_kfi_unmerged_to_diffusers"])
    f = report["sections"]["f"]
    assert _positive(f["compiled"]["s_per_step"]) and _positive(f["eager"]["s_per_step"])
    assert _positive(f["ratio_compiled_to_eager"]) and _positive(f["first_call_s"])
    assert f["backend"] == "eager" and f["fell_back_to_eager"] is False, f["warnings"]


def _check_memory_row(row, steps, shape):
    assert row["steps"] == steps and row["size"] == list(shape) and row["finite"] is True, row
    assert _positive(row["wall_s"])
    assert row["peak_allocated_gib"] is None and row["peak_reserved_gib"] is None  # CPU: no device figures
    assert set(row["phases_gib"]) == set(PHASES) and not any(row["phases_gib"].values())
    assert all(row["phase_calls"][p] > 0 for p in PHASES), row["phase_calls"]  # every phase hook fired


@pytest.mark.slow
def test_memory_sections_ran_every_length_and_phase(dry):
    report = dry[0]
    sizes, sections = report["sizes"], report["sections"]
    rows = sections["b"]["runs"]
    assert [r["frames"] for r in rows] == sizes["lengths"]
    for i, row in enumerate(rows):
        _check_memory_row(row, sizes["steps"] if i == 0 else 1, sizes["size"])
    assert rows[0]["phase_calls"]["unet_step"] == sizes["steps"]  # one window, one UNet call per step (CFG batched)
    assert rows[-1]["phase_calls"]["unet_step"] > 1  # more frames than the window: a schedule of several windows
    for key in ("working_size", "crop"):
        row = sections["c"][key]
        _check_memory_row(row, sizes["clip_steps"], sizes["big"][1:])
        assert row["frames"] == sizes["big"][0] and row["work_size"] == sizes["size"]
    offload = sections["offload"]
    assert offload["available"] == ("offload" in inspect.signature(place_model).parameters)
    if offload["available"]:
        _check_memory_row(offload["run"], 1, sizes["size"])
        assert offload["run"]["offload"] == "model"
    else:
        assert offload["note"].startswith("not available")


@pytest.mark.slow
def test_plan_is_compared_for_every_memory_run(dry):
    sections = dry[0]["sections"]
    expected = [r["run"] for r in sections["b"]["runs"]]
    expected += [sections["offload"]["run"]["run"]] if sections["offload"]["available"] else []
    expected += [sections["c"][k]["run"] for k in ("working_size", "crop")]
    rows = sections["d"]["runs"]
    assert [r["run"] for r in rows] == expected
    for row in rows:
        assert _positive(row["total"]["estimate_gib"]) and row["total"]["phase"] in PHASES
        assert row["total"]["measured_gib"] is None and row["total"]["ratio"] is None  # CPU
        assert all(_positive(row["phases"][p]["estimate_gib"]) for p in PHASES)


@pytest.mark.slow
def test_training_step_ran_with_gradient_checkpointing(dry):
    report = dry[0]
    e = report["sections"]["e"]
    assert e["gradient_checkpointing"] is True and e["frames"] == report["sizes"]["train"][0]
    assert e["weight_dtype"] == "float32"  # bf16 is asked for; the trainer trains fp32 on CPU
    assert _positive(e["s_per_step"]) and _positive(e["first_step_s"]) and math.isfinite(e["last_loss"])


@pytest.mark.slow
def test_goals_are_reported_and_not_judged_on_a_dry_run(dry):
    report = dry[0]
    goals = {g["goal"]: g for g in report["goals"]}
    assert set(goals) == GOALS
    for goal in goals.values():
        assert goal["passed"] is None and "dry run" in goal["note"] and goal["target"].startswith("<= ")
    ratios = [report["sections"]["a"][d]["ratio_kfi_to_diffusers"] for d in report["sizes"]["dtypes"]]
    assert goals["kfi_step_vs_diffusers"]["value"] == max(ratios)
    assert goals["clip_10s_h100"]["value"] == report["sections"]["b"]["runs"][0]["wall_s"]
    assert goals["fits_24gb_fp16"]["value"] is None  # no device memory on CPU


@pytest.mark.slow
def test_write_docs_replaces_only_the_marked_section(dry):
    report, _, original, written = dry
    begin, end = "<!-- gpu_check:begin -->", "<!-- gpu_check:end -->"
    assert original.count(begin) == 1 and original.count(end) == 1
    # as committed: no GPU figures yet, and the command that makes them
    section = original.split(begin)[1].split(end)[0]
    assert "No GPU has been lent yet" in section and "python bench/gpu_check.py --write-docs" in section
    head, tail = original.split(begin)[0], original.split(end)[1]
    assert written.startswith(head + begin) and written.endswith(end + tail)
    table = written.split(begin)[1].split(end)[0]
    assert "No GPU has been lent yet" in table and "| Goal | Target | Measured | Pass |" in table
    for goal in report["goals"]:
        assert goal["what"] in table
    for section in report["sections"].values():
        for item, figure in section["lines"]:
            assert f"| {item} | {figure} |" in table


@pytest.mark.slow
def test_from_json_writes_the_same_table(dry, tmp_path):
    report, _, original, written = dry
    saved, docs = tmp_path / "report.json", tmp_path / "PERFORMANCE.md"
    saved.write_text(json.dumps(report))
    docs.write_text(original)
    assert _load_script().main(["--from-json", str(saved), "--docs", str(docs)]) == 0
    assert docs.read_text() == written


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_without_cuda_it_asks_for_a_gpu_or_the_dry_run():
    with pytest.raises(SystemExit, match="no CUDA device.*--dry-run"):
        _load_script().main([])


def test_bad_arguments_are_refused(tmp_path):
    script = _load_script()
    with pytest.raises(SystemExit):
        script.parse_args(["--only", "a,z"])
    unmarked = tmp_path / "doc.md"
    unmarked.write_text("# no markers\n")
    with pytest.raises(SystemExit):
        script.parse_args(["--write-docs", "--docs", str(unmarked)])
    assert script.parse_args(["--only", "b, d"]).sections == ["b", "d"]
