"""Flow control shared by every protocol that reads requests (as uvicorn's `flow_control.py`).

A connection stops being read for one of three reasons: its peer does not read what we write
(the transport called `pause_writing`), it has too many calls in flight, or it is closing. Each
reason is set and cleared on its own, and reading resumes only once none is left; with a single
object deciding, no path can forget to resume (a batch answered after the in-flight limit once
left its connection paused for good).

The in-flight count is not kept here: the connection owns its calls and tells `FlowControl`
only when the count crosses the limit (`too_many`) or falls to half of it (`few_enough`), so a
call that crosses neither costs nothing.
"""

from __future__ import annotations

import asyncio


class FlowControl:
    """Pauses and resumes reading on one transport for the reasons above."""

    __slots__ = ("transport", "_write_paused", "_busy", "_closing", "_reading_paused")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        """Set by the protocol's `connection_made`; nothing is paused before it."""
        self._write_paused = False
        self._busy = False
        """Set while the connection has as many calls in flight as it may."""
        self._closing = False
        self._reading_paused = False

    def __repr__(self) -> str:
        reasons = [name for name, on in (("write", self._write_paused), ("busy", self._busy),
                                         ("closing", self._closing)) if on]
        return f"<FlowControl {'paused: ' + ', '.join(reasons) if reasons else 'reading'}>"

    @property
    def busy(self) -> bool:
        """Whether reading is paused for too many calls in flight."""
        return self._busy

    @property
    def reading(self) -> bool:
        return not self._reading_paused

    # --- the reasons -----------------------------------------------------------------------

    def pause_writing(self) -> None:
        """The transport's buffer is full: the peer is not reading our answers."""
        self._write_paused = True
        self._update()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update()

    def too_many(self) -> None:
        """The connection reached its in-flight limit."""
        if not self._busy:
            self._busy = True
            self._update()

    def few_enough(self) -> None:
        """The connection's calls in flight fell back below its resume mark."""
        if self._busy:
            self._busy = False
            self._update()

    def close(self) -> None:
        """Stop reading for good: the connection answers what it has, then closes."""
        self._closing = True
        self._update()

    # --- the one place reading changes -----------------------------------------------------

    def _update(self) -> None:
        pause = self._write_paused or self._busy or self._closing
        if pause is self._reading_paused:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._reading_paused = pause
        if pause:
            transport.pause_reading()
        else:
            transport.resume_reading()
