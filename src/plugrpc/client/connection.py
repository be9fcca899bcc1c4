"""The protocol under a `Client`: one connection to a router (or to a plugin, handed over by
`router.connect`), its requests written, its responses matched to futures by id, and the
notifications the router sends it (events of its subscriptions, progress of its calls).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Final

from jsonrpcclient.requests import notification

from .. import codes
from ..errors import ConnectionLost, PluginUnavailable, RpcError
from ..outbox import LineWriter, Outbox
from ..wire import DEFAULT_MAX_LINE, JSONDecodeError, LineSplitter, LineTooLong, dumps, loads
from .common import CLOSED, Progress, Subscription, response_error

log = logging.getLogger("plugrpc.client")

FLUSH_EVERY: Final = 64
"""Requests queued in one loop turn leave in one write, but a big burst leaves every 64 lines,
so the peer starts on it while the rest is still being queued (measured: less CPU and wall
time than one write per call or per turn at 10-1000 concurrent calls)."""
EARLY_LIMIT: Final = 10_000
"""Events kept for subscriptions whose `router.subscribe` answer is still on its way."""


class Connection(LineWriter, asyncio.Protocol):
    """The protocol under a Client: writes requests, matches responses to futures by id."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.outbox = Outbox()
        self.transport: asyncio.Transport | None = None
        self._splitter = LineSplitter(DEFAULT_MAX_LINE)
        self._out: list[bytes] = []
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.lost: str | None = None
        """Why the connection is gone, once it is; every later call raises ConnectionLost with it."""
        self._peer_error: RpcError | None = None
        """The last error the peer sent about no call in particular, often why it then closes."""
        self._closed: asyncio.Future[None] = loop.create_future()
        # notifications (client/events.py): none come before the router is asked for them
        self.subscriptions: dict[int, Subscription] = {}
        self.subscribing = 0
        """`router.subscribe` calls on their way: events for a number not known yet wait in `early`."""
        self.early: dict[int, list[dict[str, Any]]] = {}
        self.progress: dict[int, Progress] = {}
        """Calls made with `progress=`, by id."""
        self.progress_on = False
        self._tasks: set[asyncio.Future[Any]] = set()

    def call(self, id: int, line: bytes) -> asyncio.Future[Any]:
        """Queue a request and return the future its response will resolve."""
        if self.lost is not None:
            raise ConnectionLost(self.lost)
        future = self.pending[id] = self.loop.create_future()
        if len(self.pending) == 1:  # the only call in flight: nothing can join it, send it now
            self.write_now(line)
        else:
            self._send(line)
        return future

    def notify(self, method: str, params: Any) -> None:
        if self.lost is not None:
            raise ConnectionLost(self.lost)
        self._send(dumps(notification(method, params)))

    async def close(self) -> None:
        if self.lost is None:
            self.lost = CLOSED
            self.flush()
            assert self.transport is not None
            self.transport.close()
        await self._closed

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            why = f"connection lost: {exc}" if exc is not None else "the peer closed the connection"
            self.lost = f"{why} after reporting: {self._peer_error}" if self._peer_error else why
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(self.lost, self._peer_error))
        for sub in self.subscriptions.values():
            sub._end(ConnectionLost(self.lost, self._peer_error))
        self._closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            lines = self._splitter.feed(data)
        except LineTooLong as exc:
            self._fail(f"a response exceeded {self._splitter.max_line} bytes ({exc})")
            return
        for line in lines:
            try:
                msg = loads(line)
            except JSONDecodeError as exc:
                self._fail(f"the peer sent a line that is not JSON: {exc}")
                return
            if type(msg) is list:  # a peer may answer pipelined requests with a batch
                for response in msg:
                    self._resolve(response)
            else:
                self._resolve(msg)

    # Internals

    def _resolve(self, msg: Any) -> None:
        try:
            future = self.pending.pop(msg["id"], None)
        except (KeyError, TypeError) as exc:  # not an object, no id, or an id no call can have
            if type(msg) is dict and "method" in msg and "id" not in msg:
                self._notified(msg)
                return
            self._fail(f"the peer sent a malformed response {msg!r:.300}: {exc!r}")
            return
        if future is None:
            self._unmatched(msg)
        elif future.done():  # timed out just now
            pass
        elif "result" in msg:
            # The hot path takes the result as is; building an `Ok` per call would cost ~8%.
            future.set_result(msg["result"])
        else:
            future.set_exception(response_error(msg))

    def _notified(self, msg: dict[str, Any]) -> None:
        """A notification from the router: an event for a subscription, or progress of a call."""
        method = msg["method"]
        params: Any = msg.get("params")  # any JSON: a malformed one raises below and is ignored
        try:
            if method == "rpc.event":
                sid = params["subscription"]
                sub = self.subscriptions.get(sid)
                if sub is not None:
                    sub._put(params)
                elif self.subscribing and sum(map(len, self.early.values())) < EARLY_LIMIT:
                    self.early.setdefault(sid, []).append(params)
            elif method == "rpc.progress":
                callback = self.progress.get(params["id"])
                if callback is not None:
                    self._report(callback, params["value"])
        except (KeyError, TypeError):
            if log.isEnabledFor(logging.DEBUG):
                log.debug("ignored a malformed notification: %r", msg)

    def _report(self, callback: Progress, value: Any) -> None:
        try:
            outcome = callback(value)
            if inspect.isawaitable(outcome):
                task = asyncio.ensure_future(outcome)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except Exception:
            log.exception("a progress callback failed")

    def _unmatched(self, msg: dict[str, Any]) -> None:
        """A response to no call of ours: a call we gave up on, or an error about no request (id null)."""
        if msg["id"] is None and "error" in msg:
            # Kept, not logged: it is usually why the peer closes next, and goes with ConnectionLost then.
            self._peer_error = response_error(msg)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("the peer reported an error about no call in particular: %s", self._peer_error)

    def _fail(self, why: str) -> None:
        log.error("%s; closing the connection", why)
        self.lost = why
        if self.transport is not None:
            self.transport.abort()

    def _send(self, line: bytes) -> None:
        """Queue a line; the lines of one loop turn leave in one write (or every FLUSH_EVERY)."""
        self.queue(line)
        if len(self._out) >= FLUSH_EVERY:
            self.flush()


class DirectConnection(Connection):
    """A connection to one plugin that the router handed over: when it ends, calls in flight fail -32001."""

    def __init__(self, loop: asyncio.AbstractEventLoop, plugin: str) -> None:
        super().__init__(loop)
        self.plugin = plugin

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost != CLOSED:
            why = self.lost or (f"connection lost: {exc}" if exc is not None else "end of file")
            pending, self.pending = self.pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(lost_error(self.plugin, why))
        super().connection_lost(exc)


def lost_error(plugin: str, why: str) -> PluginUnavailable:
    """What a call in flight on a direct connection raises when the connection ends."""
    return PluginUnavailable(codes.PLUGIN_UNAVAILABLE, codes.MESSAGES[codes.PLUGIN_UNAVAILABLE], {
        "plugin": plugin, "direct": "lost", "reason": (
            f"the direct connection to plugin {plugin} ended with the call in flight ({why}): the plugin stopped, "
            "restarted or was changed; the call may have run, so it is not made again")})
