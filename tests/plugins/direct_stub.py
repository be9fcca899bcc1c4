#!/usr/bin/env python3
"""A plugin that speaks the direct-call protocol by hand: the router side's tests run against it.

Every connection serves `echo`, `sleep`, `pid`, `mark`, `progress`, `emit` and `hidden`. After
`rpc.direct {"exports": [...], "max_inflight": N}` (answered `true`) a connection serves only the
exports (-32601 else), runs at most N calls at once (it stops reading meanwhile) and never gets
events. `rpc.ping` answers the direct figures; `rpc.cancel {"id": X}` cancels call X of that
connection. With STUB_NO_DIRECT=1 it answers `rpc.direct` -32601, as a plugin that predates it.
Lines longer than 1 MiB close the connection; a line that is not JSON is answered -32700.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from typing import Any

NO_DIRECT = os.environ.get("STUB_NO_DIRECT") == "1"
MARKS = os.environ.get("STUB_MARKS")
FIGURES = {"connections": 0, "calls": 0, "errors": 0}
PLAIN: set[Conn] = set()


class Conn:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.exports: set[str] | None = None
        self.limit = 0
        self.running: dict[Any, asyncio.Task[None]] = {}

    def send(self, msg: Any) -> None:
        if not self.writer.is_closing():
            self.writer.write(json.dumps(msg).encode() + b"\n")


async def sleep(conn: Conn, id: Any, seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


async def mark(conn: Conn, id: Any, key: str, seconds: float = 0.0) -> str:
    """Append `key` to $STUB_MARKS as it starts: a test counts how often each call ran."""
    assert MARKS is not None
    fd = os.open(MARKS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{key}\n".encode())
    os.close(fd)
    await asyncio.sleep(seconds)
    return key


async def progress(conn: Conn, id: Any, steps: int) -> str:
    for step in range(steps):
        conn.send({"jsonrpc": "2.0", "method": "rpc.progress", "params": {"id": id, "value": step}})
        await asyncio.sleep(0.01)
    return "done"


async def emit(conn: Conn, id: Any, name: str) -> bool:
    for other in list(PLAIN):
        other.send({"jsonrpc": "2.0", "method": "rpc.event", "params": {"name": name, "data": {}}})
    return True


METHODS = {
    "echo": lambda conn, id, value=None: value,
    "pid": lambda conn, id: os.getpid(),
    "hidden": lambda conn, id: "secret",
    "sleep": sleep,
    "mark": mark,
    "progress": progress,
    "emit": emit,
}


def error(id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id}


async def run(conn: Conn, msg: dict[str, Any]) -> None:
    id = msg["id"]
    method = msg["method"]
    params = msg.get("params", [])
    direct = conn.exports is not None
    try:
        fn = METHODS[method]
        args, kwargs = (params, {}) if isinstance(params, list) else ([], params)
        result = fn(conn, id, *args, **kwargs)
        if asyncio.iscoroutine(result):
            result = await result
        conn.send({"jsonrpc": "2.0", "result": result, "id": id})
    except asyncio.CancelledError:
        if direct:
            FIGURES["errors"] += 1
        return
    except Exception as exc:
        if direct:
            FIGURES["errors"] += 1
        conn.send(error(id, -32603, repr(exc)))
    finally:
        conn.running.pop(id, None)
        if direct:
            FIGURES["calls"] += 1


def builtin(conn: Conn, msg: dict[str, Any]) -> bool:
    """rpc.*: True when handled here."""
    method, id = msg["method"], msg.get("id")
    if method == "rpc.cancel":
        task = conn.running.get((msg.get("params") or {}).get("id"))
        if task is not None:
            task.cancel()
        return True
    if method == "rpc.ping" and "id" in msg:
        conn.send({"jsonrpc": "2.0", "result": {"direct": dict(FIGURES)}, "id": id})
        return True
    if method == "rpc.direct" and "id" in msg:
        if NO_DIRECT:
            conn.send(error(id, -32601, "Method not found"))
        elif conn.exports is not None:
            conn.send(error(id, -32600, "already direct"))
        else:
            params = msg["params"]
            conn.exports, conn.limit = set(params["exports"]), params["max_inflight"]
            PLAIN.discard(conn)
            FIGURES["connections"] += 1
            conn.send({"jsonrpc": "2.0", "result": True, "id": id})
        return True
    return False


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = Conn(writer)
    PLAIN.add(conn)
    try:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # over the limit: this connection only
                break
            if not line:
                break
            try:
                msg = json.loads(line)
            except ValueError:
                conn.send(error(None, -32700, "Parse error"))
                continue
            if not isinstance(msg, dict) or not isinstance(msg.get("method"), str):
                conn.send(error(None, -32600, "Invalid Request"))
                continue
            if builtin(conn, msg):
                continue
            if "id" not in msg:
                continue
            if conn.exports is not None and msg["method"] not in conn.exports:
                FIGURES["calls"] += 1
                FIGURES["errors"] += 1
                conn.send(error(msg["id"], -32601, "Method not found"))
                continue
            while conn.limit and len(conn.running) >= conn.limit:
                await asyncio.sleep(0.005)  # backpressure: read no more until one finishes
            conn.running[msg["id"]] = asyncio.ensure_future(run(conn, msg))
    finally:
        PLAIN.discard(conn)
        if conn.exports is not None:
            FIGURES["connections"] -= 1
        for task in conn.running.values():
            task.cancel()
        writer.close()


async def main() -> None:
    listener = socket.socket(fileno=3)
    server = await asyncio.start_unix_server(serve, sock=listener, limit=1 << 20)
    sys.stderr.write(f"direct stub serving (pid {os.getpid()})\n")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
