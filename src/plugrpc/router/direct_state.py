"""What the router keeps of the direct connections it handed out (router/direct.py brokers them): the
router's copy of each (`Handed`), those of one broker connection (`Brokered`), and those of one
plugin with the figures its processes report of their calls (`DirectState`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

from .interfaces import Message

log = logging.getLogger("plugrpc.direct")


class Handed:
    """One connection handed to a caller: the router's copy of it, whose plugin it reaches, who got it."""

    __slots__ = ("sock", "state", "owner")

    def __init__(self, sock: socket.socket, state: DirectState, owner: Brokered) -> None:
        self.sock = sock
        self.state = state
        self.owner = owner

    def end(self) -> None:
        """End the connection for both ends and forget it."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.drop()

    def drop(self) -> None:
        """Forget it (and close the router's copy) without touching the connection itself."""
        self.state.handed.discard(self)
        self.owner.handed.discard(self)
        self.sock.close()


class Brokered:
    """The direct connections brokered on one front connection: they end when it closes."""

    __slots__ = ("handed", "pending")

    def __init__(self) -> None:
        self.handed: set[Handed] = set()
        self.pending = 0
        """`router.connect` calls of this connection on their way."""

    def close(self) -> None:
        for handed in list(self.handed):
            handed.end()


class DirectState:
    """A plugin record's direct connections, and the figures its processes last reported of their calls."""

    __slots__ = ("handed", "pending", "pid", "reported", "earlier")

    def __init__(self) -> None:
        self.handed: set[Handed] = set()
        self.pending = 0
        """Connections being brokered now: they count against `max_direct` already."""
        self.pid: int | None = None
        self.reported: dict[str, int] | None = None
        """The current process's last `direct` figures from its answer to `rpc.ping`."""
        self.earlier = {"calls": 0, "errors": 0}
        """What earlier processes of this record reported last: the counters go on from there."""

    def revoke(self, why: str, name: str) -> None:
        """End every connection handed out to this plugin (its calls in flight fail -32001 at the caller)."""
        if self.handed:
            log.info("ending %d direct connection(s): %s", len(self.handed), why, extra={"plugin": name})
            for handed in list(self.handed):
                handed.end()

    def report(self, pid: int | None, msg: Message) -> None:
        """A ping's answer: keep its `direct` figures (any answer proved the plugin alive already)."""
        result = msg.get("result")
        figures = result.get("direct") if type(result) is dict else None
        if type(figures) is not dict:
            return
        counts = {key: figures.get(key) for key in ("connections", "calls", "errors")}
        if not all(type(n) is int and n >= 0 for n in counts.values()):
            return
        if pid != self.pid and self.reported is not None:
            for key in self.earlier:
                self.earlier[key] += self.reported[key]
        self.pid = pid
        self.reported = counts  # type: ignore[assignment]

    def status(self) -> dict[str, Any]:
        """`direct` of `router.plugins`: connections handed out now; calls and errors as the plugin counted them."""
        reported = self.reported
        return {
            "connections": len(self.handed),
            "calls": None if reported is None else self.earlier["calls"] + reported["calls"],
            "errors": None if reported is None else self.earlier["errors"] + reported["errors"],
        }
