#!/usr/bin/env python3
# An SDK plugin that counts what it is given, so a test can check nothing was lost, duplicated or
# left running. Served by several names at once: every answer says which plugin gave it.
import asyncio
import os
import subprocess
import sys

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
