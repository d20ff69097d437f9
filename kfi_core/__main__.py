"""``python -m kfi_core``: see :mod:`kfi_core.cli`."""

from kfi_core.cli import main

raise SystemExit(main())
