"""``python -m kfi_core``: see :mod:`kfi_core.cli`."""

from .cli import main

raise SystemExit(main())
