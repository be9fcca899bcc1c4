"""Write coalescing: everything queued during one event-loop callback leaves in one write per transport.

A router handling a chunk of 50 pipelined requests would otherwise make 50 `write` system
calls to the plugin, and 50 more back to the client. Protocols `queue` bytes and register with
the shared `Outbox`; whoever runs the callback (`data_received`, the timeout sweep, a task's
completion) calls `flush()` once at its end.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Writer(Protocol):
    """Something with bytes waiting for its transport."""

    def flush(self) -> None: ...


class Outbox:
    """The writers that have bytes queued in the current callback."""

    __slots__ = ("dirty",)

    def __init__(self) -> None:
        self.dirty: list[Writer] = []

    def flush(self) -> None:
        """Write out every queued writer; called once at the end of each callback."""
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
        """Add an encoded line; it goes out when the current callback flushes the outbox."""
        out = self._out
        if not out:
            self.outbox.dirty.append(self)
        out.append(line)

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        self._out = []
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
