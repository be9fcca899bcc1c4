"""The targets the project holds the router to, each keyed by what it measures, and how a run is judged against them.

A target is a figure of the run (mostly a ratio between two rows within each round) and a bound.
It passes when its median over the rounds is within the bound and so is a majority of the rounds
(a round without the figure does not hold): on a shared machine a median can sit just inside a
bound that half the rounds miss. The RSS and repeatability targets are one measurement each; the
latter compares this run's key ratios with the previous full run's. What a plugin costs to keep
(bench.plugin_cost) is measured a few times outside the rounds: its median and most of its starts
must hold. A run too short for a figure
(`--quick`, `--tiny`: few rounds of short windows, where one scheduler hiccup moves a ratio by
half) shows the figure but does not judge it: only a full run's rounds and windows say PASS or MISS.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .figures import LAT1, MB, paired, per_round, ratio, stat
from .settings import Settings

FULL: Final = Settings()
"""What a full run measures: the yardstick of whether a run can judge a target."""
MIN_ROUNDS: Final = 3
"""A verdict from fewer rounds would be one noisy round's."""
LATEST: Final = "latest.json"
"""The saved run that git keeps (`python -m bench --latest` writes it): the others are git-ignored."""
REPEAT_PCT: Final = 15.0
"""Key ratios must repeat within this many % of the previous full run (or the note says which row moved, and why)."""
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


Figure = Callable[[dict[str, Any]], tuple[list[float], str]]
"""A target's figure in a run: its values (one per round that has it; none: not measured) and how to read it."""


@dataclass(frozen=True)
class Target:
    """A bound on one figure of a run, keyed by a short stable id of what it measures."""

    id: str
    text: str
    compute: Figure
    passes: Callable[[float], bool]
    limit: str
    reach: Figure | None = None
    """The same figure for the bare parsing router: how close a router that only parses got."""
    cannot_judge: Callable[[dict[str, Any]], str | None] = _windows_too_short
    """Why this run's figure is no ground for a verdict (None: it is)."""
    per_round: bool = True
    """False: one measurement per run, not one per round."""
    samples: Callable[[dict[str, Any]], int] | None = None
    """A figure measured several times outside the rounds (starts of a plugin): how many times this run tried,
    each failed try not holding (None: `per_round` says)."""


def _r(num: str, den: str, scen: str, metric: str, den_scen: str | None = None) -> Figure:
    def compute(data: dict[str, Any]) -> tuple[list[float], str]:
        return paired(data, num, den, scen, metric, den_scen), f"{num}/{den} {metric.removesuffix('_us')}"

    return compute


def _vs_proxy(key: str, text: str, scen: str, metric: str, passes: Callable[[float], bool], limit: str) -> Target:
    """A router / line proxy target, with the bare parsing router's own figure beside it."""
    return Target(key, text, _r("router", "proxy", scen, metric), passes, limit,
                  reach=_r("bare_router", "proxy", scen, metric))


def _dispatch_speedup(data: dict[str, Any]) -> tuple[list[float], str]:
    vals = []
    for rnd in data["dispatch"].get("rounds", []):
        sdk, ref = rnd.get("plugrpc.dispatch (SDK)"), rnd.get("jsonrpcserver.dispatch")
        if isinstance(sdk, float) and isinstance(ref, float):
            vals.append(ref / sdk)
    return vals, "jsonrpcserver ns / SDK ns per dispatch"


def _router_rss(data: dict[str, Any]) -> tuple[list[float], str]:
    rss = data["rss"].get("router", {})
    idle = rss.get("idle_kib", {}).get("router")
    if idle is None:
        return [], "router RSS"
    return [idle * 1024 / MB], (
        f"router MB with {rss.get('plugins')} plugins, {rss.get('idle_connections')} idle connections")


def _holds(data: dict[str, Any]) -> tuple[list[float], str]:
    return paired(data, "router", "router", "conns-c256-100B", "throughput", "conns-c64-100B"), (
        "router calls/s at 256 / at 64 callers")


def _one_copy(data: dict[str, Any]) -> tuple[list[float], str]:
    """Router CPU added by a 1 MiB payload, over the proxy's plus one parse and one copy of each message.

    An estimate from CPU time: (router - proxy) extra CPU for 1 MiB over 100 B calls, divided by
    the in-process cost of parsing the request and response lines and copying each once.
    """
    big, small = "conns-c1-1MiB", "conns-c1-100B"
    budget = [r.get("payload_1mib_ns") for r in data["dispatch"].get("rounds", [])]
    parse_copy = statistics.median([b for b in budget if isinstance(b, float)] or [math.nan])
    vals = []
    for rb, rs, pb, ps in zip(per_round(data, "router", big, "cpu_us_per_call.router"),
                              per_round(data, "router", small, "cpu_us_per_call.router"),
                              per_round(data, "proxy", big, "cpu_us_per_call.proxy"),
                              per_round(data, "proxy", small, "cpu_us_per_call.proxy"), strict=False):
        if None not in (rb, rs, pb, ps) and parse_copy == parse_copy:
            extra = (rb - rs) - (pb - ps)  # type: ignore[operator]
            vals.append(extra * 1000 / (2 * parse_copy))
    return vals, "router's extra CPU per 1 MiB call / (parse + copy of request and response)"


def _fanout(data: dict[str, Any]) -> tuple[list[float], str]:
    """Deliveries per second to 100 subscribers over calls per second of 100 callers, within each round."""
    vals = []
    for rnd in data.get("fanout", {}).get("rounds", []):
        fan, calls = rnd.get("fanout100", {}), rnd.get("calls100", {})
        if fan.get("subscribers") == 100 and fan.get("deliveries_per_s") and calls.get("throughput"):
            vals.append(fan["deliveries_per_s"] / calls["throughput"])
    return vals, "fanout100 deliveries/s / calls/s of 100 callers"


def _plugin_runs(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The starts of one plugin on its own (bench.plugin_cost), failed ones included."""
    return data.get("plugin_cost", {}).get("plugins", {}).get(key, {}).get("runs", [])


def _fleet_runs(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The starts of `plugrpc run` on an image of many SDK plugins, failed ones included."""
    return data.get("plugin_cost", {}).get("start", {}).get("runs", [])


def _idle_rss(key: str) -> Figure:
    def compute(data: dict[str, Any]) -> tuple[list[float], str]:
        runs = _plugin_runs(data, key)
        return [r["idle_rss_kib"] * 1024 / MB for r in runs if "idle_rss_kib" in r], (
            f"{key} plugin's MB, idle after its first answer, over {len(runs)} starts")

    return compute


def _within_spread(row: str, base: str, scen: str, metric: str) -> Figure:
    """How far `row`'s median is outside `base`'s [min..max] over the rounds, in widths of that band, on the
    worse side (0: within it, or better). Features off the call path must cost nothing a run can see."""
    def compute(data: dict[str, Any]) -> tuple[list[float], str]:
        ops = [v for v in per_round(data, row, scen, metric) if v is not None]
        ref = [v for v in per_round(data, base, scen, metric) if v is not None]
        what = f"{row} median outside {base}'s [min..max] {metric.removesuffix('_us')}, in band widths"
        if not ops or len(ref) < 2:
            return [], what
        low, high = min(ref), max(ref)
        width = (high - low) or abs(high) * 1e-6 or 1e-9
        median = statistics.median(ops)
        worse = low - median if metric == "throughput" else median - high
        return [max(0.0, worse / width)], what

    return compute


def _fleet_started(data: dict[str, Any]) -> tuple[list[float], str]:
    start = data.get("plugin_cost", {}).get("start", {})
    return [r["all_answered_s"] for r in _fleet_runs(data) if "all_answered_s" in r], (
        f"s from the exec of plugrpc run until all {start.get('plugins')} plugins answered, "
        f"over {len(_fleet_runs(data))} starts")


def _fleet_router_rss(data: dict[str, Any]) -> tuple[list[float], str]:
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


def _repeat(data: dict[str, Any]) -> tuple[list[float], str]:
    prev = data.get("previous")
    if not prev:
        return [], "this run was not compared with an earlier one"
    if prev["file"] is None:
        return [], f"no earlier full run in {prev['searched']} to compare with"
    diffs = [abs(v["now"] / v["before"] - 1) * 100 for v in prev["ratios"].values() if v["before"]]
    return [max(diffs)] if diffs else [], f"largest change (%) of {len(diffs)} key ratios vs {prev['file']}"


TARGETS: Final = [
    _vs_proxy("router-p50-vs-proxy", "router p50 <= 1.3x line proxy p50", LAT1, "p50_us", lambda v: v <= 1.3,
              "<= 1.3"),
    _vs_proxy("router-tput64-vs-proxy", "router throughput at 64 callers >= 1.0x line proxy", "conns-c64-100B",
              "throughput", lambda v: v >= 1.0, ">= 1.0"),
    Target("router-p50-vs-exec-c", "router call >= 6x faster than exec per call (C plugin)",
           _r("exec_c", "router", LAT1, "p50_us"), lambda v: v >= 6, ">= 6"),
    Target("sdk-dispatch-vs-jsonrpcserver", "SDK dispatch >= 30x faster than jsonrpcserver.dispatch",
           _dispatch_speedup, lambda v: v >= 30, ">= 30", cannot_judge=_dispatch_too_short),
    Target("router-p50-vs-grpc", "router (2 hops) faster at p50 than gRPC unix (1 hop)",
           _r("grpc", "router", LAT1, "p50_us"), lambda v: v > 1, "> 1"),
    Target("router-rss-1000-idle", "router RSS, 10 plugins + 1,000 idle connections <= 60 MB", _router_rss,
           lambda v: v <= 60, "<= 60", cannot_judge=_rss_too_small, per_round=False),
    _vs_proxy("router-p50-vs-proxy-tight", "router p50 <= 1.0x line proxy p50 (stretch 0.9x)", LAT1, "p50_us",
              lambda v: v <= 1.0, "<= 1.0"),
    _vs_proxy("router-p99-vs-proxy", "router p99 <= 1.2x line proxy p99", LAT1, "p99_us", lambda v: v <= 1.2,
              "<= 1.2"),
    _vs_proxy("router-tput64-vs-proxy-tight", "router throughput at 64 callers >= 1.4x line proxy",
              "conns-c64-100B", "throughput", lambda v: v >= 1.4, ">= 1.4"),
    Target("router-tput256-vs-tput64", "router throughput at 256 callers holds (>= 0.95x its 64)", _holds,
           lambda v: v >= 0.95, ">= 0.95"),
    Target("router-p50-vs-grpc-tight", "router >= 4x faster p50 than gRPC", _r("grpc", "router", LAT1, "p50_us"),
           lambda v: v >= 4, ">= 4"),
    Target("router-tput64-vs-grpc", "router >= 10x gRPC throughput at 64 callers",
           _r("router", "grpc", "conns-c64-100B", "throughput"), lambda v: v >= 10, ">= 10"),
    Target("router-p50-vs-http", "router >= 2.5x faster p50 than aiohttp JSON-RPC",
           _r("http", "router", LAT1, "p50_us"), lambda v: v >= 2.5, ">= 2.5"),
    Target("router-tput64-vs-http", "router >= 5x aiohttp throughput at 64 callers",
           _r("router", "http", "conns-c64-100B", "throughput"), lambda v: v >= 5, ">= 5"),
    Target("client-p50-vs-bare", "plugrpc.Client p50 <= 1.1x bare client", _r("client", "router", LAT1, "p50_us"),
           lambda v: v <= 1.1, "<= 1.1"),
    Target("client-tput64-vs-bare", "plugrpc.Client throughput at 64 >= 1/1.1 of bare",
           _r("router", "client", "conns-c64-100B", "throughput"), lambda v: v <= 1.1, "<= 1.1"),
    Target("direct-p50-vs-client", "Client(direct=True) p50 <= 0.45x plugrpc.Client through the router",
           _r("direct_client", "client", LAT1, "p50_us"), lambda v: v <= 0.45, "<= 0.45"),
    Target("direct-tput64-vs-client", "Client(direct=True) throughput at 64 callers >= 1.5x through the router",
           _r("direct_client", "client", C64, "throughput"), lambda v: v >= 1.5, ">= 1.5"),
    Target("direct-p50-vs-rpyc", "Client(direct=True) >= 2.5x faster at p50 than rpyc",
           _r("rpyc", "direct_client", LAT1, "p50_us"), lambda v: v >= 2.5, ">= 2.5"),
    Target("direct-p50-vs-pyro5", "Client(direct=True) >= 3x faster at p50 than Pyro5",
           _r("pyro5", "direct_client", LAT1, "p50_us"), lambda v: v >= 3, ">= 3"),
    Target("router-rss-1000-idle-tight", "router RSS, 10 plugins + 1,000 idle connections <= 40 MB", _router_rss,
           lambda v: v <= 40, "<= 40", cannot_judge=_rss_too_small, per_round=False),
    Target("router-1mib-cpu-vs-copy", "1 MiB: router adds <= parse + one copy (CPU estimate)", _one_copy,
           lambda v: v <= 1.0, "<= 1.0"),
    Target("router-p50-vs-bare-router", "features nearly free: router p50 <= 1.10x the bare parsing router's",
           _r("router", "bare_router", LAT1, "p50_us"), lambda v: v <= 1.10, "<= 1.10"),
    Target("router-tput64-vs-bare-router",
           "features nearly free: router throughput at 64 callers >= 0.90x the bare parsing router's",
           _r("router", "bare_router", C64, "throughput"), lambda v: v >= 0.90, ">= 0.90"),
    Target("router-p50-vs-rpyc", "router (2 hops) >= 1.5x faster at p50 than rpyc (1 hop)",
           _r("rpyc", "router", LAT1, "p50_us"), lambda v: v >= 1.5, ">= 1.5"),
    Target("router-p50-vs-pyro5", "router (2 hops) >= 2.5x faster at p50 than Pyro5 (1 hop)",
           _r("pyro5", "router", LAT1, "p50_us"), lambda v: v >= 2.5, ">= 2.5"),
    Target("router-tput64-vs-rpyc", "router >= 10x rpyc throughput at 64 callers",
           _r("router", "rpyc", C64, "throughput"), lambda v: v >= 10, ">= 10"),
    Target("router-tput64-vs-pyro5", "router >= 10x Pyro5 throughput at 64 callers",
           _r("router", "pyro5", C64, "throughput"), lambda v: v >= 10, ">= 10"),
    Target("sdk-plugin-rss-idle", "an idle SDK plugin (the bench's sdk_echo) RSS <= 15 MB", _idle_rss("sdk_echo"),
           lambda v: v <= 15, "<= 15", cannot_judge=_judged_always, per_round=False,
           samples=lambda d: len(_plugin_runs(d, "sdk_echo"))),
    Target("ovs-plugin-rss-idle", "the bundled ovs plugin, idle, RSS <= 15 MB", _idle_rss("ovs"),
           lambda v: v <= 15, "<= 15", cannot_judge=_judged_always, per_round=False,
           samples=lambda d: len(_plugin_runs(d, "ovs"))),
    Target("plugins-100-start", "100 SDK plugins all answering <= 3 s after plugrpc run starts", _fleet_started,
           lambda v: v <= 3, "<= 3", cannot_judge=_fleet_too_few, per_round=False,
           samples=lambda d: len(_fleet_runs(d))),
    Target("router-rss-100-plugins", "router RSS with 100 SDK plugins <= 40 MB", _fleet_router_rss,
           lambda v: v <= 40, "<= 40", cannot_judge=_fleet_too_small, per_round=False,
           samples=lambda d: len(_fleet_runs(d))),
    Target("fanout100-vs-calls100", "fan-out to 100 subscribers delivers >= 50x the events/s of 100 separate calls",
           _fanout, lambda v: v >= 50, ">= 50"),
    Target("p2p-call-vs-client-call", "a plugin-to-plugin call costs <= 1.2x a client call through the router",
           _r("p2p", "client", LAT1, "p50_us"), lambda v: v <= 1.2, "<= 1.2"),
    # NATS: ratios to the NATS floor (bare nats-py request-reply to a bare responder) in the same round.
    Target("nats-router-p50-vs-floor", "router over NATS p50 <= 1.3x the NATS floor p50",
           _r("nats_router", "nats_floor", LAT1, "p50_us"), lambda v: v <= 1.3, "<= 1.3"),
    Target("nats-router-tput64-vs-floor", "router over NATS throughput at 64 callers >= 0.8x the NATS floor's",
           _r("nats_router", "nats_floor", "conns-c64-100B", "throughput"), lambda v: v >= 0.8, ">= 0.8"),
    Target("nats-any3-tput64-vs-one", "3 routers behind plugrpc.any lose nothing against one router (64 callers)",
           _r("nats_any3", "nats_router", "conns-c64-100B", "throughput"), lambda v: v >= 1.0, ">= 1.0"),
    Target("go-router-tput64-vs-go-exec",
           "a Go plugin persistent behind the router >= 20x the same binary exec per call, throughput at 64 callers",
           _r("go_router", "go_exec", C64, "throughput"), lambda v: v >= 20, ">= 20"),
    Target("ratios-repeat-vs-previous", f"key ratios repeat within {REPEAT_PCT:g}% of the previous full run", _repeat,
           lambda v: v <= REPEAT_PCT, f"<= {REPEAT_PCT:g}", per_round=False),
    Target("router-ops-p50-in-spread", "router with --metrics and pings: p50 within the router's spread",
           _within_spread("router_ops", "router", LAT1, "p50_us"), lambda v: v <= 0, "0", per_round=False),
    Target("router-ops-tput64-in-spread", "router with --metrics and pings: throughput at 64 within its spread",
           _within_spread("router_ops", "router", "conns-c64-100B", "throughput"), lambda v: v <= 0, "0",
           per_round=False),
]


def evaluate_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target as PASS / MISS with its median, [min..max] and how many rounds held, NOT JUDGED (with why) when
    the run is too short for a verdict, or SKIP when it has no such figure."""
    return [judge(t, data) for t in TARGETS]


def judge(t: Target, data: dict[str, Any]) -> dict[str, Any]:
    """One target's verdict: PASS needs the median within the bound and a majority of the rounds."""
    values, what = t.compute(data)
    summary = stat(values)
    if summary is None:
        return {"id": t.id, "target": t.text, "status": "SKIP", "what": what, "limit": t.limit}
    rounds = data["settings"]["rounds"] if t.per_round else 1
    if t.samples is not None:
        rounds = t.samples(data)
    held = sum(1 for v in values if t.passes(v))
    why_not = t.cannot_judge(data)
    status = "NOT JUDGED" if why_not else "PASS" if t.passes(summary["median"]) and 2 * held > rounds else "MISS"
    entry = {"id": t.id, "target": t.text, "status": status, "value": summary["median"], "min": summary["min"],
             "max": summary["max"], "held": held, "rounds": rounds if t.per_round or t.samples else None,
             "what": what, "limit": t.limit}
    if t.samples is not None:
        entry["of"] = "starts"

    if why_not:
        entry["not_judged"] = why_not
    reach = stat(t.reach(data)[0]) if t.reach is not None else None
    if reach is not None:
        entry["bare_router"] = reach["median"]
    return entry


KEY_RATIOS: Final = {
    "router/proxy p50": ("router", "proxy", LAT1, "p50_us"),
    "router/proxy tput64": ("router", "proxy", "conns-c64-100B", "throughput"),
    "grpc/router p50": ("grpc", "router", LAT1, "p50_us"),
    "router/grpc tput64": ("router", "grpc", "conns-c64-100B", "throughput"),
    "http/router p50": ("http", "router", LAT1, "p50_us"),
    "client/router p50": ("client", "router", LAT1, "p50_us"),
    "direct_client/client p50": ("direct_client", "client", LAT1, "p50_us"),
    "direct_client/client tput64": ("direct_client", "client", C64, "throughput"),
    "exec_c/router p50": ("exec_c", "router", LAT1, "p50_us"),
    "router/bare_router p50": ("router", "bare_router", LAT1, "p50_us"),
    "router/bare_router tput64": ("router", "bare_router", C64, "throughput"),
    "rpyc/router p50": ("rpyc", "router", LAT1, "p50_us"),
    "router/rpyc tput64": ("router", "rpyc", C64, "throughput"),
    "pyro5/router p50": ("pyro5", "router", LAT1, "p50_us"),
    "router/pyro5 tput64": ("router", "pyro5", C64, "throughput"),
    "grpclib/router p50": ("grpclib", "router", LAT1, "p50_us"),
    "router/grpclib tput64": ("router", "grpclib", C64, "throughput"),
}


def compare_previous(data: dict[str, Any], results_dir: Path, this_file: Path | None) -> dict[str, Any]:
    """Key ratios of this run next to the previous full run's, for the repeatability target, or where none was.

    The previous full run is the newest earlier one in `results_dir`, latest.json included: it is
    the one result file git keeps, so in a fresh checkout it is the only one there.
    """
    found = _previous_full_run(data["timestamp"], results_dir, this_file)
    if found is None:
        return {"file": None, "searched": os.fspath(results_dir)}
    name, before = found
    ratios = {}
    for key, (a, b, scen, metric) in KEY_RATIOS.items():
        now, then = ratio(data, a, b, scen, metric), ratio(before, a, b, scen, metric)
        if now and then:
            ratios[key] = {"now": now["median"], "before": then["median"]}
    return {"file": name, "timestamp": before["timestamp"], "ratios": ratios}


def _previous_full_run(timestamp: str, results_dir: Path, this_file: Path | None) -> tuple[str, dict[str, Any]] | None:
    """(file name, data) of the newest run in `results_dir` made before `timestamp` that is long enough to judge."""
    stamped = sorted((p for p in results_dir.glob("*.json")
                      if p != this_file and p.name != LATEST and "-profile-" not in p.name), reverse=True)
    best: tuple[str, dict[str, Any]] | None = None
    for path in [results_dir / LATEST, *stamped]:
        run = _load_run(path)
        if run is None or run["timestamp"] >= timestamp or too_short(run["settings"]):
            continue
        if best is None or run["timestamp"] > best[1]["timestamp"]:
            best = path.name, run
        if path.name != LATEST:
            break  # timestamped names sort as their runs do: the first one long enough is the newest
    return best


def _load_run(path: Path) -> dict[str, Any] | None:
    """A saved run, or None when `path` is missing or is not one."""
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return run if isinstance(run, dict) and {"timestamp", "settings", "rounds"} <= run.keys() else None
