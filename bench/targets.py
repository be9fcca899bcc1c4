"""The targets the project holds the router to, each keyed by what it measures, and how a run is judged against them.

The targets are one table, TARGETS: for each its key, what it measures, the metric as (row,
baseline, scenario, statistic) and the bound as (operator, number); STATISTICS says how each
statistic is computed from a run and how a verdict on it counts. Most are a ratio between two
rows within each round. A target passes when its median over the rounds is within the bound and
so is a majority of the rounds (a round without the figure does not hold): on a shared machine a
median can sit just inside a bound that half the rounds miss. The RSS and repeatability targets
are one measurement each; the latter compares this run's key ratios with those of the previous
run of the same kind (the same rounds and windows). What a plugin costs to keep
(bench.plugin_cost) is measured a few times outside the rounds: its median and most of its starts
must hold. A run too short for a figure (`--quick`, `--tiny`: few rounds of short windows, where
one scheduler hiccup moves a ratio by half) shows the figure but does not judge it: only a full
run's rounds and windows say PASS or MISS.
"""

from __future__ import annotations

import json
import math
import operator
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

from .figures import LAT1, MB, paired, per_round, ratio, stat
from .settings import Settings

FULL: Final = Settings()
"""What a full run measures: the yardstick of whether a run can judge a target."""
MIN_ROUNDS: Final = 3
"""A verdict from fewer rounds would be one noisy round's."""
LATEST: Final = "latest.json"
"""The saved run that git keeps (`python -m bench --latest` writes it): the others are git-ignored."""
REPEAT_PCT: Final = 15.0
"""Key ratios must repeat within this many % of the previous run of the same kind (or the note says which moved)."""
C64: Final = "conns-c64-100B"


def too_short(settings: dict[str, Any]) -> str | None:
    """Why a run's windows are too few or too short to judge a timed figure, or None."""
    if settings["rounds"] >= MIN_ROUNDS and settings["duration"] >= FULL.duration and settings["warmup"] >= FULL.warmup:
        return None
    rounds = settings["rounds"]
    return (f"{settings['mode']} run, {rounds} round{'s' * (rounds != 1)} of {settings['duration']:g} s windows "
            f"(a verdict needs {MIN_ROUNDS}+ rounds of {FULL.duration:g} s)")


def _windows_too_short(data: dict[str, Any]) -> str | None:
    return too_short(data["settings"])


def _dispatch_too_short(data: dict[str, Any]) -> str | None:
    settings = data["settings"]
    if settings["dispatch_seconds"] < FULL.dispatch_seconds:
        return (f"{settings['mode']} run, {settings['dispatch_seconds']:g} s of dispatch timing per round "
                f"(a verdict needs {FULL.dispatch_seconds:g} s)")
    return too_short(settings)


def _rss_too_small(data: dict[str, Any]) -> str | None:
    rss = data["rss"].get("router", {})
    plugins, idle = rss.get("plugins") or 0, rss.get("idle_connections") or 0
    if plugins >= FULL.rss_plugins and idle >= FULL.idle_conns:
        return None
    return f"the target is for {FULL.rss_plugins} plugins and {FULL.idle_conns:,} idle connections"


class Metric(NamedTuple):
    """What a target measures: `row`'s `statistic` in `scenario` over `baseline`'s (within each round).

    `statistic` is p50, p99 or throughput (a ratio of two rows' figures, `baseline` in `baseline_scenario` when
    given), or the name of a figure in STATISTICS, which reads `row`, `baseline` and the scenarios its own way.
    """

    row: str
    baseline: str | None
    scenario: str
    statistic: str
    baseline_scenario: str | None = None


OPERATORS: Final[dict[str, Callable[[float, float], bool]]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


class Bound(NamedTuple):
    """Where a figure passes: `op` (one of OPERATORS) `number`."""

    op: str
    number: float

    def holds(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.number)

    def __str__(self) -> str:
        return f"{self.op} {self.number}"


@dataclass(frozen=True)
class Target:
    """A bound on one figure of a run, keyed by a short stable id of what it measures."""

    id: str
    text: str
    """What it measures, as the report prints it."""
    metric: Metric
    bound: Bound
    reach: str | None = None
    """A row whose same figure is printed beside (the bare parsing router: how close a router that only parses got)."""


Figure = Callable[[dict[str, Any], Metric], tuple[list[float], str]]
"""A metric's values in a run (one per round that has it, one per start, or one; none: not measured) and how to read
them."""


@dataclass(frozen=True)
class Statistic:
    """How a figure is computed from a run, and how a verdict on it counts."""

    compute: Figure
    cannot_judge: Callable[[dict[str, Any]], str | None] = _windows_too_short
    """Why this run's figure is no ground for a verdict (None: it is)."""
    per_round: bool = True
    """False: one measurement per run, not one per round."""
    samples: Callable[[dict[str, Any], Metric], int] | None = None
    """A figure measured several times outside the rounds (starts of a plugin): how many times this run tried,
    each failed try not holding (None: `per_round` says)."""
    missing: str = "not measured"
    """What the report says when the run has no such figure."""


RATIO_KEYS: Final = {"p50": "p50_us", "p99": "p99_us", "throughput": "throughput"}
"""The statistics taken as a ratio of two rows within each round, and the window's figure each reads."""


def _ratio(data: dict[str, Any], m: Metric) -> tuple[list[float], str]:
    assert m.baseline is not None
    values = paired(data, m.row, m.baseline, m.scenario, RATIO_KEYS[m.statistic], m.baseline_scenario)
    if m.baseline_scenario:
        what = f"{m.row} {m.statistic} at {m.scenario} / {m.baseline}'s at {m.baseline_scenario}"
        what = what.replace("throughput", "calls/s")
    else:
        what = f"{m.row}/{m.baseline} {m.statistic}"
    absent = [r for r in dict.fromkeys((m.row, m.baseline)) if r not in data["rounds"]]
    if not values and absent:
        what += f" ({' and '.join(absent)} not in this run)"
    return values, what


def _dispatch_speedup(data: dict[str, Any], m: Metric) -> tuple[list[float], str]:
    """`row`'s ns per dispatch over `baseline`'s, within each round of the in-process microbenchmark."""
    vals = []
    for rnd in data["dispatch"].get("rounds", []):
        mine, ref = rnd.get(m.row), rnd.get(m.baseline or "")
        if isinstance(mine, float) and isinstance(ref, float):
            vals.append(mine / ref)
    return vals, f"{m.row} ns / {m.baseline} ns per dispatch"


def _router_rss(data: dict[str, Any], m: Metric) -> tuple[list[float], str]:
    rss = data["rss"].get(m.row, {})
    idle = rss.get("idle_kib", {}).get(m.row)
    if idle is None:
        return [], f"{m.row} RSS"
    return [idle * 1024 / MB], (
        f"{m.row} MB with {rss.get('plugins')} plugins, {rss.get('idle_connections')} idle connections")


def _one_copy(data: dict[str, Any], m: Metric) -> tuple[list[float], str]:
    """`row`'s CPU added by a big payload (`scenario` over `baseline_scenario`), less `baseline`'s, over one parse
    and one copy of each message.

    An estimate from CPU time: (router - proxy) extra CPU for 1 MiB over 100 B calls, divided by
    the in-process cost of parsing the request and response lines and copying each once.
    """
    row, base, big, small = m.row, m.baseline or "", m.scenario, m.baseline_scenario or LAT1
    budget = [r.get("payload_1mib_ns") for r in data["dispatch"].get("rounds", [])]
    parse_copy = statistics.median([b for b in budget if isinstance(b, float)] or [math.nan])
    vals = []
    for rb, rs, pb, ps in zip(per_round(data, row, big, f"cpu_us_per_call.{row}"),
                              per_round(data, row, small, f"cpu_us_per_call.{row}"),
                              per_round(data, base, big, f"cpu_us_per_call.{base}"),
                              per_round(data, base, small, f"cpu_us_per_call.{base}"), strict=False):
        if None not in (rb, rs, pb, ps) and parse_copy == parse_copy:
            extra = (rb - rs) - (pb - ps)  # type: ignore[operator]
            vals.append(extra * 1000 / (2 * parse_copy))
    return vals, f"{row}'s extra CPU per 1 MiB call / (parse + copy of request and response)"


def _fanout(data: dict[str, Any], m: Metric) -> tuple[list[float], str]:
    """`row`'s deliveries per second over `baseline`'s calls per second, as many subscribers as callers, within
    each round."""
    vals = []
    for rnd in data.get("fanout", {}).get("rounds", []):
        fan, calls = rnd.get(m.row, {}), rnd.get(m.baseline or "", {})
        if fan.get("subscribers") == calls.get("callers") and fan.get("deliveries_per_s") and calls.get("throughput"):
            vals.append(fan["deliveries_per_s"] / calls["throughput"])
    return vals, f"{m.row} deliveries/s / calls/s of {m.baseline}"


def _plugin_runs(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The starts of one plugin on its own (bench.plugin_cost), failed ones included."""
    return data.get("plugin_cost", {}).get("plugins", {}).get(key, {}).get("runs", [])


def _fleet_runs(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The starts of `plugrpc run` on an image of many SDK plugins, failed ones included."""
    return data.get("plugin_cost", {}).get("start", {}).get("runs", [])


def _idle_rss(data: dict[str, Any], m: Metric) -> tuple[list[float], str]:
    runs = _plugin_runs(data, m.row)
    return [r["idle_rss_kib"] * 1024 / MB for r in runs if "idle_rss_kib" in r], (
        f"{m.row} plugin's MB, idle after its first answer, over {len(runs)} starts")


def _outside_spread(data: dict[str, Any], m: Metric) -> tuple[list[float], str]:
    """How far `row`'s median is outside `baseline`'s [min..max] over the rounds, in widths of that band, on the
    worse side (0: within it, or better). Features off the call path must cost nothing a run can see."""
    key = RATIO_KEYS[m.statistic.removesuffix("_outside_spread")]
    ops = [v for v in per_round(data, m.row, m.scenario, key) if v is not None]
    ref = [v for v in per_round(data, m.baseline or "", m.scenario, key) if v is not None]
    what = f"{m.row} median outside {m.baseline}'s [min..max] {key.removesuffix('_us')}, in band widths"
    if not ops or len(ref) < 2:
        return [], what
    low, high = min(ref), max(ref)
    width = (high - low) or abs(high) * 1e-6 or 1e-9
    median = statistics.median(ops)
    worse = low - median if key == "throughput" else median - high
    return [max(0.0, worse / width)], what


def _fleet_started(data: dict[str, Any], m: Metric) -> tuple[list[float], str]:
    start = data.get("plugin_cost", {}).get("start", {})
    return [r["all_answered_s"] for r in _fleet_runs(data) if "all_answered_s" in r], (
        f"s from the exec of plugrpc run until all {start.get('plugins')} plugins answered, "
        f"over {len(_fleet_runs(data))} starts")


def _fleet_router_rss(data: dict[str, Any], m: Metric) -> tuple[list[float], str]:
    start = data.get("plugin_cost", {}).get("start", {})
    return [r["rss_kib"]["router"] * 1024 / MB for r in _fleet_runs(data) if "rss_kib" in r], (
        f"router MB with {start.get('plugins')} plugins, all answered and idle")


def _fleet_too_small(data: dict[str, Any]) -> str | None:
    plugins = data.get("plugin_cost", {}).get("start", {}).get("plugins") or 0
    return None if plugins >= FULL.start_plugins else f"the target is for {FULL.start_plugins} plugins"


def _fleet_too_few(data: dict[str, Any]) -> str | None:
    runs = len(_fleet_runs(data))
    if runs >= MIN_ROUNDS:
        return _fleet_too_small(data)
    return (f"{data['settings']['mode']} run, {runs} start{'s' * (runs != 1)} of plugrpc run (a verdict takes the "
            f"median of {MIN_ROUNDS}+)")


def _judged_always(data: dict[str, Any]) -> str | None:
    """RSS of one idle plugin does not depend on the run's length: every run judges it."""
    return None


def _repeat(data: dict[str, Any], m: Metric) -> tuple[list[float], str]:
    prev = data.get("previous")
    if not prev:
        return [], "this run was not compared with an earlier one"
    if prev["file"] is None:
        return [], prev.get("not_compared") or f"no earlier run of the same kind in {prev['searched']}"
    diffs = [abs(v["now"] / v["before"] - 1) * 100 for v in prev["ratios"].values() if v["before"]]
    return [max(diffs)] if diffs else [], f"largest change (%) of {len(diffs)} key ratios vs {prev['file']}"


STATISTICS: Final[dict[str, Statistic]] = {
    **{name: Statistic(_ratio) for name in RATIO_KEYS},
    "dispatch_ns": Statistic(_dispatch_speedup, cannot_judge=_dispatch_too_short),
    "rss_mb_1000_idle": Statistic(_router_rss, cannot_judge=_rss_too_small, per_round=False),
    "cpu_over_parse_copy": Statistic(_one_copy),
    "deliveries_per_call": Statistic(_fanout),
    "idle_rss_mb": Statistic(_idle_rss, cannot_judge=_judged_always, per_round=False,
                             samples=lambda d, m: len(_plugin_runs(d, m.row))),
    "all_answered_s": Statistic(_fleet_started, cannot_judge=_fleet_too_few, per_round=False,
                                samples=lambda d, m: len(_fleet_runs(d))),
    "router_rss_mb": Statistic(_fleet_router_rss, cannot_judge=_fleet_too_small, per_round=False,
                               samples=lambda d, m: len(_fleet_runs(d))),
    "largest_change_pct": Statistic(_repeat, per_round=False, missing="not compared"),
    "p50_outside_spread": Statistic(_outside_spread, per_round=False),
    "throughput_outside_spread": Statistic(_outside_spread, per_round=False),
}
"""Every statistic a target can name, by name."""

C1M: Final = "conns-c1-1MiB"
C256: Final = "conns-c256-100B"
SDK_DISPATCH: Final = "plugrpc.dispatch (SDK)"


def T(key: str, text: str, metric: tuple[Any, ...], bound: tuple[str, float], reach: str | None = None) -> Target:
    """One record of TARGETS: its key, what it measures, (row, baseline, scenario, statistic[, baseline scenario])
    and (operator, number)."""
    return Target(key, text, Metric(*metric), Bound(*bound), reach)


TARGETS: Final = [
    T("router-p50-vs-proxy", "router p50 <= 1.3x line proxy p50",
      ("router", "proxy", LAT1, "p50"), ("<=", 1.3), reach="bare_router"),
    T("router-tput64-vs-proxy", "router throughput at 64 callers >= 1.0x line proxy",
      ("router", "proxy", C64, "throughput"), (">=", 1.0), reach="bare_router"),
    T("router-p50-vs-exec-c", "router call >= 6x faster than exec per call (C plugin)",
      ("exec_c", "router", LAT1, "p50"), (">=", 6)),
    T("sdk-dispatch-vs-jsonrpcserver", "SDK dispatch >= 30x faster than jsonrpcserver.dispatch",
      ("jsonrpcserver.dispatch", SDK_DISPATCH, "dispatch", "dispatch_ns"), (">=", 30)),
    T("router-p50-vs-grpc", "router (2 hops) faster at p50 than gRPC unix (1 hop)",
      ("grpc", "router", LAT1, "p50"), (">", 1)),
    T("router-rss-1000-idle", "router RSS, 10 plugins + 1,000 idle connections <= 60 MB",
      ("router", None, "rss", "rss_mb_1000_idle"), ("<=", 60)),
    T("router-p50-vs-proxy-tight", "router p50 <= 1.0x line proxy p50 (stretch 0.9x)",
      ("router", "proxy", LAT1, "p50"), ("<=", 1.0), reach="bare_router"),
    T("router-p99-vs-proxy", "router p99 <= 1.2x line proxy p99",
      ("router", "proxy", LAT1, "p99"), ("<=", 1.2), reach="bare_router"),
    T("router-tput64-vs-proxy-tight", "router throughput at 64 callers >= 1.4x line proxy",
      ("router", "proxy", C64, "throughput"), (">=", 1.4), reach="bare_router"),
    T("router-tput256-vs-tput64", "router throughput at 256 callers holds (>= 0.95x its 64)",
      ("router", "router", C256, "throughput", C64), (">=", 0.95)),
    T("router-p50-vs-grpc-tight", "router >= 4x faster p50 than gRPC",
      ("grpc", "router", LAT1, "p50"), (">=", 4)),
    T("router-tput64-vs-grpc", "router >= 10x gRPC throughput at 64 callers",
      ("router", "grpc", C64, "throughput"), (">=", 10)),
    T("router-p50-vs-http", "router >= 2.5x faster p50 than aiohttp JSON-RPC",
      ("http", "router", LAT1, "p50"), (">=", 2.5)),
    T("router-tput64-vs-http", "router >= 5x aiohttp throughput at 64 callers",
      ("router", "http", C64, "throughput"), (">=", 5)),
    T("client-p50-vs-bare", "plugrpc.Client p50 <= 1.1x bare client",
      ("client", "router", LAT1, "p50"), ("<=", 1.1)),
    T("client-tput64-vs-bare", "plugrpc.Client throughput at 64 >= 1/1.1 of bare",
      ("router", "client", C64, "throughput"), ("<=", 1.1)),
    T("direct-p50-vs-client", "Client(direct=True) p50 <= 0.45x plugrpc.Client through the router",
      ("direct_client", "client", LAT1, "p50"), ("<=", 0.45)),
    T("direct-tput64-vs-client", "Client(direct=True) throughput at 64 callers >= 1.5x through the router",
      ("direct_client", "client", C64, "throughput"), (">=", 1.5)),
    T("direct-p50-vs-rpyc", "Client(direct=True) >= 2.5x faster at p50 than rpyc",
      ("rpyc", "direct_client", LAT1, "p50"), (">=", 2.5)),
    T("direct-p50-vs-pyro5", "Client(direct=True) >= 3x faster at p50 than Pyro5",
      ("pyro5", "direct_client", LAT1, "p50"), (">=", 3)),
    T("router-rss-1000-idle-tight", "router RSS, 10 plugins + 1,000 idle connections <= 40 MB",
      ("router", None, "rss", "rss_mb_1000_idle"), ("<=", 40)),
    T("router-1mib-cpu-vs-copy", "1 MiB: router adds <= parse + one copy (CPU estimate)",
      ("router", "proxy", C1M, "cpu_over_parse_copy", LAT1), ("<=", 1.0)),
    T("router-p50-vs-bare-router", "features nearly free: router p50 <= 1.10x the bare parsing router's",
      ("router", "bare_router", LAT1, "p50"), ("<=", 1.10)),
    T("router-tput64-vs-bare-router",
      "features nearly free: router throughput at 64 callers >= 0.90x the bare parsing router's",
      ("router", "bare_router", C64, "throughput"), (">=", 0.90)),
    T("router-p50-vs-rpyc", "router (2 hops) >= 1.5x faster at p50 than rpyc (1 hop)",
      ("rpyc", "router", LAT1, "p50"), (">=", 1.5)),
    T("router-p50-vs-pyro5", "router (2 hops) >= 2.5x faster at p50 than Pyro5 (1 hop)",
      ("pyro5", "router", LAT1, "p50"), (">=", 2.5)),
    T("router-tput64-vs-rpyc", "router >= 10x rpyc throughput at 64 callers",
      ("router", "rpyc", C64, "throughput"), (">=", 10)),
    T("router-tput64-vs-pyro5", "router >= 10x Pyro5 throughput at 64 callers",
      ("router", "pyro5", C64, "throughput"), (">=", 10)),
    T("sdk-plugin-rss-idle", "an idle SDK plugin (the bench's sdk_echo) RSS <= 15 MB",
      ("sdk_echo", None, "plugin_cost", "idle_rss_mb"), ("<=", 15)),
    T("ovs-plugin-rss-idle", "the bundled ovs plugin, idle, RSS <= 15 MB",
      ("ovs", None, "plugin_cost", "idle_rss_mb"), ("<=", 15)),
    T("plugins-100-start", "100 SDK plugins all answering <= 3 s after plugrpc run starts",
      ("plugrpc run", None, "plugin_cost", "all_answered_s"), ("<=", 3)),
    T("router-rss-100-plugins", "router RSS with 100 SDK plugins <= 40 MB",
      ("plugrpc run", None, "plugin_cost", "router_rss_mb"), ("<=", 40)),
    T("fanout100-vs-calls100", "fan-out to 100 subscribers delivers >= 50x the events/s of 100 separate calls",
      ("fanout100", "calls100", "fanout", "deliveries_per_call"), (">=", 50)),
    T("p2p-call-vs-client-call", "a plugin-to-plugin call costs <= 1.2x a client call through the router",
      ("p2p", "client", LAT1, "p50"), ("<=", 1.2)),
    # NATS: ratios to the NATS floor (bare nats-py request-reply to a bare responder) in the same round.
    T("nats-router-p50-vs-floor", "router over NATS p50 <= 1.3x the NATS floor p50",
      ("nats_router", "nats_floor", LAT1, "p50"), ("<=", 1.3)),
    T("nats-router-tput64-vs-floor", "router over NATS throughput at 64 callers >= 0.8x the NATS floor's",
      ("nats_router", "nats_floor", C64, "throughput"), (">=", 0.8)),
    T("nats-any3-tput64-vs-one", "3 routers behind plugrpc.any lose nothing against one router (64 callers)",
      ("nats_any3", "nats_router", C64, "throughput"), (">=", 1.0)),
    T("go-router-tput64-vs-go-exec",
      "a Go plugin persistent behind the router >= 20x the same binary exec per call, throughput at 64 callers",
      ("go_router", "go_exec", C64, "throughput"), (">=", 20)),
    T("ratios-repeat-vs-previous", f"key ratios repeat within {REPEAT_PCT:g}% of the previous run of the same kind",
      ("key ratios", "previous run", "-", "largest_change_pct"), ("<=", REPEAT_PCT)),
    T("router-ops-p50-in-spread", "router with --metrics and pings: p50 within the router's spread",
      ("router_ops", "router", LAT1, "p50_outside_spread"), ("<=", 0)),
    T("router-ops-tput64-in-spread", "router with --metrics and pings: throughput at 64 within its spread",
      ("router_ops", "router", C64, "throughput_outside_spread"), ("<=", 0)),
]
"""Every target: key, what it measures, the metric (row, baseline, scenario, statistic) and the bound."""


def evaluate_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target as PASS / MISS with its median, [min..max] and how many rounds held, NOT JUDGED (with why) when
    the run is too short for a verdict, or SKIP when it has no such figure."""
    return [judge(t, data) for t in TARGETS]


def _tries(t: Target, stat_: Statistic, data: dict[str, Any]) -> int | None:
    """How many rounds or starts a verdict counts (None: one measurement)."""
    if stat_.samples is not None:
        return stat_.samples(data, t.metric)
    return data["settings"]["rounds"] if stat_.per_round else None


def judge(t: Target, data: dict[str, Any]) -> dict[str, Any]:
    """One target's verdict: PASS needs the median within the bound and a majority of the rounds."""
    how = STATISTICS[t.metric.statistic]
    values, what = how.compute(data, t.metric)
    summary = stat(values)
    record = {"id": t.id, "target": t.text, "what": what, "limit": str(t.bound), "metric": t.metric._asdict(),
              "bound": t.bound._asdict()}
    if summary is None:
        return {**record, "status": "SKIP", "missing": how.missing}
    tries = _tries(t, how, data)
    held = sum(1 for v in values if t.bound.holds(v))
    why_not = how.cannot_judge(data)
    passed = t.bound.holds(summary["median"]) and 2 * held > (tries or 1)
    status = "NOT JUDGED" if why_not else "PASS" if passed else "MISS"
    entry = {**record, "status": status, "value": summary["median"], "min": summary["min"], "max": summary["max"],
             "held": held, "rounds": tries}
    if how.samples is not None:
        entry["of"] = "starts"
    if why_not:
        entry["not_judged"] = why_not
    reach = stat(how.compute(data, t.metric._replace(row=t.reach))[0]) if t.reach else None
    if reach is not None:
        entry["bare_router"] = reach["median"]
    return entry


KEY_RATIOS: Final = {
    "router/proxy p50": Metric("router", "proxy", LAT1, "p50"),
    "router/proxy tput64": Metric("router", "proxy", C64, "throughput"),
    "grpc/router p50": Metric("grpc", "router", LAT1, "p50"),
    "router/grpc tput64": Metric("router", "grpc", C64, "throughput"),
    "http/router p50": Metric("http", "router", LAT1, "p50"),
    "client/router p50": Metric("client", "router", LAT1, "p50"),
    "direct_client/client p50": Metric("direct_client", "client", LAT1, "p50"),
    "direct_client/client tput64": Metric("direct_client", "client", C64, "throughput"),
    "exec_c/router p50": Metric("exec_c", "router", LAT1, "p50"),
    "router/bare_router p50": Metric("router", "bare_router", LAT1, "p50"),
    "router/bare_router tput64": Metric("router", "bare_router", C64, "throughput"),
    "rpyc/router p50": Metric("rpyc", "router", LAT1, "p50"),
    "router/rpyc tput64": Metric("router", "rpyc", C64, "throughput"),
    "pyro5/router p50": Metric("pyro5", "router", LAT1, "p50"),
    "router/pyro5 tput64": Metric("router", "pyro5", C64, "throughput"),
    "grpclib/router p50": Metric("grpclib", "router", LAT1, "p50"),
    "router/grpclib tput64": Metric("router", "grpclib", C64, "throughput"),
}
"""The ratios the repeat check compares with the previous run of the same kind."""


def run_kind(settings: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two runs comparable: the same rounds and windows (a quick run's 0.12 s windows spread more)."""
    return settings["rounds"], settings["duration"], settings["warmup"]


def describe_kind(settings: dict[str, Any]) -> str:
    rounds = settings["rounds"]
    return (f"a {settings['mode']} run ({rounds} round{'s' * (rounds != 1)} of {settings['duration']:g} s windows, "
            f"{settings['warmup']:g} s warm-up)")


def compare_previous(data: dict[str, Any], results_dir: Path, this_file: Path | None) -> dict[str, Any]:
    """Key ratios of this run next to the previous run of the same kind's, for the repeatability target, or why none.

    The previous run is the newest earlier one in `results_dir` with the same rounds and windows, latest.json
    included: it is the one result file git keeps, so in a fresh checkout it is the only one there. A run of
    another kind is not compared: a quick run's ratios spread too widely to say a full run's moved.
    """
    newest, same = _previous_runs(data, results_dir, this_file)
    if same is None:
        out: dict[str, Any] = {"file": None, "searched": os.fspath(results_dir)}
        if newest is not None:
            out["not_compared"] = (f"the saved run {newest[0]} is {describe_kind(newest[1]['settings'])}, "
                                   f"this one is {describe_kind(data['settings'])}")
        return out
    name, before = same
    ratios = {}
    for key, m in KEY_RATIOS.items():
        now = ratio(data, m.row, m.baseline or "", m.scenario, RATIO_KEYS[m.statistic])
        then = ratio(before, m.row, m.baseline or "", m.scenario, RATIO_KEYS[m.statistic])
        if now and then:
            ratios[key] = {"now": now["median"], "before": then["median"]}
    return {"file": name, "timestamp": before["timestamp"], "ratios": ratios}


Found = tuple[str, dict[str, Any]]
"""A saved run: its file name and its data."""


def _previous_runs(data: dict[str, Any], results_dir: Path, this_file: Path | None) -> tuple[Found | None,
                                                                                              Found | None]:
    """The newest run in `results_dir` made before this one, and the newest of the same kind (None: there is none)."""
    stamped = sorted((p for p in results_dir.glob("*.json")
                      if p != this_file and p.name != LATEST and "-profile-" not in p.name), reverse=True)
    kind = run_kind(data["settings"])
    newest: Found | None = None
    same: Found | None = None
    for path in [results_dir / LATEST, *stamped]:
        run = _load_run(path)
        if run is None or run["timestamp"] >= data["timestamp"]:
            continue
        if newest is None or run["timestamp"] > newest[1]["timestamp"]:
            newest = path.name, run
        if run_kind(run["settings"]) == kind and (same is None or run["timestamp"] > same[1]["timestamp"]):
            same = path.name, run
            if path.name != LATEST:
                break  # timestamped names sort as their runs do: the first one of the same kind is the newest
    return newest, same


def _load_run(path: Path) -> dict[str, Any] | None:
    """A saved run, or None when `path` is missing or is not one."""
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return run if isinstance(run, dict) and {"timestamp", "settings", "rounds"} <= run.keys() else None
