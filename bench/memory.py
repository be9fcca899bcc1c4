"""Memory: RSS of fresh servers at rest, with many idle client connections, and under load.

Measured on fresh processes after the rounds (so nothing the rounds left behind counts): the
floor and the proxy for scale, and the router with an image of several plugins, whose RSS with
1,000 idle connections is what the router-RSS targets bound.
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import log
from .clients import NdjsonConnections
from .load import drive, rss_of
from .rounds import Results
from .rows import ECHO, PROXY
from .servers import Lab, Router, Server, Spec
from .settings import Settings, payload_params


async def _idle_connections(path: str, n: int, methods: list[str]) -> NdjsonConnections:
    """`n` client connections, each after one call, then left idle (the call makes them real)."""
    conns = await NdjsonConnections.open(path, n, methods)
    params = payload_params(100)
    for start in range(0, n, 100):
        await asyncio.wait_for(asyncio.gather(*(c(params) for c in conns.calls[start : start + 100])), 60)
    return conns


def _subjects(settings: Settings) -> list[tuple[str, Spec, list[str]]]:
    """(row, server, methods) of each measured server: the floor and the proxy for scale, and the router
    with an image of `rss_plugins` plugins (the RSS targets' figure)."""
    router = Router("router-rss", plugins=settings.rss_plugins)
    return [("floor", ECHO, ["echo"]), ("proxy", PROXY, ["echo"]), ("router", router, router.methods)]


async def memory_phase(lab: Lab, results: Results) -> None:
    """RSS at rest, with `idle_conns` idle client connections, and under 64 callers, on fresh servers."""
    settings = results.settings
    selected = {r.key for r in results.rows}
    load = 64 if 64 in settings.concurrency else max(settings.concurrency)
    for key, spec, methods in _subjects(settings):
        if key not in selected:
            continue
        if key in results.skipped:
            results.rss[key] = {"skipped": results.skipped[key]}
            continue
        lab.check_stop()
        log(f"[memory] {key}: at rest, {settings.idle_conns} idle connections, {load} callers")
        try:
            results.rss[key] = await _memory_of(await lab.server(spec), spec, methods, settings, load)
        except Exception as exc:  # reported in the results, like a failed row
            results.rss[key] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"[memory] {key} FAILED: {exc}")
        finally:
            lab.stop_servers()


async def _memory_of(server: Server, spec: Spec, methods: list[str], settings: Settings,
                     load: int) -> dict[str, Any]:
    await asyncio.sleep(0.5)
    out: dict[str, Any] = {"plugins": spec.plugins if isinstance(spec, Router) else None,
                           "idle_connections": settings.idle_conns, "load_callers": load}
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
    out["load_kib"] = run["rss_kib"]
    out["load_throughput"] = run["throughput"]
    return out
