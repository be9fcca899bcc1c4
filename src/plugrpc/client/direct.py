"""`Client(direct=True)`: a plugin's calls on a connection of the client's own to it, one hop instead of two.

On the first call to a plugin the client asks the router, on a broker connection of its own (a
blocking socket, used from a thread: this happens once per plugin), `router.connect {"plugin":
NAME}`; the answer carries a socket already connected to the plugin (SCM_RIGHTS). That socket
becomes a `Connection` like the router's, with the client's own ids: the same `raw()`, errors,
progress and pipelining, and the client's `timeout` (the router's per-call timeout does not apply
there). The router ends such a connection when the plugin stops, restarts or changes, and when the
broker connection closes: calls in flight on it fail -32001 (they may have run: never retried),
and the next call brokers again.

A plugin that cannot take direct connections (`error.data.direct` "unsupported" or "disabled") is
called through the router from then on; `direct="require"` raises instead. Any other refusal (a
bound reached, a plugin not running) sends that call through the router and brokering is tried
again after `RETRY_AFTER`. Built-ins (`router.*`, `rpc.*`) always go through the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson

from .. import codes
from ..config import in_default_dir
from ..errors import ConfigError, ConnectError, ConnectionLost, PluginUnavailable, RpcError, rpc_error
from ..sockets import check_peer, socket_owner
from ..wire import JSONDecodeError, loads

if TYPE_CHECKING:
    from .connection import Connection

DirectMode = bool | Literal["require"]
BUILTINS: Final = frozenset({"router", "rpc"})
"""Prefixes of the router's own methods: never called directly."""
FALLBACK: Final = frozenset({"unsupported", "disabled"})
"""`error.data.direct` of a `router.connect` refusal that sends the plugin's calls through the router for good."""
RETRY_AFTER: Final = 1.0
"""Seconds a plugin's calls go through the router after any other refusal, before brokering is tried again."""
BROKER_TIMEOUT: Final = 60.0
"""Seconds one `router.connect` exchange may take when the client has no timeout (a lazy plugin starting)."""
FOREVER: Final = float("inf")


def direct_mode(value: Any) -> DirectMode:
    """`direct=` checked: False, True or "require"."""
    if value is True or value is False or value == "require":
        return value  # type: ignore[no-any-return]
    raise ValueError(f'direct must be False, True or "require", got {value!r}')


class DirectRoutes:
    """Which connection each plugin's calls take: a direct one, brokered on first use, or (None) the router's."""

    def __init__(self, path: Path, mode: DirectMode, timeout: float | None, make: Any) -> None:
        self.path = path
        self.require = mode == "require"
        self.timeout = timeout
        self.conns: dict[str, Connection] = {}
        self.fallback: dict[str, float] = {}
        """Plugins called through the router, until when (`FOREVER`: they cannot take direct connections)."""
        self._make = make
        """Wraps a connected socket as a `Connection` for a plugin (`Client._direct_connection`)."""
        self._brokering: dict[str, asyncio.Future[Connection | None]] = {}
        self._broker: socket.socket | None = None
        self._broker_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False

    async def connection(self, method: str) -> Connection | None:
        """The direct connection for `method`'s plugin, brokered if need be; None: call through the router."""
        plugin, dot, _ = method.partition(".")
        conn = self.conns.get(plugin)
        if conn is not None and conn.lost is None:
            return conn
        if not dot or plugin in BUILTINS or self._closed:
            return None
        until = self.fallback.get(plugin)
        if until is not None and time.monotonic() < until:
            return None
        brokering = self._brokering.get(plugin)
        if brokering is None:
            brokering = self._brokering[plugin] = asyncio.ensure_future(self._connect(plugin))
            brokering.add_done_callback(lambda _: self._brokering.pop(plugin, None))
        # Shielded: a caller that gives up does not leave a descriptor half received for the others.
        return await asyncio.shield(brokering)

    async def _connect(self, plugin: str) -> Connection | None:
        try:
            sock = await asyncio.to_thread(self._exchange, plugin)
        except RpcError as exc:
            data = exc.data if isinstance(exc.data, dict) else {}
            for_good = data.get("direct") in FALLBACK or (exc.code == codes.METHOD_NOT_FOUND and
                                                         data.get("plugin") == "router")  # a router without it
            if self.require:
                raise
            self.fallback[plugin] = FOREVER if for_good else time.monotonic() + RETRY_AFTER
            return None
        except (ConnectError, ConnectionLost, OSError):
            if self.require:
                raise
            self.fallback[plugin] = time.monotonic() + RETRY_AFTER
            return None
        if self._closed:
            _end(sock)
            return None
        try:
            conn: Connection = await self._make(plugin, sock)
        except BaseException:
            _end(sock)
            raise
        self.conns[plugin] = conn
        return conn

    def _exchange(self, plugin: str) -> socket.socket:
        """`router.connect` on the broker connection (in a thread): the socket its answer carried."""
        with self._broker_lock:
            sock = self._broker
            if sock is None:
                sock = self._broker = self._open()
            request = orjson.dumps({"jsonrpc": "2.0", "method": "router.connect", "params": {"plugin": plugin},
                                    "id": next(self._ids)}) + b"\n"
            try:
                sock.sendall(request)
                msg, fds = _read_answer(sock)
            except BaseException:
                self._broker = None
                _end(sock)
                raise
        return _handed(msg, fds, plugin, self.path)

    def _open(self) -> socket.socket:
        """The broker connection: the same checks of who listens as the client's own connection."""
        try:
            owner = socket_owner(self.path, in_default_dir(self.path))
        except (ConfigError, OSError) as exc:
            raise ConnectError(f"refusing to connect to {self.path}: {exc}") from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout if self.timeout is not None else BROKER_TIMEOUT)
        try:
            sock.connect(os.fspath(self.path))
            check_peer(sock, owner)
        except ConfigError as exc:
            sock.close()
            raise ConnectError(f"refusing to use {self.path}: {exc}") from None
        except OSError as exc:
            sock.close()
            raise ConnectError(f"cannot connect to {self.path}: {exc}") from None
        return sock

    async def close(self) -> None:
        """End every direct connection (for both ends) and the broker connection."""
        self._closed = True
        conns, self.conns = self.conns, {}
        for conn in conns.values():
            if conn.transport is not None:
                _shutdown(conn.transport)
        await asyncio.gather(*(conn.close() for conn in conns.values()), return_exceptions=True)
        broker, self._broker = self._broker, None
        if broker is not None:
            _end(broker)


def _read_answer(sock: socket.socket) -> tuple[Any, list[int]]:
    """One answer line from the router and the descriptors that came with it."""
    data = b""
    fds: list[int] = []
    try:
        while b"\n" not in data:
            chunk, got, _flags, _addr = socket.recv_fds(sock, 65536, 4)
            fds += got
            if not chunk:
                raise ConnectionLost(f"the router closed the connection{f': {data[:200]!r}' if data else ''}")
            data += chunk
        line = data.partition(b"\n")[0]
        try:
            return loads(line), fds
        except JSONDecodeError as exc:
            raise ConnectionLost(f"the router sent a line that is not JSON: {exc}") from None
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _handed(msg: Any, fds: list[int], plugin: str, path: Path) -> socket.socket:
    """The connection `router.connect` answered with, checked; RpcError for a refusal."""
    for fd in fds[1:]:
        os.close(fd)
    if type(msg) is dict and type(msg.get("error")) is dict:
        for fd in fds[:1]:
            os.close(fd)
        raise rpc_error(msg["error"])
    result = msg.get("result") if type(msg) is dict else None
    if not fds or type(result) is not dict or result.get("plugin") != plugin:
        for fd in fds[:1]:
            os.close(fd)
        raise PluginUnavailable(codes.PLUGIN_UNAVAILABLE, codes.MESSAGES[codes.PLUGIN_UNAVAILABLE], {
            "plugin": plugin, "reason": f"router.connect answered without a connection: {msg!r:.200}"})
    sock = socket.socket(fileno=fds[0])
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.close()
        raise PluginUnavailable(codes.PLUGIN_UNAVAILABLE, codes.MESSAGES[codes.PLUGIN_UNAVAILABLE], {
            "plugin": plugin, "reason": "router.connect passed something other than a unix stream socket"})
    sock.setblocking(False)
    return sock


def _shutdown(transport: asyncio.BaseTransport) -> None:
    """End a transport's connection for both ends, though the router holds a copy of it (uvloop's transports
    hand out a stand-in without shutdown: a duplicate descriptor is a real socket of the same connection)."""
    raw = transport.get_extra_info("socket")
    if raw is None:
        return
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(raw.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def _end(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
