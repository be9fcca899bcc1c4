"""Keep one `mode = "rpc"` plugin running: its states, restart policy and lifecycle (docs/design.md).

The runtime binds the plugin's unix socket before the first spawn and keeps it listening across
restarts, so calls written to it wait in the kernel backlog while the plugin starts or restarts.
One task per plugin owns the process: it waits for the plugins it starts `after`, spawns it
(`child.Child`: fd 3, environment, limits, log pipes), watches it, applies the restart policy
(`restart.RestartPolicy`: jittered exponential backoff, crash loops), stops it when idle and
respawns it on demand; `stop()` cancels that task and then stops the process gracefully. A
`ready = "notify"` plugin is RUNNING only once it says READY=1 on its notify socket; one the
router's liveness check finds stuck is `unresponsive()`: stopped and, by the restart policy,
started again. A `transport = "stdio"`
plugin has no socket: each process comes with its pipes, which the router connects to (`attach`),
and is RUNNING once it answered its handshake (`ready`), or replaced when it fails it or breaks the
protocol (`fault`); stopping it closes its stdin first. Every state change goes through
`_set_state`, which does no I/O.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from .. import sockets
from ..manifest import PluginSpec
from . import core0
from .child import Child, ExecFailed, above_stdio, terminate
from .confinement import Confinement
from .env import plugin_env, router_env
from .exits import broken_limit, describe_exit
from .logbook import Logbook
from .notify import NotifySocket
from .restart import BACKOFF_BASE, BACKOFF_CAP, STABLE_AFTER, RestartPolicy

WHY_LINES: Final = 3
"""Lines of a plugin's last output quoted when saying why it is unavailable."""
CORE0_SIGNS: Final = ("missing command", "unknown command", "20:::")
"""What a core0 plugin binary prints when it is run as a server, with no command."""
MAX_STATUS: Final = 200
"""Characters of a plugin's STATUS= text kept for `plugrpc status`."""
LIMIT_LINES: Final = 5
"""Last output lines searched for an allocation failure when a plugin with a memory limit dies."""

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
    """Like BACKOFF after `restart.CRASHLOOP_AFTER` quick exits in a row: calls fail fast meanwhile."""
    FAILED = "failed"
    """The process failed and the restart policy says not to restart it."""
    STOPPING = "stopping"
    UNRESPONSIVE = "unresponsive"
    """It stopped answering (no reply to the router's ping): being stopped, then restarted by policy;
    calls wait in the backlog for the next process."""
    EXEC = "exec"
    """It turned out to be a core0 binary (its manifest names no `mode`): it runs once per call from
    now on, and this supervisor starts no more processes."""


_UNAVAILABLE: Final = frozenset({PluginState.CRASHLOOP, PluginState.FAILED, PluginState.STOPPING})
GIVEN_UP: Final = frozenset({PluginState.CRASHLOOP, PluginState.FAILED})
"""States in which calls waiting for the plugin are failed at once rather than left to time out."""
FAULTS: Final = frozenset({"unresponsive", "handshake", "protocol"})
"""Why the runtime stops a process it gave up on (an exit to restart, whatever its status): it did not
answer pings, it failed its handshake, it broke the protocol on its stdout."""


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
        router_socket: Path | None = None,
    ) -> None:
        self.spec = spec
        self.root = Path(root)
        self.socket_path = Path(socket_path)
        self.on_state = on_state
        """Called synchronously with the supervisor after every state change."""
        self._restart = RestartPolicy(stable_after, backoff_base, backoff_cap)
        self._extra = {"plugin": spec.name}
        self._router_socket = router_socket
        """The front socket, as PLUGRPC_ROUTER in the plugin's environment (None: not set)."""

        # What callers read.
        self.state = PluginState.STOPPED
        self.restarts = 0
        self.last_exit: int | None = None
        """Return code of the last process (negative: the signal that ended it)."""
        self.exit_reason: str | None = None
        """Why the last process ended: `crash` (it exited by itself), `limit` (it broke one of its
        limits), `unresponsive` (stopped for not answering), `stopped` (we stopped it)."""
        self.exit_detail: str | None = None
        """More on `exit_reason` where there is more to say: which limit, how long it was silent."""
        self.exits: Counter[str] = Counter()
        """Processes ended so far, by `exit_reason` (for metrics)."""
        self.last_error: str | None = None
        """Why the last spawn failed, when it did (cleared by the next successful start)."""
        self.output = Logbook()
        """The plugin's recent stdout and stderr lines, across restarts."""
        self.status_text: str | None = None
        """What the plugin last said with STATUS=... on its notify socket."""
        self.up = asyncio.Event()
        """Set while RUNNING: what plugins started `after` this one wait for."""
        self._holds = spec.ready == "notify" or spec.transport == "stdio"
        self.holding = self._holds
        """Calls must wait in the router, not be written: a notify plugin that has not said READY=1."""
        self.gate: Callable[[], Awaitable[None]] | None = None
        self.attach: Callable[[Child], Awaitable[None]] | None = None
        """Awaited after each spawn of a stdio server: the router connects to its pipes and makes the
        handshake; the plugin is RUNNING once it says the server is `ready`."""
        """Awaited before each spawn: the router's wait for the plugins this one starts `after`."""
        self.waiting_for: list[str] = []
        """The plugins `gate` is waiting for now, for status views."""

        # The sockets and the process.
        self._sock: socket.socket | None = None
        self._notify: NotifySocket | None = None
        self._child: Child | None = None
        self._stopping: asyncio.Task[None] | None = None
        """Stopping an unresponsive process (its exit is watched as any other)."""

        # Lifecycle: one task owns the process; `_demand` is set while a process should exist.
        self._task: asyncio.Task[None] | None = None
        self._demand = asyncio.Event()
        self._lock = asyncio.Lock()  # serialises start/stop/restart
        self._closed = True  # until start(), and again after stop(): no process may be spawned
        self._last_touch = time.monotonic()
        self._first_line = 1
        """The logbook's seq of the current process's first line: what it printed is read for core0's answer."""

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
            "exit_reason": self.exit_reason,
            "exit_detail": self.exit_detail,
            "last_error": self.last_error,
            "mode": self.spec.mode,
            "transport": self.spec.transport,
            "mode_detected": False,
            "lazy": self.spec.lazy,
            "status_text": self.status_text,
            "waiting_for": list(self.waiting_for),
        }

    def unavailable_reason(self) -> str:
        """Why calls fail now, in words a caller can act on: the state, the last exit, what it printed."""
        name = self.spec.name
        why = f"plugin {name} is {self.state.value}"
        if self.state is PluginState.CRASHLOOP:
            why += (f": it stopped {self._restart.streak} times in a row within {self._restart.stable_after:g}s of "
                    "starting")
        if self.last_error is not None:
            why += f"; {self.last_error}"
        elif self.last_exit is not None:
            why += f"; its last process ended with {describe_exit(self.last_exit)}"
            if self.exit_detail:
                why += f" ({self.exit_reason}: {self.exit_detail})"
        lines = [line.text for line in self.output.tail(WHY_LINES)]
        if lines:
            why += "; it last printed: " + " | ".join(repr(text[:200]) for text in lines)
        if any(sign in text for text in lines for sign in CORE0_SIGNS):
            why += (f"; this looks like a core0 plugin binary, which runs once per call: declare it with"
                    f' mode = "exec" under [plugin.{name}]')
        return why

    # --- what the router calls ---------------------------------------------------------------

    def bind(self) -> None:
        """Create the listening socket (0600), and the notify socket if it says READY=1, unless they exist."""
        if self._sock is None and self.spec.transport == "socket":
            self._sock = above_stdio(sockets.bind_socket(self.socket_path, 0o600))
        if self._notify is None and self.spec.ready == "notify":
            self._notify = NotifySocket(self.spec.name, self._notified)

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
                sockets.remove_socket(self.socket_path)
            if self._notify is not None:
                self._notify.close()
                self._notify = None
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
            self._restart.reset()
            if respawn:
                self._demand.set()
            else:
                self._set_state(PluginState.STOPPED)
            self._task = asyncio.create_task(self._supervise(), name=f"plugrpc-supervise-{self.spec.name}")
            self._task.add_done_callback(self._supervise_done)

    def unresponsive(self, why: str) -> None:
        """The router's ping went unanswered: stop this process (SIGTERM, grace, SIGKILL); the restart
        policy brings the next one. The router fails the calls in flight when the state changes."""
        child = self._child
        if child is None or self.state is not PluginState.RUNNING or self._closed:
            return
        log.warning("unresponsive: %s; stopping it (SIGTERM, then SIGKILL after %gs)", why, self.spec.grace,
                    extra={"plugin": self.spec.name, "pid": child.pid})
        self._discard(child, "unresponsive", why)
        self._set_state(PluginState.UNRESPONSIVE)

    def ready(self, child: Child) -> None:
        """`child`, a stdio server, answered its handshake: the plugin is RUNNING, calls may be written."""
        if child is self._child and self.state is PluginState.STARTING and child.stop_reason is None:
            self._set_state(PluginState.RUNNING)

    def fault(self, child: Child, reason: str, why: str) -> None:
        """`child` failed its handshake or broke the protocol (`reason`, one of `FAULTS`): stop it, and the
        restart policy brings the next one. Calls wait for that one meanwhile."""
        if child is not self._child or child.stop_reason is not None or child.kill_at is not None or self._closed:
            return
        log.warning("%s; stopping it", why, extra={"plugin": self.spec.name, "pid": child.pid})
        self._discard(child, reason, why)

    def _discard(self, child: Child, reason: str, why: str) -> None:
        child.stop_reason = reason
        self.exit_detail = why
        self._stopping = asyncio.create_task(self._end(child), name=f"plugrpc-{reason}-{self.spec.name}")

    def _notified(self, pid: int, fields: dict[str, str]) -> bool:
        """A message on the notify socket: take it if it comes from the plugin's process group."""
        child = self._child
        if child is None or pid <= 0:
            return False
        try:
            if os.getpgid(pid) != child.pid:
                return False
        except OSError:  # gone already: nobody to believe
            return False
        if "STATUS" in fields:
            self.status_text = fields["STATUS"][:MAX_STATUS]
        if fields.get("READY") == "1" and self.state is PluginState.STARTING:
            self._set_state(PluginState.RUNNING)
        return True

    # --- the state machine ---------------------------------------------------------------------

    def _set_state(self, state: PluginState) -> None:
        """The only place the state changes; tells the router synchronously."""
        if state is self.state:
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s -> %s", self.state.value, state.value, extra=self._extra)
        self.state = state
        running = state is PluginState.RUNNING
        if running:
            self.up.set()
        else:
            self.up.clear()
        self.holding = self._holds and not running
        if self.on_state is not None:
            try:
                self.on_state(self)
            except Exception:
                log.exception("on_state callback failed", extra=self._extra)

    def _after_exit(self, returncode: int | None, uptime: float) -> float | None:
        """Apply spec.restart to an exit (`None`: could not spawn): seconds until the next start, or None."""
        failed = returncode != 0 or self.exit_reason in FAULTS  # SIGTERM may end a stuck one with 0
        delay = self._restart.after_exit(self.spec.restart, failed, uptime)
        if delay is None:
            self._demand.clear()
            self._set_state(PluginState.FAILED if failed else PluginState.STOPPED)
            return None
        self._set_state(PluginState.CRASHLOOP if self._restart.crashlooping else PluginState.BACKOFF)
        return delay

    # --- the supervising task ----------------------------------------------------------------

    async def _supervise(self) -> None:
        """Owns the process while the supervisor is open: spawn, watch, restart, idle-stop."""
        while True:
            await self._demand.wait()
            if self.gate is not None:
                await self.gate()
            child = await self._spawn()
            uptime = 0.0
            if child is None:
                delay = self._after_exit(None, uptime)
            elif await self._watch(child):
                if self._core0():
                    self._demand.clear()
                    self._set_state(PluginState.EXEC)
                    return
                uptime = time.monotonic() - child.started_at
                delay = self._after_exit(self.last_exit, uptime)
            else:
                continue  # stopped for idleness; back to waiting for demand
            if delay is None:
                continue
            if log.isEnabledFor(logging.INFO):
                if self._restart.stable(uptime):
                    log.info("restarting in %.2fs (it had run %.1fs)", delay, uptime, extra=self._extra)
                else:
                    log.info("restarting in %.2fs (%d quick exit(s) in a row)", delay, self._restart.streak,
                             extra=self._extra)
            await asyncio.sleep(delay)
            self.restarts += 1

    def _core0(self) -> bool:
        """Whether the process that just exited was a core0 binary, which runs once per call.

        Run with no command, as a persistent plugin is, core0's library frames `"missing command"`
        on stdout and exits 1. An explicit `mode` always wins: then it only shows in the reason.
        """
        if self.spec.mode_given or self.spec.transport == "stdio" or self.last_exit != 1 or self.exit_reason != "crash":
            return False
        lines = [line.text.encode() for line in self.output.lines if line.seq >= self._first_line]
        return core0.says_missing_command(lines)

    def _supervise_done(self, task: asyncio.Task[None]) -> None:
        """A supervising task ends by cancellation, or once the plugin runs in exec mode; a crash is a bug worth a
        loud log."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("supervisor crashed", exc_info=exc, extra=self._extra)
            self._set_state(PluginState.FAILED)

    async def _cancel_task(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))  # a crash was already logged by _supervise_done

    async def _spawn(self) -> Child | None:
        """Start a process; None (logged) when it cannot be started, which counts as a failure."""
        self._set_state(PluginState.STARTING)
        spec = self.spec
        if not (spec.path.is_file() and os.access(spec.path, os.X_OK)):
            self._spawn_failed(f"{spec.path} is not an executable file")
            return None
        extra = router_env(self._router_socket)
        listen_fd = None
        if spec.transport == "socket":
            assert self._sock is not None  # bound by start(), closed only by stop() after this task ended
            listen_fd = self._sock.fileno()
            extra.update(PLUGRPC_SOCKET=str(self.socket_path), LISTEN_FDS="1", LISTEN_FDNAMES=spec.name)
        if self._notify is not None:
            extra["NOTIFY_SOCKET"] = self._notify.address
        env = plugin_env(spec, extra)
        try:
            child = Child(spec, self.root, listen_fd, env, Confinement.of(spec))
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self._spawn_failed(str(exc.strerror) if isinstance(exc, ExecFailed) else str(exc))
            return None
        # Registered before the first await, so that stop() terminates it even if it comes now.
        self._child = child
        self._first_line = self.output.seq + 1
        self._last_touch = child.started_at
        self.last_error = None
        self.status_text = None
        await child.capture_logs(self.output.add)
        if self.attach is not None:
            await self.attach(child)  # RUNNING once the server answers its handshake (`ready`)
        elif spec.ready != "notify":
            self._set_state(PluginState.RUNNING)  # else: once it says READY=1 (`_notified`)
        return child

    def _spawn_failed(self, why: str) -> None:
        self.last_error = f"cannot start: {why}"
        log.error("%s", self.last_error, extra=self._extra)

    async def _watch(self, child: Child) -> bool:
        """Wait until the process exits (True) or, with spec.idle_stop, stop it once idle (False)."""
        idle = self.spec.idle_stop
        while True:
            timeout = None if not idle else self._last_touch + idle - time.monotonic()
            if timeout is not None and timeout <= 0:
                break
            done, _ = await asyncio.wait((child.exited,), timeout=timeout)
            if done:
                await self._reaped(child, child.stop_reason)
                return True
        log.info("idle for %gs, stopping it", idle, extra=self._extra)
        self._demand.clear()
        self._set_state(PluginState.STOPPING)
        await self._terminate(child)
        if not self._demand.is_set():  # else ensure_running() came during the stop: start again
            self._set_state(PluginState.STOPPED)
        return False

    async def _terminate(self, child: Child) -> None:
        """Stop the process group (SIGTERM, spec.grace, SIGKILL) and reap it. Safe to call again."""
        await self._end(child)
        await self._reaped(child, child.stop_reason or "stopped")

    async def _end(self, child: Child) -> None:
        """SIGTERM, grace, SIGKILL; a stdio server's stdin is closed first, and it gets `grace` to exit by itself."""
        if child.close_input():
            await asyncio.wait((child.exited,), timeout=self.spec.grace)
        await terminate(child, self.spec.grace)

    async def _reaped(self, child: Child, reason: str | None) -> None:
        """Bookkeeping once the process is gone: flush its logs, record the exit and why, forget it.

        `reason` None: it exited by itself, a `crash`, or a `limit` when the evidence (its exit, its
        CPU time, its last lines, read once they are all in) says it broke one of its limits.
        """
        await child.close()
        if self._child is not child:
            return  # a second _terminate of the same child: its exit is recorded already
        returncode = child.exited.result()
        self._child = None
        if reason is None:
            self.exit_detail = broken_limit(self.spec.limits, returncode, child.cpu_seconds,
                                            [line.text for line in self.output.tail(LIMIT_LINES)])
            reason = "crash" if self.exit_detail is None else "limit"
        elif reason not in FAULTS:  # whose detail `_discard()` gave
            self.exit_detail = None
        self.last_exit = returncode
        self.exit_reason = reason
        self.exits[reason] += 1
        log.log(
            logging.INFO if reason == "stopped" else logging.WARNING,
            "exited with %s after %.1fs%s",
            describe_exit(returncode),
            time.monotonic() - child.started_at,
            f" ({reason}: {self.exit_detail})" if self.exit_detail else "",
            extra={"plugin": self.spec.name, "pid": child.pid},
        )
