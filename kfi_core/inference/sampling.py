"""Noise schedules and ODE samplers for EDM denoisers, as small pure functions.

The samplers follow k-diffusion's shape (``k_diffusion/sampling.py``): they take a
``denoise(x, sigma) -> denoised`` callable and a descending sigma schedule ending in 0,
and know nothing of UNets, conditioning or guidance (that is ``kfi_core.inference.denoiser``).
Unlike k-diffusion they draw no random numbers (no churn): the only randomness of a run is
the initial noise, drawn by the caller from its own ``torch.Generator``. They own no
progress bar either; progress, previews and cancelling go through ``callback`` and
``check_cancel``.

Noise levels are called ``sigma``; the timestep the SVD UNet is fed is derived from sigma in
``kfi_core.inference.denoiser.sigma_to_timestep``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from kfi_core.errors import ModelFileError, NonFiniteError, SettingsError, UnknownNameError

logger = logging.getLogger(__name__)

#: Sampler names, in the order a UI should offer them.
SAMPLERS = ("euler", "heun")

#: rho of the Karras et al. (2022) schedule, eq. (5); diffusers and k-diffusion use 7 too.
KARRAS_RHO = 7.0

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[dict], Any]


# --------------------------------------------------------------------------- schedules


def _config_get(scheduler_config: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a dict, a diffusers FrozenDict or a scheduler object's config."""
    config = getattr(scheduler_config, "config", scheduler_config)
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def get_sigmas_karras(steps: int, sigma_min: float, sigma_max: float, rho: float = KARRAS_RHO) -> torch.Tensor:
    """Karras et al. (2022), eq. (5): ``steps`` noise levels from sigma_max down to sigma_min, then 0.

    ``sigma_i = (sigma_max^(1/rho) + i/(steps-1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``.
    Computed in float64 and rounded once to float32 at the end, as diffusers'
    ``EulerDiscreteScheduler`` does, so the values are bit-identical to the scheduler's.
    Returns a float32 tensor of length ``steps + 1`` (the trailing zero included).
    """
    _check_steps(steps)
    if not (0.0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
        raise ModelFileError(
            f"scheduler config: sigma_min={sigma_min!r}, sigma_max={sigma_max!r}; need 0 < sigma_min < sigma_max "
            "(SVD uses 0.002 and 700). Check the model's scheduler/scheduler_config.json."
        )
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    min_inv_rho = sigma_min ** (1.0 / rho)
    max_inv_rho = sigma_max ** (1.0 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def get_sigmas_svd(steps: int, scheduler_config: Any) -> torch.Tensor:
    """The sigmas diffusers' ``EulerDiscreteScheduler.set_timesteps(steps)`` gives for SVD's config.

    SVD's scheduler config sets ``use_karras_sigmas`` with explicit ``sigma_min`` (0.002) and
    ``sigma_max`` (700): the schedule is then the Karras et al. (2022) eq. (5) ramp between
    them with rho 7, followed by a final 0 (``final_sigmas_type`` "zero"); the training betas
    play no part. ``scheduler_config`` is a dict, a ``FrozenDict`` or the scheduler itself.
    Returns float32 [steps + 1], descending, ending in 0.
    """
    _check_steps(steps)
    if not _config_get(scheduler_config, "use_karras_sigmas", False):
        raise ModelFileError(
            "scheduler config: use_karras_sigmas is not set; KFI samples only SVD's EDM schedule "
            "(use_karras_sigmas true, sigma_min 0.002, sigma_max 700). Use the scheduler config of an SVD "
            "img2vid model."
        )
    final = _config_get(scheduler_config, "final_sigmas_type", "zero")
    if final != "zero":
        raise ModelFileError(
            f"scheduler config: final_sigmas_type is {final!r}; KFI's samplers end at sigma 0 "
            "(final_sigmas_type 'zero', the SVD default). Remove the key or set it to 'zero'."
        )
    sigma_min = _config_get(scheduler_config, "sigma_min")
    sigma_max = _config_get(scheduler_config, "sigma_max")
    if sigma_min is None or sigma_max is None:
        raise ModelFileError(
            f"scheduler config: sigma_min={sigma_min!r}, sigma_max={sigma_max!r}; SVD's config gives both "
            "(0.002 and 700). Add them to scheduler/scheduler_config.json."
        )
    return get_sigmas_karras(steps, float(sigma_min), float(sigma_max))


def init_noise_sigma(sigmas: torch.Tensor, scheduler_config: Any) -> torch.Tensor:
    """The factor diffusers multiplies unit Gaussian noise by to start sampling.

    ``EulerDiscreteScheduler.init_noise_sigma`` is ``sigma_max`` for "linspace"/"trailing"
    timestep spacing but ``sqrt(sigma_max^2 + 1)`` for "leading", which SVD's config uses
    (700.0007 instead of EDM's 700: a variance-preserving leftover, harmless at this size).
    Kept here so that KFI starts from exactly the pipeline's initial latents.
    Returns a 0-dim tensor in ``sigmas``' dtype.
    """
    sigma_max = sigmas.max()
    if _config_get(scheduler_config, "timestep_spacing", "linspace") in ("linspace", "trailing"):
        return sigma_max
    return (sigma_max**2 + 1) ** 0.5


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SettingsError(
            f"steps: got {steps!r}; give a whole number of sampling steps, at least 1 (SVD's default is 25)."
        )


def _check_sigmas(sigmas: torch.Tensor) -> None:
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or sigmas.shape[0] < 2:
        got = tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
        raise SettingsError(
            f"sigmas: got {got}; pass a 1-D tensor of at least two noise levels ending in 0, "
            "e.g. get_sigmas_svd(steps, scheduler.config)."
        )
    if not bool(torch.isfinite(sigmas).all()) or bool((sigmas[:-1] <= sigmas[1:]).any()) or float(sigmas[-1]) < 0:
        raise SettingsError(
            f"sigmas: {sigmas.tolist()} is not a finite, strictly decreasing, non-negative schedule; "
            "build it with get_sigmas_svd(steps, scheduler.config)."
        )


# --------------------------------------------------------------------------- samplers


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022, eq. 3/Alg. 1)."""
    return (x - denoised) / sigma


def _check_finite(tensor: torch.Tensor, what: str, i: int, total: int, sigma: torch.Tensor) -> None:
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    bad = int((~finite).sum())
    err = NonFiniteError(
        f"sampling step {i + 1} of {total} (sigma {float(sigma):.6g}): {what} has {bad} NaN or infinite values "
        f"out of {tensor.numel()}. Usual causes: float16 overflow in the UNet (run it in bfloat16 or float32), "
        "a damaged or mismatched model file, or a guidance scale far above SVD's 3; fix the cause and run again."
    )
    err.step = i
    err.sigma = float(sigma)
    raise err


def _report(callback: StepCallback | None, i: int, total: int, sigmas: torch.Tensor, x, denoised) -> None:
    logger.debug("step %d/%d sigma %.6g -> %.6g", i + 1, total, float(sigmas[i]), float(sigmas[i + 1]))
    if callback is not None:
        callback(
            {"i": i, "total": total, "sigma": sigmas[i], "sigma_next": sigmas[i + 1], "x": x, "denoised": denoised}
        )


@torch.no_grad()
def sample_euler(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback | None = None,
    check_cancel: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE: Karras et al. (2022), Algorithm 2 with Euler steps, no churn.

    ``x`` is the initial noise already scaled to ``sigmas[0]`` (see ``init_noise_sigma``);
    ``denoise(x, sigma)`` returns the denoised estimate D(x; sigma) of x's shape; ``sigmas`` is
    a descending schedule ending in 0 (``get_sigmas_svd``). One ``denoise`` call per step:
    ``x <- x + (x - D(x; s_i)) / s_i * (s_{i+1} - s_i)``, the update of diffusers'
    ``EulerDiscreteScheduler.step`` with its operations in the same order.

    ``check_cancel()`` is called before every step and may raise (the run stops there, after the
    previous step). ``callback`` gets, after every step, a dict with ``i`` (0-based step),
    ``total`` (steps), ``sigma``, ``sigma_next``, ``x`` (the step's input, at ``sigma``) and
    ``denoised``. Raises ``NonFiniteError`` naming the step if x or the estimate stops being finite.
    """
    _check_sigmas(sigmas)
    total = sigmas.shape[0] - 1
    _check_finite(x, "the initial noise", 0, total, sigmas[0])
    for i in range(total):
        if check_cancel is not None:
            check_cancel()
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        _check_finite(denoised, "the denoised estimate", i, total, sigma)
        x_next = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
        _check_finite(x_next, "the updated latents", i, total, sigma)
        _report(callback, i, total, sigmas, x, denoised)
        x = x_next
    return x


@torch.no_grad()
def sample_heun(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback | None = None,
    check_cancel: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Heun's 2nd-order method: Karras et al. (2022), Algorithm 2 without churn (S_churn = 0).

    Each step takes an Euler step to ``s_{i+1}``, evaluates the derivative there and averages
    the two slopes (the trapezoidal correction); the last step, to sigma 0, is a plain Euler step
    because D(x; 0) is undefined. That is 2 * steps - 1 ``denoise`` calls in all.
    Arguments, callback and cancelling as in ``sample_euler``; the callback's ``denoised`` is the
    estimate at the start of the step.
    """
    _check_sigmas(sigmas)
    total = sigmas.shape[0] - 1
    _check_finite(x, "the initial noise", 0, total, sigmas[0])
    for i in range(total):
        if check_cancel is not None:
            check_cancel()
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        _check_finite(denoised, "the denoised estimate", i, total, sigma)
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        x_euler = x + d * dt
        if float(sigma_next) == 0.0:
            x_next = x_euler
        else:
            _check_finite(x_euler, "the Euler predictor", i, total, sigma)
            denoised_2 = denoise(x_euler, sigma_next)
            _check_finite(denoised_2, "the corrector's denoised estimate", i, total, sigma_next)
            d_2 = to_d(x_euler, sigma_next, denoised_2)
            x_next = x + (d + d_2) / 2 * dt
        _check_finite(x_next, "the updated latents", i, total, sigma)
        _report(callback, i, total, sigmas, x, denoised)
        x = x_next
    return x


_SAMPLER_FUNCTIONS = {"euler": sample_euler, "heun": sample_heun}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function for a name in ``SAMPLERS``."""
    try:
        return _SAMPLER_FUNCTIONS[name]
    except (KeyError, TypeError):
        raise UnknownNameError(f"sampler: got {name!r}; choose one of {', '.join(SAMPLERS)}.") from None
