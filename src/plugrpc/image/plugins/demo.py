#!/usr/bin/env python3
"""A plugin that shows params, async handlers and errors.

    plugrpc call demo.add '[1, 2]'                  -> 3            (array: positional)
    plugrpc call demo.greet '{"name": "Ada"}'       -> "Hello, Ada!" (object: keyword)
    plugrpc call demo.sleep '{"seconds": 0.5}'      -> 0.5          (async; others keep flowing)
    plugrpc call demo.divide '[1, 0]'               -> error -32000 with data
    plugrpc call demo.fail                          -> error -32603 (an exception; the plugin lives on)
"""

import asyncio
from typing import Any

from jsonrpcserver import Error, Result, Success

import plugrpc


def echo(*args: Any, **kwargs: Any) -> Any:
    """Return the params as they came."""
    return kwargs if kwargs else list(args)


def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


def greet(name: str, greeting: str = "Hello") -> str:
    """Greet someone by name."""
    return f"{greeting}, {name}!"


async def sleep(seconds: float) -> float:
    """Sleep without blocking other calls, then return the seconds slept."""
    await asyncio.sleep(seconds)
    return seconds


def divide(a: float, b: float) -> Result:
    """Divide a by b, written as a jsonrpcserver method (Success/Error)."""
    if b == 0:
        return Error(-32000, "Division by zero", {"a": a, "b": b})
    return Success(a / b)


def fail() -> None:
    """Raise, to show that an exception becomes -32603 and the plugin lives on."""
    raise RuntimeError("this handler always fails")


if __name__ == "__main__":
    plugrpc.serve({"echo": echo, "add": add, "greet": greet, "sleep": sleep, "divide": divide, "fail": fail})
