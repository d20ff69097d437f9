"""Batch mode: discovery by naming convention, skipping finished outputs, sharding by rank, 2 processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kfi_core.errors import BatchError
from kfi_core.inference.settings import PropagateSettings
from kfi_core.jobs import batch_jobs, run_batch, shard_rank_world
from kfi_core.media.video import read_frames, write_frames
from kfi_core.model.loading import load_kfi_model

ROOT = Path(__file__).resolve().parents[1]
FAST = PropagateSettings(steps=1, decode_chunk_size=4)
FAST_ARGS = ["--steps", "1", "--decode-chunk-size", "4"]


def _frames(n=4, seed=0):
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _mask(n=4):
    m = torch.zeros(n, 3, 64, 64)
    m[:, :, 16:48, 16:48] = 1
    return m


def make_batch_dir(root: Path) -> Path:
    """Four clips, one per convention: mp4 + mask mp4; frames folder + mask folder; mp4 + one mask image
    (+ a keyframe); frames folder + mask png."""
    root.mkdir(parents=True, exist_ok=True)
    write_frames(_frames(seed=1), root / "a_street.mp4")
    write_frames(_mask(), root / "a_street_mask.mp4")
    write_frames(_frames(seed=2), root / "b_room")
    write_frames(_mask(), root / "b_room_mask")
    write_frames(_frames(seed=3), root / "c_park.mp4")
    write_frames(_mask(1), root / "c_park_mask.png")
    write_frames(_frames(1, seed=4), root / "c_park_key2.png")
    write_frames(_frames(seed=5), root / "d_lake")
    write_frames(_mask(1), root / "d_lake_mask.png")
    (root / "notes.txt").write_text("ignored")
    return root


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory):
    return make_batch_dir(tmp_path_factory.mktemp("batch") / "in")


def test_discovery_by_convention(batch_dir):
    jobs = batch_jobs(batch_dir)
    assert [j.name for j in jobs] == ["a_street", "b_room", "c_park", "d_lake"]
    by = {j.name: j for j in jobs}
    assert by["a_street"].mask.name == "a_street_mask.mp4" and by["a_street"].video.name == "a_street.mp4"
    assert by["b_room"].video.is_dir() and by["b_room"].mask.name == "b_room_mask"
    assert by["c_park"].keyframes == ((2, batch_dir / "c_park_key2.png"),)
    assert by["d_lake"].mask.name == "d_lake_mask.png" and by["d_lake"].keyframes == ()


def test_discovery_errors(tmp_path):
    root = make_batch_dir(tmp_path / "in")
    shutil.rmtree(root / "b_room_mask")
    with pytest.raises(BatchError, match=r"b_room has no mask \(add b_room_mask.mp4, b_room_mask.png"):
        batch_jobs(root)
    write_frames(_mask(1), root / "b_room_mask.png")
    write_frames(_mask(1), root / "a_street_mask.png")
    with pytest.raises(BatchError, match=r"a_street.mp4 has 2 masks"):
        batch_jobs(root)
    (root / "a_street_mask.png").unlink()
    write_frames(_frames(1), root / "zz_key0.png")
    with pytest.raises(BatchError, match=r"zz_key0.png has no clip zz.mp4"):
        batch_jobs(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BatchError, match="no clips found"):
        batch_jobs(empty)
    with pytest.raises(BatchError, match="is not a folder"):
        batch_jobs(tmp_path / "missing")


def test_sharding_from_env(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert shard_rank_world() == (1, 3)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(BatchError, match="need 0 <= RANK < WORLD_SIZE"):
        shard_rank_world()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert shard_rank_world() == (0, 1)


def test_run_batch_shards_and_skips(batch_dir, tiny_model_dir, tmp_path, monkeypatch):
    loads = []

    def load():
        loads.append(1)
        return load_kfi_model(tiny_model_dir)

    out = tmp_path / "out"
    reports = []
    for rank in (1, 0):  # simulate a world of 2 by env vars, one process after the other
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        reports.append(run_batch(load, batch_dir, out, fmt="png", settings=FAST))
    assert reports[0].assigned == ["b_room", "d_lake"] and reports[1].assigned == ["a_street", "c_park"]
    assert sorted(p.name for p in out.iterdir()) == ["a_street", "b_room", "c_park", "d_lake"]
    frames, _ = read_frames(out / "c_park")
    key, _ = read_frames(batch_dir / "c_park_key2.png")
    assert frames.shape == (4, 3, 64, 64)
    assert (frames[2] - key[0]).abs().max() < 1 / 255 + 1e-6  # the keyframe is kept exactly (PNG round trip)
    # a second pass skips everything and never loads the model; a half-written output does not count
    (out / ".d_lake.partial").mkdir()
    shutil.rmtree(out / "d_lake")
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    loads.clear()
    again = run_batch(load, batch_dir, out, fmt="png", settings=FAST)
    assert [p.name for p in again.done] == ["d_lake"] and len(again.skipped) == 3 and loads == [1]
    loads.clear()
    assert run_batch(load, batch_dir, out, fmt="png", settings=FAST).done == [] and loads == []


def test_cli_requires_video_and_mask_or_batch(tiny_model_dir, tmp_path, capsys):
    from kfi_core.cli import main

    assert main(["inpaint", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o.mp4")]) == 2
    assert "give --video and --mask (one clip), or --batch DIR" in capsys.readouterr().err
    assert (
        main(
            [
                "inpaint",
                "--model",
                str(tiny_model_dir),
                "--out",
                str(tmp_path / "o"),
                "--batch",
                str(tmp_path),
                "--video",
                "x.mp4",
            ]
        )
        == 2
    )
    assert "drop --video, --mask" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["inpaint", "--model", "m", "--video", "v", "--mask", "k"])  # --out stays required


@pytest.mark.slow
def test_two_processes_write_every_output_once(tiny_model_dir, tmp_path):
    src = make_batch_dir(tmp_path / "in")
    out = tmp_path / "out"
    accelerate = Path(sys.executable).with_name("accelerate")
    if accelerate.exists():
        launcher = [
            str(accelerate),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "kfi_core",
        ]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "kfi_core"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [*launcher, "inpaint", "--batch", str(src), "--model", str(tiny_model_dir), "--out", str(out), *FAST_ARGS],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(line for line in proc.stdout.splitlines() if line.endswith(".mp4"))
    assert sorted(Path(p).name for p in written) == ["a_street.mp4", "b_room.mp4", "c_park.mp4", "d_lake.mp4"]
    assert sorted(p.name for p in out.iterdir()) == ["a_street.mp4", "b_room.mp4", "c_park.mp4", "d_lake.mp4"]
    assert "process 0 of 2" in proc.stderr and "process 1 of 2" in proc.stderr
