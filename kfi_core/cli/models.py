"""Model files: ``make-tiny-model``, ``info``, ``init-adapter``, ``convert`` and ``make-sample``.

Each ``add_*_parser(subparsers)`` declares one sub-command's flags; its handler follows it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kfi_core.bundled import write_sample_clip
from kfi_core.media import atomic_path
from kfi_core.model import (
    add_lora,
    build_tiny_pipeline_folder,
    describe_model,
    expand_conv_in,
    load_kfi_model,
    save_adapter,
    save_single_file,
)

# --------------------------------------------------------------------------- make-tiny-model


def add_make_tiny_model_parser(sub) -> None:
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


def _cmd_make_tiny_model(args: argparse.Namespace) -> int:
    path = build_tiny_pipeline_folder(args.out_dir, num_frames=args.frames, seed=args.seed)
    print(path)
    return 0


# --------------------------------------------------------------------------- info


def add_info_parser(sub) -> None:
    p = sub.add_parser(
        "info",
        help="load a model (and adapter) and print what was loaded as JSON",
        description="Load a base model, optionally with a KFI adapter, and print a JSON description.",
    )
    p.add_argument("model", help="diffusers folder or single-file .safetensors checkpoint")
    p.add_argument("--adapter", default=None, help="KFI adapter .safetensors file")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="UNet dtype")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--frames",
        type=int,
        default=None,
        help="frame count of a single-file checkpoint (its weights do not record it)",
    )
    p.add_argument("--merge-lora", action="store_true", help="fold the adapter's LoRA into the UNet weights")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    model = load_kfi_model(
        args.model,
        adapter=args.adapter,
        dtype=args.dtype,
        device=args.device,
        num_frames=args.frames,
        merge_lora=args.merge_lora,
    )
    print(json.dumps(describe_model(model), indent=2))
    return 0


# --------------------------------------------------------------------------- init-adapter


def add_init_adapter_parser(sub) -> None:
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


def _cmd_init_adapter(args: argparse.Namespace) -> int:
    model = load_kfi_model(args.model, num_frames=args.frames)
    expand_conv_in(model.unet)
    add_lora(model.unet, rank=args.rank, alpha=args.alpha)
    path = save_adapter(model.unet, args.out, base_variant=model.variant, num_frames=model.num_frames)
    print(path)
    return 0


# --------------------------------------------------------------------------- convert


def add_convert_parser(sub) -> None:
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


def _cmd_convert(args: argparse.Namespace) -> int:
    model = load_kfi_model(args.model, num_frames=args.frames)
    parts = {"unet": model.unet, "vae": model.vae, "image_encoder": model.image_encoder}
    out = Path(args.out)
    if out.suffix.lower() == ".safetensors":
        save_single_file(parts, out, num_frames=model.num_frames)
    else:
        from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline

        pipe = StableVideoDiffusionPipeline(
            scheduler=EulerDiscreteScheduler.from_config(model.scheduler_config),
            feature_extractor=model.feature_extractor,
            **parts,
        )
        with atomic_path(out, is_dir=True) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
    print(out)
    return 0


# --------------------------------------------------------------------------- make-sample


def add_make_sample_parser(sub) -> None:
    p = sub.add_parser("make-sample", help="regenerate the bundled procedural sample clip into a folder")
    p.add_argument("out_dir", help="folder to write frames/, masks/ and ground_truth/ into")
    p.set_defaults(func=_cmd_make_sample)


def _cmd_make_sample(args: argparse.Namespace) -> int:
    print(write_sample_clip(args.out_dir))
    return 0
