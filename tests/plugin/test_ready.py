"""serve(on_start=...): the start-up hook runs before the first request is read, then READY=1 goes to
$NOTIFY_SOCKET (and only when there is one); a failing hook ends the plugin; running out of memory
in a handler exits with 204. Real plugin processes run by hand on their own socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from plugrpc.codes import EXIT_MEMORY
from plugrpc.testing import wait_for_socket

from util import WAIT, RawConn, req

PLUGIN = '''
import asyncio, os, sys, time
import plugrpc

HOOK = os.environ.get("HOOK", "sync")

def start_up():
    if HOOK == "fail":
        raise RuntimeError("the database is not there")
    time.sleep(0.3)
    open(os.environ["MARK"], "w").close()

async def astart_up():
    await asyncio.sleep(0.3)
    open(os.environ["MARK"], "w").close()

def oom():
    raise MemoryError

plugrpc.serve({"ok": lambda: "ok", "oom": oom},
              on_start={"sync": start_up, "fail": start_up, "async": astart_up, "none": None}[HOOK])
'''


@pytest.fixture
def script(plugrpc_tmp: Path) -> Path:
    path = plugrpc_tmp / "p.py"
    path.write_text(PLUGIN)
    return path


@pytest.fixture
def listener(plugrpc_tmp: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(plugrpc_tmp / "notify.sock"))
    sock.settimeout(WAIT)
    yield sock
    sock.close()


def start(script: Path, tmp: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "PLUGRPC_", "NOTIFY_"))}
    child_env.update(PLUGRPC_SOCKET=str(tmp / "p.sock"), MARK=str(tmp / "mark"), **env)
    return subprocess.Popen([sys.executable, str(script)], env=child_env, stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def serves(proc: subprocess.Popen[bytes], tmp: Path) -> None:
    """Once its socket accepts, the plugin answers a call."""
    wait_for_socket(tmp / "p.sock", WAIT, lambda: proc.poll() is None)
    with RawConn(tmp / "p.sock") as conn:
        assert conn.ask(req("ok"))["result"] == "ok"


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(WAIT)
    if proc.stderr is not None:
        proc.stderr.close()


@pytest.mark.parametrize("hook", ["sync", "async"])
def test_ready_is_said_after_the_start_up_hook(script: Path, plugrpc_tmp: Path, listener: socket.socket,
                                               hook: str) -> None:
    proc = start(script, plugrpc_tmp, {"HOOK": hook, "NOTIFY_SOCKET": str(plugrpc_tmp / "notify.sock")})
    try:
        assert listener.recv(4096) == b"READY=1"
        assert (plugrpc_tmp / "mark").exists()  # the hook had finished
        serves(proc, plugrpc_tmp)
    finally:
        stop(proc)


def test_ready_on_an_abstract_notify_socket(script: Path, plugrpc_tmp: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        name = f"plugrpc-test-ready-{os.getpid()}"
        abstract.bind("\0" + name)
        abstract.settimeout(WAIT)
        proc = start(script, plugrpc_tmp, {"HOOK": "none", "NOTIFY_SOCKET": "@" + name})
        try:
            assert abstract.recv(4096) == b"READY=1"
        finally:
            stop(proc)


def test_without_notify_socket_it_just_serves(script: Path, plugrpc_tmp: Path) -> None:
    proc = start(script, plugrpc_tmp, {"HOOK": "sync"})
    try:
        serves(proc, plugrpc_tmp)
    finally:
        stop(proc)


def test_a_notify_socket_nobody_listens_on_is_logged_and_it_serves_on(script: Path, plugrpc_tmp: Path) -> None:
    proc = start(script, plugrpc_tmp, {"HOOK": "none", "NOTIFY_SOCKET": str(plugrpc_tmp / "gone.sock")})
    try:
        serves(proc, plugrpc_tmp)
        proc.kill()
        proc.wait(WAIT)
        assert proc.stderr is not None and b"cannot say READY=1 on $NOTIFY_SOCKET" in proc.stderr.read()
    finally:
        stop(proc)


def test_a_failing_start_up_hook_ends_the_plugin_with_status_1(script: Path, plugrpc_tmp: Path,
                                                               listener: socket.socket) -> None:
    proc = start(script, plugrpc_tmp, {"HOOK": "fail", "NOTIFY_SOCKET": str(plugrpc_tmp / "notify.sock")})
    try:
        assert proc.wait(WAIT) == 1
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        assert "on_start failed; exiting" in err and "the database is not there" in err
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.recv(4096)  # never said READY=1
    finally:
        stop(proc)


def test_running_out_of_memory_in_a_handler_exits_204(script: Path, plugrpc_tmp: Path) -> None:
    proc = start(script, plugrpc_tmp, {"HOOK": "none"})
    try:
        wait_for_socket(plugrpc_tmp / "p.sock", WAIT, lambda: proc.poll() is None)
        with RawConn(plugrpc_tmp / "p.sock") as conn:
            conn.send(req("oom"))
            assert conn.closed_by_peer()
        started = time.monotonic()
        assert proc.wait(WAIT) == EXIT_MEMORY and time.monotonic() - started < WAIT
        assert proc.stderr is not None
        assert b"command 'oom' ran out of memory; exiting (status 204)" in proc.stderr.read()
    finally:
        stop(proc)
