"""Bad input: property-based tests of the wire layer, the SDK and the router.

Any bytes, any JSON, deep nesting, huge numbers, invalid UTF-8, lone surrogates and wrong types
in every field must get a valid JSON-RPC response or a clean close: never a crash, never a hang.
The pure layers are fuzzed in-process; the SDK and the router as real processes on real sockets,
one process per test shared by all its examples (and checked alive and unrestarted at the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plugrpc
from plugrpc.errors import RpcError
from plugrpc.plugin.dispatch import dispatch, encode, resolve
from plugrpc.testing import RouterProcess, wait_for_socket
from plugrpc.wire import DEFAULT_MAX_LINE, JSONDecodeError, LineSplitter, LineTooLong, dumps, loads, request_problem

from plugins.sources import FAULTY, FAULTY_EXPORTS, FUZZ, FUZZ_EXPORTS
from util import FULL, SLOW, figure, peak_rss_mib, response_problem

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]

PURE = settings(max_examples=3000 if SLOW else 300, deadline=None)
LIVE = settings(max_examples=2000 if SLOW else 150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MIB = 1 << 20
READ_TIMEOUT = 10.0
"""No answer (or close) within this long is a hang."""

# --- strategies ------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                      | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)
ids = st.none() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(max_size=8) | st.floats(
    allow_nan=False, allow_infinity=False)
param_names = st.sampled_from(["a", "b", "name", "shout", "value", "depth", "x", ""]) | st.text(max_size=6)
params = st.lists(values, max_size=4) | st.dictionaries(param_names, values, max_size=4)


def requests(methods: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Request objects whose every member may be missing, right, or of any other JSON type."""
    return st.fixed_dictionaries({}, optional={
        "jsonrpc": st.just("2.0") | values,
        "method": methods | values,
        "params": params | values,
        "id": ids | values,
    })


def messages(methods: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """What a peer may send as one line: a request, a batch of them, or any JSON at all."""
    one = requests(methods) | values
    return one | st.lists(one, max_size=4)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


WEIRD: list[bytes] = [
    b"", b" ", b"\t\r", b"\x00", b"\xff\xfe", b"\xef\xbb\xbf{}", b"null", b"[]", b"[[]]", b"{}", b"[{}]", b"[1,2,3]",
    b'"\\ud800"', b'"\xed\xa0\x80"', b'"\xc3\x28"', b"1e400", b"-1e400", b"123456789012345678901234567890",
    b'{"jsonrpc": "2.0", "method": "fz.echo", "params": ["\\ud800"], "id": 1}',
    b'{"jsonrpc": "2.0", "method": "fz.echo", "params": ["\xed\xa0\x80"], "id": 1}',
    b'{"jsonrpc": "2.0", "method": "fz.echo", "params": [1e400], "id": 1}',
    b'{"jsonrpc": "2.0", "method": "fz.echo", "params": [123456789012345678901234567890], "id": 1}',
    b'{"jsonrpc": "2.0", "method": "fz.echo", "params": [1], "id": 123456789012345678901234567890}',
    b'{"jsonrpc": "2.0", "method": "fz.echo", "params": [1], "id": 1, "id": 2}',
    b'{"jsonrpc": "2.0", "method": "fz.echo\\u0000", "id": 1}',
    b'{"jsonrpc": "2.0", "method": "fz.echo", "params": [' + nested(200) + b"], \"id\": 1}",
    b"[" + b'{"jsonrpc": "2.0", "method": "fz.echo", "id": 1},' * 50 + b"1]",
    nested(1025),
]
"""Inputs that random bytes seldom hit. Deeper nesting than 254 has tests of its own below."""


def junk(methods: list[str]) -> st.SearchStrategy[bytes]:
    """Bytes for one or more lines: random, weird, or JSON messages (possibly cut short)."""
    encoded = messages(st.sampled_from(methods) | st.text(max_size=10)).map(orjson.dumps)
    cut = st.tuples(encoded, st.integers(min_value=0, max_value=200)).map(lambda t: t[0][: t[1]])
    return st.binary(max_size=200) | st.sampled_from(WEIRD) | encoded | cut


# --- wire ----------------------------------------------------------------------------------


@PURE
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
       max_line=st.integers(min_value=1, max_value=64))
def test_line_splitter_matches_a_plain_split_and_never_buffers_past_the_limit(data: bytes, cuts: list[int],
                                                                             max_line: int) -> None:
    splitter = LineSplitter(max_line)
    got: list[bytes] = []
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for start, end in zip(bounds, bounds[1:], strict=False):
        fed = data[:end]
        *complete, partial = fed.split(b"\n")
        too_long = any(len(line) > max_line for line in complete) or len(partial) > max_line
        try:
            got += splitter.feed(data[start:end])
        except LineTooLong:
            assert too_long, "refused a stream whose lines all fit"
            return
        assert not too_long, "accepted a line over the limit"
        assert got == [line for line in complete if line]
        assert splitter.buffered == len(partial) <= max_line


@PURE
@given(msg=messages(st.text(max_size=10)))
def test_request_problem_is_total_and_exact(msg: Any) -> None:
    problem = request_problem(msg)
    if problem is None:
        assert type(msg) is dict and msg["jsonrpc"] == "2.0" and type(msg["method"]) is str
        assert "params" not in msg or type(msg["params"]) in (list, dict)
        assert "id" not in msg or msg["id"] is None or type(msg["id"]) in (str, int, float)
    else:
        assert isinstance(problem, str)


def depth(value: Any) -> int:
    """Levels of nesting: 0 for a scalar, 1 for [] or {}, ..."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if type(item) in (list, dict):
            deepest = max(deepest, level)
            todo += [(v, level + 1) for v in (item.values() if type(item) is dict else item)]
    return deepest


MAX_DEPTH = 254
"""orjson reads 1024 levels of nesting but writes only 254: plugrpc's limit (RFC 8259 section 9 allows one)."""


@PURE
@given(data=st.binary(max_size=300) | st.sampled_from(WEIRD) | messages(st.text()).map(orjson.dumps)
       | st.integers(min_value=0, max_value=1100).map(nested))
def test_whatever_loads_accepts_dumps_writes_back_up_to_the_depth_limit(data: bytes) -> None:
    try:
        value = loads(data)
    except JSONDecodeError:
        return
    if depth(value) > MAX_DEPTH:
        with pytest.raises(TypeError):
            dumps(value)
        return
    line = dumps(value)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert loads(line) == value


def test_dumps_refuses_what_json_cannot_hold() -> None:
    for bad in (object(), {1: 2}, 2**100, [[object()]]):
        with pytest.raises(TypeError):
            dumps(bad)


# --- SDK dispatch, in-process ----------------------------------------------------------------


def _echo(*args: Any, **kwargs: Any) -> Any:
    return kwargs if kwargs else list(args)


def _add(a: Any, b: Any = 0) -> Any:
    return a + b


def _kwonly(*, name: Any, shout: bool = False) -> Any:
    return name.upper() if shout else name


async def _aecho(value: Any = None) -> Any:
    return value


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise ValueError("boom")


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise RpcError(-32000, "refused", {"args": list(args)})


def _unserializable(*args: Any, **kwargs: Any) -> Any:
    return object()


def _deep(depth: Any = 300) -> Any:
    value: list[Any] = []
    for _ in range(min(int(depth), 1000)):
        value = [value]
    return value


TABLE = resolve({"echo": _echo, "add": _add, "kwonly": _kwonly, "aecho": _aecho, "boom": _boom,
                 "refuse": _refuse, "unserializable": _unserializable, "deep": _deep, "huge": lambda: 2**100})


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@PURE
@given(msg=messages(st.sampled_from(list(TABLE)) | st.text(max_size=10)))
def test_dispatch_answers_anything_with_a_valid_response_or_nothing(loop: asyncio.AbstractEventLoop,
                                                                   msg: Any) -> None:
    outcome = dispatch(TABLE, msg)
    if outcome is not None and type(outcome) not in (dict, list):
        outcome = loop.run_until_complete(asyncio.wait_for(outcome, READ_TIMEOUT))  # type: ignore[arg-type]
    if outcome is None:
        # Only notifications go unanswered: a valid request without id, or a batch of only those.
        batch = msg if type(msg) is list else [msg]
        assert batch and all(request_problem(m) is None and "id" not in m for m in batch)
        return
    line = encode(outcome)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert response_problem(loads(line)) is None, loads(line)


# --- live processes: a shared line-by-line conversation ---------------------------------------


class Conversation:
    """A blocking connection on which every line received must be a valid response."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = self._connect()
        self.buf = b""
        self.answers = 0

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(READ_TIMEOUT)
        sock.connect(os.fspath(self.path))
        return sock

    def close(self) -> None:
        self.sock.close()

    def exchange(self, data: bytes, sentinel_method: str) -> None:
        """Send `data` as line(s), then a sentinel call; check every line up to the sentinel's answer."""
        sentinel = f"sentinel-{uuid.uuid4()}"
        self.sock.sendall(data + b"\n" + orjson.dumps({"jsonrpc": "2.0", "method": sentinel_method, "params": [1],
                                                       "id": sentinel}) + b"\n")
        while True:
            while b"\n" not in self.buf:
                chunk = self.sock.recv(1 << 16)  # socket.timeout here is a hang
                assert chunk, f"connection closed after {data!r:.300}"
                self.buf += chunk
            line, _, self.buf = self.buf.partition(b"\n")
            msg = loads(line)
            problem = response_problem(msg)
            assert problem is None, f"{problem} (after sending {data!r:.300})"
            self.answers += 1
            if type(msg) is dict and msg["id"] == sentinel:
                assert "result" in msg, msg
                return


@pytest.fixture
def sdk_plugin(plugrpc_tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The fuzz plugin run by hand (no router): `serve()` binds $PLUGRPC_SOCKET."""
    source = plugrpc_tmp / "fuzz.py"
    source.write_text(FUZZ.lstrip())
    sock = plugrpc_tmp / "fz.sock"
    env = {**os.environ, "PLUGRPC_SOCKET": str(sock), "PLUGRPC_PLUGIN": "fz"}
    env.pop("LISTEN_FDS", None)
    log = open(plugrpc_tmp / "fz.log", "wb")
    proc = subprocess.Popen([sys.executable, str(source)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_socket(sock, 20, lambda: proc.poll() is None)
        yield proc, sock
    finally:
        proc.kill()
        proc.wait(10)
        log.close()


@LIVE
@given(data=junk(FUZZ_EXPORTS))
def test_sdk_answers_any_input_validly(sdk_plugin: tuple[subprocess.Popen[bytes], Path], data: bytes) -> None:
    proc, sock = sdk_plugin
    conv = Conversation(sock)
    try:
        conv.exchange(data, "echo")
    finally:
        conv.close()
    assert proc.poll() is None


@pytest.fixture
def fuzz_router(plugrpc_image: Image, plugrpc_router: Router) -> RouterProcess:
    root = plugrpc_image({"fz": ("fz.py", FUZZ, FUZZ_EXPORTS, {"timeout": 5}),
                         "bad": ("bad.py", FAULTY, FAULTY_EXPORTS, {"timeout": 5})})
    return plugrpc_router(root)


def _pids(router: RouterProcess) -> dict[str, Any]:
    with router.client() as c:
        return {p["name"]: (p["pid"], p["restarts"]) for p in c.raw("router.plugins")}


ROUTER_METHODS = [f"fz.{m}" for m in FUZZ_EXPORTS] + [
    "router.plugins", "router.stats", "router.health", "rpc.discover", "rpc.cancel", "fz", "fz.", ".x", "router.",
    "bad.ok", "fz.rpc.discover", "nope.echo"]


@LIVE
@given(data=junk(ROUTER_METHODS))
def test_router_answers_any_client_input_validly(fuzz_router: RouterProcess, data: bytes) -> None:
    conv = Conversation(fuzz_router.socket)
    try:
        conv.exchange(data, "fz.echo")
    finally:
        conv.close()
    assert fuzz_router.proc.poll() is None


def test_router_fuzz_leaves_plugins_and_router_unharmed(fuzz_router: RouterProcess) -> None:
    """After a fuzz run on one connection, the same processes still serve (nothing crashed or restarted)."""
    before = _pids(fuzz_router)
    conv = Conversation(fuzz_router.socket)
    try:
        for data in WEIRD:
            conv.exchange(data, "fz.echo")
    finally:
        conv.close()
    assert _pids(fuzz_router) == before
    with fuzz_router.client() as c:
        assert c.raw("router.health")["status"] == "ok"
        assert c.raw("router.stats")["inflight"] == 0


plugin_replies = values | requests(st.text(max_size=5)) | st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0")}, optional={"result": values, "error": values | st.fixed_dictionaries(
        {"code": values, "message": values}, optional={"data": values}), "extra": values})


@LIVE
@given(reply=plugin_replies, with_id=st.booleans())
def test_router_passes_on_only_valid_responses_whatever_a_plugin_answers(fuzz_router: RouterProcess, reply: Any,
                                                                         with_id: bool) -> None:
    conv = Conversation(fuzz_router.socket)
    try:
        request = {"jsonrpc": "2.0", "method": "bad.reply", "params": {"reply": reply, "with_id": with_id}, "id": "r"}
        conv.exchange(orjson.dumps(request), "fz.echo")
    finally:
        conv.close()
    assert fuzz_router.proc.poll() is None


MALFORMED = [
    pytest.param({"jsonrpc": "2.0"}, id="neither"),
    pytest.param({"jsonrpc": "2.0", "error": None}, id="error-null"),
    pytest.param({"jsonrpc": "2.0", "error": "x"}, id="error-string"),
    pytest.param({"jsonrpc": "2.0", "error": {"code": -5}}, id="no-message"),
    pytest.param({"jsonrpc": "2.0", "error": {"message": "m"}}, id="no-code"),
    pytest.param({"jsonrpc": "2.0", "error": {"code": "x", "message": 1}}, id="wrong-types"),
    pytest.param({"jsonrpc": "2.0", "result": 1, "error": {"code": 1, "message": "m"}}, id="both"),
    pytest.param({"result": 1}, id="no-jsonrpc"),
    pytest.param({"jsonrpc": "1.0", "result": 1}, id="jsonrpc-1.0"),
    pytest.param({"jsonrpc": "2.0", "result": 1, "extra": 1}, id="extra-member"),
]


@pytest.mark.parametrize("reply", MALFORMED)
def test_router_passes_on_only_valid_responses(fuzz_router: RouterProcess, reply: Any) -> None:
    conv = Conversation(fuzz_router.socket)
    try:
        conv.exchange(orjson.dumps({"jsonrpc": "2.0", "method": "bad.reply", "params": {"reply": reply}, "id": "r"}),
                      "fz.echo")
    finally:
        conv.close()


@pytest.mark.parametrize("reply", [p.values[0] for p in MALFORMED])
async def test_a_malformed_plugin_answer_fails_only_its_own_call(fuzz_router: RouterProcess, reply: Any) -> None:
    """Whatever the router passes on, the Client fails that one call and keeps its connection for the others."""
    async with plugrpc.Client(fuzz_router.socket, timeout=30) as c:
        others = asyncio.gather(*(c.raw("fz.aecho", [i]) for i in range(20)))
        try:
            await asyncio.wait_for(c.raw("bad.reply", {"reply": reply}), 5)
        except plugrpc.RpcError as exc:
            assert exc.code in (-32603, -32001) or (reply.get("error") or {}).get("code") == exc.code
        assert await asyncio.wait_for(others, 10) == list(range(20))
        assert await c.raw("fz.echo", [1]) == [1]


@LIVE
@given(raw=st.binary(max_size=100).map(lambda b: b + b"\n") | st.sampled_from([w + b"\n" for w in WEIRD]))
def test_router_survives_any_bytes_from_a_plugin(fuzz_router: RouterProcess, raw: bytes) -> None:
    conv = Conversation(fuzz_router.socket)
    try:
        conv.exchange(orjson.dumps({"jsonrpc": "2.0", "method": "bad.bytes", "params": {"hex": raw.hex()},
                                    "id": "b"}), "fz.echo")
    finally:
        conv.close()
    assert fuzz_router.proc.poll() is None


# --- nesting deeper than orjson writes -----------------------------------------------------------



def test_router_refuses_params_nested_deeper_than_it_writes(fuzz_router: RouterProcess) -> None:
    """-32600 for that call, the connection goes on, nothing waits for a timeout."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(READ_TIMEOUT / 2)  # well under the plugin's 5 s timeout
        sock.connect(os.fspath(fuzz_router.socket))
        for method in ("fz.echo", "bad.ok"):
            deep = b'{"jsonrpc": "2.0", "method": "%s", "params": [%s], "id": 1}\n' % (method.encode(), nested(300))
            sock.sendall(deep + b'{"jsonrpc": "2.0", "method": "fz.echo", "params": [2], "id": 2}\n')
            answers = {}
            buf = b""
            while len(answers) < 2:
                chunk = sock.recv(1 << 16)
                assert chunk, "the router closed the connection"
                buf += chunk
                *lines, buf = buf.split(b"\n")
                answers.update((msg["id"], msg) for msg in map(loads, lines))
            assert answers[1]["error"]["code"] == -32600
            assert answers[2]["result"] == [2]


def test_router_answers_a_call_whose_plugin_answer_is_nested_deeper_than_it_writes(
        fuzz_router: RouterProcess) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(READ_TIMEOUT / 2)
        sock.connect(os.fspath(fuzz_router.socket))
        sock.sendall(b'{"jsonrpc": "2.0", "method": "bad.deep", "params": [300], "id": 1}\n')
        msg = loads(sock.recv(1 << 16))
    assert response_problem(msg) is None and msg["error"]["code"] in (-32603, -32001)


# --- oversized lines: refused without being read into memory ------------------------------------


def _flood(path: Path, total: int) -> tuple[int, bytes]:
    """Send one line of `total` bytes (no newline) in 1 MiB writes until the peer stops us: (sent, what came back)."""
    chunk = b"x" * MIB
    sent = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(READ_TIMEOUT)
        sock.connect(os.fspath(path))
        sock.sendall(b'{"jsonrpc": "2.0", "method": "fz.echo", "id": 1, "params": ["')
        try:
            while sent < total:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 16):
                received += chunk
    return sent, received


@pytest.mark.parametrize("max_line_mib,line_mib", [
    pytest.param(1, 64, id="64MiB-line"),
    pytest.param(None, 512, id="512MiB-line", marks=(*FULL, pytest.mark.timeout(600))),
])
def test_client_line_of_hundreds_of_mib_is_refused_without_reading_it(plugrpc_image: Image, plugrpc_router: Router,
                                                                      max_line_mib: int | None,
                                                                      line_mib: int) -> None:
    args = ("--max-line", str(max_line_mib * MIB)) if max_line_mib else ()
    router = plugrpc_router(plugrpc_image({"fz": ("fz.py", FUZZ, FUZZ_EXPORTS)}), *args)
    limit = (max_line_mib or DEFAULT_MAX_LINE // MIB) * MIB
    with router.client() as c:
        assert c.raw("fz.echo", ["warm"]) == ["warm"]
    before = peak_rss_mib(router.pid)
    sent, received = _flood(router.socket, line_mib * MIB)
    peak = peak_rss_mib(router.pid)
    assert sent < line_mib * MIB, "the router read the whole line"
    assert orjson.loads(received)["error"]["code"] == -32004
    assert peak - before < limit / MIB + 64, (before, peak)
    with router.client() as c:  # the router and its plugin are fine
        assert c.raw("fz.echo", ["after"]) == ["after"]
    figure("oversized_client_line_router_peak_growth", peak - before, "MiB", line_mib=line_mib,
           max_line_mib=limit // MIB, read_mib=sent // MIB)


@pytest.mark.parametrize("max_line_mib,line_mib", [
    pytest.param(1, 64, id="64MiB-line"),
    pytest.param(None, 512, id="512MiB-line", marks=(*FULL, pytest.mark.timeout(600))),
])
def test_plugin_line_of_hundreds_of_mib_is_refused_without_reading_it(plugrpc_image: Image, plugrpc_router: Router,
                                                                      max_line_mib: int | None,
                                                                      line_mib: int) -> None:
    args = ("--max-line", str(max_line_mib * MIB)) if max_line_mib else ()
    router = plugrpc_router(plugrpc_image({"bad": ("bad.py", FAULTY, FAULTY_EXPORTS)}), *args)
    limit = (max_line_mib or DEFAULT_MAX_LINE // MIB) * MIB
    with router.client(timeout=120) as c:
        assert c.raw("bad.ok", [1]) == [1]
        before = peak_rss_mib(router.pid)
        with pytest.raises(plugrpc.PluginUnavailable) as info:
            c.raw("bad.flood", {"mib": line_mib})
        assert "longer than" in info.value.data["reason"]
        peak = peak_rss_mib(router.pid)
        assert c.raw("bad.ok", [2]) == [2]  # a fresh connection to the same process
    assert peak - before < limit / MIB + 64, (before, peak)
    figure("oversized_plugin_line_router_peak_growth", peak - before, "MiB", line_mib=line_mib,
           max_line_mib=limit // MIB)


@pytest.mark.parametrize("line_mib", [pytest.param(512, id="512MiB-line", marks=(*FULL, pytest.mark.timeout(600)))])
def test_sdk_refuses_a_line_of_hundreds_of_mib_without_reading_it(sdk_plugin: tuple[subprocess.Popen[bytes], Path],
                                                                  line_mib: int) -> None:
    proc, sock = sdk_plugin
    before = peak_rss_mib(proc.pid)
    sent, received = _flood(sock, line_mib * MIB)
    peak = peak_rss_mib(proc.pid)
    assert sent < line_mib * MIB
    assert orjson.loads(received)["error"]["code"] == -32004
    assert peak - before < DEFAULT_MAX_LINE / MIB + 64
    assert proc.poll() is None
    figure("oversized_line_sdk_peak_growth", peak - before, "MiB", line_mib=line_mib)
