"""The asyncio engine of `plugrpc.serve`: for plugins with async or `@threaded` commands.

Plain sync commands run inline on the loop (no task: the fast path); async ones get a task each,
so a slow call never holds up a fast one on the same connection; threaded ones run in the
loop's default executor. A plugin whose commands are all plain runs on `plugin/plain.py`
instead, which loads no asyncio.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import socket
from typing import TYPE_CHECKING, Any, cast

from ..flow import FlowControl
from ..outbox import LineWriter, Outbox
from ..sockets import BACKLOG, hung_up
from ..wire import ABSENT
from . import outgoing
from .answering import CANCEL, Answerer, check_cancel_id, events_connection
from .direct import FIGURES
from .dispatch import Handler, encode
from .lifecycle import FLUSH_TIMEOUT, announce, start_up_failure
from .outgoing import CURRENT, Current

if TYPE_CHECKING:
    from collections.abc import Callable

    from .dispatch import Outcome, Pending, Response

log = logging.getLogger("plugrpc.sdk")


class AsyncServer:
    """Owns the listening socket, the open connections, and graceful shutdown, on an asyncio loop."""

    def __init__(self, table: dict[str, Handler], max_line: int, on_start: Callable[[], Any] | None = None) -> None:
        self.table = table
        self.max_line = max_line
        self.on_start = on_start
        self.connections: set[Connection] = set()
        self.closing = False
        self.outbox = Outbox()
        self._stop = asyncio.Event()

    async def serve(self, sock: socket.socket) -> None:
        """Startup, main loop (wait for a signal), shutdown: read top to bottom."""
        loop = asyncio.get_running_loop()
        await self._start_up()
        # Keep the backlog the runtime listened with: asyncio would listen again with only 100.
        outgoing.attach(loop)
        server = await loop.create_unix_server(lambda: Connection(self), sock=sock, backlog=BACKLOG)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        announce(self.table)
        try:
            await self._stop.wait()
            server.close()
            await self._shutdown()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await outgoing.detach()

    async def _start_up(self) -> None:
        """Run `on_start`, plain or async; a failure ends the plugin (exit status 1)."""
        if self.on_start is not None:
            with start_up_failure():
                outcome = self.on_start()
                if inspect.isawaitable(outcome):
                    await outcome

    def _on_signal(self, signum: int) -> None:
        if not self._stop.is_set():
            log.info("%s: finishing in-flight calls, then exiting", signal.Signals(signum).name)
            self._stop.set()
        else:
            log.warning("%s again: cancelling in-flight calls", signal.Signals(signum).name)
            for conn in self.connections:
                conn.cancel_all()

    async def _shutdown(self) -> None:
        """No new connections or requests; wait for in-flight calls; flush and close."""
        self.closing = True
        for conn in self.connections:
            conn.flow.close()
        in_flight = [task for conn in self.connections for task in conn.running.values()]
        if in_flight:
            log.info("waiting for %d in-flight calls", len(in_flight))
            await asyncio.wait(in_flight)
        conns = list(self.connections)
        for conn in conns:
            conn.close()
        closed = [conn.closed for conn in conns]
        if closed:
            _, late = await asyncio.wait(closed, timeout=FLUSH_TIMEOUT)
            for conn in conns:
                if not conn.closed.done():
                    conn.abort()
            if late:
                await asyncio.wait(late)


class Connection(LineWriter, asyncio.Protocol):
    """One peer (usually the router): pipelined requests in, responses out in completion order."""

    def __init__(self, server: AsyncServer) -> None:
        # Global state
        self._server = server
        self._loop = asyncio.get_running_loop()
        self.outbox = server.outbox
        # Per-connection state
        self.transport: asyncio.Transport | None = None
        self.flow = FlowControl()
        """Why the peer is not being read: it does not read our answers, or we are shutting down."""
        self.answerer = Answerer({**server.table, CANCEL: Handler(CANCEL, self._cancel)}, server.max_line)
        self._out: list[bytes] = []
        self.running: dict[Any, asyncio.Task[None]] = {}
        """Tasks of async/threaded calls, by request id (a fresh key for notifications and batches)."""
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.draining = False
        """Set when a peer half-closes with calls running: close once they are answered."""
        # Direct-connection state (see plugin/direct.py), set by rpc.direct
        self.max_inflight = 0
        """Calls that may run at once on this direct connection (0: no bound)."""
        self.slots: asyncio.Semaphore | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's methods but not its class.
        self.transport = self.flow.transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)
        if self._server.closing:
            self.flow.close()
        outgoing.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        connections = self._server.connections
        connections.discard(self)
        self.answerer.end()
        outgoing.closed(self, lambda: events_connection(connections))
        # Nobody is left to read these answers (the router sends rpc.cancel for the same reason).
        # EOF counts too: a half-close looks the same as a peer gone, and a gone peer's calls must end.
        self.cancel_all()
        if not self.closed.done():
            self.closed.set_result(None)

    def eof_received(self) -> bool:
        """The peer stopped writing: after a half-close, finish and answer what it asked, then close.

        After a full close nobody reads, and `connection_lost` cancels its calls. A last request
        without its newline counts, as a line ended by the end of input.
        """
        if self.answerer.splitter.buffered:
            self.data_received(b"\n")
        if not self.running or self.transport is None or hung_up(self.transport.get_extra_info("socket").fileno()):
            return False
        self.draining = True
        return True

    def data_received(self, data: bytes) -> None:
        answers, too_long = self.answerer.answer(data, self, self._start)
        # Everything answered inline while handling this chunk leaves in one write, at once:
        # nothing else can join it (answers of async handlers are queued, see outbox.py).
        if answers:
            self.write_now(answers)
        if too_long:
            self.close()

    def pause_writing(self) -> None:
        # Backpressure: a peer that does not read our responses gets no new requests read.
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def close(self) -> None:
        """Send what is buffered, then close (the transport flushes before it closes)."""
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def cancel_all(self) -> None:
        for task in self.running.values():
            task.cancel()

    def _start(self, pending: Outcome, id: Any) -> None:
        if self.answerer.direct is not None:
            pending = self._direct(pending)  # type: ignore[arg-type]
        key = id if id is not ABSENT and id not in self.running else object()
        self.running[key] = self._loop.create_task(self._complete(pending, key, id))

    async def _complete(self, pending: Any, key: Any, id: Any) -> None:
        CURRENT.set(Current(self, id))  # in this task's context only: the call plugrpc.progress reports on
        try:
            outcome = await pending
        finally:
            del self.running[key]
        if outcome is not None:
            self.send(encode(outcome))
        if self.draining and not self.running:  # a half-closed peer has had every answer
            self.close()

    def make_direct(self, exports: list[str], max_inflight: int) -> None:
        """`rpc.direct` came on this connection: bind it to `exports` and `max_inflight`; events leave elsewhere."""
        self.answerer.make_direct(exports)
        self.max_inflight = max_inflight
        if max_inflight:
            self.slots = asyncio.Semaphore(max_inflight)
        outgoing.closed(self, lambda: events_connection(self._server.connections))

    def _direct(self, pending: Pending) -> Pending:
        """A call on a direct connection: at its bound, reading stops (backpressure) until a call finishes."""
        if self.max_inflight and len(self.running) + 1 >= self.max_inflight:
            self.flow.too_many()
        return self._direct_call(pending)

    async def _direct_call(self, pending: Pending) -> Response | list[Response] | None:
        """Run the call once a slot is free (a chunk may carry more calls than the bound), and count it."""
        try:
            if self.slots is None:
                outcome = await pending
            else:
                async with self.slots:
                    outcome = await pending
        finally:
            pending.close()  # cancelled while waiting for a slot: it never started, and must not warn so
            if len(self.running) <= self.max_inflight:  # this call is still in `running`
                self.flow.few_enough()
        FIGURES.count(outcome)
        return outcome

    def send(self, line: bytes) -> None:
        """Queue a line (an async completion, an event, progress); those of one loop turn leave in one write."""
        if self.transport is not None and not self.transport.is_closing():
            self.queue(line)

    def _cancel(self, id: Any) -> bool:
        """`rpc.cancel`: the router gave up on request `id`; stop its task if it still runs."""
        check_cancel_id(id)
        task = self.running.get(id)
        if task is None:
            return False
        task.cancel()
        return True
