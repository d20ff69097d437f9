"""Can a fresh KFI adapter learn to read its keyframe at all? Train it on pairs that differ only there.

    .venv/bin/python research/demo_model/bench/keyframe_pairs.py --model M [--clips 16] [--steps 400] [--lr 2e-3] [--sigma 10]
        [--p-mean P --p-std S] [--weight 10] [--random-keyframe] [--difficulty easy] [--eval-clips 6]

Each training clip of the procedural ``edit`` task (seeds from 1000, below the held-out ones) gives two samples
with the same input frames and the same hole: one whose keyframe and ground truth show the target as it was, one
where both show it edited. Only the keyframe tells them apart, so the in-mask loss can fall below the average of
the two only by reading it. A fresh adapter (12-channel conv_in and LoRA rank 32 on the model's UNet, as
kfi_core.training.objective builds it) trains on those samples alone, at noise levels ``sigma * exp(0.3 z)`` (or ln sigma ~
N(P, S^2)), with the loss weighted ``--weight`` inside the latent mask. Then research/demo_model/bench/keyframe_use.py's probe runs on
the training clips and on held-out clips (seeds from EVAL_SEED_BASE): in-mask latent MSE with and without the
keyframe at sigma 5 and 15, and their ratio (1 = the keyframe is ignored). README, 'Teaching the adapter to read
the keyframe', has what it found on the demo model's backbone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the repository
for path in (ROOT, Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
from keyframe_use import SETTINGS, _latents, probe_clip  # noqa: E402

from kfi_core.evaluation.procedural import EVAL_SEED_BASE, ProceduralConfig, make_procedural_clip, with_config  # noqa: E402
from kfi_core.inference.condition import encode_symmetric, first_frame_for_embedding, prepare_clip  # noqa: E402
from kfi_core.inference.denoiser import scale_model_input, sigma_to_timestep  # noqa: E402
from kfi_core.inference.window import latent_masks  # noqa: E402
from kfi_core.model.encoders import encode_image_clip  # noqa: E402

TRAIN_SEED = 1000
PROBE_SIGMAS = (5.0, 15.0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an 8-channel SVD img2vid model folder (the backbone)")
    p.add_argument("--clips", type=int, default=16, help="training clips (two samples each)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--sigma", type=float, default=10.0, help="noise level of the training samples (times exp(0.3 z))")
    p.add_argument("--p-mean", type=float, default=None, help="ln sigma ~ N(P, S^2) instead of --sigma")
    p.add_argument("--p-std", type=float, default=1.4)
    p.add_argument("--weight", type=float, default=10.0, help="loss weight inside the latent mask")
    p.add_argument("--random-keyframe", action="store_true", help="keyframe at a random frame (default frame 0)")
    p.add_argument("--difficulty", default="easy")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--eval-clips", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _clip(seed: int, args, keyframe_index: int = 0):
    config = with_config(ProceduralConfig.preset(args.difficulty), keyframe_index=keyframe_index)
    return make_procedural_clip("edit", num_frames=args.frames, height=64, width=64, seed=seed, config=config)


@torch.no_grad()
def pair_samples(model, args) -> list[dict]:
    """Two samples per clip: (original target in keyframe and truth), (edited target in both); same input."""
    samples = []
    for i in range(args.clips):
        kf = (
            int(torch.randint(args.frames, (), generator=torch.Generator().manual_seed(i)))
            if args.random_keyframe
            else 0
        )
        clip = _clip(TRAIN_SEED + i, args, kf)
        for truth, keyframe in ((clip.frames, clip.frames[kf]), (clip.ground_truth, clip.keyframe)):
            known = prepare_clip(clip.frames, clip.masks, keyframes=keyframe[None], keyframe_indices=[kf])
            samples.append(
                {
                    "x0": _latents(model, truth)[None],
                    "cond": encode_symmetric(
                        model.vae,
                        known,
                        noise_aug_strength=SETTINGS.noise_aug_strength,
                        generator=torch.Generator().manual_seed(i),
                    ),
                    "emb": encode_image_clip(
                        model.image_encoder, model.feature_extractor, first_frame_for_embedding(known)[None].float()
                    ),
                    "lmask": latent_masks(clip.masks, model.vae_scale_factor)[0][None],
                }
            )
    return samples


def train_pairs(model, samples: list[dict], args) -> list[float]:
    from kfi_core.training.objective import kfi_loss

    params = [p for p in model.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    ids = torch.tensor([[SETTINGS.fps - 1, SETTINGS.motion_bucket_id, SETTINGS.noise_aug_strength]])
    gen = torch.Generator().manual_seed(args.seed + 1)
    losses = []
    model.unet.train()
    for step in range(args.steps):
        s = samples[int(torch.randint(len(samples), (), generator=gen))]
        z = torch.randn((), generator=gen)
        sigma = (
            float(torch.exp(args.p_mean + args.p_std * z))
            if args.p_mean is not None
            else float(args.sigma * torch.exp(0.3 * z))
        )
        x_t = s["x0"] + sigma * torch.randn(s["x0"].shape, generator=gen)
        model_in = torch.cat([scale_model_input(x_t, sigma), s["cond"]], dim=2)
        v = model.unet(
            model_in,
            sigma_to_timestep(torch.tensor([sigma])),
            encoder_hidden_states=s["emb"],
            added_time_ids=ids,
            return_dict=False,
        )[0]
        loss = kfi_loss(
            v, s["x0"], x_t, torch.tensor(sigma).reshape(1, 1, 1, 1, 1), 1.0 + (args.weight - 1.0) * s["lmask"]
        )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    model.unet.eval()
    return losses


@torch.no_grad()
def probe(model, seeds, args) -> dict[float, tuple[float, float]]:
    """{sigma: (mean in-mask MSE with the keyframe, without)} over ``seeds`` (keyframe at frame 0)."""
    totals = {s: [0.0, 0.0] for s in PROBE_SIGMAS}
    for seed in seeds:
        clip = _clip(seed, args)
        out = probe_clip(
            model, clip.frames, clip.masks, clip.ground_truth, clip.keyframe, clip.keyframe_index, PROBE_SIGMAS, seed
        )
        for s, (w, wo) in out.items():
            totals[s][0] += w / len(seeds)
            totals[s][1] += wo / len(seeds)
    return {s: (w, wo) for s, (w, wo) in totals.items()}


def main(argv=None) -> int:
    from kfi_core.model.loading import load_kfi_model
    from kfi_core.training.objective import setup_trainable_unet

    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model = load_kfi_model(args.model)
    setup_trainable_unet(model.unet, rank=32)
    samples = pair_samples(model, args)
    start = time.perf_counter()
    losses = train_pairs(model, samples, args)
    tail = max(1, len(losses) // 8)
    print(
        f"{len(samples)} samples, {args.steps} steps ({time.perf_counter() - start:.0f} s): loss "
        f"{sum(losses[:tail]) / tail:.4f} first {tail} steps -> {sum(losses[-tail:]) / tail:.4f} last {tail}"
    )
    print(f"{'clips':>9} {'sigma':>6} {'with kf':>9} {'without':>9} {'ratio':>7}")
    for name, seeds in (
        ("training", range(TRAIN_SEED, TRAIN_SEED + min(args.clips, args.eval_clips))),
        ("held-out", range(EVAL_SEED_BASE, EVAL_SEED_BASE + args.eval_clips)),
    ):
        for s, (w, wo) in probe(model, list(seeds), args).items():
            print(f"{name:>9} {s:6.1f} {w:9.4f} {wo:9.4f} {wo / max(w, 1e-12):7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
