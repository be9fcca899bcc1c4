"""The command line, run as a user would: `plugrpc run` and `plugrpc call` in subprocesses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson

from plugrpc import __version__
from plugrpc.config import EXAMPLE_ROOT
from plugrpc.testing import RouterProcess, write_image
from plugrpc.wire import DEFAULT_MAX_LINE

from plugins.sources import OVS


def plugrpc(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "plugrpc", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_help() -> None:
    for args in (["--help"], *([command, "--help"] for command in ("run", "call", "status", "reload", "new"))):
        out = plugrpc(*args)
        assert out.returncode == 0 and "usage: plugrpc" in out.stdout


def test_call_prints_result_as_json(plugrpc_tmp: Path) -> None:
    router = RouterProcess(EXAMPLE_ROOT, plugrpc_tmp / "c.sock").wait_ready()
    try:
        out = plugrpc("call", "--socket", str(router.socket), "ovs.version")
        assert (out.returncode, out.stdout, out.stderr) == (0, '"1.0alpha"\n', "")
        out = plugrpc("call", "--socket", str(router.socket), "demo.greet", '{"name": "Bo"}')
        assert out.stdout == '"Hello, Bo!"\n'
        out = plugrpc("call", "--socket", str(router.socket), "demo.divide", "[1, 0]")
        assert out.returncode == 1 and out.stdout == ""
        assert '"code":-32000' in out.stderr and "Division by zero" in out.stderr
        out = plugrpc("call", "--socket", str(router.socket), "demo.add", "[1,")
        assert out.returncode == 2 and "not valid JSON" in out.stderr
    finally:
        router.stop()


def test_call_without_router_says_what_to_do(plugrpc_tmp: Path) -> None:
    out = plugrpc("call", "--socket", str(plugrpc_tmp / "none.sock"), "ovs.version")
    assert out.returncode == 2
    assert str(plugrpc_tmp / "none.sock") in out.stderr and "plugrpc run" in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_run_with_invalid_manifest_is_one_line(plugrpc_image: Callable[..., Path], plugrpc_tmp: Path) -> None:
    root = plugrpc_image({"ovs": ("ovs.py", OVS, ["version"], {"colour": "red"})})
    out = plugrpc("run", "--root", str(root), "--socket", str(plugrpc_tmp / "bad.sock"))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert ".plugin.toml" in out.stderr and "'ovs'" in out.stderr and "'colour'" in out.stderr
    assert not (plugrpc_tmp / "bad.sock").exists()


def test_run_refuses_a_socket_in_use(plugrpc_tmp: Path) -> None:
    router = RouterProcess(EXAMPLE_ROOT, plugrpc_tmp / "u.sock").wait_ready()
    try:
        out = plugrpc("run", "--socket", str(router.socket))
        assert out.returncode == 2 and "in use" in out.stderr
    finally:
        router.stop()


def test_status_shows_a_row_per_plugin(plugrpc_tmp: Path) -> None:
    router = RouterProcess(EXAMPLE_ROOT, plugrpc_tmp / "s.sock").wait_ready()
    try:
        for params in ("[1, 2]", "[3, 4]"):
            assert plugrpc("call", "--socket", str(router.socket), "demo.add", params).returncode == 0
        out = plugrpc("status", "--socket", str(router.socket))
        assert out.returncode == 0, out.stderr
        header, *lines = out.stdout.splitlines()
        assert header.split() == ["NAME", "MODE", "STATE", "PID", "UPTIME", "RESTARTS", "LAST_EXIT", "INFLIGHT",
                                  "CALLS", "ERRORS", "P50_MS", "P99_MS", "STATUS"]
        rows = {line.split()[0]: line.split() for line in lines}
        with router.client() as c:
            plugins = {p["name"]: p for p in c.raw("router.plugins")}
        assert set(rows) == set(plugins)
        name, mode, state, pid, _uptime, restarts, last_exit, inflight, calls, errors, p50, p99, notes = rows["demo"]
        assert last_exit == "-"  # it has not exited yet
        assert (mode, state, pid, restarts, calls, errors) == ("rpc", "running", str(plugins["demo"]["pid"]),
                                                              "0", "2", "0")
        assert float(p50) > 0 and float(p99) >= float(p50)
        assert rows["sysinfo"][1:4] == ["exec", "ready", "-"]

        out = plugrpc("status", "--socket", str(router.socket), "--json")
        assert out.returncode == 0
        assert [p["name"] for p in orjson.loads(out.stdout)] == list(plugins)
    finally:
        router.stop()


def test_status_without_router_says_what_to_do(plugrpc_tmp: Path) -> None:
    out = plugrpc("status", "--socket", str(plugrpc_tmp / "none.sock"))
    assert out.returncode == 2 and "plugrpc run" in out.stderr and out.stdout == ""


def test_reload_reports_what_changed(plugrpc_image: Callable[..., Path], plugrpc_router: Callable[..., RouterProcess]
                                     ) -> None:
    root = plugrpc_image({"ovs": ("ovs.py", OVS, ["version"]), "old": ("old.py", OVS, ["version"])})
    router = plugrpc_router(root)
    sock = str(router.socket)
    write_image(root, {"ovs": ("ovs.py", OVS, ["version"]), "new": ("new.py", OVS, ["version"])})
    out = plugrpc("reload", "--socket", sock)
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.splitlines() == ["added:     new", "removed:   old", "changed:   -", "unchanged: ovs"]
    assert plugrpc("call", "--socket", sock, "new.version").stdout == '"1.0alpha"\n'

    out = plugrpc("reload", "--socket", sock, "--json")
    assert orjson.loads(out.stdout) == {"added": [], "removed": [], "changed": [], "unchanged": ["ovs", "new"]}

    (root / ".plugin.toml").write_text('[plugin.ovs]\npath = "ovs.py"\nexports = ["version"]\ncolour = "red"\n')
    out = plugrpc("reload", "--socket", sock)
    assert out.returncode == 1 and out.stdout == ""
    assert "reload refused" in out.stderr and "'colour'" in out.stderr and out.stderr.count("\n") == 1
    assert plugrpc("call", "--socket", sock, "new.version").stdout == '"1.0alpha"\n'


def test_version() -> None:
    out = plugrpc("--version")
    assert (out.returncode, out.stdout) == (0, f"plugrpc {__version__}\n")


def test_every_option_says_what_it_does_and_its_default() -> None:
    run, call = plugrpc("run", "--help").stdout, plugrpc("call", "--help").stdout
    flat_run, flat_call = " ".join(run.split()), " ".join(call.split())
    assert "--max-line BYTES largest message" in flat_run and f"(default: {DEFAULT_MAX_LINE} = 64 MiB" in flat_run
    assert "--log-level {debug,info,warning,error} least severe log records shown" in flat_run
    assert "(default: info)" in flat_run
    assert "(default: auto, which is uvloop when it is installed, else asyncio)" in flat_run
    assert "--timeout SECONDS give up after this long with -32002 (default:" in flat_call


def test_a_refused_setting_names_the_flag(plugrpc_tmp: Path) -> None:
    out = plugrpc("run", "--max-line", "1000", "--socket", str(plugrpc_tmp / "x.sock"))
    assert out.returncode == 2 and "--max-line" in out.stderr and "1024" in out.stderr


def test_call_prints_an_oversized_request_s_error_as_json(plugrpc_tmp: Path) -> None:
    """The router closes a connection whose line is over --max-line, saying why (-32004, id null):
    `plugrpc call` prints that error as JSON on stderr like any other."""
    router = RouterProcess(EXAMPLE_ROOT, plugrpc_tmp / "m.sock", ["--max-line", "1024"]).wait_ready()
    try:
        out = plugrpc("call", "--socket", str(router.socket), "demo.echo", orjson.dumps(["x" * 2000]).decode())
        assert out.returncode == 1 and out.stdout == ""
        error = orjson.loads(out.stderr)
        assert error["code"] == -32004 and "1024 bytes" in error["data"]
    finally:
        router.stop()
