"""--metrics: scraped over real HTTP (TCP and a unix socket), parsed by prometheus-client's own parser,
its figures the same as `router.stats`; scrapers that misbehave are cut off and affect nothing else."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import plugrpc
from plugrpc.config import Config, metrics_address
from plugrpc.errors import ConfigError
from plugrpc.router import metrics
from plugrpc.router.server import Server
from plugrpc.testing import write_image

from plugins.sources import EMITTER, EMITTER_EXPORTS, OPS, OPS_EXPORTS
from util import WAIT, NatsServer, figure, run_server, until

Families = dict[str, Any]


@pytest.fixture
def image(plugrpc_tmp: Path) -> Path:
    root = plugrpc_tmp / "image"
    root.mkdir()
    return write_image(root, {"a": ("a.py", OPS, OPS_EXPORTS, {"timeout": 0.5}),
                              "b": ("b.py", OPS, OPS_EXPORTS, {"ping_interval": 0.1})})


@pytest.fixture
async def router(image: Path, plugrpc_tmp: Path) -> AsyncIterator[Server]:
    async with run_server(Config(root=image, socket=plugrpc_tmp / "r.sock", metrics="127.0.0.1:0")) as server:
        yield server


def url(server: Server) -> str:
    assert server.metrics is not None
    return server.metrics.url


async def scrape(address: str, accept: str = "") -> tuple[str, str]:
    """GET the metrics with urllib (in a thread: the router runs on this test's loop); (content type, body)."""
    def get() -> tuple[str, str]:
        request = urllib.request.Request(address, headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.headers["Content-Type"], response.read().decode()
    return await asyncio.to_thread(get)


def families(text: str) -> Families:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(found: Families, family: str, name: str | None = None, **labels: str) -> dict[tuple[Any, ...], float]:
    """Values of `family`'s samples called `name` (default: the family's) whose labels include `labels`."""
    out = {}
    for sample in found[family].samples:
        if sample.name == (name or family) and all(sample.labels.get(k) == v for k, v in labels.items()):
            out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_the_scrape_parses_and_its_figures_are_router_stats(router: Server) -> None:
    async with plugrpc.Client(router.config.socket, timeout=WAIT) as c:
        for n in range(20):
            assert await c.raw("a.echo", [n]) == n
        await c.raw("b.echo", [1])
        with pytest.raises(plugrpc.RpcError):
            await c.raw("a.nope")  # -32601 from the router: never reaches the plugin, not counted
        with pytest.raises(plugrpc.RpcError):
            await c.raw("a.hog", ["not a number"])  # the plugin's own error
        with pytest.raises(plugrpc.CallTimeout):
            await c.raw("a.block", [1])  # its timeout is 0.5 s
        stats = await c.raw("router.stats")
        kind, text = await scrape(url(router))
        assert kind.startswith("text/plain; version=0.0.4")
        found = families(text)
        for name in ("a", "b"):
            calls = samples(found, "plugrpc_calls", "plugrpc_calls_total", plugin=name)
            plugin = stats["plugins"][name]
            assert sum(calls.values()) == plugin["calls"]
            assert sum(v for k, v in calls.items() if ("outcome", "ok") not in k) == plugin["errors"]
            assert sum(v for k, v in calls.items() if ("outcome", "timeout") in k) == plugin["timeouts"]
            count = samples(found, "plugrpc_call_duration_seconds", "plugrpc_call_duration_seconds_count", plugin=name)
            assert list(count.values()) == [plugin["calls"]]
            buckets = list(samples(found, "plugrpc_call_duration_seconds", "plugrpc_call_duration_seconds_bucket",
                                   plugin=name).items())
            les = [float(dict(k)["le"]) for k, _ in buckets]
            assert les == sorted(les) and les[-1] == float("inf") and len(les) == len(metrics.LE_US) + 1
            values = [v for _, v in buckets]
            assert values == sorted(values) and values[-1] == plugin["calls"]
            total = samples(found, "plugrpc_call_duration_seconds", "plugrpc_call_duration_seconds_sum", plugin=name)
            assert list(total.values()) == [pytest.approx(router.router.plugins[name].target.stats.us / 1e6)]
        assert samples(found, "plugrpc_calls", "plugrpc_calls_total", plugin="a", method="echo",
                       outcome="ok") == {(("method", "echo"), ("outcome", "ok"), ("plugin", "a")): 20.0}
        assert list(samples(found, "plugrpc_calls", "plugrpc_calls_total", plugin="a", outcome="error").values()) == [1]
        # The timed-out call is 1 s long: the median of `a` (0.5 s timeout, 20 fast calls) is in the first buckets.
        p50 = stats["plugins"]["a"]["p50_ms"] / 1000
        below = next(v for k, v in buckets_of(found, "a") if float(dict(k)["le"]) >= p50)
        assert below >= 11
        assert samples(found, "plugrpc_plugin_up", plugin="a") == {(("mode", "rpc"), ("plugin", "a")): 1.0}
        assert list(samples(found, "plugrpc_plugin_restarts", "plugrpc_plugin_restarts_total",
                            plugin="a").values()) == [0]
        assert list(samples(found, "plugrpc_clients").values()) == [stats["clients"]]
        assert list(samples(found, "plugrpc_inflight_calls", plugin="a").values()) == [0]
        await until(lambda: router.router is not None and router.router.plugins["b"].status()["pings"] >= 2,
                    "pings of b")
        found = families((await scrape(url(router)))[1])
        assert list(samples(found, "plugrpc_plugin_pings", "plugrpc_plugin_pings_total", plugin="b").values())[0] >= 2
        assert "process_resident_memory_bytes" in found and "python_info" in found


def buckets_of(found: Families, plugin: str) -> list[tuple[Any, float]]:
    return list(samples(found, "plugrpc_call_duration_seconds", "plugrpc_call_duration_seconds_bucket",
                        plugin=plugin).items())


async def test_openmetrics_when_the_scraper_asks_for_it(router: Server) -> None:
    kind, text = await scrape(url(router), accept="application/openmetrics-text; version=1.0.0")
    assert kind.startswith("application/openmetrics-text") and text.endswith("# EOF\n")


async def test_exits_are_counted_by_reason(router: Server) -> None:
    assert router.router is not None
    async with plugrpc.Client(router.config.socket, timeout=WAIT) as c:
        os.kill(await c.raw("b.pid"), signal.SIGKILL)
        await until(lambda: router.router.plugins["b"].supervisor.restarts == 1, "the restart")  # type: ignore
        found = families((await scrape(url(router)))[1])
    assert samples(found, "plugrpc_plugin_exits", "plugrpc_plugin_exits_total", plugin="b") == {
        (("plugin", "b"), ("reason", "crash")): 1.0}
    assert list(samples(found, "plugrpc_plugin_restarts", "plugrpc_plugin_restarts_total",
                        plugin="b").values()) == [1]


async def test_events_and_nats_have_their_families(plugrpc_tmp: Path,
                                                  nats_server: Callable[..., NatsServer]) -> None:
    root = plugrpc_tmp / "events"
    root.mkdir()
    write_image(root, {"em": ("em.py", EMITTER, EMITTER_EXPORTS, {"events": ["port.*"]})})
    async with run_server(Config(root=root, socket=plugrpc_tmp / "e.sock", metrics="127.0.0.1:0")) as server:
        async with plugrpc.Client(server.config.socket, timeout=WAIT) as c, c.subscribe("em.>") as events:
            assert await c.raw("em.emit", ["port.up", 3]) == 3
            assert [(await anext(events)).seq for _ in range(3)] == [1, 2, 3]
            await c.raw("em.emit", ["disk.full"])  # not declared: rejected
            found = families((await scrape(url(server)))[1])
            assert samples(found, "plugrpc_event_subscriptions") == {(): 1.0}
    assert samples(found, "plugrpc_events_emitted", "plugrpc_events_emitted_total") == {(("plugin", "em"),): 3.0}
    assert samples(found, "plugrpc_events_rejected", "plugrpc_events_rejected_total") == {(("plugin", "em"),): 1.0}
    assert samples(found, "plugrpc_events_dropped", "plugrpc_events_dropped_total") == {(): 0.0}
    assert not any(name.startswith("plugrpc_nats") for name in found)  # no --nats, no NATS families

    nats = nats_server()
    config = Config(root=root, socket=plugrpc_tmp / "n.sock", metrics="127.0.0.1:0", nats=nats.url, name="m1")
    async with run_server(config) as server:
        await until(lambda: server.bridge is not None and server.bridge.service is not None, "the router on NATS")
        async with plugrpc.Client(server.config.socket, timeout=WAIT) as c:
            await c.raw("em.emit", ["port.up"])
        found = families((await scrape(url(server)))[1])
        assert samples(found, "plugrpc_nats_connected") == {(): 1.0}
        assert samples(found, "plugrpc_nats_inflight_calls") == {(): 0.0}
        assert samples(found, "plugrpc_nats_events_dropped", "plugrpc_nats_events_dropped_total") == {(): 0.0}
        nats.stop()
        await until(lambda: server.bridge is not None and not server.bridge.connected.is_set(), "NATS to go away")
        async with plugrpc.Client(server.config.socket, timeout=WAIT) as c:
            await c.raw("em.emit", ["port.up", 2])
        found = families((await scrape(url(server)))[1])
        assert samples(found, "plugrpc_nats_connected") == {(): 0.0}
        assert samples(found, "plugrpc_nats_events_dropped", "plugrpc_nats_events_dropped_total") == {(): 2.0}


async def test_metrics_on_a_unix_socket(image: Path, plugrpc_tmp: Path) -> None:
    path = plugrpc_tmp / "metrics.sock"
    async with run_server(Config(root=image, socket=plugrpc_tmp / "u.sock", metrics=f"unix:{path}")) as server:
        assert server.metrics is not None and server.metrics.url == f"unix:{path}"
        assert path.stat().st_mode & 0o777 == 0o600

        def get() -> tuple[int, str]:
            conn = UnixHTTPConnection(str(path))
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            body = response.read().decode()
            conn.close()
            return response.status, body

        status, body = await asyncio.to_thread(get)
        assert status == 200 and "plugrpc_plugin_up" in families(body)
    assert not path.exists()


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over AF_UNIX, as a scraper behind a unix socket would talk."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=WAIT)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(self.unix_path)


def host_port(server: Server) -> tuple[str, int]:
    assert server.metrics is not None
    host, port = server.metrics.url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    return host, int(port)


async def raw_http(server: Server, data: bytes) -> bytes:
    """Send `data` on a fresh TCP connection to the metrics port; all that comes back until the server closes."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*host_port(server)), WAIT)
    try:
        writer.write(data)
        if not data.endswith(b"\r\n\r\n"):
            writer.write_eof()  # an incomplete request: the scraper stops sending
        return await asyncio.wait_for(reader.read(), WAIT)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"200 OK"),
    (b"GET /other HTTP/1.1\r\n\r\n", b"404 Not Found"),
    (b"POST /metrics HTTP/1.1\r\n\r\n", b"405 Method Not Allowed"),
    (b"garbage\r\n\r\n", b"400 Bad Request"),
    (b"GET /metrics HTTP/1.1\r\n" + b"X-Long: " + b"x" * 9000, b"431 Request Header Fields Too Large"),
    (b"GET /metrics HTTP/1.1\r\n", b"400 Bad Request"),  # then end of file before the blank line
])
async def test_what_is_not_a_scrape_gets_a_clear_status_and_is_closed(router: Server, request_bytes: bytes,
                                                                      status: bytes) -> None:
    answer = await raw_http(router, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status + b"\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    if request_bytes.startswith(b"HEAD"):
        assert body == b"" and b"Content-Length: 0" not in head


async def test_scrapers_that_never_read_or_never_ask_are_cut_off_and_hold_nothing_up(
        router: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "SCRAPE_TIMEOUT", 0.5)
    host, port = host_port(router)
    stalled = []
    for n in range(4):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # and it never reads
        sock.connect((host, port))
        if n % 2 == 0:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")  # asks, never reads the answer
        stalled.append(sock)  # the others never even ask
    try:
        # Those that asked have their answer in the kernel's buffers, the router holds nothing for them;
        # those that never asked hold a connection each, until the timeout.
        await until(lambda: len(router.metrics.scrapers) >= 2, "the silent scrapers")  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        async with plugrpc.Client(router.config.socket, timeout=WAIT) as c:
            slowest = await slowest_of(c, 50)
        started = loop.time()
        assert "plugrpc_calls" in families((await scrape(url(router)))[1])  # another scraper is served meanwhile
        scraped = loop.time() - started
        await until(lambda: not router.metrics.scrapers, "the stalled ones to be cut off")  # type: ignore[union-attr]
        async with plugrpc.Client(router.config.socket, timeout=WAIT) as c:
            alone = await slowest_of(c, 50)
        figure("stalled scrapers: slowest of 50 calls meanwhile", slowest * 1000, "ms", stalled=4,
               after_ms=round(alone * 1000, 2))
        figure("stalled scrapers: another scrape meanwhile took", scraped * 1000, "ms", stalled=4)
        for n, sock in enumerate(stalled):
            got = await asyncio.to_thread(read_to_end, sock)
            assert got.startswith(b"HTTP/1.1 200 OK") if n % 2 == 0 else got == b""
    finally:
        for sock in stalled:
            sock.close()


async def slowest_of(c: plugrpc.Client, n: int) -> float:
    """The longest of `n` calls in a row, in seconds (the connection is made before the first)."""
    await c.raw("a.echo", [0])
    loop = asyncio.get_running_loop()
    slowest = 0.0
    for i in range(n):
        started = loop.time()
        assert await c.raw("a.echo", [i]) == i
        slowest = max(slowest, loop.time() - started)
    return slowest


def read_to_end(sock: socket.socket) -> bytes:
    """All a connection the server closed has left to read (a reset after the timeout counts as the end)."""
    sock.settimeout(WAIT)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


async def test_beyond_the_bound_the_oldest_scraper_makes_room(router: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "MAX_SCRAPERS", 1)
    with socket.create_connection(host_port(router), timeout=WAIT) as oldest:
        await until(lambda: len(router.metrics.scrapers) == 1, "one scraper")  # type: ignore[union-attr]
        assert (await raw_http(router, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
        assert await asyncio.to_thread(read_to_end, oldest) == b""


async def test_idle_connections_make_room_for_a_scrape(router: Server) -> None:
    """As many silent connections as the bound: each new scrape closes the oldest and is answered at
    once; a connection that never asks is closed after `REQUEST_TIMEOUT` in any case."""
    loop = asyncio.get_running_loop()
    idle = [await asyncio.wait_for(asyncio.open_connection(*host_port(router)), WAIT)
            for _ in range(metrics.MAX_SCRAPERS)]
    try:
        await until(lambda: len(router.metrics.scrapers) == metrics.MAX_SCRAPERS, "the idle ones")  # type: ignore[union-attr]
        slowest = 0.0
        for _ in range(3):
            started = loop.time()
            assert "plugrpc_calls" in families((await scrape(url(router)))[1])
            slowest = max(slowest, loop.time() - started)
        started = loop.time()
        for reader, _ in idle:
            await asyncio.wait_for(reader.read(), WAIT)  # closed by the router
        closed_after = loop.time() - started
        figure("16 idle metrics connections: slowest of 3 scrapes", slowest * 1000, "ms",
               idle_closed_within_s=round(closed_after, 2))
        assert slowest < 1.0 and closed_after < metrics.REQUEST_TIMEOUT + 1
    finally:
        for _, writer in idle:
            writer.close()


@pytest.mark.parametrize("text", ["9464", "host:", "host:99999", "unix:", "localhost:http"])
def test_a_bad_metrics_address_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--metrics"):
        Config(metrics=text)


def test_metrics_addresses() -> None:
    assert metrics_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert metrics_address("[::1]:0") == ("::1", 0)
    assert metrics_address("unix:/run/m.sock") == Path("/run/m.sock")


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1"):
            metrics.bind(("127.0.0.1", taken.getsockname()[1]))


async def test_without_prometheus_client_metrics_say_what_to_install(
        image: Path, plugrpc_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "prometheus_client"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "plugrpc.router.metrics")
    monkeypatch.delattr(plugrpc.router, "metrics")
    with pytest.raises(ConfigError, match=r"--metrics needs prometheus-client .*pip install 'plugrpc\[metrics\]'"):
        async with run_server(Config(root=image, socket=plugrpc_tmp / "x.sock", metrics="127.0.0.1:0")):
            pass  # pragma: no cover - startup fails


def test_prometheus_client_is_imported_only_with_metrics() -> None:
    code = ("import sys, plugrpc.tools.cli, plugrpc.router.server;"
            "assert 'prometheus_client' not in sys.modules and 'plugrpc.router.metrics' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

