"""Helpers for tests that talk to sockets byte for byte."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from plugrpc.testing import wait_for_socket

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
PLUGINS = TESTS / "plugins"
"""Plugin scripts the tests run."""
LEGACY = TESTS / "legacy"
"""core0-style exec plugins (shell and C)."""


class RawConn:
    """A blocking NDJSON connection with a timeout on every read: nothing can hang a test."""

    def __init__(self, path: Path | str, timeout: float = 10.0) -> None:
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

    def send(self, data: bytes | Any) -> None:
        self.sock.sendall(data if isinstance(data, bytes) else orjson.dumps(data) + b"\n")

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"closed by peer; buffered {self.buf[:200]!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def recv(self) -> Any:
        return orjson.loads(self.line())

    def ask(self, data: bytes | Any) -> Any:
        self.send(data)
        return self.recv()

    def closed_by_peer(self) -> bool:
        """True when the peer closed the connection (after any buffered lines)."""
        try:
            return self.sock.recv(1 << 16) == b""
        except ConnectionResetError:
            return True


def req(method: str, params: Any = None, id: Any = 1) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        msg["params"] = params
    return msg


BASIC = PLUGINS / "sdk_basic.py"


class BasicPlugin:
    """tests/plugins/sdk_basic.py run by hand: it binds `socket` itself from $PLUGRPC_SOCKET."""

    def __init__(self, socket: Path, env: Mapping[str, str] | None = None, wait: float = 10.0) -> None:
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
