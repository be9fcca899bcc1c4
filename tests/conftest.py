"""Session-wide set-up: everything the suite's routers and plugins leave on disk stays in one
private directory, removed at the end, and a run that still leaves directories in /tmp fails."""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from util import NatsServer

LEFTOVERS = re.compile(r"plugrpc-\d+(-\w+)?|prpc-\w+|sup-\w+|exec\w+")
"""What the suite's routers (runtime and default socket directories), fixtures and tests create in /tmp."""


def _leftovers() -> set[str]:
    return {f"/tmp/{name}" for name in os.listdir("/tmp") if LEFTOVERS.fullmatch(name)}


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir() -> Iterator[str]:
    """$XDG_RUNTIME_DIR for the session: runtime directories of routers a test kills with SIGKILL
    (which cannot clean up) and default front sockets land here, not in /tmp."""
    path = tempfile.mkdtemp(prefix="plugrpc-tests-", dir="/tmp")
    before = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = path
    try:
        yield path
    finally:
        if before is None:
            del os.environ["XDG_RUNTIME_DIR"]
        else:
            os.environ["XDG_RUNTIME_DIR"] = before
        shutil.rmtree(path, ignore_errors=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _leftovers()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if it left directories in /tmp (only when the whole session ran its fixtures)."""
    left = _leftovers() - session.config.stash.get(_BEFORE, set())
    if left and exitstatus == 0:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"the test run left {len(left)} director{'y' if len(left) == 1 else 'ies'} in "
                                f"/tmp: {', '.join(sorted(left))}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[set[str]]()


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
