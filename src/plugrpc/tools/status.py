"""`plugrpc status`: the rows of `router.plugins` as a table people can read at a glance.

Pure formatting, no I/O: `render()` takes what the router reported and returns text, so the
table is tested without a router and the CLI stays a thin layer. Plugins choose some of that text
(STATUS=, their output): control characters in it are spelt out, never sent to the terminal.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from ..logs import printable

MISSING: Final = "-"
"""Shown where a figure does not apply (an exec plugin has no pid) or is not known yet."""


def duration(seconds: float | None) -> str:
    """A short human duration: `4.2s`, `3m07s`, `5h02m`, `2d03h`."""
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def millis(value: float | None) -> str:
    """Latency in milliseconds with the precision it deserves: `0.042`, `3.10`, `120`."""
    if value is None:
        return MISSING
    if value < 1:
        return f"{value:.3f}"
    if value < 100:
        return f"{value:.2f}"
    return f"{value:.0f}"


def _plain(value: Any) -> str:
    return MISSING if value is None else str(value)


def last_exit(row: Mapping[str, Any]) -> str:
    """How the plugin's last process ended and why: `1 crash`, `SIGKILL stopped`, `cannot start`."""
    if row.get("last_error"):
        return "cannot start"
    code = row.get("last_exit")
    if code is None:
        return MISSING
    try:
        text = str(code) if code >= 0 else signal.Signals(-code).name
    except ValueError:
        text = f"signal {-code}"
    reason = row.get("exit_reason")
    return f"{text} {reason}" if reason else text


def notes(row: Mapping[str, Any]) -> str:
    """What else is worth a glance: the plugins it waits for, else what it last said with STATUS=, else
    why it cannot start (the step its process failed at, after LAST_EXIT's `cannot start`); first, the
    direct connections callers hold to it, whose calls the other columns do not count."""
    if row.get("waiting_for"):
        return "waiting for " + ", ".join(row["waiting_for"])
    text = str(row.get("status_text") or row.get("last_error") or "").removeprefix("cannot start: ")
    direct = row.get("direct")
    if isinstance(direct, Mapping) and direct.get("connections"):
        calls = direct.get("calls")
        text = f"{direct['connections']} direct ({'-' if calls is None else calls} calls)" + (f"; {text}" if text
                                                                                                else "")
    if not text:
        return MISSING
    return text if len(text) <= STATUS_WIDTH else text[: STATUS_WIDTH - 3] + "..."


STATUS_WIDTH: Final = 40
"""Characters of the STATUS column (`--json` has all of it)."""


def log_line(line: Mapping[str, Any]) -> str:
    """One line of `plugrpc logs`: local date and time to the millisecond, level, what the plugin printed."""
    if "skipped" in line:
        return f"-- {line['skipped']} line(s) not shown: the router keeps a plugin's last 1000 --"
    when = line["time"]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) + f".{int(when * 1000) % 1000:03d}"
    return printable(f"{stamp} {line['level'].upper():<7} {line['text']}")


def mode(row: Mapping[str, Any]) -> str:
    """`rpc` or `exec`; `exec (core0)` when the manifest named no mode and the plugin proved a core0 binary."""
    text = _plain(row.get("mode"))
    return f"{text} (core0)" if row.get("mode_detected") else text


def state(row: Mapping[str, Any]) -> str:
    """The plugin's state; a lazy plugin with no process yet says so, as it starts on its first call."""
    text = _plain(row.get("state"))
    return f"{text} (lazy)" if text == "stopped" and row.get("lazy") else text


def _field(key: str, fmt: Callable[[Any], str]) -> Callable[[Mapping[str, Any]], str]:
    return lambda row: fmt(row.get(key))


COLUMNS: Final[tuple[tuple[str, Callable[[Mapping[str, Any]], str]], ...]] = (
    # header, what it shows of a router.plugins row
    ("NAME", _field("name", _plain)),
    ("MODE", mode),
    ("STATE", state),
    ("PID", _field("pid", _plain)),
    ("UPTIME", _field("uptime", duration)),
    ("RESTARTS", _field("restarts", _plain)),
    ("LAST_EXIT", last_exit),
    ("INFLIGHT", _field("inflight", _plain)),
    ("CALLS", _field("calls", _plain)),
    ("ERRORS", _field("errors", _plain)),
    ("P50_MS", _field("p50_ms", millis)),
    ("P99_MS", _field("p99_ms", millis)),
    ("STATUS", notes),
)
FLEET_COLUMNS: Final = (("ROUTER", _field("router", _plain)), *COLUMNS)
"""`plugrpc status --nats`: every router's plugins in one table, the router's name first."""
_LEFT: Final = frozenset({"ROUTER", "NAME", "MODE", "STATE", "LAST_EXIT", "STATUS"})
"""Text columns are left-aligned, numbers right-aligned."""


def render(plugins: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, Callable[[Mapping[str, Any]], str]]]
           = COLUMNS) -> str:
    """The table for `plugrpc status`, one line per plugin under a header, ending in a newline."""
    rows = [[header for header, _ in columns]]
    rows += [[printable(show(plugin)) for _, show in columns] for plugin in plugins]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if header in _LEFT else cell.rjust(width)
            for cell, width, (header, _) in zip(row, widths, columns, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
