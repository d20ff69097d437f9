"""EDM sampling core: schedules, preconditioning, samplers, and the stock SVD path vs diffusers.

Oracles, strongest first: diffusers' ``StableVideoDiffusionPipeline`` and
``EulerDiscreteScheduler`` (an independent implementation), the exact solution of a linear
probability-flow ODE (convergence order of Euler and Heun), then properties.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kfi_core.errors import (
    CancelledError,
    InputMismatchError,
    KfiError,
    ModelFileError,
    NonFiniteError,
    UnknownNameError,
    UnsupportedSizeError,
)
from kfi_core.evaluation.stock_pipeline import sample_stock_img2vid
from kfi_core.inference.denoiser import (
    SVDDenoiser,
    denoised_from_v,
    edm_scalings,
    per_frame_guidance,
    scale_model_input,
    sigma_to_timestep,
)
from kfi_core.inference.sampling import (
    SAMPLERS,
    get_sampler,
    get_sigmas_karras,
    get_sigmas_svd,
    init_noise_sigma,
    sample_euler,
    sample_heun,
)
from kfi_core.model.tiny import SVD_SCHEDULER_CONFIG

FRAMES, SIZE, STEPS, SEED = 8, 64, 3, 42

# The oracle tolerance. KFI's Euler path performs the same float32 operations as the pipeline
# in the same order (division by sqrt(sigma^2 + 1) in scale_model_input, the v-prediction
# formula of EulerDiscreteScheduler.step, guidance on v, channels-last image tensors into the
# VAE), so on one machine the two agree to the bit (measured: max abs diff 0.0). The 1e-6
# allowance (a few float32 ulps at |latent| ~ 3) is for kernels that round differently on
# another BLAS/oneDNN build. It is deliberately tighter than "1e-5": real mistakes land just
# above it on the tiny model, e.g. starting from sigma_max (700) instead of the scheduler's
# sqrt(700^2 + 1) moves the latents by 1.4e-5, and multiplying by c_in instead of dividing
# moves them by 7.6e-6, the VAE encoding of a contiguous instead of channels-last image 1.6e-6.
ORACLE_ATOL = 1e-6


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(SVD_SCHEDULER_CONFIG)


def _make_image(height=SIZE, width=SIZE):
    import PIL.Image

    rng = np.random.default_rng(0)
    # a smooth gradient plus noise: something the VAE and CLIP do not map to the same as grey
    ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    pixels = np.clip(0.6 * ramp + rng.integers(0, 100, (height, width, 3)), 0, 255).astype(np.uint8)
    return PIL.Image.fromarray(pixels)


@pytest.fixture(scope="module")
def image():
    return _make_image()


@pytest.fixture(scope="module")
def pipeline(tiny_components):
    from diffusers import StableVideoDiffusionPipeline

    # own scheduler: set_timesteps mutates it, and the session's components must stay untouched
    pipe = StableVideoDiffusionPipeline(**dict(tiny_components, scheduler=_scheduler()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stock(components, image, **kwargs):
    args = dict(num_frames=FRAMES, height=SIZE, width=SIZE, steps=STEPS, seed=SEED)
    args.update(kwargs)
    return sample_stock_img2vid(components, image, **args)


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 14, 25, 50, 100])
def test_sigmas_timesteps_and_init_sigma_equal_the_scheduler(steps):
    scheduler = _scheduler()
    scheduler.set_timesteps(steps)
    sigmas = get_sigmas_svd(steps, scheduler.config)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
    assert torch.equal(sigmas, scheduler.sigmas), (sigmas, scheduler.sigmas)
    assert sigmas[-1] == 0 and sigmas[0] == 700.0
    assert torch.equal(sigma_to_timestep(sigmas[:-1]), scheduler.timesteps)
    assert torch.equal(init_noise_sigma(sigmas, scheduler.config), scheduler.init_noise_sigma)


def test_karras_schedule_follows_eq5():
    sigmas = get_sigmas_karras(5, 0.1, 10.0, rho=7.0).double()
    ramp = torch.linspace(0, 1, 5, dtype=torch.float64)
    expected = (10.0 ** (1 / 7) + ramp * (0.1 ** (1 / 7) - 10.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(sigmas[:-1], expected, rtol=1e-7, atol=0)


def test_schedule_errors_name_the_input_and_the_fix():
    with pytest.raises(ModelFileError, match="use_karras_sigmas"):
        get_sigmas_svd(3, dict(SVD_SCHEDULER_CONFIG, use_karras_sigmas=False))
    with pytest.raises(ModelFileError, match="sigma_min=None"):
        get_sigmas_svd(3, dict(SVD_SCHEDULER_CONFIG, sigma_min=None))
    with pytest.raises(KfiError, match="steps: got 0.*at least 1"):
        get_sigmas_svd(0, SVD_SCHEDULER_CONFIG)
    with pytest.raises(KfiError, match="sigmas.*strictly decreasing"):
        sample_euler(lambda x, s: x, torch.zeros(2), torch.tensor([1.0, 2.0, 0.0]))


# --------------------------------------------------------------------------- preconditioning


def test_edm_scalings_formulas():
    sigma = torch.tensor([0.002, 0.5, 1.0, 15.5, 700.0], dtype=torch.float64)
    c_skip, c_out, c_in = edm_scalings(sigma)
    torch.testing.assert_close(c_skip, 1 / (sigma**2 + 1))
    torch.testing.assert_close(c_out, -sigma / torch.sqrt(sigma**2 + 1))
    torch.testing.assert_close(c_in, 1 / torch.sqrt(sigma**2 + 1))
    # at sigma 0 the denoiser is the identity: c_skip = 1, c_out = 0, c_in = 1
    c_skip0, c_out0, c_in0 = edm_scalings(0.0)
    assert float(c_skip0) == 1.0 and float(c_out0) == 0.0 and float(c_in0) == 1.0


def test_preconditioning_and_euler_step_equal_the_scheduler():
    """scale_model_input / step of EulerDiscreteScheduler (v-prediction) vs KFI, on random tensors."""
    steps = 6
    scheduler = _scheduler()
    scheduler.set_timesteps(steps)
    sigmas = get_sigmas_svd(steps, SVD_SCHEDULER_CONFIG)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 4, 5, 5, generator=gen) * float(sigmas[0])
    for i, t in enumerate(scheduler.timesteps):
        sigma = sigmas[i]
        v = torch.randn(x.shape, generator=gen)
        c_skip, c_out, c_in = edm_scalings(sigma)
        scaled = scheduler.scale_model_input(x, t)
        assert torch.equal(scale_model_input(x, sigma), scaled)
        torch.testing.assert_close(x * c_in, scaled, rtol=1e-6, atol=0)
        out = scheduler.step(v, t, x)
        assert torch.equal(denoised_from_v(v, x, sigma), out.pred_original_sample)
        torch.testing.assert_close(c_skip * x + c_out * v, out.pred_original_sample, rtol=1e-5, atol=1e-6)
        # one Euler step of KFI's sampler over [sigma_i, sigma_i+1] == the scheduler's step
        mine = sample_euler(lambda z, s, v=v: denoised_from_v(v, z, s), x, sigmas[i : i + 2])
        assert torch.equal(mine, out.prev_sample), i
        x = out.prev_sample


def test_per_frame_guidance_is_linear_over_frames():
    g = per_frame_guidance(1.0, 3.0, 5)
    assert g.shape == (5,) and g.dtype == torch.float32
    torch.testing.assert_close(g, torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0]))
    assert per_frame_guidance(1.0, 3.0, 1).tolist() == [1.0]
    assert per_frame_guidance(2.0, 2.0, 3).tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(UnsupportedSizeError, match="num_frames: got 0"):
        per_frame_guidance(1.0, 3.0, 0)
    with pytest.raises(KfiError, match="max_guidance: got nan"):
        per_frame_guidance(1.0, float("nan"), 4)


def test_denoiser_guidance_switch_and_shape_errors(tiny_components):
    cond = torch.zeros(1, FRAMES, 4, 16, 16)
    emb, ids = torch.zeros(1, 1, 32), torch.zeros(1, 3)
    unet = tiny_components["unet"]
    on = SVDDenoiser(
        unet,
        condition_latents=cond,
        encoder_hidden_states=emb,
        added_time_ids=ids,
        guidance=per_frame_guidance(1.0, 3.0, FRAMES),
    )
    off = SVDDenoiser(
        unet,
        condition_latents=cond,
        encoder_hidden_states=emb,
        added_time_ids=ids,
        guidance=per_frame_guidance(1.0, 1.0, FRAMES),
    )
    assert on.do_classifier_free_guidance and on.condition_latents.shape[0] == 2
    assert not off.do_classifier_free_guidance and off.condition_latents.shape[0] == 1
    with pytest.raises(InputMismatchError, match="guidance: got 7 per-frame scales for 8 frames"):
        SVDDenoiser(
            unet,
            condition_latents=cond,
            encoder_hidden_states=emb,
            added_time_ids=ids,
            guidance=per_frame_guidance(1.0, 3.0, 7),
        )
    with pytest.raises(InputMismatchError, match="in_channels=8"):
        off(torch.zeros(1, FRAMES, 8, 16, 16), 1.0)


# --------------------------------------------------------------------------- samplers, pure


def _linear_denoiser(x, sigma):
    """The exact denoiser of data ~ N(0, 1): D(x; sigma) = x / (sigma^2 + 1)."""
    return x / (sigma**2 + 1)


def _ode_error(sampler, steps):
    sigmas = get_sigmas_karras(steps, 0.002, 10.0).double()
    x = torch.randn(256, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 10.0
    # probability-flow ODE dx/dsigma = x sigma / (sigma^2 + 1): x(0) = x(10) / sqrt(101)
    exact = x / math.sqrt(101.0)
    return float((sampler(_linear_denoiser, x, sigmas) - exact).abs().max() / exact.abs().max())


def test_euler_is_first_order_and_heun_second_order():
    euler = _ode_error(sample_euler, 20) / _ode_error(sample_euler, 40)
    heun = _ode_error(sample_heun, 20) / _ode_error(sample_heun, 40)
    assert 1.8 < euler < 2.2, euler  # error halves when the steps double
    assert heun > 3.5, heun  # error quarters
    assert _ode_error(sample_heun, 20) < _ode_error(sample_euler, 20) / 4


@pytest.mark.parametrize("name", SAMPLERS)
def test_callback_once_per_step_and_denoise_calls(name):
    steps, seen, calls = 5, [], []
    sigmas = get_sigmas_karras(steps, 0.002, 10.0)

    def denoise(x, sigma):
        calls.append(float(sigma))
        return _linear_denoiser(x, sigma)

    get_sampler(name)(denoise, torch.ones(3) * 10, sigmas, callback=seen.append)
    assert [info["i"] for info in seen] == list(range(steps))
    assert all(info["total"] == steps for info in seen)
    assert [float(info["sigma"]) for info in seen] == sigmas[:-1].tolist()
    assert {"x", "denoised", "sigma_next"} <= set(seen[0])
    assert len(calls) == (steps if name == "euler" else 2 * steps - 1)
    assert 0.0 not in calls  # Heun's last step is Euler: D is never asked at sigma 0


def test_get_sampler_unknown_name_lists_choices():
    assert get_sampler("euler") is sample_euler and get_sampler("heun") is sample_heun
    with pytest.raises(UnknownNameError, match="sampler: got 'dpm'; choose one of euler, heun"):
        get_sampler("dpm")


# --------------------------------------------------------------------------- the oracle


@pytest.mark.parametrize(
    "max_guidance, output_type, decode_chunk_size, image_hw",
    [(3.0, "pt", None, (SIZE, SIZE)), (1.0, "np", 3, (SIZE, SIZE)), (2.0, "pt", None, (80, 96))],
    ids=["guidance-1-to-3", "guidance-off-chunked-decode", "image-resized-by-lanczos"],
)
def test_stock_euler_matches_diffusers_pipeline(
    tiny_components, pipeline, max_guidance, output_type, decode_chunk_size, image_hw
):
    image = _make_image(*image_hw)  # 80 x 96: CLIP sees it as is, the VAE a 64 x 64 Lanczos resize
    common = dict(
        num_frames=FRAMES,
        height=SIZE,
        width=SIZE,
        min_guidance_scale=1.0,
        max_guidance_scale=max_guidance,
        decode_chunk_size=decode_chunk_size,
    )
    expected_steps = []

    def record(pipe, i, t, kwargs):
        expected_steps.append(kwargs["latents"].clone())
        return kwargs

    expected = pipeline(
        image,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(SEED),
        output_type=output_type,
        callback_on_step_end=record,
        **common,
    ).frames
    ours_steps = []
    knobs = dict(min_guidance=1.0, max_guidance=max_guidance, decode_chunk_size=decode_chunk_size)
    latents = _stock(
        tiny_components, image, output_type="latent", callback=lambda info: ours_steps.append(info["x"]), **knobs
    )
    frames = _stock(tiny_components, image, output_type=output_type, **knobs)

    # latents after every step (ours: the next step's input, then the result)
    for i, want in enumerate(expected_steps):
        got = ours_steps[i + 1] if i + 1 < STEPS else latents
        diff = (got - want).abs().max().item()
        # intermediate latents reach |x| ~ 50 at sigma 15.5: the allowance scales with them
        assert diff <= ORACLE_ATOL * max(1.0, want.abs().max().item()), f"step {i + 1}: latents differ by {diff}"
    assert type(frames) is type(expected) and frames.shape == expected.shape
    pixel_diff = float(np.abs(np.asarray(frames) - np.asarray(expected)).max())
    assert pixel_diff <= ORACLE_ATOL, pixel_diff
    assert float(np.asarray(expected).std()) > 0.01  # not a constant image, where anything would match


def test_oracle_tolerance_can_fail(tiny_components, pipeline, image):
    """Another seed is far outside the tolerance, so the oracle test is not vacuous."""
    expected = pipeline(
        image,
        num_frames=FRAMES,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(SEED),
        output_type="latent",
    ).frames
    other = _stock(tiny_components, image, seed=SEED + 1, output_type="latent")
    assert (other - expected).abs().max().item() > 1e4 * ORACLE_ATOL


def test_tensor_image_gives_the_same_video_as_pil(tiny_components, image):
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0  # [3, H, W] in 0..1
    a = _stock(tiny_components, image, steps=2, output_type="latent")
    b = _stock(tiny_components, pixels, steps=2, output_type="latent")
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- stock path properties


def test_heun_runs_is_deterministic_and_differs_from_euler(tiny_components, image):
    calls = []
    unet = _CountingUNet(tiny_components["unet"], calls)
    comps = dict(tiny_components, unet=unet)
    first = _stock(comps, image, sampler="heun", output_type="latent")
    assert len(calls) == 2 * STEPS - 1
    again = _stock(comps, image, sampler="heun", output_type="latent")
    euler = _stock(comps, image, sampler="euler", output_type="latent")
    assert torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert (first - euler).abs().max().item() > 1e-3


def test_check_cancel_stops_after_the_current_step(tiny_components, image):
    asked, steps_done, calls = [], [], []

    def check_cancel():
        asked.append(True)
        if len(asked) == 2:  # the user pressed Cancel during step 1
            raise CancelledError("cancelled by the user")

    comps = dict(tiny_components, unet=_CountingUNet(tiny_components["unet"], calls))
    with pytest.raises(CancelledError):
        _stock(comps, image, output_type="latent", callback=steps_done.append, check_cancel=check_cancel)
    assert len(steps_done) == 1 and len(calls) == 1


def test_callback_count_equals_steps_on_the_stock_path(tiny_components, image):
    seen = []
    _stock(tiny_components, image, steps=4, output_type="latent", callback=seen.append)
    assert [info["i"] for info in seen] == [0, 1, 2, 3]
    assert seen[0]["x"].shape == (1, FRAMES, 4, SIZE // 4, SIZE // 4)


def test_nan_from_the_unet_raises_naming_the_step(tiny_components, image):
    comps = dict(tiny_components, unet=_CountingUNet(tiny_components["unet"], [], nan_on_call=2))
    with pytest.raises(NonFiniteError, match=r"sampling step 2 of 3 \(sigma [0-9.]+\): the denoised estimate") as err:
        _stock(comps, image, output_type="latent")
    assert err.value.step == 1 and err.value.sigma == pytest.approx(15.5, rel=0.05)
    assert "float32" in str(err.value)  # the message says what to do


def test_stock_input_errors(tiny_components, image):
    with pytest.raises(UnknownNameError, match="output_type: got 'pil'"):
        _stock(tiny_components, image, output_type="pil")
    with pytest.raises(UnknownNameError, match="sampler: got 'lms'"):
        _stock(tiny_components, image, sampler="lms")
    with pytest.raises(UnsupportedSizeError, match="got 60 x 64; both must be positive multiples of 8"):
        _stock(tiny_components, image, height=60)
    with pytest.raises(InputMismatchError, match="got 32 x 32 pixels for a 64 x 64 clip"):
        _stock(tiny_components, torch.rand(3, 32, 32))
    with pytest.raises(InputMismatchError, match="values range from"):
        _stock(tiny_components, torch.rand(3, SIZE, SIZE) * 2 - 1)
    with pytest.raises(KfiError, match="components: missing vae"):
        _stock({k: v for k, v in tiny_components.items() if k != "vae"}, image)


class _CountingUNet(torch.nn.Module):
    """Wraps the UNet: counts calls, optionally returns NaN from one of them (1-based)."""

    def __init__(self, inner, calls, nan_on_call=None):
        super().__init__()
        self.inner = inner
        self.calls = calls
        self.nan_on_call = nan_on_call

    @property
    def config(self):
        return self.inner.config

    @property
    def add_embedding(self):
        return self.inner.add_embedding

    def forward(self, *args, **kwargs):
        self.calls.append(True)
        out = self.inner(*args, **kwargs)
        if len(self.calls) == self.nan_on_call:
            return (torch.full_like(out[0], float("nan")),)
        return out
