"""Figures from the rounds of a run: medians, spreads and ratios taken within each round.

Everything here reads the results dictionary (the JSON file's content), so a saved run gives
the same figures again. Ratios between rows are taken within a round (so drift between rounds
cancels), then summarized over the rounds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any, Final

MB: Final = 1_000_000
"""Memory is reported in MB (10^6 B)."""
PAIRS: Final = ("floor", "proxy")
"""The rows every other row is compared with (`xfloor`, `xproxy`)."""
LAT1: Final = "conns-c1-100B"
"""The latency scenario: one caller, 100 B."""


def stat(values: Sequence[float]) -> dict[str, float] | None:
    """Median, min, max and spread ((max - min) / median, in %) of per-round values."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None
    med = statistics.median(vals)
    spread = 100 * (max(vals) - min(vals)) / med if med else 0.0
    return {"median": med, "min": min(vals), "max": max(vals), "spread_pct": spread, "n": len(vals)}


def per_round(data: dict[str, Any], row: str, scen: str, metric: str) -> list[float | None]:
    """One value per round (None where that round failed or the row has no such scenario)."""
    rounds = data["rounds"].get(row, {}).get(scen)
    if not rounds:
        return []
    return [None if r is None else _metric(r, metric) for r in rounds]


def _metric(entry: dict[str, Any], metric: str) -> float | None:
    if "." in metric:
        group, key = metric.split(".", 1)
        value = entry.get(group, {}).get(key)
        return None if value is None else float(value)
    return float(entry[metric])


def summary(data: dict[str, Any], row: str, scen: str, metric: str) -> dict[str, float] | None:
    return stat([v for v in per_round(data, row, scen, metric) if v is not None])


def median(data: dict[str, Any], row: str, scen: str, metric: str) -> float | None:
    s = summary(data, row, scen, metric)
    return None if s is None else s["median"]


def paired(data: dict[str, Any], num: str, den: str, scen: str, metric: str,
           den_scen: str | None = None) -> list[float]:
    """`num / den` within each round where both have the figure (paired, so drift between rounds cancels)."""
    a = per_round(data, num, scen, metric)
    b = per_round(data, den, den_scen or scen, metric)
    return [x / y for x, y in zip(a, b, strict=False) if x is not None and y]


def ratio(data: dict[str, Any], num: str, den: str, scen: str, metric: str,
          den_scen: str | None = None) -> dict[str, float] | None:
    """`num / den` within each round, summarized over the rounds."""
    return stat(paired(data, num, den, scen, metric, den_scen))


SUMMARY_METRICS: Final = ("p50_us", "p90_us", "p99_us", "p999_us", "throughput", "client_cpu_us_per_call")


def summarize_all(data: dict[str, Any]) -> dict[str, Any]:
    """Medians, spreads and ratios to the floor rows for every (row, scenario): the JSON's "summary"."""
    out: dict[str, Any] = {}
    for row, scens in data["rounds"].items():
        for scen, rounds in scens.items():
            entry: dict[str, Any] = {m: summary(data, row, scen, m) for m in SUMMARY_METRICS}
            roles = next((r["cpu_us_per_call"].keys() for r in rounds if r), [])
            entry["cpu_us_per_call"] = {role: summary(data, row, scen, f"cpu_us_per_call.{role}") for role in roles}
            entry["ratios"] = {base: {m: ratio(data, row, base, scen, m) for m in ("p50_us", "p99_us", "throughput")}
                               for base in PAIRS if base in data["rounds"]}
            out.setdefault(row, {})[scen] = entry
    return out
