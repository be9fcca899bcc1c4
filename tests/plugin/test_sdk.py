"""plugrpc.sdk: real plugin processes handed a listening socket as fd 3, driven over raw sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

import plugrpc
from plugrpc import codes
from plugrpc.errors import ConfigError
from plugrpc.plugin import outgoing
from plugrpc.plugin.aio import AsyncServer as _Server
from plugrpc.plugin.aio import Connection
from plugrpc.plugin.dispatch import resolve
from plugrpc.plugin.sdk import serve
from plugrpc.testing import wait_for_socket

from util import NOTIFY, PLUGINS, WAIT, Fd3Plugin, RawConn, req, until, wait_until

BASIC = PLUGINS / "sdk_basic.py"


def note(method: str, params: Any = None) -> dict[str, Any]:
    return req(method, params, id=NOTIFY)


@pytest.fixture
def basic(start: Callable[..., Fd3Plugin]) -> Fd3Plugin:
    return start()


def result(msg: dict[str, Any], id: Any = 1) -> Any:
    assert msg.get("id") == id and "error" not in msg, msg
    return msg["result"]


def error(msg: dict[str, Any], id: Any = 1) -> dict[str, Any]:
    assert msg.get("id") == id and "result" not in msg, msg
    return msg["error"]  # type: ignore[no-any-return]


def poll(conn: RawConn, method: str, params: Any, expect: Any) -> None:
    """Ask until the answer is `expect` (state changes in the plugin are not instant)."""
    wait_until(lambda: result(conn.ask(req(method, params, id="poll")), "poll") == expect,
               f"{method}{params} to answer {expect!r}")


class TestCalls:
    def test_named_and_positional_params(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            assert result(c.ask(req("add", {"a": 2, "b": 3}))) == 5
            assert result(c.ask(req("add", [2, 3]))) == 5
            assert result(c.ask(req("add", [2]))) == 2
            assert result(c.ask(req("kwonly", {"name": "x", "shout": True}))) == "X"
            assert result(c.ask(req("dotted.name", ["v"]))) == "v"
            assert result(c.ask(req("echo", [None], id="s")), "s") is None

    def test_mismatch_is_invalid_params_naming_the_argument(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            err = error(c.ask(req("add", {"b": 1})))
            assert err["code"] == codes.INVALID_PARAMS and err["data"] == "missing a required argument: 'a'"
            err = error(c.ask(req("kwonly", {"name": "x", "loud": 1})))
            assert err["code"] == codes.INVALID_PARAMS and "'loud'" in err["data"]
            err = error(c.ask(req("kwonly", ["x"])))
            assert err["code"] == codes.INVALID_PARAMS and "too many positional" in err["data"]

    def test_unknown_method(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            err = error(c.ask(req("nope", id=7)), 7)
            assert err == {"code": codes.METHOD_NOT_FOUND, "message": "Method not found", "data": "nope"}

    def test_handler_exception_is_internal_error_and_the_plugin_lives_on(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            assert error(c.ask(req("fail")))["data"] == "ValueError: boom"
            err = error(c.ask(req("inner_type_error")))
            assert err["code"] == codes.INTERNAL_ERROR and err["data"].startswith("TypeError: ")
            err = error(c.ask(req("async_fail", ["type"])))
            assert err == {"code": codes.INTERNAL_ERROR, "message": "Internal error",
                           "data": "TypeError: wrong type inside"}
            assert error(c.ask(req("async_fail", ["k"])))["data"] == "KeyError: 'k'"
            assert result(c.ask(req("add", [1, 1]))) == 2
        log = basic.log()
        assert "command 'fail' raised ValueError" in log
        assert "Traceback (most recent call last)" in log and 'raise ValueError("boom")' in log

    def test_rpc_errors_and_unserializable_results(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            assert error(c.ask(req("own_error"))) == {"code": 4000, "message": "custom failure", "data": [1, 2]}
            assert error(c.ask(req("plugin_error")))["code"] == codes.PLUGIN_UNAVAILABLE
            err = error(c.ask(req("unserializable")))
            assert err["code"] == codes.INTERNAL_ERROR and "not JSON-serializable" in err["data"]

    def test_logging_is_configured_on_stderr(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            c.ask(req("add", [1]))
        assert "INFO plugrpc.sdk: serving 18 commands" in basic.log()


class TestJsonrpcserverModule:
    def test_serves_unchanged(self, start: Callable[..., Fd3Plugin]) -> None:
        plugin = start(PLUGINS / "sdk_jsonrpcserver.py", name="jrs")
        with plugin.connect() as c:
            assert result(c.ask(req("ping"))) == "pong"
            assert result(c.ask(req("async_ping"))) == "async pong"
            assert result(c.ask(req("math.divide", [6, 3]))) == 2.0
            assert error(c.ask(req("math.divide", {"a": 6, "b": 0}))) == {
                "code": 1, "message": "division by zero", "data": {"a": 6}}
            assert error(c.ask(req("math.divide", [6])))["code"] == codes.INVALID_PARAMS
            assert error(c.ask(req("needs_positive", [-1]))) == {
                "code": codes.INVALID_PARAMS, "message": "Invalid params", "data": "n must be positive"}
            assert error(c.ask(req("no_data"))) == {"code": 2, "message": "no data here"}
            assert error(c.ask(req("null_data"))) == {"code": 3, "message": "null data", "data": None}
            assert error(c.ask(req("raises"))) == {"code": -32099, "message": "raised", "data": "some data"}


class TestConcurrency:
    def test_a_slow_async_call_does_not_hold_up_a_fast_one(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            c.send(req("wait_forever", ["c"], id=1))
            assert result(c.ask(req("fast", id=2)), 2) == "fast"
            assert result(c.ask(req("add", [4], id=3)), 3) == 4

    def test_responses_come_in_completion_order(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            c.send(orjson.dumps(req("slow", [0.3], id=1)) + b"\n" + orjson.dumps(req("slow", [0.01], id=2)) + b"\n")
            assert result(c.recv(), 2) == 0.01
            assert result(c.recv(), 1) == 0.3

    def test_threaded_command_runs_off_the_loop(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            c.send(req("blocking", [0.5], id=1))
            assert result(c.ask(req("add", [1], id=2)), 2) == 1
            assert result(c.recv(), 1) == "slept"


class TestFraming:
    def test_batch(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            batch = [req("add", [1], 1), note("add", [2]), req("slow", [0.01], 2), req("nope", id=3), 5]
            responses = c.ask(batch)
            assert [r["id"] for r in responses] == [1, 2, 3, None]
            assert responses[1]["result"] == 0.01
            assert responses[2]["error"]["code"] == codes.METHOD_NOT_FOUND
            assert responses[3]["error"]["code"] == codes.INVALID_REQUEST

    def test_notifications_get_no_response(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            for msg in (note("add", [1]), note("fail"), note("nope"), note("slow", [0.01]),
                        [note("add", [1]), note("fast")]):
                c.send(msg)
            # The next line is the answer to this call: nothing was sent for the notifications.
            assert result(c.ask(req("add", [5], id=9)), 9) == 5
            assert "Traceback" in basic.log()  # the failing notification was still run and logged

    def test_empty_batch(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            assert error(c.ask(b"[]\n"), None)["code"] == codes.INVALID_REQUEST

    def test_parse_error_and_invalid_requests(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            assert error(c.ask(b"{not json\n"), None)["code"] == codes.PARSE_ERROR
            assert error(c.ask(b"\xff\xfe\n"), None)["code"] == codes.PARSE_ERROR
            assert error(c.ask({"jsonrpc": "1.0", "method": "add", "id": 5}), 5)["code"] == codes.INVALID_REQUEST
            assert error(c.ask({"jsonrpc": "2.0", "method": "add", "id": [1]}), None)["code"] == codes.INVALID_REQUEST
            assert error(c.ask({"jsonrpc": "2.0", "method": "add", "params": 3}), None)["code"] == codes.INVALID_REQUEST
            assert result(c.ask(req("add", [1]))) == 1

    def test_oversized_line_closes_only_that_connection(self, start: Callable[..., Fd3Plugin]) -> None:
        plugin = start(env={"SDK_TEST_MAX_LINE": "4096"})
        with plugin.connect() as bystander, plugin.connect() as c:
            assert result(bystander.ask(req("add", [1]))) == 1
            c.send(req("echo", ["x" * 10_000]))
            err = error(c.recv(), None)
            assert err["code"] == codes.MESSAGE_TOO_LARGE and "4096" in err["data"]
            assert c.closed_by_peer()
            assert result(bystander.ask(req("echo", ["y" * 3000]))) == "y" * 3000
            # A large response is fine: the limit is on what the plugin reads.
            assert len(result(bystander.ask(req("big", [100_000])))) == 100_000


class TestBuiltins:
    def test_rpc_cancel_cancels_a_running_async_call(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            c.send(req("wait_forever", ["t1"], id=1))
            poll(c, "started", ["t1"], True)
            c.send(note("rpc.cancel", {"id": 1}))
            poll(c, "cancelled", None, ["t1"])
            # Already gone; and as a request rpc.cancel says so. No response for id 1 ever came.
            assert result(c.ask(req("rpc.cancel", {"id": 1}, id=2)), 2) is False
            assert error(c.ask(req("rpc.cancel", {"id": [1]}, id=3)), 3)["code"] == codes.INVALID_PARAMS

    def test_a_closed_connection_cancels_its_calls(self, basic: Fd3Plugin) -> None:
        with basic.connect() as gone:
            gone.send(req("wait_forever", ["t2"], id=1))
            poll(gone, "started", ["t2"], True)
        with basic.connect() as c:
            poll(c, "cancelled", None, ["t2"])

    def test_rpc_cancel_is_per_connection(self, basic: Fd3Plugin) -> None:
        with basic.connect() as a, basic.connect() as b:
            a.send(req("wait_forever", ["t3"], id=1))
            poll(a, "started", ["t3"], True)
            assert result(b.ask(req("rpc.cancel", {"id": 1}, id=2)), 2) is False
            assert result(a.ask(req("rpc.cancel", {"id": 1}, id=2)), 2) is True

    def test_rpc_discover(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            doc = result(c.ask(req("rpc.discover")))
        assert doc["openrpc"].startswith("1.2.") and doc["info"]["title"] == "basic"
        methods = {m["name"]: m for m in doc["methods"]}
        assert "rpc.discover" not in methods and "rpc.cancel" not in methods
        assert methods["add"] == {
            "name": "add",
            "description": "Add two numbers.",
            "params": [
                {"name": "a", "required": True, "schema": {"type": "integer"}},
                {"name": "b", "required": False, "schema": {"type": "integer"}},
            ],
            "result": {"name": "result", "schema": {"type": "integer"}},
        }
        assert methods["kwonly"]["paramStructure"] == "by-name"
        assert methods["echo"]["params"] == [{"name": "value", "required": True, "schema": {}}]
        assert methods["cancelled"]["result"]["schema"] == {"type": "array"}
        assert methods["slow"]["params"][0]["schema"] == {"type": "number"}
        assert "description" not in methods["echo"]


class TestLifecycle:
    def test_sigterm_drains_in_flight_calls_and_exits_0(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            c.send(req("slow", [0.5], id=1))
            assert result(c.ask(req("add", [1], id=2)), 2) == 1  # so the slow call has started
            basic.proc.send_signal(signal.SIGTERM)
            assert result(c.recv(), 1) == 0.5
            assert c.closed_by_peer()
        assert basic.wait() == 0
        assert "SIGTERM: finishing in-flight calls" in basic.log()

    def test_sigint_with_nothing_in_flight_exits_0(self, basic: Fd3Plugin) -> None:
        with basic.connect() as c:
            assert result(c.ask(req("add", [1]))) == 1
            basic.proc.send_signal(signal.SIGINT)
            assert c.closed_by_peer()
        assert basic.wait() == 0

    def test_listen_pid_of_this_process_is_honoured(self, start: Callable[..., Fd3Plugin]) -> None:
        # sh sets LISTEN_PID to its own pid, then execs the plugin in the same process.
        plugin = start(wrapper=["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh"])
        with plugin.connect() as c:
            assert result(c.ask(req("pid"))) == plugin.proc.pid

    def test_serve_binds_a_path_and_removes_it(self, plugrpc_tmp: Path) -> None:
        path = plugrpc_tmp / "byhand.sock"
        code = f"from plugrpc.plugin.sdk import serve; serve({{'one': lambda: 1}}, path={str(path)!r})"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "PLUGRPC_"))}
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
        try:
            wait_for_socket(path, WAIT, lambda: proc.poll() is None)
            with RawConn(path) as c:
                assert result(c.ask(req("one"))) == 1
            proc.terminate()
            assert proc.wait(WAIT) == 0
            assert not path.exists()
        finally:
            proc.kill()
            proc.wait(WAIT)


class TestServeErrors:
    @pytest.fixture(autouse=True)
    def no_socket_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "PLUGRPC_SOCKET"):
            monkeypatch.delenv(name, raising=False)

    def test_reserved_names_are_refused_at_start(self) -> None:
        with pytest.raises(ValueError, match="reserved"):
            serve({"rpc.mine": lambda: 1})

    def test_no_socket_says_how_a_plugin_is_started(self) -> None:
        with pytest.raises(ConfigError, match=r"plugrpc run.*LISTEN_FDS=1.*PLUGRPC_SOCKET"):
            serve({"one": lambda: 1})

    def test_fds_meant_for_another_process_are_left_alone(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LISTEN_FDS", "1")
        monkeypatch.setenv("LISTEN_PID", str(os.getppid()))
        with pytest.raises(ConfigError, match="no socket"):
            serve({"one": lambda: 1})
        assert os.environ["LISTEN_FDS"] == "1"

    def test_more_than_one_fd_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LISTEN_FDS", "2")
        with pytest.raises(ConfigError, match="exactly one socket"):
            serve({"one": lambda: 1})


class FakeTransport(asyncio.Transport):
    """Records what the protocol asks of its transport (a pure unit: no socket)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.reading = True
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


async def aecho(x: int) -> int:
    await asyncio.sleep(0)
    return x


class TestConnection:
    @pytest.fixture
    async def conn(self) -> tuple[Connection, FakeTransport, _Server]:
        server = _Server(resolve({"echo": lambda x: x, "aecho": aecho}), 1 << 20)
        conn, transport = Connection(server), FakeTransport()
        conn.connection_made(transport)
        return conn, transport, server

    async def test_responses_to_one_chunk_leave_in_one_write(self, conn: Any) -> None:
        protocol, transport, _ = conn
        protocol.data_received(b"".join(orjson.dumps(req("echo", [i], i)) + b"\n" for i in range(3)))
        assert len(transport.writes) == 1
        assert [orjson.loads(line)["id"] for line in transport.writes[0].splitlines()] == [0, 1, 2]

    async def test_async_completions_in_one_loop_turn_leave_in_one_write(self, conn: Any) -> None:
        protocol, transport, _ = conn
        protocol.data_received(b"".join(orjson.dumps(req("aecho", [i], i)) + b"\n" for i in range(3)))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not protocol.running
        assert len(transport.writes) == 1 and transport.writes[0].count(b"\n") == 3

    async def test_backpressure_pauses_reading(self, conn: Any) -> None:
        protocol, transport, server = conn
        protocol.pause_writing()
        assert not transport.reading
        protocol.resume_writing()
        assert transport.reading
        protocol.flow.close()  # shutting down (as _Server._shutdown does): reading stays off
        protocol.pause_writing()
        protocol.resume_writing()
        assert not transport.reading


# --- a plugin is not a router ------------------------------------------------------------------

MODULES = '''
#!/usr/bin/env python3
import sys
import plugrpc

def modules():
    return sorted(name for name in sys.modules if name.startswith("plugrpc") or name in ("asyncio", "typing"))

plugrpc.serve({"modules": modules})
'''


def test_a_plugin_process_loads_only_the_plugin_side(
        plugrpc_tmp: Path, plugrpc_plugin: Callable[..., plugrpc.BlockingClient]) -> None:
    script = plugrpc_tmp / "mods.py"
    script.write_text(MODULES.lstrip())
    script.chmod(0o755)
    # Without coverage's own start-up in the plugin (make test measures plugins too): it imports typing.
    loaded = plugrpc_plugin(script, ["modules"], env={"COVERAGE_PROCESS_CONFIG": ""}).raw("mods.modules")
    assert "plugrpc.plugin.sdk" in loaded
    assert not [name for name in loaded if name.split(".")[1:2] in (["router"], ["process"], ["client"], ["tools"])]
    # Plain commands only: the plain engine, with neither asyncio nor typing (together ~6.5 MB of memory).
    assert "plugrpc.plugin.plain" in loaded and "asyncio" not in loaded and "typing" not in loaded


# --- what a plugin says of its own accord (plugin/outgoing.py) ----------------------------------


def steps(n: int) -> int:
    for i in range(n):
        plugrpc.progress(i)
    return n


async def asteps(n: int) -> int:
    for i in range(n):
        plugrpc.progress(i)
        await asyncio.sleep(0)
    return n


@plugrpc.threaded
def tsteps(n: int) -> int:
    return steps(n)


def lines_of(transport: FakeTransport) -> list[Any]:
    return [orjson.loads(line) for data in transport.writes for line in data.splitlines()]


class TestOutgoing:
    @pytest.fixture
    async def plugin(self) -> AsyncIterator[_Server]:
        server = _Server(resolve({"steps": steps, "asteps": asteps, "tsteps": tsteps}), 1 << 20)
        outgoing.PLUGIN.__init__()  # type: ignore[misc]  # what other tests' connections left: this process is no plugin
        outgoing.attach(asyncio.get_running_loop())
        try:
            yield server
        finally:
            await outgoing.detach()
            outgoing.PLUGIN.__init__()  # type: ignore[misc]

    def connect(self, server: _Server) -> tuple[Connection, FakeTransport]:
        conn, transport = Connection(server), FakeTransport()
        conn.connection_made(transport)
        return conn, transport

    async def test_events_before_a_connection_wait_for_the_first_one_boundedly(self, plugin: _Server) -> None:
        for i in range(outgoing.PENDING_LIMIT + 5):
            plugrpc.emit("early", i)
        assert outgoing.PLUGIN.dropped == 5
        _, transport = self.connect(plugin)
        await asyncio.sleep(0)
        sent = lines_of(transport)
        assert [m["params"]["data"] for m in sent] == list(range(5, outgoing.PENDING_LIMIT + 5))
        assert sent[0] == {"jsonrpc": "2.0", "method": "rpc.event", "params": {"name": "early", "data": 5}}

    async def test_events_leave_on_one_connection_and_move_when_it_closes(self, plugin: _Server) -> None:
        first, one = self.connect(plugin)
        second, two = self.connect(plugin)
        plugrpc.emit("a.b", {"x": 1})
        threading.Thread(target=plugrpc.emit, args=("from.thread",)).start()
        await until(lambda: len(lines_of(one)) == 2, "both events on the first connection")
        assert not two.writes
        first.connection_lost(None)
        plugrpc.emit("after")
        await asyncio.sleep(0)
        assert [m["params"]["name"] for m in lines_of(two)] == ["after"]

    async def test_bad_events_raise_where_they_are_emitted(self, plugin: _Server) -> None:
        with pytest.raises(ValueError, match="not an event name"):
            plugrpc.emit("a..b")
        with pytest.raises(ValueError, match="non-empty string"):
            plugrpc.emit(7)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            plugrpc.emit("ok", object())

    @pytest.mark.parametrize("method", ["steps", "asteps", "tsteps"])
    async def test_progress_goes_out_before_the_answer_on_the_call_s_connection(self, plugin: _Server,
                                                                                method: str) -> None:
        conn, transport = self.connect(plugin)
        other, quiet = self.connect(plugin)
        conn.data_received(orjson.dumps(req(method, [3], id="c")) + b"\n" + orjson.dumps(req(method, [1])) + b"\n")
        await until(lambda: len(lines_of(transport)) == 6, "three progress lines and two answers")
        got = lines_of(transport)
        assert [m for m in got if "method" in m and m["params"]["id"] == "c"] == [
            {"jsonrpc": "2.0", "method": "rpc.progress", "params": {"id": "c", "value": i}} for i in range(3)]
        assert got.index({"jsonrpc": "2.0", "result": 3, "id": "c"}) > max(
            i for i, m in enumerate(got) if m.get("params", {}).get("id") == "c")
        assert not quiet.writes
        # a notification reports to nobody: only the answer of the call after it follows
        conn.data_received(orjson.dumps(req(method, [2], id=NOTIFY)) + b"\n" + orjson.dumps(req(method, [0], id="e"))
                           + b"\n")
        await until(lambda: len(lines_of(transport)) == 7, "the answer to the last call")
        assert lines_of(transport)[6:] == [{"jsonrpc": "2.0", "result": 0, "id": "e"}]

    async def test_progress_outside_a_handler_raises(self, plugin: _Server) -> None:
        with pytest.raises(RuntimeError, match="inside the handler"):
            plugrpc.progress(1)
        assert outgoing.INLINE.conn is None  # a connection sets it only while it dispatches

    async def test_detach_closes_the_client_of_call(self, plugin: _Server, plugrpc_tmp: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PLUGRPC_ROUTER", str(plugrpc_tmp / "none.sock"))
        with pytest.raises(plugrpc.ConnectError, match="plugrpc run"):
            await plugrpc.call("a.b")
        assert outgoing.PLUGIN.client is not None
        await outgoing.detach()
        assert outgoing.PLUGIN.client is None
