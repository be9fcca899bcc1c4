#!/usr/bin/env python3
"""The bench's SDK plugin: `echo(data)` returns `{"data": data}`, served by `plugrpc.serve`.

The router rows run it as `[plugin.bench] path = "bench_plugin.py"`, the direct row with a
listening socket as fd 3, exactly as the runtime would. `progress_echo` is `echo` reporting
progress once (the progress row); `burst(n, size)` emits `n` events `tick` at once, each with
the time it was emitted (the fan-out rows). An argument names the event loop (`serve(loop=...)`):
the direct_uvloop row serves the same commands on uvloop instead of the plain engine.
"""

from __future__ import annotations

import sys
import time

import plugrpc


def echo(data: str) -> dict[str, str]:
    return {"data": data}


def progress_echo(data: str) -> dict[str, str]:
    plugrpc.progress(0.5)
    return {"data": data}


def burst(n: int, size: int) -> int:
    pad = "x" * size
    for _ in range(n):
        plugrpc.emit("tick", {"t": time.monotonic_ns(), "pad": pad})
    return n


if __name__ == "__main__":
    plugrpc.serve({"echo": echo, "progress_echo": progress_echo, "burst": burst},
                  loop=sys.argv[1] if len(sys.argv) > 1 else "auto")  # type: ignore[arg-type]
