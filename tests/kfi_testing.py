"""Helpers the tests share (imported by name: ``from kfi_testing import ...``; fixtures live in conftest.py)."""

from __future__ import annotations


def load_with_random_adapter(model_dir, rank: int = 4, std: float = 0.05, seed: int = 0):
    """The tiny model as after some training: 12-channel conv_in and LoRA with random (non-zero)
    weights, seeded, frozen. Tests of sampling and adapters use it instead of a trained adapter."""
    import torch

    from kfi_core.model.conv_in import expand_conv_in
    from kfi_core.model.loading import load_kfi_model
    from kfi_core.model.lora import add_lora, lora_state_dict

    model = load_kfi_model(model_dir)
    expand_conv_in(model.unet)
    add_lora(model.unet, rank=rank)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_state_dict(model.unet).values():
            p.copy_(torch.randn(p.shape, generator=g) * std)
        new = model.unet.conv_in.weight[:, 8:]
        new.copy_(torch.randn(new.shape, generator=g) * std)
    model.unet.requires_grad_(False)
    return model


def unet_forward(unet, latents):
    """One UNet call on latents [B, F, C, h, w] with fixed timestep, image embedding and added time ids."""
    import torch

    batch = latents.shape[0]
    image_embeddings = torch.randn(batch, 1, 32, generator=torch.Generator().manual_seed(1))  # [B, 1, D]
    added_time_ids = torch.tensor([[6.0, 127.0, 0.02]] * batch)  # fps - 1, motion bucket, noise aug
    with torch.no_grad():
        return unet(
            latents, torch.tensor([1.0]), encoder_hidden_states=image_embeddings, added_time_ids=added_time_ids
        ).sample


def pack_script(body: str) -> str:
    """A Python script that imports ComfyUI's modules (CPU) and this pack as ``kfi_pack`` the way ComfyUI loads a
    custom node folder, then runs ``body`` (for checks run in a fresh process: ``python -c``)."""
    from comfyhost import ROOT, host_dir

    return f"""
import asyncio, importlib.util, sys
sys.path.insert(0, {str(host_dir())!r})
import comfy.cli_args; comfy.cli_args.args.cpu = True
spec = importlib.util.spec_from_file_location("kfi_pack", {str(ROOT / "__init__.py")!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
pack = importlib.util.module_from_spec(spec); sys.modules["kfi_pack"] = pack; spec.loader.exec_module(pack)
{body}"""


# --------------------------------------------------------------------------- API-format prompt nodes for the server


def tiny_model_node() -> dict:
    """Load KFI Inpaint Model on the test host's tiny diffusers model, training-free (no adapter)."""
    return {
        "class_type": "LoadKFInpaintModel",
        "inputs": {"model": "diffusers/tiny-svd", "adapter": "none", "dtype": "auto", "frames": 0},
    }


def encode_node(model: str, images: list, mask: list, keyframe_indices: str = "", grow: int = 0) -> dict:
    """KFI Symmetric Mask Encode over the named outputs (``[node id, slot]``)."""
    inputs = {"kfi_model": [model, 0], "images": images, "mask": mask, "keyframe_indices": keyframe_indices}
    return {"class_type": "KFISymmetricMaskEncode", "inputs": {**inputs, "grow": grow}}


def sampler_node(model: str, condition: str, seed: int = 0, steps: int = 1, **extra) -> dict:
    """KFI Keyframe Propagate Sampler with SVD's defaults on every required input; ``extra`` adds or overrides."""
    inputs = {
        "kfi_model": [model, 0],
        "condition": [condition, 0],
        "seed": seed,
        "steps": steps,
        "sampler": "euler",
        "min_guidance": 1.0,
        "max_guidance": 3.0,
        "fps": 7,
        "motion_bucket_id": 127,
        "noise_aug_strength": 0.02,
        "composite": True,
        "feather": 0,
        "decode_chunk_size": 8,
    }
    return {"class_type": "KeyframePropagateSampler", "inputs": {**inputs, **extra}}
