"""Servers on stdin and stdout (`transport = "stdio"`), end to end: `plugrpc run` in a subprocess, real processes.

Real MCP servers nobody here wrote: PyPI's `mcp` SDK (a server of a few lines, written into the
image and run with this interpreter) and npm's reference server `@modelcontextprotocol/server-everything`
(installed once per session into an image). Faults come from tests/plugins/stdio_server.py, a
scripted server; each fault test has a healthy plugin beside the faulty one, which must not notice.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats as nats_py
import pytest

import plugrpc
from plugrpc.client.nats import NatsClient
from plugrpc.testing import RouterProcess, toml_value, write_image

from util import PLUGINS, WAIT, NatsServer, alive, descendants, wait_until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]

NPM_PACKAGE = "@modelcontextprotocol/server-everything"
NPM_TIMEOUT = 300.0
"""Seconds `npm install` may take (a cold cache fetches about a hundred packages)."""
MCP_EXPORTS = ["tools/list", "tools/call"]
INITIALIZE = {
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "plugrpc", "version": "1"}},
    "notify": "notifications/initialized",
}
PY_SERVER = """\
#!/usr/bin/env python3
import os
from mcp.server.mcpserver import Context, MCPServer

app = MCPServer("py")

@app.tool()
async def echo(message: str) -> str:
    return message

@app.tool()
def pid() -> int:
    return os.getpid()

@app.tool()
async def shout(message: str, ctx: Context) -> str:
    await ctx.info(message)  # a notifications/message
    return message

@app.tool()
async def ping_client(ctx: Context) -> str:
    await ctx.request_context.session.send_ping()  # a request to the router
    return "pong"

app.run()
"""
SCRIPTED = (PLUGINS / "stdio_server.py").read_text()
SCRIPTED_EXPORTS = ["echo", "pid", "sleep", "record", "garbage", "die", "flood", "notify", "ask", "echo.a.b/c"]
SHAKE = {"method": "initialize", "params": {"hello": 1}, "notify": "notifications/initialized"}


def scripted(env: Mapping[str, str] | None = None, **keys: Any) -> tuple[str, str, list[str], dict[str, Any]]:
    """The scripted stdio server as an image entry."""
    return ("bin/scripted.py", SCRIPTED, SCRIPTED_EXPORTS,
            {"transport": "stdio", "handshake": SHAKE, "env": dict(env or {}), **keys})


def row(client: plugrpc.BlockingClient, name: str) -> dict[str, Any]:
    return next(p for p in client.raw("router.plugins") if p["name"] == name)


def running(client: plugrpc.BlockingClient, name: str, not_pid: int | None = None) -> dict[str, Any] | None:
    info = row(client, name)
    return info if info["state"] == "running" and info["pid"] not in (None, not_pid) else None


# --- the real servers ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def npm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image with npm's reference MCP server installed under /opt/mcp (once per session)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("node and npm are not installed here: the npm reference MCP server cannot run")
    root = tmp_path_factory.mktemp("npm-image")
    try:
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(root / "opt/mcp"),
                               NPM_PACKAGE], capture_output=True, text=True, timeout=NPM_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"npm install {NPM_PACKAGE} took more than {NPM_TIMEOUT:g} s")
    assert done.returncode == 0, f"npm install {NPM_PACKAGE} failed:\n{done.stdout}{done.stderr}"
    return root


@dataclass
class Server:
    """A real MCP server as a plugin: how to write its image, and how its echo tool is called and answers."""

    kind: str
    image: Callable[[Mapping[str, Any]], Path]
    """Write an image holding this server as plugin `mcp`, and the given other plugins."""

    def echo(self, message: str) -> dict[str, Any]:
        return {"name": "echo", "arguments": {"message": message}}

    def echoed(self, result: dict[str, Any]) -> str:
        text = result["content"][0]["text"]
        return str(text.removeprefix("Echo: ") if self.kind == "npm" else text)


@pytest.fixture(params=["python", "npm"])
def mcp(request: pytest.FixtureRequest, plugrpc_image: Image) -> Server:
    keys = {"transport": "stdio", "handshake": INITIALIZE, "events": [">"]}
    if request.param == "python":
        def python_image(others: Mapping[str, Any]) -> Path:
            return plugrpc_image({"mcp": ("opt/server.py", PY_SERVER, MCP_EXPORTS, keys), **others})

        return Server("python", python_image)
    root: Path = request.getfixturevalue("npm_root")

    def npm_image(others: Mapping[str, Any]) -> Path:
        write_image(root, others)  # the other plugins, and a manifest with them only...
        entry = ["[plugin.mcp]", 'path = "/opt/mcp/node_modules/.bin/mcp-server-everything"', 'args = ["stdio"]',
                 f"exports = {toml_value(MCP_EXPORTS)}", *(f"{k} = {toml_value(v)}" for k, v in keys.items())]
        with open(root / ".plugin.toml", "a") as manifest:  # ...to which the installed server is added
            manifest.write("\n".join(entry) + "\n")
        return root

    return Server("npm", npm_image)


async def test_eight_callers_200_tool_calls_each_over_one_server_process(mcp: Server, plugrpc_router: Router) -> None:
    router = plugrpc_router(mcp.image({}))
    with router.client() as c:
        before = wait_until(lambda: running(c, "mcp"), "the server to answer its handshake")
    assert before["transport"] == "stdio" and before["handshake"]["protocolVersion"] == "2025-06-18"

    async def caller(n: int) -> list[str]:
        async with router.aclient() as client:
            calls = [client.raw("mcp.tools/call", mcp.echo(f"{n}-{i}")) for i in range(200)]
            return [mcp.echoed(result) for result in await asyncio.gather(*calls)]

    answers = await asyncio.wait_for(asyncio.gather(*(caller(n) for n in range(8))), 120)
    assert answers == [[f"{n}-{i}" for i in range(200)] for n in range(8)]
    with router.client() as c:
        after = row(c, "mcp")
        assert (after["pid"], after["restarts"], after["calls"]) == (before["pid"], 0, 1600)
        tools = {tool["name"] for tool in c.raw("mcp.tools/list")["tools"]}
        assert "echo" in tools


def test_kill_9_restarts_the_server_with_a_new_handshake(mcp: Server, plugrpc_router: Router) -> None:
    router = plugrpc_router(mcp.image({}))
    with router.client() as c:
        first = wait_until(lambda: running(c, "mcp"), "the server to answer its handshake")
        assert mcp.echoed(c.raw("mcp.tools/call", mcp.echo("before"))) == "before"
        os.kill(first["pid"], signal.SIGKILL)
        second = wait_until(lambda: running(c, "mcp", not_pid=first["pid"]), "a new server, handshake answered", 30)
        assert second["restarts"] == 1 and second["exit_reason"] == "crash" and second["last_exit"] == -signal.SIGKILL
        assert second["handshake"]["protocolVersion"] == "2025-06-18"
        assert mcp.echoed(c.raw("mcp.tools/call", mcp.echo("after"))) == "after"
        assert not alive(first["pid"])


def test_python_server_notifications_are_events_and_its_requests_are_answered(
        plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"py": ("opt/server.py", PY_SERVER, MCP_EXPORTS,
                                 {"transport": "stdio", "handshake": INITIALIZE, "events": ["notifications/message"]})})
    router = plugrpc_router(root)

    async def scenario() -> tuple[list[Any], Any, Any]:
        async with router.aclient() as c:
            async with c.subscribe("py.>") as events:
                said = await c.raw("py.tools/call", {"name": "shout", "arguments": {"message": "hello"}})
                event = await asyncio.wait_for(events.__anext__(), WAIT)
                pong = await c.raw("py.tools/call", {"name": "ping_client", "arguments": {}})
                return [event.name, event.data], said, pong

    (name, data), said, pong = asyncio.run(scenario())
    assert name == "py.notifications/message" and data["level"] == "info" and data["data"] == "hello"
    assert said["structuredContent"] == {"result": "hello"}
    assert pong["structuredContent"] == {"result": "pong"}
    assert "the server asked the router 'ping'; answered {}" in router.log()


# --- the scripted server: requests, notifications, routing, lifecycle ------------------------


def test_requests_from_the_server_are_answered_and_its_notifications_are_events(
        plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"s": scripted(events=["notifications/resources/updated", "classic"])})
    router = plugrpc_router(root)
    with router.client() as c:
        wait_until(lambda: running(c, "s"), "the handshake")
        assert row(c, "s")["handshake"]["params"] == {"hello": 1}
        ping, sampling = c.raw("s.ask")
        assert ping == {}
        assert sampling["code"] == -32601
        c.raw("s.ask")  # asked again: answered again, logged once
        assert c.raw("s.echo.a.b/c", {"x": 1}) == {"method": "echo.a.b/c", "params": {"x": 1}}  # split at the first dot

    async def events() -> list[tuple[str, Any]]:
        async with router.aclient() as c, c.subscribe("s.>") as sub:
            await c.raw("s.notify", {"uri": "file:///a"})
            return [(ev.name, ev.data) for ev in [await asyncio.wait_for(sub.__anext__(), WAIT) for _ in range(2)]]

    assert asyncio.run(events()) == [("s.notifications/resources/updated", {"uri": "file:///a"}),
                                     ("s.classic", {"uri": "file:///a"})]
    log = router.log()
    assert log.count("asked the router 'sampling/createMessage'; answered -32601") == 1
    assert "initialized" in log  # the handshake's notification reached the server, which said so on stderr


def test_method_with_dots_routes_at_the_first_dot(plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"s": scripted()})
    with plugrpc_router(root).client() as c:
        with pytest.raises(plugrpc.RpcError) as unknown:
            c.raw("s.echo.a")  # not exported
        assert unknown.value.code == -32601


def test_stop_closes_stdin_first_then_sigterm_then_sigkill(plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"polite": scripted(grace=5),
                          "stubborn": ("bin/stubborn.py", SCRIPTED, SCRIPTED_EXPORTS,
                                       {"transport": "stdio", "env": {"STDIO_STUBBORN": "1"}, "grace": 0.5})})
    router = plugrpc_router(root)
    with router.client() as c:
        polite = wait_until(lambda: running(c, "polite"), "polite to run")["pid"]
        stubborn = wait_until(lambda: running(c, "stubborn"), "stubborn to run")["pid"]
        wait_until(lambda: "initialized" in router.log(), "the handshake's notification")
    started = time.monotonic()
    assert router.stop() == 0
    took = time.monotonic() - started
    log = router.log()
    assert not alive(polite) and not alive(stubborn) and not descendants(router.pid)
    polite_lines = [line for line in log.splitlines() if f"[polite {polite}]" in line]
    assert any("stdin closed" in line for line in polite_lines)
    assert any("exited with exit code 0" in line for line in polite_lines), polite_lines  # on its own, no signal
    stubborn_lines = [line for line in log.splitlines() if f"{stubborn}" in line]
    assert any("sending SIGKILL" in line for line in stubborn_lines), stubborn_lines
    assert any("exited with signal SIGKILL" in line for line in stubborn_lines)
    assert took < 0.5 + 0.5 + 5  # stdin, grace, SIGTERM, grace, SIGKILL; polite did not need its grace


def test_liveness_pings_answered_with_method_not_found_keep_it_running(
        plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"s": scripted(ping_interval=0.1, ping_timeout=1)})
    with plugrpc_router(root).client() as c:
        pid = wait_until(lambda: running(c, "s"), "the handshake")["pid"]
        wait_until(lambda: row(c, "s")["pings"] >= 5, "five pings")
        info = row(c, "s")
        assert (info["pid"], info["restarts"], info["state"]) == (pid, 0, "running")


def test_lazy_idle_stop_reload_logs_and_pool_size(plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"s": scripted(lazy=True, idle_stop=0.5)})
    router = plugrpc_router(root)
    with router.client() as c:
        assert row(c, "s")["state"] == "stopped"
        first = c.raw("s.pid")  # starts it, handshake first
        assert row(c, "s")["handshake"]["pid"] == first
        wait_until(lambda: row(c, "s")["state"] == "stopped", "the idle stop")
        assert not alive(first)
        second = c.raw("s.pid")
        assert second != first
        # reload with another handshake: a new process, which got the new params
        text = (root / ".plugin.toml").read_text().replace("hello = 1", "hello = 2")
        (root / ".plugin.toml").write_text(text)
        assert c.raw("router.reload")["changed"] == ["s"]
        assert c.raw("s.pid") not in (first, second)
        assert row(c, "s")["handshake"]["params"] == {"hello": 2}
        logs = c.raw("router.logs", {"plugin": "s", "lines": 50})["lines"]
        assert any("scripted server" in line["text"] for line in logs)  # stderr is its log
    done = subprocess.run([sys.executable, "-m", "plugrpc", "logs", "--socket", str(router.socket), "s"],
                          capture_output=True, text=True, timeout=60)
    assert "scripted server" in done.stdout
    # pool_size must be 1: the manifest says which key
    (root / ".plugin.toml").write_text(text + "pool_size = 2\n")
    bad = subprocess.run([sys.executable, "-m", "plugrpc", "reload", "--socket", str(router.socket)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "pool_size" in bad.stderr


# --- faults: each beside a healthy plugin ----------------------------------------------------


def test_not_json_on_stdout_fails_the_call_and_restarts_the_process(
        plugrpc_image: Image, plugrpc_router: Router) -> None:
    router = plugrpc_router(plugrpc_image({"bad": scripted(), "ok": scripted()}))
    with router.client() as c:
        pid = wait_until(lambda: running(c, "bad"), "bad to run")["pid"]
        ok = wait_until(lambda: running(c, "ok"), "ok to run")["pid"]
        with pytest.raises(plugrpc.RpcError) as broken:
            asyncio.run(_garbage_with_call_in_flight(router))
        assert broken.value.code == -32001
        assert "not JSON" in broken.value.data["reason"]
        new = wait_until(lambda: running(c, "bad", not_pid=pid), "a new process")
        assert new["exit_reason"] == "protocol" and "Starting up... this is not JSON" in new["exit_detail"]
        assert c.raw("bad.echo", ["again"]) == ["again"]
        assert c.raw("ok.echo", ["fine"]) == ["fine"] and row(c, "ok")["pid"] == ok and row(c, "ok")["restarts"] == 0
    assert "wrote a line on stdout that is not JSON: b'Starting up... this is not JSON'" in router.log()


async def _garbage_with_call_in_flight(router: RouterProcess) -> None:
    async with router.aclient() as c:
        sleeping = asyncio.ensure_future(c.raw("bad.sleep", [5]))
        await asyncio.sleep(0.2)
        with pytest.raises(plugrpc.RpcError):  # its own call breaks too
            await c.raw("bad.garbage")
        await sleeping


@pytest.mark.parametrize("how", ["error", "silent"])
def test_a_failed_handshake_crash_loops_with_the_reason(how: str, plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"bad": scripted({"STDIO_HANDSHAKE": how}, timeout=0.5, grace=0.2), "ok": scripted()})
    router = plugrpc_router(root)
    with router.client(timeout=60) as c:
        assert row(c, "bad")["state"] in ("starting", "backoff")
        with pytest.raises(plugrpc.RpcError) as waited:
            c.raw("bad.echo", [1])  # waits while it is not ready: never written to a server that is not
        assert waited.value.code in (-32001, -32002)
        info = wait_until(lambda: running(c, "bad") or (row(c, "bad")["state"] == "crashloop" and row(c, "bad")),
                          "the crash loop", 30)
        assert info["state"] == "crashloop" and info["exit_reason"] == "handshake" and info["handshake"] is None
        why = "no answer to its handshake (initialize) within 0.5 s" if how == "silent" else \
            "its handshake (initialize) failed: {'code': -32602, 'message': 'unsupported protocol version'}"
        assert info["exit_detail"] == why
        with pytest.raises(plugrpc.RpcError) as failed:
            c.raw("bad.echo", [2])
        assert failed.value.code == -32001
        assert "crashloop" in failed.value.data["reason"] and why in failed.value.data["reason"]
        assert c.raw("ok.echo", ["fine"]) == ["fine"] and row(c, "ok")["restarts"] == 0


def test_death_mid_call_fails_each_call_once_and_runs_none_twice(
        plugrpc_image: Image, plugrpc_router: Router, plugrpc_tmp: Path) -> None:
    record = plugrpc_tmp / "record.txt"
    record.touch()
    router = plugrpc_router(plugrpc_image({"s": scripted({"STDIO_RECORD": str(record)}), "ok": scripted()}))

    async def scenario() -> list[Any]:
        clients = [router.aclient() for _ in range(8)]
        for client in clients:
            await client.__aenter__()
        try:
            calls = [asyncio.ensure_future(client.raw("s.record", [f"{n}-{i}", 30]))
                     for n, client in enumerate(clients) for i in range(5)]
            await _until(lambda: len(record.read_text().split()) == 40, "every call to reach the server")
            with pytest.raises(plugrpc.RpcError):
                await clients[0].raw("s.die")
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            for client in clients:
                await client.__aexit__(None, None, None)

    outcomes = asyncio.run(scenario())
    assert len(outcomes) == 40
    assert all(isinstance(o, plugrpc.RpcError) and o.code == -32001 for o in outcomes), outcomes
    with router.client() as c:
        wait_until(lambda: running(c, "s"), "the restarted server")
        assert c.raw("s.echo", ["alive"]) == ["alive"]
        assert row(c, "ok")["restarts"] == 0
    tokens = record.read_text().split()
    assert sorted(tokens) == sorted(f"{n}-{i}" for n in range(8) for i in range(5))  # each ran once, none again


async def _until(probe: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_a_notification_flood_and_a_slow_server_leave_the_others_alone(
        plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"flood": scripted(events=[">"]), "slow": scripted(timeout=0.5), "ok": scripted()})
    router = plugrpc_router(root)

    async def scenario() -> tuple[int, float, Any]:
        async with router.aclient() as c, router.aclient() as other, c.subscribe("flood.>", maxsize=10):
            flood = asyncio.ensure_future(c.raw("flood.flood", [200_000]))
            slow = asyncio.ensure_future(other.raw("slow.sleep", [5], timeout=WAIT))
            worst = 0.0
            while not flood.done():
                started = time.monotonic()
                assert await other.raw("ok.echo", ["x"], timeout=WAIT) == ["x"]
                worst = max(worst, time.monotonic() - started)
            with pytest.raises(plugrpc.RpcError) as timed_out:
                await slow
            return await flood, worst, timed_out.value.code

    sent, worst, code = asyncio.run(scenario())
    assert sent == 200_000 and code == -32002
    assert worst < 2.0  # a healthy plugin answers while another floods the router with notifications
    with router.client() as c:
        assert c.raw("router.stats")["events"]["emitted"] == 200_000
        assert all(row(c, name)["restarts"] == 0 for name in ("flood", "slow", "ok"))


# --- NATS -------------------------------------------------------------------------------------


def test_over_nats_calls_reach_a_stdio_server_and_its_notifications_are_published(
        plugrpc_image: Image, plugrpc_router: Router, plugrpc_tmp: Path) -> None:
    server = NatsServer(plugrpc_tmp)
    try:
        root = plugrpc_image({"s": scripted(events=["notifications/resources/updated"])})
        router = plugrpc_router(root, "--nats", server.url, "--name", "r1")
        with router.client() as c:
            wait_until(lambda: running(c, "s"), "the handshake")

        async def scenario() -> tuple[Any, Any, bytes]:
            bus = await nats_py.connect(server.url)
            try:
                sub = await bus.subscribe("plugrpc.event.r1.s.>")
                async with NatsClient(server.url, router="r1", timeout=10) as one, \
                        NatsClient(server.url, timeout=10) as any_router:
                    by_name = await one.raw("s.echo.a.b/c", [1])
                    by_plugin = await any_router.raw("s.echo", ["any"])
                    await one.raw("s.notify", {"uri": "file:///n"})
                    msg = await sub.next_msg(timeout=WAIT)
                    return by_name, by_plugin, msg.subject.encode() + b" " + msg.data
            finally:
                await bus.close()

        by_name, by_plugin, event = asyncio.run(scenario())
        assert by_name == {"method": "echo.a.b/c", "params": [1]} and by_plugin == ["any"]
        assert event.startswith(b"plugrpc.event.r1.s.notifications/resources/updated ")
        assert b'"file:///n"' in event
    finally:
        server.stop()
