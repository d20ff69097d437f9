"""Training: ``train`` (fit a KFI adapter) and ``export-adapter`` (a checkpoint as an adapter file).

Each ``add_*_parser(subparsers)`` declares one sub-command's flags; its handler follows it.
"""

from __future__ import annotations

import argparse

from kfi_core.training import (
    TrainConfig,
    apply_overrides,
    export_checkpoint,
    load_train_config,
    parse_resolution,
    train,
)

# --------------------------------------------------------------------------- train


def add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a KFI adapter (LoRA + 12-channel input conv) on a folder of videos",
        description=(
            "Fine-tune SVD img2vid into a KFI model: only LoRA on the attention projections and the widened input "
            "conv train (EDM v-prediction, symmetric masked condition, random masks and keyframes). Settings come "
            "from --config (JSON; see configs/kfi_svd_xt.json for the paper's recipe, configs/tiny.json for a CPU "
            "smoke run); flags override it. Writes OUT/checkpoints/, OUT/train_log.jsonl, OUT/validation/ and "
            "OUT/adapter.safetensors. Works the same under `accelerate launch -m kfi_core train ...`."
        ),
    )
    p.add_argument("--model", default=None, help="base SVD img2vid model: diffusers folder or single .safetensors")
    p.add_argument("--data", default=None, help="folder of videos (mp4, webm, mov) or of frame folders")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--config", default=None, help="training config file (JSON, or YAML with PyYAML)")
    p.add_argument(
        "--steps", type=int, default=None, help="optimizer steps; replaces the config's stage schedule by one stage"
    )
    p.add_argument(
        "--resolution",
        default=None,
        metavar="HxW",
        help="training size, e.g. 320x576; replaces the stage schedule by one stage",
    )
    p.add_argument("--batch-size", type=int, default=None, help="clips per process per micro-batch (all stages)")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step (all stages)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (paper: 5e-5)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (paper: 32)")
    p.add_argument("--seed", type=int, default=None, help="seed of data, masks, noise and sigmas")
    p.add_argument("--checkpoint-every", type=int, default=None, help="save a checkpoint every N steps (0 = never)")
    p.add_argument(
        "--validate-every", type=int, default=None, help="write a validation video every N steps (0 = never)"
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="latest|PATH",
        help="continue from the newest checkpoint in OUT ('latest') or from a checkpoint folder",
    )
    p.add_argument(
        "--from-adapter",
        default=None,
        metavar="ADAPTER.safetensors",
        help="fine-tune: start LoRA and the input conv from this adapter file instead of fresh weights",
    )
    p.add_argument(
        "--mixed-precision",
        default=None,
        choices=["no", "fp16", "bf16"],
        help="autocast on GPU (CPU always trains in fp32)",
    )
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute UNet blocks in the backward pass (all stages; less memory, slower)",
    )
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    config = load_train_config(args.config) if args.config else TrainConfig()
    config = apply_overrides(
        config,
        model=args.model,
        data=args.data,
        out=args.out,
        steps=args.steps,
        resolution=None if args.resolution is None else parse_resolution(args.resolution),
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        rank=args.rank,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        validate_every=args.validate_every,
        resume=args.resume,
        from_adapter=args.from_adapter,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=True if args.gradient_checkpointing else None,
    )
    path = train(config)
    if path is not None:  # the main process
        print(path)
    return 0


# --------------------------------------------------------------------------- export-adapter


def add_export_adapter_parser(sub) -> None:
    p = sub.add_parser(
        "export-adapter",
        help="write a training checkpoint as an adapter file, to try it before the run ends",
        description=(
            "Write the LoRA and input conv of CHECKPOINT (OUT/checkpoints/checkpoint-NNNNNNNN of a `train` run) "
            "as an adapter .safetensors, the file the run would have written had it ended at that "
            "step. Loads like any adapter (--adapter, the ComfyUI loader). The run itself is not touched."
        ),
    )
    p.add_argument("checkpoint", help="checkpoint folder of a training run")
    p.add_argument("out", help="adapter file to write (.safetensors)")
    p.add_argument(
        "--model",
        default=None,
        help="the base model the run trained on (default: the one the checkpoint's settings name)",
    )
    p.add_argument("--frames", type=int, default=None, help="frame count of a single-file base model")
    p.set_defaults(func=_cmd_export_adapter)


def _cmd_export_adapter(args: argparse.Namespace) -> int:
    print(export_checkpoint(args.checkpoint, args.out, model=args.model, num_frames=args.frames))
    return 0
