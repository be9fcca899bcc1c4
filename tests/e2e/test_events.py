"""Events, progress and calls from plugins, end to end: `plugrpc run` in a subprocess, plugins
as processes, subscribers through plugrpc.Client and through raw JSON lines."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import plugrpc
from plugrpc.testing import RouterProcess, write_image

from plugins.sources import EMITTER, EMITTER_EXPORTS, RAW_EVENTS, RAW_EVENTS_EXPORTS
from util import FULL, AsyncRawConn, RawConn, figure, req, rss_mib, until, wait_until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]
FAST = 5.0
"""A generous bound for "at once": far below the timeouts involved."""


def emitter(events: list[str], **keys: Any) -> tuple[str, str, list[str], dict[str, Any]]:
    return ("em.py", EMITTER, EMITTER_EXPORTS, {"events": events, **keys})


@pytest.fixture
def router(plugrpc_image: Image, plugrpc_router: Router) -> RouterProcess:
    """Two emitting plugins: `em` declares port.* and build.>, `other` everything (`>`)."""
    return plugrpc_router(plugrpc_image({"em": emitter(["port.*", "build.>"]), "other": emitter([">"])}))


async def subscribe(conn: AsyncRawConn, params: dict[str, Any], id: Any = "sub") -> int:
    answer = await conn.ask(req("router.subscribe", params, id=id))
    assert answer["id"] == id, answer
    return answer["result"]["subscription"]  # type: ignore[no-any-return]


async def events(conn: AsyncRawConn, n: int) -> list[dict[str, Any]]:
    """The params of the next `n` lines, each of which must be an `rpc.event`."""
    out = []
    for _ in range(n):
        msg = await conn.recv(FAST)
        assert msg.get("method") == "rpc.event" and "id" not in msg, msg
        out.append(msg["params"])
    return out


async def answer_of(conn: AsyncRawConn, id: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The notifications that come before the answer to `id`, and the answer."""
    before = []
    while True:
        msg = await conn.recv(FAST)
        if msg.get("id") == id and "method" not in msg:
            return before, msg
        before.append(msg)


# --- patterns, order, seq ----------------------------------------------------------------------


async def test_events_reach_the_subscribers_whose_patterns_match_in_order_with_seq(router: RouterProcess) -> None:
    async with (await AsyncRawConn.open(router.socket) as ports, await AsyncRawConn.open(router.socket) as everything,
                await AsyncRawConn.open(router.socket) as deep, plugrpc.Client(router.socket, timeout=30) as c):
        assert await subscribe(ports, {"events": ["em.port.*"]}) == 1
        assert await subscribe(everything, {"events": ["em.>", "other.>"]}) == 1
        assert await subscribe(everything, {"events": ["em.port.added"]}) == 2  # a second one, on the same line
        assert await subscribe(deep, {"events": ["*.build.>"]}) == 1
        async with c.subscribe("other.*.added") as theirs:
            assert await c.raw("em.emit", ["port.added", 3]) == 3
            assert await c.raw("em.emit", ["build.step.done"]) == 1
            assert await c.raw("other.emit", ["port.added"]) == 1  # other's seq counts on its own
            assert await c.raw("em.emit", ["port.removed"]) == 1
            got = await events(ports, 4)
            assert [(e["name"], e["seq"], e["data"]) for e in got] == [
                ("em.port.added", 1, {"i": 0}), ("em.port.added", 2, {"i": 1}), ("em.port.added", 3, {"i": 2}),
                ("em.port.removed", 5, {"i": 0})]
            assert {e["subscription"] for e in got} == {1} and not {"dropped"} & got[0].keys()
            got = await events(everything, 9)
            first = [(e["name"], e["seq"]) for e in got if e["subscription"] == 1]
            assert first == [("em.port.added", 1), ("em.port.added", 2), ("em.port.added", 3),
                             ("em.build.step.done", 4), ("other.port.added", 1), ("em.port.removed", 5)]
            assert [e["seq"] for e in got if e["subscription"] == 2] == [1, 2, 3]
            assert [(e["name"], e["seq"]) for e in await events(deep, 1)] == [("em.build.step.done", 4)]
            ev = await asyncio.wait_for(anext(theirs), FAST)
            assert (ev.name, ev.plugin, ev.data, ev.seq, ev.dropped) == ("other.port.added", "other", {"i": 0}, 1, 0)
        # every line was an event for a matching subscription: nothing else followed
        for conn in (ports, everything, deep):
            assert (await conn.ask(req("router.health", id="last")))["id"] == "last"


async def test_events_from_every_kind_of_handler_a_task_and_a_thread(router: RouterProcess) -> None:
    async with plugrpc.Client(router.socket, timeout=30) as c:
        async with c.subscribe("em.>") as sub:
            assert await c.raw("em.aemit", ["port.a", 25]) == 25
            assert await c.raw("em.temit", ["port.t", 25]) == 25
            assert await c.raw("em.later", ["port.l", 20]) is True  # answered before its events go out
            got = [await asyncio.wait_for(anext(sub), FAST) for _ in range(90)]
    assert [e.data["i"] for e in got if e.name == "em.port.a"] == list(range(25))
    assert [e.data["i"] for e in got if e.name == "em.port.t"] == list(range(25))
    assert [e.data["i"] for e in got if e.name == "em.port.l" and e.data["from"] == "task"] == list(range(20))
    assert [e.data["i"] for e in got if e.name == "em.port.l" and e.data["from"] == "thread"] == list(range(20))
    assert [e.seq for e in got] == list(range(1, 91))


async def test_a_client_that_never_subscribed_gets_no_notification(router: RouterProcess) -> None:
    """Old clients are unchanged: plugrpc.Client and raw lines see answers only, events flowing or not."""
    async with (await AsyncRawConn.open(router.socket) as watcher, await AsyncRawConn.open(router.socket) as old,
                plugrpc.Client(router.socket, timeout=30) as c):
        await subscribe(watcher, {"events": [">"], "progress": True})
        for i in range(20):
            await old.send(req("em.emit", ["port.x", 5], id=i), req("em.inline_progress", [3], id=f"p{i}"))
        answers = [await old.recv(FAST) for _ in range(40)]
        assert all("method" not in a and "result" in a for a in answers), answers
        assert sorted(str(a["id"]) for a in answers) == sorted([str(i) for i in range(20)] +
                                                               [f"p{i}" for i in range(20)])
        assert await asyncio.gather(*(c.raw("em.emit", ["port.y", 2]) for _ in range(50))) == [2] * 50
        assert await c.raw("em.inline_progress", [5]) == "inline"
        assert (await old.ask(req("router.health", id="end")))["id"] == "end"
        assert len(await events(watcher, 200)) == 200


# --- restarts and reloads ----------------------------------------------------------------------


async def test_a_plugin_restart_is_a_gap_in_seq_never_an_error(router: RouterProcess) -> None:
    async with plugrpc.Client(router.socket, timeout=30) as c, await AsyncRawConn.open(router.socket) as raw:
        await subscribe(raw, {"events": ["em.port.*"]})
        async with c.subscribe("em.port.*") as sub:
            await c.raw("em.emit", ["port.up", 2])
            before = [await asyncio.wait_for(anext(sub), FAST) for _ in range(2)]
            pid = await c.raw("em.pid")
            os.kill(pid, signal.SIGKILL)
            await until(lambda: _pid_changed(c, pid), "the plugin to restart")
            await c.raw("em.emit", ["port.up", 2])
            after = [await asyncio.wait_for(anext(sub), FAST) for _ in range(2)]
        raw_seqs = [e["seq"] for e in await events(raw, 4)]
    assert [e.seq for e in before] == [1, 2] and [e.seq for e in after] == [4, 5]  # 3: skipped by the restart
    assert raw_seqs == [1, 2, 4, 5] and all(e.dropped == 0 for e in after)


async def _pid_changed(c: plugrpc.Client, pid: int) -> bool:
    row = next(p for p in await c.raw("router.plugins") if p["name"] == "em")
    return row["state"] == "running" and row["pid"] not in (None, pid)


async def test_subscriptions_live_through_a_manifest_reload(plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"em": emitter(["port.*"])})
    router = plugrpc_router(root)
    async with plugrpc.Client(router.socket, timeout=30) as c, await AsyncRawConn.open(router.socket) as raw:
        await subscribe(raw, {"events": ["em.>", "late.>"]})
        await c.raw("em.emit", ["port.up"])
        await c.raw("em.emit", ["disk.full"])  # not declared yet: dropped
        write_image(root, {"em": emitter(["port.*", "disk.*"]), "late": emitter(["hello"])})
        assert await c.raw("router.reload") == {"added": ["late"], "removed": [], "changed": ["em"], "unchanged": []}
        await c.raw("em.emit", ["disk.full"])
        await c.raw("late.emit", ["hello"])
        got = await events(raw, 3)
    assert [(e["name"], e["seq"]) for e in got] == [("em.port.up", 1), ("em.disk.full", 3), ("late.hello", 1)]


# --- a subscriber that does not read -----------------------------------------------------------


@pytest.mark.parametrize("subscribers", [pytest.param(100, id="100"), pytest.param(1000, id="1000", marks=FULL)])
async def test_a_stuck_subscriber_loses_events_counted_and_slows_nobody(
        plugrpc_image: Image, plugrpc_router: Router, subscribers: int) -> None:
    """One subscriber never reads: its backlog (--event-queue 20) overflows and the rest of its events
    are dropped and counted; every other subscriber gets every event in order, calls keep flowing."""
    router = plugrpc_router(plugrpc_image({"em": emitter(["tick"]), "other": emitter([])}), "--event-queue", "20")
    bursts, per_burst, size = 12, 40, 1024
    readers = [await AsyncRawConn.open(router.socket) for _ in range(subscribers - 1)]
    stuck = RawConn(router.socket)
    try:
        stuck.send(req("router.subscribe", {"events": ["em.tick"]}))
        assert stuck.recv()["result"] == {"subscription": 1}
        await asyncio.gather(*(subscribe(r, {"events": ["em.>"]}) for r in readers))
        async with plugrpc.Client(router.socket, timeout=30) as c:
            slowest = 0.0
            rss_before = rss_mib(router.pid)
            for burst in range(bursts):
                started = time.monotonic()
                assert await c.raw("em.emit", ["tick", per_burst, size]) == per_burst
                assert await c.raw("other.pid") > 0
                slowest = max(slowest, time.monotonic() - started)
                got = await asyncio.gather(*(events(r, per_burst) for r in readers))
                expected = list(range(burst * per_burst + 1, (burst + 1) * per_burst + 1))
                assert all([e["seq"] for e in g] == expected and "dropped" not in g[-1] for g in got)
            stats = (await c.raw("router.stats"))["events"]
            rss_after = rss_mib(router.pid)
            assert slowest < FAST
            # The stuck one reads at last: what its buffers and backlog held (the router reads its request
            # only once it reads again, and answers it after the backlog), then the next event says how
            # many it lost.
            stuck.send(req("router.health", id="probe"))
            held = []
            while "id" not in (msg := stuck.recv()):
                held.append(msg["params"]["seq"])
            assert held == list(range(1, len(held) + 1)) and len(held) < bursts * per_burst
            await c.raw("em.emit", ["tick"])
            last = stuck.recv()["params"]
            assert last["seq"] == bursts * per_burst + 1
            assert last["dropped"] == stats["dropped"] == bursts * per_burst - len(held) > 0
            await c.raw("em.emit", ["tick"])  # and it is an ordinary subscriber again
            assert "dropped" not in stuck.recv()["params"]
        figure(f"stuck_subscriber_dropped_{subscribers}", stats["dropped"], "events", of=bursts * per_burst)
        figure(f"stuck_subscriber_slowest_call_{subscribers}", slowest * 1000, "ms")
        figure(f"stuck_subscriber_router_rss_{subscribers}", rss_after - rss_before, "MiB", before=rss_before)
    finally:
        stuck.close()
        await asyncio.gather(*(r.close() for r in readers))


# --- what a plugin must not send ---------------------------------------------------------------


async def test_bad_notifications_from_a_plugin_are_dropped_logged_once_and_reset_nothing(
        plugrpc_image: Image, plugrpc_router: Router) -> None:
    router = plugrpc_router(plugrpc_image({"raw": ("raw.py", RAW_EVENTS, RAW_EVENTS_EXPORTS, {"events": ["ok"]})}))
    bad = [
        '{"jsonrpc": "2.0", "method": "rpc.event", "params": {"name": "secret", "data": 1}}',  # undeclared
        '{"jsonrpc": "2.0", "method": "rpc.event", "params": {"name": "secret", "data": 2}}',  # again
        '{"jsonrpc": "2.0", "method": "rpc.event", "params": ["ok"]}',
        '{"jsonrpc": "2.0", "method": "rpc.event", "params": {"name": "a..b"}}',
        '{"jsonrpc": "2.0", "method": "rpc.event"}',
        '{"method": "rpc.event", "params": {"name": "ok"}}',
        '{"jsonrpc": "2.0", "method": "rpc.progress", "params": {"id": 99999, "value": 1}}',  # not in flight
        '{"jsonrpc": "2.0", "method": "rpc.progress", "params": {"id": "x", "value": 1}}',
        '{"jsonrpc": "2.0", "method": "rpc.progress", "params": {"id": {id}}}',
        '{"jsonrpc": "2.0", "method": "rpc.hello", "params": {}}',
    ]
    async with plugrpc.Client(router.socket, timeout=30) as c, await AsyncRawConn.open(router.socket) as raw:
        await subscribe(raw, {"events": [">"], "progress": True})
        pid = (await c.raw("router.plugins"))[0]["pid"]
        for round in range(3):
            before, answer = await answer_of_call(raw, "raw.send", {"lines": bad}, f"bad{round}")
            assert before == [] and answer["result"] == "ok"
        late = '{"jsonrpc": "2.0", "method": "rpc.progress", "params": {"id": {id}, "value": "late"}}'
        before, answer = await answer_of_call(raw, "raw.late", {"lines": [late]}, "late")
        assert before == [] and answer["result"] == "ok"
        good = ['{"jsonrpc": "2.0", "method": "rpc.event", "params": {"name": "ok", "data": 3}}',
                '{"jsonrpc": "2.0", "method": "rpc.progress", "params": {"id": {id}, "value": 0.5}}']
        before, answer = await answer_of_call(raw, "raw.send", {"lines": good}, "good")
        # progress comes before its answer; events are a stream of their own, written at the end of the turn
        assert before == [{"jsonrpc": "2.0", "method": "rpc.progress", "params": {"id": "good", "value": 0.5}}]
        assert answer["result"] == "ok"
        assert [(e["name"], e["data"]) for e in await events(raw, 1)] == [("raw.ok", 3)]
        row = (await c.raw("router.plugins"))[0]
        assert row["pid"] == pid and row["restarts"] == 0 and row["inflight"] == 0
        assert (await c.raw("router.stats"))["events"]["rejected"] == 3 * len(bad) + 1
    log = router.log()
    assert "resetting" not in log
    for said in ("emitted 'secret', which its manifest declares only ['ok']", "whose params are not",
                 "with a bad name", 'without "jsonrpc": "2.0"', "for id 99999, which is not in flight",
                 'whose params are not {"id"', "does not take ('rpc.hello'", "which is not in flight on that"):
        assert log.count(said) >= 1, said
    assert log.count("emitted 'secret'") == 1 and log.count("rpc.hello") == 1  # once, whatever the count


async def answer_of_call(conn: AsyncRawConn, method: str, params: Any, id: str) -> tuple[list[Any], dict[str, Any]]:
    await conn.send(req(method, params, id=id))
    return await answer_of(conn, id)


async def test_invalid_patterns_are_invalid_params_naming_them(router: RouterProcess) -> None:
    async with await AsyncRawConn.open(router.socket) as raw, plugrpc.Client(router.socket, timeout=30) as c:
        cases = [({"events": ["ok.*", "a..b", "x.>.y"]}, ["a..b", "x.>.y"]), ({"events": [7]}, ["7"]),
                 ({"events": ["bad token"]}, ["bad token"])]
        for params, named in cases:
            error = (await raw.ask(req("router.subscribe", params)))["error"]
            assert error["code"] == -32602 and error["data"]["patterns"] == named, error
        for params in ({}, {"events": []}, {"events": "em.>"}, {"progress": "yes"}, {"topics": ["x"]}, ["em.>"]):
            error = (await raw.ask(req("router.subscribe", params)))["error"]
            assert error["code"] == -32602 and "events" in error["data"]["reason"], (params, error)
        for params in ({"subscription": "1"}, {}, None):
            assert (await raw.ask(req("router.unsubscribe", params)))["error"]["code"] == -32602
        assert (await raw.ask(req("router.unsubscribe", {"subscription": 5})))["result"] is False
        with pytest.raises(plugrpc.RpcError) as info:
            async with c.subscribe("em.port.*", "em.>.x"):
                pass
        assert info.value.code == -32602 and "'>' matches the rest of a name" in info.value.data["reason"]
        # a connection's subscription ends with router.unsubscribe, and so do its events
        sid = await subscribe(raw, {"events": ["em.>"]})
        assert (await raw.ask(req("router.unsubscribe", {"subscription": sid})))["result"] is True
        await c.raw("em.emit", ["port.gone"])
        assert (await raw.ask(req("router.health", id="h")))["id"] == "h"


# --- progress ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["inline", "async", "threaded"])
async def test_progress_reaches_only_a_caller_that_asked(router: RouterProcess, kind: str) -> None:
    method = f"em.{kind}_progress"
    async with (await AsyncRawConn.open(router.socket) as asked, await AsyncRawConn.open(router.socket) as events_only,
                await AsyncRawConn.open(router.socket) as silent, plugrpc.Client(router.socket, timeout=30) as c):
        await subscribe(asked, {"progress": True})
        await subscribe(events_only, {"events": [">"]})
        for conn in (asked, events_only, silent):
            await conn.send(req(method, [4], id=f"{kind}-1"))
        before, answer = await answer_of(asked, f"{kind}-1")
        assert before == [{"jsonrpc": "2.0", "method": "rpc.progress", "params": {"id": f"{kind}-1", "value": i}}
                          for i in range(4)]
        assert answer["result"] == kind
        for conn in (events_only, silent):
            assert await answer_of(conn, f"{kind}-1") == ([], {"jsonrpc": "2.0", "result": kind, "id": f"{kind}-1"})
        # in a batch, each call's progress carries its own id
        await asked.send([req(method, [2], id="b1"), req(method, [1], id="b2")])
        lines = [await asked.recv(FAST) for _ in range(4)]
        progress = [m["params"] for m in lines[:-1]]
        assert sorted(map(str, progress)) == sorted(map(str, [{"id": "b1", "value": 0}, {"id": "b1", "value": 1},
                                                                  {"id": "b2", "value": 0}]))
        assert sorted(r["id"] for r in lines[-1]) == ["b1", "b2"]
        # through the client: a callback, called before the answer comes
        seen: list[Any] = []
        assert await c.raw(method, [3], progress=seen.append) == kind
        assert seen == [0, 1, 2]
        assert await c.raw(method, [3]) == kind and seen == [0, 1, 2]  # no callback, no progress
        reported: list[Any] = []

        async def slow(value: Any) -> None:
            await asyncio.sleep(0)
            reported.append(value)

        assert await c.raw(method, [2], progress=slow) == kind
        await until(lambda: reported == [0, 1], "the async callbacks to run")


async def test_progress_outside_a_handler_says_where_to_call_it(router: RouterProcess) -> None:
    async with plugrpc.Client(router.socket, timeout=30) as c:
        assert "call it inside the handler" in await c.raw("em.progress_elsewhere")


# --- calls from plugin to plugin ---------------------------------------------------------------


async def test_a_plugin_calls_another_through_the_router_under_its_exports(
        plugrpc_image: Image, plugrpc_router: Router) -> None:
    b = ("b.py", EMITTER, ["pid", "emit"], {"events": ["x"]})
    router = plugrpc_router(plugrpc_image({"a": emitter([]), "b": b}))
    async with plugrpc.Client(router.socket, timeout=30) as c, c.subscribe("b.x") as sub:
        b_pid = next(p["pid"] for p in await c.raw("router.plugins") if p["name"] == "b")
        assert await c.raw("a.call", ["b.pid"]) == b_pid
        assert await c.raw("a.call", ["b.emit", ["x", 2]]) == 2  # b's events reach a's caller's subscription
        assert [e.data for e in [await asyncio.wait_for(anext(sub), FAST) for _ in range(2)]] == [{"i": 0}, {"i": 1}]
        with pytest.raises(plugrpc.RpcError) as info:
            await c.raw("a.call", ["b.call", ["a.pid"]])  # served by b, but not exported
        assert info.value.code == -32601 and "b does not export 'call'" in info.value.data["reason"]
        with pytest.raises(plugrpc.RpcError) as info:
            await c.raw("a.call", ["router.reload.x"])
        assert info.value.code == -32601
        clients = (await c.raw("router.stats"))["clients"]
        assert await c.raw("a.fan", ["b.pid", 50]) == [b_pid] * 50
        assert (await c.raw("router.stats"))["clients"] == clients  # the same one connection for all of a's calls


@pytest.mark.parametrize("keys", [pytest.param({"max_pending": 50}, id="max_pending"),
                                  pytest.param({"max_inflight": 1, "timeout": 1}, id="max_inflight")])
async def test_a_plugin_calling_itself_forever_is_bounded_and_wedges_nothing(
        plugrpc_image: Image, plugrpc_router: Router, keys: dict[str, Any]) -> None:
    router = plugrpc_router(plugrpc_image({"loop": emitter([], **keys), "ovs": emitter([])}))
    async with plugrpc.Client(router.socket, timeout=60) as c:
        started = time.monotonic()
        looping = asyncio.ensure_future(c.raw("loop.loop"))
        while not looping.done():  # the router answers others all along
            assert await asyncio.wait_for(c.raw("ovs.pid"), FAST) > 0
            await asyncio.sleep(0.05)
        with pytest.raises(plugrpc.RpcError) as info:
            await looping
        took = time.monotonic() - started
        assert info.value.code in (-32003, -32002), info.value
        assert took < FAST + 1
        await until(lambda: _idle(c), "every call to have left flight")
        assert (await c.raw("router.health"))["status"] == "ok"
        assert await c.raw("loop.pid") > 0
    figure(f"self_call_loop_{next(iter(keys))}_s", took, "s", code=info.value.code)


async def _idle(c: plugrpc.Client) -> bool:
    return (await c.raw("router.stats"))["inflight"] == 0


# --- discovery, the command line, the Node example ----------------------------------------------


async def test_rpc_discover_and_router_plugins_list_each_plugins_events(router: RouterProcess) -> None:
    async with plugrpc.Client(router.socket, timeout=30) as c:
        doc = await c.raw("rpc.discover")
        assert doc["x-events"] == {"em": ["em.port.*", "em.build.>"], "other": ["other.>"]}
        assert [p["events"] for p in await c.raw("router.plugins")] == [["port.*", "build.>"], [">"]]
        assert {m["name"] for m in doc["methods"]} >= {"router.subscribe", "router.unsubscribe"}


def test_plugrpc_events_prints_one_json_line_per_event_until_ctrl_c(router: RouterProcess) -> None:
    command = [sys.executable, "-m", "plugrpc", "events", "--socket", str(router.socket), "em.port.*"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with router.client() as c:
            wait_until(lambda: c.raw("router.stats")["events"]["subscriptions"] == 1, "plugrpc events to subscribe")
            c.raw("em.emit", ["port.added", 2])
            c.raw("em.emit", ["build.x"])
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(2)]
        assert lines == [b'{"name":"em.port.added","data":{"i":0},"seq":1}\n',
                         b'{"name":"em.port.added","data":{"i":1},"seq":2}\n']
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=FAST)
        assert proc.returncode == 130 and out == b"", err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    bad = subprocess.run([*command[:-1], "em..x"], capture_output=True, timeout=60)
    assert bad.returncode == 1 and b"-32602" in bad.stderr and b"em..x" in bad.stderr


@pytest.mark.skipif(not Path("/usr/bin/node").exists() and not Path("/usr/local/bin/node").exists(),
                    reason="node is not installed")
async def test_the_node_example_emits_an_event(plugrpc_router: Router) -> None:
    from plugrpc.config import EXAMPLE_ROOT

    router = plugrpc_router(EXAMPLE_ROOT)
    async with plugrpc.Client(router.socket, timeout=30) as c, c.subscribe("node.>", "demo.>") as sub:
        assert await c.raw("node.greet", {"name": "Ada"}) == "Hello, Ada!"
        ev = await asyncio.wait_for(anext(sub), FAST)
        assert (ev.name, ev.data) == ("node.greeted", {"name": "Ada"})
        steps: list[Any] = []
        assert await c.raw("demo.build", {"steps": 2}, progress=steps.append) == "built in 2 steps"
        assert steps == [{"step": 1, "of": 2}, {"step": 2, "of": 2}]
        assert [e.name for e in [await asyncio.wait_for(anext(sub), FAST) for _ in range(2)]] == [
            "demo.build.started", "demo.build.finished"]
        assert await c.raw("demo.versions") == {"ovs": "1.0alpha"}
