"""router.events: the hub run in this process (`run_server`), with real plugin processes: its listeners (the
NATS bridge's way in), its bounds, and what it refuses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import plugrpc
from plugrpc.config import Config
from plugrpc.router import events
from plugrpc.router.events import Event
from plugrpc.router.internal import FutureSink

from plugins.sources import EMITTER, EMITTER_EXPORTS, RAW_EVENTS, RAW_EVENTS_EXPORTS
from util import AsyncRawConn, req, run_server, until

Image = Callable[..., Path]


def config(root: Path, tmp: Path) -> Config:
    return Config(root=root, socket=tmp / "r.sock")


async def test_listeners_get_every_accepted_event_encoded_once(plugrpc_image: Image, plugrpc_tmp: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    root = plugrpc_image({"em": ("em.py", EMITTER, EMITTER_EXPORTS, {"events": ["port.*"]})})
    async with run_server(config(root, plugrpc_tmp)) as server, plugrpc.Client(server.config.socket,
                                                                               timeout=30) as c:
        hub = server.router.events
        got: list[Event] = []

        def broken(event: Event) -> None:
            raise RuntimeError("a listener's own bug")

        stop = hub.listen(got.append)
        hub.listen(broken)
        assert await c.raw("em.emit", ["port.up", 2]) == 2
        await c.raw("em.emit", ["disk.full"])  # undeclared: no listener hears of it
        await until(lambda: len(got) == 2, "the listener to hear both events")
        assert [(e.plugin, e.name, e.data, e.seq) for e in got] == [("em", "port.up", {"i": 0}, 1),
                                                                   ("em", "port.up", {"i": 1}, 2)]
        assert got[0].body == b'{"name":"em.port.up","data":{"i":0},"seq":1}'
        assert caplog.text.count("an event listener failed on em.port.up") == 2  # and the others went on
        stop()
        await c.raw("em.emit", ["port.down"])
        assert await c.raw("em.pid") > 0 and len(got) == 2
        assert "EventHub 0 subscriptions, 3 events" in repr(hub)
        assert (await c.raw("router.stats"))["events"] == {"subscriptions": 0, "emitted": 3, "rejected": 1,
                                                           "dropped": 0}


async def test_bounds_and_refusals(plugrpc_image: Image, plugrpc_tmp: Path, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    root = plugrpc_image({"raw": ("raw.py", RAW_EVENTS, RAW_EVENTS_EXPORTS, {"events": [">"]})})
    monkeypatch.setattr(events, "MAX_SUBSCRIPTIONS", 3)
    monkeypatch.setattr(events, "MAX_PATTERNS", 3)
    async with run_server(config(root, plugrpc_tmp)) as server, await AsyncRawConn.open(server.config.socket) as raw:
        router = server.router
        for i in range(3):
            assert (await raw.ask(req("router.subscribe", {"events": ["raw.>"], "progress": True}, id=i)))["result"]
        error = (await raw.ask(req("router.subscribe", {"events": ["raw.x"]})))["error"]
        assert error["code"] == -32003 and "3 subscriptions" in error["data"]["reason"]
        error = (await raw.ask(req("router.subscribe", {"events": ["a"] * 4})))["error"]
        assert error["code"] == -32602 and "3 patterns" in error["data"]["reason"]
        subscriber = next(iter(router.clients)).events  # type: ignore[attr-defined]
        assert "3 subscriptions backlog=0" in repr(subscriber) and "'raw.>'" in repr(subscriber.subs[1])
        groups = list(router.events.groups.values())  # same patterns, different ids: one group each
        assert len(groups) == 3 and all("members=1 waiting=0" in repr(g) for g in groups)
        # a sink that cannot take notifications: the router's own calls
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        router.handle(req("router.subscribe", {"events": [">"]}), FutureSink(fut))
        assert "need a connection" in (await fut)["error"]["data"]["reason"]
        # data nested deeper than JSON writers write: dropped, logged once
        deep = '{"jsonrpc": "2.0", "method": "rpc.event", "params": {"name": "deep", "data": ' + "[" * 300 + \
               "]" * 300 + "}}"
        assert (await raw.ask(req("raw.late", {"lines": [deep]}, id="deep")))["result"] == "ok"
        await until(lambda: "cannot be passed on" in caplog.text, "the refusal to be logged")
        # after its connection was reset, the router opens another one: events still flow
        assert (await raw.ask(req("raw.send", {"lines": ["not json"]}, id="reset")))["error"]["code"] == -32001
        good = '{"jsonrpc": "2.0", "method": "rpc.event", "params": {"name": "again"}}'
        assert (await raw.ask(req("raw.send", {"lines": [good]}, id="again")))["result"] == "ok"
        seen = [await raw.recv(10) for _ in range(3)]  # one per subscription
        # (seq 1 went to the deep one, which no subscriber could be given: a gap, as for any event missed)
        assert {m["params"]["name"] for m in seen} == {"raw.again"} and {m["params"]["seq"] for m in seen} == {2}


async def test_a_running_plugin_has_a_connection_before_any_call(plugrpc_image: Image, plugrpc_tmp: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The router connects to every running rpc plugin at once, so its first event needs no call first."""
    caplog.set_level(logging.INFO)
    root = plugrpc_image({"em": ("em.py", EMITTER, EMITTER_EXPORTS, {"events": [">"]}),
                          "lazy": ("em.py", EMITTER, EMITTER_EXPORTS, {"lazy": True})})
    async with run_server(config(root, plugrpc_tmp)) as server:
        pools = {name: plugin.target for name, plugin in server.router.plugins.items()}
        await until(lambda: pools["em"].status()["connections"] == 1, "the connection to em")
        assert pools["lazy"].status()["connections"] == 0  # not running: nothing to keep open
