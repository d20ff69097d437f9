"""Does a KFI adapter read its keyframe? One denoiser call per noise level, with and without it.

    .venv/bin/python research/demo_model/bench/keyframe_use.py [--model M] [--adapter A] [--clips N] [--task edit|copy]
        [--sigmas 0.5,2,5,15] [--difficulty medium]

For held-out procedural clips (seeds from kfi_core.evaluation.procedural.EVAL_SEED_BASE) the same noisy latents
x_t = x0 + sigma * noise are denoised twice by the adapter's UNet: once with the keyframe as a fully
known frame (condition and image embedding, as inference gives it), once with the keyframe's frame
masked like the others. Printed per sigma: the in-mask latent MSE of D(x_t) against x0 over the
non-keyframe frames, for both, and their ratio (without / with). A ratio near 1 means the adapter
ignores the keyframe; well above 1 means it carries what the keyframe shows into the hole. This is the
cheap proxy the sampler's in-mask PSNR follows (bench/results.py measures that, minutes per clip).
A last line gives the error of the keyframe's latent pasted in place into every frame (no motion): a
reference for how much copying alone could win.

Tasks: ``edit`` (the target's appearance swapped in the keyframe and in the ground truth) and ``copy``
(the removal scene's frames with the target, the hole on the target: only the keyframe shows it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the repository
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kfi_core.evaluation.procedural import EVAL_SEED_BASE, ProceduralConfig, make_procedural_clip  # noqa: E402
from kfi_core.inference.condition import encode_frames, encode_symmetric, first_frame_for_embedding, prepare_clip  # noqa: E402
from kfi_core.inference.denoiser import denoised_from_v, scale_model_input, sigma_to_timestep  # noqa: E402
from kfi_core.inference.settings import PropagateSettings  # noqa: E402
from kfi_core.inference.window import latent_masks  # noqa: E402
from kfi_core.model.encoders import encode_image_clip  # noqa: E402

DEFAULT_MODEL = ROOT / "kfi_core" / "assets" / "demo_model"
SETTINGS = PropagateSettings()  # the sampler's defaults: condition noise augmentation, fps, motion bucket


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--adapter", default=None, help="adapter file (default: the model folder's adapter.safetensors)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a kfi_core.training checkpoint folder instead of an adapter (its trainable.safetensors)",
    )
    p.add_argument("--rank", type=int, default=32, help="LoRA rank of --checkpoint")
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--task", choices=("edit", "copy"), default="edit")
    p.add_argument("--difficulty", default="medium")
    p.add_argument("--sigmas", default="0.5,2,5,15")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument(
        "--static",
        action="store_true",
        help="no camera pan, no object motion, no distractor, constant light: the easiest copy",
    )
    return p.parse_args(argv)


def _latents(model, pixels: torch.Tensor) -> torch.Tensor:
    """[F, 3, H, W] in 0..1 -> scaled latents [F, 4, h, w], as the sampler's x0."""
    return encode_frames(model.vae, pixels * 2.0 - 1.0, 8).float() * float(model.vae.config.scaling_factor)


def _hole_mse(pred: torch.Tensor, x0: torch.Tensor, lmask: torch.Tensor, kf: int) -> float:
    """Latent MSE inside the latent mask [F, 1, h, w], over every frame but the keyframe ``kf``."""
    keep = [t for t in range(x0.shape[0]) if t != kf]
    err = ((pred - x0) ** 2 * lmask)[keep].sum() / (lmask[keep].sum() * x0.shape[1]).clamp_min(1.0)
    return float(err)


def probe_clip(model, clip_frames, masks, truth, keyframe, kf: int, sigmas, seed: int) -> dict[float, tuple]:
    """{sigma: (mse with keyframe, mse without)} for one clip."""
    x0 = _latents(model, truth)  # [F, 4, h, w]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    cases = {
        "with": prepare_clip(clip_frames, masks, keyframes=keyframe[None], keyframe_indices=[kf]),
        "without": prepare_clip(clip_frames, masks),
    }
    conds, embs = {}, {}
    for name, clip in cases.items():
        conds[name] = encode_symmetric(
            model.vae,
            clip,
            noise_aug_strength=SETTINGS.noise_aug_strength,
            generator=torch.Generator().manual_seed(seed + 1),
        )
        embs[name] = encode_image_clip(
            model.image_encoder, model.feature_extractor, first_frame_for_embedding(clip)[None].float()
        )
    lmask = latent_masks(masks, model.vae_scale_factor)[0]  # [F, 1, h, w]
    ids = torch.tensor(
        [[SETTINGS.fps - 1, SETTINGS.motion_bucket_id, SETTINGS.noise_aug_strength]], dtype=torch.float32
    )
    out = {}
    for sigma in sigmas:
        x_t = (x0 + sigma * noise)[None]
        mse = {}
        for name in cases:
            model_in = torch.cat([scale_model_input(x_t, sigma), conds[name]], dim=2)
            v = model.unet(
                model_in,
                sigma_to_timestep(torch.tensor([sigma])),
                encoder_hidden_states=embs[name],
                added_time_ids=ids,
                return_dict=False,
            )[0]
            mse[name] = _hole_mse(denoised_from_v(v, x_t, sigma)[0], x0, lmask, kf)
        out[sigma] = (mse["with"], mse["without"])
    return out


def paste_error(model, truth, masks, keyframe, kf: int) -> float:
    """In-mask latent MSE (non-keyframe frames) of the keyframe's latent pasted into every frame: what a
    denoiser that copies the keyframe in place, with no motion, would score at any sigma."""
    return _hole_mse(
        _latents(model, keyframe[None]), _latents(model, truth), latent_masks(masks, model.vae_scale_factor)[0], kf
    )


@torch.no_grad()
def main(argv=None) -> int:
    from kfi_core.model.loading import load_kfi_model

    args = parse_args(argv)
    if args.checkpoint:
        from kfi_core.training.checkpoints import load_trainable
        from kfi_core.training.objective import setup_trainable_unet

        model = load_kfi_model(args.model)
        setup_trainable_unet(model.unet, rank=args.rank)
        load_trainable(model.unet, Path(args.checkpoint) / "trainable.safetensors")
        model.unet.eval()
    else:
        model = load_kfi_model(args.model, adapter=args.adapter or str(Path(args.model) / "adapter.safetensors"))
    sigmas = [float(s) for s in args.sigmas.split(",")]
    totals = {s: [0.0, 0.0] for s in sigmas}
    pasted = 0.0
    for i in range(args.clips):
        seed = EVAL_SEED_BASE + i
        task = "edit" if args.task == "edit" else "removal"
        if args.static:
            config = ProceduralConfig(max_pan=0.0, object_speed=0.0, distractor=False, lighting_change=0.0)
            clip = make_procedural_clip(task, num_frames=args.frames, height=64, width=64, seed=seed, config=config)
        else:
            clip = make_procedural_clip(
                task, num_frames=args.frames, height=64, width=64, seed=seed, difficulty=args.difficulty
            )
        kf = clip.keyframe_index
        if args.task == "edit":
            frames, truth, keyframe = clip.frames, clip.ground_truth, clip.keyframe
        else:  # the hole hides the target; the keyframe is the frame with it
            frames = truth = clip.frames
            keyframe = clip.frames[kf]
        for s, (w, wo) in probe_clip(model, frames, clip.masks, truth, keyframe, kf, sigmas, seed).items():
            totals[s][0] += w / args.clips
            totals[s][1] += wo / args.clips
        pasted += paste_error(model, truth, clip.masks, keyframe, kf) / args.clips
    scene = "static" if args.static else args.difficulty
    print(f"{args.task} ({scene}, {args.clips} clips), in-mask latent MSE of D(x_t) vs x0")
    print(f"{'sigma':>7} {'with kf':>9} {'without':>9} {'ratio':>7}")
    for s in sigmas:
        w, wo = totals[s]
        print(f"{s:7.2f} {w:9.4f} {wo:9.4f} {wo / max(w, 1e-12):7.3f}")
    print(f"keyframe latent pasted in place (any sigma): {pasted:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
