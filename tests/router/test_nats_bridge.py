"""The router on NATS (router/nats_bridge.py): the router runs in this event loop on a real nats-server,
reached with bare nats-py requests, so every body and every reply is seen byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

from plugrpc import codes
from plugrpc.config import Config
from plugrpc.router.server import Server
from plugrpc.testing import write_image

from plugins.sources import ECHO, ECHO_EXPORTS
from util import NOTIFY, AsyncRawConn, NatsServer, req, run_server, until

Image = Callable[..., Path]
TWO = {"a": ("a.py", ECHO, ECHO_EXPORTS), "b": ("b.py", ECHO, ECHO_EXPORTS)}
BIG = """
#!/usr/bin/env python3
import plugrpc
plugrpc.serve({"big": lambda n: "x" * n})
"""


@contextlib.asynccontextmanager
async def router_on(nats_url: str, root: Path, tmp: Path, **config: Any) -> AsyncIterator[Server]:
    """The router in this loop with `--nats nats_url --name t1`, once it has registered on NATS."""
    async with run_server(Config(root=root, socket=tmp / "r.sock", nats=nats_url, name="t1", **config)) as server:
        await until(lambda: server.bridge is not None and server.bridge.service is not None, "the router on NATS")
        yield server


@contextlib.asynccontextmanager
async def bare(url: str) -> AsyncIterator[nats.aio.client.Client]:
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


async def ask(nc: Any, subject: str, body: Any, timeout: float = 10) -> Any:
    """One request; the reply's JSON (None for an empty body)."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    reply = await nc.request(subject, data, timeout=timeout)
    return orjson.loads(reply.data) if reply.data else None


def error(reply: dict[str, Any]) -> tuple[int, Any]:
    return reply["error"]["code"], reply["id"]


@pytest.fixture
def nats_url(nats_server: Callable[..., NatsServer]) -> str:
    return nats_server().url


async def test_bodies_and_replies_are_those_of_the_socket(nats_url: str, plugrpc_image: Image,
                                                          plugrpc_tmp: Path) -> None:
    root = plugrpc_image(TWO)
    async with router_on(nats_url, root, plugrpc_tmp) as server, bare(nats_url) as nc:
        batch = [req("a.echo", [1], id="x"), req("b.echo", {"payload": 2}, id=7), req("a.echo", [3], id=NOTIFY),
                 req("nope.echo", id=None), 5]
        async with await AsyncRawConn.open(server.config.socket) as sock:
            over_socket = await sock.ask(batch)
            assert await sock.ask(req("a.echo", [1], id="s")) == {
                "jsonrpc": "2.0", "result": {"by": "a", "payload": 1}, "id": "s"}
        over_nats = await ask(nc, "plugrpc.call.t1", batch)
        assert sorted(map(orjson.dumps, over_nats)) == sorted(map(orjson.dumps, over_socket))
        assert await ask(nc, "plugrpc.call.t1", req("a.echo", [1], id="s")) == {
            "jsonrpc": "2.0", "result": {"by": "a", "payload": 1}, "id": "s"}
        assert await ask(nc, "plugrpc.any.b", req("b.echo", [4], id=1)) == {
            "jsonrpc": "2.0", "result": {"by": "b", "payload": 4}, "id": 1}
        # Notifications: with a reply subject, an empty body says they arrived; without one, any request is one.
        assert await ask(nc, "plugrpc.call.t1", [req("a.echo", [5], id=NOTIFY), req("b.echo", [6], id=NOTIFY)]) is None
        assert await ask(nc, "plugrpc.call.t1", req("a.echo", [5], id=NOTIFY)) is None
        before = (await ask(nc, "plugrpc.any.a", req("a.stats")))["result"]["calls"]
        await nc.publish("plugrpc.call.t1", orjson.dumps(req("a.echo", [9], id=99)))
        await nc.publish("plugrpc.any.a", orjson.dumps([req("a.echo", [10], id=100), req("b.echo", [1], id=101)]))
        await until(lambda: _calls(nc, "a"), "the notifications to reach the plugin", expect=before + 2)


async def _calls(nc: Any, plugin: str) -> int:
    return (await ask(nc, f"plugrpc.any.{plugin}", req(f"{plugin}.stats")))["result"]["calls"]  # type: ignore[no-any-return]


async def test_bad_input_and_unreachable_methods_get_the_errors_of_the_contract(
        nats_server: Callable[..., NatsServer], plugrpc_image: Image, plugrpc_tmp: Path) -> None:
    server_nats = nats_server("max_payload: 65536\n")
    root = plugrpc_image({**TWO, "g": ("g.py", BIG, ["big"])})
    async with router_on(server_nats.url, root, plugrpc_tmp) as _, bare(server_nats.url) as nc:
        call = "plugrpc.call.t1"
        assert error(await ask(nc, call, b'{"jsonrpc": "2.0", "method": ')) == (codes.PARSE_ERROR, None)
        assert error(await ask(nc, call, b"")) == (codes.PARSE_ERROR, None)
        assert error(await ask(nc, call, {"jsonrpc": "1.0", "method": "a.echo", "id": 1})) == (codes.INVALID_REQUEST, 1)
        assert error(await ask(nc, call, [])) == (codes.INVALID_REQUEST, None)
        assert error(await ask(nc, call, req("nope.echo", id=2))) == (codes.METHOD_NOT_FOUND, 2)
        assert error(await ask(nc, call, req("a.hidden", id=3))) == (codes.METHOD_NOT_FOUND, 3)
        for method in ("router.reload", "rpc.cancel"):
            reply = await ask(nc, call, req(method, {"id": 1}, id=4))
            assert error(reply) == (codes.METHOD_NOT_FOUND, 4)
            assert "not reachable over NATS" in reply["error"]["data"]["reason"]
        # plugrpc.any.a takes a's methods only: another plugin's, or a built-in, is not reached through it.
        for method in ("b.echo", "router.plugins"):
            reply = await ask(nc, "plugrpc.any.a", req(method, [1], id=5))
            assert error(reply) == (codes.METHOD_NOT_FOUND, 5)
            assert "serves a.* methods only" in reply["error"]["data"]["reason"]
        assert (await ask(nc, "plugrpc.any.a", req("a.stats")))["result"]["hidden"] == 0  # never ran
        # The read-only built-ins answer.
        plugins = (await ask(nc, call, req("router.plugins")))["result"]
        assert [p["name"] for p in plugins] == ["a", "b", "g"]
        assert (await ask(nc, call, req("router.health")))["result"]["status"] == "ok"
        assert "calls" in (await ask(nc, call, req("router.stats")))["result"]
        methods = (await ask(nc, call, req("rpc.discover")))["result"]["methods"]
        assert "a.echo" in {m["name"] for m in methods}
        # An answer over the server's max_payload: -32004 naming the limit (the call itself ran).
        reply = await ask(nc, call, req("g.big", [70_000], id="big"))
        assert error(reply) == (codes.MESSAGE_TOO_LARGE, "big")
        assert "max_payload of 65536 bytes" in reply["error"]["data"]["reason"]
        assert (await ask(nc, call, req("g.big", [60_000], id=6)))["result"] == "x" * 60_000


async def test_registered_as_service_plugrpc_and_updated_on_reload(nats_url: str, plugrpc_tmp: Path,
                                                                    plugrpc_image: Image) -> None:
    root = plugrpc_image(TWO)
    async with router_on(nats_url, root, plugrpc_tmp) as server, bare(nats_url) as nc:
        ping = ServicePing.from_dict(await ask(nc, "$SRV.PING.plugrpc", b""))
        info = ServiceInfo.from_dict(await ask(nc, "$SRV.INFO", b""))
        assert ping.name == info.name == "plugrpc" and ping.id == info.id
        assert info.metadata["name"] == "t1" and info.metadata["plugins"] == "a,b" and info.metadata["host"]
        assert {(e.name, e.subject, e.queue_group) for e in info.endpoints} == {
            ("call", "plugrpc.call.t1", "plugrpc"), ("a", "plugrpc.any.a", "plugrpc"),
            ("b", "plugrpc.any.b", "plugrpc")}
        await ask(nc, "plugrpc.any.a", req("a.echo", [1]))
        await ask(nc, "plugrpc.any.a", req("nope.echo", [1]))
        stats = ServiceStats.from_dict(await ask(nc, f"$SRV.STATS.plugrpc.{info.id}", b""))
        a = next(e for e in stats.endpoints if e.name == "a")
        assert (a.num_requests, a.num_errors) == (2, 1) and a.processing_time > 0 and a.last_error.startswith("-32601")
        # A reload that adds c and removes b: a new instance with the new subjects, the old one gone.
        write_image(root, {"a": TWO["a"], "c": ("c.py", ECHO, ECHO_EXPORTS)})
        assert server.router is not None
        await server.router.reload()
        await until(lambda: server.bridge is not None and server.bridge.service is not None
                    and server.bridge.service.id != info.id, "a new service instance")
        new = ServiceInfo.from_dict(await ask(nc, "$SRV.INFO.plugrpc", b""))
        assert new.metadata["plugins"] == "a,c" and new.id != info.id
        assert (await ask(nc, "plugrpc.any.c", req("c.echo", [2])))["result"] == {"by": "c", "payload": 2}
        with pytest.raises(nats.errors.NoRespondersError):
            await nc.request("plugrpc.any.b", orjson.dumps(req("b.echo", [1])), timeout=5)


async def test_a_flood_is_bounded_by_the_in_flight_limit_and_every_request_is_answered(
        nats_url: str, plugrpc_image: Image, plugrpc_tmp: Path) -> None:
    root = plugrpc_image({"a": ("a.py", ECHO, ECHO_EXPORTS)})
    limit, flood = 8, 300
    async with router_on(nats_url, root, plugrpc_tmp, max_inflight_per_client=limit) as server, \
            bare(nats_url) as nc:
        replies = await asyncio.gather(*(ask(nc, "plugrpc.call.t1", req("a.sleep", [0.05, i], id=i), timeout=30)
                                         for i in range(flood)))
        answered = [r["result"]["payload"] for r in replies if "result" in r]
        overloaded = [r for r in replies if r.get("error", {}).get("code") == codes.OVERLOADED]
        assert len(answered) + len(overloaded) == flood and len(set(answered)) == len(answered) >= limit
        stats = (await ask(nc, "plugrpc.any.a", req("a.stats")))["result"]
        assert stats["peak"] <= limit  # never more in flight from NATS than a socket client may have
        assert stats["calls"] == len(answered)  # what was refused never reached the plugin
        assert server.bridge is not None and server.bridge.inflight == 0


async def test_a_router_joining_with_a_name_already_taken_says_so(nats_url: str, plugrpc_image: Image,
                                                                  plugrpc_tmp: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    root = plugrpc_image({"a": ("a.py", ECHO, ECHO_EXPORTS)})
    second = plugrpc_tmp / "second"
    second.mkdir()
    async with router_on(nats_url, root, plugrpc_tmp):
        assert "another router is on NATS" not in caplog.text
        async with router_on(nats_url, root, second):
            pass
    assert "another router is on NATS as t1" in caplog.text and "give each router its own --name" in caplog.text
