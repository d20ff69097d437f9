"""``plan``: the memory estimate against measured CPU peaks on the tiny and mid models, the CLI (folder and single
file), and the refusal before ``inpaint`` when the estimate exceeds a (faked) free device memory.

Peaks are measured by counting live tensor storage bytes (a TorchDispatchMode that adds every storage an op
allocates and subtracts it when freed; views of an input's storage, such as the ``weight.t()`` of every linear
layer, are not allocations: counted, they added the weights' size, 31 MiB on the mid model): the quantity CUDA's
``max_memory_allocated`` reports. torch.profiler's ``profile_memory`` recorded no CPU memory events with this torch
build, and the resident-set size of a process is too coarse for the tiny model's tens of MiB.
"""

from __future__ import annotations

import json

import pytest
import torch
from live_bytes import measure

from kfi_core.cli import inpaint as cli_inpaint
from kfi_core.cli import main
from kfi_core.errors import OutOfMemoryPlanError, SettingsError
from kfi_core.inference.plan import check_fits, model_shape, plan_memory
from kfi_core.model import load_kfi_model


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_kfi_model(tiny_model_dir)


@pytest.fixture(scope="module")
def mid_model():
    """bench/common.py's mid-size model: the UNet widened to three levels (64, 128, 128), two layers a block."""
    import sys

    from comfyhost import ROOT

    sys.path.insert(0, str(ROOT))
    from bench.common import build_components, kfi_model_from_components

    return kfi_model_from_components(build_components("mid"))


@pytest.mark.parametrize(("which", "size"), [("tiny", 64), ("tiny", 128), ("mid", 64), ("mid", 128)])
def test_estimate_within_25_percent_of_measured_cpu_peak(request, which, size):
    model = request.getfixturevalue(f"{which}_model")
    frames = model.num_frames
    h = size // model.vae_scale_factor
    plan = plan_memory(model, frames, size, size, dtype="fp32", decode_chunk_size=frames)
    x = torch.randn(2, frames, 8, h, h)
    sigma, clip_embeds, ids = torch.ones(2), torch.randn(2, 1, 32), torch.randn(2, 3)
    unet_peak = measure(lambda: model.unet(x, sigma, clip_embeds, added_time_ids=ids))
    latents = torch.randn(frames, 4, h, h)
    decode_peak = measure(lambda: model.vae.decode(latents, num_frames=frames))
    ratios = {
        "unet_step": plan.activations["unet_step"] / unet_peak,
        "vae_decode": plan.activations["vae_decode"] / decode_peak,
    }
    for phase, ratio in ratios.items():
        assert 0.75 <= ratio <= 1.25, f"{which} {phase} at {size}: estimate/measured {ratio:.3f}"


def test_plan_json_on_folder_and_single_file(tiny_model_dir, tmp_path, capsys):
    single = tmp_path / "tiny.safetensors"
    assert main(["convert", str(tiny_model_dir), str(single)]) == 0
    capsys.readouterr()
    results = []
    for model in (tiny_model_dir, single):
        args = ["plan", "--model", str(model), "--frames", "20", "--width", "128", "--height", "64", "--json"]
        assert main(args) == 0
        results.append(json.loads(capsys.readouterr().out))
    for out in results:
        memory = out["memory"]
        assert out["schedule"]["strategy"] == "anchor" and out["schedule"]["evaluations"] >= 20
        assert set(memory["phases"]) == {"image_encoder", "vae_encode", "unet_step", "vae_decode"}
        assert memory["peak"] == max(memory["phases"].values()) and memory["window"] == 8
    assert results[0]["memory"] == results[1]["memory"]  # the single file's configs match the folder's


def test_plan_json_with_an_adapter(tiny_model_dir, tmp_path, capsys):
    """With a KFI adapter (folder or single file) its parameters add to the UNet's resident weights, nothing else."""
    adapter, single = tmp_path / "kfi.safetensors", tmp_path / "tiny.safetensors"
    assert main(["init-adapter", str(tiny_model_dir), str(adapter)]) == 0
    assert main(["convert", str(tiny_model_dir), str(single)]) == 0
    capsys.readouterr()
    base = ["plan", "--frames", "30", "--width", "64", "--height", "64", "--json"]

    def plan(*extra) -> dict:
        assert main([*base, *extra]) == 0
        return json.loads(capsys.readouterr().out)["memory"]

    plain = plan("--model", str(tiny_model_dir))
    adapted = plan("--model", str(tiny_model_dir), "--adapter", str(adapter))
    assert adapted["resident"]["unet_step"] > plain["resident"]["unet_step"]
    assert adapted["activations"] == plain["activations"]
    assert plan("--model", str(single), "--adapter", str(adapter)) == adapted


def test_plan_text_and_offload_modes(tiny_model_dir, capsys):
    assert main(["plan", "--model", str(tiny_model_dir), "--frames", "8", "--width", "64", "--height", "64"]) == 0
    text = capsys.readouterr().out
    assert "UNet frame-evaluations" in text and "peak" in text and "vae_decode" in text
    peaks = {}
    for mode in ("none", "model", "sequential"):
        plan = plan_memory(model_shape_of(tiny_model_dir), 8, 64, 64, offload=mode)
        peaks[mode] = plan.peak
        assert plan.peak == max(plan.resident[p] + plan.activations[p] for p in plan.phases)
    assert peaks["none"] > peaks["model"] > peaks["sequential"]


def model_shape_of(folder):
    configs = {name: json.loads((folder / name / "config.json").read_text()) for name in ("unet", "vae")}
    clip = json.loads((folder / "image_encoder" / "config.json").read_text())
    return model_shape(configs["unet"], configs["vae"], clip, configs["unet"]["num_frames"])


def test_check_fits_names_settings_that_fit(tiny_model_dir):
    plan = plan_memory(model_shape_of(tiny_model_dir), 8, 256, 256, dtype="fp32")
    check_fits(plan, plan.peak)  # exactly enough: no error
    free = int(plan.peak * 0.7)
    with pytest.raises(OutOfMemoryPlanError) as err:
        check_fits(plan, free)
    message = str(err.value)
    assert "only 0." in message or "GiB is free" in message
    assert "decode_chunk_size=4" in message and "working size" in message
    # the suggested chunk, re-estimated, fits
    assert plan_memory(plan.shape, 8, 256, 256, decode_chunk_size=4, encode_chunk_size=4).peak <= free
    with pytest.raises(OutOfMemoryPlanError, match="No single change"):
        check_fits(plan, 1000)


def test_inpaint_refuses_on_fake_small_cuda_memory(tiny_model, monkeypatch, capsys):
    model = tiny_model
    monkeypatch.setattr(model, "device", torch.device("cuda"), raising=False)
    monkeypatch.setattr(cli_inpaint, "_load_model", lambda args: model)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (60 * 2**20, 80 * 2**30))
    args = ["inpaint", "--model", "unused", "--video", "v.mp4", "--mask", "m.png", "--out", "o.mp4"]
    rc = main([*args, "--width", "128", "--height", "128"])
    err = capsys.readouterr().err
    assert rc == 2 and "device memory" in err and "Settings that would fit" in err
    assert "--decode-chunk-size" in err or "--width" in err


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--frames", "0"], "--frames"),
        (["--width", "-8"], "--width"),
        (["--decode-chunk-size", "0"], "--decode-chunk-size"),
    ],
)
def test_plan_bad_arguments(tiny_model_dir, capsys, flags, needle):
    base = {"--frames": "8", "--width": "64", "--height": "64"}
    for i in range(0, len(flags), 2):
        base[flags[i]] = flags[i + 1]
    argv = ["plan", "--model", str(tiny_model_dir), *[x for kv in base.items() for x in kv]]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_plan_missing_model_and_bad_library_arguments(tmp_path, capsys):
    argv = ["plan", "--model", str(tmp_path / "nope"), "--frames", "8", "--width", "64", "--height", "64"]
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--offload", "gpu"])
    with pytest.raises(SettingsError, match="offload"):
        plan_memory(model_shape_of_tiny_configs(), 8, 64, 64, offload="gpu")
    with pytest.raises(SettingsError, match="height"):
        plan_memory(model_shape_of_tiny_configs(), 8, 0, 64)


def model_shape_of_tiny_configs():
    from kfi_core.model.tiny import TINY_CLIP_VISION_CONFIG, TINY_VAE_CONFIG, tiny_unet_config

    return model_shape(tiny_unet_config(8), TINY_VAE_CONFIG, TINY_CLIP_VISION_CONFIG, 8)
