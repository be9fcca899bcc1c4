"""The router's side of a `transport = "stdio"` plugin: a JSON-RPC server on its stdin and stdout (MCP servers).

Such a process has exactly one connection, its pipes, which exists from its spawn to its exit and
cannot be reopened. `StdioPool` is a `PluginPool` whose one `Upstream` is made at each spawn over
the process's pipes (`PipeConnection`) instead of opened on a socket: pipelining, id remapping,
timeouts, bounds and statistics are the pool's own. At each start the pool makes the manifest's
handshake on that connection before any call is written (the supervisor holds calls until then);
the answer is kept for `router.plugins`, and a failed or unanswered handshake gets the process
replaced. A server that breaks the protocol on its stdout is replaced too: its calls in flight
fail -32001 and the calls waiting go to the next process.

What the server says of its own accord: a notification is an event named by its method
(`notifications/resources/updated`), declared under `events` as any; `rpc.event` and
`rpc.progress` mean what they mean for any plugin. A request to the router is answered at once,
`ping` with `{}` and anything else -32601, each method logged the first time.

A socket plugin's path never comes here: these are subclasses, and the router picks the class
once per plugin.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final, cast

from .. import codes
from ..manifest import PluginSpec
from ..outbox import Outbox
from ..process.child import Child
from ..process.stdio import PipeConnection
from ..process.supervisor import PluginState, Supervisor
from ..wire import ABSENT, JSONDecodeError, LineSplitter, LineTooLong, dumps, error_response, loads
from .events import EventHub
from .interfaces import INTERNAL, Call, Message, clock
from .pool import PluginPool, Upstream

log = logging.getLogger("plugrpc.stdio")

PLUGRPC_NOTIFICATIONS: Final = frozenset({"rpc.event", "rpc.progress"})
"""Notifications that mean for a stdio server what they mean for any plugin (not events named by their method)."""
ASKED_LOG_LIMIT: Final = 100
"""Methods of requests from a server logged once each; past that many, no more are logged."""


class StdioUpstream(Upstream):
    """The one connection to a stdio server. Requests it sends take its ids, not ours, so they are taken
    out before the lines reach `Upstream`, which would read their ids as answers."""

    __slots__ = ("child", "lines")

    def __init__(self, pool: StdioPool, child: Child) -> None:
        super().__init__(pool)
        self.child = child
        self.lines = LineSplitter(pool.max_line)

    def data_received(self, data: bytes) -> None:
        try:
            lines = self.lines.feed(data)
        except LineTooLong:
            self.reset("wrote a line on stdout longer than the maximum message size")
            return
        passed: list[bytes] = []
        for line in lines:
            try:
                msg = loads(line)
            except JSONDecodeError:
                self._pass(passed)  # the answers before it are good
                if not self.lost:
                    self.reset(f"wrote a line on stdout that is not JSON: {line[:200]!r}")
                return
            if type(msg) is dict and "method" in msg and "id" in msg:
                cast(StdioPool, self.pool).asked(self, msg)
            else:
                passed.append(line)
        self._pass(passed)

    def _pass(self, lines: list[bytes]) -> None:
        if lines and not self.lost:
            Upstream.data_received(self, b"\n".join(lines) + b"\n")

    def reset(self, reason: str) -> None:
        """The server broke the protocol: drop the connection, and the process with it (its pipes are all it has)."""
        super().reset(reason)
        self.pool.supervisor.fault(self.child, "protocol", reason)

    def unread(self) -> int:
        transport = self.transport
        extra = transport.pipe_unread() if isinstance(transport, PipeConnection) else 0
        return super().unread() + extra


class StdioPool(PluginPool):
    """Calls to one stdio server over the connection each of its processes comes with (module docstring)."""

    def __init__(self, spec: PluginSpec, socket_path: Path, supervisor: Supervisor, outbox: Outbox,
                 max_line: int, events: EventHub | None = None) -> None:
        super().__init__(spec, socket_path, supervisor, outbox, max_line, events)
        self.handshake: Any = None
        """The current process's answer to its handshake (None before it answered)."""
        self._asked: set[str] = set()
        supervisor.attach = self.attach

    async def attach(self, child: Child) -> None:
        """A process was spawned: connect to its pipes and make the handshake (`Supervisor.attach`)."""
        self.handshake = None
        conn = StdioUpstream(self, child)
        await child.connect_stdio(conn)
        if self.closed:
            conn.abort("the router is shutting down")
            return
        self.conns.append(conn)
        spec = self.spec.handshake
        if spec is None:
            self.supervisor.ready(child)
            return
        params = ABSENT if spec.params is None else spec.params
        call = Call(_Handshake(self, conn), INTERNAL, spec.method, params, clock())
        call.target = self
        conn.send(call)

    def shaken(self, conn: StdioUpstream, msg: Message) -> None:
        """The handshake's answer: ready, or the process is replaced saying why (the reason calls then fail with)."""
        spec = self.spec.handshake
        assert spec is not None
        error = msg.get("error")
        if error is None:
            self.handshake = msg.get("result")
            if spec.notify is not None:
                conn.notify(spec.notify, ABSENT)
            self.supervisor.ready(conn.child)
        elif error.get("code") == codes.CALL_TIMEOUT:
            self.supervisor.fault(conn.child, "handshake",
                                  f"no answer to its handshake ({spec.method}) within {self.spec.timeout:g} s")
        elif error.get("code") != codes.PLUGIN_UNAVAILABLE:  # else its process ended, and its exit says why
            self.supervisor.fault(conn.child, "handshake", f"its handshake ({spec.method}) failed: {error!r:.300}")

    def _open(self) -> None:
        """Nothing to open: a stdio server's one connection comes with its process (`attach`)."""

    def state_changed(self, state: PluginState) -> None:
        if state is PluginState.RUNNING:
            self._fast = self.conns[-1] if self.conns else None
        super().state_changed(state)

    def notified(self, conn: Upstream, msg: dict[str, Any]) -> None:
        """A notification from the server: an event named by its method (`rpc.event`, `rpc.progress`: as for any)."""
        method = msg.get("method")
        if type(method) is str and method not in PLUGRPC_NOTIFICATIONS and msg.get("jsonrpc") == "2.0":
            self.events.emit(self.name, self.declared, {"name": method, "data": msg.get("params")})
        else:
            super().notified(conn, msg)

    def asked(self, conn: StdioUpstream, msg: dict[str, Any]) -> None:
        """A request from the server to the router: answered at once, `ping` with `{}`, anything else -32601."""
        method, id = msg.get("method"), msg.get("id")
        if method == "ping":
            answer: Message = {"jsonrpc": "2.0", "id": id, "result": {}}
        else:
            answer = error_response(id, codes.METHOD_NOT_FOUND, data={
                "plugin": self.name, "reason": "the router answers a server's ping and nothing else"})
        key = repr(method)[:100]
        if key not in self._asked and len(self._asked) < ASKED_LOG_LIMIT:
            self._asked.add(key)
            log.log(logging.INFO if method == "ping" else logging.WARNING,
                    "the server asked the router %s; answered %s (said once per method)", key,
                    "{}" if method == "ping" else "-32601", extra={"plugin": self.name})
        conn.queue(dumps(answer))

    def status(self) -> dict[str, Any]:
        return {**super().status(), "handshake": self.handshake}


class _Handshake:
    """The sink of a handshake: its answer goes to the pool, not to a caller."""

    __slots__ = ("pool", "conn")

    def __init__(self, pool: StdioPool, conn: StdioUpstream) -> None:
        self.pool = pool
        self.conn = conn

    def track(self, call: Call) -> None:
        pass

    def deliver(self, call: Call, msg: Message) -> None:
        self.pool.shaken(self.conn, msg)

    def reply(self, msg: Message) -> None:
        self.pool.shaken(self.conn, msg)

    def cancel(self, id: Any) -> bool:
        return False
