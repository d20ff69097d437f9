"""kfi_core.files: a file or folder appears complete under its name, or not at all; nothing temporary stays."""

from __future__ import annotations

import pytest

from kfi_core.files import atomic_file, atomic_folder, atomic_write_bytes, atomic_write_text, partial_folder_path


def test_atomic_file_renames_on_success_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "sub" / "clip.mp4"
    with atomic_file(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".clip.") and tmp.suffix == ".mp4"
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["clip.mp4"]


def test_atomic_file_failure_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = atomic_write_text(tmp_path / "a.json", "old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise OSError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert atomic_write_bytes(target, b"\x00").read_bytes() == b"\x00"


def test_atomic_folder_replaces_the_old_folder_and_removes_a_stale_partial(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.txt").write_text("old")
    partial_folder_path(target).mkdir()  # what a killed writer leaves
    with atomic_folder(target) as tmp:
        assert tmp == partial_folder_path(target) and not any(tmp.iterdir())
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_atomic_folder_failure_keeps_the_old_folder(tmp_path):
    target = tmp_path / "pkg"
    with atomic_folder(target, create=False) as tmp:
        assert not tmp.exists()
        tmp.mkdir()
        (tmp / "a").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(target) as tmp:
            (tmp / "b").write_text("2")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]


def test_an_atomic_file_gets_the_mode_a_plain_write_would(tmp_path):
    """mkstemp makes its file 0600; what atomic_file leaves behind is readable as open() would make it."""
    import os

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = atomic_write_text(tmp_path / "atomic.txt", "x")
    assert os.stat(written).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
