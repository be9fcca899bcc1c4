"""Events on a `Client`: `subscribe()` and the notifications the router sends (docs/design.md, "Events").

    async with client.subscribe("ovs.port.*", "demo.>") as events:
        async for ev in events:          # Event(name="ovs.port.added", data={...}, seq=7, dropped=0)
            ...

The router sends a connection notifications only once it subscribed (`router.subscribe`), so a
client that never subscribes never sees one. A subscription keeps at most `maxsize` events its
reader has not taken yet; what overflows is dropped and counted into the next event's `dropped`,
as the router counts what it drops, so a reader that falls behind never stops the connection:
the answers to its calls keep coming.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:
    from .aio import Client, _Connection

log = logging.getLogger("plugrpc.client")

MAXSIZE: Final = 10_000
"""Events a subscription keeps for its reader by default before it drops (and counts) newer ones."""


class Event(NamedTuple):
    """One event: its full name (`plugin.event`), its data, the plugin's `seq`, how many were missed before
    it, and over NATS the router it came from.

    `seq` counts up per plugin and router; a gap in it is events this subscription missed: ones it
    did not subscribe to, `dropped` ones (it did not keep up), or a restart of the plugin (which
    skips one). Events from several routers (NATS, no `router=`) each have their own sequence.
    """

    name: str
    data: Any
    seq: int
    dropped: int = 0
    router: str | None = None
    """The router that published it, over NATS; None on a router's own socket."""

    @property
    def plugin(self) -> str:
        """The plugin that emitted it: the name's first token."""
        return self.name.partition(".")[0]

    def to_json(self) -> dict[str, Any]:
        """The event as the router sent it, without the subscription's id (`dropped` only when some were)."""
        out = {"name": self.name, "data": self.data, "seq": self.seq}
        if self.dropped:
            out["dropped"] = self.dropped
        if self.router is not None:
            out["router"] = self.router
        return out


class Subscription:
    """Events matching some patterns, on one client's connection: an async context manager and iterator."""

    def __init__(self, client: Client, patterns: tuple[str, ...], maxsize: int = MAXSIZE) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.client = client
        self.patterns = patterns
        self.maxsize = maxsize
        self.id: int | None = None
        """The router's number for it, once subscribed."""
        self._conn: _Connection | None = None
        self._events: deque[Event] = deque()
        self._missed = 0
        """Dropped here since the last event the reader took: added to the next one's `dropped`."""
        self._waiter: asyncio.Future[None] | None = None
        self._ended: BaseException | None = None

    def __repr__(self) -> str:
        return f"<Subscription {self.id} {list(self.patterns)!r} waiting={len(self._events)}>"

    async def __aenter__(self) -> Subscription:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        """The next event; StopAsyncIteration once closed, ConnectionLost if the connection goes."""
        while not self._events:
            if self._ended is not None:
                if isinstance(self._ended, StopAsyncIteration):
                    raise StopAsyncIteration
                raise self._ended
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._events.popleft()

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

    # --- fed by the connection -------------------------------------------------------------

    def _put(self, params: dict[str, Any]) -> None:
        """An `rpc.event`'s params for this subscription."""
        dropped = params.get("dropped", 0)
        if len(self._events) >= self.maxsize:
            self._missed += 1 + dropped
            return
        self._events.append(Event(params["name"], params.get("data"), params["seq"], dropped + self._missed,
                                  params.get("router")))
        self._missed = 0
        self._wake()

    def _end(self, why: BaseException) -> None:
        """No more events: closed (StopAsyncIteration) or the connection was lost."""
        if self._ended is None:
            self._ended = why
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
