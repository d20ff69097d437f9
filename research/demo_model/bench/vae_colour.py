"""Does a VAE keep colour? Probe a trained one, or train a variant briefly and watch its flat-colour error.

    .venv/bin/python research/demo_model/bench/vae_colour.py --probe kfi_core/assets/demo_model/vae
    .venv/bin/python research/demo_model/bench/vae_colour.py --widths 64,64,64 --steps 400 [--lr 2e-3] [--ref-bias 10]
        [--pooled-weight 10] [--chroma-weight 4] [--norm-ref 10] [--anchor-weight 10] [--flat-only]
        [--batch 4] [--deterministic]

The numbers behind the README's "Why the keyframe cannot help yet" paragraph. A probe decodes flat colours
and held-out procedural clips and prints what comes back, then how much colour the latent itself holds (a
linear probe from latents to pooled colours: the encoder's share of the loss). A training run fits a fresh
``AutoencoderKLTemporalDecoder`` (kfi_core.model.tiny shapes, the given widths) on 4-frame 32x32 crops of procedural
training clips, every other step a flat random colour with faint noise, with the demo recipe's loss (L1 + MSE,
tiny KL, plus ``--chroma-weight`` times research.demo_model.vae.chroma_mse); four times it prints the mean absolute
error of decoded flat colours (0..1), the PSNR of held-out crops and their chroma gain (kfi_core.evaluation.metrics: 1 =
colours kept, 0 = grey). ``--no-flat`` leaves the flat colours out, as the recipe's VAE phase does.
``--ref-bias`` adds a constant to half of the first convs' output channels (a reference channel in each
GroupNorm group); ``--norm-ref`` does so before the encoder's and decoder's last GroupNorms instead
(research.demo_model.vae.add_norm_reference); ``--anchor-weight`` pulls the latent toward the pooled colours
(research.demo_model.vae.colour_anchor_mse); ``--pooled-weight`` adds an MSE term on 8x8-pooled colours.
A benchmark, not a test: nothing here asserts a number.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the repository
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

logger = logging.getLogger("bench.vae_colour")
FLAT_COLOURS = ((0.9, 0.1, 0.1), (0.1, 0.8, 0.2), (0.2, 0.3, 0.9), (0.5, 0.5, 0.5), (0.8, 0.8, 0.2))
HELD_OUT_SEEDS = (
    9000,
    9001,
    9002,
)  # below research.demo_model.recipe.TRAIN_SEED_LIMIT but never drawn by the steps here


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--probe", default=None, help="a trained VAE folder (diffusers): probe it and stop")
    p.add_argument("--widths", default="64,64,64", help="block_out_channels of the fresh VAE")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ref-bias", type=float, default=0.0)
    p.add_argument("--pooled-weight", type=float, default=0.0)
    p.add_argument("--chroma-weight", type=float, default=0.0, help="the VAE phase's chroma_weight")
    p.add_argument(
        "--norm-ref",
        type=float,
        default=0.0,
        help="add this to every other channel feeding the encoder's and decoder's last GroupNorm",
    )
    p.add_argument("--anchor-weight", type=float, default=0.0, help="the VAE phase's anchor_weight")
    p.add_argument("--no-flat", action="store_true", help="train on procedural crops only (as the recipe does)")
    p.add_argument("--deterministic", action="store_true", help="decode the posterior mean, no sampling noise")
    p.add_argument("--flat-only", action="store_true", help="train on flat colours only")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default 8 for --probe, 4 to train)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=1, help="clips per step (the demo recipe's VAE phase uses 1)")
    return p.parse_args(argv)


def reconstruct(vae, frames: torch.Tensor) -> torch.Tensor:
    """[F, 3, H, W] in 0..1 -> the VAE's reconstruction through the posterior mode, in 0..1."""
    latents = vae.encode(frames * 2 - 1).latent_dist.mode()
    return ((vae.decode(latents, num_frames=frames.shape[0]).sample + 1) / 2).clamp(0, 1)


def flat(colour, frames: int, size: int) -> torch.Tensor:
    return torch.tensor(colour).view(1, 3, 1, 1).expand(frames, 3, size, size).clone()


def crop(seed: int, frames: int, size: int) -> torch.Tensor:
    from research.demo_model.data import training_clip

    return training_clip(seed, frames, 64, 64)[:, :, :size, :size]


@torch.no_grad()
def flat_colour_error(vae, frames: int, size: int) -> float:
    errors = [
        float((reconstruct(vae, flat(c, frames, size)).mean((0, 2, 3)) - torch.tensor(c)).abs().mean())
        for c in FLAT_COLOURS
    ]
    return sum(errors) / len(errors)


@torch.no_grad()
def held_out(vae, frames: int, size: int) -> tuple[float, float]:
    """(PSNR dB, chroma gain) of the held-out crops' reconstructions."""
    from kfi_core.evaluation.metrics import chroma_gain

    psnr, gain = [], []
    for seed in HELD_OUT_SEEDS:
        x = crop(seed, frames, size)
        r = reconstruct(vae, x)
        psnr.append(float(10 * torch.log10(1 / ((r - x) ** 2).mean())))
        gain.append(chroma_gain(r.numpy(), x.numpy()))
    return sum(psnr) / len(psnr), sum(gain) / len(gain)


@torch.no_grad()
def latent_colour_r2(vae, frames: int, train_seeds=range(40), test_seeds=range(100, 110)) -> tuple[list, list]:
    """How much colour the latent holds, whatever the decoder makes of it: a least-squares map from each
    latent cell's 3x3 neighbourhood to the 4x4-pooled pixels below it is fitted on training clips and scored on
    others. Returns (held-out R^2 of the pooled chroma, of the pooled RGB), per channel; R^2 near 0 for chroma
    means no decoder can bring the colour back."""
    from research.demo_model.data import training_clip

    def cells(seeds):
        xs, chroma, rgb = [], [], []
        for seed in seeds:
            x = training_clip(seed, frames, 64, 64) * 2 - 1
            z = vae.encode(x).latent_dist.mode()
            xs.append(torch.nn.functional.unfold(z, 3, padding=1).transpose(1, 2).flatten(0, 1))
            pooled = torch.nn.functional.adaptive_avg_pool2d(x, z.shape[-2:]).flatten(2).transpose(1, 2).flatten(0, 1)
            rgb.append(pooled)
            chroma.append(pooled - pooled.mean(1, keepdim=True))
        xs = torch.cat(xs)
        return torch.cat([xs, torch.ones(len(xs), 1)], 1), torch.cat(chroma), torch.cat(rgb)

    train_x, *train_y = cells(train_seeds)
    test_x, *test_y = cells(test_seeds)
    scores = []
    for y, yt in zip(train_y, test_y):
        w = torch.linalg.lstsq(train_x, y).solution
        r2 = 1 - ((test_x @ w - yt) ** 2).sum(0) / ((yt - yt.mean(0)) ** 2).sum(0)
        scores.append([round(float(v), 3) for v in r2])
    return scores[0], scores[1]


@torch.no_grad()
def probe(path: str, frames: int) -> None:
    from diffusers import AutoencoderKLTemporalDecoder

    from kfi_core.evaluation.procedural import EVAL_SEED_BASE
    from research.demo_model.data import training_clip

    vae = AutoencoderKLTemporalDecoder.from_pretrained(path, use_safetensors=True).eval()
    for colour in FLAT_COLOURS:
        out = reconstruct(vae, flat(colour, frames, 64)).mean((0, 2, 3))
        print(f"flat {colour} -> ({', '.join(f'{float(v):.2f}' for v in out)})")
    for i in range(3):
        clip = training_clip(EVAL_SEED_BASE - 100 - i, frames, 64, 64)
        for name, x in (("original", clip), ("channels permuted (GBR)", clip[:, [1, 2, 0]])):
            out = reconstruct(vae, x)
            psnr = float(10 * torch.log10(1 / ((out - x) ** 2).mean()))
            means = ", ".join(f"{float(v):.2f}" for v in x.mean((0, 2, 3)))
            got = ", ".join(f"{float(v):.2f}" for v in out.mean((0, 2, 3)))
            print(f"clip {i} {name}: PSNR {psnr:.2f} dB, mean colour ({means}) -> ({got})")
    chroma, rgb = latent_colour_r2(vae, frames)
    print(f"latent -> pooled colour, linear, held-out R^2 per channel: chroma {chroma}, RGB {rgb}")


def train(args) -> None:
    from diffusers import AutoencoderKLTemporalDecoder

    from kfi_core.model.tiny import TINY_VAE_CONFIG
    from research.demo_model.vae import add_norm_reference, chroma_mse, colour_anchor_mse

    torch.manual_seed(0)
    widths = tuple(int(w) for w in args.widths.split(","))
    vae = AutoencoderKLTemporalDecoder(
        **{**TINY_VAE_CONFIG, "block_out_channels": widths, "down_block_types": ("DownEncoderBlock2D",) * len(widths)}
    )
    with torch.no_grad():
        vae.quant_conv.weight.copy_(torch.eye(vae.quant_conv.weight.shape[0]).view_as(vae.quant_conv.weight))
        vae.quant_conv.bias.zero_()
        if args.ref_bias:
            vae.encoder.conv_in.bias[::2] += args.ref_bias
            vae.decoder.conv_in.bias[::2] += args.ref_bias
        if args.norm_ref:
            add_norm_reference(vae, args.norm_ref)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    f, s = args.frames, args.size
    start = time.perf_counter()
    for step in range(args.steps):
        clips = []
        for b in range(args.batch):
            if args.flat_only or (not args.no_flat and (step + b) % 2):
                x = torch.rand(3, generator=gen).view(1, 3, 1, 1) + 0.05 * torch.randn(f, 3, s, s, generator=gen)
                clips.append(x.clamp(0, 1))
            else:
                clips.append(crop((step * args.batch + b) % 5000, f, s))
        x = torch.cat(clips) * 2 - 1  # [B*F, 3, s, s], clip-major as the temporal decoder wants
        posterior = vae.encode(x).latent_dist
        z = posterior.mean
        if not args.deterministic:
            z = z + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        r = vae.decode(z, num_frames=f).sample
        loss = (r - x).abs().mean() + ((r - x) ** 2).mean() + 1e-6 * posterior.kl().mean() / x[0].numel()
        if args.chroma_weight:
            loss = loss + args.chroma_weight * chroma_mse(r, x)
        if args.anchor_weight:
            loss = loss + args.anchor_weight * colour_anchor_mse(posterior.mean, x)
        if args.pooled_weight:
            pool = torch.nn.functional.avg_pool2d
            loss = loss + args.pooled_weight * ((pool(r, 8) - pool(x, 8)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % max(1, args.steps // 4) == 0 or step + 1 == args.steps:
            vae.eval()
            psnr, gain = held_out(vae, f, s)
            print(
                f"widths {widths} step {step + 1}: flat-colour error {flat_colour_error(vae, f, s):.3f}, "
                f"held-out PSNR {psnr:.2f} dB, chroma gain {gain:.2f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
            vae.train()


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    if args.probe:
        probe(args.probe, args.frames or 8)
    else:
        args.frames = args.frames or 4
        train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
