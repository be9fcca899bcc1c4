"""`python -m plugrpc`: the command line, for when the `plugrpc` script is not on PATH."""

from __future__ import annotations

import sys

from .tools.cli import main

sys.exit(main())
