"""research.demo_model: the demo model's from-scratch phases, checkpoints and resume, on micro recipes."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kfi_core.errors import ResumeError, TrainConfigError
from kfi_core.evaluation.procedural import EVAL_SEED_BASE
from kfi_core.training.optim_state import load_optimizer, save_optimizer
from research.demo_model import adapter as A
from research.demo_model import backbone as BB
from research.demo_model import build as B
from research.demo_model import data as D
from research.demo_model import loop as L
from research.demo_model import recipe as R
from research.demo_model import vae as V

ROOT = Path(__file__).resolve().parents[3]  # the repository


def micro_recipe(**changes) -> R.DemoRecipe:
    data = {
        "seed": 3,
        "num_frames": 4,
        "resolution": [64, 64],
        "data_clips": 2,
        "data_frames": 5,
        "vae": {"steps": 2, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 1, "log_every": 1},
        "backbone": {"steps": 2, "batch_size": 2, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 1, "log_every": 1},
        "adapter": {
            "stages": [{"steps": 2, "resolution": [64, 64], "batch_size": 1}],
            "rank": 4,
            "checkpoint_every": 1,
            "encode_chunk_size": 4,
        },
    }
    data.update(changes)
    return R.recipe_from_dict(data)


def test_the_shipped_recipe_loads():
    """recipe.json, the recipe that built kfi_core/assets/demo_model: the colour VAE (chroma loss, colour anchor,
    GroupNorm reference), balanced latents, a backbone that sees the image latent on frame 0 alone for half its
    samples, and an adapter drawing track masks for 70 % of keyframe samples."""
    recipe = R.load_recipe()
    assert recipe.resolution == (64, 64) and recipe.vae.steps > 0 and recipe.backbone.steps > 0
    config = A.adapter_config(recipe, ROOT / "m", ROOT / "d", ROOT / "nonexistent-out")
    assert config.rank == 32 and config.total_steps > 0 and config.resume is None
    assert config.track_mask_prob == 0.7 and recipe.backbone.first_frame_only_prob == 0.5
    assert recipe.vae.chroma_weight > 0 and recipe.vae.anchor_weight > 0 and recipe.vae.norm_reference > 0
    assert recipe.balance_latents and recipe.decoder.steps > 0


def test_chroma_mse_sees_colour_not_brightness():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    grey_shift = x + torch.rand(2, 1, 8, 8)  # the same chroma, other brightness
    assert float(V.chroma_mse(grey_shift, x)) < 1e-12
    # analytic: a pure chroma offset (+d, -d, 0) has chroma error (d^2 + d^2 + 0) / 3 per pixel
    d = 0.3
    shifted = x + torch.tensor([d, -d, 0.0]).view(1, 3, 1, 1)
    assert float(V.chroma_mse(shifted, x)) == pytest.approx(2 * d * d / 3, rel=1e-5)


def test_vae_loss_adds_the_weighted_chroma_term(tiny_components):
    vae = tiny_components["vae"]
    clips = torch.rand(1, 2, 3, 64, 64)
    plain = R.PhaseConfig()
    weighted = R.PhaseConfig(chroma_weight=5.0)
    a, _ = V.vae_loss(vae, clips, torch.Generator().manual_seed(0), plain)
    b, _ = V.vae_loss(vae, clips, torch.Generator().manual_seed(0), weighted)
    pixels = clips.flatten(0, 1) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(0))
        z = posterior.mean + posterior.std * noise
        term = V.chroma_mse(vae.decode(z, num_frames=2).sample, pixels)
    assert float(term) > 0
    assert float((b - a).detach()) == pytest.approx(5.0 * float(term), rel=1e-4)


def test_colour_anchor_mse_is_zero_on_the_pooled_image_and_analytic_off_it():
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    pooled = torch.nn.functional.avg_pool2d(pixels, 4)  # a 4x-down latent's cells
    latent = torch.cat([pooled, torch.randn(2, 1, 4, 4)], 1)  # channel 3 is free: it must not count
    assert float(V.colour_anchor_mse(latent, pixels)) < 1e-12
    # analytic: latent channel 0 off by d everywhere -> mean over 3 channels of (d^2, 0, 0)
    d = 0.5
    latent[:, 0] += d
    assert float(V.colour_anchor_mse(latent, pixels)) == pytest.approx(d * d / 3, rel=1e-5)
    with pytest.raises(TrainConfigError, match="3 or more"):
        V.colour_anchor_mse(latent[:, :2], pixels)


def test_vae_loss_adds_the_weighted_anchor_term(tiny_components):
    vae = tiny_components["vae"]
    clips = torch.rand(1, 2, 3, 64, 64)
    a, _ = V.vae_loss(vae, clips, torch.Generator().manual_seed(0), R.PhaseConfig())
    b, _ = V.vae_loss(vae, clips, torch.Generator().manual_seed(0), R.PhaseConfig(anchor_weight=3.0))
    pixels = clips.flatten(0, 1) * 2 - 1
    with torch.no_grad():
        term = V.colour_anchor_mse(vae.encode(pixels).latent_dist.mean, pixels)
    assert float(term) > 0
    assert float((b - a).detach()) == pytest.approx(3.0 * float(term), rel=1e-4)


def test_random_crops_are_windows_of_the_clip_drawn_by_the_generator():
    clips = torch.rand(2, 8, 3, 64, 64)
    a = D.random_crops(clips, 32, 4, torch.Generator().manual_seed(3))
    b = D.random_crops(clips, 32, 4, torch.Generator().manual_seed(3))
    assert a.shape == (2, 4, 3, 32, 32) and torch.equal(a, b)
    for i in range(2):  # each crop is an exact window of its own clip
        hits = [
            (t, y, x)
            for t in range(5)
            for y in range(33)
            for x in range(33)
            if torch.equal(clips[i, t : t + 4, :, y : y + 32, x : x + 32], a[i])
        ]
        assert len(hits) == 1
    assert torch.equal(D.random_crops(clips, 0, 0, torch.Generator()), clips)  # 0 keeps an axis whole


def _last_norm_inputs(vae, pixels):
    seen = {}
    hooks = [
        vae.encoder.conv_norm_out.register_forward_pre_hook(lambda m, a: seen.__setitem__("enc", a[0])),
        vae.decoder.conv_norm_out.register_forward_pre_hook(lambda m, a: seen.__setitem__("dec", a[0])),
    ]
    with torch.no_grad():
        vae.decode(vae.encode(pixels).latent_dist.mode(), num_frames=pixels.shape[0])
    for hook in hooks:
        hook.remove()
    return seen


def test_norm_reference_shifts_every_other_channel_before_the_last_group_norms():
    import copy

    vae = V.new_components(micro_recipe())["vae"].eval()
    shifted = copy.deepcopy(vae)
    V.add_norm_reference(shifted, 10.0)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    a, b = _last_norm_inputs(vae, pixels), _last_norm_inputs(shifted, pixels)
    # encoder: the shift is the last residual block's bias, so it arrives exactly (the latent differs after it)
    diff = b["enc"] - a["enc"]
    assert torch.allclose(diff[:, ::2], torch.full_like(diff[:, ::2], 10.0), atol=1e-4)
    assert torch.allclose(diff[:, 1::2], torch.zeros_like(diff[:, 1::2]), atol=1e-4)
    # decoder: it passes the temporal residual block and the mixer, whose own outputs change a little with it
    dec = b["dec"]
    assert float(dec[:, ::2].mean() - dec[:, 1::2].mean()) == pytest.approx(10.0, abs=2.0)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"colour": 1}, "unknown key"),
        ({"resolution": [60, 64]}, "multiples of 64"),
        ({"data_clips": EVAL_SEED_BASE}, "held out"),
        ({"data_easy_clips": -1}, "data_easy_clips"),
        ({"data_easy_clips": R.RECOLOUR_SEED_BASE - R.EASY_SEED_BASE + 1}, "data_easy_clips"),
        ({"vae": {"steps": 1, "bogus": 2}}, "vae: unknown key"),
        ({"num_frames": 9}, "num_frames"),
        ({"backbone": {"steps": 1, "first_frame_only_prob": 1.5}}, "backbone.first_frame_only_prob"),
        ({"vae": {"steps": 1, "anchor_weight": -1}}, "vae.anchor_weight"),
        ({"vae": {"steps": 1, "crop_size": 36}}, "vae.crop_size"),
        ({"vae": {"steps": 1, "crop_frames": 9}}, "vae.crop_frames"),
        ({"backbone": {"steps": 1, "crop_size": 32}}, "only the vae phase"),
        ({"decoder": {"steps": 1, "anchor_weight": 1.0}}, "decoder.anchor_weight"),
        ({"decoder": {"steps": 1, "bogus": 1}}, "decoder: unknown key"),
        ({"tune": {"steps": 1}}, "unknown key.*tune"),  # the phases of recipes not shipped are gone
        ({"data_recolour_clips": 2}, "unknown key.*data_recolour_clips"),
        ({"vae": {"steps": 1, "latent_noise": 0.5}}, "vae: unknown key.*latent_noise"),
    ],
)
def test_recipe_errors_name_the_problem(change, words):
    with pytest.raises(TrainConfigError, match=words):
        micro_recipe(**change)


def test_recipe_refuses_adapter_paths(tmp_path):
    recipe = micro_recipe(adapter={"model": "x"})
    with pytest.raises(TrainConfigError, match="adapter.model"):
        A.adapter_config(recipe, tmp_path, tmp_path, tmp_path / "a")


def test_training_clips_are_deterministic_and_never_held_out():
    a = D.training_clip(5, 4, 64, 64)
    assert torch.equal(a, D.training_clip(5, 4, 64, 64))
    assert a.shape == (4, 3, 64, 64) and 0 <= float(a.min()) and float(a.max()) <= 1
    with pytest.raises(TrainConfigError, match="below"):
        D.training_clip(EVAL_SEED_BASE, 4, 64, 64)
    batch = D.training_batch(0, 1, 7, 3, 4, 64, 64)
    assert torch.equal(batch, D.training_batch(0, 1, 7, 3, 4, 64, 64))
    assert not torch.equal(batch, D.training_batch(0, 1, 8, 3, 4, 64, 64))


def test_lr_schedule_warms_up_and_decays():
    phase = R.PhaseConfig(steps=100, lr=1.0, warmup_steps=10, decay_fraction=0.5)
    assert L.lr_at(phase, 0) == pytest.approx(0.1)
    assert L.lr_at(phase, 20) == pytest.approx(1.0)
    assert L.lr_at(phase, 99) == pytest.approx(1.0 - 0.9 * 49 / 50)


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.9))
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(4, 3)).square().sum().backward()
        opt.step()
    save_optimizer(opt, tmp_path / "opt.safetensors")
    assert (tmp_path / "opt.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not pickle
    fresh = torch.optim.AdamW(net.parameters(), lr=5.0)
    load_optimizer(fresh, tmp_path / "opt.safetensors")
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 1e-2
    assert tuple(b["param_groups"][0]["betas"]) == (0.8, 0.9)
    for idx in a["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a["state"][idx][key], b["state"][idx][key])


def test_clip_embedding_matches_the_stock_encoder_and_trains(tiny_components):
    from kfi_core.model.encoders import encode_image_clip

    enc, fe = tiny_components["image_encoder"], tiny_components["feature_extractor"]
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    emb = BB.clip_embedding(enc, fe, images)
    for i in range(2):
        torch.testing.assert_close(emb[i : i + 1], encode_image_clip(enc, fe, images[i : i + 1]), rtol=1e-5, atol=1e-6)
    emb.sum().backward()
    assert enc.visual_projection.weight.grad is not None
    enc.zero_grad(set_to_none=True)


def test_first_frame_only_conditioning_leaves_the_other_frames_empty(tiny_components):
    vae = tiny_components["vae"]
    clips = D.training_batch(0, 1, 0, 3, 4, 64, 64)
    stock = BB.backbone_inputs(vae, clips, R.PhaseConfig(cond_dropout_prob=0.0), D.step_generator(0, 1, 0))
    only = BB.backbone_inputs(
        vae, clips, R.PhaseConfig(cond_dropout_prob=0.0, first_frame_only_prob=1.0), D.step_generator(0, 1, 0)
    )
    cond, cond_stock = only["model_in"][:, :, 4:], stock["model_in"][:, :, 4:]
    # the same draws up to the condition: frame 0 carries the stock latent, the others nothing
    torch.testing.assert_close(cond[:, 0], cond_stock[:, 0])
    assert cond[:, 0].abs().sum() > 0 and cond[:, 1:].abs().sum() == 0


def test_backbone_inputs_follow_stock_svd_conditioning(tiny_components):
    from kfi_core.inference.denoiser import scale_model_input

    vae = tiny_components["vae"]
    phase = R.PhaseConfig(cond_dropout_prob=0.5, noise_aug_mean=-1.0)
    clips = D.training_batch(0, 1, 0, 4, 3, 64, 64)
    gen = D.step_generator(0, 1, 0)
    inputs = BB.backbone_inputs(vae, clips, phase, gen)
    b, f = 4, 3
    assert inputs["model_in"].shape == (b, f, 8, 16, 16)
    # first half: c_in * x_t; x_t = x0 + sigma * noise with x0 the scaled latents of the clip
    sigma = inputs["sigma"].reshape(b, 1, 1, 1, 1)
    torch.testing.assert_close(inputs["model_in"][:, :, :4], scale_model_input(inputs["x_t"], sigma))
    with torch.no_grad():
        x0 = vae.encode(clips.flatten(0, 1) * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
    torch.testing.assert_close(inputs["x0"], x0.unflatten(0, (b, f)))
    # second half: the first frame's (augmented, unscaled) latent on every frame, zero when dropped
    cond = inputs["model_in"][:, :, 4:]
    assert torch.equal(cond[:, 0], cond[:, -1])
    keep = inputs["keep"]
    assert set(keep.tolist()) <= {0.0, 1.0}
    for i in range(b):
        assert (cond[i].abs().sum() == 0) == (keep[i] == 0)
    aug = inputs["added_time_ids"][:, 2]
    assert torch.all(aug > 0) and torch.equal(inputs["added_time_ids"][:, 0], torch.full((b,), 6.0))


@pytest.mark.parametrize(
    "colour",
    [{}, {"chroma_weight": 8.0, "anchor_weight": 10.0, "norm_reference": 10.0, "crop_size": 32, "crop_frames": 1}],
    ids=["plain", "colour-crops"],
)
@pytest.mark.slow
def test_vae_phase_resumes_exactly(tmp_path, colour):
    """Stopped after every step and resumed must give the weights of one uninterrupted run (random crops too)."""
    recipe = micro_recipe(
        vae={"steps": 3, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 10, "log_every": 1, **colour}
    )
    whole = V.train_vae(recipe, tmp_path / "a", deadline=None)
    parts = None
    for _ in range(4):
        parts = V.train_vae(recipe, tmp_path / "b", deadline=time.monotonic() - 1)  # stops after one step
        if parts is not None:
            break
    assert parts is not None
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "vae" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    for (name, a), (_, b) in zip(whole.state_dict().items(), parts.state_dict().items()):
        assert torch.equal(a, b), name
    assert whole.config.scaling_factor == parts.config.scaling_factor != 0.18215


def test_decoder_phase_trains_the_decoder_alone_and_resumes_exactly(tmp_path):
    decoder = {
        "steps": 2,
        "lr": 1e-3,
        "warmup_steps": 0,
        "checkpoint_every": 10,
        "log_every": 1,
        "chroma_weight": 4.0,
        "crop_size": 32,
        "crop_frames": 2,
    }
    recipe = micro_recipe(vae={"steps": 1, "lr": 1e-3, "warmup_steps": 0, "log_every": 1}, decoder=decoder)
    vae = V.train_vae(recipe, tmp_path / "a", deadline=None)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    tuned = V.train_decoder(recipe, vae, tmp_path / "a", deadline=None)
    after = tuned.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("decoder.") for k in changed)  # the latents are exactly the vae phase's
    assert tuned.config.scaling_factor == vae.config.scaling_factor
    # stopped after every step and resumed: the same decoder as one uninterrupted run
    V.train_vae(recipe, tmp_path / "b", deadline=None)
    parts = None
    for _ in range(3):
        parts = V.train_decoder(
            recipe, V.train_vae(recipe, tmp_path / "b", deadline=None), tmp_path / "b", deadline=time.monotonic() - 1
        )
        if parts is not None:
            break
    assert parts is not None
    for (name, a), (_, b) in zip(after.items(), parts.state_dict().items()):
        assert torch.equal(a, b), name
    # finished: read back from decoder_final, and 0 steps leaves the VAE as it is
    again = V.train_decoder(recipe, vae, tmp_path / "a", deadline=None)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in after.items())
    assert V.train_decoder(micro_recipe(), vae, tmp_path / "c", deadline=None) is vae


def test_resume_refuses_another_recipe(tmp_path):
    recipe = micro_recipe(vae={"steps": 3, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 1, "log_every": 1})
    assert V.train_vae(recipe, tmp_path, deadline=time.monotonic() - 1) is None
    other = micro_recipe(vae={"steps": 3, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 1})
    with pytest.raises(ResumeError, match="different recipe"):
        V.train_vae(other, tmp_path, deadline=None)


def test_train_demo_end_to_end_packages_a_loadable_model(tmp_path):
    from kfi_core.evaluation.procedural import make_procedural_clip
    from kfi_core.inference.condition import prepare_clip
    from kfi_core.inference.executor import inpaint
    from kfi_core.inference.settings import PropagateSettings
    from kfi_core.model.loading import load_kfi_model
    from kfi_core.training.trainer import read_train_log

    recipe = micro_recipe()
    path = B.train_demo(recipe, tmp_path / "run")
    assert path == tmp_path / "run" / "demo_model"
    assert len(list((tmp_path / "run" / "data").iterdir())) == 2
    assert [e["step"] for e in read_train_log(tmp_path / "run" / "adapter" / "train_log.jsonl")] == [1, 2]
    model = load_kfi_model(path, adapter=path / "adapter.safetensors")
    assert model.in_channels == 12 and model.lora_rank == 4
    assert model.scheduler_config["sigma_max"] == 80.0
    assert model.vae.config.scaling_factor != 0.18215  # measured on the trained VAE
    c = make_procedural_clip("removal", 4, 64, 64, seed=EVAL_SEED_BASE)
    out = inpaint(model, prepare_clip(c.frames, c.masks), PropagateSettings(steps=2))
    keep = c.masks.expand_as(c.frames) < 0.5
    assert torch.equal(out[keep], c.frames[keep])  # unmasked pixels preserved exactly
    # a finished run is not redone: the same call returns at once with the same package
    before = (path / "adapter.safetensors").read_bytes()
    assert B.train_demo(recipe, tmp_path / "run") == path
    assert (path / "adapter.safetensors").read_bytes() == before


@pytest.mark.slow
def test_command_refuses_unknown_phase_and_recipe(tmp_path):
    for args, words in (
        (["--phase", "gan"], "--phase: unknown gan"),
        (["--recipe", str(tmp_path / "no.json")], "no such file"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "research.demo_model", "--out", str(tmp_path), *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr


def test_easy_clips_show_the_target_at_the_easy_preset_with_its_masks(tmp_path):
    from kfi_core.evaluation.procedural import make_procedural_clip
    from kfi_core.training.data import find_sources

    recipe = micro_recipe(data_clips=2, data_frames=5, data_easy_clips=6)
    D.write_dataset(tmp_path, recipe)
    sources = {s.path.name: s for s in find_sources(tmp_path)}
    assert sorted(sources) == [f"clip_{i:06d}" for i in range(2)] + [f"easy_{i:06d}" for i in range(6)]
    appearances = set()
    for i in range(6):
        assert sources[f"easy_{i:06d}"].mask_folder is not None
        seed = R.EASY_SEED_BASE + i
        frames, masks = D.training_easy_clip(seed, 5, 64, 64)
        clip = make_procedural_clip("edit", num_frames=5, height=64, width=64, seed=seed, difficulty="easy")
        assert torch.equal(masks, clip.masks) and masks.sum() > 0
        edited = torch.equal(frames, clip.ground_truth)
        assert edited or torch.equal(frames, clip.frames)
        appearances.add(edited)
    assert appearances == {True, False}  # both the original and the edited target are trained on
    assert EVAL_SEED_BASE > R.TRAIN_SEED_LIMIT > R.EASY_SEED_BASE + recipe.data_easy_clips


def _one_clip_dataset_plus(folder, **extra_clips) -> dict:
    """The sources, by name, of a dataset of one data clip plus ``extra_clips`` (data_easy_clips, recolour_clips,
    removal_clips), 5 frames each."""
    from kfi_core.training.data import find_sources

    easy = extra_clips.pop("data_easy_clips", 0)
    D.write_dataset(folder, micro_recipe(data_clips=1, data_frames=5, data_easy_clips=easy), **extra_clips)
    return {s.path.name: s for s in find_sources(folder)}


def test_recoloured_clips_show_the_target_as_it_is_or_recoloured_with_its_masks(tmp_path):
    from kfi_core.evaluation.procedural import ProceduralConfig, make_procedural_clip, with_config

    sources = _one_clip_dataset_plus(tmp_path, recolour_clips=16)
    assert sorted(sources) == ["clip_000000"] + [f"recolour_{i:06d}" for i in range(16)]
    seen = set()
    for i in range(16):
        assert sources[f"recolour_{i:06d}"].mask_folder is not None
        seed = R.RECOLOUR_SEED_BASE + i
        frames, masks = D.training_recolour_clip(seed, 5, 64, 64)
        matches = []
        for preset in ("easy", "medium"):
            cfg = with_config(ProceduralConfig.preset(preset), edit_pattern="recolour")
            clip = make_procedural_clip("edit", num_frames=5, height=64, width=64, seed=seed, config=cfg)
            for shown, ref in (("recoloured", clip.ground_truth), ("as it is", clip.frames)):
                if torch.equal(frames, ref) and torch.equal(masks, clip.masks):
                    matches.append((preset, shown))
        assert len(matches) == 1, matches  # exactly one preset and appearance, with that clip's masks
        assert masks.sum() > 0
        seen.add(matches[0])
    assert {p for p, _ in seen} == {"easy", "medium"} and {a for _, a in seen} == {"recoloured", "as it is"}
    assert R.EASY_SEED_BASE < R.RECOLOUR_SEED_BASE < R.TRAIN_SEED_LIMIT < EVAL_SEED_BASE


def test_removal_clips_are_clean_scenes_with_the_removed_targets_track_as_holes(tmp_path):
    from kfi_core.evaluation.procedural import ProceduralConfig, make_procedural_clip
    from kfi_core.training.data import NO_KEYFRAME, ClipDataset

    sources = _one_clip_dataset_plus(tmp_path, removal_clips=8)
    assert sorted(sources) == ["clip_000000"] + [f"removal_{i:06d}" for i in range(8)]
    presets = set()
    for i in range(8):
        source = sources[f"removal_{i:06d}"]
        assert source.hole_folder is not None and source.mask_folder is None  # holes only: no object under them
        seed = R.REMOVAL_SEED_BASE + i
        frames, masks = D.training_removal_clip(seed, 5, 64, 64)
        matches = []
        for preset in ("easy", "medium"):
            clip = make_procedural_clip(
                "removal", num_frames=5, height=64, width=64, seed=seed, config=ProceduralConfig.preset(preset)
            )
            if torch.equal(frames, clip.ground_truth) and torch.equal(masks, clip.masks):
                matches.append(preset)
                hole = clip.masks.expand_as(clip.frames) > 0.5
                assert not torch.equal(clip.frames[hole], frames[hole])  # the target is gone from the clip
        assert len(matches) == 1, matches
        presets.add(matches[0])
        # without a keyframe, a sample of this clip has the removed target's track as its hole
        ds = ClipDataset(
            source.path, num_frames=5, resolution=(64, 64), crop_scale=(1, 1), keyframe_prob=0.0, hole_mask_prob=1.0
        )
        sample = ds.get(0, 0)
        assert sample.keyframe_index == NO_KEYFRAME and sample.hole_masks and torch.equal(sample.masks, masks)
        assert (sample.frames - frames).abs().max() <= 0.5 / 255 + 1e-6  # the clean frames, as PNG rounds them
    assert presets == {"easy", "medium"}
    assert R.RECOLOUR_SEED_BASE < R.REMOVAL_SEED_BASE < R.TRAIN_SEED_LIMIT < EVAL_SEED_BASE
    for bad in (R.REMOVAL_SEED_BASE - 1, R.TRAIN_SEED_LIMIT):
        with pytest.raises(TrainConfigError, match=f"removal training seed {bad}"):
            D.training_removal_clip(bad, 5, 64, 64)


def test_dataset_clips_showing_the_target_carry_its_masks(tmp_path):
    from kfi_core.training.data import ClipDataset, find_sources

    recipe = micro_recipe(data_clips=8, data_frames=5)
    D.write_dataset(tmp_path, recipe)
    sources = {s.path.name: s for s in find_sources(tmp_path)}
    with_masks = [name for name, s in sources.items() if s.mask_folder is not None]
    assert 0 < len(with_masks) < 8  # the clean-scene clips have no target to track
    for i in range(8):
        frames, masks = D.training_clip_with_masks(i, 5, 64, 64)
        assert torch.equal(frames, D.training_clip(i, 5, 64, 64))
        assert (masks is not None) == (f"clip_{i:06d}" in with_masks)
        if masks is not None:  # the masks cover the target: the clip differs from its clean scene there
            ds = ClipDataset(
                tmp_path / f"clip_{i:06d}",
                num_frames=5,
                resolution=(64, 64),
                crop_scale=(1, 1),
                keyframe_prob=1.0,
                track_mask_prob=1.0,
            )
            sample = ds.get(0, 0)
            assert sample.track_masks and torch.equal(sample.masks, masks)
    # a dataset written before masks existed (empty .done) gets them on the next run, with the same frames
    clip = tmp_path / with_masks[0]
    before = (clip / "0000.png").read_bytes()
    shutil.rmtree(clip / "masks")
    (clip / ".done").write_text("")
    D.write_dataset(tmp_path, recipe)
    assert (clip / "masks").is_dir() and (clip / "0000.png").read_bytes() == before


def test_tune_rounds_link_the_clips_earlier_data_folders_hold(tmp_path):
    """A round's data links the clips that the data folder and the earlier rounds' hold (one file on disk) and makes
    only its new recoloured ones; the folder is file for file what writing it afresh gives; remaking a linked clip
    in one folder gives it its own files and leaves the other folder's as they were."""
    from kfi_core.training.data import find_sources

    recipe = micro_recipe(
        data_clips=3,
        data_frames=5,
        adapter_tune=[{"recolour_clips": 2, "removal_clips": 1}, {"recolour_clips": 4, "removal_clips": 2}],
    )
    out = tmp_path / "run"
    D.write_dataset(out / "data", recipe)
    A.tune_dataset(recipe, out, 1)
    (out / "data_tune2").mkdir()
    (out / "data_tune2" / ".clip_000001.partial").mkdir()  # what an interrupted link leaves
    A.tune_dataset(recipe, out, 2)
    fresh = D.write_dataset(tmp_path / "fresh", recipe, recolour_clips=4, removal_clips=2)

    def files(root):
        return {p.relative_to(root): p for p in sorted(root.rglob("*")) if p.is_file()}

    def inode(path):
        return path.stat().st_ino

    assert not (out / "data_tune2" / ".clip_000001.partial").exists()
    got, want = files(out / "data_tune2"), files(fresh)
    assert got.keys() == want.keys() and all(got[k].read_bytes() == want[k].read_bytes() for k in got)
    assert [s.path.name for s in find_sources(out / "data_tune2")] == [s.path.name for s in find_sources(fresh)]
    homes = {f"clip_{i:06d}": "data" for i in range(3)} | {f"recolour_{i:06d}": "data_tune" for i in range(2)}
    homes["removal_000000"] = "data_tune"
    assert {k.parts[0] for k in got} >= {"removal_000000", "removal_000001"}
    for key, path in got.items():
        home = homes.get(key.parts[0])
        if home is None:  # recolour_000002, _000003 and removal_000001 are round 2's own
            assert key.parts[0] in ("recolour_000002", "recolour_000003", "removal_000001")
            assert path.stat().st_nlink == 1
        else:
            assert inode(path) == inode(out / home / key)
    # a clip made again (here: its .done from an older version) gets its own files; the data folder's stay
    clip = out / "data_tune2" / "clip_000000"
    source = {k: (p.read_bytes(), inode(p)) for k, p in files(out / "data" / "clip_000000").items()}
    (clip / ".done").unlink()
    (clip / ".done").write_text("")
    D.write_dataset(out / "data_tune2", recipe, recolour_clips=4, removal_clips=2)
    assert all(inode(p) != inode(out / "data" / "clip_000000" / k) for k, p in files(clip).items())
    assert {k: (p.read_bytes(), inode(p)) for k, p in files(out / "data" / "clip_000000").items()} == source
    assert (out / "data" / "clip_000000" / ".done").read_text() == D._DATA_VERSION


def test_balance_latent_channels_is_an_exact_reparametrisation(tiny_components):
    vae = copy.deepcopy(tiny_components["vae"]).eval()
    pixels = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2.0 - 1.0
    gains = torch.tensor([3.0, 0.5, 7.0, 1.0])
    with torch.no_grad():
        before = vae.encode(pixels).latent_dist
        decoded = vae.decode(before.mode(), num_frames=4).sample
        V.balance_latent_channels(vae, gains)
        after = vae.encode(pixels).latent_dist
        again = vae.decode(after.mode(), num_frames=4).sample
    assert not torch.allclose(after.mean, before.mean, atol=1e-3)
    assert torch.allclose(after.mean, before.mean * gains.view(1, -1, 1, 1), rtol=1e-5, atol=1e-6)
    assert torch.allclose(after.std, before.std * gains.view(1, -1, 1, 1), rtol=1e-4)
    assert torch.allclose(again, decoded, atol=1e-5)  # every decoded frame as it was
    for bad in (torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, 2.0])):
        with pytest.raises(TrainConfigError, match="4 positive numbers"):
            V.balance_latent_channels(vae, bad)


@pytest.mark.slow
def test_balanced_recipe_trains_the_backbone_on_latents_of_equal_spread(tmp_path):
    from diffusers import AutoencoderKLTemporalDecoder
    from safetensors.torch import load_file

    from kfi_core.model.loading import load_kfi_model

    recipe = micro_recipe(balance_latents=True)
    out = tmp_path / "run"
    path = B.train_demo(recipe, out)
    balanced = out / "vae" / "balanced"
    weights = "diffusion_pytorch_model.safetensors"
    ours, backbone = load_file(str(balanced / weights)), load_file(str(out / "backbone" / "vae" / weights))
    assert ours.keys() == backbone.keys() and all(torch.equal(ours[k], backbone[k]) for k in ours)
    vae = AutoencoderKLTemporalDecoder.from_pretrained(balanced, use_safetensors=True)
    latents = V.statistics_latents(vae, recipe)
    std = latents.transpose(0, 1).flatten(1).std(dim=1)
    assert torch.allclose(std, std.max().expand_as(std), rtol=1e-4)
    assert vae.config.scaling_factor == pytest.approx(1.0 / float(latents.std()), rel=1e-5)
    plain = AutoencoderKLTemporalDecoder.from_pretrained(out / "vae" / "final", use_safetensors=True)
    plain_std = V.statistics_latents(plain, recipe).transpose(0, 1).flatten(1).std(dim=1)
    assert not torch.allclose(plain_std, plain_std.max().expand_as(plain_std), rtol=1e-2)
    pixels = D.training_clip(1, recipe.num_frames, 64, 64) * 2.0 - 1.0
    with torch.no_grad():
        a = plain.decode(plain.encode(pixels).latent_dist.mode(), num_frames=recipe.num_frames).sample
        b = vae.decode(vae.encode(pixels).latent_dist.mode(), num_frames=recipe.num_frames).sample
    assert torch.allclose(a, b, atol=1e-5)
    model = load_kfi_model(path, adapter=path / "adapter.safetensors")
    assert model.vae.config.scaling_factor == vae.config.scaling_factor
    # the phases on the balanced latents say so in their checkpoints; the phases before them do not
    assert L.fingerprint(recipe, "backbone")["balance_latents"] is True
    assert L.fingerprint(micro_recipe(), "backbone")["balance_latents"] is False
    assert "balance_latents" not in L.fingerprint(recipe, "vae") | L.fingerprint(recipe, "decoder")
    with pytest.raises(ResumeError, match="different recipe"):  # a balanced backbone checkpoint, a plain recipe
        other = tmp_path / "other"
        assert BB.train_backbone(recipe, vae, other, deadline=time.monotonic() - 1) is None
        BB.train_backbone(micro_recipe(), plain, other, deadline=None)
    # balance_latents turned on after a plain run finished its backbone: refused, not paired with the wrong latents
    plain_run = tmp_path / "plain"
    B.train_demo(micro_recipe(), plain_run, phases=("data", "vae", "backbone"))
    with pytest.raises(TrainConfigError, match="trained on the unbalanced latents"):
        B.train_demo(recipe, plain_run, phases=("vae", "backbone"))


def test_the_shipped_recipe_has_six_adapter_tune_rounds():
    """recipe.json's adapter_tune phase in six rounds: each round trains the adapter phase's settings with its own
    changes from the round before (round 1 from the adapter phase's adapter; rounds 4-6 on removal clips), on its own
    data, and the package ships round 3's adapter as the default (edit) adapter and round 6's as the removal
    adapter."""
    shipped = R.load_recipe()
    assert [
        (t.recolour_clips, t.removal_clips, t.data_folder, t.adapter_folder, t.package_as)
        for t in shipped.tune_rounds()
    ] == [
        (1200, 0, "data_tune", "adapter_tuned", None),
        (2400, 0, "data_tune2", "adapter_tuned2", None),
        (3600, 0, "data_tune3", "adapter_tuned3", "adapter.safetensors"),
        (3600, 2400, "data_tune4", "adapter_tuned4", None),
        (0, 2400, "data_tune5", "adapter_tuned5", None),
        (0, 4800, "data_tune6", "adapter_tuned6", "adapter-removal.safetensors"),
    ]
    run = ROOT / "nonexistent-run"
    base = A.adapter_config(shipped, run / "backbone", run / "data", run / "adapter")
    assert base.from_adapter is None
    starts = ["adapter", "adapter_tuned", "adapter_tuned2", "adapter_tuned3", "adapter_tuned4", "adapter_tuned5"]
    # seed, steps, keyframe rate, track-mask rate, hole-mask rate
    expected = [
        (5, 4000, 0.9, 0.9, 0.0),
        (6, 3000, 1.0, 1.0, 0.0),
        (7, 3000, 1.0, 1.0, 0.0),
        (8, 3000, 0.7, 1.0, 1.0),
        (9, 3000, 0.5, 1.0, 1.0),
        (10, 3000, 0.3, 1.0, 1.0),
    ]
    changed = {
        "stages",
        "seed",
        "lr",
        "lr_warmup_steps",
        "lr_decay_fraction",
        "keyframe_prob",
        "track_mask_prob",
        "from_adapter",
        "data",
        "out",
    }
    for number, (start, (seed, steps, rate, track, hole)) in enumerate(zip(starts, expected), start=1):
        tune = shipped.tune_rounds()[number - 1]
        tuned = A.adapter_config(
            shipped,
            run / "backbone",
            run / tune.data_folder,
            run / tune.adapter_folder,
            tune_from=run / start / "adapter.safetensors",
            tune_round=number,
        )
        assert tuned.from_adapter == str(run / start / "adapter.safetensors")
        assert (
            tuned.lr,
            tuned.seed,
            tuned.total_steps,
            tuned.keyframe_prob,
            tuned.track_mask_prob,
            tuned.hole_mask_prob,
        ) == (1e-3, seed, steps, rate, track, hole)
        same = {"keyframe_prob"} if rate == base.keyframe_prob else set()  # round 4's 0.7 is the adapter phase's
        assert {k for k, v in dataclasses.asdict(tuned).items() if v != getattr(base, k)} == changed - same | (
            {"hole_mask_prob"} if hole else set()
        )
    assert A.trained_adapters(shipped, run) == {
        "adapter.safetensors": run / "adapter_tuned3" / "adapter.safetensors",
        "adapter-removal.safetensors": run / "adapter_tuned6" / "adapter.safetensors",
    }
    no_rounds = dataclasses.replace(shipped, adapter_tune=[])
    assert A.trained_adapters(no_rounds, run) == {"adapter.safetensors": run / "adapter" / "adapter.safetensors"}
    with pytest.raises(TrainConfigError, match="round 7 asked for; the recipe has 6"):
        A.adapter_config(shipped, run / "backbone", run / "d", run / "o", tune_from=run / "a", tune_round=7)
    for number in (0, 7):  # tune_dataset looks the round up the same way, before writing anything
        with pytest.raises(TrainConfigError, match=f"round {number} asked for; the recipe has 6"):
            A.tune_dataset(shipped, run, number)
    assert not run.exists()


def test_adapter_tune_rounds_fine_tune_in_turn_and_the_package_ships_the_last(tmp_path):
    """adapter_tune in two rounds: round 1 is kfi_core.training.trainer.train from the adapter phase's file on
    data_tune (the data clips
    plus its recoloured ones), round 2 from round 1's file on data_tune2 (its own count), each resumable; the package
    ships round 2's adapter; the recipe refuses what the run sets."""
    from safetensors.torch import load_file

    from kfi_core.training.data import find_sources
    from kfi_core.training.trainer import read_train_log

    stages = [{"steps": 2, "resolution": [64, 64], "batch_size": 1}]
    rounds = [
        {"stages": stages, "lr": 5e-3, "seed": 9, "recolour_clips": 2},
        {"stages": stages, "lr": 2e-3, "seed": 10, "recolour_clips": 3, "keyframe_prob": 1.0},
    ]
    recipe = micro_recipe(adapter_tune=rounds)
    out = tmp_path / "run"
    with pytest.raises(
        TrainConfigError,
        match="adapter_tune round 1: .*adapter.safetensors is not finished; run the adapter phase first",
    ):
        B.train_demo(recipe, out, phases=("adapter_tune",))
    assert B.train_demo(micro_recipe(), out) == out / "demo_model"  # every phase but the tune
    plain = load_file(str(out / "demo_model" / "adapter.safetensors"))
    with pytest.raises(TrainConfigError, match="adapter_tuned2/adapter.safetensors is not finished"):
        B.train_demo(recipe, out, phases=("package",))
    # out of time: round 1 stops (checkpointed), round 2 does not start; the same call resumes
    assert B.train_demo(recipe, out, phases=("adapter_tune",), max_minutes=1e-9) is None
    assert not (out / "adapter_tuned" / "adapter.safetensors").exists() and not (out / "adapter_tuned2").exists()
    assert B.train_demo(recipe, out, phases=("adapter_tune", "package")) == out / "demo_model"
    data_names = [s.path.name for s in find_sources(out / "data")]
    assert [s.path.name for s in find_sources(out / "data_tune")] == data_names + [
        f"recolour_{i:06d}" for i in range(2)
    ]
    assert [s.path.name for s in find_sources(out / "data_tune2")] == data_names + [
        f"recolour_{i:06d}" for i in range(3)
    ]
    for folder, start, lr, seed, data, keyframe_prob in (
        ("adapter_tuned", "adapter", 5e-3, 9, "data_tune", 0.5),
        ("adapter_tuned2", "adapter_tuned", 2e-3, 10, "data_tune2", 1.0),
    ):
        saved = json.loads((out / folder / "train_config.json").read_text())
        assert saved["from_adapter"] == str(out / start / "adapter.safetensors")
        assert (saved["lr"], saved["seed"], saved["data"]) == (lr, seed, str(out / data))
        assert saved["keyframe_prob"] == keyframe_prob  # round 2's change; round 1 keeps the adapter phase's default
        assert saved["rank"] == 4 and saved["encode_chunk_size"] == 4  # the adapter phase's settings, kept
        assert [e["step"] for e in read_train_log(out / folder / "train_log.jsonl")][-1] == 2
    shipped = load_file(str(out / "demo_model" / "adapter.safetensors"))
    first = load_file(str(out / "adapter_tuned" / "adapter.safetensors"))
    second_path = out / "adapter_tuned2" / "adapter.safetensors"
    second = load_file(str(second_path))
    assert shipped.keys() == first.keys() == second.keys() == plain.keys()
    assert all(torch.equal(shipped[k], second[k]) for k in shipped)
    assert any(not torch.equal(second[k], first[k]) for k in shipped)
    assert any(not torch.equal(first[k], plain[k]) for k in shipped)  # round 1 trained from the adapter's weights
    # package_as: the package ships the rounds that name a file, under that name (round 1 as the default adapter)
    named = micro_recipe(
        adapter_tune=[
            {**rounds[0], "package_as": "adapter.safetensors"},
            {**rounds[1], "package_as": "adapter-removal.safetensors"},
        ]
    )
    assert [t.changes for t in named.tune_rounds()] == [t.changes for t in recipe.tune_rounds()]  # same training
    assert A.trained_adapters(named, out) == {
        "adapter.safetensors": out / "adapter_tuned" / "adapter.safetensors",
        "adapter-removal.safetensors": second_path,
    }
    assert B.train_demo(named, out, phases=("package",)) == out / "demo_model"
    assert sorted(p.name for p in (out / "demo_model").glob("*.safetensors")) == [
        "adapter-removal.safetensors",
        "adapter.safetensors",
    ]
    for name, want in (("adapter.safetensors", first), ("adapter-removal.safetensors", second)):
        got = load_file(str(out / "demo_model" / name))
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    from kfi_core.model.loading import load_kfi_model

    assert load_kfi_model(out / "demo_model", adapter=out / "demo_model" / "adapter-removal.safetensors").adapter
    # another recipe's round 2 in this run (other settings) is refused, not skipped and shipped as this one's
    other = micro_recipe(adapter_tune=[rounds[0], {**rounds[1], "lr": 1e-4, "keyframe_prob": 0.3}])
    for phases in (("adapter_tune",), ("package",)):
        with pytest.raises(
            TrainConfigError,
            match=r"adapter_tune round 2: .*adapter_tuned2 was trained with other "
            r"settings: keyframe_prob 1\.0 \(the recipe: 0\.3\), lr 0\.002 "
            r"\(the recipe: 0\.0001\): another recipe's round 2, or this round "
            r"changed since it finished",
        ):
            B.train_demo(other, out, phases=phases)
    for bad, words in (
        ({"from_adapter": "x.safetensors"}, "adapter_tune round 2.from_adapter: set by the demo-model run"),
        ({"data": "elsewhere"}, "adapter_tune round 2.data: set by the demo-model run"),
    ):
        with pytest.raises(TrainConfigError, match=words):
            A.adapter_config(
                micro_recipe(adapter_tune=[{}, bad]),
                out / "backbone",
                out / "data_tune2",
                out / "adapter_tuned2",
                tune_from=out / "adapter_tuned" / "adapter.safetensors",
                tune_round=2,
            )
    with pytest.raises(TrainConfigError, match=r"adapter_tune round 1\.from_adapter: set by the demo-model run"):
        A.adapter_config(
            micro_recipe(adapter_tune=[{"from_adapter": "x"}]),
            out / "backbone",
            out / "data_tune",
            out / "adapter_tuned",
            tune_from=out / "adapter" / "adapter.safetensors",
        )


@pytest.mark.parametrize(
    "change, words",
    [
        ({"adapter_tune": [{"lr": 1e-3}, {"learning_rate": 1.0}]}, "adapter_tune round 2: unknown key"),
        ({"adapter_tune": [{"recolour_clips": -2}]}, r"adapter_tune round 1\.recolour_clips: got -2"),
        ({"adapter_tune": [{"recolour_clips": 1.5}]}, r"adapter_tune round 1\.recolour_clips: got 1\.5"),
        ({"adapter_tune": [{"removal_clips": -1}]}, r"adapter_tune round 1\.removal_clips: got -1"),
        ({"adapter_tune": [{}, {"removal_clips": 2.5}]}, r"adapter_tune round 2\.removal_clips: got 2\.5"),
        ({"adapter_tune": [{"lr": 1e-3}, 5]}, "adapter_tune round 2: got int"),
        (
            {"adapter_tune": [{"package_as": "adapter.safetensors"}, {"package_as": "sub/removal.safetensors"}]},
            r"adapter_tune round 2\.package_as: got 'sub/removal\.safetensors'; give a file name ending in \.safetensors",
        ),
        ({"adapter_tune": [{"package_as": "adapter.pt"}]}, r"round 1\.package_as: got 'adapter\.pt'"),
        ({"adapter_tune": [{"package_as": 3}]}, r"round 1\.package_as: got 3"),
        (
            {"adapter_tune": [{"package_as": "adapter.safetensors"}, {"package_as": "adapter.safetensors"}]},
            "package_as adapter.safetensors is given to more than one round",
        ),
        (
            {"adapter_tune": [{"package_as": "adapter-removal.safetensors"}, {}]},
            "none is adapter.safetensors, the model's default adapter",
        ),
        ({"adapter_tune": "fast"}, "adapter_tune: got str"),
        ({"adapter_tune": {"lr": 1e-3}}, "adapter_tune: got dict; give a list of rounds"),
        (
            {"adapter_tune": [{"removal_clips": R.TRAIN_SEED_LIMIT - R.REMOVAL_SEED_BASE + 1}]},
            r"round 1\.removal_clips: got \d+; give 0 \.\. ",
        ),
    ],
)
def test_adapter_tune_recipe_errors_name_the_setting(change, words):
    with pytest.raises(TrainConfigError, match=words):
        micro_recipe(**change)
