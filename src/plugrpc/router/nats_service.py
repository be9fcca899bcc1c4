"""The router as NATS service `plugrpc` (the Services API, ADR-32): its `Endpoint`s, the subjects it
serves with their figures, and a `Service`, one registration with its id, answering
`$SRV.PING|INFO|STATS[.plugrpc[.ID]]` with the router's name, host and plugins in the metadata and
what each endpoint answered. Serving the requests is the bridge's (router/nats_bridge.py); the
answers follow nats.micro's message types, so its `from_dict` reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson
from nats.errors import Error as NatsError
from nats.nuid import NUID

from .. import codes
from ..nats_link import DEADLINE, QUEUE, SERVICE
from ..version import __version__
from ..wire import error_response
from .deadline import UNREAD, Expired, seconds_left
from .interfaces import clock

if TYPE_CHECKING:
    from nats.aio.client import Client as Nats
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from .view import RouterView

PENDING_BYTES: Final = 64 << 20
"""Bytes of messages a subscription may hold while the bridge is at its in-flight limit."""
DESCRIPTION: Final = "plugrpc router: JSON-RPC 2.0 calls to its plugins"
PING_TYPE: Final = "io.nats.micro.v1.ping_response"
INFO_TYPE: Final = "io.nats.micro.v1.info_response"
STATS_TYPE: Final = "io.nats.micro.v1.stats_response"
VERBS: Final = ("PING", "INFO", "STATS")
FLUSH_WAIT: Final = 2.0
"""Seconds a registration waits for the server to confirm its subscriptions."""
_dumps = orjson.dumps


class Bridge(Protocol):
    """What endpoints and registrations need of the router's NATS side (router/nats_bridge.py)."""

    name: str
    router: RouterView
    inflight: int
    limit: int
    expired: Expired

    def wait_room(self) -> asyncio.Future[None]: ...

    def serve(self, endpoint: Endpoint, data: bytes, to: str, deadline: float | None = None) -> None: ...

    def send(self, to: str, body: bytes, id: Any) -> None: ...

    def metadata(self) -> dict[str, str]: ...


class Endpoint:
    """One subject the router serves, and its ADR-32 figures (time counts from arrival to answer)."""

    __slots__ = ("bridge", "name", "subject", "only", "metadata", "requests", "errors", "last_error",
                 "processing_ns", "sub")

    def __init__(self, bridge: Bridge, name: str, subject: str, only: str | None, metadata: dict[str, str]) -> None:
        self.bridge = bridge
        self.name = name
        self.subject = subject
        self.only = only
        """The plugin of a `plugrpc.any.PLUGIN` subject, whose methods alone it takes; None for `plugrpc.call.NAME`."""
        self.metadata = metadata
        self.requests = 0
        self.errors = 0
        self.last_error = ""
        self.processing_ns = 0
        self.sub: Subscription | None = None

    async def on_message(self, msg: Msg) -> None:
        """nats-py awaits this for each message, one at a time per subscription: it routes and returns."""
        bridge = self.bridge
        if bridge.inflight >= bridge.limit:
            await bridge.wait_room()
        self.requests += 1
        headers = msg.headers
        if headers is not None and (value := headers.get(DEADLINE)) is not None:
            left = seconds_left(value)
            if left is not None:
                if left <= 0:
                    self.late(msg.reply, -left)
                    return
                bridge.serve(self, msg.data, msg.reply, clock() + left)
                return
        bridge.serve(self, msg.data, msg.reply)

    def late(self, to: str, late: float) -> None:
        """A request that arrived past its deadline: -32002, unread, and never run (router/deadline.py)."""
        bridge = self.bridge
        bridge.expired.drop(self.only or UNREAD, late, "on arrival, unread")
        if not to:
            return  # notifications: nobody to tell
        self.errors += 1
        self.last_error = f"{codes.CALL_TIMEOUT} {codes.MESSAGES[codes.CALL_TIMEOUT]}"
        bridge.send(to, _dumps(error_response(None, codes.CALL_TIMEOUT, data={
            "reason": f"the request reached router {bridge.name} {late:.3f} s after its deadline "
                      f"({DEADLINE}); it was not run"})), None)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "subject": self.subject, "queue_group": QUEUE, "metadata": self.metadata}

    def stats(self) -> dict[str, Any]:
        return {"name": self.name, "subject": self.subject, "queue_group": QUEUE, "num_requests": self.requests,
                "num_errors": self.errors, "last_error": self.last_error, "processing_time": self.processing_ns,
                "average_processing_time": self.processing_ns // self.requests if self.requests else 0,
                "data": self.data()}

    def data(self) -> dict[str, Any]:
        """ADR-32's free `data`: the plugin's figures in the router (all callers), or the bridge's in-flight count."""
        bridge = self.bridge
        plugin = bridge.router.plugins.get(self.only) if self.only is not None else None
        if plugin is None:
            return {"inflight": bridge.inflight, "limit": bridge.limit}
        status = plugin.status()
        return {key: status.get(key) for key in ("state", "inflight", "calls", "errors", "p50_ms", "p99_ms")}


class Service:
    """One registration as NATS service `plugrpc` (ADR-32): an id, the endpoints, their subscriptions."""

    def __init__(self, bridge: Bridge, endpoints: list[Endpoint]) -> None:
        self.bridge = bridge
        self.id = NUID().next().decode()
        self.metadata = bridge.metadata()
        self.endpoints = endpoints
        self.started = dt.datetime.now(dt.UTC)
        self._control: list[Subscription] = []

    async def start(self, nc: Nats) -> None:
        """Subscribe the control subjects and the endpoints; return once the server has them all."""
        handlers = {"PING": self._ping, "INFO": self._info, "STATS": self._stats}
        for verb in VERBS:
            for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{SERVICE}", f"$SRV.{verb}.{SERVICE}.{self.id}"):
                self._control.append(await nc.subscribe(subject, cb=handlers[verb]))
        limit = self.bridge.limit
        for ep in self.endpoints:
            ep.sub = await nc.subscribe(ep.subject, queue=QUEUE, cb=ep.on_message, pending_msgs_limit=limit,
                                        pending_bytes_limit=PENDING_BYTES)
        with contextlib.suppress(NatsError, TimeoutError):  # lost meanwhile: nats-py replays them on reconnect
            await nc.flush(timeout=int(FLUSH_WAIT))

    async def stop(self) -> None:
        """Unsubscribe; the requests an endpoint already holds are still served (drained)."""
        for sub in self._control:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        for ep in self.endpoints:
            if ep.sub is not None:
                with contextlib.suppress(NatsError, TimeoutError):
                    await ep.sub.drain()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated

    def _identity(self, kind: str) -> dict[str, Any]:
        return {"type": kind, "name": SERVICE, "id": self.id, "version": __version__, "metadata": self.metadata}

    def ping(self) -> dict[str, Any]:
        return self._identity(PING_TYPE)

    def info(self) -> dict[str, Any]:
        return {**self._identity(INFO_TYPE), "description": DESCRIPTION,
                "endpoints": [ep.info() for ep in self.endpoints]}

    def stats(self) -> dict[str, Any]:
        started = self.started.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return {**self._identity(STATS_TYPE), "started": started, "endpoints": [ep.stats() for ep in self.endpoints]}

    async def _ping(self, msg: Msg) -> None:
        await self._answer(msg, self.ping())

    async def _info(self, msg: Msg) -> None:
        await self._answer(msg, self.info())

    async def _stats(self, msg: Msg) -> None:
        await self._answer(msg, self.stats())

    async def _answer(self, msg: Msg, doc: dict[str, Any]) -> None:
        if msg.reply:
            with contextlib.suppress(NatsError):
                await msg.respond(_dumps(doc))
