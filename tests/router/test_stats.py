"""CallStats: the latency histogram behind `router.stats` and `plugrpc status`."""

from __future__ import annotations

import pytest

from plugrpc.router.stats import BUCKET_OF, TABLE_LIMIT, CallStats, bucket, bucket_bounds


def test_lookup_table_is_the_bucket_function() -> None:
    assert len(BUCKET_OF) == TABLE_LIMIT
    assert [BUCKET_OF[us] for us in range(TABLE_LIMIT)] == [bucket(us) for us in range(TABLE_LIMIT)]


@pytest.mark.parametrize("seconds", [0.000_001, 0.000_250, 0.012, 0.065_535, 0.065_536, 0.5, 30.0])
def test_percentiles_land_within_a_bucket_of_the_latency(seconds: float) -> None:
    """Both sides of the lookup table's limit (65.536 ms) are counted in the same buckets."""
    stats = CallStats()
    for _ in range(10):
        stats.record("m", seconds)
    p50 = stats.percentile(0.5)
    assert p50 is not None
    assert abs(p50 - seconds) <= 0.19 * seconds + 1e-6


def test_calls_and_errors_are_counted() -> None:
    stats = CallStats(["a", "b"])
    assert stats.snapshot()["calls"] == 0 and stats.percentile(0.5) is None
    for i in range(100):
        stats.record("ab"[i % 2], 0.001 * (i + 1), "error" if i % 4 == 0 else "timeout" if i % 4 == 1 else None)
    snap = stats.snapshot()
    assert snap["calls"] == 100
    assert snap["errors"] == 50 and snap["timeouts"] == 25
    assert stats.methods == {"a": 50, "b": 50}
    assert stats.failures == {("a", "error"): 25, ("b", "timeout"): 25}
    assert stats.us == sum(int(0.001 * (i + 1) * 1_000_000) for i in range(100))
    assert snap["p50_ms"] is not None and 40 <= snap["p50_ms"] <= 60
    assert snap["p99_ms"] is not None and 85 <= snap["p99_ms"] <= 115


def test_bucket_bounds_are_where_each_bucket_ends() -> None:
    """Every latency below a bound falls in a bucket at or before it: what a Prometheus `le` needs."""
    bounds = bucket_bounds()
    assert bounds[:6] == [(0, 1), (1, 2), (2, 3), (3, 4), (12, 5), (13, 6)]
    indices = [index for index, _ in bounds]
    for us in [*range(2000), 65_535, 65_536, 10**7]:
        index = bucket(us)
        upper = dict(bounds)[index]
        assert us < upper and (index == 0 or us >= dict(bounds)[indices[indices.index(index) - 1]])
