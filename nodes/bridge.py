"""All glue between ComfyUI's tensor layouts and kfi_core's.

ComfyUI: IMAGE float [B, H, W, C] in 0..1; MASK float [B, H, W] (a single mask may come as
[H, W]). kfi_core: frames float [F, C, H, W], masks [F, 1, H, W] with 1 = fill.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths
import torch


def image_to_frames(image: torch.Tensor, name: str = "images") -> torch.Tensor:
    """[B, H, W, C] -> [B, C, H, W] as a view (channels-last strides), not a copy: kfi_core reads such frames
    and gives results at their size back in the same layout, which :func:`frames_to_image` then returns as is.
    A 1080p clip of 300 frames is 7.5 GB a copy. An IMAGE is float: kfi_core also takes 8-bit frames (and gives
    8-bit results), which no ComfyUI node downstream would expect, so an 8-bit IMAGE is refused here."""
    if not image.is_floating_point():
        from kfi_core.errors import InputMismatchError

        raise InputMismatchError(
            f"{name}: a ComfyUI IMAGE holds float values in 0..1, got dtype {image.dtype}. Fix the node that made it "
            "(8-bit values divided by 255 give a float IMAGE)."
        )
    return image.movedim(-1, 1)


def frames_to_image(frames: torch.Tensor) -> torch.Tensor:
    """[F, C, H, W] -> [F, H, W, C], contiguous as ComfyUI's nodes expect; free for channels-last frames."""
    return frames.movedim(1, -1).contiguous()


def mask_to_masks(mask: torch.Tensor) -> torch.Tensor:
    # [H, W] or [B, H, W] -> [B, 1, H, W]
    if mask.ndim == 2:
        mask = mask[None]
    return mask[:, None].contiguous()


def masks_to_mask(masks: torch.Tensor) -> torch.Tensor:
    # [F, 1, H, W] -> [F, H, W]
    return masks[:, 0].contiguous()


# --------------------------------------------------------------------------- model files

ADAPTER_FOLDER = "kfi_adapters"
NONE = "none"
# The demo model shipped inside the pack (kfi_core/assets/demo_model): a 64x64, 8-frame toy trained on
# procedural clips. It lets every workflow run on a CPU without downloading weights; not for real footage.
BUNDLED_MODEL = "bundled/kfi-demo-64px"
BUNDLED_ADAPTER = "bundled/kfi-demo-64px.safetensors"  # tuned on keyframe edits
BUNDLED_REMOVAL_ADAPTER = "bundled/kfi-demo-64px-removal.safetensors"  # tuned on removal
_CHECKPOINT_PREFIX = "checkpoints/"
_DIFFUSERS_PREFIX = "diffusers/"


def register_folders() -> None:
    """Add ``models/kfi_adapters`` (safetensors only) to ComfyUI's model folders, once."""
    if ADAPTER_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[ADAPTER_FOLDER] = (
            [os.path.join(folder_paths.models_dir, ADAPTER_FOLDER)],
            {".safetensors"},
        )


def _diffusers_folders() -> list[str]:
    found = []
    for search_path in folder_paths.get_folder_paths("diffusers"):
        if not os.path.isdir(search_path):
            continue
        for root, dirs, files in os.walk(search_path, followlinks=True):
            if "model_index.json" in files:
                found.append(os.path.relpath(root, start=search_path).replace(os.sep, "/"))
                dirs.clear()  # a pipeline folder's sub-folders are its components
    return sorted(found)


def list_checkpoints() -> list[str]:
    """Dropdown entries of Load KFI Inpaint Model (checkpoint): file names in models/checkpoints, as ComfyUI's own
    checkpoint loaders list them, so a workflow's ``properties.models`` entry matches the widget value."""
    return [n for n in folder_paths.get_filename_list("checkpoints") if n.lower().endswith(".safetensors")]


def list_base_models() -> list[str]:
    """Dropdown entries of Load KFI Inpaint Model: the bundled demo model and folders in models/diffusers.

    Single files moved to Load KFI Inpaint Model (checkpoint); a ``checkpoints/<file>`` value saved by older
    workflows is still accepted (see :func:`is_legacy_checkpoint`)."""
    from kfi_core.bundled import demo_model_available

    bundled = [BUNDLED_MODEL] if demo_model_available() else []
    return bundled + [_DIFFUSERS_PREFIX + n for n in _diffusers_folders()]


def is_legacy_checkpoint(name: str) -> bool:
    """A ``checkpoints/<file>`` value from a workflow saved before the checkpoint loader existed."""
    return name.startswith(_CHECKPOINT_PREFIX) and name[len(_CHECKPOINT_PREFIX) :] in list_checkpoints()


def pickle_problem(input_name: str, name: str) -> str | None:
    """The library's message for a pickle file (.ckpt, .pt, ...) named by a forged or hand-edited prompt; the
    dropdowns never list one."""
    from kfi_core.errors import ModelFileError
    from kfi_core.model import check_not_pickle

    try:
        check_not_pickle(Path(name), input_name)
    except ModelFileError as err:
        return str(err)
    return None


def resolve_checkpoint(name: str) -> str:
    from kfi_core.errors import ModelFileError

    if name in list_checkpoints():
        return folder_paths.get_full_path_or_raise("checkpoints", name)
    raise ModelFileError(
        f"ckpt_name: {name!r} is not in models/checkpoints. Download svd_xt.safetensors (the link is in the node's "
        "properties) into models/checkpoints, then refresh the node (press R)."
    )


def _bundled_adapters() -> dict[str, Path]:
    """Dropdown name -> file of the demo model's adapters; empty where the pack's demo model is missing."""
    from kfi_core.bundled import DEMO_ADAPTER, DEMO_REMOVAL_ADAPTER, demo_model_available

    if not demo_model_available():
        return {}
    return {BUNDLED_ADAPTER: DEMO_ADAPTER, BUNDLED_REMOVAL_ADAPTER: DEMO_REMOVAL_ADAPTER}


def list_adapters() -> list[str]:
    register_folders()
    names = [f"{ADAPTER_FOLDER}/{n}" for n in folder_paths.get_filename_list(ADAPTER_FOLDER)]
    names += [f"loras/{n}" for n in folder_paths.get_filename_list("loras") if n.lower().endswith(".safetensors")]
    return [NONE] + names + list(_bundled_adapters())


def resolve_base_model(name: str) -> str:
    """Full path of a dropdown entry; only names from the lists are accepted (no free paths)."""
    from kfi_core.bundled import DEMO_MODEL_DIR, demo_model_available
    from kfi_core.errors import ModelFileError

    if name == BUNDLED_MODEL and demo_model_available():
        return str(DEMO_MODEL_DIR)
    if is_legacy_checkpoint(name):
        return resolve_checkpoint(name[len(_CHECKPOINT_PREFIX) :])
    if name.startswith(_DIFFUSERS_PREFIX):
        rel = name[len(_DIFFUSERS_PREFIX) :]
        if rel in _diffusers_folders():
            for search_path in folder_paths.get_folder_paths("diffusers"):
                path = os.path.join(search_path, rel)
                if os.path.isfile(os.path.join(path, "model_index.json")):
                    return path
    raise ModelFileError(
        f"model: {name!r} is not in models/diffusers. Put a diffusers folder in models/diffusers and refresh the "
        "node (press R), or load a single file (svd_xt.safetensors) with Load KFI Inpaint Model (checkpoint)."
    )


def resolve_adapter(name: str) -> str | None:
    from kfi_core.errors import ModelFileError

    if name == NONE:
        return None
    bundled = _bundled_adapters()
    if name in bundled:
        return str(bundled[name])
    folder, _, rel = name.partition("/")
    if folder in (ADAPTER_FOLDER, "loras") and rel in folder_paths.get_filename_list(folder):
        return folder_paths.get_full_path_or_raise(folder, rel)
    raise ModelFileError(
        f"adapter: {name!r} is not in models/{ADAPTER_FOLDER} or models/loras. Put the adapter .safetensors "
        "there and refresh the node, or choose 'none' for the training-free mode."
    )


# --------------------------------------------------------------------------- devices


def load_device():
    import comfy.model_management as mm

    return mm.get_torch_device()


def offload_device():
    import comfy.model_management as mm

    return mm.unet_offload_device()


def auto_dtype(device) -> str:
    """bf16 where the device supports it, else fp16 on GPUs, fp32 on CPU."""
    import comfy.model_management as mm

    if device.type == "cpu":
        return "fp32"
    return "bf16" if mm.should_use_bf16(device) else "fp16"


# --------------------------------------------------------------------------- running


def parse_keyframe_indices(text: str) -> list[int]:
    """'' -> []; '0, 40' -> [0, 40] (errors from kfi_core name the input)."""
    from kfi_core.media import parse_indices

    return [] if not str(text).strip() else parse_indices(text)


def progress_callback(total_steps: int, preview_frame: int | None = None):
    """A kfi_core step callback driving ComfyUI's progress bar, with a latent preview.

    ``total_steps`` is a first guess; the library's callbacks carry the real total (all windows
    of a long-video schedule). ComfyUI's progress hook also checks for Cancel, so a cancelled run
    stops within one step.
    """
    import comfy.latent_formats
    import comfy.model_management as mm
    import comfy.utils
    import latent_preview

    bar = comfy.utils.ProgressBar(total_steps)
    previewer = latent_preview.get_previewer(mm.get_torch_device(), comfy.latent_formats.SD15())
    state = {"done": 0}

    def callback(info: dict) -> None:
        state["done"] = int(info["i"]) + 1
        total = int(info.get("total", total_steps))
        preview = None
        if previewer is not None:
            denoised = info["denoised"]  # [1, F, C, h, w]
            frame = denoised.shape[1] // 2 if preview_frame is None else preview_frame
            preview = previewer.decode_latent_to_preview_image("JPEG", denoised[:, frame].float())
        bar.update_absolute(state["done"], total, preview)

    return callback


def check_interrupted() -> None:
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


def offload_mode(choice: str, kfi=None, settings=None, clip=None, size="native", crop="none") -> str:
    """The offload a run uses: the node's choice, or for ``auto`` what ComfyUI's memory flags say (--lowvram and
    --novram: sequential), else ``model`` where the plan's estimate at the size the run works at (``size`` and
    ``crop`` as the sampler's) exceeds the free device memory, else none."""
    import comfy.model_management as mm

    if choice != "auto":
        return choice
    if mm.vram_state in (mm.VRAMState.LOW_VRAM, mm.VRAMState.NO_VRAM):
        return "sequential"
    device = mm.get_torch_device()
    if kfi is None or settings is None or clip is None or device.type != "cuda":
        return "none"
    from kfi_core.inference import plan_memory
    from kfi_core.inference.working_size import run_size

    height, width = run_size(kfi, clip, size, crop)
    chunk = settings.decode_chunk_size
    plan = plan_memory(kfi, kfi.num_frames, height, width, dtype=kfi.dtype, decode_chunk_size=chunk)
    return "model" if plan.peak > mm.get_free_memory(device) + _weights_bytes(kfi) else "none"


def _weights_bytes(kfi) -> int:
    modules = (kfi.unet, kfi.vae, kfi.image_encoder)
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters() if p.device.type != "meta")


class on_device:
    """Place a KfiModel on ComfyUI's torch device for a run (with the ``offload`` of :func:`offload_mode`), and back
    to ComfyUI's offload device after, every weight real again.

    Frees room first through ComfyUI's model management (other models are offloaded as needed).
    """

    def __init__(self, kfi, offload: str = "auto", settings=None, clip=None, size="native", crop="none"):
        self.kfi, self.offload, self.settings, self.clip = kfi, offload, settings, clip
        self.size, self.crop = size, crop

    def __enter__(self):
        import logging

        import comfy.model_management as mm

        from kfi_core.model import place_model

        device = mm.get_torch_device()
        mode = offload_mode(self.offload, self.kfi, self.settings, self.clip, self.size, self.crop)
        if mode != "none":
            logging.getLogger("kfi_core").info("KFI: offload %s (weights on the host, %s computing)", mode, device)
        if device.type != "cpu":
            mm.free_memory(_weights_bytes(self.kfi) * (2 if mode == "none" else 1), device)
        place_model(self.kfi, dtype=self.kfi.dtype, vae_dtype=self.kfi.vae_dtype, device=device, offload=mode)
        return self.kfi

    def __exit__(self, *exc):
        import comfy.model_management as mm

        from kfi_core.model import place_model

        place_model(self.kfi, dtype=self.kfi.dtype, vae_dtype=self.kfi.vae_dtype, device=mm.unet_offload_device())
        mm.soft_empty_cache()
        return False


# --------------------------------------------------------------------------- schedules


def schedule_frames(frames: int, keyframe_indices: str, condition=None, images=None) -> tuple[int, list[int]]:
    """Frame count and keyframes for a schedule: from the condition, else the images, else the widgets."""
    from kfi_core.errors import InputMismatchError

    if condition is not None:
        return condition.num_frames, list(condition.keyframe_indices)
    keyframes = parse_keyframe_indices(keyframe_indices)
    if images is not None:
        return int(images.shape[0]), keyframes
    if frames < 1:
        raise InputMismatchError(
            "frames: 0 and nothing connected. Connect the condition (or the images), or set frames to the clip's "
            "length."
        )
    return int(frames), keyframes


def schedule_window(window: int, kfi_model=None) -> int:
    from kfi_core.errors import InputMismatchError

    if window:
        if kfi_model is not None and window > kfi_model.num_frames:
            raise InputMismatchError(
                f"window: {window} frames, but the model ({kfi_model.variant}) takes at most {kfi_model.num_frames}. "
                "Use 0 for the model's frame count."
            )
        return int(window)
    if kfi_model is None:
        raise InputMismatchError(
            "window: 0 means 'the model's frame count', but no model is connected. Connect "
            "kfi_model or give the window size."
        )
    return int(kfi_model.num_frames)


def array_to_image(array):
    """uint8 [H, W, 3] numpy -> IMAGE [1, H, W, 3]."""
    import torch

    return torch.from_numpy(array.copy()).float().div(255.0)[None]
