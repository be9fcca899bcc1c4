"""The dispatch microbenchmark: one request line to its response line, in process, for each dispatcher.

No sockets and no event loop: what is left is the cost of parsing, dispatching and encoding one
~100 B echo, for orjson alone (the floor), the SDK's pipeline and jsonrpcserver as it ships,
which is what the SDK-vs-jsonrpcserver target compares. It also times parsing and copying a
1 MiB request, the yardstick of the "router adds at most one copy" target.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any, Final

from .settings import MIB, payload_params

DISPATCH_REQUEST: Final = b'{"jsonrpc":"2.0","method":"echo","params":{"data":"' + b"x" * 40 + b'"},"id":7}'


def _time_per_call(fn: Callable[[], Any], seconds: float) -> float:
    """Nanoseconds per call of `fn`, timed over about `seconds` in batches."""
    batch = 200
    n = 0
    clock = time.perf_counter_ns
    start = clock()
    deadline = start + int(seconds * 1e9)
    now = start
    while now < deadline:
        for _ in range(batch):
            fn()
        n += batch
        now = clock()
    return (now - start) / n


def dispatch_candidates() -> dict[str, Callable[[], Any]]:
    """In-process `request line -> response line` for each dispatcher."""
    import orjson
    from jsonrpcserver import Success, dispatch

    from plugrpc.plugin import dispatch as sdk

    line = DISPATCH_REQUEST
    text = line.decode()

    def floor() -> bytes:
        msg = orjson.loads(line)
        return orjson.dumps({"jsonrpc": "2.0", "result": msg["params"], "id": msg["id"]})

    table = sdk.resolve({"echo": lambda data: {"data": data}})

    def plugrpc_dispatch() -> bytes:
        outcome = sdk.dispatch(table, orjson.loads(line))
        return sdk.encode(outcome)  # type: ignore[arg-type]

    methods = {"echo": lambda data: Success({"data": data})}

    def jsonrpcserver_dispatch() -> str:
        return dispatch(text, methods=methods)  # type: ignore[no-any-return]

    return {"orjson envelope only (floor)": floor, "plugrpc.dispatch (SDK)": plugrpc_dispatch,
            "jsonrpcserver.dispatch": jsonrpcserver_dispatch}


def dispatch_round(seconds: float) -> dict[str, float | str]:
    """ns per dispatch of one ~100 B echo request, each candidate checked for the right answer.

    Also `payload_1mib_ns`: parsing a 1 MiB request line plus copying it once, the yardstick of
    the "router adds at most one copy" target.
    """
    import orjson

    out: dict[str, float | str] = {}
    expected = {"jsonrpc": "2.0", "result": {"data": "x" * 40}, "id": 7}
    for name, fn in dispatch_candidates().items():
        got = orjson.loads(fn())
        if got != expected:
            out[name] = f"wrong response: {got!r}"
            continue
        gc.disable()
        try:
            out[name] = _time_per_call(fn, seconds)
        finally:
            gc.enable()
    big = b'{"jsonrpc":"2.0","method":"echo","params":' + orjson.dumps(payload_params(MIB)) + b',"id":7}'
    out["payload_1mib_ns"] = _time_per_call(lambda: (orjson.loads(big), bytearray(big)), seconds) if seconds else 0.0
    return out
