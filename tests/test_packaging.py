"""What users install: the wheel (the library alone) and the registry pack (the repository less .comfyignore)
carry no lab, tests, benchmarks or docs pictures, and do carry what the product needs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEVER_SHIPPED = ("research/", "tests/", "bench/", "scripts/", ".ci/", "docs/images/")


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).exists()]


def registry_pack(files: list[str]) -> list[str]:
    """The files the Comfy registry's packer keeps: every tracked file that .comfyignore (gitignore syntax, read with
    pathspec as comfy-cli reads it) does not match."""
    import pathspec

    spec = pathspec.PathSpec.from_lines("gitwildmatch", (ROOT / ".comfyignore").read_text().splitlines())
    return [name for name in files if not spec.match_file(name)]


def test_the_registry_pack_leaves_out_the_lab_tests_and_benchmarks():
    files = tracked_files()
    assert any(name.startswith("research/") for name in files)  # there is something to leave out
    pack = registry_pack(files)
    assert [name for name in pack if name.startswith(NEVER_SHIPPED)] == []
    for needed in (
        "__init__.py",
        "nodes/__init__.py",
        "kfi_core/__init__.py",
        "requirements.txt",
        "pyproject.toml",
        "README.md",
        "kfi_core/assets/demo_model/adapter.safetensors",
        "configs/kfi_svd_xt.json",
    ):
        assert needed in pack, needed
    assert any(name.startswith("workflows/") and name.endswith(".json") for name in pack)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built once as pip builds it (offline, from this tree)."""
    out = tmp_path_factory.mktemp("wheels")
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (built,) = out.glob("comfyui_kfi-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_is_the_library_with_its_assets(wheel):
    """Built as pip builds it (offline, from this tree): kfi_core and its assets only."""
    names = zipfile.ZipFile(wheel).namelist()
    payload = [n for n in names if ".dist-info/" not in n]
    assert payload and all(n.startswith("kfi_core/") for n in payload), sorted({n.split("/")[0] for n in payload})
    sources = {n for n in tracked_files() if n.startswith("kfi_core/")}
    assert sources <= set(payload), sorted(sources - set(payload))  # every module and asset file, none left out
    assert "kfi_core/assets/demo_model/unet/diffusion_pytorch_model.safetensors" in payload


@pytest.mark.slow
def test_every_subpackage_imports_from_the_installed_wheel(wheel, tmp_path):
    """The wheel installed into a fresh virtual environment (its dependencies borrowed from this one through a .pth
    file, never this checkout): every module of every subpackage imports from the installed copy, so packages.find
    left none out, and `python -m kfi_core --help` runs."""
    import site
    import venv

    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with zipfile.ZipFile(wheel) as zf:  # what pip install does for a pure wheel: unpack into site-packages
        zf.extractall(target)
    (Path(target) / "kfi_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    modules = sorted(
        n[:-3].replace("/", ".").removesuffix(".__init__")
        for n in zipfile.ZipFile(wheel).namelist()
        if n.endswith(".py") and n.startswith("kfi_core/") and not n.endswith("__main__.py")
    )
    script = (
        "import importlib, kfi_core, sys\n"
        f"assert kfi_core.__file__.startswith({target!r}), kfi_core.__file__\n"
        f"for name in {modules!r}:\n    importlib.import_module(name)\n"
        "print(len(sys.modules))"
    )
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cli = subprocess.run(
        [str(python), "-m", "kfi_core", "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert cli.returncode == 0 and "inpaint" in cli.stdout, cli.stderr[-2000:]
    assert {m.split(".")[1] for m in modules if m.count(".") >= 2} >= {
        "model",
        "inference",
        "media",
        "training",
        "evaluation",
    }
