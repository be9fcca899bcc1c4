"""Spawning one plugin process: fork and exec with fd 3, exit watching, log capture, stopping.

Shared by the supervisor of persistent plugins and by exec mode, with what they take from the
modules beside it: how an exit is named (process/exits.py), what the kernel holds a plugin to
(process/confinement.py, applied in the child before exec), how output lines become log records
(process/logpipe.py). How a process group is stopped is `terminate` here: SIGTERM, grace, SIGKILL.
No restart policy lives here: that is the supervisor's (process/restart.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final, Protocol

from ..manifest import PluginSpec
from .confinement import Confinement, SetupFailed, reason
from .env import die_with_parent
from .logpipe import LogPipe, OnLine
from .reaper import reaper
from .stdio import PipeConnection

LISTEN_FD: Final = 3
"""First socket-activation fd (systemd's SD_LISTEN_FDS_START)."""
LOG_DRAIN: Final = 1.0
"""Seconds to wait for the log pipes to reach EOF after the process exited."""


log = logging.getLogger("plugrpc.process")


class Group(Protocol):
    """A process group that can be asked to stop: a plugin process, or one execution of an exec plugin."""

    @property
    def name(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    exited: asyncio.Future[Any]
    """Resolved once the process is gone (reaped)."""
    kill_at: float | None
    """When SIGKILL follows the SIGTERM already sent; None before `terminate`."""

    def signal_group(self, sig: int) -> None: ...


async def terminate(group: Group, grace: float) -> bool:
    """SIGTERM the group, SIGKILL it `grace` seconds later if it is still there, and wait until it
    is gone. Calling it again joins the first call's deadline. True if SIGKILL was needed."""
    if group.exited.done():
        return False
    if group.kill_at is None:
        group.kill_at = time.monotonic() + grace
        group.signal_group(signal.SIGTERM)
    await asyncio.wait((group.exited,), timeout=max(0.0, group.kill_at - time.monotonic()))
    if group.exited.done():
        return False
    log.warning("pid %s still running %gs after SIGTERM, sending SIGKILL", group.pid, grace,
                extra={"plugin": group.name, "pid": group.pid})
    group.signal_group(signal.SIGKILL)
    # No timeout: SIGKILL cannot be caught, and giving up here would leave a child behind.
    await asyncio.wait((group.exited,))
    return True


class ExecFailed(OSError):
    """The child was forked but could not execute the plugin (no #! line, missing interpreter...)."""


class Child:
    """One plugin process: the Popen, its exit watcher and its two log pipes.

    `exited` resolves with the return code once the process has exited and has been reaped.
    Exit is seen through a pidfd on the event loop (asyncio and uvloop alike), or by a thread
    blocked in waitid() where pidfds are unavailable. Either way the process group is killed
    and the process reaped on the loop's thread while its pid is still reserved (a zombie), so
    no signal can reach a recycled pid. Spawned on the loop's thread too: PR_SET_PDEATHSIG fires
    when the *thread* that forked exits, so a spawn from an executor thread would be killed early.
    """

    def __init__(self, spec: PluginSpec, root: Path, listen_fd: int | None, env: dict[str, str],
                 confinement: Confinement | None = None) -> None:
        """`listen_fd`: the socket to hand over as fd 3; None for a stdio server, whose stdin and stdout
        are its connection (`connect_stdio`) and only stderr its log."""
        self.name = spec.name
        self._loop = asyncio.get_running_loop()
        path = os.fspath(spec.path)
        argv = [path, *spec.args]
        confinement = confinement or Confinement()
        env.update(confinement.env)
        report_r, report_w = _report_pipe()
        try:
            self.popen = subprocess.Popen(
                argv,
                bufsize=0,
                stdin=subprocess.DEVNULL if listen_fd is not None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=root,
                start_new_session=True,  # own process group: stop() signals the plugin and its children
                preexec_fn=_child_setup(listen_fd, os.getpid(), path, argv, env, report_w, confinement),
            )
        except BaseException:
            os.close(report_r)
            raise
        finally:
            os.close(report_w)
        # Popen returns once the child has exec'd the plugin or given up (the report pipe is
        # close-on-exec): "ERRNO STEP\0REASON" on it means the plugin never ran.
        with open(report_r, "rb", closefd=True) as report:
            failure = report.read()
        self.pid: int = self.popen.pid
        self.cpu_seconds: float | None = None
        """CPU time the process used (user and system, its reaped children included), once it has exited."""
        if failure:
            self.popen.wait()
            for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
                if pipe is not None:
                    pipe.close()
            number, _, rest = failure.decode(errors="replace").partition(" ")
            step, _, reason = rest.partition("\0")
            code = int(number)
            hint = _exec_hint(code) if step.startswith("execute ") else ""
            raise ExecFailed(code, f"cannot {step}: {reason}{hint}")
        reaper.watch(self.pid)  # its own children must not outlive a runtime killed with SIGKILL
        self.started_at = time.monotonic()
        self.kill_at: float | None = None
        self.stop_reason: str | None = None
        """Why the runtime is stopping it, when it is not simply `stopped` (`unresponsive`)."""
        self.exited: asyncio.Future[int] = self._loop.create_future()
        self.stdio: tuple[IO[bytes], IO[bytes]] | None = None
        """A stdio server's stdin and stdout, until `connect_stdio` hands them to its connection."""
        self.connection: PipeConnection | None = None
        logs: tuple[IO[bytes] | None, ...] = (self.popen.stdout, self.popen.stderr)
        self._levels: tuple[int, ...] = (logging.INFO, logging.WARNING)
        if listen_fd is None:
            assert self.popen.stdin is not None and self.popen.stdout is not None
            self.stdio = (self.popen.stdin, self.popen.stdout)
            logs, self._levels = (self.popen.stderr,), (logging.WARNING,)
        # (pipe, transport, protocol); a pipe is closed by its transport once it has one.
        self._pipes: list[tuple[IO[bytes], asyncio.ReadTransport | None, LogPipe | None]] = [
            (pipe, None, None) for pipe in logs if pipe is not None
        ]
        self._pidfd = -1
        self._thread: threading.Thread | None = None
        self._capturing: asyncio.Task[None] | None = None
        self._watch_exit()

    def __repr__(self) -> str:
        return f"<Child {self.name} pid={self.pid}{' exited' if self.exited.done() else ''}>"

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # Python built without it, kernel < 5.3, or seccomp
            self._thread = threading.Thread(target=self._wait_thread, name=f"plugrpc-wait-{self.pid}", daemon=True)
            self._thread.start()
        else:
            self._loop.add_reader(self._pidfd, self._on_exit)

    def _wait_thread(self) -> None:
        # WNOWAIT: leave the zombie for _on_exit to reap on the loop thread.
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._on_exit)

    def _on_exit(self) -> None:
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        # Whatever the plugin left in its group dies with it (it may hold fd 3 or the log pipes).
        self.signal_group(signal.SIGKILL)
        returncode = self._reap()
        reaper.forget(self.pid)
        self.exited.set_result(returncode)

    def _reap(self) -> int:
        """Reap the exited process with wait4, which also tells the CPU time it used (for `broken_limit`)."""
        try:
            _, status, usage = os.wait4(self.pid, 0)
        except ChildProcessError:  # reaped by someone else (a SIGCHLD handler of the embedding program)
            return self.popen.wait()
        self.cpu_seconds = usage.ru_utime + usage.ru_stime
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        return self.popen.returncode

    def signal_group(self, sig: int) -> None:
        """Signal the plugin's process group, as long as its leader has not been reaped."""
        if self.exited.done():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def capture_logs(self, on_line: OnLine) -> None:
        """Log stdout at INFO and stderr at WARNING, one record per line, each line also to `on_line`.

        Not cancelled halfway (a stop right after the spawn): a pipe handed to the loop is its
        transport's to close, so `close` must know of every transport made.
        """
        self._capturing = self._loop.create_task(self._capture(on_line))
        await asyncio.shield(self._capturing)

    async def _capture(self, on_line: OnLine) -> None:
        extra = {"plugin": self.name, "pid": self.pid}
        for i, level in enumerate(self._levels):
            pipe = self._pipes[i][0]
            factory = functools.partial(LogPipe, self._loop.create_future(), level, extra, on_line)
            transport, protocol = await self._loop.connect_read_pipe(factory, pipe)
            self._pipes[i] = (pipe, transport, protocol)

    async def connect_stdio(self, protocol: asyncio.Protocol) -> PipeConnection:
        """A stdio server's stdin and stdout as one connection to `protocol` (once, right after the spawn)."""
        assert self.stdio is not None
        stdin, stdout = self.stdio
        self.stdio = None
        self.connection = await PipeConnection.open(protocol, stdin, stdout)
        return self.connection

    def close_input(self) -> bool:
        """Close a stdio server's stdin, the end of its input (most such servers exit then); False for others."""
        if self.connection is not None:
            self.connection.close_input()
        elif self.stdio is not None:
            self.stdio[0].close()
        else:
            return False
        return True

    async def close(self) -> None:
        """After exit: let the log pipes and a stdio server's stdout reach EOF (bounded, in case something
        escaped the group), close them."""
        if self._capturing is not None:
            await asyncio.wait((self._capturing,))
        for pipe in self.stdio or ():
            pipe.close()
        if self.connection is not None:
            await asyncio.wait((self.connection.done,), timeout=LOG_DRAIN)
            self.connection.abort()
        pending = [protocol.closed for _, _, protocol in self._pipes if protocol is not None]
        if pending:
            await asyncio.wait(pending, timeout=LOG_DRAIN)
        for pipe, transport, protocol in self._pipes:
            if transport is None:
                pipe.close()
            elif protocol is not None and not protocol.closed.done():
                transport.close()
                await asyncio.wait((protocol.closed,), timeout=LOG_DRAIN)
        if self._thread is not None:
            self._thread.join()  # it has already handed the exit over to the loop


def above_stdio(sock: socket.socket) -> socket.socket:
    """Move a socket off fds 0-2, which a runtime started with closed stdio may hand out.

    In the child, Popen puts the log pipes on 1 and 2 before `_child_setup` dups the socket to 3.
    """
    if sock.fileno() > 2:
        return sock
    import fcntl

    moved = socket.socket(fileno=fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, LISTEN_FD))
    sock.close()
    return moved


def _report_pipe() -> tuple[int, int]:
    """A close-on-exec pipe whose write end stays clear of fds 0-3, which the child rearranges."""
    read, write = os.pipe2(os.O_CLOEXEC)
    if write <= LISTEN_FD:
        import fcntl

        moved = fcntl.fcntl(write, fcntl.F_DUPFD_CLOEXEC, LISTEN_FD + 1)
        os.close(write)
        write = moved
    return read, write


def _exec_hint(code: int) -> str:
    if code == errno.ENOEXEC:
        return " (a script needs a #! line naming its interpreter, e.g. #!/usr/bin/env python3)"
    if code == errno.ENOENT:
        return " (the interpreter its #! line names is not installed, or not on the plugin's PATH)"
    return ""


def _child_setup(
    listen_fd: int | None, parent_pid: int, path: str, argv: list[str], env: dict[str, str], report_fd: int,
    confinement: Confinement,
) -> Callable[[], None]:
    """The function Popen runs in the forked child: it execs the plugin itself.

    LISTEN_PID must be the plugin's pid, known only after fork, so the exec happens here with
    it added. Popen's own close_fds would run after this function, so every fd other than
    0-3 is closed here (before limits.open_files can get in the way); Popen's stdio
    pipes are already on 0-2. The parent-death signal is set after the switch of user, which
    clears it. If a step fails, "ERRNO STEP\0REASON" goes to `report_fd` for the parent to raise:
    whatever the failure, since Popen's own error pipe is closed by then and would say nothing.
    """

    def setup() -> None:
        step = "hand the socket over as fd 3"
        try:
            if listen_fd is None:  # a stdio server: nothing above its stdio
                _close_above(LISTEN_FD - 1, report_fd)
            else:
                os.dup2(listen_fd, LISTEN_FD)
                os.set_inheritable(LISTEN_FD, True)  # dup2 of fd 3 onto itself keeps close-on-exec
                # O_NONBLOCK lives in the open file description we share with the runtime (bound
                # non-blocking) and with earlier plugin processes (Go sets it): hand it over blocking,
                # as systemd does, so `socket.socket(fileno=3).accept()` simply waits.
                os.set_blocking(LISTEN_FD, True)
                _close_above(LISTEN_FD, report_fd)
                env["LISTEN_PID"] = str(os.getpid())
            confinement.apply()
            die_with_parent(parent_pid)
            step = f"execute {path}"
            os.execve(path, argv, env)
        except SetupFailed as exc:
            os.write(report_fd, f"{exc.errno} {exc.step}\0{exc.strerror}".encode(errors="replace"))
        except Exception as exc:  # whatever it is, the parent must hear why
            os.write(report_fd, f"{getattr(exc, 'errno', None) or errno.EIO} {step}\0{reason(exc)}".encode(
                errors="replace"))
        os._exit(127)

    return setup


def _close_above(lowest: int, keep: int) -> None:
    """Close every fd above `lowest` but `keep` (close-on-exec, it goes at exec): the exec would have
    to anyway. Two close_range(2) calls rather than marking each fd, which takes a listdir and a call
    per fd: in a router with a hundred plugins, most of a spawn's time in the forked child."""
    top = os.sysconf("SC_OPEN_MAX")
    os.closerange(lowest + 1, keep)
    os.closerange(keep + 1, top)
