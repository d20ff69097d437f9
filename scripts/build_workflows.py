"""Write the example workflows in workflows/ (UI format) from the live node schemas.

    .venv/bin/python scripts/build_workflows.py

Starts the test ComfyUI host with the pack (loopback), reads /object_info (plus the recorded
SAM2 schemas), lays each workflow out with tests/workflow_tools.Graph and writes
workflows/<name>.json. Widget values are the nodes' defaults unless set here, so the files stay
in step with the nodes. File names are the template browser's titles (ComfyUI 0.3.75's frontend shows a
custom node pack's template by its file name only). Every workflow starts from KFI Sample Clip (the pack's
own sample), so none names a file in ComfyUI's input folder. Thumbnails (<name>.jpg: input frames above,
result frames below) come from a real run of the bundled demo model on the sample:

    .venv/bin/python scripts/build_workflows.py --thumbnails
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

from kfi_core.bundled import DEMO_SAMPLING, SAMPLE_FPS, SAMPLE_KEYFRAME_INDEX  # noqa: E402

BUNDLED_ADAPTER = "bundled/kfi-demo-64px.safetensors"  # nodes/bridge.py's names for the demo model's adapters
BUNDLED_REMOVAL_ADAPTER = "bundled/kfi-demo-64px-removal.safetensors"

HF = "https://huggingface.co"
SVD_XT = {
    "name": "svd_xt.safetensors",
    "directory": "checkpoints",
    "url": f"{HF}/stabilityai/stable-video-diffusion-img2vid-xt/resolve/main/svd_xt.safetensors",
}
FLUX_FILL = {
    "name": "flux1-fill-dev.safetensors",
    "directory": "diffusion_models",
    "url": f"{HF}/black-forest-labs/FLUX.1-Fill-dev/resolve/main/flux1-fill-dev.safetensors",
}
FLUX_DEV = {
    "name": "flux1-dev.safetensors",
    "directory": "diffusion_models",
    "url": f"{HF}/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",
}
CLIP_L = {
    "name": "clip_l.safetensors",
    "directory": "text_encoders",
    "url": f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
}
T5 = {
    "name": "t5xxl_fp16.safetensors",
    "directory": "text_encoders",
    "url": f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
}
AE = {
    "name": "ae.safetensors",
    "directory": "vae",
    "url": f"{HF}/black-forest-labs/FLUX.1-schnell/resolve/main/ae.safetensors",
}
ALIMAMA = {
    "name": "FLUX.1-dev-Controlnet-Inpainting-Beta.safetensors",
    "directory": "controlnet",
    "url": f"{HF}/alimama-creative/FLUX.1-dev-Controlnet-Inpainting-Beta/resolve/main/"
    "diffusion_pytorch_model.safetensors",
}
SAM2 = {
    "name": "sam2_hiera_base_plus.safetensors",
    "directory": "sam2",
    "url": f"{HF}/Kijai/sam2-safetensors/resolve/main/sam2_hiera_base_plus.safetensors",
}

COL = 420  # column pitch of the layout; links only join neighbouring columns or cross empty space
CORE = {"cnr_id": "comfy-core", "ver": "0.3.75"}
SAM2_PACK = {"cnr_id": "comfyui-segment-anything-2", "ver": "1.0.0"}  # kijai/ComfyUI-segment-anything-2
DEMO_REMOVAL = "KFI demo 1 - remove an object (CPU, bundled model)"
DEMO_EDIT = "KFI demo 2 - carry a keyframe edit (CPU, bundled model)"
REMOVAL = "KFI 3 - object removal (SVD-XT)"
FLUX_FILL_EDIT = "KFI 4 - keyframe edit with FLUX Fill (SVD-XT)"
ALIMAMA_EDIT = "KFI 5 - keyframe edit with FLUX alimama ControlNet (SVD-XT)"
SAM2_MASKS = "KFI 6 - SAM2 masks and removal (SVD-XT)"
LONG_CLIP = "KFI 7 - long clip with the anchor schedule (SVD-XT)"
DEMO_NAMES = (DEMO_REMOVAL, DEMO_EDIT)
SWITCH_TO_SVD = (
    "To use Stable Video Diffusion instead: replace Load KFI Inpaint Model by Load KFI Inpaint Model "
    "(checkpoint) with svd_xt.safetensors in models/checkpoints (see the 'object removal (SVD-XT)' "
    "workflow), set its adapter, and the sampler's guidance back to 1 -> 3 and color_match to none."
)
OWN_INPUT = (
    "Your own clip: replace KFI Sample Clip by Load Video + Get Video Components, and give the masks "
    "from a mask video (Load Video, Image To Mask) or one Load Image as Mask for every frame. Any size (1920x1080 "
    "too, no resize node): the sampler works at the model's 1024x576 (working_size native) and gives the frames "
    "back at their size, pixels outside the mask untouched; crop 'mask' fills a small hole at full detail."
)


def pack_of(schemas: dict, version: str):
    """Node type -> the {"cnr_id", "ver"} ComfyUI saves in a node's properties, so the missing-nodes dialog and
    ComfyUI Manager know which pack to install."""

    def pack(type_: str):
        module = schemas[type_].get("python_module") or ""
        if type_ in ("DownloadAndLoadSAM2Model", "Sam2Segmentation"):
            return SAM2_PACK
        if module.startswith("custom_nodes."):
            return {"cnr_id": "comfyui-kfi", "ver": version}
        return CORE

    return pack


def inputs(g: Graph, x=0, y=360):
    """KFI Sample Clip: frames, masks and an edited keyframe from the pack's own files."""
    clip = g.node("KFISampleClip", (x, y), title="KFI Sample Clip (swap for Load Video)", box=(340, 180))
    g.group("Input", [clip], color="#3f789e")
    return clip


def demo_loader(g: Graph, adapter: str):
    model = g.node(
        "LoadKFInpaintModel",
        (0, 0),
        title="Load KFI model (bundled 64 px demo)",
        box=(340, 190),
        model="bundled/kfi-demo-64px",
        adapter=adapter,
    )
    g.group("Model", [model], color="#8a6a2f")
    return model


def svd_loader(g: Graph):
    model = g.node(
        "LoadKFInpaintCheckpoint",
        (0, 0),
        title="Load KFI model (svd_xt)",
        box=(340, 190),
        models=[SVD_XT],
        ckpt_name=SVD_XT["name"],
    )
    g.group("Model", [model], color="#8a6a2f")
    return model


def encode(g: Graph, model, clip, mask, pos, keyframes=None, indices=None):
    enc = g.node("KFISymmetricMaskEncode", pos, box=(340, 190))
    g.link(model, 0, enc, "kfi_model")
    g.link(clip, "images", enc, "images")
    g.link(mask[0], mask[1], enc, "mask")
    if keyframes is not None:
        g.link(keyframes[0], keyframes[1], enc, "keyframes")
    if indices is not None:
        g.link(indices[0], indices[1], enc, "keyframe_indices")
    return enc


def sampler(g: Graph, model, enc, pos, demo=False):
    settings = dict(DEMO_SAMPLING) if demo else {}
    node = g.node("KeyframePropagateSampler", pos, box=(340, 690), **settings)
    g.link(model, 0, node, "kfi_model")
    g.link(enc, "condition", node, "condition")
    return node


def note(g: Graph, text: str, width=1000):
    g.note(text, (0, -330), box=(width, 240), title="About this workflow")


def demo(g: Graph, edit: bool):
    """The bundled demo model on the sample: removal, or carrying the bundled keyframe edit."""
    model = demo_loader(g, BUNDLED_ADAPTER if edit else BUNDLED_REMOVAL_ADAPTER)
    clip = inputs(g)
    enc = encode(
        g,
        model,
        clip,
        (clip, "mask"),
        (COL, 360),
        keyframes=(clip, "edited_keyframe") if edit else None,
        indices=(clip, "keyframe_indices") if edit else None,
    )
    samp = sampler(g, model, enc, (2 * COL, 0), demo=True)
    g.group("Propagation", [enc, samp], color="#2f7a4f")
    if edit:
        shown = g.node("PreviewImage", (COL, 820), title="Edited keyframe (frame 0, ball recoloured)", box=(340, 300))
        g.link(clip, "edited_keyframe", shown, "images")
        g.group("Keyframe edit", [shown], color="#7a2f6b")
    masked = g.node("KFIConditionPreview", (2 * COL, 820), title="Input (hole in black)", box=(340, 300))
    g.link(enc, "condition", masked, "condition")
    result = g.node("PreviewImage", (3 * COL, 820), title="Result", box=(340, 300))
    g.link(samp, "images", result, "images")
    g.group("Output: input | result", [masked, result], color="#444")
    task = (
        "carries the edited keyframe (frame 0, the red ball painted blue) into the rest of the clip, with the "
        "demo model's edit adapter. Expect a weak carry: this small model keeps the ball bluish next to the "
        "keyframe and lets it fade towards the background further on (docs/DEMO_MODEL.md has the numbers)"
        if edit
        else "removes the red ball from the sample clip, with the demo model's removal adapter"
    )
    note(
        g,
        f"KFI demo: {task}. Press Run: it needs no download and takes about a minute on a CPU.\n\n"
        "This is the 64 px demo model that ships with the pack (trained on toy clips; 8 frames of 64x64): it "
        "shows the pipeline, it is not for real footage. Sampler settings are the demo model's (python -m "
        "kfi_core demo): guidance 1.0 on every frame, affine colour matching.\n\n"
        f"{SWITCH_TO_SVD}\n{OWN_INPUT}",
    )


def output(g: Graph, samp, col: int, prefix: str, extra=()):
    video = g.node("CreateVideo", (col * COL, 0), box=(300, 90), fps=SAMPLE_FPS)
    g.link(samp, "images", video, "images")
    result = g.node("PreviewImage", (col * COL, 180), title="Result", box=(340, 300))
    g.link(samp, "images", result, "images")
    save = g.node("SaveVideo", ((col + 1) * COL, 0), box=(340, 400), filename_prefix=f"video/{prefix}")
    g.link(video, 0, save, "video")
    g.group("Output", [video, result, save, *extra], color="#444")


def object_removal(g: Graph):
    model = svd_loader(g)
    clip = inputs(g)
    prep = g.node("KFIMaskPrepare", (COL, 640), title="Mask Prepare (grow 4 px)", box=(340, 170), grow=4)
    g.link(clip, "mask", prep, "mask")
    g.group("Masks", [prep], color="#a1309b")
    enc = encode(g, model, clip, (prep, 0), (2 * COL, 360))
    samp = sampler(g, model, enc, (3 * COL, 0))
    g.group("Propagation", [enc, samp], color="#2f7a4f")
    output(g, samp, 4, "kfi_removal")
    note(
        g,
        "KFI object removal on Stable Video Diffusion XT (no keyframe)\n\n"
        "Needs svd_xt.safetensors (9.6 GB) in models/checkpoints: press Run and the missing-models dialog offers "
        "the download, or get it from the link in the loader's properties. Adapter 'none' runs the "
        "training-free mode; a KFI adapter (models/kfi_adapters) fills better.\n"
        "Mask Prepare grows the mask a little so shadows and edges go too; to see what the model must fill, add KFI "
        "Condition Preview after the Encode node (a copy of the clip). The model takes 25 frames at once; "
        f"longer clips: the long-clip workflow.\n{OWN_INPUT}",
    )


def _flux_models(g: Graph, alimama: bool, y: int):
    """Text encoders and the FLUX model, in the first two columns of the FLUX lane."""
    clip_loader = g.node(
        "DualCLIPLoader",
        (0, y),
        box=(340, 130),
        models=[CLIP_L, T5],
        clip_name1=CLIP_L["name"],
        clip_name2=T5["name"],
        type="flux",
    )
    unet_file = FLUX_DEV if alimama else FLUX_FILL
    unet = g.node("UNETLoader", (0, y + 400), box=(340, 90), models=[unet_file], unet_name=unet_file["name"])
    text = g.node(
        "CLIPTextEncode",
        (COL, y),
        title="Describe the edit",
        box=(340, 160),
        text="a blue ball" if not alimama else "a blue rubber ball",
    )
    g.link(clip_loader, 0, text, "clip")
    guidance = g.node("FluxGuidance", (2 * COL, y), box=(300, 60), guidance=3.5 if alimama else 30.0)
    g.link(text, 0, guidance, "conditioning")
    negative = g.node("ConditioningZeroOut", (2 * COL, y + 110), box=(300, 50))
    g.link(text, 0, negative, "conditioning")
    vae = g.node("VAELoader", (2 * COL, y + 210), box=(300, 60), models=[AE], vae_name=AE["name"])
    return [clip_loader, unet, text, guidance, negative, vae], unet, guidance, negative, vae


def _flux_conditioning(g: Graph, crop, guidance, negative, vae, alimama: bool, y: int):
    """FLUX Fill's InpaintModelConditioning, or the alimama ControlNet: positive, negative, latent sources."""
    if not alimama:
        cond = g.node("InpaintModelConditioning", (3 * COL, y), box=(340, 140))
        for src, name in (
            (guidance, "positive"),
            (negative, "negative"),
            (vae, "vae"),
            ((crop, "cropped_image"), "pixels"),
            ((crop, "cropped_mask"), "mask"),
        ):
            g.link(*(src if isinstance(src, tuple) else (src, 0)), cond, name)
        return [cond], (cond, "positive"), (cond, "negative"), (cond, "latent")
    cn = g.node(
        "ControlNetLoader", (2 * COL, y + 320), box=(300, 60), models=[ALIMAMA], control_net_name=ALIMAMA["name"]
    )
    apply = g.node("ControlNetInpaintingAliMamaApply", (3 * COL, y), box=(340, 200), strength=0.9, end_percent=0.5)
    for src, name in (
        (guidance, "positive"),
        (negative, "negative"),
        (cn, "control_net"),
        (vae, "vae"),
        ((crop, "cropped_image"), "image"),
        ((crop, "cropped_mask"), "mask"),
    ):
        g.link(*(src if isinstance(src, tuple) else (src, 0)), apply, name)
    latent = g.node("VAEEncode", (3 * COL, y + 300), box=(300, 50))
    g.link(crop, "cropped_image", latent, "pixels")
    g.link(vae, 0, latent, "vae")
    return [cn, apply, latent], (apply, "positive"), (apply, "negative"), (latent, 0)


def flux_edit_lane(g: Graph, crop, alimama: bool, y: int):
    """FLUX inpainting of the cropped keyframe, laid out below the main lane; returns the decoded image node."""
    members, unet, guidance, negative, vae = _flux_models(g, alimama, y)
    cond_nodes, positive, negative_src, latent = _flux_conditioning(g, crop, guidance, negative, vae, alimama, y)
    diff = g.node("DifferentialDiffusion", (3 * COL, y + 420), box=(300, 60))
    g.link(unet, 0, diff, "model")
    ks = g.node(
        "KSampler",
        (4 * COL, y),
        box=(340, 270),
        **(dict(steps=28, cfg=1.0, denoise=1.0) if alimama else dict(steps=20, cfg=1.0, denoise=1.0)),
    )
    g.link(diff, 0, ks, "model")
    g.link(*positive, ks, "positive")
    g.link(*negative_src, ks, "negative")
    g.link(*latent, ks, "latent_image")
    vae2 = g.node("VAELoader", (4 * COL, y + 380), box=(300, 60), models=[AE], vae_name=AE["name"])
    decode = g.node("VAEDecode", (5 * COL, y), box=(260, 50))
    g.link(ks, 0, decode, "samples")
    g.link(vae2, 0, decode, "vae")
    g.group(
        "FLUX Fill inpaints the keyframe crop"
        if not alimama
        else "FLUX.1-dev + alimama ControlNet inpaint the keyframe crop",
        members + cond_nodes + [diff, ks, vae2, decode],
        color="#7a2f6b",
    )
    return decode


def creative_edit(g: Graph, alimama=False):
    model = svd_loader(g)
    clip = inputs(g, y=320)
    pick = g.node("KFISelectKeyframe", (COL, 600), box=(300, 130), index=SAMPLE_KEYFRAME_INDEX)
    g.link(clip, "images", pick, "images")
    g.link(clip, "mask", pick, "mask")
    crop = g.node("KFICropForInpaint", (2 * COL, 800), box=(300, 150), size=768)
    g.link(pick, "keyframe", crop, "image")
    g.link(pick, "keyframe_mask", crop, "mask")
    edited = flux_edit_lane(g, crop, alimama, y=1220)
    stitch = g.node("KFIStitchCrop", (6 * COL, 600), box=(300, 150))
    g.link(pick, "keyframe", stitch, "image")
    g.link(edited, 0, stitch, "edited_crop")
    g.link(crop, "crop", stitch, "crop")
    g.link(pick, "keyframe_mask", stitch, "mask")
    shown = g.node("PreviewImage", (7 * COL, 840), title="Edited keyframe", box=(300, 260))
    g.link(stitch, 0, shown, "images")
    g.group("Keyframe edit", [pick, crop, stitch, shown], color="#a1309b")
    enc = encode(
        g, model, clip, (clip, "mask"), (7 * COL, 290), keyframes=(stitch, 0), indices=(pick, "keyframe_indices")
    )
    samp = sampler(g, model, enc, (8 * COL, -260))
    g.group("Propagation", [enc, samp], color="#2f7a4f")
    output(g, samp, 9, "kfi_edit")
    variant = "the alimama inpainting ControlNet on FLUX.1-dev" if alimama else "FLUX.1 Fill"
    note(
        g,
        f"KFI keyframe edit with {variant}, carried through the clip by KFI on SVD-XT\n\n"
        "1. Select Keyframe takes a frame and its mask out of the clip. 2. A square around the mask, scaled to "
        "768 px (FLUX's best size), is inpainted with the prompt. 3. The edited crop is stitched back and KFI "
        "carries the edit through every frame.\nEvery model file has its download link: press Run and the "
        "missing-models dialog offers them (FLUX needs about 24 GB of GPU memory at fp16). Tip: erode SAM "
        f"masks a little (Mask Prepare, negative grow) so the old object's edges do not leak.\n{OWN_INPUT}",
        width=1200,
    )


def sam2_masks(g: Graph):
    model = svd_loader(g)
    clip = inputs(g)
    sam = g.node(
        "DownloadAndLoadSAM2Model",
        (0, 660),
        box=(340, 150),
        models=[SAM2],
        model=SAM2["name"],
        segmentor="video",
        device="cuda",
        precision="bf16",
    )
    points = g.node(
        "PrimitiveString",
        (0, 880),
        title="Points on the object (first frame)",
        box=(340, 80),
        value='[{"x": 14, "y": 38}]',
    )
    seg = g.node("Sam2Segmentation", (COL, 660), box=(300, 200))
    g.link(sam, 0, seg, "sam2_model")
    g.link(clip, "images", seg, "image")
    g.link(points, 0, seg, "coordinates_positive")
    prep = g.node("KFIMaskPrepare", (2 * COL, 660), box=(340, 170), grow=4, temporal_dilation=1)
    g.link(seg, 0, prep, "mask")
    g.group("Masks from SAM2", [sam, points, seg, prep], color="#a1309b")
    enc = encode(g, model, clip, (prep, 0), (3 * COL, 360))
    samp = sampler(g, model, enc, (4 * COL, 0))
    g.group("Propagation", [enc, samp], color="#2f7a4f")
    output(g, samp, 5, "kfi_sam2_removal")
    note(
        g,
        "KFI object removal with masks from SAM2 (kijai/ComfyUI-segment-anything-2)\n\n"
        "1. Give points on the object in the first frame (x, y in pixels), or use a points editor node. "
        "2. SAM2's video segmentor tracks it through the clip. 3. Mask Prepare grows the masks a few pixels for "
        "removal (shadows, edges); for background edits erode instead (negative grow).\n"
        "Install the SAM2 pack from the Manager (the missing-nodes dialog offers it); its model downloads on "
        "first use. svd_xt.safetensors: the missing-models dialog offers it.\n"
        "Your own clip: replace KFI Sample Clip by Load Video + Get Video Components.",
    )


def long_clip(g: Graph):
    model = svd_loader(g)
    clip = inputs(g)
    prep = g.node("KFIMaskPrepare", (COL, 640), title="Mask Prepare (grow 4 px)", box=(340, 170), grow=4)
    g.link(clip, "mask", prep, "mask")
    g.group("Masks", [prep], color="#a1309b")
    enc = encode(g, model, clip, (prep, 0), (2 * COL, 100))  # high: the model's link to the schedule passes below
    schedule = g.node("LongVideoAnchorSchedule", (3 * COL, 640), box=(340, 290))
    g.link(enc, "condition", schedule, "condition")
    samp = sampler(g, model, enc, (4 * COL, 0))
    g.link(schedule, "schedule", samp, "schedule")
    g.link(model, 0, schedule, "kfi_model")
    g.group("Propagation (anchor schedule)", [enc, schedule, samp], color="#2f7a4f")
    shown = g.node("PreviewImage", (5 * COL, 800), title="Schedule: rows are model calls", box=(400, 300))
    g.link(schedule, "preview", shown, "images")
    output(g, samp, 5, "kfi_long", extra=[shown])
    note(
        g,
        "KFI on a clip longer than the model's window (25 frames for svd-xt)\n\n"
        "The anchor schedule first generates sparse anchor frames spread over the whole clip, then fills the gaps "
        "between them, conditioned on the anchors at both ends (coarse to fine): content stays consistent where "
        "temporal MultiDiffusion loses details. The preview shows each stage: which frames are generated, known "
        "or context. Where windows meet, the sampler's seam_smoothing (3 frames) evens the fill's colour; the "
        "schedule's keyframe_windows puts the keyframe in every window (fades less, about 13% more model calls). "
        "The sample is only 8 frames (one window): load a long clip to see the schedule work.\n"
        f"svd_xt.safetensors: press Run and the missing-models dialog offers the download.\n{OWN_INPUT}",
    )


WORKFLOWS = {
    DEMO_REMOVAL: lambda g: demo(g, edit=False),
    DEMO_EDIT: lambda g: demo(g, edit=True),
    REMOVAL: object_removal,
    FLUX_FILL_EDIT: creative_edit,
    ALIMAMA_EDIT: lambda g: creative_edit(g, alimama=True),
    SAM2_MASKS: sam2_masks,
    LONG_CLIP: long_clip,
}


def build_all(schemas: dict, names=None) -> dict[str, dict]:
    out = {}
    for name, make in WORKFLOWS.items():
        if names and name not in names:
            continue
        g = Graph(schemas, packs=pack_of(schemas, pack_version()))
        make(g)
        out[name] = g.to_ui()
    return out


def pack_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def live_schemas() -> dict:
    base = make_base_dir(Path(tempfile.mkdtemp(prefix="kfi-wf-")))
    with ComfyServer(base) as server:
        info = server.object_info()
    shutil.rmtree(base, ignore_errors=True)
    return {**info, **recorded_schemas()}


def demo_results() -> dict:
    """A real run of the bundled demo model on the sample, as the demo workflows run it: 'removal' and 'edit'
    results [F, 3, H, W], and the input frames."""
    from kfi_core.bundled import DEMO_ADAPTER, DEMO_MODEL_DIR, DEMO_REMOVAL_ADAPTER, load_sample_clip
    from kfi_core.inference import PropagateSettings, inpaint, prepare_clip
    from kfi_core.model import load_kfi_model

    sample = load_sample_clip()
    settings = PropagateSettings(**DEMO_SAMPLING).check()
    out = {"input": sample["frames"]}
    for task, adapter, keyframes in (
        ("removal", DEMO_REMOVAL_ADAPTER, None),
        ("edit", DEMO_ADAPTER, sample["edited_keyframe"][None]),
    ):
        clip = prepare_clip(
            sample["frames"],
            sample["masks"],
            keyframes=keyframes,
            keyframe_indices=[] if keyframes is None else [sample["keyframe_index"]],
        )
        out[task] = inpaint(load_kfi_model(DEMO_MODEL_DIR, adapter=adapter), clip, settings)
    return out


def make_thumbnail(frames, result, out: Path, scale: int = 2) -> None:
    """Input frames above, result frames below, side by side in time; a JPEG."""
    import torch
    from PIL import Image

    from kfi_core.media import to_uint8

    rows = [torch.cat(list(x), dim=-1) for x in (frames, result)]  # [3, H, F*W] each
    grid = to_uint8(torch.cat(rows, dim=-2)[None])[0]
    img = Image.fromarray(grid)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(out, "JPEG", quality=90)


EDIT_WORKFLOWS = (DEMO_EDIT, FLUX_FILL_EDIT, ALIMAMA_EDIT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="workflow names to write")
    parser.add_argument(
        "--thumbnails",
        action="store_true",
        help="also write <name>.jpg thumbnails from a run of the demo model on the sample (about a minute on a CPU)",
    )
    args = parser.parse_args()
    results = demo_results() if args.thumbnails else None
    for name, workflow in build_all(live_schemas(), args.only).items():
        path = ROOT / "workflows" / f"{name}.json"
        path.write_text(json.dumps(workflow, indent=1) + "\n")
        print(path)
        if results is not None:
            task = "edit" if name in EDIT_WORKFLOWS else "removal"
            make_thumbnail(results["input"], results[task], path.with_suffix(".jpg"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
