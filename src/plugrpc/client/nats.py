"""`NatsClient`: `Client` over NATS, to one router by name or to any router that runs the plugin.

    async with plugrpc.Client("nats://host:4222", router="c1") as c:
        await c.raw("ovs.version")       # a request on plugrpc.call.c1

Without `router`, `ovs.version` goes to one of the routers that run ovs, picked here
(client/balance.py): the client learns them from the Services API (`$SRV.INFO.plugrpc`, again
every few seconds and after a failure) and sends to `plugrpc.call.NAME` of the less loaded of two
picked at random, leaving out for a while a router whose calls time out. Until it knows of one,
the call goes to `plugrpc.any.ovs`, which NATS hands to any of them. Every call has its own reply
subject under one inbox subscription, so calls run concurrently, matched by that subject. Each
carries its deadline (the `Plugrpc-Deadline` header, from its timeout), past which no router
starts it.

The errors are the socket's: a JSON-RPC error raises its `RpcError`; nobody serving the subject,
NATS not connected, or the connection lost with the call in flight, -32001 (the call may have
run: it is never sent again; while the client knows the link is down, at once); no answer within
the timeout, -32002; a request over the server's payload limit, -32004. A router that dies with a
call says nothing, so over NATS a call always has a timeout: `NATS_TIMEOUT` unless the client or the call
gives one. `Client("nats://...")` makes one of these; this module is imported only then.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Final

import orjson
from jsonrpcclient.requests import notification, request_pure

from .. import codes
from ..errors import (
    CallTimeout,
    ConfigError,
    ConnectError,
    ConnectionLost,
    MessageTooLarge,
    PluginUnavailable,
    RpcError,
)
from ..manifest import NAME_RE, RESERVED_NAMES
from ..nats_link import (
    DEADLINE,
    MAX_PINGS_OUT,
    NO_RESPONDERS,
    PING_INTERVAL,
    any_subject,
    call_subject,
    connect,
    event_router,
    events_subject,
    is_nats_url,
    no_responders_reason,
    redacted,
    services,
)
from ..patterns import Matcher, pattern_problem
from ..wire import JSONDecodeError, loads
from .aio import Client
from .balance import Balancer
from .common import CLOSED, MAXSIZE, Progress, Subscription, response_error

if TYPE_CHECKING:
    from nats.aio.client import Client as Nats
    from nats.aio.msg import Msg

__all__ = ["NatsClient"]

log = logging.getLogger("plugrpc.client")

NATS_TIMEOUT: Final = 60.0
"""Seconds a call over NATS waits when neither the client nor the call sets a timeout."""
FLEET_WAIT: Final = 2.0
"""Seconds `routers()` listens for the Services API's answers at most."""
DISCOVER_EVERY: Final = 5.0
"""Seconds between two discoveries of the routers that calls by plugin are balanced over."""
DISCOVER_WAIT: Final = 1.0
"""Seconds a discovery listens for routers' answers: all of it after the first (a slow router answers late)."""
FIRST_QUIET: Final = 0.1
"""Seconds without another answer that end the first discovery, which the first call by plugin waits for."""
DISCOVER_AGAIN: Final = 1.0
"""Fewest seconds between two discoveries that failures ask for."""
_UNAVAILABLE: Final = codes.MESSAGES[codes.PLUGIN_UNAVAILABLE]
ANY_PREFIX: Final = any_subject("")


class NatsClient(Client):
    """`Client` over NATS (see the module docstring); the same methods, errors and timeouts."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float | None = None,
                 router: str | None = None, creds: str | os.PathLike[str] | None = None,
                 ca: str | os.PathLike[str] | None = None, direct: Any = False,
                 ping_interval: float = PING_INTERVAL, max_pings_out: int = MAX_PINGS_OUT) -> None:
        if direct:
            raise ValueError("direct connections are for a router's unix socket: a socket cannot be passed over "
                             "NATS; leave direct= out for NATS URLs")
        if not is_nats_url(path):
            raise ConfigError(f"NatsClient takes a NATS URL (nats://host:4222, tls://...), got {path!r}")
        if router is not None and not NAME_RE.fullmatch(router):
            raise ConfigError(f"router must be a router's name (letters, digits, '_', '-'), got {router!r}")
        assert isinstance(path, str)
        self.url = path
        self.router = router
        self.timeout = timeout
        """Default seconds a call may take (None: `NATS_TIMEOUT`)."""
        self._creds, self._ca = creds, ca
        self._nc: Nats | None = None
        self._prefix = ""
        """The inbox every reply subject of this client starts with."""
        self._pending: dict[str, tuple[str, asyncio.Future[Any]]] = {}
        """Calls waiting for their answer, by reply token: (the subject they went to, their future)."""
        self._ids = itertools.count(1)
        self._closed = False
        self._connect_lock = asyncio.Lock()
        self._errors: list[Exception] = []
        """What nats-py reported while connecting, for the ConnectError if it fails."""
        if ping_interval <= 0 or max_pings_out < 1:
            raise ConfigError(f"ping_interval must be more than 0 seconds and max_pings_out at least 1, got "
                              f"{ping_interval} and {max_pings_out}")
        self._ping_interval, self._max_pings_out = ping_interval, max_pings_out
        self.balancer = Balancer()
        """The routers calls by plugin go to (client/balance.py)."""
        self._discovery: asyncio.Task[None] | None = None
        self._discovered: asyncio.Future[None] | None = None
        """Done once the first discovery is over: the first call by plugin waits for it."""
        self._rediscover = asyncio.Event()
        self._discovered_at = 0.0

    def __repr__(self) -> str:
        nc = self._nc
        state = "unconnected" if nc is None else "open" if nc.is_connected else "reconnecting"
        to = f" router={self.router}" if self.router else ""
        return f"<NatsClient {redacted(self.url)}{to} {state} pending={len(self._pending)}>"

    async def connect(self) -> None:
        """Connect to NATS (calls do it on first use); raises ConnectError if no server answers."""
        async with self._connect_lock:
            if self._closed:
                raise ConnectionLost(CLOSED)
            if self._nc is not None:
                return
            try:
                nc = await connect(self.url, creds=self._creds, ca=self._ca, name="plugrpc client", forever=False,
                                   error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                                   ping_interval=self._ping_interval, max_pings_out=self._max_pings_out)
            except ConfigError:
                raise
            except Exception as exc:
                why = "; then ".join(dict.fromkeys(map(str, self._errors))) or str(exc)
                raise ConnectError(f"cannot connect to NATS at {redacted(self.url)}: {why}; start nats-server there, "
                                   "or check the URL and credentials") from exc
            self._prefix = nc.new_inbox() + "."
            await nc.subscribe(self._prefix + "*", cb=self._on_reply)
            self._nc = nc

    async def raw(self, method: str, params: Any = None, *, timeout: float | None = None,
                  progress: Progress | None = None) -> Any:
        """Call `method` on the client's router (or any router that runs its plugin); see `Client.raw`.

        NATS carries one answer per request: progress reports reach socket clients only.
        """
        if progress is not None:
            raise ConfigError("progress= needs the router's socket: over NATS a call gets its answer and nothing "
                              "before it")
        subject = self._subject(method)
        if self.router is not None:
            return await self._request(subject, method, params, timeout)
        return await self._by_plugin(subject[len(ANY_PREFIX):], method, params, timeout)

    def subscribe(self, *patterns: str, maxsize: int = MAXSIZE) -> Subscription:
        """Events of the client's router (or of every router) whose name matches a pattern; see `Client.subscribe`.

        They come from `plugrpc.event.ROUTER.PLUGIN.EVENT`, which every router on NATS publishes.
        """
        return NatsSubscription(self, patterns, maxsize)

    async def notify(self, method: str, params: Any = None) -> None:
        """Publish a notification (no reply subject): no response, no error; see `Client.notify`."""
        nc = await self._nats()
        subject = self._subject(method)
        try:
            await nc.publish(subject, orjson.dumps(notification(method, params)))
        except Exception as exc:
            raise self._lost(exc) from exc

    async def close(self) -> None:
        """Close the connection; calls in flight and later calls fail with ConnectionLost."""
        self._closed = True
        if self._discovery is not None:
            self._discovery.cancel()
            with contextlib.suppress(BaseException):
                await self._discovery
        self._fail_pending(lambda _: ConnectionLost(CLOSED))
        nc = self._nc
        if nc is not None and not nc.is_closed:
            if nc.is_connected:
                try:
                    await nc.flush(timeout=2)  # notifications sent just before leave first
                except Exception as exc:  # closing anyway
                    log.debug("NATS flush at close: %s", exc)
            await nc.close()

    # --- the fleet -------------------------------------------------------------------------

    async def routers(self, wait: float = FLEET_WAIT) -> list[dict[str, Any]]:
        """The Services API's INFO of every router on NATS (one per router name), sorted by name."""
        found = {info["metadata"]["name"]: info for info in await services(await self._nats(), "INFO", wait)}
        return [found[name] for name in sorted(found)]

    async def fleet(self, wait: float = FLEET_WAIT) -> list[dict[str, Any]]:
        """Every plugin of every router on NATS: each router's `router.plugins` rows, with its `router`.

        A router the Services API lists that does not answer gets one row saying so.
        """
        names = [info["metadata"]["name"] for info in await self.routers(wait)]
        answers = await asyncio.gather(*(self._request(call_subject(name), "router.plugins", None, None)
                                         for name in names), return_exceptions=True)
        rows: list[dict[str, Any]] = []
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, BaseException):
                rows.append({"router": name, "name": "-", "state": f"no answer ({answer})"})
            else:
                rows += [{"router": name, **row} for row in answer]
        return rows

    # --- internals ---------------------------------------------------------------------------

    async def _nats(self) -> Nats:
        if self._closed:
            raise ConnectionLost(CLOSED)
        if self._nc is None:
            await self.connect()
        assert self._nc is not None
        return self._nc

    def _subject(self, method: str) -> str:
        if self.router is not None:
            return call_subject(self.router)
        plugin = method.partition(".")[0]
        if plugin in RESERVED_NAMES or not NAME_RE.fullmatch(plugin):
            raise RpcError(codes.METHOD_NOT_FOUND, codes.MESSAGES[codes.METHOD_NOT_FOUND], {
                "reason": f"{method!r} goes to no plugin: built-ins (router.*, rpc.*) need a router, "
                          "Client(url, router=NAME) or --router NAME; methods are named plugin.method"})
        return any_subject(plugin)

    async def _request(self, subject: str, method: str, params: Any, timeout: float | None) -> Any:
        nc = await self._nats()
        id = next(self._ids)
        body = orjson.dumps(request_pure(self._ids, method, params, id))
        if len(body) > nc.max_payload:
            raise MessageTooLarge(codes.MESSAGE_TOO_LARGE, codes.MESSAGES[codes.MESSAGE_TOO_LARGE], {
                "reason": f"the request is {len(body)} bytes, over the NATS server's max_payload of "
                          f"{nc.max_payload} bytes"})
        if not nc.is_connected:
            raise Unreachable(codes.PLUGIN_UNAVAILABLE, _UNAVAILABLE, {
                "reason": f"NATS at {redacted(self.url)} is unreachable (the client lost its connection and is "
                          "reconnecting); the call was not sent"})
        token = str(id)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[token] = (subject, future)
        if timeout is None:
            timeout = self.timeout if self.timeout is not None else NATS_TIMEOUT
        expiry = loop.call_later(timeout, _expire, future, method, timeout)
        deadline = {DEADLINE: str(int((time.time() + timeout) * 1000))}
        try:
            try:
                await nc.publish(subject, body, reply=self._prefix + token, headers=deadline)
            except Exception as exc:
                raise self._lost(exc) from exc
            return await future
        finally:
            expiry.cancel()
            self._pending.pop(token, None)

    async def _on_reply(self, msg: Msg) -> None:
        entry = self._pending.pop(msg.subject[len(self._prefix):], None)
        if entry is None:
            return  # a call given up on (timed out, cancelled)
        subject, future = entry
        if future.done():
            return
        headers = msg.headers
        if headers and headers.get("Status") == NO_RESPONDERS:
            future.set_exception(NoResponders(codes.PLUGIN_UNAVAILABLE, _UNAVAILABLE, no_responders_reason(subject)))
            return
        try:
            reply = loads(msg.data)
        except JSONDecodeError as exc:
            reply = exc
        if type(reply) is dict and "result" in reply:
            future.set_result(reply["result"])
        elif type(reply) is dict and "error" in reply:
            future.set_exception(response_error(reply))
        else:
            future.set_exception(RpcError(codes.INTERNAL_ERROR, codes.MESSAGES[codes.INTERNAL_ERROR],
                                          f"the router sent a malformed answer: {msg.data[:300]!r}"))

    async def _by_plugin(self, plugin: str, method: str, params: Any, timeout: float | None) -> Any:
        """A call by plugin: to the router the balancer picks, else to `plugrpc.any.PLUGIN` (module docstring).

        A call nobody received (NATS: no responders as that router any more) is sent again elsewhere.
        """
        await self._first_discovery()
        balancer = self.balancer
        for _ in range(3):
            pick = balancer.pick(plugin, time.monotonic())
            if pick is None:
                break
            try:
                result = await self._request(call_subject(pick.router), method, params, timeout)
            except NoAnswer:
                if balancer.timed_out(pick, time.monotonic()):
                    log.info("router %s answered none of its last calls in time: calls by plugin go elsewhere for "
                             "%.1f s", pick.router, balancer.ejected(time.monotonic()).get(pick.router, 0.0))
                self._discover_soon()
                raise
            except NoResponders:
                balancer.abandoned(pick)
                balancer.gone(pick.router)
                self._discover_soon()
                continue  # it reached no router: safe to send elsewhere
            except Refused:
                balancer.abandoned(pick)
                balancer.refused(pick.router)  # this account may not call it by name; plugrpc.any.P may be allowed
                continue
            except RpcError as exc:
                if isinstance(exc, Unreachable):
                    balancer.abandoned(pick)  # NATS's fault, not the router's
                else:
                    balancer.answered(pick)
                raise
            except BaseException:
                balancer.abandoned(pick)
                raise
            balancer.answered(pick)
            return result
        return await self._request(any_subject(plugin), method, params, timeout)

    async def _first_discovery(self) -> None:
        """Start discovering routers (once), and wait for the first discovery to end."""
        if self._discovered is None:
            self._discovered = asyncio.get_running_loop().create_future()
            self._discovery = asyncio.ensure_future(self._discover_forever())
        if not self._discovered.done():
            await asyncio.shield(self._discovered)

    def _discover_soon(self) -> None:
        self._rediscover.set()

    async def _discover_forever(self) -> None:
        """Learn the routers and their plugins from the Services API, every `DISCOVER_EVERY` s and after failures."""
        first = True
        while True:
            try:
                nc = await self._nats()
                if nc.is_connected:
                    found: dict[str, frozenset[str]] = {}
                    answers = await services(nc, "INFO", DISCOVER_WAIT, FIRST_QUIET if first else DISCOVER_WAIT)
                    for info in answers:
                        meta = info["metadata"]
                        plugins = frozenset(p for p in str(meta.get("plugins", "")).split(",") if p)
                        found[meta["name"]] = found.get(meta["name"], frozenset()) | plugins
                    self.balancer.discovered(found)
                    self._discovered_at = time.monotonic()
            except ConnectionLost:
                return
            except Exception as exc:  # NATS away meanwhile: again at the next round
                log.debug("discovering routers on NATS: %r", exc)
            finally:
                if first and self._discovered is not None and not self._discovered.done():
                    self._discovered.set_result(None)
            first = False
            self._rediscover.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rediscover.wait(), DISCOVER_EVERY)
            await asyncio.sleep(max(0.0, self._discovered_at + DISCOVER_AGAIN - time.monotonic()))

    def _lost(self, exc: Exception) -> Exception:
        """What a failed publish means to the caller: closed (ConnectionLost) or NATS away (-32001)."""
        if self._closed or (self._nc is not None and self._nc.is_closed):
            return ConnectionLost(CLOSED)
        return Unreachable(codes.PLUGIN_UNAVAILABLE, _UNAVAILABLE, {
            "reason": f"NATS at {redacted(self.url)} did not take the request ({exc or type(exc).__name__}); "
                      "it was not sent"})

    def _fail_pending(self, error: Any, subject: str | None = None) -> None:
        """Fail the calls waiting (those sent to `subject` only, when given) with `error(subject)`."""
        for token, (sent_to, future) in list(self._pending.items()):
            if subject is None or sent_to.lower() == subject:
                del self._pending[token]
                if not future.done():
                    future.set_exception(error(sent_to))

    async def _on_disconnected(self) -> None:
        if self._closed:
            return
        self._fail_pending(lambda _: Unreachable(codes.PLUGIN_UNAVAILABLE, _UNAVAILABLE, {
            "reason": "lost the connection to NATS with the call in flight; it may have run, and is not sent again "
                      "(the client reconnects by itself)"}))

    async def _on_error(self, exc: Exception) -> None:
        """nats-py's asynchronous errors: a publish the account may not make fails its calls at once."""
        if self._nc is None:
            self._errors.append(exc)
        text = str(exc)
        if "permissions violation for publish to" in text:  # nats-py lowercases the server's -ERR
            subject = text.rsplit(" ", 1)[-1].strip("'\"")
            self._fail_pending(lambda to: Refused(codes.PLUGIN_UNAVAILABLE, _UNAVAILABLE, {
                "reason": f"NATS refused the request: this account may not publish to {to} (NATS subject "
                          "permissions)"}), subject)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("NATS: %s", text)


class NoAnswer(CallTimeout):
    """-32002 made by the client: no answer came within the call's timeout (its router may be silent)."""


class Unreachable(PluginUnavailable):
    """-32001 made by the client: NATS is unreachable or refused the request; no router is to blame."""


class Refused(Unreachable):
    """-32001 made by NATS: this account may not publish to the subject; the request reached no router."""


class NoResponders(PluginUnavailable):
    """-32001 made by NATS: nobody subscribes to the subject any more; the request reached no router."""


def _expire(future: asyncio.Future[Any], method: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(NoAnswer(codes.CALL_TIMEOUT, codes.MESSAGES[codes.CALL_TIMEOUT],
                                      f"{method} got no response within {timeout:g}s"))


class NatsSubscription(Subscription):
    """`Subscription` over NATS: one NATS subscription, so events keep their order per plugin as on the socket.

    One pattern is one subject, filtered by the server. Several are one subject that covers them
    all (their common leading tokens, then `>`), each event then matched here against the
    patterns: one subscription per pattern would deliver an event that two patterns match twice,
    and lose the order between them. NATS counts nothing it drops, so `dropped` is what this
    subscription dropped itself, beyond `maxsize`.
    """

    def __init__(self, client: NatsClient, patterns: tuple[str, ...], maxsize: int = MAXSIZE) -> None:
        super().__init__(patterns, maxsize)
        self.client = client
        self._sub: Any = None
        self._matches: Matcher | None = None
        """None when the server filters (one pattern)."""

    async def start(self) -> None:
        """Subscribe on NATS; raises RpcError (-32602) naming a bad pattern, as the router does."""
        bad = [f"{p!r}: {why}" for p in self.patterns if (why := pattern_problem(p)) is not None]
        if bad or not self.patterns:
            raise RpcError(codes.INVALID_PARAMS, codes.MESSAGES[codes.INVALID_PARAMS],
                           "; ".join(bad) or "give at least one pattern")
        patterns = tuple(dict.fromkeys(self.patterns))
        if len(patterns) > 1:
            self._matches = Matcher(patterns)
        nc = await self.client._nats()
        self._sub = await nc.subscribe(events_subject(self.client.router, _covering(patterns)), cb=self._on_event)
        await nc.flush()  # the server has the subscription: events published from now on reach it

    async def close(self) -> None:
        """Leave the NATS subscription; iterating ends once the events already here are taken."""
        sub, self._sub = self._sub, None
        self._end(StopAsyncIteration())
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection is gone: so is the subscription
                log.debug("NATS unsubscribe: %s", exc)

    async def _on_event(self, msg: Msg) -> None:
        try:
            params = loads(msg.data)
            name = params["name"]
        except (JSONDecodeError, KeyError, TypeError):
            log.debug("not an event on %s: %r", msg.subject, msg.data[:200])
            return
        if self._matches is None or self._matches(name):
            params["router"] = event_router(msg.subject)
            self._put(params)


def _covering(patterns: tuple[str, ...]) -> str:
    """One pattern that every name matching any of `patterns` matches: `ovs.port.*` + `ovs.>` -> `ovs.>`."""
    if len(patterns) == 1:
        return patterns[0]
    common = []
    for tokens in zip(*(p.split(".") for p in patterns), strict=False):
        if len(set(tokens)) > 1 or tokens[0] in ("*", ">"):
            break
        common.append(tokens[0])
    return ".".join([*common, ">"])
