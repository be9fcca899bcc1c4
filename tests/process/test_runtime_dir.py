"""process.runtime_dir: the router's private directory of plugin sockets, and what a killed router left."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import plugrpc
from plugrpc.process import runtime_dir
from plugrpc.process.runtime_dir import RuntimeDir, remove_stale
from plugrpc.testing import RouterProcess, wait_for_socket

from plugins.sources import OVS
from util import WAIT, unshare_works, wait_until


def test_runtime_dir_is_private_named_after_its_router_and_removable(plugrpc_tmp: Path) -> None:
    rd = RuntimeDir(plugrpc_tmp)
    assert rd.path.parent == plugrpc_tmp and rd.path.name.startswith(f"plugrpc-{os.getpid()}-")
    assert stat.S_IMODE(rd.path.stat().st_mode) == 0o700
    assert rd.socket_for("ovs") == rd.path / "ovs.sock"
    (rd.path / "leftover").touch()
    rd.remove()
    assert not rd.path.exists()
    rd.remove()


def test_only_directories_of_routers_that_are_gone_are_removed(plugrpc_tmp: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(WAIT)
    stale = plugrpc_tmp / f"plugrpc-{dead.pid}-abcd1234"
    (stale / "x.sock").parent.mkdir(mode=0o700)
    (stale / "x.sock").touch()
    live = plugrpc_tmp / f"plugrpc-{os.getpid()}-abcd1234"
    live.mkdir(mode=0o700)
    unrelated = [plugrpc_tmp / "plugrpc-0", plugrpc_tmp / f"plugrpc-{dead.pid}-x.y", plugrpc_tmp / "other"]
    for path in unrelated:
        path.mkdir()
    (plugrpc_tmp / f"plugrpc-{dead.pid}-file0").touch()  # a file, not a directory: left alone
    assert remove_stale(plugrpc_tmp) == [stale]
    assert not stale.exists() and live.exists() and all(path.exists() for path in unrelated)
    assert remove_stale(plugrpc_tmp / "missing") == []


def test_a_router_killed_with_sigkill_has_its_directory_removed_by_the_next(
        plugrpc_image: type, plugrpc_tmp: Path) -> None:
    root = plugrpc_image({"ovs": ("ovs.py", OVS, ["version"])})  # type: ignore[operator]
    xdg = plugrpc_tmp / "xdg"
    xdg.mkdir(mode=0o700)
    first = RouterProcess(root, plugrpc_tmp / "one.sock", env={"XDG_RUNTIME_DIR": str(xdg)}).wait_ready()
    try:
        # The front socket accepts (into its backlog) before the plugins' sockets are bound: wait for them.
        left = wait_until(lambda: [p for p in xdg.iterdir() if p.name.startswith("plugrpc-")
                                   and (p / "ovs.sock").exists()], "the plugin's socket")
        assert len(left) == 1
    finally:
        first.stop(signal.SIGKILL)
    assert left[0].exists()  # nothing in a SIGKILLed process can clean up
    second = RouterProcess(root, plugrpc_tmp / "two.sock", env={"XDG_RUNTIME_DIR": str(xdg)}).wait_ready()
    try:
        assert not left[0].exists()
        # The socket accepts (wait_ready) a moment before the cleanup logs: wait for the line.
        wait_until(lambda: "removed 1 runtime directory left by routers that were killed" in second.log(),
                   "the cleanup's log line")
    finally:
        assert second.stop() == 0
    assert [path for path in xdg.iterdir() if path.name.startswith("plugrpc-")] == []


HOLD = ("import sys, time; from pathlib import Path; from plugrpc.process.runtime_dir import RuntimeDir; "
        "print(RuntimeDir(Path(sys.argv[1])).path, flush=True); time.sleep(60)")
"""A router's part in it: make a runtime directory in argv[1], say where, hold it (and its lock) for a minute."""


@contextlib.contextmanager
def held_elsewhere(base: Path) -> Iterator[Path]:
    """A runtime directory in `base` made and held by another live process, which is killed at the end."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(base)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        yield Path(holder.stdout.readline().strip())
    finally:
        holder.kill()
        holder.wait(WAIT)
        assert holder.stdout is not None
        holder.stdout.close()


def test_a_live_routers_directory_is_kept_though_its_pid_is_not_visible(plugrpc_tmp: Path) -> None:
    """A router in another PID namespace sharing /tmp: its pid names nothing here, but it holds its lock."""
    with held_elsewhere(plugrpc_tmp) as made:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait(WAIT)
        # Renamed, the directory keeps its lock: as seen from here, its router's pid is not running.
        elsewhere = made.rename(plugrpc_tmp / f"plugrpc-{dead.pid}-{made.name.rsplit('-', 1)[1]}")
        assert remove_stale(plugrpc_tmp) == [] and elsewhere.is_dir()
        second = RuntimeDir(plugrpc_tmp)  # a router starting here cleans up too, and leaves it alone
        assert elsewhere.is_dir()
        second.remove()
    assert remove_stale(plugrpc_tmp) == [elsewhere]  # once its router is gone, it is stale
    assert not elsewhere.exists()


def test_a_directory_whose_lock_another_router_took_is_not_used(plugrpc_tmp: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The moment between making a directory and locking it: a cleanup that took the lock first wins."""
    made: list[Path] = []
    real = tempfile.mkdtemp

    def mkdtemp(prefix: str, dir: Path) -> str:  # the first time, a name another router holds
        made.append(Path(real(prefix=prefix, dir=dir)) if made else taken)
        return str(made[-1])

    with held_elsewhere(plugrpc_tmp) as taken:
        monkeypatch.setattr(runtime_dir.tempfile, "mkdtemp", mkdtemp)
        rd = RuntimeDir(plugrpc_tmp)
        assert made == [taken, rd.path] and taken.is_dir()
        rd.remove()


def test_a_router_in_another_pid_namespace_keeps_its_directory(plugrpc_image: type, plugrpc_tmp: Path) -> None:
    """Two routers sharing a runtime base, one in a PID namespace of its own (containers sharing /tmp)."""
    why = unshare_works()
    if why:
        pytest.skip(why)
    root = plugrpc_image({"ovs": ("ovs.py", OVS, ["version"])})  # type: ignore[operator]
    xdg = plugrpc_tmp / "xdg"
    xdg.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(xdg)}
    # Inside, the router's pid is past `first`, where no process runs out here; `; :` keeps it a child of sh.
    first = next(n for n in range(20_000, 32_000, 100) if not any(os.path.exists(f"/proc/{n + i}") for i in range(50)))
    inner = plugrpc_tmp / "inner.sock"
    script = (f"echo {first} > /proc/sys/kernel/ns_last_pid; "
              f"{sys.executable} -m plugrpc run --root {root} --socket {inner}; :")
    with open(plugrpc_tmp / "inner.log", "wb") as log:
        outer = subprocess.Popen(["unshare", "--pid", "--mount-proc", "--kill-child", "sh", "-c", script], env=env,
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_socket(inner, WAIT, lambda: outer.poll() is None)
        theirs = wait_until(lambda: [p for p in xdg.iterdir() if (p / "ovs.sock").exists()], "its plugin's socket")[0]
        assert not os.path.exists(f"/proc/{theirs.name.split('-')[1]}")  # its pid names nothing here
        second = RouterProcess(root, plugrpc_tmp / "outer.sock", env={"XDG_RUNTIME_DIR": str(xdg)}).wait_ready()
        try:
            # The second router cleaned up before it made its own directory.
            wait_until(lambda: list(xdg.glob(f"plugrpc-{second.pid}-*")), "the second router's runtime directory")
            assert theirs.is_dir()
            with plugrpc.BlockingClient(inner, timeout=WAIT) as c:
                assert c.raw("ovs.version") == "1.0alpha"
        finally:
            assert second.stop() == 0
    finally:
        outer.kill()  # --kill-child: the namespace's first process gets SIGKILL, which ends the namespace
        outer.wait(WAIT)
