"""The fan-out rows: one plugin emitting events to 1, 100 and 1,000 subscribers, measured in every round.

A closed loop of bursts: a caller asks the router row's plugin (`bench.burst`) for `BURST`
events at once, and the burst is done when every subscriber has all of them (the plugin's
answer says the router has them, not that they were delivered). Events delivered per second
count each event once per subscriber. Then the same loop one event at a time: one subscriber,
the probe, reads every event, and the time from its emit in the plugin (CLOCK_MONOTONIC, one
clock for every process of the machine) to its arrival is the emit-to-delivery latency. Beside
them, in the same round, the same plugin answering `CALLS100` callers on their own connections:
what fan-out to 100 subscribers is compared with (bench.targets).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from plugrpc import wire

from . import log
from .clients import NdjsonConnections, open_ndjson, open_unix
from .load import drive, percentile
from .procs import BenchError
from .rows import CALLS100, ROUTER, Fanout
from .servers import Lab, Server
from .settings import Settings, payload_params

BURST: Final = 200
"""Events per burst: a subscriber's buffers take them all (about 30 KB), so none waits in its backlog or is dropped."""
PAD: Final = 60
"""Bytes of padding in each event's data, for about 100 B of data as in the call rows."""
BURST_TIMEOUT: Final = 30.0
SUBSCRIBE: Final = wire.dumps({"jsonrpc": "2.0", "method": "router.subscribe",
                               "params": {"events": ["bench.tick"]}, "id": 0})


class _Countdown:
    """Subscribers still short of the current burst; `done` resolves when none is."""

    __slots__ = ("left", "done")

    def __init__(self, loop: asyncio.AbstractEventLoop, left: int) -> None:
        self.left = left
        self.done: asyncio.Future[None] = loop.create_future()

    def one_done(self) -> None:
        self.left -= 1
        if not self.left and not self.done.done():
            self.done.set_result(None)


class Subscriber(asyncio.Protocol):
    """A subscribed connection that counts lines; the probe also parses them for their latency."""

    def __init__(self, probe: bool) -> None:
        self.probe = probe
        self.lines = 0
        self.target = 1  # the subscribe answer
        self.countdown: _Countdown | None = None
        self.transport: asyncio.Transport | None = None
        self.splitter = wire.LineSplitter()
        self.latencies: list[int] = []
        self.recording = False
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.lines += data.count(b"\n")
        if self.probe:
            now = time.monotonic_ns()
            for line in self.splitter.feed(data):
                params = wire.loads(line).get("params")
                if params is None:
                    continue  # an answer
                self.dropped += params.get("dropped", 0)
                if self.recording:
                    self.latencies.append(now - params["data"]["t"])
        if self.countdown is not None and self.lines >= self.target:
            countdown, self.countdown = self.countdown, None
            countdown.one_done()

    def expect(self, lines: int, countdown: _Countdown) -> None:
        self.target = self.lines + lines
        self.countdown = countdown


async def _subscribers(path: str, n: int) -> list[Subscriber]:
    subs: list[Subscriber] = []
    try:
        for start in range(0, n, 64):
            subs += await asyncio.gather(*(open_unix(path, lambda i=i: Subscriber(probe=i == 0))
                                           for i in range(start, min(n, start + 64))))
        countdown = _Countdown(asyncio.get_running_loop(), len(subs))
        for sub in subs:
            sub.expect(1, countdown)
            assert sub.transport is not None
            sub.transport.write(SUBSCRIBE)
        await asyncio.wait_for(countdown.done, BURST_TIMEOUT)
    except BaseException:
        _close(subs)
        raise
    return subs


def _close(subs: list[Subscriber]) -> None:
    for sub in subs:
        if sub.transport is not None:
            sub.transport.close()


async def fan_out(server: Server, n: int, settings: Settings) -> dict[str, Any]:
    """Bursts of events to `n` subscribers for a window: events and deliveries per second, emit-to-delivery latency."""
    loop = asyncio.get_running_loop()
    subs = await _subscribers(server.path, n)
    caller = await open_ndjson(server.path, "bench.burst")

    async def burst(events: int) -> None:
        countdown = _Countdown(loop, len(subs))
        for sub in subs:
            sub.expect(events, countdown)
        if await caller.call({"n": events, "size": PAD}) != events:
            raise BenchError("bench.burst emitted fewer events than asked")
        try:
            await asyncio.wait_for(countdown.done, BURST_TIMEOUT)
        except TimeoutError:
            raise BenchError(f"{countdown.left} of {n} subscribers did not get a burst of {events} events within "
                             f"{BURST_TIMEOUT:g}s (dropped: {subs[0].dropped} at the probe)") from None

    async def window(events: int, seconds: float) -> tuple[int, float]:
        bursts, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await burst(events)
            bursts += 1
        return bursts, time.perf_counter() - t0

    try:
        await window(BURST, settings.warmup)
        bursts, elapsed = await window(BURST, settings.duration)
        probe = subs[0]
        probe.recording = True
        await window(1, settings.duration / 2)
        probe.recording = False
    finally:
        _close(subs)
        await caller.aclose()
    latencies = sorted(probe.latencies)
    return {"subscribers": n, "bursts": bursts, "burst": BURST, "seconds": round(elapsed, 4),
            "events_per_s": bursts * BURST / elapsed, "deliveries_per_s": bursts * BURST * n / elapsed,
            "p50_us": percentile(latencies, 0.5), "p99_us": percentile(latencies, 0.99), "dropped": probe.dropped}


async def calls(server: Server, settings: Settings) -> dict[str, Any]:
    """The same plugin answering `CALLS100` callers, each on its own connection (bench.load's closed loop)."""
    conns = await NdjsonConnections.open(server.path, CALLS100, ["bench.echo"])
    try:
        run = await drive(conns.calls, CALLS100, payload_params(100), settings.warmup, settings.duration, server.roles)
    finally:
        await conns.aclose()
    return {"callers": CALLS100, "throughput": run["throughput"], "p50_us": run["p50_us"]}


async def fanout_round(lab: Lab, fanouts: list[Fanout], settings: Settings) -> dict[str, Any]:
    """Every fan-out row once, and the calls they are compared with; a row that fails is reported, not fatal."""
    out: dict[str, Any] = {}
    if not fanouts:
        return out
    server = await lab.server(ROUTER)
    for f in fanouts:
        lab.check_stop()
        n = min(f.subscribers, settings.max_subscribers)
        try:
            out[f.key] = value = await fan_out(server, n, settings)
        except Exception as exc:  # one row failing must not end the run
            out[f.key] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"[fanout] {f.key}: FAILED: {exc}")
            continue
        log(f"[fanout] {f.key:10} {n:>5} subscribers  {value['deliveries_per_s']:>11,.0f} deliveries/s  "
            f"{value['events_per_s']:>9,.0f} events/s  p50 {value['p50_us']:,.0f}us")
    out["calls100"] = await calls(server, settings)
    log(f"[fanout] calls100   {CALLS100:>5} callers      {out['calls100']['throughput']:>11,.0f} calls/s")
    return out
