"""``plan``: the schedule, UNet frame-evaluations and estimated peak device memory of a run, before running it;
and the check ``inpaint`` makes on CUDA before it starts (:func:`check_inpaint_fits`).

Only the model's configs are read (a diffusers folder's ``config.json`` files; a single file's header and tensor
shapes), never its weights: the weights are counted on the meta device.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from kfi_core.errors import ModelFileError, SettingsError
from kfi_core.inference import build_schedule, format_schedule_summary, schedule_cost
from kfi_core.inference.plan import OFFLOAD_MODES, MemoryPlan, ModelShape, check_fits, model_shape, plan_memory
from kfi_core.inference.working_size import working_size
from kfi_core.model import check_not_pickle
from kfi_core.model.single_file import infer_configs_from_sgm, load_single_file

DEFAULT_SCHEDULE = "anchor"
#: How ``inpaint`` names the settings :func:`~kfi_core.inference.plan.check_fits` suggests.
INPAINT_HINTS = {
    "decode_chunk_size": "--decode-chunk-size {}",
    "dtype": "--dtype {}",
    "size": "--width {width} --height {height}",
}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"model: cannot read {path} ({exc}); is the folder complete?") from None


def _folder_shape(path: Path) -> ModelShape:
    if not (path / "model_index.json").is_file():
        raise ModelFileError(
            f"model: {path} has no model_index.json, so it is not a diffusers pipeline folder. Give the folder "
            "that holds model_index.json, or a single-file .safetensors checkpoint."
        )
    unet = _read_json(path / "unet" / "config.json")
    vae = _read_json(path / "vae" / "config.json")
    clip = _read_json(path / "image_encoder" / "config.json")
    return model_shape(unet, vae, clip, int(unet.get("num_frames", 25)))


def _header(path: Path) -> tuple[dict, dict]:
    """(metadata, {key: meta tensor of the stored shape}) of a safetensors file, without reading the tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path.name}: cannot read it as safetensors ({exc}). Download it again.") from None
    return metadata, shapes


def _single_file_shape(path: Path, num_frames: int | None) -> ModelShape:
    check_not_pickle(path, "model")
    if path.suffix.lower() != ".safetensors":
        raise ModelFileError(f"model: {path.name} is not a .safetensors file or a diffusers folder.")
    metadata, shapes = _header(path)
    try:
        configs = infer_configs_from_sgm(shapes, metadata=metadata, source=path.name)
    except Exception:  # noqa: BLE001 - shapes alone did not do: load the file on the CPU as inpaint would
        parts = load_single_file(path, num_frames=num_frames)
        configs = {
            "unet": parts["unet"].config,
            "vae": parts["vae"].config,
            "image_encoder": parts["image_encoder"].config.to_dict(),
            "num_frames": parts["num_frames"],
        }
    frames = configs["num_frames"] or num_frames or (25 if "xt" in path.stem.lower() else 14)
    return model_shape(configs["unet"], configs["vae"], configs["image_encoder"], frames)


def _adapter_params(adapter: str) -> int:
    path = Path(adapter)
    check_not_pickle(path, "adapter")
    if not path.is_file():
        raise ModelFileError(f"adapter: {path} does not exist. Give a KFI adapter .safetensors file.")
    _, shapes = _header(path)
    return sum(t.numel() for t in shapes.values())


def read_model_shape(model: str, adapter: str | None = None, num_frames: int | None = None) -> ModelShape:
    """The :class:`ModelShape` of a model on disk (folder or single file) and an optional adapter, from configs."""
    path = Path(model)
    if not path.exists():
        raise ModelFileError(f"model: {path} does not exist. Give a diffusers folder or a .safetensors file.")
    shape = _folder_shape(path) if path.is_dir() else _single_file_shape(path, num_frames)
    if adapter is not None:
        shape = replace(shape, extra_unet_params=_adapter_params(adapter))
    return shape


# --------------------------------------------------------------------------- plan


def add_plan_parser(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="estimate a run's schedule, UNet frame-evaluations and peak device memory per phase",
        description="Plan a run before running it: the long-video schedule, the UNet frame-evaluations and the "
        "estimated peak device memory of each phase (image encoder, VAE encode, one UNet step with guidance, "
        "VAE decode of one chunk) and in all. Reads only the model's configs (docs/PERFORMANCE.md, 'Planning "
        "memory').",
    )
    p.add_argument("--model", required=True, help="diffusers folder or single-file .safetensors checkpoint")
    p.add_argument("--adapter", default=None, help="KFI adapter .safetensors (its weights are counted)")
    p.add_argument("--frames", type=int, required=True, help="frames in the clip")
    p.add_argument("--width", type=int, required=True, help="working width in pixels")
    p.add_argument("--height", type=int, required=True, help="working height in pixels")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="UNet dtype (VAE stays fp32)")
    p.add_argument("--offload", default="none", choices=list(OFFLOAD_MODES), help="weights kept on the device")
    p.add_argument("--decode-chunk-size", type=int, default=8, help="frames per VAE decode call (default 8)")
    p.add_argument("--schedule", default=DEFAULT_SCHEDULE, help="long-video strategy (default anchor)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_plan)


def _mib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _format_plan(plan: MemoryPlan) -> str:
    lines = [
        f"memory ({plan.dtype}, offload {plan.offload}, {plan.width}x{plan.height}, window {plan.shape.num_frames}):"
    ]
    for phase, total in plan.phases.items():
        lines.append(
            f"  {phase:<14} {_mib(total):>11}  (weights {_mib(plan.resident[phase])}, "
            f"activations {_mib(plan.activations[phase])})"
        )
    lines.append(f"  peak           {_mib(plan.peak):>11}  ({plan.peak_phase})")
    return "\n".join(lines)


def _cmd_plan(args: argparse.Namespace) -> int:
    for flag in ("frames", "width", "height", "decode_chunk_size"):
        if getattr(args, flag) < 1:
            raise SettingsError(f"--{flag.replace('_', '-')}: must be 1 or more, got {getattr(args, flag)}.")
    shape = read_model_shape(args.model, args.adapter)
    schedule = build_schedule(args.schedule, args.frames, shape.num_frames)
    cost = schedule_cost(schedule)
    plan = plan_memory(
        shape,
        args.frames,
        args.height,
        args.width,
        dtype=args.dtype,
        offload=args.offload,
        decode_chunk_size=args.decode_chunk_size,
    )
    if args.json:
        print(json.dumps({"schedule": cost, "memory": plan.to_dict()}, indent=2))
        return 0
    print(format_schedule_summary(schedule))
    print(f"UNet frame-evaluations per step and guidance pass: {cost['evaluations']}")
    print(_format_plan(plan))
    return 0


# --------------------------------------------------------------------------- inpaint's check


def _clip_size(video: str) -> tuple[int, int]:
    """(height, width) of a clip: its first frame image, or its video stream's size, without decoding it all."""
    from kfi_core.media import read_frames

    path = Path(video)
    if path.is_dir():
        from PIL import Image

        first = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:1]
        if first:
            with Image.open(first[0]) as im:
                return im.height, im.width
    elif path.is_file():
        import av

        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                return int(stream.codec_context.height), int(stream.codec_context.width)
        except (av.error.FFmpegError, IndexError, OSError):
            pass  # read_frames below raises the clear error
    frames, _ = read_frames(path)
    return int(frames.shape[-2]), int(frames.shape[-1])


def check_inpaint_fits(args: argparse.Namespace, model) -> None:
    """On CUDA, refuse an ``inpaint`` run whose estimated peak exceeds the free device memory (no-op elsewhere)."""
    if not torch.cuda.is_available() or torch.device(model.device).type != "cuda":
        return
    if args.width is not None:
        height, width = args.height, args.width
    elif getattr(args, "crop", "none") != "none":  # the crop box runs at the model's own size
        height, width = model.default_size
    else:
        height, width = working_size(model, _clip_size(args.video), getattr(args, "working_size", "input"))
    plan = plan_memory(
        model,
        model.num_frames,
        height,
        width,
        dtype=model.dtype,
        offload=getattr(args, "offload", None) or "none",
        decode_chunk_size=args.decode_chunk_size,
        guidance=args.max_guidance > 1.0 or args.min_guidance > 1.0,
    )
    free, _total = torch.cuda.mem_get_info()
    # the model's weights are already on the device: they are part of the estimate, so count them as free
    loaded = plan.resident["unet_step"] if plan.offload == "none" else 0
    hints = dict(INPAINT_HINTS, **({"offload": "--offload {}"} if hasattr(args, "offload") else {}))
    check_fits(plan, int(free) + loaded, hints)
