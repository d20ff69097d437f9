"""The entry points of inpainting: :func:`inpaint` (a clip of any length), :func:`propagate` (one window) and
:func:`run_schedule` (a given schedule).

The flow runs one way: an entry point checks everything once (settings, sizes, masks, the schedule), plans the
windows (:mod:`kfi_core.inference.schedules`), and runs each with :func:`kfi_core.inference.window.run_window`'s steps
(encode, denoise, sample, decode, composite), which hand the frames back; nothing below calls up.

Each window is conditioned on what is known when it runs:
- ``generate`` frames: the input frame with its mask (the hole is generated and kept);
- ``known`` frames: keyframes, or frames generated in an earlier stage, entered as fully known
  frames (empty mask), exactly as the symmetric condition takes keyframes;
- ``context`` frames: the input frame with its mask; their generated content is thrown away
  (003's conditioning on incomplete frames).

Memory: the clip, the masks and the generated frames stay on the host; the device holds one
window's latents at a time (a fused MultiDiffusion stage keeps the whole clip's latents on the
host and moves one window's slice to the device per model call), so device memory does not
grow with clip length.

Seams: after the last window of a schedule of several windows, each generated frame's fill is shifted so its mean
colour is the mean over the frames within ``settings.seam_smoothing`` frames (default
:data:`~kfi_core.inference.settings.DEFAULT_SEAM_SMOOTHING`), and the fill's detail is cross-faded across each window
boundary (:func:`smooth_seams`, :mod:`kfi_core.inference.seams`): where two windows meet, the fill's colour and detail
step (the demo model's seam ratio at window boundaries was 1.6-1.9 on every schedule, docs/RESULTS.md "Long clips");
smoothing turns the colour step into a ramp while a steady change of light or motion passes, and the cross-fade makes
the detail change no more at a boundary than inside the windows. Keyframes and pixels outside the composite's mask
stay exact.

Seeds: the first window of a run uses ``settings.seed`` itself, so a clip that fits one window
gives exactly :func:`propagate`'s output; window ``k`` uses a seed derived
from ``(seed, k)``.

``num_samples`` > 1 runs the whole inpaint that many times, with seeds ``seed``, ``seed + 1``, ...
(:func:`sample_seed`), and returns the mean of the outputs (:func:`mean_of_samples`). Each sample is a
plausible fill; their mean approximates the posterior mean, which minimises the expected squared error
(lower error, higher PSNR) at the cost of detail where the samples disagree: the perception-distortion
trade-off (Blau and Michaeli 2018). The seeds say nothing about this choice; KFI's own. One sample (the
default) is SVD's and the paper's way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from kfi_core.errors import InputMismatchError, ScheduleError
from kfi_core.inference.condition import ClipInputs, check_mask_coverage, unit_clip
from kfi_core.inference.sampling import get_sampler, get_sigmas_svd
from kfi_core.inference.schedule_builders import build_schedule
from kfi_core.inference.schedules import classify_transitions
from kfi_core.inference.seams import crossfade_detail, ramp_from_keyframes, smooth_fill_colours
from kfi_core.inference.settings import ProgressCallback, PropagateSettings, check_size, check_window
from kfi_core.inference.window import (
    WindowDenoiser,
    composite,
    composite_mask,
    decode_window,
    initial_latents,
    run_window,
    sample_window_latents,
)
from kfi_core.media.pixels import is_eight_bit, to_eight_bit

logger = logging.getLogger(__name__)

DEFAULT_SCHEDULE = "anchor"
#: Initial noise of a schedule's windows: ``per-window`` (each window draws its own from its seed) or ``shared``
#: (:func:`shared_noise`: one window's worth drawn once from the run's seed, frame f starting from its frame
#: f mod window, so every window starts from the same noise; FreeNoise's noise rescheduling, Qiu et al. 2024).
NOISE_MODES = ("per-window", "shared")
DEFAULT_NOISE = "per-window"
_SEED_STRIDE = 0x9E3779B97F4A7C15  # golden-ratio increment: well-spread per-window seeds


def window_seed(seed: int, k: int) -> int:
    return seed if k == 0 else (seed + k * _SEED_STRIDE) % 2**64


def shared_noise(model, clip: ClipInputs, settings: PropagateSettings, window: int) -> torch.Tensor:
    """The ``shared`` noise mode's initial latents for the whole clip, [1, N, C, h, w] on the host: ``window``
    frames of noise drawn from ``settings.seed`` (scaled as :func:`initial_latents` does), frame f taking frame
    ``f % window``."""
    scale = model.vae_scale_factor
    h, w = clip.size[0] // scale, clip.size[1] // scale
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    base = initial_latents((1, window, int(model.vae.config.latent_channels), h, w), settings, model, generator)
    return base[:, [f % window for f in range(clip.num_frames)]]


def window_clip(clip: ClipInputs, result: torch.Tensor, window) -> ClipInputs:
    """The ClipInputs one window sees: known frames from ``result`` with empty masks."""
    frames, masks, known = [], [], []
    for j, (f, role) in enumerate(zip(window.frames, window.roles)):
        if role == "known":
            frames.append(result[f])
            masks.append(torch.zeros_like(clip.masks[f]))
            known.append(j)
        else:
            frames.append(clip.frames[f])
            masks.append(clip.masks[f])
    return ClipInputs(frames=torch.stack(frames), masks=torch.stack(masks), keyframe_indices=known)


def check_schedule(schedule, clip: ClipInputs, model) -> None:
    schedule.validate()
    if schedule.num_frames != clip.num_frames:
        raise ScheduleError(
            f"schedule: made for {schedule.num_frames} frames but the clip has {clip.num_frames}. Build the schedule "
            "from this clip (or its frame count)."
        )
    if schedule.window > model.num_frames:
        raise ScheduleError(
            f"schedule: windows of {schedule.window} frames but the model ({model.variant}) takes at most "
            f"{model.num_frames}. Build it with window={model.num_frames} or less."
        )
    keyframes = set(schedule.keyframes)
    if keyframes != set(clip.keyframe_indices):
        raise ScheduleError(
            f"schedule: keyframes {sorted(keyframes)} but the clip's keyframes are {clip.keyframe_indices}. Build the "
            "schedule with the clip's keyframe indices."
        )


def _progress(callback, offset: int, total: int, stage: int, window: int):
    if callback is None:
        return None

    def report(info: dict) -> None:
        callback({**info, "i": offset + info["i"], "total": total, "stage": stage, "window": window})

    return report


def total_steps(schedule, steps: int) -> int:
    return sum(steps if stage.fused else steps * len(stage.windows) for stage in schedule.stages)


@torch.no_grad()
def run_schedule(
    model,
    clip: ClipInputs,
    schedule,
    settings: PropagateSettings | None = None,
    *,
    callback: Callable[[dict], Any] | None = None,
    check_cancel: Callable[[], Any] | None = None,
    noise: str | None = None,
    seam_smoothing: int | None = None,
) -> torch.Tensor:
    """Inpaint ``clip`` following ``schedule``; frames [N, 3, H, W] in 0..1 on the host.

    ``settings.num_samples`` > 1 runs the schedule that many times and returns the mean (:func:`mean_of_samples`).
    ``noise``: one of :data:`NOISE_MODES` (default :data:`DEFAULT_NOISE`); ``seam_smoothing``: frames (0 off; None,
    the default, takes ``settings.seam_smoothing``), see :func:`smooth_seams`. An 8-bit clip is run on a float
    copy and comes back 8-bit."""
    settings = _checked(settings, clip)
    if is_eight_bit(clip.frames):
        run_args = {
            "callback": callback,
            "check_cancel": check_cancel,
            "noise": noise,
            "seam_smoothing": seam_smoothing,
        }
        return to_eight_bit(run_schedule(model, unit_clip(clip), schedule, settings, **run_args))
    noise = DEFAULT_NOISE if noise is None else noise
    if noise not in NOISE_MODES:
        raise ScheduleError(f"noise: got {noise!r}; choose one of {', '.join(NOISE_MODES)}.")
    if seam_smoothing is not None:
        settings = replace(settings, seam_smoothing=seam_smoothing).check()
    check_size(model, *clip.size)
    check_schedule(schedule, clip, model)
    shared = noise == "shared"

    def run(s: PropagateSettings, cb) -> torch.Tensor:
        return smooth_seams(
            clip, _run_schedule(model, clip, schedule, s, cb, check_cancel, shared), schedule, s, s.seam_smoothing
        )

    return _samples(run, clip, settings, callback)


def smooth_seams(clip: ClipInputs, frames: torch.Tensor, schedule, settings: PropagateSettings, radius: int):
    """Hide the seams where two windows meet (:mod:`kfi_core.inference.seams`): shift each generated frame's fill so
    its mean colour is the mean over the frames within ``radius`` frames (keyframes fixed), carry each keyframe's
    colour into the fill next to it, then cross-fade the fill's detail across each window boundary. Only for a
    composited result, where pixels outside the composite's weights stay the input's exactly; ``radius`` 0 leaves
    the frames as they are; a schedule of one window has no window seams, only its keyframes'
    (:func:`ramp_keyframes`)."""
    if radius < 1 or not settings.composite:
        return frames
    if len(schedule.windows) < 2:
        return ramp_keyframes(clip, frames, replace(settings, seam_smoothing=radius))
    weights = composite_mask(clip, settings.feather)
    frames = smooth_fill_colours(frames, weights, radius, fixed=clip.keyframe_indices)
    frames = ramp_from_keyframes(frames, weights, clip.keyframe_indices)
    has_mask = [bool(m.any()) for m in clip.masks >= 0.5]
    kinds = classify_transitions(schedule, has_mask)
    return crossfade_detail(frames, clip.masks, kinds["boundary"], kinds["inside"])


def ramp_keyframes(clip: ClipInputs, frames: torch.Tensor, settings: PropagateSettings) -> torch.Tensor:
    """The keyframe part of the seam smoothing for one window: each keyframe's colour carried into the fill next to
    it where the two differ by more than the fill's own steps (:func:`kfi_core.inference.seams.ramp_from_keyframes`);
    a composited result with keyframes and ``settings.seam_smoothing`` > 0 only, else ``frames`` as they are."""
    if settings.seam_smoothing < 1 or not settings.composite or not clip.keyframe_indices:
        return frames
    return ramp_from_keyframes(frames, composite_mask(clip, settings.feather), clip.keyframe_indices)


def _run_schedule(
    model,
    clip: ClipInputs,
    schedule,
    settings: PropagateSettings,
    callback: ProgressCallback | None,
    check_cancel: Callable[[], Any] | None,
    shared: bool = False,
) -> torch.Tensor:
    """One sample of a checked schedule: each stage's windows in turn (a fused stage's all at once); ``shared``:
    every window starts from :func:`shared_noise` (a fused stage too)."""
    total = total_steps(schedule, settings.steps)
    logger.info(
        "running schedule %s: %d frames, %d stages, %d windows, %d sampling steps",
        schedule.strategy,
        clip.num_frames,
        len(schedule.stages),
        len(schedule.windows),
        total,
    )
    result = clip.frames.float().clone()  # composited frames: known content for later windows
    raw = result.clone() if not settings.composite else None
    noise = shared_noise(model, clip, settings, schedule.window) if shared else None
    done, k = 0, 0
    for s, stage in enumerate(schedule.stages):
        if stage.fused:
            generated = _run_fused_stage(
                model,
                clip,
                result,
                stage,
                replace(settings, seed=window_seed(settings.seed, k)),
                _progress(callback, done, total, s, 0),
                check_cancel,
                noise,
            )
            frames = sorted({f for w in stage.windows for f in w.generate})
            known = sorted({f for w in stage.windows for f, r in zip(w.frames, w.roles) if r == "known"} - set(frames))
            _keep(clip, result, raw, frames, generated[frames], settings, known=(result[known], generated[known]))
            done += settings.steps
            k += len(stage.windows)
            continue
        for w, window in enumerate(stage.windows):
            sub = window_clip(clip, result, window)
            latents = sample_window_latents(
                model,
                sub,
                replace(settings, seed=window_seed(settings.seed, k)),
                callback=_progress(callback, done, total, s, w),
                check_cancel=check_cancel,
                noise=None if noise is None else noise[:, list(window.frames)],
            )
            decoded = decode_window(model, latents, settings.decode_chunk_size, settings.decode_tile)  # [F_w, 3, H, W]
            positions = [j for j, role in enumerate(window.roles) if role == "generate"]
            known = [j for j, role in enumerate(window.roles) if role == "known"]
            _keep(
                clip,
                result,
                raw,
                [window.frames[j] for j in positions],
                decoded[positions],
                settings,
                known=(sub.frames[known], decoded[known]),
            )
            done += settings.steps
            k += 1
    return result if settings.composite else raw


def _keep(
    clip,
    result,
    raw,
    frames: list[int],
    generated: torch.Tensor,
    settings,
    known: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Store generated frames: composited into ``result`` (what later windows see), raw if asked.

    ``known`` (the window's fully known frames and their decoded versions) is what colour matching mode
    ``keyframe`` fits on; they are composited along and dropped."""
    n = len(frames)
    part = ClipInputs(frames=clip.frames[frames].float(), masks=clip.masks[frames], keyframe_indices=[])
    both = generated
    if known is not None and settings.color_match == "keyframe" and known[0].shape[0]:
        reference, decoded = known
        part = ClipInputs(
            frames=torch.cat([part.frames, reference.float()]),
            masks=torch.cat([part.masks, torch.zeros_like(part.masks[:1]).expand(len(reference), -1, -1, -1)]),
            keyframe_indices=list(range(n, n + len(reference))),
        )
        both = torch.cat([generated, decoded.to(generated.dtype)])
    result[frames] = composite(part, both, settings.feather, settings.color_match)[:n]
    if raw is not None:
        raw[frames] = generated


def _run_fused_stage(model, clip, result, stage, settings, callback, check_cancel, noise=None) -> torch.Tensor:
    """Temporal MultiDiffusion: every step denoises each window and averages overlapping frames (from ``noise``,
    the clip's initial latents, when given)."""
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    denoisers = [
        (w, WindowDenoiser(model, window_clip(clip, result, w), settings, generator, resident=False))
        for w in stage.windows
    ]
    _, _, channels, h, wd = denoisers[0][1].latent_shape
    x = initial_latents((1, clip.num_frames, channels, h, wd), settings, model, generator)  # host
    x = x if noise is None else noise.to(x.dtype)

    def denoise(x_full: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(x_full)
        count = torch.zeros(clip.num_frames)
        for window, den in denoisers:
            idx = list(window.frames)
            out = den(x_full[:, idx].to(model.device), sigma.to(model.device)).float().cpu()
            total[:, idx] += out
            count[idx] += 1
        seen = count > 0
        total[:, seen] /= count[seen].view(-1, 1, 1, 1)
        # frames no window covers (keyframes outside every window) keep their current estimate
        total[:, ~seen] = x_full[:, ~seen]
        return total

    sigmas = get_sigmas_svd(settings.steps, model.scheduler_config)
    latents = get_sampler(settings.sampler)(denoise, x, sigmas, callback=callback, check_cancel=check_cancel)
    return decode_window(model, latents.to(model.device), settings.decode_chunk_size, settings.decode_tile)


def inpaint(
    model,
    clip: ClipInputs,
    settings: PropagateSettings | None = None,
    *,
    schedule=None,
    strategy: str | None = None,
    callback: Callable[[dict], Any] | None = None,
    check_cancel: Callable[[], Any] | None = None,
    noise: str | None = None,
    seam_smoothing: int | None = None,
) -> torch.Tensor:
    """Inpaint a clip of any length: one window when it fits, else a schedule.

    ``schedule`` (a :class:`~kfi_core.inference.schedules.Schedule`) wins; else ``strategy`` names a builder;
    else clips longer than the model's window use the coarse-to-fine ``anchor`` schedule. ``noise`` and
    ``seam_smoothing``: see :func:`run_schedule`.
    """
    check_mask_coverage(clip)
    if schedule is None:
        name = strategy or DEFAULT_SCHEDULE
        schedule = build_schedule(name, clip.num_frames, model.num_frames, clip.keyframe_indices)
        if clip.num_frames > model.num_frames:
            logger.info(
                "%d frames exceed the model's %d: using the %s schedule", clip.num_frames, model.num_frames, name
            )
    return run_schedule(
        model,
        clip,
        schedule,
        settings,
        callback=callback,
        check_cancel=check_cancel,
        noise=noise,
        seam_smoothing=seam_smoothing,
    )


def propagate(
    model,
    clip: ClipInputs,
    settings: PropagateSettings | None = None,
    *,
    callback: ProgressCallback | None = None,
    check_cancel: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Inpaint one window: ``clip`` (from :func:`kfi_core.inference.condition.prepare_clip`) -> frames [F, 3, H, W]
    in 0..1.

    With ``settings.composite`` (default) pixels outside the mask and keyframes are the input's,
    exactly. ``callback`` gets a dict per step (``i``, ``total``, ``sigma``, ``x``, ``denoised``);
    ``check_cancel()`` runs between steps and may raise to stop.
    """
    # 1. Check inputs before any compute (an 8-bit clip runs on a float copy and comes back 8-bit)
    settings = _checked(settings, clip)
    if is_eight_bit(clip.frames):
        floats = propagate(model, unit_clip(clip), settings, callback=callback, check_cancel=check_cancel)
        return to_eight_bit(floats)
    height, width = clip.size
    check_size(model, height, width)
    check_window(model, clip.num_frames)
    logger.info(
        "propagating %d frames %dx%d (%s mode, %d %s steps, seed %d, keyframes %s)",
        clip.num_frames,
        width,
        height,
        "KFI" if model.in_channels == 12 else "training-free",
        settings.steps,
        settings.sampler,
        settings.seed,
        clip.keyframe_indices or "none",
    )
    # 2. The window's steps, once per sample; 3. the keyframes' colour carried into the fill next to them
    return _samples(
        lambda s, cb: ramp_keyframes(clip, run_window(model, clip, s, callback=cb, check_cancel=check_cancel), s),
        clip,
        settings,
        callback,
    )


def _checked(settings: PropagateSettings | None, clip) -> PropagateSettings:
    if not isinstance(clip, ClipInputs):
        raise InputMismatchError(
            "clip: pass the result of kfi_core.inference.condition.prepare_clip(frames, masks, ...)."
        )
    return (settings or PropagateSettings()).check()


def _samples(
    run: Callable[[PropagateSettings, Any], torch.Tensor],
    clip: ClipInputs,
    settings: PropagateSettings,
    callback: ProgressCallback | None,
) -> torch.Tensor:
    """``run(settings, callback)`` once, or the mean of ``settings.num_samples`` runs."""
    if settings.num_samples > 1:
        return mean_of_samples(run, clip, settings, callback)
    return run(settings, callback)


def sample_seed(seed: int, k: int) -> int:
    """The seed of sample ``k`` of a ``num_samples`` run: ``seed + k`` (mod 2**64); sample 0 is the one-sample run."""
    return (seed + k) % 2**64


def mean_of_samples(
    run: Callable[[PropagateSettings, Any], torch.Tensor],
    clip: ClipInputs,
    settings: PropagateSettings,
    callback: ProgressCallback | None = None,
) -> torch.Tensor:
    """The mean of ``settings.num_samples`` runs of ``run(one_sample_settings, callback)`` -> frames [F, 3, H, W].

    Sample ``k`` uses :func:`sample_seed` ``(seed, k)`` and otherwise the same settings, so each is composited and
    colour-matched as a one-sample run is; with ``composite`` on, pixels the composite keeps (mask 0 beyond any
    feather, keyframes too) are then set to the input's again, so they stay bit-exact after the division. With it
    off, the mean of the raw outputs. Progress counts the steps of all samples (``i`` and ``total``), with
    ``sample`` the sample's index."""
    n = settings.num_samples
    logger.info("averaging %d samples (seeds %d..%d)", n, settings.seed, settings.seed + n - 1)
    total = None
    for k in range(n):
        report = None
        if callback is not None:

            def report(info: dict, k: int = k) -> None:
                callback({**info, "i": k * info["total"] + info["i"], "total": n * info["total"], "sample": k})

        frames = run(replace(settings, seed=sample_seed(settings.seed, k), num_samples=1), report).float()
        total = frames.clone() if total is None else total.add_(frames)
    mean = total / n
    if settings.composite:
        mean = torch.where(composite_mask(clip, settings.feather) == 0, clip.frames.float(), mean)
    return mean
