"""Write coalescing: lines that can be joined leave in one write per transport per event-loop turn.

A router handling 64 clients' requests would otherwise make one `write` system call to the
plugin per request, and as many back. Two ways out, and the writer picks:

- `queue(line)` when other lines may join this one before the loop turn ends (other calls are
  in flight): the first line queued in a turn schedules one `Outbox` flush with `call_soon`,
  which runs after every I/O callback of the turn, so requests from all clients go to a plugin
  in one write.
- `write_now(line)` when nothing can join it (the only call in flight): waiting for the end of
  the turn would buy nothing and cost a scheduled callback, so a lone caller gets the lowest
  latency and the least CPU per call.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing's, without importing typing: a plugin loads these modules (see plugin/plain.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol

    class Transport(Protocol):
        """What a writer writes to: an asyncio transport, or a plugin's plain engine's connection."""

        def write(self, data: bytes) -> None: ...

        def is_closing(self) -> bool: ...

    class Writer(Protocol):
        """Something with bytes waiting for its transport."""

        def flush(self) -> None: ...


class Outbox:
    """The writers that have lines queued in the current event-loop turn."""

    __slots__ = ("dirty", "_scheduled", "_call_soon")

    def __init__(self, call_soon: Callable[[Callable[[], None]], object] | None = None) -> None:
        self.dirty: list[Writer] = []
        self._scheduled = False
        self._call_soon = call_soon
        """How the end of the turn is scheduled: the running asyncio loop's `call_soon` unless given
        (a plugin's plain engine has no asyncio loop), looked up once, on first use (an Outbox may be
        made before its loop runs): every asyncio.get_running_loop() costs a getpid() system call."""

    def add(self, writer: Writer) -> None:
        """`writer` has its first line of this turn: make sure a flush runs at the end of the turn."""
        self.dirty.append(writer)
        if not self._scheduled:
            self._scheduled = True
            call_soon = self._call_soon
            if call_soon is None:
                import asyncio  # here: not every process that writes lines runs asyncio

                call_soon = self._call_soon = asyncio.get_running_loop().call_soon
            call_soon(self._end_of_turn)

    def _end_of_turn(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write out every queued writer."""
        while self.dirty:
            dirty, self.dirty = self.dirty, []
            for writer in dirty:
                writer.flush()


class LineWriter:
    """Base for protocols that send lines: `queue` for the turn's write, or `write_now`."""

    __slots__ = ()
    transport: Transport | None
    outbox: Outbox
    _out: list[bytes]

    def queue(self, line: bytes) -> None:
        """Add an encoded line; it goes out with the others when the turn's flush runs."""
        out = self._out
        if not out:
            self.outbox.add(self)
        out.append(line)

    def write_now(self, data: bytes) -> None:
        """Write `data` at once, behind whatever was queued before it (nothing else can join it)."""
        if self._out:
            self._out.append(data)
            self.flush()
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
