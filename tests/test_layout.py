"""The layout of kfi_core stays readable: few top-level modules, short modules and functions, no host imports.

Issue 43's "done when": kfi_core/ has at most 8 modules at its top level, no module over 600 lines and no
function over 80 lines, and the library never imports ComfyUI (comfy, comfy_api, folder_paths), the node pack
(nodes) or the benches (bench). Pure ``ast`` walks over the source files: nothing is imported, so the test is
fast and cannot be fooled by lazy imports inside functions. Each test lists every offender, so one run says
everything that needs fixing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kfi_core"

MAX_TOP_LEVEL_MODULES = 8
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

#: The subpackages by concern. Everything else at the top of kfi_core counts as one top-level module, a .py
#: file or a package (cli/ is one module split into files); the expected ones are __init__, __main__, errors,
#: jobs, bundled, cli and files.
SUBPACKAGES = ("model", "inference", "media", "training", "evaluation")

#: Top-level import names kfi_core must never import, at module top or inside a function: the ComfyUI host
#: (comfy, comfy_api, folder_paths), the node pack that wraps the library (nodes) and the benches (bench).
FORBIDDEN_IMPORTS = ("comfy", "comfy_api", "nodes", "folder_paths", "bench")

#: Deliberate exceptions to the size rules, each with its reason. Keys are paths relative to kfi_core/ (the
#: whole module: its length and every function in it), or "path::function" (one function, by its name).
#: Keep it empty: an entry is a debt to pay, and the reason says why it is not paid yet.
EXCEPTIONS: dict[str, str] = {}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _functions(tree: ast.AST):
    """Every function and method, nested ones included."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_the_package_is_found():
    assert (PACKAGE / "__init__.py").is_file()
    assert len(_modules()) > 10  # a wrong root would make every other test pass vacuously


def test_top_level_has_few_modules():
    entries = [p for p in PACKAGE.iterdir() if not p.name.startswith((".", "__pycache__"))]
    modules = sorted(p.stem for p in entries if p.is_file() and p.suffix == ".py")
    packages = sorted(p.name for p in entries if p.is_dir() and (p / "__init__.py").is_file())
    missing = [name for name in SUBPACKAGES if name not in packages]
    assert not missing, f"kfi_core subpackages missing: {missing}"
    top = modules + [name for name in packages if name not in SUBPACKAGES]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, (
        f"kfi_core has {len(top)} top-level modules {top}, more than {MAX_TOP_LEVEL_MODULES}; move modules into "
        f"one of the subpackages {list(SUBPACKAGES)}."
    )


def test_no_module_is_too_long():
    offenders = []
    for path in _modules():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES and _rel(path) not in EXCEPTIONS:
            offenders.append(f"{_rel(path)}: {lines} lines")
    assert offenders == [], f"modules over {MAX_MODULE_LINES} lines (split them by concern): {offenders}"


def test_no_function_is_too_long():
    offenders = []
    for path in _modules():
        rel = _rel(path)
        if rel in EXCEPTIONS:
            continue
        for fn in _functions(_tree(path)):
            length = fn.end_lineno - fn.lineno + 1  # from `def` to the last line of the body
            if length > MAX_FUNCTION_LINES and f"{rel}::{fn.name}" not in EXCEPTIONS:
                offenders.append(f"{rel}:{fn.lineno} {fn.name}: {length} lines")
    assert offenders == [], f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {offenders}"


def test_exceptions_name_real_files_and_give_reasons():
    for key, reason in EXCEPTIONS.items():
        assert (PACKAGE / key.split("::")[0]).is_file(), f"EXCEPTIONS: {key!r} names no file in kfi_core"
        assert reason.strip(), f"EXCEPTIONS: {key!r} has no reason"


def _imported_names(tree: ast.AST):
    """(line, top-level name) of every absolute import, at module top or inside functions."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def test_kfi_core_never_imports_the_host_the_nodes_or_the_benches():
    offenders = [
        f"{_rel(path)}:{line} imports {name}"
        for path in _modules()
        for line, name in _imported_names(_tree(path))
        if name in FORBIDDEN_IMPORTS
    ]
    assert offenders == [], f"kfi_core must stay a pure library: {offenders}"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import comfy.model_management\n", ["comfy"]),
        ("def f():\n    from nodes import bridge\n", ["nodes"]),
        ("from bench.common import x\n", ["bench"]),
        ("from . import nodes\nimport benchmark\n", ["benchmark"]),
    ],
)
def test_the_import_scan_can_fail(source, expected):
    names = [name for _, name in _imported_names(ast.parse(source))]
    assert names == expected
    assert any(n in FORBIDDEN_IMPORTS for n in names) == (expected[0] in FORBIDDEN_IMPORTS)


def test_importing_the_package_is_free_and_its_public_names_resolve():
    """`import kfi_core` loads no torch (the public API is lazy); every name in kfi_core.__all__ resolves."""
    import subprocess
    import sys

    code = (
        "import sys, kfi_core\n"
        "assert 'torch' not in sys.modules, 'import kfi_core loaded torch'\n"
        "missing = [n for n in kfi_core.__all__ if getattr(kfi_core, n, None) is None]\n"
        "assert not missing, missing\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
