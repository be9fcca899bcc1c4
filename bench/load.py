"""The load generator: closed-loop callers, one measuring window, and the CPU and memory it cost each process.

N callers each loop `t0 = now; await call(params); record(now - t0)`, on N connections
("conns") or all on one pipelined connection ("pipe"); a synchronous library's callers are
threads, each looping on its blocking call, as its users run them. After a warm-up, a timed window counts
completed calls (throughput) and keeps their latencies (percentiles); the CPU time of each
server process (utime+stime from /proc) and of this process over the window, divided by the
calls, gives CPU per call. The garbage collector of the load generator is paused during a
window, the same for every row. On 2 cores client and servers share the CPUs alike for every
row: ratios between rows are what the bench is for, not absolute times.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import resource
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from .procs import BenchError, cpu_seconds, machine_cpu, rss_kib
from .rows import Row
from .servers import Lab
from .settings import Scenario, Settings, payload_params


class _Window:
    """Flags the callers read at each call: recording, and time to stop."""

    __slots__ = ("recording", "stop")

    def __init__(self) -> None:
        self.recording = False
        self.stop = False


async def _caller(call: Callable[[Any], Any], params: Any, window: _Window, latencies: list[int]) -> None:
    clock = time.perf_counter_ns
    append = latencies.append
    while not window.stop:
        t0 = clock()
        await call(params)
        t1 = clock()
        if window.recording:
            append(t1 - t0)


def _blocking_caller(call: Callable[[Any], Any], params: Any, window: _Window, latencies: list[int]) -> None:
    """`_caller` for a synchronous library, in a thread of its own: how a user runs its callers."""
    clock = time.perf_counter_ns
    append = latencies.append
    while not window.stop:
        t0 = clock()
        call(params)
        t1 = clock()
        if window.recording:
            append(t1 - t0)


def _start_callers(calls: Sequence[Callable[[Any], Any]], callers: int, params: Any, window: _Window,
                   latencies: list[int], threads: ThreadPoolExecutor | None) -> list[asyncio.Future[Any]]:
    """The callers as tasks, or (a blocking client) as threads, one per caller, each a future to wait for."""
    if threads is None:
        return [asyncio.ensure_future(_caller(calls[i % len(calls)], params, window, latencies))
                for i in range(callers)]
    loop = asyncio.get_running_loop()
    return [loop.run_in_executor(threads, _blocking_caller, calls[i % len(calls)], params, window, latencies)
            for i in range(callers)]


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile in microseconds."""
    n = len(sorted_ns)
    idx = min(n - 1, max(0, -(-int(q * n * 1000) // 1000) - 1))
    return sorted_ns[idx] / 1000


class _Usage(NamedTuple):
    """CPU time so far of each role's processes, of this process and its children, and of the machine."""

    roles: dict[str, float]
    ours: resource.struct_rusage
    kids: resource.struct_rusage
    host: tuple[float, float, float]


def _usage_of(pids: dict[str, list[int]]) -> _Usage:
    return _Usage({role: _cpu(ps) for role, ps in pids.items()}, resource.getrusage(resource.RUSAGE_SELF),
                  resource.getrusage(resource.RUSAGE_CHILDREN), machine_cpu())


async def drive(
    calls: Sequence[Callable[[Any], Any]],
    callers: int,
    params: Any,
    warmup: float,
    duration: float,
    roles: Callable[[], dict[str, list[int]]],
    exec_children: bool = False,
    blocking: bool = False,
) -> dict[str, Any]:
    """Run `callers` closed-loop callers over `calls` and measure one window (`blocking`: calls that block, each
    caller in a thread of its own while this loop only keeps the time)."""
    window = _Window()
    latencies: list[int] = []
    threads = ThreadPoolExecutor(callers, thread_name_prefix="bench-caller") if blocking else None
    tasks = _start_callers(calls, callers, params, window, latencies, threads)
    try:
        await asyncio.sleep(warmup)
        _raise_failed(tasks)
        pids = roles()
        gc.disable()
        before = _usage_of(pids)
        t0 = time.perf_counter()
        window.recording = True
        await asyncio.sleep(duration)
        window.recording = False
        elapsed = time.perf_counter() - t0
        after = _usage_of(pids)
        rss = rss_of(pids)
        window.stop = True
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    finally:
        gc.enable()
        window.stop = True  # a thread cannot be cancelled: it stops after its call in flight
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if threads is not None:
            threads.shutdown(wait=False)
    if not latencies:
        raise BenchError(f"no call completed within {duration:.2f}s")
    return _figures(sorted(latencies), elapsed, before, after, rss, len(latencies), exec_children)


async def drive_inside(call: Callable[[str, Any], Awaitable[Any]], params: Any, warmup: float, duration: float,
                       roles: Callable[[], dict[str, list[int]]]) -> dict[str, Any]:
    """The p2p row: the closed loop of one caller runs inside the relay plugin (`relay.loop`), which times
    its own calls as `drive` does; CPU is read around the whole loop and shared out over all its calls."""
    pids = roles()
    before = _usage_of(pids)
    out = await asyncio.wait_for(call("relay.loop", {"params": params, "warmup": warmup, "seconds": duration}),
                                 warmup + duration + 60)
    after = _usage_of(pids)
    if not out["latencies"]:
        raise BenchError(f"the relay completed no call within {duration:.2f}s")
    return _figures(sorted(out["latencies"]), out["seconds"], before, after, rss_of(pids), out["calls"])


def _figures(latencies: list[int], elapsed: float, before: _Usage, after: _Usage, rss: dict[str, int],
             cpu_calls: int, exec_children: bool = False) -> dict[str, Any]:
    """A window's figures from its sorted latencies (ns) and the CPU used over `cpu_calls` calls."""
    n = len(latencies)
    cpu = {role: (after.roles[role] - before.roles[role]) / cpu_calls * 1e6 for role in before.roles}
    if exec_children:
        cpu["plugin"] = (_usage(after.kids) - _usage(before.kids)) / cpu_calls * 1e6
    ours = (sum(after.roles.values()) - sum(before.roles.values()) + _usage(after.ours) - _usage(before.ours)
            + _usage(after.kids) - _usage(before.kids))
    capacity = after.host[2] - before.host[2] or 1.0
    return {
        "calls": n,
        "seconds": round(elapsed, 4),
        "throughput": n / elapsed,
        "p50_us": percentile(latencies, 0.50),
        "p90_us": percentile(latencies, 0.90),
        "p99_us": percentile(latencies, 0.99),
        "p999_us": percentile(latencies, 0.999),
        "max_us": latencies[-1] / 1000,
        "mean_us": sum(latencies) / n / 1000,
        "cpu_us_per_call": cpu,
        "client_cpu_us_per_call": (_usage(after.ours) - _usage(before.ours)) / cpu_calls * 1e6,
        "rss_kib": rss,
        # What else ran on the machine during the window (other sessions, the kernel), in % of all CPUs.
        "other_cpu_pct": max(0.0, 100 * (after.host[0] - before.host[0] - ours) / capacity),
        "steal_pct": 100 * (after.host[1] - before.host[1]) / capacity,
    }


def _raise_failed(tasks: Sequence[asyncio.Future[Any]]) -> None:
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]


def _usage(ru: resource.struct_rusage) -> float:
    return ru.ru_utime + ru.ru_stime


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(p)
    return total


def _rss(pid: int) -> int:
    try:
        return rss_kib(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0


def rss_of(roles: dict[str, list[int]]) -> dict[str, int]:
    """RSS in KiB of each role, summed over its processes (0 for one that has exited)."""
    return {role: sum(_rss(p) for p in pids) for role, pids in roles.items()}


def _once(call: Callable[[Any], Any], params: Any, blocking: bool) -> Awaitable[Any]:
    """One call to await; a blocking client's runs in a worker thread, so the loop (and its timeouts) go on."""
    return asyncio.to_thread(call, params) if blocking else call(params)  # type: ignore[no-any-return]


async def measure(lab: Lab, row: Row, scen: Scenario, settings: Settings) -> dict[str, Any]:
    """One window of `row` under `scen`, after checking that the echo comes back intact."""
    lab.check_stop()
    server = await lab.server(row.server)
    conns = await row.client.open(server, scen.connections, row.method)
    try:
        params = payload_params(scen.payload)
        if row.client.inside:
            return await drive_inside(conns.conns[0].ask, params, settings.warmup, settings.duration, server.roles)
        blocking = row.client.blocking
        result = await asyncio.wait_for(_once(conns.calls[0], params, blocking), 60)
        if result != params:
            raise BenchError(f"{row.key}: echo came back different ({str(result)[:80]})")
        # One call on every connection first: connecting (gRPC's HTTP/2 handshake, aiohttp's lazy
        # connect) is not what a row measures.
        calls = conns.calls
        for start in range(1, len(calls), 64):
            await asyncio.wait_for(asyncio.gather(*(_once(c, params, blocking) for c in calls[start : start + 64])), 60)
        return await drive(conns.calls, scen.callers, params, settings.warmup, settings.duration, server.roles,
                           exec_children=row.client.charges_children, blocking=blocking)
    finally:
        await conns.aclose()
