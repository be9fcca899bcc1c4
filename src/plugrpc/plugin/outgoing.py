"""What a plugin says of its own accord: events, progress of the call it serves, calls to other plugins.

    plugrpc.emit("port.added", {"port": "eth1"})    # from anywhere: a handler, a task, a thread
    plugrpc.progress(0.5)                            # inside a handler: for the call it serves
    await plugrpc.call("other.method", {...})        # inside an async handler: through the router

On the wire (docs/design.md, "Events, progress and calls from plugins") an event is an `rpc.event`
notification on a connection the router opened, progress an `rpc.progress` notification with
the request's id on the connection the request came on, and a call a request to the router's
front socket (`$PLUGRPC_ROUTER`), as any client makes.

The SDK knows the call a handler serves without asking anything of the handler: an async or
threaded one runs with `CURRENT` set in its task's context (and copied to its thread), and an
inline one, which runs synchronously inside its connection's `data_received`, finds it in
`INLINE`: the connection sets `INLINE.conn` once per chunk, dispatch `INLINE.id` per call (one
attribute store: a context variable set and reset would cost the inline path ~10%).

The client behind `call` is imported and connected on the first call: a plugin that never calls
another loads none of it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar

from ..patterns import name_problem
from ..wire import ABSENT, dumps

TYPE_CHECKING = False  # typing's, without importing typing: a plugin loads these modules (see plugin/plain.py)
if TYPE_CHECKING:
    import asyncio
    from typing import Any, Final, Protocol

    from ..client.aio import Client

    class Sender(Protocol):
        """A connection of the plugin's server: `send` queues a line for the loop turn's write."""

        def send(self, line: bytes) -> None: ...

    class Loop(Protocol):
        """What the plugin's server runs on: an asyncio loop, or the plain engine's (plugin/plain.py)."""

        def call_soon_threadsafe(self, callback: Callable[[bytes], None], line: bytes, /) -> object: ...

__all__ = ["call", "emit", "progress"]

log = logging.getLogger("plugrpc.outgoing")

PENDING_LIMIT: Final = 1000
"""Events kept while no connection from the router is open yet (at start); older ones are dropped."""


class Current:
    """The call a handler serves: the connection its request came on and the request's id."""

    __slots__ = ("conn", "id")

    def __init__(self, conn: Sender, id: Any) -> None:
        self.conn = conn
        self.id = id


CURRENT: ContextVar[Current | None] = ContextVar("plugrpc_current_call", default=None)
"""The call of an async or threaded handler, in its task's context."""


class _Inline:
    """The call of the inline (sync) handler running now, if any: valid only on the loop's thread."""

    __slots__ = ("conn", "id")

    def __init__(self) -> None:
        self.conn: Sender | None = None
        """Set by a connection while it dispatches a chunk of requests, None otherwise."""
        self.id: Any = ABSENT
        """Set by dispatch before each inline handler runs."""


INLINE: Final = _Inline()


class _Plugin:
    """The serving plugin as emit/progress/call see it: its loop and the connection events leave on."""

    __slots__ = ("loop", "thread", "events_conn", "pending", "dropped", "client", "client_loop")

    def __init__(self) -> None:
        self.loop: Loop | None = None
        self.thread = 0
        """The loop's thread: everything is written from there."""
        self.events_conn: Sender | None = None
        """The connection events go out on (the router keeps one open); None before the first one."""
        self.pending: deque[bytes] = deque()
        self.dropped = 0
        self.client: Client | None = None
        """The connection of `call` to the router, opened on the first call..."""
        self.client_loop: asyncio.AbstractEventLoop | None = None
        """...on this loop (a client cannot move between loops)."""

    def on_loop(self) -> bool:
        return self.loop is not None and threading.get_ident() == self.thread

    def post(self, fn: Callable[[bytes], None], line: bytes) -> None:
        """Run `fn(line)` on the loop's thread: now if this is it, else as soon as the loop can."""
        if self.on_loop():
            fn(line)
            return
        loop = self.loop
        if loop is None:
            self.keep(line)
            return
        try:
            loop.call_soon_threadsafe(fn, line)
        except RuntimeError:  # the loop is closed: the plugin is exiting, nobody will read it
            pass

    def send_event(self, line: bytes) -> None:
        if self.events_conn is not None:
            self.events_conn.send(line)
        else:
            self.keep(line)

    def keep(self, line: bytes) -> None:
        """An event before any connection from the router: kept (boundedly) until one comes."""
        if len(self.pending) >= PENDING_LIMIT:
            self.pending.popleft()
            self.dropped += 1
            if self.dropped == 1:
                log.warning("no connection from the router yet: dropping the oldest events (more than %d waiting)",
                            PENDING_LIMIT)
        self.pending.append(line)


PLUGIN: Final = _Plugin()


# --- the plugin's server tells us where to write ------------------------------------------------


def attach(loop: Loop) -> None:
    """`serve()` runs on `loop`: events and progress are written from its thread from now on."""
    PLUGIN.loop = loop
    PLUGIN.thread = threading.get_ident()


def opened(conn: Sender) -> None:
    """A connection from the router: the first one carries events, and what waited for one."""
    if PLUGIN.events_conn is None:
        PLUGIN.events_conn = conn
        while PLUGIN.pending:
            conn.send(PLUGIN.pending.popleft())


def closed(conn: Sender, others: Callable[[], Sender | None]) -> None:
    """A connection closed: if events went out on it, they go on another one (`others()`), if any."""
    if PLUGIN.events_conn is conn:
        PLUGIN.events_conn = None
        other = others()
        if other is not None:
            opened(other)


def release() -> Client | None:
    """`serve()` is ending: nothing is written any more; the client of `call`, if one was opened, to close."""
    client, PLUGIN.client, PLUGIN.client_loop = PLUGIN.client, None, None
    PLUGIN.loop, PLUGIN.events_conn = None, None
    return client


async def detach() -> None:
    """`release()`, and close the client of `call` (only async handlers call: the asyncio engine's end)."""
    client = release()
    if client is not None:
        await client.close()


# --- the public functions -------------------------------------------------------------------------


def emit(name: str, data: Any = None) -> None:
    """Emit event `name` with `data`, to every client that subscribed to it; safe from any thread.

    `name` is dotted tokens (`"port.added"`); subscribers see it as `PLUGIN.port.added`. The
    manifest's `events` must declare it, else the router drops it (and logs it once). Returns at
    once: the event leaves with the loop's next write. Raises ValueError for a bad name and
    TypeError for data JSON cannot hold.
    """
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    PLUGIN.post(PLUGIN.send_event, dumps({"jsonrpc": "2.0", "method": "rpc.event",
                                          "params": {"name": name, "data": data}}))


def progress(value: Any) -> None:
    """Report `value` (any JSON) as the progress of the call this handler serves; safe from its thread.

    The router passes it to the caller if the caller asked for progress, and drops it otherwise
    or once the call is answered. Raises RuntimeError outside a handler.
    """
    current = CURRENT.get()
    if current is not None:
        conn, id = current.conn, current.id
    elif (conn := INLINE.conn) is not None and PLUGIN.on_loop():  # type: ignore[assignment]
        id = INLINE.id
    else:
        raise RuntimeError("plugrpc.progress() reports on the call a handler serves: call it inside the handler "
                           "(plain, async or @threaded), not from another task or thread")
    if id is not ABSENT:  # else a notification: nobody waits for it
        line = dumps({"jsonrpc": "2.0", "method": "rpc.progress", "params": {"id": id, "value": value}})
        PLUGIN.post(conn.send, line)


async def call(method: str, params: Any = None, *, timeout: float | None = None) -> Any:
    """Call `method` ("plugin.method") of any plugin through the router, as a client does; return its result.

    One connection to the router (`$PLUGRPC_ROUTER`, which `plugrpc run` sets) is shared by the
    whole process and opened on the first call. The target's exports, bounds and timeout apply;
    errors raise `plugrpc.RpcError` as `Client.raw` does.
    """
    import asyncio  # only async handlers call: the asyncio engine has it loaded

    client = PLUGIN.client
    loop = asyncio.get_running_loop()
    if client is None or PLUGIN.client_loop is not loop:
        from ..client.aio import Client  # here, not at the top: a plugin that never calls loads no client

        client = PLUGIN.client = Client()
        PLUGIN.client_loop = loop
    return await client.raw(method, params, timeout=timeout)
