"""`plugrpc run --metrics`: the router's figures in the Prometheus text format.

The body of every scrape is prometheus-client's own exposition (`choose_encoder`: the classic
text format, or OpenMetrics when the scraper asks for it) of a registry holding `RouterCollector`,
which reads the router's state when it is scraped: the call path records nothing for metrics
(its counters are `router.stats`' own). Served on the router's event loop, so the collector sees
a consistent state, by a small HTTP/1.1 responder that reads one request, writes one response
and closes. Scrapes are served side by side, at most `MAX_SCRAPERS` connections at once: one
more closes the oldest, so connections that never ask cannot keep a scraper out. A request must
arrive within `REQUEST_TIMEOUT`, its answer be read within `SCRAPE_TIMEOUT`, and one that sends
too much is answered 431: nothing else waits for them. The endpoint has no authentication of its
own: bind it to 127.0.0.1 or a unix socket (mode 0600), or put a proxy with authentication in front.

This module is imported only when `--metrics` is given, and only then is prometheus-client needed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from .. import sockets
from ..errors import ConfigError
from ..process.supervisor import PluginState
from .stats import CallStats, bucket_bounds

if TYPE_CHECKING:
    from .routing import Router

REQUEST_TIMEOUT: Final = 2.0
"""Seconds from accept to the end of the request's headers: a connection that does not ask is closed."""
SCRAPE_TIMEOUT: Final = 10.0
"""Seconds the scraper has to read the answer once it is written."""
MAX_SCRAPERS: Final = 16
"""Scrape connections held at once; one more closes the oldest (Prometheus makes one at a time)."""
MAX_REQUEST: Final = 8192
"""Bytes of request line and headers read; a longer request is answered 431 and closed."""
_BOUNDS: Final = bucket_bounds()
LE_US: Final = tuple(upper for _, upper in _BOUNDS if 16 <= upper <= 1 << 36 and upper & (upper - 1) == 0)
"""The histogram's `le` bounds in microseconds: every power of two from 16 us to about 19 hours. Each is
where one of `router.stats`' buckets ends, so each cumulative count is exact."""

log = logging.getLogger("plugrpc.metrics")


class RouterCollector:
    """Every plugrpc_ figure, read from the router when Prometheus scrapes (a prometheus-client Collector)."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        yield from self._calls()
        yield from self._plugins()
        yield from self._direct()
        yield GaugeMetricFamily("plugrpc_clients", "Client connections to the router's socket now.",
                                value=len(self.router.clients))
        yield from self._events()
        yield from self._nats()

    def _events(self) -> Iterator[Metric]:
        hub = self.router.events
        emitted = CounterMetricFamily("plugrpc_events_emitted", "Events accepted from the plugin (declared, "
                                      "well formed) and passed on to subscribers and NATS.", labels=["plugin"])
        rejected = CounterMetricFamily("plugrpc_events_rejected", "Notifications from the plugin the router did "
                                       "not take (undeclared events, malformed rpc.event or rpc.progress).",
                                       labels=["plugin"])
        for name in self.router.plugins:
            emitted.add_metric([name], hub.emitted.get(name, 0))
            rejected.add_metric([name], hub.rejected.get(name, 0))
        yield from (emitted, rejected)
        yield CounterMetricFamily("plugrpc_events_dropped", "Events dropped for subscribers that did not keep up.",
                                  value=hub.dropped)
        yield GaugeMetricFamily("plugrpc_event_subscriptions", "Subscriptions of the router's clients now.",
                                value=hub.subscriptions())

    def _nats(self) -> Iterator[Metric]:
        bridge = self.router.nats
        if bridge is None:  # no --nats: no NATS families at all
            return
        yield GaugeMetricFamily("plugrpc_nats_connected", "1 while the router is connected to NATS.",
                                value=1 if bridge.connected.is_set() else 0)
        yield GaugeMetricFamily("plugrpc_nats_inflight_calls", "Calls from NATS given to plugins and not "
                                "answered yet (bounded like one socket connection's).", value=bridge.inflight)
        yield CounterMetricFamily("plugrpc_nats_events_dropped", "Events not published on NATS: NATS away, or "
                                  "over the server's max_payload.", value=bridge.events_dropped)
        expired = CounterMetricFamily("plugrpc_calls_expired", "Calls from NATS dropped unrun because their "
                                      "caller's deadline had passed, by plugin (empty: dropped unread, sent by "
                                      "router name).", labels=["plugin"])
        for plugin, count in bridge.expired.counts.items():
            expired.add_metric([plugin], count)
        yield expired

    def _calls(self) -> Iterator[Metric]:
        calls = CounterMetricFamily("plugrpc_calls", "Calls answered, by plugin, method and outcome (ok; error: "
                                    "the plugin's; timeout, unavailable, overloaded, too_large: the router's).",
                                    labels=["plugin", "method", "outcome"])
        duration = HistogramMetricFamily("plugrpc_call_duration_seconds", "Time from receiving a call to answering "
                                         "it, by plugin.", labels=["plugin"])
        inflight = GaugeMetricFamily("plugrpc_inflight_calls", "Calls given to the plugin and not answered yet "
                                     "(written to it or waiting for it).", labels=["plugin"])
        dropped = CounterMetricFamily("plugrpc_notifications_dropped", "Clients' notifications not forwarded to "
                                      "the plugin: it had max_pending calls, or did not read as fast as it was sent "
                                      "to (an exec plugin: no free slot).", labels=["plugin"])
        for name, plugin in self.router.plugins.items():
            stats = plugin.target.stats
            for method, count in stats.methods.items():
                failed = 0
                for (m, outcome), n in stats.failures.items():
                    if m == method:
                        calls.add_metric([name, method, outcome], n)
                        failed += n
                calls.add_metric([name, method, "ok"], count - failed)
            duration.add_metric([name], _buckets(stats), stats.us / 1_000_000)
            inflight.add_metric([name], plugin.target.busy())
            dropped.add_metric([name], stats.dropped)
        yield from (calls, duration, inflight, dropped)

    def _plugins(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("plugrpc_plugin_up", "1 while the plugin can serve at once: its process runs (an "
                               "exec plugin: it is not stopping).", labels=["plugin", "mode"])
        restarts = CounterMetricFamily("plugrpc_plugin_restarts", "Times the plugin's process was started again.",
                                       labels=["plugin"])
        exits = CounterMetricFamily("plugrpc_plugin_exits", "Processes of the plugin that ended, by why: crash, "
                                    "limit, unresponsive, stopped.", labels=["plugin", "reason"])
        pings = CounterMetricFamily("plugrpc_plugin_pings", "Liveness pings sent to the plugin.", labels=["plugin"])
        for name, plugin in self.router.plugins.items():
            sup = plugin.supervisor
            if sup is None:
                up.add_metric([name, "exec"], 0 if plugin.target.status().get("state") == "stopped" else 1)
                continue
            up.add_metric([name, "rpc"], 1 if sup.state is PluginState.RUNNING else 0)
            restarts.add_metric([name], sup.restarts)
            for reason, n in sorted(sup.exits.items()):
                exits.add_metric([name, reason], n)
            if plugin.liveness is not None:
                pings.add_metric([name], plugin.liveness.pings)
        yield from (up, restarts, exits, pings)


    def _direct(self) -> Iterator[Metric]:
        """Direct connections, as the router counts them, and their calls, as the plugin last reported them."""
        calls = CounterMetricFamily("plugrpc_direct_calls", "Calls made on direct connections to the plugin, as it "
                                    "reported them in its last answer to the router's ping.", labels=["plugin"])
        errors = CounterMetricFamily("plugrpc_direct_errors", "Direct calls the plugin answered with an error, as it "
                                     "reported them in its last answer to the router's ping.", labels=["plugin"])
        conns = GaugeMetricFamily("plugrpc_direct_connections", "Direct connections handed out to the plugin "
                                  "(router.connect) and not ended.", labels=["plugin"])
        for name, plugin in self.router.plugins.items():
            if plugin.supervisor is None or plugin.spec.transport != "socket":
                continue
            figures = plugin.direct.status()
            conns.add_metric([name], figures["connections"])
            calls.add_metric([name], figures["calls"] or 0)
            errors.add_metric([name], figures["errors"] or 0)
        yield from (calls, errors, conns)


def _buckets(stats: CallStats) -> list[tuple[str, float]]:
    """Cumulative counts at `LE_US` from the router's histogram, then +Inf."""
    hist = stats.hist
    out = []
    seen = 0
    n = 0
    for le in LE_US:
        while n < len(_BOUNDS) and _BOUNDS[n][1] <= le:  # every latency of that bucket is below `le`
            seen += hist[_BOUNDS[n][0]]
            n += 1
        out.append((repr(le / 1_000_000), float(seen)))
    out.append(("+Inf", float(sum(hist))))
    return out


def registry(router: Router) -> CollectorRegistry:
    """The router's figures, and its own process's (CPU, memory, descriptors) and Python's."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RouterCollector(router))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg


def bind(address: tuple[str, int] | Path) -> socket.socket:
    """The metrics listener: bound before any plugin starts, so a port in use stops `plugrpc run` cleanly."""
    if isinstance(address, Path):
        return sockets.bind_socket(address, 0o600)
    host, port = address
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=64)
    except OSError as exc:
        raise ConfigError(f"--metrics cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


class MetricsServer:
    """Serves the router's registry over HTTP on a bound listener until `close()`."""

    def __init__(self, router: Router) -> None:
        self.registry = registry(router)
        self.scrapers: dict[Scrape, None] = {}
        """Connections held now, oldest first."""
        self.url = ""
        self._server: asyncio.AbstractServer | None = None
        self._path: Path | None = None

    async def serve(self, sock: socket.socket) -> None:
        """Start answering scrapes on `sock` (from `bind`)."""
        loop = asyncio.get_running_loop()
        name = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            self._path = Path(name)
            self.url = f"unix:{name}"
            self._server = await loop.create_unix_server(lambda: Scrape(self), sock=sock)
        else:
            host = name[0] if sock.family == socket.AF_INET else f"[{name[0]}]"
            self.url = f"http://{host}:{name[1]}/metrics"
            self._server = await loop.create_server(lambda: Scrape(self), sock=sock)
        log.info("metrics on %s", self.url)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for scrape in list(self.scrapers):
            scrape.abort()
        if self._server is not None:
            await self._server.wait_closed()
        if self._path is not None:
            sockets.remove_socket(self._path)


class Scrape(asyncio.Protocol):
    """One scrape: read `GET /metrics`, write the exposition, close; cut off after SCRAPE_TIMEOUT."""

    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.request = b""
        self.answered = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        scrapers = self.server.scrapers
        if len(scrapers) >= MAX_SCRAPERS:
            oldest = next(iter(scrapers))
            del scrapers[oldest]
            log.warning("more than %d metrics connections at once; closing the oldest", MAX_SCRAPERS)
            oldest.abort()
        scrapers[self] = None
        self._timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, self.abort)

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return  # a scraper that keeps sending gets nothing more; the timer ends it
        self.request += data
        head, sep, _ = self.request.partition(b"\r\n\r\n")
        if not sep:
            if len(self.request) > MAX_REQUEST:
                self._respond(431, b"request headers too large\n")
            return
        self._answer(head)

    def eof_received(self) -> bool | None:
        if not self.answered:
            self._respond(400, b"incomplete request\n")
        return True  # keep the transport open until our answer is written

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.scrapers.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _answer(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._respond(400, b"expected an HTTP request line like GET /metrics HTTP/1.1\n")
            return
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            self._respond(405, b"only GET and HEAD\n", head=method == "HEAD")
        elif target != "/metrics":
            self._respond(404, b"plugrpc serves its metrics at /metrics\n", head=method == "HEAD")
        else:
            headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
            accept = next((v.strip() for k, v in headers.items() if k.strip().lower() == "accept"), "")
            encoder, content_type = choose_encoder(accept)
            self._respond(200, encoder(self.server.registry), content_type, head=method == "HEAD")

    def _respond(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
                 head: bool = False) -> None:
        self.answered = True
        assert self.transport is not None
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large"}[status]
        self.transport.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                             f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        if not head:
            self.transport.write(body)
        self.transport.close()  # after what is buffered is written; the timer cuts off one who never reads
        if self._timer is not None:
            self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(SCRAPE_TIMEOUT, self.abort)
