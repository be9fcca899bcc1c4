"""The router's private runtime directory (mode 0700), which holds its plugins' sockets.

A router killed with SIGKILL cannot clean up after itself: the next router that starts under the
same user removes every such directory whose router is gone. A router holds a lock (flock) on its
directory for as long as it runs, and the kernel drops it when the process dies: unlike the pid in
the name (`plugrpc-PID-XXXXXXXX`), the lock tells a live router from a dead one across PID
namespaces sharing /tmp (containers). A directory is stale when its lock is free and, for routers
of earlier versions that took none, its pid is gone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Final

from ..config import runtime_base
from ..errors import ConfigError

log = logging.getLogger("plugrpc.process")

PREFIX: Final = "plugrpc-"
_NAME: Final = re.compile(r"plugrpc-(\d+)-[A-Za-z0-9_]+")
ATTEMPTS: Final = 5
"""Directories `RuntimeDir()` makes before giving up, when each is taken for stale as it is made."""


class RuntimeDir:
    """Private runtime directory of one router; `remove()` at shutdown."""

    def __init__(self, base: Path | None = None) -> None:
        base = base if base is not None else runtime_base()
        remove_stale(base)
        self.path, self._lock = _create(base)

    def socket_for(self, name: str) -> Path:
        """Where plugin `name` listens."""
        return self.path / f"{name}.sock"

    def remove(self) -> None:
        """Remove the directory and whatever is left in it, then let go of its lock; safe to call twice."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    def __repr__(self) -> str:
        return f"RuntimeDir({str(self.path)!r})"


def _create(base: Path) -> tuple[Path, int]:
    """A new directory and its lock (a file descriptor), taken before another router can think it stale.

    Between mkdtemp and flock another router's cleanup may see the directory with its lock free
    and, if our pid means nothing to it, remove it: then the lock is not ours, or the path no longer
    names the directory we locked, and we make another.
    """
    for _ in range(ATTEMPTS):
        # mkdtemp creates the directory with mode 0700, owned by us, under a name nobody can predict.
        path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))
        lock = _lock(path)
        if lock is not None:
            try:
                if os.stat(path).st_ino == os.fstat(lock).st_ino:
                    return path, lock
            except FileNotFoundError:
                pass
            os.close(lock)
    raise ConfigError(f"cannot make a runtime directory in {base}: another router removed each one as it was made")


def _lock(path: str | Path) -> int | None:
    """The lock of directory `path` (a file descriptor to keep open), or None if a live router holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


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
        lock = _lock(entry.path)
        if lock is None:  # its router runs, maybe where its pid means nothing to us
            continue
        try:
            shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(lock)
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
