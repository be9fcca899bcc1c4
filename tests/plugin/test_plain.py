"""plugin.plain: the plain engine, for plugins whose commands are all plain functions (no asyncio).

Driven over raw sockets with the plugin started as the runtime starts one (fd 3); the protocol is
the asyncio engine's, so these check what the engine itself does: answering, batches, limits,
backpressure, progress and events from threads, signals.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable

import orjson
import pytest

from plugrpc.errors import ConfigError
from plugrpc.plugin.dispatch import resolve, threaded
from plugrpc.plugin.sdk import _engine, serve

from util import NOTIFY, PLUGINS, WAIT, Fd3Plugin, req, wait_until

PLAIN = PLUGINS / "plain_plugin.py"
Start = Callable[..., Fd3Plugin]


@pytest.fixture
def plain(start: Start) -> Fd3Plugin:
    return start(PLAIN, name="plain")


def test_it_serves_without_asyncio_or_typing(start: Start) -> None:
    # Without coverage's own start-up in the plugin (make test measures subprocesses): it imports typing.
    plain = start(PLAIN, name="plain", env={"COVERAGE_PROCESS_START": "", "COVERAGE_PROCESS_CONFIG": ""})
    with plain.connect() as c:
        facts = c.ask(req("facts"))["result"]
    assert facts["asyncio"] is False and facts["typing"] is False and facts["started"] == [True]
    assert "serving 8 commands" in plain.log()


def test_calls_batches_notifications_and_errors(plain: Fd3Plugin) -> None:
    with plain.connect() as c:
        assert c.ask(req("add", {"a": 2, "b": 3})) == {"jsonrpc": "2.0", "result": 5, "id": 1}
        assert c.ask(req("add", [2], id="x")) == {"jsonrpc": "2.0", "result": 2, "id": "x"}
        assert c.ask(req("add", {"c": 1}))["error"]["code"] == -32602
        assert c.ask(req("nope"))["error"]["code"] == -32601
        assert c.ask(req("fail"))["error"] == {"code": -32603, "message": "Internal error",
                                              "data": "ValueError: boom"}
        assert c.ask(b"{not json\n")["error"]["code"] == -32700
        c.send(req("echo", [1], id=NOTIFY), req("echo", [2], id=7))  # the notification gets nothing
        assert c.recv() == {"jsonrpc": "2.0", "result": 2, "id": 7}
        batch = c.ask([req("add", [1, 1], id=1), req("echo", ["n"], id=NOTIFY), req("nope", id=2)])
        assert [(m["id"], "result" in m) for m in batch] == [(1, True), (2, False)]
        assert c.ask(req("rpc.cancel", {"id": 1})) == {"jsonrpc": "2.0", "result": False, "id": 1}
        assert c.ask(req("rpc.cancel", {"id": [1]}))["error"]["code"] == -32602
        methods = c.ask(req("rpc.discover"))["result"]["methods"]
        assert [m["name"] for m in methods][:2] == ["add", "echo"] and methods[0]["description"] == "Add two numbers."


def test_a_line_over_the_limit_is_answered_then_the_connection_closes(start: Start) -> None:
    plugin = start(PLAIN, name="plain", env={"PLAIN_MAX_LINE": "1024"})
    with plugin.connect() as c:
        c.send(orjson.dumps(req("echo", [1], id="before")) + b"\n" + b'{"x": "' + b"y" * 4000 + b'"}\n')
        assert c.recv()["id"] == "before"
        assert c.recv()["error"]["code"] == -32004
        assert c.closed_by_peer()
    with plugin.connect() as other:  # only that connection
        assert other.ask(req("add", [1, 2]))["result"] == 3


def test_a_peer_that_does_not_read_is_not_read_from_and_loses_nothing(plain: Fd3Plugin) -> None:
    with plain.connect() as slow, plain.connect() as other:
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        line = orjson.dumps(req("big", [64 * 1024], id=0)) + b"\n"
        slow.sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:  # until the plugin stops reading this connection
            try:
                sent += slow.sock.send(line * 16)
            except BlockingIOError:
                break
        assert time.monotonic() < deadline, "the plugin kept reading a peer that never reads"
        assert other.ask(req("add", [1, 2]))["result"] == 3  # the others go on meanwhile
        slow.sock.setblocking(True)
        slow.sock.settimeout(WAIT)
        answers = 0
        while answers < sent // len(line):
            assert len(slow.recv()["result"]) == 64 * 1024
            answers += 1


def test_answers_larger_than_the_socket_buffer_leave_whole_and_reading_goes_on(plain: Fd3Plugin) -> None:
    """A 1 MiB answer is written over several turns (reads pause meanwhile); the next requests are read."""
    with plain.connect() as c:
        payload = "y" * (1 << 20)
        for n in range(3):
            assert c.ask(req("echo", [payload], id=n)) == {"jsonrpc": "2.0", "result": payload, "id": n}
        assert c.ask(req("add", [1, 2]))["result"] == 3
    assert plain.proc.poll() is None, plain.log()


def test_progress_and_events_from_a_thread_reach_the_connection(plain: Fd3Plugin) -> None:
    with plain.connect() as c:
        c.send(req("steps", [3], id=9))
        got = [c.recv() for _ in range(4)]
        assert [m["params"]["value"] for m in got[:3]] == [{"step": i} for i in range(3)]
        assert all(m["method"] == "rpc.progress" and m["params"]["id"] == 9 for m in got[:3])
        assert got[3] == {"jsonrpc": "2.0", "result": 3, "id": 9}
        assert c.ask(req("emit_from_thread", [5], id=10))["result"] is True
        events = [c.recv() for _ in range(5)]
        assert [(e["method"], e["params"]["name"], e["params"]["data"]["i"]) for e in events] == [
            ("rpc.event", "tick", i) for i in range(5)]


def test_sigterm_answers_what_was_read_then_exits(plain: Fd3Plugin) -> None:
    with plain.connect() as c:
        c.send(req("nap", [0.3], id="slow"))
        wait_until(lambda: "napping" in plain.log(), "the request to run")
        plain.proc.send_signal(signal.SIGTERM)
        assert c.recv() == {"jsonrpc": "2.0", "result": 0.3, "id": "slow"}
        assert c.closed_by_peer()
    assert plain.wait() == 0
    assert "SIGTERM: answering what was read, then exiting" in plain.log()


def test_a_failing_start_up_exits_1(start: Start) -> None:
    plugin = start(PLAIN, name="plain", env={"PLAIN_FAIL_START": "1"})
    assert plugin.wait() == 1
    assert "on_start failed; exiting" in plugin.log() and "cannot open the database" in plugin.log()


def test_the_engine_is_chosen_by_the_commands_or_by_hand() -> None:
    async def coro() -> None:
        pass

    def plain() -> None:
        pass

    assert _engine(resolve({"a": plain}), None, "auto") == "none"
    assert _engine(resolve({"a": plain}), plain, "auto") == "none"
    assert _engine(resolve({"a": plain}), coro, "auto") == "auto"  # an async on_start needs a loop
    assert _engine(resolve({"a": plain, "b": coro}), None, "auto") == "auto"
    assert _engine(resolve({"a": plain, "t": threaded(lambda: 1)}), None, "auto") == "auto"
    assert _engine(resolve({"a": plain}), None, "asyncio") == "asyncio"  # a plain command that wants a loop
    with pytest.raises(ConfigError, match='loop="none"'):
        serve({"a": coro}, loop="none")
