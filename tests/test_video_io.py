"""Clip IO: PNG folders exact, video files close, bad files give clear errors, writes are atomic."""

from __future__ import annotations

import pytest
import torch

from kfi_core.errors import InputMismatchError, VideoFileError
from kfi_core.media.video import read_frames, read_masks, write_frames


def gradient_clip(n=5, h=32, w=48):
    y = torch.linspace(0, 1, h).view(1, 1, h, 1)
    x = torch.linspace(0, 1, w).view(1, 1, 1, w)
    t = torch.linspace(0, 1, n).view(n, 1, 1, 1)
    return torch.cat([x.expand(n, 1, h, w), y.expand(n, 1, h, w), t.expand(n, 1, h, w)], 1)


def test_png_folder_round_trip_is_exact_in_8_bit(tmp_path):
    clip = (gradient_clip() * 255).round() / 255
    write_frames(clip, tmp_path / "frames")
    back, fps = read_frames(tmp_path / "frames")
    assert fps is None and torch.equal(back, clip)


def test_mp4_round_trip(tmp_path):
    clip = gradient_clip(n=6)
    write_frames(clip, tmp_path / "clip.mp4", fps=12)
    back, fps = read_frames(tmp_path / "clip.mp4")
    assert back.shape == clip.shape and fps == pytest.approx(12)
    assert (back - clip).abs().mean() < 0.02  # lossy codec: mean error under 2 %


def test_masks_from_single_png_and_folder(tmp_path):
    m = torch.zeros(1, 3, 16, 16)
    m[..., 4:8, 4:8] = 1
    write_frames(m, tmp_path / "mask.png")
    masks = read_masks(tmp_path / "mask.png")
    assert masks.shape == (1, 1, 16, 16) and masks.sum() == 16


def test_bad_files(tmp_path):
    with pytest.raises(VideoFileError, match="no such file"):
        read_frames(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoFileError, match="no image files"):
        read_frames(tmp_path / "empty")
    write_frames(gradient_clip(n=8), tmp_path / "ok.mp4")
    data = (tmp_path / "ok.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoFileError, match="truncated"):
        read_frames(tmp_path / "cut.mp4")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(VideoFileError, match="cannot read this image"):
        read_frames(tmp_path / "junk.png")
    (tmp_path / "mixed").mkdir()
    write_frames(gradient_clip(n=1, h=8, w=8), tmp_path / "mixed" / "a.png")
    write_frames(gradient_clip(n=1, h=8, w=10), tmp_path / "mixed" / "b.png")
    with pytest.raises(InputMismatchError, match="different sizes"):
        read_frames(tmp_path / "mixed")


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(VideoFileError, match="even sizes"):
        write_frames(gradient_clip(h=31), tmp_path / "odd.mp4")
    assert list(tmp_path.iterdir()) == []


def test_write_interrupted_midway_leaves_no_partial_file(tmp_path, monkeypatch):
    import av

    real = av.VideoFrame.from_ndarray
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", flaky)
    from kfi_core.errors import VideoFileError

    # the OSError becomes a KFI error naming the file (the CLI prints it, exit 2), its cause kept
    with pytest.raises(VideoFileError, match=r"clip.mp4: cannot write it \(disk full \(simulated\)\); nothing was "):
        write_frames(gradient_clip(n=6), tmp_path / "clip.mp4")
    assert list(tmp_path.iterdir()) == []
