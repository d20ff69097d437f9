"""Colour matching: fit the generated frames' colours to the input on known pixels around the hole.

A latent video model returns every pixel through its VAE decoder, and a decoder's colours drift:
slightly for SVD's VAE, a lot for a small VAE trained briefly (the demo model's turns saturated
greens grey). The drift shows where the input is known, so it can be measured there and undone
in the hole: per frame, a colour transform ``reference ~ A @ generated + b`` (A 3x3, b 3) is fitted
by least squares on the known pixels in a ring around the mask, and applied to the generated frame.
Pasting back with colour correction is what image inpainting front ends do against seams (e.g. the
"color correction" option of popular Stable Diffusion UIs); KFI's version is local and per frame.

Modes
    ``none``    nothing is changed (the default of the library: outputs stay the model's own).
    ``mean``    offset only: ``b`` = mean(reference) - mean(generated) per channel, A = identity.
    ``affine``  the full 3x3 + offset fit, ridge-regularised towards the identity (weight
                :data:`RIDGE` per pixel), so a ring with little colour variety changes little.
    ``keyframe`` the same fit, once per clip, on the keyframes instead of the ring: a keyframe is known
                everywhere, so where the other frames have their holes it shows the colours the fill
                must have (an edit's new colours, which the ring around the hole never shows). The fit
                uses the keyframes' pixels within the ring of any frame's hole and is applied to every
                frame. Without a keyframe (or with too few pixels to fit) it is ``affine``.

The module imports torch only when called, so the CLI can list the modes cheaply.

Frames whose ring has fewer than :data:`MIN_PIXELS` known pixels use every known pixel of the
frame; frames with fewer than that in all (a fully masked frame) are left as generated. With a
perfect decoder the fit is the identity and nothing changes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kfi_core.errors import InputMismatchError, UnknownNameError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

COLOR_MATCH_MODES = ("none", "mean", "affine", "keyframe")
MIN_PIXELS = 64
RIDGE = 1e-4  # weight of ||A - I||^2 per fitted pixel


def ring_width(height: int, width: int) -> int:
    """Default ring width around the hole: an eighth of the shorter side, at least 4 pixels."""
    return max(4, min(height, width) // 8)


def _dilate_square(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary [F, 1, H, W] grown by a (2r+1)^2 square; separable, so cost grows with r, not r^2."""
    import torch.nn.functional as F

    k = 2 * radius + 1
    out = F.max_pool2d(masks, kernel_size=(1, k), stride=1, padding=(0, radius))
    return F.max_pool2d(out, kernel_size=(k, 1), stride=1, padding=(radius, 0))


def fit_color_transform(generated: torch.Tensor, reference: torch.Tensor, mode: str) -> torch.Tensor:
    """Least-squares map from ``generated`` [N, 3] to ``reference`` [N, 3] colours: [4, 3] matrix W with
    ``reference ~ [generated, 1] @ W`` (rows 0..2: A transposed, row 3: b)."""
    import torch

    n = generated.shape[0]
    identity = torch.cat([torch.eye(3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64)])  # [4, 3]
    g, r = generated.double(), reference.double()
    if mode == "mean":
        out = identity.clone()
        out[3] = r.mean(0) - g.mean(0)
        return out
    x = torch.cat([g, torch.ones(n, 1, dtype=torch.float64)], dim=1)  # [N, 4]
    reg = RIDGE * n * torch.eye(4, dtype=torch.float64)
    reg[3, 3] = 0.0  # the offset is free
    return torch.linalg.solve(x.T @ x + reg, x.T @ r + reg @ identity)


def _apply(frame: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``[generated, 1] @ w`` for one frame [3, H, W]."""
    height, width = frame.shape[-2:]
    flat = frame.flatten(1).T  # [H*W, 3]
    return (flat @ w[:3] + w[3]).T.reshape(3, height, width)


def keyframe_transform(
    generated: torch.Tensor, reference: torch.Tensor, hole: torch.Tensor, near: torch.Tensor, keyframes: Sequence[int]
) -> torch.Tensor | None:
    """The ``keyframe`` mode's one affine fit [4, 3]: the keyframes' generated colours against their reference
    colours, on the pixels within the ring of any frame's hole (all of each keyframe's pixels when that region is
    too small). None when no keyframe is given or the keyframes have fewer than :data:`MIN_PIXELS` pixels."""
    import torch

    usable = [int(k) for k in keyframes if 0 <= int(k) < generated.shape[0] and not bool(hole[int(k)].any())]
    if not usable:
        return None
    region = near.any(dim=0)[0]  # [H, W]: where any frame's fill goes, and its ring
    if int(region.sum()) * len(usable) < MIN_PIXELS:
        region = torch.ones_like(region)
    g = torch.cat([generated[k].flatten(1)[:, region.flatten()].T for k in usable])  # [N, 3]
    r = torch.cat([reference[k].flatten(1)[:, region.flatten()].T for k in usable])
    if g.shape[0] < MIN_PIXELS:
        return None
    return fit_color_transform(g, r, "affine").to(generated.dtype)


def match_colors(
    generated: torch.Tensor,
    reference: torch.Tensor,
    masks: torch.Tensor,
    mode: str = "affine",
    ring: int | None = None,
    keyframes: Sequence[int] = (),
) -> torch.Tensor:
    """Return ``generated`` [F, 3, H, W] (0..1) with each frame's colours fitted to ``reference`` (the input
    frames, same shape) on known pixels (``masks`` [F, 1, H, W] below 0.5) within ``ring`` pixels of the
    hole (default :func:`ring_width`). Clamped to 0..1; ``mode`` ``none`` returns ``generated`` unchanged.
    ``keyframes`` (frame indices whose mask is empty) are what mode ``keyframe`` fits on."""
    if mode not in COLOR_MATCH_MODES:
        raise UnknownNameError(f"color_match: got {mode!r}; choose one of {', '.join(COLOR_MATCH_MODES)}.")
    if mode == "none":
        return generated
    if generated.shape != reference.shape or generated.ndim != 4 or generated.shape[1] != 3:
        raise InputMismatchError(
            f"color_match: generated {list(generated.shape)} and reference "
            f"{list(reference.shape)} must both be [frames, 3, height, width]."
        )
    if masks.shape[0] != generated.shape[0] or masks.shape[-2:] != generated.shape[-2:]:
        raise InputMismatchError(
            f"color_match: masks {list(masks.shape)} do not match the frames {list(generated.shape)}."
        )
    height, width = generated.shape[-2:]
    radius = ring_width(height, width) if ring is None else int(ring)
    if radius < 1:
        raise InputMismatchError(f"color_match ring: got {ring}; give a width of at least 1 pixel.")
    hole = (masks.float() >= 0.5).float()
    near = _dilate_square(hole, radius) > 0
    known = hole == 0
    out = generated.clone()
    shared = keyframe_transform(generated, reference, hole, near, keyframes) if mode == "keyframe" else None
    if mode == "keyframe" and shared is None:
        logger.debug("color_match keyframe: no keyframe to fit on; fitting each frame's ring (affine)")
    for t in range(generated.shape[0]):
        if not bool(hole[t].any()):
            continue  # nothing generated is kept in this frame
        if shared is not None:
            out[t] = _apply(generated[t], shared)
            continue
        pick = near[t, 0] & known[t, 0]
        if int(pick.sum()) < MIN_PIXELS:
            pick = known[t, 0]
        if int(pick.sum()) < MIN_PIXELS:
            logger.debug("color_match: frame %d left as generated (%d known pixels)", t, int(pick.sum()))
            continue  # nothing to fit on
        g = generated[t].flatten(1)[:, pick.flatten()].T  # [N, 3]
        r = reference[t].flatten(1)[:, pick.flatten()].T
        w = fit_color_transform(g, r, "mean" if mode == "mean" else "affine").to(generated.dtype)  # [4, 3]
        out[t] = _apply(generated[t], w)
    return out.clamp(0.0, 1.0)
