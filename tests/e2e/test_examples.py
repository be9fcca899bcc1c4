"""The examples in other languages keep the contract: the Node plugin of the bundled image and
the Go port of a core0 plugin (docs/migration-core0.md). Each is skipped where its toolchain is
missing."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import plugrpc
from plugrpc.config import EXAMPLE_ROOT
from plugrpc.testing import RouterProcess

NODE_PLUGIN = EXAMPLE_ROOT / "plugins" / "node-demo.js"
GO_PORT = EXAMPLE_ROOT.parent / "go-port"
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
needs_go = pytest.mark.skipif(shutil.which("go") is None, reason="go is not installed")


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


@needs_go
def test_go_port_of_a_core0_plugin(plugrpc_tmp: Path, plugrpc_router: Callable[..., RouterProcess]) -> None:
    root = plugrpc_tmp / "image"
    binary = root / "var" / "lib" / "corex" / "plugins" / "ovs-plugin"
    build = subprocess.run(["go", "build", "-o", str(binary), "."], cwd=GO_PORT, capture_output=True, text=True,
                           timeout=50, stdin=subprocess.DEVNULL)
    assert build.returncode == 0, build.stderr
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
