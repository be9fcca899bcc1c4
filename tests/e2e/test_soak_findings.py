"""Defects the chaos soak (`make soak`, bench/soak) found, each held by a test of its own through a real
router (`plugrpc run` in a subprocess), real plugin processes and real sockets."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import plugrpc
from plugrpc.testing import RouterProcess

from plugins.sources import OPS, OPS_EXPORTS
from util import wait_until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]


def row(client: plugrpc.BlockingClient, name: str) -> dict[str, Any]:
    return next(p for p in client.raw("router.plugins") if p["name"] == name)


def test_liveness_pings_do_not_keep_an_idle_plugin_running(plugrpc_image: Image, plugrpc_router: Router) -> None:
    # Pings every 0.2 s, idle_stop 1 s: a ping is the router's own call, not a caller's, and must not
    # count as use (the default ping_interval, 10 s, kept every idle_stop above it from ever firing).
    keys = {"idle_stop": 1, "ping_interval": 0.2, "ping_timeout": 1}
    router = plugrpc_router(plugrpc_image({"idle": ("i.py", OPS, OPS_EXPORTS, keys)}))
    with router.client() as c:
        c.raw("idle.echo", [1])
        called = time.monotonic()
        wait_until(lambda: row(c, "idle")["state"] == "stopped", "the idle plugin to be stopped", timeout=10)
        assert time.monotonic() - called >= 0.8  # idle_stop counts from the router's last touch, a moment earlier
        assert row(c, "idle")["pings"] > 0  # it was pinged meanwhile
        assert c.raw("idle.echo", [2]) == 2  # and the next call starts it again
