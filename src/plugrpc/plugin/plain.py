"""The plain engine of `plugrpc.serve`: plugins whose commands are all plain functions, without asyncio.

Such a plugin answers every request inline, so it needs no event loop, tasks or executor: one
thread, a `selectors` loop over its listening socket and connections, and the same requests
(`answering.Answerer`), writers (`outbox.LineWriter`, one write per loop turn) and flow control
(`flow.FlowControl`) as the asyncio engine. It starts in about half the CPU time and runs in
about 6 MB less memory (asyncio, with the ssl it loads, is most of an idle plugin), which is
what a host running a hundred plugins pays for. `plugrpc.emit` from the plugin's own threads
and `plugrpc.progress` work as on the asyncio engine; a command that needs an event loop
(`asyncio.get_running_loop()`) asks for one with `serve(..., loop="asyncio")`.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from collections import deque

from ..flow import FlowControl
from ..outbox import LineWriter, Outbox
from ..sockets import hung_up
from . import outgoing
from .answering import CANCEL, Answerer, check_cancel_id, events_connection
from .dispatch import Handler
from .lifecycle import FLUSH_TIMEOUT, announce, start_up_failure

TYPE_CHECKING = False  # typing's, without importing typing: a plugin loads these modules (see plugin/plain.py)
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Mapping
    from typing import Any

    from .dispatch import Pending

log = logging.getLogger("plugrpc.sdk")

READ_SIZE = 256 * 1024
"""Bytes read at once from a connection."""


class PlainServer:
    """Owns the listening socket, the connections and the loop; `serve()` returns after a graceful shutdown."""

    def __init__(self, table: Mapping[str, Handler], max_line: int, on_start: Callable[[], Any] | None = None) -> None:
        self.table = {**table, CANCEL: Handler(CANCEL, _cancel)}
        self.max_line = max_line
        self.on_start = on_start
        self.selector = selectors.DefaultSelector()
        self.connections: set[PlainConnection] = set()
        self.outbox = Outbox(self.call_soon)
        self._soon: deque[Callable[[], None]] = deque()
        """Callbacks for the end of this loop turn (the outbox's flush)."""
        self._posted: deque[tuple[Callable[[bytes], None], bytes]] = deque()
        """Lines other threads hand over (`plugrpc.emit` from a thread), written from the loop's thread."""
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signals = 0

    # --- outgoing.Loop, and the outbox's end of turn ---------------------------------------------

    def call_soon_threadsafe(self, callback: Callable[[bytes], None], line: bytes, /) -> None:
        self._posted.append((callback, line))
        self._wake()

    def call_soon(self, callback: Callable[[], None]) -> None:
        self._soon.append(callback)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:  # the pipe is full: the loop is awake already
            pass

    # --- the loop ----------------------------------------------------------------------------

    def serve(self, sock: socket.socket) -> None:
        """Startup, main loop (until a signal), shutdown: read top to bottom."""
        if self.on_start is not None:
            with start_up_failure():
                self.on_start()
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, lambda mask: self._accept(sock))
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._woken)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
        outgoing.attach(self)
        announce(self.table)
        try:
            while not self._signals:
                self._turn(None)
            self.selector.unregister(sock)
            self._shutdown()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            outgoing.release()
            self.selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _turn(self, timeout: float | None) -> None:
        """One loop turn: what is ready, then what other threads handed over, then the turn's writes."""
        for key, mask in self.selector.select(timeout):
            key.data(mask)
        while self._posted:
            callback, line = self._posted.popleft()
            callback(line)
        while self._soon:
            self._soon.popleft()()

    def _accept(self, sock: socket.socket) -> None:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # out of file descriptors, say: the peer waits in the backlog
            log.warning("cannot accept a connection: %s", exc)
            return
        PlainConnection(self, conn)

    def _woken(self, mask: int) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: answering what was read, then exiting", signal.Signals(signum).name)
        self._wake()

    def _shutdown(self) -> None:
        """No new connections or requests; flush every connection (bounded), then close them all."""
        for conn in list(self.connections):
            conn.flow.close()
            conn.close()
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while self.connections and self._signals < 2 and (left := deadline - time.monotonic()) > 0:
            self._turn(left)
        for conn in list(self.connections):
            conn.abort()


class PlainConnection(LineWriter):
    """One peer (usually the router) of a `PlainServer`: it is its own transport for the writer and the
    flow control, buffering what the socket does not take at once and pausing reads meanwhile."""

    __slots__ = ("server", "sock", "outbox", "transport", "flow", "answerer", "_out", "_unsent", "_closing",
                 "_closed", "_events")

    def __init__(self, server: PlainServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.outbox = server.outbox
        self.transport = self
        self.flow = FlowControl()
        self.flow.transport = self
        self.answerer = Answerer(server.table, server.max_line)
        self._out: list[bytes] = []
        self._unsent = bytearray()
        """What the socket did not take yet: written before anything else, as the kernel lets us."""
        self._closing = False
        self._closed = False
        self._events = selectors.EVENT_READ
        sock.setblocking(False)
        server.selector.register(sock, self._events, self._ready)
        server.connections.add(self)
        outgoing.opened(self)

    def _ready(self, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self._drain()
            if mask & selectors.EVENT_READ and not self._closed:
                self._read()
        except Exception:  # a bug of ours: this connection ends, the plugin and its other connections go on
            log.exception("closing a connection after an error in the plain engine")
            self.abort()

    def _read(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the peer stopped writing
            self._ended()
            return
        answers, too_long = self.answerer.answer(data, self, _no_tasks)
        if answers:
            self.write_now(answers)
        if too_long:
            self.close()

    def _ended(self) -> None:
        """End of input: a peer that half-closed still reads, so it gets its answers (every call is answered
        inline before the next read, a last line without its newline included); one that closed gets nothing."""
        if hung_up(self.sock.fileno()):
            self.abort()
            return
        if self.answerer.splitter.buffered:
            answers, _ = self.answerer.answer(b"\n", self, _no_tasks)
            if answers:
                self.write_now(answers)
        self.close()

    # --- the transport interface (LineWriter, FlowControl) --------------------------------

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        if self._unsent:
            self._unsent += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.abort()
            return
        if sent < len(data):
            self._unsent += memoryview(data)[sent:]
            self._watch(selectors.EVENT_WRITE, True)
            self.flow.pause_writing()  # a peer that does not read our answers gets no new requests read

    def is_closing(self) -> bool:
        return self._closing or self._closed

    def pause_reading(self) -> None:
        self._watch(selectors.EVENT_READ, False)

    def resume_reading(self) -> None:
        self._watch(selectors.EVENT_READ, True)

    def _watch(self, event: int, on: bool) -> None:
        """Watch for `event` or stop; a socket watched for nothing is not registered at all."""
        before = self._events
        events = before | event if on else before & ~event
        if events == before or self._closed:
            return
        self._events = events
        selector = self.server.selector
        if not before:
            selector.register(self.sock, events, self._ready)
        elif events:
            selector.modify(self.sock, events, self._ready)
        else:
            selector.unregister(self.sock)

    def _drain(self) -> None:
        try:
            sent = self.sock.send(self._unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        del self._unsent[:sent]
        if not self._unsent:
            self._watch(selectors.EVENT_WRITE, False)
            if self._closing:
                self.abort()
            else:
                self.flow.resume_writing()

    def make_direct(self, exports: list[str], max_inflight: int) -> None:
        """`rpc.direct` came on this connection: bind it to `exports`; events leave on another one. Each call
        here is answered before the next request is read, so one runs at a time, within any `max_inflight`."""
        self.answerer.make_direct(exports)
        outgoing.closed(self, lambda: events_connection(self.server.connections))

    # --- outgoing.Sender, and the end ------------------------------------------------------------

    def send(self, line: bytes) -> None:
        """Queue a line (an event, progress); those of one loop turn leave in one write."""
        if not self.is_closing():
            self.queue(line)

    def close(self) -> None:
        """Write what is queued and unsent, then close."""
        self.flush()
        self._closing = True
        if not self._unsent:
            self.abort()

    def abort(self) -> None:
        """Close at once."""
        if self._closed:
            return
        self._closed = True
        if self._events:
            self.server.selector.unregister(self.sock)
            self._events = 0
        self.sock.close()
        connections = self.server.connections
        connections.discard(self)
        self.answerer.end()
        outgoing.closed(self, lambda: events_connection(connections))


def _cancel(id: Any) -> bool:
    """`rpc.cancel` on the plain engine: every call was answered before the next request was read."""
    check_cancel_id(id)
    return False


def _no_tasks(pending: Pending, id: Any) -> None:  # pragma: no cover - serve() picks this engine only then
    pending.close()
    raise AssertionError("the plain engine serves plain commands only")

