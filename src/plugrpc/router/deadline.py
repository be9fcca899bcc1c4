"""Deadlines: a call over NATS carries the wall time after which its caller no longer waits, and the
router never starts it later.

A caller that gave up cannot tell a router that is partitioned away or stopped; its request may
still arrive when the link heals or the router resumes, seconds later. So the request says when
it stops mattering (the `Plugrpc-Deadline` header: unix time in milliseconds) and the router
checks it where a call could start late: on arrival, before the body is parsed, and before a
call that waited in the router (for a connection, a restarting plugin, an exec slot) is written.
A call found past its deadline is answered -32002 (cheap, and right if its caller's clock is
behind ours) and counted; it never runs.

On the unix socket a caller that gives up says so (`rpc.cancel`, or closing its connection), so
socket calls carry no deadline and their path reads none.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final, Protocol

from .interfaces import clock

log = logging.getLogger("plugrpc.nats")

LOG_INTERVAL: Final = 10.0
"""Seconds between two log lines about expired calls: a backlog that arrives at once is one line."""
UNREAD: Final = ""
"""The plugin an expired message is counted under when it was dropped unread (sent to `plugrpc.call.NAME`)."""


def seconds_left(value: str) -> float | None:
    """Seconds until the deadline in header `value` (negative: passed); None when it is not a number."""
    try:
        return int(value) / 1000 - time.time()
    except ValueError:
        return None


class Deadlined(Protocol):
    """A sink whose calls have a deadline (a NATS request), on the router's clock."""

    deadline: float | None

    def expired(self, plugin: str, late: float) -> None:
        """A call of this sink to `plugin` was dropped `late` seconds past its deadline."""


def owner(sink: Any) -> Deadlined | None:
    """The request that gave `sink`'s call a deadline (the sink itself, or its batch's), if any."""
    if getattr(sink, "deadline", None) is not None:
        return sink  # type: ignore[no-any-return]
    front = getattr(sink, "front", None)  # a batch: its owner has the deadline
    return front if getattr(front, "deadline", None) is not None else None


def overdue(sink: Any, now: float) -> tuple[Deadlined, float] | None:
    """`(owner, seconds late)` when the call of `sink` is past its deadline at `now` (router clock), else None."""
    who = owner(sink)
    if who is None or who.deadline is None or who.deadline > now:
        return None
    return who, now - who.deadline


class Expired:
    """Calls dropped because their deadline passed, by plugin (`UNREAD`: dropped before parsing);
    said in the log at most once per `LOG_INTERVAL`."""

    __slots__ = ("counts", "total", "_logged", "_since")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.total = 0
        self._logged = -LOG_INTERVAL
        self._since = 0
        """Dropped since the last log line."""

    def drop(self, plugin: str, late: float, where: str) -> None:
        self.counts[plugin] = self.counts.get(plugin, 0) + 1
        self.total += 1
        self._since += 1
        now = clock()
        if now - self._logged >= LOG_INTERVAL:
            self._logged = now
            what = f"to {plugin}" if plugin else "by router name"
            log.warning("dropped %d call(s) past their deadline (the last %s, %.3f s late, %s); their callers "
                        "had given up. A backlog after a partition or a stopped router looks like this; check "
                        "the hosts' clocks if it goes on (router.stats counts them)", self._since, what, late, where)
            self._since = 0

    def status(self) -> dict[str, Any]:
        """For `router.stats`: the total, and by plugin (`unread`: dropped before the body was parsed)."""
        return {"total": self.total, "unread": self.counts.get(UNREAD, 0),
                "plugins": {name: n for name, n in self.counts.items() if name != UNREAD}}
