"""Deadlines over NATS (router/deadline.py): a request past its `Plugrpc-Deadline` is answered -32002
unread and never runs; one whose deadline passes while it waits in the router never starts. The
router runs in this loop on a real nats-server, reached with bare nats-py requests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from plugrpc import codes
from plugrpc.config import Config
from plugrpc.nats_link import DEADLINE
from plugrpc.router.server import Server

from util import NatsServer, req, run_server, until

Image = Callable[..., Path]
SLEEPER = """
#!/usr/bin/env python3
import asyncio
import plugrpc

RAN = []

async def nap(n, seconds=0.0):
    RAN.append(n)
    await asyncio.sleep(seconds)
    return n

plugrpc.serve({"nap": nap, "ran": lambda: RAN})
"""


@contextlib.asynccontextmanager
async def router_on(nats_url: str, root: Path, tmp: Path) -> AsyncIterator[Server]:
    """The router in this loop with `--nats nats_url --name t1`, once it has registered on NATS."""
    async with run_server(Config(root=root, socket=tmp / "r.sock", nats=nats_url, name="t1")) as server:
        await until(lambda: server.bridge is not None and server.bridge.service is not None, "the router on NATS")
        yield server


@contextlib.asynccontextmanager
async def bare(url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


def deadline(seconds: float) -> dict[str, str]:
    """The header of a call whose caller waits `seconds` more (negative: gave up that long ago)."""
    return {DEADLINE: str(int((time.time() + seconds) * 1000))}


@pytest.fixture
def nats_url(nats_server: Callable[..., NatsServer]) -> str:
    return str(nats_server().url)


async def test_a_request_past_its_deadline_is_answered_unread_and_never_runs(nats_url: str, plugrpc_image: Image,
                                                                           plugrpc_tmp: Path) -> None:
    root = plugrpc_image({"s": ("s.py", SLEEPER, ["nap", "ran"])})
    async with router_on(nats_url, root, plugrpc_tmp) as server, bare(nats_url) as nc:
        for subject in ("plugrpc.call.t1", "plugrpc.any.s"):
            msg = await nc.request(subject, orjson.dumps(req("s.nap", [1])), timeout=5, headers=deadline(-1))
            answer = orjson.loads(msg.data)
            assert answer["error"]["code"] == codes.CALL_TIMEOUT and answer["id"] is None
            assert "after its deadline" in answer["error"]["data"]["reason"]
        # garbage after the deadline is not even parsed
        msg = await nc.request("plugrpc.call.t1", b"{not json", timeout=5, headers=deadline(-1))
        assert orjson.loads(msg.data)["error"]["code"] == codes.CALL_TIMEOUT
        # in time: it runs as before
        msg = await nc.request("plugrpc.any.s", orjson.dumps(req("s.nap", [2])), timeout=5, headers=deadline(5))
        assert orjson.loads(msg.data)["result"] == 2
        ran = orjson.loads((await nc.request("plugrpc.call.t1", orjson.dumps(req("s.ran")), timeout=5)).data)
        assert ran["result"] == [2]
        stats = orjson.loads((await nc.request("plugrpc.call.t1", orjson.dumps(req("router.stats")),
                                               timeout=5)).data)["result"]
        assert stats["expired"] == {"total": 3, "unread": 2, "plugins": {"s": 1}}
        assert server.bridge is not None and server.bridge.expired.counts == {"": 2, "s": 1}


async def test_a_call_whose_deadline_passes_while_it_waits_never_starts(nats_url: str, plugrpc_image: Image,
                                                                       plugrpc_tmp: Path) -> None:
    root = plugrpc_image({"s": ("s.py", SLEEPER, ["nap", "ran"], {"max_inflight": 1})})
    async with router_on(nats_url, root, plugrpc_tmp) as server, bare(nats_url) as nc:
        busy = asyncio.ensure_future(nc.request("plugrpc.any.s", orjson.dumps(req("s.nap", [1, 1.0])), timeout=5))
        await asyncio.sleep(0.2)  # the plugin's one slot is taken for a second
        started = time.monotonic()
        late = await nc.request("plugrpc.any.s", orjson.dumps(req("s.nap", [2])), timeout=5, headers=deadline(0.3))
        answer = orjson.loads(late.data)
        assert answer["error"]["code"] == codes.CALL_TIMEOUT and answer["id"] == 1
        assert "while it waited in the router" in answer["error"]["data"]["reason"]
        assert time.monotonic() - started < 1.5  # when the slot came free, not at the plugin's timeout
        assert orjson.loads((await busy).data)["result"] == 1
        ran = orjson.loads((await nc.request("plugrpc.call.t1", orjson.dumps(req("s.ran")), timeout=5)).data)
        assert ran["result"] == [1]  # number 2 never ran
        assert server.bridge is not None and server.bridge.expired.counts == {"s": 1}
