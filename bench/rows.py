"""The rows of the bench: which servers each one needs, which client drives it, and why one is skipped.

A `Lab` starts servers on first use and keeps them for the whole run (idle servers cost no CPU),
so every round measures the same processes. A row that cannot run says why (`skip_reason`),
and a server that fails to start turns into a skipped row carrying its error, never a figure.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from .clients import ExecCalls, NdjsonConnections, PlugrpcConnections
from .procs import BenchError, Child, Fleet, children_of, listening_socket, wait_connectable
from .settings import Scenario

BENCH_DIR: Final = Path(__file__).resolve().parent
PLUGINS: Final = BENCH_DIR / "plugins"
BUILD_DIR: Final = BENCH_DIR / "build"
C_SOURCE: Final = BENCH_DIR / "exec_c" / "plugin.c"


class Connections(Protocol):
    calls: list[Any]

    async def aclose(self) -> None: ...


@dataclass
class Server:
    """A running server: where to connect and which processes to charge CPU and memory to."""

    path: str
    front: Child
    roles: Callable[[], dict[str, list[int]]]


@dataclass
class Row:
    """One line of the table."""

    key: str
    label: str
    hops: int
    client: str
    server: str | None
    """Key of the server in the Lab (None: no server, e.g. exec)."""
    method: str = "echo"
    pipelining: bool = True
    """Whether many calls may be in flight on one connection."""
    max_payload: int | None = None
    max_payload_reason: str = ""
    only: frozenset[str] | None = None
    """The scenarios (keys) this row is measured in; None: all of them."""
    only_reason: str = ""
    skip_reason: str | None = None
    group: str = ""
    notes: list[str] = field(default_factory=list)


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


PLUGRPC: Final = (sys.executable, "-m", "plugrpc")
"""The `plugrpc` command line with this interpreter, whether or not its console script is installed."""


TARGET_SCENARIOS: Final = frozenset({"conns-c1-100B", "conns-c64-100B"})
"""Where the router is compared with the proxy by issue 8's latency and throughput targets."""
EXEC_ARG_LIMIT: Final = 128 * 1024
EXEC_ARG_REASON: Final = "core0 passes args in argv; Linux caps one argument at 128 KiB (MAX_ARG_STRLEN)"


def define_rows(which: set[str] | None = None) -> list[Row]:
    """Every row, with a skip reason where its prerequisites are missing on this machine."""
    rows = [
        Row("floor", "floor: uvloop NDJSON echo", 1, "bare", "echo", group="floor"),
        Row("proxy", "floor: naive line proxy -> echo", 2, "bare", "proxy", group="floor"),
        Row("bare_router", "floor: bare parsing router -> echo", 2, "bare", "bare-router", method="bench.echo",
            only=TARGET_SCENARIOS, only_reason="measured only where issue 8's targets are, to keep the run short",
            group="floor"),
        Row("direct", "SDK plugin, direct", 1, "bare", "sdk", group="plugrpc"),
        Row("router", "router + SDK plugin", 2, "bare", "router", method="bench.echo",
            group="plugrpc"),
        Row("client", "router via plugrpc.Client", 2, "plugrpc.Client", "router", method="bench.echo",
            group="plugrpc"),
        Row("router_asyncio", "router on asyncio loop", 2, "bare", "router-asyncio", method="bench.echo",
            group="plugrpc"),
        Row("jsonrpcserver", "jsonrpcserver.dispatch plugin", 1, "bare", "jsonrpcserver", group="alternatives"),
        Row("grpc", "gRPC (grpcio aio), unix", 1, "grpcio", "grpc",
            skip_reason=None if _has("grpc") else "grpcio is not installed (pip install -e '.[bench]')",
            group="alternatives"),
        Row("http", "HTTP JSON-RPC (aiohttp), unix", 1, "aiohttp", "http", pipelining=False,
            skip_reason=None if _has("aiohttp") else "aiohttp is not installed (pip install -e '.[bench]')",
            group="alternatives"),
        Row("exec_c", "exec per call: C plugin", 1, "exec", None, pipelining=False, max_payload=EXEC_ARG_LIMIT,
            max_payload_reason=EXEC_ARG_REASON,
            skip_reason=None if shutil.which("cc") else "no C compiler (cc) on this machine (apt-get install gcc)",
            group="exec"),
        Row("exec_py", "exec per call: Python plugin", 1, "exec", None, pipelining=False,
            max_payload=EXEC_ARG_LIMIT, max_payload_reason=EXEC_ARG_REASON, group="exec"),
    ]
    if which is not None:
        unknown = which - {r.key for r in rows}
        if unknown:
            raise SystemExit(f"unknown rows: {', '.join(sorted(unknown))}; known: {', '.join(r.key for r in rows)}")
        rows = [r for r in rows if r.key in which]
    return rows


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


PLUGIN_FILE: Final = "bench_plugin.py"


def _runs(pid: int, name: str) -> bool:
    """Whether process `pid` runs a file called `name` (its command line mentions it)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return any(arg.endswith(name.encode()) for arg in f.read().split(b"\0"))
    except OSError:
        return False


def sdk_image(root: Path, plugins: int) -> Path:
    """An image with `plugins` copies of the SDK echo plugin, named bench (or bench0..benchN-1)."""
    root.mkdir(parents=True)
    script = root / PLUGIN_FILE
    shutil.copyfile(PLUGINS / "sdk_echo.py", script)
    script.chmod(0o755)
    names = ["bench"] if plugins == 1 else [f"bench{i}" for i in range(plugins)]
    (root / ".plugin.toml").write_text(
        "".join(f'[plugin.{n}]\npath = "{PLUGIN_FILE}"\nexports = ["echo"]\n\n' for n in names)
    )
    return root


def build_c_plugin() -> Path:
    """Compile bench/exec_c/plugin.c with `cc -O2` (once per source change)."""
    BUILD_DIR.mkdir(exist_ok=True)
    binary = BUILD_DIR / "exec_plugin"
    if binary.exists() and binary.stat().st_mtime >= C_SOURCE.stat().st_mtime:
        return binary
    proc = subprocess.run(
        ["cc", "-O2", "-o", os.fspath(binary), os.fspath(C_SOURCE)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"cc failed: {proc.stderr.strip()[:300]}")
    return binary


class Lab:
    """Starts the servers the rows need, once, and opens client connections to them."""

    def __init__(self, fleet: Fleet, workdir: Path) -> None:
        self.fleet = fleet
        self.workdir = workdir
        self._servers: dict[str, Server] = {}
        self._failed: dict[str, str] = {}
        self._images = 0
        self.stop_requested = False
        """Set on Ctrl-C / SIGTERM; every measurement checks it before it starts."""
        self.router_command: tuple[str, ...] = PLUGRPC
        """How the router is started (the cProfile fallback of --profile runs it under cProfile)."""

    def _sock(self, name: str) -> Path:
        return self.workdir / f"{name}.sock"

    async def server(self, key: str) -> Server:
        """The running server `key`, started (and checked with one echo call) on first use."""
        if key in self._failed:
            raise BenchError(self._failed[key])
        if key not in self._servers:
            try:
                self._servers[key] = await self._start(key)
            except BenchError as exc:
                self._failed[key] = str(exc)
                raise
        server = self._servers[key]
        if not server.front.alive():
            raise server.front.died()
        return server

    def check_stop(self) -> None:
        """Raise CancelledError once Ctrl-C or SIGTERM asked the run to stop."""
        if self.stop_requested:
            raise asyncio.CancelledError("interrupted")

    def check_alive(self, key: str) -> None:
        """Raise the reason server `key` cannot serve: it failed to start, or it has exited since."""
        if key in self._failed:
            raise BenchError(self._failed[key])
        server = self._servers.get(key)
        if server is not None and not server.front.alive():
            raise server.front.died()

    async def _start(self, key: str) -> Server:
        if key == "echo":
            return await self._fd3_server("echo", [sys.executable, "-m", "bench.baselines", "echo"])
        if key == "proxy":
            echo = await self.server("echo")
            proxy = await self._fd3_server(
                "proxy", [sys.executable, "-m", "bench.baselines", "proxy", "--upstream", echo.path]
            )
            return Server(proxy.path, proxy.front, lambda: {"proxy": [proxy.front.pid], "echo": [echo.front.pid]})
        if key == "bare-router":
            echo = await self.server("echo")
            bare = await self._fd3_server(
                "bare-router", [sys.executable, "-m", "bench.baselines", "router", "--upstream", echo.path],
                check_method="bench.echo",
            )
            return Server(bare.path, bare.front, lambda: {"bare router": [bare.front.pid], "echo": [echo.front.pid]})
        if key == "sdk":
            return await self._fd3_server("sdk", [sys.executable, os.fspath(PLUGINS / "sdk_echo.py")], role="plugin")
        if key == "jsonrpcserver":
            return await self._fd3_server(
                "jsonrpcserver", [sys.executable, os.fspath(PLUGINS / "jsonrpcserver_echo.py")], role="plugin"
            )
        if key == "router":
            return await self.start_router("router", plugins=1)
        if key == "router-asyncio":
            return await self.start_router("router-asyncio", plugins=1, loop="asyncio")
        if key == "http":
            # Not checked with an NDJSON call: it speaks HTTP; the first measured call checks it.
            http = [sys.executable, "-m", "bench.peers", "http"]
            return await self._fd3_server("http", http, role="server", check=False)
        if key == "grpc":
            path = self._sock("grpc")
            argv = [sys.executable, "-m", "bench.peers", "grpc", "--socket", os.fspath(path)]
            child = self.fleet.spawn("grpc", argv)
            await wait_connectable(path, child)
            return Server(os.fspath(path), child, lambda: {"server": [child.pid]})
        raise BenchError(f"unknown server {key}")

    async def _fd3_server(self, name: str, argv: list[str], role: str | None = None, check: bool = True,
                          check_method: str = "echo") -> Server:
        path = self._sock(name)
        sock = listening_socket(path)
        try:
            child = self.fleet.spawn(name, argv, listen=sock)
        finally:
            sock.close()
        server = Server(os.fspath(path), child, lambda: {role or name: [child.pid]})
        if check:
            await self.check_echo(server, check_method)
        return server

    async def start_router(self, name: str, plugins: int, loop: str | None = None) -> Server:
        """`plugrpc run` on a fresh image of SDK echo plugins; ready when one call went through."""
        self._images += 1
        image = sdk_image(self.workdir / f"image{self._images}", plugins)
        run_dir = self.workdir / f"run{self._images}"
        run_dir.mkdir(mode=0o700)
        path = self._sock(name)
        argv = [*self.router_command, "run", "--root", os.fspath(image),
                "--socket", os.fspath(path)]
        if loop:
            argv += ["--loop", loop]
        env = dict(os.environ, XDG_RUNTIME_DIR=os.fspath(run_dir))
        child = self.fleet.spawn(name, argv, env=env)
        await wait_connectable(path, child)

        def roles() -> dict[str, list[int]]:
            kids = children_of(child.pid)
            plugins = [p for p in kids if _runs(p, PLUGIN_FILE)]
            helpers = [p for p in kids if p not in plugins]
            out = {"router": [child.pid], "plugin": plugins}
            if helpers:
                out["router helpers"] = helpers  # e.g. its watchdog process, charged separately
            return out

        server = Server(os.fspath(path), child, roles)
        for method in ["bench.echo"] if plugins == 1 else [f"bench{i}.echo" for i in range(plugins)]:
            await self.check_echo(server, method)
        return server

    async def check_echo(self, server: Server, method: str) -> None:
        """One real call with a result check, so a broken server fails here rather than mid-row."""
        conns = await NdjsonConnections.open(server.path, 1, [method])
        try:
            params = {"data": "ready?"}
            result = await asyncio.wait_for(conns.calls[0](params), 30)
        except (TimeoutError, OSError) as exc:
            if not server.front.alive():
                raise server.front.died() from exc
            raise BenchError(f"{server.front.name}: first call failed: {exc!r}") from exc
        finally:
            await conns.aclose()
        if result != params:
            raise BenchError(f"{server.front.name}: echo returned {result!r}, expected {params!r}")

    async def open(self, row: Row, n: int) -> tuple[Connections, Callable[[], dict[str, list[int]]]]:
        """`n` client connections for `row`, and the processes to charge for its calls."""
        if row.key == "exec_c":
            return ExecCalls([os.fspath(build_c_plugin())]), _no_roles
        if row.key == "exec_py":
            return ExecCalls([sys.executable, os.fspath(PLUGINS / "exec_echo.py")]), _no_roles
        assert row.server is not None
        server = await self.server(row.server)
        conns: Connections
        if row.client == "bare":
            conns = await NdjsonConnections.open(server.path, n, [row.method])
        elif row.client == "plugrpc.Client":
            conns = await PlugrpcConnections.open(server.path, n, row.method)
        elif row.client == "grpcio":
            from .peers import GrpcConnections

            conns = GrpcConnections(server.path, n)
        elif row.client == "aiohttp":
            from .peers import HttpConnections

            conns = HttpConnections(server.path, n)
        else:
            raise BenchError(f"unknown client {row.client}")
        return conns, server.roles

    def stop_servers(self) -> None:
        """Stop every server this Lab started (a later phase starts fresh ones)."""
        for server in self._servers.values():
            self.fleet.stop(server.front)
        self._servers.clear()


def _no_roles() -> dict[str, list[int]]:
    return {}
