"""Training dataset: discovery, clip sampling with stride, crop/resize, seeded masks and keyframes, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kfi_core.bundled import make_sample_clip
from kfi_core.errors import DatasetError, VideoFileError
from kfi_core.media.video import write_frames
from kfi_core.training.data import (
    NO_KEYFRAME,
    ClipDataset,
    StreamSampler,
    collate_samples,
    draw_keyframe,
    find_sources,
    frames_needed,
    random_crop_box,
)


def index_clip(n: int, h: int = 48, w: int = 80) -> torch.Tensor:
    """Frame i is a flat grey of value 5 * i / 255 (exact in PNG), so a frame tells its own index."""
    return (torch.arange(n, dtype=torch.float32) * 5 / 255).view(n, 1, 1, 1).expand(n, 3, h, w).clone()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    write_frames(index_clip(30), root / "counter")  # PNG folder, 30 frames, 48x80
    write_frames(make_sample_clip(num_frames=12, height=64, width=96)["frames"], root / "ball.mp4")
    (root / "notes.txt").write_text("ignored")
    return root


def test_sources_found_in_name_order_with_frame_counts(data_dir):
    sources = find_sources(data_dir)
    assert [(s.path.name, s.num_frames, s.is_folder) for s in sources] == [
        ("ball.mp4", 12, False),
        ("counter", 30, True),
    ]


def test_a_folder_of_frames_is_one_video(data_dir):
    sources = find_sources(data_dir / "counter")
    assert len(sources) == 1 and sources[0].num_frames == 30


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_clip_has_frames_stride_apart(data_dir, stride):
    ds = ClipDataset(data_dir / "counter", num_frames=8, resolution=(48, 80), frame_stride=stride, crop_scale=(1, 1))
    starts = set()
    for k in range(6):
        s = ds.get(k, 0)
        index = (s.frames[:, 0, 0, 0] * 255 / 5).round().long()  # which source frame each clip frame is
        assert index.tolist() == list(range(s.start, s.start + 8 * stride, stride))
        assert 0 <= s.start <= 30 - frames_needed(8, stride)
        starts.add(s.start)
    assert len(starts) > 1  # random starts


def test_crop_and_resize_to_training_resolution(data_dir):
    ds = ClipDataset(data_dir, num_frames=8, resolution=(32, 32), crop_scale=(0.5, 1.0))
    for k in range(4):
        s = ds[k]
        assert s["frames"].shape == (8, 3, 32, 32) and s["masks"].shape == (8, 1, 32, 32)
        assert s["frames"].dtype == torch.float32 and 0 <= float(s["frames"].min()) <= float(s["frames"].max()) <= 1
        assert set(torch.unique(s["masks"]).tolist()) <= {0.0, 1.0}
        top, left, h, w = s["crop"]
        assert h == w  # the training aspect ratio (square)


def test_random_crop_box_keeps_aspect_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left, h, w = random_crop_box(rng, 100, 300, 320, 576, (0.6, 1.0))
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 300
        assert abs(w / h - 576 / 320) < 0.05 and h >= 59
    assert random_crop_box(rng, 100, 300, 320, 576, (1, 1))[2] == 100  # largest crop: full height


def test_samples_are_reproducible_and_differ_by_epoch_and_seed(data_dir):
    a = ClipDataset(data_dir, num_frames=8, resolution=(32, 32), seed=3)
    b = ClipDataset(data_dir, num_frames=8, resolution=(32, 32), seed=3)
    c = ClipDataset(data_dir, num_frames=8, resolution=(32, 32), seed=4)
    s1, s2 = a.get(1, 0), b.get(1, 0)
    assert torch.equal(s1.frames, s2.frames) and torch.equal(s1.masks, s2.masks)
    assert (s1.keyframe_index, s1.start, s1.crop, s1.source) == (s2.keyframe_index, s2.start, s2.crop, s2.source)
    assert not torch.equal(a.get(2, 0).masks, s1.masks)
    assert not torch.equal(c.get(1, 0).masks, s1.masks)
    # dataset[k] = sample k % len of epoch k // len; each epoch visits every video once
    assert torch.equal(a[3]["masks"], a.get(1, 1).masks)
    assert {a.get(5, i).source for i in range(2)} == {str(s.path) for s in a.sources}


def test_cache_gives_the_same_samples(data_dir):
    plain = ClipDataset(data_dir, num_frames=8, resolution=(32, 32))
    cached = ClipDataset(data_dir, num_frames=8, resolution=(32, 32), cache=True)
    for k in range(4):
        assert torch.equal(plain[k]["frames"], cached[k]["frames"])
    assert len(cached._cache) == 2


def test_keyframe_probability():
    draws = [draw_keyframe(np.random.default_rng([0, i]), 8, 0.3) for i in range(4000)]
    share = np.mean([d != NO_KEYFRAME for d in draws])
    assert abs(share - 0.3) < 0.03  # 4000 draws: standard error 0.0072, so 4 sigma
    picked = [d for d in draws if d != NO_KEYFRAME]
    assert set(picked) == set(range(8))
    assert all(draw_keyframe(np.random.default_rng(i), 8, 0.0) == NO_KEYFRAME for i in range(50))
    assert all(0 <= draw_keyframe(np.random.default_rng(i), 8, 1.0) < 8 for i in range(50))


def test_keyframe_probability_in_dataset(data_dir):
    never = ClipDataset(data_dir, num_frames=8, resolution=(32, 32), keyframe_prob=0.0)
    always = ClipDataset(data_dir, num_frames=8, resolution=(32, 32), keyframe_prob=1.0)
    assert all(never[k]["keyframe_index"] == NO_KEYFRAME for k in range(3))
    assert all(0 <= always[k]["keyframe_index"] < 8 for k in range(3))


def test_collate_and_stream_sampler():
    batch = collate_samples(
        [
            {
                "frames": torch.zeros(8, 3, 4, 4),
                "masks": torch.zeros(8, 1, 4, 4),
                "keyframe_index": i - 1,
                "source": "x",
            }
            for i in range(2)
        ]
    )
    assert batch["frames"].shape == (2, 8, 3, 4, 4) and batch["keyframe_index"].tolist() == [-1, 0]

    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    r0, r1 = take(StreamSampler(0, 2, 0, 2), 6), take(StreamSampler(0, 2, 1, 2), 6)
    assert r0 == [0, 1, 4, 5, 8, 9] and r1 == [2, 3, 6, 7, 10, 11]
    assert take(StreamSampler(8, 2, 0, 2), 2) == [8, 9]  # resumed after 2 steps of 4 samples


def test_error_missing_and_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        find_sources(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"found no videos .* Put the training videos"):
        ClipDataset(tmp_path / "empty", num_frames=8, resolution=(32, 32))


def test_error_short_clip_says_frames_needed(tmp_path):
    write_frames(index_clip(12), tmp_path / "short")
    with pytest.raises(DatasetError, match=r"short \(12\) frames.*8 frames with frame stride 2 needs 15 source"):
        ClipDataset(tmp_path, num_frames=8, resolution=(32, 32), frame_stride=2)
    assert len(ClipDataset(tmp_path, num_frames=8, resolution=(32, 32), frame_stride=1)) == 1


def test_error_unreadable_video(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    with pytest.raises(VideoFileError, match="broken.mp4: cannot open or decode"):
        ClipDataset(tmp_path, num_frames=8, resolution=(32, 32))


def test_error_bad_settings(data_dir):
    with pytest.raises(DatasetError, match="keyframe_prob"):
        ClipDataset(data_dir, num_frames=8, resolution=(32, 32), keyframe_prob=1.5)
    with pytest.raises(DatasetError, match="crop_scale"):
        ClipDataset(data_dir, num_frames=8, resolution=(32, 32), crop_scale=(0, 1))
    with pytest.raises(DatasetError, match="frame_stride"):
        ClipDataset(data_dir, num_frames=8, resolution=(32, 32), frame_stride=0)


# --------------------------------------------------------------------------- track masks (masks/ folder)


def _box_masks(n: int, h: int, w: int) -> torch.Tensor:
    """Frame t's mask: a 10x12 box whose left edge is at 4 + 2 t (a moving object)."""
    masks = torch.zeros(n, 1, h, w)
    for t in range(n):
        masks[t, :, 10:20, 4 + 2 * t : 16 + 2 * t] = 1.0
    return masks


@pytest.fixture(scope="module")
def track_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracks")
    write_frames(index_clip(12), root / "tracked")
    write_frames(_box_masks(12, 48, 80).expand(12, 3, 48, 80), root / "tracked" / "masks")
    write_frames(index_clip(12), root / "plain")
    return root


def test_masks_folder_is_found_with_its_clip_and_is_not_a_video(track_dir):
    sources = find_sources(track_dir)
    assert [(s.path.name, s.mask_folder.name if s.mask_folder else None) for s in sources] == [
        ("plain", None),
        ("tracked", "masks"),
    ]
    # a frame folder given as the dataset root keeps its masks/ as masks, not as a second video
    alone = find_sources(track_dir / "tracked")
    assert len(alone) == 1 and alone[0].mask_folder is not None


def test_track_masks_follow_the_clip_crop_and_need_a_keyframe(track_dir):
    ds = ClipDataset(
        track_dir / "tracked",
        num_frames=8,
        resolution=(48, 80),
        crop_scale=(1, 1),
        keyframe_prob=1.0,
        track_mask_prob=1.0,
    )
    for epoch in range(4):
        s = ds.get(epoch, 0)
        assert s.track_masks and s.keyframe_index != NO_KEYFRAME
        assert torch.equal(s.masks, _box_masks(12, 48, 80)[s.start : s.start + 8])  # the source frames' own masks
    # cropped and resized with the frames: the box stays on the same content
    ds = ClipDataset(
        track_dir / "tracked",
        num_frames=8,
        resolution=(24, 40),
        crop_scale=(0.5, 0.5),
        keyframe_prob=1.0,
        track_mask_prob=1.0,
    )
    s = ds.get(0, 0)
    top, left, h, w = s.crop
    expected = (
        F.interpolate(
            _box_masks(12, 48, 80)[s.start : s.start + 8, :, top : top + h, left : left + w], size=(24, 40), mode="area"
        )
        > 0
    )
    assert torch.equal(s.masks > 0, expected)
    # never without a keyframe; never with probability 0
    never = ClipDataset(
        track_dir / "tracked", num_frames=8, resolution=(48, 80), keyframe_prob=0.0, track_mask_prob=1.0
    )
    off = ClipDataset(track_dir / "tracked", num_frames=8, resolution=(48, 80), keyframe_prob=1.0, track_mask_prob=0.0)
    assert not any(d.get(e, 0).track_masks for d in (never, off) for e in range(4))


def test_track_mask_probability_and_other_streams_unchanged(track_dir):
    half = ClipDataset(track_dir, num_frames=8, resolution=(32, 32), keyframe_prob=1.0, track_mask_prob=0.5)
    base = ClipDataset(track_dir, num_frames=8, resolution=(32, 32), keyframe_prob=1.0)
    used = 0
    for epoch in range(40):
        for i in range(2):
            a, b = half.get(epoch, i), base.get(epoch, i)
            # frames, crop and keyframe are drawn from their own streams: the option changes only the masks
            assert torch.equal(a.frames, b.frames) and a.keyframe_index == b.keyframe_index
            if a.track_masks:
                used += 1
                assert a.source.endswith("tracked")
            else:
                assert torch.equal(a.masks, b.masks)
    assert 10 <= used <= 30  # 40 draws of the tracked clip at p = 0.5


@pytest.fixture(scope="module")
def hole_dir(tmp_path_factory):
    """One clip with both folders: masks/ (an object track) and holes/ (a removed object's track, other boxes)."""
    root = tmp_path_factory.mktemp("holes")
    write_frames(index_clip(12), root / "clip")
    write_frames(_box_masks(12, 48, 80).expand(12, 3, 48, 80), root / "clip" / "masks")
    write_frames(_box_masks(12, 48, 80).roll(20, dims=2).expand(12, 3, 48, 80), root / "clip" / "holes")
    return root


def test_hole_masks_are_used_with_or_without_a_keyframe_after_track_masks(hole_dir):
    holes = _box_masks(12, 48, 80).roll(20, dims=2)
    (source,) = find_sources(hole_dir)
    assert (source.mask_folder.name, source.hole_folder.name) == ("masks", "holes")
    alone = find_sources(hole_dir / "clip")  # the clip as the root: neither folder is a second video
    assert len(alone) == 1 and alone[0].hole_folder is not None
    for keyframe_prob in (0.0, 1.0):
        ds = ClipDataset(
            hole_dir,
            num_frames=8,
            resolution=(48, 80),
            crop_scale=(1, 1),
            keyframe_prob=keyframe_prob,
            hole_mask_prob=1.0,
        )
        for epoch in range(4):
            s = ds.get(epoch, 0)
            assert s.hole_masks and not s.track_masks and s.as_dict()["hole_masks"]
            assert torch.equal(s.masks, holes[s.start : s.start + 8])
    # a sample with a keyframe that draws its track masks keeps them; the others fall back to the holes
    both = ClipDataset(
        hole_dir,
        num_frames=8,
        resolution=(48, 80),
        crop_scale=(1, 1),
        keyframe_prob=0.5,
        track_mask_prob=1.0,
        hole_mask_prob=1.0,
    )
    kinds = set()
    for epoch in range(12):
        s = both.get(epoch, 0)
        kinds.add((s.keyframe_index != NO_KEYFRAME, s.track_masks, s.hole_masks))
        own = (_box_masks(12, 48, 80) if s.track_masks else holes)[s.start : s.start + 8]
        assert torch.equal(s.masks, own)
    assert kinds == {(True, True, False), (False, False, True)}
    # probability 0 (the default): synthetic masks, as before the option, from the same streams
    off = ClipDataset(hole_dir, num_frames=8, resolution=(48, 80), keyframe_prob=0.5)
    on = ClipDataset(hole_dir, num_frames=8, resolution=(48, 80), keyframe_prob=0.5, hole_mask_prob=1.0)
    for epoch in range(4):
        a, b = off.get(epoch, 0), on.get(epoch, 0)
        assert not a.hole_masks and torch.equal(a.frames, b.frames) and a.keyframe_index == b.keyframe_index
        assert not torch.equal(a.masks, b.masks)


def test_hole_mask_errors(tmp_path, caplog):
    write_frames(index_clip(10), tmp_path / "clip")
    write_frames(_box_masks(9, 48, 80).expand(9, 3, 48, 80), tmp_path / "clip" / "holes")
    with pytest.raises(DatasetError, match=r"holes.*9 mask images for 10 frames.*holes/"):
        find_sources(tmp_path)
    with pytest.raises(DatasetError, match="hole_mask_prob"):
        ClipDataset(tmp_path, num_frames=8, resolution=(32, 32), hole_mask_prob=-0.1)
    write_frames(index_clip(10), tmp_path / "plain")
    with caplog.at_level("WARNING", logger="kfi_core.training.data"):
        ClipDataset(tmp_path / "plain", num_frames=8, resolution=(32, 32), hole_mask_prob=0.5)
    assert "hole_mask_prob is 0.5 but no frame folder has a holes/ folder" in caplog.text


def test_track_mask_errors(tmp_path):
    write_frames(index_clip(10), tmp_path / "clip")
    write_frames(_box_masks(9, 48, 80).expand(9, 3, 48, 80), tmp_path / "clip" / "masks")
    with pytest.raises(DatasetError, match=r"masks.*9 mask images for 10 frames"):
        find_sources(tmp_path)
    with pytest.raises(DatasetError, match="track_mask_prob"):
        ClipDataset(tmp_path / "nothing", num_frames=8, resolution=(32, 32), track_mask_prob=2.0)
