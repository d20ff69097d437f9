"""KFI: keyframe-guided video inpainting for ComfyUI (V3 node pack).

ComfyUI imports this file and calls :func:`comfy_entrypoint`. Importing it is cheap: the
node modules import torch-heavy libraries (diffusers, peft) only when a node runs.
"""

import importlib.util
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    # kfi_core is the pack's pure library; it is imported by its top-level name so that the
    # CLI, the tests and the nodes share one copy of it (and one set of exception classes).
    sys.path.insert(0, _PACK_DIR)

# Import names of what the nodes need at run time, with the pip name to install.
REQUIRED_MODULES = {
    "diffusers": "diffusers",
    "transformers": "transformers",
    "peft": "peft",
    "safetensors": "safetensors",
    "einops": "einops",
    "av": "av",
}


def missing_dependencies() -> list[str]:
    """pip names of required packages that are not installed (checked without importing them)."""
    return [pip for mod, pip in REQUIRED_MODULES.items() if importlib.util.find_spec(mod) is None]


async def comfy_entrypoint():
    missing = missing_dependencies()
    if missing:
        raise ImportError(
            "KFI video inpainting: missing Python packages: " + ", ".join(missing) + ". Install them into "
            "ComfyUI's Python with: python -m pip install -r " + os.path.join(_PACK_DIR, "requirements.txt")
        )
    from .nodes import KFIExtension

    return KFIExtension()
