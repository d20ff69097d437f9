"""Check that a full-width SVD single file written by kfi_core.model.single_file is recognised by ComfyUI.

Not a test (slow, ~4.6 GB file, ~15 GB RAM): builds SVD-XT-sized diffusers components with random
fp16 weights (no init cost: shapes from meta modules), converts them to one sgm-layout safetensors
file, then
  1. loads it back with kfi_core.model.single_file.load_single_file, configs inferred from shapes only
     (no kfi.* metadata), and compares the inferred configs with the real SVD configs;
  2. loads it through ComfyUI's own comfy.sd.load_checkpoint_guess_config (detection, UNet, VAE,
     CLIP vision) and reports what ComfyUI built and any missing/leftover keys it logged.

    .venv/bin/python scripts/check_fullsize_comfy.py [--comfyui .venv/comfyui] [--keep]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# stabilityai/stable-video-diffusion-img2vid-xt unet/vae/image_encoder configs (shape-relevant parts)
SVD_UNET = dict(
    sample_size=96,
    in_channels=8,
    out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
    up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768,
    layers_per_block=2,
    cross_attention_dim=1024,
    transformer_layers_per_block=1,
    num_attention_heads=(5, 10, 20, 20),
    num_frames=25,
)
SVD_VAE = dict(
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
SVD_CLIP = dict(
    hidden_size=1280,
    intermediate_size=5120,
    projection_dim=1024,
    num_hidden_layers=32,
    num_attention_heads=16,
    num_channels=3,
    image_size=224,
    patch_size=14,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
)


def random_state_dict(module, gen):
    import torch

    out = {}
    for k, v in module.state_dict().items():
        out[k] = (torch.randn(v.shape, generator=gen, dtype=torch.float32) * 0.02).half()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--comfyui",
        default=str(Path(__file__).resolve().parents[1] / ".venv" / "comfyui"),
        help="ComfyUI folder (read only)",
    )
    parser.add_argument("--out", default=None, help="where to write the file (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s: %(message)s")

    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from kfi_core.model import single_file as cs

    out_dir = Path(args.out or tempfile.mkdtemp(prefix="kfi-fullsize-"))
    path = out_dir / "svd_xt_random.safetensors"

    # 1. random full-width components -> one sgm file (no kfi.* metadata: as a file from elsewhere)
    t = time.time()
    with init_empty_weights():
        unet = UNetSpatioTemporalConditionModel(**SVD_UNET)
        vae = AutoencoderKLTemporalDecoder(**SVD_VAE)
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**SVD_CLIP))
    gen = torch.Generator().manual_seed(0)
    unet_sd, vae_sd, clip_sd = (random_state_dict(m, gen) for m in (unet, vae, clip))
    c = vae_sd["quant_conv.weight"].shape[0]
    vae_sd["quant_conv.weight"] = torch.eye(c, dtype=torch.float16)[:, :, None, None].contiguous()
    vae_sd["quant_conv.bias"] = torch.zeros(c, dtype=torch.float16)
    counts = {
        n: sum(v.numel() for v in sd.values())
        for n, sd in (("unet", unet_sd), ("vae", vae_sd), ("image_encoder", clip_sd))
    }
    sgm = cs.convert_diffusers_to_sgm(unet_sd, vae_sd, clip_sd)
    save_file({k: v.contiguous() for k, v in sgm.items()}, str(path))
    del sgm
    print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB, params {counts}) in {time.time() - t:.0f} s")

    # 2. KFI loads it back with configs inferred from shapes
    t = time.time()
    loaded = cs.load_single_file(path)
    ok = True
    for name, want_sd, module in (
        ("unet", unet_sd, loaded["unet"]),
        ("vae", vae_sd, loaded["vae"]),
        ("image_encoder", clip_sd, loaded["image_encoder"]),
    ):
        got = module.state_dict()
        same = sorted(got) == sorted(want_sd) and all(torch.equal(got[k], want_sd[k]) for k in want_sd)
        ok &= same
        print(f"kfi load_single_file: {name} weights identical: {same}")
    for key, want in SVD_UNET.items():
        got = loaded["unet"].config[key]
        norm = lambda v: list(v) if isinstance(v, (tuple, list)) else v
        if key == "transformer_layers_per_block":
            want = [want] * 4
        if norm(got) != norm(want):
            ok = False
            print(f"  unet config {key}: inferred {got}, SVD has {want}")
    for key, want in SVD_CLIP.items():
        if getattr(loaded["image_encoder"].config, key) != want:
            ok = False
            print(f"  image encoder config {key}: inferred {getattr(loaded['image_encoder'].config, key)}, SVD {want}")
    print(f"kfi: inferred configs match SVD-XT: {ok}; num_frames={loaded['num_frames']} ({time.time() - t:.0f} s)")
    del loaded, unet_sd, vae_sd, clip_sd

    # 3. ComfyUI's own loader
    sys.path.insert(0, args.comfyui)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401
    import comfy.sd

    warnings = []

    class Grab(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage()[:300])

    logging.getLogger().addHandler(Grab())
    t = time.time()
    model, clip_te, vae_c, clipvision = comfy.sd.load_checkpoint_guess_config(
        str(path), output_vae=True, output_clip=True, output_clipvision=True
    )[:4]
    print(f"ComfyUI load_checkpoint_guess_config: {time.time() - t:.0f} s")
    print(f"  model: {type(model.model).__name__} / config {type(model.model.model_config).__name__}")
    print(
        f"  vae: {type(vae_c.first_stage_model).__name__}, decoder {type(vae_c.first_stage_model.decoder).__name__}"
        if vae_c is not None
        else "  vae: None"
    )
    print(f"  clip vision: {type(clipvision.model).__name__ if clipvision is not None else None}")
    print(f"  text encoder: {clip_te}")
    print(f"  warnings logged: {len(warnings)}")
    for w in warnings[:10]:
        print(f"    {w}")
    if not args.keep:
        path.unlink()
    good = ok and type(model.model).__name__ == "SVD_img2vid" and clipvision is not None and vae_c is not None
    print("RESULT:", "OK" if good else "PROBLEM")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
