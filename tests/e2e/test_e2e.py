"""End to end: `plugrpc run` in a subprocess, real plugin processes, real unix sockets."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

import plugrpc
from plugrpc.testing import RouterProcess

from plugins.sources import KITCHEN, KITCHEN_EXPORTS, NODE, OVS, raw
from util import RawConn, alive, req, until, wait_until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]


@pytest.fixture
def kitchen(plugrpc_image: Image, plugrpc_router: Router) -> RouterProcess:
    root = plugrpc_image({
        "k": ("plugins/kitchen.py", KITCHEN, KITCHEN_EXPORTS, {"timeout": 2}),
        "ovs": ("/var/lib/corex/plugins/ovs-plugin", OVS, ["version"]),
    })
    return plugrpc_router(root)


async def inflight(client: plugrpc.Client) -> int:
    return (await client.raw("router.stats"))["inflight"]  # type: ignore[no-any-return]


class TestExampleImage:
    def test_bundled_image_answers_ovs_version(self, plugrpc_tmp: Path) -> None:
        router = RouterProcess(plugrpc.config.EXAMPLE_ROOT, plugrpc_tmp / "ex.sock").wait_ready()
        try:
            with router.client() as c:
                assert c.raw("ovs.version", {}) == "1.0alpha"
                assert c.raw("demo.add", [1, 2]) == 3
                assert c.raw("demo.greet", {"name": "Ada"}) == "Hello, Ada!"
                with pytest.raises(plugrpc.RpcError) as info:
                    c.raw("demo.divide", [1, 0])
                assert (info.value.code, info.value.message, info.value.data) == (
                    -32000, "Division by zero", {"a": 1, "b": 0})
                with pytest.raises(plugrpc.RpcError) as info:
                    c.raw("demo.fail")
                assert info.value.code == -32603
                assert c.raw("demo.sleep", {"seconds": 0.01}) == 0.01
        finally:
            assert router.stop() == 0


class TestSpecExamples:
    """The examples of the JSON-RPC 2.0 specification, section 7, through the router."""

    def test_positional_and_named(self, kitchen: RouterProcess) -> None:
        with RawConn(kitchen.socket) as c:
            assert c.ask(b'{"jsonrpc": "2.0", "method": "k.subtract", "params": [42, 23], "id": 1}\n') == {
                "jsonrpc": "2.0", "result": 19, "id": 1}
            assert c.ask(b'{"jsonrpc": "2.0", "method": "k.subtract", "params": [23, 42], "id": 2}\n')["result"] == -19
            named = (b'{"jsonrpc": "2.0", "method": "k.subtract", '
                     b'"params": {"subtrahend": 23, "minuend": 42}, "id": 3}\n')
            assert c.ask(named) == {"jsonrpc": "2.0", "result": 19, "id": 3}

    def test_notifications_get_no_response(self, kitchen: RouterProcess) -> None:
        with RawConn(kitchen.socket) as c:
            c.send(b'{"jsonrpc": "2.0", "method": "k.update", "params": [1,2,3,4,5]}\n')
            c.send(b'{"jsonrpc": "2.0", "method": "k.foobar"}\n')
            assert c.ask(req("k.echo", [1], id="after")) == {"jsonrpc": "2.0", "result": [1], "id": "after"}

    def test_method_not_found(self, kitchen: RouterProcess) -> None:
        with RawConn(kitchen.socket) as c:
            resp = c.ask(b'{"jsonrpc": "2.0", "method": "k.foobar", "id": "1"}\n')
            assert resp["id"] == "1" and resp["error"]["code"] == -32601
            assert resp["error"]["data"]["plugin"] == "k"

    def test_invalid_json_then_connection_goes_on(self, kitchen: RouterProcess) -> None:
        with RawConn(kitchen.socket) as c:
            resp = c.ask(b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]\n')
            assert resp["id"] is None and resp["error"]["code"] == -32700
            assert c.ask(req("k.echo", [2]))["result"] == [2]

    @pytest.mark.parametrize("line, code", [
        pytest.param(b'{"jsonrpc": "2.0", "method": 1, "params": "bar"}\n', -32600, id="invalid-request"),
        pytest.param(b'[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
                     b'{"jsonrpc": "2.0", "method"]\n', -32700, id="batch-invalid-json"),
    ])
    def test_a_message_without_a_readable_id_is_answered_with_a_null_one(self, kitchen: RouterProcess, line: bytes,
                                                                         code: int) -> None:
        with RawConn(kitchen.socket) as c:
            resp = c.ask(line)
            assert resp["id"] is None and resp["error"]["code"] == code

    def test_empty_and_invalid_batches(self, kitchen: RouterProcess) -> None:
        with RawConn(kitchen.socket) as c:
            assert c.ask(b"[]\n")["error"]["code"] == -32600
            one = c.ask(b"[1]\n")
            assert isinstance(one, list) and len(one) == 1 and one[0]["error"]["code"] == -32600
            three = c.ask(b"[1,2,3]\n")
            assert [r["error"]["code"] for r in three] == [-32600] * 3

    def test_mixed_batch(self, kitchen: RouterProcess) -> None:
        batch = (b'[{"jsonrpc": "2.0", "method": "k.echo", "params": [1,2,4], "id": "1"},'
                 b'{"jsonrpc": "2.0", "method": "k.update", "params": [7]},'
                 b'{"jsonrpc": "2.0", "method": "k.subtract", "params": [42,23], "id": "2"},'
                 b'{"foo": "boo"},'
                 b'{"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},'
                 b'{"jsonrpc": "2.0", "method": "k.sleep", "params": [0.05], "id": "9"}]\n')
        with RawConn(kitchen.socket) as c:
            resp = c.ask(batch)
        by_id = {r["id"]: r for r in resp}
        assert len(resp) == 5
        assert by_id["1"]["result"] == [1, 2, 4]
        assert by_id["2"]["result"] == 19
        assert by_id[None]["error"]["code"] == -32600
        assert by_id["5"]["error"]["code"] == -32601
        assert by_id["9"]["result"] == 0.05

    def test_batch_of_notifications_gets_nothing(self, kitchen: RouterProcess) -> None:
        with RawConn(kitchen.socket) as c:
            c.send(b'[{"jsonrpc": "2.0", "method": "k.update", "params": [1]},'
                   b'{"jsonrpc": "2.0", "method": "k.update"}]\n')
            assert c.ask(req("k.echo", ["next"], id=5)) == {"jsonrpc": "2.0", "result": ["next"], "id": 5}


class TestRouting:
    @pytest.mark.parametrize("id", ["abc", 0, -7, 2**53, 1.5, None, "ünï©ødé", ""])
    def test_client_id_comes_back_exactly(self, kitchen: RouterProcess, id: Any) -> None:
        with RawConn(kitchen.socket) as c:
            assert c.ask(req("k.echo", [1], id=id)) == {"jsonrpc": "2.0", "result": [1], "id": id}

    @pytest.mark.parametrize("msg", [
        {"jsonrpc": "2.0", "method": "k.echo", "id": {"a": 1}},
        {"jsonrpc": "2.0", "method": "k.echo", "id": [1]},
        {"jsonrpc": "1.0", "method": "k.echo", "id": 1},
        {"method": "k.echo", "id": 1},
        {"jsonrpc": "2.0", "method": "k.echo", "id": 1, "params": 3},
    ])
    def test_invalid_requests(self, kitchen: RouterProcess, msg: Any) -> None:
        with RawConn(kitchen.socket) as c:
            resp = c.ask(msg)
            assert resp["error"]["code"] == -32600
            assert resp["id"] == (1 if msg.get("id") == 1 else None)

    def test_only_exports_are_reachable(self, kitchen: RouterProcess) -> None:
        with kitchen.client() as c:
            for method in ("k.hidden", "k.rpc.discover", "nope.version", "noplugin", "k.", ".x"):
                with pytest.raises(plugrpc.RpcError) as info:
                    c.raw(method)
                assert info.value.code == -32601, method
            with pytest.raises(plugrpc.RpcError) as info:
                c.raw("k.hidden")
            assert info.value.data["plugin"] == "k"

    def test_params_pass_through_untouched(self, kitchen: RouterProcess) -> None:
        params = {"nested": {"list": [1, 2.5, None, True, "x" * 1000]}, "unicode": "ü☃", "empty": {}}
        with kitchen.client() as c:
            assert c.raw("k.echo", params) == params
            assert c.raw("k.echo", [params, [], 0]) == [params, [], 0]

    def test_plugin_errors_pass_through(self, kitchen: RouterProcess) -> None:
        with kitchen.client() as c:
            with pytest.raises(plugrpc.RpcError) as info:
                c.raw("k.boom")
            assert info.value.code == -32603 and "boom" in str(info.value.data)
            with pytest.raises(plugrpc.RpcError) as info:
                c.raw("k.subtract", [1])
            assert info.value.code == -32602
            assert c.raw("k.subtract", [3, 1]) == 2

    def test_builtins(self, kitchen: RouterProcess) -> None:
        with kitchen.client() as c:
            c.raw("k.echo", [1])
            plugins = {p["name"]: p for p in c.raw("router.plugins")}
            assert set(plugins) == {"k", "ovs"}
            k = plugins["k"]
            assert k["state"] == "running" and isinstance(k["pid"], int) and k["exports"] == KITCHEN_EXPORTS
            assert k["restarts"] == 0 and k["inflight"] == 0 and k["calls"] >= 1
            stats = c.raw("router.stats")
            assert stats["calls"] >= 1 and stats["plugins"]["k"]["calls"] >= 1
            assert c.raw("router.health") == {"status": "ok", "plugins": {"k": "running", "ovs": "running"}}
            doc = c.raw("rpc.discover")
            names = {m["name"] for m in doc["methods"]}
            assert {"k.echo", "ovs.version", "router.plugins"} <= names and "k.hidden" not in names

    async def test_100_clients_x_100_pipelined_calls(self, kitchen: RouterProcess) -> None:
        async def one_client(n: int) -> None:
            async with plugrpc.Client(kitchen.socket, timeout=60) as c:
                payloads = [{"client": n, "call": i, "pad": "x" * (i * 7 % 300)} for i in range(100)]
                results = await asyncio.gather(*(c.raw("k.echo", p) for p in payloads))
                assert results == payloads

        await asyncio.wait_for(asyncio.gather(*(one_client(n) for n in range(100))), 60)
        with kitchen.client() as c:
            assert c.raw("router.plugins")[0]["inflight"] == 0

    def test_one_request_at_a_time(self, plugrpc_image: Image, plugrpc_router: Router) -> None:
        root = plugrpc_image({"k": ("k.py", KITCHEN, KITCHEN_EXPORTS, {"max_inflight": 1})})
        router = plugrpc_router(root)

        async def main() -> None:
            async with plugrpc.Client(router.socket, timeout=30) as c:
                await asyncio.gather(*(c.raw("k.sleep", [0.02]) for _ in range(10)))
                assert await c.raw("k.peak") == 1

        asyncio.run(main())

    def test_plugin_in_another_language(self, plugrpc_image: Image, plugrpc_router: Router) -> None:
        if shutil.which("node") is None:
            pytest.skip("node is not installed")
        root = plugrpc_image({"js": ("plugins/js", NODE, ["add", "who"])})
        with plugrpc_router(root).client() as c:
            assert c.raw("js.add", [2, 3]) == 5
            assert c.raw("js.who") == "js"


class TestFaults:
    def test_plugin_death_fails_inflight_calls_at_once_then_restarts(self, plugrpc_image: Image,
                                                                     plugrpc_router: Router) -> None:
        root = plugrpc_image({"k": ("k.py", KITCHEN, KITCHEN_EXPORTS, {"timeout": 30})})
        router = plugrpc_router(root)

        async def main() -> None:
            async with plugrpc.Client(router.socket, timeout=30) as c:
                old = await c.raw("k.pid")
                slow = [asyncio.ensure_future(c.raw("k.sleep", [20])) for _ in range(5)]
                await until(lambda: inflight(c), "the five calls to be in flight", expect=5)
                started = time.monotonic()
                with pytest.raises(plugrpc.PluginUnavailable):
                    await c.raw("k.crash")
                for fut in slow:
                    with pytest.raises(plugrpc.PluginUnavailable) as info:
                        await fut
                    assert info.value.data["plugin"] == "k"
                assert time.monotonic() - started < 5  # not the 20 s of the call, nor its 30 s timeout
                new = await c.raw("k.pid")  # waits in the backlog while the plugin restarts
                assert new != old
                plugins = await c.raw("router.plugins")
                assert plugins[0]["restarts"] == 1

        asyncio.run(main())
        assert "crashing now" in router.log()

    def test_timeout(self, kitchen: RouterProcess) -> None:
        async def main() -> None:
            async with plugrpc.Client(kitchen.socket, timeout=30) as c:
                slow = asyncio.ensure_future(c.raw("k.sleep", [10]))
                for i in range(20):  # other calls keep flowing meanwhile
                    assert await c.raw("k.echo", [i]) == [i]
                assert await c.raw("ovs.version") == "1.0alpha"
                with pytest.raises(plugrpc.CallTimeout) as info:
                    await slow
                assert info.value.data["plugin"] == "k"
                stats = await c.raw("router.stats")
                assert stats["plugins"]["k"]["timeouts"] == 1

        asyncio.run(main())

    def test_overloaded(self, plugrpc_image: Image, plugrpc_router: Router) -> None:
        root = plugrpc_image({"k": ("k.py", KITCHEN, KITCHEN_EXPORTS, {"max_pending": 5})})
        router = plugrpc_router(root)

        async def main() -> None:
            async with plugrpc.Client(router.socket, timeout=30) as c:
                results = await asyncio.gather(*(c.raw("k.sleep", [0.3]) for _ in range(20)), return_exceptions=True)
                overloaded = [r for r in results if isinstance(r, plugrpc.Overloaded)]
                assert len(overloaded) == 15 and results.count(0.3) == 5
                assert await c.raw("k.echo", [1]) == [1]

        asyncio.run(main())

    @pytest.mark.parametrize("mode", ["garbage", "half", "unknown-id"])
    def test_misbehaving_plugin_is_reset_and_others_unaffected(self, mode: str, plugrpc_image: Image,
                                                               plugrpc_router: Router) -> None:
        root = plugrpc_image({"bad": ("bad.py", raw(mode), ["x"]), "ovs": ("ovs.py", OVS, ["version"])})
        router = plugrpc_router(root)
        with router.client() as c:
            for _ in range(3):
                with pytest.raises(plugrpc.PluginUnavailable) as info:
                    c.raw("bad.x", [1])
                assert info.value.data["plugin"] == "bad"
            assert c.raw("ovs.version") == "1.0alpha"
            assert c.raw("router.plugins")[0]["inflight"] == 0

    def test_oversized_line_closes_only_that_connection(self, plugrpc_image: Image, plugrpc_router: Router) -> None:
        router = plugrpc_router(plugrpc_image({"k": ("k.py", KITCHEN, KITCHEN_EXPORTS)}), "--max-line", "4096")
        big = orjson.dumps(req("k.echo", ["x" * 10_000])) + b"\n"
        with RawConn(router.socket) as other:
            with RawConn(router.socket) as c:
                resp = c.ask(big)
                assert resp["error"]["code"] == -32004
                assert c.closed_by_peer()
            with RawConn(router.socket) as c:  # requests before the long line in the same write are answered
                c.send(orjson.dumps(req("k.sleep", [0.2], id="before")) + b"\n" + big)
                answers = {r["id"]: r for r in (c.recv(), c.recv())}
                assert answers["before"]["result"] == 0.2 and answers[None]["error"]["code"] == -32004
                assert c.closed_by_peer()
            assert other.ask(req("k.echo", ["y" * 1000]))["result"] == ["y" * 1000]

    def test_client_disconnect_cancels_its_calls(self, kitchen: RouterProcess) -> None:
        with RawConn(kitchen.socket) as c:
            for i in range(10):
                c.send(req("k.sleep", [1.5], id=i))
            with kitchen.client() as probe:
                wait_until(lambda: probe.raw("router.plugins")[0]["inflight"] == 10, timeout=5)
        with kitchen.client() as probe:
            wait_until(lambda: probe.raw("router.plugins")[0]["inflight"] == 0, timeout=5)
            assert probe.raw("router.stats")["inflight"] == 0

    def test_client_rpc_cancel_stops_its_call(self, kitchen: RouterProcess) -> None:
        with RawConn(kitchen.socket) as c, kitchen.client() as probe:
            c.send(req("k.sleep", [1.5], id="slow"))
            c.send(req("k.sleep", [1.5], id="other"))
            wait_until(lambda: probe.raw("router.plugins")[0]["inflight"] == 2, timeout=5)
            c.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": "slow"}})
            wait_until(lambda: probe.raw("router.plugins")[0]["inflight"] == 1, timeout=5)
            assert c.ask(req("rpc.cancel", {"id": "nope"}, id=2)) == {"jsonrpc": "2.0", "result": False, "id": 2}
            assert c.recv()["id"] == "other"  # "slow" never answers: its client gave up on it

    def test_sigterm_finishes_inflight_calls_and_cleans_up(self, kitchen: RouterProcess) -> None:
        with kitchen.client() as c:
            pid = c.raw("k.pid")
            runtime_dir = Path(c.raw("k.env", ["PLUGRPC_SOCKET"])).parent
        assert stat.S_IMODE(runtime_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((runtime_dir / "k.sock").stat().st_mode) == 0o600
        with RawConn(kitchen.socket) as c:
            c.send(req("k.sleep", [0.5], id="slow"))
            with kitchen.client() as probe:
                wait_until(lambda: probe.raw("router.plugins")[0]["inflight"] == 1, "the call to be in flight")
            kitchen.proc.send_signal(signal.SIGTERM)
            assert c.recv() == {"jsonrpc": "2.0", "result": 0.5, "id": "slow"}
        assert kitchen.proc.wait(20) == 0
        assert not kitchen.socket.exists()
        assert not alive(pid)
        assert not runtime_dir.exists()

    def test_router_killed_leaves_no_plugin_behind(self, kitchen: RouterProcess) -> None:
        with kitchen.client() as c:
            pids = [p["pid"] for p in c.raw("router.plugins")]
        kitchen.proc.send_signal(signal.SIGKILL)
        kitchen.proc.wait(10)
        wait_until(lambda: not any(alive(pid) for pid in pids), "the plugins to exit")


class TestSecurity:
    def test_socket_permissions(self, kitchen: RouterProcess) -> None:
        assert stat.S_IMODE(kitchen.socket.stat().st_mode) == 0o600
        with kitchen.client() as c:
            pid = c.raw("k.pid")
        sock = Path(os.readlink(f"/proc/{pid}/cwd"))  # the plugin runs in the image root
        assert sock == kitchen.root.resolve()

    def test_plugin_environment_is_explicit(self, plugrpc_image: Image, plugrpc_router: Router) -> None:
        root = plugrpc_image({"k": ("k.py", KITCHEN, KITCHEN_EXPORTS, {"env": {"GIVEN": "yes"},
                                                                       "inherit_env": ["ASKED"]})})
        router = plugrpc_router(root, env={"SECRET_TOKEN": "hunter2", "ASKED": "ok"})
        with router.client() as c:
            assert c.raw("k.env", ["SECRET_TOKEN"]) is None
            assert c.raw("k.env", ["GIVEN"]) == "yes"
            assert c.raw("k.env", ["ASKED"]) == "ok"
            assert c.raw("k.env", ["PLUGRPC_PLUGIN"]) == "k"
            assert c.raw("k.env", ["PLUGRPC_SOCKET"]).endswith("/k.sock")
