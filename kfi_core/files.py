"""Atomic writes: a file or folder appears complete under its name, or not at all.

Every writer in KFI that must not leave half a file behind (adapters, single-file checkpoints, videos, training
checkpoints, the demo model's folders) goes through these helpers: the content is written to a hidden temporary
sibling (same folder, so the rename never crosses file systems) and renamed over the target on success; on any
exception, including ``KeyboardInterrupt``, the temporary path is removed and the target is left as it was.

Temporary names are hidden (they start with ``.``), so folder listings that skip hidden entries (datasets,
checkpoint lists) never see them: ``.<stem>.<random>.partial<suffix>`` for files (unique, so two writers never share
one; the target's suffix is kept for writers that choose a format by suffix, as PyAV does) and ``.<name>.partial``
for folders (one writer per folder at a time; a stale one left by a killed process is removed before the next
write of that folder).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL = ".partial"  # the mark of a temporary name


def partial_folder_path(path: str | os.PathLike) -> Path:
    """The temporary folder :func:`atomic_folder` writes before renaming it to ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL}")


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path`` (created empty, same suffix); on success it is renamed over
    ``path``, on failure removed. The parent folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{PARTIAL}{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the file gets the mode open() would give it
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path``."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; return ``path``."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


@contextmanager
def atomic_folder(path: str | os.PathLike, *, create: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (an existing folder or file there
    is removed), on failure it is removed and ``path`` is left as it was.

    ``create=False`` yields the temporary path without creating it, for writers that make the folder themselves
    (``shutil.copytree``)."""
    path = Path(path)
    tmp = partial_folder_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove(tmp)  # a stale one from a killed writer
    if create:
        tmp.mkdir()
    try:
        yield tmp
        _replace_folder(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _replace_folder(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is moved aside first and removed after the rename, so at
    every moment one complete version is on disk (rename cannot replace a non-empty folder)."""
    if not (path.exists() or path.is_symlink()):
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.old{PARTIAL}")
    _remove(old)
    os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)
