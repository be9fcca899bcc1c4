"""The plugin side: `serve(commands)` runs a plugin as a persistent JSON-RPC server.

It mirrors core0's `plugin.Plugin(plugin.Commands{...})` (DESIGN.md, "Python API"): a mapping
of names to plain or async callables, served on the socket the runtime hands over as fd 3
(the systemd socket-activation convention). With no mapping it serves jsonrpcserver's `@method`
registry, so a jsonrpcserver module serves unchanged.

Plain sync commands run inline on the loop (no task: the fast path) and must be quick;
`@threaded` moves a blocking one to the default executor; async commands get a task each, so
a slow call never holds up a fast one on the same connection. Built-ins: `rpc.discover`
(an OpenRPC document) and `rpc.cancel` (the router giving up on a call).

`on_start` is the plugin's start-up work (open a database, warm a cache): it runs before the
first request is read, and once it is done the plugin says READY=1 on `$NOTIFY_SOCKET` when it
has one (a manifest's `ready = "notify"`), so the router holds calls until then.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, cast

from .. import codes, sdnotify
from ..config import BACKLOG, bind_socket, loop_factory, remove_socket
from ..errors import ConfigError, RpcError
from ..flow import FlowControl
from ..outbox import LineWriter, Outbox
from ..wire import (
    DEFAULT_MAX_LINE,
    NOID,
    JSONDecodeError,
    LineSplitter,
    LineTooLong,
    loads,
    parse_error_line,
    too_large_line,
    valid_id,
)
from . import talk
from .discovery import discover_document
from .dispatch import Handler, Outcome, dispatch, encode, resolve, threaded
from .talk import CURRENT, INLINE, Current

__all__ = ["serve", "threaded"]

log = logging.getLogger("plugrpc.sdk")

LISTEN_FDS_START: Final = 3
"""The first socket-activation fd (systemd's SD_LISTEN_FDS_START)."""
CANCEL: Final = "rpc.cancel"
DISCOVER: Final = "rpc.discover"
FLUSH_TIMEOUT: Final = 5.0
"""Seconds a connection gets at shutdown to take its last responses before it is aborted."""



def serve(
    commands: Mapping[str, Callable[..., Any]] | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    max_line: int = DEFAULT_MAX_LINE,
    on_start: Callable[[], Any] | None = None,
) -> None:
    """Serve `commands` until SIGTERM or SIGINT, then finish in-flight calls and return.

    The socket is fd 3 when the runtime started us (`LISTEN_FDS`); otherwise `path` or
    `$PLUGRPC_SOCKET` is bound, for running a plugin by hand. A request line longer than
    `max_line` bytes is answered -32004 and its connection closed. `on_start` (plain or async)
    runs before the first request is read; if it raises, the plugin exits with status 1. Then,
    with `$NOTIFY_SOCKET` set, READY=1 is sent there.
    """
    if commands is None:
        from jsonrpcserver.methods import global_methods

        commands = global_methods
    table = resolve(commands)
    title = os.environ.get("PLUGRPC_PLUGIN") or "plugin"
    document = discover_document(table, title)
    table[DISCOVER] = Handler(DISCOVER, lambda: document)
    sock, bound = listening_socket(path)
    # stderr is the plugin's log (the runtime tags each line); a no-op if logging is set up already.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
            runner.run(_Server(table, max_line, on_start).serve(sock))
    finally:
        sock.close()
        if bound is not None:
            remove_socket(bound)


def listening_socket(path: str | os.PathLike[str] | None = None) -> tuple[socket.socket, Path | None]:
    """The listening socket to serve on, and the path we bound (to remove at exit), if any."""
    fds = os.environ.get("LISTEN_FDS")
    pid = os.environ.get("LISTEN_PID")
    if fds is not None and (pid is None or pid == str(os.getpid())):
        # Consume the variables as sd_listen_fds(1) does, so our own children do not claim fd 3.
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
        if fds != "1":
            raise ConfigError(f"expected exactly one socket from the runtime, got LISTEN_FDS={fds!r}")
        try:
            return socket.socket(fileno=LISTEN_FDS_START), None
        except OSError as exc:
            raise ConfigError(f"LISTEN_FDS=1 but fd 3 is not a usable socket: {exc.strerror}") from exc
    target = path if path is not None else os.environ.get("PLUGRPC_SOCKET")
    if not target:
        raise ConfigError(
            "no socket to serve on: a plugin is meant to be started by `plugrpc run`, which hands it a "
            "listening socket as fd 3 (LISTEN_FDS=1); to run it by hand, pass serve(path=...) or set "
            "PLUGRPC_SOCKET=/path/to/plugin.sock"
        )
    bound = Path(target)
    return bind_socket(bound), bound


class _Server:
    """Owns the listening socket, the open connections, and graceful shutdown."""

    def __init__(self, table: dict[str, Handler], max_line: int, on_start: Callable[[], Any] | None = None) -> None:
        self.table = table
        self.max_line = max_line
        self.on_start = on_start
        self.connections: set[Connection] = set()
        self.closing = False
        self.outbox = Outbox()
        self._stop = asyncio.Event()

    async def serve(self, sock: socket.socket) -> None:
        """Startup, main loop (wait for a signal), shutdown: read top to bottom."""
        loop = asyncio.get_running_loop()
        await self._start_up()
        # Keep the backlog the runtime listened with: asyncio would listen again with only 100.
        talk.attach(loop)
        server = await loop.create_unix_server(lambda: Connection(self), sock=sock, backlog=BACKLOG)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        n = len(self.table) - 1  # rpc.discover aside
        log.info("serving %d command%s (pid %d)", n, "" if n == 1 else "s", os.getpid())
        _say_ready()
        try:
            await self._stop.wait()
            server.close()
            await self._shutdown()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await talk.detach()

    async def _start_up(self) -> None:
        """Run `on_start`; a failure ends the plugin (exit status 1), so the runtime's policy restarts it."""
        if self.on_start is None:
            return
        try:
            outcome = self.on_start()
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.exception("on_start failed; exiting")
            raise SystemExit(1) from None

    def _on_signal(self, signum: int) -> None:
        if not self._stop.is_set():
            log.info("%s: finishing in-flight calls, then exiting", signal.Signals(signum).name)
            self._stop.set()
        else:
            log.warning("%s again: cancelling in-flight calls", signal.Signals(signum).name)
            for conn in self.connections:
                conn.cancel_all()

    async def _shutdown(self) -> None:
        """No new connections or requests; wait for in-flight calls; flush and close."""
        self.closing = True
        for conn in self.connections:
            conn.flow.close()
        in_flight = [task for conn in self.connections for task in conn.running.values()]
        if in_flight:
            log.info("waiting for %d in-flight calls", len(in_flight))
            await asyncio.wait(in_flight)
        conns = list(self.connections)
        for conn in conns:
            conn.close()
        closed = [conn.closed for conn in conns]
        if closed:
            _, late = await asyncio.wait(closed, timeout=FLUSH_TIMEOUT)
            for conn in conns:
                if not conn.closed.done():
                    conn.abort()
            if late:
                await asyncio.wait(late)


def _say_ready() -> None:
    """READY=1 on $NOTIFY_SOCKET, if there is one; a runtime that cannot hear it is logged, not fatal."""
    try:
        sdnotify.notify("READY=1")
    except OSError as exc:
        log.warning("cannot say READY=1 on $NOTIFY_SOCKET (%s): %s", os.environ.get("NOTIFY_SOCKET"), exc)


class Connection(LineWriter, asyncio.Protocol):
    """One peer (usually the router): pipelined requests in, responses out in completion order."""

    def __init__(self, server: _Server) -> None:
        # Global state
        self._server = server
        self._loop = asyncio.get_running_loop()
        self.outbox = server.outbox
        # Per-connection state
        self.transport: asyncio.Transport | None = None
        self.flow = FlowControl()
        """Why the peer is not being read: it does not read our answers, or we are shutting down."""
        self._splitter = LineSplitter(server.max_line)
        self._table = {**server.table, CANCEL: Handler(CANCEL, self._cancel)}
        self._out: list[bytes] = []
        self.running: dict[Any, asyncio.Task[None]] = {}
        """Tasks of async/threaded calls, by request id (a fresh key for notifications and batches)."""
        self.closed: asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's methods but not its class.
        self.transport = self.flow.transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)
        if self._server.closing:
            self.flow.close()
        talk.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        connections = self._server.connections
        connections.discard(self)
        talk.closed(self, lambda: next(iter(connections), None))
        # Nobody is left to read these answers (the router sends rpc.cancel for the same reason).
        # EOF counts too: a half-close looks the same as a peer gone, and a gone peer's calls must end.
        self.cancel_all()
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        too_long = False
        try:
            lines = self._splitter.feed(data)
        except LineTooLong as exc:
            lines, too_long = exc.lines, True  # the complete requests before it are still answered
        answers: list[bytes] = []
        answer = answers.append
        INLINE.conn = self  # the connection of the inline handlers run below, for plugrpc.progress
        try:
            for line in lines:
                try:
                    msg = loads(line)
                except JSONDecodeError as exc:
                    answer(parse_error_line(exc))
                    continue
                outcome = dispatch(self._table, msg)
                if outcome is None:
                    continue
                if type(outcome) is dict or type(outcome) is list:
                    answer(encode(outcome))
                else:
                    self._start(outcome, msg.get("id", NOID) if type(msg) is dict else NOID)
        finally:
            INLINE.conn = None
        if too_long:
            answer(too_large_line(self._splitter.max_line))
        # Everything answered inline while handling this chunk leaves in one write, at once:
        # nothing else can join it (answers of async handlers are queued, see outbox.py).
        if answers:
            self.write_now(answers[0] if len(answers) == 1 else b"".join(answers))
        if too_long:
            self.close()

    def pause_writing(self) -> None:
        # Backpressure: a peer that does not read our responses gets no new requests read.
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def close(self) -> None:
        """Send what is buffered, then close (the transport flushes before it closes)."""
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def cancel_all(self) -> None:
        for task in self.running.values():
            task.cancel()

    def _start(self, pending: Outcome, id: Any) -> None:
        key = id if id is not NOID and id not in self.running else object()
        self.running[key] = self._loop.create_task(self._complete(pending, key, id))

    async def _complete(self, pending: Any, key: Any, id: Any) -> None:
        CURRENT.set(Current(self, id))  # in this task's context only: the call plugrpc.progress reports on
        try:
            outcome = await pending
        finally:
            del self.running[key]
        if outcome is not None:
            self.send(encode(outcome))

    def send(self, line: bytes) -> None:
        """Queue a line (an async completion, an event, progress); those of one loop turn leave in one write."""
        if self.transport is not None and not self.transport.is_closing():
            self.queue(line)

    def _cancel(self, id: Any) -> bool:
        """`rpc.cancel`: the router gave up on request `id`; stop its task if it still runs."""
        if not valid_id(id):
            raise RpcError(codes.INVALID_PARAMS, "Invalid params", "id must be a string, a number or null")
        task = self.running.get(id)
        if task is None:
            return False
        task.cancel()
        return True
