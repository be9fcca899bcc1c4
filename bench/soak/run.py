"""One soak, start to end: set up, warm up, baseline, faults, tail, settle, the final checks, shut down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import plugrpc

from .callers import NATS_TARGETS, Picker, RawConn, client_worker, probe, raw_worker, subscriber
from .faults import Faults, Image
from .plugins import base_plugins, write_manifest, write_scripts
from .report import progress_line, violation_text
from .schedule import Fault, Phases, generate
from .system import Footprint, NatsServer, Routers, fd_count, processes_naming, rss_mib, thread_count, zombie_children
from .tally import Ledger, Tally

ROUTER_ARGS: Final = ("--max-line", str(1 << 20), "--event-queue", "200", "--shutdown-grace", "5",
                      "--partial-timeout", "5")
"""A 1 MiB line limit makes a huge line cheap to send; a short event queue fills under a flood."""
FD_MARGIN: Final = 4
THREAD_MARGIN: Final = 4
RSS_MARGIN_MIB: Final = 24.0
SETTLED: Final = frozenset({"running", "stopped", "ready"})


@dataclass(frozen=True)
class Settings:
    duration: float = 600.0
    seed: int = 1
    nats: bool = False
    raw_clients: int = 6
    socket_clients: int = 3
    direct_clients: int = 2
    nats_clients: int = 3
    subscribers: int = 2
    progress_every: float = 5.0
    quiet: bool = False
    """No progress lines (the test's own run)."""


@dataclass
class Outcome:
    """Everything the report shows."""

    settings: Settings
    schedule: list[Fault]
    phases: Phases
    tally: Tally
    ledger: Ledger | None = None
    start: Footprint | None = None
    end: Footprint | None = None
    exits: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.tally.violations


class Soak:
    """The run's processes, clients and tasks."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.phases = Phases.of(settings.duration)
        self.schedule = generate(settings.seed, self.phases, settings.nats)
        self.tally = Tally()
        self.ledger = Ledger(workdir / "ledger")
        self.outcome = Outcome(settings, self.schedule, self.phases, self.tally, self.ledger)
        run = workdir / "run"
        run.mkdir()
        self.routers = Routers(workdir, {"XDG_RUNTIME_DIR": os.fspath(run), "TMPDIR": os.fspath(run)})
        self.nats = NatsServer(workdir) if settings.nats else None
        self.names = ["s1", "s2", "s3"] if settings.nats else ["s1"]
        self.image = Image(workdir / "img-s1", workdir / "ledger" / "s1", base_plugins())
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.clients: list[plugrpc.Client] = []
        self.raws: list[RawConn] = []
        self.t0 = time.monotonic()
        self.reported = 0

    @property
    def socket(self) -> Path:
        return self.routers.procs["s1"].socket

    def clock(self) -> float:
        return time.monotonic() - self.t0

    # --- setting up ------------------------------------------------------------------------------

    async def start_routers(self) -> None:
        if self.nats is not None:
            await asyncio.to_thread(self.nats.start)
        for name in self.names:
            root = self.workdir / f"img-{name}"
            write_scripts(root)
            write_manifest(root, base_plugins(), self.workdir / "ledger" / name)
            args = [*ROUTER_ARGS, *(["--nats", self.nats.url, "--name", name] if self.nats else [])]
            await asyncio.to_thread(self.routers.start, name, root, args)

    async def warm_up(self, control: plugrpc.Client) -> dict[str, str]:
        """Every plugin called once, one reload, the idle plugin stopped again: the state the end returns to."""
        await wait_settled(control)
        await self.call_each(control, "warmup")
        await control.raw("router.reload", timeout=60)
        return await wait_idle_stopped(control)

    async def call_each(self, control: plugrpc.Client, why: str) -> None:
        """Each plugin called once (a lazy one started), and one relayed call: `relay` holds a connection of its
        own to the router from then on, at the start as at the end."""
        for plugin in self.image.plugins:
            if plugin.callable:
                await control.raw(f"{plugin.name}.work", {"token": self.tally.token(why)}, timeout=30)
        await control.raw("relay.relay", {"token": self.tally.token(why), "target": "steady"}, timeout=30)

    async def start_load(self) -> None:
        s, tally, stop = self.settings, self.tally, self.stop
        seed = str(s.seed)
        for i in range(s.raw_clients):
            conn = await RawConn(f"raw{i}", tally).open(self.socket)
            self.raws.append(conn)
            self.spawn(raw_worker(conn, Picker(f"{seed}/raw{i}"), stop))
        for i in range(s.socket_clients + s.direct_clients):
            direct = i >= s.socket_clients
            name = f"{'direct' if direct else 'client'}{i}"
            client = await self.client(plugrpc.Client(self.socket, direct=direct))
            for j in range(3):
                self.spawn(client_worker(client, name, Picker(f"{seed}/{name}/{j}"), tally, stop))
        if self.nats is not None:
            for i in range(s.nats_clients):
                client = await self.client(plugrpc.Client(self.nats.url, timeout=12))
                self.spawn(client_worker(client, f"nats{i}", Picker(f"{seed}/nats{i}", NATS_TARGETS), tally, stop,
                                         nats=True))
        for i in range(s.subscribers):
            client = await self.client(plugrpc.Client(self.socket))
            self.spawn(subscriber(client, f"subscriber{i}", tally, stop))
        probe_client = await self.client(plugrpc.Client(self.socket))
        self.spawn(probe(probe_client, tally, self.phases, self.clock, stop))

    async def client(self, client: plugrpc.Client) -> plugrpc.Client:
        self.clients.append(client)
        await client.connect()
        return client

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.tasks.append(asyncio.create_task(coro))

    # --- running ---------------------------------------------------------------------------------

    async def run_schedule(self, faults: Faults) -> None:
        for fault in self.schedule:
            await asyncio.sleep(max(0.0, fault.at - self.clock()))
            faults.start(fault)
        await asyncio.sleep(max(0.0, self.phases.end - self.clock()))

    async def watch(self) -> None:
        """Every few seconds: the ledger read for doubles, new violations shown, a progress line."""
        while True:
            await asyncio.sleep(self.settings.progress_every)
            self.check_ledger()
            self.show_violations()
            if not self.settings.quiet:
                print(progress_line(self.clock(), self.phases, self.tally, self.ledger), file=sys.stderr, flush=True)

    def check_ledger(self) -> None:
        for twice in self.ledger.read():
            self.tally.violate("no call runs twice", f"token {twice}")

    def show_violations(self) -> None:
        """Print each new violation with the seed, the offending call and the end of the router's log."""
        for violation in self.tally.violations[self.reported:]:
            print(violation_text(violation, self.settings.seed, self.routers.log_tail()), file=sys.stderr,
                  flush=True)
        self.reported = len(self.tally.violations)

    async def stop_load(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 60)
        for conn in self.raws:
            await conn.close()
        for client in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 10)

    # --- the end ---------------------------------------------------------------------------------

    async def settle(self, control: plugrpc.Client, states: dict[str, str]) -> None:
        """Back to the manifest and the plugin states of the start, every call over."""
        self.image.plugins = base_plugins()
        write_manifest(self.image.root, self.image.plugins, self.image.ledger)
        await control.raw("router.reload", timeout=60)
        await wait_settled(control)
        await self.call_each(control, "settle")
        deadline = time.monotonic() + 30
        while await plugin_states(control) != states and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await wait_idle_stopped(control)
        await asyncio.sleep(1.0)  # the router trims its heap once idle

    async def footprint(self, control: plugrpc.Client) -> Footprint:
        pid = self.routers.procs["s1"].pid
        stats = await control.raw("router.stats", timeout=10)
        events = stats["events"]
        return Footprint(fd_count(pid), thread_count(pid), rss_mib(pid), stats["clients"], stats["inflight"],
                         events["subscriptions"], events)

    async def final_checks(self, control: plugrpc.Client) -> None:
        assert self.outcome.start is not None
        self.check_ledger()
        self.check_answered_ran()
        end = self.outcome.end = await self.footprint(control)
        self.check_footprint(self.outcome.start, end)
        await self.check_processes()

    def check_answered_ran(self) -> None:
        missing = [t for t in self.tally.answered_tokens if t not in self.ledger.seen]
        if missing:
            self.tally.violate("an answer comes from a call that ran",
                               f"{len(missing)} answered calls are in no ledger, e.g. {sorted(missing)[:5]}")

    def check_footprint(self, start: Footprint, end: Footprint) -> None:
        grew = end.grew(start)
        limits = {"fds": FD_MARGIN, "threads": THREAD_MARGIN, "rss_mib": RSS_MARGIN_MIB, "clients": 0,
                  "inflight": 0, "subscriptions": 0}
        for key, limit in limits.items():
            if grew[key] > limit:
                self.tally.violate("the router's resources come back", f"{key}: {getattr(start, key)} at the start, "
                                   f"{getattr(end, key)} at the end (margin {limit})")

    async def check_processes(self) -> None:
        """No zombie among the routers' children; nothing naming the soak's directory but routers, their
        plugins and nats-server."""
        expected = self.routers.pids() | ({self.nats.proc.pid} if self.nats and self.nats.proc else set())
        for name, router in self.routers.procs.items():
            async with plugrpc.Client(router.socket) as client:
                expected |= {row["pid"] for row in await client.raw("router.plugins", timeout=10) if row.get("pid")}
            zombies = set(zombie_children(router.pid))
            await asyncio.sleep(0.5)
            if lasting := zombies & set(zombie_children(router.pid)):
                self.tally.violate("no zombie", f"router {name}'s children {sorted(lasting)} stayed zombies")
        others = {pid: cmd for pid, cmd in processes_naming(os.fspath(self.workdir)).items() if pid not in expected}
        if others:
            self.tally.violate("no orphan", f"processes left over: {others}")

    async def shut_down(self) -> None:
        """SIGTERM every router: each exits 0, and no socket, directory or process of theirs remains."""
        self.outcome.exits = await asyncio.to_thread(self.routers.stop_all)
        for name, status in self.outcome.exits.items():
            if status != 0:
                self.tally.violate("a clean shutdown", f"router {name} exited {status}")
        if self.nats is not None:
            await asyncio.to_thread(self.nats.kill)
        await self.check_nothing_left()

    async def check_nothing_left(self) -> None:
        deadline = time.monotonic() + 10
        while (left := processes_naming(os.fspath(self.workdir))) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if left:
            self.tally.violate("no process after shutdown", f"still running: {left}")
        sockets = [r.socket for r in self.routers.procs.values() if r.socket.exists()]
        runtime = sorted(os.listdir(self.workdir / "run"))
        if sockets or runtime:
            self.tally.violate("shutdown leaves no socket or directory", f"front sockets {sockets}, runtime {runtime}")


async def plugin_states(control: plugrpc.Client) -> dict[str, str]:
    return {row["name"]: row["state"] for row in await control.raw("router.plugins", timeout=10)}


async def wait_settled(control: plugrpc.Client, timeout: float = 30) -> dict[str, str]:
    """Until every plugin is running, stopped (lazy, idle) or ready (exec)."""
    deadline = time.monotonic() + timeout
    while not set((states := await plugin_states(control)).values()) <= SETTLED:
        if time.monotonic() > deadline:
            raise RuntimeError(f"plugins did not settle: {states}")
        await asyncio.sleep(0.2)
    return states


async def wait_idle_stopped(control: plugrpc.Client, timeout: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while (states := await plugin_states(control)).get("idle") != "stopped":
        if time.monotonic() > deadline:
            raise RuntimeError(f"the idle plugin did not stop: {states}")
        await asyncio.sleep(0.2)
    return states


async def soak(settings: Settings) -> Outcome:
    """Run one soak; the outcome holds every count and every violation."""
    workdir = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
    started = time.monotonic()
    one = Soak(settings, workdir)
    try:
        await one.start_routers()
        async with plugrpc.Client(one.socket) as control:
            states = await one.warm_up(control)
            one.outcome.start = await one.footprint(control)
            faults = Faults(one.socket, one.image, control, one.tally, one.routers, one.nats)
            one.t0 = time.monotonic()
            await one.start_load()
            watcher = asyncio.create_task(one.watch())
            try:
                await one.run_schedule(faults)
                await one.stop_load()
                await asyncio.wait_for(faults.wait(), 120)
                await one.settle(control, states)
                await one.final_checks(control)
            finally:
                watcher.cancel()
        await one.shut_down()
        one.show_violations()
    finally:
        with contextlib.suppress(Exception):
            one.routers.stop_all()
        if one.nats is not None:
            one.nats.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    one.outcome.elapsed = time.monotonic() - started
    return one.outcome


def install_signal_handlers(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    """Ctrl-C cancels the run, whose `finally` still stops every process and removes the directory."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)

