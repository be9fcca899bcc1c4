#!/usr/bin/env python3
"""A JSON-RPC server on stdin and stdout, as MCP servers are, scripted to misbehave on demand.

Each request runs as its own task (answers go out in the order they are ready). `STDIO_HANDSHAKE`
says how `initialize` is answered: `ok` (default), `error`, `silent` (never). `STDIO_RECORD` is a file
each `record` call appends its token to, so a test can tell whether a call ran twice. At the end of
its input it says so on stderr and exits 0, unless `STDIO_STUBBORN` is set: then it ignores both the
end of its input and SIGTERM, and only SIGKILL ends it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

out = sys.stdout.buffer
pending: dict[int, asyncio.Future[Any]] = {}
"""Answers awaited to this server's own requests (to the router), by id."""
tasks: set[asyncio.Task[None]] = set()


def send(msg: dict[str, Any]) -> None:
    out.write(json.dumps(msg).encode() + b"\n")
    out.flush()


def say(text: str) -> None:
    """A line of its log: stderr."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def record(token: str) -> None:
    with open(os.environ["STDIO_RECORD"], "a") as f:
        f.write(f"{token}\n")


async def ask(method: str, id: int) -> Any:
    fut = asyncio.get_running_loop().create_future()
    pending[id] = fut
    send({"jsonrpc": "2.0", "id": id, "method": method})
    return await asyncio.wait_for(fut, 10)


async def handle(msg: dict[str, Any]) -> None:
    method, params, id = msg.get("method"), msg.get("params"), msg.get("id")
    result: Any = None
    if method == "initialize":
        how = os.environ.get("STDIO_HANDSHAKE", "ok")
        if how == "silent":
            return
        if how == "error":
            send({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": "unsupported protocol version"}})
            return
        result = {"server": "scripted", "pid": os.getpid(), "params": params}
    elif method == "notifications/initialized":
        say("initialized")
        return
    elif method == "echo":
        result = params
    elif method.startswith("echo."):
        result = {"method": method, "params": params}
    elif method == "pid":
        result = os.getpid()
    elif method == "sleep":
        await asyncio.sleep(params[0])
        result = params[0]
    elif method == "record":
        record(params[0])
        await asyncio.sleep(params[1])
        result = params[0]
    elif method == "garbage":
        out.write(b"Starting up... this is not JSON\n")
        out.flush()
        return
    elif method == "die":
        os._exit(3)
    elif method == "flood":
        for i in range(params[0]):
            send({"jsonrpc": "2.0", "method": "notifications/tick", "params": {"i": i}})
        result = params[0]
    elif method == "notify":
        send({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": params})
        send({"jsonrpc": "2.0", "method": "rpc.event", "params": {"name": "classic", "data": params}})
        result = True
    elif method == "ask":
        base = 1_000_000 + id  # ids of its own, which may equal the router's: it matches answers by id
        result = [await ask("ping", base), await ask("sampling/createMessage", base + 1)]
    elif id is not None:
        send({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "Method not found"}})
        return
    if id is not None:
        send({"jsonrpc": "2.0", "id": id, "result": result})


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        msg = json.loads(line)
        if "method" not in msg:  # an answer to one of our requests
            fut = pending.pop(msg["id"], None)
            if fut is not None:
                fut.set_result(msg.get("result", msg.get("error")))
            continue
        task = asyncio.create_task(handle(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    say("stdin closed")
    if os.environ.get("STDIO_STUBBORN"):
        await asyncio.Event().wait()


if os.environ.get("STDIO_STUBBORN"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
say(f"scripted server {os.getpid()} up")
asyncio.run(main())
