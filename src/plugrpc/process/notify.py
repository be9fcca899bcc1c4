"""The datagram socket a `ready = "notify"` plugin says READY=1 and STATUS=... on (its `$NOTIFY_SOCKET`).

One per plugin, bound in the abstract namespace (no file: a plugin that runs as another user can
reach it, and nothing is left on disk), and kept across the plugin's restarts like its listening
socket. Anyone on the host could send to an abstract socket, so every datagram carries its
sender's pid as the kernel vouches for it (SCM_CREDENTIALS) and the supervisor accepts only those
from the plugin's own process group. A message that is garbage, too large or from a stranger is
ignored; the first of each kind is logged, the rest only counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import struct
from collections.abc import Callable
from typing import Final

from ..sdnotify import MAX_MESSAGE, parse

BATCH: Final = 64
"""Datagrams read per wake-up: a plugin flooding its socket cannot hold the router's loop."""
_UCRED: Final = struct.Struct("iII")  # pid, uid, gid

log = logging.getLogger("plugrpc.notify")

OnMessage = Callable[[int, dict[str, str]], bool]
"""(sender pid, fields) -> whether the message was accepted (it came from the plugin)."""


class NotifySocket:
    """Receives one plugin's sd_notify messages on the event loop and hands them to `on_message`."""

    def __init__(self, name: str, on_message: OnMessage) -> None:
        self.name = name
        self.address = f"@plugrpc-{os.getpid()}-{secrets.token_hex(6)}"
        """The value of the plugin's `$NOTIFY_SOCKET`."""
        self.ignored = 0
        """Messages dropped: too large, not `KEY=VALUE`, or not from the plugin."""
        self._on_message = on_message
        self._warned: set[str] = set()
        self._loop = asyncio.get_running_loop()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._sock.bind("\0" + self.address[1:])
        except BaseException:
            self._sock.close()
            raise
        self._loop.add_reader(self._sock.fileno(), self._readable)

    def __repr__(self) -> str:
        return f"<NotifySocket {self.name} {self.address} ignored={self.ignored}>"

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def _readable(self) -> None:
        for _ in range(BATCH):
            try:
                data, ancdata, flags, _ = self._sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # nothing a datagram socket should return; do not spin on it
                log.warning("reading the notify socket failed: %s", exc, extra={"plugin": self.name})
                return
            self._receive(data, ancdata, flags)

    def _receive(self, data: bytes, ancdata: list[tuple[int, int, bytes]], flags: int) -> None:
        pid = next((_UCRED.unpack(cdata[:_UCRED.size])[0] for level, kind, cdata in ancdata
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(cdata) >= _UCRED.size), 0)
        if flags & socket.MSG_TRUNC:
            self._ignore("too-large", f"a message larger than {MAX_MESSAGE} bytes")
            return
        fields = parse(data)
        if not fields:
            self._ignore("garbage", f"a message with no KEY=VALUE line: {data[:80]!r}")
            return
        if not self._on_message(pid, fields):
            self._ignore("stranger", f"a message from pid {pid}, which is not the plugin's")

    def _ignore(self, kind: str, what: str) -> None:
        self.ignored += 1
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("ignored %s on $NOTIFY_SOCKET (further ones are only counted)", what,
                        extra={"plugin": self.name})
