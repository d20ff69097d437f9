"""The adapter file: bit-exact round trip, header-only metadata, and every refusal with its message."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from kfi_testing import unet_forward
from safetensors import safe_open
from safetensors.torch import save_file

from kfi_core.errors import (
    AdapterMismatchError,
    CheckpointFormatError,
    KfiError,
    LoraError,
    ModelFileError,
    UnknownNameError,
    UnsupportedSizeError,
)
from kfi_core.model.adapter import (
    ADAPTER_FORMAT,
    MAX_HEADER_BYTES,
    architecture_fingerprint,
    load_adapter,
    read_adapter_metadata,
    save_adapter,
)
from kfi_core.model.conv_in import KFI_IN_CHANNELS, STOCK_IN_CHANNELS, expand_conv_in
from kfi_core.model.lora import LORA_ADAPTER_NAME, add_lora, lora_layers, lora_state_dict, merge_lora
from kfi_core.model.tiny import tiny_unet_config

RANK = 8


LATENTS = torch.randn(1, 8, KFI_IN_CHANNELS, 16, 16, generator=torch.Generator().manual_seed(5))  # [B, F, 12, h, w]


@pytest.fixture(scope="module")
def trained_unet(tiny_components):
    """A KFI UNet whose LoRA and new conv_in channels hold non-zero values, as after training."""
    unet = copy.deepcopy(tiny_components["unet"])
    expand_conv_in(unet)
    add_lora(unet, rank=RANK, alpha=4)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for tensor in lora_state_dict(unet).values():
            tensor.normal_(0, 0.05, generator=gen)
        unet.conv_in.weight.normal_(0, 0.05, generator=gen)
        unet.conv_in.bias.normal_(0, 0.05, generator=gen)
    return unet


@pytest.fixture(scope="module")
def adapter_path(trained_unet, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("adapters") / "kfi-tiny.safetensors"
    return save_adapter(trained_unet, path, base_variant="tiny", num_frames=8, training_resolution=(64, 64))


@pytest.fixture()
def base_unet(tiny_components):
    return copy.deepcopy(tiny_components["unet"])


def rewrite(src: Path, dst: Path, *, tensors=None, metadata=None) -> Path:
    """Copy an adapter with edited tensors and/or metadata (functions of the originals)."""
    with safe_open(str(src), framework="pt") as fh:
        original_meta = dict(fh.metadata())
        original = {key: fh.get_tensor(key) for key in fh.keys()}
    save_file(
        tensors(original) if tensors else original,
        str(dst),
        metadata=metadata(original_meta) if metadata else original_meta,
    )
    return dst


def assert_untouched(unet):
    assert unet.conv_in.weight.shape[1] == STOCK_IN_CHANNELS and unet.config.in_channels == STOCK_IN_CHANNELS
    assert not lora_layers(unet)


# --------------------------------------------------------------------------- round trip


def test_round_trip_is_bit_exact(trained_unet, adapter_path, base_unet):
    info = load_adapter(base_unet, adapter_path, base_variant="tiny", num_frames=8)
    saved = lora_state_dict(trained_unet)
    loaded = lora_state_dict(base_unet)
    assert set(saved) == set(loaded) and len(saved) == 2 * 64
    assert all(torch.equal(saved[key], loaded[key]) for key in saved)
    assert torch.equal(base_unet.conv_in.weight, trained_unet.conv_in.weight)
    assert torch.equal(base_unet.conv_in.bias, trained_unet.conv_in.bias)
    assert torch.equal(unet_forward(base_unet, LATENTS), unet_forward(trained_unet, LATENTS))
    assert info.rank == RANK and info.alpha == 4.0


def test_file_keys_and_metadata(trained_unet, adapter_path):
    with safe_open(str(adapter_path), framework="pt") as fh:
        keys = set(fh.keys())
        metadata = fh.metadata()
    # Module names without peft's adapter name; the whole conv_in.
    assert "conv_in.weight" in keys and "conv_in.bias" in keys
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in keys
    assert "mid_block.attentions.0.temporal_transformer_blocks.0.attn2.to_out.0.lora_B.weight" in keys
    assert not any(f".{LORA_ADAPTER_NAME}." in key or "base_layer" in key for key in keys)
    assert len(keys) == 2 * 64 + 2
    assert metadata["kfi.format"] == ADAPTER_FORMAT and metadata["kfi.format_version"] == "1"
    assert json.loads(metadata["kfi.lora_target_modules"]) == ["to_q", "to_k", "to_v", "to_out.0"]

    info = read_adapter_metadata(adapter_path)
    assert (info.base_variant, info.num_frames, info.rank, info.alpha, info.in_channels) == ("tiny", 8, RANK, 4.0, 12)
    assert info.training_resolution == (64, 64)
    assert info.base_fingerprint == architecture_fingerprint(trained_unet.config)
    assert info.base_architecture["block_out_channels"] == [32, 64]
    assert info.tensor_shapes["conv_in.weight"] == (32, KFI_IN_CHANNELS, 3, 3)


def test_fingerprint_ignores_in_channels_and_frames_but_not_shapes(base_unet):
    config = dict(base_unet.config)
    assert architecture_fingerprint({**config, "in_channels": 12, "num_frames": 25}) == architecture_fingerprint(config)
    assert architecture_fingerprint({**config, "cross_attention_dim": 64}) != architecture_fingerprint(config)


def test_loading_into_a_unet_with_the_same_lora_replaces_the_weights(adapter_path, trained_unet, base_unet):
    expand_conv_in(base_unet)
    add_lora(base_unet, rank=RANK, alpha=4)
    load_adapter(base_unet, adapter_path, base_variant="tiny", num_frames=8)
    assert torch.equal(unet_forward(base_unet, LATENTS), unet_forward(trained_unet, LATENTS))


def test_save_is_atomic(trained_unet, tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "a.safetensors"
    save_adapter(trained_unet, path, base_variant="tiny", num_frames=8)
    before = path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temp file left

    def failing_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(trained_unet, path, base_variant="other", num_frames=8)
    assert path.read_bytes() == before  # the old adapter is intact
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


# --------------------------------------------------------------------------- base / rank mismatches


def test_other_variant_is_refused(adapter_path, base_unet):
    with pytest.raises(
        AdapterMismatchError,
        match=r"made for base 'tiny' with 8 frames, but the loaded base is "
        r"'svd-xt' with 8 frames. Load the 'tiny' base model",
    ) as info:
        load_adapter(base_unet, adapter_path, base_variant="svd-xt", num_frames=8)
    assert str(adapter_path) in str(info.value)
    assert_untouched(base_unet)


def test_other_frame_count_is_refused(adapter_path, base_unet):
    with pytest.raises(
        AdapterMismatchError,
        match=r"'tiny' with 8 frames, but the loaded base takes 14 frames. "
        r"Load the base with 8 frames",
    ):
        load_adapter(base_unet, adapter_path, base_variant="tiny", num_frames=14)
    assert_untouched(base_unet)


def test_other_architecture_is_refused(adapter_path):
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(0)
    other = UNetSpatioTemporalConditionModel(**{**tiny_unet_config(), "cross_attention_dim": 64})
    with pytest.raises(
        AdapterMismatchError,
        match=r"fingerprint [0-9a-f]{16}, this UNet's is [0-9a-f]{16} "
        r"\(cross_attention_dim: adapter 32 vs UNet 64\)",
    ):
        load_adapter(other, adapter_path, base_variant="tiny", num_frames=8)
    assert_untouched(other)


def test_requested_rank_mismatch_is_refused(adapter_path, base_unet):
    with pytest.raises(
        AdapterMismatchError,
        match=r"LoRA rank 8, but rank 32 was requested. Ask for rank 8 "
        r".* trained with rank 32\.",
    ):
        load_adapter(base_unet, adapter_path, base_variant="tiny", num_frames=8, rank=32)
    assert_untouched(base_unet)
    load_adapter(base_unet, adapter_path, base_variant="tiny", num_frames=8, rank=RANK)  # the right rank loads


def test_unet_with_other_lora_is_refused(adapter_path, base_unet):
    add_lora(base_unet, rank=4)
    with pytest.raises(AdapterMismatchError, match=r"already has LoRA rank 4 alpha 4 .* the file has rank 8 alpha 4"):
        load_adapter(base_unet, adapter_path, base_variant="tiny", num_frames=8)


def test_unet_with_merged_lora_is_refused(adapter_path, base_unet):
    add_lora(base_unet, rank=RANK, alpha=4)
    merge_lora(base_unet)
    with pytest.raises(LoraError, match=r"LoRA is merged; call unmerge_lora\(unet\)"):
        load_adapter(base_unet, adapter_path, base_variant="tiny", num_frames=8)


# --------------------------------------------------------------------------- keys and shapes


def test_missing_key_is_refused(adapter_path, tmp_path, base_unet):
    gone = "up_blocks.1.attentions.1.temporal_transformer_blocks.0.attn2.to_v.lora_B.weight"
    bad = rewrite(
        adapter_path, tmp_path / "missing.safetensors", tensors=lambda t: {k: v for k, v in t.items() if k != gone}
    )
    with pytest.raises(
        CheckpointFormatError,
        match=rf"1 of 130 expected tensors are missing \(e.g. {gone}\).* "
        r"needs 130 tensors, the file has 129",
    ):
        load_adapter(base_unet, bad, base_variant="tiny", num_frames=8)
    assert_untouched(base_unet)


def test_extra_key_is_refused(adapter_path, tmp_path, base_unet):
    bad = rewrite(
        adapter_path,
        tmp_path / "extra.safetensors",
        tensors=lambda t: {**t, "conv_out.lora_A.weight": torch.zeros(RANK, 32)},
    )
    with pytest.raises(
        CheckpointFormatError,
        match=r"1 unexpected tensors \(e.g. conv_out.lora_A.weight\).* "
        r"exactly 130 tensors, the file has 131",
    ):
        load_adapter(base_unet, bad, base_variant="tiny", num_frames=8)
    assert_untouched(base_unet)


def test_wrong_shape_is_refused(adapter_path, tmp_path, base_unet):
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"
    bad = rewrite(adapter_path, tmp_path / "shape.safetensors", tensors=lambda t: {**t, key: torch.zeros(RANK, 48)})
    with pytest.raises(CheckpointFormatError, match=rf"tensor {key} has shape \[8, 48\], this UNet needs \[8, 32\]"):
        load_adapter(base_unet, bad, base_variant="tiny", num_frames=8)
    assert_untouched(base_unet)


def test_old_narrow_conv_in_is_refused(adapter_path, tmp_path, base_unet):
    bad = rewrite(
        adapter_path,
        tmp_path / "conv8.safetensors",
        tensors=lambda t: {**t, "conv_in.weight": t["conv_in.weight"][:, :8].contiguous()},
    )
    with pytest.raises(
        CheckpointFormatError,
        match=r"conv_in.weight has shape \[32, 8, 3, 3\], this UNet needs "
        r"\[32, 12, 3, 3\]",
    ):
        load_adapter(base_unet, bad, base_variant="tiny", num_frames=8)


# --------------------------------------------------------------------------- not an adapter / damaged files


def test_plain_safetensors_without_metadata_is_not_an_adapter(adapter_path, tmp_path, base_unet):
    bad = rewrite(adapter_path, tmp_path / "plain.safetensors", metadata=lambda m: {})
    with pytest.raises(
        ModelFileError,
        match=r"not a KFI adapter \(metadata kfi.format is 'absent', expected "
        r"'kfi-adapter'\). It holds 128 LoRA tensors but no KFI metadata",
    ):
        load_adapter(base_unet, bad, base_variant="tiny", num_frames=8)
    assert_untouched(base_unet)


def test_newer_format_version_is_refused(adapter_path, tmp_path):
    bad = rewrite(adapter_path, tmp_path / "v3.safetensors", metadata=lambda m: {**m, "kfi.format_version": "3"})
    with pytest.raises(
        AdapterMismatchError,
        match=r"format version 3 is newer than this KFI reads \(version 1\).*"
        r"Update KFI",
    ):
        read_adapter_metadata(bad)


def test_missing_metadata_field_is_refused(adapter_path, tmp_path):
    bad = rewrite(
        adapter_path,
        tmp_path / "norank.safetensors",
        metadata=lambda m: {k: v for k, v in m.items() if k != "kfi.lora_rank"},
    )
    with pytest.raises(ModelFileError, match=r"metadata kfi.lora_rank is missing"):
        read_adapter_metadata(bad)
    bad = rewrite(adapter_path, tmp_path / "badrank.safetensors", metadata=lambda m: {**m, "kfi.lora_rank": "0"})
    with pytest.raises(ModelFileError, match=r"LoRA metadata is invalid: LoRA rank: got 0"):
        read_adapter_metadata(bad)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".bin"])
def test_pickle_suffix_is_refused_unread(tmp_path, base_unet, suffix):
    path = tmp_path / f"adapter{suffix}"
    path.write_bytes(b"\x80\x04\x95")  # never opened: refused by name
    with pytest.raises(ModelFileError, match=r"is a pickle file .* Convert it to safetensors"):
        load_adapter(base_unet, path, base_variant="tiny", num_frames=8)
    assert_untouched(base_unet)


@pytest.mark.parametrize(
    "head",
    [
        b"PK\x03\x04" + b"\x00" * 60,  # torch.save zip container
        b"\x80\x02}q\x00(X\x06\x00\x00\x00" + b"\x00" * 40,
    ],
)  # protocol-2 pickle stream
def test_pickle_content_with_safetensors_name_is_refused(tmp_path, head):
    path = tmp_path / "renamed.safetensors"
    path.write_bytes(head)
    with pytest.raises(ModelFileError, match=r"is a pickle file .* Convert it to safetensors"):
        read_adapter_metadata(path)


def test_truncated_file_is_refused(adapter_path, tmp_path, base_unet):
    data = adapter_path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-100])
    data_len = len(data) - 8 - int.from_bytes(data[:8], "little")  # bytes after the 8-byte length and the header
    with pytest.raises(
        ModelFileError,
        match=rf"truncated: the header needs {data_len} "
        rf"bytes of tensor data but the file holds {data_len - 100}"
        r".*Copy or download it again",
    ):
        load_adapter(base_unet, cut, base_variant="tiny", num_frames=8)
    assert_untouched(base_unet)
    cut.write_bytes(data[:500])  # cut inside the header
    with pytest.raises(ModelFileError, match=r"truncated: the header alone needs \d+ bytes but the file has 500"):
        read_adapter_metadata(cut)
    cut.write_bytes(data[:5])
    with pytest.raises(ModelFileError, match=r"the file is 5 bytes, too short"):
        read_adapter_metadata(cut)


def test_trailing_bytes_are_refused(adapter_path, tmp_path):
    bad = tmp_path / "trailing.safetensors"
    bad.write_bytes(adapter_path.read_bytes() + b"\x00" * 16)
    with pytest.raises(ModelFileError, match=r"16 bytes after the last tensor"):
        read_adapter_metadata(bad)


def test_oversized_header_is_refused_unread(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes((MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b'{"' + b" " * 100)
    with pytest.raises(
        ModelFileError,
        match=rf"header claims {MAX_HEADER_BYTES + 1} bytes, over KFI's limit of "
        rf"{MAX_HEADER_BYTES} bytes",
    ):
        read_adapter_metadata(path)


def test_garbage_header_is_refused(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes((4).to_bytes(8, "little") + b"{xx}")
    with pytest.raises(ModelFileError, match=r"header is not valid JSON"):
        read_adapter_metadata(path)
    path.write_bytes((4).to_bytes(8, "little") + b"abcd")
    with pytest.raises(ModelFileError, match=r"not a safetensors file \(no JSON header\)"):
        read_adapter_metadata(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match=r"nope.safetensors: no such file"):
        read_adapter_metadata(tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------- save refusals


def test_save_refusals(trained_unet, base_unet, tmp_path):
    good = tmp_path / "a.safetensors"
    with pytest.raises(ModelFileError, match=r"KFI adapters are safetensors files; name it a.safetensors"):
        save_adapter(trained_unet, tmp_path / "a.pt", base_variant="tiny", num_frames=8)
    with pytest.raises(UnknownNameError, match=r"base_variant: got ''"):
        save_adapter(trained_unet, good, base_variant="", num_frames=8)
    with pytest.raises(UnsupportedSizeError, match=r"num_frames: got 0"):
        save_adapter(trained_unet, good, base_variant="tiny", num_frames=0)
    with pytest.raises(UnsupportedSizeError, match=r"training_resolution: got \(64,\)"):
        save_adapter(trained_unet, good, base_variant="tiny", num_frames=8, training_resolution=(64,))
    with pytest.raises(LoraError, match=r"the UNet has no LoRA layers"):
        save_adapter(base_unet, good, base_variant="tiny", num_frames=8)
    add_lora(base_unet, rank=4)
    with pytest.raises(LoraError, match=r"conv_in takes 8 input channels, a KFI UNet takes 12. Call expand_conv_in"):
        save_adapter(base_unet, good, base_variant="tiny", num_frames=8)
    assert not os.listdir(tmp_path)


def test_every_refusal_is_a_kfi_error():
    for cls in (
        AdapterMismatchError,
        CheckpointFormatError,
        LoraError,
        ModelFileError,
        UnknownNameError,
        UnsupportedSizeError,
    ):
        assert issubclass(cls, KfiError)


@pytest.mark.parametrize(
    "metadata",
    [
        {"kfi.format_version": "2", "kfi.reference_attention": "known_frames"},
        {"kfi.format_version": "2"},
        {"kfi.reference_attention": "known_frames"},
    ],
)
def test_a_file_trained_with_the_removed_reference_attention_is_refused(adapter_path, base_unet, tmp_path, metadata):
    """Format 2 meant reference attention, since removed: such a file is refused with that reason before the UNet is
    touched, never run without the attention it was trained with. Every shipped adapter is format 1 and loads."""
    with safe_open(str(adapter_path), "pt") as f:
        assert f.metadata()["kfi.format_version"] == "1"
    old = rewrite(adapter_path, tmp_path / "old.safetensors", metadata=lambda meta: {**meta, **metadata})
    with pytest.raises(AdapterMismatchError, match=r"trained with reference_attention .* removed from KFI"):
        load_adapter(base_unet, old, base_variant="tiny", num_frames=8)
    assert_untouched(base_unet)
