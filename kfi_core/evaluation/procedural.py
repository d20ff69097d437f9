"""Seeded procedural clips with ground truth: object removal and keyframe edit propagation.

A scene is a stack of hard-edged layers drawn back to front, then lit:

1. **background**: a fine texture (``stripes`` at an angle, ``checker``, value ``noise``, or ``mixed``:
   stripes above a horizon, checker modulated by noise below it) seen through a camera that pans
   by ``pan`` pixels per frame (the content moves by ``pan`` on screen: frame t at x shows what frame
   0 showed at x - pan * t);
2. a **distractor**: a second moving textured shape that is never masked, drawn behind or in front of
   the target (seed-chosen), so the target occludes it or it occludes the target;
3. the **target**: a textured ellipse (stripes in its own coordinates, so the texture moves with it)
   on a straight path with a small wobble; this is the object to remove or to edit;
4. **lighting**: every pixel is multiplied by a gain that changes linearly over the clip by
   ``lighting_change`` (relative) and a horizontal light gradient that drifts across the frame.

Tasks (both share the scene of a seed):

- ``removal``: ``frames`` show the target; ``ground_truth`` is the same scene without it;
  ``masks`` are the target's visible region grown by ``mask_grow`` pixels. Outside the masks
  ``ground_truth`` equals ``frames`` exactly. ``keyframe`` is ``ground_truth[keyframe_index]``
  (one frame cleaned by hand, for keyframe-guided removal).
- ``edit``: the target's appearance is changed; ``ground_truth`` shows the edited target in every frame,
  ``keyframe`` is the edited frame at ``keyframe_index``. ``ground_truth`` differs from ``frames`` only inside
  ``object_masks``. ``edit_pattern`` says how: ``checker`` (the default) swaps colours and texture (a checker
  instead of stripes, about as fine as the stripes: at 64x64 finer than a 4x-down latent keeps); ``recolour``
  keeps the stripes and swaps only their two colours (a recolour, the change a keyframe edit most often makes).

Every random draw comes from ``numpy.random.default_rng([seed, stream])``; rendering is pure torch
(float32, CPU), so a seed gives the same clip on any machine.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from kfi_core.errors import InputMismatchError, UnknownNameError
from kfi_core.media.mask_ops import grow

logger = logging.getLogger(__name__)

TASKS = ("removal", "edit")
TEXTURES = ("mixed", "stripes", "checker", "noise")
EDIT_PATTERNS = ("checker", "recolour")
DIFFICULTIES = ("easy", "medium", "hard")
_SCENE_STREAM = 0  # scene layout, colours, motion
_EDIT_STREAM = 1  # the edited appearance
_NOISE_TILE = 64  # value-noise tile side (cells), wrapped
# Held-out evaluation seeds start here (bench/results.py); training (research/demo_model) stays below.
EVAL_SEED_BASE = 1_000_000


@dataclass
class ProceduralConfig:
    """Difficulty knobs of :func:`make_procedural_clip`.

    ``pan`` None draws a pan of up to ``max_pan`` px/frame in a seed-chosen direction; a tuple
    (dx, dy) fixes it. ``texture_period`` is the pixel period of stripes and checker (smaller is
    harder for smooth fills). ``lighting_change`` 0 keeps the light constant.
    """

    texture: str = "mixed"
    texture_period: float = 6.0
    pan: tuple[float, float] | None = None
    max_pan: float = 1.5
    object_speed: float = 2.0  # px/frame of the target (and distractor), at most
    object_radius: tuple[float, float] = (0.12, 0.2)  # ellipse semi-axes as fractions of the shorter side
    distractor: bool = True
    lighting_change: float = 0.3
    mask_grow: int = 1
    keyframe_index: int = 0
    edit_pattern: str = "checker"  # the edit task's change: see EDIT_PATTERNS and the module docstring

    def check(self) -> ProceduralConfig:
        if self.texture not in TEXTURES:
            raise UnknownNameError(f"texture: got {self.texture!r}; choose one of {', '.join(TEXTURES)}.")
        if self.edit_pattern not in EDIT_PATTERNS:
            raise UnknownNameError(
                f"edit_pattern: got {self.edit_pattern!r}; choose one of {', '.join(EDIT_PATTERNS)}."
            )
        if not self.texture_period >= 2.0:
            raise InputMismatchError(f"texture_period: got {self.texture_period}; give at least 2 pixels.")
        if self.pan is not None and len(self.pan) != 2:
            raise InputMismatchError(f"pan: got {self.pan!r}; give (dx, dy) in pixels per frame, or None.")
        lo, hi = self.object_radius
        if not 0.0 < lo <= hi <= 0.5:
            raise InputMismatchError(f"object_radius: got {self.object_radius}; give 0 < low <= high <= 0.5.")
        if not 0.0 <= self.lighting_change <= 1.0:
            raise InputMismatchError(f"lighting_change: got {self.lighting_change}; give a value from 0 to 1.")
        if self.mask_grow < 0 or self.max_pan < 0 or self.object_speed < 0:
            raise InputMismatchError("mask_grow, max_pan and object_speed must not be negative.")
        return self

    @classmethod
    def preset(cls, difficulty: str) -> ProceduralConfig:
        """``easy``: smooth-ish stripes, slow, constant light; ``medium``: the defaults; ``hard``:
        fine mixed textures, fast pan and objects, strong lighting change."""
        if difficulty == "easy":
            return cls(
                texture="stripes",
                texture_period=12.0,
                max_pan=0.5,
                object_speed=1.0,
                distractor=False,
                lighting_change=0.0,
            )
        if difficulty == "medium":
            return cls()
        if difficulty == "hard":
            return cls(texture="mixed", texture_period=4.0, max_pan=3.0, object_speed=3.0, lighting_change=0.5)
        raise UnknownNameError(f"difficulty: got {difficulty!r}; choose one of {', '.join(DIFFICULTIES)}.")


@dataclass
class ProceduralClip:
    """A generated clip. Frames are float32 [F, 3, H, W] in 0..1, masks [F, 1, H, W] 0/1 (1 = fill)."""

    task: str
    seed: int
    frames: torch.Tensor
    masks: torch.Tensor  # target's visible region grown by config.mask_grow
    ground_truth: torch.Tensor
    object_masks: torch.Tensor  # target's visible region, exact (not grown)
    keyframe_index: int
    keyframe: torch.Tensor  # [3, H, W] = ground_truth[keyframe_index]
    config: ProceduralConfig
    params: dict[str, Any] = field(default_factory=dict)  # drawn scene parameters (pan, colours, paths)

    @property
    def keyframes(self) -> dict[int, torch.Tensor]:
        """{keyframe_index: keyframe}, the form baselines and metrics take."""
        return {self.keyframe_index: self.keyframe}

    @property
    def edited_keyframe(self) -> torch.Tensor:
        return self.keyframe


# --------------------------------------------------------------------------- textures


def _stripes(u: torch.Tensor, v: torch.Tensor, period: float, angle: float) -> torch.Tensor:
    """Smooth sinusoidal stripes 0..1 along direction ``angle`` (radians)."""
    s = u * math.cos(angle) + v * math.sin(angle)
    return 0.5 + 0.5 * torch.sin(s * (2 * math.pi / period))


def _checker(u: torch.Tensor, v: torch.Tensor, period: float) -> torch.Tensor:
    """Hard-edged checkerboard 0/1 with squares of ``period / 2`` pixels."""
    cu = torch.floor(u / (period / 2)).long()
    cv = torch.floor(v / (period / 2)).long()
    return ((cu + cv) % 2).float()


def _value_noise(tile: torch.Tensor, u: torch.Tensor, v: torch.Tensor, cell: float) -> torch.Tensor:
    """Bilinear value noise: ``tile`` [n, n] of random values sampled at (u, v) / cell, wrapped."""
    n = tile.shape[0]
    x, y = u / cell, v / cell
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long() % n, y0.long() % n
    x1, y1 = (x0 + 1) % n, (y0 + 1) % n
    top = tile[y0, x0] * (1 - fx) + tile[y0, x1] * fx
    bottom = tile[y1, x0] * (1 - fx) + tile[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _mix(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Blend colours a, b [3] by weights w [H, W] -> [3, H, W]."""
    return a.view(3, 1, 1) * (1 - w) + b.view(3, 1, 1) * w


def _colour(rng: np.random.Generator, lo: float = 0.1, hi: float = 0.7) -> torch.Tensor:
    return torch.tensor(rng.uniform(lo, hi, size=3), dtype=torch.float32)


# --------------------------------------------------------------------------- scene parameters


def _draw_scene(rng: np.random.Generator, cfg: ProceduralConfig, num_frames: int, height: int, width: int) -> dict:
    short = min(height, width)
    if cfg.pan is None:
        angle = rng.uniform(0, 2 * math.pi)
        speed = rng.uniform(0.5, 1.0) * cfg.max_pan
        pan = (speed * math.cos(angle), speed * math.sin(angle))
    else:
        pan = (float(cfg.pan[0]), float(cfg.pan[1]))

    def path(radius_frac: tuple[float, float]) -> dict:
        rx = rng.uniform(*radius_frac) * short
        ry = rng.uniform(*radius_frac) * short
        direction = rng.uniform(0, 2 * math.pi)
        speed = rng.uniform(0.5, 1.0) * cfg.object_speed
        vx, vy = speed * math.cos(direction), speed * math.sin(direction)
        # start so that the middle frame is near the centre: the object stays mostly in view
        mid = (num_frames - 1) / 2
        cx = width / 2 + rng.uniform(-0.15, 0.15) * width - vx * mid
        cy = height / 2 + rng.uniform(-0.15, 0.15) * height - vy * mid
        return {
            "rx": rx,
            "ry": ry,
            "cx": cx,
            "cy": cy,
            "vx": vx,
            "vy": vy,
            "wobble": rng.uniform(0.0, 2.0),
            "phase": rng.uniform(0, 2 * math.pi),
            "tex_angle": rng.uniform(0, math.pi),
            "tex_period": max(2.0, cfg.texture_period * rng.uniform(0.6, 1.0)),
        }

    return {
        "pan": pan,
        "bg_colours": [_colour(rng) for _ in range(4)],
        "bg_angle": float(rng.uniform(0, math.pi)),
        "horizon": float(rng.uniform(0.3, 0.6)),
        "noise_tile": torch.tensor(rng.uniform(0, 1, size=(_NOISE_TILE, _NOISE_TILE)), dtype=torch.float32),
        "target": path(cfg.object_radius),
        "target_colours": [_colour(rng, 0.15, 0.75) for _ in range(2)],
        "distractor": path((cfg.object_radius[0] * 0.6, cfg.object_radius[1] * 0.8)),
        "distractor_colours": [_colour(rng, 0.15, 0.75) for _ in range(2)],
        "distractor_in_front": bool(rng.uniform() < 0.5),
        "light_phase": float(rng.uniform(0, 2 * math.pi)),
    }


def _draw_edit(rng: np.random.Generator) -> dict:
    """The edited appearance: new colours (pushed away from the originals by the caller) and a checker."""
    return {"colours": [_colour(rng, 0.15, 0.85) for _ in range(2)], "checker_scale": float(rng.uniform(0.8, 1.4))}


# --------------------------------------------------------------------------- rendering


def _background(p: dict, cfg: ProceduralConfig, t: int, xx: torch.Tensor, yy: torch.Tensor, height: int):
    u = xx - p["pan"][0] * t  # scene coordinates: content moves by +pan per frame on screen
    v = yy - p["pan"][1] * t
    c = p["bg_colours"]
    period = cfg.texture_period
    noise = _value_noise(p["noise_tile"], u, v, cell=max(1.5, period / 2))
    if cfg.texture == "stripes":
        return _mix(c[0], c[1], _stripes(u, v, period, p["bg_angle"]))
    if cfg.texture == "checker":
        return _mix(c[0], c[1], _checker(u, v, period))
    if cfg.texture == "noise":
        return _mix(c[0], c[1], noise)
    # mixed: stripes above the horizon (which pans with the scene), checker x noise below
    top = _mix(c[0], c[1], _stripes(u, v, period, p["bg_angle"]))
    bottom = _mix(c[2], c[3], 0.35 * _checker(u, v, period * 1.5) + 0.65 * noise)
    below = (v > p["horizon"] * height).float()
    return top * (1 - below) + bottom * below


def _object(o: dict, t: int, xx: torch.Tensor, yy: torch.Tensor):
    """Ellipse mask [H, W] bool and object-local coordinates (texture moves with the object)."""
    cx = o["cx"] + o["vx"] * t + o["wobble"] * math.sin(0.9 * t + o["phase"])
    cy = o["cy"] + o["vy"] * t + o["wobble"] * math.cos(0.7 * t + o["phase"])
    lx, ly = xx - cx, yy - cy
    inside = (lx / o["rx"]) ** 2 + (ly / o["ry"]) ** 2 <= 1.0
    return inside, lx, ly


def _lighting(p: dict, cfg: ProceduralConfig, t: int, num_frames: int, xx: torch.Tensor, width: int):
    """Gain [H, W]: global change over the clip times a drifting horizontal gradient."""
    if cfg.lighting_change == 0:
        return torch.ones_like(xx)
    s = t / max(1, num_frames - 1)
    amount = cfg.lighting_change
    global_gain = 1.0 - amount / 2 + amount * s
    gradient = 1.0 + 0.5 * amount * torch.sin(2 * math.pi * xx / (2 * width) + p["light_phase"] + 2.0 * s)
    return global_gain * gradient


def _render(p: dict, edit: dict | None, cfg: ProceduralConfig, num_frames: int, height: int, width: int):
    """(frames with the original target, frames without it, frames with the edited target, visible target masks)."""
    yy, xx = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    with_target, without, edited, visible = [], [], [], []
    for t in range(num_frames):
        bg = _background(p, cfg, t, xx, yy, height)
        d_in, dlx, dly = _object(p["distractor"], t, xx, yy)
        dc = p["distractor_colours"]
        d_tex = _mix(dc[0], dc[1], _checker(dlx, dly, p["distractor"]["tex_period"] * 1.2))
        d_in = d_in & cfg.distractor
        t_in, tlx, tly = _object(p["target"], t, xx, yy)
        o = p["target"]
        tc = p["target_colours"]
        t_tex = _mix(tc[0], tc[1], _stripes(tlx, tly, o["tex_period"], o["tex_angle"]))
        if edit is not None:
            ec = edit["colours"]
            if cfg.edit_pattern == "recolour":
                e_tex = _mix(ec[0], ec[1], _stripes(tlx, tly, o["tex_period"], o["tex_angle"]))
            else:
                e_tex = _mix(ec[0], ec[1], _checker(tlx, tly, o["tex_period"] * edit["checker_scale"]))
        else:
            e_tex = t_tex
        front = p["distractor_in_front"]
        # back to front: background, [distractor if behind], target, [distractor if in front]
        scene_without = torch.where(d_in, d_tex, bg)
        vis = t_in & ~(d_in & front)
        layers = []
        for tex in (t_tex, e_tex):
            img = bg if front else scene_without
            img = torch.where(t_in, tex, img)
            if front:
                img = torch.where(d_in, d_tex, img)
            layers.append(img)
        gain = _lighting(p, cfg, t, num_frames, xx, width)
        with_target.append((layers[0] * gain).clamp(0, 1))
        edited.append((layers[1] * gain).clamp(0, 1))
        without.append((scene_without * gain).clamp(0, 1))
        visible.append(vis.float()[None])
    return torch.stack(with_target), torch.stack(without), torch.stack(edited), torch.stack(visible)


def make_procedural_clip(
    task: str = "removal",
    num_frames: int = 8,
    height: int = 64,
    width: int = 64,
    seed: int = 0,
    config: ProceduralConfig | None = None,
    difficulty: str | None = None,
) -> ProceduralClip:
    """Generate a clip and its ground truth for ``task`` (``removal`` or ``edit``); see the module docstring.

    ``config`` gives every knob; ``difficulty`` (``easy``/``medium``/``hard``) picks a preset instead.
    The same ``seed`` gives the same scene for both tasks.
    """
    # 1. Check inputs
    if task not in TASKS:
        raise UnknownNameError(f"task: got {task!r}; choose one of {', '.join(TASKS)}.")
    if config is not None and difficulty is not None:
        raise InputMismatchError("give config or difficulty, not both (a preset is a config: ProceduralConfig.preset).")
    cfg = (ProceduralConfig.preset(difficulty) if difficulty else (config or ProceduralConfig())).check()
    if num_frames < 1 or height < 8 or width < 8:
        raise InputMismatchError(f"clip size: got {num_frames} frames of {width}x{height}; give >= 1 frame of >= 8x8.")
    if not 0 <= cfg.keyframe_index < num_frames:
        raise InputMismatchError(
            f"keyframe_index: got {cfg.keyframe_index} for {num_frames} frames; give 0..{num_frames - 1}."
        )
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputMismatchError(f"seed: got {seed!r}; give a whole number >= 0.")

    # 2. Draw the scene (shared by both tasks) and, for edits, the new appearance
    scene = _draw_scene(np.random.default_rng([int(seed), _SCENE_STREAM]), cfg, num_frames, height, width)
    edit = _draw_edit(np.random.default_rng([int(seed), _EDIT_STREAM])) if task == "edit" else None
    if edit is not None:
        # keep the edit visible: each new colour at least 0.25 away (max channel) from the old one
        for i, (new, old) in enumerate(zip(edit["colours"], scene["target_colours"])):
            if float((new - old).abs().max()) < 0.25:
                edit["colours"][i] = (1.0 - old).clamp(0.1, 0.9)

    # 3. Render
    original, without, edited, visible = _render(scene, edit, cfg, num_frames, height, width)
    masks = grow(visible, cfg.mask_grow)
    if task == "removal":
        frames, truth = original, without
    else:
        frames, truth = original, edited
    k = cfg.keyframe_index
    params = {
        "pan": scene["pan"],
        "distractor_in_front": scene["distractor_in_front"],
        "target": {k_: v for k_, v in scene["target"].items()},
        "coverage": float(masks.mean()),
        "config": asdict(cfg),
    }
    logger.debug("procedural %s clip seed %d: pan %s, mask coverage %.3f", task, seed, scene["pan"], params["coverage"])
    return ProceduralClip(
        task=task,
        seed=int(seed),
        frames=frames,
        masks=masks,
        ground_truth=truth,
        object_masks=visible,
        keyframe_index=k,
        keyframe=truth[k].clone(),
        config=cfg,
        params=params,
    )


def with_config(config: ProceduralConfig, **changes) -> ProceduralConfig:
    """A copy of ``config`` with some knobs changed (``dataclasses.replace``), checked."""
    return replace(config, **changes).check()
