"""Direct connections on the plugin side (plugin/direct.py), on both engines: `rpc.direct` binds a
connection to its exports and bound, events leave elsewhere, and `rpc.ping` reports the figures.

The plugin runs as the runtime starts it (fd 3); each test talks to it as the router and a caller
would, over raw connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from util import NOTIFY, PLUGINS, Fd3Plugin, RawConn, req, wait_until

DIRECT = PLUGINS / "direct_plugin.py"
EXPORTS = ["add", "tell", "steps", "slow"]


@pytest.fixture(params=["none", "asyncio"])
def plugin(request: pytest.FixtureRequest, start: Callable[..., Fd3Plugin]) -> Fd3Plugin:
    return start(DIRECT, name="direct", env={"DIRECT_ENGINE": request.param})


def make_direct(conn: RawConn, exports: list[str] = EXPORTS, max_inflight: int = 0) -> None:
    answer = conn.ask(req("rpc.direct", {"exports": exports, "max_inflight": max_inflight}, id="direct"))
    assert answer == {"jsonrpc": "2.0", "result": True, "id": "direct"}


def figures(conn: RawConn) -> dict[str, int]:
    answer = conn.ask(req("rpc.ping", id="ping"))
    assert answer["id"] == "ping", answer
    return answer["result"]["direct"]


def code(answer: Any) -> int:
    return answer["error"]["code"]


def test_a_direct_connection_calls_only_its_exports(plugin: Fd3Plugin) -> None:
    with plugin.connect() as direct, plugin.connect() as other:
        make_direct(direct)
        assert direct.ask(req("add", [2, 3]))["result"] == 5
        assert code(direct.ask(req("secret"))) == -32601
        assert code(direct.ask(req("nope"))) == -32601
        batch = direct.ask([req("add", [1], id=1), req("secret", id=2)])
        assert [("result" in m, m["id"]) for m in batch] == [(True, 1), (False, 2)]
        # The built-ins a caller needs stay: cancelling, discovering, pinging.
        assert direct.ask(req("rpc.cancel", {"id": 1}))["result"] is False
        assert "methods" in direct.ask(req("rpc.discover"))["result"]
        assert "direct" in direct.ask(req("rpc.ping"))["result"]
        # Its terms are given once.
        again = direct.ask(req("rpc.direct", {"exports": ["secret"], "max_inflight": 0}))
        assert code(again) == -32600 and code(direct.ask(req("secret"))) == -32601
        # Other connections are not bound.
        assert other.ask(req("secret"))["result"] == "not exported"


@pytest.mark.parametrize("params", [
    None, [["add"], 0], {}, {"exports": "add"}, {"exports": [1]}, {"exports": ["add"], "max_inflight": -1},
    {"exports": ["add"], "max_inflight": "2"}, {"exports": ["add"], "max_inflight": True},
    {"exports": ["add"], "max_inflight": 1.5},
])
def test_malformed_params_are_invalid_params_and_bind_nothing(plugin: Fd3Plugin, params: Any) -> None:
    with plugin.connect() as conn:
        assert code(conn.ask(req("rpc.direct", params))) == -32602
        assert conn.ask(req("secret"))["result"] == "not exported"


def test_members_a_later_router_adds_are_ignored(plugin: Fd3Plugin) -> None:
    with plugin.connect() as conn:
        assert conn.ask(req("rpc.direct", {"exports": ["add"], "max_inflight": 4, "later": 1}))["result"] is True
        assert code(conn.ask(req("secret"))) == -32601


def test_no_event_is_written_on_a_direct_connection(plugin: Fd3Plugin) -> None:
    # The first connection carries events until it goes direct; then the other one does.
    with plugin.connect() as direct, plugin.connect() as other:
        assert direct.ask(req("add", [1]))["result"] == 1
        assert other.ask(req("add", [1]))["result"] == 1
        make_direct(direct)
        assert direct.ask(req("tell", ["told.once"], id=5)) == {"jsonrpc": "2.0", "result": True, "id": 5}
        event = other.recv()
        assert (event["method"], event["params"]["name"]) == ("rpc.event", "told.once")
        assert direct.ask(req("tell", ["told.twice"], id=6))["id"] == 6
        assert other.recv()["params"]["name"] == "told.twice"
        assert direct.ask(req("add", [7], id=7)) == {"jsonrpc": "2.0", "result": 7, "id": 7}  # nothing in between


def test_events_wait_for_a_connection_that_is_not_direct(plugin: Fd3Plugin) -> None:
    with plugin.connect() as direct:
        make_direct(direct)
        assert direct.ask(req("tell", ["kept"], id=1))["id"] == 1
        with plugin.connect() as later:
            assert later.recv()["params"]["name"] == "kept"
        assert direct.ask(req("add", [2], id=2))["result"] == 2


def test_progress_of_a_direct_call_is_written_on_its_connection(plugin: Fd3Plugin) -> None:
    with plugin.connect() as direct:
        make_direct(direct)
        direct.send(req("steps", [2], id="s"))
        lines = [direct.recv() for _ in range(3)]
    assert [m.get("method") for m in lines] == ["rpc.progress", "rpc.progress", None]
    assert [m["params"] for m in lines[:2]] == [{"id": "s", "value": 0}, {"id": "s", "value": 1}]
    assert lines[2]["result"] == 2


def test_rpc_ping_reports_direct_connections_calls_and_errors(plugin: Fd3Plugin) -> None:
    with plugin.connect() as router:
        assert figures(router) == {"connections": 0, "calls": 0, "errors": 0}
        with plugin.connect() as direct:
            make_direct(direct)
            direct.ask(req("add", [1]))
            direct.ask(req("secret"))
            direct.ask(req("add", {"c": 1}))
            direct.ask([req("add", [1], id=1), req("nope", id=2)])
            direct.send(req("add", [1], id=NOTIFY))
            assert figures(direct) == {"connections": 1, "calls": 6, "errors": 3}  # the ping itself counts
            assert router.ask(req("add", [1]))["result"] == 1  # calls through the router are its own to count
            assert figures(router) == {"connections": 1, "calls": 7, "errors": 3}
        wait_until(lambda: figures(router)["connections"] == 0, "the closed direct connection to be uncounted")
        assert figures(router)["calls"] == 7


def test_max_inflight_bounds_the_calls_running_at_once(start: Callable[..., Fd3Plugin]) -> None:
    plugin = start(DIRECT, name="direct", env={"DIRECT_ENGINE": "asyncio"})
    with plugin.connect() as direct:
        make_direct(direct, max_inflight=2)
        began = time.monotonic()
        direct.send(*(req("slow", [0.3], id=i) for i in range(5)))
        time.sleep(0.1)  # two run; the connection is not read now, so this waits for a slot
        direct.send(req("add", [1], id="late"))
        answers = [direct.recv() for _ in range(6)]
        took = time.monotonic() - began
    ids = [m["id"] for m in answers]
    assert sorted(ids, key=str) == sorted([0, 1, 2, 3, 4, "late"], key=str)
    assert max(m["result"] for m in answers if m["id"] != "late") == 2
    assert took >= 0.85  # three rounds of at most two calls of 0.3 s
    assert ids.index("late") >= 2  # read only once a call had finished


def test_max_inflight_0_is_no_bound(start: Callable[..., Fd3Plugin]) -> None:
    plugin = start(DIRECT, name="direct", env={"DIRECT_ENGINE": "asyncio"})
    with plugin.connect() as direct:
        make_direct(direct, max_inflight=0)
        direct.send(*(req("slow", [0.3], id=i) for i in range(4)))
        assert max(direct.recv()["result"] for _ in range(4)) == 4


def test_a_call_waiting_for_a_slot_is_cancelled_with_its_connection(start: Callable[..., Fd3Plugin]) -> None:
    plugin = start(DIRECT, name="direct", env={"DIRECT_ENGINE": "asyncio"})
    with plugin.connect() as direct:
        make_direct(direct, max_inflight=1)
        direct.send(*(req("slow", [5], id=i) for i in range(3)))
        time.sleep(0.2)
    with plugin.connect() as other:
        wait_until(lambda: figures(other)["connections"] == 0, "the direct connection to close")
        assert other.ask(req("slow", [0], id=9))["result"] == 1  # only one of the three ever ran
    assert "never awaited" not in plugin.log() and "Traceback" not in plugin.log()
