"""kfi_core.pretrain: the demo model's from-scratch phases, checkpoints and resume, on micro recipes."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import subprocess
import sys
import time

import pytest
import torch

from kfi_core import pretrain as P
from kfi_core.errors import ResumeError, TrainConfigError

ROOT = P.Path(__file__).resolve().parents[1]


def micro_recipe(**changes) -> P.DemoRecipe:
    data = {
        "seed": 3, "num_frames": 4, "resolution": [64, 64], "data_clips": 2, "data_frames": 5,
        "vae": {"steps": 2, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 1, "log_every": 1},
        "backbone": {"steps": 2, "batch_size": 2, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 1,
                     "log_every": 1},
        "adapter": {"stages": [{"steps": 2, "resolution": [64, 64], "batch_size": 1}], "rank": 4,
                    "checkpoint_every": 1, "encode_chunk_size": 4},
    }
    data.update(changes)
    return P.recipe_from_dict(data)


@pytest.mark.parametrize("name", ["recipe.json", "recipe-tuned.json", "recipe-four-rounds.json",
                                  "recipe-balanced.json",
                                  "recipe-stock.json", "recipe-track-masks.json",
                                  "recipe-chroma.json", "recipe-temporal.json", "recipe-colour.json",
                                  "recipe-longvae.json", "recipe-black.json", "recipe-easy.json",
                                  "recipe-decoder.json", "recipe-annealed.json"])
def test_committed_recipes_load(name):
    recipe = P.load_recipe(ROOT / "configs" / "demo" / name)
    assert recipe.resolution == (64, 64) and recipe.vae.steps > 0 and recipe.backbone.steps > 0
    config = P.adapter_config(recipe, ROOT / "m", ROOT / "d", ROOT / "nonexistent-out")
    assert config.rank == 32 and config.total_steps > 0 and config.resume is None
    # the first shipped recipe (stock) draws no track masks; the third try and the shipped recipe draw them for
    # 70 % of keyframe samples
    colour = name in ("recipe.json", "recipe-tuned.json", "recipe-four-rounds.json", "recipe-balanced.json",
                      "recipe-colour.json", "recipe-longvae.json", "recipe-black.json",
                      "recipe-easy.json", "recipe-decoder.json", "recipe-annealed.json")
    temporal = colour or name == "recipe-temporal.json"
    assert config.track_mask_prob == (0.7 if temporal or name == "recipe-track-masks.json" else 0.0)
    # the shipped recipe's backbone sees the image latent on frame 0 alone for half its samples
    assert recipe.backbone.first_frame_only_prob == (0.5 if temporal else 0.0)
    # the chroma and colour recipes weight the VAE's colour error; the others train on L1 + MSE alone
    assert (recipe.vae.chroma_weight > 0) == (colour or name == "recipe-chroma.json")
    # only the colour recipes anchor the latent to the pooled colours and add the GroupNorm reference
    assert (recipe.vae.anchor_weight > 0) == (recipe.vae.norm_reference > 0) == colour


def test_chroma_mse_sees_colour_not_brightness():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    grey_shift = x + torch.rand(2, 1, 8, 8)  # the same chroma, other brightness
    assert float(P.chroma_mse(grey_shift, x)) < 1e-12
    # analytic: a pure chroma offset (+d, -d, 0) has chroma error (d^2 + d^2 + 0) / 3 per pixel
    d = 0.3
    shifted = x + torch.tensor([d, -d, 0.0]).view(1, 3, 1, 1)
    assert float(P.chroma_mse(shifted, x)) == pytest.approx(2 * d * d / 3, rel=1e-5)


def test_vae_loss_adds_the_weighted_chroma_term(tiny_components):
    vae = tiny_components["vae"]
    clips = torch.rand(1, 2, 3, 64, 64)
    plain = P.PhaseConfig()
    weighted = P.PhaseConfig(chroma_weight=5.0)
    a, _ = P.vae_loss(vae, clips, torch.Generator().manual_seed(0), plain)
    b, _ = P.vae_loss(vae, clips, torch.Generator().manual_seed(0), weighted)
    pixels = clips.flatten(0, 1) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(0))
        z = posterior.mean + posterior.std * noise
        term = P.chroma_mse(vae.decode(z, num_frames=2).sample, pixels)
    assert float(term) > 0
    assert float((b - a).detach()) == pytest.approx(5.0 * float(term), rel=1e-4)


def test_vae_loss_latent_noise_perturbs_each_sample_by_its_own_level(tiny_components):
    """latent_noise: per sample a level u * latent_noise (u ~ U(0, 1)) in scaled-latent units, shared by the
    sample's frames, drawn after the posterior's noise; 0 leaves the loss exactly as before."""
    vae = copy.deepcopy(tiny_components["vae"])  # the session's components stay as they are
    vae.register_to_config(scaling_factor=0.5)
    clips = torch.rand(2, 2, 3, 64, 64)
    plain, _ = P.vae_loss(vae, clips, torch.Generator().manual_seed(0), P.PhaseConfig())
    same, _ = P.vae_loss(vae, clips, torch.Generator().manual_seed(0), P.PhaseConfig(latent_noise=0.0))
    noisy, _ = P.vae_loss(vae, clips, torch.Generator().manual_seed(0), P.PhaseConfig(latent_noise=2.0))
    assert torch.equal(plain, same) and not torch.equal(plain, noisy)
    pixels = clips.flatten(0, 1) * 2 - 1
    with torch.no_grad():  # the same draws by hand: the loss is L1 + MSE (+ tiny KL) of this z's decode
        g = torch.Generator().manual_seed(0)
        posterior = vae.encode(pixels).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        level = torch.rand(2, generator=g) * 2.0
        z = z + (level.repeat_interleave(2) / 0.5).view(-1, 1, 1, 1) * torch.randn(z.shape, generator=g)
        recon = vae.decode(z, num_frames=2).sample
        kl = posterior.kl().mean() / pixels[0].numel()
        expected = (recon - pixels).abs().mean() + ((recon - pixels) ** 2).mean() + 1e-6 * kl
    assert float(noisy.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_colour_anchor_mse_is_zero_on_the_pooled_image_and_analytic_off_it():
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    pooled = torch.nn.functional.avg_pool2d(pixels, 4)  # a 4x-down latent's cells
    latent = torch.cat([pooled, torch.randn(2, 1, 4, 4)], 1)  # channel 3 is free: it must not count
    assert float(P.colour_anchor_mse(latent, pixels)) < 1e-12
    # analytic: latent channel 0 off by d everywhere -> mean over 3 channels of (d^2, 0, 0)
    d = 0.5
    latent[:, 0] += d
    assert float(P.colour_anchor_mse(latent, pixels)) == pytest.approx(d * d / 3, rel=1e-5)
    with pytest.raises(TrainConfigError, match="3 or more"):
        P.colour_anchor_mse(latent[:, :2], pixels)


def test_vae_loss_adds_the_weighted_anchor_term(tiny_components):
    vae = tiny_components["vae"]
    clips = torch.rand(1, 2, 3, 64, 64)
    a, _ = P.vae_loss(vae, clips, torch.Generator().manual_seed(0), P.PhaseConfig())
    b, _ = P.vae_loss(vae, clips, torch.Generator().manual_seed(0), P.PhaseConfig(anchor_weight=3.0))
    pixels = clips.flatten(0, 1) * 2 - 1
    with torch.no_grad():
        term = P.colour_anchor_mse(vae.encode(pixels).latent_dist.mean, pixels)
    assert float(term) > 0
    assert float((b - a).detach()) == pytest.approx(3.0 * float(term), rel=1e-4)


def test_random_crops_are_windows_of_the_clip_drawn_by_the_generator():
    clips = torch.rand(2, 8, 3, 64, 64)
    a = P.random_crops(clips, 32, 4, torch.Generator().manual_seed(3))
    b = P.random_crops(clips, 32, 4, torch.Generator().manual_seed(3))
    assert a.shape == (2, 4, 3, 32, 32) and torch.equal(a, b)
    for i in range(2):  # each crop is an exact window of its own clip
        hits = [(t, y, x) for t in range(5) for y in range(33) for x in range(33)
                if torch.equal(clips[i, t:t + 4, :, y:y + 32, x:x + 32], a[i])]
        assert len(hits) == 1
    assert torch.equal(P.random_crops(clips, 0, 0, torch.Generator()), clips)  # 0 keeps an axis whole


def _last_norm_inputs(vae, pixels):
    seen = {}
    hooks = [vae.encoder.conv_norm_out.register_forward_pre_hook(lambda m, a: seen.__setitem__("enc", a[0])),
             vae.decoder.conv_norm_out.register_forward_pre_hook(lambda m, a: seen.__setitem__("dec", a[0]))]
    with torch.no_grad():
        vae.decode(vae.encode(pixels).latent_dist.mode(), num_frames=pixels.shape[0])
    for hook in hooks:
        hook.remove()
    return seen


def test_norm_reference_shifts_every_other_channel_before_the_last_group_norms():
    import copy

    vae = P.new_components(micro_recipe())["vae"].eval()
    shifted = copy.deepcopy(vae)
    P.add_norm_reference(shifted, 10.0)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    a, b = _last_norm_inputs(vae, pixels), _last_norm_inputs(shifted, pixels)
    # encoder: the shift is the last residual block's bias, so it arrives exactly (the latent differs after it)
    diff = b["enc"] - a["enc"]
    assert torch.allclose(diff[:, ::2], torch.full_like(diff[:, ::2], 10.0), atol=1e-4)
    assert torch.allclose(diff[:, 1::2], torch.zeros_like(diff[:, 1::2]), atol=1e-4)
    # decoder: it passes the temporal residual block and the mixer, whose own outputs change a little with it
    dec = b["dec"]
    assert float(dec[:, ::2].mean() - dec[:, 1::2].mean()) == pytest.approx(10.0, abs=2.0)


def test_the_track_mask_recipe_shares_the_stock_vae_and_backbone():
    shipped = P.load_recipe(ROOT / "configs" / "demo" / "recipe-stock.json")
    track = P.load_recipe(ROOT / "configs" / "demo" / "recipe-track-masks.json")
    for phase in ("vae", "backbone"):  # so a finished run's backbone/ can be reused for its adapter phase
        assert P._fingerprint(shipped, phase) == P._fingerprint(track, phase)
        assert getattr(shipped, phase) == getattr(track, phase)


@pytest.mark.parametrize("change, words", [
    ({"colour": 1}, "unknown key"),
    ({"resolution": [60, 64]}, "multiples of 64"),
    ({"data_clips": P.EVAL_SEED_BASE}, "held out"),
    ({"data_easy_clips": -1}, "data_easy_clips"),
    ({"data_easy_clips": P.RECOLOUR_SEED_BASE - P.EASY_SEED_BASE + 1}, "data_easy_clips"),
    ({"data_recolour_clips": P.REMOVAL_SEED_BASE - P.RECOLOUR_SEED_BASE + 1}, "data_recolour_clips"),
    ({"data_removal_clips": -1}, "data_removal_clips: got -1"),
    ({"data_removal_clips": P.TRAIN_SEED_LIMIT - P.REMOVAL_SEED_BASE + 1}, "data_removal_clips"),
    ({"vae": {"steps": 1, "bogus": 2}}, "vae: unknown key"),
    ({"num_frames": 9}, "num_frames"),
    ({"backbone": {"steps": 1, "first_frame_only_prob": 1.5}}, "backbone.first_frame_only_prob"),
    ({"vae": {"steps": 1, "anchor_weight": -1}}, "vae.anchor_weight"),
    ({"vae": {"steps": 1, "crop_size": 36}}, "vae.crop_size"),
    ({"vae": {"steps": 1, "crop_frames": 9}}, "vae.crop_frames"),
    ({"backbone": {"steps": 1, "crop_size": 32}}, "only the vae phase"),
    ({"decoder": {"steps": 1, "anchor_weight": 1.0}}, "decoder.anchor_weight"),
    ({"decoder": {"steps": 1, "bogus": 1}}, "decoder: unknown key"),
    ({"decoder_tune": {"steps": 1, "norm_reference": 10.0}}, "decoder_tune.anchor_weight / norm_reference"),
    ({"vae": {"steps": 1, "latent_noise": 0.5}}, "vae.latent_noise"),
    ({"decoder_tune": {"steps": 1, "latent_noise": -0.1}}, "decoder_tune.latent_noise"),
])
def test_recipe_errors_name_the_problem(change, words):
    with pytest.raises(TrainConfigError, match=words):
        micro_recipe(**change)


def test_recipe_refuses_adapter_paths(tmp_path):
    recipe = micro_recipe(adapter={"model": "x"})
    with pytest.raises(TrainConfigError, match="adapter.model"):
        P.adapter_config(recipe, tmp_path, tmp_path, tmp_path / "a")


def test_training_clips_are_deterministic_and_never_held_out():
    a = P.training_clip(5, 4, 64, 64)
    assert torch.equal(a, P.training_clip(5, 4, 64, 64))
    assert a.shape == (4, 3, 64, 64) and 0 <= float(a.min()) and float(a.max()) <= 1
    with pytest.raises(TrainConfigError, match="below"):
        P.training_clip(P.EVAL_SEED_BASE, 4, 64, 64)
    batch = P.training_batch(0, 1, 7, 3, 4, 64, 64)
    assert torch.equal(batch, P.training_batch(0, 1, 7, 3, 4, 64, 64))
    assert not torch.equal(batch, P.training_batch(0, 1, 8, 3, 4, 64, 64))


def test_lr_schedule_warms_up_and_decays():
    phase = P.PhaseConfig(steps=100, lr=1.0, warmup_steps=10, decay_fraction=0.5)
    assert P.lr_at(phase, 0) == pytest.approx(0.1)
    assert P.lr_at(phase, 20) == pytest.approx(1.0)
    assert P.lr_at(phase, 99) == pytest.approx(1.0 - 0.9 * 49 / 50)


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.9))
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(4, 3)).square().sum().backward()
        opt.step()
    P.save_optimizer(opt, tmp_path / "opt.safetensors")
    assert (tmp_path / "opt.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not pickle
    fresh = torch.optim.AdamW(net.parameters(), lr=5.0)
    P.load_optimizer(fresh, tmp_path / "opt.safetensors")
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 1e-2
    assert tuple(b["param_groups"][0]["betas"]) == (0.8, 0.9)
    for idx in a["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a["state"][idx][key], b["state"][idx][key])


def test_clip_embedding_matches_the_stock_encoder_and_trains(tiny_components):
    from kfi_core.svd_stock import encode_image_clip

    enc, fe = tiny_components["image_encoder"], tiny_components["feature_extractor"]
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    emb = P.clip_embedding(enc, fe, images)
    for i in range(2):
        torch.testing.assert_close(emb[i:i + 1], encode_image_clip(enc, fe, images[i:i + 1]), rtol=1e-5, atol=1e-6)
    emb.sum().backward()
    assert enc.visual_projection.weight.grad is not None
    enc.zero_grad(set_to_none=True)


def test_the_temporal_recipe_keeps_the_stock_vae():
    """recipe-temporal.json's VAE was trained by recipe-stock.json; it differs in the backbone's
    first_frame_only_prob (and the adapter), not in the VAE phase."""
    stock = P.load_recipe(ROOT / "configs" / "demo" / "recipe-stock.json")
    temporal = P.load_recipe(ROOT / "configs" / "demo" / "recipe-temporal.json")
    assert P._fingerprint(stock, "vae") == P._fingerprint(temporal, "vae") and stock.vae == temporal.vae
    assert dataclasses.replace(temporal.backbone, first_frame_only_prob=0.0) == stock.backbone


def test_the_colour_recipe_is_the_temporal_one_with_the_colour_vae():
    """recipe-colour.json (shipped 2026-12-03 to 05) changes only the VAE phases of recipe-temporal.json, the model it
    replaced, so the two models' differences come from the VAE (README, 'The encoder, not the decoder, was dropping
    colour')."""
    temporal = P.load_recipe(ROOT / "configs" / "demo" / "recipe-temporal.json")
    shipped = P.load_recipe(ROOT / "configs" / "demo" / "recipe-colour.json")
    assert shipped.backbone == temporal.backbone and shipped.adapter == temporal.adapter
    assert shipped.vae != temporal.vae and shipped.decoder.steps > 0 and temporal.decoder.steps == 0
    assert dataclasses.replace(shipped, vae=temporal.vae, decoder=temporal.decoder) == temporal


def test_the_long_vae_candidate_is_the_colour_recipe_with_longer_vae_phases():
    """recipe-longvae.json (README, 'A longer VAE phase') lengthens the VAE and decoder phases of recipe-colour.json
    (then shipped) and changes nothing else, so its model's differences come from the VAE's training length."""
    shipped = P.load_recipe(ROOT / "configs" / "demo" / "recipe-colour.json")
    longer = P.load_recipe(ROOT / "configs" / "demo" / "recipe-longvae.json")
    assert longer.vae.steps > shipped.vae.steps and longer.decoder.steps > shipped.decoder.steps
    assert dataclasses.replace(longer.vae, steps=shipped.vae.steps) == shipped.vae
    assert dataclasses.replace(longer.decoder, steps=shipped.decoder.steps) == shipped.decoder
    assert dataclasses.replace(longer, vae=shipped.vae, decoder=shipped.decoder) == shipped


def test_the_black_fill_recipe_is_the_colour_recipe_plus_a_tune_phase():
    """So a finished recipe-colour.json run continues with --phase tune (its vae, decoder and backbone are reused)."""
    shipped = P.load_recipe(ROOT / "configs" / "demo" / "recipe-colour.json")
    black = P.load_recipe(ROOT / "configs" / "demo" / "recipe-black.json")
    assert shipped.tune.steps == 0 and black.tune.steps > 0
    assert black.tune.first_frame_only_fill == "black" and black.tune.first_frame_only_prob > 0.5
    assert dataclasses.replace(black, tune=shipped.tune) == shipped
    for phase in ("vae", "decoder", "backbone"):
        assert P._fingerprint(shipped, phase) == P._fingerprint(black, phase)


def test_the_easy_recipe_is_the_colour_recipe_plus_easy_clips_and_its_adapter_settings():
    """So a finished recipe-colour.json run continues with --phase data --phase adapter (vae, decoder, backbone
    reused)."""
    shipped = P.load_recipe(ROOT / "configs" / "demo" / "recipe-colour.json")
    easy = P.load_recipe(ROOT / "configs" / "demo" / "recipe-easy.json")
    assert shipped.data_easy_clips == 0 and easy.data_easy_clips > 0
    changed = {k for k in set(shipped.adapter) | set(easy.adapter) if shipped.adapter.get(k) != easy.adapter.get(k)}
    assert changed == {"_doc", "lr", "masked_loss_weight", "keyframe_p_mean", "keyframe_p_std"}
    assert dataclasses.replace(easy, data_easy_clips=0, adapter=shipped.adapter) == shipped
    for phase in ("vae", "decoder", "backbone"):
        assert P._fingerprint(shipped, phase) == P._fingerprint(easy, phase)


def test_the_annealed_recipe_is_the_easy_one_run_longer_and_annealed():
    """recipe-annealed.json (shipped 2026-12-05 to 06) is recipe-easy.json's adapter run for 9,000 steps instead of
    2,000, the rate decayed over the last 2,000 (from step 7,000: the run it ships resumed the constant-rate one there);
    data, VAE, decoder and backbone are recipe-colour.json's, so its backbone is the model it replaced's."""
    shipped = P.load_recipe(ROOT / "configs" / "demo" / "recipe-annealed.json")
    easy = P.load_recipe(ROOT / "configs" / "demo" / "recipe-easy.json")
    colour = P.load_recipe(ROOT / "configs" / "demo" / "recipe-colour.json")
    changed = {k for k in set(shipped.adapter) | set(easy.adapter) if shipped.adapter.get(k) != easy.adapter.get(k)}
    assert changed == {"_doc", "stages", "lr_decay_fraction"}
    assert [s["steps"] for s in shipped.adapter["stages"]] == [9000]
    assert [s["steps"] for s in easy.adapter["stages"]] == [2000]
    config = P.adapter_config(shipped, ROOT / "m", ROOT / "d", ROOT / "nonexistent-out")
    assert config.total_steps == 9000 and math.floor(9000 * (1 - config.lr_decay_fraction)) == 7000
    assert dataclasses.replace(shipped, adapter=easy.adapter) == easy
    assert shipped.data_easy_clips == 600
    for phase in ("vae", "decoder", "backbone"):
        assert P._fingerprint(shipped, phase) == P._fingerprint(colour, phase)


def test_first_frame_only_conditioning_leaves_the_other_frames_empty(tiny_components):
    vae = tiny_components["vae"]
    clips = P.training_batch(0, 1, 0, 3, 4, 64, 64)
    stock = P.backbone_inputs(vae, clips, P.PhaseConfig(cond_dropout_prob=0.0), P.step_generator(0, 1, 0))
    only = P.backbone_inputs(vae, clips, P.PhaseConfig(cond_dropout_prob=0.0, first_frame_only_prob=1.0),
                             P.step_generator(0, 1, 0))
    cond, cond_stock = only["model_in"][:, :, 4:], stock["model_in"][:, :, 4:]
    # the same draws up to the condition: frame 0 carries the stock latent, the others nothing
    torch.testing.assert_close(cond[:, 0], cond_stock[:, 0])
    assert cond[:, 0].abs().sum() > 0 and cond[:, 1:].abs().sum() == 0


def test_first_frame_only_black_fill_holds_the_black_frame_latent(tiny_components):
    """With first_frame_only_fill "black" the other frames hold the latent of a black frame, noise-augmented like
    the first: what KFI's black-filled condition holds on a fully masked frame. Unconditional samples stay zero."""
    vae = tiny_components["vae"]
    clips = P.training_batch(0, 1, 0, 4, 3, 64, 64)
    # noise augmentation ~ exp(-20): the black frame's latent is then encode(black) to float precision
    phase = P.PhaseConfig(cond_dropout_prob=0.5, first_frame_only_prob=1.0, first_frame_only_fill="black",
                          noise_aug_mean=-20.0, noise_aug_std=0.1)
    inputs = P.backbone_inputs(vae, clips, phase, P.step_generator(0, 1, 0))
    zeros = P.backbone_inputs(vae, clips, dataclasses.replace(phase, first_frame_only_fill="zeros"),
                              P.step_generator(0, 1, 0))
    cond, keep = inputs["model_in"][:, :, 4:], inputs["keep"]
    # the same draws up to the condition: frame 0 is the zeros-fill frame 0
    torch.testing.assert_close(cond[:, 0], zeros["model_in"][:, 0, 4:])
    assert 0 < keep.sum() < 4, "the seed should give conditional and unconditional samples"
    with torch.no_grad():
        black = vae.encode(-torch.ones(1, 3, 64, 64)).latent_dist.mode()[0]
    for i in range(4):
        if keep[i] == 0:
            assert cond[i].abs().sum() == 0
            continue
        assert torch.equal(cond[i, 1], cond[i, 2])  # one black latent for every other frame
        torch.testing.assert_close(cond[i, 1], black, atol=1e-5, rtol=1e-5)
        assert (cond[i, 1] - cond[i, 0]).abs().mean() > 0.1 * black.abs().mean()


def test_first_frame_only_fill_must_be_known():
    with pytest.raises(TrainConfigError, match="backbone.first_frame_only_fill.*zeros, black"):
        micro_recipe(backbone={"steps": 1, "first_frame_only_fill": "grey"})


def test_backbone_inputs_follow_stock_svd_conditioning(tiny_components):
    from kfi_core.denoiser import scale_model_input

    vae = tiny_components["vae"]
    phase = P.PhaseConfig(cond_dropout_prob=0.5, noise_aug_mean=-1.0)
    clips = P.training_batch(0, 1, 0, 4, 3, 64, 64)
    gen = P.step_generator(0, 1, 0)
    inputs = P.backbone_inputs(vae, clips, phase, gen)
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


@pytest.mark.parametrize("colour", [{}, {"chroma_weight": 8.0, "anchor_weight": 10.0, "norm_reference": 10.0,
                                          "crop_size": 32, "crop_frames": 1}], ids=["plain", "colour-crops"])
def test_vae_phase_resumes_exactly(tmp_path, colour):
    """Stopped after every step and resumed must give the weights of one uninterrupted run (random crops too)."""
    recipe = micro_recipe(vae={"steps": 3, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 10, "log_every": 1,
                               **colour})
    whole = P.train_vae(recipe, tmp_path / "a", deadline=None)
    parts = None
    for _ in range(4):
        parts = P.train_vae(recipe, tmp_path / "b", deadline=time.monotonic() - 1)  # stops after one step
        if parts is not None:
            break
    assert parts is not None
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "vae" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    for (name, a), (_, b) in zip(whole.state_dict().items(), parts.state_dict().items()):
        assert torch.equal(a, b), name
    assert whole.config.scaling_factor == parts.config.scaling_factor != 0.18215


def test_the_decoder_candidate_is_the_annealed_recipe_plus_a_decoder_tune_phase():
    shipped = P.load_recipe(ROOT / "configs" / "demo" / "recipe-annealed.json")
    candidate = P.load_recipe(ROOT / "configs" / "demo" / "recipe-decoder.json")
    assert shipped.decoder_tune.steps == 0 and candidate.decoder_tune.steps == 2500
    assert dataclasses.replace(candidate, decoder_tune=shipped.decoder_tune) == shipped
    assert candidate.decoder_tune.latent_noise == 0.0


def test_decoder_phase_trains_the_decoder_alone_and_resumes_exactly(tmp_path):
    decoder = {"steps": 2, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 10, "log_every": 1,
               "chroma_weight": 4.0, "crop_size": 32, "crop_frames": 2}
    recipe = micro_recipe(vae={"steps": 1, "lr": 1e-3, "warmup_steps": 0, "log_every": 1}, decoder=decoder)
    vae = P.train_vae(recipe, tmp_path / "a", deadline=None)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    tuned = P.train_decoder(recipe, vae, tmp_path / "a", deadline=None)
    after = tuned.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("decoder.") for k in changed)  # the latents are exactly the vae phase's
    assert tuned.config.scaling_factor == vae.config.scaling_factor
    # stopped after every step and resumed: the same decoder as one uninterrupted run
    P.train_vae(recipe, tmp_path / "b", deadline=None)
    parts = None
    for _ in range(3):
        parts = P.train_decoder(recipe, P.train_vae(recipe, tmp_path / "b", deadline=None), tmp_path / "b",
                                deadline=time.monotonic() - 1)
        if parts is not None:
            break
    assert parts is not None
    for (name, a), (_, b) in zip(after.items(), parts.state_dict().items()):
        assert torch.equal(a, b), name
    # finished: read back from decoder_final, and 0 steps leaves the VAE as it is
    again = P.train_decoder(recipe, vae, tmp_path / "a", deadline=None)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in after.items())
    assert P.train_decoder(micro_recipe(), vae, tmp_path / "c", deadline=None) is vae


def test_decoder_tune_phase_trains_only_the_decoder_and_the_package_ships_it(tmp_path):
    """decoder_tune (after the adapter) trains the finished decoder further; every latent, so the backbone and the
    adapter, stays as it was: the packaged VAE has the backbone's encoder, bit for bit, and the tuned decoder."""
    from safetensors.torch import load_file, save_file

    from kfi_core.loading import load_kfi_model

    tune = {"steps": 2, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 1, "log_every": 1, "crop_size": 32,
            "crop_frames": 2}
    recipe = micro_recipe(decoder_tune=tune)
    out = tmp_path / "run"
    with pytest.raises(TrainConfigError, match="run the vae and decoder phases first"):
        P.tune_decoder(recipe, out, deadline=None)
    with pytest.raises(TrainConfigError, match="run the decoder_tune phase first"):
        P.train_demo(recipe, out, phases=("package",))
    # out of time after the first step: a checkpoint and no package; the same command resumes and finishes
    assert P.train_demo(recipe, out, phases=P.PHASES[:P.PHASES.index("decoder_tune")]) == out
    assert P.tune_decoder(recipe, out, deadline=time.monotonic() - 1) is None
    assert [s for s, _ in P.list_phase_checkpoints(out / "vae" / "decoder_tune")] == [1]
    path = P.train_demo(recipe, out)
    assert path == out / "demo_model" and (out / "vae" / "decoder_tuned" / "config.json").is_file()
    weights = "diffusion_pytorch_model.safetensors"
    shipped, backbone = load_file(str(path / "vae" / weights)), load_file(str(out / "backbone" / "vae" / weights))
    assert shipped.keys() == backbone.keys()
    changed = {k for k in shipped if not torch.equal(shipped[k], backbone[k])}
    assert changed and all(k.startswith("decoder.") for k in changed)
    model = load_kfi_model(path, adapter=path / "adapter.safetensors")
    assert model.vae.config.scaling_factor == json.loads((out / "backbone" / "vae" / "config.json").read_text())[
        "scaling_factor"]
    # a tuned VAE whose encoder is not the backbone's is refused
    bad = tmp_path / "bad_vae"
    P.shutil.copytree(out / "vae" / "decoder_tuned", bad)
    tensors = load_file(str(bad / weights))
    key = next(k for k in tensors if k.startswith("encoder."))
    tensors[key] = tensors[key] + 1.0
    save_file(tensors, str(bad / weights))
    with pytest.raises(TrainConfigError, match="is not the one .* was trained on"):
        P.package(out / "backbone", out / "adapter" / "adapter.safetensors", tmp_path / "pkg", vae=bad)
    assert not (tmp_path / "pkg").exists()


def test_resume_refuses_another_recipe(tmp_path):
    recipe = micro_recipe(vae={"steps": 3, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 1, "log_every": 1})
    assert P.train_vae(recipe, tmp_path, deadline=time.monotonic() - 1) is None
    other = micro_recipe(vae={"steps": 3, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 1})
    with pytest.raises(ResumeError, match="different recipe"):
        P.train_vae(other, tmp_path, deadline=None)


def test_train_demo_end_to_end_packages_a_loadable_model(tmp_path):
    from kfi_core.condition import prepare_clip
    from kfi_core.executor import inpaint
    from kfi_core.loading import load_kfi_model
    from kfi_core.procedural import make_procedural_clip
    from kfi_core.propagate import PropagateSettings
    from kfi_core.train import read_train_log

    recipe = micro_recipe()
    path = P.train_demo(recipe, tmp_path / "run")
    assert path == tmp_path / "run" / "demo_model"
    assert len(list((tmp_path / "run" / "data").iterdir())) == 2
    assert [e["step"] for e in read_train_log(tmp_path / "run" / "adapter" / "train_log.jsonl")] == [1, 2]
    model = load_kfi_model(path, adapter=path / "adapter.safetensors")
    assert model.in_channels == 12 and model.lora_rank == 4
    assert model.scheduler_config["sigma_max"] == 80.0
    assert model.vae.config.scaling_factor != 0.18215  # measured on the trained VAE
    c = make_procedural_clip("removal", 4, 64, 64, seed=P.EVAL_SEED_BASE)
    out = inpaint(model, prepare_clip(c.frames, c.masks), PropagateSettings(steps=2))
    keep = c.masks.expand_as(c.frames) < 0.5
    assert torch.equal(out[keep], c.frames[keep])  # unmasked pixels preserved exactly
    # a finished run is not redone: the same call returns at once with the same package
    before = (path / "adapter.safetensors").read_bytes()
    assert P.train_demo(recipe, tmp_path / "run") == path
    assert (path / "adapter.safetensors").read_bytes() == before


def test_tune_phase_trains_the_finished_backbone_further_and_the_adapter_uses_it(tmp_path, tiny_components):
    from safetensors.torch import load_file

    vae = tiny_components["vae"]
    tune = {"steps": 2, "batch_size": 2, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 1, "log_every": 1,
            "first_frame_only_prob": 1.0, "first_frame_only_fill": "black"}
    recipe = micro_recipe(tune=tune)
    out = tmp_path / "run"
    with pytest.raises(TrainConfigError, match="run the backbone phase first"):
        P.tune_backbone(recipe, vae, out, deadline=None)
    backbone = P.train_backbone(recipe, vae, out, deadline=None)
    assert P.tune_backbone(micro_recipe(), vae, out, deadline=None) == backbone  # no tune steps: the backbone
    assert P.trained_backbone(micro_recipe(), out) == backbone
    # out of time after the first step: a checkpoint, no folder; the same call resumes and finishes
    assert P.tune_backbone(recipe, vae, out, deadline=time.monotonic() - 1) is None
    assert [s for s, _ in P.list_phase_checkpoints(out / "backbone_tuned_train")] == [1]
    tuned = P.tune_backbone(recipe, vae, out, deadline=None)
    assert tuned == out / "backbone_tuned" == P.trained_backbone(recipe, out)
    weights = "unet/diffusion_pytorch_model.safetensors"
    before, after = load_file(str(backbone / weights)), load_file(str(tuned / weights))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained from the backbone's weights
    # the backbone phase's own folder is left as it was, so a run can be tuned again with other settings
    assert load_file(str(backbone / weights)).keys() == before.keys()
    log = [json.loads(line) for line in (out / "backbone_tuned_train" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2]


def test_an_adapter_trained_on_the_other_backbone_folder_is_refused(tmp_path):
    """recipe.json's finished run continued with a tuned recipe (or the reverse) must not reuse, resume or package
    the adapter trained on the other backbone; train_demo checks before the adapter and package phases."""
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    P.check_adapter_backbone(adapter, tmp_path / "run" / "backbone_tuned")  # nothing trained yet: fine
    (adapter / "train_config.json").write_text(json.dumps({"model": "elsewhere/run/backbone"}))
    P.check_adapter_backbone(adapter, tmp_path / "run" / "backbone")  # the same folder, wherever the run moved
    with pytest.raises(ResumeError, match="trained on backbone/, but this recipe's adapter needs backbone_tuned/"):
        P.check_adapter_backbone(adapter, tmp_path / "run" / "backbone_tuned")
    recipe = micro_recipe(tune={"steps": 1, "batch_size": 2})
    with pytest.raises(ResumeError, match="Move that folder aside"):
        P.train_demo(recipe, tmp_path / "run", phases=("package",))


def test_tune_phase_refuses_crops():
    with pytest.raises(TrainConfigError, match="tune.crop_size"):
        micro_recipe(tune={"steps": 1, "crop_size": 32})


def test_cli_train_demo_refuses_unknown_phase(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kfi_core", "train-demo", "--out", str(tmp_path), "--phase", "gan"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and "--phase: unknown gan" in proc.stderr


def test_easy_clips_show_the_target_at_the_easy_preset_with_its_masks(tmp_path):
    from kfi_core.data import find_sources
    from kfi_core.procedural import make_procedural_clip

    recipe = micro_recipe(data_clips=2, data_frames=5, data_easy_clips=6)
    P.write_dataset(tmp_path, recipe)
    sources = {s.path.name: s for s in find_sources(tmp_path)}
    assert sorted(sources) == [f"clip_{i:06d}" for i in range(2)] + [f"easy_{i:06d}" for i in range(6)]
    appearances = set()
    for i in range(6):
        assert sources[f"easy_{i:06d}"].mask_folder is not None
        seed = P.EASY_SEED_BASE + i
        frames, masks = P.training_easy_clip(seed, 5, 64, 64)
        clip = make_procedural_clip("edit", num_frames=5, height=64, width=64, seed=seed, difficulty="easy")
        assert torch.equal(masks, clip.masks) and masks.sum() > 0
        edited = torch.equal(frames, clip.ground_truth)
        assert edited or torch.equal(frames, clip.frames)
        appearances.add(edited)
    assert appearances == {True, False}  # both the original and the edited target are trained on
    assert P.EVAL_SEED_BASE > P.TRAIN_SEED_LIMIT > P.EASY_SEED_BASE + recipe.data_easy_clips


def _one_clip_dataset_plus(folder, **extra_clips) -> dict:
    """The sources, by name, of a dataset of one data clip plus ``extra_clips`` (data_*_clips), 5 frames each."""
    from kfi_core.data import find_sources

    P.write_dataset(folder, micro_recipe(data_clips=1, data_frames=5, **extra_clips))
    return {s.path.name: s for s in find_sources(folder)}


def test_recoloured_clips_show_the_target_as_it_is_or_recoloured_with_its_masks(tmp_path):
    from kfi_core.procedural import ProceduralConfig, make_procedural_clip, with_config

    sources = _one_clip_dataset_plus(tmp_path, data_recolour_clips=16)
    assert sorted(sources) == ["clip_000000"] + [f"recolour_{i:06d}" for i in range(16)]
    seen = set()
    for i in range(16):
        assert sources[f"recolour_{i:06d}"].mask_folder is not None
        seed = P.RECOLOUR_SEED_BASE + i
        frames, masks = P.training_recolour_clip(seed, 5, 64, 64)
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
    assert P.EASY_SEED_BASE < P.RECOLOUR_SEED_BASE < P.TRAIN_SEED_LIMIT < P.EVAL_SEED_BASE


def test_removal_clips_are_clean_scenes_with_the_removed_targets_track_as_holes(tmp_path):
    from kfi_core.data import NO_KEYFRAME, ClipDataset
    from kfi_core.procedural import ProceduralConfig, make_procedural_clip

    sources = _one_clip_dataset_plus(tmp_path, data_removal_clips=8)
    assert sorted(sources) == ["clip_000000"] + [f"removal_{i:06d}" for i in range(8)]
    presets = set()
    for i in range(8):
        source = sources[f"removal_{i:06d}"]
        assert source.hole_folder is not None and source.mask_folder is None  # holes only: no object under them
        seed = P.REMOVAL_SEED_BASE + i
        frames, masks = P.training_removal_clip(seed, 5, 64, 64)
        matches = []
        for preset in ("easy", "medium"):
            clip = make_procedural_clip("removal", num_frames=5, height=64, width=64, seed=seed,
                                        config=ProceduralConfig.preset(preset))
            if torch.equal(frames, clip.ground_truth) and torch.equal(masks, clip.masks):
                matches.append(preset)
                hole = clip.masks.expand_as(clip.frames) > 0.5
                assert not torch.equal(clip.frames[hole], frames[hole])  # the target is gone from the clip
        assert len(matches) == 1, matches
        presets.add(matches[0])
        # without a keyframe, a sample of this clip has the removed target's track as its hole
        ds = ClipDataset(source.path, num_frames=5, resolution=(64, 64), crop_scale=(1, 1), keyframe_prob=0.0,
                         hole_mask_prob=1.0)
        sample = ds.get(0, 0)
        assert sample.keyframe_index == NO_KEYFRAME and sample.hole_masks and torch.equal(sample.masks, masks)
        assert (sample.frames - frames).abs().max() <= 0.5 / 255 + 1e-6  # the clean frames, as PNG rounds them
    assert presets == {"easy", "medium"}
    assert P.RECOLOUR_SEED_BASE < P.REMOVAL_SEED_BASE < P.TRAIN_SEED_LIMIT < P.EVAL_SEED_BASE
    for bad in (P.REMOVAL_SEED_BASE - 1, P.TRAIN_SEED_LIMIT):
        with pytest.raises(TrainConfigError, match=f"removal training seed {bad}"):
            P.training_removal_clip(bad, 5, 64, 64)


def test_dataset_clips_showing_the_target_carry_its_masks(tmp_path):
    from kfi_core.data import ClipDataset, find_sources

    recipe = micro_recipe(data_clips=8, data_frames=5)
    P.write_dataset(tmp_path, recipe)
    sources = {s.path.name: s for s in find_sources(tmp_path)}
    with_masks = [name for name, s in sources.items() if s.mask_folder is not None]
    assert 0 < len(with_masks) < 8  # the clean-scene clips have no target to track
    for i in range(8):
        frames, masks = P.training_clip_with_masks(i, 5, 64, 64)
        assert torch.equal(frames, P.training_clip(i, 5, 64, 64))
        assert (masks is not None) == (f"clip_{i:06d}" in with_masks)
        if masks is not None:  # the masks cover the target: the clip differs from its clean scene there
            ds = ClipDataset(tmp_path / f"clip_{i:06d}", num_frames=5, resolution=(64, 64), crop_scale=(1, 1),
                             keyframe_prob=1.0, track_mask_prob=1.0)
            sample = ds.get(0, 0)
            assert sample.track_masks and torch.equal(sample.masks, masks)
    # a dataset written before masks existed (empty .done) gets them on the next run, with the same frames
    clip = tmp_path / with_masks[0]
    before = (clip / "0000.png").read_bytes()
    import shutil
    shutil.rmtree(clip / "masks")
    (clip / ".done").write_text("")
    P.write_dataset(tmp_path, recipe)
    assert (clip / "masks").is_dir() and (clip / "0000.png").read_bytes() == before


def test_tune_rounds_link_the_clips_earlier_data_folders_hold(tmp_path):
    """A round's data links the clips that the data folder and the earlier rounds' hold (one file on disk) and makes
    only its new recoloured ones; the folder is file for file what writing it afresh gives; remaking a linked clip
    in one folder gives it its own files and leaves the other folder's as they were."""
    from kfi_core.data import find_sources

    recipe = micro_recipe(data_clips=3, data_frames=5, adapter_tune=[{"recolour_clips": 2, "removal_clips": 1},
                                                                     {"recolour_clips": 4, "removal_clips": 2}])
    out = tmp_path / "run"
    P.write_dataset(out / "data", recipe)
    P.tune_dataset(recipe, out, 1)
    (out / "data_tune2").mkdir()
    (out / "data_tune2" / ".clip_000001.tmp").mkdir()  # what an interrupted link leaves
    P.tune_dataset(recipe, out, 2)
    fresh = P.write_dataset(tmp_path / "fresh", dataclasses.replace(recipe, data_recolour_clips=4,
                                                                    data_removal_clips=2))

    def files(root):
        return {p.relative_to(root): p for p in sorted(root.rglob("*")) if p.is_file()}

    def inode(path):
        return path.stat().st_ino

    assert not (out / "data_tune2" / ".clip_000001.tmp").exists()
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
    P.write_dataset(out / "data_tune2", dataclasses.replace(recipe, data_recolour_clips=4, data_removal_clips=2))
    assert all(inode(p) != inode(out / "data" / "clip_000000" / k) for k, p in files(clip).items())
    assert {k: (p.read_bytes(), inode(p)) for k, p in files(out / "data" / "clip_000000").items()} == source
    assert (out / "data" / "clip_000000" / ".done").read_text() == P._DATA_VERSION


def test_balance_latent_channels_is_an_exact_reparametrisation(tiny_components):
    vae = copy.deepcopy(tiny_components["vae"]).eval()
    pixels = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2.0 - 1.0
    gains = torch.tensor([3.0, 0.5, 7.0, 1.0])
    with torch.no_grad():
        before = vae.encode(pixels).latent_dist
        decoded = vae.decode(before.mode(), num_frames=4).sample
        P.balance_latent_channels(vae, gains)
        after = vae.encode(pixels).latent_dist
        again = vae.decode(after.mode(), num_frames=4).sample
    assert not torch.allclose(after.mean, before.mean, atol=1e-3)
    assert torch.allclose(after.mean, before.mean * gains.view(1, -1, 1, 1), rtol=1e-5, atol=1e-6)
    assert torch.allclose(after.std, before.std * gains.view(1, -1, 1, 1), rtol=1e-4)
    assert torch.allclose(again, decoded, atol=1e-5)  # every decoded frame as it was
    for bad in (torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, 2.0])):
        with pytest.raises(TrainConfigError, match="4 positive numbers"):
            P.balance_latent_channels(vae, bad)


def test_balanced_recipe_trains_the_backbone_on_latents_of_equal_spread(tmp_path):
    from diffusers import AutoencoderKLTemporalDecoder
    from safetensors.torch import load_file

    from kfi_core.loading import load_kfi_model

    recipe = micro_recipe(balance_latents=True)
    out = tmp_path / "run"
    path = P.train_demo(recipe, out)
    balanced = out / "vae" / "balanced"
    weights = "diffusion_pytorch_model.safetensors"
    ours, backbone = load_file(str(balanced / weights)), load_file(str(out / "backbone" / "vae" / weights))
    assert ours.keys() == backbone.keys() and all(torch.equal(ours[k], backbone[k]) for k in ours)
    vae = AutoencoderKLTemporalDecoder.from_pretrained(balanced, use_safetensors=True)
    latents = P.statistics_latents(vae, recipe)
    std = latents.transpose(0, 1).flatten(1).std(dim=1)
    assert torch.allclose(std, std.max().expand_as(std), rtol=1e-4)
    assert vae.config.scaling_factor == pytest.approx(1.0 / float(latents.std()), rel=1e-5)
    plain = AutoencoderKLTemporalDecoder.from_pretrained(out / "vae" / "final", use_safetensors=True)
    plain_std = P.statistics_latents(plain, recipe).transpose(0, 1).flatten(1).std(dim=1)
    assert not torch.allclose(plain_std, plain_std.max().expand_as(plain_std), rtol=1e-2)
    pixels = P.training_clip(1, recipe.num_frames, 64, 64) * 2.0 - 1.0
    with torch.no_grad():
        a = plain.decode(plain.encode(pixels).latent_dist.mode(), num_frames=recipe.num_frames).sample
        b = vae.decode(vae.encode(pixels).latent_dist.mode(), num_frames=recipe.num_frames).sample
    assert torch.allclose(a, b, atol=1e-5)
    model = load_kfi_model(path, adapter=path / "adapter.safetensors")
    assert model.vae.config.scaling_factor == vae.config.scaling_factor
    # the phases on the balanced latents say so in their checkpoints; the phases before them do not
    assert P._fingerprint(recipe, "backbone")["balance_latents"] is True
    assert P._fingerprint(micro_recipe(), "backbone")["balance_latents"] is False
    assert "balance_latents" not in P._fingerprint(recipe, "vae") | P._fingerprint(recipe, "decoder")
    with pytest.raises(ResumeError, match="different recipe"):  # a balanced backbone checkpoint, a plain recipe
        other = tmp_path / "other"
        assert P.train_backbone(recipe, vae, other, deadline=time.monotonic() - 1) is None
        P.train_backbone(micro_recipe(), plain, other, deadline=None)
    # balance_latents turned on after a plain run finished its backbone: refused, not paired with the wrong latents
    plain_run = tmp_path / "plain"
    P.train_demo(micro_recipe(), plain_run, phases=("data", "vae", "backbone"))
    with pytest.raises(TrainConfigError, match="trained on the unbalanced latents"):
        P.train_demo(recipe, plain_run, phases=("vae", "backbone"))


def test_the_balanced_recipe_is_the_annealed_one_with_balanced_latents():
    """recipe-balanced.json (shipped 2026-12-06) changes nothing but balance_latents from recipe-annealed.json, the model
    it replaced: the same data, VAE and decoder (their checkpoints are shared), the backbone and adapter retrained with
    the same settings on the balanced latents (their checkpoints are refused across the two)."""
    annealed = P.load_recipe(ROOT / "configs" / "demo" / "recipe-annealed.json")
    shipped = P.load_recipe(ROOT / "configs" / "demo" / "recipe-balanced.json")
    assert not annealed.balance_latents and shipped.balance_latents
    assert dataclasses.replace(shipped, balance_latents=False) == annealed
    for phase in ("vae", "decoder"):
        assert P._fingerprint(shipped, phase) == P._fingerprint(annealed, phase)
    assert P._fingerprint(shipped, "backbone") != P._fingerprint(annealed, "backbone")


def test_the_shipped_recipe_is_the_balanced_one_plus_six_adapter_tune_rounds():
    """recipe.json (shipped 2026-12-06, late; rounds 4-6 2026-12-07) is recipe-balanced.json plus its adapter_tune
    phase in six rounds: every other phase's checkpoints are shared; each round trains the adapter phase's settings
    with its own changes from the round before (round 1 from that adapter: runs/BF's settings; rounds 2 and 3: runs/BG's
    and runs/BH's; rounds 4-6 on removal clips), on its own data, and the package ships round 3's adapter as the
    default (edit) adapter and round 6's as the removal adapter."""
    balanced = P.load_recipe(ROOT / "configs" / "demo" / "recipe-balanced.json")
    shipped = P.load_recipe(ROOT / "configs" / "demo" / "recipe.json")
    assert dataclasses.replace(shipped, adapter_tune={}) == balanced
    assert [(t.recolour_clips, t.removal_clips, t.data_folder, t.adapter_folder, t.package_as)
            for t in shipped.tune_rounds()] == [
        (1200, 0, "data_tune", "adapter_tuned", None), (2400, 0, "data_tune2", "adapter_tuned2", None),
        (3600, 0, "data_tune3", "adapter_tuned3", "adapter.safetensors"),
        (3600, 2400, "data_tune4", "adapter_tuned4", None), (0, 2400, "data_tune5", "adapter_tuned5", None),
        (0, 4800, "data_tune6", "adapter_tuned6", "adapter-removal.safetensors")]
    assert shipped.data_recolour_clips == 0 and shipped.adapter_tune_recolour_clips == 0
    for phase in ("vae", "decoder", "backbone"):
        assert P._fingerprint(shipped, phase) == P._fingerprint(balanced, phase)
    run = ROOT / "nonexistent-run"
    base = P.adapter_config(shipped, run / "backbone", run / "data", run / "adapter")
    assert base == P.adapter_config(balanced, run / "backbone", run / "data", run / "adapter")
    assert base.from_adapter is None
    starts = ["adapter", "adapter_tuned", "adapter_tuned2", "adapter_tuned3", "adapter_tuned4", "adapter_tuned5"]
    # seed, steps, keyframe rate, track-mask rate, hole-mask rate
    expected = [(5, 4000, 0.9, 0.9, 0.0), (6, 3000, 1.0, 1.0, 0.0), (7, 3000, 1.0, 1.0, 0.0), (8, 3000, 0.7, 1.0, 1.0),
                (9, 3000, 0.5, 1.0, 1.0), (10, 3000, 0.3, 1.0, 1.0)]
    changed = {"stages", "seed", "lr", "lr_warmup_steps", "lr_decay_fraction", "keyframe_prob", "track_mask_prob",
               "from_adapter", "data", "out"}
    for number, (start, (seed, steps, rate, track, hole)) in enumerate(zip(starts, expected), start=1):
        tune = shipped.tune_rounds()[number - 1]
        tuned = P.adapter_config(shipped, run / "backbone", run / tune.data_folder, run / tune.adapter_folder,
                                 tune_from=run / start / "adapter.safetensors", tune_round=number)
        assert tuned.from_adapter == str(run / start / "adapter.safetensors")
        assert (tuned.lr, tuned.seed, tuned.total_steps, tuned.keyframe_prob, tuned.track_mask_prob,
                tuned.hole_mask_prob) == (1e-3, seed, steps, rate, track, hole)
        same = {"keyframe_prob"} if rate == base.keyframe_prob else set()  # round 4's 0.7 is the adapter phase's
        assert {k for k, v in dataclasses.asdict(tuned).items() if v != getattr(base, k)} == changed - same | (
            {"hole_mask_prob"} if hole else set())
    assert P.trained_adapters(shipped, run) == {
        "adapter.safetensors": run / "adapter_tuned3" / "adapter.safetensors",
        "adapter-removal.safetensors": run / "adapter_tuned6" / "adapter.safetensors"}
    assert P.trained_adapters(balanced, run) == {"adapter.safetensors": run / "adapter" / "adapter.safetensors"}
    with pytest.raises(TrainConfigError, match="round 7 asked for; the recipe has 6"):
        P.adapter_config(shipped, run / "backbone", run / "d", run / "o", tune_from=run / "a", tune_round=7)
    for number in (0, 7):  # tune_dataset looks the round up the same way, before writing anything
        with pytest.raises(TrainConfigError, match=f"round {number} asked for; the recipe has 6"):
            P.tune_dataset(shipped, run, number)
    assert not run.exists()


@pytest.mark.parametrize("name, changes, clips", [
    ("recipe-four-rounds.json", {"seed": 8}, (4800, 0)),
])
def test_the_fourth_round_recipes_are_the_shipped_one_plus_round_four(name, changes, clips):
    """recipe-four-rounds.json (tried 2026-12-06; not shipped, README 'A fourth adapter_tune round') is recipe.json's
    rounds 1-3 with another fourth round, so it continues a run of the shipped recipe: rounds 1-3 the same configs and
    folders; round 4 is round 3's changes plus ``changes`` from round 3's adapter, on ``clips`` (recoloured, removal)
    clips, and its adapter is the one that recipe's package would ship."""
    shipped = P.load_recipe(ROOT / "configs" / "demo" / "recipe.json")
    four = P.load_recipe(ROOT / "configs" / "demo" / name)
    assert dataclasses.replace(four, adapter_tune={}) == dataclasses.replace(shipped, adapter_tune={})
    rounds, before = four.tune_rounds(), shipped.tune_rounds()[:3]
    assert [(t.changes, t.recolour_clips, t.removal_clips, t.data_folder, t.adapter_folder) for t in rounds[:3]] == [
        (t.changes, t.recolour_clips, 0, t.data_folder, t.adapter_folder) for t in before]
    assert (rounds[3].recolour_clips, rounds[3].removal_clips, rounds[3].data_folder, rounds[3].adapter_folder) == (
        *clips, "data_tune4", "adapter_tuned4")
    assert {k: v for k, v in rounds[3].changes.items() if k != "_doc"} == {
        **{k: v for k, v in before[2].changes.items() if k != "_doc"}, **changes}
    run = ROOT / "nonexistent-run"
    for number in (1, 2, 3):
        tune = before[number - 1]
        args = (run / "backbone", run / tune.data_folder, run / tune.adapter_folder)
        assert P.adapter_config(four, *args, tune_from=run / "a", tune_round=number) == P.adapter_config(
            shipped, *args, tune_from=run / "a", tune_round=number)
    fourth = P.adapter_config(four, run / "backbone", run / "data_tune4", run / "adapter_tuned4",
                              tune_from=run / "adapter_tuned3" / "adapter.safetensors", tune_round=4)
    third = P.adapter_config(shipped, run / "backbone", run / "data_tune4", run / "adapter_tuned4",
                             tune_from=run / "adapter_tuned3" / "adapter.safetensors", tune_round=3)
    assert all(getattr(fourth, key) == value for key, value in changes.items())
    assert dataclasses.replace(fourth, **{key: getattr(third, key) for key in changes}) == third
    assert P.trained_adapters(four, run) == {"adapter.safetensors": run / "adapter_tuned4" / "adapter.safetensors"}


def test_the_single_section_adapter_tune_form_is_round_one_of_the_list_form():
    """recipe-tuned.json (shipped before recipe.json, in the single-section form: one adapter_tune section and
    adapter_tune_recolour_clips) still loads, as recipe.json's first round: the same configs, data and folders, so its
    runs resume under recipe.json, which only adds rounds 2 and 3."""
    tuned = P.load_recipe(ROOT / "configs" / "demo" / "recipe-tuned.json")
    shipped = P.load_recipe(ROOT / "configs" / "demo" / "recipe.json")
    assert isinstance(tuned.adapter_tune, dict) and tuned.adapter_tune_recolour_clips == 1200
    assert dataclasses.replace(tuned, adapter_tune={}, adapter_tune_recolour_clips=0) == dataclasses.replace(
        shipped, adapter_tune={})
    (only,), first = tuned.tune_rounds(), shipped.tune_rounds()[0]
    assert (only.changes, only.recolour_clips, only.data_folder, only.adapter_folder) == (
        first.changes, first.recolour_clips, first.data_folder, first.adapter_folder)
    run = ROOT / "nonexistent-run"
    assert P.adapter_config(tuned, run / "b", run / "d", run / "o", tune_from=run / "a") == P.adapter_config(
        shipped, run / "b", run / "d", run / "o", tune_from=run / "a")
    assert P.trained_adapters(tuned, run) == {"adapter.safetensors": run / "adapter_tuned" / "adapter.safetensors"}


def test_adapter_tune_rounds_fine_tune_in_turn_and_the_package_ships_the_last(tmp_path):
    """adapter_tune in two rounds: round 1 is kfi_core.train from the adapter phase's file on data_tune (the data clips
    plus its recoloured ones), round 2 from round 1's file on data_tune2 (its own count), each resumable; the package
    ships round 2's adapter; the recipe refuses what train-demo sets."""
    from safetensors.torch import load_file

    from kfi_core.data import find_sources
    from kfi_core.train import read_train_log

    stages = [{"steps": 2, "resolution": [64, 64], "batch_size": 1}]
    rounds = [{"stages": stages, "lr": 5e-3, "seed": 9, "recolour_clips": 2},
              {"stages": stages, "lr": 2e-3, "seed": 10, "recolour_clips": 3, "keyframe_prob": 1.0}]
    recipe = micro_recipe(adapter_tune=rounds)
    out = tmp_path / "run"
    with pytest.raises(TrainConfigError, match="adapter_tune round 1: .*adapter.safetensors is not finished; run the "
                                               "adapter phase first"):
        P.train_demo(recipe, out, phases=("adapter_tune",))
    assert P.train_demo(micro_recipe(), out) == out / "demo_model"  # every phase but the tune
    plain = load_file(str(out / "demo_model" / "adapter.safetensors"))
    with pytest.raises(TrainConfigError, match="adapter_tuned2/adapter.safetensors is not finished"):
        P.train_demo(recipe, out, phases=("package",))
    # out of time: round 1 stops (checkpointed), round 2 does not start; the same call resumes
    assert P.train_demo(recipe, out, phases=("adapter_tune",), max_minutes=1e-9) is None
    assert not (out / "adapter_tuned" / "adapter.safetensors").exists() and not (out / "adapter_tuned2").exists()
    assert P.train_demo(recipe, out, phases=("adapter_tune", "package")) == out / "demo_model"
    data_names = [s.path.name for s in find_sources(out / "data")]
    assert [s.path.name for s in find_sources(out / "data_tune")] == data_names + [
        f"recolour_{i:06d}" for i in range(2)]
    assert [s.path.name for s in find_sources(out / "data_tune2")] == data_names + [
        f"recolour_{i:06d}" for i in range(3)]
    for folder, start, lr, seed, data, keyframe_prob in (
            ("adapter_tuned", "adapter", 5e-3, 9, "data_tune", 0.5), ("adapter_tuned2", "adapter_tuned", 2e-3, 10,
                                                                      "data_tune2", 1.0)):
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
    named = micro_recipe(adapter_tune=[{**rounds[0], "package_as": "adapter.safetensors"},
                                       {**rounds[1], "package_as": "adapter-removal.safetensors"}])
    assert [t.changes for t in named.tune_rounds()] == [t.changes for t in recipe.tune_rounds()]  # same training
    assert P.trained_adapters(named, out) == {"adapter.safetensors": out / "adapter_tuned" / "adapter.safetensors",
                                              "adapter-removal.safetensors": second_path}
    assert P.train_demo(named, out, phases=("package",)) == out / "demo_model"
    assert sorted(p.name for p in (out / "demo_model").glob("*.safetensors")) == [
        "adapter-removal.safetensors", "adapter.safetensors"]
    for name, want in (("adapter.safetensors", first), ("adapter-removal.safetensors", second)):
        got = load_file(str(out / "demo_model" / name))
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    from kfi_core.loading import load_kfi_model

    assert load_kfi_model(out / "demo_model", adapter=out / "demo_model" / "adapter-removal.safetensors").adapter
    # another recipe's round 2 in this run (other settings) is refused, not skipped and shipped as this one's
    other = micro_recipe(adapter_tune=[rounds[0], {**rounds[1], "lr": 1e-4, "keyframe_prob": 0.3}])
    for phases in (("adapter_tune",), ("package",)):
        with pytest.raises(TrainConfigError, match=r"adapter_tune round 2: .*adapter_tuned2 was trained with other "
                                                   r"settings: keyframe_prob 1\.0 \(the recipe: 0\.3\), lr 0\.002 "
                                                   r"\(the recipe: 0\.0001\): another recipe's round 2, or this round "
                                                   r"changed since it finished"):
            P.train_demo(other, out, phases=phases)
    for bad, words in (({"from_adapter": "x.safetensors"}, "adapter_tune round 2.from_adapter: set by train-demo"),
                       ({"data": "elsewhere"}, "adapter_tune round 2.data: set by train-demo")):
        with pytest.raises(TrainConfigError, match=words):
            P.adapter_config(micro_recipe(adapter_tune=[{}, bad]), out / "backbone", out / "data_tune2",
                             out / "adapter_tuned2", tune_from=out / "adapter_tuned" / "adapter.safetensors",
                             tune_round=2)
    with pytest.raises(TrainConfigError, match="adapter_tune.from_adapter: set by train-demo"):
        P.adapter_config(micro_recipe(adapter_tune={"from_adapter": "x"}), out / "backbone", out / "data_tune",
                         out / "adapter_tuned", tune_from=out / "adapter" / "adapter.safetensors")


@pytest.mark.parametrize("change, words", [
    ({"adapter_tune": {"learning_rate": 1.0}}, "adapter_tune: unknown key"),
    ({"adapter_tune_recolour_clips": 3}, "no adapter_tune section"),
    ({"adapter_tune": {"lr": 1e-3}, "adapter_tune_recolour_clips": -1}, "adapter_tune_recolour_clips: got -1"),
    ({"adapter_tune": {"lr": 1e-3}, "adapter_tune_recolour_clips": 1.5}, "adapter_tune_recolour_clips: got 1.5"),
    ({"adapter_tune": {"lr": 1e-3, "recolour_clips": 3}}, "adapter_tune: unknown key.*recolour_clips"),
    ({"adapter_tune": [{"lr": 1e-3}, {"learning_rate": 1.0}]}, "adapter_tune round 2: unknown key"),
    ({"adapter_tune": [{"recolour_clips": -2}]}, r"adapter_tune round 1\.recolour_clips: got -2"),
    ({"adapter_tune": [{"recolour_clips": 1.5}]}, r"adapter_tune round 1\.recolour_clips: got 1\.5"),
    ({"adapter_tune": [{"lr": 1e-3}], "adapter_tune_recolour_clips": 3}, "give each round its own recolour_clips"),
    ({"adapter_tune": [{"removal_clips": -1}]}, r"adapter_tune round 1\.removal_clips: got -1"),
    ({"adapter_tune": [{}, {"removal_clips": 2.5}]}, r"adapter_tune round 2\.removal_clips: got 2\.5"),
    ({"adapter_tune": {"lr": 1e-3, "removal_clips": -3}}, r"adapter_tune\.removal_clips: got -3"),
    ({"adapter_tune": [{"removal_clips": 2}], "data_removal_clips": P.TRAIN_SEED_LIMIT - P.REMOVAL_SEED_BASE - 1},
     r"removal_clips: got 2; give 0 \.\. 1 "),
    ({"adapter_tune": [{"lr": 1e-3}, 5]}, "adapter_tune round 2: got int"),
    ({"adapter_tune": [{"package_as": "adapter.safetensors"}, {"package_as": "sub/removal.safetensors"}]},
     r"adapter_tune round 2\.package_as: got 'sub/removal\.safetensors'; give a file name ending in \.safetensors"),
    ({"adapter_tune": [{"package_as": "adapter.pt"}]}, r"round 1\.package_as: got 'adapter\.pt'"),
    ({"adapter_tune": [{"package_as": 3}]}, r"round 1\.package_as: got 3"),
    ({"adapter_tune": [{"package_as": "adapter.safetensors"}, {"package_as": "adapter.safetensors"}]},
     "package_as adapter.safetensors is given to more than one round"),
    ({"adapter_tune": [{"package_as": "adapter-removal.safetensors"}, {}]},
     "none is adapter.safetensors, the model's default adapter"),
    ({"adapter_tune": "fast"}, "adapter_tune: got str"),
])
def test_adapter_tune_recipe_errors_name_the_setting(change, words):
    with pytest.raises(TrainConfigError, match=words):
        micro_recipe(**change)
