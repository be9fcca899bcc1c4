"""Session-wide set-up: what the suite's routers and plugins leave on disk stays in one private
directory, removed at the end, rather than in /tmp."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from util import NatsServer


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir() -> Iterator[str]:
    """$XDG_RUNTIME_DIR and $TMPDIR for the session: the runtime directories of routers that a test
    kills with SIGKILL (which cannot clean up after themselves), default front sockets and
    temporary files land here, and go with it."""
    path = tempfile.mkdtemp(prefix="plugrpc-tests-", dir="/tmp")
    if os.environ.get("COVERAGE_PROCESS_CONFIG"):
        # Plugins run in their image root: their measurements must land beside the suite's own.
        os.environ.setdefault("COVERAGE_FILE", str(Path(".coverage").resolve()))
    saved = {name: os.environ.get(name) for name in ("XDG_RUNTIME_DIR", "TMPDIR")}
    os.environ["XDG_RUNTIME_DIR"] = os.environ["TMPDIR"] = path
    saved_tempdir, tempfile.tempdir = tempfile.tempdir, path
    try:
        yield path
    finally:
        tempfile.tempdir = saved_tempdir
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nats_server(plugrpc_tmp: Path) -> Iterator[Callable[..., NatsServer]]:
    """Factory: `nats_server(config="...")` runs a real nats-server on 127.0.0.1 (stopped at teardown)."""
    servers: list[NatsServer] = []

    def start(config: str = "", start: bool = True) -> NatsServer:
        server = NatsServer(plugrpc_tmp, config, start)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)
