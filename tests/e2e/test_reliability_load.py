"""Load: every call answered exactly once, memory bounded, under many clients and big payloads.

Real `plugrpc run` processes, real plugins, real unix sockets. Default sizes keep `make test`
quick; `PLUGRPC_SLOW=1` runs the full sizes, whose figures docs/reliability.md reports.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import plugrpc
from plugrpc.testing import RouterProcess

from plugins.sources import ECHO, ECHO_EXPORTS
from util import FULL, AsyncRawConn, fd_count, figure, line, peak_rss_mib, req, rss_mib, until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]
PLUGINS = ("a", "b", "c")
MIB = 1 << 20


@pytest.fixture
def three(plugrpc_image: Image, plugrpc_router: Router) -> RouterProcess:
    """Three plugins that take calls three ways: one pipelined connection, a pool of three, a bounded one."""
    root = plugrpc_image({
        "a": ("plugins/a.py", ECHO, ECHO_EXPORTS),
        "b": ("plugins/b.py", ECHO, ECHO_EXPORTS, {"pool_size": 3}),
        "c": ("plugins/c.py", ECHO, ECHO_EXPORTS, {"max_inflight": 64, "max_pending": 1_000_000}),
    })
    return plugrpc_router(root)


async def plugin_stats(client: plugrpc.Client) -> dict[str, dict[str, Any]]:
    return {name: await client.raw(f"{name}.stats") for name in PLUGINS}


# --- 200 connections x 500 calls, mixed sizes up to 1 MiB --------------------------------------


def size_of(rng: random.Random, i: int) -> int:
    """Mostly small, some medium, a few large; the first call of every connection is exactly 1 MiB."""
    if i == 0:
        return MIB
    roll = rng.random()
    if roll < 0.70:
        return rng.randint(1, 1024)
    if roll < 0.98:
        return rng.randint(1024, 64 * 1024)
    return rng.randint(64 * 1024, MIB)


def payload(conn: int, call: int, size: int) -> str:
    """Unique to (conn, call) all along its length, so any swap, splice or truncation shows."""
    tag = f"<{conn}:{call}>"
    return (tag * (size // len(tag) + 1))[:size]


def call_id(conn: int, call: int) -> Any:
    """Half the ids are strings, half numbers: both must come back exactly as sent."""
    return f"{conn}-{call}" if call % 2 else conn * 1_000_000 + call


async def mixed_client(path: Path, conn: int, calls: int, window: int) -> tuple[int, dict[str, int]]:
    """Pipeline `calls` echoes (at most `window` outstanding); check each response, once each."""
    rng = random.Random(conn)
    plan = [(PLUGINS[(conn + i) % 3], size_of(rng, i)) for i in range(calls)]
    expected = {call_id(conn, i): i for i in range(calls)}
    pipe = await AsyncRawConn.open(path)
    room = asyncio.Semaphore(window)
    per_plugin = dict.fromkeys(PLUGINS, 0)

    async def send() -> None:
        for i, (plugin, size) in enumerate(plan):
            await room.acquire()
            await pipe.send(req(f"{plugin}.echo", [payload(conn, i, size)], call_id(conn, i)))

    sender = asyncio.ensure_future(send())
    try:
        for _ in range(calls):
            msg = await pipe.recv(timeout=120)
            room.release()
            i = expected.pop(msg["id"])  # KeyError: an id never sent, or sent once and answered twice
            plugin, size = plan[i]
            assert msg == {"jsonrpc": "2.0", "id": call_id(conn, i),
                           "result": {"by": plugin, "payload": payload(conn, i, size)}}
            per_plugin[plugin] += 1
        await sender
        # Nothing more may come: a duplicate would arrive before the answer to this last call.
        await pipe.send(req("router.health", id="last"))
        assert (await pipe.recv())["id"] == "last"
    finally:
        sender.cancel()
        await pipe.close()
    return calls, per_plugin


@pytest.mark.parametrize("clients,calls", [
    pytest.param(20, 50, id="20x50"),
    pytest.param(200, 500, id="200x500", marks=(*FULL, pytest.mark.timeout(1800))),
])
async def test_mixed_sizes_through_three_plugins_none_lost_or_duplicated(three: RouterProcess, clients: int,
                                                                        calls: int) -> None:
    started = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(*(mixed_client(three.socket, n, calls, window=32) for n in range(clients))),
        1500)
    elapsed = time.monotonic() - started
    assert sum(n for n, _ in results) == clients * calls
    async with plugrpc.Client(three.socket, timeout=30) as c:
        seen = await plugin_stats(c)
        # Every call reached its plugin exactly once (the plugins count what they ran).
        for plugin in PLUGINS:
            assert seen[plugin]["calls"] == sum(per[plugin] for _, per in results), plugin
        assert (await c.raw("router.stats"))["inflight"] == 0
    figure("mixed_load_seconds", elapsed, "s", clients=clients, calls=calls)
    figure("mixed_load_router_peak_rss", peak_rss_mib(three.pid), "MiB", clients=clients, calls=calls)


# --- 1,000 connections held open -------------------------------------------------------------


@pytest.mark.parametrize("connections", [pytest.param(1000, id="1000")])
async def test_a_thousand_connections_held_open_while_calls_flow(three: RouterProcess, connections: int) -> None:
    baseline = rss_mib(three.pid)
    pipes: list[AsyncRawConn] = []
    try:
        for start in range(0, connections, 100):
            batch = range(start, min(start + 100, connections))
            pipes += await asyncio.gather(*(AsyncRawConn.open(three.socket) for _ in batch))
        async with plugrpc.Client(three.socket, timeout=30) as probe:
            await until(lambda: router_stat(probe, "clients"), expect=connections + 1)

            async def round_trip(n: int, round_: int) -> None:
                pipe = pipes[n]
                plugin = PLUGINS[n % 3]
                body = payload(n, round_, 100 + n)
                await pipe.send(req(f"{plugin}.echo", [body], id=round_))
                assert await pipe.recv() == {"jsonrpc": "2.0", "id": round_,
                                             "result": {"by": plugin, "payload": body}}

            for round_ in range(3):  # every connection calls at once, three times over
                await asyncio.wait_for(asyncio.gather(*(round_trip(n, round_) for n in range(connections))), 60)
            held = rss_mib(three.pid)
            fds = fd_count(three.pid)
            assert fds > connections  # they really were all open at once
        for pipe in pipes:
            await pipe.close()
        pipes = []
        async with plugrpc.Client(three.socket, timeout=30) as probe:
            await until(lambda: router_stat(probe, "clients"), expect=1)
            assert (await probe.raw("router.stats"))["inflight"] == 0
    finally:
        for pipe in pipes:
            await pipe.close()
    figure("connections_held", connections, "connections")
    figure("connections_router_rss", held, "MiB", connections=connections, idle_rss=round(baseline, 1))


async def router_stat(client: plugrpc.Client, key: str) -> Any:
    return (await client.raw("router.stats"))[key]


# --- a burst of connections --------------------------------------------------------------------


async def test_a_burst_of_clients_waits_for_a_busy_router_and_is_served(three: RouterProcess) -> None:
    """500 clients connect at once while the router cannot accept (stopped): they wait, then all get answers."""
    with three.client() as c:
        assert c.raw("a.echo", [0])["by"] == "a"  # serving, not just bound
    clients = [plugrpc.Client(three.socket, timeout=30) for _ in range(500)]
    os.kill(three.pid, signal.SIGSTOP)
    try:
        connecting = asyncio.gather(*(c.connect() for c in clients))
        await asyncio.sleep(1)  # far more than the accept backlog are knocking by now
    finally:
        os.kill(three.pid, signal.SIGCONT)
    try:
        await asyncio.wait_for(connecting, 30)
        answers = await asyncio.wait_for(asyncio.gather(*(c.raw("a.echo", [n]) for n, c in enumerate(clients))), 30)
        assert answers == [{"by": "a", "payload": n} for n in range(len(clients))]
    finally:
        await asyncio.gather(*(c.close() for c in clients))


def test_front_socket_backlog_holds_a_burst_of_a_thousand(three: RouterProcess) -> None:
    """Clients that cannot wait (non-blocking connect: Node, Go, libuv) are refused once the backlog is full."""
    with three.client() as c:
        assert c.raw("a.echo", [0])["by"] == "a"  # serving, not just bound
    assert nonblocking_burst(three.socket, three.pid, 1000) == 0


def nonblocking_burst(path: Path, pid: int, n: int) -> int:
    """Connect `n` non-blocking clients to `path` while `pid` is stopped; how many were refused (EAGAIN)."""
    socks: list[socket.socket] = []
    refused = 0
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(str(path))
                socks.append(sock)
            except BlockingIOError:
                refused += 1
                sock.close()
    finally:
        os.kill(pid, signal.SIGCONT)
        for sock in socks:
            sock.close()
    return refused


def test_sdk_plugin_keeps_the_backlog_the_runtime_gave_its_socket(three: RouterProcess) -> None:
    with three.client() as c:
        stats, env = c.raw("a.stats"), c.raw("a.environ")
    assert nonblocking_burst(Path(env["PLUGRPC_SOCKET"]), stats["pid"], 1000) == 0


# --- a client that never reads ---------------------------------------------------------------


@pytest.mark.parametrize("payload_kib,seconds", [
    pytest.param(64, 3, id="64KiB"),
    pytest.param(1024, 10, id="1MiB", marks=(*FULL, pytest.mark.timeout(300))),
])
async def test_client_that_never_reads_is_throttled_and_others_are_unaffected(
        three: RouterProcess, payload_kib: int, seconds: float) -> None:
    """Backpressure: the router stops reading a client whose responses pile up; memory stays bounded."""
    before = rss_mib(three.pid)
    data = line(req("a.echo", ["z" * (payload_kib * 1024)], id=1))
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setblocking(False)
    stuck.connect(str(three.socket))
    sent = 0
    cap = 4096 * MIB  # far beyond any sane buffer: reaching it means nobody throttled us
    latencies: list[float] = []
    try:
        async with plugrpc.Client(three.socket, timeout=30) as other:
            async def others_keep_working() -> None:
                n = 0
                while True:
                    t = time.monotonic()
                    assert await other.raw("b.echo", [n]) == {"by": "b", "payload": n}
                    latencies.append(time.monotonic() - t)
                    n += 1
                    await asyncio.sleep(0.01)

            worker = asyncio.ensure_future(others_keep_working())
            try:
                last_progress = time.monotonic()
                view = memoryview(data)
                offset = 0
                # Write until the router has stopped taking our requests for `seconds` in a row.
                while time.monotonic() - last_progress < seconds and sent < cap:
                    try:
                        n = stuck.send(view[offset:])
                    except BlockingIOError:
                        await asyncio.sleep(0.02)
                        continue
                    sent += n
                    offset = (offset + n) % len(data)
                    last_progress = time.monotonic()
                    await asyncio.sleep(0)
                stalled = rss_mib(three.pid)
                peak = peak_rss_mib(three.pid)
                assert not worker.done()
            finally:
                worker.cancel()
            assert sent < cap, "the router kept reading from a client that never reads"
            assert len(latencies) > 10 and max(latencies) < 5, "other clients were held up"
            stats = await other.raw("router.stats")
            stuck.close()
            # The stuck client's calls are dropped with it, and the router is back to idle.
            await until(lambda: router_stat(other, "inflight"), expect=0, timeout=30)
    finally:
        stuck.close()
    # Bounded by what the router holds for the stuck client: at most max_inflight_per_client
    # (1024) responses, whatever the client tried to send.
    assert stalled - before < 1024 * payload_kib / 1024 + 64, (stalled, before)
    figure("never_reading_client_sent", sent / MIB, "MiB", payload_kib=payload_kib)
    figure("never_reading_client_router_rss", stalled, "MiB", payload_kib=payload_kib, before=round(before, 1),
           peak=round(peak, 1), inflight=stats["inflight"], p_max_other_ms=round(max(latencies) * 1000, 1))


# --- more calls than the bound ----------------------------------------------------------------


@pytest.fixture
def bounded(plugrpc_image: Image, plugrpc_router: Router) -> Iterator[RouterProcess]:
    root = plugrpc_image({"a": ("plugins/a.py", ECHO, ECHO_EXPORTS, {"max_pending": 50}),
                         "b": ("plugins/b.py", ECHO, ECHO_EXPORTS)})
    yield plugrpc_router(root)


@pytest.mark.parametrize("clients,calls,rounds", [
    pytest.param(10, 200, 3, id="10x200x3"),
    pytest.param(50, 1000, 10, id="50x1000x10", marks=(*FULL, pytest.mark.timeout(600))),
])
async def test_calls_beyond_the_bound_are_overloaded_and_memory_stays_flat(
        bounded: RouterProcess, clients: int, calls: int, rounds: int) -> None:
    async def one_client(c: plugrpc.Client, n: int) -> list[Any]:
        return await asyncio.gather(*(c.raw("a.sleep", [0.2, [n, i]]) for i in range(calls)), return_exceptions=True)

    rss = []
    async with plugrpc.Client(bounded.socket, timeout=60) as probe:
        conns = [plugrpc.Client(bounded.socket, timeout=60) for _ in range(clients)]
        try:
            for _ in range(rounds):
                results = [r for rs in await asyncio.wait_for(
                    asyncio.gather(*(one_client(c, n) for n, c in enumerate(conns))), 120) for r in rs]
                ok = [r for r in results if isinstance(r, dict)]
                overloaded = [r for r in results if isinstance(r, plugrpc.Overloaded)]
                assert len(ok) + len(overloaded) == clients * calls, {type(r) for r in results}
                assert 50 <= len(ok) < clients * calls
                assert all(r.data["plugin"] == "a" for r in overloaded)
                # Another plugin is not affected by a's overload.
                assert await probe.raw("b.echo", [1]) == {"by": "b", "payload": 1}
                await asyncio.sleep(0.25)  # the router gives freed memory back after a quiet sweep (50 ms)
                rss.append(rss_mib(bounded.pid))
        finally:
            for c in conns:
                await c.close()
        a = await probe.raw("a.stats")
        assert a["peak"] <= 50  # never more than max_pending ran at once
        assert (await probe.raw("router.stats"))["inflight"] == 0
    # No growth per rejected call: after the allocator's first rounds, memory stays flat.
    settled = rss[len(rss) // 2:]
    assert max(settled) - min(settled) < 8 and max(rss) - rss[0] < 128, rss
    figure("overload_router_rss", max(rss), "MiB", rejected_per_round=len(overloaded), rounds=rounds,
           first=round(rss[0], 1), last=round(rss[-1], 1), clients=clients, calls=calls)
