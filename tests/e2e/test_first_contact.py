"""What a newcomer meets first, tried as they would: blank lines, the command line's usage and errors, status."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from plugrpc.config import EXAMPLE_ROOT
from plugrpc.testing import RouterProcess

from util import PLUGINS, Fd3Plugin, RawConn, req, wait_until

Router = Callable[..., RouterProcess]
BLANKS = b"\n   \n\t\r\n \r\n"


def plugrpc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "plugrpc", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def router(plugrpc_router: Router) -> RouterProcess:
    return plugrpc_router(EXAMPLE_ROOT)


def test_lines_of_blanks_are_skipped_as_empty_lines_are(router: RouterProcess) -> None:
    with RawConn(router.socket) as conn:
        conn.send(BLANKS)
        assert conn.ask(req("ovs.version", id=7)) == {"jsonrpc": "2.0", "result": "1.0alpha", "id": 7}


@pytest.mark.parametrize("script", ["sdk_basic.py", "plain_plugin.py"])  # the asyncio and the plain engine
def test_a_plugin_skips_lines_of_blanks(plugrpc_tmp: Path, script: str) -> None:
    plugin = Fd3Plugin(PLUGINS / script, plugrpc_tmp, script.partition(".")[0], {}, ())
    with plugin.connect() as conn:
        conn.send(BLANKS)
        answer = conn.ask({"jsonrpc": "2.0", "method": "nope", "id": 1})
    plugin.stop()
    assert answer["id"] == 1 and answer["error"]["code"] == -32601


def test_extra_arguments_get_the_commands_usage_and_a_hint(router: RouterProcess) -> None:
    done = plugrpc("call", "--socket", str(router.socket), "demo.add", "1", "2")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: plugrpc call ")
    assert "PARAMS is one JSON text: quote it, as in '[1, 2]'" in done.stderr
    assert plugrpc("call", "--socket", str(router.socket), "demo.add", "[1, 2]").stdout == "3\n"


def test_logs_without_a_name_lists_the_plugins(router: RouterProcess) -> None:
    done = plugrpc("logs", "--socket", str(router.socket))
    assert done.returncode == 2
    assert "plugrpc logs NAME" in done.stderr
    for name in ("ovs", "demo", "sysinfo", "node"):
        assert f"  {name}" in done.stderr


def test_status_says_lazy_and_json_ends_with_a_newline(router: RouterProcess) -> None:
    table = plugrpc("status", "--socket", str(router.socket)).stdout
    [node] = [line for line in table.splitlines() if line.startswith("node ")]
    assert "stopped (lazy)" in node
    out = plugrpc("status", "--socket", str(router.socket), "--json").stdout
    assert out.endswith("]\n") and orjson.loads(out)[0]["name"] == "ovs"


@pytest.mark.parametrize("doc", ["README.md", "docs/operators.md"])
def test_the_docs_status_tables_have_the_columns_status_prints(router: RouterProcess, doc: str) -> None:
    text = (Path(__file__).resolve().parents[2] / doc).read_text()
    header = plugrpc("status", "--socket", str(router.socket)).stdout.splitlines()[0].split()
    shown = [line.split() for line in text.splitlines() if line.startswith("NAME ")]
    assert shown and all(columns == header for columns in shown), (header, shown)


@pytest.mark.parametrize("tail", [b"\n", b""])  # `echo ... |` ends its line; `printf ... |` may not
def test_a_client_that_half_closes_gets_its_answers(router: RouterProcess, tail: bytes) -> None:
    # What `echo '...' | socat - UNIX-CONNECT:...` and `nc -N` do: write, shut the writing side, read.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(router.socket))
        sock.sendall(orjson.dumps(req("demo.sleep", [0.3], id=1)) + b"\n" + orjson.dumps(req("ovs.version", id=2))
                     + tail)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    answers = sorted((orjson.loads(line) for line in received.splitlines()), key=lambda a: a["id"])
    assert [a.get("result") for a in answers] == [0.3, "1.0alpha"]


def test_a_client_that_closes_fully_has_its_calls_cancelled(router: RouterProcess) -> None:
    with router.client() as c:
        before = c.raw("router.plugins")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(router.socket))
        sock.sendall(orjson.dumps(req("demo.sleep", [30], id=1)) + b"\n")
        time.sleep(0.3)
    with router.client() as c:
        def idle() -> bool:
            return bool([p for p in c.raw("router.plugins") if p["name"] == "demo"][0]["inflight"] == 0)
        wait_until(idle, "the gone client's call to be cancelled", timeout=10)
    assert before  # the router was reachable before and after


@pytest.mark.parametrize(("script", "method"), [("sdk_basic.py", "slow"), ("plain_plugin.py", "nap")])
def test_a_plugin_answers_a_peer_that_half_closes(plugrpc_tmp: Path, script: str, method: str) -> None:
    # A client talking to a plugin itself (a direct connection, socat, nc -N) and shutting its writing side.
    plugin = Fd3Plugin(PLUGINS / script, plugrpc_tmp, script.partition(".")[0], {}, ())
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(plugin.socket))
            sock.sendall(orjson.dumps(req(method, [0.3], id=1)) + b"\n" + orjson.dumps(req("nope", id=2)))
            sock.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
    finally:
        plugin.stop()
    answers = sorted((orjson.loads(line) for line in received.splitlines()), key=lambda a: a["id"])
    assert [a["id"] for a in answers] == [1, 2]
    assert "result" in answers[0] and answers[1]["error"]["code"] == -32601
