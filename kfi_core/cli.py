"""Command line interface: ``python -m kfi_core <command> ...``.

This is the only place in the library that configures logging and the only place that
catches :class:`~kfi_core.errors.KfiError`: a known problem prints its message and exits
with code 2, anything else is a bug and keeps its traceback. Sub-commands import their
heavy modules (torch, diffusers) only when they run, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import KfiError

logger = logging.getLogger(__name__)

EXIT_USER_ERROR = 2


# --------------------------------------------------------------------------- commands


def _cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from .tiny import build_tiny_pipeline_folder

    path = build_tiny_pipeline_folder(args.out_dir, num_frames=args.frames, seed=args.seed)
    print(path)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .loading import describe_model, load_kfi_model

    model = load_kfi_model(args.model, adapter=args.adapter, dtype=args.dtype, device=args.device,
                           num_frames=args.frames)
    print(json.dumps(describe_model(model), indent=2))
    return 0


def _cmd_init_adapter(args: argparse.Namespace) -> int:
    from .adapter import save_adapter
    from .conv_in import expand_conv_in
    from .loading import load_kfi_model
    from .lora import add_lora

    model = load_kfi_model(args.model, num_frames=args.frames)
    expand_conv_in(model.unet)
    add_lora(model.unet, rank=args.rank, alpha=args.alpha)
    path = save_adapter(model.unet, args.out, base_variant=model.variant, num_frames=model.num_frames)
    print(path)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert_sgm import save_single_file
    from .loading import load_kfi_model

    model = load_kfi_model(args.model, num_frames=args.frames)
    parts = {"unet": model.unet, "vae": model.vae, "image_encoder": model.image_encoder}
    out = Path(args.out)
    if out.suffix.lower() == ".safetensors":
        save_single_file(parts, out, num_frames=model.num_frames)
    else:
        from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline

        from .video_io import atomic_path

        pipe = StableVideoDiffusionPipeline(scheduler=EulerDiscreteScheduler.from_config(model.scheduler_config),
                                            feature_extractor=model.feature_extractor, **parts)
        with atomic_path(out, is_dir=True) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
    print(out)
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kfi_core",
        description="KFI: keyframe-guided video inpainting on Stable Video Diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"kfi_core {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "make-tiny-model",
        help="write a tiny random-weight SVD img2vid model (diffusers folder) for tests and demos",
        description=(
            "Build a tiny Stable Video Diffusion img2vid pipeline with random weights from the real "
            "diffusers/transformers classes and save it in diffusers folder layout. Deterministic "
            "for a seed; a few MB; nothing is downloaded."
        ),
    )
    p.add_argument("out_dir", help="folder to write (created; must be empty or absent)")
    p.add_argument("--frames", type=int, default=8, help="frame count the model is made for (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.set_defaults(func=_cmd_make_tiny_model)

    p = sub.add_parser(
        "info",
        help="load a model (and adapter) and print what was loaded as JSON",
        description="Load a base model, optionally with a KFI adapter, and print a JSON description.",
    )
    p.add_argument("model", help="diffusers folder or single-file .safetensors checkpoint")
    p.add_argument("--adapter", default=None, help="KFI adapter .safetensors file")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="UNet dtype")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--frames", type=int, default=None,
                   help="frame count of a single-file checkpoint (its weights do not record it)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "init-adapter",
        help="write a fresh (zero-initialised) KFI adapter for a base model: the start of training",
        description=(
            "Widen the UNet input conv to 12 channels (new weights zero) and add LoRA (B zero), then save the "
            "adapter file. The result changes nothing yet; training starts from it."
        ),
    )
    p.add_argument("model", help="diffusers folder or single-file .safetensors checkpoint")
    p.add_argument("out", help="adapter file to write (.safetensors)")
    p.add_argument("--rank", type=int, default=32, help="LoRA rank (default 32, as the paper)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    p.add_argument("--frames", type=int, default=None, help="frame count of a single-file checkpoint")
    p.set_defaults(func=_cmd_init_adapter)

    p = sub.add_parser(
        "convert",
        help="convert between a diffusers folder and a single-file (sgm) .safetensors checkpoint",
        description=(
            "Load MODEL (diffusers folder or single file) and write OUT: a .safetensors name writes one sgm-layout "
            "file (as svd_xt.safetensors, loadable by ComfyUI and KFI); any other name writes a diffusers folder."
        ),
    )
    p.add_argument("model", help="diffusers folder or single-file .safetensors checkpoint")
    p.add_argument("out", help="OUT.safetensors (single file) or a folder name (diffusers layout)")
    p.add_argument("--frames", type=int, default=None, help="frame count of a single-file input")
    p.set_defaults(func=_cmd_convert)

    # ---- schedule (command and parser in one block)
    def _cmd_schedule(args: argparse.Namespace) -> int:
        from .errors import KeyframeError, ScheduleError
        from .schedules import build_schedule, format_schedule_summary, render_schedule_preview, schedule_cost

        try:
            keyframes = [int(k) for k in args.keyframes.replace(";", ",").split(",") if k.strip()]
        except ValueError:
            raise KeyframeError(
                f"--keyframes: could not read {args.keyframes!r}; give frame numbers separated by commas, e.g. 0,40."
            ) from None
        options = {}
        for item in args.option:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ScheduleError(f"--option: got {item!r}; write KEY=VALUE, e.g. --option overlap=4.")
            try:
                options[key.strip()] = json.loads(value)
            except ValueError:
                options[key.strip()] = value
        schedule = build_schedule(args.strategy, args.frames, args.window, keyframes, **options)
        if args.json:
            print(json.dumps({"schedule": schedule.to_dict(), "cost": schedule_cost(schedule)}, indent=2))
        else:
            print(format_schedule_summary(schedule))
        if args.preview:
            from PIL import Image

            out = Path(args.preview)
            if out.suffix.lower() != ".png":
                raise ScheduleError(f"--preview: got {str(out)!r}; give a file name ending in .png.")
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.stem}.partial.png")
            Image.fromarray(render_schedule_preview(schedule)).save(tmp)
            tmp.replace(out)
            logger.info("schedule preview written to %s", out)
        return 0

    p = sub.add_parser(
        "schedule",
        help="build a long-video schedule (stages of windows) and print it with its cost",
        description=(
            "Build the schedule a long clip is inpainted with: which frames each model call generates, takes as "
            "known (keyframes, frames done earlier) or as context (observed pixels only). Prints a summary, or "
            "JSON with --json, and the cost in UNet frame-evaluations per output frame."
        ),
    )
    p.add_argument("--frames", type=int, required=True, help="frames in the clip")
    p.add_argument("--window", type=int, default=14, help="frames the model sees at once (SVD 14 or 25; default 14)")
    p.add_argument("--strategy", default="anchor",
                   help="anchor (default), multidiffusion, autoregressive, hierarchy2, improved-ar, far-future, "
                        "3-res or reverse")
    p.add_argument("--keyframes", default="", help="keyframe indices, comma separated (e.g. 0,40; -1 = last)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a strategy option, repeatable (e.g. overlap=4, anchor_spacing=10, strides=[15,5])")
    p.add_argument("--json", action="store_true", help="print the schedule and its cost as JSON")
    p.add_argument("--preview", default=None, metavar="OUT.png", help="also draw the schedule to a PNG image")
    p.set_defaults(func=_cmd_schedule)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="[%(name)s] %(levelname)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KfiError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
