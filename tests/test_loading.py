"""Loading base models and adapters into a KfiModel; the info and init-adapter commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from kfi_testing import load_with_random_adapter, unet_forward

from kfi_core.errors import AdapterMismatchError, ModelFileError, UnknownNameError
from kfi_core.model.loading import describe_model, load_kfi_model


def test_diffusers_folder_matches_the_components(tiny_model_dir, tiny_components):
    m = load_kfi_model(tiny_model_dir)
    assert (m.num_frames, m.variant, m.in_channels, m.adapter) == (8, "custom", 8, None)
    assert m.default_size == (64, 64) and m.size_multiple == 8
    ref = tiny_components["unet"].state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in m.unet.state_dict().items())
    assert m.scheduler_config["prediction_type"] == "v_prediction"


def test_dtypes_and_vae_kept_in_fp32(tiny_model_dir):
    m = load_kfi_model(tiny_model_dir, dtype="bf16")
    assert next(m.unet.parameters()).dtype == torch.bfloat16
    assert next(m.image_encoder.parameters()).dtype == torch.bfloat16
    assert next(m.vae.parameters()).dtype == torch.float32
    assert describe_model(m)["dtype"] == "bfloat16"
    with pytest.raises(UnknownNameError, match="choose one of fp32, fp16, bf16"):
        load_kfi_model(tiny_model_dir, dtype="fp8")


def test_bad_model_paths(tmp_path, tiny_model_dir):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_kfi_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="no model_index.json"):
        load_kfi_model(tmp_path / "empty")
    (tmp_path / "svd.ckpt").write_bytes(b"\x80\x04junk")
    with pytest.raises(ModelFileError, match="pickle file .* Convert it to .safetensors"):
        load_kfi_model(tmp_path / "svd.ckpt")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "model_index.json").write_text("{}")
    with pytest.raises(ModelFileError, match="missing sub-folders: unet, vae"):
        load_kfi_model(partial)


def test_adapter_round_trip_through_loader(tmp_path, tiny_model_dir):
    from kfi_core.model.adapter import save_adapter

    base = load_with_random_adapter(tiny_model_dir)
    save_adapter(base.unet, tmp_path / "a.safetensors", base_variant=base.variant, num_frames=base.num_frames)
    m = load_kfi_model(tiny_model_dir, adapter=tmp_path / "a.safetensors")
    assert m.in_channels == 12 and m.lora_rank == 4
    want, got = base.unet.state_dict(), m.unet.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    info = describe_model(m)
    assert info["mode"] == "kfi-adapter" and info["trainable_parameters"] > 0


@pytest.mark.slow
def test_adapter_for_another_frame_count_is_refused(tmp_path, tiny_model_dir):
    from kfi_core.model.tiny import build_tiny_pipeline_folder

    other = build_tiny_pipeline_folder(tmp_path / "m14", num_frames=14)
    adapter = tmp_path / "a14.safetensors"
    subprocess.run(
        [sys.executable, "-m", "kfi_core", "init-adapter", str(other), str(adapter)], check=True, capture_output=True
    )
    with pytest.raises(AdapterMismatchError, match="14"):
        load_kfi_model(tiny_model_dir, adapter=adapter)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "kfi_core", *args], capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_info_before_and_after_an_adapter(tmp_path, tiny_model_dir):
    before = run_cli("info", str(tiny_model_dir))
    assert before.returncode == 0, before.stderr
    b = json.loads(before.stdout)
    assert (b["unet_in_channels"], b["lora_rank"], b["num_frames"], b["mode"]) == (8, None, 8, "training-free")
    adapter = tmp_path / "kfi.safetensors"
    made = run_cli("init-adapter", str(tiny_model_dir), str(adapter))
    assert made.returncode == 0, made.stderr
    after = run_cli("info", str(tiny_model_dir), "--adapter", str(adapter))
    assert after.returncode == 0, after.stderr
    a = json.loads(after.stdout)
    assert (a["unet_in_channels"], a["lora_rank"], a["dtype"]) == (12, 32, "float32")
    assert a["trainable_parameters"] > 100_000
    bad = run_cli("info", str(tmp_path / "missing"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_single_file_and_folder_load_the_same_model(tmp_path, tiny_model_dir):
    """diffusers folder -> single file (CLI convert) -> KfiModel equals the folder's KfiModel exactly."""
    single = tmp_path / "svd_tiny.safetensors"
    made = run_cli("convert", str(tiny_model_dir), str(single))
    assert made.returncode == 0, made.stderr
    a, b = load_kfi_model(tiny_model_dir), load_kfi_model(single)
    assert (b.num_frames, b.variant, b.in_channels) == (a.num_frames, a.variant, a.in_channels)
    for name in ("unet", "vae", "image_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert b.scheduler_config["prediction_type"] == "v_prediction"
    back = tmp_path / "back"
    assert run_cli("convert", str(single), str(back)).returncode == 0
    c = load_kfi_model(back)
    assert all(torch.equal(v, a.unet.state_dict()[k]) for k, v in c.unet.state_dict().items())


@pytest.mark.slow
def test_single_file_with_an_adapter(tmp_path, tiny_model_dir):
    single = tmp_path / "svd_tiny.safetensors"
    assert run_cli("convert", str(tiny_model_dir), str(single)).returncode == 0
    adapter = tmp_path / "a.safetensors"
    assert run_cli("init-adapter", str(single), str(adapter), "--rank", "8").returncode == 0
    m = load_kfi_model(single, adapter=adapter)
    assert (m.in_channels, m.lora_rank) == (12, 8)


@pytest.mark.slow
def test_truncated_single_file_is_reported(tmp_path, tiny_model_dir):
    single = tmp_path / "svd_tiny.safetensors"
    assert run_cli("convert", str(tiny_model_dir), str(single)).returncode == 0
    data = single.read_bytes()
    single.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="svd_tiny.safetensors"):
        load_kfi_model(single)


def test_merge_lora_on_load_gives_the_same_output(tmp_path, tiny_model_dir):
    from kfi_core.model.adapter import save_adapter
    from kfi_core.model.lora import unmerge_lora

    base = load_with_random_adapter(tiny_model_dir)
    save_adapter(base.unet, tmp_path / "a.safetensors", base_variant=base.variant, num_frames=base.num_frames)
    plain = load_kfi_model(tiny_model_dir, adapter=tmp_path / "a.safetensors")
    merged = load_kfi_model(tiny_model_dir, adapter=tmp_path / "a.safetensors", merge_lora=True)
    assert describe_model(merged)["lora_merged"] and not describe_model(plain)["lora_merged"]
    x = torch.randn(1, 8, 12, 16, 16, generator=torch.Generator().manual_seed(0))
    a = unet_forward(plain.unet, x)
    b = unet_forward(merged.unet, x)
    merged_w = merged.unet.conv_in.weight.clone()
    unmerge_lora(merged.unet)
    c = unet_forward(merged.unet, x)
    # merging adds B @ A into W once: equal within fp32 rounding of that sum
    torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(c, a, atol=2e-5, rtol=1e-5)
    assert torch.equal(merged_w, plain.unet.conv_in.weight)
    with pytest.raises(ModelFileError, match="no adapter to merge"):
        load_kfi_model(tiny_model_dir, merge_lora=True)
