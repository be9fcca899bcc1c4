"""router/front.py's pure parts: counting a batch without parsing it whole, rate-limited log lines."""

from __future__ import annotations

import logging

import orjson
import pytest

from plugrpc.logs import RateLimited
from plugrpc.router.front import batch_longer_than


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
