#!/usr/bin/env python3
"""The bench's calling plugin: the p2p row's load generator, inside a plugin.

`loop(params, warmup, seconds)` calls `bench.echo` through the router with `plugrpc.call`, one
call after another, for `warmup` and then `seconds`, and returns the latency of each call of the
measured window in nanoseconds and how many calls it made in all: the same closed loop as
bench.load's caller, measured the same way, so the row compares with the client row
(plugrpc.Client in the bench process).
"""

from __future__ import annotations

import time
from typing import Any

import plugrpc


async def loop(params: Any, warmup: float, seconds: float) -> dict[str, Any]:
    clock = time.perf_counter_ns
    call = plugrpc.call
    latencies: list[int] = []
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < warmup:
        await call("bench.echo", params)
        calls += 1
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        t0 = clock()
        result = await call("bench.echo", params)
        latencies.append(clock() - t0)
    calls += len(latencies)
    if result != params:
        raise ValueError(f"bench.echo came back different: {str(result)[:80]}")
    return {"seconds": elapsed, "latencies": latencies, "calls": calls}


if __name__ == "__main__":
    plugrpc.serve({"loop": loop})
