"""The rows of the bench, as one table: what runs, how many hops a call makes, how to start its server,
which client drives it, what it cannot do and why, and what it needs that a machine may lack.

Adding a row is one `ROWS` entry plus its server's code (and a `Client` if no existing one
speaks its protocol). A row whose needs are missing is listed as SKIPPED with what to install;
a scenario a row cannot serve by its nature is listed as n/a with the reason; neither is ever
filled in with a figure.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from .clients import Connections, ExecCalls, NdjsonConnections, PlugrpcConnections
from .peers import GrpcConnections, HttpConnections
from .servers import BENCH_DIR, PLUGINS, Exec, Fd3, OwnSocket, Router, Server, Spec
from .settings import KIB, Scenario


@dataclass(frozen=True)
class Client:
    """How the load generator reaches a row's server: its name in the results and how to open `n` connections."""

    name: str
    open: Callable[[Server, int, str], Awaitable[Connections]]
    """(server, connections, method) -> the connections."""
    charges_children: bool = False
    """Its calls run as this process's children (exec): their CPU is the plugin's."""


async def _bare(server: Server, n: int, method: str) -> Connections:
    return await NdjsonConnections.open(server.path, n, [method])


async def _plugrpc(server: Server, n: int, method: str) -> Connections:
    return await PlugrpcConnections.open(server.path, n, method)


async def _grpc(server: Server, n: int, method: str) -> Connections:
    return GrpcConnections(server.path, n)


async def _http(server: Server, n: int, method: str) -> Connections:
    return HttpConnections(server.path, n)


async def _exec(server: Server, n: int, method: str) -> Connections:
    return ExecCalls(server.command)


BARE: Final = Client("bare", _bare)
"""The bench's own NDJSON client (bench.clients), the same for every NDJSON row."""
PLUGRPC_CLIENT: Final = Client("plugrpc.Client", _plugrpc)
GRPCIO: Final = Client("grpcio", _grpc)
AIOHTTP: Final = Client("aiohttp", _http)
EXEC: Final = Client("exec", _exec, charges_children=True)


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
TARGETS_ONLY: Final = Cannot(lambda s: s.key not in TARGET_SCENARIOS,
                             "measured only where the router-vs-proxy targets are, to keep the run short")


@dataclass(frozen=True)
class Need:
    """Something a row needs that a machine may lack, and what to install."""

    present: Callable[[], bool]
    missing: str


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


GRPC_INSTALLED: Final = Need(lambda: _importable("grpc"), "grpcio is not installed (pip install -e '.[bench]')")
AIOHTTP_INSTALLED: Final = Need(lambda: _importable("aiohttp"), "aiohttp is not installed (pip install -e '.[bench]')")
METRICS_INSTALLED: Final = Need(lambda: _importable("prometheus_client"),
                                "prometheus-client is not installed (pip install -e '.[metrics]')")
C_COMPILER: Final = Need(lambda: shutil.which("cc") is not None,
                         "no C compiler (cc) on this machine (apt-get install gcc)")


@dataclass(frozen=True)
class Row:
    """One line of the tables."""

    key: str
    label: str
    hops: int
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
ROUTER: Final = Router("router")

ROWS: Final = (
    Row("floor", "floor: uvloop NDJSON echo", 1, ECHO),
    Row("proxy", "floor: naive line proxy -> echo", 2, PROXY),
    Row("bare_router", "floor: bare parsing router -> echo", 2,
        Fd3("bare-router", ("-m", "bench.baselines", "router"), role="bare router", upstream=ECHO, check="bench.echo"),
        method="bench.echo", cannot=(TARGETS_ONLY,)),
    Row("direct", "SDK plugin, direct", 1, Fd3("sdk", (str(PLUGINS / "sdk_echo.py"),), role="plugin")),
    Row("router", "router + SDK plugin", 2, ROUTER, method="bench.echo"),
    Row("client", "router via plugrpc.Client", 2, ROUTER, PLUGRPC_CLIENT, method="bench.echo"),
    Row("router_asyncio", "router on asyncio loop", 2, Router("router-asyncio", loop="asyncio"), method="bench.echo"),
    # Pings every second (10x the default) and a scrape every second (15x Prometheus's default).
    Row("router_ops", "router + --metrics + pings", 2, Router("router-ops", ping_interval=1.0, scrape_every=1.0),
        method="bench.echo", needs=(METRICS_INSTALLED,)),
    Row("jsonrpcserver", "jsonrpcserver.dispatch plugin", 1,
        Fd3("jsonrpcserver", (str(PLUGINS / "jsonrpcserver_echo.py"),), role="plugin")),
    Row("grpc", "gRPC (grpcio aio), unix", 1, OwnSocket("grpc", ("-m", "bench.peers", "grpc")), GRPCIO,
        needs=(GRPC_INSTALLED,)),
    # Not checked with an NDJSON call when it starts (it speaks HTTP): the first measured call checks it.
    Row("http", "HTTP JSON-RPC (aiohttp), unix", 1,
        Fd3("http", ("-m", "bench.peers", "http"), role="server", check=None), AIOHTTP,
        cannot=(NO_PIPELINING,), needs=(AIOHTTP_INSTALLED,)),
    Row("exec_c", "exec per call: C plugin", 1, Exec("exec-c", BENCH_DIR / "exec_c" / "plugin.c"), EXEC,
        cannot=(SEQUENTIAL, ARGV_CAP), needs=(C_COMPILER,)),
    Row("exec_py", "exec per call: Python plugin", 1, Exec("exec-py", PLUGINS / "exec_echo.py"), EXEC,
        cannot=(SEQUENTIAL, ARGV_CAP)),
)


def select_rows(which: set[str] | None = None) -> list[Row]:
    """The rows named in `which` (all of them for None), in table order."""
    if which is None:
        return list(ROWS)
    unknown = which - {r.key for r in ROWS}
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(sorted(unknown))}; known: {', '.join(r.key for r in ROWS)}")
    return [r for r in ROWS if r.key in which]
