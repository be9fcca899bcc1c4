"""The load: clients of every kind calling every plugin, each call judged by the tally.

- `RawConn` is a client of the soak's own on the wire: it sees every line the router sends, so a
  second answer to a call, or an answer to no call of the connection, is caught (plugrpc.Client
  would drop those quietly). Its workers pipeline calls, some in batches, ids numbers and strings.
- `client_worker` calls through `plugrpc.Client`: on the socket, direct (`direct=True`), or on NATS.
- `probe` calls the healthy plugin (`steady`) one call at a time and times each.
- `subscriber` follows `aio.tick` and checks that `seq` only goes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

import plugrpc
from plugrpc.errors import ConnectError, ConnectionLost, RpcError

from .schedule import Phases
from .tally import Call, Tally

LOST_AFTER: Final = 20.0
"""Seconds after which a call on a live connection counts as lost: every plugin's timeout is at most 5 s,
a liveness restart about 2 s."""
NATS_LOST_AFTER: Final = 12.0
"""Over NATS a call at a router killed -9 ends at the caller's own timeout: -32002, not lost."""

# (method, weight); params come from `params_for`.
TARGETS: Final = [("aio.work", 4.0), ("plain.work", 4.0), ("relay.relay", 2.0), ("exec.work", 0.5),
                  ("lazy.work", 1.0), ("idle.work", 0.1), ("memhog.work", 1.0), ("notify.work", 2.0),
                  ("stdio.work", 2.0), ("flex.work", 2.0), ("extra.work", 0.5)]
NATS_TARGETS: Final = [("aio.work", 3.0), ("plain.work", 3.0), ("stdio.work", 1.0), ("notify.work", 1.0),
                       ("relay.relay", 1.0), ("exec.work", 0.3)]


class Picker:
    """Which call to make next: a seeded draw over the targets."""

    def __init__(self, seed: str, targets: list[tuple[str, float]] = TARGETS) -> None:
        self.rng = random.Random(seed)
        self.methods = [m for m, _ in targets]
        self.weights = [w for _, w in targets]

    def method(self) -> str:
        return self.rng.choices(self.methods, self.weights)[0]

    def params(self, method: str, token: str) -> dict[str, Any]:
        sleep = round(self.rng.uniform(0, 0.3), 3) if self.rng.random() < 0.3 else 0.0
        if method == "relay.relay":
            return {"token": token, "target": "aio", "sleep": sleep}
        return {"token": token, "sleep": sleep}


def request(method: str, params: Any, id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params, "id": id}


# --- a client of our own on the wire --------------------------------------------------------------


class RawConn:
    """One connection to the router, every line it receives checked against the calls in flight on it."""

    def __init__(self, name: str, tally: Tally) -> None:
        self.name = name
        self.tally = tally
        self.pending: dict[Any, tuple[Call, asyncio.Future[dict[str, Any] | None]]] = {}
        self.gone: set[Any] = set()
        """Ids of calls given up as lost: an answer coming for one later is late, not a stray."""
        self.stray_errors: list[dict[str, Any]] = []
        """Errors about no call in particular (id null), or to the garbage fault's request (id "garbage")."""
        self.ids = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    async def open(self, path: Any) -> RawConn:
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_unix_connection(path, limit=16 << 20), 10)
        self.task = asyncio.create_task(self._read())
        return self

    def next_id(self) -> Any:
        self.ids += 1
        return self.ids if self.ids % 3 else f"{self.name}/{self.ids}"

    def send(self, calls: list[tuple[Call, Any]], batch: bool = False) -> list[asyncio.Future[dict[str, Any] | None]]:
        """Write `calls` ((call, params) pairs): one line each, or one batch; their futures."""
        assert self.writer is not None
        loop = asyncio.get_running_loop()
        msgs, futures = [], []
        for call, params in calls:
            id = self.next_id()
            future: asyncio.Future[dict[str, Any] | None] = loop.create_future()
            self.pending[id] = (call, future)
            futures.append(future)
            msgs.append(request(call.method, params, id))
        lines = orjson.dumps(msgs) + b"\n" if batch else b"".join(orjson.dumps(m) + b"\n" for m in msgs)
        self.writer.write(lines)
        return futures

    async def _read(self) -> None:
        assert self.reader is not None
        try:
            while line := await self.reader.readline():
                self._line(line)
        except (ConnectionError, ValueError):
            pass  # reset, or a line past our own limit: the connection is over either way
        finally:
            self._ended()

    def _line(self, line: bytes) -> None:
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.tally.violate("every call is answered", f"{self.name}: the router sent a line that is not JSON: "
                               f"{line[:200]!r}")
            return
        for one in msg if type(msg) is list else [msg]:
            self._resolve(one)

    def _resolve(self, msg: Any) -> None:
        id = msg.get("id") if type(msg) is dict else None
        entry = self.pending.pop(id, None) if type(id) in (int, str) else None
        if entry is not None:
            if not entry[1].done():
                entry[1].set_result(msg)
        elif id in self.gone:
            self.gone.discard(id)
            self.tally.late += 1
        elif type(msg) is dict and id in (None, "garbage") and "error" in msg:
            self.stray_errors.append(msg["error"])
        else:
            self.tally.violate("exactly one response per call",
                               f"{self.name}: a response to no call in flight (answered twice, or another's): "
                               f"{msg!r:.300}")

    def _ended(self) -> None:
        pending, self.pending = self.pending, {}
        for _, future in pending.values():
            if not future.done():
                future.set_result(None)

    def forget(self, id_of: asyncio.Future[dict[str, Any] | None]) -> None:
        """A call given up as lost: drop it from `pending`, remember its id."""
        for id, (_, future) in list(self.pending.items()):
            if future is id_of:
                del self.pending[id]
                self.gone.add(id)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 5)
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 5)


async def judge_raw(conn: RawConn, call: Call, future: asyncio.Future[dict[str, Any] | None]) -> None:
    """Wait for a raw call's answer and judge it."""
    try:
        msg = await asyncio.wait_for(asyncio.shield(future), LOST_AFTER)
    except TimeoutError:
        conn.forget(future)
        conn.tally.lose(call, f"no answer within {LOST_AFTER:g}s on a live connection")
        return
    if msg is None:
        conn.tally.end(call)
    else:
        conn.tally.response(call, msg)


async def raw_worker(conn: RawConn, picker: Picker, stop: asyncio.Event, depth: int = 4) -> None:
    """Pipeline up to `depth` calls at a time on `conn`; now and then a batch."""
    tally = conn.tally
    while not stop.is_set() and conn.writer is not None and not conn.writer.is_closing():
        n = depth if picker.rng.random() < 0.1 else 1
        calls = []
        for _ in range(n):
            call = tally.call(picker.method(), conn.name)
            calls.append((call, picker.params(call.method, call.token)))
        futures = conn.send(calls, batch=n > 1)
        await asyncio.gather(*(judge_raw(conn, call, f) for (call, _), f in zip(calls, futures, strict=True)))
        await asyncio.sleep(picker.rng.uniform(0, 0.02))


# --- plugrpc.Client: the socket, direct connections, NATS -----------------------------------------


def client_timed_out(exc: RpcError) -> bool:
    """The client's own timeout fired (the router never answered), rather than the router's -32002."""
    return exc.code == -32002 and isinstance(exc.data, str) and "got no response within" in exc.data


async def client_call(client: plugrpc.Client, call: Call, params: Any, tally: Tally, nats: bool) -> None:
    limit = NATS_LOST_AFTER if nats else LOST_AFTER
    try:
        result = await client.raw(call.method, params, timeout=limit)
    except RpcError as exc:
        if client_timed_out(exc) and not nats:
            tally.lose(call, f"no answer within {limit:g}s ({exc.data})")
        else:
            tally.error(call, exc.to_error())
    except (ConnectionLost, ConnectError):
        tally.end(call)
    else:
        tally.result(call, result)


async def client_worker(client: plugrpc.Client, name: str, picker: Picker, tally: Tally, stop: asyncio.Event,
                        nats: bool = False) -> None:
    while not stop.is_set():
        call = tally.call(picker.method(), name)
        await client_call(client, call, picker.params(call.method, call.token), tally, nats)
        await asyncio.sleep(picker.rng.uniform(0, 0.02))


async def probe(client: plugrpc.Client, tally: Tally, phases: Phases, clock: Callable[[], float],
                stop: asyncio.Event, every: float = 0.02) -> None:
    """Call `steady.work` one at a time: it must never fail, and each latency is kept by phase."""
    while not stop.is_set():
        call = tally.call("steady.work", "probe")
        sent = time.monotonic()
        try:
            result = await client.raw(call.method, {"token": call.token}, timeout=LOST_AFTER)
        except Exception as exc:
            tally.violate("the healthy plugin answers throughout", f"{type(exc).__name__}: {exc}", call)
        else:
            tally.steady[phases.name(clock())].append(time.monotonic() - sent)
            tally.result(call, result)
        await asyncio.sleep(every)


async def subscriber(client: plugrpc.Client, name: str, tally: Tally, stop: asyncio.Event) -> None:
    """Follow `aio.tick`: each event's `seq` must be above the last one's (at most once, in order)."""
    last = 0
    with contextlib.suppress(ConnectionLost):
        async with client.subscribe("aio.tick") as events:
            while not stop.is_set():
                try:
                    event = await asyncio.wait_for(anext(events), 0.5)
                except TimeoutError:
                    continue
                if event.seq <= last:
                    tally.violate("events at most once, in order", f"{name}: seq {event.seq} after {last}")
                last = event.seq
                tally.events += 1
                tally.events_dropped += event.dropped
