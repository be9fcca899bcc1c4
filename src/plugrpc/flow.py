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

TYPE_CHECKING = False  # typing's, without importing typing: a plugin loads these modules (see plugin/plain.py)
if TYPE_CHECKING:
    from typing import Final, Protocol

    class Readable(Protocol):
        """What reading is paused on: an asyncio transport, or a plugin's plain engine's connection."""

        def pause_reading(self) -> None: ...

        def resume_reading(self) -> None: ...

        def is_closing(self) -> bool: ...

WRITE: Final = 1
"""The transport's buffer is full: the peer is not reading our answers."""
BUSY: Final = 2
"""The connection has as many calls in flight as it may."""
CLOSING: Final = 4
"""The connection answers what it has, then closes: it is never read again."""
_NAMES: Final = {WRITE: "write", BUSY: "busy", CLOSING: "closing"}


class FlowControl:
    """Pauses and resumes reading on one transport for the reasons above."""

    __slots__ = ("transport", "_reasons", "_reading_paused")

    def __init__(self) -> None:
        self.transport: Readable | None = None
        """Set by the protocol's `connection_made`; nothing is paused before it."""
        self._reasons = 0
        self._reading_paused = False

    def __repr__(self) -> str:
        reasons = [name for bit, name in _NAMES.items() if self._reasons & bit]
        return f"<FlowControl {'paused: ' + ', '.join(reasons) if reasons else 'reading'}>"

    @property
    def busy(self) -> bool:
        """Whether reading is paused for too many calls in flight."""
        return bool(self._reasons & BUSY)

    @property
    def write_paused(self) -> bool:
        """Whether the peer is not reading what we write (the transport's buffer is full)."""
        return bool(self._reasons & WRITE)

    @property
    def reading(self) -> bool:
        return not self._reading_paused

    # --- the reasons, set and cleared one by one ------------------------------------------

    def pause_writing(self) -> None:
        self._set(WRITE)

    def resume_writing(self) -> None:
        self._clear(WRITE)

    def too_many(self) -> None:
        """The connection reached its in-flight limit."""
        self._set(BUSY)

    def few_enough(self) -> None:
        """The connection's calls in flight fell back to its resume mark."""
        self._clear(BUSY)

    def close(self) -> None:
        """Stop reading for good."""
        self._set(CLOSING)

    # --- the one place reading changes -----------------------------------------------------

    def _set(self, reason: int) -> None:
        if not self._reasons & reason:
            self._reasons |= reason
            self._update()

    def _clear(self, reason: int) -> None:
        if self._reasons & reason:
            self._reasons &= ~reason
            self._update()

    def _update(self) -> None:
        pause = bool(self._reasons)
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
