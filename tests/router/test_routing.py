"""router.routing: the router run in this process (`run_server`), with real plugin processes.

Plugin records and their sockets, reloads that change a plugin's mode, and the fast path
against the checked path of `Router.handle`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plugrpc
from plugrpc.config import Config
from plugrpc.manifest import Manifest
from plugrpc.process.runtime_dir import RuntimeDir
from plugrpc.router.interfaces import Call, Message
from plugrpc.router.routing import Router
from plugrpc.testing import write_image

from plugins.sources import KITCHEN, KITCHEN_EXPORTS, OVS
from util import AsyncRawConn, run_server, until

Image = Callable[..., Path]
SYSINFO = "#!/bin/sh\necho '20:::'\necho '\"legacy\"'\necho ':::'\n"


def config(root: Path, tmp: Path, **settings: Any) -> Config:
    return Config(root=root, socket=tmp / "r.sock", **settings)


async def test_every_plugin_listens_on_its_own_name_at_first_start(plugrpc_image: Image, plugrpc_tmp: Path) -> None:
    root = plugrpc_image({name: (f"{name}.py", OVS, ["version"]) for name in ("a", "b", "c")})
    async with run_server(config(root, plugrpc_tmp)) as server:
        router = server.router
        assert router is not None
        assert {name: p.socket.name for name, p in router.plugins.items() if p.socket} == {
            "a": "a.sock", "b": "b.sock", "c": "c.sock"}
        assert sorted(path.name for path in router.runtime_dir.path.iterdir()) == ["a.sock", "b.sock", "c.sock"]


async def test_a_changed_plugin_starts_beside_the_old_one_then_takes_its_name_back(
        plugrpc_image: Image, plugrpc_tmp: Path) -> None:
    root = plugrpc_image({"a": ("a.py", OVS, ["version"])})
    async with run_server(config(root, plugrpc_tmp)) as server, plugrpc.Client(server.config.socket,
                                                                                 timeout=30) as c:
        router = server.router
        assert router is not None
        for timeout, name in ((7, "a.2.sock"), (8, "a.sock"), (9, "a.2.sock")):
            write_image(root, {"a": ("a.py", OVS, ["version"], {"timeout": timeout})})
            assert (await c.raw("router.reload"))["changed"] == ["a"]
            assert router.plugins["a"].socket is not None and router.plugins["a"].socket.name == name
            assert await c.raw("a.version") == "1.0alpha"
            assert not router.retiring


async def test_a_reload_from_rpc_to_exec_leaves_no_trace_of_the_old_process(
        plugrpc_image: Image, plugrpc_tmp: Path) -> None:
    root = plugrpc_image({"p": ("p.py", OVS, ["version"]), "q": ("q.py", OVS, ["version"])})
    async with run_server(config(root, plugrpc_tmp)) as server, plugrpc.Client(server.config.socket,
                                                                                 timeout=30) as c:
        old = server.router.plugins["p"].supervisor if server.router else None
        assert old is not None
        write_image(root, {"p": ("p.sh", SYSINFO, ["version"], {"mode": "exec"}), "q": ("q.py", OVS, ["version"])})
        assert (await c.raw("router.reload"))["changed"] == ["p"]
        rows = {row["name"]: row for row in await c.raw("router.plugins")}
        assert rows["p"]["mode"] == "exec" and rows["p"]["state"] == "ready" and rows["p"]["pid"] is None
        assert (await c.raw("router.health")) == {"status": "ok", "plugins": {"q": "running"}}
        assert await c.raw("p.version") == "legacy"
        assert old.pid is None and old.state.value == "stopped"


async def test_a_batch_larger_than_the_in_flight_limit_leaves_the_connection_readable(
        plugrpc_image: Image, plugrpc_tmp: Path) -> None:
    root = plugrpc_image({"k": ("k.py", KITCHEN, KITCHEN_EXPORTS)})
    async with run_server(config(root, plugrpc_tmp, max_inflight_per_client=4)) as server:
        async with await AsyncRawConn.open(server.config.socket) as conn:
            batch = [{"jsonrpc": "2.0", "method": "k.echo", "params": [i], "id": i} for i in range(10)]
            await conn.send(batch)
            answers = await conn.recv(timeout=10)
            assert sorted(a["result"] for a in answers) == [[i] for i in range(10)]
            # The connection was paused at 4 calls in flight; answering the batch must resume it.
            assert await conn.ask({"jsonrpc": "2.0", "method": "k.echo", "params": ["after"], "id": "x"},
                                  timeout=10) == {"jsonrpc": "2.0", "result": ["after"], "id": "x"}
            await conn.send(*[{"jsonrpc": "2.0", "method": "k.sleep", "params": [0.05], "id": i} for i in range(9)])
            assert sorted([(await conn.recv(timeout=10))["id"] for _ in range(9)]) == list(range(9))


async def test_internal_calls_and_their_errors(plugrpc_image: Image, plugrpc_tmp: Path) -> None:
    root = plugrpc_image({"k": ("k.py", KITCHEN, KITCHEN_EXPORTS)})
    async with run_server(config(root, plugrpc_tmp)) as server:
        router = server.router
        assert router is not None
        assert await router.call_plugin("k", "hidden") == "secret"  # the router may call what clients may not
        with pytest.raises(plugrpc.RpcError) as info:
            await router.call_plugin("k", "boom")
        assert info.value.code == -32603
        with pytest.raises(TimeoutError):
            await router.call_plugin("k", "sleep", [5], timeout=0.05)
        await until(lambda: router.inflight() == 0, "the timed-out call to be cancelled")


# --- the fast path and the checked path give the same answer -----------------------------------


class Recorder:
    """A sink that keeps what it is given, and a target that answers each call with what it got."""

    exported = frozenset({"m", "m.n", ""})

    def __init__(self) -> None:
        self.got: list[tuple[str, Any]] = []

    # Sink
    def track(self, call: Call) -> None:
        self.got.append(("track", call.id))

    def deliver(self, call: Call, msg: Message) -> None:
        self.got.append(("deliver", msg))

    def reply(self, msg: Message) -> None:
        self.got.append(("reply", msg))

    def cancel(self, id: Any) -> bool:
        return False

    # Target
    def submit(self, call: Call) -> None:
        self.got.append(("submit", (call.method, repr(call.params))))
        sink = call.sink
        assert sink is not None
        sink.deliver(call, {"jsonrpc": "2.0", "result": call.method, "id": call.id})

    def notify(self, method: str, params: Any, sink: Any) -> None:
        self.got.append(("notify", (method, repr(params))))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=6)
METHODS = st.sampled_from(["t.m", "t.m.n", "t.", "t.x", "x.m", "router.health", "t", "", ".m"]) | st.text(max_size=6)
MESSAGES = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {"jsonrpc": st.sampled_from(["2.0", "2.0", "1.0", 2.0]), "method": METHODS | JSON},
        optional={"params": JSON | st.lists(JSON, max_size=2) | st.dictionaries(st.text(max_size=2), JSON),
                  "id": st.integers() | st.text(max_size=3) | st.none() | st.floats(allow_nan=False) | JSON,
                  "extra": JSON},
    ),
)


def routed(router: Router, handle: Callable[[Any, Any], None], msg: Any) -> list[tuple[str, Any]]:
    target = Recorder()
    router.routes["t"] = target
    try:
        handle(msg, target)
    finally:
        del router.routes["t"]
    return target.got


@pytest.fixture(scope="module")
def bare_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[asyncio.AbstractEventLoop, Router]]:
    """A router with no plugins, on a loop of its own: the property test routes to a `Recorder`."""
    tmp = tmp_path_factory.mktemp("bare")
    loop = asyncio.new_event_loop()
    runtime = RuntimeDir(tmp)

    async def make() -> Router:
        return Router(Config(root=tmp, socket=tmp / "r.sock"), Manifest(tmp, tmp / ".plugin.toml", {}), runtime)

    try:
        yield loop, loop.run_until_complete(make())
    finally:
        runtime.remove()
        loop.close()


@settings(max_examples=500, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(msg=MESSAGES)
def test_the_fast_path_answers_every_message_as_the_checked_path_does(
        msg: Any, bare_router: tuple[asyncio.AbstractEventLoop, Router]) -> None:
    loop, router = bare_router

    async def both() -> tuple[list[Any], list[Any]]:
        return routed(router, router.handle, msg), routed(router, router.handle_checked, msg)

    fast, checked = loop.run_until_complete(both())
    assert fast == checked
