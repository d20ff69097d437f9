"""EDM v-prediction preconditioning of the SVD UNet, and classifier-free guidance per frame.

Stable Video Diffusion's UNet is a v-prediction network in the EDM parametrisation
(Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Table 1, with the v-prediction output scaling of Salimans & Ho 2022 as in k-diffusion's
``VDenoiser``):

    D(x; sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x; c_noise(sigma))

with sigma_data = 1: c_skip = 1 / (sigma^2 + 1), c_out = -sigma / sqrt(sigma^2 + 1),
c_in = 1 / sqrt(sigma^2 + 1), and c_noise = 0.25 * ln(sigma). These are exactly the formulas
of diffusers' ``EulerDiscreteScheduler`` for ``prediction_type="v_prediction"`` and
``timestep_type="continuous"`` (``scale_model_input`` and the v branch of ``step``). They live
here once, for sampling and for the training loss alike.

Latents are [B, F, C, h, w] as in diffusers.
"""

from __future__ import annotations

import logging
import math

import torch

from kfi_core.errors import InputMismatchError, SettingsError, UnsupportedSizeError

logger = logging.getLogger(__name__)

#: Standard deviation of the data EDM assumes; SVD's latents are treated as unit variance.
SIGMA_DATA = 1.0


def edm_scalings(
    sigma: torch.Tensor | float, sigma_data: float = SIGMA_DATA
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM preconditioning for a v-prediction network: ``(c_skip, c_out, c_in)`` at ``sigma``.

    Karras et al. (2022), Table 1 / eq. (7), with k-diffusion's ``VDenoiser.get_scalings``
    output sign for v-prediction: c_skip = sd^2 / (sigma^2 + sd^2),
    c_out = -sigma * sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2).
    Works elementwise on tensors of any shape; a float gives float32 0-dim tensors.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32) if not isinstance(sigma, torch.Tensor) else sigma
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = -sigma * sigma_data / total**0.5
    c_in = 1 / total**0.5
    return c_skip, c_out, c_in


def scale_model_input(x: torch.Tensor, sigma: torch.Tensor | float, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """c_in(sigma) * x, the UNet's input scaling (EDM Table 1).

    Written as a division by sqrt(sigma^2 + sd^2), the order of operations of diffusers'
    ``EulerDiscreteScheduler.scale_model_input``, so that KFI's sampler reproduces the pipeline
    to the bit (multiplying by the rounded 1 / sqrt(...) differs in the last place).
    """
    return x / (sigma**2 + sigma_data**2) ** 0.5


def denoised_from_v(
    v: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor | float, sigma_data: float = SIGMA_DATA
) -> torch.Tensor:
    """D(x; sigma) = c_skip * x + c_out * v from the network's v-prediction output (EDM eq. 7).

    Same formula and order as the v-prediction branch of ``EulerDiscreteScheduler.step``:
    ``v * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1)`` for sigma_data 1.
    ``sigma`` broadcasts against x (a 0-dim tensor, or [B, 1, 1, 1, 1]).
    """
    total = sigma**2 + sigma_data**2
    return v * (-sigma * sigma_data / total**0.5) + x * sigma_data**2 / total


def sigma_to_timestep(sigma: torch.Tensor | float) -> torch.Tensor:
    """The UNet's noise conditioning c_noise(sigma) = 0.25 * ln(sigma) (EDM Table 1).

    What diffusers' ``EulerDiscreteScheduler`` passes as ``timesteps`` for
    ``timestep_type="continuous"`` with v-prediction; training must feed the same.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32) if not isinstance(sigma, torch.Tensor) else sigma
    return 0.25 * sigma.log()


def per_frame_guidance(min_guidance: float, max_guidance: float, num_frames: int) -> torch.Tensor:
    """Classifier-free guidance scale per frame, linear from ``min_guidance`` (frame 0) to ``max_guidance``.

    As ``StableVideoDiffusionPipeline`` step 8 (``torch.linspace``): the first frame, which the
    image condition pins down, gets the least guidance. Returns float32 [num_frames].
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise UnsupportedSizeError(f"num_frames: got {num_frames!r}; give at least 1 frame (SVD-XT uses 25).")
    for name, value in (("min_guidance", min_guidance), ("max_guidance", max_guidance)):
        if not math.isfinite(float(value)):
            raise SettingsError(f"{name}: got {value!r}; give a finite guidance scale (SVD uses 1.0 to 3.0).")
    return torch.linspace(float(min_guidance), float(max_guidance), num_frames, dtype=torch.float32)


def _module_dtype(module: torch.nn.Module) -> torch.dtype:
    try:
        return next(module.parameters()).dtype
    except (StopIteration, AttributeError):
        return torch.float32


class SVDDenoiser:
    """``denoise(x, sigma) -> D(x; sigma)`` over an SVD UNet, with classifier-free guidance per frame.

    What ``StableVideoDiffusionPipeline``'s denoising loop does, minus the scheduler step:

    1. scale the noisy latents by c_in (``scale_model_input``), then concatenate ``condition_latents`` on the channel
       dim (dim 2) *unscaled*, as SVD was trained;
    2. feed the UNet c_noise(sigma), ``encoder_hidden_states`` and ``added_time_ids``;
    3. with guidance, run uncond and cond as one batch of 2B, uncond first, the uncond half
       having zero image embeddings and zero condition latents (same ``added_time_ids``), and
       mix the raw v outputs: v = v_u + g * (v_c - v_u), g per frame;
    4. return c_skip * x + c_out * v (``denoised_from_v``).

    Guidance is skipped (one batch of B) when the largest scale is <= 1, as the pipeline's
    ``do_classifier_free_guidance`` property does.

    Args:
        unet: ``UNetSpatioTemporalConditionModel`` (or a module with its call signature).
        condition_latents: [B, F, C_cond, h, w], concatenated after the noisy latents.
        encoder_hidden_states: [B, 1, D], CLIP ``image_embeds[:, None]``.
        added_time_ids: [B, 3] = [fps - 1, motion_bucket_id, noise_aug_strength].
        guidance: a float, or float [F] from ``per_frame_guidance``.

    ``x`` is kept in its own dtype (float32 in KFI); only the UNet's input is cast to the UNet's
    dtype, and its output back.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        *,
        condition_latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        guidance: torch.Tensor | float = 1.0,
    ) -> None:
        if condition_latents.ndim != 5:
            raise InputMismatchError(
                f"condition_latents: got shape {tuple(condition_latents.shape)}; pass [B, F, C, h, w] "
                "(one latent per frame, as diffusers' SVD pipeline lays them out)."
            )
        batch, frames = condition_latents.shape[:2]
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != batch:
            raise InputMismatchError(
                f"encoder_hidden_states: got shape {tuple(encoder_hidden_states.shape)} for {batch} clip(s); "
                "pass [B, 1, D] = CLIP image_embeds[:, None], one row per clip."
            )
        if added_time_ids.ndim != 2 or added_time_ids.shape[0] != batch:
            raise InputMismatchError(
                f"added_time_ids: got shape {tuple(added_time_ids.shape)} for {batch} clip(s); "
                "pass [B, 3] = [fps - 1, motion_bucket_id, noise_aug_strength] per clip."
            )
        guidance = torch.as_tensor(guidance, dtype=torch.float32).to(condition_latents.device)
        if guidance.ndim == 1 and guidance.shape[0] != frames:
            raise InputMismatchError(
                f"guidance: got {guidance.shape[0]} per-frame scales for {frames} frames; "
                "give one per frame (per_frame_guidance(min, max, num_frames)) or a single float."
            )
        if guidance.ndim > 1:
            raise InputMismatchError(
                f"guidance: got shape {tuple(guidance.shape)}; give a float or a 1-D tensor of one scale per frame."
            )
        self.unet = unet
        self.num_frames = frames
        self.model_dtype = _module_dtype(unet)
        # guidance [F] -> [1, F, 1, 1, 1], broadcast over batch, channels and pixels
        self.guidance = guidance.reshape(1, frames, 1, 1, 1) if guidance.ndim == 1 else guidance
        self.do_classifier_free_guidance = bool(guidance.max() > 1)
        in_channels = getattr(getattr(unet, "config", None), "in_channels", None)
        self._condition_channels = condition_latents.shape[2]
        self._in_channels = in_channels
        if self.do_classifier_free_guidance:
            # batch of 2B: [uncond, cond], uncond with zero image embedding and zero condition latents
            condition_latents = torch.cat([torch.zeros_like(condition_latents), condition_latents])
            encoder_hidden_states = torch.cat([torch.zeros_like(encoder_hidden_states), encoder_hidden_states])
            added_time_ids = torch.cat([added_time_ids, added_time_ids])
        self.condition_latents = condition_latents.to(self.model_dtype)
        self.encoder_hidden_states = encoder_hidden_states.to(self.model_dtype)
        self.added_time_ids = added_time_ids.to(self.model_dtype)

    def _check_x(self, x: torch.Tensor) -> None:
        cond = self.condition_latents
        batch = cond.shape[0] // (2 if self.do_classifier_free_guidance else 1)
        if x.ndim != 5 or x.shape[0] != batch or x.shape[1] != cond.shape[1] or x.shape[3:] != cond.shape[3:]:
            raise InputMismatchError(
                f"latents: got shape {tuple(x.shape)}, but the condition is for [{batch}, {cond.shape[1]}, C, "
                f"{cond.shape[3]}, {cond.shape[4]}]; build the denoiser for the same clip size and frame count."
            )
        if self._in_channels is not None and x.shape[2] + self._condition_channels != self._in_channels:
            raise InputMismatchError(
                f"latents: {x.shape[2]} noisy + {self._condition_channels} condition channels make "
                f"{x.shape[2] + self._condition_channels}, but the UNet takes in_channels={self._in_channels}; "
                "use condition latents made for this UNet (stock SVD: 4 + 4 = 8)."
            )

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """D(x; sigma) for latents x [B, F, C, h, w] at a scalar sigma (or one per clip, [B])."""
        self._check_x(x)
        sigma = torch.as_tensor(sigma, dtype=torch.float32) if not isinstance(sigma, torch.Tensor) else sigma
        if sigma.ndim == 1:
            sigma = sigma.to(x.device)
            scale_sigma = sigma.reshape(-1, 1, 1, 1, 1)  # [B] -> [B, 1, 1, 1, 1]
        else:
            scale_sigma = sigma
        timestep = sigma_to_timestep(sigma)
        model_x = scale_model_input(x, scale_sigma)
        if self.do_classifier_free_guidance:
            model_x = torch.cat([model_x, model_x])  # [2B, F, C, h, w]
            if timestep.ndim == 1:
                timestep = torch.cat([timestep, timestep])
        # [2B, F, C + C_cond, h, w]: the condition is not scaled by c_in
        model_in = torch.cat([model_x.to(self.model_dtype), self.condition_latents], dim=2)
        v = self.unet(
            model_in,
            timestep,
            encoder_hidden_states=self.encoder_hidden_states,
            added_time_ids=self.added_time_ids,
            return_dict=False,
        )[0].to(x.dtype)
        if self.do_classifier_free_guidance:
            v_uncond, v_cond = v.chunk(2)
            v = v_uncond + self.guidance.to(v.dtype) * (v_cond - v_uncond)
        return denoised_from_v(v, x, scale_sigma)
