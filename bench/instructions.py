"""Instructions per call of the router's Python path, next to the bare parsing router's: a count
that does not move with the machine's noise (`valgrind --tool=callgrind` counts instructions).

    python -m bench.instructions [--callers 64] [--turns 200]

Both routers run in this process with their real classes on fake transports (a write is a list
append): each loop turn, every caller's connection gets one request line, the turn ends (the
outboxes flush the requests to the plugin's connection), the plugin's answers come back in one
chunk, the turn ends again (the answers go out). The plugin's answers are built before counting
starts, so only the routers' own work is counted. Each router is counted at `turns` and at
`2 * turns` under callgrind; the difference over `turns * callers` is its cost per call, start-up
and teardown cancelling out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
import uvloop

PARAMS = {"data": "x" * 89}
"""100 B of params, as in the bench's latency rows."""


class FakeTransport(asyncio.Transport):
    """Keeps what is written; never pauses."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []

    def write(self, data: Any) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _request(n: int) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "method": "bench.echo", "params": PARAMS, "id": n}) + b"\n"


def _answers(first_uid: int, callers: int) -> bytes:
    """The plugin's answers to the uids `first_uid ..` of one turn, as one chunk."""
    return b"".join(orjson.dumps({"jsonrpc": "2.0", "result": PARAMS, "id": uid}) + b"\n"
                    for uid in range(first_uid, first_uid + callers))


async def _drive(fronts: list[Any], upstream: Any, turns: int, uid_base: int) -> None:
    callers = len(fronts)
    chunks = [_answers(uid_base + t * callers, callers) for t in range(turns)]
    requests = [_request(i) for i in range(callers)]
    for chunk in chunks:
        for front, line in zip(fronts, requests, strict=True):
            front.data_received(line)
        await asyncio.sleep(0)  # the turn ends: requests leave for the plugin in one write
        upstream.data_received(chunk)
        await asyncio.sleep(0)  # and the answers for their clients
    answered = [b"".join(front.transport.out).count(b'"result"') for front in fronts]
    if answered != [turns] * callers:
        raise SystemExit(f"the router did not answer every call: {answered}")


async def plugrpc_router(callers: int, turns: int) -> None:
    """plugrpc's router: Router.handle, a PluginPool with one Upstream, FrontProtocols; every feature on."""
    from types import SimpleNamespace

    from plugrpc.config import Config
    from plugrpc.manifest import Manifest, PluginSpec
    from plugrpc.process.runtime_dir import RuntimeDir
    from plugrpc.process.supervisor import PluginState
    from plugrpc.router.front import FrontProtocol
    from plugrpc.router.pool import PluginPool, Upstream
    from plugrpc.router.routing import Router

    tmp = Path(tempfile.mkdtemp(prefix="plugrpc-instructions-"))
    runtime = RuntimeDir(tmp)
    try:
        spec = PluginSpec(name="bench", path=Path(sys.executable), exports=("echo",))
        config = Config(root=tmp, socket=tmp / "r.sock")
        router = Router(config, Manifest(tmp, tmp / ".plugin.toml", {"bench": spec}), runtime)
        # The supervisor's side of a running plugin: what the pool reads on every call.
        running = SimpleNamespace(state=PluginState.RUNNING, available=True, touch=lambda: None)
        pool = PluginPool(spec, tmp / "bench.sock", running, router.outbox, config.max_line)  # type: ignore[arg-type]
        upstream = Upstream(pool)
        upstream.connection_made(FakeTransport())
        pool.conns.append(upstream)
        pool._fast = upstream
        router.routes["bench"] = pool
        fronts = [FrontProtocol(router, config) for _ in range(callers)]
        for front in fronts:
            front.connection_made(FakeTransport())
        await _drive(fronts, upstream, turns, uid_base=1)
    finally:
        runtime.remove()
        os.rmdir(tmp)


async def bare_router(callers: int, turns: int) -> None:
    """bench.baselines' bare parsing router: parse, route by prefix, remap ids, coalesce; no features."""
    from plugrpc.outbox import Outbox

    from .baselines import BareRouterFront, _RouterUpstream

    outbox = Outbox()
    upstream = _RouterUpstream(outbox, asyncio.Event())
    upstream.connection_made(FakeTransport())
    fronts = [BareRouterFront(outbox, {"bench": upstream}) for _ in range(callers)]
    for front in fronts:
        front.connection_made(FakeTransport())
    await _drive(fronts, upstream, turns, uid_base=1)


ROUTERS = {"router": plugrpc_router, "bare_router": bare_router}


def count(which: str, callers: int, turns: int) -> int:
    """Instructions callgrind counts for one run of `which` (the whole process)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
                        "bench.instructions", "--run", which, "--callers", str(callers), "--turns", str(turns)],
                       check=True, capture_output=True, timeout=900,
                       env={**os.environ, "PYTHONHASHSEED": "0"})  # the same hashes, the same count
        total = re.search(rb"^(?:summary|totals): (\d+)", out.read_bytes(), re.M)
        assert total is not None, "callgrind wrote no total"
        return int(total.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--only", choices=sorted(ROUTERS), help="count this router only")
    parser.add_argument("--run", choices=sorted(ROUTERS), help=argparse.SUPPRESS)  # one counted run
    args = parser.parse_args()
    if args.run:
        uvloop.run(ROUTERS[args.run](args.callers, args.turns))
        return
    calls = args.callers * args.turns
    per_call = {}
    for which in [args.only] if args.only else ROUTERS:
        per_call[which] = (count(which, args.callers, 2 * args.turns) - count(which, args.callers, args.turns)) / calls
        print(f"{which:12} {per_call[which]:10,.0f} instructions per call ({args.callers} callers)", flush=True)
    if len(per_call) == 2:
        print(f"router / bare_router: {per_call['router'] / per_call['bare_router']:.3f}")


if __name__ == "__main__":
    main()
