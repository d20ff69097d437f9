"""Bad inputs, one table, two paths: the CLI and the real ComfyUI server (docs/ERRORS.md lists the same rows).

Each row says what the user sees in each path:
- ``("error", text)``: CLI exit code 2 with ``text`` on stderr and no traceback; the server reports an
  ``execution_error`` whose ``exception_message`` holds ``text``;
- ``("rejected", text)``: the server refuses the prompt at validation (HTTP 400, ``text`` in ``node_errors``)
  before anything runs (the CLI has no such stage);
- ``("ok", None)`` / ``("warning", text)``: accepted; a warning row also logs ``text`` (WARNING);
- ``None``: the input cannot be produced in that path; ``Row.why`` says why and ``lib`` checks the library.

The CLI rows run in ONE Python process that calls ``kfi_core.cli.main(argv)`` per row (the code behind
``python -m kfi_core``; a fresh process per row would cost 5 s of imports each); two rows also run as real
``python -m kfi_core`` subprocesses. The server rows are queued together on the session's server.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kfi_testing import encode_node, sampler_node, tiny_model_node
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ERRORS.md"
H = W = 64


# --------------------------------------------------------------------------- inputs


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _frames(n: int, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _hole(h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    m[h // 4 : h // 2, w // 4 : w // 2] = 255
    return m


def make_inputs(d: Path, model_dir: Path) -> dict[str, Path]:
    """Every bad (and a few good) input file the rows use, written into ``d``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from kfi_core.media.video import write_frames
    from kfi_core.model.adapter import save_adapter
    from kfi_core.model.conv_in import expand_conv_in
    from kfi_core.model.loading import load_kfi_model
    from kfi_core.model.lora import add_lora
    from kfi_core.model.single_file import save_single_file

    d.mkdir(parents=True, exist_ok=True)
    for name, n in (("frames4", 4), ("frames1", 1), ("frames20", 20)):
        for i, f in enumerate(_frames(n)):
            _png(d / name / f"f{i:03d}.png", f)
    for i, f in enumerate(_frames(4, 60, 70)):
        _png(d / "odd" / f"f{i:03d}.png", f)
    for i, f in enumerate(_frames(4)):
        _png(d / "gray" / f"f{i:03d}.png", f[..., 0], "L")
        _png(d / "rgba" / f"f{i:03d}.png", np.concatenate([f, np.full((H, W, 1), 128, np.uint8)], -1), "RGBA")
    for i in range(3):
        _png(d / "masks3" / f"m{i}.png", _hole())
    _png(d / "hole.png", _hole())
    _png(d / "hole_small.png", _hole(64, 32))
    _png(d / "odd_hole.png", _hole(60, 70))
    _png(d / "empty.png", np.zeros((H, W), np.uint8))
    _png(d / "full.png", np.full((H, W), 255, np.uint8))
    _png(d / "thin.png", np.pad(np.full((2, 2), 255, np.uint8), ((30, 32), (30, 32))))
    _png(d / "kf.png", _frames(1, seed=5)[0])
    _png(d / "kf_small.png", _frames(1, 32, 32, seed=5)[0])
    checker = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)
    _png(d / "checker.png", np.stack([checker] * 3, -1))
    write_frames(torch.from_numpy(_frames(4)).permute(0, 3, 1, 2).float() / 255, d / "clip.mp4")
    raw = (d / "clip.mp4").read_bytes()
    (d / "trunc.mp4").write_bytes(raw[: len(raw) // 3])
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(1).bytes(4096))
    (d / "notes.txt").write_text("not a video\n")
    torch.save({"w": torch.zeros(2)}, d / "model.ckpt")
    torch.save({"w": torch.zeros(2)}, d / "adapter.pt")

    model = load_kfi_model(model_dir)
    save_single_file(
        {"unet": model.unet, "vae": model.vae, "image_encoder": model.image_encoder},
        d / "svd_single.safetensors",
        num_frames=model.num_frames,
    )
    single = (d / "svd_single.safetensors").read_bytes()
    (d / "svd_trunc.safetensors").write_bytes(single[: len(single) // 2])
    (d / "svd_single.safetensors").unlink()
    expand_conv_in(model.unet)
    add_lora(model.unet, rank=4)
    save_adapter(model.unet, d / "adapter_ok.safetensors", base_variant=model.variant, num_frames=8)
    save_adapter(model.unet, d / "adapter_xt.safetensors", base_variant="svd-xt", num_frames=25)
    save_adapter(model.unet, d / "adapter_14f.safetensors", base_variant=model.variant, num_frames=14)
    ok = (d / "adapter_ok.safetensors").read_bytes()
    (d / "adapter_trunc.safetensors").write_bytes(ok[: len(ok) // 2])
    with safe_open(str(d / "adapter_ok.safetensors"), "pt") as fh:  # the rank in the metadata edited to 8
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(tensors, str(d / "adapter_rank8.safetensors"), metadata={**meta, "kfi.lora_rank": "8"})
    # training configs (train --config): a misspelt key, broken JSON, an option removed from KFI
    text = (ROOT / "configs" / "tiny.json").read_text()
    typo = json.loads(text)
    typo["lerning_rate"] = 1e-3
    (d / "train_typo.json").write_text(json.dumps(typo))
    (d / "train_broken.json").write_text(text[: len(text) // 2])
    (d / "train_removed.json").write_text(json.dumps({**json.loads(text), "reference_attention": True}))
    return {p.name: p for p in d.iterdir()}


# --------------------------------------------------------------------------- server prompts

SERVER_FILES = {  # input file name on the server -> file in the inputs folder
    "input": [
        "hole.png",
        "hole_small.png",
        "empty.png",
        "full.png",
        "thin.png",
        "kf.png",
        "kf_small.png",
        "checker.png",
        "clip.mp4",
        "corrupt.mp4",
        "trunc.mp4",
    ],
    "models/checkpoints": ["svd_trunc.safetensors", "model.ckpt"],
    "models/kfi_adapters": [
        "adapter_ok.safetensors",
        "adapter_xt.safetensors",
        "adapter_14f.safetensors",
        "adapter_trunc.safetensors",
        "adapter_rank8.safetensors",
    ],
    "models/loras": ["adapter.pt"],
}
PFX = "kfibad_"  # server copies carry a prefix so that they do not clash with other tests' files


def base_prompt(frames: int = 4, mask: str = "hole.png", steps: int = 1, **sampler) -> dict:
    """Frames (a solid EmptyImage batch) + a mask image -> encode -> sampler -> preview."""
    return {
        "m": tiny_model_node(),
        "img": {
            "class_type": "EmptyImage",
            "inputs": {"width": W, "height": H, "batch_size": frames, "color": 0x406080},
        },
        "mask": {"class_type": "LoadImageMask", "inputs": {"image": PFX + mask, "channel": "red"}},
        "enc": encode_node("m", ["img", 0], ["mask", 0]),
        "s": sampler_node("m", "enc", seed=0, steps=steps, **sampler),
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["s", 0]}},
    }


def _set(node: str, **inputs) -> Callable[[dict], dict]:
    def edit(p: dict) -> dict:
        p[node]["inputs"].update(inputs)
        return p

    return edit


def _encode_only(p: dict) -> dict:
    """Stop after KFI Symmetric Mask Encode (accepting rows need no sampling on the server)."""
    del p["s"]
    p["hole"] = {"class_type": "KFIConditionPreview", "inputs": {"condition": ["enc", 0]}}
    p["out"]["inputs"]["images"] = ["hole", 0]
    return p


def _chain(*edits: Callable[[dict], dict]) -> Callable[[dict], dict]:
    def edit(p: dict) -> dict:
        for e in edits:
            p = e(p)
        return p

    return edit


def _node(name: str, class_type: str, **inputs) -> Callable[[dict], dict]:
    def edit(p: dict) -> dict:
        p[name] = {"class_type": class_type, "inputs": inputs}
        return p

    return edit


def _keyframe(image: str, indices: str) -> Callable[[dict], dict]:
    return _chain(
        _node("kf", "LoadImage", image=PFX + image), _set("enc", keyframes=["kf", 0], keyframe_indices=indices)
    )


def _schedule(**inputs) -> Callable[[dict], dict]:
    base = {
        "strategy": "anchor",
        "window": 0,
        "anchor_spacing": 0,
        "frames": 0,
        "keyframe_indices": "",
        "kfi_model": ["m", 0],
        "condition": ["enc", 0],
    }
    return _chain(_node("sch", "LongVideoAnchorSchedule", **{**base, **inputs}), _set("s", schedule=["sch", 0]))


def _load_video(file: str) -> Callable[[dict], dict]:
    return _chain(
        _node("v", "LoadVideo", file=PFX + file),
        _node("vc", "GetVideoComponents", video=["v", 0]),
        _set("enc", images=["vc", 0]),
    )


# --------------------------------------------------------------------------- the table


@dataclass
class Row:
    id: str
    cli: tuple | None  # (args after "inpaint --model M --out O" or a full argv starting with a command, expectation)
    server: tuple | None  # (prompt edit, expectation)
    why: str = ""  # why a path is None
    lib: Callable[[], Any] | None = None  # a library call that must raise the row's error (for rows a path lacks)
    lib_expect: str = ""


def _inp(video="frames4", mask="hole.png", *extra) -> list:
    return ["inpaint", "--video", f"@{video}", "--mask", f"@{mask}", "--steps", "1", *extra]


def _lib_frames(value: float | None = None, channels: int = 3) -> Callable[[], Any]:
    def call():
        from kfi_core.inference.condition import prepare_clip

        frames = torch.rand(4, channels, H, W)
        if value is not None:
            frames[0, 0, 0, 0] = value
        prepare_clip(frames, torch.ones(1, 1, H, W))

    return call


def _lib_mask_nan():
    from kfi_core.inference.condition import prepare_clip

    m = torch.ones(1, 1, H, W)
    m[0, 0, 0, 0] = float("nan")
    prepare_clip(torch.rand(4, 3, H, W), m)


ERR, OK, WARN, REJ = "error", "ok", "warning", "rejected"
NO_SERVER_FILES = "core loaders (LoadImage, LoadVideo) always give finite RGB in 0..1"

ROWS: list[Row] = [
    # ---- frames, masks, keyframes
    Row(
        "mask_count",
        (_inp("frames4", "masks3"), (ERR, "masks: got 3 masks for 4 frames")),
        (
            _chain(
                _node("m3", "ImageToMask", image=["m3i", 0], channel="red"),
                _node("m3i", "EmptyImage", width=W, height=H, batch_size=3, color=0xFFFFFF),
                _set("enc", mask=["m3", 0]),
            ),
            (ERR, "masks: got 3 masks for 4 frames"),
        ),
    ),
    Row(
        "mask_size",
        (_inp("frames4", "hole_small.png"), (ERR, "mask size 32x64 (width x height) does not match")),
        (_set("mask", image=PFX + "hole_small.png"), (ERR, "mask size 32x64 (width x height) does not match")),
    ),
    Row(
        "keyframe_size",
        (
            _inp("frames4", "hole.png", "--keyframe", "@kf_small.png", "--keyframe-index", "0"),
            (ERR, "keyframes: image size [32, 32]"),
        ),
        (_keyframe("kf_small.png", "0"), (ERR, "keyframes: image size [32, 32]")),
    ),
    Row(
        "keyframe_index_range",
        (
            _inp("frames4", "hole.png", "--keyframe", "@kf.png", "--keyframe-index", "9"),
            (ERR, "keyframe_index: got 9 for a clip of 4 frames"),
        ),
        (_keyframe("kf.png", "9"), (ERR, "keyframe_index: got 9 for a clip of 4 frames")),
    ),
    Row(
        "keyframe_index_count",
        (
            _inp("frames4", "hole.png", "--keyframe", "@kf.png", "--keyframe-index", "0", "--keyframe-index", "2"),
            (ERR, "got 2 indices for 1"),
        ),
        (_keyframe("kf.png", "0, 2"), (ERR, "got 2 indices for 1")),
    ),
    Row(
        "keyframe_index_twice",
        (_inp("frames4", "hole.png", "--keyframe-index", "1", "--keyframe-index", "1"), (ERR, "names a frame twice")),
        (_set("enc", keyframe_indices="1, 1"), (ERR, "names a frame twice")),
    ),
    Row(
        "keyframe_index_text",
        (
            _inp("frames4", "hole.png", "--keyframe-index", "first"),
            (ERR, "argument --keyframe-index: invalid int value: 'first'"),
        ),
        (_set("enc", keyframe_indices="0, first"), (ERR, "indices: could not read '0, first'")),
    ),
    Row(
        "keyframe_multi_frame_file",
        (
            _inp("frames4", "hole.png", "--keyframe", "@frames4", "--keyframe-index", "0"),
            (ERR, "holds 4 frames; give one image per --keyframe"),
        ),
        (
            _chain(
                _node("kf", "EmptyImage", width=W, height=H, batch_size=2, color=0),
                _set("enc", keyframes=["kf", 0], keyframe_indices="0"),
            ),
            (ERR, "got 1 indices for 2 keyframe images"),
        ),
    ),
    Row(
        "empty_mask",
        (_inp("frames4", "empty.png"), (ERR, "masks: nothing to inpaint")),
        (_set("mask", image=PFX + "empty.png"), (ERR, "masks: nothing to inpaint")),
    ),
    Row(
        "mask_eroded_away",
        (_inp("frames4", "thin.png", "--grow", "-3"), (ERR, "masks: nothing to inpaint")),
        (_chain(_set("mask", image=PFX + "thin.png"), _set("enc", grow=-3)), (ERR, "masks: nothing to inpaint")),
    ),
    Row(
        "mask_only_on_keyframe",
        (_inp("frames1", "hole.png", "--keyframe-index", "0"), (ERR, "masks: nothing to inpaint")),
        (_chain(_set("img", batch_size=1), _set("enc", keyframe_indices="0")), (ERR, "masks: nothing to inpaint")),
    ),
    Row(
        "full_mask_no_keyframe",
        (_inp("frames4", "full.png"), (WARN, "every pixel of every frame is masked")),
        (_set("mask", image=PFX + "full.png"), (WARN, "every pixel of every frame is masked")),
    ),
    Row("one_frame_clip", (_inp("frames1", "hole.png"), (OK, None)), (_set("img", batch_size=1), (OK, None))),
    Row("long_clip", (_inp("frames20", "hole.png"), (OK, None)), (_set("img", batch_size=20), (OK, None))),
    Row(
        "schedule_window_too_large",
        None,
        (_schedule(window=12), (ERR, "window: 12 frames, but the model (custom) takes at most 8")),
        why="the CLI sizes windows from the model; it has no window option",
    ),
    Row(
        "schedule_frame_count",
        None,
        (_chain(_schedule(frames=20, condition=None)), (ERR, "schedule: made for 20 frames but the clip has 4")),
        why="the CLI builds the schedule from the clip itself",
    ),
    Row(
        "unknown_schedule",
        (_inp("frames20", "hole.png", "--schedule", "zigzag"), (ERR, "zigzag")),
        (_schedule(strategy="zigzag"), (ERR, "zigzag")),
    ),
    Row(
        "size_not_multiple_at_its_own_size",
        (
            _inp("odd", "odd_hole.png", "--working-size", "input"),
            (ERR, "70x60 (width x height) cannot be taken by this"),
        ),
        (
            _chain(
                _set("img", width=70, height=60),
                _node("mr", "ImageToMask", image=["mi", 0], channel="red"),
                _node("mi", "EmptyImage", width=70, height=60, batch_size=1, color=0xFFFFFF),
                _set("enc", mask=["mr", 0]),
                _set("s", working_size="input"),
            ),
            (ERR, "70x60 (width x height) cannot be taken by this model"),
        ),
    ),
    Row(
        "values_above_one",
        None,
        (
            _chain(
                _node("ck", "LoadImage", image=PFX + "checker.png"),
                _node(
                    "up", "ImageScale", image=["ck", 0], upscale_method="bicubic", width=W, height=H, crop="disabled"
                ),
                _set("enc", images=["up", 0]),
            ),
            (ERR, "frames: values must lie in 0..1, got -0.233185..1.23318. Small overshoots"),
        ),
        why="files are read as 8-bit and divided by 255",
        lib=_lib_frames(200.0),
        lib_expect="divide by 255",
    ),
    Row(
        "nan_frames",
        None,
        None,
        why=f"{NO_SERVER_FILES}; video and image files cannot hold NaN",
        lib=_lib_frames(float("nan")),
        lib_expect="frames: contains NaN or infinity",
    ),
    Row(
        "nan_mask",
        None,
        None,
        why=f"{NO_SERVER_FILES}; mask files cannot hold NaN",
        lib=_lib_mask_nan,
        lib_expect="masks: contains NaN or infinity",
    ),
    Row(
        "grayscale_frames",
        (_inp("gray", "hole.png"), (OK, None)),
        (_chain(_node("g", "LoadImage", image=PFX + "hole.png"), _set("enc", images=["g", 0])), (OK, None)),
        lib=_lib_frames(channels=1),
        lib_expect="grayscale frames (1 channel)",
    ),
    Row(
        "rgba_frames",
        (_inp("rgba", "hole.png"), (OK, None)),
        (
            _chain(
                _set("img", batch_size=1),
                _node("a", "JoinImageWithAlpha", image=["img", 0], alpha=["mask", 0]),
                _set("enc", images=["a", 0]),
            ),
            (ERR, "got RGBA frames (4 channels)"),
        ),
    ),
    # ---- files
    Row(
        "missing_video",
        (_inp("nothing.mp4", "hole.png"), (ERR, "no such file or folder")),
        (_load_video("nothing.mp4"), (REJ, "nothing.mp4")),
    ),
    Row(
        "unknown_video_type",
        (_inp("notes.txt", "hole.png"), (ERR, "unknown file type '.txt'")),
        None,
        why="KFI reads no files in ComfyUI; the core LoadVideo dropdown lists video files only, and a forged name "
        "gets LoadVideo's own decode error, as in corrupt_video",
    ),
    Row(
        "corrupt_video",
        (_inp("corrupt.mp4", "hole.png"), (ERR, "cannot decode this video")),
        (_load_video("corrupt.mp4"), (ERR, "")),
    ),
    Row(
        "truncated_video",
        (_inp("trunc.mp4", "hole.png"), (ERR, "cannot decode this video")),
        (_load_video("trunc.mp4"), (ERR, "")),
    ),
    Row(
        "output_is_input",
        (
            ["inpaint", "--video", "@frames4", "--mask", "@hole.png", "--steps", "1", "--out", "@frames4"],
            (ERR, "is also the --video input"),
        ),
        None,
        why="nodes return tensors; core SaveImage writes files",
    ),
    Row(
        "output_unwritable",
        (
            ["inpaint", "--video", "@frames4", "--mask", "@hole.png", "--steps", "1", "--out", "@notes.txt/out.mp4"],
            (ERR, "cannot write it"),
        ),
        None,
        why="nodes return tensors; core SaveImage writes files",
    ),
    Row(
        "output_unknown_type",
        (
            ["inpaint", "--video", "@frames4", "--mask", "@hole.png", "--steps", "1", "--out", "@out.xyz"],
            (ERR, "cannot write '.xyz'"),
        ),
        None,
        why="nodes return tensors; core SaveImage writes files",
    ),
    # ---- model files
    Row(
        "missing_model",
        (_inp() + ["--model", "@no_model"], (ERR, "does not exist")),
        (_set("m", model="diffusers/no_model"), (REJ, "'diffusers/no_model' is not in models/diffusers")),
    ),
    Row(
        "pickle_model",
        (_inp() + ["--model", "@model.ckpt"], (ERR, "is a pickle file (.ckpt)")),
        (_set("m", model=f"checkpoints/{PFX}model.ckpt"), (REJ, "is a pickle file (.ckpt)")),
        why="the dropdown lists only .safetensors (checked); a forged prompt naming the .ckpt is refused",
    ),
    Row(
        "truncated_model",
        (_inp() + ["--model", "@svd_trunc.safetensors"], (ERR, "svd_trunc.safetensors")),
        (_set("m", model=f"checkpoints/{PFX}svd_trunc.safetensors"), (ERR, "svd_trunc.safetensors")),
    ),
    Row(
        "adapter_other_base",
        (_inp() + ["--adapter", "@adapter_xt.safetensors"], (ERR, "made for base 'svd-xt' with 25 frames")),
        (_set("m", adapter=f"kfi_adapters/{PFX}adapter_xt.safetensors"), (ERR, "made for base 'svd-xt' with 25")),
    ),
    Row(
        "adapter_frame_count",
        (
            _inp() + ["--adapter", "@adapter_14f.safetensors"],
            (ERR, "with 14 frames, but the loaded base takes 8 frames"),
        ),
        (
            _set("m", adapter=f"kfi_adapters/{PFX}adapter_14f.safetensors"),
            (ERR, "with 14 frames, but the loaded base takes 8 frames"),
        ),
    ),
    Row(
        "adapter_rank",
        (_inp() + ["--adapter", "@adapter_rank8.safetensors"], (ERR, "(LoRA rank 8")),
        (_set("m", adapter=f"kfi_adapters/{PFX}adapter_rank8.safetensors"), (ERR, "(LoRA rank 8")),
    ),
    Row(
        "truncated_adapter",
        (_inp() + ["--adapter", "@adapter_trunc.safetensors"], (ERR, "adapter_trunc")),
        (_set("m", adapter=f"kfi_adapters/{PFX}adapter_trunc.safetensors"), (ERR, "adapter_trunc")),
    ),
    Row(
        "pickle_adapter",
        (_inp() + ["--adapter", "@adapter.pt"], (ERR, "is a pickle file (.pt)")),
        (_set("m", adapter=f"loras/{PFX}adapter.pt"), (ERR, "is a pickle file (.pt)")),
        why="the dropdown lists only .safetensors (checked); a forged prompt naming the .pt is refused",
    ),
    # ---- sampling settings
    Row(
        "unknown_sampler",
        (_inp() + ["--sampler", "ddim"], (ERR, "sampler: got 'ddim'; choose one of euler")),
        (_set("s", sampler="ddim"), (ERR, "sampler: got 'ddim'; choose one of euler")),
    ),
    Row(
        "unknown_color_match",
        (_inp() + ["--color-match", "auto"], (ERR, "color_match: got 'auto'; choose one of none")),
        (_set("s", color_match="auto"), (ERR, "color_match: got 'auto'; choose one of none")),
    ),
    Row("zero_steps", (_inp() + ["--steps", "0"], (ERR, "steps: got 0")), (_set("s", steps=0), (REJ, "steps"))),
    Row(
        "negative_guidance",
        (_inp() + ["--min-guidance", "-1"], (ERR, "min_guidance: got -1.0")),
        (_set("s", min_guidance=-1.0), (REJ, "min_guidance")),
    ),
    Row(
        "guidance_min_above_max",
        (_inp() + ["--min-guidance", "4"], (ERR, "min_guidance 4.0 is larger than")),
        (_set("s", min_guidance=4.0), (ERR, "min_guidance 4.0 is larger than")),
    ),
    Row(
        "seed_out_of_range", (_inp() + ["--seed", "-1"], (ERR, "seed: got -1")), (_set("s", seed=2**64), (REJ, "seed"))
    ),
    Row(
        "zero_decode_chunk",
        (_inp() + ["--decode-chunk-size", "0"], (ERR, "decode_chunk_size: got 0")),
        (_set("s", decode_chunk_size=0), (REJ, "decode_chunk_size")),
    ),
    Row("zero_fps", (_inp() + ["--fps", "0"], (ERR, "fps: got 0")), (_set("s", fps=0), (REJ, "fps"))),
    Row(
        "zero_num_samples",
        (_inp() + ["--num-samples", "0"], (ERR, "num_samples: got 0")),
        (_set("s", num_samples=0), (REJ, "num_samples")),
    ),
    Row(
        "negative_seam_smoothing",
        (_inp() + ["--seam-smoothing", "-1"], (ERR, "seam_smoothing: got -1")),
        (_set("s", seam_smoothing=-1), (REJ, "seam_smoothing")),
    ),
    Row(
        "width_without_height",
        (_inp() + ["--width", "64"], (ERR, "--width/--height: give both")),
        None,
        why="the node's custom working size always has both width and height",
    ),
    Row(
        "bad_decode_tile",
        (_inp() + ["--decode-tile", "2"], (ERR, "decode_tile: got 2; give 0 or a value from 4 to 10000")),
        (_set("s", decode_tile=2), (ERR, "decode_tile: got 2; give 0 or a value from 4 to 10000")),
    ),
    Row(
        "crop_negative_padding",
        (_inp() + ["--crop", "mask", "--crop-padding", "-5"], (ERR, "--crop-padding: got -5")),
        (_set("s", crop="mask", crop_padding=-5), (REJ, "crop_padding")),
    ),
    Row(
        "plan_zero_frames",
        (
            ["plan", "--model", "@no_model", "--frames", "0", "--width", "64", "--height", "64"],
            (ERR, "--frames: must be 1 or more, got 0"),
        ),
        None,
        why="planning runs from the CLI only",
    ),
    Row(
        "eval_plot_not_png",
        (
            [
                "eval",
                "--pred",
                "@frames4",
                "--gt",
                "@frames4",
                "--mask",
                "@hole.png",
                "--window",
                "2",
                "--plot",
                "@out.jpg",
            ],
            (ERR, "--plot: got"),
        ),
        None,
        why="evaluation runs from the CLI only",
    ),
    # ---- schedules and crops
    Row(
        "bad_schedule_option",
        (
            ["schedule", "--frames", "40", "--window", "8", "-o", "strides=[15,"],
            (ERR, "schedule 'anchor': unknown options ['strides']"),
        ),
        None,
        why="the schedule node has no free-form options",
    ),
    # ---- training configs (checked before anything is written)
    Row(
        "train_unknown_key",
        (
            ["train", "--config", "@train_typo.json", "--model", "@no_model", "--data", "@frames4"],
            (ERR, "unknown setting(s) ['lerning_rate']"),
        ),
        None,
        why="training runs from the CLI only",
    ),
    Row(
        "train_bad_json",
        (
            ["train", "--config", "@train_broken.json", "--model", "@no_model", "--data", "@frames4"],
            (ERR, "cannot parse it"),
        ),
        None,
        why="training runs from the CLI only",
    ),
    Row(
        "train_removed_option",
        (
            ["train", "--config", "@train_removed.json", "--model", "@no_model", "--data", "@frames4"],
            (ERR, "reference_attention = True, but reference attention was measured to gain nothing and removed"),
        ),
        None,
        why="training runs from the CLI only",
    ),
    Row(
        "bad_schedule_json",
        None,
        None,
        why="schedules travel as objects in both paths; only the library reads JSON",
        lib=lambda: __import__("kfi_core.inference.schedules", fromlist=["x"]).Schedule.from_json("{not json"),
        lib_expect="schedule: not valid JSON",
    ),
    Row(
        "crop_empty_mask",
        None,
        (
            _chain(
                _node("cr", "KFICropForInpaint", image=["img", 0], mask=["mask", 0], size=64, padding=0.2),
                _set("mask", image=PFX + "empty.png"),
                _set("out", images=["cr", 0]),
            ),
            (ERR, "mask: the mask is empty"),
        ),
        why="the CLI has no crop command",
    ),
]
ROW_IDS = [r.id for r in ROWS]


def doc_row_ids() -> list[str]:
    return re.findall(r"^\| `([a-z0-9_]+)` \|", DOC.read_text(), flags=re.M)


def test_doc_and_table_list_the_same_rows():
    assert len(ROWS) >= 30 and len(set(ROW_IDS)) == len(ROW_IDS)
    assert doc_row_ids() == ROW_IDS


# --------------------------------------------------------------------------- CLI path

DRIVER = r"""
import contextlib, io, json, logging, sys, traceback
class _Proxy:
    def write(self, s): sys.stderr.write(s)
    def flush(self): pass
logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s: %(message)s", stream=_Proxy())
from kfi_core.cli import main
results = {}
for rid, argv in json.loads(sys.stdin.read()):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        except BaseException:
            traceback.print_exc()
            rc = "traceback"
    results[rid] = {"rc": rc, "stderr": err.getvalue()}
print(json.dumps(results))
"""


def _argv(row: Row, d: Path, model: Path, out: Path) -> list[str]:
    args, _ = row.cli
    argv = [str(d / a[1:]) if isinstance(a, str) and a.startswith("@") else str(a) for a in args]
    if argv[0] == "inpaint" and "--model" not in argv:
        argv += ["--model", str(model)]
    if argv[0] in ("inpaint", "train") and "--out" not in argv:
        argv += ["--out", str(out / row.id)]
    return argv


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, tiny_model_dir) -> Path:
    d = tmp_path_factory.mktemp("bad-inputs")
    make_inputs(d, tiny_model_dir)
    return d


@pytest.fixture(scope="module")
def cli_results(bad_inputs, tiny_model_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bad-outputs")
    todo = [(r.id, _argv(r, bad_inputs, tiny_model_dir, out)) for r in ROWS if r.cli]
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER], input=json.dumps(todo), capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"results": json.loads(proc.stdout.strip().splitlines()[-1]), "out": out}


@pytest.mark.parametrize("row", [r for r in ROWS if r.cli], ids=lambda r: r.id)
@pytest.mark.slow
def test_cli(row, cli_results):
    got = cli_results["results"][row.id]
    kind, text = row.cli[1]
    stderr = got["stderr"]
    assert "Traceback" not in stderr, stderr[-3000:]
    if kind == ERR:
        assert got["rc"] == 2, stderr[-3000:]
        assert text in stderr, stderr[-3000:]
        assert not list(cli_results["out"].glob(f"{row.id}*")), "no output after an error"
    else:
        assert got["rc"] == 0, stderr[-3000:]
        if kind == WARN:
            assert "WARNING" in stderr and text in stderr, stderr[-3000:]


@pytest.mark.parametrize("rid", ["mask_count", "pickle_adapter"])
@pytest.mark.slow
def test_real_cli_process(rid, bad_inputs, tiny_model_dir, tmp_path):
    """Two rows through a real `python -m kfi_core` process: exit code 2, message, no traceback."""
    row = ROWS[ROW_IDS.index(rid)]
    proc = subprocess.run(
        [sys.executable, "-m", "kfi_core", *_argv(row, bad_inputs, tiny_model_dir, tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 2 and row.cli[1][1] in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("row", [r for r in ROWS if r.lib], ids=lambda r: r.id)
def test_library(row):
    """The library raises the row's message, as the class docs/ERRORS.md names for it."""
    from kfi_core import errors

    documented = doc_error_class(row.id)
    with pytest.raises(getattr(errors, documented), match=re.escape(row.lib_expect)) as caught:
        row.lib()
    assert type(caught.value).__name__ == documented


def doc_error_class(row_id: str) -> str:
    """The exception class in the row's 'KFI error' column of docs/ERRORS.md (the first *Error name there: a row whose
    paths run says which class the library alone raises)."""
    line = next(line for line in DOC.read_text().splitlines() if line.startswith(f"| `{row_id}` |"))
    return re.search(r"\b(\w+Error)\b", line.split(" | ")[4]).group(1)


# --------------------------------------------------------------------------- server path


@pytest.fixture(scope="module")
def server_results(comfy_server, bad_inputs) -> dict:
    for folder, names in SERVER_FILES.items():
        for name in names:
            shutil.copy(bad_inputs / name, comfy_server.base / folder / (PFX + name))
    log_start = len(comfy_server.log_text())
    queued, results = {}, {}
    for row in ROWS:
        if not row.server:
            continue
        prompt = row.server[0](base_prompt())
        status, body = comfy_server.post("/prompt", {"prompt": prompt})
        if status != 200:
            results[row.id] = {"rejected": json.dumps(body)}
        else:
            queued[row.id] = body["prompt_id"]
    deadline = time.monotonic() + 400
    while queued and time.monotonic() < deadline:
        for rid, pid in list(queued.items()):
            entry = comfy_server.get(f"/history/{pid}").get(pid)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                results[rid] = entry
                del queued[rid]
        time.sleep(0.3)
    assert not queued, f"prompts still running: {queued}"
    return {"results": results, "log": comfy_server.log_text()[log_start:]}


@pytest.mark.parametrize("row", [r for r in ROWS if r.server], ids=lambda r: r.id)
@pytest.mark.slow
def test_server(row, server_results):
    got = server_results["results"][row.id]
    kind, text = row.server[1]
    if kind == REJ:
        assert "rejected" in got, json.dumps(got.get("status"))[:2000]
        assert text in got["rejected"], got["rejected"][:2000]
        return
    assert "rejected" not in got, got.get("rejected", "")[:2000]
    status = got["status"]
    if kind == ERR:
        assert status["status_str"] == "error", json.dumps(status)[:2000]
        errors = [m[1] for m in status["messages"] if m[0] == "execution_error"]
        assert errors and text in errors[0]["exception_message"], json.dumps(errors)[:2000]
    else:
        assert status["status_str"] == "success", json.dumps(status)[:3000]
        if kind == WARN:
            assert text in server_results["log"]


def test_dropdowns_offer_no_pickles(comfy_server, server_results):
    def options(node: str, name: str) -> list[str]:
        spec = comfy_server.get(f"/object_info/{node}")[node]["input"]["required"][name]
        return spec[0] if isinstance(spec[0], list) else spec[1]["options"]

    models = options("LoadKFInpaintModel", "model") + options("LoadKFInpaintCheckpoint", "ckpt_name")
    adapters = options("LoadKFInpaintModel", "adapter")
    assert f"{PFX}svd_trunc.safetensors" in models and f"{PFX}model.ckpt" not in models
    assert not [m for m in models + adapters if m.endswith((".ckpt", ".pt", ".pth", ".bin"))]


def test_server_still_serves_after_the_bad_rows(comfy_server, server_results):
    entry = comfy_server.run_prompt(_encode_only(base_prompt()))
    assert entry["status"]["status_str"] == "success"
