"""A fleet under a silent failure: calls by plugin across three routers on NATS, one of them blackholed.

Three `plugrpc run --nats` routers on the SDK echo image, each reaching its own nats-server (with
the ping settings docs/fleet.md gives, as tests/e2e/test_fleet_silent.py runs it) through a fault
proxy of its own (bench/nats_fault.py). The callers are one `plugrpc.Client(url)` without
`router=`: the NATS client balances calls by plugin over the routers it discovers (client/balance.py),
with a 2 s timeout per call. Two rows, measured in pairs after the rounds, as many pairs as rounds,
their order alternating, each with a fresh client:

- `nats_fleet3`: none blackholed.
- `nats_blackhole`: one router's proxy turns to `blackhole` as the window starts (every byte it
  carries dropped both ways, sockets open: a partition the router and nats-server notice only
  when their pings go unanswered); its calls in flight fail at their timeout until the client
  stops picking it.

Each window: `SETTLE` s from the fault (or, calm, from the same moment) left out, then `window`
s measured: answered calls over the window (calls/s), their p50 and p99, and the share of the
calls sent in it that failed; the failures in the first `SETTLE` s are counted apart. After a
blackhole the proxy passes again (resetting the dropped connections) and the router must answer by
name before the next window.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Final

from . import log
from .fleet import answers, start_nats_server
from .mcp import spawn_piped
from .procs import BenchError, Child, wait_connectable
from .servers import PLUGRPC, Lab, Server, router_roles, sdk_image
from .settings import Settings, payload_params

ROWS: Final = ("nats_fleet3", "nats_blackhole")
LABELS: Final = {
    "nats_fleet3": "calls by plugin (plugrpc.Client(url), no router=) over three routers on NATS, none failing",
    "nats_blackhole": "the same, one of the three routers blackholed (its link to NATS drops every byte, silently)",
}
SERVER_CONF: Final = 'ping_interval: "2s"\nping_max: 2\nwrite_deadline: "2s"\n'
"""nats-server settings that match the routers' and callers' (docs/fleet.md, "Silent failures")."""
ROUTERS: Final = 3
VICTIM: Final = 1
"""The router whose link is blackholed."""
CALLERS: Final = 16
TIMEOUT: Final = 2.0
"""Seconds a call waits for its answer (its deadline)."""
SETTLE: Final = 2.0
"""Seconds from the fault's start that the figures leave out."""


def window_seconds(settings: Settings) -> float:
    """The measured part of a window: 5 of the run's windows (2 s in a full run)."""
    return 5 * settings.duration


class FaultProxy:
    """A bench/nats_fault.py process in front of nats-server; `set` switches its mode."""

    def __init__(self, child: Child, port: int) -> None:
        self.child = child
        self.url = f"nats://127.0.0.1:{port}"

    @classmethod
    async def start(cls, lab: Lab, name: str, upstream: int) -> FaultProxy:
        child = spawn_piped(lab, name, [sys.executable, "-m", "bench.nats_fault", str(upstream)])
        first = (await asyncio.wait_for(asyncio.to_thread(child.popen.stdout.readline), 30)).split()  # type: ignore
        if first[:1] != [b"port"]:
            raise child.died() if not child.alive() else BenchError(f"{name}: said {first!r}, not its port")
        return cls(child, int(first[1]))

    async def set(self, mode: str) -> None:
        def say() -> bytes:
            assert self.child.popen.stdin is not None and self.child.popen.stdout is not None
            self.child.popen.stdin.write(mode.encode() + b"\n")
            self.child.popen.stdin.flush()
            return self.child.popen.stdout.readline().strip()

        answer = await asyncio.wait_for(asyncio.to_thread(say), 30)
        if answer != b"ok":
            raise BenchError(f"{self.child.name}: {mode} answered {answer!r}")


@dataclass(frozen=True)
class FleetServer(Server):
    proxies: tuple[FaultProxy, ...] = ()
    routers: tuple[Child, ...] = ()


@dataclass(frozen=True)
class SilentFleet:
    """nats-server (silent-failure settings), a fault proxy per router, three routers on the SDK echo image."""

    name: str = "silent"

    async def start(self, lab: Lab) -> Server:
        conf = lab.workdir / f"{self.name}-nats.conf"
        conf.write_text(SERVER_CONF)
        nats, port = await start_nats_server(lab, f"{self.name}-nats", conf)
        proxies, routers = [], []
        for i in range(ROUTERS):
            proxy = await FaultProxy.start(lab, f"{self.name}-proxy{i}", port)
            routers.append(await _router(lab, f"{self.name}{i}", proxy.url))
            proxies.append(proxy)
        pids = [c.pid for c in routers]

        def roles() -> dict[str, list[int]]:
            return {**router_roles(pids), "nats-server": [nats.pid]}

        server = FleetServer(f"nats://127.0.0.1:{port}", nats, roles, proxies=tuple(proxies), routers=tuple(routers))
        await all_answer(server)
        return server


async def _router(lab: Lab, name: str, url: str) -> Child:
    image = sdk_image(lab.fresh_dir(f"{name}-image"), 1)
    path = lab.socket(name)
    env = dict(os.environ, XDG_RUNTIME_DIR=os.fspath(lab.fresh_dir(f"{name}-run")))
    child = lab.fleet.spawn(name, [*PLUGRPC, "run", "--root", os.fspath(image), "--socket", os.fspath(path),
                                   "--nats", url, "--name", name], env=env)
    await wait_connectable(path, child)
    return child


async def all_answer(server: FleetServer) -> None:
    """Each router answers `bench.echo` by name on NATS (after a blackhole, once it has joined again)."""
    for child in server.routers:
        await answers(Server(f"{server.path}/plugrpc.call.{child.name}", child, server.roles), "bench.echo", child,
                      within=60)


# --- one window -------------------------------------------------------------------------------


@dataclass
class Outcomes:
    """What became of each call: (sent, done, answered?) in monotonic seconds."""

    calls: list[tuple[float, float, bool]] = field(default_factory=list)
    stop: bool = False


async def _caller(client: Any, params: Any, out: Outcomes) -> None:
    import plugrpc

    while not out.stop:
        sent = time.monotonic()
        try:
            result = await client.raw("bench.echo", params, timeout=TIMEOUT)
        except plugrpc.RpcError:
            out.calls.append((sent, time.monotonic(), False))
            await asyncio.sleep(0.01)  # a caller that failed tries again shortly, as a real one would
            continue
        if result != params:
            raise BenchError(f"echo came back different: {str(result)[:80]}")
        out.calls.append((sent, time.monotonic(), True))


async def one_window(server: FleetServer, blackhole: bool, settings: Settings) -> dict[str, Any]:
    """Callers by plugin for SETTLE + window s, one router blackholed from the start (or none)."""
    from plugrpc.client.nats import NatsClient

    params = payload_params(100)
    out = Outcomes()
    async with NatsClient(server.path, timeout=TIMEOUT) as client:
        tasks = [asyncio.ensure_future(_caller(client, params, out)) for _ in range(CALLERS)]
        try:
            await asyncio.sleep(max(settings.warmup, 0.3))
            if not any(ok for *_, ok in out.calls):
                raise BenchError("no call by plugin was answered in the warm-up")
            start = time.monotonic()
            if blackhole:
                await server.proxies[VICTIM].set("blackhole")
            await asyncio.sleep(SETTLE + window_seconds(settings))
            end = time.monotonic()
        finally:
            out.stop = True
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT + 10)
            if blackhole:
                await server.proxies[VICTIM].set("pass")
    if blackhole:
        await all_answer(server)
    return _figures(out, start, end)


def percentile(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile in microseconds (bench.load's)."""
    return sorted_ns[min(len(sorted_ns) - 1, max(0, -(-int(q * len(sorted_ns) * 1000) // 1000) - 1))] / 1000


def _figures(out: Outcomes, start: float, end: float) -> dict[str, Any]:
    """Calls/s, p50, p99 and the failed share over [start + SETTLE, end); failures in the first SETTLE s apart."""
    measured = start + SETTLE
    sent = [(s, d, ok) for s, d, ok in out.calls if measured <= s < end]
    answered = sorted(int((d - s) * 1e9) for s, d, ok in sent if ok)
    done_ok = sum(1 for s, d, ok in out.calls if ok and measured <= d < end)
    early = sum(1 for s, _, ok in out.calls if start <= s < measured and not ok)
    if not answered:
        raise BenchError("no call answered in the measured window")
    return {"throughput": done_ok / (end - measured), "p50_us": percentile(answered, 0.5),
            "p99_us": percentile(answered, 0.99), "sent": len(sent), "failed": len(sent) - len(answered),
            "failed_pct": 100 * (len(sent) - len(answered)) / len(sent), "failed_first_2s": early,
            "seconds": round(end - measured, 3)}


async def silent_phase(lab: Lab, selected: set[str], settings: Settings) -> dict[str, Any]:
    """`settings.rounds` pairs of windows (calm, blackholed; the order alternating), on one fleet."""
    keys = [k for k in ROWS if k in selected]
    if not keys:
        return {}
    out: dict[str, Any] = {"callers": CALLERS, "timeout_s": TIMEOUT, "settle_s": SETTLE,
                           "window_s": window_seconds(settings), "rows": {k: [] for k in keys}, "errors": {}}
    try:
        server = await lab.server(SILENT)
    except BenchError as exc:
        out["skipped"] = str(exc)
        log(f"[silent] FAILED to start the fleet: {exc}")
        return out
    assert isinstance(server, FleetServer)
    for rnd in range(settings.rounds):
        for key in keys if rnd % 2 == 0 else keys[::-1]:
            lab.check_stop()
            try:
                value: dict[str, Any] | None = await one_window(server, key == "nats_blackhole", settings)
            except Exception as exc:  # reported; the round has no figure
                value = None
                out["errors"][f"{key} round {rnd + 1}"] = str(exc) or type(exc).__name__
                log(f"[silent] {key} round {rnd + 1} FAILED: {exc!r}")
            out["rows"][key].append(value)
            if value:
                log(f"[silent] {key} round {rnd + 1}/{settings.rounds}: {value['throughput']:,.0f}/s, p50 "
                    f"{value['p50_us'] / 1000:.2f} ms, {value['failed']} of {value['sent']} failed after "
                    f"{SETTLE:g} s ({value['failed_first_2s']} in the first {SETTLE:g} s)")
    return out


def pair_ratio(data: dict[str, Any], key: str, base: str, figure: str) -> list[float]:
    """`key`'s figure over `base`'s, within each round that has both."""
    rows = data.get("silent", {}).get("rows", {})
    return [a[figure] / b[figure] for a, b in itertools.zip_longest(rows.get(key, []), rows.get(base, []))
            if a and b and b[figure]]


def median_of(data: dict[str, Any], key: str, figure: str) -> float | None:
    values = [r[figure] for r in data.get("silent", {}).get("rows", {}).get(key, []) if r]
    return statistics.median(values) if values else None


SILENT: Final = SilentFleet()
