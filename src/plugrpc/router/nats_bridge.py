"""The router on NATS (docs/design.md, "NATS: beyond one machine"): the socket's calls, from anywhere.

With `plugrpc run --nats URL`, a `NatsBridge` connects out to NATS beside the unix socket and serves

- `plugrpc.call.NAME`: a request or a batch, answered exactly as on the socket;
- `plugrpc.any.PLUGIN` for every plugin the router runs: NATS gives each request to one of the
  routers that have the plugin (they all subscribe in queue group `plugrpc`);
- the Services API (ADR-32) as service `plugrpc` (router/nats_service.py): `$SRV.PING|INFO|STATS
  [.plugrpc[.ID]]` answer with the router's name, host and plugins in the metadata, and what each
  endpoint answered.

Each message is parsed once and goes to `Router.handle(msg, sink)` with a `NatsRequest` as its
sink (a batch through batch.py's `Batch`, as on the socket); the answer is published on the
message's reply subject by one publisher task, so a burst of answers costs one wake-up. Only
exported methods and the read-only built-ins (`READ_ONLY`) are reachable. The calls in flight
from NATS count against the same `max_inflight_per_client` as one socket connection's: at the
limit the bridge takes no message until half of them are answered; what piles up beyond a
subscription's bound (as many again) is answered -32003.

NATS going away never touches the socket: nats-py reconnects every second and replays the
subscriptions; calls in flight keep running and their answers go out once NATS is back. A
manifest reload registers a new service instance (ADR-32 metadata is immutable) with the new
plugins' subjects, then stops the old one: both subscribe in the queue group, so no request is
missed or taken twice in between.

Not nats.micro: nats-py awaits a subscription's handler one message at a time, so a handler must
return before the plugin answers (else calls run one by one), and micro's `Request` hides the
reply subject that tells a notification and that the answer is published to later; nor can it
drop an endpoint on reload. Our answers follow its ADR-32 message types (the tests read them
with nats.micro's own `from_dict`).

Every event the router accepts from its plugins is published on `plugrpc.event.NAME.PLUGIN.EVENT`
with the params of `rpc.event` (without `subscription`), by the same publisher: at most once, as
on the socket; an event over the server's payload limit, or one that comes while NATS is away,
is dropped and counted (logged once per outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Final

import orjson
from nats.errors import Error as NatsError
from nats.errors import SlowConsumerError

from .. import codes
from ..config import Config
from ..manifest import READ_ONLY, RESERVED_NAMES
from ..nats_link import (
    any_subject,
    call_subject,
    connect,
    event_subject,
    redacted,
    services,
)
from ..version import __version__
from ..wire import JSONDecodeError, error_response, loads, request_problem
from .batch import Batch, unencodable
from .deadline import Expired
from .interfaces import Call, Message, Sink
from .nats_service import Endpoint, Service

if TYPE_CHECKING:
    from nats.aio.client import Client as Nats

    from .events import Event
    from .view import RouterView

log = logging.getLogger("plugrpc.nats")

"""The built-ins reachable over NATS: they change nothing (not `router.reload`, not `rpc.cancel`)."""
NAME_CHECK: Final = 0.5
"""Seconds a joining router listens for others with its name, at most (none at all: no wait)."""
RETRY: Final = 1.0
"""Seconds before registering again after the connection went while subscribing."""
CLOSE_WAIT: Final = 2.0
"""Seconds shutdown waits for the last answers to leave before it closes the connection."""
_dumps = orjson.dumps


class NatsBridge:
    """The router's NATS side: connection, service registration, flow control and the publisher."""

    def __init__(self, router: RouterView, config: Config) -> None:
        assert config.nats is not None and config.name is not None
        # configuration
        self.router = router
        self.handle = router.handle
        self.url = config.nats
        self.name = config.name
        self.creds = config.nats_creds
        self.ca = config.nats_ca
        self.host = socket.gethostname()
        self.limit = config.max_inflight_per_client
        self.resume_at = self.limit // 2
        self.max_line = config.max_line
        self.grace = config.shutdown_grace
        self.ping_interval = config.nats_ping_interval
        self.max_pings_out = config.nats_max_pings_out
        # the connection
        self.nc: Nats | None = None
        self.max_payload = 1 << 20
        """The server's limit on a message (its INFO's max_payload), learnt on connect."""
        self.connected = asyncio.Event()
        self.service: Service | None = None
        self._changed = asyncio.Event()
        self._said: set[str] = set()
        """Errors logged since the last (re)connect: each is logged once per outage."""
        self._closing = False
        # calls in flight from NATS, and the answers waiting for the publisher
        self.inflight = 0
        self._room: asyncio.Future[None] | None = None
        self._out: list[tuple[str, bytes]] = []
        self._wake: asyncio.Future[None] | None = None
        self._unsent = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.events_dropped = 0
        """Events not published: NATS away, or over its payload limit."""
        self.expired = Expired()
        """Calls dropped past their deadline (router/deadline.py)."""
        router.on_routes.append(self._changed.set)
        self._unlisten = router.events.listen(self._event)

    def __repr__(self) -> str:
        state = "connected" if self.connected.is_set() else "connecting"
        return f"<NatsBridge {self.name} {state} inflight={self.inflight} unsent={len(self._out)}>"

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retrying every second while NATS is away) and register."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run()), loop.create_task(self._publisher())]
        for task in self._tasks:
            task.add_done_callback(_log_failure)

    async def _run(self) -> None:
        self.nc = await connect(self.url, creds=self.creds, ca=self.ca, name=f"plugrpc router {self.name}",
                                forever=True, error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                                reconnected_cb=self._on_reconnected, ping_interval=self.ping_interval,
                                max_pings_out=self.max_pings_out)
        self._joined()
        await self._check_name()
        while True:
            self._changed.clear()
            try:
                await self._register()
            except NatsError as exc:  # the connection went while subscribing: again once it is back
                log.warning("could not register on NATS (%s); trying again", exc)
                self._changed.set()
                await asyncio.sleep(RETRY)
            await self._changed.wait()

    async def _check_name(self) -> None:
        """NAME must be unique in the fleet: say so loudly when another router already answers as NAME."""
        assert self.nc is not None
        try:
            others = await services(self.nc, "PING", NAME_CHECK)
        except NatsError as exc:
            log.debug("could not ask NATS for other routers: %s", exc)
            return
        for other in others:
            if other["metadata"]["name"] == self.name:
                log.error("another router is on NATS as %s (host %s): calls to plugrpc.call.%s go to either of "
                          "them; give each router its own --name", self.name, other["metadata"].get("host"),
                          self.name)

    async def _register(self) -> None:
        """Serve the router's plugins as they are now: a new service instance, then stop the previous one."""
        await self.connected.wait()
        assert self.nc is not None
        service = Service(self, self._endpoints())
        await service.start(self.nc)
        old, self.service = self.service, service
        if old is not None:
            await old.stop()
        log.info("on NATS as router %s (service %s): %s", self.name, service.id,
                 ", ".join(ep.subject for ep in service.endpoints))

    def _endpoints(self) -> list[Endpoint]:
        endpoints = [Endpoint(self, "call", call_subject(self.name), None, {})]
        endpoints += [Endpoint(self, name, any_subject(name), name, {"exports": ",".join(plugin.spec.exports)})
                      for name, plugin in self.router.plugins.items()]
        return endpoints

    def metadata(self) -> dict[str, str]:
        """The service metadata: who this router is, where, and what it runs (ADR-32: strings only)."""
        return {"name": self.name, "host": self.host, "plugins": ",".join(self.router.plugins),
                "plugrpc": __version__}

    async def stop_serving(self) -> None:
        """Shutdown, first step: take no more requests (NATS sends them to other routers now)."""
        self._closing = True
        self._tasks[0].cancel()
        await asyncio.gather(self._tasks[0], return_exceptions=True)
        if self.service is not None:
            try:  # what the subscriptions hold is still served, for as long as calls get to finish
                await asyncio.wait_for(self.service.stop(), self.grace)
            except TimeoutError:
                log.warning("left NATS with requests still queued (--shutdown-grace)")

    async def aclose(self) -> None:
        """Shutdown, once the router has answered everything: send the last answers, leave NATS."""
        self._unlisten()
        deadline = time.monotonic() + CLOSE_WAIT
        while self._out and self.connected.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._tasks[1].cancel()
        await asyncio.gather(self._tasks[1], return_exceptions=True)
        if self.nc is not None:
            with contextlib.suppress(NatsError, TimeoutError, OSError):
                if self.nc.is_connected:
                    await self.nc.flush(timeout=int(CLOSE_WAIT))
            with contextlib.suppress(NatsError, OSError):
                await self.nc.close()

    # --- connection events (nats-py callbacks) ---------------------------------------------

    def _joined(self) -> None:
        assert self.nc is not None
        self.max_payload = self.nc.max_payload
        self._said.clear()
        self.connected.set()
        joined = self.nc.connected_url
        log.info("joined NATS at %s", redacted(joined.geturl()) if joined is not None else redacted(self.url))

    async def _on_disconnected(self) -> None:
        self.connected.clear()
        if not self._closing:
            log.warning("lost the connection to NATS; reconnecting every second (the unix socket is unaffected)")

    async def _on_reconnected(self) -> None:
        self._joined()
        if self._unsent:
            log.warning("%d answer(s) could not be sent while NATS was away (their callers got -32001 or -32002)",
                        self._unsent)
            self._unsent = 0

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            self._overflow(exc)
            return
        text = str(exc) or type(exc).__name__
        if text in self._said or self._closing:
            return
        self._said.add(text)
        if self.nc is None:
            log.warning("cannot reach NATS at %s (%s): serving the unix socket, joining NATS as soon as it answers",
                        redacted(self.url), text)
        else:
            log.warning("NATS: %s", text)

    def _overflow(self, exc: SlowConsumerError) -> None:
        """A message beyond what a subscription may hold while the bridge is at its limit: -32003."""
        if "overflow" not in self._said:
            self._said.add("overflow")
            log.warning("%d calls in flight from NATS and more queued than allowed: answering -32003", self.inflight)
        if exc.reply:
            self.send(exc.reply, _dumps(error_response(None, codes.OVERLOADED, data={
                "reason": f"router {self.name} has {self.inflight} calls in flight from NATS and as many queued; "
                          "retry later"})), None)

    # --- requests (nats-py awaits `Endpoint.on_message` per message, which calls this) ------

    def serve(self, endpoint: Endpoint, data: bytes, to: str, deadline: float | None = None) -> None:
        """Route one message: a request or a batch; without a reply subject, notifications.

        `deadline` (router clock) is when its caller stops waiting: a call still queued then never starts.
        """
        only = endpoint.only
        if not to:
            self._notifications(data, only)
            return
        sink = NatsRequest(self, endpoint, to, deadline)
        if len(data) > self.max_line:
            sink.reply(error_response(None, codes.MESSAGE_TOO_LARGE,
                                      data=f"a message exceeded the maximum of {self.max_line} bytes (--max-line)"))
            return
        try:
            msg = loads(data)
        except JSONDecodeError as exc:
            sink.reply(error_response(None, codes.PARSE_ERROR, data=str(exc)))
            return
        if type(msg) is list:
            self._batch(msg, sink, only)
            return
        self.route(msg, sink, only)
        if not sink.tracked and not sink.answered:
            sink.send(b"", None)  # a notification: the reply only says it arrived

    def _batch(self, msgs: list[Any], sink: NatsRequest, only: str | None) -> None:
        if not msgs:
            sink.reply(error_response(None, codes.INVALID_REQUEST, data="an empty batch is not a request"))
            return
        batch = Batch(sink)
        for msg in msgs:
            self.route(msg, batch, only)
        if not batch.seal():
            sink.send(b"", None)  # notifications only: an empty body

    def _notifications(self, data: bytes, only: str | None) -> None:
        """A message without a reply subject: each request in it is a notification (its id is dropped)."""
        if len(data) > self.max_line:
            return
        try:
            msg = loads(data)
        except JSONDecodeError:
            return  # nobody to tell
        for one in msg if type(msg) is list else (msg,):
            if type(one) is dict:
                one.pop("id", None)
                self.route(one, DROP, only)

    def route(self, msg: Any, sink: Sink, only: str | None) -> None:
        """`Router.handle` for what NATS may reach: on `plugrpc.any.P`, P's methods; no built-in but `READ_ONLY`."""
        if type(msg) is dict:
            method = msg.get("method")
            if type(method) is str:
                prefix = method.partition(".")[0]
                allowed = prefix == only if only is not None else prefix not in RESERVED_NAMES or method in READ_ONLY
                if not allowed and request_problem(msg) is None:
                    if "id" in msg:
                        sink.reply(error_response(msg["id"], codes.METHOD_NOT_FOUND,
                                                  data=self._unreachable(method, prefix, only)))
                    return
        self.handle(msg, sink)

    def _unreachable(self, method: str, prefix: str, only: str | None) -> dict[str, str]:
        if only is not None:
            where = (f"plugrpc.call.{self.name}" if prefix in RESERVED_NAMES
                     else f"plugrpc.any.{prefix} (or plugrpc.call.NAME)")
            return {"reason": f"plugrpc.any.{only} serves {only}.* methods only; send {method} to {where}"}
        how = " (plugrpc reload on the router's host, or SIGHUP)" if method == "router.reload" else ""
        return {"reason": f"{method} is not reachable over NATS, only on the router's unix socket{how}; "
                          f"NATS reaches exported methods and {', '.join(sorted(READ_ONLY))}"}

    # --- flow control ------------------------------------------------------------------------

    def track(self) -> None:
        self.inflight += 1

    def finished(self) -> None:
        self.inflight -= 1
        room = self._room
        if room is not None and self.inflight <= self.resume_at:
            self._room = None
            room.set_result(None)

    def wait_room(self) -> asyncio.Future[None]:
        """Resolved once the calls in flight from NATS fall to half the limit."""
        if self._room is None:
            self._room = asyncio.get_running_loop().create_future()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%d calls in flight from NATS: taking no more until %d are", self.inflight, self.resume_at)
        return self._room

    # --- answers -----------------------------------------------------------------------------

    def send(self, to: str, body: bytes, id: Any) -> None:
        """Publish `body` on subject `to` (from the publisher task); too large for NATS: -32004 instead."""
        if len(body) > self.max_payload:
            body = _dumps(error_response(id, codes.MESSAGE_TOO_LARGE, data={
                "reason": f"the answer is {len(body)} bytes, over the NATS server's max_payload of "
                          f"{self.max_payload} bytes; ask for less, or raise max_payload in the server's "
                          "configuration"}))
        self._publish(to, body)

    def _event(self, event: Event) -> None:
        """An event from the router's hub: published for every subscriber anywhere, or dropped (and counted)."""
        size = len(event.body)
        if not self.connected.is_set() or size > self.max_payload:
            self.events_dropped += 1
            why = "NATS is away" if size <= self.max_payload else f"over max_payload ({self.max_payload} B)"
            if f"events: {why}" not in self._said:  # once per outage (a reconnect clears what was said)
                self._said.add(f"events: {why}")
                log.warning("dropping events that cannot be published on NATS: %s", why)
            return
        self._publish(event_subject(self.name, f"{event.plugin}.{event.name}"), event.body)

    def _publish(self, to: str, body: bytes) -> None:
        out = self._out
        out.append((to, body))
        if len(out) == 1:
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)

    async def _publisher(self) -> None:
        """Publish what `send` queued: every answer of a loop turn after one wake-up."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._out:
                self._wake = loop.create_future()
                await self._wake
            out, self._out = self._out, []
            nc = self.nc
            assert nc is not None
            for to, body in out:
                try:
                    await nc.publish(to, body)
                except (NatsError, OSError, ValueError):  # closed, or its outage buffer full: the caller times out
                    self._unsent += 1


def _log_failure(task: asyncio.Task[None]) -> None:
    """The bridge's tasks run for the router's life: one that fails says so (the socket serves on)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the NATS bridge stopped: %r; the unix socket still serves", task.exception(),
                  exc_info=task.exception())


class NatsRequest:
    """The sink of one NATS message with a reply subject: its one answer (a response, a batch's array, or an
    empty body for notifications only) is published there. It is also the `BatchOwner` of a batch."""

    __slots__ = ("bridge", "endpoint", "to", "received", "tracked", "answered", "deadline")

    def __init__(self, bridge: NatsBridge, endpoint: Endpoint, to: str, deadline: float | None = None) -> None:
        self.bridge = bridge
        self.endpoint = endpoint
        self.to = to
        self.received = time.perf_counter_ns()
        self.tracked = False
        self.answered = False
        self.deadline = deadline
        """When its caller stops waiting, on the router's clock (router/deadline.py); None: no deadline."""

    def expired(self, plugin: str, late: float) -> None:
        """One of its calls was dropped past the deadline, before it started (router/deadline.py)."""
        self.bridge.expired.drop(plugin, late, "while it waited in the router")

    def track(self, call: Call) -> None:
        self.tracked = True
        self.bridge.track()

    def finished(self, call: Call) -> None:
        self.bridge.finished()

    def deliver(self, call: Call, msg: Message) -> None:
        msg["id"] = call.id
        self.reply(msg)
        self.bridge.finished()

    def reply(self, msg: Message) -> None:
        if "error" in msg:
            endpoint = self.endpoint
            endpoint.errors += 1
            err = msg["error"]
            endpoint.last_error = f"{err.get('code')} {err.get('message')}"
        try:
            body = _dumps(msg)
        except orjson.JSONEncodeError as exc:
            body = _dumps(unencodable(msg, exc))
        self.send(body, msg.get("id"))

    def cancel(self, id: Any) -> bool:
        return False  # rpc.cancel is not reachable over NATS

    def queue(self, line: bytes) -> None:
        """A batch's answer, as `Batch` writes it (a line)."""
        self.send(line[:-1], None)

    def send(self, body: bytes, id: Any) -> None:
        self.answered = True
        self.endpoint.processing_ns += time.perf_counter_ns() - self.received
        self.bridge.send(self.to, body, id)


class _Drop:
    """The sink of notifications: nothing is ever answered."""

    __slots__ = ()

    def track(self, call: Call) -> None:
        pass

    def deliver(self, call: Call, msg: Message) -> None:
        pass

    def reply(self, msg: Message) -> None:
        pass

    def cancel(self, id: Any) -> bool:
        return False


DROP: Final = _Drop()
