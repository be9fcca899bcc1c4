"""The floor rows' servers: an NDJSON JSON-RPC echo (1 hop), a naive line proxy and a bare parsing router (2 hops).

`python -m bench.baselines echo` serves the listening socket it gets as fd 3 (LISTEN_FDS=1);
`python -m bench.baselines proxy --upstream PATH` does too and opens one upstream connection
per client connection, copying complete lines both ways without parsing them. Both run on
uvloop with asyncio.Protocol and write once per read: the least any server or router can do.

`python -m bench.baselines router --upstream PATH` is the least design of a router that parses, with none of plugrpc's
features: it parses each request, routes it by the method's prefix, remaps its id onto one
pipelined upstream connection and coalesces writes per loop turn, with plugrpc's own line
splitter and outbox. No exports, validation, timeouts, in-flight bounds or statistics: it is
the floor for any router that must parse, so `router / this row` is what those features cost
and `this row / proxy` is what parsing costs on this machine.

The echo answers every request with `{"jsonrpc": "2.0", "result": <params>, "id": <id>}`, so the
same client and the same result check serve every row; it parses each line with orjson
because a JSON-RPC server must, which makes it the floor for a plugin, not for a byte pipe.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
from typing import Any

import uvloop

from plugrpc import codes, wire
from plugrpc.outbox import LineWriter, Outbox

LISTEN_FD = 3


def inherited_socket() -> socket.socket:
    """The listening socket handed over as fd 3 (systemd socket activation)."""
    if os.environ.get("LISTEN_FDS") != "1":
        raise SystemExit("expected a listening socket as fd 3 with LISTEN_FDS=1")
    sock = socket.socket(fileno=LISTEN_FD)
    sock.setblocking(False)
    return sock


class EchoProtocol(asyncio.Protocol):
    """Answers each request line with its params as the result; one write per read."""

    __slots__ = ("_transport", "_splitter")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._splitter = wire.LineSplitter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        try:
            lines = self._splitter.feed(data)
        except wire.LineTooLong:
            transport.write(wire.too_large_line(self._splitter.max_line))
            transport.close()
            return
        out = []
        loads, dumps = wire.loads, wire.dumps
        for line in lines:
            msg = loads(line)
            if "id" in msg:
                out.append(dumps({"jsonrpc": "2.0", "result": msg.get("params"), "id": msg["id"]}))
        if len(out) == 1:
            transport.write(out[0])
        elif out:
            transport.write(b"".join(out))


class _LineForwarder(asyncio.Protocol):
    """Copies complete lines from its own transport to `peer`; a partial line waits for its end."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self._partial: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        nl = data.rfind(b"\n")
        if nl < 0:
            self._partial.append(data)
            return
        end = nl + 1
        head = data if end == len(data) else data[:end]
        peer = self.peer
        assert peer is not None
        if self._partial:
            self._partial.append(head)
            peer.writelines(self._partial)
            self._partial = []
        else:
            peer.write(head)
        if end != len(data):
            self._partial.append(data[end:])


class _Upstream(_LineForwarder):
    """The proxy's connection to the echo; its lines go back to the client."""

    def __init__(self, front: ProxyFront) -> None:
        super().__init__()
        self.front = front

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = self.front.transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.front.transport is not None:
            self.front.transport.close()


class ProxyFront(_LineForwarder):
    """A client connection; it opens its own upstream connection (naive: no multiplexing)."""

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self._upstream_path = upstream
        self._up: _Upstream | None = None
        self._early: list[bytes] = []
        """Data read before the upstream connection exists (uvloop may deliver it despite pause_reading)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.pause_reading()  # type: ignore[attr-defined]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        try:
            _, up = await asyncio.get_running_loop().create_unix_connection(
                lambda: _Upstream(self), self._upstream_path
            )
        except OSError:
            self.transport.close()
            return
        self._up = up
        self.peer = up.transport
        for data in self._early:
            super().data_received(data)
        self._early.clear()
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self._early.append(data)
        else:
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._up is not None and self._up.transport is not None:
            self._up.transport.close()


class _RouterUpstream(LineWriter, asyncio.Protocol):
    """The bare router's one pipelined connection to the echo: our ids -> (client, its id)."""

    def __init__(self, outbox: Outbox, lost: asyncio.Event) -> None:
        self.outbox = outbox
        self.lost = lost
        self.transport: asyncio.WriteTransport | None = None
        self._out: list[bytes] = []
        self.splitter = wire.LineSplitter()
        self.pending: dict[int, tuple[BareRouterFront, Any]] = {}
        self.next_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()

    def send(self, name: str, params: Any, front: BareRouterFront, client_id: Any) -> None:
        self.next_id = uid = self.next_id + 1
        self.pending[uid] = (front, client_id)
        line = wire.dumps({"jsonrpc": "2.0", "method": name, "params": params, "id": uid})
        if len(self.pending) == 1:
            self.write_now(line)
        else:
            self.queue(line)

    def data_received(self, data: bytes) -> None:
        pending = self.pending
        for line in self.splitter.feed(data):
            msg = wire.loads(line)
            front, msg["id"] = pending.pop(msg["id"])
            front.inflight -= 1
            if front.inflight:
                front.queue(wire.dumps(msg))
            else:
                front.write_now(wire.dumps(msg))


class BareRouterFront(LineWriter, asyncio.Protocol):
    """A client connection to the bare router."""

    def __init__(self, outbox: Outbox, upstreams: dict[str, _RouterUpstream]) -> None:
        self.outbox = outbox
        self.upstreams = upstreams
        self.transport: asyncio.WriteTransport | None = None
        self._out: list[bytes] = []
        self.splitter = wire.LineSplitter()
        self.inflight = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for line in self.splitter.feed(data):
            msg = wire.loads(line)
            plugin, _, name = msg["method"].partition(".")
            upstream = self.upstreams.get(plugin)
            if upstream is None:
                self.queue(wire.error_line(msg.get("id"), codes.METHOD_NOT_FOUND))
                continue
            self.inflight += 1
            upstream.send(name, msg.get("params"), self, msg["id"])


async def serve_router(upstream: str) -> None:
    """The bare router: every method `bench.*` goes to the one upstream connection."""
    outbox, lost = Outbox(), asyncio.Event()
    _, up = await asyncio.get_running_loop().create_unix_connection(lambda: _RouterUpstream(outbox, lost), upstream)
    upstreams = {"bench": up}
    await serve(lambda: BareRouterFront(outbox, upstreams), stop=lost)
    if up.transport is None or up.transport.is_closing():  # not a signal: the echo went away
        raise SystemExit("the echo closed the bare router's connection")


async def until_signalled(stop: asyncio.Event | None = None) -> None:
    """Return on SIGTERM or SIGINT (or once `stop` is set): how every bench server is told to finish."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(factory: Any, stop: asyncio.Event | None = None) -> None:
    """Serve fd 3 with `factory` until SIGTERM or SIGINT (or until `stop` is set)."""
    server = await asyncio.get_running_loop().create_unix_server(factory, sock=inherited_socket(), backlog=4096)
    async with server:
        await until_signalled(stop)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["echo", "proxy", "router"])
    parser.add_argument("--upstream", help="the echo's socket (proxy and router)")
    args = parser.parse_args()
    if args.kind == "echo":
        uvloop.run(serve(EchoProtocol))
        return
    if not args.upstream:
        parser.error(f"{args.kind} needs --upstream")
    upstream = args.upstream
    if args.kind == "proxy":
        uvloop.run(serve(lambda: ProxyFront(upstream)))
    else:
        uvloop.run(serve_router(upstream))


if __name__ == "__main__":
    main()
