"""Write coalescing: everything queued during one event-loop turn leaves in one write per transport.

A router handling 64 clients' requests would otherwise make one `write` system call to the
plugin per request (or per client chunk), and as many back. Protocols `queue` bytes; the first
line queued in a turn schedules one `flush` with `call_soon`, which runs after every I/O
callback of the turn: requests from all clients go to a plugin in one write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol


class Writer(Protocol):
    """Something with bytes waiting for its transport."""

    def flush(self) -> None: ...


class Outbox:
    """The writers that have bytes queued in the current event-loop turn.

    Adaptive: when the last turn ran a single callback there is nothing to coalesce with, so
    `done()` writes at once (lowest latency for one caller); when turns run several callbacks
    (many clients), writes wait for the end of the turn and leave together (most throughput).
    """

    __slots__ = ("dirty", "_scheduled", "_callbacks", "_eager", "_call_soon")

    def __init__(self) -> None:
        self.dirty: list[Writer] = []
        self._scheduled = False
        self._callbacks = 0
        self._eager = True
        # Looked up once, on first use (an Outbox may be made before its loop runs): every
        # asyncio.get_running_loop() costs a getpid() system call.
        self._call_soon: Callable[[Callable[[], None]], object] | None = None

    def add(self, writer: Writer) -> None:
        """`writer` has its first line of this turn: make sure a flush runs at the end of the turn."""
        self.dirty.append(writer)
        if not self._scheduled:
            self._scheduled = True
            call_soon = self._call_soon
            if call_soon is None:
                call_soon = self._call_soon = asyncio.get_running_loop().call_soon
            call_soon(self._end_of_turn)

    def done(self) -> None:
        """A protocol callback finished: write now if this loop is not busy enough to coalesce."""
        self._callbacks += 1
        if self._eager and self.dirty:
            self.flush()

    def _end_of_turn(self) -> None:
        self._scheduled = False
        self._eager = self._callbacks <= 1
        self._callbacks = 0
        self.flush()

    def flush(self) -> None:
        """Write out every queued writer."""
        while self.dirty:
            dirty, self.dirty = self.dirty, []
            for writer in dirty:
                writer.flush()


class LineWriter:
    """Base for protocols that send lines: `queue` now, one `transport.write` at flush time."""

    __slots__ = ()
    transport: asyncio.WriteTransport | None
    outbox: Outbox
    _out: list[bytes]

    def queue(self, line: bytes) -> None:
        """Add an encoded line; it goes out with the others when the turn's flush runs."""
        out = self._out
        if not out:
            self.outbox.add(self)
        out.append(line)

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
