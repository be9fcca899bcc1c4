"""Log output: readable lines tagged with the plugin's name, or JSON lines for machines."""

from __future__ import annotations

import logging
import sys
import time
from typing import Final

import orjson

TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s %(tag)s%(message)s"


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


def configure(level: str = "info", json: bool = False) -> None:
    """Send plugrpc's logs (and its plugins' output) to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Tag())
    handler.setFormatter(JsonFormatter() if json else logging.Formatter(TEXT_FORMAT, "%H:%M:%S"))
    root = logging.getLogger("plugrpc")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
