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
