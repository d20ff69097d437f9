"""KeyframePropagateSampler: the KFI condition through the model -> inpainted frames."""

from __future__ import annotations

from comfy_api.latest import io

from . import bridge
from .types import KfiCondition, KfiModel, KfiSchedule


def size_inputs() -> list:
    """The working size, the crop around the mask and the offload: any input size, full-size output."""
    from kfi_core.media.clip_crop import DEFAULT_CLIP_PADDING
    from kfi_core.model import OFFLOAD_MODES

    return [
        io.Combo.Input(
            "working_size",
            options=["native", "input", "custom"],
            default="native",
            optional=True,
            tooltip="The size the model runs at; the result always comes back at the clip's size, pixels outside "
            "the mask exactly the input's. native: the model's own (1024x576 for SVD, 576x1024 for a portrait "
            "clip); input: the clip's own size (sides must suit the model); custom: width x height below.",
        ),
        io.Int.Input("width", default=1024, min=8, max=8192, step=8, optional=True, tooltip="Custom working width."),
        io.Int.Input("height", default=576, min=8, max=8192, step=8, optional=True, tooltip="Custom working height."),
        io.Combo.Input(
            "crop",
            options=["none", "mask"],
            default="none",
            optional=True,
            tooltip="mask: inpaint only a box around all the masks (plus crop_padding, at the working size's "
            "aspect ratio) and stitch it back with a feathered edge: a small hole in a large clip gets the model's "
            "full detail. none: the whole frame.",
        ),
        io.Int.Input(
            "crop_padding",
            default=DEFAULT_CLIP_PADDING,
            min=0,
            max=4096,
            optional=True,
            tooltip="With crop mask: pixels of context around the masks.",
        ),
        io.Combo.Input(
            "offload",
            options=["auto", *OFFLOAD_MODES],
            default="auto",
            optional=True,
            tooltip="Weights off the GPU between uses. auto: follow ComfyUI (--lowvram/--novram: sequential; "
            "model when the run would not fit in free memory; else none). model: one component on the GPU at a "
            "time (svd-xt in about 12 GB); sequential: one layer at a time (least memory, slowest).",
        ),
    ]


def seam_input():
    """Seam smoothing of clips longer than the model's window."""
    from kfi_core.inference.settings import DEFAULT_SEAM_SMOOTHING, MAX_SEAM_SMOOTHING

    return io.Int.Input(
        "seam_smoothing",
        default=DEFAULT_SEAM_SMOOTHING,
        min=0,
        max=MAX_SEAM_SMOOTHING,
        optional=True,
        tooltip="Clips longer than the model's window: even each generated frame's fill colour with the frames "
        "within this many frames of it and cross-fade the fill's detail where windows meet, so the windows do not "
        "show. Any clip: carry each keyframe's colour into the fill next to it, so the keyframe does not flash. "
        "0 = off; keyframes and pixels outside the mask stay exact.",
    )


class KeyframePropagateSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from kfi_core.inference import BLEND_KNOWN_MODES, COLOR_MATCH_MODES, SAMPLERS

        return io.Schema(
            node_id="KeyframePropagateSampler",
            display_name="KFI Keyframe Propagate Sampler",
            category="KFI",
            description=(
                "Inpaint the clip: carry the keyframe edits through every frame, or remove the masked objects when "
                "there is no keyframe. Stable Video Diffusion's EDM sampler with guidance rising over frames. "
                "Pixels outside the mask and keyframes come out exactly as they went in (composite on). Clips "
                "longer than the model's window use the schedule input, or the anchor schedule by default."
            ),
            inputs=[
                KfiModel.Input("kfi_model", tooltip="From Load KFI Inpaint Model."),
                KfiCondition.Input("condition", tooltip="From KFI Symmetric Mask Encode."),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=2**64 - 1,
                    control_after_generate=True,
                    tooltip="Random seed; the same seed and settings give the same result.",
                ),
                io.Int.Input("steps", default=25, min=1, max=200, tooltip="Denoising steps (SVD: 25)."),
                io.Combo.Input(
                    "sampler",
                    options=list(SAMPLERS),
                    default="euler",
                    tooltip="euler (SVD's, one model call per step) or heun (2nd order, about twice the cost).",
                ),
                io.Float.Input(
                    "min_guidance", default=1.0, min=0.0, max=100.0, step=0.1, tooltip="Guidance at the first frame."
                ),
                io.Float.Input(
                    "max_guidance",
                    default=3.0,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    tooltip="Guidance at the last frame (rises linearly from min).",
                ),
                io.Int.Input("fps", default=7, min=1, max=240, tooltip="fps conditioning (SVD: 7)."),
                io.Int.Input(
                    "motion_bucket_id",
                    default=127,
                    min=0,
                    max=1023,
                    tooltip="Motion conditioning: higher = more motion (SVD: 127).",
                ),
                io.Float.Input(
                    "noise_aug_strength",
                    default=0.02,
                    min=0.0,
                    max=10.0,
                    step=0.01,
                    tooltip="Noise added to the condition frames (SVD: 0.02).",
                ),
                io.Boolean.Input(
                    "composite", default=True, tooltip="Keep pixels outside the mask exactly as the input."
                ),
                io.Int.Input(
                    "feather",
                    default=0,
                    min=0,
                    max=256,
                    tooltip="Soft composite edge in pixels outside the hole (0 = hard edge).",
                ),
                io.Int.Input(
                    "decode_chunk_size",
                    default=8,
                    min=1,
                    max=128,
                    tooltip="Frames per VAE decode call: lower uses less memory.",
                ),
                io.Combo.Input(
                    "color_match",
                    options=list(COLOR_MATCH_MODES),
                    default="none",
                    optional=True,
                    tooltip="Before compositing, fit the fill's colours to the input on known pixels "
                    "around the hole: none, mean (offset) or affine (3x3 + offset); keyframe fits "
                    "once on the keyframes, which show an edit's true colours (affine without "
                    "one). Use it when the fill's colours drift (VAE colour drift).",
                ),
                io.Combo.Input(
                    "blend_known",
                    options=list(BLEND_KNOWN_MODES),
                    default="auto",
                    optional=True,
                    tooltip="Replace the denoised estimate outside the hole by the input's clean latents "
                    "at every step: auto (on in the training-free mode, which needs it; off with "
                    "a KFI adapter, which reads the known pixels from its condition), on, off.",
                ),
                io.Int.Input(
                    "num_samples",
                    default=1,
                    min=1,
                    max=64,
                    optional=True,
                    tooltip="Average this many samples (seeds seed, seed + 1, ...): N times the time, a "
                    "lower error and a softer fill where the samples disagree. 1 = one sample.",
                ),
                io.Int.Input(
                    "decode_tile",
                    default=0,
                    min=0,
                    max=1024,
                    optional=True,
                    tooltip="Decode in spatial tiles of this many latent cells a side (32 = 256 pixels), "
                    "overlapping by a quarter and blended: less memory for large frames, the same frames "
                    "within a small tolerance. 0 = whole frames.",
                ),
                KfiSchedule.Input(
                    "schedule",
                    optional=True,
                    tooltip="Long-video schedule from KFI Long Video Anchor Schedule (clips longer "
                    "than the model's window).",
                ),
                *size_inputs(),
                seam_input(),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The inpainted frames.")],
        )

    @classmethod
    def execute(
        cls,
        kfi_model,
        condition,
        seed,
        steps,
        sampler,
        min_guidance,
        max_guidance,
        fps,
        motion_bucket_id,
        noise_aug_strength,
        composite,
        feather,
        decode_chunk_size,
        schedule=None,
        color_match="none",
        blend_known="auto",
        num_samples=1,
        decode_tile=0,
        working_size="native",
        width=1024,
        height=576,
        crop="none",
        crop_padding=None,
        offload="auto",
        seam_smoothing=None,
    ) -> io.NodeOutput:
        from kfi_core.inference import PropagateSettings, inpaint_at_size
        from kfi_core.inference.settings import DEFAULT_SEAM_SMOOTHING
        from kfi_core.media.clip_crop import DEFAULT_CLIP_PADDING

        settings = PropagateSettings(
            steps=steps,
            seed=seed,
            sampler=sampler,
            min_guidance=min_guidance,
            max_guidance=max_guidance,
            fps=fps,
            motion_bucket_id=motion_bucket_id,
            noise_aug_strength=noise_aug_strength,
            composite=composite,
            feather=feather,
            decode_chunk_size=decode_chunk_size,
            color_match=color_match,
            blend_known=blend_known,
            num_samples=num_samples,
            decode_tile=decode_tile,
            seam_smoothing=DEFAULT_SEAM_SMOOTHING if seam_smoothing is None else seam_smoothing,
        ).check()
        size = (height, width) if working_size == "custom" else working_size
        with bridge.on_device(kfi_model, offload, settings, condition, size, crop) as model:
            frames = inpaint_at_size(
                model,
                condition,
                settings,
                size=size,
                crop=crop,
                crop_padding=DEFAULT_CLIP_PADDING if crop_padding is None else crop_padding,
                schedule=schedule,
                callback=bridge.progress_callback(steps),
                check_cancel=bridge.check_interrupted,
            )
        return io.NodeOutput(bridge.frames_to_image(frames))
