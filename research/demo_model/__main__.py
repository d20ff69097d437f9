"""``python -m research.demo_model``: build the demo model from nothing, resuming where a run stopped."""

from __future__ import annotations

import argparse
import logging
import sys

from kfi_core.errors import KfiError, UnknownNameError

from .build import train_demo
from .recipe import PHASES, RECIPE, load_recipe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m research.demo_model",
        description="Train the 64 px demo model from scratch on procedural clips: phases "
        f"{', '.join(PHASES)}. Each phase checkpoints; running the same command again resumes. "
        "See research/demo_model/README.md.",
    )
    parser.add_argument("--recipe", default=str(RECIPE), help="recipe JSON (default: the shipped model's, %(default)s)")
    parser.add_argument("--out", default="runs/demo", help="output folder (default %(default)s)")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop cleanly (checkpoint saved) after this many minutes; run again to resume",
    )
    parser.add_argument(
        "--phase",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these phases (repeatable); default all: {' '.join(PHASES)}",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        phases = tuple(args.phase) if args.phase else PHASES
        bad = [name for name in phases if name not in PHASES]
        if bad:
            raise UnknownNameError(f"--phase: unknown {', '.join(bad)}; choose from {', '.join(PHASES)}.")
        path = train_demo(load_recipe(args.recipe), args.out, max_minutes=args.max_minutes, phases=phases)
    except KfiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if path is None:
        print(f"not finished: run the same command again to resume from the checkpoints in {args.out}")
        return 0
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
