"""process.runtime_dir: the router's private directory of plugin sockets, and what a killed router left."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from plugrpc.process.runtime_dir import RuntimeDir, remove_stale
from plugrpc.testing import RouterProcess

from plugin_sources import OVS
from util import WAIT, wait_until


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
