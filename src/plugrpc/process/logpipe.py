"""A plugin's output pipes (`LogPipe`): each line it prints on stdout or stderr becomes a log record
tagged with its name, and a line of its logbook; a line too long is logged truncated."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from ..wire import LineSplitter
from .env import log_line

LOG_MAX_LINE: Final = 64 * 1024
"""Longer stdout/stderr lines are logged truncated to this many bytes."""

OnLine = Callable[[int, str], None]
"""Receives each line a plugin printed, with its level (the plugin's logbook)."""


class LogPipe(asyncio.Protocol):
    """One of a plugin's output pipes: each line becomes a log record on "plugrpc.plugin"."""

    __slots__ = ("closed", "_level", "_extra", "_on_line", "_splitter", "_skipping")

    def __init__(self, closed: asyncio.Future[None], level: int, extra: dict[str, Any], on_line: OnLine) -> None:
        self.closed = closed
        self._level = level
        self._extra = extra
        self._on_line = on_line
        self._splitter = LineSplitter(LOG_MAX_LINE)
        self._skipping = False  # dropping the rest of a line that was logged truncated

    def data_received(self, data: bytes) -> None:
        # Fed in pieces of at most max_line bytes, only the first line of a piece can overflow,
        # and _feed checks that one before the splitter sees it, so LineTooLong never happens.
        step = self._splitter.max_line
        for start in range(0, len(data), step):
            self._feed(data[start : start + step])

    def _feed(self, piece: bytes) -> None:
        if self._skipping:
            nl = piece.find(b"\n")
            if nl < 0:
                return
            piece = piece[nl + 1 :]
            self._skipping = False
        splitter = self._splitter
        first = piece.find(b"\n")
        room = splitter.max_line - splitter.buffered
        if (first if first >= 0 else len(piece)) > room:
            for line in splitter.feed(piece[:room] + b"\n"):
                self._emit(line, truncated=True)
            if first < 0:
                self._skipping = True
                return
            piece = piece[first + 1 :]
        for line in splitter.feed(piece):
            self._emit(line)

    def _emit(self, line: bytes, truncated: bool = False) -> None:
        suffix = f" [line truncated at {LOG_MAX_LINE} bytes]" if truncated else ""
        self._on_line(*log_line(line, self._level, self._extra, suffix))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._skipping:
            for line in self._splitter.feed(b"\n"):  # the last line, when it had no newline
                self._emit(line)
        if not self.closed.done():
            self.closed.set_result(None)
