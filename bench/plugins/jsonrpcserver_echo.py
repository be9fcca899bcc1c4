#!/usr/bin/env python3
"""A plugin that dispatches with `jsonrpcserver.dispatch` as it ships, behind the same uvloop line server.

It serves the listening socket it gets as fd 3 (the plugrpc plugin contract), so it can run
directly or in an image. Only the dispatch differs from the floor echo (same loop, same line
splitting, one write per read): the gap between this row and the floor is what jsonrpcserver
costs per call.
"""

from __future__ import annotations

import asyncio
import signal
import socket

import uvloop
from jsonrpcserver import Result, Success, dispatch, method

from plugrpc.wire import LineSplitter


@method
def echo(data: str) -> Result:
    return Success({"data": data})


class LineDispatch(asyncio.Protocol):
    """One `dispatch(str) -> str` per request line; one write per read."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.splitter = LineSplitter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        lines = self.splitter.feed(data)
        out = [reply.encode() + b"\n" for line in lines if (reply := dispatch(line.decode()))]
        if out:
            self.transport.write(b"".join(out))


async def main() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sock = socket.socket(fileno=3)
    sock.setblocking(False)
    server = await loop.create_unix_server(LineDispatch, sock=sock)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    uvloop.run(main())
