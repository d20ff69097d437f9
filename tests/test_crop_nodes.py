"""KFI Crop For Inpaint and KFI Stitch Crop inside a real ComfyUI server (ComfyUI 0.3.75, CPU)."""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HEIGHT, WIDTH = 96, 160
MASK_BOX = (30, 50, 100, 130)  # top, bottom, left, right
FEATHER = 4
ONE_LEVEL = 1 / 255 + 1e-6  # SaveImage truncates x*255 to uint8: an unchanged pixel may come back one level lower


def _inputs(comfy_server) -> tuple[np.ndarray, np.ndarray]:
    """A smooth RGB image and a rectangle mask as PNGs in ComfyUI's input folder; both as float arrays."""
    y = np.linspace(0, 1, HEIGHT)[:, None, None]
    x = np.linspace(0, 1, WIDTH)[None, :, None]
    phase = np.array([0.0, 2.0, 4.0])[None, None, :]
    image = np.round((0.5 + 0.35 * np.sin(phase + 3 * x + 2 * y) * np.cos(1.5 * y - x)) * 255).astype(np.uint8)
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    top, bottom, left, right = MASK_BOX
    mask[top:bottom, left:right] = 255
    Image.fromarray(image, mode="RGB").save(comfy_server.base / "input" / "kfi_crop_image.png")
    Image.fromarray(mask, mode="L").save(comfy_server.base / "input" / "kfi_crop_mask.png")
    return image.astype(np.float32) / 255, mask.astype(np.float32) / 255


def _saved(comfy_server, entry, node) -> np.ndarray:
    images = entry["outputs"][node]["images"]
    return (
        np.stack(
            [np.asarray(Image.open(comfy_server.base / "output" / im["subfolder"] / im["filename"])) for im in images]
        ).astype(np.float32)
        / 255
    )


def _crop_prompt(size=64, stitch_size=None):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "kfi_crop_image.png"}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": "kfi_crop_mask.png", "channel": "red"}},
        "3": {
            "class_type": "KFICropForInpaint",
            "inputs": {"image": ["1", 0], "mask": ["2", 0], "size": size, "padding": 0.2},
        },
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},  # the 'edit'
        "5": {
            "class_type": "KFIStitchCrop",
            "inputs": {
                "image": ["1", 0],
                "edited_crop": ["4", 0],
                "crop": ["3", 2],
                "mask": ["2", 0],
                "feather": FEATHER,
            },
        },
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "kfi_stitched"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "kfi_cropped"}},
    }
    if stitch_size is not None:  # the edit comes back at another size
        prompt["8"] = {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["4", 0],
                "upscale_method": "bilinear",
                "width": stitch_size,
                "height": stitch_size,
                "crop": "disabled",
            },
        }
        prompt["5"]["inputs"]["edited_crop"] = ["8", 0]
    return prompt


def _execution_error(entry) -> dict:
    assert entry["status"]["status_str"] == "error", json.dumps(entry["status"])[:3000]
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors, entry["status"]["messages"]
    return errors[0]


def test_crop_edit_stitch_changes_only_the_feathered_mask(comfy_server):
    image, mask = _inputs(comfy_server)
    entry = comfy_server.run_prompt(_crop_prompt(size=64))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000]

    cropped = _saved(comfy_server, entry, "7")
    assert cropped.shape == (1, 64, 64, 3)
    out = _saved(comfy_server, entry, "6")[0]
    assert out.shape == image.shape

    # the feathered mask: at most FEATHER pixels (square distance) around the mask
    region = torch.from_numpy(mask > 0)[None, None].float()
    band = F.max_pool2d(region, 2 * FEATHER + 1, stride=1, padding=FEATHER)[0, 0].numpy() > 0
    keep = ~band
    assert keep.sum() > 0.8 * keep.size
    diff = np.abs(out - image)
    assert diff[keep].max() <= ONE_LEVEL, "pixels outside the feathered mask changed"
    # inside the mask: the inverted image (resized twice: a 42-pixel square at 64x64 and back)
    inside = mask > 0
    assert np.abs(out[inside] - (1 - image[inside])).mean() < 0.02
    visible = np.abs(1 - 2 * image).max(axis=-1) > 0.1  # pixels whose inversion shows (not all channels ~0.5)
    assert diff.max(axis=-1)[inside & visible].min() > 0.05, "every masked pixel is edited"
    # the box is square around the mask with 0.2 padding: 30 px wide -> 6 px on each side -> a 42-pixel square
    top, bottom, left, right = MASK_BOX
    expected = (
        np.asarray(
            Image.fromarray(
                (image[top - 11 : top - 11 + 42, left - 6 : right + 6] * 255).round().astype(np.uint8)
            ).resize((64, 64), Image.BICUBIC),
            dtype=np.float32,
        )
        / 255
    )
    assert np.abs(cropped[0] - expected).mean() < 0.01, "the crop shows the square around the mask"


def test_a_batch_and_a_mask_larger_than_the_frame(comfy_server):
    """Two frames, a full-frame mask: one square (larger than the frame, mirrored filler) for both frames."""
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 80, "height": 48, "batch_size": 2, "color": 0x204060}},
        "2": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 80, "height": 48}},
        "3": {
            "class_type": "KFICropForInpaint",
            "inputs": {"image": ["1", 0], "mask": ["2", 0], "size": 64, "padding": 0.2},
        },
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "5": {
            "class_type": "KFIStitchCrop",
            "inputs": {"image": ["1", 0], "edited_crop": ["4", 0], "crop": ["3", 2], "feather": 8},
        },
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "kfi_stitched_batch"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "kfi_cropped_batch"}},
    }
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000]
    assert _saved(comfy_server, entry, "7").shape == (2, 64, 64, 3)
    out = _saved(comfy_server, entry, "6")
    assert out.shape == (2, 48, 80, 3)
    want = 1 - np.array([0x20, 0x40, 0x60], dtype=np.float32) / 255
    assert np.abs(out - want).max() <= ONE_LEVEL, "the inverted square covers every pixel of the frame"


def test_bad_inputs_come_back_as_clear_execution_errors(comfy_server):
    _inputs(comfy_server)
    prompt = _crop_prompt()
    prompt["2"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": WIDTH, "height": HEIGHT}}
    error = _execution_error(comfy_server.run_prompt(prompt))
    assert error["node_type"] == "KFICropForInpaint"
    assert error["exception_type"].endswith("InputMismatchError")
    assert error["exception_message"].startswith("mask: the mask is empty")
    assert "Draw a mask" in error["exception_message"]

    error = _execution_error(comfy_server.run_prompt(_crop_prompt(size=64, stitch_size=72)))
    assert error["node_type"] == "KFIStitchCrop"
    assert "edited_crop: size 72x72 (width x height) does not match the crop's 64x64" in error["exception_message"]

    assert comfy_server.run_prompt(_crop_prompt(size=72))["status"]["status_str"] == "success"
