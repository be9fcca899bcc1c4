"""The clients the load generator drives, all behind one shape: `calls[i](params) -> awaitable result`.

`NdjsonConnections` is the bench's own bare client (asyncio.Protocol, orjson, pipelined,
responses matched by id; the notifications of a subscribed connection counted and dropped) and
the one client of every NDJSON row, so those rows differ only in the server side.
`PlugrpcConnections` is `plugrpc.Client`, measured against it on the same router. `ExecCalls`
runs a core0-style plugin once per call. The peers' clients are in bench.peers.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from plugrpc import wire

from .procs import BenchError

Call = Callable[[Any], Awaitable[Any]]


class Connections(Protocol):
    """What every client gives the load generator: one call per connection, and a way to close them all."""

    calls: list[Call]

    async def aclose(self) -> None: ...


def settle(fut: asyncio.Future[Any], msg: dict[str, Any]) -> None:
    """A call's future from its JSON-RPC answer: the result, or CallFailed with the error."""
    if "result" in msg:
        fut.set_result(msg["result"])
    else:
        fut.set_exception(CallFailed(f"error response: {msg.get('error')}"))


def fail_all(pending: dict[Any, asyncio.Future[Any]], why: str) -> None:
    """Fail every call still waiting (its connection is gone), and forget them."""
    for fut in pending.values():
        if not fut.done():
            fut.set_exception(CallFailed(why))
    pending.clear()


class CallFailed(BenchError):
    """The server answered a call with a JSON-RPC error, or the connection died under it."""


class NdjsonConnection(asyncio.Protocol):
    """One pipelined NDJSON JSON-RPC connection; `call` returns a future for the result."""

    __slots__ = ("method", "_loop", "_transport", "_splitter", "_pending", "_next_id", "_lost", "notifications")

    def __init__(self, method: str) -> None:
        self.method = method
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._splitter = wire.LineSplitter()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self.notifications = 0
        """Lines without an id (progress, events) a subscribed connection got."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        pending = self._pending
        loads = wire.loads
        for line in self._splitter.feed(data):
            msg = loads(line)
            try:
                fut = pending.pop(msg["id"])
            except KeyError:  # a notification (costs nothing until one comes: only subscribed rows get them)
                self.notifications += 1
                continue
            settle(fut, msg)

    def connection_lost(self, exc: Exception | None) -> None:
        fail_all(self._pending, f"connection lost with calls in flight: {exc}")
        if not self._lost.done():
            self._lost.set_result(None)

    def call(self, params: Any) -> asyncio.Future[Any]:
        """Send one request now; the future resolves to its result."""
        return self.ask(self.method, params)

    def ask(self, method: str, params: Any) -> asyncio.Future[Any]:
        """`call`, of another method."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise CallFailed("connection is closed")
        self._next_id = call_id = self._next_id + 1
        fut = self._loop.create_future()
        self._pending[call_id] = fut
        transport.write(wire.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": call_id}))
        return fut

    async def aclose(self) -> None:
        if self._transport is not None:
            self._transport.close()
            await asyncio.wait_for(asyncio.shield(self._lost), 5)


P = TypeVar("P", bound=asyncio.Protocol)


async def open_unix(path: str, factory: Callable[[], P], attempts: int = 200) -> P:
    """Connect a protocol to a unix socket, retrying while the server's listen backlog is full.

    A unix socket refuses a connect with EAGAIN (not a wait) when its backlog is full, as in a
    burst of hundreds of connects; a client retries shortly after, as the kernel asks.
    """
    loop = asyncio.get_running_loop()
    for _ in range(attempts - 1):
        try:
            _, conn = await loop.create_unix_connection(factory, path)
        except BlockingIOError:
            await asyncio.sleep(0.005)
            continue
        return conn
    _, conn = await loop.create_unix_connection(factory, path)
    return conn


async def open_ndjson(path: str, method: str) -> NdjsonConnection:
    """A bare client connection whose calls are to `method`."""
    return await open_unix(path, functools.partial(NdjsonConnection, method))


class NdjsonConnections:
    """`n` bare client connections; `methods` cycles over them (the RSS phase spreads plugins)."""

    def __init__(self, conns: list[NdjsonConnection]) -> None:
        self.conns = conns
        self.calls: list[Call] = [c.call for c in conns]

    @classmethod
    async def open(cls, path: str, n: int, methods: Sequence[str], batch: int = 64) -> NdjsonConnections:
        conns: list[NdjsonConnection] = []
        try:
            for start in range(0, n, batch):
                conns += await asyncio.gather(
                    *(open_ndjson(path, methods[i % len(methods)]) for i in range(start, min(n, start + batch)))
                )
        except BaseException:
            await cls(conns).aclose()
            raise
        return cls(conns)

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.conns), return_exceptions=True)


class PlugrpcConnections:
    """`n` `plugrpc.Client`s, the project's own async client, for the Client-vs-bare rows."""

    def __init__(self, clients: list[Any], method: str) -> None:
        self._clients = clients
        self.calls: list[Call] = [functools.partial(c.raw, method) for c in clients]

    @classmethod
    async def open(cls, path: str, n: int, method: str, direct: bool = False) -> PlugrpcConnections:
        """With `direct`, each client brokers its direct connection to the plugin at once (a first call), so
        the measured calls are direct ones only."""
        import plugrpc

        clients: list[Any] = []
        try:
            for _ in range(n):
                client = plugrpc.Client(path, direct="require") if direct else plugrpc.Client(path)
                await client.connect()
                clients.append(client)
                if direct:
                    await client.raw(method, {"data": "warm"})
        except BaseException:
            await cls(clients, method).aclose()
            raise
        return cls(clients, method)

    async def aclose(self) -> None:
        for c in self._clients:
            await c.__aexit__(None, None, None)


FRAME_HEAD = b"20:::\n"
FRAME_TAIL = b"\n:::"


def parse_core0(stdout: bytes) -> Any:
    """The result in a core0 plugin's framed stdout (`20:::` / JSON / `:::`)."""
    start = stdout.find(FRAME_HEAD)
    end = stdout.rfind(FRAME_TAIL)
    if start < 0 or end < start:
        raise CallFailed(f"exec plugin wrote no 20::: frame: {stdout[:200]!r}")
    return wire.loads(stdout[start + len(FRAME_HEAD) : end])


class ExecCalls:
    """core0's model: one process per call, `<path> echo <json-args>`, sequential by nature.

    The process runs synchronously in the caller: nothing else shares the loop during an exec
    row, and it spares exec the event loop's child-watcher overhead (its best case).
    """

    def __init__(self, argv: Sequence[str]) -> None:
        self._argv = list(argv)
        self.calls: list[Call] = [self.call]

    async def call(self, params: Any) -> Any:
        # The process runs synchronously (see the class docstring); this yield lets the loop's
        # timers (the measuring window) run between calls.
        await asyncio.sleep(0)
        proc = subprocess.run(  # noqa: ASYNC221
            [*self._argv, "echo", wire.dumps(params)[:-1].decode()],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        if proc.returncode != 0:
            raise CallFailed(f"exec plugin exited {proc.returncode}: {proc.stderr.decode(errors='replace')[:200]}")
        return parse_core0(proc.stdout)

    async def aclose(self) -> None:
        return None
