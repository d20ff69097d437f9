"""Reading and writing clips: video files through PyAV, folders of PNG frames, single images.

Layout: ``frames`` float32 [F, 3, H, W] in 0..1; ``masks`` float32 [F, 1, H, W], 1 = fill.
Writes go to a temporary name next to the target and are renamed into place only when
complete, so a failed or interrupted write leaves no partial output.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from kfi_core.errors import InputMismatchError, VideoFileError
from kfi_core.files import atomic_file, atomic_folder
from kfi_core.media.pixels import is_eight_bit, to_eight_bit, to_unit

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_FPS = 7.0
# Codec per output container: H.264 (yuv420p) for mp4/mov/mkv, VP9 for webm.
_CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9"}
MAX_FRAMES = 100_000


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def list_frame_files(folder: Path) -> list[Path]:
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not files:
        raise VideoFileError(
            f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder. Give a folder of frames "
            "named so that they sort in order (frame_0001.png, ...), or a video file."
        )
    return files


def image_to_array(path: Path, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode))
    except (UnidentifiedImageError, OSError) as err:
        raise VideoFileError(f"{path}: cannot read this image ({err}). Re-export it as PNG.") from err


def _decode_video(path: Path, mode: str) -> tuple[list[np.ndarray], float]:
    import av

    fmt = "rgb24" if mode == "RGB" else "gray"
    arrays: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoFileError(f"{path}: the file has no video stream.")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else DEFAULT_FPS
            for frame in container.decode(stream):
                arrays.append(frame.to_ndarray(format=fmt))
                if len(arrays) > MAX_FRAMES:
                    raise VideoFileError(f"{path}: more than {MAX_FRAMES} frames; split the clip first.")
    except av.error.FFmpegError as err:
        raise VideoFileError(
            f"{path}: cannot decode this video ({err}). The file may be truncated or corrupt; re-export it "
            "(H.264 mp4 works everywhere) or give a folder of PNG frames."
        ) from err
    if not arrays:
        raise VideoFileError(f"{path}: the video has no decodable frames; the file may be truncated.")
    return arrays, fps


def _read_arrays(path: Path, mode: str) -> tuple[list[np.ndarray], float | None]:
    if not path.exists():
        raise VideoFileError(f"{path}: no such file or folder.")
    if path.is_dir():
        return [image_to_array(p, mode) for p in list_frame_files(path)], None
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return [image_to_array(path, mode)], None
    if suffix in VIDEO_SUFFIXES:
        return _decode_video(path, mode)
    raise VideoFileError(
        f"{path}: unknown file type {suffix!r}. Give a video ({', '.join(VIDEO_SUFFIXES)}), an image, or a folder "
        "of frames."
    )


def _stack(arrays: list[np.ndarray], path: Path) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise InputMismatchError(f"{path}: frames have different sizes {sorted(shapes)}; all frames must match.")
    return np.stack(arrays)


def read_frames(path: str | os.PathLike, eight_bit: bool = False) -> tuple[torch.Tensor, float | None]:
    """Read a clip as RGB frames [F, 3, H, W] in 0..1 (``eight_bit``: the file's 0..255 values as uint8, a quarter
    of the memory), with its fps (None for image folders). Laid out channels-last, as decoded."""
    path = Path(path)
    arrays, fps = _read_arrays(path, "RGB")
    frames = torch.from_numpy(_stack(arrays, path)).permute(0, 3, 1, 2)  # [F, H, W, 3] uint8 viewed as [F, 3, H, W]
    return (frames if eight_bit else to_unit(frames)), fps


def read_masks(path: str | os.PathLike) -> torch.Tensor:
    """Read masks [F, 1, H, W] in 0..1 from a mask video, a folder of images or one image (grayscale)."""
    path = Path(path)
    arrays, _ = _read_arrays(path, "L")
    data = _stack(arrays, path)  # [F, H, W] uint8
    return torch.from_numpy(data)[:, None].float().div_(255.0)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[F, C, H, W] float 0..1 (or 8-bit) -> [F, H, W, C] uint8 (rounded, clamped), a frame at a time: a full-size
    clip needs the uint8 result's memory (a quarter of the floats), not three float copies. 8-bit frames laid out
    channels-last on the host (as :func:`read_frames` gives them, and results in their layout) come back as a view,
    no copy."""
    frames = frames.detach()
    if is_eight_bit(frames) and frames.device.type == "cpu" and frames.permute(0, 2, 3, 1).is_contiguous():
        return frames.permute(0, 2, 3, 1).numpy()
    out = np.empty((frames.shape[0], *frames.shape[2:], frames.shape[1]), dtype=np.uint8)
    for t in range(frames.shape[0]):
        out[t] = to_eight_bit(frames[t].cpu()).permute(1, 2, 0).numpy()
    return out


@contextmanager
def atomic_path(target: Path, is_dir: bool = False):
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success
    (:func:`kfi_core.files.atomic_file`, or :func:`~kfi_core.files.atomic_folder` with ``is_dir``). An ``OSError``
    becomes a :class:`VideoFileError` naming ``target``."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VideoFileError(
            f"{target}: cannot write it ({err}); nothing was written. Give an output path in a writable folder."
        ) from err
    try:
        with atomic_folder(target) if is_dir else atomic_file(target) as tmp:
            yield tmp
    except OSError as err:
        raise VideoFileError(
            f"{target}: cannot write it ({err}); nothing was written. Check that the folder is writable and has "
            "free space, and that the name is not an existing folder."
        ) from err


def write_frames(frames: torch.Tensor, path: str | os.PathLike, fps: float = DEFAULT_FPS) -> Path:
    """Write frames [F, 3, H, W] to a video file (by suffix) or, for a path without suffix, a PNG folder."""
    from PIL import Image

    path = Path(path)
    data = to_uint8(frames)
    suffix = path.suffix.lower()
    if suffix == "":
        with atomic_path(path, is_dir=True) as tmp:
            for i, arr in enumerate(data):
                Image.fromarray(arr).save(tmp / f"frame_{i:05d}.png")
        return path
    if suffix == ".png" and len(data) == 1:
        with atomic_path(path) as tmp:
            Image.fromarray(data[0]).save(tmp, format="PNG")
        return path
    if suffix not in _CODECS:
        raise VideoFileError(
            f"{path}: cannot write {suffix!r}; use one of {', '.join(_CODECS)} or a folder name (PNG frames)."
        )
    from fractions import Fraction

    import av

    height, width = data.shape[1:3]
    if suffix != ".webm" and (height % 2 or width % 2):
        raise VideoFileError(f"{path}: H.264 needs even sizes, got {width}x{height}; write PNG frames instead.")
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream(_CODECS[suffix], rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            if _CODECS[suffix] == "libx264":
                stream.options = {"crf": "16", "preset": "medium"}
            for arr in data:
                for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path
