"""MCP: one shared server process behind the router, against one server process per caller.

The server is `bench/plugins/mcp_echo.py`, the `mcp` package's `MCPServer` with one trivial tool
(`echo(message)`), on its stdin and stdout as published MCP servers run; every call is
`tools/call {"name": "echo", "arguments": {"message": ...}}`.

- `mcp_shared`: `plugrpc run` on an image holding it as `transport = "stdio"` with MCP's
  `initialize` handshake; N callers, each on its own connection to the router, call
  `bench.tools/call`, multiplexed over the server's one pair of pipes.
- `mcp_each`: what a gateway without multiplexing pays, one server process per caller: the bench
  starts the processes itself and each caller talks to its own directly over its stdin and stdout
  (initialize, then its calls), no router.

Both rows run in the rounds at 8 and 64 callers (the bench's scenarios), so calls/s, p50 and the
RSS of the processes at the end of each window (the server processes', and the router's) are
figures of the same windows. Start-up is measured after the rounds on fresh processes
(`mcp_startup_phase`): from the exec of each command to the first `tools/call` answer (handshake
included), with the CPU time the processes had used by then; for the shared server that is
`plugrpc run` starting, starting the server and making the handshake.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from plugrpc import wire

from . import log
from .clients import CallFailed, NdjsonConnection, NdjsonConnections, fail_all, settle
from .launch import EXEC_STAMP_ENV
from .procs import BenchError, Child, cpu_seconds, rss_kib, wait_connectable
from .servers import PLUGIN_FILE, PLUGINS, PLUGRPC, Lab, Router, Server, router_roles
from .settings import Settings

MCP_ECHO: Final = PLUGINS / "mcp_echo.py"
INITIALIZE: Final = {"protocolVersion": "2025-06-18", "capabilities": {},
                     "clientInfo": {"name": "plugrpc-bench", "version": "1"}}
HANDSHAKE_TOML: Final = ('handshake = { method = "initialize", params = { protocolVersion = "2025-06-18", '
                         'capabilities = {}, clientInfo = { name = "plugrpc-bench", version = "1" } }, '
                         'notify = "notifications/initialized" }\n')
TOOLS_CALL: Final = "tools/call"
ROWS: Final = ("mcp_shared", "mcp_each")
START_BOUND: Final = 60.0
"""Seconds a start may take before it counts as failed (32 Python processes at once on 2 cores take a while)."""


def tool_params(params: dict[str, Any]) -> dict[str, Any]:
    """The bench's echo params as a call of the echo tool."""
    return {"name": "echo", "arguments": {"message": params["data"]}}


def tool_result(result: Any) -> dict[str, Any]:
    """The echo tool's answer back as the bench's echo result, which the load generator checks."""
    try:
        return {"data": result["structuredContent"]["result"]}
    except (KeyError, TypeError) as exc:
        raise CallFailed(f"not an answer of the echo tool: {str(result)[:200]}") from exc


# --- one server per caller, over its pipes ----------------------------------------------------


class PipeRpc(asyncio.Protocol):
    """JSON-RPC over one process's stdout (read here) and stdin (`writer`); answers matched by id."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lines = wire.LineSplitter()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self.writer: asyncio.WriteTransport | None = None

    def data_received(self, data: bytes) -> None:
        for line in self._lines.feed(data):
            msg = wire.loads(line)
            fut = self._pending.pop(msg.get("id"), None) if "method" not in msg else None
            if fut is None or fut.done():
                continue  # a notification or a request of the server's: the echo tool sends none
            settle(fut, msg)

    def connection_lost(self, exc: Exception | None) -> None:
        fail_all(self._pending, f"the server's stdout closed with calls in flight: {exc}")

    def ask(self, method: str, params: Any) -> asyncio.Future[Any]:
        if self.writer is None or self.writer.is_closing():
            raise CallFailed("the server's stdin is closed")
        self._next_id = call_id = self._next_id + 1
        fut = self._loop.create_future()
        self._pending[call_id] = fut
        self.writer.write(wire.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": call_id}))
        return fut

    def notify(self, method: str) -> None:
        assert self.writer is not None
        self.writer.write(wire.dumps({"jsonrpc": "2.0", "method": method}))

    async def echo(self, params: dict[str, Any]) -> dict[str, Any]:
        return tool_result(await self.ask(TOOLS_CALL, tool_params(params)))


def spawn_piped(lab: Lab, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
    """Start `argv` as bench.procs.Fleet.spawn does (the launch shim, its own session, dying with the bench), but with
    pipes for stdin and stdout: the process is one JSON-RPC connection."""
    log_path = lab.workdir / f"{name}.log"
    shim = [sys.executable, "-m", "bench.launch", str(os.getpid()), "-1", "--", *argv]
    with open(log_path, "wb") as err:
        popen = subprocess.Popen(shim, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                 env=env if env is not None else dict(os.environ), start_new_session=True)
    child = Child(name, popen, log_path)  # type: ignore[arg-type]
    lab.fleet.children.append(child)
    return child


async def connect_piped(child: Child) -> PipeRpc:
    """The JSON-RPC connection over `child`'s pipes."""
    loop = asyncio.get_running_loop()
    proto = PipeRpc()
    await loop.connect_read_pipe(lambda: proto, child.popen.stdout)
    writer, _ = await loop.connect_write_pipe(asyncio.Protocol, child.popen.stdin)
    proto.writer = writer  # type: ignore[assignment]
    return proto


async def handshake(rpc: PipeRpc, child: Child, bound: float) -> dict[str, Any]:
    """MCP's initialize, then the first tool call (checked); a dead child says why."""
    try:
        await asyncio.wait_for(rpc.ask("initialize", INITIALIZE), bound)
        rpc.notify("notifications/initialized")
        echoed = await asyncio.wait_for(rpc.echo({"data": "ready?"}), bound)
    except (TimeoutError, CallFailed) as exc:
        if not child.alive():
            raise child.died() from exc
        raise BenchError(f"{child.name}: no answer within {bound:g} s: {exc!r}") from exc
    if echoed != {"data": "ready?"}:
        raise BenchError(f"{child.name}: the echo tool returned {echoed!r}")
    return echoed


@dataclass
class Pool:
    """The per-caller servers started so far (grown on demand), and how many callers the last window used."""

    lab: Lab
    servers: list[tuple[Child, PipeRpc]] = field(default_factory=list)
    active: int = 0

    def roles(self) -> dict[str, list[int]]:
        return {"mcp servers": [child.pid for child, _ in self.servers[:self.active]]}


@dataclass(frozen=True)
class PoolServer(Server):
    pool: Pool | None = None


@dataclass(frozen=True)
class McpEach:
    """One MCP server process per caller, started by the bench as callers need them, reached over their pipes."""

    name: str = "mcp-each"

    async def start(self, lab: Lab) -> Server:
        pool = Pool(lab)
        await grow(pool, 1, self.name)
        return PoolServer("", pool.servers[0][0], pool.roles, pool=pool)


async def grow(pool: Pool, n: int, name: str) -> None:
    """Start servers until `pool` has `n`, as many at once as there are CPUs, each answering a tool call first."""
    gate = asyncio.Semaphore(os.cpu_count() or 1)

    async def one(i: int) -> tuple[Child, PipeRpc]:
        async with gate:
            child = spawn_piped(pool.lab, f"{name}{i}", [sys.executable, os.fspath(MCP_ECHO)])
            rpc = await connect_piped(child)
            await handshake(rpc, child, START_BOUND)
            return child, rpc

    if n > len(pool.servers):
        log(f"[mcp] starting {n - len(pool.servers)} more MCP server processes, one per caller")
        pool.servers += await asyncio.gather(*(one(i) for i in range(len(pool.servers), n)))


class McpCallers:
    """The calls of the per-caller row: caller i on server process i."""

    def __init__(self, rpcs: list[PipeRpc]) -> None:
        self.calls = [rpc.echo for rpc in rpcs]

    @classmethod
    async def open(cls, server: Server, n: int) -> McpCallers:
        assert isinstance(server, PoolServer) and server.pool is not None
        await grow(server.pool, n, "mcp-each")
        server.pool.active = n
        return cls([rpc for _, rpc in server.pool.servers[:n]])

    async def aclose(self) -> None:
        return None  # the servers stay for the next window


# --- one shared server behind the router ------------------------------------------------------


def mcp_image(root: Path) -> Path:
    """An image holding the MCP server as plugin `bench`, on stdin/stdout with MCP's handshake (named as the SDK
    plugin's file, so the bench charges its CPU and memory to `plugin`)."""
    script = root / PLUGIN_FILE
    shutil.copyfile(MCP_ECHO, script)
    script.chmod(0o755)
    (root / ".plugin.toml").write_text(f'[plugin.bench]\npath = "{PLUGIN_FILE}"\ntransport = "stdio"\n'
                                       f'exports = ["{TOOLS_CALL}"]\n{HANDSHAKE_TOML}')
    return root


@dataclass(frozen=True)
class McpRouter(Router):
    """`plugrpc run` on the MCP image; ready once a tool call through it was answered."""

    @property
    def methods(self) -> list[str]:
        return []  # the router's own start check calls echo methods: the tool call is checked below

    async def image(self, lab: Lab) -> Path:
        return mcp_image(lab.fresh_dir(f"{self.name}-image"))

    async def start(self, lab: Lab) -> Server:
        server = await super().start(lab)
        conns = await McpRouterCallers.open(server.path, 1)
        try:
            if await asyncio.wait_for(conns.calls[0]({"data": "ready?"}), START_BOUND) != {"data": "ready?"}:
                raise BenchError(f"{self.name}: the echo tool answered something else")
        finally:
            await conns.aclose()
        return server


class McpRouterCallers:
    """Callers of the shared server, each on its own connection to the router, calling `bench.tools/call`."""

    def __init__(self, conns: NdjsonConnections) -> None:
        self._conns = conns
        self.calls = [self._caller(c) for c in conns.conns]

    @staticmethod
    def _caller(conn: NdjsonConnection) -> Any:
        async def call(params: dict[str, Any]) -> dict[str, Any]:
            return tool_result(await conn.ask(f"bench.{TOOLS_CALL}", tool_params(params)))

        return call

    @classmethod
    async def open(cls, path: str, n: int) -> McpRouterCallers:
        return cls(await NdjsonConnections.open(path, n, [f"bench.{TOOLS_CALL}"]))

    async def aclose(self) -> None:
        await self._conns.aclose()


# --- start-up, on fresh processes -------------------------------------------------------------


def _exec_ns(stamp: Path) -> int:
    try:
        return int(stamp.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"no exec time in {stamp} (bench.launch writes it): {exc}") from exc


async def _start_each(lab: Lab, name: str, settings: Settings) -> dict[str, Any]:
    """One server process as a gateway starts one for a new caller: exec to its first tool answer."""
    stamp = lab.workdir / f"{name}.exec"
    child = spawn_piped(lab, name, [sys.executable, os.fspath(MCP_ECHO)], dict(os.environ, **{
        EXEC_STAMP_ENV: os.fspath(stamp)}))
    try:
        await handshake(await connect_piped(child), child, START_BOUND)
        answered, cpu = time.monotonic_ns(), cpu_seconds(child.pid)
        await asyncio.sleep(settings.idle_settle)
        rss = {"servers": rss_kib(child.pid)}
    finally:
        lab.fleet.stop(child)
    return {"first_answer_ms": (answered - _exec_ns(stamp)) / 1e6, "cpu_ms": cpu * 1000, "idle_rss_kib": rss}


async def _start_shared(lab: Lab, name: str, settings: Settings) -> dict[str, Any]:
    """`plugrpc run` on the MCP image: exec to the first tool answer through it (the router starts, starts the
    server and makes the handshake, then the call goes through)."""
    image = mcp_image(lab.fresh_dir(f"{name}-image"))
    path, stamp = lab.socket(name), lab.workdir / f"{name}.exec"
    env = dict(os.environ, **{EXEC_STAMP_ENV: os.fspath(stamp)},
               XDG_RUNTIME_DIR=os.fspath(lab.fresh_dir(f"{name}-run")))
    child = lab.fleet.spawn(name, [*PLUGRPC, "run", "--root", os.fspath(image), "--socket", os.fspath(path)], env=env)
    try:
        await wait_connectable(path, child, START_BOUND)
        conns = await McpRouterCallers.open(os.fspath(path), 1)
        try:
            await asyncio.wait_for(conns.calls[0]({"data": "ready?"}), START_BOUND)
            answered = time.monotonic_ns()
            roles = router_roles([child.pid])
            cpu = sum(cpu_seconds(p) for pids in roles.values() for p in pids)
            await asyncio.sleep(settings.idle_settle)
            rss = {"router": sum(rss_kib(p) for p in roles["router"]),
                   "servers": sum(rss_kib(p) for p in roles["plugin"])}
        finally:
            await conns.aclose()
    finally:
        lab.fleet.stop(child, grace=10)
    return {"first_answer_ms": (answered - _exec_ns(stamp)) / 1e6, "cpu_ms": cpu * 1000, "idle_rss_kib": rss}


async def mcp_startup_phase(lab: Lab, selected: set[str], settings: Settings) -> dict[str, Any]:
    """Each selected MCP row's start-up, `settings.plugin_starts` times on fresh processes, one at a time."""
    out: dict[str, Any] = {}
    for key, start in (("mcp_shared", _start_shared), ("mcp_each", _start_each)):
        if key not in selected:
            continue
        runs: list[dict[str, Any]] = []
        for i in range(settings.plugin_starts):
            lab.check_stop()
            try:
                runs.append(await start(lab, f"{key}-start{i}", settings))
            except Exception as exc:  # reported, never filled in
                runs.append({"error": str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"})
                log(f"[mcp] {key} start {i + 1} FAILED: {runs[-1]['error']}")
                continue
            log(f"[mcp] {key} start {i + 1}/{settings.plugin_starts}: first answer {runs[-1]['first_answer_ms']:.0f} "
                f"ms after exec, {runs[-1]['cpu_ms']:.0f} ms CPU")
        out[key] = {"runs": runs}
    return out
