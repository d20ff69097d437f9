"""Time per denoising step: KFI's sampler against ComfyUI's own SVD sampling path, same weights.

    .venv/bin/python bench/comfy_sampler.py [--cache-dir DIR] [--reps 5] [--steps 6] [--frames 6] [--size 64]

ComfyUI recognises an SVD single file only at SVD's real widths (model_channels 320, context
1024, adm 768, transformer depth [1,1,1,1,1,1,0,0], full ViT-H CLIP vision); only channel_mult
may shrink. So this bench builds (once, cached) the smallest file ComfyUI's loader accepts end
to end: a random-weight diffusers ``UNetSpatioTemporalConditionModel`` with SVD-XT's config but
``block_out_channels`` (320, 320, 320, 320), SVD's full VAE (SVD_VAE_CONFIG) and a full ViT-H/14 ``CLIPVisionModelWithProjection``, written in fp16 with
``kfi_core.model.single_file.save_single_file``. In ONE process it then loads that file twice:

- ComfyUI: ``comfy.sd.load_checkpoint_guess_config`` (model, VAE, CLIP vision), the conditioning
  from ``SVD_img2vid_Conditioning``, the model patched by ``VideoLinearCFGGuidance`` (min_cfg 1),
  sampled through ``comfy.sample.sample`` (the call ``KSampler`` makes) with euler / karras.
- KFI: ``kfi_core.model.loading.load_kfi_model`` and ``kfi_core.evaluation.stock_pipeline.sample_stock_img2vid``
  (SVDDenoiser + sample_euler, Karras sigmas from SVD's scheduler config).

Same image, size, frames, steps, seed and guidance (per-frame linear 1.0 -> cfg, as SVD's
pipeline; VideoLinearCFGGuidance gives ComfyUI the same per-frame ramp). Per-step time is the
median gap between two consecutive step callbacks, so CLIP/VAE encoding and decoding are not
in it (ComfyUI's conditioning is built once, outside the timed loop). Runs are interleaved and
the printed figure is the ratio of medians, KFI / ComfyUI, with the spread over the pairs.
Needs ~12 GB of free RAM (two fp32 copies of ~1 B parameters plus the build).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import StepTimer, interleave, median, parameter_count, ratio_line

# the ComfyUI copy that `bash scripts/dev setup` installs, unless KFI_COMFYUI_DIR points elsewhere
COMFY_ROOT = Path(os.environ.get("KFI_COMFYUI_DIR") or Path(__file__).resolve().parents[1] / ".venv" / "comfyui")
MIN_FREE_GB = 12.0
FILE_NAME = "kfi_bench_svd_c320x4_vith_fp16.safetensors"
NUM_FRAMES_FILE = 14

VIT_H_CONFIG = dict(
    hidden_size=1280,
    num_hidden_layers=32,
    num_attention_heads=16,
    intermediate_size=5120,
    projection_dim=1024,
    patch_size=14,
    image_size=224,
    hidden_act="gelu",
    num_channels=3,
)
#: SVD's VAE (stabilityai/stable-video-diffusion-img2vid-xt vae/config.json): ~98 M parameters.
SVD_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=768,
    scaling_factor=0.18215,
    force_upcast=True,
)


def free_gb() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**30


def check_ram(need: float = MIN_FREE_GB) -> None:
    avail = free_gb()
    if avail < need:
        raise SystemExit(
            f"comfy_sampler: only {avail:.1f} GB of RAM available, this bench needs >= {need:.0f} GB "
            "(two fp32 copies of a ~1 B-parameter SVD checkpoint); not run."
        )


def build_file(path: Path) -> Path:
    """Write the random-weight, smallest ComfyUI-loadable SVD single file (fp16) to ``path``."""
    import copy

    import torch
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from kfi_core.model import SVD_XT_UNET_CONFIG, save_single_file

    start = time.perf_counter()
    torch.manual_seed(0)
    config = copy.deepcopy(SVD_XT_UNET_CONFIG)
    config.update(block_out_channels=(320, 320, 320, 320), num_frames=NUM_FRAMES_FILE)
    components = {}
    components["unet"] = UNetSpatioTemporalConditionModel(**config).eval().half()
    components["vae"] = AutoencoderKLTemporalDecoder(**SVD_VAE_CONFIG).eval()
    with torch.no_grad():  # SVD's VAE has no quant_conv: identity, as in the converted weights
        q = components["vae"].quant_conv
        q.weight.copy_(torch.eye(q.weight.shape[0]).view_as(q.weight))
        q.bias.zero_()
    components["vae"].half()
    components["image_encoder"] = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H_CONFIG)).eval().half()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_single_file(components, path, num_frames=NUM_FRAMES_FILE)
    print(
        f"built {path} ({path.stat().st_size / 2**30:.2f} GiB fp16) in {time.perf_counter() - start:.0f} s", flush=True
    )
    return path


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def import_comfy(sdpa: bool = False):
    if not (COMFY_ROOT / "comfy" / "sd.py").exists():
        raise SystemExit(f"comfy_sampler: no ComfyUI at {COMFY_ROOT}; set KFI_COMFYUI_DIR to a ComfyUI checkout.")
    if str(COMFY_ROOT) not in sys.path:
        sys.path.insert(0, str(COMFY_ROOT))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management
    # ComfyUI's own default on CPU is sub-quadratic attention; --use-pytorch-cross-attention = SDPA
    comfy.cli_args.args.use_pytorch_cross_attention = sdpa
    import comfy.model_management  # noqa: F401
    import comfy.sample  # noqa: F401
    import comfy.sd  # noqa: F401

    return sys.modules["comfy"]


class CallCounter:
    """Forward pre-hook recording the images (batch x frames) of every UNet call: ComfyUI's UNet
    takes [B*F, C, h, w], diffusers' [B, F, C, h, w]."""

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()))
        self.batches.append(int(x.shape[:-3].numel()))


def measure(
    path: Path, reps: int, steps: int, frames: int, size: int, cfg: float, threads: int, sdpa: bool = False
) -> list[str]:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    comfy = import_comfy(sdpa)
    import comfy.ldm.modules.attention as comfy_attention
    from comfy_extras.nodes_video_model import SVD_img2vid_Conditioning, VideoLinearCFGGuidance

    from kfi_core.evaluation import sample_stock_img2vid
    from kfi_core.model import load_kfi_model

    # --- ComfyUI: its own loader, conditioning node and KSampler path
    model, _clip, vae, clip_vision = comfy.sd.load_checkpoint_guess_config(
        str(path), output_vae=True, output_clip=False, output_clipvision=True
    )[:4]
    model_type = type(model.model).__name__
    comfy_unet = model.model.diffusion_model
    comfy_params = parameter_count(comfy_unet)

    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.random((size, size, 3), dtype=np.float32))  # [H, W, 3] in 0..1
    with torch.no_grad():
        positive, negative, latent = SVD_img2vid_Conditioning().encode(
            clip_vision, pixels[None], vae, size, size, frames, 127, 7, 0.02
        )
    guided = VideoLinearCFGGuidance().patch(model, 1.0)[0]
    latent_image = comfy.sample.fix_empty_latent_channels(guided, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, 0)

    # --- KFI: the same file through its own loader
    kfi_model = load_kfi_model(str(path), num_frames=NUM_FRAMES_FILE)  # the UNet is frame-count agnostic
    components = {
        "unet": kfi_model.unet,
        "vae": kfi_model.vae,
        "image_encoder": kfi_model.image_encoder,
        "feature_extractor": kfi_model.feature_extractor,
        "scheduler": type("S", (), {"config": kfi_model.scheduler_config})(),
    }
    kfi_params = parameter_count(kfi_model.unet)
    image = pixels.permute(2, 0, 1).contiguous()  # [3, H, W]

    comfy_calls, kfi_calls = CallCounter(), CallCounter()
    comfy_unet.register_forward_pre_hook(comfy_calls, with_kwargs=True)
    kfi_model.unet.register_forward_pre_hook(kfi_calls, with_kwargs=True)
    finite = {}

    def run_comfy() -> float:
        timer = StepTimer()
        out = comfy.sample.sample(
            guided,
            noise,
            steps,
            cfg,
            "euler",
            "karras",
            positive,
            negative,
            latent_image,
            callback=lambda step, x0, x, total: timer(),
            disable_pbar=True,
            seed=0,
        )
        finite["comfy"] = bool(torch.isfinite(out).all())
        return timer.per_step()

    def run_kfi() -> float:
        timer = StepTimer()
        with torch.no_grad():
            out = sample_stock_img2vid(
                components,
                image,
                num_frames=frames,
                height=size,
                width=size,
                steps=steps,
                seed=0,
                min_guidance=1.0,
                max_guidance=cfg,
                fps=7,
                motion_bucket_id=127,
                noise_aug_strength=0.02,
                output_type="latent",
                callback=timer,
            )
        finite["kfi"] = bool(torch.isfinite(out).all())
        return timer.per_step()

    t0 = time.perf_counter()
    results = interleave({"kfi": run_kfi, "comfy": run_comfy}, reps=reps)
    loop_s = time.perf_counter() - t0
    runs = reps + 1
    comfy_batches = sorted(set(comfy_calls.batches))
    kfi_batches = sorted(set(kfi_calls.batches))
    comfy_dtype = str(next(comfy_unet.parameters()).dtype).replace("torch.", "")
    kfi_dtype = str(next(kfi_model.unet.parameters()).dtype).replace("torch.", "")
    return [
        f"file: {path.name}: UNet block_out_channels (320, 320, 320, 320), full SVD VAE, ViT-H/14 CLIP vision",
        f"UNet params: KFI (diffusers) {kfi_params / 1e6:.1f} M, ComfyUI ({model_type}) {comfy_params / 1e6:.1f} M; "
        f"VAE {parameter_count(kfi_model.vae) / 1e6:.1f} M, CLIP vision {parameter_count(kfi_model.image_encoder) / 1e6:.1f} M",
        f"UNet dtype ComfyUI {comfy_dtype}, KFI {kfi_dtype}; "
        f"attention: ComfyUI {comfy_attention.optimized_attention.__name__}, KFI "
        f"{type(next(iter(kfi_model.unet.attn_processors.values()))).__name__}",
        f"UNet calls per step: ComfyUI {len(comfy_calls.batches) / (runs * steps):.1f} (images per call {comfy_batches}), "
        f"KFI {len(kfi_calls.batches) / (runs * steps):.1f} (images per call {kfi_batches}) -> "
        f"CFG cond+uncond in one batch of 2 x {frames} frames on both; outputs finite: {finite}",
        f"{frames} frames {size}x{size} (latents {size // 8}x{size // 8}), euler, karras sigmas 0.002..700, {steps} steps, "
        f"cfg per frame linear 1.0 -> {cfg} (ComfyUI: VideoLinearCFGGuidance), {threads} thread(s); "
        f"timed loop {loop_s:.0f} s",
        ratio_line("s/step KFI sampler / ComfyUI KSampler (SVD)", results["kfi"], results["comfy"], "<= 1.05"),
        f"median s/step (for scale only, shared machine): KFI {median(results['kfi']):.2f}, "
        f"ComfyUI {median(results['comfy']):.2f}; peak RSS {peak_rss_gb():.1f} GB",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "kfi_bench",
        help="where the random-weight SVD file is built once and kept (~2 GB)",
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--size", type=int, default=64, help="frame width = height in pixels (multiple of 64)")
    parser.add_argument("--cfg", type=float, default=2.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--comfy-sdpa",
        action="store_true",
        help="ComfyUI with --use-pytorch-cross-attention (SDPA, as KFI) instead of its CPU default",
    )
    args = parser.parse_args()
    check_ram()
    start = time.perf_counter()
    path = args.cache_dir / FILE_NAME
    if not path.exists():
        build_file(path)
        check_ram()
    for line in measure(path, args.reps, args.steps, args.frames, args.size, args.cfg, args.threads, args.comfy_sdpa):
        print(line, flush=True)
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
