"""Unix sockets the way every plugrpc process makes them: private, listening with a deep backlog.

Shared by the router (its front socket, its plugins' sockets) and the plugin side (a plugin run
by hand binds its own), so it imports nothing a plugin does not need.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from .errors import ConfigError

TYPE_CHECKING = False  # typing's, without importing typing: a plugin loads these modules (see plugin/plain.py)
if TYPE_CHECKING:
    from os import PathLike
    from typing import Final

BACKLOG: Final = 4096
"""Connections the kernel queues on a listening socket: a burst of clients waits there to be accepted.

Listeners must pass it on (`create_unix_server(..., backlog=BACKLOG)`): asyncio and uvloop listen
again with their own default of 100, and non-blocking clients (Node, Go, libuv) that find the
backlog full are refused with EAGAIN rather than kept waiting."""


def bind_socket(path: str | PathLike[str], mode: int = 0o600, backlog: int = BACKLOG) -> socket.socket:
    """Bind and listen on a unix socket with `mode`, replacing a stale socket file.

    A socket file that still accepts connections belongs to a live router: refuse to steal it.
    The umask around bind() means the socket never exists with looser permissions.
    """
    if len(os.fsencode(path)) >= 108:
        raise ConfigError(f"socket path is too long for AF_UNIX ({len(os.fsencode(path))} bytes, max 107): {path}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
        if _accepts(path):
            raise ConfigError(f"{path} is in use by a running router; stop it or pass another --socket")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(os.fspath(path))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {path}: {exc.strerror}") from exc
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _accepts(path: str | PathLike[str]) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(os.fspath(path))
        except OSError:
            return False
    return True


def remove_socket(path: str | PathLike[str]) -> None:
    """Remove a socket file we created, ignoring one that is already gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
