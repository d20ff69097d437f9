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

from kfi_core import __version__
from kfi_core.inference.color_match import COLOR_MATCH_MODES
from kfi_core.errors import KfiError, ModelFileError
from kfi_core.inference.propagate import BLEND_KNOWN_MODES
from kfi_core.bundled import DEMO_SAMPLING

logger = logging.getLogger(__name__)

EXIT_USER_ERROR = 2


# --------------------------------------------------------------------------- commands


def _cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from kfi_core.model.tiny import build_tiny_pipeline_folder

    path = build_tiny_pipeline_folder(args.out_dir, num_frames=args.frames, seed=args.seed)
    print(path)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from kfi_core.model.loading import describe_model, load_kfi_model

    model = load_kfi_model(args.model, adapter=args.adapter, dtype=args.dtype, device=args.device,
                           num_frames=args.frames, merge_lora=args.merge_lora)
    print(json.dumps(describe_model(model), indent=2))
    return 0


def _cmd_init_adapter(args: argparse.Namespace) -> int:
    from kfi_core.model.adapter import save_adapter
    from kfi_core.model.conv_in import expand_conv_in
    from kfi_core.model.loading import load_kfi_model
    from kfi_core.model.lora import add_lora

    model = load_kfi_model(args.model, num_frames=args.frames)
    expand_conv_in(model.unet)
    add_lora(model.unet, rank=args.rank, alpha=args.alpha)
    path = save_adapter(model.unet, args.out, base_variant=model.variant, num_frames=model.num_frames)
    print(path)
    return 0


def _cmd_export_adapter(args: argparse.Namespace) -> int:
    from kfi_core.training.train import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.out, model=args.model, num_frames=args.frames))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from kfi_core.model.single_file import save_single_file
    from kfi_core.model.loading import load_kfi_model

    model = load_kfi_model(args.model, num_frames=args.frames)
    parts = {"unet": model.unet, "vae": model.vae, "image_encoder": model.image_encoder}
    out = Path(args.out)
    if out.suffix.lower() == ".safetensors":
        save_single_file(parts, out, num_frames=model.num_frames)
    else:
        from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline

        from kfi_core.media.video import atomic_path

        pipe = StableVideoDiffusionPipeline(scheduler=EulerDiscreteScheduler.from_config(model.scheduler_config),
                                            feature_extractor=model.feature_extractor, **parts)
        with atomic_path(out, is_dir=True) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
    print(out)
    return 0


def _settings_from_args(args: argparse.Namespace):
    from kfi_core.inference.propagate import PropagateSettings

    return PropagateSettings(
        steps=args.steps, seed=args.seed, sampler=args.sampler, min_guidance=args.min_guidance,
        max_guidance=args.max_guidance, fps=args.fps, motion_bucket_id=args.motion_bucket_id,
        noise_aug_strength=args.noise_aug_strength, composite=not args.no_composite, feather=args.feather,
        color_match=args.color_match, blend_known=args.blend_known,
        decode_chunk_size=args.decode_chunk_size, num_samples=args.num_samples,
    )


class _StepBar:
    """tqdm progress over denoising steps (the library only calls back)."""

    def __init__(self, desc: str):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.bar = None
        self.desc = desc

    def __call__(self, info: dict) -> None:
        if self.bar is None:
            self.bar = self._tqdm(total=int(info["total"]), desc=self.desc, unit="step")
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _cmd_inpaint(args: argparse.Namespace) -> int:
    from kfi_core.errors import KfiError as _KfiError
    from kfi_core.jobs import inpaint_files
    from kfi_core.model.loading import load_kfi_model

    if (args.width is None) != (args.height is None):
        raise _KfiError("--width/--height: give both (the working size), or neither to use the clip's own size.")
    if args.batch is not None:
        if args.video or args.mask or args.keyframe or args.keyframe_index or args.preview:
            raise _KfiError("--batch: takes clips, masks and keyframes from the folder by name; drop --video, --mask, "
                            "--keyframe, --keyframe-index and --preview, or drop --batch to inpaint one clip.")
        return _run_batch(args)
    if not args.video or not args.mask:
        raise _KfiError("inpaint: give --video and --mask (one clip), or --batch DIR (every clip of a folder).")
    settings = _settings_from_args(args).check()
    model = load_kfi_model(args.model, adapter=args.adapter, dtype=args.dtype, device=args.device,
                           num_frames=args.frames, merge_lora=args.merge_lora, channels_last=args.channels_last,
                           compile_unet=args.compile)
    bar = _StepBar("inpaint")
    try:
        result = inpaint_files(
            model, video=args.video, mask=args.mask, out=args.out, keyframe_paths=args.keyframe or [],
            keyframe_indices=args.keyframe_index or [], settings=settings,
            size=None if args.width is None else (args.height, args.width), grow_pixels=args.grow,
            preview=args.preview, strategy=args.schedule, callback=bar,
        )
    finally:
        bar.close()
    print(result.output)
    return 0


def _run_batch(args: argparse.Namespace) -> int:
    from kfi_core.jobs import run_batch
    from kfi_core.model.loading import load_kfi_model

    settings = _settings_from_args(args).check()

    def load():
        return load_kfi_model(args.model, adapter=args.adapter, dtype=args.dtype, device=args.device,
                              num_frames=args.frames, merge_lora=args.merge_lora, channels_last=args.channels_last,
                              compile_unet=args.compile)

    report = run_batch(load, args.batch, args.out, fmt=args.batch_format, settings=settings,
                       size=None if args.width is None else (args.height, args.width), grow_pixels=args.grow,
                       strategy=args.schedule)
    for path in report.done:
        print(path)
    logger.info("batch: process %d of %d wrote %d, skipped %d finished", report.rank, report.world,
                len(report.done), len(report.skipped))
    return 0


def _cmd_make_sample(args: argparse.Namespace) -> int:
    from kfi_core.bundled import write_sample_clip

    print(write_sample_clip(args.out_dir))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded default: inpaint the bundled sample clip with the trained demo model."""
    from kfi_core.jobs import inpaint_files
    from kfi_core.model.loading import load_kfi_model
    from kfi_core.evaluation.metrics import psnr
    from kfi_core.bundled import DEMO_MODEL_DIR, DEMO_REMOVAL_ADAPTER, SAMPLE_DIR, demo_model_available
    from kfi_core.media.video import read_frames, read_masks

    out = Path(args.out)
    if args.tiny:  # the pipeline on random weights, asked for by name: shows the steps, not a meaningful fill
        from kfi_core.model.tiny import build_tiny_pipeline_folder

        model_dir = out / "model"
        if not (model_dir / "model_index.json").is_file():
            build_tiny_pipeline_folder(model_dir)
        model = load_kfi_model(model_dir)
        what = f"tiny random-weight model in {model_dir} (untrained)"
    elif demo_model_available():  # the sample clip is a removal (no keyframe): the adapter tuned on removal
        model = load_kfi_model(DEMO_MODEL_DIR, adapter=DEMO_REMOVAL_ADAPTER)
        what = f"demo model {DEMO_MODEL_DIR} with its removal adapter ({DEMO_REMOVAL_ADAPTER.name})"
    else:
        raise ModelFileError(
            f"demo: the trained demo model is missing from {DEMO_MODEL_DIR} (it needs model_index.json and both "
            "adapters; a partial checkout or an install that left out package data?). Restore the folder "
            "(git checkout -- kfi_core/assets/demo_model, or reinstall the pack), or run `demo --tiny` to see the "
            "pipeline on a tiny random-weight model.")
    bar = _StepBar("demo")
    try:
        result = inpaint_files(model, video=SAMPLE_DIR / "frames", mask=SAMPLE_DIR / "masks",
                               out=out / "result.mp4", preview=out / "preview.png", callback=bar,
                               settings=_settings_from_args(args))
    finally:
        bar.close()
    truth, _ = read_frames(SAMPLE_DIR / "ground_truth")
    masks = read_masks(SAMPLE_DIR / "masks")
    print(f"model:   {what}")
    print(f"video:   {result.output}")
    print(f"preview: {result.preview}  (left: input with the mask in red, right: result)")
    print(f"PSNR inside the mask against the bundled ground truth: {psnr(result.frames, truth, masks):.2f} dB")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from kfi_core.evaluation.metrics import METRIC_KEYS, check_keyframe_indices, evaluate
    from kfi_core.media.video import read_frames, read_masks

    names = {"pred": f"--pred {args.pred}", "gt": f"--gt {args.gt}", "mask": f"--mask {args.mask}"}
    pred, _ = read_frames(args.pred)
    gt, _ = read_frames(args.gt)
    mask = read_masks(args.mask) if args.mask else None
    keyframes = None
    if args.keyframe_index:
        # The reference for keyframe k is the ground-truth frame k (the frame a perfect edit reproduces).
        keyframes = {k: gt[k] for k in check_keyframe_indices(args.keyframe_index, gt.shape[0])}
    result = evaluate(pred, gt, mask, keyframes=keyframes, flow_method=args.flow, names=names)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for key in METRIC_KEYS:
        value = result[key]
        print(f"{key:<22}{'-' if value is None else f'{value:.6g}':>14}  {result['unavailable'].get(key, '')}")
    return 0


def _cmd_masks(args: argparse.Namespace) -> int:
    import numpy as np

    from kfi_core.errors import MaskSynthesisError
    from kfi_core.training.mask_synthesis import render_preview, sample_masks_with_info
    from kfi_core.media.video import atomic_path

    size = args.size.lower().split("x")
    if len(size) != 2 or not all(s.strip().isdigit() and int(s) > 0 for s in size):
        raise MaskSynthesisError(f"--size: got {args.size!r}; give HEIGHTxWIDTH in pixels, e.g. 64x64 or 320x576.")
    height, width = (int(s) for s in size)
    if args.count < 1 or args.seed < 0:
        raise MaskSynthesisError(
            f"--count, --seed: got {args.count}, {args.seed}; give a count >= 1 and a seed >= 0.")
    out = Path(args.preview)
    if out.suffix.lower() != ".png":
        raise MaskSynthesisError(f"--preview: got {out.name!r}; the sheet is a PNG, give a name ending in .png.")
    # sample i uses its own stream (seed, i), so one sample can be reproduced alone
    samples = [sample_masks_with_info(args.frames, height, width, np.random.default_rng([args.seed, i]))
               for i in range(args.count)]
    with atomic_path(out) as tmp:
        render_preview(samples).save(tmp, format="PNG")
    logger.info("wrote %d mask samples (%d frames, %dx%d) to %s", args.count, args.frames, height, width, out)
    print(out)
    return 0


def _cmd_schedule(args: argparse.Namespace) -> int:
    from kfi_core.errors import KeyframeError, ScheduleError
    from kfi_core.inference.schedules import build_schedule, format_schedule_summary, render_schedule_preview, schedule_cost

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


def _cmd_train(args: argparse.Namespace) -> int:
    from kfi_core.training.train import TrainConfig, apply_overrides, load_train_config, parse_resolution, train

    config = load_train_config(args.config) if args.config else TrainConfig()
    config = apply_overrides(
        config, model=args.model, data=args.data, out=args.out, steps=args.steps,
        resolution=None if args.resolution is None else parse_resolution(args.resolution),
        batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, rank=args.rank, seed=args.seed,
        checkpoint_every=args.checkpoint_every, validate_every=args.validate_every, resume=args.resume,
        from_adapter=args.from_adapter, mixed_precision=args.mixed_precision,
        gradient_checkpointing=True if args.gradient_checkpointing else None,
    )
    path = train(config)
    if path is not None:  # the main process
        print(path)
    return 0


def _add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--sampler", default="euler", help="euler (default) or heun")
    g.add_argument("--min-guidance", type=float, default=1.0, help="guidance at the first frame (default %(default)s)")
    g.add_argument("--max-guidance", type=float, default=3.0, help="guidance at the last frame (default %(default)s)")
    g.add_argument("--fps", type=int, default=7, help="fps conditioning (default 7)")
    g.add_argument("--motion-bucket-id", type=int, default=127, help="motion conditioning (default 127)")
    g.add_argument("--noise-aug-strength", type=float, default=0.02, help="condition noise (default 0.02)")
    g.add_argument("--no-composite", action="store_true", help="keep generated pixels outside the mask too")
    g.add_argument("--feather", type=int, default=0, help="soft composite edge in pixels (default 0)")
    g.add_argument("--color-match", default="none", metavar="|".join(COLOR_MATCH_MODES),
                   help="fit the fill's colours to the input around the hole before compositing (default "
                        "%(default)s): none, mean (offset), affine (3x3 + offset), or keyframe (one affine fit on the keyframes, where "
                        "the edit's true colours are known; affine without one); fixes VAE colour drift")
    g.add_argument("--blend-known", default="auto", metavar="|".join(BLEND_KNOWN_MODES),
                   help="replace the denoised estimate outside the hole by the input's clean latents at every step: "
                        "auto (default: on in the training-free mode, off with a KFI adapter), on, off")
    g.add_argument("--decode-chunk-size", type=int, default=8, help="frames per VAE decode call (default 8)")
    g.add_argument("--num-samples", type=int, default=1,
                   help="average this many samples (seeds --seed, --seed + 1, ...; default 1): N times the time, a "
                        "lower error and a softer fill where the samples disagree (docs/METHOD.md, 'After sampling')")


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
    p.add_argument("--merge-lora", action="store_true", help="fold the adapter's LoRA into the UNet weights")
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

    p = sub.add_parser(
        "inpaint",
        help="inpaint a clip: remove objects, or propagate edited keyframes through it",
        description=(
            "Inpaint the masked region of a clip. With --keyframe/--keyframe-index pairs the edited frames are "
            "carried through the clip; without, the masked objects are removed. VIDEO and OUT are video files "
            "(mp4, webm, mov) or folders of PNG frames; MASK is a mask video, a folder of mask images or one image "
            "for every frame (white = inpaint)."
        ),
    )
    p.add_argument("--model", required=True, help="diffusers folder or single-file .safetensors checkpoint")
    p.add_argument("--adapter", default=None, help="KFI adapter .safetensors (omit for the training-free mode)")
    p.add_argument("--video", default=None, help="input clip (video file or PNG folder); not with --batch")
    p.add_argument("--mask", default=None,
                   help="mask video, mask folder, or one mask image for all frames; not with --batch")
    p.add_argument("--out", required=True,
                   help="output video file (.mp4, .webm, .mov) or folder (PNG frames); with --batch the output folder")
    p.add_argument("--batch", default=None, metavar="DIR",
                   help="inpaint every clip of DIR: <name>.mp4 or <name>/ (frames) with <name>_mask.mp4, "
                        "<name>_mask.png or <name>_mask/, optional keyframes <name>_key<INDEX>.png; writes "
                        "OUT/<name>.mp4, skips outputs that exist; under accelerate launch / torchrun clip i goes "
                        "to process i %% world size")
    p.add_argument("--batch-format", default="mp4", choices=["mp4", "webm", "mov", "png"],
                   help="output format in batch mode (png: a folder of PNG frames per clip; default mp4)")
    p.add_argument("--keyframe", action="append", help="an edited frame (image); repeat for several")
    p.add_argument("--keyframe-index", action="append", type=int, help="frame index of the preceding --keyframe")
    p.add_argument("--preview", default=None, help="also write a side-by-side preview PNG here")
    p.add_argument("--width", type=int, default=None, help="working width (resize; output keeps the input size)")
    p.add_argument("--height", type=int, default=None, help="working height (with --width)")
    p.add_argument("--grow", type=int, default=0, help="grow (or erode, negative) masks by pixels")
    p.add_argument("--schedule", default=None,
                   help="long-video strategy for clips longer than the model's window: anchor (default), "
                        "multidiffusion, autoregressive, hierarchy2, improved-ar, far-future, 3-res, reverse")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="UNet dtype")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--frames", type=int, default=None, help="frame count of a single-file model")
    p.add_argument("--merge-lora", action="store_true",
                   help="fold the adapter's LoRA into the UNet weights (faster, same result within rounding)")
    p.add_argument("--channels-last", action="store_true",
                   help="UNet weights in channels-last memory format (opt-in fast path)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet (opt-in; falls back to eager with a warning if compiling fails)")
    _add_sampling_arguments(p)
    p.set_defaults(func=_cmd_inpaint)

    p = sub.add_parser("demo", help="inpaint the bundled sample clip with the embedded default model",
                       description="The main job on the embedded default: removes the ball from the bundled sample "
                                   "clip with the demo model and its removal adapter (adapter-removal.safetensors); "
                                   "writes OUT/result.mp4 and OUT/preview.png. "
                                   "Colour matching defaults to affine here (the small demo VAE's colours drift) and "
                                   "guidance to 1.0 on every frame (the demo model fills better without classifier-"
                                   "free guidance; docs/DEMO_MODEL.md).")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--tiny", action="store_true",
                   help="use a tiny random-weight model (written to OUT/model) instead of the trained demo model: "
                        "shows the pipeline, not a meaningful fill")
    _add_sampling_arguments(p)
    p.set_defaults(**DEMO_SAMPLING)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("make-sample", help="regenerate the bundled procedural sample clip into a folder")
    p.add_argument("out_dir", help="folder to write frames/, masks/ and ground_truth/ into")
    p.set_defaults(func=_cmd_make_sample)

    p = sub.add_parser(
        "eval",
        help="compare an inpainted clip with its ground truth: PSNR, SSIM, warping error, flicker, keyframes",
        description=(
            "Compute the metrics of kfi_core.evaluation.metrics for PRED against GT (and inside MASK when given). Each of "
            "PRED, GT and MASK is a video file, a folder of frames or one image; frame counts and sizes must "
            "match. Warping error uses optical flow on GT (OpenCV). LPIPS/VFID are reported as null unless "
            "local weights are configured; nothing is downloaded."
        ),
    )
    p.add_argument("--pred", required=True, help="the inpainted clip (video, frame folder or image)")
    p.add_argument("--gt", required=True, help="the ground-truth clip (video, frame folder or image)")
    p.add_argument("--mask", default=None,
                   help="inpainted region, 1 = white (video, folder or one image for all frames)")
    p.add_argument("--keyframe-index", type=int, nargs="+", action="extend", default=[], metavar="K",
                   help="frame index whose GT frame served as a keyframe; repeatable (keyframe_psnr)")
    p.add_argument("--flow", default="dis", metavar="METHOD",
                   help="OpenCV optical flow on GT for the warping error: dis (default) or farneback")
    p.add_argument("--json", action="store_true", help="print the result as JSON (null = not applicable)")
    p.set_defaults(func=_cmd_eval)
    p = sub.add_parser(
        "masks",
        help="draw random training masks (full, grid, scribble, square, blob; moving, inverted) on a preview sheet",
        description=(
            "Sample random training masks the way training draws them (kfi_core.training.mask_synthesis.sample_masks, default "
            "MaskConfig) and draw a PNG sheet: one row per sample, labelled with its type, showing a few frames. "
            "White = region to inpaint. Sample i is drawn from numpy.random.default_rng([seed, i])."
        ),
    )
    p.add_argument("--preview", required=True, metavar="OUT.png", help="PNG sheet to write")
    p.add_argument("--count", type=int, default=16, help="number of samples (rows; default 16)")
    p.add_argument("--frames", type=int, default=8, help="frames per sample (default 8; up to 4 are shown)")
    p.add_argument("--size", default="64x64", metavar="HxW", help="mask height x width in pixels (default 64x64)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.set_defaults(func=_cmd_masks)
    # ---- schedule (command and parser in one block)
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
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps; replaces the config's stage schedule by one stage")
    p.add_argument("--resolution", default=None, metavar="HxW",
                   help="training size, e.g. 320x576; replaces the stage schedule by one stage")
    p.add_argument("--batch-size", type=int, default=None, help="clips per process per micro-batch (all stages)")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step (all stages)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (paper: 5e-5)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (paper: 32)")
    p.add_argument("--seed", type=int, default=None, help="seed of data, masks, noise and sigmas")
    p.add_argument("--checkpoint-every", type=int, default=None, help="save a checkpoint every N steps (0 = never)")
    p.add_argument("--validate-every", type=int, default=None,
                   help="write a validation video every N steps (0 = never)")
    p.add_argument("--resume", default=None, metavar="latest|PATH",
                   help="continue from the newest checkpoint in OUT ('latest') or from a checkpoint folder")
    p.add_argument("--from-adapter", default=None, metavar="ADAPTER.safetensors",
                   help="fine-tune: start LoRA and the input conv from this adapter file instead of fresh weights")
    p.add_argument("--mixed-precision", default=None, choices=["no", "fp16", "bf16"],
                   help="autocast on GPU (CPU always trains in fp32)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute UNet blocks in the backward pass (all stages; less memory, slower)")
    p.set_defaults(func=_cmd_train)

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
    p.add_argument("--model", default=None,
                   help="the base model the run trained on (default: the one the checkpoint's settings name)")
    p.add_argument("--frames", type=int, default=None, help="frame count of a single-file base model")
    p.set_defaults(func=_cmd_export_adapter)

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
