"""What the kernel holds a plugin to (limits, user, no_new_privileges), how an exit is put down to a
limit, and the supervisor's notify readiness and unresponsive path, on real processes.

The kernel's view is read from /proc of the running plugin (`/bin/sleep` stands in for it: the
setup happens before exec, whatever runs after), never from what the code meant to set.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from plugrpc.codes import EXIT_MEMORY
from plugrpc.manifest import Limits, PluginSpec
from plugrpc.process.confinement import Confinement
from plugrpc.process.exits import broken_limit
from plugrpc.process.supervisor import PluginState, Supervisor
from plugrpc.sdnotify import notify, parse

from util import WAIT, alive, until

SLEEP = Path(shutil.which("sleep") or "/bin/sleep")
Make = Callable[..., Supervisor]


@pytest.fixture
async def make(short_dir: Path) -> AsyncIterator[Make]:
    made: list[Supervisor] = []

    def make(path: Path = SLEEP, *args: str, name: str = "p", **keys: Any) -> Supervisor:
        spec = PluginSpec(name=name, path=path, exports=("x",), args=args or ("60",), **keys)
        sup = Supervisor(spec, short_dir, short_dir / f"{name}.sock")
        made.append(sup)
        return sup

    yield make
    for sup in made:
        await asyncio.wait_for(sup.stop(), WAIT)


def proc(pid: int, what: str) -> dict[str, str]:
    """/proc/PID/status as a dict, or /proc/PID/limits by limit name (soft limit)."""
    with open(f"/proc/{pid}/{what}") as f:
        text = f.read()
    if what == "status":
        return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
    return {line[:26].strip(): line[26:47].split()[0] for line in text.splitlines()[1:]}


def environ(pid: int) -> dict[bytes, bytes]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(item.split(b"=", 1) for item in f.read().split(b"\0") if item)


async def running(sup: Supervisor) -> int:
    await sup.start()
    await until(lambda: sup.state is PluginState.RUNNING, "the plugin to run")
    assert sup.pid is not None
    return sup.pid


# --- limits, user, no_new_privileges -----------------------------------------------------


async def test_limits_are_what_the_kernel_holds_the_plugin_to(make: Make) -> None:
    sup = make(limits=Limits(memory=256 << 20, open_files=100, processes=50, cpu_seconds=7))
    limits = proc(await running(sup), "limits")
    assert limits["Max data size"] == str(256 << 20)
    assert limits["Max open files"] == "100"
    assert limits["Max processes"] == "50"
    assert limits["Max cpu time"] == "7"


async def test_no_new_privileges_is_on_by_default_and_can_be_turned_off(make: Make) -> None:
    on, off = make(name="on"), make(name="off", no_new_privileges=False)
    assert proc(await running(on), "status")["NoNewPrivs"] == "1"
    assert proc(await running(off), "status")["NoNewPrivs"] == "0"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs the router to run as root")
async def test_a_plugin_runs_as_its_user_and_group_with_their_home(make: Make) -> None:
    nobody = pwd.getpwnam("nobody")
    pid = await running(make(user="nobody"))
    status = proc(pid, "status")
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
    assert status["Groups"].split() == [str(g) for g in os.getgrouplist("nobody", nobody.pw_gid)]
    env = environ(pid)
    assert (env[b"HOME"], env[b"USER"], env[b"LOGNAME"]) == (nobody.pw_dir.encode(), b"nobody", b"nobody")
    # It still dies with the runtime: the parent-death signal is set after the switch, which clears it.
    assert proc(pid, "status")["NoNewPrivs"] == "1"
    pid2 = await running(make(name="g", user=str(nobody.pw_uid), group="0"))
    assert proc(pid2, "status")["Gid"].split() == ["0"] * 4 and proc(pid2, "status")["Groups"].split() == ["0"]


async def test_a_limit_the_kernel_refuses_is_why_it_cannot_start(make: Make) -> None:
    sup = make(limits=Limits(open_files=1 << 40))  # past any nr_open: EPERM even for root
    await sup.start()
    await until(lambda: sup.last_error is not None, "the spawn to fail")
    assert sup.last_error is not None
    assert sup.last_error.startswith(f"cannot start: cannot set limits.open_files to {1 << 40}: ")
    assert sup.last_error.endswith(("Operation not permitted", "not allowed to raise maximum limit"))


def test_a_user_that_vanished_after_the_manifest_is_a_clear_error() -> None:
    spec = PluginSpec(name="p", path=SLEEP, exports=("x",), user="no-such-user-now")
    with pytest.raises(ValueError, match="user 'no-such-user-now' no longer exists"):
        Confinement.of(spec)
    spec = PluginSpec(name="p", path=SLEEP, exports=("x",), group="no-such-group-now")
    with pytest.raises(ValueError, match="group 'no-such-group-now' no longer exists"):
        Confinement.of(spec)


# --- why a process ended -------------------------------------------------------------------


@pytest.mark.parametrize(("limits", "code", "cpu", "lines", "why"), [
    (Limits(), 1, None, ["MemoryError"], None),
    (Limits(memory=64 << 20), 0, None, ["MemoryError"], None),
    (Limits(memory=64 << 20), EXIT_MEMORY, None, [], "limits.memory: it ran out of its 64 MiB"),
    (Limits(memory=64 << 20), 2, None, ["fatal error: runtime: out of memory"], "limits.memory: it ran out of its"),
    (Limits(memory=64 << 20), -signal.SIGABRT, None, ["terminate called: std::bad_alloc"], "limits.memory"),
    (Limits(memory=64 << 20), 1, None, ["KeyError: 'x'"], None),
    (Limits(cpu_seconds=3), -signal.SIGXCPU, None, [], "limits.cpu_seconds: it used its 3 s of CPU"),
    (Limits(cpu_seconds=3), -signal.SIGKILL, 5.1, [], "limits.cpu_seconds"),
    (Limits(cpu_seconds=3), -signal.SIGKILL, 0.2, [], None),  # killed by someone, long before its limit
])
def test_broken_limit_reads_the_evidence(limits: Limits, code: int, cpu: float | None, lines: list[str],
                                         why: str | None) -> None:
    found = broken_limit(limits, code, cpu, lines)
    assert found == why or (why is not None and found is not None and found.startswith(why))


async def test_cpu_time_of_an_exited_plugin_is_known_from_wait4(make: Make) -> None:
    sup = make(Path(shutil.which("sh") or "/bin/sh"), "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done",
               restart="never", limits=Limits(cpu_seconds=60))
    await sup.start()
    await until(lambda: sup.state is PluginState.STOPPED and sup.last_exit == 0, "it to finish")
    assert sup.exit_reason == "crash" and sup.exit_detail is None  # exit 0, no limit broken


# --- notify readiness ----------------------------------------------------------------------


def test_parse_takes_assignments_and_skips_the_rest() -> None:
    assert parse(b"READY=1\nSTATUS=loading: 3/4\nnot one\n=x\nlower=1\nX_Y2=ok") == {
        "READY": "1", "STATUS": "loading: 3/4", "X_Y2": "ok"}
    assert parse(b"\xff\xfe") == {} and parse(b"") == {}


def test_notify_without_a_socket_says_nobody_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_notify_sends_one_datagram_to_a_path_or_an_abstract_socket(monkeypatch: pytest.MonkeyPatch,
                                                                  short_dir: Path) -> None:
    for address, bind in ((str(short_dir / "n.sock"), str(short_dir / "n.sock")),
                          (f"@plugrpc-test-{os.getpid()}", f"\0plugrpc-test-{os.getpid()}")):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
            listener.bind(bind)
            listener.settimeout(WAIT)
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            assert notify("READY=1\nSTATUS=ok") is True
            assert listener.recv(4096) == b"READY=1\nSTATUS=ok"


async def test_a_notify_plugin_is_starting_until_it_says_ready(make: Make, short_dir: Path) -> None:
    go = short_dir / "go"
    script = short_dir / "notifier.sh"
    # systemd-notify would do, where installed; plain python keeps the test independent of it.
    script.write_text(f"#!/bin/sh\nwhile [ ! -e {go} ]; do sleep 0.01; done\nexec {sys.executable} -c "
                      "'import plugrpc, time; plugrpc.notify(\"STATUS=warm\\nREADY=1\"); time.sleep(60)'\n")
    script.chmod(0o755)
    sup = make(script, "x", ready="notify")
    await sup.start()
    await until(lambda: sup.pid is not None, "the process")
    assert sup.state is PluginState.STARTING and sup.holding and not sup.up.is_set()
    # A message from outside the plugin's process group is not believed.
    assert sup._notified(os.getpid(), {"READY": "1"}) is False
    assert sup.state is PluginState.STARTING
    go.touch()
    await until(lambda: sup.state is PluginState.RUNNING, "READY=1")
    assert sup.status()["status_text"] == "warm" and sup.up.is_set() and not sup.holding


async def test_the_notify_socket_ignores_what_is_not_a_message_and_counts_it(make: Make) -> None:
    sup = make(ready="notify")
    pid = await running_or_starting(sup)
    assert sup._notify is not None
    address = "\0" + sup._notify.address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
        out.sendto(b"\xff garbage", address)
        out.sendto(b"X" * 100_000, address)
        out.sendto(b"READY=1", address)  # from this test: a stranger
    await until(lambda: sup._notify is not None and sup._notify.ignored == 3, "three ignored messages")
    assert sup.state is PluginState.STARTING and alive(pid)


async def running_or_starting(sup: Supervisor) -> int:
    await sup.start()
    await until(lambda: sup.pid is not None, "the process")
    assert sup.pid is not None
    return sup.pid


# --- unresponsive --------------------------------------------------------------------------


async def test_unresponsive_stops_the_process_and_the_policy_restarts_it(make: Make) -> None:
    # `sleep` ignores nothing: SIGTERM ends it (exit by signal), the supervisor starts the next one.
    sup = make(grace=1.0)
    old = await running(sup)
    sup.unresponsive("no answer to rpc.ping within 0.1 s")
    assert sup.state is PluginState.UNRESPONSIVE and sup.available
    await until(lambda: sup.state is PluginState.RUNNING and sup.pid != old, "the restart")
    assert (sup.exit_reason, sup.last_exit, sup.restarts) == ("unresponsive", -signal.SIGTERM, 1)
    assert sup.exit_detail == "no answer to rpc.ping within 0.1 s" and sup.exits["unresponsive"] == 1
    assert "unresponsive: no answer" in sup.unavailable_reason()


async def test_unresponsive_is_ignored_unless_running(make: Make) -> None:
    sup = make()
    sup.unresponsive("before start")
    assert sup.state is PluginState.STOPPED and sup.exit_detail is None
