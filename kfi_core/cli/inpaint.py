"""Inpainting: ``inpaint`` (one clip, or a folder with ``--batch``), ``demo``, and the sampling flags they share.

Each ``add_*_parser(subparsers)`` declares one sub-command's flags; its handler follows it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kfi_core import bundled
from kfi_core.cli.plan import check_inpaint_fits
from kfi_core.errors import ModelFileError, SettingsError
from kfi_core.evaluation import psnr
from kfi_core.inference import BLEND_KNOWN_MODES, COLOR_MATCH_MODES, CROP_MODES, WORKING_SIZES, PropagateSettings
from kfi_core.inference.schedules import load_schedule_file
from kfi_core.inference.settings import DEFAULT_SEAM_SMOOTHING
from kfi_core.jobs import inpaint_files, run_batch
from kfi_core.media import read_frames, read_masks
from kfi_core.media.clip_crop import DEFAULT_CLIP_PADDING
from kfi_core.media.pixels import to_unit
from kfi_core.model import OFFLOAD_MODES, build_tiny_pipeline_folder, load_kfi_model

logger = logging.getLogger("kfi_core.cli")  # the name the log lines have always shown

# --------------------------------------------------------------------------- shared sampling flags


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
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
    g.add_argument(
        "--color-match",
        default="none",
        metavar="|".join(COLOR_MATCH_MODES),
        help="fit the fill's colours to the input around the hole before compositing (default "
        "%(default)s): none, mean (offset), affine (3x3 + offset), or keyframe (one affine fit on "
        "the keyframes, where the edit's true colours are known; affine without one); fixes VAE "
        "colour drift",
    )
    g.add_argument(
        "--blend-known",
        default="auto",
        metavar="|".join(BLEND_KNOWN_MODES),
        help="replace the denoised estimate outside the hole by the input's clean latents at every step: "
        "auto (default: on in the training-free mode, off with a KFI adapter), on, off",
    )
    g.add_argument("--decode-chunk-size", type=int, default=8, help="frames per VAE decode call (default 8)")
    g.add_argument(
        "--decode-tile",
        type=int,
        default=0,
        metavar="N",
        help="decode in spatial tiles of N latent cells a side, overlapping by N/4 and blended (less memory, "
        "the frames within a small tolerance; 32 = 256 pixels); 0 = whole frames (default)",
    )
    g.add_argument(
        "--num-samples",
        type=int,
        default=1,
        help="average this many samples (seeds --seed, --seed + 1, ...; default 1): N times the time, a "
        "lower error and a softer fill where the samples disagree (docs/METHOD.md, 'After sampling')",
    )
    g.add_argument(
        "--seam-smoothing",
        type=int,
        default=DEFAULT_SEAM_SMOOTHING,
        metavar="FRAMES",
        help="clips longer than the model's window: even each generated frame's fill colour with the frames "
        "within FRAMES of it and cross-fade the fill's detail where windows meet, so the windows do not show; "
        "any clip: carry each keyframe's colour into the fill next to it, so the keyframe does not flash "
        "(default %(default)s; 0 off; keyframes and pixels outside the mask stay exact)",
    )


def settings_from_args(args: argparse.Namespace) -> PropagateSettings:
    """The :class:`PropagateSettings` of the flags of :func:`add_sampling_arguments` (unchecked)."""
    return PropagateSettings(
        steps=args.steps,
        seed=args.seed,
        sampler=args.sampler,
        min_guidance=args.min_guidance,
        max_guidance=args.max_guidance,
        fps=args.fps,
        motion_bucket_id=args.motion_bucket_id,
        noise_aug_strength=args.noise_aug_strength,
        composite=not args.no_composite,
        feather=args.feather,
        color_match=args.color_match,
        blend_known=args.blend_known,
        decode_chunk_size=args.decode_chunk_size,
        decode_tile=args.decode_tile,
        num_samples=args.num_samples,
        seam_smoothing=args.seam_smoothing,
    )


class StepBar:
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


# --------------------------------------------------------------------------- inpaint


def _add_size_arguments(p: argparse.ArgumentParser) -> None:
    """The working size and the crop around the masks."""
    p.add_argument(
        "--working-size",
        default="native",
        choices=WORKING_SIZES,
        help="the size the model runs at: native (default; the model's own, 1024x576 for svd-xt, turned to the "
        "clip's orientation) or input (the clip's own size, which must suit the model); the result always "
        "comes back at the input size, pixels outside the mask exactly the input's",
    )
    p.add_argument("--width", type=int, default=None, help="working width (instead of --working-size)")
    p.add_argument("--height", type=int, default=None, help="working height (with --width)")
    p.add_argument(
        "--crop",
        default="none",
        choices=CROP_MODES,
        help="mask: inpaint only a box around the union of the masks, at the working size's aspect ratio "
        "(--width/--height, default the model's own size turned to the box), and stitch it back (a small hole "
        "in a large clip at the model's full detail); none (default): the whole frame",
    )
    p.add_argument(
        "--crop-padding",
        type=int,
        default=DEFAULT_CLIP_PADDING,
        metavar="PIXELS",
        help="with --crop mask: pixels of context around the masks (default %(default)s)",
    )


def add_inpaint_parser(sub) -> None:
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
    p.add_argument(
        "--mask", default=None, help="mask video, mask folder, or one mask image for all frames; not with --batch"
    )
    p.add_argument(
        "--out",
        required=True,
        help="output video file (.mp4, .webm, .mov) or folder (PNG frames); with --batch the output folder",
    )
    p.add_argument(
        "--batch",
        default=None,
        metavar="DIR",
        help="inpaint every clip of DIR: <name>.mp4 or <name>/ (frames) with <name>_mask.mp4, "
        "<name>_mask.png or <name>_mask/, optional keyframes <name>_key<INDEX>.png; writes "
        "OUT/<name>.mp4, skips outputs that exist; under accelerate launch / torchrun clip i goes "
        "to process i %% world size",
    )
    p.add_argument(
        "--batch-format",
        default="mp4",
        choices=["mp4", "webm", "mov", "png"],
        help="output format in batch mode (png: a folder of PNG frames per clip; default mp4)",
    )
    p.add_argument("--keyframe", action="append", help="an edited frame (image); repeat for several")
    p.add_argument("--keyframe-index", action="append", type=int, help="frame index of the preceding --keyframe")
    p.add_argument("--preview", default=None, help="also write a side-by-side preview PNG here")
    _add_size_arguments(p)
    p.add_argument("--grow", type=int, default=0, help="grow (or erode, negative) masks by pixels")
    p.add_argument(
        "--schedule",
        default=None,
        metavar="NAME|S.json",
        help="long-video schedule for clips longer than the model's window: a strategy, anchor (default), "
        "multidiffusion, autoregressive, hierarchy2, improved-ar, far-future, 3-res, reverse; or a schedule file "
        "written by `schedule --json` (its options too, e.g. -o keyframe_windows=true; its frame count and "
        "keyframes must be the clip's)",
    )
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="UNet dtype")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--offload",
        default="none",
        choices=list(OFFLOAD_MODES),
        help="weights off the device between uses: none (default, fastest), model (one component on the device at "
        "a time; svd-xt in about 12 GB) or sequential (one layer at a time: least memory, slowest)",
    )
    p.add_argument("--frames", type=int, default=None, help="frame count of a single-file model")
    p.add_argument(
        "--merge-lora",
        action="store_true",
        help="fold the adapter's LoRA into the UNet weights (faster, same result within rounding)",
    )
    p.add_argument(
        "--channels-last", action="store_true", help="UNet weights in channels-last memory format (opt-in fast path)"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet (opt-in; falls back to eager with a warning if compiling fails)",
    )
    add_sampling_arguments(p)
    p.set_defaults(func=_cmd_inpaint)


def _load_model(args: argparse.Namespace):
    return load_kfi_model(
        args.model,
        adapter=args.adapter,
        dtype=args.dtype,
        device=args.device,
        num_frames=args.frames,
        merge_lora=args.merge_lora,
        channels_last=args.channels_last,
        compile_unet=args.compile,
        offload=args.offload,
    )


def _size(args: argparse.Namespace):
    """The working size the flags ask for: --width/--height, else --working-size."""
    return args.working_size if args.width is None else (args.height, args.width)


def _cmd_inpaint(args: argparse.Namespace) -> int:
    if (args.width is None) != (args.height is None):
        raise SettingsError(
            "--width/--height: give both (the working size), or neither for --working-size (native by default: the "
            "model's own size)."
        )
    if args.crop_padding < 0:
        raise SettingsError(
            f"--crop-padding: got {args.crop_padding}; give 0 or more pixels of context around the mask."
        )
    if args.batch is not None:
        if args.video or args.mask or args.keyframe or args.keyframe_index or args.preview:
            raise SettingsError(
                "--batch: takes clips, masks and keyframes from the folder by name; drop --video, --mask, "
                "--keyframe, --keyframe-index and --preview, or drop --batch to inpaint one clip."
            )
        return _run_batch(args)
    if not args.video or not args.mask:
        raise SettingsError("inpaint: give --video and --mask (one clip), or --batch DIR (every clip of a folder).")
    settings = settings_from_args(args).check()
    strategy, schedule = _schedule_flag(args.schedule)
    model = _load_model(args)
    check_inpaint_fits(args, model)  # on CUDA: refuse before starting if the estimate exceeds free memory
    bar = StepBar("inpaint")
    try:
        result = inpaint_files(
            model,
            video=args.video,
            mask=args.mask,
            out=args.out,
            keyframe_paths=args.keyframe or [],
            keyframe_indices=args.keyframe_index or [],
            settings=settings,
            size=_size(args),
            grow_pixels=args.grow,
            preview=args.preview,
            strategy=strategy,
            callback=bar,
            crop=args.crop,
            crop_padding=args.crop_padding,
            schedule=schedule,
        )
    finally:
        bar.close()
    print(result.output)
    return 0


def _is_schedule_file(value: str | None) -> bool:
    return value is not None and value.lower().endswith(".json")


def _schedule_flag(value: str | None):
    """``--schedule``: (strategy name, None), or (None, the Schedule) of a ``.json`` file."""
    if not _is_schedule_file(value):
        return value, None
    return None, load_schedule_file(value, f"--schedule {value}")


def _run_batch(args: argparse.Namespace) -> int:
    if _is_schedule_file(args.schedule):
        raise SettingsError(
            f"--schedule {args.schedule}: a schedule file fixes one clip's frame count and keyframes; with --batch "
            "give a strategy name (e.g. anchor), which is planned for each clip."
        )
    settings = settings_from_args(args).check()
    report = run_batch(
        lambda: _load_model(args),
        args.batch,
        args.out,
        fmt=args.batch_format,
        settings=settings,
        size=_size(args),
        grow_pixels=args.grow,
        strategy=args.schedule,
        crop=args.crop,
        crop_padding=args.crop_padding,
    )
    for path in report.done:
        print(path)
    logger.info(
        "batch: process %d of %d wrote %d, skipped %d finished",
        report.rank,
        report.world,
        len(report.done),
        len(report.skipped),
    )
    return 0


# --------------------------------------------------------------------------- demo


def add_demo_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="inpaint the bundled sample clip with the embedded default model",
        description="The main job on the embedded default: removes the ball from the bundled sample "
        "clip with the demo model and its removal adapter (adapter-removal.safetensors); "
        "writes OUT/result.mp4 and OUT/preview.png. "
        "Colour matching defaults to affine here (the small demo VAE's colours drift) and "
        "guidance to 1.0 on every frame (the demo model fills better without classifier-"
        "free guidance; docs/DEMO_MODEL.md).",
    )
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="use a tiny random-weight model (written to OUT/model) instead of the trained demo model: "
        "shows the pipeline, not a meaningful fill",
    )
    add_sampling_arguments(p)
    p.set_defaults(**bundled.DEMO_SAMPLING)
    p.set_defaults(func=_cmd_demo)


def _demo_model(out: Path, tiny: bool):
    """The model ``demo`` runs and a line saying what it is."""
    # bundled.* is read at call time: tests point DEMO_MODEL_DIR elsewhere to play a partial checkout
    if tiny:  # the pipeline on random weights, asked for by name: shows the steps, not a meaningful fill
        model_dir = out / "model"
        if not (model_dir / "model_index.json").is_file():
            build_tiny_pipeline_folder(model_dir)
        return load_kfi_model(model_dir), f"tiny random-weight model in {model_dir} (untrained)"
    if bundled.demo_model_available():  # the sample clip is a removal (no keyframe): the adapter tuned on removal
        model_dir, adapter = bundled.DEMO_MODEL_DIR, bundled.DEMO_REMOVAL_ADAPTER
        return (
            load_kfi_model(model_dir, adapter=adapter),
            f"demo model {model_dir} with its removal adapter ({adapter.name})",
        )
    raise ModelFileError(
        f"demo: the trained demo model is missing from {bundled.DEMO_MODEL_DIR} (it needs model_index.json and both "
        "adapters; a partial checkout or an install that left out package data?). Restore the folder "
        "(git checkout -- kfi_core/assets/demo_model, or reinstall the pack), or run `demo --tiny` to see the "
        "pipeline on a tiny random-weight model."
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded default: inpaint the bundled sample clip with the trained demo model."""
    out = Path(args.out)
    model, what = _demo_model(out, args.tiny)
    sample_dir = bundled.SAMPLE_DIR
    bar = StepBar("demo")
    try:
        result = inpaint_files(
            model,
            video=sample_dir / "frames",
            mask=sample_dir / "masks",
            out=out / "result.mp4",
            preview=out / "preview.png",
            callback=bar,
            settings=settings_from_args(args),
        )
    finally:
        bar.close()
    truth, _ = read_frames(sample_dir / "ground_truth")
    masks = read_masks(sample_dir / "masks")
    print(f"model:   {what}")
    print(f"video:   {result.output}")
    print(f"preview: {result.preview}  (left: input with the mask in red, right: result)")
    print(f"PSNR inside the mask against the bundled ground truth: {psnr(to_unit(result.frames), truth, masks):.2f} dB")
    return 0
