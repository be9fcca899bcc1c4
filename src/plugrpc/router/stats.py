"""Per-plugin call statistics: counters and a latency histogram cheap enough for every call.

Latencies go into log-scale buckets (four per power of two of microseconds, so a bucket spans
at most 19% of its value): recording is a few integer operations, percentiles are read off the
buckets only when someone asks (`router.stats`, `plugrpc status`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from .. import codes

_SUB = 4  # buckets per power of two
_NBUCKETS = 64 * _SUB


def bucket(us: int) -> int:
    """The histogram bucket of a latency in microseconds."""
    bits = us.bit_length()
    if bits < 3:
        return us
    return (bits << 2) | ((us >> (bits - 3)) & 3)


def _bucket_table(bits_limit: int) -> bytes:
    """`bucket(us)` for every `us` below 2**bits_limit, built a run of equal buckets at a time
    (65,536 calls of `bucket` would add ~40 ms to the router's start)."""
    runs = [bytes(range(4))]  # 0..3 us: a bucket each
    for bits in range(3, bits_limit + 1):  # 2**(bits-1) .. 2**bits - 1 us: four runs of equal width
        runs += [bytes([bits << 2 | sub]) * (1 << (bits - 3)) for sub in range(4)]
    return b"".join(runs)


_TABLE_BITS: Final = 16
TABLE_LIMIT: Final = 1 << _TABLE_BITS
BUCKET_OF: Final = _bucket_table(_TABLE_BITS)
"""`bucket` of every latency under 65 ms, looked up instead of computed on the hot path."""


def _bucket_floor(index: int) -> int:
    """The smallest microsecond value that falls in bucket `index`."""
    if index < 8:
        return index
    bits, frac = index >> 2, index & 3
    return (4 | frac) << (bits - 3)


def bucket_bounds() -> list[tuple[int, int]]:
    """(index, upper bound in microseconds) of every bucket a latency can fall in, in order.

    A bucket holds the latencies from its floor up to (not including) the next one's floor.
    """
    used = [*range(4), *range(12, _NBUCKETS - 1)]  # bucket() never yields 4..11 (see bucket)
    return [(index, _bucket_floor(used[n + 1])) for n, index in enumerate(used[:-1])]


OUTCOMES: Final = {
    codes.PLUGIN_UNAVAILABLE: "unavailable",
    codes.CALL_TIMEOUT: "timeout",
    codes.OVERLOADED: "overloaded",
    codes.MESSAGE_TOO_LARGE: "too_large",
}
"""How a call the router failed with one of its own codes is counted; a plugin's errors are `error`."""
DROP_LOG_INTERVAL: Final = 10.0
"""Seconds between two log lines about one plugin's dropped notifications (each one is counted)."""


class CallStats:
    """Counters and latency histogram of one plugin, as the router sees its calls.

    Per method only what must be counted per call (`methods`); failures are counted by method
    and outcome on their own path (`failures`), so an ok call costs two increments and a sum.
    """

    __slots__ = ("errors", "timeouts", "hist", "us", "methods", "failures", "dropped")

    def __init__(self, methods: Iterable[str] = ()) -> None:
        self.errors = 0
        self.timeouts = 0
        self.hist = [0] * _NBUCKETS
        self.us = 0
        """Microseconds of every call counted, added up (a histogram's sum)."""
        self.methods = dict.fromkeys(methods, 0)
        """Calls finished by method: the exported ones, which are all a client can reach."""
        self.failures: dict[tuple[str, str], int] = {}
        """Calls that did not succeed, by (method, outcome): `error` (the plugin's), or one of `OUTCOMES`."""
        self.dropped = 0
        """Clients' notifications not forwarded because the plugin could not take them (no one is told else)."""

    @property
    def calls(self) -> int:
        """Calls finished: each one is counted in the histogram, and only there (one increment per call)."""
        return sum(self.hist)

    def record(self, method: str, seconds: float, outcome: str | None = None) -> None:
        """Count one finished call, failed with `outcome` unless None (inlined where it runs for every
        call: `PluginPool.finish`)."""
        if outcome is not None:
            self.failed(method, outcome)
        self.methods[method] = self.methods.get(method, 0) + 1
        us = int(seconds * 1_000_000)
        self.us += us
        self.hist[BUCKET_OF[us] if us < TABLE_LIMIT else bucket(us)] += 1

    def failed(self, method: str, outcome: str) -> None:
        """Count a failure of a call to `method` (the call itself is counted by `record`)."""
        self.errors += 1
        if outcome == "timeout":
            self.timeouts += 1
        key = (method, outcome)
        self.failures[key] = self.failures.get(key, 0) + 1

    def percentile(self, q: float) -> float | None:
        """Latency in seconds below which a fraction `q` of calls finished (bucket midpoint)."""
        total = sum(self.hist)
        if not total:
            return None
        rank = q * total
        seen = 0
        for index, count in enumerate(self.hist):
            seen += count
            if seen >= rank and count:
                low, high = _bucket_floor(index), _bucket_floor(index + 1)
                return (low + high) / 2 / 1_000_000
        return None  # pragma: no cover - rank <= total always reaches a bucket

    def snapshot(self) -> dict[str, Any]:
        """Figures for status views, latencies in milliseconds."""

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        return {
            "calls": self.calls,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "p50_ms": ms(self.percentile(0.5)),
            "p90_ms": ms(self.percentile(0.9)),
            "p99_ms": ms(self.percentile(0.99)),
            "notifications_dropped": self.dropped,
        }
