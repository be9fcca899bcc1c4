"""`Client`: the async caller of a router (or of a plugin's socket directly).

    async with Client(path) as c:
        await c.raw("ovs.version", {})      # core0's container.raw, over JSON-RPC
        await c.raw("build.run", {}, progress=print)           # with the plugin's rpc.progress
        async with c.subscribe("ovs.port.*") as events:       # events (client/events.py)
            async for ev in events: ...

    async with Client(path, direct=True) as c:  # each plugin's calls on a connection of their own to it
        await c.raw("ovs.version", {})          # (client/direct.py)

One connection carries many concurrent calls, pipelined and matched by id. Requests are built
with jsonrpcclient's `request_pure` (with our own integer ids); an error response goes through
its `to_response` and raises the matching `RpcError` subclass. Requests queued in the same
loop turn leave in one write.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from jsonrpcclient.requests import request_pure

from .. import codes
from ..config import default_socket, in_default_dir
from ..errors import CallTimeout, ConfigError, ConnectError, ConnectionLost
from ..nats_link import is_nats_url
from ..sockets import check_peer, connect_unix, socket_owner
from ..wire import dumps
from .common import CLOSED, MAXSIZE, Progress, Subscription
from .connection import Connection, DirectConnection
from .direct import DirectMode, DirectRoutes, direct_mode
from .events import SocketSubscription

__all__ = ["Client"]

CANCEL: Final = "rpc.cancel"
_HINT: Final = "start a router with `plugrpc run`"
CONNECT_TIMEOUT: Final = 30.0
"""Seconds `connect` waits for room in a full accept backlog when the client has no timeout."""
BACKLOG_RETRY: Final = 0.01
"""Seconds between connect attempts while the listener's backlog is full."""


class _SocketOrNats:
    """Makes `Client(target)` a `NatsClient` (client/nats.py) when the target is a NATS URL.

    A base class of its own, so that `Client`'s signature stays its `__init__`'s.
    """

    def __new__(cls, path: str | os.PathLike[str] | None = None, *args: Any, **options: Any) -> Any:
        if cls is Client and is_nats_url(path):
            from .nats import NatsClient  # only callers of NATS load nats-py

            return super().__new__(NatsClient)
        return super().__new__(cls)


class Client(_SocketOrNats):
    """An async JSON-RPC client on one unix-socket connection; safe for many concurrent calls.

    `Client("nats://host:4222", router=NAME)` is a `NatsClient` (client/nats.py): the same calls
    through a fleet of routers on NATS, to router NAME or (no router) to any that runs the plugin;
    `creds` (a NATS credentials file) and `ca` (a CA to trust for `tls://`) are for NATS only.

    `direct=True` calls each plugin on a connection of the client's own to it, which the router
    brokers on first use (client/direct.py); a plugin that cannot take one is called through the
    router, unless `direct="require"`, which raises then. There `timeout` is the only limit of a call.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float | None = None,
                 router: str | None = None, creds: str | os.PathLike[str] | None = None,
                 ca: str | os.PathLike[str] | None = None, direct: DirectMode = False) -> None:
        if router is not None or creds is not None or ca is not None:
            raise ConfigError(f"router=, creds= and ca= are for NATS URLs (nats://, tls://), not the socket {path}")
        self.path = Path(path) if path is not None else default_socket()
        self.timeout = timeout
        """Default seconds a call may take (None: wait as long as the router lets it run)."""
        mode = direct_mode(direct)
        self._direct = DirectRoutes(self.path, mode, timeout, self._direct_connection) if mode else None
        """Each plugin's direct connection, with `direct=`; None: every call goes through the router."""
        self._conn: Connection | None = None
        self._closed = False
        self._connect_lock = asyncio.Lock()
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        conn = self._conn
        state = "unconnected" if conn is None else "lost" if conn.lost is not None else "open"
        pending = 0 if conn is None else len(conn.pending)
        return f"<Client {self.path} {state} pending={pending}>"

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection (calls do it on first use); raises ConnectError if nobody listens.

        Or if someone other than the router may be listening: the socket's directory must show that
        nobody else could have put it there, and the process listening must be its owner (or root).
        """
        async with self._connect_lock:
            if self._closed:
                raise ConnectionLost(CLOSED)
            if self._conn is not None:
                return
            loop = asyncio.get_running_loop()
            try:
                owner = socket_owner(self.path, in_default_dir(self.path))
                sock = await _connect_unix(self.path, CONNECT_TIMEOUT if self.timeout is None else self.timeout)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise ConnectError(f"cannot connect to {self.path}: {exc.strerror}; {_HINT}") from exc
            except OSError as exc:
                raise ConnectError(f"cannot connect to {self.path}: {exc}") from exc
            except ConfigError as exc:
                raise ConnectError(f"refusing to connect to {self.path}: {exc}") from None
            try:
                check_peer(sock, owner)
            except ConfigError as exc:
                sock.close()
                raise ConnectError(f"refusing to use {self.path}: {exc}") from None
            try:
                _, self._conn = await loop.create_unix_connection(lambda: Connection(loop), sock=sock)
            except BaseException:
                sock.close()
                raise

    async def raw(self, method: str, params: Any = None, *, timeout: float | None = None,
                  progress: Progress | None = None) -> Any:
        """Call `method` with `params` (object or array) and return its result.

        Raises RpcError (the subclass for its code) on a JSON-RPC error, CallTimeout after
        `timeout` (default: the client's), ConnectionLost if the connection goes first.
        The timeout is a parameter (not `asyncio.timeout`) so BlockingClient callers have one
        too; it costs one timer handle. With `progress`, each `plugrpc.progress(value)` of the
        handler calls `progress(value)` before the result comes (the connection asks the
        router for progress, once, on the first such call).
        """
        if self._direct is not None:
            direct = await self._direct.connection(method)
            if direct is not None:
                return await self._call(direct, method, params, timeout, progress, method.partition(".")[2])
        conn = self._conn
        if conn is None or progress is not None:
            conn = await self._connection(progress is not None)
        return await self._call(conn, method, params, timeout, progress)

    async def _call(self, conn: Connection, method: str, params: Any, timeout: float | None,
                    progress: Progress | None, sent: str | None = None) -> Any:
        """`raw` on `conn`: the router's, or a plugin's direct connection, where `sent` is `method` without
        the plugin's name."""
        id = next(self._ids)
        if progress is not None:
            conn.progress[id] = progress
        future = conn.call(id, dumps(request_pure(self._ids, sent or method, params, id)))
        if timeout is None:
            timeout = self.timeout
        expiry = None if timeout is None else conn.loop.call_later(timeout, _expire, future, method, timeout)
        try:
            return await future
        except BaseException:
            # Timed out or cancelled: forget the call and tell the peer to stop working on it.
            if conn.pending.pop(id, None) is not None:
                conn.notify(CANCEL, {"id": id})
            raise
        finally:
            if expiry is not None:
                expiry.cancel()
            if progress is not None:
                conn.progress.pop(id, None)

    def subscribe(self, *patterns: str, maxsize: int = MAXSIZE) -> Subscription:
        """Events whose name (`plugin.event`) matches a pattern, in `async with` ... `async for ev in ...`.

        Patterns are NATS-style: `*` is one token, `>` (last) one or more: `"ovs.port.*"`,
        `"demo.>"`, `">"` for all. Each `Event` has `name`, `data`, `seq` and `dropped`. At most
        `maxsize` events wait for the reader; see `plugrpc.client.events`.
        """
        return SocketSubscription(self, patterns, maxsize)

    async def _connection(self, progress: bool = False) -> Connection:
        """The connection, opened if need be; with `progress`, once it asked the router for progress."""
        if self._conn is None:
            await self.connect()
        conn = self._conn
        assert conn is not None
        if progress and not conn.progress_on:
            async with self._connect_lock:
                if not conn.progress_on:
                    await self.raw("router.subscribe", {"progress": True})
                    conn.progress_on = True
        return conn

    async def notify(self, method: str, params: Any = None) -> None:
        """Send a notification: no response, no error, even if `method` does not exist."""
        if self._conn is None:
            await self.connect()
            assert self._conn is not None
        self._conn.notify(method, params)

    async def close(self) -> None:
        """Close the connection; calls in flight and later calls fail with ConnectionLost."""
        self._closed = True
        if self._direct is not None:
            await self._direct.close()
        if self._conn is not None:
            await self._conn.close()

    async def _direct_connection(self, plugin: str, sock: socket.socket) -> Connection:
        """A socket `router.connect` handed over, as a connection of its own to `plugin`."""
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_unix_connection(lambda: DirectConnection(loop, plugin), sock=sock)
        return conn


async def _connect_unix(path: Path, timeout: float) -> socket.socket:
    """A connected non-blocking unix socket; waits (up to `timeout`) while the listener's backlog is full
    (`sockets.connect_unix`)."""
    try:
        return await connect_unix(path, time.monotonic() + timeout, BACKLOG_RETRY)
    except BlockingIOError:
        raise ConnectError(f"cannot connect to {path}: its backlog stayed full for {timeout:g}s") from None


def _expire(future: asyncio.Future[Any], method: str, timeout: float) -> None:
    if not future.done():
        message = codes.MESSAGES[codes.CALL_TIMEOUT]
        future.set_exception(CallTimeout(codes.CALL_TIMEOUT, message, f"{method} got no response within {timeout:g}s"))
