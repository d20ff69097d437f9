"""bench/long_clips.py: the long-clip section of docs/RESULTS.md, written between its markers (quick mode)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from kfi_core.bundled import demo_model_available

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_long_clips", ROOT / "bench" / "long_clips.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_long_clips", module)
    spec.loader.exec_module(module)
    return module


def test_write_section_replaces_only_the_text_between_the_markers(tmp_path):
    lc = _bench()
    from bench.long_clips_report import BEGIN, END

    out = tmp_path / "RESULTS.md"
    out.write_text("# KFI results\n\nabove\n")
    lc.write_section(out, "## Long clips\n\nfirst")
    text = out.read_text()
    assert text.startswith("# KFI results\n\nabove\n\n" + BEGIN) and text.rstrip().endswith(END)
    out.write_text(text + "\nbelow\n")
    lc.write_section(out, "## Long clips\n\nsecond")
    text = out.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "first" not in text and "second" in text
    assert text.startswith("# KFI results\n\nabove\n") and text.endswith("below\n")


@pytest.mark.skipif(not demo_model_available(), reason="needs the bundled demo model")
def test_quick_run_writes_the_section_with_its_columns(tmp_path):
    lc = _bench()
    from bench.long_clips_report import BEGIN, COLUMNS, END, default_label

    out = tmp_path / "RESULTS.md"
    out.write_text("# KFI results\n\nkept\n")
    assert lc.main(["--quick", "--out", str(out), "--images", str(tmp_path / "images")]) == 0
    text = out.read_text()
    assert text.startswith("# KFI results\n\nkept\n")
    section = text[text.index(BEGIN) : text.index(END)]
    assert "## Long clips" in section and "python bench/long_clips.py --quick" in section
    header = "| method | " + " | ".join(title for _, title in COLUMNS) + " | s/clip |"
    assert section.count(header) == 2  # the quick run's two conditions
    for row in (
        default_label(),
        "multidiffusion",
        "anchor + keyframe-windows, no seam smoothing (lever)",
        "training-free, anchor",
        "mean fill (baseline)",
        "flow warp of the keyframe",
        "GT mean colour per frame (oracle)",
    ):
        assert f"| {row}" in section, row
    assert "**Verdict**" in section
    assert lc.main(["--quick", "--render-only", "--out", str(out), "--images", str(tmp_path / "images")]) == 0
    assert out.read_text() == text  # the section again, from the kept rows
    plots = sorted((tmp_path / "images").glob("*.png"))
    assert plots and all(f"]({p.relative_to(tmp_path).as_posix()})" in section for p in plots)
    # --only: one condition measured again (another seed here, so its rows change), the other's rows kept
    again = ["--quick", "--only", "removal", "--seed", "1", "--out", str(out), "--images", str(tmp_path / "images")]
    assert lc.main(again) == 0
    merged = out.read_text()
    old_parts, new_parts = section.split("### "), merged[merged.index(BEGIN) : merged.index(END)].split("### ")
    assert [p.split("\n")[0] for p in old_parts] == [p.split("\n")[0] for p in new_parts]
    kf0 = next(i for i, p in enumerate(old_parts) if p.startswith("2x window, keyframe at frame 0"))
    removal = next(i for i, p in enumerate(old_parts) if p.startswith("2x window, removal"))
    assert new_parts[kf0].split("\n\n", 2)[2] == old_parts[kf0].split("\n\n", 2)[2], "the kept condition's table"
    assert new_parts[removal] != old_parts[removal], "the condition measured again"
    assert "python bench/long_clips.py --quick" in merged and "--only" not in merged
