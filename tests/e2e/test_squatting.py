"""Another local user listening where a client looks for the router: the default socket's directory made
first in a shared /tmp, a socket left in a directory anyone can write, a listener swapped in. Every
client (the CLI, `Client`, `BlockingClient`) refuses before sending a byte, and says what to do."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

import plugrpc
from plugrpc.errors import ConnectError
from plugrpc.testing import RouterProcess

from plugins.sources import OVS
from util import WAIT

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
SECRET = '{"password": "hunter2"}'


class Squatter:
    """A process of uid `NOBODY` listening on `path` (making its directory first, with `dir_mode`, if
    asked; binding the socket itself unless given one) and answering every request with a forged result.
    `heard()` is every byte it was sent."""

    def __init__(self, path: Path, dir_mode: int | None = None, bound: socket.socket | None = None) -> None:
        self.path = path
        self._said: bytes | None = None
        ready, self._ready = os.pipe()
        self._heard, heard = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the child only does syscalls
            self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child is killed at the end of the test
            try:
                self._serve(dir_mode, bound, heard)
            finally:
                os._exit(0)
        os.close(self._ready)
        os.close(heard)
        if bound is not None:
            bound.close()
        with os.fdopen(ready, "rb") as f:
            assert f.read(1) == b"r", "the squatter did not start"

    def _serve(self, dir_mode: int | None, bound: socket.socket | None, heard: int) -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        if dir_mode is not None:
            self.path.parent.mkdir()
            self.path.parent.chmod(dir_mode)
        listener = bound or socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if bound is None:
            listener.bind(os.fspath(self.path))
            self.path.chmod(0o777)
        listener.listen()
        listener.settimeout(3 * WAIT)
        os.write(self._ready, b"r")
        while True:
            conn, _ = listener.accept()
            with conn, conn.makefile("rwb") as f:
                for line in f:
                    os.write(heard, line)
                    request = orjson.loads(line)
                    f.write(orjson.dumps({"jsonrpc": "2.0", "result": "forged", "id": request.get("id")}) + b"\n")
                    f.flush()

    def heard(self) -> bytes:
        """Stop it (once); what it was sent."""
        if self._said is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            with os.fdopen(self._heard, "rb") as f:
                self._said = f.read()
        return self._said


@pytest.fixture
def shared_tmp(plugrpc_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A /tmp of our own (mode 1777) as the system's temporary directory, with no $XDG_RUNTIME_DIR:
    the default socket is then `shared_tmp/plugrpc-UID/router.sock`, where another user can get first."""
    plugrpc_tmp.chmod(0o711)
    tmp = plugrpc_tmp / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("PLUGRPC_ROUTER", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    yield tmp


@pytest.fixture
def squatters() -> Iterator[Callable[..., Squatter]]:
    made: list[Squatter] = []

    def make(path: Path, dir_mode: int | None = None, bound: socket.socket | None = None) -> Squatter:
        made.append(Squatter(path, dir_mode, bound))
        return made[-1]

    yield make
    for squatter in made:
        squatter.heard()


def plugrpc_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "plugrpc", *args], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL, env=dict(os.environ))


def default_socket(tmp: Path) -> Path:
    return tmp / f"plugrpc-{os.getuid()}" / "router.sock"


@pytest.mark.parametrize("dir_mode", [0o777, 0o755])
@pytest.mark.parametrize("command", [["call", "secrets.store", SECRET], ["status"], ["logs", "secrets"],
                                     ["events"]])
def test_cli_refuses_a_default_socket_another_user_made(shared_tmp: Path, squatters: Callable[..., Squatter],
                                                       dir_mode: int, command: list[str]) -> None:
    squatter = squatters(default_socket(shared_tmp), dir_mode=dir_mode)
    out = plugrpc_cli(*command)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1
    directory = default_socket(shared_tmp).parent
    assert f"{directory} is owned by uid {NOBODY} with mode {dir_mode:04o}" in out.stderr
    assert f"remove it (rm -r {directory}, as root if another user owns it)" in out.stderr
    assert squatter.heard() == b""


def test_clients_refuse_a_default_socket_another_user_made(shared_tmp: Path,
                                                          squatters: Callable[..., Squatter]) -> None:
    squatter = squatters(default_socket(shared_tmp), dir_mode=0o777)
    with pytest.raises(ConnectError, match=f"owned by uid {NOBODY} with mode 0777"), plugrpc.BlockingClient() as c:
        c.raw("secrets.store", {"password": "hunter2"})

    async def async_client() -> None:
        async with plugrpc.Client() as c:
            await c.raw("secrets.store", {"password": "hunter2"})

    with pytest.raises(ConnectError, match="another user could take the router's place"):
        asyncio.run(async_client())
    assert squatter.heard() == b""


def test_the_default_socket_of_a_real_router_works(shared_tmp: Path, plugrpc_image: Callable[..., Path]) -> None:
    root = plugrpc_image({"ovs": ("ovs.py", OVS, ["version"])})
    default_socket(shared_tmp).parent.mkdir(mode=0o700)  # for RouterProcess's log file; run finds it as it made it
    router = RouterProcess(root, default_socket(shared_tmp)).wait_ready()
    try:
        out = plugrpc_cli("call", "ovs.version")
        assert (out.returncode, out.stdout) == (0, '"1.0alpha"\n')
        with plugrpc.BlockingClient(timeout=WAIT) as c:
            assert c.raw("ovs.version") == "1.0alpha"
    finally:
        assert router.stop() == 0


def test_a_socket_of_another_user_in_a_sticky_shared_directory_is_refused(
        shared_tmp: Path, squatters: Callable[..., Squatter], plugrpc_image: Callable[..., Path]) -> None:
    squatter = squatters(shared_tmp / "shared.sock")
    out = plugrpc_cli("call", "--socket", str(shared_tmp / "shared.sock"), "secrets.store", SECRET)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert f"{shared_tmp / 'shared.sock'} belongs to uid {NOBODY}" in out.stderr and "mode 1777" in out.stderr
    assert squatter.heard() == b""
    # Ours, in the same directory: the sticky bit keeps anyone else from replacing it.
    router = RouterProcess(plugrpc_image({"ovs": ("ovs.py", OVS, ["version"])}), shared_tmp / "mine.sock").wait_ready()
    try:
        out = plugrpc_cli("call", "--socket", str(router.socket), "ovs.version")
        assert (out.returncode, out.stdout) == (0, '"1.0alpha"\n')
    finally:
        assert router.stop() == 0


def test_any_socket_in_a_directory_others_can_write_without_the_sticky_bit_is_refused(
        plugrpc_tmp: Path, plugrpc_image: Callable[..., Path]) -> None:
    open_dir = plugrpc_tmp / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    router = RouterProcess(plugrpc_image({"ovs": ("ovs.py", OVS, ["version"])}), open_dir / "r.sock").wait_ready()
    try:
        out = plugrpc_cli("call", "--socket", str(router.socket), "ovs.version")
        assert out.returncode == 2 and out.stdout == ""
        assert f"{open_dir} can be written by other users (mode 0777) and is not sticky" in out.stderr
    finally:
        assert router.stop() == 0


def test_a_listener_of_another_user_behind_a_trusted_path_is_refused(plugrpc_tmp: Path,
                                                                     squatters: Callable[..., Squatter]) -> None:
    """The directory is ours, but the process listening is not (swapped in after the check, say)."""
    path = plugrpc_tmp / "r.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(os.fspath(path))  # by us; listen() by the other user, whose credentials the peer then has
    squatter = squatters(path, bound=bound)
    out = plugrpc_cli("call", "--socket", str(path), "secrets.store", SECRET)
    assert out.returncode == 2 and out.stdout == ""
    assert f"the process listening on it runs as uid {NOBODY}" in out.stderr
    assert squatter.heard() == b""
    assert stat.S_ISSOCK(path.stat().st_mode)


def test_run_refuses_the_same_directory_with_the_same_words(shared_tmp: Path,
                                                             squatters: Callable[..., Squatter]) -> None:
    squatters(default_socket(shared_tmp), dir_mode=0o755)
    out = plugrpc_cli("run")
    directory = default_socket(shared_tmp).parent
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert f"{directory} is owned by uid {NOBODY} with mode 0755, not a directory of yours" in out.stderr
