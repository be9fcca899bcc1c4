#!/usr/bin/env python3
"""A plugin for the direct-connection tests (test_direct.py): on the plain engine by default, on asyncio
with DIRECT_ENGINE=asyncio, where `slow` is async and reports how many of its calls ran at once."""

from __future__ import annotations

import asyncio
import os

import plugrpc

RUNNING = [0, 0]
"""Calls of `slow` running now, and the most that ever ran at once."""


def add(a: int, b: int = 0) -> int:
    return a + b


def secret() -> str:
    return "not exported"


def tell(name: str) -> bool:
    plugrpc.emit(name, {"told": True})
    return True


def steps(n: int) -> int:
    for i in range(n):
        plugrpc.progress(i)
    return n


async def slow(delay: float) -> int:
    RUNNING[0] += 1
    RUNNING[1] = max(RUNNING)
    try:
        await asyncio.sleep(delay)
    finally:
        RUNNING[0] -= 1
    return RUNNING[1]


if __name__ == "__main__":
    commands = {"add": add, "secret": secret, "tell": tell, "steps": steps}
    engine = os.environ.get("DIRECT_ENGINE", "none")
    if engine == "asyncio":
        commands["slow"] = slow
    plugrpc.serve(commands, loop=engine)
