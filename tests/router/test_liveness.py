"""router/liveness.py: when a plugin is pinged, and when a missing answer makes it unresponsive.

`Liveness` runs against a fake pool (room for a call or not, bytes the plugin has not read), a fake
supervisor (state, pid, what it was told) and a fake `ask` that records every ping and answers as the
test says. Intervals are milliseconds; what did or did not happen is read from what the fakes
recorded (how often room and state were looked at, what was asked), never from time that passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from plugrpc import codes
from plugrpc.manifest import PluginSpec
from plugrpc.process.supervisor import PluginState
from plugrpc.router import liveness
from plugrpc.router.interfaces import Message
from plugrpc.router.liveness import PING, Liveness
from plugrpc.wire import ABSENT, error_response, result_response

from util import until

SPEC = PluginSpec(name="p", path=Path("/p"), exports=("x",), ping_interval=0.005, ping_timeout=0.05, timeout=30.0)


@dataclass(eq=False)
class FakePool:
    """A plugin's pool as liveness reads it: whether a call would be written now, and what the plugin has not read."""

    spec: PluginSpec = SPEC
    name: str = "p"
    room: bool = True
    looked: int = 0
    """How often liveness asked for room: each look is one interval's decision."""
    backlog: list[int] = field(default_factory=list)
    """Successive answers of `unread()` (the last one repeats): a falling count is a plugin that reads."""
    polls: int = 0

    def has_room(self) -> bool:
        self.looked += 1
        return self.room

    def unread(self) -> int:
        self.polls += 1
        if not self.backlog:
            return 0
        return self.backlog.pop(0) if len(self.backlog) > 1 else self.backlog[0]

    def resumed(self) -> int:
        return 0


class FakeSupervisor:
    """A supervisor as liveness reads it: its state (each read counted: one per interval's decision) and pid."""

    def __init__(self, state: PluginState = PluginState.RUNNING) -> None:
        self._state = state
        self.reads = 0
        self.pid: int | None = 100
        self.told: list[tuple[int | None, str]] = []
        """(pid, why) of each `unresponsive`."""

    @property
    def state(self) -> PluginState:
        self.reads += 1
        return self._state

    def unresponsive(self, why: str) -> None:
        """As the real one: the process is being stopped, and is RUNNING no more."""
        self.told.append((self.pid, why))
        self._state = PluginState.UNRESPONSIVE


Answer = Callable[[], Message | None]
"""How the plugin answers a ping: a message, or None for never."""


class FakeAsk:
    """The router's `ask` as liveness uses it: every ping recorded; answered at once, or never, as `answer` says."""

    def __init__(self) -> None:
        self.asked: list[tuple[Any, str, Any, float]] = []
        self.answer: Answer = lambda: result_response(None, {"direct": 0})
        self.withdrawn = 0
        """Pings left unanswered that liveness gave up on (cancelled: the router withdraws the call)."""

    async def __call__(self, target: Any, method: str, params: Any, timeout: float) -> Message:
        self.asked.append((target, method, params, timeout))
        msg = self.answer()
        if msg is None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.withdrawn += 1
                raise
        assert msg is not None
        return msg


@dataclass
class Rig:
    pool: FakePool
    supervisor: FakeSupervisor
    ask: FakeAsk
    reports: list[tuple[int | None, Message]]
    liveness: Liveness


Start = Callable[..., Rig]


@pytest.fixture
async def start(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Start]:
    """Factory: `start(pool=..., supervisor=...)` pings them until the test ends."""
    monkeypatch.setattr(liveness, "PROGRESS_POLL", 0.005)
    started: list[Liveness] = []

    def start(pool: FakePool | None = None, supervisor: FakeSupervisor | None = None) -> Rig:
        pool, supervisor, ask = pool or FakePool(), supervisor or FakeSupervisor(), FakeAsk()
        reports: list[tuple[int | None, Message]] = []
        checker = Liveness(pool, supervisor, ask, lambda pid, msg: reports.append((pid, msg)))  # type: ignore[arg-type]
        started.append(checker)
        return Rig(pool, supervisor, ask, reports, checker)

    try:
        yield start
    finally:
        for checker in started:
            checker.close()


@pytest.fixture
async def rig(start: Start) -> Rig:
    """A running plugin with room for a call, answering every ping."""
    return start()


# --- ping scheduling -------------------------------------------------------------------------


async def test_a_running_plugin_with_room_is_pinged_through_its_pool_every_interval(rig: Rig) -> None:
    await until(lambda: len(rig.ask.asked) >= 3, "three pings")
    assert set(rig.ask.asked) == {(rig.pool, PING, ABSENT, SPEC.timeout + SPEC.ping_timeout)}
    assert rig.liveness.pings >= 3 and rig.supervisor.told == []
    assert repr(rig.liveness).startswith("<Liveness p pings=")


async def test_each_answer_is_reported_with_the_pid_that_gave_it(rig: Rig) -> None:
    await until(lambda: len(rig.reports) >= 2, "two reports")
    assert rig.reports[0] == (100, {"jsonrpc": "2.0", "result": {"direct": 0}, "id": None})


async def test_a_plugin_without_room_for_a_call_is_not_pinged(start: Start) -> None:
    rig = start(FakePool(room=False))  # busy up to its max_inflight: a long call must not get it restarted
    await until(lambda: rig.pool.looked >= 3, "three intervals' decisions")
    assert rig.ask.asked == [] and rig.liveness.pings == 0
    rig.pool.room = True
    await until(lambda: rig.ask.asked, "a ping once there is room")


@pytest.mark.parametrize("state", [PluginState.STOPPED, PluginState.STARTING, PluginState.BACKOFF,
                                   PluginState.UNRESPONSIVE, PluginState.STOPPING])
async def test_only_a_running_plugin_is_pinged(start: Start, state: PluginState) -> None:
    rig = start(supervisor=FakeSupervisor(state))
    await until(lambda: rig.supervisor.reads >= 3, "three intervals' decisions")
    assert rig.ask.asked == [] and rig.supervisor.told == []


async def test_close_stops_the_pings(rig: Rig) -> None:
    await until(lambda: rig.ask.asked, "a ping")
    rig.liveness.close()
    await until(lambda: rig.liveness._task.done(), "the pinger to stop")
    assert rig.liveness._task.cancelled()


# --- unresponsive ----------------------------------------------------------------------------


async def test_no_answer_within_the_ping_timeout_makes_it_unresponsive(rig: Rig) -> None:
    rig.ask.answer = lambda: None
    await until(lambda: rig.supervisor.told, "the supervisor told")
    assert rig.supervisor.told == [(100, f"no answer to {PING} within {SPEC.ping_timeout:g} s")]
    assert rig.ask.withdrawn >= 1  # the unanswered ping was withdrawn, not left in the pool


@pytest.mark.parametrize("msg, alive", [
    (error_response(None, codes.METHOD_NOT_FOUND), True),  # any answer proves it alive, an error too
    (error_response(None, codes.INTERNAL_ERROR), True),
    (error_response(None, codes.CALL_TIMEOUT), False),  # the pool's own timeout: no answer from the plugin
])
async def test_which_answers_prove_a_plugin_alive(rig: Rig, msg: Message, alive: bool) -> None:
    rig.ask.answer = lambda: dict(msg)
    await until(lambda: rig.supervisor.told or len(rig.ask.asked) >= 3, "three pings, or the supervisor told")
    assert (rig.supervisor.told == []) is alive
    assert rig.reports == []  # only results carry figures


async def test_a_plugin_that_reads_what_came_before_the_ping_is_given_more_time(start: Start) -> None:
    # It reads a little at each of 40 looks (several ping timeouts' worth of looks), then stops reading.
    reading = 40
    rig = start(FakePool(backlog=[*range(10_000, 10_000 - reading, -1), 0]))
    rig.ask.answer = lambda: None
    await until(lambda: rig.supervisor.told, "the supervisor told")
    assert rig.pool.polls > reading  # judged only after it stopped reading
    assert len(rig.ask.asked) == 1 and len(rig.supervisor.told) == 1


async def test_a_process_replaced_while_the_ping_waited_is_not_blamed(rig: Rig) -> None:
    def replaced() -> None:
        rig.supervisor.pid = 200  # the process died and another runs: its own pings judge it
        return None

    rig.ask.answer = replaced
    await until(lambda: rig.ask.withdrawn >= 1, "the first ping given up on")
    assert rig.supervisor.told == []
