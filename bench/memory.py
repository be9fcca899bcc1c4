"""Memory: RSS of fresh servers at rest, with many idle client connections, and under load.

Measured on fresh processes after the rounds (so nothing the rounds left behind counts): the
floor and the proxy for scale, and the router with an image of several plugins, whose RSS with
1,000 idle connections is what the router-RSS targets bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from . import log
from .clients import NdjsonConnections
from .load import drive, rss_of
from .rounds import Results
from .rows import Lab
from .settings import Settings, payload_params


async def _idle_connections(path: str, n: int, methods: list[str]) -> NdjsonConnections:
    """`n` client connections, each after one call, then left idle (the call makes them real)."""
    conns = await NdjsonConnections.open(path, n, methods)
    params = payload_params(100)
    for start in range(0, n, 100):
        await asyncio.wait_for(asyncio.gather(*(c(params) for c in conns.calls[start : start + 100])), 60)
    return conns


async def memory_phase(lab: Lab, results: Results) -> None:
    """RSS at rest, with `idle_conns` idle client connections, and under 64 callers, on fresh servers."""
    settings = results.settings
    targets: list[tuple[str, str, Callable[[], Any]]] = [
        ("floor", "echo", lambda: lab.server("echo")),
        ("proxy", "proxy", lambda: lab.server("proxy")),
    ]
    router_row = next((r for r in results.rows if r.key == "router"), None)
    if router_row is not None and router_row.skip_reason is None:
        targets.append(("router", "router", lambda: lab.start_router("router-rss", plugins=settings.rss_plugins)))
    elif router_row is not None:
        results.rss["router"] = {"skipped": router_row.skip_reason}
    rows = {r.key for r in results.rows}
    load = max(c for c in settings.concurrency)
    load = 64 if 64 in settings.concurrency else load
    for key, _, start in targets:
        if key not in rows:
            continue
        lab.check_stop()
        log(f"[memory] {key}: at rest, {settings.idle_conns} idle connections, {load} callers")
        try:
            results.rss[key] = await _memory_of(start, key, settings, load)
        except Exception as exc:  # reported in the results, like a failed row
            results.rss[key] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"[memory] {key} FAILED: {exc}")
        finally:
            lab.stop_servers()


async def _memory_of(start: Callable[[], Any], key: str, settings: Settings, load: int) -> dict[str, Any]:
    server = await start()
    n_plugins = settings.rss_plugins if key == "router" else 1
    methods = [f"bench{i}.echo" for i in range(n_plugins)] if key == "router" else ["echo"]
    await asyncio.sleep(0.5)
    out: dict[str, Any] = {"plugins": n_plugins if key == "router" else None, "idle_connections": settings.idle_conns,
                           "load_callers": load}
    out["rest_kib"] = rss_of(server.roles())
    conns = await _idle_connections(server.path, settings.idle_conns, methods)
    try:
        await asyncio.sleep(0.5)
        out["idle_kib"] = rss_of(server.roles())
    finally:
        await conns.aclose()
    conns = await NdjsonConnections.open(server.path, load, methods)
    try:
        run = await drive(conns.calls, load, payload_params(100), settings.warmup, max(0.3, settings.duration),
                          server.roles)
    finally:
        await conns.aclose()
    out["load_kib"] = {role: v for role, v in run["rss_kib"].items()}
    out["load_throughput"] = run["throughput"]
    return out

