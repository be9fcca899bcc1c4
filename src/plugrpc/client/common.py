"""What the socket and NATS clients share: the closed-client message, progress callbacks, the error
of an error response, and events with the transport-neutral part of a subscription.

    async with client.subscribe("ovs.port.*", "demo.>") as events:
        async for ev in events:          # Event(name="ovs.port.added", data={...}, seq=7, dropped=0)
            ...

A subscription keeps at most `maxsize` events its reader has not taken yet; what overflows is
dropped and counted into the next event's `dropped`, as the router counts what it drops, so a
reader that falls behind never stops the connection: the answers to its calls keep coming. How
a subscription starts and ends is its transport's (client/events.py on the router's socket,
client/nats.py over NATS).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, NamedTuple, Self

from jsonrpcclient.responses import to_response

from .. import codes
from ..errors import RpcError, rpc_error

CLOSED: Final = "the client is closed"
MAXSIZE: Final = 10_000
"""Events a subscription keeps for its reader by default before it drops (and counts) newer ones."""

Progress = Callable[[Any], Any]
"""`raw(..., progress=fn)`: called with each value the plugin reports (an awaitable it returns is run)."""


def response_error(msg: dict[str, Any]) -> RpcError:
    """The exception for an error response. A malformed one fails its own call (-32603), not the connection."""
    error = msg.get("error")
    if type(error) is dict and type(error.get("code")) is int and type(error.get("message")) is str:
        return rpc_error(to_response(msg)._asdict())
    return RpcError(codes.INTERNAL_ERROR, codes.MESSAGES[codes.INTERNAL_ERROR],
                    f"the peer sent a malformed response: {msg!r:.300}")


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
    """Events matching some patterns: an async context manager and iterator over what its transport feeds it.

    A transport's subscription implements `start` and `close` and feeds `_put` and `_end`.
    """

    def __init__(self, patterns: tuple[str, ...], maxsize: int = MAXSIZE) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.patterns = patterns
        self.maxsize = maxsize
        self.id: int | None = None
        """The router's number for it, once subscribed (on a router's socket)."""
        self._events: deque[Event] = deque()
        self._missed = 0
        """Dropped here since the last event the reader took: added to the next one's `dropped`."""
        self._waiter: asyncio.Future[None] | None = None
        self._ended: BaseException | None = None

    def __repr__(self) -> str:
        return f"<Subscription {self.id} {list(self.patterns)!r} waiting={len(self._events)}>"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> Self:
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
        """Subscribe; raises RpcError (-32602) naming a bad pattern."""
        raise NotImplementedError

    async def close(self) -> None:
        """Unsubscribe; iterating then ends once the events already here are taken."""
        raise NotImplementedError

    # --- fed by the transport --------------------------------------------------------------

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
