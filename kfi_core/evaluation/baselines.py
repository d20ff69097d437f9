"""Non-learned baselines for video inpainting and keyframe propagation, and the VAE ceiling.

Every baseline is ``fn(frames, masks, keyframes=None) -> frames`` with ``frames`` float [F, 3, H, W]
in 0..1, ``masks`` [F, 1, H, W] (1 = fill, binarised at > 0.5, or one mask for all frames) and
``keyframes`` {frame index: [3, H, W]} or None. Rules shared by all of them:

- outside the mask the output is the input, bit for bit (float32);
- at a keyframe index the hole holds the keyframe's pixels (the keyframe is known there), so
  every method is scored on the same frames; methods marked "per frame" ignore keyframes otherwise;
- nothing random, nothing learned.

Definitions
    mean_fill        per frame: the hole is the per-channel mean colour of that frame's known pixels
                     (0.5 grey if the frame has none).
    telea_fill       per frame: OpenCV ``cv2.inpaint`` with Telea's fast-marching method (Telea 2004)
                     on the 8-bit frame, radius ``TELEA_RADIUS``; the result is composited in float.
    keyframe_paste   the hole of frame t is the same pixels of the keyframe nearest in time (ties go
                     to the earlier keyframe): right for a static camera and static content only.
    keyframe_colour_fill
                     the hole of frame t is one colour: the mean of the nearest keyframe's pixels inside that
                     keyframe frame's own mask (where it was edited or cleaned), or under frame t's hole where that
                     mask is empty. No texture, no motion: how much a fill gains from the keyframe's colours alone.
    flow_warp        the hole of frame t is the nearest keyframe k warped by dense optical flow from
                     frame t to frame k (OpenCV DIS, medium preset, or Farneback), chained through the
                     frames between them (t -> t-1 -> ... -> k), and bilinear sampling (backward
                     warping: out(x) = keyframe(x + f(x)), f from t to k).
                     ``region="known"`` (removal): the flow is computed on both frames with their holes
                     Telea-filled, then its values in the hole (grown by ``FLOW_MARGIN`` px) are replaced
                     by a smooth (harmonic) fill of the flow from the known region, so the hole moves like its
                     surroundings (the camera), not like the object being removed.
                     ``region="whole"`` (edit propagation): the flow of the whole input frames, hole
                     included, so the edit follows the object the hole covers.
    vae_ceiling      not a baseline: the ground truth encoded (posterior mode) and decoded by a
                     model's VAE, composited into the hole. No latent model using that VAE can do
                     better than its own reconstruction of the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial

import numpy as np
import torch

from kfi_core.errors import InputMismatchError, KeyframeError, UnknownNameError
from kfi_core.evaluation.optical_flow import optical_flow_fn  # the metrics' flow, with smaller windows
from kfi_core.inference.color_match import match_colors
from kfi_core.inference.condition import encode_frames
from kfi_core.model.encoders import decode_latents

logger = logging.getLogger(__name__)

TELEA_RADIUS = 3
FLOW_REGIONS = ("known", "whole")
FLOW_MARGIN = 2  # px the hole is grown by before the flow inside it is replaced (region="known")
MASK_THRESHOLD = 0.5

Baseline = Callable[..., torch.Tensor]


# --------------------------------------------------------------------------- checks and helpers


def check_baseline_inputs(
    frames: torch.Tensor, masks: torch.Tensor, keyframes: Mapping[int, torch.Tensor] | None = None
):
    """Return (frames float32 [F,3,H,W], masks bool [F,1,H,W], keyframes {int: float32 [3,H,W]})."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
        shape = list(frames.shape) if hasattr(frames, "shape") else type(frames).__name__
        raise InputMismatchError(f"frames: expected a tensor [frames, 3, height, width], got {shape}.")
    num, _, height, width = frames.shape
    if masks.ndim != 4 or masks.shape[1] != 1 or tuple(masks.shape[2:]) != (height, width):
        raise InputMismatchError(
            f"masks: expected [frames, 1, {height}, {width}], got {list(masks.shape)}. Give one single-channel mask "
            "per frame at the frame size."
        )
    if masks.shape[0] not in (1, num):
        raise InputMismatchError(
            f"masks: got {masks.shape[0]} masks for {num} frames. Give one mask per frame, or one mask for all frames."
        )
    m = (masks.float() > MASK_THRESHOLD).expand(num, -1, -1, -1).cpu()
    kf: dict[int, torch.Tensor] = {}
    for k, image in (keyframes or {}).items():
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) < num:
            raise KeyframeError(f"keyframes: index {k!r} is outside the clip (0..{num - 1}).")
        if tuple(image.shape) != (3, height, width):
            raise KeyframeError(
                f"keyframes[{k}]: shape {list(image.shape)} does not fit frames of {width}x{height}; "
                f"give [3, {height}, {width}]."
            )
        kf[int(k)] = image.detach().float().cpu()
    return frames.detach().float().cpu(), m, kf


def _composite(frames: torch.Tensor, masks: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Input outside the mask (exactly), ``fill`` inside."""
    return torch.where(masks, fill.to(frames.dtype), frames)


def _with_keyframes(
    frames: torch.Tensor, masks: torch.Tensor, out: torch.Tensor, keyframes: Mapping[int, torch.Tensor]
) -> torch.Tensor:
    for k, image in keyframes.items():
        out[k] = torch.where(masks[k], image, frames[k])
    return out


def nearest_keyframe(t: int, indices: list[int]) -> int:
    """The keyframe index closest to frame ``t``; the earlier one on a tie."""
    return min(sorted(indices), key=lambda k: (abs(k - t), k))


def _require_keyframes(keyframes: Mapping[int, torch.Tensor], name: str) -> None:
    if not keyframes:
        raise KeyframeError(f"{name}: needs at least one keyframe ({{index: image}}); it propagates keyframe pixels.")


def _to_uint8_hwc(frame: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray((frame.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def _telea(frame: torch.Tensor, mask: torch.Tensor, radius: int = TELEA_RADIUS) -> torch.Tensor:
    """One frame [3, H, W] float -> Telea-inpainted [3, H, W] float (8-bit inside OpenCV)."""
    import cv2

    hole = mask[0].numpy().astype(np.uint8)
    if not hole.any():
        return frame.clone()
    filled = cv2.inpaint(_to_uint8_hwc(frame), hole, radius, cv2.INPAINT_TELEA)  # [H, W, 3] uint8
    return torch.from_numpy(filled).permute(2, 0, 1).float() / 255.0


# --------------------------------------------------------------------------- baselines


def mean_fill(
    frames: torch.Tensor, masks: torch.Tensor, keyframes: Mapping[int, torch.Tensor] | None = None
) -> torch.Tensor:
    """Per frame, fill the hole with the mean colour of the frame's known pixels (0.5 if none)."""
    frames, m, kf = check_baseline_inputs(frames, masks, keyframes)
    known = (~m).float()  # [F, 1, H, W]
    count = known.sum(dim=(2, 3))  # [F, 1]
    total = (frames * known).sum(dim=(2, 3))  # [F, 3]
    mean = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, 0.5))
    out = _composite(frames, m, mean[:, :, None, None].expand_as(frames))
    return _with_keyframes(frames, m, out, kf)


def telea_fill(
    frames: torch.Tensor,
    masks: torch.Tensor,
    keyframes: Mapping[int, torch.Tensor] | None = None,
    radius: int = TELEA_RADIUS,
) -> torch.Tensor:
    """Per frame, OpenCV Telea inpainting (``cv2.INPAINT_TELEA``, ``radius`` px)."""
    frames, m, kf = check_baseline_inputs(frames, masks, keyframes)
    fill = torch.stack([_telea(frames[t], m[t], radius) for t in range(frames.shape[0])])
    out = _composite(frames, m, fill)
    return _with_keyframes(frames, m, out, kf)


def keyframe_paste(
    frames: torch.Tensor, masks: torch.Tensor, keyframes: Mapping[int, torch.Tensor] | None = None
) -> torch.Tensor:
    """The hole of every frame holds the same pixels of the nearest keyframe."""
    frames, m, kf = check_baseline_inputs(frames, masks, keyframes)
    _require_keyframes(kf, "keyframe_paste")
    fill = torch.stack([kf[nearest_keyframe(t, list(kf))] for t in range(frames.shape[0])])
    return _composite(frames, m, fill)


def keyframe_colour_fill(
    frames: torch.Tensor, masks: torch.Tensor, keyframes: Mapping[int, torch.Tensor] | None = None
) -> torch.Tensor:
    """The hole of every frame holds one colour: the nearest keyframe's mean inside its own frame's mask (else under
    the frame's hole; else the whole keyframe's mean)."""
    frames, m, kf = check_baseline_inputs(frames, masks, keyframes)
    _require_keyframes(kf, "keyframe_colour_fill")
    fill = torch.empty_like(frames)
    for t in range(frames.shape[0]):
        k = nearest_keyframe(t, list(kf))
        region = m[k, 0] if m[k].any() else m[t, 0]
        colour = kf[k][:, region].mean(dim=1) if region.any() else kf[k].mean(dim=(1, 2))
        fill[t] = colour[:, None, None]
    return _with_keyframes(frames, m, _composite(frames, m, fill), kf)


def _flow_fn(method: str):
    # smaller windows than the metrics' defaults: the baselines track small objects on small frames
    return optical_flow_fn(method, levels=3, winsize=9)


def _gray(frame: torch.Tensor) -> np.ndarray:
    import cv2

    return cv2.cvtColor(_to_uint8_hwc(frame), cv2.COLOR_RGB2GRAY)


def _complete_flow(flow: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Replace flow [H, W, 2] inside ``hole`` [H, W] uint8 by a smooth (harmonic) fill from the known flow:
    Jacobi iterations of the 4-neighbour average inside the hole, the known flow fixed (Laplace's equation
    with the hole border as boundary condition). cv2.inpaint is not used: it clips float input to 0..255."""
    import cv2

    inside = hole.astype(bool)
    if not inside.any() or inside.all():
        return flow
    out = flow.astype(np.float32).copy()
    out[inside] = out[~inside].mean(axis=0)  # start from the mean known flow
    ys, xs = np.nonzero(inside)
    iterations = int(min(2000, 4 * max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) ** 1.5))
    kernel = np.array([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]], dtype=np.float32)
    for _ in range(iterations):
        avg = cv2.filter2D(out, -1, kernel, borderType=cv2.BORDER_REPLICATE)
        out[inside] = avg[inside]
    return out


def estimate_flow(
    frames: torch.Tensor, masks: torch.Tensor, source: int, target: int, *, region: str = "known", method: str = "dis"
) -> np.ndarray:
    """Flow [H, W, 2] (dx, dy) from frame ``source`` to frame ``target``: frames[source](x) ~ frames[target](x + f(x)).

    ``frames`` float [F, 3, H, W], ``masks`` bool [F, 1, H, W] (as :func:`check_baseline_inputs` returns).
    See the module docstring for ``region``.
    """
    import cv2

    if region not in FLOW_REGIONS:
        raise UnknownNameError(f"region: unknown {region!r}; choose one of {', '.join(FLOW_REGIONS)}.")
    calc = _flow_fn(method)
    if region == "whole":
        return calc(_gray(frames[source]), _gray(frames[target]))
    a = _gray(_telea(frames[source], masks[source]))
    b = _gray(_telea(frames[target], masks[target]))
    flow = calc(a, b)
    hole = masks[source, 0].numpy().astype(np.uint8)
    if FLOW_MARGIN > 0:
        size = 2 * FLOW_MARGIN + 1
        hole = cv2.dilate(hole, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    return _complete_flow(flow, hole)


def warp(image: torch.Tensor, flow: np.ndarray) -> torch.Tensor:
    """Backward warp: out(x) = image(x + flow(x)), bilinear, border replicated. image [3, H, W] -> [3, H, W]."""
    import cv2

    height, width = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    src = np.ascontiguousarray(image.permute(1, 2, 0).numpy().astype(np.float32))
    out = cv2.remap(
        src, gx + flow[..., 0], gy + flow[..., 1], interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return torch.from_numpy(out.reshape(height, width, 3)).permute(2, 0, 1).clamp(0, 1)


def compose_flows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Flow a -> c from flows a -> b (``first``) and b -> c (``second``), [H, W, 2] each:
    f_ac(x) = f_ab(x) + f_bc(x + f_ab(x)), the second flow sampled bilinearly (border replicated)."""
    import cv2

    height, width = first.shape[:2]
    gx, gy = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    moved = cv2.remap(
        np.ascontiguousarray(second, dtype=np.float32),
        gx + first[..., 0],
        gy + first[..., 1],
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return first + moved


def flow_warp(
    frames: torch.Tensor,
    masks: torch.Tensor,
    keyframes: Mapping[int, torch.Tensor] | None = None,
    *,
    region: str = "known",
    method: str = "dis",
) -> torch.Tensor:
    """The hole of frame t holds the nearest keyframe k warped by the flow from frame t to frame k.

    The flow t -> k is chained from consecutive frames (t -> t-1 -> ... -> k, composed with
    :func:`compose_flows`): one-frame steps stay small, so fine periodic textures do not alias as
    they do when matching frames far apart.
    """
    frames, m, kf = check_baseline_inputs(frames, masks, keyframes)
    _require_keyframes(kf, "flow_warp")
    _flow_fn(method)
    if region not in FLOW_REGIONS:
        raise UnknownNameError(f"region: unknown {region!r}; choose one of {', '.join(FLOW_REGIONS)}.")
    num = frames.shape[0]
    fill = frames.clone()
    to_key: dict[int, np.ndarray] = {}  # frame -> flow from it to its nearest keyframe
    # walk outwards from each keyframe so the chained flow of the neighbour is ready
    for t in sorted(range(num), key=lambda i: abs(i - nearest_keyframe(i, list(kf)))):
        k = nearest_keyframe(t, list(kf))
        if t == k:
            fill[t] = kf[k]
            continue
        step = -1 if t > k else 1
        flow = estimate_flow(frames, m, t, t + step, region=region, method=method)  # t -> neighbour
        if t + step != k:
            flow = compose_flows(flow, to_key[t + step])
        to_key[t] = flow
        fill[t] = warp(kf[k], flow)
    return _composite(frames, m, fill)


# Name -> (function, needs keyframes). The results script runs them by these names.
BASELINES: dict[str, tuple[Baseline, bool]] = {
    "mean_fill": (mean_fill, False),
    "telea": (telea_fill, False),
    "keyframe_paste": (keyframe_paste, True),
    "keyframe_colour": (keyframe_colour_fill, True),
    "flow_warp_known": (partial(flow_warp, region="known"), True),
    "flow_warp_whole": (partial(flow_warp, region="whole"), True),
}


def get_baseline(name: str) -> Baseline:
    if name not in BASELINES:
        raise UnknownNameError(f"baseline: unknown {name!r}; choose one of {', '.join(BASELINES)}.")
    return BASELINES[name][0]


# --------------------------------------------------------------------------- VAE ceiling


@torch.no_grad()
def vae_ceiling(
    vae,
    ground_truth: torch.Tensor,
    masks: torch.Tensor,
    frames: torch.Tensor | None = None,
    chunk_size: int = 8,
    color_match: str = "none",
    keyframes: Mapping[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The ground truth through ``vae`` (encode to the posterior mode, decode with the temporal decoder),
    composited into the hole of ``frames`` (default: the ground truth itself).

    ``vae`` is a diffusers ``AutoencoderKLTemporalDecoder`` (``KfiModel.vae``). The latents are scaled
    by the VAE scaling factor and decoded exactly as sampled latents are
    (:func:`kfi_core.model.encoders.decode_latents`).
    ``color_match`` post-processes the reconstruction as the sampler's composite does
    (:func:`kfi_core.inference.color_match.match_colors`, fitted on the known pixels of ``frames``). ``keyframes``
    ({index: [3, H, W]}) enter as the keyframe methods get them: known frames, kept exactly, which colour
    matching mode ``keyframe`` fits on.
    """
    truth, m, kf = check_baseline_inputs(ground_truth, masks, keyframes)
    base = truth if frames is None else check_baseline_inputs(frames, masks)[0]
    if base.shape != truth.shape:
        raise InputMismatchError(f"frames {list(base.shape)} and ground_truth {list(truth.shape)} differ in shape.")
    base, m = base.clone(), m.clone()
    for k, image in kf.items():  # a known frame: its pixels are the keyframe's, none is generated
        base[k], m[k] = image, False
    latents = encode_frames(vae, truth * 2.0 - 1.0, chunk_size) * vae.config.scaling_factor  # [F, 4, h, w]
    decoded = decode_latents(vae, latents[None], decode_chunk_size=chunk_size)[0]  # [F, 3, H, W] in -1..1
    recon = ((decoded.float().cpu() + 1.0) / 2.0).clamp(0, 1)
    return _composite(base, m, match_colors(recon, base, m, color_match, keyframes=sorted(kf)))
