"""Command line interface: ``python -m kfi_core <command> ...``.

This is the only place in the library that configures logging and the only place that
catches :class:`~kfi_core.errors.KfiError`: a known problem prints its message and exits
with code 2, anything else is a bug and keeps its traceback. Each sub-command's flags sit
beside its handler in one module per group (:mod:`.models`, :mod:`.inpaint`, :mod:`.tools`, :mod:`.plan`,
:mod:`.train`); :func:`build_parser` only assembles them. Sub-commands import their heavy
optional modules (diffusers, accelerate) only when they run.
"""

from __future__ import annotations

import argparse
import logging
import sys

from kfi_core import __version__
from kfi_core.cli import inpaint, models, plan, tools, train
from kfi_core.errors import KfiError

__all__ = ["EXIT_USER_ERROR", "build_parser", "main"]

EXIT_USER_ERROR = 2

# The order of `--help`'s command list.
_PARSER_ADDERS = (
    models.add_make_tiny_model_parser,
    models.add_info_parser,
    models.add_init_adapter_parser,
    models.add_convert_parser,
    inpaint.add_inpaint_parser,
    inpaint.add_demo_parser,
    models.add_make_sample_parser,
    tools.add_eval_parser,
    tools.add_masks_parser,
    tools.add_schedule_parser,
    plan.add_plan_parser,
    train.add_train_parser,
    train.add_export_adapter_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kfi_core",
        description="KFI: keyframe-guided video inpainting on Stable Video Diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"kfi_core {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser in _PARSER_ADDERS:
        add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="[%(name)s] %(levelname)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KfiError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
