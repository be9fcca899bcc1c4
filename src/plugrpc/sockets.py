"""Unix sockets the way every plugrpc process makes them: private, listening with a deep backlog;
and whom a client may trust to be listening on one.

Shared by the router (its front socket, its plugins' sockets), the plugin side (a plugin run by
hand binds its own) and clients, so it imports nothing a plugin does not need.
"""

from __future__ import annotations

import contextlib
import os
import select
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


_SHARED: Final = 0o022
"""Write permission for the group or others: who has it can put a socket in the directory."""


def check_private_dir(path: str | PathLike[str]) -> None:
    """Refuse `path` unless it is a directory of ours with mode 0700, as the default socket's is.

    The default directory has a well-known name in a shared /tmp: another user can make it first
    and listen in it, to read what clients send and answer in the router's place.
    """
    st = os.lstat(path)
    me = os.getuid()
    if stat.S_ISDIR(st.st_mode) and st.st_uid == me and not stat.S_IMODE(st.st_mode) & 0o077:
        return
    what = (f"owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}" if stat.S_ISDIR(st.st_mode)
            else "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory")
    raise ConfigError(f"{path} is {what}, not a directory of yours (uid {me}) with mode 0700: another user could "
                      f"take the router's place in it; remove it (rm -r {path}, as root if another user owns it) "
                      f"and start the router again, or set XDG_RUNTIME_DIR, or pass --socket")


def socket_owner(path: str | PathLike[str], private: bool) -> int:
    """The uid that must be listening on `path` (root may too), once its directory shows nobody else could have
    put the socket there; raises ConfigError saying why not.

    `private`: the default directory, which must be ours (`check_private_dir`). Otherwise a directory
    that only its owner can write vouches for its owner; in one that others can write, only the sticky
    bit keeps a socket from being replaced, and only a socket of ours, root's or the directory owner's
    is trusted there.
    """
    directory = os.path.dirname(os.path.abspath(path))
    me = os.getuid()
    if private:
        check_private_dir(directory)
        return me
    st = os.stat(directory)
    mode = stat.S_IMODE(st.st_mode)
    if not mode & _SHARED:
        return st.st_uid
    if not mode & stat.S_ISVTX:
        raise ConfigError(f"{directory} can be written by other users (mode {mode:04o}) and is not sticky: anyone "
                          f"could have put {os.path.basename(path)} there; keep the router's socket in a directory "
                          f"only its owner can write")
    owner = os.lstat(path).st_uid
    if owner not in (me, st.st_uid, 0):
        raise ConfigError(f"{path} belongs to uid {owner}, in {directory}, which other users can write (mode "
                          f"{mode:04o}): another user may have put it there; only a socket of yours (uid {me}), "
                          f"root's or the directory owner's is trusted in such a directory")
    return owner


async def connect_unix(path: str | PathLike[str], deadline: float, retry: float) -> socket.socket:
    """A connected non-blocking unix socket, waiting while the listener's accept backlog is full.

    AF_UNIX reports a full backlog as EAGAIN. asyncio's own connect takes that for "in progress"
    and hands back a socket that is not connected at all (the first read fails with EINVAL);
    uvloop raises it. A burst of connections at once must wait instead, as a blocking connect()
    would: tried again every `retry` seconds until `deadline` (`time.monotonic()`), then the
    BlockingIOError is raised. The socket is closed on any error.
    """
    import asyncio  # here: plugins load this module and never connect this way
    import time

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        while True:
            try:
                sock.connect(os.fspath(path))
                return sock
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(retry)
    except BaseException:
        sock.close()
        raise


def peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """The pid, uid and gid of the process at the other end of a unix socket (SO_PEERCRED), if the OS says."""
    import struct  # here: plugins load this module and never ask

    if not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return None
    return int(pid), int(uid), int(gid)


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a unix socket, if the OS says."""
    creds = peer_credentials(sock)
    return None if creds is None else creds[1]


def check_peer(sock: socket.socket, owner: int) -> None:
    """Refuse a connection whose listener is neither `owner` (see `socket_owner`) nor root."""
    uid = peer_uid(sock)
    if uid is not None and uid not in (owner, 0):
        raise ConfigError(f"the process listening on it runs as uid {uid}, but only uid {owner} or root can have put "
                          f"the socket there: another user may have taken the router's place; stop that process "
                          f"and start the router again")


def hung_up(fd: int) -> bool:
    """Whether the peer of connected unix socket `fd` closed fully (POLLHUP), not only its writing side.

    A peer that half-closes (`shutdown(SHUT_WR)`, as `nc -N` and socat do after their input) still
    reads its answers; one that closed cannot. Only a full close sets POLLHUP on a unix socket.
    """
    poller = select.poll()
    poller.register(fd, select.POLLHUP | select.POLLRDHUP)
    return any(events & select.POLLHUP for _, events in poller.poll(0))
