"""kfi_core.model.single_file: sgm single files <-> diffusers, checked against ComfyUI's own SVD classes.

The oracle is independent code: ComfyUI's video UNet, its SVD VAE (Encoder + temporal
VideoDecoder) and its CLIP vision model, built with tiny configs (tests/comfy_oracle.py) and
loaded strictly with the sgm weights our converter writes. Same weights, same inputs: same outputs.

Tolerances: everything runs in fp32 on CPU. The two implementations order their floating-point
operations differently (fused vs split attention, einsum vs matmul, GroupNorm kernels), which on
the tiny model gives differences of a few 1e-6 on outputs of magnitude ~1-5 (measured against an
fp64 run of the same model). ATOL = 2e-5 leaves a margin of ~8x over that, while a wrong mapping
(swapped tensors of equal shape) or a wrong GroupNorm eps shows up at 1e-4 and above.

The VAE: with layers_per_block=1 diffusers builds a temporal-decoder mid block with one resnet
that never runs its attention; sgm's (and ComfyUI's) decoder always runs resnet-attention-resnet.
No single file can hold such a VAE (the converter refuses it, tested below), so kfi_core.model.tiny uses
layers_per_block=2 as SVD does, and an identity quant_conv as SVD's converted VAE has.
"""

from __future__ import annotations

import copy
import logging
import pickle

import pytest
import torch
from comfy_oracle import build_clip_vision, build_unet, build_vae, encode_image_embeds, import_comfy
from safetensors.torch import load_file, save_file

from kfi_core.errors import CheckpointFormatError, ModelFileError
from kfi_core.model import single_file as cs
from kfi_core.model import single_file_keys
from kfi_core.model.tiny import TINY_CLIP_VISION_CONFIG, TINY_UNET_CONFIG, TINY_VAE_CONFIG, build_tiny_components

ATOL = 2e-5
RTOL = 1e-5
FRAMES = 8
UNET_HEAD_DIM = 16  # tiny UNet: heads (2, 4) on widths (32, 64)
CLIP_HEAD_DIM = 8  # tiny CLIP: 4 heads on width 32


@pytest.fixture(scope="module")
def comps():
    return build_tiny_components(num_frames=FRAMES, seed=0)


@pytest.fixture(scope="module")
def sgm_sd(comps):
    return cs.convert_diffusers_to_sgm(
        comps["unet"].state_dict(), comps["vae"].state_dict(), comps["image_encoder"].state_dict()
    )


@pytest.fixture(scope="module")
def tiny_file(comps, tmp_path_factory):
    return cs.save_single_file(comps, tmp_path_factory.mktemp("single") / "svd_tiny.safetensors", num_frames=FRAMES)


def _sd(module_or_sd):
    return module_or_sd if isinstance(module_or_sd, dict) else module_or_sd.state_dict()


def _assert_sd_equal(a, b):
    a, b = _sd(a), _sd(b)
    assert sorted(a) == sorted(b)
    bad = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


def _rewrite(src, dst, edit):
    """Copy a safetensors file, applying edit(state_dict) -> state_dict, keeping its metadata."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
    sd = edit(dict(load_file(str(src))))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dst), metadata=metadata)
    return dst


# --------------------------------------------------------------------------- conversion identities


def test_sgm_layout_and_detection(comps, sgm_sd):
    assert cs.is_svd_sgm_checkpoint(sgm_sd)
    assert not cs.is_svd_sgm_checkpoint(comps["unet"].state_dict())  # diffusers names
    assert not cs.is_svd_sgm_checkpoint(
        ["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.mid.block_1.norm1.weight"]
    )  # SD 1.x image model
    prefixes = {k.split(".visual.")[0] + ".visual." if ".visual." in k else ".".join(k.split(".")[:1]) for k in sgm_sd}
    assert prefixes == {"model", "first_stage_model", cs.SGM_PREFIXES["image_encoder"]}
    # a few keys whose names carry the special cases
    for key, shape in [
        ("first_stage_model.decoder.mid.attn_1.q.weight", (64, 64, 1, 1)),  # linear -> 1x1 conv
        ("first_stage_model.decoder.conv_out.time_mix_conv.weight", (3, 3, 3, 1, 1)),
        ("first_stage_model.decoder.up.0.block.2.mix_factor", (1,)),
        ("conditioner.embedders.0.open_clip.model.visual.transformer.resblocks.1.attn.in_proj_weight", (96, 32)),
        ("conditioner.embedders.0.open_clip.model.visual.proj", (32, 32)),
        ("model.diffusion_model.output_blocks.1.1.conv.weight", (64, 64, 3, 3)),  # upsampler after a resnet
        ("model.diffusion_model.input_blocks.1.1.time_pos_embed.0.weight", (128, 32)),
        ("model.diffusion_model.middle_block.2.time_mixer.mix_factor", (1,)),
    ]:
        assert tuple(sgm_sd[key].shape) == shape, key
    assert not any("quant_conv" in k for k in sgm_sd)


def test_round_trip_sgm_diffusers_sgm_is_bit_exact(sgm_sd):
    d = cs.convert_sgm_to_diffusers(sgm_sd)
    back = cs.convert_diffusers_to_sgm(d["unet"], d["vae"], d["image_encoder"])
    _assert_sd_equal(back, sgm_sd)


def test_round_trip_diffusers_sgm_diffusers_is_bit_exact(comps):
    unet, image_encoder = comps["unet"].state_dict(), comps["image_encoder"].state_dict()
    vae = single_file_keys.fold_vae_quant_conv(comps["vae"].state_dict())  # the form an sgm file can hold
    d = cs.convert_sgm_to_diffusers(cs.convert_diffusers_to_sgm(unet, vae, image_encoder))
    _assert_sd_equal(d["unet"], unet)
    _assert_sd_equal(d["vae"], vae)
    _assert_sd_equal(d["image_encoder"], image_encoder)


def test_quant_conv_fold_keeps_the_encoder_function(comps):
    vae = copy.deepcopy(comps["vae"])
    torch.manual_seed(5)
    torch.nn.init.normal_(vae.quant_conv.weight, std=0.3)  # a non-identity quant_conv (the tiny one is identity)
    assert not single_file_keys.is_identity_quant_conv(vae.quant_conv.weight, vae.quant_conv.bias)
    folded = copy.deepcopy(vae)
    folded.load_state_dict(single_file_keys.fold_vae_quant_conv(vae.state_dict()), strict=True)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        ref, got = vae.encode(x).latent_dist, folded.encode(x).latent_dist
    torch.testing.assert_close(got.mean, ref.mean, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(got.logvar, ref.logvar, atol=ATOL, rtol=RTOL)


def test_vae_with_one_layer_per_block_is_refused_with_the_reason(comps):
    from diffusers import AutoencoderKLTemporalDecoder

    vae = AutoencoderKLTemporalDecoder(**{**TINY_VAE_CONFIG, "layers_per_block": 1})
    c = comps
    with pytest.raises(CheckpointFormatError, match=r"layers_per_block=2") as exc:
        cs.convert_diffusers_to_sgm(c["unet"].state_dict(), vae.state_dict(), c["image_encoder"].state_dict())
    assert "mid block with 1 resnets" in str(exc.value)


def test_unknown_keys_are_listed(sgm_sd):
    bad = dict(sgm_sd)
    bad["model.diffusion_model.input_blocks.1.0.mystery.weight"] = torch.zeros(1)
    bad["something_else.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointFormatError, match=r"something_else\.weight"):
        cs.convert_sgm_to_diffusers(bad)
    del bad["something_else.weight"]
    with pytest.raises(CheckpointFormatError, match=r"1 UNet key.*input_blocks\.1\.0\.mystery\.weight"):
        cs.convert_sgm_to_diffusers(bad)
    # documented ignorable conditioner keys pass (cs.IGNORED_SGM_KEY_PATTERNS)
    ok = dict(sgm_sd)
    ok["conditioner.embedders.3.encoder.encoder.conv_in.weight"] = torch.zeros(1)
    ok["conditioner.embedders.0.open_clip.model.logit_scale"] = torch.zeros(())
    assert set(cs.convert_sgm_to_diffusers(ok)) == {"unet", "vae", "image_encoder"}


def test_infer_configs_from_shapes_match_the_model(comps, sgm_sd):
    cfg = cs.infer_configs_from_sgm(sgm_sd, head_dim=UNET_HEAD_DIM, clip_head_dim=CLIP_HEAD_DIM)
    assert cfg["num_frames"] is None and cfg["unet"]["num_frames"] is None
    unet_cfg = comps["unet"].config
    for key, value in cfg["unet"].items():
        if key not in ("sample_size", "num_frames"):  # not in the weights: SVD defaults / the loader's job
            want = unet_cfg[key]
            want = list(want) if isinstance(want, (tuple, list)) else want
            if isinstance(value, list) and not isinstance(want, list):
                want = [want] * len(value)  # diffusers accepts one value for all levels
            assert value == want, key
    for key in ("block_out_channels", "layers_per_block", "latent_channels", "in_channels", "out_channels"):
        want = comps["vae"].config[key]
        assert cfg["vae"][key] == (list(want) if isinstance(want, tuple) else want), key
    clip_cfg = comps["image_encoder"].config
    for key, value in cfg["image_encoder"].items():
        assert getattr(clip_cfg, key) == value, key
    with pytest.raises(CheckpointFormatError, match=r"head width 64"):
        cs.infer_configs_from_sgm(sgm_sd)  # SVD's default head width does not divide the tiny widths


# --------------------------------------------------------------------------- ComfyUI oracle


def _align_diffusers_resnet_eps(unet):
    """diffusers' SVD UNet uses GroupNorm eps=1e-6 in its cross-attention levels' resnets (1e-5 in
    the others); sgm and ComfyUI use 1e-5 in every resnet. That is a difference between the two
    implementations, not in the weights: give a copy of the diffusers UNet sgm's eps."""
    unet = copy.deepcopy(unet)
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.GroupNorm) and "res_block" in name:
            module.eps = 1e-5
    return unet


def _unet_inputs(batch=2):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, FRAMES, 8, 16, 16, generator=g)  # noisy latent (4) + image latent (4)
    context = torch.randn(batch, 1, 32, generator=g)  # CLIP image embedding
    timestep = torch.tensor([0.7, -1.3])  # raw value fed to the time embedding (0.25 log sigma in SVD)
    added_time_ids = torch.tensor([[6.0, 127.0, 0.02], [3.0, 40.0, 0.1]])  # fps - 1, motion bucket, noise aug
    return sample, timestep, context, added_time_ids


def _comfy_unet_forward(model, sample, timestep, context, added_time_ids):
    from comfy.ldm.modules.diffusionmodules.openaimodel import timestep_embedding

    b, f = sample.shape[:2]
    # SVD_img2vid.encode_adm: one sinusoidal embedding per id, concatenated (256 wide in SVD, 32 here)
    dim = TINY_UNET_CONFIG["addition_time_embed_dim"]
    y = timestep_embedding(added_time_ids.flatten(), dim).reshape(b, -1)
    ctx = context.repeat_interleave(f, 0)  # [(b f), 1, D]
    out = model(
        sample.flatten(0, 1),  # [(b f), 8, h, w]
        timesteps=timestep.repeat_interleave(f),
        context=ctx,
        y=y.repeat_interleave(f, 0),
        time_context=ctx,
        num_video_frames=f,
        image_only_indicator=torch.zeros(b, f),
    )
    return out.unflatten(0, (b, f))


def test_unet_matches_comfyui(comps, sgm_sd):
    import_comfy()
    model, config = build_unet(sgm_sd, num_head_channels=UNET_HEAD_DIM)
    assert config["channel_mult"] == [1, 2] and config["transformer_depth"] == [1, 0]
    inputs = _unet_inputs()
    with torch.no_grad():
        got = _comfy_unet_forward(model, *inputs)
        ref = _align_diffusers_resnet_eps(comps["unet"])(*inputs).sample
        stock = comps["unet"](*inputs).sample
    assert got.shape == (2, FRAMES, 4, 16, 16)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL)
    # the tolerance is tight enough to see the eps difference (so it would see a wrong mapping)
    assert (got - stock).abs().max() > 5 * ATOL


def test_wrong_rename_breaks_the_unet_oracle(comps, monkeypatch):
    """The oracle can fail: swapping two same-shaped tensors in the rename table (the temporal
    resnets' two [C, C, 3, 1, 1] convs) loads fine into ComfyUI but changes the output."""
    rules = [
        (s, d.replace("conv1", "TMP").replace("conv2", "conv1").replace("TMP", "conv2"), h)
        if s.startswith("time_stack.")
        else (s, d, h)
        for s, d, h in single_file_keys.UNET_RESNET_RULES
    ]
    monkeypatch.setattr(single_file_keys, "UNET_RESNET_RULES", rules)
    wrong = cs.convert_diffusers_to_sgm(
        comps["unet"].state_dict(), comps["vae"].state_dict(), comps["image_encoder"].state_dict()
    )
    model, _ = build_unet(wrong, num_head_channels=UNET_HEAD_DIM)
    inputs = _unet_inputs()
    with torch.no_grad():
        got = _comfy_unet_forward(model, *inputs)
        ref = _align_diffusers_resnet_eps(comps["unet"])(*inputs).sample
    assert (got - ref).abs().max() > 100 * ATOL


@pytest.fixture(scope="module")
def comfy_vae(sgm_sd):
    import_comfy()
    cfg = TINY_VAE_CONFIG
    ch = cfg["block_out_channels"][0]
    return build_vae(
        sgm_sd,
        ch=ch,
        ch_mult=[c // ch for c in cfg["block_out_channels"]],
        num_res_blocks=2,
        z_channels=cfg["latent_channels"],
    )


def test_vae_encode_matches_comfyui(comps, comfy_vae):
    x = torch.rand(FRAMES, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref = comps["vae"].encode(x).latent_dist.mode()  # diffusers, with its (random) quant_conv
        got = comfy_vae.encode(x)  # ComfyUI: DiagonalGaussianRegularizer mode, no quant_conv (folded)
    assert got.shape == (FRAMES, 4, 16, 16)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL)


def test_vae_temporal_decode_matches_comfyui(comps, comfy_vae):
    z = torch.randn(FRAMES, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = comps["vae"].decode(z, num_frames=FRAMES).sample
        got = comfy_vae.decode(z)  # ComfyUI decodes the whole batch as one clip: timesteps = batch
        per_frame = comps["vae"].decode(z, num_frames=1).sample
    assert got.shape == (FRAMES, 3, 64, 64)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL)
    assert (per_frame - ref).abs().max() > 100 * ATOL  # the temporal layers really mix frames


def test_clip_image_embedding_matches_comfyui(comps, sgm_sd, tmp_path):
    import_comfy()
    clip = build_clip_vision(sgm_sd, TINY_CLIP_VISION_CONFIG, tmp_path)
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = comps["image_encoder"](pixel_values=pixels).image_embeds
        got = encode_image_embeds(clip, pixels)
    assert got.shape == (2, 32)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------- files


def test_save_and_load_single_file_is_exact(comps, tiny_file):
    loaded = cs.load_single_file(tiny_file)
    assert loaded["num_frames"] == FRAMES and loaded["unet"].config.num_frames == FRAMES
    _assert_sd_equal(loaded["unet"], comps["unet"])
    _assert_sd_equal(loaded["image_encoder"], comps["image_encoder"])
    _assert_sd_equal(loaded["vae"], single_file_keys.fold_vae_quant_conv(comps["vae"].state_dict()))
    for name in ("unet", "vae"):
        want = {k: v for k, v in comps[name].config.items() if not k.startswith("_")}
        got = {k: loaded[name].config[k] for k in want}
        assert {k: list(v) if isinstance(v, tuple) else v for k, v in got.items()} == {
            k: list(v) if isinstance(v, tuple) else v for k, v in want.items()
        }
    assert loaded["image_encoder"].config.num_attention_heads == TINY_CLIP_VISION_CONFIG["num_attention_heads"]
    assert type(loaded["scheduler"]).__name__ == "EulerDiscreteScheduler"
    assert loaded["scheduler"].config.prediction_type == "v_prediction"
    assert loaded["feature_extractor"].crop_size == {"height": 224, "width": 224}
    assert not loaded["unet"].training
    inputs = _unet_inputs()
    with torch.no_grad():
        assert torch.equal(loaded["unet"](*inputs).sample, comps["unet"](*inputs).sample)


def test_load_without_metadata_infers_configs_and_frames(comps, tiny_file, tmp_path, caplog):
    sd = load_file(str(tiny_file))
    plain = tmp_path / "svd_xt_tiny.safetensors"
    save_file(sd, str(plain))  # no kfi.* metadata, as a file from elsewhere
    with caplog.at_level(logging.INFO, logger="kfi_core.model.single_file"):
        loaded = cs.load_single_file(plain, head_dim=UNET_HEAD_DIM, clip_head_dim=CLIP_HEAD_DIM)
    assert loaded["num_frames"] == 25  # "xt" in the name
    assert any("num_frames=" in r.getMessage() and "xt" in r.getMessage() for r in caplog.records)
    _assert_sd_equal(loaded["unet"], comps["unet"])
    _assert_sd_equal(loaded["image_encoder"], comps["image_encoder"])
    other = tmp_path / "svd_tiny.safetensors"
    save_file(sd, str(other))
    assert cs.load_single_file(other, head_dim=UNET_HEAD_DIM, clip_head_dim=CLIP_HEAD_DIM)["num_frames"] == 14
    loaded = cs.load_single_file(other, num_frames=6, head_dim=UNET_HEAD_DIM, clip_head_dim=CLIP_HEAD_DIM)
    assert loaded["num_frames"] == 6 and loaded["unet"].config.num_frames == 6


# --------------------------------------------------------------------------- bad files


def test_pickle_checkpoints_are_refused(tmp_path, sgm_sd):
    ckpt = tmp_path / "svd.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(1)}}, ckpt)
    with pytest.raises(ModelFileError, match=r"svd\.ckpt.*pickle.*safetensors"):
        cs.load_single_file(ckpt)
    disguised = tmp_path / "svd_disguised.safetensors"
    disguised.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelFileError, match=r"svd_disguised\.safetensors.*pickle.*Convert it to \.safetensors"):
        cs.load_single_file(disguised)


def test_truncated_file_is_reported(tiny_file, tmp_path):
    data = tiny_file.read_bytes()
    cut = tmp_path / "svd_cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=r"svd_cut\.safetensors.*truncated") as exc:
        cs.load_single_file(cut)
    assert not isinstance(exc.value, CheckpointFormatError)
    head = tmp_path / "svd_head.safetensors"
    head.write_bytes(data[:20])
    with pytest.raises(ModelFileError, match=r"svd_head\.safetensors.*truncated"):
        cs.load_single_file(head)
    with pytest.raises(ModelFileError, match=r"no such file"):
        cs.load_single_file(tmp_path / "absent.safetensors")


def test_missing_key_is_named(tiny_file, tmp_path):
    key = "model.diffusion_model.output_blocks.0.0.time_stack.out_layers.3.weight"
    path = _rewrite(
        tiny_file, tmp_path / "svd_missing.safetensors", lambda sd: {k: v for k, v in sd.items() if k != key}
    )
    with pytest.raises(CheckpointFormatError, match=r"svd_missing\.safetensors.*missing") as exc:
        cs.load_single_file(path)
    assert "up_blocks.0.resnets.0.temporal_res_block.conv2.weight" in str(exc.value)


def test_unexpected_key_is_named(tiny_file, tmp_path):
    def add(sd):  # a well-formed sgm name the model does not have (no shortcut when widths agree)
        sd["model.diffusion_model.middle_block.0.skip_connection.weight"] = torch.zeros(64, 64, 1, 1)
        return sd

    path = _rewrite(tiny_file, tmp_path / "svd_extra.safetensors", add)
    with pytest.raises(CheckpointFormatError, match=r"svd_extra\.safetensors.*unexpected.*mid_block\.resnets\.0"):
        cs.load_single_file(path)


def test_shape_mismatch_names_parameter_and_shapes(tiny_file, tmp_path):
    key = "model.diffusion_model.input_blocks.0.0.weight"

    def widen(sd):
        sd[key] = torch.zeros(32, 12, 3, 3)  # 12 input channels where the config says 8
        return sd

    path = _rewrite(tiny_file, tmp_path / "svd_shape.safetensors", widen)
    with pytest.raises(CheckpointFormatError) as exc:
        cs.load_single_file(path)
    msg = str(exc.value)
    assert "svd_shape.safetensors" in msg and "'conv_in.weight'" in msg
    assert "expected shape (32, 8, 3, 3)" in msg and "got (32, 12, 3, 3)" in msg


def test_not_an_svd_checkpoint(tmp_path):
    path = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    with pytest.raises(CheckpointFormatError, match=r"sd15\.safetensors.*not a single-file Stable Video Diffusion"):
        cs.load_single_file(path)
