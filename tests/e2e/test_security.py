"""Security: who may call, what can be reached, what a plugin gets, what never runs.

Beyond tests/test_e2e.py (default socket modes, one secret kept from a plugin) and
tests/test_manifest.py (path confinement while parsing): the front socket's configurable mode and
SO_PEERCRED allowlist tried from another uid, `plugrpc run` refusing an escaping manifest before
anything starts, reserved names, unexported methods by every route, no shell, the exact environment.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from plugrpc import codes
from plugrpc.plugin.dispatch import resolve
from plugrpc.testing import RouterProcess, write_image

from plugins.sources import ECHO, ECHO_EXPORTS
from util import LEGACY, RawConn, req

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]
NOBODY = 65534
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
LEGACY_SH = (LEGACY / "plugin.sh").read_text()


def connect_as(uid: int, path: Path, timeout: float = 10.0) -> str:
    """Call router.health on `path` from a process running as `uid`: "answered", "refused" (an error
    saying why, then the close), "closed" or "denied" (by the socket's mode)."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the child only does syscalls
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        outcome = b"error"
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                try:
                    sock.connect(os.fspath(path))
                except PermissionError:
                    outcome = b"denied"
                else:
                    try:
                        sock.sendall(orjson.dumps(req("router.health")) + b"\n")
                        data = sock.recv(1 << 16)
                        outcome = b"closed" if not data else b"refused" if b'"error"' in data else b"answered"
                    except (BrokenPipeError, ConnectionResetError):
                        outcome = b"closed"
        finally:
            os.write(write, outcome)
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + timeout
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            raise AssertionError(f"the client running as uid {uid} hung")
        time.sleep(0.01)
    with os.fdopen(read, "rb") as f:
        return f.read().decode()


@pytest.fixture
def shared_dir(plugrpc_tmp: Path) -> Path:
    """Let other users reach sockets in the test directory (its own mode is then up to the socket's)."""
    plugrpc_tmp.chmod(0o711)
    return plugrpc_tmp


@pytest.fixture
def image(plugrpc_image: Image) -> Path:
    return plugrpc_image({"a": ("plugins/a.py", ECHO, ECHO_EXPORTS)})


# --- the front socket -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
def test_front_socket_mode_is_what_was_asked(image: Path, plugrpc_router: Router, mode: int) -> None:
    router = plugrpc_router(image, "--socket-mode", f"{mode:o}")
    assert stat.S_IMODE(router.socket.stat().st_mode) == mode
    with router.client() as c:
        assert c.raw("a.echo", [1]) == {"by": "a", "payload": 1}


@ROOT_ONLY
def test_front_socket_mode_decides_who_may_connect(image: Path, plugrpc_router: Router, shared_dir: Path) -> None:
    private = plugrpc_router(image)  # 0600 by default
    assert connect_as(NOBODY, private.socket) == "denied"
    shared = plugrpc_router(image, "--socket-mode", "666")
    assert connect_as(NOBODY, shared.socket) == "answered"


@ROOT_ONLY
def test_allowlist_admits_only_listed_uids(image: Path, plugrpc_router: Router, shared_dir: Path) -> None:
    only_nobody = plugrpc_router(image, "--socket-mode", "666", "--allow-uid", str(NOBODY))
    assert connect_as(NOBODY, only_nobody.socket) == "answered"
    assert connect_as(os.getuid(), only_nobody.socket) == "refused"
    both = plugrpc_router(image, "--socket-mode", "666", "--allow-uid", str(NOBODY), "--allow-uid", str(os.getuid()))
    assert connect_as(NOBODY, both.socket) == "answered"
    assert connect_as(os.getuid(), both.socket) == "answered"
    assert f"uid {os.getuid()}" in only_nobody.log()  # a refusal is logged, with the uid


def test_a_refused_client_is_told_why_and_others_go_on(image: Path, plugrpc_router: Router) -> None:
    router = plugrpc_router(image, "--allow-uid", str(os.getuid() + 1))
    with RawConn(router.socket, timeout=5) as c:
        c.send(req("a.echo", [1]))
        error = c.recv()["error"]
        assert error["code"] == codes.INVALID_REQUEST
        assert f"uid {os.getuid()} may not use this socket" in error["data"]["reason"]
        assert c.sock.recv(1 << 16) == b""  # then end of file, not "Connection reset by peer"
    assert f"refused a client with uid {os.getuid()}" in router.log()
    assert router.proc.poll() is None
    open_router = plugrpc_router(image, "--allow-uid", str(os.getuid()))
    with open_router.client() as c:
        assert c.raw("a.echo", [2]) == {"by": "a", "payload": 2}


# --- the runtime directory --------------------------------------------------------------------


def test_runtime_dir_under_xdg_runtime_dir_is_private_and_removed(image: Path, plugrpc_router: Router,
                                                                  plugrpc_tmp: Path) -> None:
    xdg = plugrpc_tmp / "xdg"
    xdg.mkdir(mode=0o700)
    router = plugrpc_router(image, env={"XDG_RUNTIME_DIR": str(xdg)})
    with router.client() as c:
        plugin_socket = Path(c.raw("a.environ")["PLUGRPC_SOCKET"])
    runtime = plugin_socket.parent
    assert runtime.parent == xdg
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700 and runtime.stat().st_uid == os.getuid()
    assert stat.S_IMODE(plugin_socket.stat().st_mode) == 0o600
    assert router.stop() == 0
    assert not runtime.exists()


# --- the manifest: refused before anything runs --------------------------------------------------

# Leaves a mark in the image root when it starts: proof that something ran.
MARKER = '''
#!/usr/bin/env python3
import pathlib
pathlib.Path("started").write_text("yes")
import plugrpc
from plugrpc import codes
plugrpc.serve({"x": lambda: 1})
'''


def _escape(root: Path, outside: Path, how: str) -> str:
    """Make plugin `evil` reach `outside/evil.py` from inside `root` in one of several ways; return its path."""
    (outside / "evil.py").write_text(MARKER.lstrip())
    (outside / "evil.py").chmod(0o755)
    if how == "dotdot":
        return f"../{outside.name}/evil.py"
    if how == "absolute-dotdot":
        return f"/plugins/../../{outside.name}/evil.py"
    if how == "symlink":
        (root / "link.py").symlink_to(outside / "evil.py")
        return "/link.py"
    if how == "symlinked-dir":
        (root / "lib").symlink_to(outside)
        return "/lib/evil.py"
    assert how == "chroot-style-symlink"  # absolute, meant for a chroot: on this machine it leaves the root
    (root / "abs.py").symlink_to(outside / "evil.py")
    return "abs.py"


@pytest.mark.parametrize("how", ["dotdot", "absolute-dotdot", "symlink", "symlinked-dir", "chroot-style-symlink"])
def test_escaping_plugin_path_stops_run_before_any_plugin_starts(plugrpc_tmp: Path, how: str) -> None:
    root = plugrpc_tmp / "image"
    outside = plugrpc_tmp / "outside"
    root.mkdir()
    outside.mkdir()
    write_image(root, {"good": ("/plugins/good.py", MARKER, ["x"])})
    evil = _escape(root, outside, how)
    manifest = root / ".plugin.toml"
    manifest.write_text(manifest.read_text() + f'[plugin.evil]\npath = "{evil}"\nexports = ["x"]\n')
    sock = plugrpc_tmp / "r.sock"
    run = subprocess.run([sys.executable, "-m", "plugrpc", "run", "--root", str(root), "--socket", str(sock)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "'evil'" in lines[0] and "'path'" in lines[0] and "outside the image root" in lines[0]
    assert not (root / "started").exists() and not (outside / "started").exists()
    assert not sock.exists()


@pytest.mark.parametrize("table", [
    '[plugin.router]\npath = "/p.py"\nexports = ["plugins"]\n',
    '[plugin.rpc]\npath = "/p.py"\nexports = ["discover"]\n',
    '[plugin.good]\npath = "/p.py"\nexports = ["rpc.discover"]\n',
])
def test_reserved_names_cannot_be_taken_by_a_plugin(plugrpc_tmp: Path, table: str) -> None:
    root = plugrpc_tmp / "image"
    root.mkdir()
    write_image(root, {"good": ("/p.py", MARKER, ["x"])})
    (root / ".plugin.toml").write_text(table)
    run = subprocess.run([sys.executable, "-m", "plugrpc", "run", "--root", str(root), "--socket",
                          str(plugrpc_tmp / "r.sock")], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "reserved" in run.stderr
    assert not (root / "started").exists()


def test_sdk_refuses_commands_in_the_reserved_rpc_namespace() -> None:
    with pytest.raises(ValueError, match="reserved"):
        resolve({"rpc.discover": lambda: {}})
    with pytest.raises(ValueError, match="reserved"):
        resolve({"rpc.cancel": lambda id: True})


# --- what a client can reach ------------------------------------------------------------------


def test_unexported_methods_are_unreachable_by_call_notification_or_batch(image: Path,
                                                                          plugrpc_router: Router) -> None:
    router = plugrpc_router(image)
    with RawConn(router.socket) as c:
        c.send(b'{"jsonrpc": "2.0", "method": "a.hidden"}\n')  # a notification: no answer either way
        batch = c.ask(orjson.dumps([req("a.hidden", id=1), {"jsonrpc": "2.0", "method": "a.hidden"},
                                    req("a.rpc.discover", id=2), req("a.rpc.cancel", [1], id=3)]) + b"\n")
        assert sorted((r["id"], r["error"]["code"]) for r in batch) == [(1, -32601), (2, -32601), (3, -32601)]
        assert c.ask(req("a.hidden", id=4))["error"]["code"] == -32601
        assert c.ask(req("a.stats", id=5))["result"]["hidden"] == 0  # it never ran


def test_builtins_answer_whatever_the_plugins_serve(image: Path, plugrpc_router: Router) -> None:
    """`router.*` and `rpc.discover` are the router's: no plugin serves them, whatever it exports."""
    router = plugrpc_router(image)
    with router.client() as c:
        pid = c.raw("a.stats")["pid"]
        assert c.raw("router.health")["plugins"] == {"a": "running"}
        assert c.raw("router.plugins")[0]["pid"] == pid
        assert {m["name"] for m in c.raw("rpc.discover")["methods"]} >= {"a.echo", "router.plugins"}
        assert c.raw("a.stats")["calls"] == 0  # none of that reached the plugin as a call


# --- no shell, an explicit environment ---------------------------------------------------------

SHELL_BAIT = ["$(touch pwned1)", "`touch pwned2`", "; touch pwned3", "| touch pwned4", "&& touch pwned5", "*", "~",
              "$HOME", "a b", "'quoted'", '"dq"', "\\", "-c"]


def test_no_shell_for_persistent_plugins(plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"a": ("plugins/my plugin;touch pwned0.py", ECHO, ECHO_EXPORTS, {"args": SHELL_BAIT})})
    router = plugrpc_router(root)
    with router.client() as c:
        argv = c.raw("a.argv")
    assert argv[1:] == SHELL_BAIT and argv[0].endswith("my plugin;touch pwned0.py")
    assert not list(root.rglob("pwned*"))


def test_no_shell_for_exec_plugins(plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"legacy": ("legacy.sh", LEGACY_SH, ["echo"], {"mode": "exec"})})
    router = plugrpc_router(root)
    with router.client() as c:
        assert c.raw("legacy.echo", SHELL_BAIT) == SHELL_BAIT
    assert not list(root.rglob("pwned*"))


def test_plugin_environment_is_exactly_the_contract(plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"a": ("a.py", ECHO, ECHO_EXPORTS, {"env": {"GIVEN": "1"}, "inherit_env": ["ASKED"]})})
    secrets = {"SECRET_TOKEN": "hunter2", "AWS_SECRET_ACCESS_KEY": "x", "ASKED": "ok", "LD_PRELOAD": "",
               "PYTHONPATH": "/nowhere"}
    router = plugrpc_router(root, env=secrets)
    with router.client() as c:
        env = c.raw("a.environ")
    allowed = {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "PLUGRPC_PLUGIN", "PLUGRPC_SOCKET", "PLUGRPC_ROUTER", "GIVEN",
               "ASKED"}
    allowed |= {name for name in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_FILE") if name in os.environ}  # make test
    assert set(env) <= allowed, set(env) - allowed
    assert env["GIVEN"] == "1" and env["ASKED"] == "ok" and env["PLUGRPC_PLUGIN"] == "a"
    assert env["PLUGRPC_ROUTER"] == str(router.socket)  # the front socket, to call other plugins through
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


def test_runtime_sockets_are_not_reachable_by_other_users(image: Path, plugrpc_router: Router) -> None:
    router = plugrpc_router(image)
    with router.client() as c:
        plugin_socket = Path(c.raw("a.environ")["PLUGRPC_SOCKET"])
    mode = plugin_socket.parent.stat().st_mode
    assert stat.S_IMODE(mode) == 0o700  # nobody else can even look up the socket
    if os.geteuid() == 0:
        assert connect_as(NOBODY, plugin_socket) == "denied"
