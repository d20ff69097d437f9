"""The project's fixtures (tests/conftest.py: tiny models of the real architecture, built once, no downloads), loaded
under their own module name so that the two conftest files never shadow each other."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SHARED = Path(__file__).resolve().parents[3] / "tests" / "conftest.py"
_NAME = "kfi_tests_conftest"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, _SHARED)
    sys.modules[_NAME] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_NAME])

from kfi_tests_conftest import tiny_components, tiny_model_dir  # noqa: E402, F401 - fixtures for these tests
