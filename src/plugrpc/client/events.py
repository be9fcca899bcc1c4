"""Events on a `Client`'s socket: `subscribe()` and the notifications the router sends (docs/design.md, "Events").

    async with client.subscribe("ovs.port.*", "demo.>") as events:
        async for ev in events:          # Event(name="ovs.port.added", data={...}, seq=7, dropped=0)
            ...

The router sends a connection notifications only once it subscribed (`router.subscribe`), so a
client that never subscribes never sees one. What a subscription keeps for its reader, and what it
drops, is the same over every transport (client/common.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .common import MAXSIZE, Event, Progress, Subscription

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["MAXSIZE", "Event", "SocketSubscription", "Subscription"]


class Caller(Protocol):
    """What a socket subscription needs of its client: the router's connection, and calls on it."""

    async def _connection(self, progress: bool = False) -> Connection: ...

    async def raw(self, method: str, params: Any = None, *, timeout: float | None = None,
                  progress: Progress | None = None) -> Any: ...


class SocketSubscription(Subscription):
    """Events matching some patterns, on one client's connection: an async context manager and iterator."""

    def __init__(self, client: Caller, patterns: tuple[str, ...], maxsize: int = MAXSIZE) -> None:
        super().__init__(patterns, maxsize)
        self.client = client
        self._conn: Connection | None = None

    async def start(self) -> None:
        """Subscribe (`router.subscribe`); raises RpcError (-32602) naming a bad pattern."""
        conn = await self.client._connection()
        conn.subscribing += 1
        try:
            result = await self.client.raw("router.subscribe", {"events": list(self.patterns)})
        finally:
            conn.subscribing -= 1
        self.id, self._conn = result["subscription"], conn
        conn.subscriptions[self.id] = self
        for params in conn.early.pop(self.id, ()):  # sent right after the answer, before we saw it
            self._put(params)
        if not conn.subscribing:
            conn.early.clear()

    async def close(self) -> None:
        """Unsubscribe; iterating then ends once the events already here are taken."""
        conn, self._conn = self._conn, None
        self._end(StopAsyncIteration())
        if conn is None or self.id is None or conn.subscriptions.pop(self.id, None) is None:
            return
        if conn.lost is None:
            await self.client.raw("router.unsubscribe", {"subscription": self.id})
