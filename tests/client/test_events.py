"""Client.subscribe and the notifications a Client may get: its own bound on events, their end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import plugrpc
from plugrpc.client.connection import Connection
from plugrpc.client.events import Event, SocketSubscription
from plugrpc.testing import RouterProcess

from plugins.sources import EMITTER, EMITTER_EXPORTS

WAIT = 10.0


@pytest.fixture
def router(plugrpc_image: Callable[..., Path], plugrpc_router: Callable[..., RouterProcess]) -> RouterProcess:
    return plugrpc_router(plugrpc_image({"em": ("em.py", EMITTER, EMITTER_EXPORTS, {"events": [">"]})}))


async def test_a_reader_that_falls_behind_loses_events_counted_and_calls_go_on(router: RouterProcess) -> None:
    async with plugrpc.Client(router.socket, timeout=30) as c, c.subscribe("em.>", maxsize=5) as sub:
        assert await c.raw("em.emit", ["tick", 20]) == 20  # nobody reads: 5 kept, 15 dropped here
        assert await c.raw("em.pid") > 0  # answers keep coming meanwhile
        got = [await asyncio.wait_for(anext(sub), WAIT) for _ in range(5)]
        await c.raw("em.emit", ["tock"])
        got.append(await asyncio.wait_for(anext(sub), WAIT))
        assert [e.seq for e in got] == [1, 2, 3, 4, 5, 21] and got[-1].dropped == 15 and got[-1].name == "em.tock"
        assert got[-1].to_json() == {"name": "em.tock", "data": {"i": 0}, "seq": 21, "dropped": 15}
        assert got[0].to_json() == {"name": "em.tick", "data": {"i": 0}, "seq": 1}
        assert "waiting=0" in repr(sub)
    with pytest.raises(ValueError, match="at least 1"):
        c.subscribe("x", maxsize=0)


async def test_iteration_ends_on_close_and_fails_when_the_router_goes(router: RouterProcess) -> None:
    async with plugrpc.Client(router.socket, timeout=30) as c:
        sub = c.subscribe("em.>")
        async with sub:
            await c.raw("em.emit", ["a", 2])
            await asyncio.wait_for(anext(sub), WAIT)
        assert [e.seq async for e in sub] == [2]  # what had come is still read, then it ends
        assert (await c.raw("router.stats"))["events"]["subscriptions"] == 0
        live = c.subscribe("em.>")
        await live.start()
        waiting = asyncio.ensure_future(anext(live))
        router.stop()
        with pytest.raises(plugrpc.ConnectionLost):
            await asyncio.wait_for(waiting, WAIT)
        await live.close()  # nothing to unsubscribe from


async def test_the_blocking_client_iterates_events(router: RouterProcess) -> None:
    def blocking() -> tuple[list[Event], list[Any]]:
        with plugrpc.BlockingClient(router.socket, timeout=30) as c, c.subscribe("em.*") as events:
            progress: list[Any] = []
            assert c.raw("em.inline_progress", [2], progress=progress.append) == "inline"
            c.raw("em.emit", ["one", 2])
            return [next(events), next(events)], progress

    got, progress = await asyncio.to_thread(blocking)
    assert [(e.name, e.plugin, e.data) for e in got] == [("em.one", "em", {"i": 0}), ("em.one", "em", {"i": 1})]
    assert progress == [0, 1]


async def test_a_connection_shrugs_off_notifications_it_did_not_ask_for() -> None:
    """Old or new, a Client's connection never fails on a notification: it matches what it asked for only."""
    conn = Connection(asyncio.get_running_loop())
    conn.connection_made(FakeWriter())  # type: ignore[arg-type]
    future = conn.call(1, b"")
    conn.data_received(b'{"jsonrpc":"2.0","method":"rpc.event","params":{"subscription":9,"name":"a.b","seq":1}}\n'
                       b'{"jsonrpc":"2.0","method":"rpc.progress","params":{"id":1,"value":0}}\n'
                       b'{"jsonrpc":"2.0","method":"rpc.event","params":"nonsense"}\n'
                       b'{"jsonrpc":"2.0","method":"rpc.progress"}\n'
                       b'{"jsonrpc":"2.0","method":"something.else"}\n'
                       b'{"jsonrpc":"2.0","result":"ok","id":1}\n')
    assert await future == "ok" and conn.lost is None
    sub = SocketSubscription(plugrpc.Client("/nonexistent"), ("a.>",))
    conn.subscriptions[9] = sub
    conn.data_received(b'{"jsonrpc":"2.0","method":"rpc.event","params":{"subscription":9,"name":"a.b","seq":2}}\n')
    assert (await asyncio.wait_for(anext(sub), WAIT)).seq == 2


class FakeWriter:
    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        pass
