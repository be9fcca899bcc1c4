"""router/builtins.py: the router's own methods, driven through a small fake of the router's read-only view.

The view (`FakeView`) is what `RouterView` promises and no more: plugin records with a status, a
supervisor state and a logbook, a routing table whose identity says when it changed, a real
`EventHub`, and a `call_plugin` that records what it was asked and answers as each test says.
Calls reach the built-ins as the router hands them over (`submit`), and their answers are read from
the `Connection` they came on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from plugrpc import codes
from plugrpc.errors import RpcError
from plugrpc.flow import FlowControl
from plugrpc.manifest import Manifest, PluginSpec
from plugrpc.outbox import Outbox
from plugrpc.process.logbook import Logbook
from plugrpc.process.supervisor import PluginState
from plugrpc.router.builtins import BUILTIN_DOCS, LOG_LINES, MAX_LOG_WAIT, Builtins
from plugrpc.router.events import EventHub, Subscribable
from plugrpc.router.interfaces import Call, Message

from util import until

# --- the fakes -------------------------------------------------------------------------------


@dataclass
class FakeSupervisor:
    spec: PluginSpec
    state: PluginState = PluginState.RUNNING


@dataclass(eq=False)
class FakePlugin:
    """A plugin record as the built-ins read it: its spec, supervisor (None: exec), output and status row."""

    spec: PluginSpec
    supervisor: FakeSupervisor | None
    output: Logbook = field(default_factory=Logbook)
    figures: dict[str, Any] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        state = self.supervisor.state.value if self.supervisor is not None else "exec"
        return {"name": self.spec.name, "state": state, **self.figures}


Describe = Callable[[str], Any]
"""What a plugin answers to `rpc.discover`: a document, or an exception to raise."""


class FakeView:
    """The `RouterView` the built-ins are given, with plugins `a` (exports x, y; events up.*) and `b` (z)."""

    def __init__(self) -> None:
        specs = {"a": PluginSpec(name="a", path=Path("/a"), exports=("x", "y"), events=("up.*",)),
                 "b": PluginSpec(name="b", path=Path("/b"), exports=("z",))}
        self.manifest = Manifest(Path("/"), Path("/.plugin.toml"), specs)
        self.plugins = {name: FakePlugin(spec, FakeSupervisor(spec)) for name, spec in specs.items()}
        self.routes: dict[str, Any] = dict(self.plugins)
        self.clients: set[Any] = set()
        self.events = EventHub(10, Outbox(call_soon=lambda callback: None))
        self.nats = None
        self.started = time.monotonic() - 5.0
        self.asked: list[tuple[str, str]] = []
        self.describe: Describe = lambda name: {"methods": [{"name": "x", "params": [{"name": "n"}]}]}
        self.gate: asyncio.Event | None = None
        """When set, `call_plugin` waits for it: the answers of a discovery still being built."""
        self.reloaded: dict[str, list[str]] | Exception = {"started": ["c"]}

    def inflight(self) -> int:
        return 3

    async def reload(self) -> dict[str, list[str]]:
        if isinstance(self.reloaded, Exception):
            raise self.reloaded
        return self.reloaded

    async def call_plugin(self, name: str, method: str, params: Any = None, timeout: float = 5.0) -> Any:
        self.asked.append((name, method))
        if self.gate is not None:
            await self.gate.wait()
        answer = self.describe(name)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Connection(Subscribable):
    """A client connection as a `Sink`: what it is answered, in order; it may subscribe."""

    def __init__(self) -> None:
        self.events = None
        self.flow = FlowControl()
        self.answers: list[Message] = []
        self.lines: list[bytes] = []
        self.calls: dict[Any, Call] = {}
        self.cancelled: list[Any] = []

    def track(self, call: Call) -> None:
        self.calls[call.id] = call

    def deliver(self, call: Call, msg: Message) -> None:
        msg["id"] = call.id
        self.calls.pop(call.id, None)
        self.answers.append(msg)

    def reply(self, msg: Message) -> None:
        self.answers.append(msg)

    def cancel(self, id: Any) -> bool:
        if self.calls.pop(id, None) is None:
            return False
        self.cancelled.append(id)
        return True

    def queue(self, line: bytes) -> None:
        self.lines.append(line)


class NotAConnection:
    """A sink that is no client connection (as the router's own calls and NATS requests are); its answers go to
    `conn`, which records them."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def track(self, call: Call) -> None: ...

    def deliver(self, call: Call, msg: Message) -> None:
        self.conn.deliver(call, msg)

    def reply(self, msg: Message) -> None: ...

    def cancel(self, id: Any) -> bool:
        return False


@pytest.fixture
def view() -> FakeView:
    return FakeView()


@pytest.fixture
async def builtins(view: FakeView) -> Any:
    builtins = Builtins(view)  # type: ignore[arg-type]
    yield builtins
    await builtins.aclose()


def submit(target: Any, method: str, params: Any = None, conn: Connection | None = None, id: Any = 1) -> Connection:
    """Hand `method` to `target` as the router would, from `conn` (a new connection unless given)."""
    conn = conn or Connection()
    call = Call(conn, id, method, params, 0.0)
    conn.track(call)
    target.submit(call)
    return conn


def answer(conn: Connection) -> Any:
    """The one answer `conn` got: its result, or the whole message when it is an error."""
    [msg] = conn.answers
    return msg["result"] if "result" in msg else msg


def invalid_params(conn: Connection) -> str:
    """What the one -32602 `conn` got says is wrong."""
    [msg] = conn.answers
    assert msg["error"]["code"] == codes.INVALID_PARAMS, msg
    data = msg["error"]["data"]
    return str(data["reason"] if isinstance(data, dict) else data)


# --- router.plugins, router.stats, router.health ---------------------------------------------


async def test_plugins_lists_each_record_s_status_in_manifest_order(builtins: Builtins, view: FakeView) -> None:
    view.plugins["a"].figures = {"calls": 2}
    assert answer(submit(builtins, "plugins")) == [{"name": "a", "state": "running", "calls": 2},
                                                   {"name": "b", "state": "running"}]


async def test_stats_adds_up_the_plugins_figures(builtins: Builtins, view: FakeView) -> None:
    view.plugins["a"].figures = {"calls": 5, "errors": 1, "timeouts": 0, "inflight": 2, "p50_ms": 1.5, "p99_ms": 9.0}
    view.plugins["b"].figures = {"calls": 3, "errors": 2, "direct": {"handed": 1}}
    view.clients.update({object(), object()})
    stats = answer(submit(builtins, "stats"))
    assert (stats["calls"], stats["errors"], stats["clients"], stats["inflight"]) == (8, 3, 2, 3)
    assert 5.0 <= stats["uptime"] < 60
    assert stats["plugins"]["a"] == {"calls": 5, "errors": 1, "timeouts": 0, "inflight": 2, "p50_ms": 1.5,
                                     "p99_ms": 9.0, "notifications_dropped": None}  # `direct` only when it has one
    assert stats["plugins"]["b"]["direct"] == {"handed": 1} and stats["plugins"]["b"]["p50_ms"] is None
    assert stats["events"] == {"subscriptions": 0, "emitted": 0, "rejected": 0, "dropped": 0}
    assert "expired" not in stats  # no NATS side


@pytest.mark.parametrize("state, status", [
    (PluginState.RUNNING, "ok"),
    (PluginState.STARTING, "ok"),
    (PluginState.STOPPED, "ok"),
    (PluginState.BACKOFF, "degraded"),
    (PluginState.CRASHLOOP, "degraded"),
    (PluginState.FAILED, "degraded"),
    (PluginState.UNRESPONSIVE, "degraded"),
])
async def test_health_is_ok_only_while_every_plugin_runs_or_may_start(builtins: Builtins, view: FakeView,
                                                                      state: PluginState, status: str) -> None:
    supervisor = view.plugins["b"].supervisor
    assert supervisor is not None
    supervisor.state = state
    assert answer(submit(builtins, "health")) == {"status": status, "plugins": {"a": "running", "b": state.value}}


async def test_health_leaves_out_exec_plugins(builtins: Builtins, view: FakeView) -> None:
    view.plugins["b"].supervisor = None
    assert answer(submit(builtins, "health")) == {"status": "ok", "plugins": {"a": "running"}}


# --- router.reload ---------------------------------------------------------------------------


async def test_reload_answers_what_the_reload_did(builtins: Builtins) -> None:
    conn = submit(builtins, "reload")
    await until(lambda: conn.answers, "the reload's answer")
    assert answer(conn) == {"started": ["c"]}


async def test_a_refused_reload_is_answered_with_why(builtins: Builtins, view: FakeView) -> None:
    view.reloaded = ValueError("bad manifest")
    conn = submit(builtins, "reload")
    await until(lambda: conn.answers, "the reload's answer")
    assert answer(conn)["error"]["code"] == codes.INTERNAL_ERROR
    assert answer(conn)["error"]["message"] == "reload refused: bad manifest"


# --- router.logs -----------------------------------------------------------------------------


@pytest.fixture
def book(view: FakeView) -> Logbook:
    """Plugin a's output: lines 1 to 30."""
    output = view.plugins["a"].output
    for n in range(1, 31):
        output.add(logging.INFO, f"line {n}")
    return output


def texts(result: dict[str, Any]) -> list[str]:
    return [line["text"] for line in result["lines"]]


@pytest.mark.parametrize("params, says", [
    (None, "expected an object"),
    (["a"], "expected an object"),
    ({}, "no plugin named None; the plugins are a, b"),
    ({"plugin": "nope"}, "no plugin named 'nope'"),
    ({"plugin": "a", "tail": 3, "x": 1}, "unknown member(s) tail, x"),
    ({"plugin": "a", "lines": -1}, "lines must be a whole number"),
    ({"plugin": "a", "lines": 2.5}, "lines must be a whole number"),
    ({"plugin": "a", "lines": True}, "lines must be a whole number"),
    ({"plugin": "a", "after": -1}, "after must be the seq"),
    ({"plugin": "a", "after": "3"}, "after must be the seq"),
    ({"plugin": "a", "wait": -0.1}, f"wait must be 0 to {MAX_LOG_WAIT:g} seconds"),
    ({"plugin": "a", "wait": MAX_LOG_WAIT + 1}, f"wait must be 0 to {MAX_LOG_WAIT:g} seconds"),
    ({"plugin": "a", "wait": "1"}, "wait must be 0"),
])
async def test_logs_refuses_params_it_cannot_follow_saying_what_is_wrong(builtins: Builtins, params: Any,
                                                                         says: str) -> None:
    assert says in invalid_params(submit(builtins, "logs", params))


async def test_logs_answers_the_last_lines_by_default(builtins: Builtins, book: Logbook) -> None:
    result = answer(submit(builtins, "logs", {"plugin": "a"}))
    assert texts(result) == [f"line {n}" for n in range(31 - LOG_LINES, 31)]
    assert (result["plugin"], result["seq"], result["skipped"]) == ("a", 30, 0)
    assert result["lines"][-1]["level"] == "info"
    assert texts(answer(submit(builtins, "logs", {"plugin": "a", "lines": 2}))) == ["line 29", "line 30"]


async def test_logs_after_a_seq_answers_every_later_line_and_counts_those_no_longer_kept(
        builtins: Builtins, view: FakeView) -> None:
    book = view.plugins["a"].output = Logbook(max_lines=5)
    for n in range(1, 11):
        book.add(logging.INFO, f"line {n}")
    result = answer(submit(builtins, "logs", {"plugin": "a", "after": 3}))
    assert texts(result) == ["line 6", "line 7", "line 8", "line 9", "line 10"]
    assert result["skipped"] == 2  # lines 4 and 5 are gone


async def test_logs_waits_for_a_line_after_the_seq_when_told_to(builtins: Builtins, book: Logbook) -> None:
    conn = submit(builtins, "logs", {"plugin": "a", "after": 30, "wait": MAX_LOG_WAIT})
    for _ in range(3):
        await asyncio.sleep(0)
    assert conn.answers == []  # nothing after 30 yet: the call is held open
    book.add(logging.WARNING, "news")
    await until(lambda: conn.answers, "the follower's answer")
    assert texts(answer(conn)) == ["news"] and answer(conn)["lines"][0]["level"] == "warning"


# --- router.subscribe, router.unsubscribe ----------------------------------------------------


@pytest.mark.parametrize("params, says", [
    (None, "params are {"),
    ({"events": "a.*"}, "params are {"),
    ({"progress": 1}, "params are {"),
    ({"events": ["a.*"], "topics": []}, "unknown member(s) 'topics'"),
    ({}, "nothing to subscribe to"),
    ({"events": [], "progress": False}, "nothing to subscribe to"),
])
async def test_subscribe_refuses_params_it_cannot_follow(builtins: Builtins, params: Any, says: str) -> None:
    assert says in invalid_params(submit(builtins, "subscribe", params))


async def test_subscribe_needs_a_connection_that_can_receive_notifications(builtins: Builtins) -> None:
    conn = Connection()
    builtins.submit(Call(NotAConnection(conn), 1, "subscribe", {"events": ["a.*"]}, 0.0))
    assert "subscriptions need a connection to the router's socket" in invalid_params(conn)


async def test_subscriptions_are_numbered_per_connection_and_end_once(builtins: Builtins, view: FakeView) -> None:
    conn = Connection()
    assert answer(submit(builtins, "subscribe", {"events": ["a.up.*"]}, conn)) == {"subscription": 1}
    conn.answers.clear()
    assert answer(submit(builtins, "subscribe", {"progress": True}, conn)) == {"subscription": 2}
    assert view.events.subscriptions() == 1  # progress alone is no pattern subscription
    for expected in (True, False):
        conn.answers.clear()
        assert answer(submit(builtins, "unsubscribe", {"subscription": 1}, conn)) is expected
    assert view.events.subscriptions() == 0
    conn.answers.clear()
    assert "params must be" in invalid_params(submit(builtins, "unsubscribe", {"subscription": "1"}, conn))


# --- rpc.cancel ------------------------------------------------------------------------------


async def test_cancel_stops_only_the_sender_s_own_call_and_says_whether_it_did(builtins: Builtins) -> None:
    conn, other = Connection(), Connection()
    conn.track(Call(conn, "slow", "a.x", None, 0.0))
    other.track(Call(other, "theirs", "a.x", None, 0.0))
    assert answer(submit(builtins.rpc, "cancel", {"id": "theirs"}, conn, id=2)) is False
    conn.answers.clear()
    assert answer(submit(builtins.rpc, "cancel", {"id": "slow"}, conn, id=3)) is True
    assert conn.cancelled == ["slow"] and other.cancelled == []


@pytest.mark.parametrize("params", [None, [1], {"call": 1}])
async def test_cancel_without_an_id_cancels_nothing(builtins: Builtins, params: Any) -> None:
    conn = Connection()
    conn.track(Call(conn, 1, "a.x", None, 0.0))
    assert answer(submit(builtins.rpc, "cancel", params, conn, id=2)) is False
    assert conn.cancelled == []


async def test_cancel_as_a_notification_cancels_without_an_answer(builtins: Builtins) -> None:
    conn = Connection()
    conn.track(Call(conn, 7, "a.x", None, 0.0))
    builtins.rpc.notify("cancel", {"id": 7}, conn)
    assert conn.cancelled == [7] and conn.answers == []


# --- rpc.discover ----------------------------------------------------------------------------


async def discover(builtins: Builtins, n: int = 1) -> list[Any]:
    conns = [submit(builtins.rpc, "discover", id=i) for i in range(n)]
    await until(lambda: all(conn.answers for conn in conns), "every rpc.discover answer")
    return [answer(conn) for conn in conns]


async def test_discover_lists_each_plugin_s_exports_with_its_own_description(builtins: Builtins,
                                                                             view: FakeView) -> None:
    view.describe = lambda name: {"methods": [{"name": "x", "params": [{"name": "n"}], "summary": "the x"},
                                              {"name": "hidden", "params": []}, "junk"]}
    [doc] = await discover(builtins)
    assert doc["openrpc"] == "1.2.6"
    plugin_methods = [m for m in doc["methods"] if not m["name"].startswith("router.")]
    assert plugin_methods == [
        {"name": "a.x", "params": [{"name": "n"}], "summary": "the x"},
        {"name": "a.y", "params": []},  # exported but not described: a bare entry
        {"name": "b.z", "params": []},
    ]  # `hidden` is not exported: left out
    assert [m["name"] for m in doc["methods"] if m["name"].startswith("router.")] == [
        f"router.{m}" for m in sorted(BUILTIN_DOCS)]
    assert doc["x-events"] == {"a": ["a.up.*"], "b": []}


async def test_discover_is_built_once_for_callers_at_once_and_kept_until_the_routes_change(
        builtins: Builtins, view: FakeView) -> None:
    view.gate = asyncio.Event()
    conns = [submit(builtins.rpc, "discover", id=i) for i in range(5)]
    await until(lambda: len(view.asked) == 2, "both plugins asked")
    view.gate.set()
    await until(lambda: all(conn.answers for conn in conns), "every answer")
    assert len({repr(answer(conn)) for conn in conns}) == 1 and [c.answers[0]["id"] for c in conns] == [0, 1, 2, 3, 4]
    await discover(builtins)
    assert view.asked == [("a", "rpc.discover"), ("b", "rpc.discover")]  # kept: nobody asked again
    view.routes = dict(view.routes)  # a reload: a new routing table
    await discover(builtins)
    assert len(view.asked) == 4


@pytest.mark.parametrize("failure, kept", [
    (TimeoutError(), False),  # it may answer next time: ask again
    (RpcError(codes.METHOD_NOT_FOUND, "no rpc.discover"), True),  # it answered for itself: keep
])
async def test_discover_is_kept_only_when_every_running_plugin_answered_for_itself(
        builtins: Builtins, view: FakeView, failure: Exception, kept: bool) -> None:
    view.describe = lambda name: failure if name == "b" else {"methods": []}
    [doc] = await discover(builtins)
    assert {"name": "b.z", "params": []} in doc["methods"]  # listed all the same, from its exports
    await discover(builtins)
    assert len(view.asked) == (2 if kept else 4)


async def test_discover_does_not_wake_a_plugin_that_is_not_running_and_asks_again_later(
        builtins: Builtins, view: FakeView) -> None:
    supervisor = view.plugins["b"].supervisor
    assert supervisor is not None
    supervisor.state = PluginState.STOPPED
    await discover(builtins)
    assert view.asked == [("a", "rpc.discover")]
    supervisor.state = PluginState.RUNNING
    await discover(builtins)
    assert view.asked[1:] == [("a", "rpc.discover"), ("b", "rpc.discover")]
    await discover(builtins)
    assert len(view.asked) == 3  # now complete: kept


async def test_discover_in_progress_at_shutdown_is_answered_unavailable(builtins: Builtins, view: FakeView) -> None:
    view.gate = asyncio.Event()
    conn = submit(builtins.rpc, "discover")
    await until(lambda: view.asked, "a plugin asked")
    await builtins.aclose()
    await until(lambda: conn.answers, "the answer")
    assert answer(conn)["error"]["code"] == codes.PLUGIN_UNAVAILABLE
    assert answer(conn)["error"]["data"] == "the router is shutting down"
