"""Hot reload: SIGHUP and `router.reload` re-read the manifest without dropping calls."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

import plugrpc
from plugrpc.testing import RouterProcess, write_image

from plugins.sources import KITCHEN, KITCHEN_EXPORTS, OVS
from util import until, wait_until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]


async def plugin_inflight(client: plugrpc.Client, name: str) -> int:
    rows = {row["name"]: row for row in await client.raw("router.plugins")}
    return rows[name]["inflight"]  # type: ignore[no-any-return]


def test_reload_adds_swaps_and_removes(plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({
        "k": ("k.py", KITCHEN, KITCHEN_EXPORTS),
        "ovs": ("ovs.py", OVS, ["version"]),
        "gone": ("gone.py", OVS, ["version"]),
    })
    router = plugrpc_router(root)

    async def main() -> None:
        async with plugrpc.Client(router.socket, timeout=30) as c:
            ovs_pid = (await c.raw("router.plugins"))[1]["pid"]
            k_pid = await c.raw("k.pid")
            in_flight = [asyncio.ensure_future(c.raw("k.sleep", [0.5])) for _ in range(5)]
            gone_call = asyncio.ensure_future(c.raw("gone.version"))
            steady = asyncio.ensure_future(asyncio.gather(*(c.raw("ovs.version") for _ in range(200))))
            await until(lambda: plugin_inflight(c, "k"), "the five calls to be written to k", expect=5)
            write_image(root, {
                "k": ("k.py", KITCHEN, KITCHEN_EXPORTS, {"timeout": 7}),  # changed
                "ovs": ("ovs.py", OVS, ["version"]),  # unchanged
                "new": ("new.py", OVS, ["version"]),  # added
            })
            result = await c.raw("router.reload")
            assert result == {"added": ["new"], "removed": ["gone"], "changed": ["k"], "unchanged": ["ovs"]}
            assert await asyncio.gather(*in_flight) == [0.5] * 5  # the old k finished its calls
            assert await gone_call == "1.0alpha"
            assert await steady == ["1.0alpha"] * 200
            assert await c.raw("new.version") == "1.0alpha"
            assert await c.raw("k.pid") != k_pid
            with pytest.raises(plugrpc.RpcError) as info:
                await c.raw("gone.version")
            assert info.value.code == -32601
            plugins = {p["name"]: p for p in await c.raw("router.plugins")}
            assert set(plugins) == {"k", "ovs", "new"} and plugins["ovs"]["pid"] == ovs_pid

    asyncio.run(main())


def test_sighup_reloads_and_a_bad_manifest_changes_nothing(plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"ovs": ("ovs.py", OVS, ["version"])})
    router = plugrpc_router(root)
    (root / ".plugin.toml").write_text((root / ".plugin.toml").read_text() + "colour = 1\n")
    with router.client() as c:
        with pytest.raises(plugrpc.RpcError, match="colour"):
            c.raw("router.reload")
        router.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in router.log(), "the refused reload to be logged")
        assert c.raw("ovs.version") == "1.0alpha"
        write_image(root, {"ovs": ("ovs.py", OVS, ["version"]), "two": ("two.py", OVS, ["version"])})
        router.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: len(c.raw("router.plugins")) == 2, "the second plugin")
        assert c.raw("two.version") == "1.0alpha"
    assert "reload refused" in router.log()


def test_a_rebuilt_plugin_is_swapped(plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"ovs": ("ovs.py", OVS, ["version"])})
    router = plugrpc_router(root)
    with router.client() as c:
        assert c.raw("ovs.version") == "1.0alpha"
        (root / "ovs.py").write_text(OVS.lstrip().replace("1.0alpha", "2.0"))
        assert c.raw("router.reload")["changed"] == ["ovs"]
        assert c.raw("ovs.version") == "2.0"
        assert c.raw("router.reload")["changed"] == []
