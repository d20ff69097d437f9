"""Shipped code (the pack: __init__.py, nodes/, kfi_core/) runs no code from data and reaches no network.

A static scan of the syntax trees: no eval/exec/compile, no subprocess/os.system, no network
modules, no pickle or torch.load. Tests and dev scripts are not shipped (.comfyignore).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "__init__.py", *sorted((ROOT / "nodes").rglob("*.py")), *sorted((ROOT / "kfi_core").rglob("*.py"))]
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_MODULES = {
    "subprocess",
    "socket",
    "urllib",
    "http",
    "requests",
    "httpx",
    "aiohttp",
    "ftplib",
    "pickle",
    "dill",
    "shelve",
    "marshal",
}
FORBIDDEN_ATTRS = {("os", "system"), ("os", "popen"), ("torch", "load"), ("os", "execv"), ("os", "spawnv")}


def problems_in(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            found.append(f"{path.name}:{node.lineno} calls {node.func.id}()")
        elif isinstance(node, ast.Import):
            found += [
                f"{path.name}:{node.lineno} imports {a.name}"
                for a in node.names
                if a.name.split(".")[0] in FORBIDDEN_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in FORBIDDEN_MODULES:
            found.append(f"{path.name}:{node.lineno} imports from {node.module}")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and (node.value.id, node.attr) in FORBIDDEN_ATTRS
        ):
            found.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_file_is_clean(path):
    assert problems_in(path) == []


def test_the_scan_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import subprocess\nfrom urllib import request\nimport os\nos.system('x')\neval('1')\n"
        "import torch\ntorch.load('m.ckpt')\nimport pickle\n"
    )
    assert len(problems_in(bad)) == 6


def test_dev_only_folders_are_not_shipped():
    ignored = (ROOT / ".comfyignore").read_text().split()
    assert {"tests/", "scripts/", ".ci/"} <= set(ignored)
