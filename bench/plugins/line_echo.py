#!/usr/bin/env python3
"""The least JSON-RPC echo plugin, on stdin/stdout (`line_echo.py stdio`) or on the socket handed over as fd 3.

`plugrpc.serve` serves only a socket, so the stdio rows run this instead, and the row beside them
runs the same code on fd 3, so the two differ only in the transport. One thread, a `selectors`
loop, orjson: each read is split into lines, every request answered (`echo` returns its params;
any other method -32601, which the router's liveness ping takes as alive; notifications ignored),
and the answers to one read go out in one write, as the SDK's plain engine does. It handles no
signal: SIGTERM ends it.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys

import orjson

READ_SIZE = 256 * 1024
LISTEN_FD = 3
NEWLINE = orjson.OPT_APPEND_NEWLINE


def answer(line: bytes) -> bytes:
    """The answer line to one request line (b"" for a notification or a blank line)."""
    if not line.strip():
        return b""
    msg = orjson.loads(line)
    if "id" not in msg:
        return b""
    if msg.get("method") == "echo":
        return orjson.dumps({"jsonrpc": "2.0", "result": msg.get("params"), "id": msg["id"]}, option=NEWLINE)
    return orjson.dumps({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"},
                         "id": msg["id"]}, option=NEWLINE)


class Conn:
    """One JSON-RPC connection: where requests are read and answers written (a socket, or stdin and stdout)."""

    __slots__ = ("rfd", "wfd", "rest")

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.rest = b""

    def readable(self) -> bool:
        """Answer what one read brought; False at the end of its input."""
        data = os.read(self.rfd, READ_SIZE)
        if not data:
            return False
        *lines, self.rest = (self.rest + data).split(b"\n")
        out = b"".join(answer(line) for line in lines)
        view = memoryview(out)
        while view:  # blocking fds: each write takes what it can until all is out
            view = view[os.write(self.wfd, view):]
        return True


def serve(listener: socket.socket | None) -> None:
    """Serve the connections `listener` accepts, or (None) stdin and stdout, until the input ends."""
    selector = selectors.DefaultSelector()
    if listener is None:
        selector.register(0, selectors.EVENT_READ, Conn(0, 1))
    else:
        selector.register(listener, selectors.EVENT_READ, None)
    while selector.get_map():
        for key, _ in selector.select():
            if key.data is None:
                sock, _ = listener.accept()  # type: ignore[union-attr]
                fd = sock.detach()  # a blocking fd of its own, closed when its connection ends
                selector.register(fd, selectors.EVENT_READ, Conn(fd, fd))
            elif not key.data.readable():
                selector.unregister(key.fd)
                if listener is None:
                    return
                os.close(key.fd)


if __name__ == "__main__":
    serve(None if sys.argv[1:] == ["stdio"] else socket.socket(fileno=LISTEN_FD))
