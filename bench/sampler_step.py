"""Time per denoising step: KFI's sampler against diffusers' StableVideoDiffusionPipeline, same components.

    .venv/bin/python bench/sampler_step.py [--size tiny|mid] [--reps 7] [--steps 6] [--frames 8]

Both sides run SVD img2vid on the same in-memory components, the same image, seed and
guidance (CFG on: batch of 2 per UNet call): KFI through ``kfi_core.evaluation.stock_pipeline.sample_stock_img2vid``
(the SVDDenoiser + sample_euler pair that ``kfi_core.inference.window`` uses for every window), diffusers
through ``StableVideoDiffusionPipeline.__call__``. Per-step time is the median gap between two
consecutive step callbacks (KFI's ``callback``, diffusers' ``callback_on_step_end``), so CLIP and
VAE encoding before the loop and decoding after it are not in it. Runs are interleaved and the
printed figure is the ratio of medians, KFI / diffusers (target <= 1.05): first of the per-run
medians (with the spread over the interleaved pairs), then of all step gaps pooled.
"""

from __future__ import annotations

import argparse

from common import StepTimer, build_components, describe, interleave, median, ratio_line


def measure(size: str, reps: int, steps: int, frames: int, threads: int) -> list[str]:
    import torch
    from diffusers import StableVideoDiffusionPipeline

    from kfi_core.evaluation import sample_stock_img2vid

    torch.set_num_threads(threads)
    components = build_components(size, num_frames=frames)
    pipe = StableVideoDiffusionPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    import numpy as np
    import PIL.Image

    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    common = dict(num_frames=frames, height=64, width=64, fps=7, motion_bucket_id=127, noise_aug_strength=0.02)

    gaps = {"kfi": [], "diffusers": []}  # every step gap of every repetition, pooled

    def kfi() -> float:
        timer = StepTimer()
        sample_stock_img2vid(
            components,
            image,
            steps=steps,
            seed=0,
            output_type="latent",
            callback=timer,
            min_guidance=1.0,
            max_guidance=3.0,
            **common,
        )
        gaps["kfi"].extend(timer.gaps())
        return timer.per_step()

    def diffusers() -> float:
        timer = StepTimer()
        pipe(
            image,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            min_guidance_scale=1.0,
            max_guidance_scale=3.0,
            output_type="latent",
            callback_on_step_end=timer,
            **common,
        )
        gaps["diffusers"].extend(timer.gaps())
        return timer.per_step()

    results = interleave({"kfi": kfi, "diffusers": diffusers}, reps=reps)
    return [
        f"[{size}] {describe(components)}; {frames} frames 64x64, CFG, {steps} steps, {threads} thread(s)",
        ratio_line(
            f"[{size}] s/step KFI sampler / diffusers pipeline", results["kfi"], results["diffusers"], "<= 1.05"
        ),
        f"[{size}] s/step KFI / diffusers, median of all {len(gaps['kfi']) - (steps - 1)} step gaps per side "
        f"(after warm-up):".ljust(59)
        + f"{median(gaps['kfi'][steps - 1 :]) / median(gaps['diffusers'][steps - 1 :]):6.3f}x",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "mid"])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for line in measure(args.size, args.reps, args.steps, args.frames, args.threads):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
