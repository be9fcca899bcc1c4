"""plugrpc.client: a real SDK plugin process (bound by path, as when run by hand) on a real socket."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from plugrpc import codes
from plugrpc.client.aio import Client
from plugrpc.errors import CallTimeout, ConnectError, ConnectionLost, PluginUnavailable, RpcError

from util import WAIT, BasicPlugin, until


class Plugin(BasicPlugin):
    """sdk_basic.py binding its own socket from $PLUGRPC_SOCKET."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        super().__init__(tmp / "client.sock", env, WAIT)

    def client(self, timeout: float | None = WAIT) -> Client:
        return Client(self.socket, timeout=timeout)


@pytest.fixture
def start(plugrpc_tmp: Path) -> Iterator[Callable[..., Plugin]]:
    plugins: list[Plugin] = []

    def start(**env: str) -> Plugin:
        plugins.append(Plugin(plugrpc_tmp, env))
        return plugins[-1]

    yield start
    for plugin in plugins:
        plugin.stop()


@pytest.fixture
def plugin(start: Callable[..., Plugin]) -> Plugin:
    return start()


async def poll(c: Client, method: str, params: Any, expect: Any) -> None:
    """Ask until the answer is `expect` (state changes in the plugin are not instant)."""
    await until(lambda: c.raw(method, params), f"{method}{params} to answer {expect!r}", expect=expect)


async def test_many_concurrent_pipelined_calls_are_all_matched(plugin: Plugin) -> None:
    values: list[Any] = [i if i % 3 else {"i": i, "s": str(i)} for i in range(1000)]
    async with plugin.client() as c:
        results = await asyncio.gather(*(c.raw("echo", [v]) for v in values))
        assert results == values
        assert repr(c) == f"<Client {plugin.socket} open pending=0>"


async def test_named_params_and_no_params(plugin: Plugin) -> None:
    async with plugin.client() as c:
        assert await c.raw("add", {"a": 2, "b": 5}) == 7
        assert await c.raw("fast") == "fast"
        assert await c.raw("fast", {}) == "fast"
        assert await c.raw("add", (1, 2)) == 3


async def test_errors_raise_with_code_message_and_data(plugin: Plugin) -> None:
    async with plugin.client() as c:
        with pytest.raises(RpcError) as info:
            await c.raw("own_error")
        assert type(info.value) is RpcError
        assert (info.value.code, info.value.message, info.value.data) == (4000, "custom failure", [1, 2])
        with pytest.raises(PluginUnavailable) as unavailable:
            await c.raw("plugin_error")
        assert unavailable.value.code == codes.PLUGIN_UNAVAILABLE and unavailable.value.data == {"plugin": "inner"}
        with pytest.raises(RpcError) as info:
            await c.raw("nope")
        assert (info.value.code, info.value.data) == (codes.METHOD_NOT_FOUND, "nope")
        with pytest.raises(RpcError) as info:
            await c.raw("add", {"b": 1})
        assert info.value.code == codes.INVALID_PARAMS and "'a'" in info.value.data
        assert "Invalid params (-32602): missing a required argument: 'a'" == str(info.value)
        with pytest.raises(RpcError) as info:
            await c.raw("add", 5)  # params must be an object or an array
        assert info.value.code == codes.INVALID_REQUEST
        assert await c.raw("add", [1]) == 1  # the connection is fine after errors


async def test_missing_socket_says_to_start_a_router(plugrpc_tmp: Path) -> None:
    path = plugrpc_tmp / "nobody.sock"
    with pytest.raises(ConnectError, match=rf"{path}.*start a router with `plugrpc run`"):
        async with Client(path):
            pass


async def test_refused_socket_says_to_start_a_router(plugrpc_tmp: Path) -> None:
    path = plugrpc_tmp / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(os.fspath(path))  # bound, never listening: connect() is refused
        with pytest.raises(ConnectError, match=rf"{path}.*start a router with `plugrpc run`"):
            await Client(path).raw("x")


async def test_connection_lost_when_the_peer_dies_mid_call(plugin: Plugin) -> None:
    async with plugin.client() as c:
        call = asyncio.ensure_future(c.raw("wait_forever", ["x"]))
        await poll(c, "started", ["x"], True)
        plugin.proc.kill()
        with pytest.raises(ConnectionLost):
            await call
        with pytest.raises(ConnectionLost):
            await c.raw("add", [1])
        with pytest.raises(ConnectionLost):
            await c.notify("add", [1])
        assert repr(c) == f"<Client {plugin.socket} lost pending=0>"


async def test_timeout_raises_and_cancels_the_call_in_the_plugin(plugin: Plugin) -> None:
    async with plugin.client(timeout=0.2) as c:
        with pytest.raises(CallTimeout) as info:
            await c.raw("wait_forever", ["t1"])
        assert info.value.code == codes.CALL_TIMEOUT and "wait_forever" in info.value.data
        with pytest.raises(CallTimeout):
            await c.raw("wait_forever", ["t2"], timeout=0.05)
        assert repr(c).endswith("pending=0>")
        # The client told the plugin (rpc.cancel) that nobody waits for these any more.
        await poll(c, "cancelled", None, ["t1", "t2"])
        assert await c.raw("slow", [0.3], timeout=WAIT) == 0.3  # a per-call timeout beats the default


async def test_cancelling_a_call_cleans_up(plugin: Plugin) -> None:
    async with plugin.client() as c:
        call = asyncio.ensure_future(c.raw("wait_forever", ["c1"]))
        await poll(c, "started", ["c1"], True)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert repr(c).endswith("pending=0>")
        await poll(c, "cancelled", None, ["c1"])


async def test_notify_sends_without_waiting(plugin: Plugin) -> None:
    async with plugin.client() as c:
        await c.notify("wait_forever", ["n1"])
        await c.notify("nope")  # no response, no error
        await poll(c, "started", ["n1"], True)
        assert repr(c).endswith("pending=0>")


async def test_close_fails_calls_in_flight_and_later_calls(plugin: Plugin) -> None:
    c = plugin.client()
    call = asyncio.ensure_future(c.raw("wait_forever", ["z"]))
    await poll(c, "started", ["z"], True)
    await c.close()
    with pytest.raises(ConnectionLost, match="closed"):
        await call
    with pytest.raises(ConnectionLost, match="closed"):
        await c.raw("add", [1])
    await c.close()  # twice is fine
    never_connected = plugin.client()
    await never_connected.close()
    with pytest.raises(ConnectionLost, match="closed"):
        await never_connected.raw("add", [1])


async def test_default_socket_and_connect_on_first_call(plugin: Plugin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGRPC_ROUTER", str(plugin.socket))
    c = Client()
    assert c.path == plugin.socket and repr(c).endswith("unconnected pending=0>")
    try:
        assert await asyncio.wait_for(asyncio.gather(c.raw("add", [1]), c.raw("add", [2])), WAIT) == [1, 2]
    finally:
        await c.close()


async def test_an_error_about_no_call_explains_the_lost_connection(start: Callable[..., Plugin]) -> None:
    plugin = start(SDK_TEST_MAX_LINE="4096")
    async with plugin.client() as c:
        with pytest.raises(ConnectionLost, match=r"Message too large \(-32004\)"):
            await c.raw("echo", ["x" * 10_000])
