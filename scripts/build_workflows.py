"""Write the example workflows in workflows/ (UI format) from the live node schemas.

    .venv/bin/python scripts/build_workflows.py

Starts the test ComfyUI host with the pack (loopback), reads /object_info (plus the recorded
SAM2 schemas), lays each workflow out with tests/workflow_tools.Graph and writes
workflows/<name>.json. Widget values are the nodes' defaults unless set here, so the files stay
in step with the nodes. Thumbnails (<name>.jpg) come from the browser test's screenshots:

    KFI_SCREENSHOT_DIR=/tmp/shots .venv/bin/python -m pytest tests/test_browser.py
    .venv/bin/python scripts/build_workflows.py --thumbnails /tmp/shots
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from comfyhost import ComfyServer, make_base_dir  # noqa: E402
from workflow_tools import Graph, recorded_schemas  # noqa: E402

HF = "https://huggingface.co"
SVD_XT = {"name": "svd_xt.safetensors", "directory": "checkpoints",
          "url": f"{HF}/stabilityai/stable-video-diffusion-img2vid-xt/resolve/main/svd_xt.safetensors"}
FLUX_FILL = {"name": "flux1-fill-dev.safetensors", "directory": "diffusion_models",
             "url": f"{HF}/black-forest-labs/FLUX.1-Fill-dev/resolve/main/flux1-fill-dev.safetensors"}
FLUX_DEV = {"name": "flux1-dev.safetensors", "directory": "diffusion_models",
            "url": f"{HF}/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors"}
CLIP_L = {"name": "clip_l.safetensors", "directory": "text_encoders",
          "url": f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors"}
T5 = {"name": "t5xxl_fp16.safetensors", "directory": "text_encoders",
      "url": f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors"}
AE = {"name": "ae.safetensors", "directory": "vae",
      "url": f"{HF}/black-forest-labs/FLUX.1-schnell/resolve/main/ae.safetensors"}
ALIMAMA = {"name": "FLUX.1-dev-Controlnet-Inpainting-Beta.safetensors", "directory": "controlnet",
           "url": f"{HF}/alimama-creative/FLUX.1-dev-Controlnet-Inpainting-Beta/resolve/main/"
                  "diffusion_pytorch_model.safetensors"}
SAM2 = {"name": "sam2_hiera_base_plus.safetensors", "directory": "sam2",
        "url": f"{HF}/Kijai/sam2-safetensors/resolve/main/sam2_hiera_base_plus.safetensors"}

VIDEO = "kfi_sample.mp4"
MASK_VIDEO = "kfi_sample_mask.mp4"
COL = 360  # column width of the layout


def clip_and_model(g: Graph, y=0):
    """Load the clip and its mask video, and the KFI model: the start every workflow shares."""
    video = g.node("LoadVideo", (0, y), title="Load video", box=(300, 300), file=VIDEO)
    frames = g.node("GetVideoComponents", (COL, y), box=(260, 90))
    g.link(video, 0, frames, "video")
    model = g.node("LoadKFInpaintModel", (0, y + 720), title="Load KFI model", box=(320, 170), models=[SVD_XT],
                   model="checkpoints/svd_xt.safetensors")
    return frames, model


def mask_from_video(g: Graph, y, grow=4):
    mask_video = g.node("LoadVideo", (0, y), title="Load mask video (white = inpaint)", box=(300, 300),
                        file=MASK_VIDEO)
    mask_frames = g.node("GetVideoComponents", (COL, y), box=(260, 90))
    g.link(mask_video, 0, mask_frames, "video")
    to_mask = g.node("ImageToMask", (COL, y + 140), box=(260, 60), channel="red")
    g.link(mask_frames, "images", to_mask, "image")
    prep = g.node("KFIMaskPrepare", (2 * COL, y + 140), box=(300, 170), grow=grow)
    g.link(to_mask, 0, prep, "mask")
    return prep


def propagate_and_save(g: Graph, model, frames, mask, x, y, prefix, keyframes=None, indices=None):
    enc = g.node("SymmetricMaskEncode", (x, y), box=(320, 170))
    g.link(model, 0, enc, "kfi_model")
    g.link(frames, "images", enc, "images")
    g.link(mask, 0, enc, "mask")
    if keyframes is not None:
        g.link(keyframes[0], keyframes[1], enc, "keyframes")
    if indices is not None:
        g.link(indices[0], indices[1], enc, "keyframe_indices")
    sampler = g.node("KeyframePropagateSampler", (x + COL, y), box=(320, 420))
    g.link(model, 0, sampler, "kfi_model")
    g.link(enc, "condition", sampler, "condition")
    video = g.node("CreateVideo", (x + 2 * COL, y), box=(260, 90), fps=7.0)
    g.link(sampler, 0, video, "images")
    g.link(frames, "fps", video, "fps")
    save = g.node("SaveVideo", (x + 3 * COL, y), box=(320, 400), filename_prefix=f"video/{prefix}")
    g.link(video, 0, save, "video")
    preview = g.node("PreviewImage", (x, y + 240), title="What the model fills", box=(320, 260))
    g.link(enc, "masked_preview", preview, "images")
    return enc, sampler


def object_removal(g: Graph):
    frames, model = clip_and_model(g)
    mask = mask_from_video(g, 340)
    propagate_and_save(g, model, frames, mask, 3 * COL, 0, "kfi_removal")
    g.note(
        "KFI object removal (no keyframe)\n\n"
        "1. Load your clip and a mask video of the same size and frame count (white = remove). "
        "One mask image for all frames works too (Load Image as Mask).\n"
        "2. Load KFI model: svd_xt.safetensors in models/checkpoints (link in the node's properties), and a KFI "
        "adapter in models/kfi_adapters ('none' runs the lower-quality training-free mode).\n"
        "3. Mask Prepare grows the mask a little so shadows and edges go too.\n"
        "The model takes 25 frames at once (svd-xt); for longer clips see the long-clip workflow. Frame sides must "
        "be multiples of 64 (e.g. 1024x576).",
        (0, -280), box=(700, 240), title="About this workflow")


def _flux_fill_chain(g: Graph, crop, x, y, alimama=False):
    """FLUX inpainting of the cropped keyframe; returns the decoded image node."""
    if alimama:
        unet = g.node("UNETLoader", (x, y), box=(320, 90), models=[FLUX_DEV], unet_name=FLUX_DEV["name"])
    else:
        unet = g.node("UNETLoader", (x, y), box=(320, 90), models=[FLUX_FILL], unet_name=FLUX_FILL["name"])
    clip = g.node("DualCLIPLoader", (x, y + 130), box=(320, 130), models=[CLIP_L, T5],
                  clip_name1=CLIP_L["name"], clip_name2=T5["name"], type="flux")
    vae = g.node("VAELoader", (x, y + 300), box=(320, 60), models=[AE], vae_name=AE["name"])
    text = g.node("CLIPTextEncode", (x + COL, y), title="Describe the edit", box=(320, 160),
                  text="a small wooden boat on the water")
    g.link(clip, 0, text, "clip")
    guidance = g.node("FluxGuidance", (x + COL, y + 200), box=(300, 60), guidance=3.5 if alimama else 30.0)
    g.link(text, 0, guidance, "conditioning")
    negative = g.node("ConditioningZeroOut", (x + COL, y + 300), box=(300, 60))
    g.link(text, 0, negative, "conditioning")
    diff = g.node("DifferentialDiffusion", (x + COL, y + 380), box=(300, 80))
    g.link(unet, 0, diff, "model")
    if alimama:
        cn = g.node("ControlNetLoader", (x, y + 400), box=(320, 60), models=[ALIMAMA],
                    control_net_name=ALIMAMA["name"])
        apply = g.node("ControlNetInpaintingAliMamaApply", (x + 2 * COL, y + 300), box=(320, 200),
                       strength=0.9, end_percent=0.5)
        g.link(guidance, 0, apply, "positive")
        g.link(negative, 0, apply, "negative")
        g.link(cn, 0, apply, "control_net")
        g.link(vae, 0, apply, "vae")
        g.link(crop, "cropped_image", apply, "image")
        g.link(crop, "cropped_mask", apply, "mask")
        positive_src, negative_src = (apply, "positive"), (apply, "negative")
        latent = g.node("VAEEncode", (x + 2 * COL, y + 540), box=(260, 60))
        g.link(crop, "cropped_image", latent, "pixels")
        g.link(vae, 0, latent, "vae")
        latent_src = (latent, 0)
        sampler_widgets = dict(steps=28, cfg=1.0, denoise=1.0)
    else:
        cond = g.node("InpaintModelConditioning", (x + 2 * COL, y + 300), box=(320, 140))
        g.link(guidance, 0, cond, "positive")
        g.link(negative, 0, cond, "negative")
        g.link(vae, 0, cond, "vae")
        g.link(crop, "cropped_image", cond, "pixels")
        g.link(crop, "cropped_mask", cond, "mask")
        positive_src, negative_src, latent_src = (cond, "positive"), (cond, "negative"), (cond, "latent")
        sampler_widgets = dict(steps=20, cfg=1.0, denoise=1.0)
    ks = g.node("KSampler", (x + 3 * COL, y), box=(320, 260), **sampler_widgets)
    g.link(diff, 0, ks, "model")
    g.link(positive_src[0], positive_src[1], ks, "positive")
    g.link(negative_src[0], negative_src[1], ks, "negative")
    g.link(latent_src[0], latent_src[1], ks, "latent_image")
    decode = g.node("VAEDecode", (x + 3 * COL, y + 320), box=(260, 60))
    g.link(ks, 0, decode, "samples")
    g.link(vae, 0, decode, "vae")
    return decode


def creative_edit(g: Graph, alimama=False):
    frames, model = clip_and_model(g)
    mask = mask_from_video(g, 340, grow=0)
    pick = g.node("KFISelectKeyframe", (3 * COL, 340), box=(300, 130), index=0)
    g.link(frames, "images", pick, "images")
    g.link(mask, 0, pick, "mask")
    crop = g.node("KFICropForInpaint", (4 * COL, 340), box=(300, 150), size=768)
    g.link(pick, "keyframe", crop, "image")
    g.link(pick, "keyframe_mask", crop, "mask")
    edited = _flux_fill_chain(g, crop, 5 * COL, 340, alimama=alimama)
    stitch = g.node("KFIStitchCrop", (9 * COL, 340), box=(300, 150))
    g.link(pick, "keyframe", stitch, "image")
    g.link(edited, 0, stitch, "edited_crop")
    g.link(crop, "crop", stitch, "crop")
    g.link(pick, "keyframe_mask", stitch, "mask")
    edited_preview = g.node("PreviewImage", (9 * COL, 540), title="Edited keyframe", box=(300, 260))
    g.link(stitch, 0, edited_preview, "images")
    propagate_and_save(g, model, frames, mask, 10 * COL, 0, "kfi_edit", keyframes=(stitch, 0),
                       indices=(pick, "keyframe_indices"))
    variant = "the alimama inpainting ControlNet on FLUX.1-dev" if alimama else "FLUX.1 Fill"
    g.note(
        f"KFI creative edit with {variant}\n\n"
        "1. Pick the keyframe (index) and its mask out of the clip.\n"
        "2. Crop a square around the mask, scaled to 768 px (FLUX's best size), and inpaint it with the prompt.\n"
        "3. Stitch the edited crop back (feathered edge), then KFI carries the edit through every frame.\n"
        "Tip: erode SAM masks slightly (Mask Prepare, negative grow) so edges of the old object do not leak. "
        "All model files have download links in their loader's properties.",
        (0, -280), box=(760, 240), title="About this workflow")


def sam2_masks(g: Graph):
    frames, model = clip_and_model(g)
    sam = g.node("DownloadAndLoadSAM2Model", (0, 380), box=(320, 150), models=[SAM2],
                 model=SAM2["name"], segmentor="video", device="cuda", precision="bf16")
    points = g.node("PrimitiveString", (0, 560), title="Points on the object (first frame)", box=(320, 80),
                    value='[{"x": 40, "y": 38}]')
    seg = g.node("Sam2Segmentation", (COL, 380), box=(300, 200))
    g.link(sam, 0, seg, "sam2_model")
    g.link(frames, "images", seg, "image")
    g.link(points, 0, seg, "coordinates_positive")
    prep = g.node("KFIMaskPrepare", (2 * COL, 380), box=(300, 170), grow=4, temporal_dilation=1)
    g.link(seg, 0, prep, "mask")
    propagate_and_save(g, model, frames, prep, 3 * COL, 0, "kfi_sam2_removal")
    g.note(
        "KFI with masks from SAM2 (kijai/ComfyUI-segment-anything-2)\n\n"
        "1. Click points on the object in the first frame (x, y in pixels) or use a points editor node.\n"
        "2. SAM2's video segmentor tracks it through the clip.\n"
        "3. Mask Prepare: grow a few pixels for removal (shadows, edges); for background edits erode instead "
        "(negative grow) as the paper does for SAM masks.\n"
        "Install the SAM2 pack from the manager; its model downloads on first use.",
        (0, -280), box=(700, 240), title="About this workflow")


def long_clip(g: Graph):
    frames, model = clip_and_model(g)
    mask = mask_from_video(g, 340)
    enc, sampler = propagate_and_save(g, model, frames, mask, 3 * COL, 0, "kfi_long")
    schedule = g.node("LongVideoAnchorSchedule", (3 * COL, 560), box=(320, 260))
    g.link(enc, "condition", schedule, "condition")
    g.link(model, 0, schedule, "kfi_model")
    g.link(schedule, "schedule", sampler, "schedule")
    preview = g.node("PreviewImage", (4 * COL, 560), title="Schedule: rows are model calls", box=(420, 300))
    g.link(schedule, "preview", preview, "images")
    g.note(
        "KFI on a clip longer than the model's window (25 frames for svd-xt)\n\n"
        "The anchor schedule first generates sparse anchor frames spread over the whole clip, then fills the gaps "
        "between them, conditioned on the anchors at both ends (coarse to fine). It keeps content consistent "
        "where temporal MultiDiffusion loses details. The preview shows each stage: which frames are generated, "
        "known or context. Other strategies from the papers are in the dropdown.",
        (0, -280), box=(700, 240), title="About this workflow")


WORKFLOWS = {
    "kfi_object_removal": object_removal,
    "kfi_creative_edit_flux_fill": creative_edit,
    "kfi_creative_edit_flux_alimama": lambda g: creative_edit(g, alimama=True),
    "kfi_sam2_masks": sam2_masks,
    "kfi_long_clip": long_clip,
}


def build_all(schemas: dict, names=None) -> dict[str, dict]:
    out = {}
    for name, make in WORKFLOWS.items():
        if names and name not in names:
            continue
        g = Graph(schemas)
        make(g)
        out[name] = g.to_ui()
    return out


def live_schemas() -> dict:
    from kfi_core.sample import make_sample_clip
    from kfi_core.video_io import write_frames

    base = make_base_dir(Path(tempfile.mkdtemp(prefix="kfi-wf-")))
    clip = make_sample_clip()
    write_frames(clip["frames"], base / "input" / VIDEO)
    write_frames(clip["masks"].expand(-1, 3, -1, -1), base / "input" / MASK_VIDEO)
    with ComfyServer(base) as server:
        info = server.object_info()
    shutil.rmtree(base, ignore_errors=True)
    return {**info, **recorded_schemas()}


def make_thumbnail(screenshot: Path, out: Path, width: int = 640) -> None:
    """Crop the editor's chrome (side bar, tabs) off a screenshot and save a small JPEG."""
    from PIL import Image

    with Image.open(screenshot) as img:
        w, h = img.size
        graph = img.convert("RGB").crop((int(w * 0.04), int(h * 0.12), w, int(h * 0.92)))
        graph.thumbnail((width, width))
        graph.save(out, "JPEG", quality=85)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="workflow names to write")
    parser.add_argument("--thumbnails", default=None,
                        help="make <name>.jpg thumbnails from the browser test's <name>.png screenshots in this folder")
    args = parser.parse_args()
    for name, workflow in build_all(live_schemas(), args.only).items():
        path = ROOT / "workflows" / f"{name}.json"
        path.write_text(json.dumps(workflow, indent=1) + "\n")
        print(path)
        shot = Path(args.thumbnails or "") / f"{name}.png"
        if args.thumbnails and shot.is_file():
            make_thumbnail(shot, ROOT / "workflows" / f"{name}.jpg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
