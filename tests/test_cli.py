"""The command line, run as a user would: `plugrpc run` and `plugrpc call` in subprocesses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from plugin_sources import OVS

from plugrpc.testing import RouterProcess


def plugrpc(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "plugrpc.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_help() -> None:
    for args in (["--help"], ["run", "--help"], ["call", "--help"]):
        out = plugrpc(*args)
        assert out.returncode == 0 and "usage: plugrpc" in out.stdout


def test_call_prints_result_as_json(plugrpc_tmp: Path) -> None:
    router = RouterProcess(Path(__file__).parents[1] / "examples" / "image", plugrpc_tmp / "c.sock").wait_ready()
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
    router = RouterProcess(Path(__file__).parents[1] / "examples" / "image", plugrpc_tmp / "u.sock").wait_ready()
    try:
        out = plugrpc("run", "--socket", str(router.socket))
        assert out.returncode == 2 and "in use" in out.stderr
    finally:
        router.stop()
