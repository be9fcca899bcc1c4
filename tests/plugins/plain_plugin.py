#!/usr/bin/env python3
"""A plugin of plain commands only, served by the plain engine (no asyncio); test_plain.py drives it."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import plugrpc

STARTED = []


def add(a: int, b: int = 0) -> int:
    """Add two numbers."""
    return a + b


def echo(value):
    return value


def big(n: int) -> str:
    return "x" * n


def fail():
    raise ValueError("boom")


def steps(n: int) -> int:
    for i in range(n):
        plugrpc.progress({"step": i})
    return n


def emit_from_thread(n: int) -> bool:
    """Events from a thread of the plugin's own: the loop writes them."""
    def run() -> None:
        for i in range(n):
            plugrpc.emit("tick", {"i": i})
    threading.Thread(target=run).start()
    return True


def nap(seconds: float) -> float:
    logging.getLogger("plain").info("napping")  # the test's cue: this request is being run
    time.sleep(seconds)
    return seconds


def facts():
    return {"pid": os.getpid(), "asyncio": "asyncio" in sys.modules, "typing": "typing" in sys.modules,
            "started": STARTED}


def on_start() -> None:
    if os.environ.get("PLAIN_FAIL_START"):
        raise RuntimeError("cannot open the database")
    STARTED.append(True)


if __name__ == "__main__":
    plugrpc.serve({"add": add, "echo": echo, "big": big, "fail": fail, "steps": steps,
                   "emit_from_thread": emit_from_thread, "nap": nap, "facts": facts},
                  on_start=on_start, max_line=int(os.environ.get("PLAIN_MAX_LINE", 64 << 20)))
