"""Full-size SVD-XT sampling speed on a GPU: seconds per step, peak memory, achieved TFLOP/s.

    python bench/gpu_fullsize.py                 # needs CUDA: svd-xt UNet, 25 frames 576x1024, bf16
    python bench/gpu_fullsize.py --dry-run       # same code path, tiny UNet on CPU in fp32 (for tests)

Builds the full SVD-XT UNet architecture (diffusers' ``UNetSpatioTemporalConditionModel`` with
its default config: (320, 640, 1280, 1280), 25 frames) with random weights directly on the
device, bf16, PyTorch SDPA attention (diffusers' ``AttnProcessor2_0``, asserted), and runs KFI's
sampler (``SVDDenoiser`` + ``sample_euler``, the pair every KFI window uses) for ``--steps``
Euler steps with classifier-free guidance (one UNet call of batch 2 per step) on 25 frames at
576x1024 (latents 72x128; 12 input channels as a KFI adapter's UNet, or 8 with ``--stock``).
Weights are random: speed does not depend on their values. VAE and CLIP are left out (one
encode and a chunked decode per window; they are not in the per-step figure).

Reports s/step (median over steps after the first), peak GPU memory, and achieved TFLOP/s
assuming ``--tflop-per-call`` TFLOP per UNet call (~80 for batch 2 x 25 frames at 576x1024, an
estimate, not a count) against ``--peak-tflops`` (989 dense bf16, H100 SXM).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

H100_SXM_BF16_DENSE_TFLOPS = 989.0
TFLOP_PER_UNET_CALL = 80.0  # assumed, batch 2 (CFG) x 25 frames x 72x128 latents


def build_unet(dry_run: bool, stock: bool, device, dtype):
    import torch
    from diffusers import UNetSpatioTemporalConditionModel

    if dry_run:
        from kfi_core.model import tiny_unet_config

        config = tiny_unet_config(8)
    else:
        config = {"num_frames": 25}  # everything else: diffusers' defaults = SVD's architecture
    config["in_channels"] = 8 if stock else 12
    with torch.device(device):
        unet = UNetSpatioTemporalConditionModel(**config)
    torch.nn.Module.to(unet, dtype=dtype)  # torch's own .to: diffusers' adds a spurious fp32-modules warning
    return unet.eval().requires_grad_(False)


def check_sdpa(unet) -> str:
    from diffusers.models.attention_processor import AttnProcessor2_0

    kinds = {type(p).__name__ for p in unet.attn_processors.values()}
    if kinds != {AttnProcessor2_0.__name__}:
        raise SystemExit(f"attention processors {sorted(kinds)}; expected only AttnProcessor2_0 (PyTorch SDPA)")
    return AttnProcessor2_0.__name__


def run(args) -> dict:
    import torch

    from kfi_core.inference import SVDDenoiser, get_sigmas_svd, per_frame_guidance, sample_euler
    from kfi_core.model import SVD_SCHEDULER_CONFIG

    if args.dry_run:
        device, dtype, frames, (h, w), steps = torch.device("cpu"), torch.float32, 8, (16, 16), min(args.steps, 3)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run on a GPU machine, or pass --dry-run to check the code path on CPU")
        device, dtype, frames, (h, w), steps = torch.device("cuda"), torch.bfloat16, 25, (72, 128), args.steps
        torch.backends.cuda.matmul.allow_tf32 = True
    unet = build_unet(args.dry_run, args.stock, device, dtype)
    processor = check_sdpa(unet)
    if args.channels_last:
        unet.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in unet.parameters())
    g = torch.Generator(device="cpu").manual_seed(0)
    cond_channels = unet.config.in_channels - 4
    condition = torch.randn(1, frames, cond_channels, h, w, generator=g).to(device)
    embedding = torch.randn(1, 1, unet.config.cross_attention_dim, generator=g).to(device)
    ids = torch.tensor([[6.0, 127.0, 0.02]], device=device)
    denoise = SVDDenoiser(
        unet,
        condition_latents=condition,
        encoder_hidden_states=embedding,
        added_time_ids=ids,
        guidance=per_frame_guidance(1.0, 3.0, frames),
    )
    sigmas = get_sigmas_svd(steps, SVD_SCHEDULER_CONFIG).to(device)
    x = (torch.randn(1, frames, 4, h, w, generator=g) * float(sigmas[0])).to(device)
    stamps = []

    def callback(info):
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        out = sample_euler(denoise, x, sigmas, callback=callback)
    gaps = [b - a for a, b in zip([start] + stamps, stamps)]
    per_step = statistics.median(gaps[1:] if len(gaps) > 1 else gaps)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    achieved = args.tflop_per_call / per_step
    return {
        "mode": "dry-run (tiny UNet, CPU, fp32)" if args.dry_run else "svd-xt UNet, CUDA, bf16",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "unet_parameters_M": round(params / 1e6, 1),
        "attention": processor,
        "frames": frames,
        "latent_hw": [h, w],
        "steps": steps,
        "cfg_batch": 2,
        "s_per_step": per_step,
        "first_step_s": gaps[0],
        "peak_memory_GiB": peak,
        "assumed_tflop_per_unet_call": args.tflop_per_call,
        "achieved_tflops": achieved,
        "fraction_of_peak": achieved / args.peak_tflops,
        "peak_tflops": args.peak_tflops,
        "finite": bool(torch.isfinite(out).all()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny UNet on CPU, same code path (tests)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--stock", action="store_true", help="8-channel stock UNet instead of KFI's 12 channels")
    parser.add_argument("--channels-last", action="store_true", help="UNet in channels-last memory format")
    parser.add_argument("--tflop-per-call", type=float, default=TFLOP_PER_UNET_CALL)
    parser.add_argument("--peak-tflops", type=float, default=H100_SXM_BF16_DENSE_TFLOPS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['mode']} on {result['device']}: {result['unet_parameters_M']} M params, {result['frames']} frames, "
            f"latents {result['latent_hw'][0]}x{result['latent_hw'][1]}, CFG, {result['attention']}"
        )
        peak = "n/a (CPU)" if result["peak_memory_GiB"] is None else f"{result['peak_memory_GiB']:.1f} GiB"
        print(
            f"s/step {result['s_per_step']:.3f} (first step {result['first_step_s']:.3f} s), peak memory {peak}, "
            f"achieved {result['achieved_tflops']:.1f} TFLOP/s = {100 * result['fraction_of_peak']:.1f}% of "
            f"{result['peak_tflops']:.0f} (assuming {result['assumed_tflop_per_unet_call']:.0f} TFLOP per UNet call)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
