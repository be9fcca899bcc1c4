"""pool: the assignment of calls to connections, as pure state (no sockets).

The end-to-end behaviour (pipelining, plugin death, timeouts) is in test_e2e.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from plugrpc.manifest import PluginSpec
from plugrpc.outbox import Outbox
from plugrpc.process.supervisor import PluginState
from plugrpc.router.interfaces import Call
from plugrpc.router.pool import PluginPool, Upstream


class Sink:
    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    def deliver(self, call: Call, msg: dict[str, Any]) -> None:
        self.got.append(msg)


def make_pool(**keys: Any) -> PluginPool:
    spec = PluginSpec(name="p", path=Path("/bin/true"), exports=("x",), **keys)
    sup = SimpleNamespace(state=PluginState.RUNNING, available=True, holding=False, ensure_running=lambda: None,
                          touch=lambda: None,
                          unavailable_reason=lambda: f"plugin p is {sup.state.value}")
    return PluginPool(spec, Path("/nonexistent.sock"), sup, Outbox(), 1 << 20)  # type: ignore[arg-type]


def ready(pool: PluginPool) -> Upstream:
    conn = Upstream(pool)
    conn.transport = SimpleNamespace(is_closing=lambda: False, write=lambda data: None)  # type: ignore[assignment]
    pool.conns.append(conn)
    return conn


def calls(n: int, sink: Sink | None = None) -> list[Call]:
    return [Call(sink or Sink(), i, "x", None, 0.0) for i in range(n)]


async def test_no_connection_opens_pool_size() -> None:
    pool = make_pool(pool_size=3)
    pool.waiting.extend(calls(2))
    sends, opens, late = pool._assign()
    assert sends == [] and opens == 3 and late == []


async def test_least_loaded_connection_with_room() -> None:
    pool = make_pool(pool_size=2, max_inflight=1)
    a, b = ready(pool), ready(pool)
    pool.waiting.extend(calls(3))
    sends, opens, late = pool._assign()
    assert [conn for conn, _ in sends] == [a, b]
    assert len(pool.waiting) == 1 and opens == 0 and late == []


async def test_cancelled_waiting_calls_are_dropped() -> None:
    pool = make_pool()
    ready(pool)
    waiting = calls(3)
    waiting[0].sink = None
    pool.waiting.extend(waiting)
    sends, _, late = pool._assign()
    assert [call.id for _, call in sends] == [1, 2] and late == []


async def test_repr_counts_and_ids_are_per_connection() -> None:
    pool = make_pool(max_inflight=2)
    conn = Upstream(pool)  # still connecting: no transport yet
    pool.conns.append(conn)
    for call in calls(3):
        pool.submit(call)
    assert repr(pool) == "<PluginPool p [0 ready, 1 connecting, 0 in flight, 3 waiting]>"
    conn.transport = ready(pool).transport
    pool.conns.pop()
    pool._run_assign()
    assert repr(pool) == "<PluginPool p [1 ready, 0 connecting, 2 in flight, 1 waiting]>"
    assert sorted(conn.pending) == [1, 2]


async def test_lost_connection_fails_written_calls_and_keeps_waiting_ones() -> None:
    pool = make_pool(max_inflight=1)
    conn = ready(pool)
    sink = Sink()
    first, second = calls(2, sink)
    pool._fast = conn
    pool.submit(first)
    pool.submit(second)
    assert pool.inflight == 1 and len(pool.waiting) == 1
    pool.closed = True  # no reconnect in this unit test
    pool.lost(conn, "gone")
    assert [m["error"]["code"] for m in sink.got] == [-32001]
    assert sink.got[0]["id"] == 0 and len(pool.waiting) == 1 and pool.inflight == 0


async def test_overloaded_beyond_max_pending() -> None:
    pool = make_pool(max_pending=2)
    sink = Sink()
    for call in calls(3, sink):
        pool.submit(call)
    assert [m["error"]["code"] for m in sink.got] == [-32003]


async def test_unavailable_plugin_fails_fast() -> None:
    pool = make_pool()
    pool.supervisor.state = PluginState.CRASHLOOP  # type: ignore[misc]
    pool.supervisor.available = False  # type: ignore[misc]
    sink = Sink()
    pool.submit(calls(1, sink)[0])
    assert sink.got[0]["error"]["code"] == -32001 and "crashloop" in sink.got[0]["error"]["data"]["reason"]


async def test_sweep_times_out_oldest_first() -> None:
    pool = make_pool(timeout=1.0)
    conn = ready(pool)
    pool._fast = conn
    sink = Sink()
    old, new = calls(2, sink)
    new.started = 5.0
    pool.submit(old)
    pool.submit(new)
    pool.sweep(now=2.0)
    assert [m["id"] for m in sink.got] == [0] and sink.got[0]["error"]["code"] == -32002
    assert list(conn.pending) == [2] and list(conn.abandoned) == [1]
