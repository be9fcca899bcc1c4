"""Direct calls: the router brokers a connection of the caller's own to a plugin, then steps aside.

`router.connect {"plugin": NAME}` opens a new connection to the plugin's socket, asks the plugin
`rpc.direct {"exports": [...], "max_inflight": N}` on it (from then on the plugin holds that
connection to the manifest's exports and bound), and hands it to the caller as SCM_RIGHTS on the
answer's bytes (`FrontProtocol.deliver_fd`). The router never reads or writes it again, so its
calls cost the router nothing; what it keeps is a copy of the socket, to end the connection for
both ends with `shutdown()` when the plugin stops or restarts, when a reload removes it or changes
its exports, or when the caller's broker connection closes (a caller that died leaves nothing behind).

Bounds: `MAX_PER_CLIENT` live connections per broker connection, the manifest's `max_direct` per
plugin; -32003 past them. A copy whose connection both ends have left (the plugin closed it, the
caller shut it down) is noticed by a sweep once a second and dropped, so it stops counting.

The figures of direct calls are the plugin's own: it answers the liveness ping `rpc.ping` with
`{"direct": {"connections": C, "calls": N, "errors": E}}`, kept in `DirectState`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from .. import codes
from ..process.supervisor import PluginState
from ..sockets import connect_unix
from ..wire import error_response, loads
from .direct_state import Brokered, Handed
from .interfaces import Call, Message

if TYPE_CHECKING:
    from ..manifest import PluginSpec
    from .plugin import Plugin
    from .view import RouterView

log = logging.getLogger("plugrpc.direct")

MAX_PER_CLIENT: Final = 64
"""Direct connections one broker connection may hold at once."""
HANDSHAKE_TIMEOUT: Final = 5.0
"""Longest wait for the plugin's answer to `rpc.direct` (its `timeout` if shorter)."""
MAX_ANSWER: Final = 65536
"""Bytes of the plugin's answer to `rpc.direct` read at most: `true` fits many times over."""
SWEEP_INTERVAL: Final = 1.0
"""Seconds between two looks for connections both ends have left."""
START_POLL: Final = 0.01
"""Seconds between two looks at a plugin that `router.connect` waits for to be running."""
_DEAD: Final = select.POLLHUP | select.POLLERR | select.POLLNVAL


class FdSink(Protocol):
    """A front connection, which alone can carry a descriptor to its client."""

    brokered: Brokered | None

    def deliver_fd(self, call: Call, msg: Message, sock: socket.socket) -> Awaitable[bool]: ...


class Refused(Exception):
    """Why `router.connect` hands nothing out: its error code and `error.data`."""

    def __init__(self, code: int, data: dict[str, Any]) -> None:
        super().__init__(data.get("reason"))
        self.code = code
        self.data = data


class DirectHub:
    """`router.connect` for every client, and the sweep of connections both ends have left."""

    def __init__(self, router: RouterView) -> None:
        self.router = router
        self._sweeper: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def broker(self, call: Call) -> None:
        """Answer `router.connect`: a connection handed over with the answer, or an error saying why not."""
        sink = call.sink
        if sink is None:
            return
        if not hasattr(sink, "deliver_fd"):
            call.finish(error_response(call.id, codes.INVALID_REQUEST, data={
                "reason": "router.connect hands over a socket: send it on its own on a connection to the router's "
                          "unix socket, not in a batch or over NATS"}))
            return
        front: FdSink = sink  # type: ignore[assignment]
        owner = front.brokered
        if owner is None:
            owner = front.brokered = Brokered()
        try:
            plugin = self._plugin(call.params)
            state = plugin.direct
            self._check_room(plugin, owner)
        except Refused as exc:
            call.finish(error_response(call.id, exc.code, data=exc.data))
            return
        owner.pending += 1
        state.pending += 1
        try:
            sock = await self._connect(plugin)
        except Refused as exc:
            call.finish(error_response(call.id, exc.code, data=exc.data))
            return
        finally:
            owner.pending -= 1
            state.pending -= 1
        if call.sink is None or self.router.plugins.get(plugin.spec.name) is not plugin or not _running(plugin):
            sock.close()  # the caller left, or the plugin changed, while it was asked
            call.finish(error_response(call.id, codes.PLUGIN_UNAVAILABLE, data=_unavailable(
                plugin, "it stopped or was replaced while its connection was made")))
            return
        handed = Handed(sock, state, owner)
        state.handed.add(handed)
        owner.handed.add(handed)
        answer = {"jsonrpc": "2.0", "result": {"plugin": plugin.spec.name, "exports": list(plugin.spec.exports)},
                  "id": call.id}
        if not await front.deliver_fd(call, answer, sock):
            handed.drop()
            return
        self._sweep_soon()

    def _plugin(self, params: Any) -> Plugin:
        """The plugin `params` names, if callers may have a connection of their own to it."""
        router = self.router
        if type(params) is not dict or type(params.get("plugin")) is not str or set(params) != {"plugin"}:
            raise Refused(codes.INVALID_PARAMS, {"reason": 'router.connect takes {"plugin": NAME}'})
        name = params["plugin"]
        plugin = router.plugins.get(name)
        if plugin is None:
            raise Refused(codes.METHOD_NOT_FOUND, {"plugin": name, "reason": f"no plugin named {name!r}"})
        spec = plugin.spec
        if not router.config.direct or not spec.direct:
            how = "plugrpc run --no-direct" if not router.config.direct else f"direct = false under [plugin.{name}]"
            raise Refused(codes.PLUGIN_UNAVAILABLE, {"plugin": name, "direct": "disabled", "reason": (
                f"direct connections to plugin {name} are turned off ({how}); call it through the router")})
        if spec.mode == "exec" or spec.transport == "stdio" or plugin.supervisor is None:
            kind = "runs once per call (exec mode)" if spec.mode == "exec" or plugin.supervisor is None \
                else "serves on its stdin and stdout (transport = \"stdio\")"
            raise Refused(codes.PLUGIN_UNAVAILABLE, {"plugin": name, "direct": "unsupported", "reason": (
                f"plugin {name} cannot take direct connections: it {kind}; call it through the router")})
        return plugin

    def _check_room(self, plugin: Plugin, owner: Brokered) -> None:
        name = plugin.spec.name
        if len(owner.handed) + owner.pending >= MAX_PER_CLIENT:
            raise Refused(codes.OVERLOADED, {"plugin": name, "reason": (
                f"this connection holds {MAX_PER_CLIENT} direct connections, the most one broker connection may; "
                "close some, or broker on another connection")})
        state = plugin.direct
        if len(state.handed) + state.pending >= plugin.spec.max_direct:
            raise Refused(codes.OVERLOADED, {"plugin": name, "reason": (
                f"plugin {name} has {plugin.spec.max_direct} direct connections, its most (max_direct); call it "
                "through the router, or try again later")})

    async def _connect(self, plugin: Plugin) -> socket.socket:
        """A new connection to the plugin, on which it answered `rpc.direct` with true."""
        spec = plugin.spec
        deadline = time.monotonic() + spec.timeout
        await _wait_running(plugin, deadline)
        sup = plugin.supervisor
        assert sup is not None and plugin.socket is not None
        pid = sup.pid
        sock = await _connect_unix(spec.name, plugin.socket, deadline)
        try:
            closed = not await _ask(spec, sock, min(spec.timeout, HANDSHAKE_TIMEOUT))
        except BaseException:
            sock.close()
            raise
        if closed:
            sock.close()
            if sup.pid != pid or not _running(plugin):
                raise Refused(codes.PLUGIN_UNAVAILABLE, _unavailable(plugin, "it stopped while its connection was "
                                                                             "made"))
            raise _unsupported(spec.name, "it closed the connection when asked rpc.direct")
        return sock

    # --- the sweep -------------------------------------------------------------------------

    def _sweep_soon(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        """Drop the copies of connections both ends have left: they count against no bound any more."""
        self._sweeper = None
        states = [p.direct for p in (*self.router.plugins.values(), *self.router.retiring)]
        copies = {h.sock.fileno(): h for state in states for h in state.handed}
        if not copies:
            return
        poller = select.poll()
        for fd in copies:
            poller.register(fd, 0)  # no events asked: only hang-ups and errors are reported
        for fd, events in poller.poll(0):
            if events & _DEAD:
                copies[fd].drop()
        self._sweep_soon()


async def _ask(spec: PluginSpec, sock: socket.socket, timeout: float) -> bool:
    """Send `rpc.direct` and read the answer: True for `true`, False if the plugin closed the connection first."""
    loop = asyncio.get_running_loop()
    request = orjson.dumps({"jsonrpc": "2.0", "method": "rpc.direct", "params": {
        "exports": list(spec.exports), "max_inflight": spec.max_inflight}, "id": 1}) + b"\n"
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_sendall(sock, request)
            line = await _read_line(loop, sock)
    except TimeoutError:
        raise _unsupported(spec.name, f"it did not answer rpc.direct within {timeout:g}s") from None
    except OSError:
        return False
    except ValueError as exc:
        raise _unsupported(spec.name, f"it answered rpc.direct with {exc}") from None
    if line is None:
        return False
    try:
        msg = loads(line)
    except orjson.JSONDecodeError:
        raise _unsupported(spec.name, f"it answered rpc.direct with a line that is not JSON: {line[:100]!r}") from None
    if type(msg) is dict and msg.get("id") == 1 and msg.get("result") is True and "error" not in msg:
        return True
    raise _unsupported(spec.name, f"it answered rpc.direct with {_described(msg)}")


def _running(plugin: Plugin) -> bool:
    sup = plugin.supervisor
    return sup is not None and sup.state is PluginState.RUNNING and not sup.holding


async def _wait_running(plugin: Plugin, deadline: float) -> None:
    """Start a lazy or idle plugin and wait until it runs, as a call would (up to its `timeout`)."""
    sup = plugin.supervisor
    assert sup is not None
    while not _running(plugin):
        if not sup.available:
            raise Refused(codes.PLUGIN_UNAVAILABLE, {"plugin": plugin.spec.name, "reason": sup.unavailable_reason()})
        sup.ensure_running()
        if time.monotonic() >= deadline:
            raise Refused(codes.CALL_TIMEOUT, {"plugin": plugin.spec.name, "reason": (
                f"plugin {plugin.spec.name} was not running within {plugin.spec.timeout:g} s")})
        await asyncio.sleep(START_POLL)


async def _connect_unix(name: str, path: os.PathLike[str], deadline: float) -> socket.socket:
    """A connected non-blocking socket; waits while the plugin's backlog is full (`sockets.connect_unix`)."""
    try:
        return await connect_unix(path, deadline, START_POLL)
    except OSError as exc:
        raise Refused(codes.PLUGIN_UNAVAILABLE, {"plugin": name, "reason": (
            f"cannot connect to the plugin's socket: {exc.strerror or exc}")}) from None


async def _read_line(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes | None:
    """The plugin's first line on `sock`; None at end of file; ValueError for more than its answer."""
    data = b""
    while b"\n" not in data:
        if len(data) > MAX_ANSWER:
            raise ValueError(f"over {MAX_ANSWER} bytes without a newline")
        chunk = await loop.sock_recv(sock, MAX_ANSWER)
        if not chunk:
            return None
        data += chunk
    line, _, rest = data.partition(b"\n")
    if rest:
        raise ValueError(f"more than its answer: {rest[:100]!r} after it")
    return line


def _described(msg: Any) -> str:
    """What a plugin answered to `rpc.direct`, in a few words."""
    if type(msg) is dict and type(msg.get("error")) is dict:
        error = msg["error"]
        return f"error {error.get('code')} ({str(error.get('message'))[:100]})"
    if type(msg) is dict and "result" in msg:
        return f"the result {orjson.dumps(msg['result'])[:100].decode(errors='replace')} instead of true"
    return f"{orjson.dumps(msg)[:100].decode(errors='replace')}, not a response to it"


def _unsupported(name: str, what: str) -> Refused:
    """The refusal a client falls back on: this plugin does not take direct connections."""
    return Refused(codes.PLUGIN_UNAVAILABLE, {"plugin": name, "direct": "unsupported", "reason": (
        f"plugin {name} cannot take direct connections: {what}; call it through the router")})


def _unavailable(plugin: Plugin, why: str) -> dict[str, Any]:
    """`error.data` of a -32001 to try again later (not a reason to fall back for good)."""
    name = plugin.spec.name
    return {"plugin": name, "reason": f"plugin {name}: {why}; try again"}
