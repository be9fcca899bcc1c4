"""router/front.py: a client connection (`FrontProtocol`) driven through a fake transport, and its pure parts.

The connection is fed bytes as the event loop would feed it; what it asks of its transport (writes,
pausing and resuming reading, the close) is recorded and asserted on. The router behind it is a fake
`Dispatch` that keeps each call for the test to answer, and the end of an event-loop turn (when
queued answers leave) is run by the test, so nothing here waits on a clock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from plugrpc import codes
from plugrpc.config import Config
from plugrpc.logs import RateLimited
from plugrpc.outbox import Outbox
from plugrpc.router.front import REFUSED_LINGER, FrontDoor, FrontProtocol, batch_longer_than
from plugrpc.router.interfaces import Call, Handle, Sink

from util import NOTIFY, line, req, until


class FakeTransport(asyncio.Transport):
    """Records what the protocol asks of its transport; `socket`, when given, is what `get_extra_info` hands out."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        super().__init__(extra={"socket": sock})
        self.writes: list[bytes] = []
        self.reading = True
        self.pauses = 0
        self.closed = False
        self.eof_written = False

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def messages(self) -> list[Any]:
        """Every line written so far, decoded."""
        return [orjson.loads(one) for one in b"".join(self.writes).splitlines()]

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_write_buffer_size(self) -> int:
        return 0


class FakeRouter:
    """A `Dispatch` that keeps every call it is handed for the test to answer, and records cancellations.

    Its outbox's end of turn is recorded instead of scheduled: `end_turn()` runs it.
    """

    def __init__(self) -> None:
        self._turn: list[Callable[[], None]] = []
        self.outbox = Outbox(call_soon=self._turn.append)
        self.clients: set[Any] = set()
        self.calls: list[Call] = []
        self.notified: list[str] = []
        self.cancelled: list[Call] = []

    def handle(self, msg: Any, sink: Sink) -> None:
        if "id" not in msg:
            self.notified.append(msg["method"])
            return
        call = Call(sink, msg["id"], msg["method"], msg.get("params"), 0.0)
        sink.track(call)
        self.calls.append(call)

    def cancel(self, call: Call) -> None:
        call.sink = None
        self.cancelled.append(call)

    def handler_for(self, sock: Any) -> Handle:
        return self.handle

    def end_turn(self) -> None:
        """What the event loop does at the end of a turn: queued lines leave."""
        turn = self._turn[:]
        self._turn.clear()
        for callback in turn:
            callback()

    def answer(self, call: Call, result: Any = "ok") -> None:
        call.finish({"jsonrpc": "2.0", "result": result, "id": "router's own"})


Front = tuple[FrontProtocol, FakeTransport, FakeRouter]


def connect(door: FrontDoor, sock: socket.socket | None = None) -> tuple[FrontProtocol, FakeTransport]:
    protocol, transport = door(), FakeTransport(sock)
    protocol.connection_made(transport)
    return protocol, transport


def door_of(router: FakeRouter, max_clients: int = 100, **config: Any) -> FrontDoor:
    return FrontDoor(router, Config(**config), max_clients)  # type: ignore[arg-type]


@pytest.fixture
def router() -> FakeRouter:
    return FakeRouter()


@pytest.fixture
def front(router: FakeRouter) -> Front:
    """A connection with room for 4 calls in flight, batches of 3 and lines of 1024 bytes."""
    protocol, transport = connect(door_of(router, max_inflight_per_client=4, max_batch=3, max_line=1024))
    return protocol, transport, router


def requests(*ids: Any) -> bytes:
    return b"".join(line(req("p.m", [i], id=i)) for i in ids)


# --- data_received: lines in, calls out, answers back ----------------------------------------


def test_a_request_split_over_reads_is_handled_once_its_newline_arrives(front: Front) -> None:
    protocol, _, router = front
    data = line(req("p.m", {"x": 1}, id=7))
    protocol.data_received(data[:5])
    protocol.data_received(data[5:-1])
    assert router.calls == []
    protocol.data_received(b"\n")
    assert [(c.id, c.method, c.params) for c in router.calls] == [(7, "p.m", {"x": 1})]


def test_a_lone_call_s_answer_is_written_at_once_with_the_client_s_id(front: Front) -> None:
    protocol, transport, router = front
    protocol.data_received(requests("abc"))
    router.answer(router.calls[0], 42)
    assert transport.messages() == [{"jsonrpc": "2.0", "result": 42, "id": "abc"}]  # before the turn ends
    assert protocol.calls == set()


def test_answers_in_one_turn_leave_in_one_write_in_the_order_given(front: Front) -> None:
    protocol, transport, router = front
    protocol.data_received(requests(1, 2, 3))
    for call in reversed(router.calls):
        router.answer(call, call.id)
    router.end_turn()
    assert len(transport.writes) == 1
    assert [m["id"] for m in transport.messages()] == [3, 2, 1]


def test_a_line_that_is_not_json_is_answered_parse_error_and_blank_lines_are_skipped(front: Front) -> None:
    protocol, transport, router = front
    protocol.data_received(b"{nope\n   \t\n" + requests(1))
    router.end_turn()
    [parse_error] = transport.messages()
    assert parse_error["error"]["code"] == codes.PARSE_ERROR and parse_error["id"] is None
    assert [c.id for c in router.calls] == [1]  # the line after it is read all the same


def test_notifications_are_passed_on_and_never_answered(front: Front) -> None:
    protocol, transport, router = front
    protocol.data_received(line(req("p.tick", id=NOTIFY)))
    router.end_turn()
    assert router.notified == ["p.tick"] and transport.writes == []


# --- batches ---------------------------------------------------------------------------------


def test_a_batch_is_answered_as_one_array_once_its_last_call_is(front: Front) -> None:
    protocol, transport, router = front
    protocol.data_received(line([req("p.m", id=1), req("p.tick", id=NOTIFY), req("p.m", id=2)]))
    first, second = router.calls
    router.answer(second, "b")
    router.end_turn()
    assert transport.writes == []
    router.answer(first, "a")
    router.end_turn()
    assert transport.messages() == [[{"jsonrpc": "2.0", "result": "b", "id": 2},
                                     {"jsonrpc": "2.0", "result": "a", "id": 1}]]
    assert protocol.calls == set()


def test_a_batch_of_notifications_only_gets_no_answer(front: Front) -> None:
    protocol, transport, router = front
    protocol.data_received(line([req("p.tick", id=NOTIFY), req("p.tock", id=NOTIFY)]))
    router.end_turn()
    assert router.notified == ["p.tick", "p.tock"] and transport.writes == []


@pytest.mark.parametrize("batch, reason", [
    ([], "an empty batch is not a request"),
    ([req("p.m", id=i) for i in range(4)], "a batch of more than 3 requests"),
])
def test_a_batch_refused_whole_runs_none_of_its_calls(front: Front, batch: list[Any], reason: str) -> None:
    protocol, transport, router = front
    protocol.data_received(line(batch))
    router.end_turn()
    [refusal] = transport.messages()
    assert refusal["error"]["code"] == codes.INVALID_REQUEST and reason in str(refusal["error"]["data"])
    assert router.calls == []


def test_a_long_batch_over_several_reads_is_refused_before_it_is_parsed(front: Front) -> None:
    protocol, transport, router = front
    # Not JSON past its fourth element: parsed whole, it would be answered -32700, not refused as long.
    data = line([req("p.m", id=i) for i in range(10)])[:-2] + b", {nope]\n"
    protocol.data_received(data[:100])
    protocol.data_received(data[100:])
    router.end_turn()
    [refusal] = transport.messages()
    assert "a batch of more than 3 requests" in refusal["error"]["data"]["reason"]
    assert router.calls == []


# --- flow control ----------------------------------------------------------------------------


def test_reading_pauses_at_the_in_flight_limit_and_resumes_at_half_of_it(front: Front) -> None:
    protocol, transport, router = front
    protocol.data_received(requests(1, 2, 3))
    assert transport.reading
    protocol.data_received(requests(4))
    assert not transport.reading
    router.answer(router.calls[0])
    assert not transport.reading  # 3 in flight: not yet down to the resume mark
    router.answer(router.calls[1])
    assert transport.reading and transport.pauses == 1


def test_calls_of_a_batch_count_against_the_in_flight_limit(front: Front) -> None:
    protocol, transport, router = front
    protocol.data_received(requests(1) + line([req("p.m", id=i) for i in (2, 3, 4)]))
    assert not transport.reading
    for call in router.calls[1:]:
        router.answer(call)
    assert transport.reading  # the batch's answers brought it down to 1


def test_a_client_that_does_not_read_is_not_read_from(front: Front) -> None:
    protocol, transport, router = front
    protocol.pause_writing()
    assert not transport.reading
    protocol.data_received(requests(1, 2, 3, 4))  # what was already read still runs; busy too now
    protocol.resume_writing()
    assert not transport.reading  # still busy: both reasons must clear
    router.answer(router.calls[0])
    router.answer(router.calls[1])
    assert transport.reading


# --- half-close and close --------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A real unix socket pair: the router's end (handed out by the fake transport) and the client's."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        yield ours, theirs


def test_a_half_closed_client_gets_its_answers_then_the_connection_closes(
        router: FakeRouter, pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    protocol, transport = connect(door_of(router), ours)
    protocol.data_received(requests(1) + line(req("p.m", id=2))[:-1])  # the last request without its newline
    theirs.shutdown(socket.SHUT_WR)
    assert protocol.eof_received() is True  # keep our side open: it still reads
    assert [c.id for c in router.calls] == [1, 2]
    router.answer(router.calls[0])
    assert not transport.closed
    router.answer(router.calls[1])
    assert transport.closed and [m["id"] for m in transport.messages()] == [1, 2]


def test_a_client_that_closed_fully_is_not_kept_open_for_its_answers(
        router: FakeRouter, pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    protocol, _ = connect(door_of(router), ours)
    protocol.data_received(requests(1))
    theirs.close()
    assert protocol.eof_received() is False  # the transport closes; connection_lost cancels the call


def test_end_of_input_with_nothing_in_flight_closes(front: Front) -> None:
    protocol, _, _ = front
    assert protocol.eof_received() is False


def test_a_lost_connection_cancels_its_calls_and_leaves_the_clients(front: Front) -> None:
    protocol, _, router = front
    protocol.data_received(requests(1, 2))
    assert protocol in router.clients
    protocol.connection_lost(None)
    assert sorted(c.id for c in router.cancelled) == [1, 2]
    assert protocol not in router.clients and protocol.door.connections == 0


# --- too-long lines and the shared read budget -----------------------------------------------


def test_a_line_over_max_line_is_refused_and_the_connection_closes_after_the_calls_before_it(front: Front) -> None:
    protocol, transport, router = front
    protocol.data_received(requests(1) + b'{"x": "' + b"y" * 2000)
    assert [c.id for c in router.calls] == [1]  # the complete line before it still runs
    assert not transport.reading and not transport.closed
    router.end_turn()
    assert transport.messages()[0]["error"]["code"] == codes.MESSAGE_TOO_LARGE
    router.answer(router.calls[0])
    assert transport.closed
    assert [m.get("id") for m in transport.messages()] == [None, 1]
    assert protocol.door.budget.used == 0


def test_unfinished_lines_of_all_clients_share_one_budget(router: FakeRouter) -> None:
    door = door_of(router, max_line=1024, max_buffered=1500)
    first, first_transport = connect(door)
    second, second_transport = connect(door)
    first.data_received(b"[" * 1000)
    second.data_received(b"[" * 600)
    router.end_turn()
    assert first_transport.writes == [] and not first_transport.closed
    [refusal] = second_transport.messages()
    assert refusal["error"]["code"] == codes.MESSAGE_TOO_LARGE and "--max-buffered" in refusal["error"]["data"]
    assert second_transport.closed and door.budget.used == 1000
    first.data_received(b"\n")
    assert door.budget.used == 0


# --- unfinished lines that wait too long (check_partial, with the sweep's clock given) -------


def test_an_unfinished_line_is_closed_once_it_waited_the_timeout(front: Front) -> None:
    protocol, transport, router = front
    protocol.data_received(b'{"jsonrpc": ')
    protocol.check_partial(100.0, 5.0)  # first seen now
    protocol.data_received(b'"2.0"')  # more of the same line does not restart its wait
    protocol.check_partial(104.9, 5.0)
    assert not transport.closed
    protocol.check_partial(105.0, 5.0)
    router.end_turn()
    [why] = transport.messages()
    assert why["error"]["code"] == codes.INVALID_REQUEST and "--partial-timeout" in why["error"]["data"]
    assert transport.closed


def test_a_new_unfinished_line_starts_a_new_wait(front: Front) -> None:
    protocol, transport, _ = front
    protocol.data_received(b"[")
    protocol.check_partial(100.0, 5.0)
    protocol.data_received(b"]\n[")  # that line ended (joined from two reads); another began
    protocol.check_partial(104.0, 5.0)
    protocol.check_partial(108.0, 5.0)
    assert not transport.closed
    protocol.check_partial(109.0, 5.0)
    assert transport.closed


def test_an_unfinished_line_does_not_wait_while_its_client_is_paused_busy(front: Front) -> None:
    protocol, transport, router = front
    protocol.data_received(requests(1, 2, 3, 4) + b"[")
    protocol.check_partial(100.0, 5.0)
    protocol.check_partial(200.0, 5.0)
    assert not transport.closed  # the router is not reading it: the client is not to blame
    router.answer(router.calls[0])
    router.answer(router.calls[1])
    protocol.check_partial(201.0, 5.0)  # reading again: the wait starts now
    protocol.check_partial(205.0, 5.0)
    assert not transport.closed
    protocol.check_partial(206.0, 5.0)
    assert not transport.closed  # closing waits for the two calls still in flight
    router.answer(router.calls[2])
    router.answer(router.calls[3])
    assert transport.closed


# --- connection bounds -----------------------------------------------------------------------


def test_a_client_past_max_clients_is_told_and_closed_at_once(router: FakeRouter) -> None:
    door = door_of(router, max_clients=1)
    kept, _ = connect(door)
    _, transport = connect(door)
    assert transport.closed
    [why] = transport.messages()
    assert why["error"]["code"] == codes.OVERLOADED and "--max-clients" in why["error"]["data"]["reason"]
    assert router.clients == {kept} and door.connections == 2  # until connection_lost, it is still open


async def test_a_peer_whose_uid_is_not_allowed_reads_why_then_is_closed(
        router: FakeRouter, pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    door = door_of(router, allow_uids=frozenset({os.getuid() + 1}))
    protocol, transport = connect(door, ours)
    protocol.data_received(requests(1))
    [why] = transport.messages()
    assert why["error"]["code"] == codes.INVALID_REQUEST and f"uid {os.getuid()}" in why["error"]["data"]["reason"]
    assert transport.eof_written and not transport.closed and router.calls == [] and router.clients == set()
    await until(lambda: transport.closed, f"the close {REFUSED_LINGER}s later")


# --- batch_longer_than -----------------------------------------------------------------------


def batch(elements: list[object]) -> bytes:
    return orjson.dumps(elements)


@pytest.mark.parametrize("elements, longer", [
    ([{"a": i} for i in range(4)], False),
    ([{"a": i} for i in range(5)], True),
    ([{"a": "x,y,z,w,v"}, {"b": [1, 2, 3, 4, 5, 6]}], False),  # commas inside values are not elements
    ([[[1, 2], [3, 4]], "a,b,c", 1.5e3, None, True], True),
    ([1, 2, 3, 4], False),
])
def test_batch_longer_than_counts_elements_not_commas(elements: list[object], longer: bool) -> None:
    assert batch_longer_than(batch(elements), 4) is longer


def test_batch_longer_than_reads_utf8_and_whitespace() -> None:
    line = ' [ "é,€" ,\t"𝄞" , 3,4 , 5 ] '.encode()
    assert batch_longer_than(line, 4) is True
    assert batch_longer_than(line, 5) is False


@pytest.mark.parametrize("line", [b'{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}', b"[1,2,3,4", b"[1,,,,,,2]",
                                  b"[" * 5000 + b"]" * 5000])
def test_batch_longer_than_leaves_a_line_it_cannot_step_through_to_the_parser(line: bytes) -> None:
    assert batch_longer_than(line, 4) is False


def test_rate_limited_logs_the_first_then_says_how_many_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("plugrpc.test_front")
    limited = RateLimited(logger, interval=0.05)
    with caplog.at_level(logging.WARNING, logger="plugrpc.test_front"):
        for n in range(100):
            limited("refused %d", n)
        limited.flush()
        assert [r.getMessage() for r in caplog.records] == ["refused 0"]
        import time

        time.sleep(0.06)
        limited.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0", "refused 99 (and 98 more like it not logged in the 0.05s before)"]
