"""Direct calls: `router.connect` hands a caller a connection of its own to a plugin, and the client uses it.

Through real routers (`plugrpc run`), SDK plugins and sockets: calls keep `raw()`'s semantics on the
direct connection; the router bounds what one caller can broker, ends the connections it handed out
when the plugin dies or a reload changes it, hands nothing to a refused peer, and says "unsupported"
or "disabled" where a client must call through the router instead.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

import plugrpc
from plugrpc.testing import RouterProcess, write_image

from plugins.sources import KITCHEN, KITCHEN_EXPORTS
from util import PLUGINS, WAIT, until, wait_until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]

MARKER = '''
#!/usr/bin/env python3
import asyncio, os
import plugrpc

async def mark(key, seconds):
    fd = os.open(os.environ["MARKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{key}\\n".encode())
    os.close(fd)
    await asyncio.sleep(seconds)
    return key

def pid():
    return os.getpid()

plugrpc.serve({"mark": mark, "pid": pid})
'''
EXEC_PLUGIN = '''
#!/bin/sh
printf '20:::"%s"\\n:::' "$1"
'''
STUB = (PLUGINS / "direct_stub.py").read_text()
FAST_PINGS = {"ping_interval": 0.2, "ping_timeout": 5}


def broker(path: Path, plugin: str, id: int = 1) -> tuple[Any, list[int], socket.socket]:
    """`router.connect` by hand on a new connection: the answer, the descriptors it carried, and that broker
    connection, which the caller keeps open for as long as it uses them (its end ends them)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect(os.fspath(path))
    sock.sendall(request("router.connect", {"plugin": plugin}, id))
    msg, fds = read_answer(sock)
    return msg, fds, sock


def request(method: str, params: Any, id: int) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": id}) + b"\n"


def read_answer(sock: socket.socket, buf: bytearray | None = None) -> tuple[Any, list[int]]:
    """One line from `sock` (what is left of it stays in `buf`) and any descriptors that came with it."""
    buf = buf if buf is not None else bytearray()
    fds: list[int] = []
    while b"\n" not in buf:
        data, got, _flags, _addr = socket.recv_fds(sock, 1 << 16, 8)
        fds += got
        if not data:
            raise ConnectionError(f"closed; buffered {bytes(buf[:200])!r}")
        buf += data
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return orjson.loads(line), fds


def ask(sock: socket.socket, msg: bytes) -> Any:
    sock.sendall(msg)
    return read_answer(sock)[0]


def row(client: plugrpc.BlockingClient, name: str) -> dict[str, Any]:
    return next(p for p in client.raw("router.plugins") if p["name"] == name)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- calls on a direct connection -------------------------------------------------------------


def test_direct_calls_keep_raws_semantics_and_leave_the_router_out(plugrpc_image: Image,
                                                                    plugrpc_router: Router) -> None:
    root = plugrpc_image({"k": ("k.py", KITCHEN, KITCHEN_EXPORTS, FAST_PINGS)})
    router = plugrpc_router(root)

    async def main() -> None:
        async with plugrpc.Client(router.socket, direct=True, timeout=WAIT) as c:
            assert await c.raw("k.echo", [1, "two"]) == [1, "two"]
            assert await asyncio.wait_for(asyncio.gather(*(c.raw("k.subtract", [i, 1]) for i in range(300))),
                                          WAIT) == list(range(-1, 299))
            with pytest.raises(plugrpc.RpcError) as info:
                await c.raw("k.boom")
            assert info.value.code == -32603 and "boom" in str(info.value.data)
            with pytest.raises(plugrpc.RpcError) as info:
                await c.raw("k.hidden")  # served by the plugin, not exported: refused on the direct connection too
            assert info.value.code == -32601
            started = time.monotonic()
            with pytest.raises(plugrpc.CallTimeout):
                await c.raw("k.sleep", [5], timeout=0.3)  # the client's timeout; rpc.cancel goes to the plugin
            assert time.monotonic() - started < 2
            assert await asyncio.gather(*(c.raw("k.sleep", [0.3]) for _ in range(20))) == [0.3] * 20
            assert await c.raw("k.peak") >= 20  # they ran side by side
            pid = await c.raw("k.pid")
            plugins = {p["name"]: p for p in await c.raw("router.plugins")}  # a built-in: through the router
            k = plugins["k"]
            assert k["pid"] == pid and k["calls"] == 0  # the router saw none of those calls
            assert k["direct"]["connections"] == 1
            # the plugin's own figures come with its answer to the router's ping
            figures = await until(lambda: _direct_calls(c), "the plugin's figures in router.plugins")
            assert figures["calls"] >= 320 and figures["errors"] >= 2
            stats = await c.raw("router.stats")
            assert stats["plugins"]["k"]["direct"]["connections"] == 1

    asyncio.run(main())
    with plugrpc.BlockingClient(router.socket, direct="require", timeout=WAIT) as c:
        assert c.raw("k.echo", {"a": 1}) == {"a": 1}
    out = subprocess.run([sys.executable, "-m", "plugrpc", "call", "--socket", str(router.socket), "--direct",
                          "k.echo", "[3]"], capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0 and out.stdout.strip() == "[3]", out.stderr


async def _direct_calls(c: plugrpc.Client) -> dict[str, Any] | None:
    rows = {p["name"]: p for p in await c.raw("router.plugins")}
    figures: dict[str, Any] = rows["k"]["direct"]
    return figures if (figures["calls"] or 0) >= 320 else None


def test_progress_reaches_a_direct_caller(plugrpc_image: Image, plugrpc_router: Router) -> None:
    source = '''
    #!/usr/bin/env python3
    import asyncio
    import plugrpc

    async def count(n):
        for i in range(n):
            plugrpc.progress(i)
            await asyncio.sleep(0.01)
        return n

    plugrpc.serve({"count": count})
    '''
    router = plugrpc_router(plugrpc_image({"p": ("p.py", source, ["count"])}))

    async def main() -> None:
        async with plugrpc.Client(router.socket, direct="require", timeout=WAIT) as c:
            seen: list[int] = []
            assert await c.raw("p.count", [5], progress=seen.append) == 5
            assert seen == [0, 1, 2, 3, 4]

    asyncio.run(main())


# --- bounds ---------------------------------------------------------------------------------------


def test_brokering_thousands_is_bounded_per_connection_and_per_plugin(plugrpc_image: Image,
                                                                      plugrpc_router: Router) -> None:
    root = plugrpc_image({"k": ("k.py", KITCHEN, KITCHEN_EXPORTS, {"max_direct": 100})})
    router = plugrpc_router(root)
    before = fd_count(router.pid)
    first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    held: list[int] = []
    try:
        for sock in (first, second):
            sock.settimeout(WAIT * 3)
            sock.connect(os.fspath(router.socket))
        answers: dict[str, list[Any]] = {}
        for name, sock, count in (("first", first, 2000), ("second", second, 200)):
            sock.sendall(b"".join(request("router.connect", {"plugin": "k"}, i) for i in range(count)))
            buf = bytearray()
            got = []
            for _ in range(count):
                msg, fds = read_answer(sock, buf)
                got.append(msg)
                held += fds
            answers[name] = got
            assert len(held) == sum("result" in msg for got in answers.values() for msg in got)  # one each
        ok = {name: sum("result" in msg for msg in got) for name, got in answers.items()}
        assert ok == {"first": 64, "second": 36}  # 64 per broker connection, then max_direct = 100 for the plugin
        refusals = [msg["error"] for got in answers.values() for msg in got if "error" in msg]
        assert {err["code"] for err in refusals} == {-32003}
        assert any("max_direct" in err["data"]["reason"] for err in refusals)
        # the router holds one copy per connection handed out, and nothing for the refusals
        assert fd_count(router.pid) - before <= 100 + 2 + 8
        # every one of them works, on its own
        one = socket.socket(fileno=held[0])
        held.pop(0)
        one.settimeout(WAIT)
        assert ask(one, request("echo", [7], 5))["result"] == [7]
        one.close()
        # the broker connection's end ends what it brokered: the router's copies go, and the plugin's ends
        first.close()
        wait_until(lambda: fd_count(router.pid) - before <= 36 + 1 + 8, "the router's copies to be closed")
        with router.client() as c:
            assert c.raw("k.echo", [1]) == [1]
            assert row(c, "k")["direct"]["connections"] == 36
    finally:
        for fd in held:
            os.close(fd)
        first.close()
        second.close()


# --- a caller's bad input on its own connection ----------------------------------------------------


def test_garbage_a_huge_line_and_unexported_methods_affect_only_that_connection(plugrpc_image: Image,
                                                                                plugrpc_router: Router) -> None:
    small = KITCHEN.replace('"hidden": hidden})', '"hidden": hidden}, max_line=1 << 20)')
    assert small != KITCHEN
    root = plugrpc_image({"k": ("k.py", small, KITCHEN_EXPORTS)})
    router = plugrpc_router(root)
    with router.client() as c, plugrpc.BlockingClient(router.socket, direct="require", timeout=WAIT) as d:
        pid = c.raw("k.pid")
        assert d.raw("k.echo", [0]) == [0]
        msg, fds, held = broker(router.socket, "k")
        assert msg["result"] == {"plugin": "k", "exports": KITCHEN_EXPORTS} and len(fds) == 1
        with held, socket.socket(fileno=fds[0]) as bad:
            bad.settimeout(WAIT)
            assert ask(bad, b"this is not json\n")["error"]["code"] == -32700
            assert ask(bad, request("hidden", [], 1))["error"]["code"] == -32601
            assert ask(bad, request("rpc.direct", {"exports": ["hidden"], "max_inflight": 0}, 2))["error"]["code"] \
                == -32600  # it stays bound to what the router gave it
            assert ask(bad, request("echo", ["still here"], 3))["result"] == ["still here"]
        msg, fds, held = broker(router.socket, "k")
        with held, socket.socket(fileno=fds[0]) as huge:
            huge.settimeout(WAIT)
            try:
                huge.sendall(b'{"jsonrpc":"2.0","method":"echo","params":["' + b"x" * (2 << 20) + b'"],"id":1}\n')
            except (BrokenPipeError, ConnectionResetError):
                pass
            with pytest.raises((ConnectionError, OSError)):
                while True:
                    answer, _ = read_answer(huge)
                    assert answer["error"]["code"] in (-32004, -32700)
        # the plugin, the router's path and the other direct connection go on
        assert d.raw("k.echo", [1]) == [1]
        assert c.raw("k.echo", [2]) == [2]
        assert c.raw("k.pid") == pid


# --- faults ---------------------------------------------------------------------------------------


def test_kill_9_fails_direct_calls_in_flight_once_and_the_next_call_brokers_anew(
        plugrpc_image: Image, plugrpc_router: Router, plugrpc_tmp: Path) -> None:
    marks = plugrpc_tmp / "marks"
    root = plugrpc_image({"m": ("m.py", MARKER, ["mark", "pid"], {"env": {"MARKS": str(marks)}})})
    router = plugrpc_router(root)

    async def main() -> None:
        async with plugrpc.Client(router.socket, direct="require", timeout=30) as c:
            pid = await c.raw("m.pid")
            calls = [asyncio.ensure_future(c.raw("m.mark", [f"k{i}", 20])) for i in range(20)]
            await until(lambda: marks.exists() and len(marks.read_text().split()) == 20, "the 20 calls to start")
            os.kill(pid, signal.SIGKILL)
            started = time.monotonic()
            outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), WAIT)
            assert time.monotonic() - started < 5
            assert all(isinstance(o, plugrpc.PluginUnavailable) for o in outcomes), outcomes
            assert all(o.data["plugin"] == "m" for o in outcomes if isinstance(o, plugrpc.RpcError))
            new_pid = await asyncio.wait_for(c.raw("m.pid"), WAIT)  # brokered again, to the next process
            assert new_pid != pid
            assert await c.raw("m.mark", ["after", 0]) == "after"
        keys = marks.read_text().split()
        assert len(keys) == len(set(keys)) == 21  # none ran twice

    asyncio.run(main())


def test_a_reload_that_changes_exports_revokes_while_calls_run(plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"k": ("k.py", KITCHEN, KITCHEN_EXPORTS)})
    router = plugrpc_router(root)

    async def main() -> None:
        async with plugrpc.Client(router.socket, direct=True, timeout=30) as c, \
                plugrpc.Client(router.socket, timeout=30) as admin:
            calls = [asyncio.ensure_future(c.raw("k.sleep", [20])) for _ in range(5)]
            await until(lambda: _connections(admin, "k"), "the direct connection")
            write_image(root, {"k": ("k.py", KITCHEN, [*KITCHEN_EXPORTS, "hidden"])})
            started = time.monotonic()
            reload = asyncio.ensure_future(admin.raw("router.reload"))
            outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), WAIT)
            assert all(isinstance(o, plugrpc.PluginUnavailable) for o in outcomes), outcomes
            assert time.monotonic() - started < 5
            assert (await asyncio.wait_for(reload, WAIT))["changed"] == ["k"]
            assert await asyncio.wait_for(c.raw("k.hidden"), WAIT) == "secret"  # brokered anew, new exports
            assert await _connections(admin, "k") == 1

    asyncio.run(main())


async def _connections(c: plugrpc.Client, name: str) -> int:
    rows = {p["name"]: p for p in await c.raw("router.plugins")}
    return int(rows[name]["direct"]["connections"])


# --- who gets nothing ------------------------------------------------------------------------------


def test_a_refused_uid_gets_a_json_error_and_no_descriptor(plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({"k": ("k.py", KITCHEN, KITCHEN_EXPORTS)})
    router = plugrpc_router(root, "--allow-uid", str(os.getuid() + 1))
    msg, fds, held = broker(router.socket, "k")
    held.close()
    assert fds == []
    assert msg["error"]["code"] == -32600 and "may not use this socket" in msg["error"]["data"]["reason"]


def test_stdio_exec_and_plugins_without_rpc_direct_are_unsupported_and_the_client_falls_back(
        plugrpc_image: Image, plugrpc_router: Router) -> None:
    root = plugrpc_image({
        "x": ("x.sh", EXEC_PLUGIN, ["echo"], {"mode": "exec"}),
        "s": ("s.py", (PLUGINS / "stdio_server.py").read_text(), ["echo"], {"transport": "stdio"}),
        "old": ("old.py", STUB, ["echo"], {"env": {"STUB_NO_DIRECT": "1"}}),
    })
    router = plugrpc_router(root)
    reasons = {}
    for name in ("x", "s", "old"):
        msg, fds, held = broker(router.socket, name)
        held.close()
        assert fds == []
        error = msg["error"]
        assert error["code"] == -32001 and error["data"]["direct"] == "unsupported" and error["data"]["plugin"] == name
        reasons[name] = error["data"]["reason"]
    assert "exec" in reasons["x"] and "stdio" in reasons["s"] and "-32601" in reasons["old"]
    with plugrpc.BlockingClient(router.socket, direct=True, timeout=WAIT) as c:
        assert c.raw("x.echo", {}) == "echo"
        assert c.raw("s.echo", {"a": 1}) == {"a": 1}
        assert c.raw("old.echo", ["v"]) == "v"
        assert c.raw("old.echo", ["w"]) == "w"  # remembered: no second broker
        rows = {p["name"]: p for p in c.raw("router.plugins")}
        assert rows["old"]["calls"] == 2 and rows["old"]["direct"]["connections"] == 0
    with plugrpc.BlockingClient(router.socket, direct="require", timeout=WAIT) as c:
        with pytest.raises(plugrpc.PluginUnavailable) as info:
            c.raw("old.echo", ["v"])
        assert info.value.data["direct"] == "unsupported"


@pytest.mark.parametrize("how", ["--no-direct", "direct = false"])
def test_turned_off_is_disabled_and_the_client_falls_back(plugrpc_image: Image, plugrpc_router: Router,
                                                         how: str) -> None:
    keys = {"direct": False} if how == "direct = false" else {}
    router = plugrpc_router(plugrpc_image({"k": ("k.py", KITCHEN, KITCHEN_EXPORTS, keys)}),
                            *(["--no-direct"] if how == "--no-direct" else []))
    msg, fds, held = broker(router.socket, "k")
    held.close()
    assert fds == []
    assert msg["error"]["code"] == -32001 and msg["error"]["data"]["direct"] == "disabled"
    assert how in msg["error"]["data"]["reason"]
    with plugrpc.BlockingClient(router.socket, direct=True, timeout=WAIT) as c:
        assert c.raw("k.echo", [1]) == [1]
        assert row(c, "k")["calls"] == 1
    with plugrpc.BlockingClient(router.socket, direct="require", timeout=WAIT) as c:
        with pytest.raises(plugrpc.PluginUnavailable) as info:
            c.raw("k.echo", [1])
        assert info.value.data["direct"] == "disabled"


def test_nats_clients_have_no_direct_calls() -> None:
    with pytest.raises(ValueError, match="NATS"):
        plugrpc.Client("nats://127.0.0.1:4222", direct=True)


def test_a_batch_cannot_carry_a_descriptor(plugrpc_image: Image, plugrpc_router: Router) -> None:
    router = plugrpc_router(plugrpc_image({"k": ("k.py", KITCHEN, KITCHEN_EXPORTS)}))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(os.fspath(router.socket))
        sock.sendall(b"[" + request("router.connect", {"plugin": "k"}, 1).strip() + b"]\n")
        (msg,), fds = read_answer(sock)
    assert fds == [] and msg["error"]["code"] == -32600


