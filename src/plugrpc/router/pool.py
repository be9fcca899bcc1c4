"""The router's connections to one plugin: pipelining, id remapping, retries and timeouts.

A `PluginPool` owns up to `pool_size` `Upstream` connections to the plugin's socket. Every call
written to a connection gets a fresh integer id from that connection, so responses can never be
mixed up between clients; the client's own id is restored on the way back. State lives in two
places only, as in httpcore: `waiting` (calls not yet written, which may go to any connection)
and each connection's `pending` (calls written, which only that connection can answer). Calls
move between them in `_assign()`, which does no I/O.

A call is retried on another connection only while it is waiting. Once written, a plugin's
death fails it at once with -32001 (docs/design.md, "The router"): it may have run, and must not run twice.

A running plugin always has a connection open, calls or not, so that it can emit events: the
pool opens one when the plugin starts running and again after losing it. Notifications a plugin
sends (`rpc.event`, `rpc.progress`) go to the `EventHub`; they are told apart from answers only
after a line answers no call, so the answers' path does not look for them.

Notifications from clients are bounded as calls are, though nobody waits for them: one is dropped
(counted in the plugin's `CallStats.dropped`, logged at most once per `DROP_LOG_INTERVAL`) while
the plugin has `max_pending` calls, or while its connection's transport is paused, its buffer past
the high-water mark because the plugin does not read as fast as it is sent to. So a client
flooding a slow plugin with notifications holds no more of the router's memory than the
transport's high-water mark and the kernel's socket buffer.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import struct
import sys
import termios
from collections import deque
from pathlib import Path
from typing import Any, Final, cast

import orjson

from .. import codes
from ..manifest import PluginSpec
from ..outbox import LineWriter, Outbox
from ..patterns import Matcher
from ..process.supervisor import PluginState, Supervisor
from ..wire import ABSENT, JSONDecodeError, LineSplitter, LineTooLong, dumps, error_response, loads
from .deadline import overdue
from .events import EventHub
from .interfaces import INTERNAL, Call, Message, Sink, clock
from .stats import BUCKET_OF, DROP_LOG_INTERVAL, OUTCOMES, TABLE_LIMIT, CallStats, bucket

log = logging.getLogger("plugrpc.pool")

ABANDONED_RETENTION: Final = 60.0
"""Seconds a given-up call's id is remembered, so a late response is dropped, not taken as garbage."""
CONNECT_RETRY: Final = 0.05
"""Seconds before retrying a connect the kernel refused (backlog full, socket being replaced)."""
REOPEN_CAP: Final = 5.0
"""Most seconds between reopening the kept connection of a running plugin that keeps losing it."""
_RUNNING: Final = PluginState.RUNNING
_NEWLINE: Final = orjson.OPT_APPEND_NEWLINE
_dumps = orjson.dumps


def _kernel_unread(transport: asyncio.Transport) -> int:
    """Bytes in the kernel's send queue of a unix socket that its peer has not read (Linux's SIOCOUTQ), else 0."""
    sock = transport.get_extra_info("socket")
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])
    except (OSError, AttributeError, ValueError):
        return 0


def _response(msg: dict[str, Any]) -> dict[str, Any] | None:
    """A plugin's response rebuilt from its valid parts, or None when it is not JSON-RPC 2.0.

    Rebuilding drops members the spec does not define, so a client only ever gets a response
    with `jsonrpc`, exactly one of `result` or `error` (code, message, data) and `id`. The usual
    answer, exactly those three members with a result, is used as it is and never comes here.
    """
    if msg.get("jsonrpc") != "2.0":
        return None
    if "result" in msg:
        if "error" in msg:
            return None
        return {"jsonrpc": "2.0", "result": msg["result"], "id": None}
    err = msg.get("error")
    if type(err) is not dict or type(err.get("code")) is not int or type(err.get("message")) is not str:
        return None
    clean = {"code": err["code"], "message": err["message"]}
    if "data" in err:
        clean["data"] = err["data"]
    return {"jsonrpc": "2.0", "error": clean, "id": None}


class Upstream(LineWriter, asyncio.Protocol):
    """One pipelined connection to a plugin. Owns the ids of the calls written to it.

    A call is in flight from `send` until it leaves `pending` in `data_received`, `withdraw`,
    `expire` or `lost`: each tells the pool (`PluginPool.flight`), which alone counts them.
    """

    __slots__ = ("pool", "outbox", "transport", "pending", "abandoned", "splitter", "next_uid", "_out", "lost",
                 "paused", "resumed")

    def __init__(self, pool: PluginPool) -> None:
        self.pool = pool
        self.outbox = pool.outbox
        self.transport: asyncio.Transport | None = None
        # Calls written and not answered, by the id we gave them; insertion order is send order,
        # which the timeout sweep relies on.
        self.pending: dict[int, Call] = {}
        # Ids we gave up on (timeout, client gone), by when: their late responses are dropped.
        self.abandoned: dict[int, float] = {}
        self.splitter = LineSplitter(pool.max_line)
        self.next_uid = 1
        self._out: list[bytes] = []
        self.lost = False
        self.paused = False
        """The transport's buffer is past its high-water mark: the plugin does not read as fast as we write."""
        self.resumed = 0
        """Times the buffer drained below its low-water mark again, which only a plugin reading makes happen."""

    def __repr__(self) -> str:
        state = "lost" if self.lost else "paused" if self.paused else "ready" if self.transport else "connecting"
        return f"<Upstream {self.pool.name} {state} pending={len(self.pending)}>"

    # --- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not its subclasses

    def data_received(self, data: bytes) -> None:
        try:
            lines = self.splitter.feed(data)
        except LineTooLong:
            self.reset("sent a line longer than the maximum message size")
            return
        pending = self.pending
        pool = self.pool
        now = clock()  # when these answers arrived: one clock read for the whole chunk
        for line in lines:
            try:
                msg = loads(line)
            except JSONDecodeError:
                self.reset("sent a line that is not JSON")
                return
            uid = msg.get("id") if type(msg) is dict else None
            call = pending.pop(uid, None) if type(uid) is int else None
            if call is None:
                if type(uid) is int and self.abandoned.pop(uid, None) is not None:
                    continue
                if uid is None and type(msg) is dict and "method" in msg and "id" not in msg:  # rpc.event, ...
                    pool.notified(self, msg)
                    continue
                self.reset(f"sent something that answers no call it was given: {line[:200]!r}")
                return
            if len(msg) != 3 or "result" not in msg or msg.get("jsonrpc") != "2.0":  # not the usual answer
                response = _response(msg)
                if response is None:
                    pending[call.uid] = call  # back in place, so the reset fails it like the others
                    self.reset(f"sent an invalid JSON-RPC 2.0 response: {line[:200]!r}")
                    return
                msg = response
            pool.flight(-1)
            pool.finish(call, msg, now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.lost(self, "the plugin closed its connection with calls in flight")

    def pause_writing(self) -> None:
        # The plugin is not reading: calls keep queueing in the transport, bounded by max_pending;
        # notifications are dropped until it reads again.
        self.paused = True
        if log.isEnabledFor(logging.DEBUG):
            log.debug("plugin is not keeping up; buffering", extra={"plugin": self.pool.name})

    def resume_writing(self) -> None:
        self.paused = False
        self.resumed += 1

    def unread(self) -> int:
        """Bytes written to this connection that the plugin has not read: ours, and the kernel's send queue."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return 0
        return transport.get_write_buffer_size() + _kernel_unread(transport)

    # --- the hot path --------------------------------------------------------------------

    def send(self, call: Call) -> None:
        """Give `call` an id of this connection and write its request line (or queue it for the turn's write)."""
        uid = self.next_uid
        params = call.params
        try:
            if params is ABSENT:
                line = _dumps({"jsonrpc": "2.0", "method": call.method, "id": uid}, option=_NEWLINE)
            else:
                line = _dumps({"jsonrpc": "2.0", "method": call.method, "params": params, "id": uid},
                              option=_NEWLINE)
        except orjson.JSONEncodeError as exc:  # orjson reads 1024 levels of nesting but writes 254
            self.pool.refuse(call, f"params cannot be forwarded: {exc}")
            return
        self.next_uid = uid + 1
        call.uid = uid
        call.link = self
        self.pending[uid] = call
        if self.pool.flight(1) == 1:  # the only call in flight: no other request can join it
            self.write_now(line)
        else:
            self.queue(line)

    def notify(self, method: str, params: Any) -> None:
        """The router's own notification (`rpc.cancel`): never dropped, one per call at most."""
        if params is ABSENT:
            self.queue(dumps({"jsonrpc": "2.0", "method": method}))
        else:
            self.queue(dumps({"jsonrpc": "2.0", "method": method, "params": params}))

    # --- calls leaving without an answer ---------------------------------------------------

    def withdraw(self, call: Call, now: float) -> bool:
        """`Link.withdraw`: forget a written call, remember its id for a late answer, tell the plugin."""
        if self.pending.pop(call.uid, None) is None:
            return False
        self.pool.flight(-1)
        self.abandoned[call.uid] = now
        self.notify("rpc.cancel", {"id": call.uid})
        return True

    def expire(self, limit: float, now: float) -> list[Call]:
        """Withdraw the calls written before `limit` (pending is in send order) and return them."""
        expired = []
        for call in self.pending.values():
            if call.started > limit:
                break
            expired.append(call)
        for call in expired:
            self.withdraw(call, now)
        abandoned = self.abandoned
        old = []
        for uid, t in abandoned.items():  # insertion order is time order
            if t >= now - ABANDONED_RETENTION:
                break
            old.append(uid)
        for uid in old:
            del abandoned[uid]
        return expired

    def reset(self, reason: str) -> None:
        """Drop a connection whose plugin broke the protocol; its calls fail in `lost`."""
        log.warning("plugin %s; resetting its connection", reason, extra={"plugin": self.pool.name})
        self.abort(f"the plugin {reason}")

    def abort(self, reason: str) -> None:
        """Close at once; the pool fails the calls written to this connection with `reason`."""
        if self.transport is not None:
            self.transport.abort()
        if not self.lost:
            self.lost = True
            self.pool.lost(self, reason)

    def take_all(self) -> list[Call]:
        """Every call still written to this connection, which is gone: they leave flight here."""
        calls = list(self.pending.values())
        self.pending.clear()
        self.pool.flight(-len(calls))
        return calls


class PluginPool:
    """Calls to one `mode = "rpc"` plugin, over its connections (see the module docstring)."""

    def __init__(self, spec: PluginSpec, socket_path: Path, supervisor: Supervisor, outbox: Outbox,
                 max_line: int, events: EventHub | None = None) -> None:
        # configuration
        self.spec = spec
        self.name = spec.name
        self.exported = spec.exported
        self.socket_path = socket_path
        self.supervisor = supervisor
        self.outbox = outbox
        self.max_line = max_line
        self._capacity = spec.max_inflight or sys.maxsize
        self._max_pending = spec.max_pending
        self._track_idle = spec.idle_stop > 0
        self.events = events if events is not None else EventHub(1000, outbox)
        self.declared = Matcher(spec.events)
        """The event names the manifest lets the plugin emit."""
        # state
        self.conns: list[Upstream] = []
        self.waiting: deque[Call] = deque()
        self.inflight = 0
        """Calls written to a connection and not yet answered: changed only by `flight`."""
        self.stats = CallStats(spec.exports)
        self._fast: Upstream | None = None
        """The connection to use without `_assign()`: set while the pool has one ready connection."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._reopen_delay = CONNECT_RETRY
        """Seconds before reopening the kept connection after losing it; doubles while it keeps being lost."""
        self._drop_logged = -DROP_LOG_INTERVAL
        """When dropping a client's notification was last logged."""

    def __repr__(self) -> str:
        ready = sum(1 for c in self.conns if c.transport is not None)
        return (f"<PluginPool {self.name} [{ready} ready, {len(self.conns) - ready} connecting,"
                f" {self.inflight} in flight, {len(self.waiting)} waiting]>")

    # --- Target --------------------------------------------------------------------------

    def submit(self, call: Call) -> None:
        """Route a call: straight to the ready connection when there is room, else via `_assign()`."""
        call.target = self
        sup = self.supervisor
        if sup.state is not _RUNNING:
            if not sup.available:
                self.fail(call, codes.PLUGIN_UNAVAILABLE, sup.unavailable_reason())
                return
            sup.ensure_running()
        if self._track_idle and call.id is not INTERNAL:  # a liveness ping is not a use of the plugin
            sup.touch()
        waiting = self.waiting
        if self.inflight + len(waiting) >= self._max_pending:
            self.fail(call, codes.OVERLOADED, f"plugin {self.name} has {self.spec.max_pending} calls pending")
            return
        conn = self._fast
        if conn is not None and not waiting and len(conn.pending) < self._capacity:
            conn.send(call)
            return
        waiting.append(call)
        self._run_assign()

    def notify(self, method: str, params: Any, sink: Sink | None = None) -> None:
        """Forward a notification on a ready connection, unless the plugin cannot take more (module docstring).

        With no ready connection it is dropped too: nobody is there to tell.
        """
        if self.supervisor.available:
            self.supervisor.ensure_running()
        conn = self._fast or next((c for c in self.conns if c.transport is not None and not c.lost), None)
        if conn is None:
            self._dropped("the plugin has no connection open")
        elif conn.paused:
            self._dropped("the plugin does not read as fast as it is sent to")
        elif self.inflight + len(self.waiting) >= self._max_pending:
            self._dropped(f"it has {self.spec.max_pending} calls pending")
        else:
            msg = {"jsonrpc": "2.0", "method": method} if params is ABSENT else \
                {"jsonrpc": "2.0", "method": method, "params": params}
            try:
                line = _dumps(msg, option=_NEWLINE)
            except orjson.JSONEncodeError:
                self._dropped("its params cannot be forwarded")
                return
            conn.write_now(line)  # now, so the transport says at once when it is past its high-water mark

    def _dropped(self, why: str) -> None:
        """Count a client's notification not forwarded, and say so at most once per `DROP_LOG_INTERVAL`."""
        self.stats.dropped += 1
        now = clock()
        if now - self._drop_logged >= DROP_LOG_INTERVAL:
            self._drop_logged = now
            log.warning("dropping notifications to this plugin: %s (%d so far; router.plugins counts them)", why,
                        self.stats.dropped, extra={"plugin": self.name})

    def unread(self) -> int:
        """Bytes written to the plugin's connections that it has not read yet (the liveness check's measure)."""
        return sum(conn.unread() for conn in self.conns)

    def resumed(self) -> int:
        """How often a connection's full buffer drained: it grows only while the plugin reads."""
        return sum(conn.resumed for conn in self.conns)

    def cancel(self, call: Call) -> None:
        """The caller is gone: stop waiting for `call`, and tell the plugin if it already has it."""
        call.sink = None
        link = call.link
        if link is not None and link.withdraw(call, clock()):
            self._run_assign()

    # --- completion ----------------------------------------------------------------------

    def flight(self, change: int) -> int:
        """`change` calls entered a connection's `pending` (written) or, negative, left it: the count in flight."""
        self.inflight += change
        return self.inflight

    def finish(self, call: Call, msg: Message, now: float) -> None:
        """Deliver the answer, which arrived at `now`, of a written call that has just left flight."""
        sink = call.sink
        if sink is not None:  # Call.finish, inlined: this runs once per call
            call.sink = None
            sink.deliver(call, msg)  # first: the caller's wait ends before our bookkeeping
            if call.id is not INTERNAL:
                # CallStats.record, inlined: this runs once per call.
                stats = self.stats
                stats.methods[call.method] += 1  # an exported method: no other reaches a pool
                if "error" in msg:
                    stats.failed(call.method, "error")
                us = int((now - call.started) * 1_000_000)
                stats.us += us
                stats.hist[BUCKET_OF[us] if us < TABLE_LIMIT else bucket(us)] += 1
        if self.waiting:
            self._run_assign()

    def refuse(self, call: Call, reason: str) -> None:
        """`call` could not be written (its params cannot be encoded): -32600."""
        call.finish(error_response(call.id, codes.INVALID_REQUEST, data={"plugin": self.name, "reason": reason}))

    def fail(self, call: Call, code: int, reason: str) -> None:
        """Answer `call` with one of the router's own errors (-32001..-32004)."""
        if call.sink is None:
            return
        if call.id is not INTERNAL:
            self.stats.record(call.method, clock() - call.started, OUTCOMES[code])
        call.finish(error_response(call.id, code, data={"plugin": self.name, "reason": reason}))

    def expire(self, call: Call) -> None:
        """Drop a call that waited past its caller's deadline: -32002, counted, never written."""
        now = clock()
        found = overdue(call.sink, now)
        if found is None:
            return
        owner, late = found
        owner.expired(self.name, late)
        self.fail(call, codes.CALL_TIMEOUT, f"its caller's deadline passed {late:.3f} s ago while it waited in the "
                                            "router; it was not run")

    def lost(self, conn: Upstream, reason: str) -> None:
        """A connection closed: fail what it was given, keep what was waiting for another one."""
        if conn in self.conns:
            self.conns.remove(conn)
        if self._fast is conn:
            self._fast = None
        calls = conn.take_all()
        if calls:
            log.warning("%d call(s) failed: %s", len(calls), reason, extra={"plugin": self.name})
        for call in calls:
            self.fail(call, codes.PLUGIN_UNAVAILABLE, reason)
        if self.waiting and not self.closed:
            self._run_assign()
        elif not self.conns and not self.closed:
            self._loop.call_later(self._reopen_delay, self._keep_open)
            self._reopen_delay = min(self._reopen_delay * 2, REOPEN_CAP)

    # --- assignment (no I/O) and its effects ---------------------------------------------

    def _assign(self) -> tuple[list[tuple[Upstream, Call]], int, list[Call]]:
        """Match waiting calls to ready connections with room; say how many connections to open, and which
        calls are past their caller's deadline (router/deadline.py) and must not start.

        Pure bookkeeping: the caller writes the matched calls, opens the connections, drops the late.
        """
        ready = [c for c in self.conns if c.transport is not None and not c.lost]
        load = {c: len(c.pending) for c in ready}
        sends: list[tuple[Upstream, Call]] = []
        late: list[Call] = []
        waiting = self.waiting
        now = clock()
        while waiting:
            call = waiting[0]
            if call.sink is None:  # cancelled or timed out while waiting
                waiting.popleft()
                continue
            if overdue(call.sink, now) is not None:
                late.append(waiting.popleft())
                continue
            room = [c for c in ready if load[c] < self._capacity]
            if not room:
                break
            best = min(room, key=load.__getitem__)
            waiting.popleft()
            load[best] += 1
            sends.append((best, call))
        opens = self.spec.pool_size - len(self.conns) if (waiting or not self.conns) else 0
        return sends, max(opens, 0), late

    def _run_assign(self) -> None:
        if self.closed or self.supervisor.holding:  # a notify plugin's calls wait for its READY=1
            return
        sends, opens, late = self._assign()
        for call in late:
            self.expire(call)
        for conn, call in sends:
            conn.send(call)
        for _ in range(opens):
            self._open()

    def _open(self) -> None:
        conn = Upstream(self)
        self.conns.append(conn)
        task = self._loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: Upstream) -> None:
        try:
            await self._loop.create_unix_connection(lambda: conn, str(self.socket_path))
        except OSError as exc:
            self.conns.remove(conn)
            self._connect_failed(exc)
            return
        if self.closed:
            conn.abort("the router is shutting down")
            return
        self._fast = conn if self.spec.pool_size == 1 else None
        self._run_assign()

    def _connect_failed(self, exc: OSError) -> None:
        """The plugin's socket refused us: retry shortly while the plugin may come back, else fail."""
        if self.closed:
            return
        if self.supervisor.available and self.socket_path.exists():
            if log.isEnabledFor(logging.DEBUG):
                log.debug("connect failed (%s), retrying", exc, extra={"plugin": self.name})
            self._loop.call_later(CONNECT_RETRY, self._run_assign)
            return
        self.fail_waiting(f"cannot connect to the plugin's socket: {exc.strerror or exc}")

    # --- what the plugin says of its own accord ------------------------------------------

    def notified(self, conn: Upstream, msg: dict[str, Any]) -> None:
        """A notification from the plugin on `conn`: an event, or progress of a call written to `conn`.

        Anything else is dropped and logged once; the connection is never reset for it.
        """
        method, params = msg.get("method"), msg.get("params")
        if msg.get("jsonrpc") != "2.0":
            self.events.reject(self.name, "jsonrpc", f'sent a notification without "jsonrpc": "2.0": {msg!r:.200}')
        elif method == "rpc.event":
            self.events.emit(self.name, self.declared, params)
        elif method != "rpc.progress":
            self.events.reject(self.name, f"method:{method!r:.100}", f"sent a notification the router does not "
                               f"take ({method!r:.100}; a plugin may send rpc.event and rpc.progress)")
        elif type(params) is not dict or "value" not in params or type(params.get("id")) is not int:
            self.events.reject(self.name, "malformed-progress", 'sent an rpc.progress whose params are not '
                               f'{{"id": <the id of the request>, "value": ...}}: {params!r:.200}')
        elif (call := conn.pending.get(params["id"])) is None:
            self.events.reject(self.name, "progress-id", f"sent rpc.progress for id {params['id']}, which is not in "
                               "flight on that connection (answered already, or never sent)")
        else:
            self.events.progress(call, params["value"])

    def state_changed(self, state: PluginState) -> None:
        """The supervisor's state changed: a plugin that starts running gets its kept connection."""
        if state is _RUNNING:
            self.events.started(self.name)
            self._reopen_delay = CONNECT_RETRY
            self._keep_open()

    def _keep_open(self) -> None:
        """Open the connection a running plugin emits events on, unless it has one (docs/design.md, "Events")."""
        if not self.conns and not self.closed and self.supervisor.state is _RUNNING:
            self._run_assign()

    # --- supervision and housekeeping ----------------------------------------------------

    def fail_waiting(self, reason: str) -> None:
        """Fail every call not yet written (the plugin cannot take them)."""
        while self.waiting:
            self.fail(self.waiting.popleft(), codes.PLUGIN_UNAVAILABLE, reason)

    def fail_all(self, reason: str) -> None:
        """Close every connection and fail every call, written or waiting (plugin given up on, shutdown)."""
        self.abort_connections(reason)
        self.fail_waiting(reason)

    def abort_connections(self, reason: str) -> None:
        """Close every connection, failing the calls written to them; waiting ones go to the next process."""
        for conn in list(self.conns):
            conn.abort(reason)

    def hand_over(self) -> list[Call]:
        """Close the pool and give up every call not yet answered, for another target to run.

        Only for a process that never read its socket (a core0 binary started as a server, which
        answers `missing command` and exits): calls written to it were never run, so running them
        elsewhere runs them once.
        """
        self.closed = True
        calls: list[Call] = []
        for conn in list(self.conns):
            calls.extend(conn.take_all())
            conn.abort("the plugin runs in exec mode now")
        calls.extend(self.waiting)
        self.waiting.clear()
        for call in calls:
            call.link = None
        return [call for call in calls if call.sink is not None]

    def has_room(self) -> bool:
        """Whether a call submitted now would be written at once: none waits and a connection has room
        (or none is open yet). The liveness check pings only then, never a plugin busy up to max_inflight."""
        if self.waiting:
            return False
        ready = [c for c in self.conns if c.transport is not None]
        return not ready or any(len(c.pending) < self._capacity for c in ready)

    def wake(self) -> None:
        """The plugin became ready (a notify plugin said READY=1): write the calls that waited for it."""
        if self.waiting:
            self._run_assign()

    def sweep(self, now: float) -> int:
        """Fail calls past their timeout (-32002) and forget old abandoned ids; return calls finished.

        Every call to a plugin has the same timeout, so `pending` (in send order) and `waiting`
        (in arrival order) are sorted by deadline: each scan stops at the first call still in time.
        """
        if self._track_idle and self._serving():
            self.supervisor.touch()  # a call longer than idle_stop must not be stopped mid-call
        limit = now - self.spec.timeout
        reason = f"no response within {self.spec.timeout:g} s"
        for conn in self.conns:
            for call in conn.expire(limit, now):
                self.fail(call, codes.CALL_TIMEOUT, reason)
        waiting = self.waiting
        while waiting and (waiting[0].sink is None or waiting[0].started <= limit):
            self.fail(waiting.popleft(), codes.CALL_TIMEOUT, reason)
        if self.waiting and not self.conns:
            self._run_assign()
        return self.stats.calls

    def busy(self) -> int:
        """Calls written or waiting: what shutdown waits for."""
        return self.inflight + len(self.waiting)

    def _serving(self) -> bool:
        """Whether a caller's call (not one of the router's own, such as a ping) is written or waiting."""
        calls = itertools.chain(self.waiting, *(conn.pending.values() for conn in self.conns))
        return any(call.id is not INTERNAL for call in calls)

    def status(self) -> dict[str, Any]:
        """Figures for `router.plugins`."""
        return {
            "inflight": self.inflight,
            "waiting": len(self.waiting),
            "connections": sum(1 for c in self.conns if c.transport is not None),
            **self.stats.snapshot(),
        }

    async def aclose(self) -> None:
        """Close connections and fail what is left; used at shutdown after calls drained."""
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.fail_all("the router is shutting down")
