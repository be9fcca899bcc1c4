"""Log output: readable lines tagged with the plugin's name, or JSON lines for machines."""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Final

import orjson

TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s %(tag)s%(message)s"
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
"""C0, DEL and C1: a newline forges a line, ESC and CSI drive the terminal."""
_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\x{ord(char):02x}"


def printable(text: str) -> str:
    """`text` with every control character spelt out (`\\n`, `\\r`, `\\x1b`), for a log or a terminal.

    Plugins and clients choose much of what an operator reads: spelt out, a newline cannot forge a
    line and ESC[2J cannot clear the screen. Text with nothing to escape comes back as it is.
    """
    return text if text.isprintable() else _CONTROL.sub(_escape, text)


class _Tag(logging.Filter):
    """Give every record a `tag` ("[ovs 1234] ") from the `plugin`/`pid` extras, or nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        plugin = getattr(record, "plugin", None)
        pid = getattr(record, "pid", None)
        record.tag = f"[{plugin}{f' {pid}' if pid else ''}] " if plugin else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, plugin, pid, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "plugin": getattr(record, "plugin", None),
            "pid": getattr(record, "pid", None),
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


class TextFormatter(logging.Formatter):
    """One record, one line: a newline or ESC in a message, its arguments or a traceback is spelt out."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def configure(level: str = "info", json: bool = False) -> None:
    """Send plugrpc's logs (and its plugins' output) to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Tag())
    handler.setFormatter(JsonFormatter() if json else TextFormatter(TEXT_FORMAT, "%H:%M:%S"))
    root = logging.getLogger("plugrpc")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class RateLimited:
    """One kind of log line a peer can make the router write at will (refusals, closed connections).

    The first is logged at once; for `interval` seconds after a logged one the rest are only
    counted, and the next line logged (by a later one, or by `flush` once the interval is over)
    says how many were left out: a flood costs one line per interval instead of one per event.
    """

    __slots__ = ("logger", "level", "interval", "_quiet_until", "_suppressed", "_last")

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING, interval: float = 10.0) -> None:
        self.logger = logger
        self.level = level
        self.interval = interval
        self._quiet_until = 0.0
        self._suppressed = 0
        self._last: tuple[str, tuple[object, ...]] = ("", ())

    def __call__(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._quiet_until:
            self._suppressed += 1
            self._last = (msg, args)
            return
        self._log(now, msg, args)

    def flush(self) -> None:
        """Log how many were left out once their interval is over (their owner calls this now and then)."""
        now = time.monotonic()
        if self._suppressed and now >= self._quiet_until:
            self._suppressed -= 1  # the latest one is logged itself
            self._log(now, *self._last)

    def _log(self, now: float, msg: str, args: tuple[object, ...]) -> None:
        if self._suppressed:
            msg += f" (and {self._suppressed} more like it not logged in the {self.interval:g}s before)"
            self._suppressed = 0
        self._quiet_until = now + self.interval
        self.logger.log(self.level, msg, *args)
