#!/usr/bin/env python3
# An SDK plugin that emits, reports progress and calls other plugins, from every kind of handler.
import asyncio
import os
import threading
import time

import plugrpc
from plugrpc import threaded

NAME = os.environ["PLUGRPC_PLUGIN"]
TASKS = set()

def emit(name, n=1, size=0):
    """Plain: n events, all written with this loop turn's write."""
    pad = "x" * size
    for i in range(n):
        plugrpc.emit(name, {"i": i, "pad": pad} if size else {"i": i})
    return n

async def aemit(name, n=1):
    for i in range(n):
        plugrpc.emit(name, {"i": i})
        if i % 10 == 0:
            await asyncio.sleep(0)
    return n

@threaded
def temit(name, n=1):
    for i in range(n):
        plugrpc.emit(name, {"i": i})
    return n

def later(name, n=1):
    """From a task that outlives the call, and from a thread of the plugin's own."""
    async def task():
        for i in range(n):
            await asyncio.sleep(0.001)
            plugrpc.emit(name, {"i": i, "from": "task"})
    def thread():
        for i in range(n):
            plugrpc.emit(name, {"i": i, "from": "thread"})
    t = asyncio.get_running_loop().create_task(task())
    TASKS.add(t)
    t.add_done_callback(TASKS.discard)
    threading.Thread(target=thread).start()
    return True

def inline_progress(steps):
    for i in range(steps):
        plugrpc.progress(i)
    return "inline"

async def async_progress(steps):
    for i in range(steps):
        plugrpc.progress(i)
        await asyncio.sleep(0.001)
    return "async"

@threaded
def threaded_progress(steps):
    for i in range(steps):
        plugrpc.progress(i)
        time.sleep(0.001)
    return "threaded"

async def progress_elsewhere():
    """plugrpc.progress from a task of the plugin's own (not a handler): it says where to call it."""
    def outside():
        try:
            plugrpc.progress(1)
        except RuntimeError as exc:
            return str(exc)
    return await asyncio.get_running_loop().run_in_executor(None, outside)

def pid():
    return os.getpid()

async def call(method, params=None):
    return await plugrpc.call(method, params)

async def fan(method, n):
    """n concurrent calls through the one connection of this process."""
    return await asyncio.gather(*(plugrpc.call(method) for _ in range(n)))

async def loop(depth=0):
    """Calls itself through the router, without end."""
    return await plugrpc.call(NAME + ".loop", [depth + 1])

plugrpc.serve({"emit": emit, "aemit": aemit, "temit": temit, "later": later, "inline_progress": inline_progress,
               "async_progress": async_progress, "threaded_progress": threaded_progress,
               "progress_elsewhere": progress_elsewhere, "pid": pid, "call": call, "fan": fan, "loop": loop})
