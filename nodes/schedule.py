"""LongVideoAnchorSchedule: how a clip longer than the model's window is inpainted."""

from __future__ import annotations

from comfy_api.latest import io

from . import bridge
from .types import KfiCondition, KfiModel, KfiSchedule


class LongVideoAnchorSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from kfi_core.inference import SCHEDULES

        return io.Schema(
            node_id="LongVideoAnchorSchedule",
            display_name="KFI Long Video Anchor Schedule",
            category="KFI",
            description=(
                "Plan a clip longer than the model's window (25 frames for svd-xt). 'anchor' (default, the paper's "
                "coarse-to-fine): sparse anchors over the whole clip first, then the gaps between them, conditioned "
                "on the anchors at both ends. The other strategies come from the conditional video inpainting "
                "papers; 'multidiffusion' is the overlapping-window baseline. The preview shows each stage: "
                "generated, known and context frames. Connect it to the sampler's schedule input."
            ),
            inputs=[
                io.Combo.Input(
                    "strategy",
                    options=list(SCHEDULES),
                    default="anchor",
                    tooltip="How windows are laid out over the clip.",
                ),
                io.Int.Input(
                    "window",
                    default=0,
                    min=0,
                    max=128,
                    tooltip="Frames per model call; 0 = the model's frame count (25 for svd-xt).",
                ),
                io.Int.Input(
                    "anchor_spacing",
                    default=0,
                    min=0,
                    max=128,
                    tooltip="anchor: at most this many frames between anchors (0 = window - 1).",
                ),
                io.Int.Input(
                    "frames",
                    default=0,
                    min=0,
                    max=100000,
                    tooltip="Clip length, used only when neither condition nor images is connected.",
                ),
                io.String.Input(
                    "keyframe_indices",
                    default="",
                    tooltip="Keyframes, comma-separated; ignored when the condition is connected "
                    "(its keyframes are used).",
                ),
                KfiModel.Input("kfi_model", optional=True, tooltip="Gives the window size (its frame count)."),
                KfiCondition.Input(
                    "condition",
                    optional=True,
                    tooltip="From KFI Symmetric Mask Encode: gives frame count and keyframes.",
                ),
                io.Image.Input("images", optional=True, tooltip="The clip's frames: gives the frame count."),
                io.Boolean.Input(
                    "keyframe_windows",
                    default=False,
                    optional=True,
                    tooltip="anchor: every window that generates frames also holds the nearest keyframe as a known "
                    "frame, so each window sees the edit itself (about 13% more model calls; docs/RESULTS.md, "
                    "'Long clips').",
                ),
            ],
            outputs=[
                KfiSchedule.Output(display_name="schedule", tooltip="For the sampler's schedule input."),
                io.Image.Output(display_name="preview", tooltip="The schedule drawn: rows are model calls."),
            ],
        )

    @classmethod
    def execute(
        cls,
        strategy,
        window,
        anchor_spacing,
        frames,
        keyframe_indices,
        kfi_model=None,
        condition=None,
        images=None,
        keyframe_windows=False,
    ) -> io.NodeOutput:
        from kfi_core.inference import build_schedule, render_schedule_preview

        num_frames, keyframes = bridge.schedule_frames(frames, keyframe_indices, condition, images)
        size = bridge.schedule_window(window, kfi_model)
        options = {}
        if strategy == "anchor" and anchor_spacing:
            options["anchor_spacing"] = anchor_spacing
        if strategy == "anchor" and keyframe_windows:
            options["keyframe_windows"] = True
        schedule = build_schedule(strategy, num_frames, size, keyframes, **options)
        return io.NodeOutput(schedule, bridge.array_to_image(render_schedule_preview(schedule)))
