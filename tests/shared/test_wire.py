"""wire: line framing and envelope checks, no sockets."""

from __future__ import annotations

import pytest

from plugrpc import codes
from plugrpc.wire import LineSplitter, LineTooLong, OverBudget, ReadBudget, error_line, loads, reply_id, request_problem


class TestLineSplitter:
    def test_lines_across_chunks(self) -> None:
        s = LineSplitter(100)
        assert s.feed(b'{"a"') == []
        assert s.feed(b':1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
        assert s.buffered == 4
        assert s.feed(b":3}\n") == [b'{"c":3}']
        assert s.buffered == 0

    def test_blank_lines_are_dropped(self) -> None:
        assert LineSplitter(100).feed(b"\n\nx\n\n") == [b"x"]

    @pytest.mark.parametrize("limit, first, second", [
        pytest.param(10, b"12345", b"678901", id="refused-before-it-ends"),
        pytest.param(6, b"1234", b"567\n", id="joined-at-its-newline"),
    ])
    def test_a_line_over_the_limit_across_chunks_is_refused(self, limit: int, first: bytes, second: bytes) -> None:
        s = LineSplitter(limit)
        assert s.feed(first) == []
        with pytest.raises(LineTooLong):
            s.feed(second)

    @pytest.mark.parametrize("data, kept", [
        pytest.param(b"ok\n\nfine\n123456\nlost\n", [b"ok", b"fine"], id="complete-line"),
        pytest.param(b"ok\n123456", [b"ok"], id="unfinished-tail"),
    ])
    def test_a_line_over_the_limit_keeps_the_complete_lines_before_it(self, data: bytes, kept: list[bytes]) -> None:
        with pytest.raises(LineTooLong) as info:
            LineSplitter(4).feed(data)
        assert info.value.lines == kept

    def test_line_exactly_at_limit(self) -> None:
        s = LineSplitter(4)
        s.feed(b"12")
        assert s.feed(b"34\n") == [b"1234"]


class TestRequestProblem:
    @pytest.mark.parametrize("msg", [
        {"jsonrpc": "2.0", "method": "a.b", "id": 1},
        {"jsonrpc": "2.0", "method": "a.b", "id": "x", "params": [1]},
        {"jsonrpc": "2.0", "method": "a.b", "id": None, "params": {"k": 1}},
        {"jsonrpc": "2.0", "method": "a.b", "id": 1.5},
        {"jsonrpc": "2.0", "method": "a.b"},
    ])
    def test_valid(self, msg: object) -> None:
        assert request_problem(msg) is None

    @pytest.mark.parametrize("msg", [
        1, "x", None, [],
        {"method": "a.b", "id": 1},
        {"jsonrpc": "1.0", "method": "a.b", "id": 1},
        {"jsonrpc": "2.0", "method": 1, "id": 1},
        {"jsonrpc": "2.0", "method": "a.b", "id": {}},
        {"jsonrpc": "2.0", "method": "a.b", "id": [1]},
        {"jsonrpc": "2.0", "method": "a.b", "id": True},
        {"jsonrpc": "2.0", "method": "a.b", "id": 1, "params": "bar"},
        {"jsonrpc": "2.0", "method": "a.b", "id": 1, "params": None},
    ])
    def test_invalid(self, msg: object) -> None:
        assert isinstance(request_problem(msg), str)

    def test_reply_id(self) -> None:
        assert reply_id({"id": 7}) == 7
        assert reply_id({"id": [7]}) is None
        assert reply_id("x") is None


def test_error_line_is_one_json_line() -> None:
    line = error_line("a", codes.OVERLOADED, data={"plugin": "p"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert loads(line) == {"jsonrpc": "2.0", "id": "a",
                           "error": {"code": -32003, "message": "Overloaded", "data": {"plugin": "p"}}}


class TestUnfinishedLines:
    def test_one_byte_at_a_time_costs_about_a_byte_per_byte(self) -> None:
        import tracemalloc

        s = LineSplitter(1 << 20)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(100_000):
                s.feed(b"x")
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert held < 2 * 100_000, held  # one object per byte was about 50 bytes per byte
        assert s.feed(b"\n") == [b"x" * 100_000]

    def test_small_and_large_chunks_join_in_order(self) -> None:
        s = LineSplitter(1 << 20)
        for chunk in (b"a", b"b", b"c" * 5000, b"d", b"e"):
            s.feed(chunk)
        assert s.feed(b"f\ng") == [b"ab" + b"c" * 5000 + b"def"]
        assert s.feed(b"h\n") == [b"gh"]

    def test_connections_share_one_budget(self) -> None:
        budget = ReadBudget(10)
        a, b = LineSplitter(8, budget), LineSplitter(8, budget)
        a.feed(b"12345")
        b.feed(b"1234")
        assert budget.used == 9
        with pytest.raises(OverBudget) as info:
            b.feed(b"ok\nabcdefg")  # a whole line, then an unfinished one past the budget
        assert info.value.lines == [b"1234ok"]
        b.release()
        assert budget.used == 5
        assert a.feed(b"678\n") == [b"12345678"] and budget.used == 0

    def test_finishing_lines_gives_the_budget_back(self) -> None:
        budget = ReadBudget(100)
        s = LineSplitter(50, budget)
        s.feed(b'{"a":')
        assert budget.used == 5
        assert s.feed(b'1}\n{"b"') == [b'{"a":1}'] and budget.used == 4
        s.release()
        assert budget.used == 0 and s.buffered == 0
