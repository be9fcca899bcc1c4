"""A plugin exercising every SDK path; the tests in test_sdk.py and test_client.py drive it."""

from __future__ import annotations

import asyncio
import os
import time

from plugrpc.errors import RpcError
from plugrpc.sdk import serve, threaded  # the import path of plugins written before plugrpc.plugin

CANCELLED: list[str] = []
STARTED: set[str] = set()


def add(a: int, b: int = 0) -> int:
    """Add two numbers.

    The second paragraph is not part of the description.
    """
    return a + b


def echo(value):
    return value


def kwonly(*, name: str, shout: bool = False) -> str:
    return name.upper() if shout else name


def fail():
    raise ValueError("boom")


def inner_type_error():
    return len(5)  # a TypeError from inside the handler, not from its arguments


def plugin_error():
    raise RpcError(-32001, "Plugin unavailable", {"plugin": "inner"})


def own_error():
    raise RpcError(4000, "custom failure", [1, 2])


def unserializable():
    return object()


def big(n: int) -> str:
    return "x" * n


async def slow(delay: float) -> float:
    await asyncio.sleep(delay)
    return delay


async def fast() -> str:
    return "fast"


async def wait_forever(tag: str) -> None:
    """Runs until cancelled, recording the cancellation so a test can see it."""
    STARTED.add(tag)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        CANCELLED.append(tag)
        raise


def started(tag: str) -> bool:
    return tag in STARTED


def cancelled() -> list[str]:
    return CANCELLED


async def async_fail(kind: str) -> None:
    await asyncio.sleep(0)
    if kind == "type":
        raise TypeError("wrong type inside")
    raise KeyError(kind)


@threaded
def blocking(delay: float) -> str:
    time.sleep(delay)
    return "slept"


def pid() -> int:
    return os.getpid()


serve(
    {
        "add": add,
        "echo": echo,
        "kwonly": kwonly,
        "fail": fail,
        "inner_type_error": inner_type_error,
        "plugin_error": plugin_error,
        "own_error": own_error,
        "unserializable": unserializable,
        "big": big,
        "slow": slow,
        "fast": fast,
        "wait_forever": wait_forever,
        "started": started,
        "cancelled": cancelled,
        "async_fail": async_fail,
        "blocking": blocking,
        "pid": pid,
        "dotted.name": echo,
    },
    max_line=int(os.environ.get("SDK_TEST_MAX_LINE", 64 * 1024 * 1024)),
)
