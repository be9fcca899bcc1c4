"""A plugin's recent output, kept by the router: for error messages that say why, and `plugrpc logs`.

Bounded twice, by lines and by bytes, so a chatty plugin costs at most `max_bytes` of memory
however long its lines are; the oldest lines go first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Final, NamedTuple

MAX_LINES: Final = 1000
MAX_BYTES: Final = 256 * 1024


class Line(NamedTuple):
    """One line a plugin printed: `seq` counts up from 1 for the plugin's whole life in the router."""

    seq: int
    time: float
    level: int
    text: str

    def as_dict(self) -> dict[str, object]:
        return {"seq": self.seq, "time": round(self.time, 3), "level": logging.getLevelName(self.level).lower(),
                "text": self.text}


class Logbook:
    """The last lines of one plugin's stdout and stderr, across its restarts."""

    __slots__ = ("lines", "size", "seq", "max_lines", "max_bytes", "_news")

    def __init__(self, max_lines: int = MAX_LINES, max_bytes: int = MAX_BYTES) -> None:
        self.lines: deque[Line] = deque()
        self.size = 0
        self.seq = 0
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._news: asyncio.Event | None = None  # only while someone follows the log

    def __repr__(self) -> str:
        return f"<Logbook {len(self.lines)} lines, {self.size} bytes, seq {self.seq}>"

    def add(self, level: int, text: str) -> None:
        self.seq += 1
        self.lines.append(Line(self.seq, time.time(), level, text))
        self.size += len(text)
        while len(self.lines) > self.max_lines or (self.size > self.max_bytes and len(self.lines) > 1):
            self.size -= len(self.lines.popleft().text)
        if self._news is not None:
            self._news.set()
            self._news = None

    async def wait(self, seq: int, timeout: float) -> None:
        """Wait up to `timeout` seconds for a line after `seq` (following a log: `plugrpc logs -f`)."""
        if self.seq > seq:
            return
        if self._news is None:
            self._news = asyncio.Event()
        news = self._news
        try:
            await asyncio.wait_for(news.wait(), timeout)
        except TimeoutError:
            pass

    def tail(self, n: int) -> list[Line]:
        """The last `n` lines, oldest first."""
        if n <= 0:
            return []
        lines = self.lines
        return list(lines)[-n:] if n < len(lines) else list(lines)

    def since(self, seq: int) -> list[Line]:
        """Lines after `seq` (for following a log), oldest first."""
        return [line for line in self.lines if line.seq > seq]
