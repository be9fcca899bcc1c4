"""The contract between the router's parts, in one module (as httpcore's `interfaces.py`).

A request from a client becomes a `Call`, routed to a `Target` (a plugin's pool, an exec
plugin, the built-ins); its answer goes back to the call's `Sink` (a client connection, a
batch, or a future of the router's own). The front connection sees the router only as a
`Dispatch`. Nothing here does I/O, and no part imports another's module to reach the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from ..outbox import Outbox
    from .stats import CallStats

Message = dict[str, Any]
"""A JSON-RPC 2.0 message as parsed: the router passes params and results through untouched."""
clock = time.monotonic
"""The clock of calls. Not `loop.time()`: uvloop's is cached per loop turn at 1 ms resolution."""
INTERNAL: Final[Any] = object()
"""`Call.id` of a call the router makes itself (a ping, `rpc.discover`): not counted in statistics."""


class Call:
    """One request in flight through the router. `sink` is None once the call has finished.

    `uid` and `link` are set when a pool writes the call to one of its connections: the id the
    plugin sees, and the connection that alone can answer it.
    """

    __slots__ = ("sink", "id", "method", "params", "started", "target", "uid", "link")

    def __init__(self, sink: Sink, id: Any, method: str, params: Any, started: float) -> None:
        self.sink: Sink | None = sink
        self.id = id
        self.method = method
        self.params = params
        self.started = started
        self.target: Target | None = None
        self.uid = 0
        self.link: Link | None = None

    def __repr__(self) -> str:
        return f"<Call {self.method!r} id={self.id!r} uid={self.uid}{' done' if self.sink is None else ''}>"

    def finish(self, msg: Message) -> bool:
        """Deliver `msg`, the answer, unless the call has finished already (answered, or its caller gone).

        The sink is taken before it is told, so that whatever the delivery sets off sees the call
        finished and can never answer it twice. False: there was nobody to answer.
        """
        sink = self.sink
        if sink is None:
            return False
        self.sink = None
        sink.deliver(self, msg)
        return True


class Sink(Protocol):
    """Where answers go: a client connection, one batch of it, or a future of the router's own."""

    def track(self, call: Call) -> None:
        """`call` is now in flight for this sink (it may be cancelled if the client goes)."""

    def deliver(self, call: Call, msg: Message) -> None:
        """The answer to `call`, which is finished; `msg["id"]` is the caller's to restore."""

    def reply(self, msg: Message) -> None:
        """An answer the router made itself, for a request that never became a call."""

    def cancel(self, id: Any) -> bool:
        """The client gave up on its own call `id` (`rpc.cancel`): stop it; False if none is in flight."""


Handle = Callable[[Any, Sink], None]
"""Routes one parsed request object, its answer to the sink: `Dispatch.handle`, or a narrower one."""


class Link(Protocol):
    """A connection to a plugin that a written call is waiting on."""

    def withdraw(self, call: Call, now: float) -> bool:
        """Stop waiting for `call` and ask the plugin to drop it; False if it was already answered."""


class Target(Protocol):
    """Anything calls can be routed to: a plugin pool, an exec plugin, the built-ins."""

    exported: frozenset[str]
    """The methods callers may reach: the router's fast path checks membership and nothing else."""

    def submit(self, call: Call) -> None:
        """Take `call`; its answer goes to `call.sink` now or later, exactly once."""

    def notify(self, method: str, params: Any, sink: Sink) -> None:
        """A request without an id from the client behind `sink`: no answer, ever."""

    def cancel(self, call: Call) -> None:
        """The caller of `call` is gone: drop it without answering."""


class PluginTarget(Target, Protocol):
    """A target backed by a plugin (pool or exec): it has calls to drain, fail and report."""

    stats: CallStats
    """Its calls counted: what `router.stats` and the metrics read."""

    def busy(self) -> int:
        """Calls written or waiting: what a drain waits for."""

    def sweep(self, now: float) -> int:
        """Time out what is overdue; return the calls finished so far (for the idle heuristics)."""

    def fail_all(self, reason: str) -> None:
        """Answer every call -32001 with `reason` (the plugin was given up on, or shutdown)."""

    def status(self) -> dict[str, Any]:
        """Figures for `router.plugins` and `router.stats`."""

    async def aclose(self) -> None:
        """Close connections and stop executions; called once calls have drained."""


class Peer(Protocol):
    """A client connection as the server sees it at shutdown."""

    def close(self) -> None: ...


class Dispatch(Protocol):
    """What a front connection needs of the router: a request in, a cancellation, shared state."""

    outbox: Outbox
    clients: set[Peer]

    def handle(self, msg: Any, sink: Sink) -> None:
        """Route one parsed request object; its answer reaches `sink`."""

    def cancel(self, call: Call) -> None:
        """The client of `call` went away or gave up on it."""

    def handler_for(self, sock: Any) -> Handle:
        """What routes the requests of a client just connected on `sock` (a plugin's own: less)."""
