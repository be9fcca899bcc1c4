"""core0 plugins run once per call (`mode = "exec"`): read as core0 read them.

core0 ran `<path> <command> <args-json>` once per call, the args JSON always given (`{}` when
there are none), without a shell. The binary's stdout and stderr are message streams
(core0.py): the last level-20 message is the result; other messages are its log, at the
logging level that matches theirs. A non-zero exit is a failed call whose message is the framed
error text (core0's Go library framed it on stdout and exited 1), else the end of stderr, and
whose `error.data` carries the exit code. `ExecPlugin` keeps that contract behind the same
`call()` the router uses for persistent plugins, so a core0 image runs unchanged; it adds what
core0 left to chance: a timeout, a bound on concurrent executions and on output, and no process
left behind. `queue = true` runs one execution at a time, in the order the calls came.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, cast

import orjson

from .. import codes
from ..errors import CallTimeout, MessageTooLarge, Overloaded, PluginUnavailable, RpcError
from ..manifest import PluginSpec
from ..wire import LineSplitter
from . import core0
from .child import terminate
from .confinement import Confinement, exec_setup
from .env import log_line, plugin_env, router_env
from .exits import describe_exit
from .logbook import Logbook
from .logpipe import OnLine
from .reaper import reaper

EXEC_FAILED: Final = codes.EXEC_FAILED

MAX_OUTPUT: Final = 64 * 1024 * 1024
"""Bytes one execution may write on stdout, and on stderr, before it is killed."""
MAX_ERROR_TEXT: Final = 64 * 1024
"""Characters of stderr kept in an error message: the end, where the error usually is."""

log = logging.getLogger("plugrpc.execmode")


class _Run(asyncio.SubprocessProtocol):
    """One execution: reads both pipes as core0 did (core0.py), keeps the last result, logs the rest, bounds it."""

    __slots__ = (
        # set once
        "name",
        "extra",
        "limit",
        "on_line",
        "exited",
        "pid",
        "transport",
        "kill_at",
        # output
        "sizes",
        "splitters",
        "readers",
        "result",
        "stderr",
        # outcome
        "returncode",
        "overflow",
        "stopped",
    )

    def __init__(self, name: str, limit: int, exited: asyncio.Future[None], on_line: OnLine) -> None:
        self.name = name
        self.extra = {"plugin": name}
        self.limit = limit
        self.on_line = on_line
        self.exited = exited
        """Resolved when the process is reaped and both pipes are closed."""
        self.pid: int | None = None
        self.transport: asyncio.SubprocessTransport | None = None
        self.kill_at: float | None = None

        self.sizes = [0, 0, 0]
        self.splitters = (None, LineSplitter(limit), LineSplitter(limit))
        # core0 read stdout and stderr alike, each with its own default level; a result may come on either.
        self.readers = (None, core0.Reader(core0.STDOUT), core0.Reader(core0.STDERR))
        self.result: bytes | None = None
        """The text of the last level-20 message: the JSON result, or on a non-zero exit the error."""
        self.stderr: list[bytes] = []
        """Plain stderr lines: the error when nothing was framed."""

        self.returncode: int | None = None
        self.overflow = False
        self.stopped = False
        """Set when the plugin is closed under this execution."""

    # --- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's process transport has the SubprocessTransport methods but not the base class.
        self.transport = cast(asyncio.SubprocessTransport, transport)
        self.pid = self.transport.get_pid()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        size = self.sizes[fd] + len(data)
        self.sizes[fd] = size
        if size > self.limit:
            if not self.overflow:
                self.overflow = True
                log.warning("%s: more than %d bytes on fd %d; killing it", self.name, self.limit, fd, extra=self.extra)
                self.signal_group(signal.SIGKILL)
            return
        splitter = self.splitters[fd]
        assert splitter is not None
        self._lines(fd, splitter.feed(data))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        splitter = self.splitters[fd]
        if splitter is not None and splitter.buffered and not self.overflow:
            # A last line without its newline still counts: core0's library ends its frame with `:::` and no newline.
            self._lines(fd, splitter.feed(b"\n"))

    def process_exited(self) -> None:
        assert self.transport is not None
        self.returncode = self.transport.get_returncode()
        # What the call started in its process group ends with it: a leftover child would
        # outlive us (PR_SET_PDEATHSIG does not pass to grandchildren) and could hold our pipes
        # open. While a member lives its group id stays taken; once none does, the id is reused
        # only after the kernel has handed out every other pid, so this signals no stranger.
        self.signal_group(signal.SIGKILL)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    # --- steps -------------------------------------------------------------------------------

    def _lines(self, fd: int, lines: list[bytes]) -> None:
        reader = self.readers[fd]
        assert reader is not None
        for line in lines:
            msg = reader.feed(line)
            if msg is None:
                continue
            level, text = msg.level, msg.text
            if level == core0.RESULT_JSON:
                self.result = text
                continue
            if level == core0.STDERR and fd == 2:
                self.stderr.append(text)
            log_level = core0.LOG_LEVELS.get(level, logging.INFO)
            for part in text.split(b"\n"):
                self.on_line(*log_line(part, log_level, self.extra))

    @property
    def unclosed(self) -> bool:
        """Whether a `LEVEL:::` block was opened and never closed."""
        return any(reader is not None and reader.block is not None for reader in self.readers)

    def signal_group(self, sig: int) -> None:
        """Signal the execution's whole process group (its own session, so only its processes)."""
        if self.pid is not None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def error_text(self) -> str:
        """The message of a failed execution: the framed error, else the end of stderr, else how it ended.

        core0's Go library framed the error text as the result and exited 1, with nothing on stderr.
        """
        if self.result is not None:
            text = core0.error_text(self.result)
            if text:
                return text
        text = b"\n".join(self.stderr).decode(errors="replace").strip()
        if len(text) > MAX_ERROR_TEXT:
            text = "..." + text[-MAX_ERROR_TEXT:]
        if text:
            return text
        assert self.returncode is not None  # read once the process is reaped
        return f"ended with {describe_exit(self.returncode)}"


class ExecPlugin:
    """A core0-style plugin: `call()` runs `<path> [args...] <method> [<params JSON>]` once.

    At most `spec.max_inflight` executions run at once (4 per CPU when 0); further calls wait,
    up to `spec.max_pending` calls in all. Every execution is its own session, killed on timeout,
    on cancellation and on `aclose()`, and reaped before its call returns.
    """

    __slots__ = (
        "spec",
        "name",
        "inflight",
        "calls",
        "errors",
        "output",
        "_argv",
        "_cwd",
        "_env",
        "_confinement",
        "_limit",
        "_max_output",
        "_slots",
        "_pending",
        "_running",
        "_closing",
    )

    def __init__(self, spec: PluginSpec, root: Path, *, max_output: int = MAX_OUTPUT,
                 router_socket: Path | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        # counters for status()
        self.inflight = 0
        """Executions running now."""
        self.calls = 0
        self.errors = 0
        # resolved once, not per call
        self._argv: tuple[str, ...] = (str(spec.path), *spec.args)
        self._cwd = str(root)
        self._confinement = Confinement.of(spec)
        self._env = plugin_env(spec, {**router_env(router_socket), **dict(self._confinement.env)})
        self._limit = spec.max_inflight if spec.max_inflight > 0 else (os.cpu_count() or 1) * 4
        self._max_output = max_output
        # state
        self._slots = asyncio.Semaphore(self._limit)
        self._pending = 0
        """Calls queued or running."""
        self._running: set[_Run] = set()
        self._closing = False
        self.output = Logbook()
        """What its executions printed besides their results (stderr included), most recent last."""

    def __repr__(self) -> str:
        return f"<ExecPlugin {self.name} inflight={self.inflight} pending={self._pending} limit={self._limit}>"

    def busy(self) -> int:
        """Calls queued or running: what a graceful shutdown waits for."""
        return self._pending

    def pids(self) -> set[int]:
        """The processes of the executions running now (each leads a session of its own)."""
        return {run.pid for run in self._running if run.pid is not None}

    def status(self) -> dict[str, Any]:
        """What `router.` built-ins report for this plugin."""
        return {
            "name": self.name,
            "mode": "exec",
            "mode_detected": not self.spec.mode_given,
            "state": "stopped" if self._closing else "ready",
            "inflight": self.inflight,
            "pending": self._pending,
            "calls": self.calls,
            "errors": self.errors,
        }

    async def call(self, method: str, params: Any, late: Callable[[], str | None] | None = None) -> Any:
        """Run the plugin once for `method`; its `20:::` block is the result.

        `late`, asked once a slot is free, says why the call must not start any more (its caller's
        deadline passed while it queued): CallTimeout with that reason, and nothing runs.

        Raises `RpcError`: `EXEC_FAILED` for a non-zero exit, -32001 for a broken result or a
        plugin that cannot run, -32002 on timeout, -32003 when too many calls wait, -32004 for
        output (or params) beyond the limits.
        """
        self.calls += 1
        try:
            if self._pending >= self.spec.max_pending:
                raise Overloaded(
                    codes.OVERLOADED,
                    f"{self._pending} calls to exec plugin {self.name!r} are running or waiting",
                    {"plugin": self.name},
                )
            self._pending += 1
            try:
                async with asyncio.timeout(self.spec.timeout), self._slots:
                    if late is not None and (why := late()) is not None:
                        raise CallTimeout(codes.CALL_TIMEOUT, codes.MESSAGES[codes.CALL_TIMEOUT],
                                          {"plugin": self.name, "reason": why})
                    return await self._execute(method, params)
            except TimeoutError:
                log.warning(
                    "%s: %s timed out after %ss", self.name, method, self.spec.timeout, extra={"plugin": self.name}
                )
                raise CallTimeout(
                    codes.CALL_TIMEOUT,
                    f"exec plugin {self.name!r} did not finish {method!r} within {self.spec.timeout}s",
                    {"plugin": self.name},
                ) from None
            finally:
                self._pending -= 1
        except RpcError:
            self.errors += 1
            raise

    async def aclose(self) -> None:
        """Stop every running execution: SIGTERM, SIGKILL after `spec.grace`; wait until reaped."""
        self._closing = True
        runs = list(self._running)
        for run in runs:
            run.stopped = True
        await asyncio.gather(*(terminate(run, self.spec.grace) for run in runs))

    # --- steps -------------------------------------------------------------------------------

    async def _execute(self, method: str, params: Any) -> Any:
        if self._closing:
            raise self._stopped()
        argv: tuple[str | bytes, ...] = (*self._argv, method, b"{}" if params is None else orjson.dumps(params))
        loop = asyncio.get_running_loop()
        run = _Run(self.name, self._max_output, loop.create_future(), self.output.add)
        self._running.add(run)
        spawned = False
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: run,
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self._cwd,
                env=self._env,
                start_new_session=True,
                preexec_fn=functools.partial(exec_setup, self._confinement, os.getpid()),
            )
            spawned = True
        except (OSError, ValueError) as exc:
            raise self._spawn_error(exc) from exc
        finally:
            if not spawned:
                self._running.discard(run)
                run.exited.cancel()  # nothing for aclose() to wait for
        assert run.pid is not None  # set by connection_made, before subprocess_exec returns
        reaper.watch(run.pid)  # what the call starts must not outlive a runtime killed with SIGKILL
        self.inflight += 1
        try:
            if self._closing:  # aclose() ran while this one was starting
                run.stopped = True
                run.signal_group(signal.SIGKILL)
            await asyncio.shield(run.exited)
        finally:
            self.inflight -= 1
            self._running.discard(run)
            if not run.exited.done():
                # Timed out or cancelled (the caller went away): kill and reap before leaving.
                run.signal_group(signal.SIGKILL)
                transport.close()
                await asyncio.shield(run.exited)
            transport.close()
            reaper.forget(run.pid)
        return self._outcome(run)

    def _outcome(self, run: _Run) -> Any:
        data = {"plugin": self.name}
        if run.stopped:
            raise self._stopped()
        if run.overflow:
            raise MessageTooLarge(
                codes.MESSAGE_TOO_LARGE,
                f"exec plugin {self.name!r} wrote more than {self._max_output} bytes and was killed",
                data,
            )
        if run.returncode != 0:
            raise RpcError(EXEC_FAILED, run.error_text(), {"plugin": self.name, "exit": run.returncode})
        if run.unclosed:
            raise PluginUnavailable(
                codes.PLUGIN_UNAVAILABLE,
                f"exec plugin {self.name!r} opened a `LEVEL:::` block on its output and never closed it with a "
                "`:::` line", data,
            )
        if run.result is None:
            return None  # a core0 plugin may print nothing; Go's plugin.Plugin framed nil as `null`
        try:
            return orjson.loads(run.result)
        except orjson.JSONDecodeError as exc:  # core0 would have passed it on; a JSON-RPC result must be JSON
            raise PluginUnavailable(
                codes.PLUGIN_UNAVAILABLE, f"exec plugin {self.name!r} wrote a result that is not JSON: {exc}", data
            ) from None

    def _stopped(self) -> PluginUnavailable:
        return PluginUnavailable(
            codes.PLUGIN_UNAVAILABLE, f"exec plugin {self.name!r} is stopping", {"plugin": self.name}
        )

    def _spawn_error(self, exc: OSError | ValueError) -> RpcError:
        data = {"plugin": self.name}
        if isinstance(exc, OSError) and exc.errno == errno.E2BIG:
            return MessageTooLarge(
                codes.MESSAGE_TOO_LARGE,
                f"params too large to pass to exec plugin {self.name!r} as a command-line argument",
                data,
            )
        return PluginUnavailable(codes.PLUGIN_UNAVAILABLE, f"cannot run exec plugin {self.name!r}: {exc}", data)
