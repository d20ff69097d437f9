"""The README's library example runs as written, on the tiny model and the bundled sample clip (file names swapped)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def readme_library_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = [b for b in blocks if "import kfi_core" in b]
    assert len(example) == 1, "the README has one library example"
    return example[0]


def test_the_readme_example_uses_only_the_public_api():
    import kfi_core

    used = set(re.findall(r"kfi_core\.(\w+)", readme_library_example()))
    assert used and used <= set(kfi_core.__all__), sorted(used - set(kfi_core.__all__))


def test_the_readme_example_runs(tiny_model_dir, tmp_path):
    from kfi_core.bundled import load_sample_clip
    from kfi_core.media import write_frames

    sample = load_sample_clip()
    write_frames(sample["frames"], tmp_path / "clip.mp4", fps=7)
    write_frames(sample["masks"].expand(-1, 3, -1, -1), tmp_path / "mask.mp4", fps=7)
    code = readme_library_example()
    code = code.replace('"models/checkpoints/svd_xt.safetensors", adapter="kfi.safetensors"', f'"{tiny_model_dir}"')
    code = code.replace("steps=25", "steps=2")
    for name in ("clip.mp4", "mask.mp4", "result.mp4"):
        code = code.replace(f'"{name}"', f'"{tmp_path / name}"')
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example, as a user runs it
    result = scope["result"]
    clip = scope["clip"]
    assert result.shape == clip.frames.shape and (tmp_path / "result.mp4").is_file()
    keep = clip.masks.expand_as(result) == 0
    assert torch.equal(result[keep], clip.frames[keep])  # outside the mask: the input, exactly
