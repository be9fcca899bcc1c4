"""A manifest, a reload or a plugin's own calls cannot hurt the router: each bound tried on real routers.

A reload hashes executables off the event loop, and only those whose size, mtime or inode changed;
a plugin name whose socket path would not fit is refused with the manifest, before anything starts or
changes, and a reload that fails for any reason answers with why and leaves nothing running; a value
the plugin process cannot be given is why it cannot start, not a bare exit 255; a plugin's own
connections to the router reach what NATS reaches (and events) unless its manifest grants more.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import plugrpc
from plugrpc.manifest import Limits, PluginSpec
from plugrpc.process.supervisor import Supervisor
from plugrpc.testing import RouterProcess, write_image

from plugins.sources import KITCHEN, KITCHEN_EXPORTS, OVS
from util import WAIT, descendants, figure, until, wait_until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]
LONG = "n" * 120
"""A plugin name that passes the name pattern but whose socket path cannot fit in 107 bytes."""
BIG = 256 << 20
"""Bytes of the large executable: hashing it takes about a second here."""


# --- hashing on reload ---------------------------------------------------------------------


async def slowest_call(c: plugrpc.Client, stop: asyncio.Event) -> float:
    """Call ovs.version one after another until `stop`; the longest one, in seconds."""
    loop = asyncio.get_running_loop()
    slowest = 0.0
    while not stop.is_set():
        started = loop.time()
        assert await c.raw("ovs.version") == "1.0alpha"
        slowest = max(slowest, loop.time() - started)
    return slowest


def test_a_reload_hashes_a_large_executable_off_the_loop(plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"ovs": ("ovs.py", OVS, ["version"]),
                          "big": ("big.sh", "#!/bin/sh\n", ["x"], {"lazy": True})})
    with open(root / "big.sh", "r+b") as f:
        f.truncate(BIG)  # never started (lazy): only hashed
    router = plugrpc_router(root)

    async def main() -> tuple[float, float]:
        async with router.aclient(timeout=WAIT) as caller, router.aclient(timeout=WAIT) as other:
            assert await other.raw("ovs.version") == "1.0alpha"
            stop = asyncio.Event()
            calls = asyncio.ensure_future(slowest_call(other, stop))
            loop = asyncio.get_running_loop()
            took = []
            for _ in range(2):
                os.utime(root / "big.sh")  # a new mtime: hashed again (the same content: unchanged)
                started = loop.time()
                result = await caller.raw("router.reload")
                took.append(loop.time() - started)
                assert result["unchanged"] == ["ovs", "big"]
            stop.set()
            return await calls, max(took)

    slowest, reload = asyncio.run(main())
    figure("reload hashing a 256 MiB executable: another client's slowest call", slowest * 1000, "ms",
           reload_ms=round(reload * 1000))
    assert slowest < 0.25 < reload  # the reload did hash it, and nobody else waited for that


# --- names too long for their socket, reloads that fail ----------------------------------------


def test_a_name_too_long_for_its_socket_stops_the_start_before_any_plugin_runs(plugrpc_image: Image,
                                                                                plugrpc_router: Router) -> None:
    root = plugrpc_image({"ovs": ("ovs.py", OVS, ["version"]), LONG: ("ovs.py", OVS, ["version"])})
    router = plugrpc_router(root, wait=False)
    assert router.proc.wait(WAIT) != 0
    log = router.log()
    assert f"plugin {LONG!r}" in log and "key 'name'" in log and "107" in log
    assert "[ovs] starting" not in log, log


@pytest.mark.parametrize("why", ["a name too long", "a socket path taken"])
def test_a_reload_that_fails_answers_why_and_leaves_nothing_running(plugrpc_image: Image, plugrpc_router: Router,
                                                                   why: str) -> None:
    plugins: dict[str, Any] = {"k": ("k.py", KITCHEN, KITCHEN_EXPORTS)}
    root = plugrpc_image(plugins)
    router = plugrpc_router(root)
    with router.client(timeout=WAIT) as c:
        rundir = Path(c.raw("k.env", ["PLUGRPC_SOCKET"])).parent
        before = set(descendants(router.pid))  # once k has answered: the router may be ready before k is spawned
        bad = LONG if why == "a name too long" else "taken"
        (rundir / "taken.sock").write_text("not a socket")
        write_image(root, {**plugins, "extra": ("ovs.py", OVS, ["version"]), bad: ("ovs.py", OVS, ["version"])})
        with pytest.raises(plugrpc.RpcError) as info:
            c.raw("router.reload")
        assert ("key 'name'" in info.value.message and "107" in info.value.message if bad == LONG
                else "taken.sock exists and is not a socket" in info.value.message), info.value.message
        assert [p["name"] for p in c.raw("router.plugins")] == ["k"]
        wait_until(lambda: set(descendants(router.pid)) == before, "only the plugins of before to run")
        (rundir / "taken.sock").unlink()
        write_image(root, {**plugins, "extra": ("ovs.py", OVS, ["version"])})
        assert c.raw("router.reload")["added"] == ["extra"]  # and the router reloads as before
        assert c.raw("extra.version") == "1.0alpha"


# --- what a plugin process cannot be given -------------------------------------------------------


@pytest.fixture
async def supervisors() -> AsyncIterator[Callable[..., Supervisor]]:
    """Supervisors of `/bin/sleep` specs built by hand (the manifest would refuse them), stopped at the end."""
    rundir = Path(tempfile.mkdtemp(prefix="hm-", dir="/tmp"))
    made: list[Supervisor] = []

    def make(**keys: Any) -> Supervisor:
        spec = PluginSpec(name=f"p{len(made)}", path=Path(shutil.which("sleep") or "/bin/sleep"), exports=("x",),
                          args=("60",), restart="never", **keys)
        made.append(Supervisor(spec, rundir, rundir / f"{spec.name}.sock"))
        return made[-1]

    yield make
    for sup in made:
        await asyncio.wait_for(sup.stop(), WAIT)
    shutil.rmtree(rundir, ignore_errors=True)


@pytest.mark.parametrize(("keys", "words"), [
    ({"limits": Limits(cpu_seconds=1 << 63)}, "cannot set limits.cpu_seconds to 9223372036854775808: "),
    ({"user": str(1 << 32), "group": "0"}, "cannot switch to uid 4294967296: "),
    ({"env": {"A=B": "x"}}, "cannot execute "),
])
async def test_what_the_child_cannot_apply_is_why_it_cannot_start(supervisors: Callable[..., Supervisor],
                                                                  keys: dict[str, Any], words: str) -> None:
    sup = supervisors(**keys)
    await sup.start()
    await until(lambda: sup.last_error is not None or sup.last_exit is not None, "the spawn to fail")
    assert sup.last_exit is None, f"exited with {sup.last_exit}, not refused"
    assert sup.last_error is not None and words in sup.last_error
    assert sup.status()["last_error"] == sup.last_error and words in sup.unavailable_reason()


# --- plugins' own calls to the router ------------------------------------------------------------

FORWARD = '''
#!/usr/bin/env python3
import os, subprocess, sys
import plugrpc

async def forward(method, params=None):
    """Pass a call on to the router, as a careless plugin would."""
    return await plugrpc.call(method, params)

def shell(method):
    """The same from a child process of the plugin (`plugrpc call`)."""
    done = subprocess.run([sys.executable, "-m", "plugrpc", "call", method], capture_output=True, text=True,
                          timeout=20)
    return [done.returncode, done.stdout + done.stderr]

async def subscribe(pattern):
    async with plugrpc.Client(os.environ["PLUGRPC_ROUTER"]) as c:
        return await c.raw("router.subscribe", {"events": [pattern]})

plugrpc.serve({"forward": forward, "shell": shell, "subscribe": subscribe})
'''
FORWARD_EXPORTS = ["forward", "shell", "subscribe"]


def test_a_plugin_reaches_what_nats_reaches_unless_its_manifest_grants_more(plugrpc_image: Image,
                                                                            plugrpc_router: Router) -> None:
    root = plugrpc_image({"ovs": ("ovs.py", OVS, ["version"]),
                          "fwd": ("fwd.py", FORWARD, FORWARD_EXPORTS),
                          "logs": ("fwd.py", FORWARD, FORWARD_EXPORTS, {"router_access": ["router.logs"]}),
                          "admin": ("fwd.py", FORWARD, FORWARD_EXPORTS, {"router_access": "full"})})
    router = plugrpc_router(root)
    with router.client(timeout=WAIT * 3) as c:
        for method in ("router.reload", "router.logs"):
            with pytest.raises(plugrpc.RpcError) as info:
                c.raw("fwd.forward", [method, {"plugin": "ovs"} if method == "router.logs" else None])
            assert info.value.code == -32601 and "router_access" in str(info.value.data), info.value.data
        code, said = c.raw("fwd.shell", ["router.reload"])  # a child of the plugin is the plugin
        assert code != 0 and "router_access" in said, said
        assert c.raw("fwd.forward", ["ovs.version"]) == "1.0alpha"
        assert c.raw("fwd.forward", ["router.health"])["status"] == "ok"
        assert {p["name"] for p in c.raw("fwd.forward", ["router.plugins"])} == {"ovs", "fwd", "logs", "admin"}
        assert "subscription" in c.raw("fwd.subscribe", ["ovs.>"])
        assert c.raw("logs.forward", ["router.logs", {"plugin": "ovs"}])["plugin"] == "ovs"
        with pytest.raises(plugrpc.RpcError):
            c.raw("logs.forward", ["router.reload"])
        assert c.raw("admin.forward", ["router.reload"])["unchanged"] == ["ovs", "fwd", "logs", "admin"]
        assert c.raw("admin.shell", ["router.stats"])[0] == 0
        assert c.raw("router.reload")["unchanged"] == ["ovs", "fwd", "logs", "admin"]  # other clients: all


def test_plugrpc_status_says_why_a_plugin_cannot_start(plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"ovs": ("ovs.py", OVS, ["version"]),
                          "nofile": ("ovs.py", OVS, ["version"], {"limits": {"open_files": 1 << 40}})})
    router = plugrpc_router(root)  # past any nr_open: the kernel refuses it, root or not
    status = [sys.executable, "-m", "plugrpc", "status", "--socket", str(router.socket)]

    def table() -> str:
        return subprocess.run(status, capture_output=True, text=True, timeout=WAIT).stdout

    row = wait_until(lambda: next((r for r in table().splitlines() if r.startswith("nofile ")
                                   and "cannot start" in r), None), "nofile's row to say it cannot start")
    assert "cannot set limits.open_files" in row, row
    assert f"cannot set limits.open_files to {1 << 40}: " in router.log()
