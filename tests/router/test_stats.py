"""CallStats: the latency histogram behind `router.stats` and `plugrpc status`."""

from __future__ import annotations

import pytest

from plugrpc.router.stats import BUCKET_OF, TABLE_LIMIT, CallStats, bucket


def test_lookup_table_is_the_bucket_function() -> None:
    assert len(BUCKET_OF) == TABLE_LIMIT
    assert [BUCKET_OF[us] for us in range(TABLE_LIMIT)] == [bucket(us) for us in range(TABLE_LIMIT)]


@pytest.mark.parametrize("seconds", [0.000_001, 0.000_250, 0.012, 0.065_535, 0.065_536, 0.5, 30.0])
def test_percentiles_land_within_a_bucket_of_the_latency(seconds: float) -> None:
    """Both sides of the lookup table's limit (65.536 ms) are counted in the same buckets."""
    stats = CallStats()
    for _ in range(10):
        stats.record(seconds, error=False)
    p50 = stats.percentile(0.5)
    assert p50 is not None
    assert abs(p50 - seconds) <= 0.19 * seconds + 1e-6


def test_calls_and_errors_are_counted() -> None:
    stats = CallStats()
    assert stats.snapshot()["calls"] == 0 and stats.percentile(0.5) is None
    for i in range(100):
        stats.record(0.001 * (i + 1), error=i % 4 == 0)
    snap = stats.snapshot()
    assert snap["calls"] == 100
    assert snap["errors"] == 25
    assert snap["p50_ms"] is not None and 40 <= snap["p50_ms"] <= 60
    assert snap["p99_ms"] is not None and 85 <= snap["p99_ms"] <= 115
