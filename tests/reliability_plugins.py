"""Plugin sources and figures for the reliability suite (e2e/test_reliability_*.py, test_fuzz.py, test_security.py).

Heavy scenarios run scaled down by default; `PLUGRPC_SLOW=1` runs them at full size
(tests marked `slow`). With `PLUGRPC_FIGURES=FILE`, tests append what they measured (RSS, time to
first good answer, ...) to FILE as JSON lines; docs/reliability.md reports those figures.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
import pytest

SLOW = os.environ.get("PLUGRPC_SLOW") == "1"
FULL = (pytest.mark.slow, pytest.mark.skipif(not SLOW, reason="full size: run with PLUGRPC_SLOW=1"))
"""Marks for the full-size variant of a scenario: `pytest.param(..., marks=FULL)`."""


def figure(name: str, value: float, unit: str, **context: Any) -> None:
    """Record a measured figure for docs/reliability.md (only when PLUGRPC_FIGURES names a file)."""
    path = os.environ.get("PLUGRPC_FIGURES")
    if path:
        with open(path, "ab") as f:
            f.write(orjson.dumps({"name": name, "value": round(value, 4), "unit": unit, **context}) + b"\n")


# --- processes ---------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    """The fields of /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":", 1) for line in f if ":" in line)


def rss_mib(pid: int) -> float:
    """Resident memory of a process now, in MiB."""
    return int(proc_status(pid)["VmRSS"].split()[0]) / 1024


def peak_rss_mib(pid: int) -> float:
    """The most resident memory a process ever had (VmHWM), in MiB."""
    return int(proc_status(pid)["VmHWM"].split()[0]) / 1024


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- plugin sources ------------------------------------------------------------------------

# An SDK plugin that counts what it is given, so a test can check nothing was lost, duplicated or
# left running. Served by several names at once: every answer says which plugin gave it.
ECHO = '''
#!/usr/bin/env python3
import asyncio, os, subprocess, sys
import plugrpc
from plugrpc import threaded

NAME = os.environ["PLUGRPC_PLUGIN"]
STATS = {"calls": 0, "running": 0, "peak": 0, "cancelled": 0, "hidden": 0}

def echo(payload):
    STATS["calls"] += 1
    return {"by": NAME, "payload": payload}

async def sleep(seconds, payload=None):
    STATS["calls"] += 1
    STATS["running"] += 1
    STATS["peak"] = max(STATS["peak"], STATS["running"])
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        STATS["cancelled"] += 1
        raise
    finally:
        STATS["running"] -= 1
    return {"by": NAME, "payload": payload}

async def hang():
    STATS["running"] += 1
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        STATS["cancelled"] += 1
        raise
    finally:
        STATS["running"] -= 1

@threaded
def block(seconds):
    import time
    STATS["running"] += 1
    try:
        time.sleep(seconds)
    finally:
        STATS["running"] -= 1
    return seconds

def stats():
    return {**STATS, "pid": os.getpid()}

def spawn():
    """Start a grandchild that would outlive us if nobody cleaned up the process group."""
    return subprocess.Popen(["sleep", "300"]).pid

def environ():
    return dict(os.environ)

def argv():
    return sys.argv

def hidden():
    STATS["hidden"] += 1
    return "secret"

plugrpc.serve({"echo": echo, "sleep": sleep, "hang": hang, "block": block, "stats": stats,
               "spawn": spawn, "environ": environ, "argv": argv, "hidden": hidden})
'''
ECHO_EXPORTS = ["echo", "sleep", "hang", "block", "stats", "spawn", "environ", "argv"]

# Exits at once, every time: a crash loop.
CRASHER = '''
#!/bin/sh
echo "crasher: giving up at start-up" >&2
exit 3
'''

# Speaks the contract without plugrpc, one connection at a time, and misbehaves on request.
# `hold` is never answered, so it stays in flight until something else breaks the connection.
FAULTY = r'''
#!/usr/bin/env python3
import json, socket

server = socket.socket(fileno=3)

def handle(f, req):
    method, rid, params = req.get("method"), req.get("id"), req.get("params")
    if rid is None or method == "hold":
        return True
    if method == "ok":
        out = json.dumps({"jsonrpc": "2.0", "result": params, "id": rid}).encode() + b"\n"
    elif method == "garbage":
        out = b"this is not json\n"
    elif method == "half":
        f.write(b'{"jsonrpc": "2.0", "res')
        f.flush()
        return False
    elif method == "unknown-id":
        out = json.dumps({"jsonrpc": "2.0", "result": 1, "id": rid + 1000000}).encode() + b"\n"
    elif method == "twice":
        line = json.dumps({"jsonrpc": "2.0", "result": "once", "id": rid}).encode() + b"\n"
        out = line + line
    elif method == "reply":  # answer with any JSON value, our id filled in when it is an object
        reply = params["reply"]
        if isinstance(reply, dict) and params.get("with_id", True):
            reply["id"] = rid
        out = json.dumps(reply).encode() + b"\n"
    elif method == "bytes":  # answer with any bytes at all
        out = bytes.fromhex(params["hex"])
    elif method == "deep":  # an answer nested params[0] levels deep
        n = params[0]
        out = b'{"jsonrpc": "2.0", "result": ' + b"[" * n + b"]" * n + b', "id": %d}\n' % rid
    elif method == "flood":  # a line of params["mib"] MiB, ended only if it is ever finished
        f.write(b'{"jsonrpc": "2.0", "result": "')
        chunk = b"x" * (1 << 20)
        for _ in range(params["mib"]):
            f.write(chunk)
        out = b'", "id": %d}\n' % rid
    else:
        out = json.dumps({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"},
                          "id": rid}).encode() + b"\n"
    f.write(out)
    f.flush()
    return True

while True:
    conn, _ = server.accept()
    f = conn.makefile("rwb")
    try:
        for line in f:
            if not handle(f, json.loads(line)):
                break
    except (OSError, ValueError):
        pass
    finally:
        try:
            f.close()
        except OSError:
            pass
        conn.close()
'''
FAULTY_EXPORTS = ["ok", "hold", "garbage", "half", "unknown-id", "twice", "reply", "bytes", "deep", "flood"]

# Every kind of handler the SDK knows, for fuzzing it: params of any shape reach all of them.
FUZZ = '''
#!/usr/bin/env python3
import asyncio
import plugrpc
from plugrpc.errors import RpcError

def echo(*args, **kwargs):
    return kwargs if kwargs else list(args)

def add(a, b=0):
    return a + b

def kwonly(*, name, shout=False):
    return name.upper() if shout else name

async def aecho(value=None):
    await asyncio.sleep(0)
    return value

def boom(*args, **kwargs):
    raise ValueError("boom")

def refuse(*args, **kwargs):
    raise RpcError(-32000, "refused", {"args": list(args), "kwargs": kwargs})

def unserializable(*args, **kwargs):
    return object()

def huge(*args, **kwargs):
    return 2 ** 100

def deep(depth=300):
    value = []
    for _ in range(min(int(depth), 1000)):
        value = [value]
    return value

plugrpc.serve({"echo": echo, "add": add, "kwonly": kwonly, "aecho": aecho, "boom": boom, "refuse": refuse,
               "unserializable": unserializable, "huge": huge, "deep": deep})
'''
FUZZ_EXPORTS = ["echo", "add", "kwonly", "aecho", "boom", "refuse", "unserializable", "huge", "deep"]


def response_problem(msg: Any) -> str | None:
    """Why `msg` is not a valid JSON-RPC 2.0 response (or batch of them), or None when it is."""
    if type(msg) is list:
        if not msg:
            return "an empty batch response"
        for one in msg:
            problem = response_problem(one)
            if problem is not None:
                return problem
        return None
    if type(msg) is not dict:
        return f"not an object: {msg!r:.200}"
    if msg.get("jsonrpc") != "2.0":
        return f"jsonrpc is not '2.0': {msg!r:.200}"
    if "id" not in msg or not (msg["id"] is None or type(msg["id"]) in (str, int, float)):
        return f"missing or invalid id: {msg!r:.200}"
    if ("result" in msg) == ("error" in msg):
        return f"needs exactly one of result and error: {msg!r:.200}"
    if "error" in msg:
        error = msg["error"]
        if type(error) is not dict or type(error.get("code")) is not int or type(error.get("message")) is not str:
            return f"malformed error member: {msg!r:.200}"
    if set(msg) - {"jsonrpc", "id", "result", "error"}:
        return f"unexpected members: {msg!r:.200}"
    return None
