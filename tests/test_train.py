"""Training on the tiny model: objective, trainable set, learning, exact resume, adapter, multi-process, errors."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kfi_core import cli
from kfi_core.bundled import make_sample_clip
from kfi_core.errors import ResumeError, TrainConfigError, UnsupportedSizeError
from kfi_core.media.video import read_frames, write_frames
from kfi_core.training.checkpoints import list_checkpoints
from kfi_core.training.config import apply_overrides, config_from_dict, load_train_config, parse_resolution, stage_at
from kfi_core.training.data import ClipDataset, collate_samples
from kfi_core.training.objective import (
    build_unet_inputs,
    compute_loss,
    kfi_loss,
    optimizer_groups,
    sample_generator,
    setup_trainable_unet,
)
from kfi_core.training.trainer import ADAPTER_FILE, LOG_FILE, TrainLog, read_train_log, train

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny.json"


@pytest.fixture(scope="module")
def one_clip_data(tmp_path_factory) -> Path:
    """A one-clip dataset: the bundled procedural scene (8 frames, 64x64) as an mp4."""
    root = tmp_path_factory.mktemp("one-clip")
    write_frames(make_sample_clip(num_frames=8)["frames"], root / "clip.mp4")
    return root


def tiny_config(model, data, out, **overrides):
    return apply_overrides(load_train_config(TINY_CONFIG), model=str(model), data=str(data), out=str(out), **overrides)


def train_args(model, data, out, *extra) -> list[str]:
    return [
        "train",
        "--config",
        str(TINY_CONFIG),
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        *extra,
    ]


def losses(out: Path) -> list[float]:
    return [e["loss"] for e in read_train_log(out / LOG_FILE)]


# --------------------------------------------------------------------------- objective


def test_loss_is_edm_weighted_denoised_error():
    """kfi_loss (v-MSE) == mean(w(sigma) * (D - x0)^2), w = (sigma^2 + 1) / sigma^2, D from
    kfi_core.inference.denoiser."""
    from kfi_core.inference.denoiser import denoised_from_v

    g = torch.Generator().manual_seed(0)
    x0, noise, v = (torch.randn(2, 8, 4, 16, 16, generator=g) for _ in range(3))
    sigma = torch.tensor([0.05, 20.0]).view(2, 1, 1, 1, 1)
    x_t = x0 + sigma * noise
    expected = ((sigma**2 + 1) / sigma**2 * (denoised_from_v(v, x_t, sigma) - x0) ** 2).mean()
    # float32 rounding of D - x0 at sigma 0.05 (w = 401) allows ~1e-5 relative
    torch.testing.assert_close(kfi_loss(v, x0, x_t, sigma), expected, rtol=1e-4, atol=0)
    weight = torch.ones(2, 8, 1, 16, 16) * 3.0
    torch.testing.assert_close(kfi_loss(v, x0, x_t, sigma, weight), 3 * kfi_loss(v, x0, x_t, sigma))


@pytest.fixture(scope="module")
def trainable_model(tiny_model_dir):
    from kfi_core.model.loading import load_kfi_model

    model = load_kfi_model(tiny_model_dir)
    setup_trainable_unet(model.unet, rank=4)
    model.unet.train()
    with torch.no_grad():  # a non-zero LoRA B, so LoRA A receives gradient too
        for name, p in model.unet.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.01)
    return model


def one_batch(data, keyframe_prob=1.0):
    ds = ClipDataset(data, num_frames=8, resolution=(64, 64), keyframe_prob=keyframe_prob)
    return collate_samples([ds[0]])


def test_only_lora_and_conv_in_receive_gradients(trainable_model, one_clip_data):
    cfg = config_from_dict({"cond_dropout_prob": 0.0})
    inputs = build_unet_inputs(
        trainable_model, one_batch(one_clip_data), cfg, [sample_generator(0, 0, 0)], torch.device("cpu")
    )
    unet = trainable_model.unet
    unet.zero_grad(set_to_none=True)
    compute_loss(unet, inputs).backward()
    with_grad = {n for n, p in unet.named_parameters() if p.grad is not None}
    lora = {n for n in with_grad if ".lora_A." in n or ".lora_B." in n}
    assert with_grad == lora | {"conv_in.weight", "conv_in.bias"}
    assert len(lora) == 128  # A and B of 64 attention projections
    assert all(p.grad.abs().sum() > 0 for n, p in unet.named_parameters() if n in with_grad)
    assert unet.conv_in.weight.grad[:, 8:].abs().sum() > 0  # the white-filled condition channels learn
    assert not any(p.requires_grad for n, p in unet.named_parameters() if n not in with_grad)
    unet.zero_grad(set_to_none=True)


def test_lora_lr_moves_the_lora_weights_at_their_own_rate(trainable_model):
    """AdamW's first step moves every weight by its group's lr (times sign of the gradient, no weight decay):
    with lora_lr the LoRA weights move at lora_lr and conv_in at lr; without it everything at lr."""
    unet = trainable_model.unet
    for lora_lr, expected_lora in ((1e-4, 1e-4), (None, 1e-2)):
        cfg = config_from_dict({"lr": 1e-2, "lora_lr": lora_lr, "weight_decay": 0.0})
        groups = optimizer_groups(unet, cfg)
        assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in unet.parameters())
        before = {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.0)
        for p in unet.parameters():
            if p.requires_grad:
                p.grad = torch.ones_like(p)
        optimizer.step()
        with torch.no_grad():
            for n, p in unet.named_parameters():
                if n in before:
                    step = float((before[n] - p).abs().max())
                    assert step == pytest.approx(1e-2 if n.startswith("conv_in.") else expected_lora, rel=1e-3), n
                    p.copy_(before[n])
                    p.grad = None
    with pytest.raises(TrainConfigError, match="lora_lr: got -1"):
        config_from_dict({"lora_lr": -1}).check()


def test_training_inputs_are_what_inference_feeds(trainable_model, one_clip_data):
    """The training forward equals kfi_core.inference.denoiser.SVDDenoiser (the sampler's path) on the same
    condition."""
    from kfi_core.inference.condition import encode_symmetric, prepare_clip
    from kfi_core.inference.denoiser import SVDDenoiser, denoised_from_v

    cfg = config_from_dict({"cond_dropout_prob": 0.0, "noise_aug_strength": 0.02})
    batch = one_batch(one_clip_data)
    inputs = build_unet_inputs(trainable_model, batch, cfg, [sample_generator(0, 0, 5)], torch.device("cpu"))
    sigma = inputs.sigma
    torch.testing.assert_close(inputs.timestep, 0.25 * sigma.log())
    assert inputs.added_time_ids.tolist() == [[6.0, 127.0, pytest.approx(0.02)]]  # fps - 1, motion, aug
    # the condition channels are encode_symmetric of the masked clip with the keyframe fully known
    kf = int(batch["keyframe_index"][0])
    clip = prepare_clip(batch["frames"][0], batch["masks"][0], keyframe_indices=[kf])
    gen = sample_generator(0, 0, 5)
    torch.randn((), generator=gen), torch.rand((), generator=gen)  # the sigma and dropout draws come first
    cond = encode_symmetric(trainable_model.vae, clip, noise_aug_strength=0.02, generator=gen)
    assert torch.equal(inputs.model_in[:, :, 4:], cond)
    with torch.no_grad():
        v = trainable_model.unet(
            inputs.model_in,
            inputs.timestep,
            encoder_hidden_states=inputs.encoder_hidden_states,
            added_time_ids=inputs.added_time_ids,
            return_dict=False,
        )[0]
        d_train = denoised_from_v(v, inputs.x_t, sigma.view(-1, 1, 1, 1, 1))
        denoiser = SVDDenoiser(
            trainable_model.unet,
            condition_latents=cond,
            encoder_hidden_states=inputs.encoder_hidden_states,
            added_time_ids=inputs.added_time_ids,
            guidance=1.0,
        )
        d_infer = denoiser(inputs.x_t, sigma)
    assert torch.equal(d_train, d_infer)


def test_conditioning_dropout_zeroes_embedding_and_condition(trainable_model, one_clip_data):
    cfg = config_from_dict({"cond_dropout_prob": 1.0})
    inputs = build_unet_inputs(
        trainable_model, one_batch(one_clip_data), cfg, [sample_generator(0, 0, 0)], torch.device("cpu")
    )
    assert inputs.dropped.tolist() == [True]
    assert not inputs.model_in[:, :, 4:].any() and not inputs.encoder_hidden_states.any()
    assert inputs.model_in[:, :, :4].abs().sum() > 0


def test_region_weight_inside_latent_mask(trainable_model, one_clip_data):
    cfg = config_from_dict({"masked_loss_weight": 4.0})
    inputs = build_unet_inputs(
        trainable_model,
        one_batch(one_clip_data, keyframe_prob=0.0),
        cfg,
        [sample_generator(0, 0, 0)],
        torch.device("cpu"),
    )
    assert set(torch.unique(inputs.weight).tolist()) == {1.0, 4.0}


def test_latent_channel_weights_split_the_loss_by_channel(trainable_model, one_clip_data):
    """Invariant: with the same draws, the losses weighted by each channel alone add up to the plain loss (the loss is
    a mean over channels), and they combine with the region weight; a count other than the VAE's is refused."""

    def loss(**settings):
        inputs = build_unet_inputs(
            trainable_model,
            one_batch(one_clip_data, keyframe_prob=0.0),
            config_from_dict(settings),
            [sample_generator(0, 0, 1)],
            torch.device("cpu"),
        )
        with torch.no_grad():
            return float(compute_loss(trainable_model.unet, inputs))

    for region in ({}, {"masked_loss_weight": 4.0}):
        whole = loss(**region)
        parts = [loss(latent_channel_weights=[float(c == k) for c in range(4)], **region) for k in range(4)]
        assert all(p > 0 for p in parts)
        assert sum(parts) == pytest.approx(whole, rel=1e-5)
        assert loss(latent_channel_weights=[2.0, 0.0, 0.0, 0.5], **region) == pytest.approx(
            2.0 * parts[0] + 0.5 * parts[3], rel=1e-5
        )
    with pytest.raises(TrainConfigError, match="got 3 weights but the model's VAE has 4 latent channels"):
        loss(latent_channel_weights=[1.0, 1.0, 1.0])
    for bad in ([1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], []):
        with pytest.raises(TrainConfigError, match="latent_channel_weights: got"):
            config_from_dict({"latent_channel_weights": bad}).check()


def test_keyframe_p_mean_and_std_set_the_noise_levels_of_keyframe_samples_only(trainable_model, one_clip_data):
    def sigma(keyframe_prob, **settings):
        inputs = build_unet_inputs(
            trainable_model,
            one_batch(one_clip_data, keyframe_prob=keyframe_prob),
            config_from_dict({"p_mean": 0.3, **settings}),
            [sample_generator(0, 0, 3)],
            torch.device("cpu"),
        )
        return float(inputs.sigma[0])

    assert sigma(1.0, keyframe_p_mean=2.3) == pytest.approx(sigma(1.0) * math.exp(2.0), rel=1e-5)  # same draw
    assert sigma(0.0, keyframe_p_mean=2.3) == sigma(0.0)  # removal samples keep p_mean
    assert sigma(1.0, keyframe_p_mean=None) == sigma(1.0)
    # ln(sigma) = p_mean + p_std * z with the same z: the spread scales the draw's distance from the mean
    z = math.log(sigma(1.0)) - 0.3
    assert math.log(sigma(1.0, keyframe_p_mean=2.3, keyframe_p_std=0.3)) == pytest.approx(2.3 + 0.3 * z / 1.6, rel=1e-5)
    assert sigma(0.0, keyframe_p_std=0.3) == sigma(0.0)
    with pytest.raises(TrainConfigError, match="keyframe_p_mean"):
        config_from_dict({"keyframe_p_mean": float("nan")}).check()
    with pytest.raises(TrainConfigError, match="keyframe_p_std"):
        config_from_dict({"keyframe_p_std": 0.0}).check()


# --------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_loss_goes_down_on_one_clip(tiny_model_dir, one_clip_data, tmp_path):
    """100 steps on one clip; the objective on 8 fixed (sigma, noise) draws of that clip, before and after, through
    the trainer's own input builder and loss: a like-for-like comparison, deterministic on CPU. Asserted: the trained
    adapter's loss is below 0.6 x the fresh one's."""
    from kfi_core.model.loading import load_kfi_model
    from kfi_core.training.data import collate_samples
    from kfi_core.training.trainer import stage_dataset

    cfg = tiny_config(
        tiny_model_dir, one_clip_data, tmp_path, steps=100, lr=5e-3, rank=8, cond_dropout_prob=0.0, checkpoint_every=0
    )
    train(cfg)
    assert [e["step"] for e in read_train_log(tmp_path / LOG_FILE)] == list(range(1, 101))

    def fixed_loss(model) -> float:
        batch = collate_samples([stage_dataset(cfg, model, 0)[0]])
        with torch.no_grad():
            losses = [
                float(
                    compute_loss(
                        model.unet,
                        build_unet_inputs(model, batch, cfg, [sample_generator(7, 0, n)], torch.device("cpu")),
                    )
                )
                for n in range(8)
            ]
        return sum(losses) / len(losses)

    fresh = load_kfi_model(tiny_model_dir)
    setup_trainable_unet(fresh.unet, cfg.rank)
    trained = load_kfi_model(tiny_model_dir, adapter=tmp_path / ADAPTER_FILE)
    before, after = fixed_loss(fresh), fixed_loss(trained)
    assert after < 0.6 * before, (before, after)


def test_lr_decay_fraction_anneals_the_last_steps(tiny_model_dir, one_clip_data, tmp_path):
    """Analytic: with lr_decay_fraction 0.5 of 8 steps the rate holds for 4 steps, then falls linearly to 10 %; the
    training log's lr (the rate after each step's scheduler update) follows lr_scale exactly. 0 keeps it constant."""
    from kfi_core.training.objective import lr_scale

    assert [lr_scale(k, 8, 0, 0.5) for k in range(1, 9)] == pytest.approx([1, 1, 1, 1, 0.775, 0.55, 0.325, 0.1])
    assert [lr_scale(k, 8, 0, 0.0) for k in range(8)] == [1.0] * 8
    assert lr_scale(0, 100, 10, 0.2) == pytest.approx(0.1) and lr_scale(100, 100, 10, 0.2) == pytest.approx(0.1)
    cfg = tiny_config(
        tiny_model_dir, one_clip_data, tmp_path, steps=8, lr=1e-3, lr_decay_fraction=0.5, checkpoint_every=0
    )
    train(cfg)
    logged = [e["lr"] for e in read_train_log(tmp_path / LOG_FILE)]
    assert logged == pytest.approx([1e-3 * lr_scale(k, 8, 0, 0.5) for k in range(1, 9)])
    assert logged[-1] == pytest.approx(1e-4)
    with pytest.raises(TrainConfigError, match=r"lr_decay_fraction: got 1.5; give the last fraction"):
        config_from_dict({"lr_decay_fraction": 1.5}).check()


# --------------------------------------------------------------------------- resume, adapter, validation


class Killed(BaseException):
    pass


@pytest.fixture(scope="module")
def runs(tiny_model_dir, one_clip_data, tmp_path_factory):
    """Run A: 8 steps straight through the CLI (checkpoints every 4, validation at 8).
    Run B: the same run killed after logging step 6 (checkpoint at 4), then `--resume latest`."""
    base = tmp_path_factory.mktemp("runs")
    a, b = base / "a", base / "b"
    common = ("--steps", "8", "--checkpoint-every", "4")
    assert cli.main(train_args(tiny_model_dir, one_clip_data, a, *common, "--validate-every", "8")) == 0

    original = TrainLog.write

    def write_then_die(self, entry):
        original(self, entry)
        if entry["step"] == 6:
            raise Killed()

    TrainLog.write = write_then_die
    try:
        with pytest.raises(Killed):
            cli.main(train_args(tiny_model_dir, one_clip_data, b, *common))
    finally:
        TrainLog.write = original
    killed_log = [e["step"] for e in read_train_log(b / LOG_FILE)]
    assert cli.main(train_args(tiny_model_dir, one_clip_data, b, *common, "--resume", "latest")) == 0
    return {"a": a, "b": b, "killed_log": killed_log}


@pytest.mark.slow
def test_resume_gives_the_same_loss_trajectory(runs):
    """Bit-exact: every random draw is seeded by (seed, stage, sample number), and the checkpoint holds the fp32
    trainable weights, AdamW's moments and step, and the LR schedule exactly (same machine, same threads)."""
    from safetensors.torch import load_file

    a, b = runs["a"], runs["b"]
    assert runs["killed_log"] == [1, 2, 3, 4, 5, 6]
    log_b = read_train_log(b / LOG_FILE)
    assert [e["step"] for e in log_b] == list(range(1, 9))  # steps 5, 6 logged once, not twice
    assert losses(a) == losses(b)
    ta, tb = load_file(str(a / ADAPTER_FILE)), load_file(str(b / ADAPTER_FILE))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_checkpoints_are_complete_and_pruned(runs):
    a = runs["a"]
    found = list_checkpoints(a)
    assert [step for step, _ in found] == [4, 8]  # keep_checkpoints 2 in configs/tiny.json
    names = {p.name for p in found[-1][1].iterdir()}
    assert names == {"trainable.safetensors", "optimizer.safetensors", "training_state.json"}  # no pickle
    state = json.loads((found[-1][1] / "training_state.json").read_text())
    assert (state["step"], state["samples_seen"], state["world_size"]) == (8, 8, 1)
    assert not [p for p in (a / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary folders


def test_validation_video_is_a_grid(runs):
    frames, _ = read_frames(runs["a"] / "validation" / "step-00000008.mp4")
    assert frames.shape == (8, 3, 64, 128)  # input with mask | output


def test_adapter_loads_and_inpaints(runs, tiny_model_dir, tmp_path):
    from kfi_core.inference.condition import prepare_clip
    from kfi_core.inference.executor import propagate
    from kfi_core.inference.settings import PropagateSettings
    from kfi_core.model.loading import load_kfi_model

    model = load_kfi_model(tiny_model_dir, adapter=runs["a"] / ADAPTER_FILE)
    assert model.in_channels == 12 and model.adapter.rank == 4 and model.adapter.training_resolution == (64, 64)
    assert model.unet.conv_in.weight[:, 8:].abs().sum() > 0  # trained: no longer the zero init
    sample = make_sample_clip(num_frames=8)
    clip = prepare_clip(sample["frames"], sample["masks"], keyframe_indices=[0])
    out = propagate(model, clip, PropagateSettings(steps=2))
    assert out.shape == (8, 3, 64, 64) and torch.isfinite(out).all()
    keep = clip.masks.expand_as(out) == 0
    assert torch.equal(out[keep], clip.frames[keep])
    # and through the inpaint command
    write_frames(sample["frames"], tmp_path / "in")
    write_frames(sample["masks"].expand(-1, 3, -1, -1), tmp_path / "mask")
    args = [
        "inpaint",
        "--model",
        str(tiny_model_dir),
        "--adapter",
        str(runs["a"] / ADAPTER_FILE),
        "--video",
        str(tmp_path / "in"),
        "--mask",
        str(tmp_path / "mask"),
        "--out",
        str(tmp_path / "out.mp4"),
        "--steps",
        "2",
    ]
    assert cli.main(args) == 0 and (tmp_path / "out.mp4").is_file()


def test_export_adapter_writes_what_the_run_wrote_at_that_step(runs, tiny_model_dir, tmp_path):
    """Oracle: run A's last checkpoint (step 8), exported, is the run's own adapter.safetensors, tensors and
    metadata; the step-4 checkpoint exports to other weights that load and differ from the step-8 ones."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from kfi_core.model.loading import load_kfi_model
    from kfi_core.training import export_checkpoint

    a = runs["a"]
    (_, at4), (_, at8) = list_checkpoints(a)
    assert cli.main(["export-adapter", str(at8), str(tmp_path / "8.safetensors")]) == 0  # base model from settings
    ref, got = load_file(str(a / ADAPTER_FILE)), load_file(str(tmp_path / "8.safetensors"))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    with safe_open(str(a / ADAPTER_FILE), "pt") as f, safe_open(str(tmp_path / "8.safetensors"), "pt") as g:
        assert f.metadata() == g.metadata()
    export_checkpoint(at4, tmp_path / "4.safetensors", model=str(tiny_model_dir))
    early = load_file(str(tmp_path / "4.safetensors"))
    assert early.keys() == ref.keys() and not all(torch.equal(early[k], ref[k]) for k in ref)
    assert load_kfi_model(tiny_model_dir, adapter=tmp_path / "4.safetensors").in_channels == 12

    with pytest.raises(ResumeError, match=r"checkpoint .*absent: no such folder"):
        export_checkpoint(tmp_path / "absent", tmp_path / "x.safetensors")
    with pytest.raises(ResumeError, match=r"^checkpoint .*: no training_state.json"):
        export_checkpoint(tmp_path, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_from_adapter_starts_from_the_file(runs, tiny_model_dir, one_clip_data, tmp_path):
    """Fine-tuning: a run given run A's adapter starts from its weights. With a learning rate of 1e-12 one step
    leaves them where they began, so the run's adapter equals A's (a fresh start would give LoRA B = 0 and a zero
    new conv_in); its first loss, on the same seeded first sample as A's first step, is the trained adapter's, not
    the fresh one's. A file of another rank, or none, is refused before any training, naming from_adapter."""
    from safetensors.torch import load_file

    a = runs["a"]
    out = tmp_path / "ft"
    assert (
        cli.main(
            train_args(
                tiny_model_dir,
                one_clip_data,
                out,
                "--steps",
                "1",
                "--lr",
                "1e-12",
                "--from-adapter",
                str(a / ADAPTER_FILE),
            )
        )
        == 0
    )
    ref, got = load_file(str(a / ADAPTER_FILE)), load_file(str(out / ADAPTER_FILE))
    assert ref.keys() == got.keys()
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=1e-8)
    assert losses(out)[0] != losses(a)[0]
    assert float(ref["conv_in.weight"][:, 8:].abs().max()) > 0  # the start is not the fresh one

    with pytest.raises(TrainConfigError, match=r"from_adapter: .* rank 4 alpha 4, this run rank 8"):
        train(
            tiny_config(
                tiny_model_dir, one_clip_data, tmp_path / "r8", steps=1, rank=8, from_adapter=str(a / ADAPTER_FILE)
            )
        )
    with pytest.raises(TrainConfigError, match=r"from_adapter: .*missing.safetensors: no such file"):
        train(
            tiny_config(
                tiny_model_dir,
                one_clip_data,
                tmp_path / "none",
                steps=1,
                from_adapter=str(tmp_path / "missing.safetensors"),
            )
        )
    assert not (tmp_path / "r8" / ADAPTER_FILE).exists()


def test_removed_options_are_refused_when_on_and_dropped_when_off(tiny_model_dir, one_clip_data, tmp_path):
    """reference_attention and repeat_noise_every were removed: a saved config (or a checkpoint) that holds their
    "off" value loads as before; one that turns them on is refused, naming the option and why."""
    for name, off, on in (("reference_attention", False, True), ("repeat_noise_every", 0, 10)):
        assert name not in config_from_dict({name: off}).to_dict()
        with pytest.raises(TrainConfigError, match=rf"config: {name} = {on!r}, but .* removed from this KFI"):
            config_from_dict({name: on})
    train(tiny_config(tiny_model_dir, one_clip_data, tmp_path / "run", steps=1, checkpoint_every=1))
    ((_, last),) = list_checkpoints(tmp_path / "run")[-1:]
    state_file = last / "training_state.json"
    state = json.loads(state_file.read_text())
    state["fingerprint"]["reference_attention"] = True  # as a run with the option on wrote it
    state_file.write_text(json.dumps(state))
    with pytest.raises(TrainConfigError, match=r"reference_attention = True, but reference attention was measured"):
        train(tiny_config(tiny_model_dir, one_clip_data, tmp_path / "run", steps=2, resume="latest"))


# --------------------------------------------------------------------------- resume errors


def test_resume_latest_without_checkpoint(tiny_model_dir, one_clip_data, tmp_path):
    with pytest.raises(ResumeError, match=r"no checkpoint in .*checkpoints\. Start a new run without --resume"):
        train(tiny_config(tiny_model_dir, one_clip_data, tmp_path, resume="latest"))


def test_resume_from_missing_corrupt_or_changed_checkpoint(runs, tiny_model_dir, one_clip_data, tmp_path):
    import shutil

    src = list_checkpoints(runs["a"])[0][1]  # step 4
    with pytest.raises(ResumeError, match="no such checkpoint folder"):
        train(tiny_config(tiny_model_dir, one_clip_data, tmp_path / "o1", steps=8, resume=str(tmp_path / "nope")))

    corrupt = tmp_path / "corrupt"
    shutil.copytree(src, corrupt)
    data = (corrupt / "trainable.safetensors").read_bytes()
    (corrupt / "trainable.safetensors").write_bytes(data[: len(data) // 2])  # truncated by a full disk
    with pytest.raises(ResumeError, match="cannot load the checkpoint .* damaged"):
        train(tiny_config(tiny_model_dir, one_clip_data, tmp_path / "o2", steps=8, resume=str(corrupt)))

    incomplete = tmp_path / "incomplete"
    shutil.copytree(src, incomplete)
    (incomplete / "optimizer.safetensors").unlink()
    with pytest.raises(ResumeError, match=r"missing optimizer\.safetensors \(step 4\)"):
        train(tiny_config(tiny_model_dir, one_clip_data, tmp_path / "o3", steps=8, resume=str(incomplete)))
    (incomplete / "training_state.json").write_text("{not json")
    with pytest.raises(ResumeError, match="training_state.json is damaged"):
        train(tiny_config(tiny_model_dir, one_clip_data, tmp_path / "o4", steps=8, resume=str(incomplete)))

    with pytest.raises(ResumeError, match=r"settings changed.*seed: checkpoint 0, now 1"):
        train(tiny_config(tiny_model_dir, one_clip_data, tmp_path / "o5", steps=8, seed=1, resume=str(src)))
    assert not (tmp_path / "o5" / ADAPTER_FILE).exists()  # never silently restarted

    old_format = tmp_path / "format1"  # written by accelerate's save_state: optimizer.bin is a pickle
    shutil.copytree(src, old_format)
    state = json.loads((old_format / "training_state.json").read_text())
    (old_format / "training_state.json").write_text(json.dumps({**state, "format_version": 1}))
    (old_format / "optimizer.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(ResumeError, match="format-1 checkpoint from an older KFI.*loads safetensors only"):
        train(tiny_config(tiny_model_dir, one_clip_data, tmp_path / "o6", steps=8, resume=str(old_format)))

    foreign = tmp_path / "foreign"  # an optimizer file of another model: refused by name, not by a torch error
    shutil.copytree(src, foreign)
    from safetensors.torch import save_file

    save_file({"0.step": torch.zeros(())}, str(foreign / "optimizer.safetensors"))
    with pytest.raises(ResumeError, match="not an optimizer state file"):
        train(tiny_config(tiny_model_dir, one_clip_data, tmp_path / "o7", steps=8, resume=str(foreign)))


# --------------------------------------------------------------------------- multi-process


@pytest.mark.slow
def test_two_process_run_writes_one_adapter_and_matches_batch_two(tiny_model_dir, one_clip_data, tmp_path):
    """2 CPU processes (gloo) x batch 1 == 1 process x batch 2: the same samples (sample numbers 2s, 2s+1) and the
    same averaged gradient. Losses agree to 1e-5 relative (measured 1.2e-7: the all-reduce and the batched kernels
    sum in another order).

    Launched as `accelerate launch --multi_gpu --num_processes 2`: with no GPU, accelerate's torch.distributed
    launcher starts 2 CPU processes and Accelerator picks gloo. (`accelerate launch --cpu --num_processes 2`
    runs one process unless MPI is set up; `torchrun --nproc_per_node 2 -m kfi_core train` works too.)"""
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    mp = tmp_path / "two"
    cmd = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29517",
        "-m",
        "kfi_core",
        *train_args(tiny_model_dir, one_clip_data, mp, "--steps", "3", "--checkpoint-every", "2"),
    ]
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 process(es)" in result.stderr
    assert result.stdout.strip().splitlines() == [str(mp / ADAPTER_FILE)]  # printed once, by the main process
    assert sorted(p.name for p in mp.iterdir()) == [
        "adapter.safetensors",
        "checkpoints",
        "train_config.json",
        "train_log.jsonl",
    ]
    ckpt = list_checkpoints(mp)[-1][1]
    assert {p.name for p in ckpt.iterdir()} == {"trainable.safetensors", "optimizer.safetensors", "training_state.json"}
    log = read_train_log(mp / LOG_FILE)
    assert [(e["step"], e["samples_seen"]) for e in log] == [(1, 2), (2, 4), (3, 6)]

    single = tmp_path / "one"
    train(tiny_config(tiny_model_dir, one_clip_data, single, steps=3, batch_size=2, checkpoint_every=0))
    torch.testing.assert_close(torch.tensor(losses(mp)), torch.tensor(losses(single)), rtol=1e-5, atol=0)


# --------------------------------------------------------------------------- configs and CLI


def test_paper_config():
    cfg = load_train_config(ROOT / "configs" / "kfi_svd_xt.json").check()
    assert [(s.steps, s.resolution, s.batch_size, s.gradient_checkpointing) for s in cfg.stages] == [
        (45000, (320, 576), 1, False),
        (5000, (576, 1024), 1, True),
    ]
    assert (cfg.lr, cfg.adam_betas, cfg.rank, cfg.mixed_precision) == (5e-5, (0.9, 0.999), 32, "bf16")
    assert stage_at(cfg, 44999) == (0, 0) and stage_at(cfg, 45000) == (1, 45000)
    load_train_config(TINY_CONFIG).check()


def test_cli_overrides_config():
    cfg = load_train_config(ROOT / "configs" / "kfi_svd_xt.json")
    one = apply_overrides(
        cfg, steps=10, resolution=parse_resolution("64x128"), batch_size=2, lr=1e-3, gradient_checkpointing=True
    )
    assert [(s.steps, s.resolution, s.batch_size, s.gradient_checkpointing) for s in one.stages] == [
        (10, (64, 128), 2, True)
    ]
    assert one.lr == 1e-3 and cfg.lr == 5e-5 and cfg.stages[0].batch_size == 1  # the original is untouched
    assert apply_overrides(cfg, rank=None).stages == cfg.stages  # None = not given


def test_one_config_reader_for_training_configs_and_demo_recipes(tmp_path):
    """load_train_config and research's load_recipe both read through read_config_file: JSON or YAML, one message
    for a missing or unparsable file, naming the flag."""
    yaml = pytest.importorskip("yaml")
    from kfi_core.training.config import read_config_file
    from research.demo_model.recipe import load_recipe

    data = json.loads(TINY_CONFIG.read_text())
    as_yaml = tmp_path / "tiny.yaml"
    as_yaml.write_text(yaml.safe_dump(data))
    assert read_config_file(as_yaml) == data == read_config_file(TINY_CONFIG)
    assert load_train_config(as_yaml) == load_train_config(TINY_CONFIG)
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,")
    with pytest.raises(TrainConfigError, match=r"^--config .*bad.yaml: cannot parse it"):
        load_train_config(bad)
    with pytest.raises(TrainConfigError, match=r"^--recipe .*bad.yaml: cannot parse it"):
        load_recipe(bad)
    with pytest.raises(TrainConfigError, match=r"^--recipe .*none.json: no such file. Give a recipe JSON"):
        load_recipe(tmp_path / "none.json")


def test_config_errors(tmp_path):
    with pytest.raises(TrainConfigError, match=r"unknown setting\(s\) \['learning_rate'\]"):
        config_from_dict({"learning_rate": 1})
    with pytest.raises(TrainConfigError, match="needs 'steps' and 'resolution'"):
        config_from_dict({"stages": [{"steps": 3}]})
    with pytest.raises(TrainConfigError, match="HEIGHTxWIDTH"):
        parse_resolution("64")
    with pytest.raises(TrainConfigError, match="mixed_precision"):
        config_from_dict({"mixed_precision": "fp8"}).check()
    with pytest.raises(TrainConfigError, match="track_mask_prob"):
        config_from_dict({"track_mask_prob": -0.1}).check()
    with pytest.raises(TrainConfigError, match="hole_mask_prob: got 1.5"):
        config_from_dict({"hole_mask_prob": 1.5}).check()
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(TrainConfigError, match="cannot parse"):
        load_train_config(bad)
    assert cli.main(["train", "--config", str(tmp_path / "none.json")]) == 2


def test_the_training_dataset_gets_the_configs_mask_options(one_clip_data, tmp_path):
    from types import SimpleNamespace

    from kfi_core.training.trainer import stage_dataset

    config = tiny_config(
        "unused", one_clip_data, tmp_path, keyframe_prob=0.25, track_mask_prob=0.5, hole_mask_prob=0.75
    )
    ds = stage_dataset(config.check(), SimpleNamespace(num_frames=4), 0)
    assert (ds.keyframe_prob, ds.track_mask_prob, ds.hole_mask_prob) == (0.25, 0.5, 0.75)


def test_cpu_mixed_precision_falls_back_to_fp32_with_warning(tiny_model_dir, one_clip_data, tmp_path, caplog):
    from kfi_core.training.trainer import setup

    with caplog.at_level(logging.WARNING, logger="kfi_core.training.trainer"):
        trainer = setup(tiny_config(tiny_model_dir, one_clip_data, tmp_path, mixed_precision="bf16"))
    assert trainer.weight_dtype == torch.float32
    assert "no GPU: training in fp32 on CPU" in caplog.text
    with pytest.raises(UnsupportedSizeError, match="multiples of 8"):
        setup(tiny_config(tiny_model_dir, one_clip_data, tmp_path, resolution=(60, 64)))


def test_two_stage_schedule_resumes_across_the_stage_change(tiny_model_dir, one_clip_data, tmp_path):
    """3 steps at 64x64, then 3 at 32x32 with gradient checkpointing; killed at step 5 (checkpoint at 3, the end of
    stage 0), resumed: the same losses as straight through, and the log says which stage each step was."""
    stages = [
        {"steps": 3, "resolution": [64, 64]},
        {"steps": 3, "resolution": [32, 32], "gradient_checkpointing": True},
    ]
    base = config_from_dict({**json.loads(TINY_CONFIG.read_text()), "stages": stages, "checkpoint_every": 3})

    def run(out, **kw):
        return train(apply_overrides(base, model=str(tiny_model_dir), data=str(one_clip_data), out=str(out), **kw))

    run(tmp_path / "a")
    original = TrainLog.write

    def write_then_die(self, entry):
        original(self, entry)
        if entry["step"] == 5:
            raise Killed()

    TrainLog.write = write_then_die
    try:
        with pytest.raises(Killed):
            run(tmp_path / "b")
    finally:
        TrainLog.write = original
    adapter = run(tmp_path / "b", resume="latest")
    log = read_train_log(tmp_path / "b" / LOG_FILE)
    assert [(e["step"], e["stage"], e["samples_seen"]) for e in log] == [
        (1, 0, 1),
        (2, 0, 2),
        (3, 0, 3),
        (4, 1, 1),
        (5, 1, 2),
        (6, 1, 3),
    ]
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    from kfi_core.model.adapter import read_adapter_metadata

    assert read_adapter_metadata(adapter).training_resolution == (32, 32)


def test_deadline_stops_with_a_checkpoint_and_the_run_resumes(runs, tiny_model_dir, one_clip_data, tmp_path):
    """train(config, deadline=...) (the demo model's --max-minutes) checkpoints after the step that ran out of time;
    resuming finishes the same run: the same losses as run A of the `runs` fixture."""
    import time

    config = tiny_config(tiny_model_dir, one_clip_data, tmp_path, steps=8, checkpoint_every=4)
    assert train(config, deadline=time.monotonic() - 1.0) is None
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1]
    resumed = tiny_config(tiny_model_dir, one_clip_data, tmp_path, steps=8, checkpoint_every=4, resume="latest")
    assert train(resumed) == tmp_path / ADAPTER_FILE
    assert losses(tmp_path) == losses(runs["a"])
