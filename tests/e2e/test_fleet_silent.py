"""A fleet under silent failures: a router or a caller partitioned away, a router stopped (SIGSTOP), a
slow link. Real nats-server, real routers (`plugrpc run --nats`), real sockets; the faults come
from tests/nats_proxy.py between each router (or the caller) and nats-server, so none needs root.

Callers call by plugin (`Client(url)` without a router: the client balances over the routers it
discovers). Each call carries a unique number; the plugin records each number it runs and when,
so a test can tell that nothing a caller gave up on ran after its deadline. Figures go to
docs/fleet.md (PLUGRPC_FIGURES=FILE records them); PLUGRPC_SLOW=1 adds longer faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import plugrpc
from nats_proxy import NatsProxy
from plugrpc.client.nats import NatsClient
from plugrpc.testing import RouterProcess

from util import FULL, NatsServer, figure, until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]
Nats = Callable[..., NatsServer]

# Runs each number it is given and records when (wall time), so a test can tell what ran after its deadline.
RECORDER = '''
#!/usr/bin/env python3
import asyncio, os, time
import plugrpc

RAN = {}

async def work(n, seconds=0.0):
    RAN[n] = time.time()
    if seconds:
        await asyncio.sleep(seconds)
    return {"n": n, "pid": os.getpid()}

def ran():
    return list(RAN.items())

plugrpc.serve({"work": work, "ran": ran})
'''
SERVER_CONF = 'ping_interval: "2s"\nping_max: 2\nwrite_deadline: "2s"\n'
"""nats-server settings that match the routers' and callers' (docs/fleet.md, "Silent failures")."""
TIMEOUT = 2.0
"""The callers' timeout, and so their calls' deadline."""
CALLERS = 16
WORK = 0.01
"""Seconds each call takes in the plugin."""
SETTLE = 2.0
"""Seconds after a fault starts that the figures leave out (the target: under 1% failed after them)."""
FAULT = 6.0
LONG_FAULT = 15.0


@dataclass
class Load:
    """Closed-loop callers of `p.work` by plugin, each call numbered, recording what became of it."""

    client: NatsClient
    next_n: itertools.count[int] = field(default_factory=itertools.count)
    answered: list[tuple[float, float, int, int]] = field(default_factory=list)
    """(sent, answered, n, pid of the plugin that ran it), monotonic"""
    failed: list[tuple[float, float, int, plugrpc.RpcError, float]] = field(default_factory=list)
    """(sent, failed, n, error, the call's deadline in wall time)"""
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def caller(self) -> None:
        while not self.stop.is_set():
            n = next(self.next_n)
            sent, wall = time.monotonic(), time.time()
            try:
                result = await self.client.raw("p.work", [n, WORK], timeout=TIMEOUT)
            except plugrpc.RpcError as exc:
                self.failed.append((sent, time.monotonic(), n, exc, wall + TIMEOUT))
                await asyncio.sleep(0.01)  # a caller that failed tries again shortly, as a real one would
                continue
            assert result["n"] == n, (result, n)
            self.answered.append((sent, time.monotonic(), n, result["pid"]))

    def first_answer_after(self, when: float) -> float | None:
        return min((t for sent, t, _, _ in self.answered if sent >= when), default=None)

    def sent_between(self, start: float, end: float) -> tuple[int, int]:
        """(calls sent in [start, end), of which failed)."""
        ok = sum(1 for sent, *_ in self.answered if start <= sent < end)
        bad = sum(1 for sent, *_ in self.failed if start <= sent < end)
        return ok + bad, bad


@dataclass
class Fleet:
    nats: NatsServer
    routers: dict[str, RouterProcess]
    proxies: dict[str, NatsProxy]
    pids: dict[int, str]
    """The plugin's pid on each router: which router ran a call."""

    async def ran(self) -> dict[int, float]:
        """Every number any router's plugin ran, and when (wall time)."""
        out: dict[int, float] = {}
        for name in self.routers:
            out.update({n: t for n, t in await self.ask(name, "p.ran")})
        return out

    async def stats(self, name: str) -> dict[str, Any]:
        return await self.ask(name, "router.stats")  # type: ignore[no-any-return]

    async def ask(self, name: str, method: str) -> Any:
        """`method` of router `name`, once it is on NATS again (a router cut off joins again within seconds)."""
        answer: list[Any] = []
        async with NatsClient(self.nats.url, router=name, timeout=5) as one:
            async def answered() -> bool:
                try:
                    answer.append(await one.raw(method))
                except plugrpc.RpcError:
                    return False
                return True

            await until(answered, f"router {name} to answer {method}", timeout=30)
        return answer[0]


@contextlib.asynccontextmanager
async def fleet(nats_server: Nats, plugrpc_router: Router, plugrpc_image: Image,
                names: tuple[str, ...] = ("r1", "r2", "r3")) -> AsyncIterator[Fleet]:
    """Three routers, each through its own proxy to one nats-server, once all are on NATS."""
    nats = nats_server(SERVER_CONF)
    root = plugrpc_image({"p": ("p.py", RECORDER, ["work", "ran"])})
    proxies = {name: NatsProxy(nats.port) for name in names}
    routers: dict[str, RouterProcess] = {}
    try:
        for name in names:
            routers[name] = plugrpc_router(root, "--nats", proxies[name].url, "--name", name)
        pids: dict[int, str] = {}
        for name in names:
            async with NatsClient(nats.url, router=name, timeout=TIMEOUT) as one:
                async def listed(one: plugrpc.Client = one, name: str = name) -> bool:
                    try:
                        rows = await one.raw("router.plugins")
                    except plugrpc.RpcError:
                        return False
                    pid = next((row["pid"] for row in rows if row["name"] == "p"), None)
                    if pid is None:
                        await one.raw("p.ran")  # starts it
                        return False
                    pids[pid] = name
                    return True

                await until(listed, f"router {name} on NATS", timeout=30)
        yield Fleet(nats, routers, proxies, pids)
    finally:
        for router in routers.values():
            with contextlib.suppress(ProcessLookupError):
                router.proc.send_signal(signal.SIGCONT)  # a stopped router must be able to stop
        for proxy in proxies.values():
            proxy.close()


@contextlib.contextmanager
def stopped(router: RouterProcess) -> Iterator[None]:
    router.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        router.proc.send_signal(signal.SIGCONT)


async def run_load(client: NatsClient, warm: float = 1.5) -> tuple[Load, list[asyncio.Task[None]]]:
    load = Load(client)
    callers = [asyncio.ensure_future(load.caller()) for _ in range(CALLERS)]
    await until(lambda: len(load.answered) >= 200, "calls by plugin", timeout=30)
    await asyncio.sleep(warm)
    return load, callers


async def finish(load: Load, callers: list[asyncio.Task[None]]) -> None:
    load.stop.set()
    await asyncio.wait_for(asyncio.gather(*callers), TIMEOUT + 10)


def shares(load: Load, pids: dict[int, str], start: float, end: float) -> dict[str, float]:
    calls = [pid for sent, _, _, pid in load.answered if start <= sent < end]
    return {name: sum(1 for pid in calls if pids.get(pid) == name) / max(len(calls), 1) for name in pids.values()}


def nothing_ran_late(load: Load, ran: dict[int, float]) -> int:
    """Assert that no call whose caller gave up ran after its deadline; return how many of them never ran."""
    late = [(n, ran[n] - deadline) for _, _, n, _, deadline in load.failed if n in ran and ran[n] > deadline + 0.05]
    assert not late, f"{len(late)} calls ran after their deadline, e.g. (n, seconds late): {late[:5]}"
    return sum(1 for _, _, n, _, _ in load.failed if n not in ran)


def check_target(load: Load, fault: float, end: float, what: str) -> float:
    total, failed = load.sent_between(fault + SETTLE, end)
    assert total > 500, (what, total)
    share = failed / total
    assert share < 0.01, f"{what}: {failed} of {total} calls sent {SETTLE} s into the fault failed"
    return share


# --- a router that falls silent in a fleet of three -----------------------------------------------------


async def noticed(router: RouterProcess, since: float) -> float:
    """Seconds from `since` until the router logs that it lost NATS."""
    while "lost the connection to NATS" not in router.log():
        await asyncio.sleep(0.1)
    return time.monotonic() - since


@pytest.mark.parametrize(("mode", "seconds"), [
    pytest.param("blackhole", FAULT, id="blackhole"),
    pytest.param("pause", FAULT, id="pause-then-heal"),
    pytest.param("pause", LONG_FAULT, id="pause-then-heal-15s", marks=FULL),
])
async def test_a_partitioned_router_costs_callers_by_plugin_under_1_percent_after_2s(
        mode: str, seconds: float, nats_server: Nats, plugrpc_router: Router, plugrpc_image: Image) -> None:
    async with fleet(nats_server, plugrpc_router, plugrpc_image) as f, NatsClient(f.nats.url) as client:
        assert isinstance(client, NatsClient)
        load, callers = await run_load(client)
        fault = time.monotonic()
        f.proxies["r2"].set(mode)
        noticing = asyncio.ensure_future(noticed(f.routers["r2"], fault))
        await asyncio.sleep(seconds)
        end = time.monotonic()
        f.proxies["r2"].set("pass")  # blackhole: its connection is reset; pause: what was held arrives
        await asyncio.sleep(TIMEOUT + 1)  # and the load goes on
        await finish(load, callers)
        noticed_after = await asyncio.wait_for(noticing, 10)
        ran = await f.ran()
        expired = (await f.stats("r2"))["expired"]
    share = check_target(load, fault, end, f"router partitioned ({mode})")
    never_ran = nothing_ran_late(load, ran)
    during = shares(load, f.pids, fault + SETTLE, end)
    assert during["r2"] < 0.005, during  # a trial call now and then
    assert noticed_after < 7.0  # 2 s pings, 2 unanswered
    figure(f"silent_{mode}_failed_after_2s", share * 100, "%", seconds=seconds)
    figure(f"silent_{mode}_failed_first_2s", load.sent_between(fault, fault + SETTLE)[1], "calls")
    figure(f"silent_{mode}_router_noticed_after", noticed_after, "s")
    figure(f"silent_{mode}_expired", expired["total"], "calls", failed=len(load.failed), never_ran=never_ran)


@pytest.mark.parametrize("seconds", [pytest.param(FAULT, id="6s"), pytest.param(LONG_FAULT, id="15s", marks=FULL)])
async def test_a_stopped_router_costs_under_1_percent_and_runs_nothing_stale_when_it_resumes(
        seconds: float, nats_server: Nats, plugrpc_router: Router, plugrpc_image: Image) -> None:
    async with fleet(nats_server, plugrpc_router, plugrpc_image) as f, NatsClient(f.nats.url) as client:
        assert isinstance(client, NatsClient)
        load, callers = await run_load(client)
        fault = time.monotonic()
        with stopped(f.routers["r2"]):
            await asyncio.sleep(seconds)
        end = time.monotonic()
        await asyncio.sleep(TIMEOUT + 1)  # r2 reads its backlog; load goes on
        await finish(load, callers)
        ran = await f.ran()
        expired = (await f.stats("r2"))["expired"]
    share = check_target(load, fault, end, "stopped router")
    never_ran = nothing_ran_late(load, ran)
    figure("silent_sigstop_failed_after_2s", share * 100, "%", seconds=seconds)
    figure("silent_sigstop_failed_first_2s", load.sent_between(fault, fault + SETTLE)[1], "calls")
    figure("silent_sigstop_expired_at_sigcont", expired["total"], "calls", failed=len(load.failed),
           never_ran=never_ran)


async def test_a_slow_router_gets_a_smaller_share(nats_server: Nats, plugrpc_router: Router,
                                                  plugrpc_image: Image) -> None:
    async with fleet(nats_server, plugrpc_router, plugrpc_image) as f, NatsClient(f.nats.url) as client:
        assert isinstance(client, NatsClient)
        load, callers = await run_load(client)
        fault = time.monotonic()
        f.proxies["r3"].set("latency 0.2")
        await asyncio.sleep(FAULT)
        end = time.monotonic()
        f.proxies["r3"].set("pass")
        await finish(load, callers)
    during = shares(load, f.pids, fault + SETTLE, end)
    assert during["r3"] < 0.1, during  # 400 ms a call against ~10 ms: a few percent at most
    assert not load.failed, load.failed[:3]
    slow = [t - sent for sent, t, _, pid in load.answered if fault + SETTLE <= sent < end and f.pids[pid] == "r3"]
    figure("silent_slow_router_share", during["r3"] * 100, "%", shares=during,
           slow_p50=sorted(slow)[len(slow) // 2] if slow else None)


# --- a caller cut off from NATS -----------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [pytest.param(FAULT + 1, id="7s"), pytest.param(LONG_FAULT, id="15s", marks=FULL)])
async def test_a_partitioned_caller_fails_fast_and_nothing_it_gave_up_on_runs_when_the_partition_heals(
        seconds: float, nats_server: Nats, plugrpc_router: Router, plugrpc_image: Image) -> None:
    async with fleet(nats_server, plugrpc_router, plugrpc_image) as f:
        caller_proxy = NatsProxy(f.nats.port)
        try:
            async with NatsClient(caller_proxy.url) as client:
                assert isinstance(client, NatsClient)
                load, callers = await run_load(client)
                fault = time.monotonic()
                caller_proxy.set("pause")  # requests sent meanwhile reach NATS when it heals, seconds late
                await asyncio.sleep(seconds)
                healed = time.monotonic()
                caller_proxy.set("pass")
                await until(lambda: load.first_answer_after(healed) is not None, "calls again", timeout=30)
                back = load.first_answer_after(healed)
                await asyncio.sleep(1.0)
                await finish(load, callers)
        finally:
            caller_proxy.close()
        ran = await f.ran()
        expired = 0
        for name in f.routers:
            expired += (await f.stats(name))["expired"]["total"]
    fast = [(sent, t, exc) for sent, t, _, exc, _ in load.failed if fault <= sent < healed and t - sent < 0.1]
    assert fast and all(exc.code == plugrpc.codes.PLUGIN_UNAVAILABLE for *_, exc in fast)
    assert "unreachable" in str(fast[-1][2].data)
    first_fast = min(sent for sent, _, _ in fast) - fault
    assert first_fast < 7.0  # 2 s pings, 2 unanswered: noticed within 4-6 s
    slow_after = [1 for sent, t, *_ in load.failed if fault + first_fast + 0.5 <= sent < healed and t - sent > 0.5]
    assert not slow_after  # once noticed, every call fails at once
    never_ran = nothing_ran_late(load, ran)
    assert back is not None
    figure("silent_caller_fails_fast_after", first_fast, "s", seconds=seconds)
    figure("silent_caller_back_after_heal", back - healed, "s")
    figure("silent_caller_expired_at_heal", expired, "calls", failed=len(load.failed), never_ran=never_ran)

