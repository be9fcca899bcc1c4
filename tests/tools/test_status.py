"""`plugrpc.status`: the table `plugrpc status` prints from `router.plugins` rows."""

from __future__ import annotations

import pytest

from plugrpc.tools.status import duration, log_line, millis, render


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"),
    (0.0, "0.0s"),
    (4.26, "4.3s"),
    (59.94, "59.9s"),
    (60, "1m00s"),
    (187.9, "3m07s"),
    (3600, "1h00m"),
    (5 * 3600 + 2 * 60 + 59, "5h02m"),
    (86400 * 2 + 3 * 3600 + 59, "2d03h"),
])
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(("ms", "text"), [
    (None, "-"),
    (0.0421, "0.042"),
    (0.96, "0.960"),
    (3.1, "3.10"),
    (99.994, "99.99"),
    (120.4, "120"),
])
def test_millis(ms: float | None, text: str) -> None:
    assert millis(ms) == text


ROWS = [
    # As router.plugins reports them (extra keys are ignored).
    {"name": "ovs", "mode": "rpc", "state": "running", "pid": 14638, "restarts": 0, "uptime": 2.565,
     "exports": ["version"], "inflight": 0, "calls": 0, "errors": 0, "timeouts": 0,
     "p50_ms": None, "p90_ms": None, "p99_ms": None},
    {"name": "kitchen-sink", "mode": "rpc", "state": "backoff", "pid": None, "restarts": 12, "uptime": None,
     "last_exit": -9, "exit_reason": "crash", "inflight": 3, "calls": 123456, "errors": 7, "p50_ms": 0.96,
     "p99_ms": 130.2},
    {"name": "core0", "mode": "rpc", "state": "crashloop", "pid": None, "restarts": 5, "last_exit": 1,
     "exit_reason": "crash", "calls": 3, "errors": 3},
    {"name": "noexec", "mode": "rpc", "state": "failed", "restarts": 0, "last_exit": None,
     "last_error": "cannot start: ... Exec format error"},
    {"name": "sysinfo", "mode": "exec", "state": "ready", "pid": None, "restarts": 0,
     "inflight": 1, "pending": 0, "calls": 1, "errors": 0, "p50_ms": 26.624, "p99_ms": 26.624},
    {"name": "stuck", "mode": "rpc", "state": "running", "pid": 9, "restarts": 1, "last_exit": -9,
     "exit_reason": "unresponsive", "status_text": "serving 3 models after loading them from the cache directory"},
    {"name": "app", "mode": "rpc", "state": "starting", "pid": None, "restarts": 0, "waiting_for": ["db", "cache"],
     "status_text": "ignored while it waits"},
]


def test_render_lines_up_columns() -> None:
    assert render(ROWS) == (
        "NAME          MODE  STATE        PID  UPTIME  RESTARTS  LAST_EXIT             INFLIGHT   CALLS  ERRORS  P50_MS  P99_MS  STATUS\n"
        "ovs           rpc   running    14638    2.6s         0  -                            0       0       0       -       -  -\n"
        "kitchen-sink  rpc   backoff        -       -        12  SIGKILL crash                3  123456       7   0.960     130  -\n"
        "core0         rpc   crashloop      -       -         5  1 crash                      -       3       3       -       -  -\n"
        "noexec        rpc   failed         -       -         0  cannot start                 -       -       -       -       -  "
        "... Exec format error\n"
        "sysinfo       exec  ready          -       -         0  -                            1       1       0   26.62   26.62  -\n"
        "stuck         rpc   running        9       -         1  SIGKILL unresponsive         -       -       -       -       -  serving 3 models after loading them f...\n"
        "app           rpc   starting       -       -         0  -                            -       -       -       -       -  waiting for db, cache\n"
    )


def test_render_without_plugins_is_the_header() -> None:
    assert render([]).splitlines() == [
        "NAME  MODE  STATE  PID  UPTIME  RESTARTS  LAST_EXIT  INFLIGHT  CALLS  ERRORS  P50_MS  P99_MS  STATUS"
    ]


def test_render_tolerates_missing_figures() -> None:
    # A row from an older or newer router may lack keys; the table shows "-" rather than failing.
    (line,) = render([{"name": "x"}]).splitlines()[1:]
    assert line.split() == ["x", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"]


def test_log_line_shows_local_time_to_the_millisecond_and_the_level() -> None:
    import time

    when = time.mktime((2026, 11, 24, 23, 3, 6, 0, 0, -1)) + 0.25
    assert log_line({"seq": 3, "time": when, "level": "warning", "text": "Traceback"}) == (
        "2026-11-24 23:03:06.250 WARNING Traceback")
    assert log_line({"skipped": 12}) == "-- 12 line(s) not shown: the router keeps a plugin's last 1000 --"
