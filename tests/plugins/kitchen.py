#!/usr/bin/env python3
# An SDK plugin with a bit of everything. `hidden` is served but never exported.
import asyncio
import os

import plugrpc

ACTIVE = 0
PEAK = 0

def echo(*args, **kwargs):
    return kwargs if kwargs else list(args)

def subtract(minuend, subtrahend):
    return minuend - subtrahend

def update(*args):
    return None

async def sleep(seconds):
    global ACTIVE, PEAK
    ACTIVE += 1
    PEAK = max(PEAK, ACTIVE)
    try:
        await asyncio.sleep(seconds)
    finally:
        ACTIVE -= 1
    return seconds

def peak():
    return PEAK

def pid():
    return os.getpid()

def env(name):
    return os.environ.get(name)

def boom():
    raise ValueError("boom")

def crash():
    print("crashing now", flush=True)  # noqa: T201 (a plugin's stdout is what the router logs of it)
    os._exit(3)

def hidden():
    return "secret"

plugrpc.serve({"echo": echo, "subtract": subtract, "update": update, "sleep": sleep, "peak": peak,
               "pid": pid, "env": env, "boom": boom, "crash": crash, "hidden": hidden})
