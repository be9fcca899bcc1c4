"""The router's private runtime directory (mode 0700), which holds its plugins' sockets.

Its name carries the router's pid (`plugrpc-PID-XXXXXXXX`), so a router killed with SIGKILL, which
cannot clean up after itself, has its directory removed by the next router that starts under the
same user: `RuntimeDir()` removes every such directory whose router is gone.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Final

from ..config import runtime_base

log = logging.getLogger("plugrpc.process")

PREFIX: Final = "plugrpc-"
_NAME: Final = re.compile(r"plugrpc-(\d+)-[A-Za-z0-9_]+")


class RuntimeDir:
    """Private runtime directory of one router; `remove()` at shutdown."""

    def __init__(self, base: Path | None = None) -> None:
        base = base if base is not None else runtime_base()
        remove_stale(base)
        # mkdtemp creates the directory with mode 0700, owned by us, under a name nobody can predict.
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))

    def socket_for(self, name: str) -> Path:
        """Where plugin `name` listens."""
        return self.path / f"{name}.sock"

    def remove(self) -> None:
        """Remove the directory and whatever is left in it; safe to call twice."""
        shutil.rmtree(self.path, ignore_errors=True)

    def __repr__(self) -> str:
        return f"RuntimeDir({str(self.path)!r})"


def remove_stale(base: Path) -> list[Path]:
    """Remove the runtime directories in `base` that are ours and whose router no longer runs."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    if removed:
        log.info("removed %d runtime director%s left by routers that were killed: %s", len(removed),
                 "y" if len(removed) == 1 else "ies", ", ".join(map(str, removed)))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not ours to judge
        return True
    return True
