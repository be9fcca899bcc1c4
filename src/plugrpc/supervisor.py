"""Run one `mode = "rpc"` plugin as a persistent process (DESIGN.md, "Plugin process").

The runtime binds the plugin's unix socket before the first spawn and keeps it listening across
restarts, so calls written to it wait in the kernel backlog while the plugin starts or restarts.
Each process gets that socket as fd 3 (systemd socket activation: `LISTEN_FDS`, `LISTEN_FDNAMES`,
`LISTEN_PID`), an explicit environment, no shell, and the image root as working directory. Its
stdout and stderr are logged line by line. One task per plugin owns the process: it watches it,
applies the restart policy with jittered exponential backoff, stops it when idle and respawns it
on demand; `stop()` cancels that task and then stops the process gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

from . import config
from .manifest import PluginSpec
from .process import die_with_parent, log_line, plugin_env
from .reaper import reaper
from .wire import LineSplitter

LISTEN_FD: Final = 3
"""First socket-activation fd (systemd's SD_LISTEN_FDS_START)."""
BACKOFF_BASE: Final = 0.1
"""Seconds before the first restart; doubles with every quick exit in a row."""
BACKOFF_CAP: Final = 30.0
STABLE_AFTER: Final = 10.0
"""A process that ran this long was healthy: its exit starts a fresh backoff streak."""
CRASHLOOP_AFTER: Final = 5
"""Quick exits in a row after which the plugin is reported as crash-looping (and fails calls fast)."""
LOG_MAX_LINE: Final = 64 * 1024
"""Longer stdout/stderr lines are logged truncated to this many bytes."""
LOG_DRAIN: Final = 1.0
"""Seconds to wait for the log pipes to reach EOF after the process exited."""

log = logging.getLogger("plugrpc.supervisor")


class PluginState(enum.StrEnum):
    """Where a supervised plugin is; the router fails calls fast in CRASHLOOP, FAILED and STOPPING."""

    STOPPED = "stopped"
    """No process: not started yet, lazy, idle-stopped, exited cleanly without restart, or stop()ped."""
    STARTING = "starting"
    """A process is being started (or restarted on demand); calls wait in the socket's backlog."""
    RUNNING = "running"
    BACKOFF = "backoff"
    """The process exited and will be restarted after a delay; calls wait in the backlog."""
    CRASHLOOP = "crashloop"
    """Like BACKOFF after CRASHLOOP_AFTER quick exits in a row: calls fail fast meanwhile."""
    FAILED = "failed"
    """The process failed and the restart policy says not to restart it."""
    STOPPING = "stopping"


_UNAVAILABLE: Final = frozenset({PluginState.CRASHLOOP, PluginState.FAILED, PluginState.STOPPING})


def backoff_delay(streak: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait before restart number `streak` (1-based) of a streak: full jitter in [d/2, d].

    Jitter keeps many plugins that crashed together (a bad deploy) from restarting in lockstep.
    """
    ceiling = min(cap, base * 2.0 ** min(streak - 1, 64))
    return random.uniform(ceiling / 2, ceiling)


def describe_exit(returncode: int) -> str:
    """`exit code 3` or `signal SIGKILL`, for logs."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


class RuntimeDir:
    """Private runtime directory (mode 0700) that holds the plugins' sockets."""

    def __init__(self) -> None:
        # mkdtemp creates the directory with mode 0700, owned by us, under a name nobody can predict.
        self.path = Path(tempfile.mkdtemp(prefix="plugrpc-", dir=config.runtime_base()))

    def socket_for(self, name: str) -> Path:
        """Where plugin `name` listens."""
        return self.path / f"{name}.sock"

    def remove(self) -> None:
        """Remove the directory and whatever is left in it; safe to call twice."""
        shutil.rmtree(self.path, ignore_errors=True)

    def __repr__(self) -> str:
        return f"RuntimeDir({str(self.path)!r})"


class Supervisor:
    """Keeps one plugin process running behind its pre-bound unix socket.

    Every state change goes through `_set_state`, which calls `on_state(self)` synchronously.
    """

    def __init__(
        self,
        spec: PluginSpec,
        root: Path,
        socket_path: Path,
        on_state: Callable[[Supervisor], None] | None = None,
        *,
        stable_after: float = STABLE_AFTER,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
    ) -> None:
        self.spec = spec
        self.root = Path(root)
        self.socket_path = Path(socket_path)
        self._on_state = on_state
        self._stable_after = stable_after
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._extra = {"plugin": spec.name}

        # What callers read.
        self.state = PluginState.STOPPED
        self.restarts = 0
        self.last_exit: int | None = None

        # The socket and the process.
        self._sock: socket.socket | None = None
        self._child: _Child | None = None

        # Lifecycle: one task owns the process; `_demand` is set while a process should exist.
        self._task: asyncio.Task[None] | None = None
        self._demand = asyncio.Event()
        self._lock = asyncio.Lock()  # serialises start/stop/restart
        self._closed = True  # until start(), and again after stop(): no process may be spawned
        self._streak = 0  # exits in a row of processes that did not stay up for `stable_after`
        self._last_touch = time.monotonic()

    def __repr__(self) -> str:
        return f"<Supervisor {self.spec.name} {self.state.value} pid={self.pid} restarts={self.restarts}>"

    # --- what the router reads ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def started_at(self) -> float | None:
        """`time.monotonic()` when the current process was spawned."""
        return self._child.started_at if self._child is not None else None

    @property
    def available(self) -> bool:
        """Whether a call written to the socket now can expect an answer (else fail it with -32001)."""
        state = self.state
        return state not in _UNAVAILABLE and not (state is PluginState.STOPPED and self._closed)

    def status(self) -> dict[str, Any]:
        """The plugin's row in `router.plugins` and health output."""
        started = self.started_at
        return {
            "name": self.spec.name,
            "state": self.state.value,
            "pid": self.pid,
            "restarts": self.restarts,
            "uptime": None if started is None else round(time.monotonic() - started, 3),
            "last_exit": self.last_exit,
            "mode": self.spec.mode,
            "lazy": self.spec.lazy,
        }

    # --- what the router calls ---------------------------------------------------------------

    def bind(self) -> None:
        """Create the listening socket (0600) if it does not exist yet."""
        if self._sock is None:
            self._sock = _above_stdio(config.bind_socket(self.socket_path, 0o600))

    async def start(self) -> None:
        """Bind the socket and spawn the process, unless the plugin is lazy (then: on first call)."""
        async with self._lock:
            if not self._closed:
                return
            self.bind()
            self._closed = False
            if not self.spec.lazy:
                self._demand.set()
                self._set_state(PluginState.STARTING)
            self._task = asyncio.create_task(self._supervise(), name=f"plugrpc-supervise-{self.spec.name}")
            self._task.add_done_callback(self._supervise_done)

    def ensure_running(self) -> None:
        """Spawn the process now if it is STOPPED for being lazy or idle (called by the router per call)."""
        if self.state is PluginState.RUNNING or self._closed or self._demand.is_set():
            return
        if self.state is PluginState.FAILED:
            return
        # Also reached while an idle stop is in progress (STOPPING): the supervising task
        # spawns a new process as soon as the old one is gone.
        self._demand.set()
        self._set_state(PluginState.STARTING)

    def touch(self) -> None:
        """Record activity now; the idle timer (spec.idle_stop) counts from the last touch.

        The supervisor does not see calls: touch when a call starts and when it ends, so that a
        call in flight for longer than idle_stop is not cut short.
        """
        self._last_touch = time.monotonic()

    async def stop(self) -> None:
        """Stop for good: no more restarts, terminate the process group, close and unlink the socket."""
        async with self._lock:
            self._closed = True
            self._demand.clear()
            if self._task is not None or self._child is not None:
                self._set_state(PluginState.STOPPING)
            await self._cancel_task()
            if self._child is not None:
                await self._terminate(self._child)
            if self._sock is not None:
                self._sock.close()
                self._sock = None
                config.remove_socket(self.socket_path)
            self._set_state(PluginState.STOPPED)

    async def restart(self) -> None:
        """Replace the process by a fresh one (reload), keeping the socket: calls wait in the backlog.

        A plugin with no process wanted (lazy or idle STOPPED) stays stopped and starts on its
        next call; a FAILED or crash-looping one is started again at once with a fresh streak.
        """
        async with self._lock:
            if self._closed:
                return
            respawn = self._demand.is_set() or self.state is PluginState.FAILED
            self._set_state(PluginState.STARTING if respawn else PluginState.STOPPING)
            await self._cancel_task()
            if self._child is not None:
                await self._terminate(self._child)
            self._streak = 0
            if respawn:
                self._demand.set()
            else:
                self._set_state(PluginState.STOPPED)
            self._task = asyncio.create_task(self._supervise(), name=f"plugrpc-supervise-{self.spec.name}")
            self._task.add_done_callback(self._supervise_done)

    # --- the state machine ---------------------------------------------------------------------

    def _set_state(self, state: PluginState) -> None:
        """The only place the state changes; tells the router synchronously."""
        if state is self.state:
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("plugin %s: %s -> %s", self.spec.name, self.state.value, state.value, extra=self._extra)
        self.state = state
        if self._on_state is not None:
            try:
                self._on_state(self)
            except Exception:
                log.exception("plugin %s: on_state callback failed", self.spec.name, extra=self._extra)

    def _after_exit(self, returncode: int | None, uptime: float) -> float | None:
        """Apply spec.restart to an exit (`None`: could not spawn): seconds until the next start, or None."""
        failed = returncode != 0
        policy = self.spec.restart
        if policy == "never" or (policy == "on-failure" and not failed):
            self._demand.clear()
            self._set_state(PluginState.FAILED if failed else PluginState.STOPPED)
            return None
        if uptime >= self._stable_after:
            self._streak = 0
        self._streak += 1
        self._set_state(PluginState.CRASHLOOP if self._streak >= CRASHLOOP_AFTER else PluginState.BACKOFF)
        return backoff_delay(self._streak, self._backoff_base, self._backoff_cap)

    # --- the supervising task ----------------------------------------------------------------

    async def _supervise(self) -> None:
        """Owns the process while the supervisor is open: spawn, watch, restart, idle-stop."""
        while True:
            await self._demand.wait()
            child = await self._spawn()
            if child is None:
                delay = self._after_exit(None, 0.0)
            elif await self._watch(child):
                delay = self._after_exit(self.last_exit, time.monotonic() - child.started_at)
            else:
                continue  # stopped for idleness; back to waiting for demand
            if delay is None:
                continue
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "plugin %s: restarting in %.2fs (%d quick exit(s) in a row)",
                    self.spec.name,
                    delay,
                    self._streak,
                    extra=self._extra,
                )
            await asyncio.sleep(delay)
            self.restarts += 1

    def _supervise_done(self, task: asyncio.Task[None]) -> None:
        """A supervising task only ends by cancellation; anything else is a bug worth a loud log."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("plugin %s: supervisor crashed", self.spec.name, exc_info=exc, extra=self._extra)
            self._set_state(PluginState.FAILED)

    async def _cancel_task(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))  # a crash was already logged by _supervise_done

    async def _spawn(self) -> _Child | None:
        """Start a process; None (logged) when it cannot be started, which counts as a failure."""
        self._set_state(PluginState.STARTING)
        spec = self.spec
        if not (spec.path.is_file() and os.access(spec.path, os.X_OK)):
            log.error("plugin %s: cannot start: %s is not an executable file", spec.name, spec.path, extra=self._extra)
            return None
        assert self._sock is not None  # bound by start(), closed only by stop() after this task ended
        env = plugin_env(
            spec,
            {
                "PLUGRPC_SOCKET": str(self.socket_path),
                "LISTEN_FDS": "1",
                "LISTEN_FDNAMES": spec.name,
            },
        )
        try:
            child = _Child(spec, self.root, self._sock.fileno(), env)
        except (OSError, subprocess.SubprocessError) as exc:
            log.error("plugin %s: cannot start %s: %s", spec.name, spec.path, exc, extra=self._extra)
            return None
        # Registered before the first await, so that stop() terminates it even if it comes now.
        self._child = child
        self._last_touch = child.started_at
        await child.capture_logs()
        log.info("plugin %s: started, pid %d", spec.name, child.pid, extra={"plugin": spec.name, "pid": child.pid})
        self._set_state(PluginState.RUNNING)
        return child

    async def _watch(self, child: _Child) -> bool:
        """Wait until the process exits (True) or, with spec.idle_stop, stop it once idle (False)."""
        idle = self.spec.idle_stop
        while True:
            timeout = None if not idle else self._last_touch + idle - time.monotonic()
            if timeout is not None and timeout <= 0:
                break
            done, _ = await asyncio.wait((child.exited,), timeout=timeout)
            if done:
                await self._reaped(child, expected=False)
                return True
        log.info("plugin %s: idle for %gs, stopping it", self.spec.name, idle, extra=self._extra)
        self._demand.clear()
        self._set_state(PluginState.STOPPING)
        await self._terminate(child)
        if not self._demand.is_set():  # else ensure_running() came during the stop: start again
            self._set_state(PluginState.STOPPED)
        return False

    async def _terminate(self, child: _Child) -> None:
        """SIGTERM the process group, SIGKILL it after spec.grace, and reap. Safe to call again."""
        if not child.exited.done():
            if child.kill_at is None:
                child.kill_at = time.monotonic() + self.spec.grace
                child.signal_group(signal.SIGTERM)
            await asyncio.wait((child.exited,), timeout=max(0.0, child.kill_at - time.monotonic()))
            if not child.exited.done():
                log.warning(
                    "plugin %s: pid %d still running %gs after SIGTERM, sending SIGKILL",
                    self.spec.name,
                    child.pid,
                    self.spec.grace,
                    extra={"plugin": self.spec.name, "pid": child.pid},
                )
                child.signal_group(signal.SIGKILL)
                # No timeout: SIGKILL cannot be caught, and giving up here would leave a child behind.
                await asyncio.wait((child.exited,))
        await self._reaped(child, expected=True)

    async def _reaped(self, child: _Child, *, expected: bool) -> None:
        """Bookkeeping once the process is gone: flush its logs, record the exit, forget it."""
        await child.close()
        returncode = child.exited.result()
        self._child = None
        self.last_exit = returncode
        level = logging.INFO if expected else logging.WARNING
        log.log(
            level,
            "plugin %s: pid %d exited with %s after %.1fs",
            self.spec.name,
            child.pid,
            describe_exit(returncode),
            time.monotonic() - child.started_at,
            extra={"plugin": self.spec.name, "pid": child.pid},
        )


class _Child:
    """One plugin process: the Popen, its exit watcher and its two log pipes.

    `exited` resolves with the return code once the process has exited and has been reaped.
    Exit is seen through a pidfd on the event loop (asyncio and uvloop alike), or by a thread
    blocked in waitid() where pidfds are unavailable. Either way the process group is killed
    and the process reaped on the loop's thread while its pid is still reserved (a zombie), so
    no signal can reach a recycled pid. Spawned on the loop's thread too: PR_SET_PDEATHSIG fires
    when the *thread* that forked exits, so a spawn from an executor thread would be killed early.
    """

    def __init__(self, spec: PluginSpec, root: Path, listen_fd: int, env: dict[str, str]) -> None:
        self.name = spec.name
        self._loop = asyncio.get_running_loop()
        path = os.fspath(spec.path)
        argv = [path, *spec.args]
        self.popen = subprocess.Popen(
            argv,
            bufsize=0,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=root,
            start_new_session=True,  # own process group: stop() signals the plugin and its children
            preexec_fn=_child_setup(listen_fd, os.getpid(), path, argv, env),
        )
        self.pid: int = self.popen.pid
        reaper.watch(self.pid)  # its own children must not outlive a runtime killed with SIGKILL
        self.started_at = time.monotonic()
        self.kill_at: float | None = None
        """Set when SIGTERM is sent: the time at which SIGKILL follows."""
        self.exited: asyncio.Future[int] = self._loop.create_future()
        # (pipe, transport, protocol); a pipe is closed by its transport once it has one.
        self._pipes: list[tuple[IO[bytes], asyncio.ReadTransport | None, _LogPipe | None]] = [
            (pipe, None, None) for pipe in (self.popen.stdout, self.popen.stderr) if pipe is not None
        ]
        self._pidfd = -1
        self._thread: threading.Thread | None = None
        self._watch_exit()

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
        returncode = self.popen.wait()
        reaper.forget(self.pid)
        self.exited.set_result(returncode)

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the plugin's process group, as long as its leader has not been reaped."""
        if self.exited.done():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def capture_logs(self) -> None:
        """Log stdout at INFO and stderr at WARNING, one record per line."""
        extra = {"plugin": self.name, "pid": self.pid}
        for i, level in enumerate((logging.INFO, logging.WARNING)):
            pipe = self._pipes[i][0]
            factory = functools.partial(_LogPipe, self._loop.create_future(), level, extra)
            transport, protocol = await self._loop.connect_read_pipe(factory, pipe)
            self._pipes[i] = (pipe, transport, protocol)

    async def close(self) -> None:
        """After exit: let the log pipes reach EOF (bounded, in case something escaped the group), close them."""
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


class _LogPipe(asyncio.Protocol):
    """One of a plugin's output pipes: each line becomes a log record on "plugrpc.plugin"."""

    __slots__ = ("closed", "_level", "_extra", "_splitter", "_skipping")

    def __init__(self, closed: asyncio.Future[None], level: int, extra: dict[str, Any]) -> None:
        self.closed = closed
        self._level = level
        self._extra = extra
        self._splitter = LineSplitter(LOG_MAX_LINE)
        self._skipping = False  # dropping the rest of a line that was logged truncated

    def data_received(self, data: bytes) -> None:
        # Fed in pieces of at most max_line bytes, only the first line of a piece can overflow,
        # and _feed checks that one before the splitter sees it, so LineTooLong never happens.
        step = self._splitter.max_line
        for start in range(0, len(data), step):
            self._feed(data[start : start + step])

    def _feed(self, piece: bytes) -> None:
        if self._skipping:
            nl = piece.find(b"\n")
            if nl < 0:
                return
            piece = piece[nl + 1 :]
            self._skipping = False
        splitter = self._splitter
        first = piece.find(b"\n")
        room = splitter.max_line - splitter.buffered
        if (first if first >= 0 else len(piece)) > room:
            for line in splitter.feed(piece[:room] + b"\n"):
                self._emit(line, truncated=True)
            if first < 0:
                self._skipping = True
                return
            piece = piece[first + 1 :]
        for line in splitter.feed(piece):
            self._emit(line)

    def _emit(self, line: bytes, truncated: bool = False) -> None:
        log_line(line, self._level, self._extra, f" [line truncated at {LOG_MAX_LINE} bytes]" if truncated else "")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._skipping:
            for line in self._splitter.feed(b"\n"):  # the last line, when it had no newline
                self._emit(line)
        if not self.closed.done():
            self.closed.set_result(None)


def _above_stdio(sock: socket.socket) -> socket.socket:
    """Move a socket off fds 0-2, which a runtime started with closed stdio may hand out.

    In the child, Popen puts the log pipes on 1 and 2 before `_child_setup` dups the socket to 3.
    """
    if sock.fileno() > 2:
        return sock
    import fcntl

    moved = socket.socket(fileno=fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, LISTEN_FD))
    sock.close()
    return moved


def _child_setup(
    listen_fd: int, parent_pid: int, path: str, argv: list[str], env: dict[str, str]
) -> Callable[[], None]:
    """The function Popen runs in the forked child: it execs the plugin itself.

    LISTEN_PID must be the plugin's pid, known only after fork, so the exec happens here with
    it added. Popen's own close_fds would run after this function, so every fd other than
    0-3 is marked close-on-exec here; Popen's stdio pipes are already on 0-2.
    """

    def setup() -> None:
        os.dup2(listen_fd, LISTEN_FD)
        os.set_inheritable(LISTEN_FD, True)  # dup2 of fd 3 onto itself keeps close-on-exec
        # O_NONBLOCK lives in the open file description we share with the runtime (bound
        # non-blocking) and with earlier plugin processes (Go sets it): hand it over blocking,
        # as systemd does, so `socket.socket(fileno=3).accept()` simply waits.
        os.set_blocking(LISTEN_FD, True)
        _cloexec_above(LISTEN_FD)
        die_with_parent(parent_pid)
        env["LISTEN_PID"] = str(os.getpid())
        try:
            os.execve(path, argv, env)
        except OSError as exc:
            os.write(2, f"plugrpc: cannot execute {path}: {exc.strerror}\n".encode(errors="replace"))
            os._exit(127)

    return setup


def _cloexec_above(lowest: int) -> None:
    try:
        fds: Any = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc (some containers): every possible fd
        fds = range(lowest + 1, os.sysconf("SC_OPEN_MAX"))
    for fd in fds:
        if fd > lowest:
            with contextlib.suppress(OSError):  # including listdir's own, already closed, fd
                os.set_inheritable(fd, False)
