"""pytest fixtures for plugin authors and for plugrpc's own tests (a `pytest11` plugin).

Installed with plugrpc, they need no import and no conftest:

    def test_image(plugrpc_client):                   # a whole image: the dir with .plugin.toml
        client = plugrpc_client("path/to/image")
        assert client.raw("ovs.version") == "1.0alpha"

    def test_script(plugrpc_plugin):                  # one plugin script, in any language
        client = plugrpc_plugin("plugins/ovs.py", ["version"], name="ovs")
        assert client.raw("ovs.version") == "1.0alpha"

    def test_generated(plugrpc_image, plugrpc_router):   # an image written from source text
        image = plugrpc_image({"ovs": ("plugins/ovs.py", OVS_SOURCE, ["version"])})
        router = plugrpc_router(image)
        with router.client() as client:               # or `async with router.aclient() as c:`
            assert client.raw("ovs.version") == "1.0alpha"

Everything runs for real: `plugrpc run` in a subprocess, plugins as processes, unix sockets in
a short private directory. Every client is closed, every process stopped and every socket
removed at teardown.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from .client.aio import Client
from .client.blocking import BlockingClient
from .manifest import NAME_RE

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0

PluginDecl = tuple[str, str, Sequence[str]] | tuple[str, str, Sequence[str], Mapping[str, Any]]
"""(path in the image, source text, exports[, further manifest keys])."""


def toml_value(value: Any) -> str:
    """`value` as TOML text: the few types a manifest uses (booleans, numbers, strings, lists, tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} to TOML")


def write_image(root: Path, plugins: Mapping[str, PluginDecl]) -> Path:
    """Write an image: each plugin's executable file and a `.plugin.toml` declaring them."""
    lines = []
    for name, decl in plugins.items():
        rel, source, exports = decl[0], decl[1], decl[2]
        extra: Mapping[str, Any] = decl[3] if len(decl) > 3 else {}
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip())
        path.chmod(0o755)
        lines.append(f"[plugin.{name}]")
        lines.append(f"path = {toml_value(rel)}")
        lines.append(f"exports = {toml_value(list(exports))}")
        lines += [f"{key} = {toml_value(value)}" for key, value in extra.items()]
        lines.append("")
    (root / ".plugin.toml").write_text("\n".join(lines))
    return root


def wait_for_socket(path: Path, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Block until `path` accepts a connection; raise if `alive()` turns false or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(os.fspath(path))
                return
            except OSError:
                pass
        if not alive():
            raise RuntimeError(f"process exited before {path} accepted connections")
        time.sleep(0.02)
    raise TimeoutError(f"{path} did not accept connections within {timeout}s")


class RouterProcess:
    """`plugrpc run` in a subprocess, its log in a file."""

    def __init__(self, root: Path, sock: Path, args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> None:
        self.root, self.socket = root, sock
        self.log_path = sock.parent / f"{sock.stem}.log"
        command = [sys.executable, "-m", "plugrpc", "run", "--root", str(root), "--socket", str(sock), *args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """Everything the router (and its plugins) logged so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> RouterProcess:
        try:
            wait_for_socket(self.socket, timeout, lambda: self.proc.poll() is None)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"router did not start: {exc}\n--- log ---\n{self.log()}") from None
        return self

    def client(self, timeout: float | None = 30.0) -> BlockingClient:
        """A blocking client of this router (connects on first call; use it in a `with` block)."""
        return BlockingClient(self.socket, timeout=timeout)

    def aclient(self, timeout: float | None = 30.0) -> Client:
        """An async client of this router, for `async with router.aclient() as c:` in async tests."""
        return Client(self.socket, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Stop the router (SIGTERM by default) and return its exit status; SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode


@pytest.fixture
def plugrpc_tmp() -> Iterator[Path]:
    """A short private directory (AF_UNIX paths must stay under 108 bytes), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="prpc-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def plugrpc_image(plugrpc_tmp: Path) -> Callable[[Mapping[str, PluginDecl]], Path]:
    """Factory: `plugrpc_image({"name": (path, source, exports[, keys])})` writes an image, returns its root."""
    counter = iter(range(1_000_000))

    def make(plugins: Mapping[str, PluginDecl]) -> Path:
        root = plugrpc_tmp / f"image{next(counter)}"
        root.mkdir()
        return write_image(root, plugins)

    return make


@pytest.fixture
def plugrpc_router(plugrpc_tmp: Path) -> Iterator[Callable[..., RouterProcess]]:
    """Factory: `plugrpc_router(root, *args)` starts `plugrpc run` on `root` and waits until it is ready."""
    routers: list[RouterProcess] = []
    counter = iter(range(1_000_000))

    def start(root: Path, *args: str, env: Mapping[str, str] | None = None, wait: bool = True) -> RouterProcess:
        router = RouterProcess(root, plugrpc_tmp / f"r{next(counter)}.sock", args, env)
        routers.append(router)
        return router.wait_ready() if wait else router

    try:
        yield start
    finally:
        for router in routers:
            router.stop()


@pytest.fixture
def plugrpc_client(plugrpc_router: Callable[..., RouterProcess]) -> Iterator[Callable[..., BlockingClient]]:
    """Factory: `plugrpc_client(root, *args)` runs the image at `root`, returns a connected BlockingClient.

    `args` go to `plugrpc run` (e.g. "--log-level", "debug"); `env` adds to its environment and
    `timeout` is the client's default per call. A router that does not start raises with its log.
    """
    clients: list[BlockingClient] = []

    def connect(root: str | os.PathLike[str], *args: str, env: Mapping[str, str] | None = None,
                timeout: float | None = 30.0) -> BlockingClient:
        router = plugrpc_router(Path(root).resolve(), *args, env=env)
        client = router.client(timeout)
        clients.append(client)
        client.connect()
        return client

    try:
        yield connect
    finally:
        for client in clients:
            client.close()


@pytest.fixture
def plugrpc_plugin(
    plugrpc_tmp: Path, plugrpc_client: Callable[..., BlockingClient]
) -> Callable[..., BlockingClient]:
    """Factory: `plugrpc_plugin(script, exports, name=None, **keys)` runs one plugin behind a router.

    `script` is an executable plugin in any language, run where it lies (so it finds the files
    next to it) under the name `name` (default: the file name without its suffix), with further
    manifest keys from `keys` (`timeout=2`, `env={...}`). Call its methods as `name.method`.
    """
    counter = iter(range(1_000_000))

    def start(script: str | os.PathLike[str], exports: Sequence[str], *, name: str | None = None,
              **keys: Any) -> BlockingClient:
        path = Path(script).resolve()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ValueError(f"{path} is not an executable file (a plugin needs a #! line and chmod +x)")
        name = name if name is not None else path.stem
        if not NAME_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a plugin name (letters, digits, '_', '-'); pass name=...")
        # An image holds only what lies under its root; a one-line launcher there execs the script
        # in place (same pid, so fd 3 and LISTEN_PID still hold).
        launcher = f"#!/bin/sh\nexec {shlex.quote(str(path))} \"$@\"\n"
        root = write_image(plugrpc_tmp / f"plugin{next(counter)}", {name: ("launch", launcher, exports, keys)})
        return plugrpc_client(root)

    return start
