"""A hostile neighbour through notifications, subscriptions and events: `plugrpc run` in a subprocess, plugins as
processes, floods through real sockets (and a real nats-server), while another client calls in a loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest

import plugrpc
from plugrpc.testing import RouterProcess

from util import FULL, NOTIFY, WAIT, AsyncRawConn, NatsServer, RawConn, figure, line, peak_rss_mib, req, until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]
FAST = 5.0
"""A generous bound for "at once" and for another client's slowest call: far below the timeouts involved."""

# Slow at notifications (a sync handler, which holds the plain engine's loop), quick at `pid`; it emits `names`.
SLOW = '''
#!/usr/bin/env python3
import os, time
import plugrpc

def note(i=0):
    time.sleep(0.0001)

def pid():
    return os.getpid()

def names(n, size=1):
    """n names never seen before, each `size` characters long at least."""
    pad = "x" * size
    for i in range(n):
        plugrpc.emit(f"n{i}.{pad}")
    return n

def big(n, size):
    pad = "x" * size
    for i in range(n):
        plugrpc.emit("big", pad)
    return n

plugrpc.serve({"note": note, "pid": pid, "names": names, "big": big})
'''
EXPORTS = ["note", "pid", "names", "big"]
LIVELY = {"ping_interval": 0.3, "ping_timeout": 1.0}
"""Pings every 0.3 s, unresponsive after 1 s of silence: a ping stuck behind a flood would restart the plugin."""


def plugin(**keys: Any) -> tuple[str, str, list[str], dict[str, Any]]:
    return ("slow.py", SLOW, EXPORTS, keys)


@contextlib.asynccontextmanager
async def another_client(path: Path) -> AsyncIterator[list[float]]:
    """Calls `other.pid` in a loop for as long as the block runs; the latencies, in seconds."""
    latencies: list[float] = []
    stop = asyncio.Event()

    async def loop() -> None:
        async with plugrpc.Client(path, timeout=30) as c:
            while not stop.is_set():
                started = time.monotonic()
                assert await c.raw("other.pid") > 0
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.01)

    task = asyncio.create_task(loop())
    try:
        yield latencies
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


def figures(name: str, latencies: list[float], router: RouterProcess, rss_before: float, **context: Any) -> None:
    """Another client's median and worst latency, and the router's peak RSS, for docs/reliability.md."""
    figure(f"{name}_other_median", statistics.median(latencies) * 1000, "ms", calls=len(latencies), **context)
    figure(f"{name}_other_worst", max(latencies) * 1000, "ms", **context)
    figure(f"{name}_router_peak_rss", peak_rss_mib(router.pid), "MiB", before=rss_before, **context)


async def row(c: plugrpc.Client, name: str) -> dict[str, Any]:
    return next(p for p in await c.raw("router.plugins") if p["name"] == name)


def flood(path: Path, method: str, seconds: float) -> int:
    """Write notifications to the router as fast as it reads them for `seconds`; the bytes written."""
    block = b"".join(line(req(method, [i], id=NOTIFY)) for i in range(20_000))
    sent = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(str(path))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sock.sendall(block)
            sent += len(block)
    return sent


# --- notifications -----------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [pytest.param(1.5, id="1.5s"), pytest.param(10, id="10s", marks=FULL)])
async def test_a_notification_flood_to_a_slow_plugin_is_dropped_and_restarts_nothing(
        plugrpc_image: Image, plugrpc_router: Router, seconds: float) -> None:
    router = plugrpc_router(plugrpc_image({"slow": plugin(**LIVELY), "other": plugin()}))
    async with plugrpc.Client(router.socket, timeout=30) as c:
        pid = await c.raw("slow.pid")
        rss_before = peak_rss_mib(router.pid)
        async with another_client(router.socket) as latencies:
            sent = await asyncio.to_thread(flood, router.socket, "slow.note", seconds)
        peak = peak_rss_mib(router.pid)
        slow = await row(c, "slow")
        assert await asyncio.wait_for(c.raw("slow.pid"), 30) == pid  # the same process, still answering
        assert slow["restarts"] == 0 and slow["pid"] == pid
        assert slow["notifications_dropped"] > 0
        assert peak - rss_before < 48, (rss_before, peak)
        assert max(latencies) < FAST
    assert router.log().count("dropping notifications to this plugin") <= seconds / 10 + 1
    figures(f"notification_flood_{seconds}s", latencies, router, rss_before, sent_mib=sent / 2**20,
            dropped=slow["notifications_dropped"])


@pytest.mark.parametrize("seconds", [pytest.param(1.5, id="1.5s"), pytest.param(8, id="8s", marks=FULL)])
async def test_a_notification_flood_over_nats_is_dropped_and_restarts_nothing(
        plugrpc_image: Image, plugrpc_router: Router, nats_server: Callable[..., NatsServer], seconds: float) -> None:
    server = nats_server()
    router = plugrpc_router(plugrpc_image({"slow": plugin(**LIVELY), "other": plugin()}),
                            "--nats", server.url, "--name", "r1")
    body = line(req("slow.note", [0], id=NOTIFY))
    async with plugrpc.Client(router.socket, timeout=30) as c:
        pid = await c.raw("slow.pid")
        nc = await nats.connect(server.url)
        try:
            await until(lambda: _serving(nc), "the router on NATS")
            rss_before = peak_rss_mib(router.pid)
            async with another_client(router.socket) as latencies:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    for _ in range(1000):
                        await nc.publish("plugrpc.any.slow", body)
                    await nc.flush()
        finally:
            await nc.close()
        slow = await row(c, "slow")
        assert await asyncio.wait_for(c.raw("slow.pid"), 30) == pid
        assert slow["restarts"] == 0 and slow["notifications_dropped"] > 0
        assert max(latencies) < FAST
    figures(f"notification_flood_nats_{seconds}s", latencies, router, rss_before, dropped=slow["notifications_dropped"])
    assert router.stop() == 0  # while NATS is up: a router that lost NATS takes longer to stop


async def _serving(nc: Any) -> bool:
    with contextlib.suppress(Exception):
        msg = await nc.request("plugrpc.call.r1", line(req("router.health")), timeout=1)
        return b'"ok"' in msg.data
    return False


EXEC = '''#!/bin/sh
sleep 0.5
printf '20:::\\n"ok"\\n:::\\n'
'''


@pytest.mark.parametrize("count", [pytest.param(5_000, id="5000"), pytest.param(50_000, id="50000", marks=FULL)])
async def test_notifications_to_an_exec_plugin_run_only_on_free_slots(
        plugrpc_image: Image, plugrpc_router: Router, count: int) -> None:
    root = plugrpc_image({"ex": ("ex.sh", EXEC, ["slow"], {"mode": "exec", "max_inflight": 2}), "other": plugin()})
    (root / "ex.sh").chmod(0o755)
    router = plugrpc_router(root)
    async with plugrpc.Client(router.socket, timeout=30) as c:
        rss_before = peak_rss_mib(router.pid)
        async with another_client(router.socket) as latencies:
            with RawConn(router.socket) as raw:
                raw.send(b"".join(line(req("ex.slow", id=NOTIFY)) for _ in range(count)))
                assert raw.ask(req("router.health", id="after"))["id"] == "after"  # read in order: all of them
            ex = await row(c, "ex")
        assert ex["pending"] <= 2 and ex["notifications_dropped"] >= count - 2, ex
        await until(lambda: _idle(c, "ex"), "the executions to end")
    assert router.log().count("dropping notifications") == 1
    figures(f"exec_notifications_{count}", latencies, router, rss_before, dropped=ex["notifications_dropped"])


async def _idle(c: plugrpc.Client, name: str) -> bool:
    return bool((await row(c, name))["pending"] == 0)


# --- subscriptions and events ------------------------------------------------------------------


@pytest.mark.parametrize(("subscriptions", "patterns"), [pytest.param(16, 1024, id="16x1024"),
                                                         pytest.param(1024, 1024, id="1024x1024", marks=FULL)])
async def test_a_connections_patterns_are_bounded_and_names_match_in_bounded_time(
        plugrpc_image: Image, plugrpc_router: Router, subscriptions: int, patterns: int) -> None:
    router = plugrpc_router(plugrpc_image({"em": plugin(events=[">"]), "other": plugin()}))
    async with plugrpc.Client(router.socket, timeout=30) as c, await AsyncRawConn.open(router.socket) as raw:
        rss_before = peak_rss_mib(router.pid)
        async with another_client(router.socket) as latencies:
            refused = []
            for s in range(subscriptions):
                answer = await raw.ask(req("router.subscribe", {"events": [f"em.s{s}.p{i}.>" for i in range(patterns)]},
                                           id=s))
                if "error" in answer:
                    refused.append(answer["error"])
            started = time.monotonic()
            assert await c.raw("em.names", [1000]) == 1000  # 1,000 names never seen before
            per_name = (time.monotonic() - started) / 1000
        assert len(refused) == subscriptions - 1
        assert {e["code"] for e in refused} == {-32003} and "1024 patterns" in refused[0]["data"]["reason"]
        assert per_name < 0.01
    figures(f"patterns_{subscriptions}x{patterns}", latencies, router, rss_before, per_name_ms=per_name * 1000)


@pytest.mark.parametrize(("events", "size"), [pytest.param(40, 1 << 20, id="40x1MiB"),
                                              pytest.param(250, 4 << 20, id="250x4MiB", marks=FULL)])
async def test_a_subscriber_that_never_reads_holds_a_bounded_backlog_of_bytes(
        plugrpc_image: Image, plugrpc_router: Router, events: int, size: int) -> None:
    router = plugrpc_router(plugrpc_image({"em": plugin(events=["big"]), "other": plugin()}))
    stuck = RawConn(router.socket, timeout=30)
    try:
        stuck.send(req("router.subscribe", {"events": ["em.big"]}))
        assert stuck.recv()["result"] == {"subscription": 1}
        async with plugrpc.Client(router.socket, timeout=60) as c:
            rss_before = peak_rss_mib(router.pid)
            async with another_client(router.socket) as latencies:
                for _ in range(events // 10):
                    assert await c.raw("em.big", [10, size]) == 10
            dropped = (await c.raw("router.stats"))["events"]["dropped"]
            peak = peak_rss_mib(router.pid)
            assert 0 < dropped < events
            assert peak - rss_before < 160, (rss_before, peak)
            # It reads at last: what was held, in order, then an event that says how many it missed.
            stuck.send(req("router.health", id="probe"))
            held = []
            while "id" not in (msg := stuck.recv()):
                held.append(msg["params"]["seq"])
            assert held == list(range(1, len(held) + 1)) and len(held) == events - dropped
            await c.raw("em.big", [1, 1])
            assert stuck.recv()["params"]["dropped"] == dropped
        figures(f"stuck_subscriber_{events}x{size >> 20}MiB", latencies, router, rss_before, dropped=dropped)
    finally:
        stuck.close()


@pytest.mark.parametrize(("names", "size"), [pytest.param(40_000, 1000, id="40kx1KB"),
                                             pytest.param(400_000, 1, id="400k", marks=FULL)])
async def test_distinct_event_names_hold_a_bounded_cache(plugrpc_image: Image, plugrpc_router: Router,
                                                         names: int, size: int) -> None:
    router = plugrpc_router(plugrpc_image({"em": plugin(events=[">"]), "other": plugin()}))
    async with plugrpc.Client(router.socket, timeout=60) as c, await AsyncRawConn.open(router.socket) as raw:
        assert (await raw.ask(req("router.subscribe", {"events": ["em.n1.>"]})))["result"]
        rss_before = peak_rss_mib(router.pid)
        async with another_client(router.socket) as latencies:
            for _ in range(names // 10_000):
                assert await c.raw("em.names", [10_000, size]) == 10_000
        peak = peak_rss_mib(router.pid)
        assert (await c.raw("router.stats"))["events"]["emitted"] == names
        assert peak - rss_before < 8, (rss_before, peak)
    figures(f"event_names_{names}x{size}", latencies, router, rss_before)
