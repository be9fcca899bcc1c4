"""Doing each fault of the schedule. A fault that finds nothing to hit (a plugin with no process just
then) is counted as skipped; whatever it does to calls is judged by the tally as for any call."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

import plugrpc
from plugrpc.errors import RpcError

from .callers import LOST_AFTER, RawConn, client_call, judge_raw, request
from .plugins import Plugin, write_manifest
from .schedule import Fault
from .system import NatsServer, Routers
from .tally import Tally, undocumented

EXTRA: Final = Plugin("extra", "plain.py", keys={"timeout": 5})
"""The plugin reloads add and remove."""
SETTLE: Final = 20.0
"""Seconds a fault client waits for the router to answer or close before it calls that a hang."""


@dataclass
class Image:
    """The main router's image as the reloads change it."""

    root: Path
    ledger: Path
    plugins: list[Plugin]
    flex_version: int = 0

    def change(self, how: str) -> None:
        names = {p.name for p in self.plugins}
        if how == "add" and "extra" not in names:
            self.plugins.append(EXTRA)
        elif how == "remove":
            self.plugins = [p for p in self.plugins if p.name != "extra"]
        elif how == "modify":
            self.flex_version += 1
            self.plugins = [_with_version(p, self.flex_version) if p.name == "flex" else p for p in self.plugins]
        write_manifest(self.root, self.plugins, self.ledger)


def _with_version(plugin: Plugin, version: int) -> Plugin:
    env = {**plugin.keys.get("env", {}), "SOAK_VERSION": str(version)}
    return Plugin(plugin.name, plugin.script, plugin.exports, {**plugin.keys, "env": env})


@dataclass
class Faults:
    """What the faults act on: the main router's socket and image, a control client, NATS and the fleet."""

    socket: Path
    image: Image
    control: plugrpc.Client
    tally: Tally
    routers: Routers
    nats: NatsServer | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self, fault: Fault) -> None:
        """Run `fault` in the background: faults overlap."""
        action: Callable[[dict[str, Any]], Awaitable[bool]] = getattr(self, fault.kind)
        task = asyncio.create_task(self._run(fault, action))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, fault: Fault, action: Callable[[dict[str, Any]], Awaitable[bool]]) -> None:
        try:
            done = await action(fault.args)
        except Exception as exc:
            self.tally.violate("the soak itself", f"fault {fault.describe()} failed: {exc!r}")
            return
        (self.tally.faults if done else self.tally.skipped)[fault.kind] += 1

    async def wait(self) -> None:
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def pid(self, plugin: str) -> int | None:
        rows = await self.control.raw("router.plugins", timeout=10)
        return next((row.get("pid") for row in rows if row["name"] == plugin), None)

    # --- plugins -------------------------------------------------------------------------------

    async def kill9(self, args: dict[str, Any]) -> bool:
        return await self._signal(args["plugin"], signal.SIGKILL)

    async def stop(self, args: dict[str, Any]) -> bool:
        pid = await self.pid(args["plugin"])
        if pid is None or not _kill(pid, signal.SIGSTOP):
            return False
        await asyncio.sleep(args["seconds"])
        _kill(pid, signal.SIGCONT)  # if the router has not killed it meanwhile
        return True

    async def _signal(self, plugin: str, sig: int) -> bool:
        pid = await self.pid(plugin)
        return pid is not None and _kill(pid, sig)

    async def memhog(self, args: dict[str, Any]) -> bool:
        """A call that allocates past memhog's memory limit: it dies alone, the call fails -32001."""
        async with plugrpc.Client(self.socket) as client:
            call = self.tally.call("memhog.hog", "memhog")
            try:
                await client.raw("memhog.hog", [512], timeout=LOST_AFTER)
                self.tally.violate("memory limit", "memhog.hog(512) passed its 160 MiB limit", call)
            except RpcError as exc:
                self.tally.error(call, exc.to_error())
        return True

    async def relay_kill(self, args: dict[str, Any]) -> bool:
        """Calls relayed by `relay` to `aio`, aio killed while they run."""
        async with plugrpc.Client(self.socket) as client:
            calls = []
            for _ in range(args["calls"]):
                call = self.tally.call("relay.relay", "relay_kill")
                calls.append(client_call(client, call, {"token": call.token, "target": "aio", "sleep": 1.0},
                                         self.tally, False))
            running = asyncio.gather(*calls)
            await asyncio.sleep(args["after"])
            killed = await self._signal("aio", signal.SIGKILL)
            await running
        return killed

    async def reload(self, args: dict[str, Any]) -> bool:
        self.image.change(args["change"])
        try:
            await self.control.raw("router.reload", timeout=60)
        except RpcError as exc:
            self.tally.violate("reloads succeed", f"router.reload ({args['change']}) failed: {exc}")
        return True

    # --- clients -------------------------------------------------------------------------------

    async def _raw(self, name: str) -> RawConn:
        return await RawConn(name, self.tally).open(self.socket)

    def _calls(self, conn: RawConn, n: int, sleep: float) -> list[tuple[Any, Any]]:
        out = []
        for i in range(n):
            call = self.tally.call("aio.work" if i % 2 else "plain.work", conn.name)
            out.append((call, {"token": call.token, "sleep": sleep}))
        return out

    async def disconnect(self, args: dict[str, Any]) -> bool:
        """A client that leaves with calls in flight: they are abandoned, nothing else may notice."""
        conn = await self._raw("disconnect")
        calls = self._calls(conn, args["calls"], 0.5)
        conn.send(calls)
        await asyncio.sleep(args["after"])
        conn.abort()
        await conn.close()
        for call, _ in calls:
            self.tally.end(call, abandoned=True)
        return True

    async def half_close(self, args: dict[str, Any]) -> bool:
        """Calls, then shutdown(SHUT_WR): every call is answered, then the router closes."""
        conn = await self._raw("half_close")
        calls = self._calls(conn, args["calls"], 0.2)
        futures = conn.send(calls)
        assert conn.writer is not None
        conn.writer.write_eof()
        await asyncio.gather(*(judge_raw(conn, call, f) for (call, _), f in zip(calls, futures, strict=True)))
        assert conn.task is not None
        try:
            await asyncio.wait_for(asyncio.shield(conn.task), SETTLE)
        except TimeoutError:
            self.tally.violate("a half-closed connection is answered, then closed",
                               f"still open {SETTLE:g}s after its last answer")
        await conn.close()
        return True

    async def never_read(self, args: dict[str, Any]) -> bool:
        """A client that writes calls as fast as the router takes them and never reads an answer."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, os.fspath(self.socket))
            deadline = loop.time() + args["seconds"]
            n = 0
            while loop.time() < deadline:
                token = self.tally.token("never_read")
                line = orjson.dumps(request("plain.work", {"token": token}, n)) + b"\n"
                try:
                    sock.send(line)  # a short write leaves half a line: the router sees the close
                except BlockingIOError:
                    await asyncio.sleep(0.05)  # the router stopped reading us: backpressure
                    continue
                self.tally.made += 1
                self.tally.abandoned += 1
                n += 1
                if n % 100 == 0:
                    await asyncio.sleep(0)
        finally:
            sock.close()
        return True

    async def garbage(self, args: dict[str, Any]) -> bool:
        """Lines that are not JSON-RPC, then a good call: errors for the first, the answer for the last."""
        rng = random.Random(args["salt"])
        conn = await self._raw("garbage")
        assert conn.writer is not None
        conn.writer.write(b"".join(_garbage(rng) + b"\n" for _ in range(args["lines"])))
        calls = self._calls(conn, 1, 0.0)
        [future] = conn.send(calls)
        await judge_raw(conn, calls[0][0], future)
        for error in conn.stray_errors:
            problem = undocumented(error)
            if problem is not None:
                self.tally.violate("errors are documented, with a reason", f"to garbage: {problem}")
        await conn.close()
        return True

    async def huge_line(self, args: dict[str, Any]) -> bool:
        """A request line past --max-line: -32004, then the router closes the connection."""
        conn = await self._raw("huge_line")
        assert conn.writer is not None and conn.task is not None
        call = self.tally.call("plain.work", conn.name)
        blob = "x" * int(args["mib"] * (1 << 20))
        conn.writer.write(orjson.dumps(request("plain.work", {"token": call.token, "blob": blob}, 1)) + b"\n")
        with contextlib.suppress(ConnectionError):
            await conn.writer.drain()
        try:
            await asyncio.wait_for(asyncio.shield(conn.task), SETTLE)
        except TimeoutError:
            self.tally.violate("a line past --max-line closes its connection", f"still open after {SETTLE:g}s", call)
        codes = [e.get("code") for e in conn.stray_errors]
        if codes and codes != [-32004]:
            self.tally.violate("a line past --max-line gets -32004", f"got {conn.stray_errors!r:.300}", call)
        self.tally.end(call)
        await conn.close()
        return True

    async def event_flood(self, args: dict[str, Any]) -> bool:
        """Subscribers that never read (not even the answer to their subscribe), while aio emits thousands."""
        stuck = [_subscribe_and_never_read(self.socket) for _ in range(args["stuck"])]
        try:
            async with plugrpc.Client(self.socket) as client:
                call = self.tally.call("aio.flood", "event_flood")
                try:
                    await client.raw("aio.flood", [args["events"]], timeout=LOST_AFTER)
                    self.tally.answered += 1
                except RpcError as exc:
                    self.tally.error(call, exc.to_error())
            await asyncio.sleep(args["seconds"])
        finally:
            for sock in stuck:
                sock.close()
        return True

    # --- NATS ----------------------------------------------------------------------------------

    async def nats_restart(self, args: dict[str, Any]) -> bool:
        assert self.nats is not None
        await asyncio.to_thread(self.nats.kill)
        await asyncio.sleep(args["down"])
        await asyncio.to_thread(self.nats.start)
        return True

    async def router_kill9(self, args: dict[str, Any]) -> bool:
        name = args["router"]
        await asyncio.to_thread(self.routers.kill9, name)
        await asyncio.sleep(args["down"])
        await asyncio.to_thread(self.routers.restart, name)
        return True


def _kill(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _subscribe_and_never_read(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(os.fspath(path))
    sock.sendall(orjson.dumps(request("router.subscribe", {"events": ["aio.>"], "progress": True}, 0)) + b"\n")
    return sock


GARBAGE: Final = [b"this is not json", b"{\"jsonrpc\": \"2.0\"", b"[]", b"{\"jsonrpc\": \"2.0\", \"id\": {}}",
                  b"\xff\xfe\xfd", b"{\"jsonrpc\": \"1.0\", \"method\": \"plain.work\", \"id\": \"garbage\"}", b"42",
                  b"{\"method\": 5, \"id\": null}", b"[1, 2, 3]", b"\"just a string\""]


def _garbage(rng: random.Random) -> bytes:
    if rng.random() < 0.7:
        return rng.choice(GARBAGE)
    return bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))).replace(b"\n", b" ")
