"""ComfyUI's own SVD classes, built with tiny configs, as an independent oracle for convert_sgm.

ComfyUI's checkpoint detection only recognises full-width SVD, so these helpers construct its
classes directly, the way comfy/sd.py and comfy/supported_models.py (SVD_img2vid) build them,
and load sgm weights (ComfyUI's own key names = sgm names minus the prefix) with strict=True.
Only tests import this module; kfi_core never imports comfy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from comfyhost import host_dir

COMFY_ROOT = host_dir()  # .venv/comfyui from `bash scripts/dev setup`, or KFI_COMFYUI_DIR


def import_comfy():
    """Import ComfyUI in-process (CPU only). Returns the comfy package."""
    if str(COMFY_ROOT) not in sys.path:
        sys.path.insert(0, str(COMFY_ROOT))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management: no GPU driver here
    import comfy.model_management  # noqa: F401

    return sys.modules["comfy"]


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def build_unet(sgm_sd: dict, num_head_channels: int):
    """comfy's video UNet (openaimodel.UNetModel with temporal resblocks/attention).

    The config comes from ComfyUI's own detect_unet_config (shapes and key names) plus the
    head width, exactly as supported_models.SVD_img2vid adds num_head_channels=64 for real SVD.
    """
    import_comfy()
    import torch
    from comfy import model_detection
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    prefix = "model.diffusion_model."
    config = model_detection.detect_unet_config(sgm_sd, prefix)
    assert config["use_temporal_resblock"] and config["use_temporal_attention"], config
    config.update(num_heads=-1, num_head_channels=num_head_channels, attn_precision=torch.float32)
    model = UNetModel(**config, device="cpu")
    model.load_state_dict(_strip(sgm_sd, prefix), strict=True)
    return model.eval(), config


def build_vae(sgm_sd: dict, ch: int, ch_mult: list, num_res_blocks: int, z_channels: int = 4):
    """comfy.sd.VAE's SVD branch: AutoencodingEngine(Encoder, temporal_ae.VideoDecoder)."""
    import_comfy()
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    encoder_config = {
        "double_z": True,
        "z_channels": z_channels,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": ch,
        "ch_mult": list(ch_mult),
        "num_res_blocks": num_res_blocks,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    decoder_config = dict(encoder_config, video_kernel_size=[3, 1, 1], alpha=0.0)
    model = AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": encoder_config},
        decoder_config={"target": "comfy.ldm.modules.temporal_ae.VideoDecoder", "params": decoder_config},
    )
    model.load_state_dict(_strip(sgm_sd, "first_stage_model."), strict=True)
    return model.eval()


def build_clip_vision(sgm_sd: dict, clip_config: dict, tmp_dir: Path):
    """comfy.clip_vision.ClipVisionModel from a JSON config, with the sgm keys converted by
    ComfyUI's own clip_vision.convert_to_transformers (the path load_checkpoint_guess_config
    takes with clip_vision_prefix "conditioner.embedders.0.open_clip.model.visual.")."""
    import_comfy()
    import torch
    from comfy import clip_vision

    prefix = "conditioner.embedders.0.open_clip.model.visual."
    json_path = Path(tmp_dir) / "clip_vision_tiny.json"
    json_path.write_text(json.dumps(dict(clip_config, model_type="clip_vision_model")))
    model = clip_vision.ClipVisionModel(str(json_path))
    # ComfyUI picks fp16 for text/vision encoders on CPU; compare in fp32 (cast before loading,
    # so no weight is rounded through fp16).
    model.model.float()
    model.dtype = torch.float32
    sd = clip_vision.convert_to_transformers({k: v for k, v in sgm_sd.items() if k.startswith(prefix)}, prefix)
    leftover = [k for k in sd if k.startswith(prefix)]
    assert not leftover, f"ComfyUI did not convert: {leftover[:5]}"
    model.model.load_state_dict(sd, strict=True)
    return model


def encode_image_embeds(clip_model, pixel_values):
    """Projected image embedding from already-normalised pixels (ClipVisionModel.encode_image
    without its resize/normalise step, so both sides get the same tensor)."""
    return clip_model.model(pixel_values=pixel_values, intermediate_output=-2)[2]
