"""The bench's measurements: scenarios, the closed-loop load generator, rounds, memory, dispatch, profile.

Load model. Every server runs in its own process (one per server, as deployed); this process is
the load generator. N callers each loop `t0 = now; await call(params); record(now - t0)`, on
N connections ("conns") or all on one pipelined connection ("pipe"). After a warm-up, a timed
window counts completed calls (throughput) and keeps their latencies (percentiles); the CPU time
of each server process (utime+stime from /proc) and of this process over the window, divided
by the calls, gives CPU per call. The garbage collector of the load generator is paused during
a window, the same for every row. On 2 cores this means client and servers share the CPUs
alike for every row: ratios between rows are what the bench is for, not absolute times.

Rounds. Each round runs every scenario, and within a scenario every row, in an order rotated
from round to round, so drift on the machine spreads over all rows. Figures are medians over
rounds, with the spread (max-min over median); ratios are taken within a round, then the median.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from .clients import NdjsonConnections
from .procs import BenchError, cpu_seconds, machine_cpu, rss_kib
from .rows import PLUGRPC, Lab, Row

KIB: Final = 1024
MIB: Final = 1024 * 1024


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout keeps only the tables."""
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Settings:
    """How much to measure; `--quick` and `--tiny` shrink the same scenarios."""

    rounds: int = 11
    warmup: float = 0.15
    duration: float = 0.4
    concurrency: tuple[int, ...] = (1, 8, 64, 256)
    payloads: tuple[int, ...] = (100, 10 * KIB, MIB)
    idle_conns: int = 1000
    rss_plugins: int = 10
    dispatch_seconds: float = 0.2
    profile: bool = False
    profile_seconds: float = 5.0
    quiet_pct: float = 20.0
    """A window during which other processes used more than this % of all CPUs is measured again..."""
    retries: int = 2
    """...at most this many times per measurement..."""
    retry_seconds: float = 90.0
    """...and for at most this many seconds over the whole run."""
    mode: str = "full"

    @classmethod
    def quick(cls, profile: bool = False) -> Settings:
        return cls(rounds=2, warmup=0.05, duration=0.12, dispatch_seconds=0.05, profile=profile,
                   profile_seconds=2.0, retries=1, retry_seconds=15.0, mode="quick")

    @classmethod
    def tiny(cls) -> Settings:
        """Seconds, for the smoke test: every code path, no meaningful figure."""
        return cls(rounds=1, warmup=0.02, duration=0.05, concurrency=(1, 8), payloads=(100, 10 * KIB),
                   idle_conns=20, rss_plugins=2, dispatch_seconds=0.02, retries=0, mode="tiny")


@dataclass(frozen=True)
class Scenario:
    """One load shape: `callers` closed-loop callers on their own connections or on one, one payload size."""

    mode: str
    callers: int
    payload: int

    @property
    def key(self) -> str:
        return f"{self.mode}-c{self.callers}-{size_label(self.payload).replace(' ', '')}"

    @property
    def connections(self) -> int:
        return self.callers if self.mode == "conns" else 1

    def describe(self) -> str:
        return f"{self.mode:5} c={self.callers:<3} {size_label(self.payload):>6}"


def size_label(n: int) -> str:
    if n >= MIB and n % MIB == 0:
        return f"{n // MIB} MiB"
    if n >= KIB and n % KIB == 0:
        return f"{n // KIB} KiB"
    return f"{n} B"


def scenarios(settings: Settings) -> list[Scenario]:
    """Latency at concurrency 1 for every payload, then 100 B at each concurrency, both modes."""
    small = settings.payloads[0]
    out = [Scenario("conns", 1, p) for p in settings.payloads]
    for c in settings.concurrency:
        if c > 1:
            out += [Scenario("conns", c, small), Scenario("pipe", c, small)]
    return out


def not_applicable(row: Row, scen: Scenario) -> str | None:
    """Why `row` has no figure for `scen` by its nature (not a failure)."""
    if row.client == "exec" and scen.callers > 1:
        return "core0's exec model runs one process per call, sequentially"
    if scen.mode == "pipe" and not row.pipelining:
        return "HTTP/1.1 (aiohttp) has one call in flight per connection: no pipelining"
    if row.max_payload is not None and scen.payload > row.max_payload:
        return row.max_payload_reason
    if row.only is not None and scen.key not in row.only:
        return row.only_reason
    return None


def payload_params(size: int) -> dict[str, str]:
    """Params whose JSON text is exactly `size` bytes: `{"data":"xxxx..."}`."""
    return {"data": "x" * max(0, size - len('{"data":""}'))}


# --- the load generator ----------------------------------------------------------------------


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


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile in microseconds."""
    n = len(sorted_ns)
    idx = min(n - 1, max(0, -(-int(q * n * 1000) // 1000) - 1))
    return sorted_ns[idx] / 1000


async def drive(
    calls: Sequence[Callable[[Any], Any]],
    callers: int,
    params: Any,
    warmup: float,
    duration: float,
    roles: Callable[[], dict[str, list[int]]],
    exec_children: bool = False,
) -> dict[str, Any]:
    """Run `callers` closed-loop callers over `calls` and measure one window."""
    window = _Window()
    latencies: list[int] = []
    tasks = [asyncio.ensure_future(_caller(calls[i % len(calls)], params, window, latencies)) for i in range(callers)]
    try:
        await asyncio.sleep(warmup)
        _raise_failed(tasks)
        pids = roles()
        gc.disable()
        cpu0 = {role: _cpu(ps) for role, ps in pids.items()}
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        host0 = machine_cpu()
        t0 = time.perf_counter()
        window.recording = True
        await asyncio.sleep(duration)
        window.recording = False
        elapsed = time.perf_counter() - t0
        host1 = machine_cpu()
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu1 = {role: _cpu(ps) for role, ps in pids.items()}
        rss = {role: sum(_rss(p) for p in ps) for role, ps in pids.items()}
        window.stop = True
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    finally:
        gc.enable()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    n = len(latencies)
    if n == 0:
        raise BenchError(f"no call completed within {duration:.2f}s")
    latencies.sort()
    cpu = {role: (cpu1[role] - cpu0[role]) / n * 1e6 for role in pids}
    if exec_children:
        cpu["plugin"] = (_usage(kids1) - _usage(kids0)) / n * 1e6
    ours = sum(cpu1[r] - cpu0[r] for r in pids) + _usage(self1) - _usage(self0) + _usage(kids1) - _usage(kids0)
    capacity = host1[2] - host0[2] or 1.0
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
        "client_cpu_us_per_call": (_usage(self1) - _usage(self0)) / n * 1e6,
        "rss_kib": rss,
        # What else ran on the machine during the window (other sessions, the kernel), in % of all CPUs.
        "other_cpu_pct": max(0.0, 100 * (host1[0] - host0[0] - ours) / capacity),
        "steal_pct": 100 * (host1[1] - host0[1]) / capacity,
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


async def measure(lab: Lab, row: Row, scen: Scenario, settings: Settings) -> dict[str, Any]:
    """One window of `row` under `scen`, after checking that the echo comes back intact."""
    lab.check_stop()
    conns, roles = await lab.open(row, scen.connections)
    try:
        params = payload_params(scen.payload)
        result = await asyncio.wait_for(conns.calls[0](params), 60)
        if result != params:
            raise BenchError(f"{row.key}: echo came back different ({str(result)[:80]})")
        # One call on every connection first: connecting (gRPC's HTTP/2 handshake, aiohttp's lazy
        # connect) is not what a row measures.
        calls = conns.calls
        for start in range(1, len(calls), 64):
            await asyncio.wait_for(asyncio.gather(*(c(params) for c in calls[start : start + 64])), 60)
        return await drive(conns.calls, scen.callers, params, settings.warmup, settings.duration, roles,
                           exec_children=row.client == "exec")
    finally:
        await conns.aclose()


# --- the whole run ---------------------------------------------------------------------------


@dataclass
class Results:
    """Everything measured, as it goes into the JSON file (see bench.report for the figures)."""

    settings: Settings
    rows: list[Row]
    scenarios: list[Scenario]
    rounds: dict[str, dict[str, list[dict[str, Any] | None]]] = field(default_factory=dict)
    """row key -> scenario key -> one entry per round (None: that round failed)."""
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    not_applicable: dict[str, dict[str, str]] = field(default_factory=dict)
    dispatch: dict[str, Any] = field(default_factory=dict)
    rss: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)

    def record(self, row: Row, scen: Scenario, rnd: int, value: dict[str, Any] | None) -> None:
        per_round = self.rounds.setdefault(row.key, {}).setdefault(scen.key, [None] * self.settings.rounds)
        per_round[rnd] = value

    def as_json(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "rows": {r.key: {"label": r.label, "hops": r.hops, "client": r.client, "group": r.group,
                             "skipped": r.skip_reason} for r in self.rows},
            "scenarios": {s.key: asdict(s) for s in self.scenarios},
            "rounds": self.rounds,
            "errors": self.errors,
            "not_applicable": self.not_applicable,
            "dispatch": self.dispatch,
            "rss": self.rss,
            "profile": self.profile,
        }


async def run_rounds(lab: Lab, results: Results) -> None:
    """Every applicable (row, scenario) once per round, rows rotated from round to round."""
    settings = results.settings
    rows = [r for r in results.rows if r.skip_reason is None]
    plan = []
    for scen in results.scenarios:
        runnable = []
        for row in rows:
            reason = not_applicable(row, scen)
            if reason:
                results.not_applicable.setdefault(row.key, {})[scen.key] = reason
            else:
                runnable.append(row)
        plan.append((scen, runnable))
    total = sum(len(r) for _, r in plan) * settings.rounds
    done = 0
    retry_budget = _Budget(settings.retry_seconds)
    for rnd in range(settings.rounds):
        started = time.monotonic()
        for i, (scen, runnable) in enumerate(plan):
            shift = (rnd + i) % len(runnable) if runnable else 0
            order = runnable[shift:] + runnable[:shift]
            for row in order:
                done += 1
                if row.skip_reason is not None:
                    continue
                prefix = f"[round {rnd + 1}/{settings.rounds} {done:>4}/{total}] {row.key:15} {scen.describe()}"
                try:
                    value = await measure_when_quiet(lab, row, scen, settings, retry_budget, prefix)
                except Exception as exc:  # one row failing must not end the run: it is reported
                    message = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
                    results.errors.setdefault(row.key, {})[scen.key] = message
                    results.record(row, scen, rnd, None)
                    log(f"{prefix}  FAILED: {message}")
                    if _server_gone(lab, row):
                        row.skip_reason = f"its server failed: {message}"
                    continue
                results.record(row, scen, rnd, value)
                log(f"{prefix}  {value['throughput']:>9,.0f}/s  p50 {fmt_us(value['p50_us']):>8}"
                    f"  p99 {fmt_us(value['p99_us']):>8}  other CPU {value['other_cpu_pct']:3.0f}%")
        results.dispatch.setdefault("rounds", []).append(dispatch_round(settings.dispatch_seconds))
        log(f"[round {rnd + 1}/{settings.rounds}] done in {time.monotonic() - started:.0f}s")


class _Budget:
    """Seconds the run may still spend measuring windows again, so a busy machine cannot stretch it."""

    __slots__ = ("left",)

    def __init__(self, seconds: float) -> None:
        self.left = seconds


async def measure_when_quiet(lab: Lab, row: Row, scen: Scenario, settings: Settings, budget: _Budget,
                             prefix: str) -> dict[str, Any]:
    """`measure`, again (up to `settings.retries` times) while other work took more than
    `settings.quiet_pct` of the machine's CPU during the window.

    Other sessions on a shared machine come and go within seconds and halve a row's throughput
    while they run; a window they spoiled is measured again (the discarded windows are kept in
    the results, under "discarded"), as long as the retry budget lasts.
    """
    discarded: list[dict[str, float]] = []
    while True:
        started = time.monotonic()
        value = await measure(lab, row, scen, settings)
        busy = value["other_cpu_pct"] > settings.quiet_pct
        if not busy or len(discarded) >= settings.retries or budget.left <= 0:
            value["discarded"] = discarded
            return value
        discarded.append({k: value[k] for k in ("throughput", "p50_us", "p99_us", "other_cpu_pct")})
        budget.left -= time.monotonic() - started
        log(f"{prefix}  other processes took {value['other_cpu_pct']:.0f}% of the CPUs: measuring again")
        await asyncio.sleep(0.2)


def _server_gone(lab: Lab, row: Row) -> bool:
    """True when the row's server can no longer be reached (it died or never started)."""
    if row.server is None:
        return False
    try:
        lab.check_alive(row.server)
    except BenchError:
        return True
    return False


def fmt_us(us: float) -> str:
    if us >= 10_000:
        return f"{us / 1000:.0f} ms"
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    return f"{us:.0f} us"


# --- dispatch microbenchmark -----------------------------------------------------------------

DISPATCH_REQUEST: Final = b'{"jsonrpc":"2.0","method":"echo","params":{"data":"' + b"x" * 40 + b'"},"id":7}'


def _time_per_call(fn: Callable[[], Any], seconds: float) -> float:
    """Nanoseconds per call of `fn`, timed over about `seconds` in batches."""
    batch = 200
    n = 0
    clock = time.perf_counter_ns
    start = clock()
    deadline = start + int(seconds * 1e9)
    now = start
    while now < deadline:
        for _ in range(batch):
            fn()
        n += batch
        now = clock()
    return (now - start) / n


def dispatch_candidates() -> dict[str, Callable[[], Any]]:
    """In-process `request line -> response line` for each dispatcher."""
    import orjson
    from jsonrpcserver import Success, dispatch

    from plugrpc.plugin import dispatch as sdk

    line = DISPATCH_REQUEST
    text = line.decode()

    def floor() -> bytes:
        msg = orjson.loads(line)
        return orjson.dumps({"jsonrpc": "2.0", "result": msg["params"], "id": msg["id"]})

    table = sdk.resolve({"echo": lambda data: {"data": data}})

    def plugrpc_dispatch() -> bytes:
        outcome = sdk.dispatch(table, orjson.loads(line))
        return sdk.encode(outcome)  # type: ignore[arg-type]

    methods = {"echo": lambda data: Success({"data": data})}

    def jsonrpcserver_dispatch() -> str:
        return dispatch(text, methods=methods)  # type: ignore[no-any-return]

    return {"orjson envelope only (floor)": floor, "plugrpc.dispatch (SDK)": plugrpc_dispatch,
            "jsonrpcserver.dispatch": jsonrpcserver_dispatch}


def dispatch_round(seconds: float) -> dict[str, float | str]:
    """ns per dispatch of one ~100 B echo request, each candidate checked for the right answer.

    Also `payload_1mib_ns`: parsing a 1 MiB request line plus copying it once, the yardstick of
    the "router adds at most one copy" target.
    """
    import orjson

    out: dict[str, float | str] = {}
    expected = {"jsonrpc": "2.0", "result": {"data": "x" * 40}, "id": 7}
    for name, fn in dispatch_candidates().items():
        got = orjson.loads(fn())
        if got != expected:
            out[name] = f"wrong response: {got!r}"
            continue
        gc.disable()
        try:
            out[name] = _time_per_call(fn, seconds)
        finally:
            gc.enable()
    big = b'{"jsonrpc":"2.0","method":"echo","params":' + orjson.dumps(payload_params(MIB)) + b',"id":7}'
    out["payload_1mib_ns"] = _time_per_call(lambda: (orjson.loads(big), bytearray(big)), seconds) if seconds else 0.0
    return out


# --- memory ----------------------------------------------------------------------------------


async def _idle_connections(path: str, n: int, methods: list[str]) -> NdjsonConnections:
    """`n` client connections, each after one call, then left idle (the call makes them real)."""
    conns = await NdjsonConnections.open(path, n, methods)
    params = payload_params(100)
    for start in range(0, n, 100):
        await asyncio.wait_for(asyncio.gather(*(c(params) for c in conns.calls[start : start + 100])), 60)
    return conns


async def memory_phase(lab: Lab, results: Results) -> None:
    """RSS at rest, with `idle_conns` idle client connections, and under 64 callers, on fresh servers."""
    settings = results.settings
    targets: list[tuple[str, str, Callable[[], Any]]] = [
        ("floor", "echo", lambda: lab.server("echo")),
        ("proxy", "proxy", lambda: lab.server("proxy")),
    ]
    router_row = next((r for r in results.rows if r.key == "router"), None)
    if router_row is not None and router_row.skip_reason is None:
        targets.append(("router", "router", lambda: lab.start_router("router-rss", plugins=settings.rss_plugins)))
    elif router_row is not None:
        results.rss["router"] = {"skipped": router_row.skip_reason}
    rows = {r.key for r in results.rows}
    load = max(c for c in settings.concurrency)
    load = 64 if 64 in settings.concurrency else load
    for key, _, start in targets:
        if key not in rows:
            continue
        lab.check_stop()
        log(f"[memory] {key}: at rest, {settings.idle_conns} idle connections, {load} callers")
        try:
            results.rss[key] = await _memory_of(start, key, settings, load)
        except Exception as exc:  # reported in the results, like a failed row
            results.rss[key] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"[memory] {key} FAILED: {exc}")
        finally:
            lab.stop_servers()


async def _memory_of(start: Callable[[], Any], key: str, settings: Settings, load: int) -> dict[str, Any]:
    server = await start()
    n_plugins = settings.rss_plugins if key == "router" else 1
    methods = [f"bench{i}.echo" for i in range(n_plugins)] if key == "router" else ["echo"]
    await asyncio.sleep(0.5)
    out: dict[str, Any] = {"plugins": n_plugins if key == "router" else None, "idle_connections": settings.idle_conns,
                           "load_callers": load}
    out["rest_kib"] = _rss_roles(server.roles())
    conns = await _idle_connections(server.path, settings.idle_conns, methods)
    try:
        await asyncio.sleep(0.5)
        out["idle_kib"] = _rss_roles(server.roles())
    finally:
        await conns.aclose()
    conns = await NdjsonConnections.open(server.path, load, methods)
    try:
        run = await drive(conns.calls, load, payload_params(100), settings.warmup, max(0.3, settings.duration),
                          server.roles)
    finally:
        await conns.aclose()
    out["load_kib"] = {role: v for role, v in run["rss_kib"].items()}
    out["load_throughput"] = run["throughput"]
    return out


def _rss_roles(roles: dict[str, list[int]]) -> dict[str, int]:
    return {role: sum(_rss(p) for p in pids) for role, pids in roles.items()}


# --- profile ---------------------------------------------------------------------------------


def py_spy() -> str | None:
    """The py-spy binary (next to this interpreter or on PATH), if installed."""
    beside = Path(sys.executable).with_name("py-spy")
    return os.fspath(beside) if beside.exists() else shutil.which("py-spy")


async def profile_router(lab: Lab, results: Results, out_dir: Path, stamp: str) -> None:
    """Sample the router and its plugin with py-spy under 64 callers (the brief) and 1 (the latency
    targets); cProfile when py-spy is missing."""
    settings = results.settings
    row = next((r for r in results.rows if r.key == "router" and r.skip_reason is None), None)
    if row is None:
        results.profile = {"skipped": "the router row did not run"}
        return
    spy = py_spy()
    if spy is None:
        await _cprofile_router(lab, results)
        return
    server = await lab.server("router")
    pids = server.roles()
    targets = {"router": pids["router"][0]}
    if pids["plugin"]:
        targets["plugin"] = pids["plugin"][0]
    runs = {}
    for callers in (64, 1):
        lab.check_stop()
        conns = await NdjsonConnections.open(server.path, callers, [row.method])
        spies = _start_py_spy(spy, targets, settings.profile_seconds, out_dir, f"{stamp}-c{callers}")
        try:
            log(f"[profile] py-spy on the router and its plugin, {callers} callers, {settings.profile_seconds:.0f}s")
            run = await drive(conns.calls, callers, payload_params(100), 0.5, settings.profile_seconds + 1.0,
                              server.roles)
        finally:
            await conns.aclose()
            files = _finish_py_spy(spies)
        top = {role: top_frames(Path(p)) for role, p in files.items() if not p.startswith("py-spy failed")}
        runs[f"c{callers}"] = {"callers": callers, "throughput_during": run["throughput"], "files": files, "top": top}
    results.profile = {"tool": "py-spy (sampling, --nonblocking; idle time excluded)", "runs": runs}


def _start_py_spy(spy: str, pids: dict[str, int], seconds: float, out_dir: Path,
                  stamp: str) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
    spies = []
    for role, pid in pids.items():
        path = out_dir / f"{stamp}-profile-{role}.speedscope.json"
        cmd = [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", "500",
               "--nonblocking", "--format", "speedscope", "--output", os.fspath(path)]
        spies.append((role, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), path))
    return spies


def _finish_py_spy(spies: list[tuple[str, subprocess.Popen[bytes], Path]]) -> dict[str, str]:
    """Wait for each py-spy; the collapsed-stack file of each, or why there is none."""
    files = {}
    for role, proc, path in spies:
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode == 0 and path.exists():
            files[role] = os.fspath(path)
        else:
            files[role] = f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}"
    return files



async def syscalls_per_call(lab: Lab, results: Results, rows: Sequence[str] = ("proxy", "router", "floor", "direct"),
                            callers: Sequence[int] = (1, 64), seconds: float = 1.0) -> None:
    """System calls per call of each front process (strace -c), at 1 and 64 callers.

    On a VM where a syscall or a wake-up costs microseconds, the count per call explains most
    of the gap between a router and a byte proxy; strace slows the process, so only the counts
    are kept, never its timings.
    """
    tracer = shutil.which("strace")
    if tracer is None:
        results.profile["syscalls"] = {"skipped": "strace is not installed (apt-get install strace)"}
        return
    out: dict[str, Any] = {}
    live = {r.key: r for r in results.rows if r.skip_reason is None}
    for key in rows:
        row = live.get(key)
        if row is None or row.server is None:
            continue
        server = await lab.server(row.server)
        front_role = next(iter(server.roles()))
        pid = server.roles()[front_role][0]
        for n in callers:
            lab.check_stop()
            conns = await NdjsonConnections.open(server.path, n, [row.method])
            try:
                counts, calls = await _strace_window(tracer, pid, conns, n, seconds, lab.workdir / f"strace-{key}.txt")
            finally:
                await conns.aclose()
            per_call = {name: round(c / calls, 2) for name, c in sorted(counts.items(), key=lambda kv: -kv[1])
                        if c / calls >= 0.05}
            out.setdefault(key, {})[f"c{n}"] = {"process": front_role, "calls": calls,
                                                "total": round(sum(counts.values()) / calls, 2), "per_call": per_call}
            log(f"[profile] syscalls per call, {key} ({front_role}) at {n} callers: "
                f"{out[key][f'c{n}']['total']} {per_call}")
    results.profile["syscalls"] = out


async def _strace_window(tracer: str, pid: int, conns: NdjsonConnections, callers: int, seconds: float,
                         path: Path) -> tuple[dict[str, int], int]:
    """Attach strace -c to `pid`, run `callers` for `seconds`, detach; syscall counts and calls made."""
    proc = await asyncio.create_subprocess_exec(tracer, "-c", "-f", "-p", str(pid), "-o", os.fspath(path),
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        await asyncio.wait_for(proc.stderr.readline(), 10)  # "strace: Process N attached"
        run = await drive(conns.calls, callers, payload_params(100), 0.0, seconds, _no_pids)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 10)
    return _strace_counts(path), run["calls"] + callers


def _no_pids() -> dict[str, list[int]]:
    return {}


def _strace_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            counts[parts[-1]] = int(parts[3])
    return counts

async def _cprofile_router(lab: Lab, results: Results) -> None:
    """Without py-spy: a second router run under cProfile (deterministic, so it slows the router).

    The binary stats stay in the work dir; the top functions go into the results.
    """
    path = lab.workdir / "router.pstats"
    lab.router_command = (sys.executable, "-m", "cProfile", "-o", os.fspath(path), "-m", "plugrpc")
    try:
        server = await lab.start_router("router-profile", plugins=1)
    finally:
        lab.router_command = PLUGRPC
    conns = await NdjsonConnections.open(server.path, 64, ["bench.echo"])
    try:
        log(f"[profile] cProfile on the router under 64 callers for {results.settings.profile_seconds:.0f}s")
        run = await drive(conns.calls, 64, payload_params(100), 0.5, results.settings.profile_seconds, server.roles)
    finally:
        await conns.aclose()
        lab.fleet.stop(server.front, grace=15)
    import pstats

    stats = pstats.Stats(os.fspath(path))
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:20]  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.stats.values()) or 1  # type: ignore[attr-defined]
    top = [{"frame": f"{fn} ({Path(file).name}:{line})", "pct": round(100 * v[2] / total, 1)}
           for (file, line, fn), v in rows]
    results.profile = {"tool": "cProfile (py-spy not installed)", "runs": {"c64": {
        "callers": 64, "throughput_during": run["throughput"], "files": {}, "top": {"router": {"self": top}}}}}


def top_frames(path: Path, n: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from a py-spy speedscope file (all threads)."""
    doc = json.loads(path.read_text())
    names = [_frame_name(f) for f in doc["shared"]["frames"]]
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for prof in doc["profiles"]:
        for stack in prof.get("samples", []):
            if not stack:
                continue
            total += 1
            frames = [names[i] for i in stack]
            self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + 1
            for frame in set(frames):
                incl_counts[frame] = incl_counts.get(frame, 0) + 1

    def top(counts: dict[str, int]) -> list[dict[str, Any]]:
        best = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:n]
        return [{"frame": f, "pct": round(100 * c / max(total, 1), 1)} for f, c in best]

    return {"samples": total, "self": top(self_counts), "inclusive": top(incl_counts)}


def _frame_name(frame: dict[str, Any]) -> str:
    """Lines of one function merged: `fn (file.py)`."""
    file = frame.get("file") or ""
    return f"{frame['name']} ({Path(file).name})" if file else str(frame["name"])
