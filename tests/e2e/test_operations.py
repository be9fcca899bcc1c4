"""Operations, end to end: `plugrpc run` in a subprocess, real plugin processes, real sockets.

Liveness (a stuck plugin restarted, a busy one left alone), readiness and `after` order, limits (a
plugin over its memory or CPU limit dies alone and restarts with the reason), logs, PID 1 in a
PID namespace, and their faults: bad limits and users, garbage on $NOTIFY_SOCKET, a
plugin that says READY=1 and never answers.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import plugrpc
from plugrpc.testing import RouterProcess

from plugins.sources import OPS, OPS_EXPORTS, ORDERED, RAW_NOTIFY
from util import WAIT, alive, figure, unshare_works, wait_until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]
FAST_PINGS = {"ping_interval": 0.3, "ping_timeout": 0.3, "grace": 0.5}
SLACK = 3.0
"""Seconds allowed on top of a bound the code promises (a Python plugin takes ~0.3 s to start; the
machine is shared): the assertion catches a restart that does not happen, not a slow one."""


def row(client: plugrpc.BlockingClient, name: str) -> dict[str, Any]:
    return next(p for p in client.raw("router.plugins") if p["name"] == name)


def plugrpc_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "plugrpc", *args], capture_output=True, text=True, timeout=timeout)


# --- liveness ------------------------------------------------------------------------------


def test_a_stuck_plugin_is_restarted_within_interval_timeout_and_grace_and_answers_again(
        plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"s": ("s.py", OPS, OPS_EXPORTS, FAST_PINGS), "other": ("o.py", OPS, OPS_EXPORTS)})
    router = plugrpc_router(root)
    with router.client() as c, router.client() as other:
        old = c.raw("s.pid")
        sent = time.monotonic()
        with pytest.raises(plugrpc.RpcError) as failed:
            c.raw("s.hang")  # its sync handler never returns: the plugin's loop is stuck
        failed_after = time.monotonic() - sent
        assert failed.value.code == -32001
        assert "unresponsive" in failed.value.data["reason"] and "rpc.ping" in failed.value.data["reason"]
        assert failed_after < 0.3 + 0.3 + SLACK
        assert other.raw("other.echo", ["meanwhile"]) == "meanwhile"
        new = c.raw("s.pid")  # waits in the backlog for the new process
        answered_after = time.monotonic() - sent
        assert new != old and not alive(old)
        assert answered_after < 0.3 + 0.3 + 0.5 + SLACK
        info = row(c, "s")
        assert (info["restarts"], info["exit_reason"], info["last_exit"]) == (1, "unresponsive", -signal.SIGKILL)
        assert info["exit_detail"] == "no answer to rpc.ping within 0.3 s"
        assert row(c, "other")["restarts"] == 0
    table = plugrpc_cli("status", "--socket", str(router.socket)).stdout
    assert "SIGKILL unresponsive" in next(line for line in table.splitlines() if line.startswith("s "))
    figure("stuck plugin: its call failed after", failed_after, "s", interval=0.3, timeout=0.3, grace=0.5)
    figure("stuck plugin: answered again after", answered_after, "s", interval=0.3, timeout=0.3, grace=0.5)


def test_a_plugin_busy_within_its_max_inflight_is_never_restarted(
        plugrpc_image: Image, plugrpc_router: Router) -> None:
    # max_inflight = 1 and a sync call that holds its loop for 3 s: ten ping intervals pass with no
    # room for a ping, and no ping is made. (That an error answer proves a plugin alive too is
    # tested with stdio servers, which answer rpc.ping -32601: tests/e2e/test_stdio.py.)
    root = plugrpc_image({"busy": ("b.py", OPS, OPS_EXPORTS, {**FAST_PINGS, "max_inflight": 1})})
    router = plugrpc_router(root)
    with router.client() as c:
        pid = c.raw("busy.pid")
        wait_until(lambda: row(c, "busy")["pings"] >= 2, "two pings answered")
        pings = row(c, "busy")["pings"]
        assert c.raw("busy.block", [3]) == 3
        info = row(c, "busy")
        assert (info["pid"], info["restarts"], info["exit_reason"]) == (pid, 0, None)
        assert info["pings"] <= pings + 2  # none were sent while it had no room
        wait_until(lambda: row(c, "busy")["pings"] >= info["pings"] + 3, "pings to resume")
        assert row(c, "busy")["restarts"] == 0


def test_a_plugin_that_says_ready_and_never_answers_is_restarted(
        plugrpc_image: Image, plugrpc_router: Router, plugrpc_tmp: Path) -> None:
    go = plugrpc_tmp / "go"
    go.touch()
    env = {"ADDRESS_FILE": str(plugrpc_tmp / "address"), "GO": str(go), "NEVER_ANSWER": "1"}
    root = plugrpc_image({"mute": ("m.py", RAW_NOTIFY, ["echo"], {**FAST_PINGS, "ready": "notify", "env": env})})
    router = plugrpc_router(root)
    with router.client() as c:
        first = wait_until(lambda: row(c, "mute")["state"] == "running" and row(c, "mute"), "READY=1")
        ready_at = time.monotonic()
        with pytest.raises(plugrpc.RpcError) as failed:
            c.raw("mute.echo", [1], timeout=WAIT)
        assert failed.value.code == -32001 and "unresponsive" in failed.value.data["reason"]
        info = wait_until(lambda: (r := row(c, "mute"))["restarts"] >= 1 and r, "a restart")
        detected = time.monotonic() - ready_at
        assert info["exit_reason"] == "unresponsive" and info["pid"] != first["pid"]
        assert router.proc.poll() is None
    figure("READY=1 then silent: unresponsive and restarted after", detected, "s", interval=0.3, timeout=0.3)


# --- readiness and start order -----------------------------------------------------------


def test_after_orders_the_start_of_five_plugins(plugrpc_image: Image, plugrpc_router: Router,
                                                plugrpc_tmp: Path) -> None:
    log = plugrpc_tmp / "order.log"
    env = {"ORDER_LOG": str(log)}
    after = {"db": [], "cache": [], "api": ["db", "cache"], "web": ["api"], "jobs": ["db", "web"]}
    # Declared in an order that is not the start order.
    root = plugrpc_image({name: (f"{name}.py", ORDERED, ["name"], {"ready": "notify", "after": deps, "env": env})
                          for name, deps in reversed(after.items())})
    router = plugrpc_router(root)
    with router.client() as c:
        assert c.raw("jobs.name") == "jobs"  # waits until jobs, and so all the others, started
        wait_until(lambda: all(p["state"] == "running" for p in c.raw("router.plugins")), "all ready")
    events = log.read_text().split("\n")[:-1]
    assert len(events) == 10
    for name, deps in after.items():
        for dep in deps:
            assert events.index(f"ready {dep}") < events.index(f"start {name}"), events


def test_notify_plugin_holds_calls_until_ready_and_ignores_garbage_huge_and_strangers(
        plugrpc_image: Image, plugrpc_router: Router, plugrpc_tmp: Path) -> None:
    go, flooded = plugrpc_tmp / "go", plugrpc_tmp / "flooded"
    address_file = plugrpc_tmp / "address"
    script = [{"data": base64.b64encode(b"\xff\xfe not utf-8").decode()},
              {"size": 200_000},
              {"data": base64.b64encode(b"no assignments here").decode(), "repeat": FLOOD}]
    env = {"ADDRESS_FILE": str(address_file), "GO": str(go), "NOTIFY_SCRIPT": json.dumps(script),
           "FLOODED": str(flooded)}
    root = plugrpc_image({"n": ("n.py", RAW_NOTIFY, ["echo"], {"ready": "notify", "env": env}),
                          "other": ("o.py", OPS, OPS_EXPORTS)})
    router = plugrpc_router(root)
    with router.client() as c:
        address = wait_until(lambda: address_file.exists() and address_file.read_text(), "NOTIFY_SOCKET")
        assert address.startswith("@plugrpc-")
        assert c.raw("other.echo", [0]) == 0  # up: its start-up is no part of what is measured below
        result: list[Any] = []
        early = threading.Thread(target=lambda: result.append(c.raw("n.echo", ["early"])))
        early.start()
        # A stranger (this test, not in the plugin's process group) cannot make it ready.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stranger:
            stranger.sendto(b"READY=1", "\0" + address[1:])
        flood_started = time.monotonic()
        slowest, calls = 0.0, 0
        while not flooded.exists():  # as fast as the router reads them (the sender blocks when its queue is full)
            slowest, calls = max(slowest, slowest_call(c, 0.0)), calls + 1
        flood_took = time.monotonic() - flood_started
        assert calls > 10, "the flood was over before it could be measured"
        assert row(c, "n")["state"] == "starting" and not result  # still held: nothing made it ready
        go.touch()
        early.join(WAIT)
        assert result == [["early"]]  # it echoes its params
        info = row(c, "n")
        assert (info["state"], info["status_text"]) == ("running", "serving")
        after = slowest_call(c, 1.0)
    log = router.log()
    assert "ignored a message with no KEY=VALUE line" in log and "ignored a message larger than 4096" in log
    assert "ignored a message from pid" in log
    figure(f"notify flood ({FLOOD:,} garbage datagrams): slowest call to another plugin meanwhile", slowest * 1000,
           "ms", calls=calls, flood_s=round(flood_took, 2), after_ms=round(after * 1000, 2))


FLOOD = 100_000


def slowest_call(c: plugrpc.BlockingClient, seconds: float) -> float:
    """The longest call to `other.echo` in `seconds` of calls one after the other (one call at least)."""
    slowest = 0.0
    deadline = time.monotonic() + seconds
    while True:
        t = time.monotonic()
        assert c.raw("other.echo", [1]) == 1
        slowest = max(slowest, time.monotonic() - t)
        if t >= deadline:
            return slowest


# --- limits --------------------------------------------------------------------------------


def test_a_plugin_over_its_memory_limit_dies_alone_and_restarts_with_the_reason(
        plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"hog": ("h.py", OPS, OPS_EXPORTS, {"limits": {"memory": "128M"}}),
                          "other": ("o.py", OPS, OPS_EXPORTS)})
    router = plugrpc_router(root)
    stop = threading.Event()
    answered: list[int] = []

    def steady() -> None:
        with router.client() as c:
            while not stop.is_set():
                answered.append(c.raw("other.echo", [len(answered)]))

    with router.client() as c:
        old = c.raw("hog.pid")
        assert c.raw("hog.hog", [16]) == 16  # well within its limit
        caller = threading.Thread(target=steady)
        caller.start()
        try:
            sent = time.monotonic()
            with pytest.raises(plugrpc.RpcError) as failed:
                c.raw("hog.hog", [512])
            assert failed.value.code == -32001
            new = c.raw("hog.pid")
            back = time.monotonic() - sent
            before = len(answered)
            wait_until(lambda: len(answered) > before + 10, "the other plugin to keep answering")
        finally:
            stop.set()
            caller.join(WAIT)
        assert new != old and answered == list(range(len(answered)))
        info = row(c, "hog")
        assert (info["restarts"], info["exit_reason"], info["last_exit"]) == (1, "limit", 204)
        assert info["exit_detail"] == "limits.memory: it ran out of its 128 MiB"
        assert row(c, "other")["restarts"] == 0
    status = plugrpc_cli("status", "--socket", str(router.socket)).stdout
    assert "204 limit" in next(line for line in status.splitlines() if line.startswith("hog "))
    assert router.proc.poll() is None
    figure("memory limit 128M broken: from the call to the restarted plugin answering", back, "s",
           other_calls=len(answered))


def test_a_plugin_over_its_cpu_limit_is_killed_with_sigxcpu_and_restarts(
        plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"cpu": ("c.py", OPS, OPS_EXPORTS, {"limits": {"cpu_seconds": 1}})})
    router = plugrpc_router(root)
    with router.client() as c:
        with pytest.raises(plugrpc.RpcError) as failed:
            c.raw("cpu.spin", [30])
        assert failed.value.code == -32001
        info = wait_until(lambda: (r := row(c, "cpu"))["state"] == "running" and r["restarts"] == 1 and r,
                          "the restart")
        assert (info["exit_reason"], info["last_exit"]) == ("limit", -signal.SIGXCPU)
        assert info["exit_detail"] == "limits.cpu_seconds: it used its 1 s of CPU"


# --- logs ----------------------------------------------------------------------------------


def test_plugrpc_logs_shows_the_last_lines_and_follows_new_ones(plugrpc_image: Image,
                                                                plugrpc_router: Router) -> None:
    root = plugrpc_image({"talk": ("t.py", OPS, OPS_EXPORTS)})
    router = plugrpc_router(root)
    sock = str(router.socket)
    with router.client() as c:
        for n in range(5):
            c.raw("talk.say", [f"line {n}"])
        out = plugrpc_cli("logs", "talk", "-n", "2", "--socket", sock)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert [line.split(None, 3)[2:] for line in lines] == [["INFO", "line 3"], ["INFO", "line 4"]]
        follower = subprocess.Popen([sys.executable, "-m", "plugrpc", "logs", "talk", "-n", "1", "-f", "--json",
                                     "--socket", sock], stdout=subprocess.PIPE, text=True)
        try:
            # Its first line is the last one so far: from then on it follows.
            assert json.loads(_readline(follower, WAIT))["text"] == "line 4"
            c.raw("talk.say", ["followed"])
            line = json.loads(_readline(follower, WAIT))
            assert line["text"] == "followed" and line["level"] == "info" and line["seq"] > 5
        finally:
            follower.send_signal(signal.SIGINT)
            follower.wait(WAIT)
            assert follower.stdout is not None
            follower.stdout.close()
    assert plugrpc_cli("logs", "nope", "--socket", sock).stderr.startswith("plugrpc: no plugin named 'nope'")


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of `proc`'s stdout, or fail after `timeout` (a thread reads: pipes have no timeout)."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline() if proc.stdout else ""), daemon=True)
    reader.start()
    reader.join(timeout)
    assert got and got[0], "no line in time"
    return got[0]


# --- bad manifests -------------------------------------------------------------------------


@pytest.mark.parametrize(("keys", "words"), [
    ({"limits": {"memory": "256 MB"}}, "key 'limits.memory': expected bytes as an integer or a size like"),
    ({"limits": {"open_files": "many"}}, "key 'limits.open_files': expected an integer"),
    ({"user": "no-such-user-here"}, "key 'user': no such user 'no-such-user-here' on this machine"),
    ({"after": ["ghost"]}, "key 'after': no plugin named 'ghost'"),
])
def test_a_bad_limit_user_or_order_stops_run_with_one_line_naming_the_key(
        plugrpc_image: Image, plugrpc_tmp: Path, keys: dict[str, Any], words: str) -> None:
    root = plugrpc_image({"p": ("p.py", OPS, OPS_EXPORTS, keys)})
    started = time.monotonic()
    out = plugrpc_cli("run", "--root", str(root), "--socket", str(plugrpc_tmp / "never.sock"))
    took = time.monotonic() - started
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and words in out.stderr and "plugin 'p'" in out.stderr, out.stderr
    assert not (plugrpc_tmp / "never.sock").exists()
    figure(f"bad manifest ({next(iter(keys))}): plugrpc run exits 2 after", took, "s")


# --- PID 1 -----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _host_pid(ns_pid: int, namespace: str) -> int | None:
    """The pid, as this test sees it, of the process `ns_pid` of the PID namespace `namespace`."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{name}/ns/pid") != namespace:
                continue
            with open(f"/proc/{name}/status") as f:
                nspid = next(line for line in f if line.startswith("NSpid:")).split()
        except (OSError, StopIteration):
            continue
        if int(nspid[-1]) == ns_pid:
            return int(name)
    return None


def test_as_pid_1_it_reaps_orphans_forwards_sigterm_and_exits_cleanly(plugrpc_image: Image,
                                                                        plugrpc_tmp: Path) -> None:
    why = unshare_works()
    if why:
        pytest.skip(why)
    root = plugrpc_image({"o": ("o.py", OPS, OPS_EXPORTS)})
    sock = plugrpc_tmp / "pid1.sock"
    runtime = plugrpc_tmp / "run"  # its own: inside the namespace other routers' pids look dead
    runtime.mkdir(mode=0o700)
    with open(plugrpc_tmp / "pid1.log", "wb") as log:
        outer = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "plugrpc",
                                  "run", "--root", str(root), "--socket", str(sock)],
                                 env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}, stdout=log,
                                 stderr=subprocess.STDOUT)
    init = 0
    try:
        init = wait_until(lambda: _children(outer.pid), "the namespace's first process")[0]
        namespace = os.readlink(f"/proc/{init}/ns/pid")
        assert namespace != os.readlink("/proc/self/ns/pid")
        wait_until(sock.exists, "the router's socket")
        with plugrpc.BlockingClient(sock, timeout=30) as c:
            grandchild = c.raw("o.orphan")  # its pid in the namespace
            orphan = wait_until(lambda: _host_pid(grandchild, namespace), "the orphan")
            with open(f"/proc/{orphan}/stat") as f:
                assert int(f.read().rsplit(")", 1)[1].split()[1]) == init  # orphaned: PID 1 is its parent
            os.kill(orphan, signal.SIGTERM)
            wait_until(lambda: not os.path.exists(f"/proc/{orphan}"), "the orphan to be reaped, not left a zombie")
            plugin = c.raw("o.pid")
        os.kill(init, signal.SIGTERM)  # docker stop: SIGTERM to the container's first process
        assert outer.wait(WAIT * 3) == 0
        assert not os.path.exists(f"/proc/{init}") and not sock.exists()
        assert plugin > 1
    finally:
        if init and alive(init):
            os.kill(init, signal.SIGKILL)  # from outside the namespace it cannot be refused; it ends the namespace
        if outer.poll() is None:
            outer.kill()
        outer.wait(WAIT)
    text = (plugrpc_tmp / "pid1.log").read_text()
    assert "router stopped" in text and "exited with" in text
