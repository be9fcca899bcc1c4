"""The plugin supervisor: fd 3 handoff, environment, logs, restart policy, idle stop, shutdown.

Real processes on real unix sockets throughout. tests/plugins/sup_plugin.py answers every line
sent to its socket with facts about itself (pid, environment, fds, fd 3, cwd); /bin/true and
/bin/false stand in for plugins that exit at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from plugrpc.manifest import PluginSpec
from plugrpc.process.exits import describe_exit
from plugrpc.process.logpipe import LOG_MAX_LINE, LogPipe
from plugrpc.process.restart import CRASHLOOP_AFTER, RestartPolicy
from plugrpc.process.runtime_dir import RuntimeDir
from plugrpc.process.supervisor import PluginState, Supervisor

from util import PLUGINS, WAIT, alive, until, wait_until

PLUGIN = PLUGINS / "sup_plugin.py"
HOST = PLUGINS / "sup_host.py"
TRUE = Path(shutil.which("true") or "/bin/true")
FALSE = Path(shutil.which("false") or "/bin/false")

SPEC_KEYS = {"restart", "lazy", "idle_stop", "grace", "inherit_env", "env", "mode"}
Make = Callable[..., Supervisor]


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def root(short_dir: Path) -> Path:
    """The image root, the plugins' working directory."""
    path = short_dir / "image"
    path.mkdir()
    return path


@pytest.fixture
async def make(short_dir: Path, root: Path) -> AsyncIterator[Make]:
    """Build supervisors (not started); every one is stopped at teardown, also on failure."""
    made: list[Supervisor] = []

    def make(path: Path = PLUGIN, *args: str, name: str = "p", on_state: Any = None, **kw: Any) -> Supervisor:
        spec_kw = {k: kw.pop(k) for k in list(kw) if k in SPEC_KEYS}
        spec = PluginSpec(name=name, path=path, exports=("facts",), args=args, **spec_kw)
        sup = Supervisor(spec, root, short_dir / f"{name}.sock", on_state, **kw)
        made.append(sup)
        return sup

    yield make
    for sup in made:
        await asyncio.wait_for(sup.stop(), WAIT)


class States:
    """An on_state callback that records (time, state) for every change."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, PluginState]] = []

    def __call__(self, sup: Supervisor) -> None:
        self.seen.append((time.monotonic(), sup.state))

    @property
    def names(self) -> list[PluginState]:
        return [state for _, state in self.seen]


class Decision(NamedTuple):
    """One exit as the restart policy judged it: the seconds it chose before the next start (None: no start)."""

    failed: bool
    uptime: float
    streak: int
    delay: float | None


class Decisions(RestartPolicy):
    """The supervisor's own restart policy (same backoff and stable_after), recording every decision it makes:
    what a test asserts on instead of how long it waited."""

    def __init__(self, sup: Supervisor) -> None:
        policy = sup._restart
        super().__init__(policy.stable_after, policy.base, policy.cap)
        self.made: list[Decision] = []
        sup._restart = self

    def after_exit(self, restart: str, failed: bool, uptime: float) -> float | None:
        delay = super().after_exit(restart, failed, uptime)
        self.made.append(Decision(failed, uptime, self.streak, delay))
        return delay


async def state(sup: Supervisor, *states: PluginState) -> None:
    await until(lambda: sup.state in states, f"{sup!r} to reach {[s.value for s in states]}")


async def ask(path: Path) -> dict[str, Any]:
    """Connect to a plugin socket, send one line and return the plugin's answer."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), WAIT)
    try:
        writer.write(b"facts\n")
        line = await asyncio.wait_for(reader.readline(), WAIT)
    finally:
        writer.close()
        await writer.wait_closed()
    result: dict[str, Any] = json.loads(line)
    return result


async def ask_busy(sup: Supervisor) -> dict[str, Any]:
    """ask(), touching the supervisor while the call is in flight, as the router does.

    A slow start on a loaded machine is then not mistaken for idleness by a short idle_stop.
    """
    call = asyncio.ensure_future(ask(sup.socket_path))
    while not call.done():
        sup.touch()
        await asyncio.wait((call,), timeout=0.05)
    return call.result()


async def wait_gone(pid: int) -> None:
    """Until `pid` has exited (a zombie counts: PID 1 of a container may never reap it)."""
    await until(lambda: not alive(pid), f"pid {pid} to exit")


def plugin_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "plugrpc.plugin"]



def test_describe_exit() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(-200) == "signal 200"


def test_log_pipe_splits_lines_and_truncates_long_ones() -> None:
    """Any chunking of stdout gives the same records; long lines are cut, the next one is intact."""
    lines = [b"a", b"", b"x" * (LOG_MAX_LINE + 10), b"b" * LOG_MAX_LINE, b"y" * (3 * LOG_MAX_LINE), b"tail"]
    stream = b"\n".join(lines)  # the last line has no newline: it is logged at EOF
    want = [
        "a",
        "x" * LOG_MAX_LINE + f" [line truncated at {LOG_MAX_LINE} bytes]",
        "b" * LOG_MAX_LINE,
        "y" * LOG_MAX_LINE + f" [line truncated at {LOG_MAX_LINE} bytes]",
        "tail",
    ]
    got: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            assert record.plugin == "p" and record.pid == 42  # type: ignore[attr-defined]
            got.append(record.getMessage().removeprefix("p[42]: "))

    handler = Collect()
    logger = logging.getLogger("plugrpc.plugin")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    loop = asyncio.new_event_loop()
    try:
        for size in (1000, 4096, LOG_MAX_LINE - 1, LOG_MAX_LINE, LOG_MAX_LINE + 1, 200_000, len(stream)):
            got.clear()
            book: list[str] = []
            pipe = LogPipe(loop.create_future(), logging.INFO, {"plugin": "p", "pid": 42},
                           lambda level, text, book=book: book.append(text))
            for start in range(0, len(stream), size):
                pipe.data_received(stream[start : start + size])
            pipe.connection_lost(None)
            assert got == want, f"chunk size {size}"
            assert book == want, f"chunk size {size}"  # the plugin's logbook gets the same lines
            assert pipe.closed.done()
    finally:
        loop.close()
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


# --- what a plugin process gets ------------------------------------------------------------


async def test_socket_handed_over_as_fd3_with_listen_env(
    root: Path, monkeypatch: pytest.MonkeyPatch, short_dir: Path
) -> None:
    monkeypatch.setenv("PLUGRPC_TEST_SECRET", "s3cret")
    rd = RuntimeDir()
    sup = Supervisor(PluginSpec(name="ovs", path=PLUGIN, exports=("facts",)), root, rd.socket_for("ovs"))
    leak_r, leak_w = os.pipe()
    os.set_inheritable(leak_r, True)  # an fd someone left inheritable must still not reach the plugin
    try:
        await sup.start()
        st = os.stat(sup.socket_path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(rd.path.stat().st_mode) == 0o700
        await state(sup, PluginState.RUNNING)
        facts = await ask(sup.socket_path)
    finally:
        os.close(leak_r)
        os.close(leak_w)
        await asyncio.wait_for(sup.stop(), WAIT)
        rd.remove()
    env = facts["env"]
    assert facts["pid"] == int(env["LISTEN_PID"])
    assert env["LISTEN_FDS"] == "1" and env["LISTEN_FDNAMES"] == "ovs"
    assert env["PLUGRPC_PLUGIN"] == "ovs" and env["PLUGRPC_SOCKET"] == str(sup.socket_path)
    assert "PLUGRPC_TEST_SECRET" not in env
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert facts["fds"] == [0, 1, 2, 3]
    assert facts["fd3"] == {"family": 1, "type": 1, "listening": 1, "name": str(sup.socket_path)}  # AF_UNIX, STREAM
    assert facts["cwd"] == str(root)


async def test_environment_passes_only_named_variables(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGRPC_TEST_SECRET", "s3cret")
    monkeypatch.setenv("PLUGRPC_TEST_OTHER", "no")
    sup = make(inherit_env=("PLUGRPC_TEST_SECRET",), env={"FROM_MANIFEST": "yes"})
    await sup.start()
    env = (await ask(sup.socket_path))["env"]
    assert env["PLUGRPC_TEST_SECRET"] == "s3cret" and env["FROM_MANIFEST"] == "yes"
    assert "PLUGRPC_TEST_OTHER" not in env


async def test_output_is_logged_with_plugin_name(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plugrpc.plugin")
    sup = make(name="talker")
    await sup.start()
    pid = (await ask(sup.socket_path))["pid"]
    await until(lambda: len(plugin_records(caplog)) >= 2, "the greeting lines")
    await asyncio.wait_for(sup.stop(), WAIT)
    lines = {(r.levelno, r.getMessage()) for r in plugin_records(caplog)}
    assert lines == {
        (logging.INFO, "hello from stdout"),
        (logging.WARNING, "hello from stderr"),
        (logging.INFO, "got SIGTERM"),
        (logging.INFO, "bye"),  # written without a newline just before exit
    }
    assert {(getattr(r, "plugin", None), getattr(r, "pid", None)) for r in plugin_records(caplog)} == {("talker", pid)}


async def test_a_leading_level_name_sets_the_level(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="plugrpc.plugin")
    sup = make(PLUGIN, "--say", "ERROR disk full", "--say", "DEBUG details", "--say", "INFOrmal")
    await sup.start()
    await until(lambda: any("INFOrmal" in r.getMessage() for r in plugin_records(caplog)), "the lines")
    await asyncio.wait_for(sup.stop(), WAIT)
    lines = {(r.levelno, r.getMessage()) for r in plugin_records(caplog)}
    assert {(logging.ERROR, "disk full"), (logging.DEBUG, "details"), (logging.WARNING, "INFOrmal")} <= lines


async def test_overlong_output_line_is_logged_truncated(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plugrpc.plugin")
    sup = make(PLUGIN, "--long", str(3 * LOG_MAX_LINE))
    await sup.start()
    await until(lambda: any("hello from stdout" in r.getMessage() for r in plugin_records(caplog)), "the greeting")
    messages = [r.getMessage() for r in plugin_records(caplog) if r.levelno == logging.INFO]
    assert messages[:3] == [
        "x" * LOG_MAX_LINE + f" [line truncated at {LOG_MAX_LINE} bytes]",
        "after long",
        "hello from stdout",
    ]


# --- restarts ------------------------------------------------------------------------------


async def test_killed_plugin_restarts_and_serves_calls_made_while_it_was_dead(make: Make) -> None:
    states = States()
    sup = make(on_state=states, backoff_base=0.5)  # a restart delay long enough to call into the gap
    await sup.start()
    first = (await ask(sup.socket_path))["pid"]
    assert first == sup.pid and sup.restarts == 0
    os.kill(first, signal.SIGKILL)
    await state(sup, PluginState.BACKOFF)
    assert sup.pid is None and sup.last_exit == -signal.SIGKILL and sup.available
    # Nobody is listening now, yet the connection is accepted by the kernel and answered later.
    facts = await ask(sup.socket_path)
    assert facts["pid"] != first and facts["pid"] == sup.pid
    assert sup.restarts == 1 and sup.state is PluginState.RUNNING
    running, starting = PluginState.RUNNING, PluginState.STARTING
    assert states.names == [starting, running, PluginState.BACKOFF, starting, running]
    status = sup.status()
    assert status["uptime"] is not None and status["uptime"] >= 0
    assert {k: v for k, v in status.items() if k != "uptime"} == {
        "name": "p",
        "state": "running",
        "pid": facts["pid"],
        "restarts": 1,
        "exit_reason": "crash",
        "exit_detail": None,
        "last_error": None,
        "last_exit": -9,
        "mode": "rpc",
        "mode_detected": False,
        "transport": "socket",
        "lazy": False,
        "status_text": None,
        "waiting_for": [],
    }
    await wait_gone(first)


async def test_exiting_at_once_becomes_crashloop_with_growing_delays(make: Make) -> None:
    states = States()
    sup = make(FALSE, on_state=states, backoff_base=0.05, backoff_cap=0.2)
    decisions = Decisions(sup)
    await sup.start()
    await state(sup, PluginState.CRASHLOOP)
    assert not sup.available and sup.status()["state"] == "crashloop"
    assert states.names.count(PluginState.BACKOFF) == CRASHLOOP_AFTER - 1
    assert states.names.count(PluginState.CRASHLOOP) == 1
    # It keeps trying: back to RUNNING when a process starts, CRASHLOOP again when it exits.
    await until(lambda: states.names.count(PluginState.CRASHLOOP) == 2, "a second crash-loop round")
    assert sup.restarts >= CRASHLOOP_AFTER and sup.last_exit == 1
    # Every exit was a failure counted in one streak; each wait within its jitter, doubling up to the cap.
    made = decisions.made[:CRASHLOOP_AFTER + 1]
    assert [(d.failed, d.streak) for d in made] == [(True, n) for n in range(1, CRASHLOOP_AFTER + 2)]
    for d in made:
        ceiling = min(0.2, 0.05 * 2 ** (d.streak - 1))
        assert d.delay is not None and ceiling / 2 <= d.delay <= ceiling, made
    # Each wait was taken in BACKOFF (CRASHLOOP from the fifth on), then a start: one state per decision.
    waiting = [s for s in states.names if s in (PluginState.BACKOFF, PluginState.CRASHLOOP)]
    assert waiting[:CRASHLOOP_AFTER + 1] == [PluginState.BACKOFF] * (CRASHLOOP_AFTER - 1) + [PluginState.CRASHLOOP] * 2


async def test_crashloop_ends_once_a_process_stays_up(make: Make, short_dir: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plugrpc.supervisor")
    marker = short_dir / "crash"
    marker.touch()
    states = States()
    sup = make(PLUGIN, "--crash-if", str(marker), on_state=states, backoff_base=0.01, stable_after=0.3)
    decisions = Decisions(sup)
    await sup.start()
    await state(sup, PluginState.CRASHLOOP)
    marker.unlink()
    pid = (await ask(sup.socket_path))["pid"]
    await until(lambda: (sup.status()["uptime"] or 0) > 0.4, "the plugin to be up longer than stable_after")
    before = len(states.seen)
    os.kill(pid, signal.SIGKILL)
    await until(lambda: sup.pid not in (None, pid), "the restart")
    assert states.names[before] is PluginState.BACKOFF  # a fresh streak, not CRASHLOOP
    assert decisions.made[-2].streak >= CRASHLOOP_AFTER
    assert decisions.made[-1].uptime >= 0.3 and decisions.made[-1].streak == 1
    restarts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("restarting in")]
    assert "quick exit(s) in a row" in restarts[0]
    assert "it had run" in restarts[-1] and "quick" not in restarts[-1]  # a process that stayed up was no quick exit


@pytest.mark.parametrize(
    ("policy", "path", "final", "available"),
    [
        ("never", FALSE, PluginState.FAILED, False),
        ("never", TRUE, PluginState.STOPPED, True),
        ("on-failure", TRUE, PluginState.STOPPED, True),
    ],
)
async def test_restart_policy_leaves_exited_plugin_down(
    make: Make, policy: str, path: Path, final: PluginState, available: bool
) -> None:
    states = States()
    sup = make(path, restart=policy, on_state=states)
    decisions = Decisions(sup)
    await sup.start()
    await state(sup, final)
    # The policy chose no start, so no wait was scheduled: the last state is its own, straight after RUNNING.
    assert decisions.made == [Decision(failed=path == FALSE, uptime=decisions.made[0].uptime, streak=0, delay=None)]
    assert states.names == [PluginState.STARTING, PluginState.RUNNING, final]
    assert sup.restarts == 0 and sup.available is available
    sup.ensure_running()  # starts a cleanly exited plugin on demand, never a FAILED one
    assert sup.state is (PluginState.STARTING if available else PluginState.FAILED)


async def test_on_failure_restarts_a_failing_plugin(make: Make) -> None:
    sup = make(FALSE, restart="on-failure", backoff_base=0.01)
    await sup.start()
    await until(lambda: sup.restarts >= 2, "two restarts")


async def test_unstartable_plugin_fails_with_a_clear_log(
    make: Make, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_exec = root / "plugin"
    not_exec.write_text("#!/bin/sh\n")
    bad_interp = root / "bad"
    bad_interp.write_text("#!/nonexistent/interpreter\n")
    bad_interp.chmod(0o755)
    no_shebang = root / "noshebang"
    no_shebang.write_text("echo a script without its #! line\n")
    no_shebang.chmod(0o755)
    a = make(not_exec, name="a", restart="never")
    b = make(bad_interp, name="b", restart="never")
    c = make(no_shebang, name="c", restart="never")
    for sup in (a, b, c):
        await sup.start()
    for sup in (a, b, c):
        await state(sup, PluginState.FAILED)
    # None of them ever ran: no exit to report, the reason instead, in the log and to callers.
    assert a.last_exit is None and b.last_exit is None and c.last_exit is None
    messages = [r.getMessage() for r in caplog.records]
    assert f"cannot start: {not_exec} is not an executable file" in messages
    assert (f"cannot start: cannot execute {bad_interp}: No such file or directory (the interpreter its"
            " #! line names is not installed, or not on the plugin's PATH)") in messages
    assert f"cannot start: cannot execute {no_shebang}: Exec format error (a script needs a #! line" in (
        " ".join(messages))
    assert not [r for r in caplog.records if getattr(r, "plugin", None) == "c" and "running" in r.getMessage()]
    assert "Exec format error (a script needs a #! line" in c.unavailable_reason()
    assert c.status()["last_error"] == c.last_error


async def test_restart_replaces_the_process_and_keeps_the_socket(make: Make) -> None:
    sup = make()
    await sup.start()
    first = (await ask(sup.socket_path))["pid"]
    inode = os.stat(sup.socket_path).st_ino
    await asyncio.wait_for(sup.restart(), WAIT)
    facts = await ask(sup.socket_path)
    assert facts["pid"] != first and sup.restarts == 0 and sup.last_exit == 0
    assert os.stat(sup.socket_path).st_ino == inode
    assert not alive(first)


async def test_restart_of_a_failed_plugin_tries_again(make: Make) -> None:
    sup = make(FALSE, restart="never")
    await sup.start()
    await state(sup, PluginState.FAILED)
    await asyncio.wait_for(sup.restart(), WAIT)
    await until(lambda: sup.last_exit == 1 and sup.state is PluginState.FAILED and sup.pid is None, "a second run")


# --- lazy start and idle stop --------------------------------------------------------------


async def test_lazy_plugin_starts_on_demand_and_serves_the_waiting_call(make: Make) -> None:
    states = States()
    sup = make(lazy=True, on_state=states)
    await sup.start()
    assert sup.state is PluginState.STOPPED and sup.pid is None and sup.available
    assert stat.S_ISSOCK(os.stat(sup.socket_path).st_mode)
    # A call connects and is written with no process at all: the kernel holds it in the backlog.
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(sup.socket_path), WAIT)
    try:
        writer.write(b"facts\n")
        await writer.drain()
        assert states.names == [] and sup.pid is None  # the loop turned meanwhile; nothing started
        sup.ensure_running()
        assert states.names == [PluginState.STARTING]
        facts = json.loads(await asyncio.wait_for(reader.readline(), WAIT))
    finally:
        writer.close()
        await writer.wait_closed()
    assert facts["pid"] == sup.pid and states.names == [PluginState.STARTING, PluginState.RUNNING]


async def test_idle_plugin_is_stopped_and_restarted_on_demand(make: Make) -> None:
    states = States()
    sup = make(idle_stop=0.5, on_state=states)
    await sup.start()
    first = (await ask_busy(sup))["pid"]
    for _ in range(20):  # activity for twice idle_stop, never idle for a tenth of it
        sup.touch()
        await asyncio.sleep(0.05)
    assert states.names == [PluginState.STARTING, PluginState.RUNNING] and sup.pid == first
    await state(sup, PluginState.STOPPED)
    assert states.names[2:] == [PluginState.STOPPING, PluginState.STOPPED]
    assert sup.pid is None and sup.available and sup.last_exit == 0 and sup.restarts == 0
    assert sup.socket_path.exists()
    sup.touch()
    sup.ensure_running()
    second = (await ask_busy(sup))["pid"]
    assert second != first and not alive(first)


async def test_call_during_an_idle_stop_starts_a_new_process(make: Make) -> None:
    states = States()
    sup = make(PLUGIN, "--ignore-term", on_state=states, idle_stop=0.2, grace=0.5)
    await sup.start()
    first = (await ask_busy(sup))["pid"]
    await state(sup, PluginState.STOPPING)
    sup.touch()
    sup.ensure_running()
    assert sup.state is PluginState.STARTING and sup.available
    await until(lambda: sup.pid not in (None, first), "the new process")
    assert not alive(first) and sup.last_exit == -signal.SIGKILL
    assert PluginState.STOPPED not in states.names[2:]


# --- stopping ------------------------------------------------------------------------------


async def test_stop_sends_sigterm_and_removes_the_socket(make: Make) -> None:
    sup = make()
    await sup.start()
    pid = (await ask(sup.socket_path))["pid"]
    await asyncio.wait_for(sup.stop(), WAIT)
    assert sup.last_exit == 0  # the fixture exits 0 on SIGTERM
    assert sup.state is PluginState.STOPPED and not sup.available and sup.pid is None
    assert not sup.socket_path.exists() and not alive(pid)
    sup.ensure_running()
    assert sup.state is PluginState.STOPPED
    await asyncio.wait_for(sup.stop(), WAIT)  # idempotent


async def test_stop_kills_a_plugin_that_ignores_sigterm_after_grace(make: Make) -> None:
    sup = make(PLUGIN, "--ignore-term", grace=0.3)
    await sup.start()
    pid = (await ask(sup.socket_path))["pid"]
    started = time.monotonic()
    await asyncio.wait_for(sup.stop(), WAIT)
    assert time.monotonic() - started >= 0.3
    assert sup.last_exit == -signal.SIGKILL and not alive(pid)


async def test_process_group_dies_with_the_plugin(make: Make) -> None:
    sup = make(PLUGIN, "--grandchild", backoff_base=0.01)
    await sup.start()
    facts = await ask(sup.socket_path)
    os.kill(facts["pid"], signal.SIGKILL)  # a crash takes the plugin's children along
    await wait_gone(facts["grandchild"])
    facts = await ask(sup.socket_path)
    await asyncio.wait_for(sup.stop(), WAIT)  # and so does stop()
    assert not alive(facts["pid"])  # reaped by stop(); the grandchild's SIGKILL may take a moment to land
    await wait_gone(facts["grandchild"])


async def test_stop_is_safe_in_any_state(make: Make) -> None:
    never_started = make(name="a")
    await asyncio.wait_for(never_started.stop(), WAIT)
    assert never_started.state is PluginState.STOPPED and not never_started.available
    never_started.ensure_running()
    assert never_started.state is PluginState.STOPPED

    backing_off = make(FALSE, name="b", backoff_base=30.0)
    decisions = Decisions(backing_off)
    await backing_off.start()
    await state(backing_off, PluginState.BACKOFF)
    [decision] = decisions.made
    assert decision.delay is not None and decision.delay > WAIT  # longer than the stops below may take
    await asyncio.wait_for(asyncio.gather(backing_off.stop(), backing_off.stop()), WAIT)
    assert backing_off.state is PluginState.STOPPED and backing_off.restarts == 0  # the wait was cancelled

    starting = make(name="c")
    await starting.start()
    await asyncio.sleep(0)  # the supervising task spawns, then waits for its log pipes
    pid = starting.pid
    assert pid is not None and starting.state is PluginState.STARTING
    await asyncio.wait_for(starting.stop(), WAIT)
    assert starting.pid is None and starting.state is PluginState.STOPPED and not alive(pid)


async def test_supervisor_can_start_again_after_stop(make: Make) -> None:
    sup = make()
    await sup.start()
    await ask(sup.socket_path)
    await asyncio.wait_for(sup.stop(), WAIT)
    await sup.start()
    assert (await ask(sup.socket_path))["pid"] == sup.pid


async def test_failing_on_state_callback_does_not_break_supervision(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(sup: Supervisor) -> None:
        raise RuntimeError("boom")

    sup = make(on_state=explode)
    await sup.start()
    assert (await ask(sup.socket_path))["pid"] == sup.pid
    assert "on_state callback failed" in caplog.messages


# --- exit detection without pidfd, and under uvloop ----------------------------------------


async def test_exit_is_detected_without_pidfd(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "pidfd_open")
    threads = threading.active_count()
    sup = make(backoff_base=0.01)
    await sup.start()
    first = (await ask(sup.socket_path))["pid"]
    assert threading.active_count() == threads + 1
    os.kill(first, signal.SIGKILL)
    assert (await ask(sup.socket_path))["pid"] not in (first, None)
    assert sup.restarts == 1 and sup.last_exit == -signal.SIGKILL
    await asyncio.wait_for(sup.stop(), WAIT)
    assert threading.active_count() == threads and not alive(first)


def test_supervisor_runs_under_uvloop(short_dir: Path, root: Path) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        spec = PluginSpec(name="uv", path=PLUGIN, exports=("facts",))
        sup = Supervisor(spec, root, short_dir / "uv.sock", backoff_base=0.01)
        try:
            await sup.start()
            first = (await ask(sup.socket_path))["pid"]
            os.kill(first, signal.SIGKILL)
            assert (await ask(sup.socket_path))["pid"] != first
            assert sup.restarts == 1
        finally:
            await asyncio.wait_for(sup.stop(), WAIT)
        assert not alive(first) and not sup.socket_path.exists()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


# --- no orphans ----------------------------------------------------------------------------


def test_plugin_dies_when_the_runtime_is_killed(short_dir: Path) -> None:
    """kill -9 of the runtime cannot run any cleanup: PR_SET_PDEATHSIG takes the plugin down."""
    sock = short_dir / "orphan.sock"
    host = subprocess.Popen(
        [sys.executable, str(HOST), str(PLUGIN), str(sock)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        preexec_fn=lambda: os.close(0),  # closed stdin: the host's socket lands on fd 0
    )
    try:
        assert host.stdout is not None
        pid, stdin_was_free = map(int, host.stdout.readline().split())
        assert stdin_was_free
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(WAIT)
            client.connect(str(sock))
            client.sendall(b"facts\n")
            answer = json.loads(client.makefile("rb").readline())
        assert answer["pid"] == pid  # fd 3 is the socket even though the host bound it on fd 0
        host.kill()
        host.wait(WAIT)
        wait_until(lambda: not alive(pid), f"plugin {pid} to die with its killed runtime", timeout=5)
    finally:
        host.kill()
        host.wait(WAIT)
        if host.stdout is not None:
            host.stdout.close()
