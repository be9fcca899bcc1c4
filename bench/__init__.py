"""`make bench`: what a plugrpc call costs, side by side with the floor, the old model and the alternatives.

Run as `python -m bench` (see `python -m bench --help` and bench/results/README.md). Every server
under test runs in its own process; this process is the load generator and the orchestrator.
"""

from __future__ import annotations

import sys


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout keeps only the tables."""
    print(msg, file=sys.stderr, flush=True)
