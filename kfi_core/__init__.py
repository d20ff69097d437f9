"""KFI: keyframe-guided video inpainting on Stable Video Diffusion.

A pure library (no ComfyUI imports) with a CLI: ``python -m kfi_core --help``.
Importing this package is cheap; torch, diffusers and peft are imported by the
modules that need them.
"""

__version__ = "0.1.0"

from kfi_core.errors import KfiError  # noqa: E402  (public name, no heavy imports)

__all__ = ["KfiError", "__version__"]
