"""Imports run one way: the contracts in pyproject.toml ([tool.importlinter]) hold, so a new cycle fails the suite.

They say which package may import which (tools over the router and the clients, the router over the
plugin processes; plugins and the shared modules import none of the rest) and that no package's
modules import each other in a circle.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout
