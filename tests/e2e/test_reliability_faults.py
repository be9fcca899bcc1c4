"""Faults: plugins that die, hang, crash-loop or break the protocol; clients that vanish; routers killed.

Beyond tests/test_e2e.py (one death, one timeout, one bad reply, one disconnect, an idle SIGTERM
and kill -9), these put each fault under load, with several plugins, and check what is left
afterwards: in-flight counts, cancelled work in the plugin, file descriptors, memory, processes.
"""

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
from plugrpc.testing import RouterProcess

from plugins.sources import CRASHER, ECHO, ECHO_EXPORTS, FAULTY, FAULTY_EXPORTS
from util import FULL, LEGACY, AsyncRawConn, alive, descendants, fd_count, figure, req, rss_mib, until, wait_until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]
LEGACY_SH = (LEGACY / "plugin.sh").read_text()
FAST = 5.0
"""Generous bound for "at once" / "fails fast": far below every timeout involved (30 s)."""


async def router_stat(client: plugrpc.Client, key: str) -> Any:
    return (await client.raw("router.stats"))[key]


async def plugin_row(client: plugrpc.Client, name: str) -> dict[str, Any]:
    return next(p for p in await client.raw("router.plugins") if p["name"] == name)


async def steady(client: plugrpc.Client, method: str, stop: asyncio.Event,
                 errors: list[tuple[float, Exception]] | None = None) -> int:
    """Call `method` over and over until `stop`, counting successes.

    Every call must succeed, unless `errors` is given: then failures are collected there (with
    when they happened) and the loop goes on.
    """
    n = 0
    while not stop.is_set():
        try:
            assert (await client.raw(method, [n]))["payload"] == n
        except plugrpc.RpcError as exc:
            if errors is None:
                raise
            errors.append((time.monotonic(), exc))
        n += 1
        await asyncio.sleep(0.005)
    return n


# --- a plugin killed under load -------------------------------------------------------------


async def test_sigkill_under_load_fails_inflight_at_once_restarts_and_answers_again(
        plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"a": ("a.py", ECHO, ECHO_EXPORTS), "b": ("b.py", ECHO, ECHO_EXPORTS)})
    router = plugrpc_router(root)
    stop = asyncio.Event()
    async with plugrpc.Client(router.socket, timeout=60) as c, plugrpc.Client(router.socket, timeout=60) as other:
        old = (await c.raw("a.stats"))["pid"]
        others = asyncio.ensure_future(steady(other, "b.echo", stop))
        errors: list[tuple[float, Exception]] = []
        load = [asyncio.ensure_future(steady(c, "a.echo", stop, errors)) for _ in range(4)]
        slow = [asyncio.ensure_future(c.raw("a.sleep", [20, i])) for i in range(50)]
        await until(lambda: _running(c, "a"), expect=50)
        killed = time.monotonic()
        os.kill(old, signal.SIGKILL)
        failed_at = []
        for fut in slow:
            with pytest.raises(plugrpc.PluginUnavailable) as info:
                await asyncio.wait_for(fut, 30)
            failed_at.append(time.monotonic() - killed)
            assert info.value.data["plugin"] == "a"
        # The first good answer from the new process: retry -32001 (the window before the router
        # noticed), anything else fails the test.
        while True:
            try:
                result = await c.raw("a.stats")
                break
            except plugrpc.PluginUnavailable:
                await asyncio.sleep(0.001)
        first_good = time.monotonic() - killed
        assert result["pid"] != old
        stop.set()
        assert await asyncio.wait_for(others, 30) > 0  # b never failed meanwhile
        assert all(n > 0 for n in await asyncio.wait_for(asyncio.gather(*load), 30))
        # The steady callers of `a` only failed with -32001, and only around the kill (calls
        # written to the dead process); nothing waited for a timeout.
        assert all(isinstance(exc, plugrpc.PluginUnavailable) for _, exc in errors), errors
        assert all(at - killed < FAST for at, _ in errors)
        row = await plugin_row(c, "a")
        assert row["restarts"] == 1 and row["inflight"] == 0 and row["state"] == "running"
    assert max(failed_at) < FAST
    assert first_good < 10  # the goal is < 1 s; the figure below is what this machine did
    figure("sigkill_inflight_failed_within", max(failed_at), "s", calls=len(slow))
    figure("sigkill_time_to_first_good_answer", first_good, "s")


async def _running(client: plugrpc.Client, name: str) -> int:
    return (await client.raw(f"{name}.stats"))["running"]  # type: ignore[no-any-return]


# Slow to start, so the restart window is wide and certain: calls sent in it wait in the backlog.
SLOW_START = ECHO.replace("import plugrpc\n", "import plugrpc, time\ntime.sleep(1.0)\n", 1)


async def test_calls_sent_during_a_restart_wait_in_the_backlog_and_succeed(
        plugrpc_image: Image, plugrpc_router: Router) -> None:
    router = plugrpc_router(plugrpc_image({"a": ("a.py", SLOW_START, ECHO_EXPORTS)}))
    async with plugrpc.Client(router.socket, timeout=60) as c:
        await until(lambda: _state(c, "a"), expect="running", timeout=20)
        old = (await c.raw("a.stats"))["pid"]
        slow = asyncio.ensure_future(c.raw("a.sleep", [20]))
        await until(lambda: _running(c, "a"), expect=1)
        os.kill(old, signal.SIGKILL)
        with pytest.raises(plugrpc.PluginUnavailable):
            await asyncio.wait_for(slow, 30)  # the router has seen the death: what follows is sent in the restart
        sent = time.monotonic()
        during = await asyncio.wait_for(asyncio.gather(*(c.raw("a.echo", [i]) for i in range(100))), 30)
        assert during == [{"by": "a", "payload": i} for i in range(100)]
        assert time.monotonic() - sent > 0.5  # they did wait for the new process, which sleeps 1 s first
        assert (await c.raw("a.stats"))["pid"] != old


async def _state(client: plugrpc.Client, name: str) -> str:
    return (await plugin_row(client, name))["state"]  # type: ignore[no-any-return]


# --- a crash loop ---------------------------------------------------------------------------


async def test_crash_loop_is_visible_fails_fast_and_leaves_others_alone(plugrpc_image: Image,
                                                                      plugrpc_router: Router) -> None:
    root = plugrpc_image({"crash": ("crash.sh", CRASHER, ["x"]), "a": ("a.py", ECHO, ECHO_EXPORTS)})
    router = plugrpc_router(root)
    stop = asyncio.Event()
    async with plugrpc.Client(router.socket, timeout=60) as c:
        others = asyncio.ensure_future(steady(c, "a.echo", stop))
        # A call made while the plugin is still in backoff waits, then fails when it is given up on.
        early = time.monotonic()
        with pytest.raises(plugrpc.PluginUnavailable):
            await c.raw("crash.x")
        assert time.monotonic() - early < 15  # not the 30 s timeout
        await until(lambda: _state(c, "crash"), expect="crashloop", timeout=15)
        row = await plugin_row(c, "crash")
        assert row["restarts"] >= 4 and row["last_exit"] == 3 and row["inflight"] == 0
        assert (await c.raw("router.health"))["status"] == "degraded"
        # In the crash loop, calls fail at once with -32001 and say why.
        started = time.monotonic()
        for _ in range(20):
            with pytest.raises(plugrpc.PluginUnavailable) as info:
                await c.raw("crash.x")
            assert info.value.data["plugin"] == "crash" and "crashloop" in info.value.data["reason"]
        # ... which is: how it ended, and what it printed last.
        assert "its last process ended with exit code 3" in info.value.data["reason"]
        assert "it last printed: 'crasher: giving up at start-up'" in info.value.data["reason"]
        assert "core0" not in info.value.data["reason"]
        fail_fast = (time.monotonic() - started) / 20
        stop.set()
        assert await asyncio.wait_for(others, 30) > 0
        assert (await plugin_row(c, "a"))["restarts"] == 0
    assert fail_fast < 1
    assert "crasher: giving up at start-up" in router.log()
    figure("crashloop_call_fails_in", fail_fast, "s")


# A core0 plugin binary declared without `mode = "exec"`: run with no command, it says so and exits 1.
CORE0_BINARY = """
#!/bin/sh
echo "missing command" >&2
exit 1
"""


def test_a_core0_binary_run_as_a_server_is_told_apart(plugrpc_image: Image, plugrpc_router: Router) -> None:
    router = plugrpc_router(plugrpc_image({"ovs": ("ovs-plugin", CORE0_BINARY, ["version"])}))
    with router.client() as c:
        wait_until(lambda: c.raw("router.plugins")[0]["state"] == "crashloop", "the crash loop", timeout=20)
        with pytest.raises(plugrpc.PluginUnavailable) as info:
            c.raw("ovs.version")
        reason = info.value.data["reason"]
        assert reason.startswith("plugin ovs is crashloop: it stopped 5 times in a row within 10s of starting")
        assert "exit code 1" in reason and "'missing command'" in reason
        assert reason.endswith('this looks like a core0 plugin binary, which runs once per call: declare it with '
                               'mode = "exec" under [plugin.ovs]')
    status = subprocess.run([sys.executable, "-m", "plugrpc", "status", "--socket", str(router.socket)],
                            capture_output=True, text=True, timeout=30)
    header, row = status.stdout.splitlines()
    assert "LAST_EXIT" in header and "1 crash" in row and "crashloop" in row


# --- a hung handler ---------------------------------------------------------------------------


async def test_hung_handler_times_out_is_cancelled_and_others_keep_flowing(plugrpc_image: Image,
                                                                         plugrpc_router: Router) -> None:
    root = plugrpc_image({"a": ("a.py", ECHO, ECHO_EXPORTS, {"timeout": 1}), "b": ("b.py", ECHO, ECHO_EXPORTS)})
    router = plugrpc_router(root)
    stop = asyncio.Event()
    async with plugrpc.Client(router.socket, timeout=60) as c:
        flows = [asyncio.ensure_future(steady(c, m, stop)) for m in ("a.echo", "b.echo")]
        started = time.monotonic()
        hung = [asyncio.ensure_future(c.raw("a.hang")) for _ in range(5)]
        for fut in hung:
            with pytest.raises(plugrpc.CallTimeout) as info:
                await asyncio.wait_for(fut, 30)
            assert info.value.data["plugin"] == "a"
        took = time.monotonic() - started
        # Other calls to the same plugin, async ones included, and to other plugins went on meanwhile.
        assert await c.raw("a.sleep", [0.01, "x"]) == {"by": "a", "payload": "x"}
        stop.set()
        assert all(n > 0 for n in await asyncio.gather(*flows))
        # The router told the plugin to cancel them (rpc.cancel): nothing of them still runs there.
        await until(lambda: _stats(c, "a", "running"), expect=0)
        assert (await c.raw("a.stats"))["cancelled"] == 5
        assert (await router_stat(c, "plugins"))["a"]["timeouts"] == 5
    assert 0.9 < took < FAST


async def _stats(client: plugrpc.Client, name: str, key: str) -> Any:
    return (await client.raw(f"{name}.stats"))[key]


async def test_blocked_thread_times_out_and_its_late_answer_is_dropped(plugrpc_image: Image,
                                                                      plugrpc_router: Router) -> None:
    """A `@threaded` handler cannot be cancelled: its answer arrives late and must not break the connection."""
    router = plugrpc_router(plugrpc_image({"a": ("a.py", ECHO, ECHO_EXPORTS, {"timeout": 0.5})}))
    async with plugrpc.Client(router.socket, timeout=60) as c:
        pid = (await c.raw("a.stats"))["pid"]
        with pytest.raises(plugrpc.CallTimeout):
            await c.raw("a.block", [1.5])
        assert await c.raw("a.echo", [1]) == {"by": "a", "payload": 1}  # the loop is free meanwhile
        await until(lambda: _stats(c, "a", "running"), "the blocked thread to finish", expect=0)
        assert await c.raw("a.echo", [2]) == {"by": "a", "payload": 2}
        assert (await c.raw("a.stats"))["pid"] == pid
        assert (await router_stat(c, "plugins"))["a"]["errors"] == 1
    assert "resetting" not in router.log()


async def test_a_client_that_gives_up_has_the_call_cancelled_in_the_plugin(plugrpc_image: Image,
                                                                           plugrpc_router: Router) -> None:
    router = plugrpc_router(plugrpc_image({"a": ("a.py", ECHO, ECHO_EXPORTS)}))
    async with plugrpc.Client(router.socket, timeout=60) as c:
        with pytest.raises(plugrpc.CallTimeout):
            await c.raw("a.hang", timeout=0.3)  # the client sends rpc.cancel for it
        await until(lambda: _stats(c, "a", "cancelled"), expect=1, timeout=3)
        assert await router_stat(c, "inflight") == 0


# --- a plugin that breaks the protocol with calls in flight -------------------------------------


@pytest.mark.parametrize("poison", ["garbage", "half", "unknown-id", "twice"])
async def test_protocol_breach_fails_every_inflight_call_and_nothing_else(poison: str, plugrpc_image: Image,
                                                                         plugrpc_router: Router) -> None:
    root = plugrpc_image({"bad": ("bad.py", FAULTY, FAULTY_EXPORTS), "a": ("a.py", ECHO, ECHO_EXPORTS)})
    router = plugrpc_router(root)
    pipe = await AsyncRawConn.open(router.socket)
    try:
        await pipe.send(*[req("bad.hold", [i], id=f"hold{i}") for i in range(5)])
        await pipe.send(req("a.sleep", [0.5, "other"], id="other"))
        async with plugrpc.Client(router.socket, timeout=30) as probe:
            await until(lambda: router_stat(probe, "inflight"), "the six calls to be in flight", expect=6)
        started = time.monotonic()
        await pipe.send(req(f"bad.{poison}", [1], id="poison"))
        answers: dict[Any, Any] = {}
        while len(answers) < 7:
            msg = await pipe.recv()
            assert msg["id"] not in answers, f"two answers for {msg['id']!r}"
            answers[msg["id"]] = msg
        took = time.monotonic() - started
        for i in range(5):
            assert answers[f"hold{i}"]["error"]["code"] == -32001
            assert answers[f"hold{i}"]["error"]["data"]["plugin"] == "bad"
        if poison == "twice":
            assert answers["poison"]["result"] == "once"  # answered, once; the second answer breaks the connection
        else:
            assert answers["poison"]["error"]["code"] == -32001
        assert answers["other"]["result"] == {"by": "a", "payload": "other"}  # another plugin: untouched
        # The router reconnects to the same process; the plugin answers again.
        await pipe.send(req("bad.ok", ["again"], id="again"))
        assert await pipe.recv() == {"jsonrpc": "2.0", "result": ["again"], "id": "again"}
        await pipe.send(req("router.plugins", id="rows"))
        rows = {p["name"]: p for p in (await pipe.recv())["result"]}
        assert rows["bad"]["inflight"] == 0 and rows["bad"]["restarts"] == 0 and rows["bad"]["state"] == "running"
    finally:
        await pipe.close()
    assert took < FAST
    assert router.proc.poll() is None


# --- clients that vanish with calls in flight ---------------------------------------------------


@pytest.mark.parametrize("disconnects", [
    pytest.param(1000, id="1000"),
    pytest.param(10_000, id="10000", marks=(*FULL, pytest.mark.timeout(900))),
])
async def test_disconnects_with_calls_in_flight_leak_nothing(plugrpc_image: Image, plugrpc_router: Router,
                                                             disconnects: int) -> None:
    router = plugrpc_router(plugrpc_image({"a": ("a.py", ECHO, ECHO_EXPORTS)}))
    async with plugrpc.Client(router.socket, timeout=60) as probe:
        await probe.raw("a.echo", [0])
        fds, rss = fd_count(router.pid), rss_mib(router.pid)
        todo = iter(range(disconnects))

        async def vanish() -> None:
            for n in todo:
                pipe = await AsyncRawConn.open(router.socket)
                # Two calls that never end, then one that does: once it answers, the two are
                # running in the plugin (one connection, answered in order of arrival).
                await pipe.send(req("a.hang", id=1), req("a.hang", id=2), req("a.echo", [n], id=3))
                assert (await pipe.recv())["id"] == 3
                await pipe.close()

        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(vanish() for _ in range(20))), 600)
        elapsed = time.monotonic() - started
        await until(lambda: router_stat(probe, "inflight"), expect=0, timeout=30)
        await until(lambda: _stats(probe, "a", "running"), expect=0, timeout=30)
        assert (await probe.raw("a.stats"))["cancelled"] == 2 * disconnects
        assert await router_stat(probe, "clients") == 1
        grown_fds, grown_rss = fd_count(router.pid) - fds, rss_mib(router.pid) - rss
    assert grown_fds <= 2, grown_fds
    assert grown_rss < 16 + disconnects / 1000, grown_rss
    figure("disconnects", disconnects, "disconnects", seconds=round(elapsed, 2))
    figure("disconnects_router_rss_growth", grown_rss, "MiB", disconnects=disconnects)


# --- the router itself stopped or killed -----------------------------------------------------


async def test_sigterm_under_load_finishes_inflight_calls_and_cleans_up(plugrpc_image: Image,
                                                                      plugrpc_router: Router) -> None:
    root = plugrpc_image({name: (f"{name}.py", ECHO, ECHO_EXPORTS) for name in ("a", "b", "c")})
    router = plugrpc_router(root, "--shutdown-grace", "10")
    async with plugrpc.Client(router.socket, timeout=60) as c:
        runtime = Path((await c.raw("a.environ"))["PLUGRPC_SOCKET"]).parent
        grandchild = await c.raw("a.spawn")
        tree = descendants(router.pid)
        assert grandchild in tree and len(tree) >= 4
        calls = [asyncio.ensure_future(c.raw(f"{p}.sleep", [1, [p, i]])) for p in ("a", "b", "c") for i in range(20)]
        await until(lambda: router_stat(c, "inflight"), expect=60)
        router.proc.send_signal(signal.SIGTERM)
        results = await asyncio.wait_for(asyncio.gather(*calls), 30)
        assert results == [{"by": p, "payload": [p, i]} for p in ("a", "b", "c") for i in range(20)]
    assert await asyncio.to_thread(router.proc.wait, 30) == 0
    assert not router.socket.exists() and not runtime.exists()
    assert [p for p in tree if alive(p)] == []


async def test_a_call_still_running_after_the_grace_period_is_answered_32001(plugrpc_image: Image,
                                                                            plugrpc_router: Router) -> None:
    router = plugrpc_router(plugrpc_image({"a": ("a.py", ECHO, ECHO_EXPORTS, {"grace": 1})}),
                            "--shutdown-grace", "0.5")
    async with plugrpc.Client(router.socket, timeout=60) as c:
        hung = asyncio.ensure_future(c.raw("a.hang"))
        await until(lambda: _stats(c, "a", "running"), expect=1)
        router.proc.send_signal(signal.SIGTERM)
        with pytest.raises(plugrpc.PluginUnavailable):
            await asyncio.wait_for(hung, 30)
    assert await asyncio.to_thread(router.proc.wait, 30) == 0


async def test_a_second_sigterm_during_shutdown_does_not_skip_the_cleanup(plugrpc_image: Image,
                                                                          plugrpc_router: Router) -> None:
    router = plugrpc_router(plugrpc_image({"a": ("a.py", ECHO, ECHO_EXPORTS, {"grace": 2})}),
                            "--shutdown-grace", "1")
    async with plugrpc.Client(router.socket, timeout=60) as c:
        runtime = Path((await c.raw("a.environ"))["PLUGRPC_SOCKET"]).parent
        hung = asyncio.ensure_future(c.raw("a.hang"))
        await until(lambda: _stats(c, "a", "running"), expect=1)
        router.proc.send_signal(signal.SIGTERM)
        await until(lambda: "shutting down: waiting" in router.log(), "the router to start its shutdown")
        router.proc.send_signal(signal.SIGTERM)  # an impatient operator, or a supervisor that repeats itself
        with pytest.raises((plugrpc.PluginUnavailable, plugrpc.ConnectionLost)):
            await asyncio.wait_for(hung, 30)
    assert await asyncio.to_thread(router.proc.wait, 30) == 0
    assert not runtime.exists()


async def test_sigterm_with_a_call_beyond_the_grace_period_still_exits_cleanly(plugrpc_image: Image,
                                                                               plugrpc_router: Router) -> None:
    router = plugrpc_router(plugrpc_image({"a": ("a.py", ECHO, ECHO_EXPORTS, {"grace": 1})}),
                            "--shutdown-grace", "0.5")
    async with plugrpc.Client(router.socket, timeout=60) as c:
        tree = descendants(router.pid)
        hung = asyncio.ensure_future(c.raw("a.hang"))
        await until(lambda: _stats(c, "a", "running"), expect=1)
        stopping = time.monotonic()
        router.proc.send_signal(signal.SIGTERM)
        with pytest.raises((plugrpc.PluginUnavailable, plugrpc.ConnectionLost)):
            await asyncio.wait_for(hung, 30)
    assert await asyncio.to_thread(router.proc.wait, 30) == 0
    assert time.monotonic() - stopping < FAST + 1.5
    assert [p for p in tree if alive(p)] == []


async def test_router_killed_under_load_leaves_no_process_behind(plugrpc_image: Image,
                                                                 plugrpc_router: Router) -> None:
    root = plugrpc_image({
        "a": ("a.py", ECHO, ECHO_EXPORTS),
        "b": ("b.py", ECHO, ECHO_EXPORTS),
        "legacy": ("legacy.sh", LEGACY_SH, ["sleep"], {"mode": "exec"}),
    })
    router = plugrpc_router(root)
    async with plugrpc.Client(router.socket, timeout=60) as c:
        grandchild = await c.raw("a.spawn")  # a plugin's own child, in its process group
        inflight = [asyncio.ensure_future(c.raw(f"{p}.sleep", [30])) for p in ("a", "b") for _ in range(10)]
        legacy = asyncio.ensure_future(c.raw("legacy.sleep", ["marker"]))
        await asyncio.to_thread(wait_until, lambda: list(root.glob("*marker*.pids")), 10)  # it runs
        tree = descendants(router.pid)
        assert grandchild in tree and len(tree) >= 5  # a, b, a's child, the exec'd script and its child
        router.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(router.proc.wait, 10)
        for fut in [*inflight, legacy]:
            with pytest.raises(plugrpc.ConnectionLost):
                await asyncio.wait_for(fut, 10)
    try:
        await asyncio.to_thread(wait_until, lambda: [p for p in tree if alive(p)] == [], 10)
    finally:
        survivors = [p for p in tree if alive(p)]
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
    assert survivors == []
