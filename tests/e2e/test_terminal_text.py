"""Text a plugin or a client chose, on its way to an operator's log or terminal: one record is one line,
and no control character reaches the screen raw (ESC[2J would clear it, a newline forge a record)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from plugrpc.logs import printable
from plugrpc.testing import RouterProcess

from plugins.sources import OPS, OPS_EXPORTS
from util import WAIT, RawConn, req, wait_until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]
HOSTILE = "one\rtwo\x1b[2J\x1b]0;owned\x07\x9b31m\x7f\ttab"
SHOWN = "one\\rtwo\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\x7f\\ttab"
FORGED = "FORGED ERROR   router: every plugin stopped"
EXEC_FAIL = f"""#!/bin/sh
echo "boom" >&2
echo "{FORGED}" >&2
exit 1
"""
NOTIFY_STATUS = """#!/usr/bin/env python3
import socket, time
import plugrpc
plugrpc.notify("STATUS=\\x1b[2J\\x1b[Hall is well\\r\\nREADY=1")
server = socket.socket(fileno=3)
time.sleep(600)
"""


def plugrpc(*args: str) -> tuple[int, str, str]:
    """Run the CLI; its output decoded as it is (text=True would turn each \\r into \\n)."""
    out = subprocess.run([sys.executable, "-m", "plugrpc", *args], capture_output=True, timeout=30,
                         stdin=subprocess.DEVNULL)
    return out.returncode, out.stdout.decode(), out.stderr.decode()


def test_printable_escapes_every_control_character_and_nothing_else() -> None:
    assert printable(HOSTILE) == SHOWN
    assert printable("\x00\n\x1f\x80\x85\x9f") == "\\x00\\n\\x1f\\x80\\x85\\x9f"
    plain = "déjà vu, 東京, \u00a0 and a \\ stays"
    assert printable(plain) is plain  # nothing to escape: the same object, no copy


def test_a_newline_in_a_plugins_error_cannot_forge_a_log_line(plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"x": ("x.sh", EXEC_FAIL, ["go"], {"mode": "exec"})})
    router = plugrpc_router(root)
    with RawConn(router.socket) as c:
        c.send({"jsonrpc": "2.0", "method": "x.go"})  # a notification: its failure is only logged
        assert c.ask(req("router.health"))["result"]
    wait_until(lambda: "notification failed" in router.log(), "the failure's log line")
    log = router.log()
    assert f"boom\\n{FORGED}" in log
    assert not [line for line in log.splitlines() if line.startswith("FORGED")]


def test_client_text_a_plugin_prints_reaches_log_and_plugrpc_logs_escaped(plugrpc_image: Image,
                                                                         plugrpc_router: Router) -> None:
    router = plugrpc_router(plugrpc_image({"a": ("a.py", OPS, OPS_EXPORTS)}))
    with router.client(timeout=WAIT) as c:
        assert c.raw("a.say", [HOSTILE]) == HOSTILE  # the answer itself is JSON, untouched
    wait_until(lambda: SHOWN in router.log(), "the escaped line in the router's log")
    assert "\x1b" not in router.log() and "\r" not in router.log()
    status, stdout, _ = plugrpc("logs", "a", "--socket", str(router.socket))
    assert status == 0 and SHOWN in stdout
    assert "\x1b" not in stdout and "\r" not in stdout
    _, stdout, _ = plugrpc("logs", "a", "--json", "--socket", str(router.socket))
    assert any(orjson.loads(line)["text"] == HOSTILE for line in stdout.splitlines())


def test_status_text_cannot_clear_the_operators_terminal(plugrpc_image: Image, plugrpc_router: Router) -> None:
    router = plugrpc_router(plugrpc_image({"n": ("n.py", NOTIFY_STATUS, ["x"], {"ready": "notify"})}))
    with router.client(timeout=WAIT) as c:
        wait_until(lambda: c.raw("router.plugins")[0].get("status_text"), "the plugin's STATUS=")
    status, stdout, _ = plugrpc("status", "--socket", str(router.socket))
    assert status == 0 and "\\x1b[2J\\x1b[Hall is well\\r" in stdout
    assert "\x1b" not in stdout and "\r" not in stdout


@pytest.fixture
def fake_router(plugrpc_tmp: Path) -> Iterator[Path]:
    """A socket that answers every request with an error whose text tries to take over the terminal."""
    path = plugrpc_tmp / "fake.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    listener.settimeout(WAIT)
    error = {"code": -32000, "message": f"no\n{FORGED}\x1b[2J", "data": f"gone\r{FORGED}\x1b[2J"}

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                for line in f:
                    f.write(orjson.dumps({"jsonrpc": "2.0", "error": error, "id": orjson.loads(line)["id"]}) + b"\n")
                    f.flush()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(WAIT)


@pytest.mark.parametrize("command", [["status"], ["reload"], ["logs", "a"]])
def test_cli_errors_are_one_escaped_line(fake_router: Path, command: list[str]) -> None:
    status, _, stderr = plugrpc(*command, "--socket", str(fake_router))
    assert status != 0 and stderr.startswith("plugrpc: ")
    assert stderr.count("\n") == 1 and "\x1b" not in stderr and "\r" not in stderr
    assert f"\\n{FORGED}\\x1b[2J" in stderr or f"\\r{FORGED}\\x1b[2J" in stderr
