#!/usr/bin/env python3
"""The bench's SDK plugin: `echo(data)` returns `{"data": data}`, served by `plugrpc.serve`.

The router rows run it as `[plugin.bench] path = "bench_plugin.py"`, the direct row with a
listening socket as fd 3, exactly as the runtime would.
"""

from __future__ import annotations

import plugrpc


def echo(data: str) -> dict[str, str]:
    return {"data": data}


if __name__ == "__main__":
    plugrpc.serve({"echo": echo})
