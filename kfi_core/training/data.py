"""Training data: random clips from a folder of videos or frame folders, with random masks and keyframes.

A dataset folder holds any mix of

- video files (``.mp4``, ``.webm``, ``.mov``, ``.mkv``, ``.avi``; decoded with PyAV), and
- sub-folders of frames (``.png``, ``.jpg``, ...; one folder = one video, frames in natural name order);

a folder that holds only frames is itself one video. Each sample is built from its own random
streams, seeded from the dataset ``seed``, the epoch and the index (``numpy.random.default_rng([*seed,
epoch, index, stream])``), so a sample is the same whenever and wherever it is drawn (any worker, any
process, before or after a resume). Nothing reads numpy's, torch's or Python's global generators.

Per sample (:meth:`ClipDataset.get`):

1. **Clip**: ``num_frames`` frames ``frame_stride`` apart from a random start
   (a clip needs ``(num_frames - 1) * frame_stride + 1`` source frames).
2. **Crop and resize**: a random crop with the training aspect ratio, whose side is a fraction in
   ``crop_scale`` of the largest such crop, resized (bilinear, antialiased) to ``resolution``.
3. **Masks**: :func:`kfi_core.training.mask_synthesis.sample_masks` with ``mask_config`` (its own stream).
4. **Keyframe**: with probability ``keyframe_prob`` one frame at a uniform random index is a known keyframe
   (the clean frame: the ground truth of the edit), else none (the removal case). Index -1 means none.
5. **Track masks** (optional): a frame folder may hold a ``masks/`` sub-folder with one mask image per frame
   (white = the object, same names order and size as the frames), e.g. SAM tracks of its moving objects.
   When a sample has a keyframe, with probability ``track_mask_prob`` it uses the clip's own masks (cropped
   with the frames) instead of synthetic ones: the hole then hides an object whose appearance only the
   keyframe shows, which is what keyframe-guided edit propagation has to do. Without a keyframe a sample
   never uses them (filling in an unseen object is not learnable, and would teach removal to paint objects).
6. **Hole masks** (optional): a frame folder may instead or also hold a ``holes/`` sub-folder, masks laid over
   content that *is* the answer: e.g. the track of an object removed from this clip, drawn on the clean frames.
   With probability ``hole_mask_prob`` any sample, with or without a keyframe, uses them (when no track mask
   was chosen): the hole then hides background that other frames or the keyframe may show, which is what
   object removal has to fill.

Decoding is lazy: a frame folder reads only the chosen files; a video is decoded up to the last chosen
frame. ``cache=True`` keeps every decoded video in memory (per process / data-loader worker), for small
folders read many times.

Layouts as everywhere in kfi_core: ``frames`` float32 [F, 3, H, W] in 0..1, ``masks`` float32
[F, 1, H, W] with 1 = fill.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kfi_core.errors import DatasetError, VideoFileError
from kfi_core.media.video import IMAGE_SUFFIXES, image_to_array, list_frame_files
from kfi_core.training.mask_synthesis import MaskConfig, sample_masks

logger = logging.getLogger(__name__)

DATASET_VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")
NO_KEYFRAME = -1
# Independent random streams of one sample: changing one setting never shifts the others' draws.
STREAM_CLIP, STREAM_MASK, STREAM_KEYFRAME, STREAM_ORDER, STREAM_TRACK, STREAM_HOLE = 0, 1, 2, 3, 4, 5
TRACK_MASK_FOLDER = "masks"  # the optional per-clip mask folder inside a frame folder (an object under it)
HOLE_MASK_FOLDER = "holes"  # the optional per-clip hole folder (clean content under it: removal's holes)
_MASK_FOLDERS = (TRACK_MASK_FOLDER, HOLE_MASK_FOLDER)


@dataclass(frozen=True)
class VideoSource:
    """One training video: a file or a folder of frames, and its frame count."""

    path: Path
    num_frames: int
    is_folder: bool
    mask_folder: Path | None = None  # <frame folder>/masks with one mask per frame, if present
    hole_folder: Path | None = None  # <frame folder>/holes with one mask per frame, if present


@dataclass
class ClipSample:
    """One training sample (see the module docstring)."""

    frames: torch.Tensor  # [F, 3, H, W] in 0..1
    masks: torch.Tensor  # [F, 1, H, W], 1 = fill
    keyframe_index: int  # NO_KEYFRAME (-1) for the removal case
    source: str
    start: int  # first source frame
    crop: tuple[int, int, int, int]  # top, left, height, width in source pixels
    track_masks: bool = False  # True: masks are the clip's own (masks/ folder), not synthetic
    hole_masks: bool = False  # True: masks are the clip's own holes (holes/ folder), not synthetic

    def as_dict(self) -> dict:
        return {
            "frames": self.frames,
            "masks": self.masks,
            "keyframe_index": self.keyframe_index,
            "source": self.source,
            "start": self.start,
            "crop": self.crop,
            "track_masks": self.track_masks,
            "hole_masks": self.hole_masks,
        }


# --------------------------------------------------------------------------- discovery


def _video_frame_count(path: Path) -> int:
    """Frames of a video file: the container's count when it has one, else a full decode."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoFileError(
                    f"dataset video {path}: the file has no video stream. Remove it from the "
                    "dataset folder or re-export it."
                )
            stream = container.streams.video[0]
            if stream.frames and stream.frames > 0:
                return int(stream.frames)
            return sum(1 for _ in container.decode(stream))  # webm and some mov files do not record it
    except av.error.FFmpegError as err:
        raise VideoFileError(
            f"dataset video {path}: cannot open or decode it ({err}). The file may be truncated or not a video; "
            "re-export it (H.264 mp4 works everywhere) or remove it from the dataset folder."
        ) from err


def find_sources(root: str | os.PathLike) -> list[VideoSource]:
    """Every video file and frame folder directly inside ``root`` (or ``root`` itself if it holds only frames).

    Sorted by name, so the order is the same on every machine. Raises :class:`DatasetError` for a missing
    or empty folder and :class:`VideoFileError` for a video that cannot be opened.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"--data {root}: no such folder. Give a folder of videos (mp4, webm, mov) or of frame folders."
        )
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    videos = [p for p in entries if p.is_file() and p.suffix.lower() in DATASET_VIDEO_SUFFIXES]
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    folders = [
        p
        for p in entries
        if p.is_dir()
        and not p.name.startswith(".")
        and not (images and p.name in _MASK_FOLDERS)  # root is itself one video with its masks
        and any(c.suffix.lower() in IMAGE_SUFFIXES for c in p.iterdir())
    ]
    sources: list[VideoSource] = []
    if images and not videos and not folders:
        sources.append(_frame_folder_source(root))
    for path in sorted(folders + videos, key=lambda p: p.name):
        if path.is_dir():
            sources.append(_frame_folder_source(path))
        else:
            sources.append(VideoSource(path, _video_frame_count(path), False))
    if not sources:
        raise DatasetError(
            f"--data {root}: found no videos ({', '.join(DATASET_VIDEO_SUFFIXES)}) and no folders of frames "
            f"({', '.join(IMAGE_SUFFIXES)}) in this folder. Put the training videos (or one folder of frames per "
            "video) directly inside it."
        )
    return sources


def _frame_folder_source(path: Path) -> VideoSource:
    """A frame folder and its optional ``masks/`` and ``holes/`` folders, which must hold one mask per frame."""
    count = len(list_frame_files(path))
    found = []
    for name in _MASK_FOLDERS:
        mask_dir = path / name
        if not mask_dir.is_dir():
            found.append(None)
            continue
        masks = len(list_frame_files(mask_dir))
        if masks != count:
            raise DatasetError(
                f"dataset masks {mask_dir}: {masks} mask images for {count} frames. A clip's {name}/ "
                "folder needs exactly one mask per frame (same order); fix or remove it."
            )
        found.append(mask_dir)
    return VideoSource(path, count, True, *found)


def frames_needed(num_frames: int, frame_stride: int) -> int:
    """Source frames one clip spans: ``(num_frames - 1) * frame_stride + 1``."""
    return (num_frames - 1) * frame_stride + 1


def check_sources(sources: Sequence[VideoSource], num_frames: int, frame_stride: int) -> None:
    """Raise :class:`DatasetError` naming every source too short for one clip."""
    need = frames_needed(num_frames, frame_stride)
    short = [s for s in sources if s.num_frames < need]
    if short:
        listed = ", ".join(f"{s.path.name} ({s.num_frames})" for s in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise DatasetError(
            f"dataset: {len(short)} of {len(sources)} videos are too short: {listed}{more} frames. A clip of "
            f"{num_frames} frames with frame stride {frame_stride} needs {need} source frames. Remove the short "
            "videos, or lower the frame stride (config 'frame_stride')."
        )


# --------------------------------------------------------------------------- decoding


def _read_folder_frames(source: VideoSource, indices: Sequence[int]) -> np.ndarray:
    files = list_frame_files(source.path)
    arrays = [image_to_array(files[i], "RGB") for i in indices]
    if len({a.shape for a in arrays}) != 1:
        raise VideoFileError(
            f"dataset frames {source.path}: frames have different sizes; all frames of a video must have the same size."
        )
    return np.stack(arrays)  # [F, H, W, 3] uint8


def _read_clip_masks(folder: Path, indices: Sequence[int], frame_size: tuple[int, int]) -> np.ndarray:
    """The clip's own masks (``masks/`` or ``holes/`` folder) at ``indices``: [F, H, W] float32, 1 where the image
    is brighter than half."""
    files = list_frame_files(folder)
    arrays = [image_to_array(files[i], "L") for i in indices]
    for i, a in zip(indices, arrays):
        if a.shape[:2] != tuple(frame_size):
            raise DatasetError(
                f"dataset masks {files[i]}: {a.shape[1]}x{a.shape[0]} but the frames are "
                f"{frame_size[1]}x{frame_size[0]}; a mask must have its frame's size. Resize or remove it."
            )
    return (np.stack(arrays).reshape(len(arrays), *frame_size) >= 128).astype(np.float32)


def _read_video_frames(source: VideoSource, indices: Sequence[int] | None) -> np.ndarray:
    """Decode the frames at ``indices`` (all when None), stopping after the last one."""
    import av

    wanted = None if indices is None else set(indices)
    last = None if indices is None else max(indices)
    found: dict[int, np.ndarray] = {}
    try:
        with av.open(str(source.path)) as container:
            stream = container.streams.video[0]
            for i, frame in enumerate(container.decode(stream)):
                if wanted is None or i in wanted:
                    found[i] = frame.to_ndarray(format="rgb24")
                if last is not None and i >= last:
                    break
    except av.error.FFmpegError as err:
        raise VideoFileError(
            f"dataset video {source.path}: decoding failed ({err}); the file may be damaged. "
            "Re-export it or remove it from the dataset folder."
        ) from err
    order = sorted(found) if indices is None else list(indices)
    missing = [i for i in order if i not in found]
    if missing:
        raise VideoFileError(
            f"dataset video {source.path}: frame {missing[0]} could not be decoded although the file claims "
            f"{source.num_frames} frames. Re-export the video (its frame count is wrong) or remove it."
        )
    return np.stack([found[i] for i in order])


def random_crop_box(
    rng: np.random.Generator, src_h: int, src_w: int, out_h: int, out_w: int, crop_scale: tuple[float, float]
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop with the output's aspect ratio.

    The crop side is ``s`` times the largest crop of that aspect that fits, ``s`` uniform in ``crop_scale``.
    """
    aspect = out_w / out_h
    max_h = min(float(src_h), src_w / aspect)
    scale = rng.uniform(*crop_scale) if crop_scale[0] < crop_scale[1] else crop_scale[0]
    ch = max(1, min(src_h, int(round(max_h * scale))))
    cw = max(1, min(src_w, int(round(ch * aspect))))
    top = int(rng.integers(0, src_h - ch + 1))
    left = int(rng.integers(0, src_w - cw + 1))
    return top, left, ch, cw


def crop_and_resize(frames: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """Crop frames [F, 3, H, W] to ``box`` and resize to ``size`` (bilinear, antialiased when shrinking)."""
    top, left, h, w = box
    crop = frames[:, :, top : top + h, left : left + w]
    if (h, w) == tuple(size):
        return crop.contiguous()
    return F.interpolate(crop, size=tuple(size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def crop_and_resize_masks(masks: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """Crop masks [F, 1, H, W] to ``box`` and resize to ``size``; a pixel is filled if any of its area is
    (area resize, then > 0), so a mask never shrinks below its object."""
    top, left, h, w = box
    crop = masks[:, :, top : top + h, left : left + w]
    if (h, w) != tuple(size):
        crop = F.interpolate(crop, size=tuple(size), mode="area" if h >= size[0] else "nearest")
    return (crop > 0).float()


def draw_keyframe(rng: np.random.Generator, num_frames: int, keyframe_prob: float) -> int:
    """A keyframe index uniform in [0, num_frames) with probability ``keyframe_prob``, else NO_KEYFRAME (-1)."""
    if rng.uniform() < keyframe_prob:
        return int(rng.integers(0, num_frames))
    return NO_KEYFRAME


# --------------------------------------------------------------------------- dataset


class ClipDataset(torch.utils.data.Dataset):
    """Random training clips (see the module docstring).

    ``len(dataset)`` is the number of samples per epoch (one per source video, in a shuffled order per
    epoch). ``dataset[k]`` accepts any ``k >= 0``: sample ``k % len`` of epoch ``k // len``, so a
    sampler can walk an endless stream of samples and resume at any position.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        num_frames: int,
        resolution: tuple[int, int],
        frame_stride: int = 1,
        crop_scale: tuple[float, float] = (0.8, 1.0),
        keyframe_prob: float = 0.5,
        mask_config: MaskConfig | None = None,
        seed: int | Sequence[int] = 0,
        cache: bool = False,
        track_mask_prob: float = 0.0,
        hole_mask_prob: float = 0.0,
    ) -> None:
        _check_positive_int("num_frames", num_frames)
        _check_positive_int("frame_stride", frame_stride)
        if len(resolution) != 2:
            raise DatasetError(f"resolution: got {resolution!r}; give (height, width) in pixels.")
        for v in resolution:
            _check_positive_int("resolution", v)
        lo, hi = (float(v) for v in crop_scale)
        if not 0 < lo <= hi <= 1:
            raise DatasetError(
                f"crop_scale: got {crop_scale!r}; give (low, high) with 0 < low <= high <= 1 "
                "(fractions of the largest crop; (1, 1) = always the largest)."
            )
        if not 0.0 <= float(keyframe_prob) <= 1.0:
            raise DatasetError(
                f"keyframe_prob: got {keyframe_prob!r}; give a probability from 0 to 1 "
                "(0 = removal only, 1 = always a keyframe)."
            )
        self.root = Path(root)
        self.num_frames = int(num_frames)
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.frame_stride = int(frame_stride)
        self.crop_scale = (lo, hi)
        if not 0.0 <= float(track_mask_prob) <= 1.0:
            raise DatasetError(
                f"track_mask_prob: got {track_mask_prob!r}; give a probability from 0 to 1 (0 = synthetic masks only)."
            )
        if not 0.0 <= float(hole_mask_prob) <= 1.0:
            raise DatasetError(
                f"hole_mask_prob: got {hole_mask_prob!r}; give a probability from 0 to 1 "
                "(0 = never the clips' own holes)."
            )
        self.keyframe_prob = float(keyframe_prob)
        self.track_mask_prob = float(track_mask_prob)
        self.hole_mask_prob = float(hole_mask_prob)
        self.mask_config = mask_config if mask_config is not None else MaskConfig()
        self.seed = tuple(int(s) for s in (seed if isinstance(seed, (tuple, list)) else (seed,)))
        self.cache = bool(cache)
        self._cache: dict[int, np.ndarray] = {}
        self.sources = find_sources(self.root)
        check_sources(self.sources, self.num_frames, self.frame_stride)
        if self.track_mask_prob > 0 and not any(s.mask_folder for s in self.sources):
            logger.warning(
                "dataset %s: track_mask_prob is %g but no frame folder has a %s/ folder; every sample "
                "uses synthetic masks",
                self.root,
                self.track_mask_prob,
                TRACK_MASK_FOLDER,
            )
        if self.hole_mask_prob > 0 and not any(s.hole_folder for s in self.sources):
            logger.warning(
                "dataset %s: hole_mask_prob is %g but no frame folder has a %s/ folder; no sample uses hole masks",
                self.root,
                self.hole_mask_prob,
                HOLE_MASK_FOLDER,
            )
        logger.info(
            "dataset %s: %d videos, clips of %d frames (stride %d) at %dx%d",
            self.root,
            len(self.sources),
            self.num_frames,
            self.frame_stride,
            self.resolution[1],
            self.resolution[0],
        )

    def __len__(self) -> int:
        return len(self.sources)

    def _rng(self, epoch: int, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([*self.seed, epoch, index, stream])

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([*self.seed, epoch, STREAM_ORDER]).permutation(len(self.sources))

    def _frames(self, source_index: int, indices: list[int]) -> np.ndarray:
        source = self.sources[source_index]
        if self.cache:
            if source_index not in self._cache:
                all_frames = (
                    _read_folder_frames(source, range(source.num_frames))
                    if source.is_folder
                    else _read_video_frames(source, None)
                )
                self._cache[source_index] = all_frames
            return self._cache[source_index][indices]
        if source.is_folder:
            return _read_folder_frames(source, indices)
        return _read_video_frames(source, indices)

    def get(self, epoch: int, index: int) -> ClipSample:
        """Sample ``index`` of ``epoch``: deterministic for (seed, epoch, index)."""
        if not 0 <= index < len(self.sources) or epoch < 0:
            raise IndexError(f"sample index {index} of epoch {epoch}: give 0 <= index < {len(self.sources)}")
        source_index = int(self._order(epoch)[index])
        source = self.sources[source_index]
        rng = self._rng(epoch, index, STREAM_CLIP)

        # 1. Clip: num_frames frames, frame_stride apart
        span = frames_needed(self.num_frames, self.frame_stride)
        start = int(rng.integers(0, source.num_frames - span + 1))
        indices = list(range(start, start + span, self.frame_stride))
        data = self._frames(source_index, indices)  # [F, H, W, 3] uint8
        frames = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).float().div_(255.0)

        # 2. Random crop with the training aspect ratio, resized to the training resolution
        height, width = self.resolution
        box = random_crop_box(rng, frames.shape[2], frames.shape[3], height, width, self.crop_scale)
        frames = crop_and_resize(frames, box, self.resolution)

        # 3. Masks (own stream), 4. keyframe or none (own stream)
        masks = sample_masks(self.num_frames, height, width, self._rng(epoch, index, STREAM_MASK), self.mask_config)
        keyframe = draw_keyframe(self._rng(epoch, index, STREAM_KEYFRAME), self.num_frames, self.keyframe_prob)

        # 5. The clip's own track masks instead (own stream), only with a keyframe and only if they hide something;
        # 6. else its own holes (own stream), with or without a keyframe
        others = [t for t in range(self.num_frames) if t != keyframe]

        def own_masks(folder: Path, prob: float, stream: int) -> torch.Tensor | None:
            if folder is None or prob <= 0 or self._rng(epoch, index, stream).uniform() >= prob:
                return None
            own = torch.from_numpy(_read_clip_masks(folder, indices, tuple(data.shape[1:3])))[:, None]
            own = crop_and_resize_masks(own, box, self.resolution)  # [F, 1, H, W]
            return own if own[others].any() else None

        track = own_masks(source.mask_folder, self.track_mask_prob if keyframe != NO_KEYFRAME else 0.0, STREAM_TRACK)
        holes = None if track is not None else own_masks(source.hole_folder, self.hole_mask_prob, STREAM_HOLE)
        chosen = track if track is not None else holes
        return ClipSample(
            frames=frames,
            masks=chosen if chosen is not None else masks,
            keyframe_index=keyframe,
            source=str(source.path),
            start=start,
            crop=box,
            track_masks=track is not None,
            hole_masks=holes is not None,
        )

    def __getitem__(self, k: int) -> dict:
        k = int(k)
        if k < 0:
            raise IndexError(f"sample {k}: give a non-negative sample number")
        return self.get(k // len(self.sources), k % len(self.sources)).as_dict()


def collate_samples(samples: list[dict]) -> dict:
    """Stack a list of sample dicts into a batch: frames [B, F, 3, H, W], masks [B, F, 1, H, W]."""
    return {
        "frames": torch.stack([s["frames"] for s in samples]),
        "masks": torch.stack([s["masks"] for s in samples]),
        "keyframe_index": torch.tensor([s["keyframe_index"] for s in samples], dtype=torch.long),
        "source": [s["source"] for s in samples],
    }


class StreamSampler(torch.utils.data.Sampler):
    """Endless sample numbers for one process: micro-batch ``m`` of process ``rank`` takes samples
    ``start + (m * world_size + rank) * batch_size + j``, ``j < batch_size``.

    Every process sees different samples, and a run resumed at ``start`` (the samples consumed by all
    processes so far) continues the same stream.
    """

    def __init__(self, start: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.start, self.batch_size, self.rank, self.world_size = (
            int(start),
            int(batch_size),
            int(rank),
            int(world_size),
        )

    def __iter__(self) -> Iterator[int]:
        m = 0
        while True:
            base = self.start + (m * self.world_size + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)
            m += 1


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DatasetError(f"{name}: got {value!r}; give a positive whole number.")
