"""Turn a bench run into tables, the targets' verdicts and a PNG; `python -m bench.report FILE` renders a saved run.

Everything here reads the results dictionary (the JSON file's content), so a saved run can be
rendered again, its targets judged again by this version's targets:
`python -m bench.report bench/results/latest.json [--png out.png]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from . import rows as bench_rows
from . import silent as silent_rows
from .figures import LAT1, MB, median, ratio, stat, summary
from .settings import size_label
from .targets import REPEAT_PCT, evaluate_targets, too_short


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], note: str = "", *, better: str) -> str:
    """A titled text table; `better` says which way its figures are better, on the line under it, then `note`.

    A column no row has a figure for (every cell "-": a ratio to a row this run did not measure) is left out.
    """
    keep = [i for i in range(len(headers)) if i == 0 or not rows or any(r[i] != "-" for r in rows)]
    headers, rows = [headers[i] for i in keep], [[r[i] for i in keep] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [title, "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths,
                                                                                                   strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                  strict=True))))
    lines.append(better)
    if note:
        lines.append(note)
    return "\n".join(lines)


def us(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 10_000:
        return f"{v / 1000:.0f}ms"
    if v >= 1000:
        return f"{v / 1000:.2f}ms"
    return f"{v:.0f}us" if v >= 10 else f"{v:.1f}us"


def rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def times(v: dict[str, float] | None) -> str:
    return "-" if v is None else f"{v['median']:.2f}x"


def spread(v: dict[str, float] | None) -> str:
    return "-" if v is None else f"±{v['spread_pct'] / 2:.0f}%"


DESCRIPTIONS: dict[str, str] = {**{r.key: r.label for r in bench_rows.ROWS},
                                 **{f.key: f.label for f in bench_rows.FANOUTS}, "calls100": bench_rows.CALLS100_LABEL}
"""Each row's one-line meaning, from the rows' table (bench.rows): the list atop the report and the plot's legend."""


def describe(data: dict[str, Any], key: str) -> str:
    """What row `key` measures: its label in bench.rows, else the one its saved run recorded (a row since removed)."""
    saved = data["rows"].get(key) or data.get("fanouts", {}).get(key) or {}
    return DESCRIPTIONS.get(key) or saved.get("label") or ""


def _listed(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(name as the tables print it, description) for every row of the run, the fan-out rows and calls100 after."""
    out = [(_label(data, key), describe(data, key)) for key in data["rows"]]
    fanouts = data.get("fanouts") or {}
    out += [(key, describe(data, key)) for key in fanouts]
    if any("calls100" in r for r in (data.get("fanout") or {}).get("rounds", [])):
        out.append(("calls100", describe(data, "calls100")))
    out += [(key, silent_rows.LABELS[key]) for key in (data.get("silent") or {}).get("rows", {})]
    return out


def rows_block(data: dict[str, Any]) -> str:
    """One line per row name the tables below use, saying what it measures."""
    listed = _listed(data)
    width = max(len(name) for name, _ in listed)
    lines = ["The rows: what each name in the tables measures ((2h): 2 hops, the sockets a call crosses from its "
             "caller to the process that answers it)"]
    lines += [f"  {name:{width}}  {text}" for name, text in listed]
    return "\n".join(lines)


def _live_rows(data: dict[str, Any]) -> list[str]:
    return [k for k in data["rows"] if k in data["rounds"]]


def _label(data: dict[str, Any], key: str) -> str:
    return f"{key} ({data['rows'][key]['hops']}h)"


def _roles_cpu(data: dict[str, Any], row: str, scen: str) -> str:
    rounds = data["rounds"].get(row, {}).get(scen) or []
    roles = next((r["cpu_us_per_call"].keys() for r in rounds if r), [])
    parts = []
    for role in roles:
        value = median(data, row, scen, f"cpu_us_per_call.{role}")
        if value is not None and value >= 0.5:  # an idle helper (the router's watchdog) is left out
            parts.append(f"{role} {us(value)}")
    return ", ".join(parts) or "-"


def latency_table(data: dict[str, Any]) -> str:
    rows = []
    for key in _live_rows(data):
        p50 = summary(data, key, LAT1, "p50_us")
        if p50 is None:
            continue
        rows.append([
            _label(data, key), us(p50["median"]), us(median(data, key, LAT1, "p90_us")),
            us(median(data, key, LAT1, "p99_us")), us(median(data, key, LAT1, "p999_us")),
            rate(median(data, key, LAT1, "throughput")), spread(p50),
            times(ratio(data, key, "floor", LAT1, "p50_us")), times(ratio(data, key, "proxy", LAT1, "p50_us")),
            times(ratio(data, key, "proxy", LAT1, "p99_us")),
        ])
    n = data["settings"]["rounds"]
    return table(f"Latency at concurrency 1, 100 B params (median of {n} rounds)",
                 ["row (hops)", "p50", "p90", "p99", "p99.9", "calls/s", "p50 spread", "p50 xfloor", "p50 xproxy",
                  "p99 xproxy"], rows,
                 "spread: half of (max-min)/median over rounds" + _vs_note(data),
                 better="lower is better, except calls/s (higher is better)")


BASES: Final = {"floor": "xfloor", "proxy": "xproxy"}
"""The rows others are read against, and the columns' name for a ratio to each."""


def _vs_note(data: dict[str, Any], bases: Sequence[str] = tuple(BASES)) -> str:
    """How to read the ratio columns to the floor rows this run measured ("" when it measured none)."""
    present = [b for b in bases if b in data["rounds"]]
    if not present:
        return ""
    return (f"; {'/'.join(BASES[b] for b in present)}: the row's figure over the {' / '.join(present)} row's in the "
            "same round (median over rounds)")


def load_table(data: dict[str, Any], mode: str) -> str:
    conc = [c for c in data["settings"]["concurrency"]]
    rows = []
    for key in _live_rows(data):
        cells = []
        for c in conc:
            scen = LAT1 if c == 1 else f"{mode}-c{c}-100B"
            t = median(data, key, scen, "throughput")
            p = median(data, key, scen, "p99_us")
            cells.append("-" if t is None else f"{rate(t)} / {us(p)}")
        big = f"{mode}-c{max(conc)}-100B"
        x64 = f"{mode}-c64-100B" if 64 in conc else big
        if all(c == "-" for c in cells[1:]):
            continue
        rows.append([_label(data, key), *cells, times(ratio(data, key, "proxy", x64, "throughput")),
                     spread(summary(data, key, x64, "throughput"))])
    what = "each caller on its own connection" if mode == "conns" else "all callers on ONE pipelined connection"
    c64 = 64 if 64 in conc else max(conc)
    return table(f"Throughput (calls/s) / p99 by concurrency, 100 B, {what}",
                 ["row (hops)", *[f"c={c}" for c in conc], f"xproxy c={c64}", "spread"], rows,
                 "c=1 is the latency run above" + _vs_note(data, ("proxy",)),
                 better="calls/s: higher is better; p99: lower is better")


def payload_table(data: dict[str, Any]) -> str:
    sizes = data["settings"]["payloads"]
    headers = ["row (hops)"]
    scen_keys = []
    for size in sizes:
        key = [k for k, s in data["scenarios"].items() if s["mode"] == "conns" and s["callers"] == 1
               and s["payload"] == size][0]
        scen_keys.append((key, size))
        headers += [f"{_size(size)} p50", f"{_size(size)} MB/s"]
    headers.append(f"{_size(sizes[-1])} xproxy")
    rows = []
    for key in _live_rows(data):
        cells = []
        for scen, size in scen_keys:
            t = median(data, key, scen, "throughput")
            cells += [us(median(data, key, scen, "p50_us")), "-" if t is None else f"{t * size * 2 / MB:,.1f}"]
        rows.append([_label(data, key), *cells, times(ratio(data, key, "proxy", scen_keys[-1][0], "p50_us"))])
    return table("Payload sizes at concurrency 1 (params size; MB/s counts request + response)", headers, rows,
                 _vs_note(data, ("proxy",)).removeprefix("; "),
                 better="p50: lower is better; MB/s: higher is better")


def cpu_table(data: dict[str, Any]) -> str:
    c64 = "conns-c64-100B" if "conns-c64-100B" in data["scenarios"] else None
    rows = []
    for key in _live_rows(data):
        row = [_label(data, key), _roles_cpu(data, key, LAT1), us(median(data, key, LAT1, "client_cpu_us_per_call"))]
        if c64:
            row += [_roles_cpu(data, key, c64), us(median(data, key, c64, "client_cpu_us_per_call"))]
        rows.append(row)
    headers = ["row (hops)", "server CPU/call c=1", "client c=1"]
    if c64:
        headers += ["server CPU/call c=64", "client c=64"]
    return table("CPU time per call (utime+stime from /proc over the window / calls)", headers, rows,
                 "router = the router process alone; plugin = its plugin process(es); client = this load generator",
                 better="lower is better")


def _mb(kib: int | None) -> str:
    return "-" if kib is None else f"{kib * 1024 / MB:.1f}"


def rss_table(data: dict[str, Any]) -> str:
    rows = []
    for key, m in data["rss"].items():
        if "error" in m or "skipped" in m:
            rows.append([key, m.get("error") or m.get("skipped", ""), "", "", ""])
            continue
        for role in m["rest_kib"]:
            rows.append([f"{key}: {role}", _mb(m["rest_kib"].get(role)), _mb(m["idle_kib"].get(role)),
                         _mb(m["load_kib"].get(role)), "" if m["plugins"] is None else str(m["plugins"])])
    if not rows:
        return ""
    first = next(iter(data["rss"].values()), {})
    return table(f"RSS in MB (10^6 B): at rest, with {first.get('idle_connections', '?')} idle client connections "
                 f"(each after one call), under {first.get('load_callers', '?')} callers",
                 ["process", "rest", "idle conns", "load", "plugins"], rows,
                 "plugin rows are the sum over all plugin processes", better="lower is better")


def dispatch_table(data: dict[str, Any]) -> str:
    rounds = data["dispatch"].get("rounds", [])
    if not rounds:
        return ""
    names = [n for n in rounds[0] if n != "payload_1mib_ns"]
    sdk = [r.get("plugrpc.dispatch (SDK)") for r in rounds]
    rows = []
    for name in names:
        vals = [r.get(name) for r in rounds]
        nums = [v for v in vals if isinstance(v, float)]
        if not nums:
            rows.append([name, str(next((v for v in vals if isinstance(v, str)), "-")), "", ""])
            continue
        s = stat(nums)
        assert s is not None
        rel = stat([v / b for v, b in zip(vals, sdk, strict=False) if isinstance(v, float) and isinstance(b, float)])
        rows.append([name, us(s["median"] / 1000), spread(s), times(rel)])
    return table("Dispatch microbenchmark, in-process: request line -> response line, ~100 B echo",
                 ["dispatcher", "per call", "spread", "x SDK"], rows,
                 better="lower is better (x SDK: its time per call over the SDK's)")


def events_table(data: dict[str, Any]) -> str:
    """The fan-out rows, the calls they are compared with, and the progress and p2p rows against their yardsticks."""
    rounds = data.get("fanout", {}).get("rounds", [])
    rows = []
    for key in data.get("fanouts", {}):
        entries = [r[key] for r in rounds if "subscribers" in r.get(key, {})]
        if not entries:
            error = next((r[key]["error"] for r in rounds if "error" in r.get(key, {})), "not measured")
            rows.append([key, error[:60], "", "", "", ""])
            continue
        med = {m: stat([e[m] for e in entries]) for m in ("deliveries_per_s", "events_per_s", "p50_us", "p99_us")}
        rows.append([f"{key} ({entries[0]['subscribers']} subscribers)", rate(med["deliveries_per_s"]["median"]),
                     rate(med["events_per_s"]["median"]), us(med["p50_us"]["median"]), us(med["p99_us"]["median"]),
                     spread(med["deliveries_per_s"])])
    calls = stat([r["calls100"]["throughput"] for r in rounds if "throughput" in r.get("calls100", {})])
    if calls is not None:
        rows.append([f"calls100 ({rounds[0]['calls100']['callers']} callers, calls/s)", rate(calls["median"]), "", "",
                     "", spread(calls)])
    lines = []
    if rows:
        lines.append(table(f"Events: one plugin emitting bursts of events to its subscribers (median of {len(rounds)} "
                           "rounds)", ["row", "deliveries/s", "events/s", "p50 emit->delivery", "p99", "spread"], rows,
                           "deliveries count each event once per subscriber; the latencies are of one event at a "
                           "time; calls100: the same plugin answering 100 callers on their own connections",
                           better="deliveries/s, events/s and calls/s: higher is better; latencies: lower is better"))
    for num, den, what in (("progress", "router", "progress per call (each call reports once to a subscribed caller)"),
                           ("p2p", "client", "a plugin-to-plugin call (plugrpc.call) vs plugrpc.Client's call")):
        p50 = ratio(data, num, den, LAT1, "p50_us")
        if p50 is not None:
            tput = ratio(data, num, den, "conns-c64-100B", "throughput")
            mine, theirs = us(median(data, num, LAT1, "p50_us")), us(median(data, den, LAT1, "p50_us"))
            lines.append(f"{what}: p50 {mine} vs {theirs} ({times(p50)} {den}, {spread(p50)}; lower is better)"
                         + (f"; throughput at 64 callers {times(tput)} {den} (higher is better)" if tput is not None
                            else ""))
    return "\n".join(lines)


def targets_block(data: dict[str, Any]) -> str:
    lines = ["Targets (ratios within each round, median over rounds; [min..max]; PASS: the median and most rounds "
             "hold; each bound's <= or >= says which way is better)"]
    for t in data["targets"]:
        head = f"{t['status']:10}  {t['id']}: {t['target']}"
        if t["status"] == "SKIP":
            lines.append(f"{head} -- {t.get('missing', 'not measured')}: {t['what']}")
            continue
        bare = f"; bare parsing router {t['bare_router']:.2f}" if "bare_router" in t else ""
        of = t.get("of", "rounds")
        held = "one measurement" if t["rounds"] is None else f"held in {t['held']}/{t['rounds']} {of}"
        line = (f"{head} -- {t['value']:.2f} [{t['min']:.2f}..{t['max']:.2f}], {held} (target {t['limit']}; "
                f"{t['what']}{bare})")
        lines.append(f"{line} -- not judged: {t['not_judged']}" if "not_judged" in t else line)
    return "\n".join(lines)


PEERS = ("rpyc", "pyro5", "grpclib", "grpc", "http")
"""The rows a Python user would pick instead of plugrpc for process-to-process calls, beside the router."""


def _x(v: dict[str, float] | None) -> str:
    return "-" if v is None else f"{v['median']:.2f}x [{v['min']:.2f}..{v['max']:.2f}]"


def peers_table(data: dict[str, Any]) -> str:
    """Each peer next to the router (2 hops): how much faster the router is at p50 and how many times its
    throughput at 64 callers, as ratios within each round."""
    peers = [k for k in PEERS if k in data["rounds"]]
    if not peers or "router" not in data["rounds"]:
        return ""
    conc = data["settings"]["concurrency"]
    c64 = 64 if 64 in conc else max(conc)
    conns, pipe = f"conns-c{c64}-100B", f"pipe-c{c64}-100B"
    rows = [[_label(data, "router"), us(median(data, "router", LAT1, "p50_us")), "", rate(median(data, "router",
             conns, "throughput")), "", rate(median(data, "router", pipe, "throughput"))]]
    for key in peers:
        rows.append([_label(data, key), us(median(data, key, LAT1, "p50_us")),
                     _x(ratio(data, key, "router", LAT1, "p50_us")), rate(median(data, key, conns, "throughput")),
                     _x(ratio(data, "router", key, conns, "throughput")), rate(median(data, key, pipe, "throughput"))])
    return table("The peers a Python user would pick, beside the router (ratios within each round: median "
                 "[min..max])", ["row (hops)", "p50 c=1", "router faster at p50", f"calls/s c={c64}",
                                 f"router x calls/s c={c64}", f"pipelined c={c64}"], rows,
                 "each on a unix socket, 100 B; rpyc and Pyro5 callers are threads (synchronous libraries), "
                 "the others asyncio tasks",
                 better="p50: lower is better; calls/s: higher is better; a ratio above 1.00x: the router is ahead")


GO_ROWS = ("go_router", "go_exec")
"""The Go plugin (go/plugin) behind the router, persistent and once per call, beside the SDK `router` row."""


def _go_cells(data: dict[str, Any], key: str, conns: str, pipe: str) -> list[str]:
    """A row's p50 at c=1 and calls/s at `conns` and `pipe`, each with its ratio to go_router within each round."""
    p50 = "" if key == "go_router" else _x(ratio(data, key, "go_router", LAT1, "p50_us"))
    tput = "" if key == "go_router" else _x(ratio(data, "go_router", key, conns, "throughput"))
    return [_label(data, key), us(median(data, key, LAT1, "p50_us")), p50, rate(median(data, key, conns, "throughput")),
            tput, rate(median(data, key, pipe, "throughput"))]


def go_table(data: dict[str, Any]) -> str:
    """The Go plugin persistent (go_router) and exec per call (go_exec), both through the router, and the SDK
    router row: each row's p50 over go_router's and go_router's throughput at 64 callers over the row's."""
    keys = [k for k in ("router", *GO_ROWS) if k in data["rounds"]]
    if not any(k in data["rounds"] for k in GO_ROWS):
        return ""
    conc = data["settings"]["concurrency"]
    c64 = 64 if 64 in conc else max(conc)
    conns, pipe = f"conns-c{c64}-100B", f"pipe-c{c64}-100B"
    return table("A Go plugin (go/plugin) behind the router: persistent, and the same binary exec per call "
                 "(ratios within each round: median [min..max])",
                 ["row (hops)", "p50 c=1", "p50 / go_router's", f"calls/s c={c64}",
                  f"go_router's calls/s / row's c={c64}", f"pipelined c={c64}"],
                 [_go_cells(data, k, conns, pipe) for k in keys],
                 "the same echo over the same bare client, 100 B; exec: the router runs up to 4 executions per CPU "
                 "at once, further calls queue",
                 better="p50: lower is better; calls/s: higher is better; a ratio above 1.00x: go_router is ahead")


STDIO_ROWS = ("router", "router_line", "router_stdio")
"""The stdio transport's cost (bench.stdio): one minimal echo on stdin/stdout and on fd 3, the SDK plugin beside."""


def stdio_table(data: dict[str, Any]) -> str:
    """Each row's p50 at c=1 and calls/s at 64 callers, with its ratios to router_line's and router's in each round."""
    if "router_stdio" not in data["rounds"]:
        return ""
    c64 = "conns-c64-100B"
    rows = []
    for key in (k for k in STDIO_ROWS if k in data["rounds"]):
        rows.append([_label(data, key), us(median(data, key, LAT1, "p50_us")),
                     *(_x(ratio(data, key, base, LAT1, "p50_us")) for base in ("router_line", "router")),
                     rate(median(data, key, c64, "throughput")),
                     *(_x(ratio(data, key, base, c64, "throughput")) for base in ("router_line", "router"))])
    return table("The stdio transport: the router in front of the same minimal echo on stdin/stdout and on fd 3 "
                 "(ratios within each round: median [min..max])",
                 ["row (hops)", "p50 c=1", "p50 / router_line's", "p50 / router's", "calls/s c=64",
                  "calls/s / router_line's", "calls/s / router's"], rows,
                 "router_stdio and router_line run bench/plugins/line_echo.py (plugrpc.serve serves only fd 3); "
                 "router runs the SDK plugin on fd 3",
                 better="p50: lower is better; calls/s: higher is better; router_stdio's ratios to router_line's are "
                        "the transport's cost")


MCP_ROWS = ("mcp_shared", "mcp_each")
"""N callers on one MCP server behind the router, or on a server process each (bench.mcp)."""


def _mb_of(data: dict[str, Any], key: str, scen: str, roles: Sequence[str]) -> str:
    values = [median(data, key, scen, f"rss_kib.{role}") for role in roles]
    known = [v for v in values if v is not None]
    return f"{sum(known) * 1024 / MB:,.0f}" if known else "-"


def _mcp_start(data: dict[str, Any], key: str) -> tuple[str, str]:
    """Median ms from exec to the first tool answer, and CPU ms by then, over the starts after the rounds."""
    runs = [r for r in (data.get("plugin_cost") or {}).get("mcp", {}).get(key, {}).get("runs", []) if "error" not in r]
    if not runs:
        return "-", "-"
    return (f"{statistics.median(r['first_answer_ms'] for r in runs):,.0f}",
            f"{statistics.median(r['cpu_ms'] for r in runs):,.0f}")


def mcp_table(data: dict[str, Any]) -> str:
    """Calls/s, p50, the RSS of the server processes and of the router, and start-up, for each number of callers."""
    keys = [k for k in MCP_ROWS if k in data["rounds"]]
    if not keys:
        return ""
    rows = []
    for scen in sorted({s for k in keys for s in data["rounds"][k]}, key=lambda s: data["scenarios"][s]["callers"]):
        n = data["scenarios"][scen]["callers"]
        for key in keys:
            shared = key == "mcp_shared"
            start_ms, cpu_ms = _mcp_start(data, key)
            cpu_n = "-" if cpu_ms == "-" else f"{float(cpu_ms.replace(',', '')) * (1 if shared else n):,.0f}"
            rows.append([f"{key} (n={n})", rate(median(data, key, scen, "throughput")),
                         _x(ratio(data, key, "mcp_each", scen, "throughput")) if shared else "",
                         us(median(data, key, scen, "p50_us")), us(median(data, key, scen, "p99_us")),
                         "1" if shared else str(n),
                         _mb_of(data, key, scen, ("plugin",) if shared else ("mcp servers",)),
                         _mb_of(data, key, scen, ("router",)) if shared else "-", start_ms, cpu_ms, cpu_n])
    return table("MCP: N callers on one shared server process through the router, or one server process per caller "
                 "(ratios within each round: median [min..max])",
                 ["row (callers)", "calls/s", "calls/s / mcp_each's", "p50", "p99", "servers", "servers MB",
                  "router MB", "start ms", "start CPU ms", "start CPU ms, all"], rows,
                 "mcp_shared: each caller on its own connection to the router, one MCPServer process behind it on "
                 "stdio; mcp_each: each caller on its own MCPServer process, directly over its stdin/stdout (no "
                 "router). MB: RSS at the end of the window (the router alone, its watchdog left out). start: from "
                 "the exec to the first tools/call answer (initialize included; for mcp_shared, plugrpc run starting "
                 "the server), median of the starts after the rounds, fresh processes one at a time; all: what "
                 "starting every server for N callers costs in CPU",
                 better="calls/s: higher is better; p50, p99, MB, start: lower is better")


def silent_table(data: dict[str, Any]) -> str:
    """Calls by plugin over three routers, none or one blackholed: calls/s, p50, p99 and the calls that failed."""
    got = data.get("silent") or {}
    if got.get("skipped"):
        return f"A fleet under a silent failure: SKIPPED: {got['skipped']}"
    keys = [k for k in silent_rows.ROWS if got.get("rows", {}).get(k)]
    if not keys:
        return ""
    rows = []
    for key in keys:
        runs = [r for r in got["rows"][key] if r]
        mine = key != "nats_fleet3"
        pct = [r["failed_pct"] for r in runs]
        rows.append([key, f"{len(runs)}/{len(got['rows'][key])}", _stat_cell(runs, "throughput", rate),
                     _x(stat(silent_rows.pair_ratio(data, key, "nats_fleet3", "throughput"))) if mine else "",
                     _stat_cell(runs, "p50_us", us),
                     _x(stat(silent_rows.pair_ratio(data, key, "nats_fleet3", "p50_us"))) if mine else "",
                     _stat_cell(runs, "p99_us", us),
                     f"{statistics.median(pct):.2f}% (max {max(pct):.2f}%)" if pct else "-",
                     _stat_cell(runs, "failed_first_2s", lambda v: f"{v:.0f}")])
    return table(f"A fleet under a silent failure: calls by plugin over 3 routers on NATS, {got['callers']} callers, "
                 f"{got['timeout_s']:g} s timeout; figures over {got['window_s']:g} s after the first "
                 f"{got['settle_s']:g} s (median over pairs; ratios within each pair)",
                 ["row", "windows", "calls/s", "calls/s / fleet3's", "p50", "p50 / fleet3's", "p99",
                  "failed after 2 s", "failed in first 2 s"], rows,
                 "\n".join(f"{k}: {silent_rows.LABELS[k]}" for k in keys),
                 better="calls/s: higher is better; p50, p99, failed: lower is better")


def _stat_cell(runs: list[dict[str, Any]], figure: str, fmt: Any) -> str:
    values = [r[figure] for r in runs]
    return fmt(statistics.median(values)) if values else "-"


def _runs_cells(values: list[float], runs: list[dict[str, Any]], digits: int) -> list[str]:
    """Median, min..max and how many starts gave the figure."""
    s = stat(values)
    if s is None:
        return ["-", "-", f"0/{len(runs)}"]
    return [f"{s['median']:.{digits}f}", f"{s['min']:.{digits}f}..{s['max']:.{digits}f}", f"{len(values)}/{len(runs)}"]


def plugin_cost_table(data: dict[str, Any]) -> str:
    """What a plugin costs to keep: one plugin's start-up and idle RSS, `plugrpc run` with many (bench.plugin_cost)."""
    cost = data.get("plugin_cost") or {}
    rows = []
    for key, m in (cost.get("plugins") or {}).items():
        runs = m["runs"]
        ok = [r for r in m["runs"] if "error" not in r]
        rows.append([f"{key} plugin: exec to first answer (ms)",
                     *_runs_cells([r["first_answer_ms"] for r in ok], m["runs"], 0)])
        rows.append([f"{key} plugin: RSS idle after it (MB)",
                     *_runs_cells([r["idle_rss_kib"] * 1024 / MB for r in ok], m["runs"], 1)])
    start = cost.get("start")
    if start:
        runs, n = start["runs"], start["plugins"]
        ok = [r for r in runs if "error" not in r]
        rows.append([f"plugrpc run, {n} SDK plugins: exec to all answered (s)",
                     *_runs_cells([r["all_answered_s"] for r in ok], runs, 2)])
        rows.append(["  ... to the front socket accepting (s)", *_runs_cells([r["connected_s"] for r in ok], runs, 2)])
        rows.append(["  ... to the first plugin answering (s)",
                     *_runs_cells([r["first_answer_s"] for r in ok], runs, 2)])
        rows.append([f"  router RSS, {n} plugins idle (MB)",
                     *_runs_cells([r["rss_kib"]["router"] * 1024 / MB for r in ok], runs, 1)])
        rows.append(["  one plugin's RSS among them (MB, median)", *_runs_cells(
            [r["plugin_rss_kib_median"] * 1024 / MB for r in ok if r["plugin_rss_kib_median"]], runs, 1)])
    if not rows:
        return ""
    errors = [f"FAILED  {key} start {i + 1}: {r['error'][:300]}" for key, m in (cost.get("plugins") or {}).items()
              for i, r in enumerate(m["runs"]) if "error" in r]
    if start:
        errors += [f"FAILED  plugrpc run start {i + 1}: {r['error'][:300]}" for i, r in enumerate(start["runs"])
                   if "error" in r]
    return table("Plugins that cost little to keep (fresh processes; times from the exec of the command)",
                 ["what", "median", "min..max", "starts ok"], rows, "\n".join(errors),
                 better="lower is better (times and MB)")


def repeat_block(data: dict[str, Any]) -> str:
    """Each key ratio beside the previous full run's, so a reader sees which row moved."""
    prev = data.get("previous")
    if prev and prev.get("not_compared"):
        return f"Key ratios: not compared: {prev['not_compared']}"
    if not prev or not prev.get("ratios"):
        return ""
    lines = [f"Key ratios, previous run of the same kind ({prev['file']}, {prev.get('timestamp', '?')}) -> this run "
             f"(a change of either sign beyond {REPEAT_PCT:g}% is marked)"]
    if too_short(data["settings"]):
        lines[0] += "; windows this short move ratios by chance, so the repeat target is not judged"
    width = max(len(k) for k in prev["ratios"])
    for key, v in prev["ratios"].items():
        change = 100 * (v["now"] / v["before"] - 1) if v["before"] else math.nan
        mark = "  <- moved" if abs(change) > REPEAT_PCT else ""
        lines.append(f"  {key:{width}}  {v['before']:8.2f} -> {v['now']:8.2f}  {change:+6.1f}%{mark}")
    return "\n".join(lines)


def skipped_block(data: dict[str, Any]) -> str:
    lines = []
    for key, row in data["rows"].items():
        if row["skipped"]:
            lines.append(f"SKIPPED {key}: {row['skipped']}")
    seen: set[str] = set()
    for key, reasons in data["not_applicable"].items():
        for reason in sorted(set(reasons.values())):
            if (key, reason) not in seen:
                seen.add((key, reason))  # type: ignore[arg-type]
                lines.append(f"n/a     {key}: {', '.join(sorted(s for s, r in reasons.items() if r == reason))}: "
                             f"{reason}")
    for key, errors in data["errors"].items():
        for scen, message in errors.items():
            lines.append(f"FAILED  {key} {scen}: {message[:300]}")
    return "\n".join(lines)


def profile_block(data: dict[str, Any]) -> str:
    prof = data.get("profile") or {}
    if "skipped" in prof:
        return f"Profile: skipped: {prof['skipped']}"
    if "tool" not in prof:
        return ""
    lines = [f"Profile of the router ({prof['tool']})"]
    sys_counts = prof.get("syscalls") or {}
    if "skipped" in sys_counts:
        lines.append(f"  syscalls per call: skipped: {sys_counts['skipped']}")
    elif sys_counts:
        lines.append("  syscalls per call of the front process (strace -c; counts only, strace slows the process)")
        for row, by_c in sys_counts.items():
            for c, v in by_c.items():
                top = ", ".join(f"{name} {n:g}" for name, n in list(v["per_call"].items())[:6])
                lines.append(f"    {row:8} {v['process']:7} {c:>4}: {v['total']:5.2f}  ({top})")
    for run in prof.get("runs", {}).values():
        lines.append(f"  {run['callers']} callers, {run['throughput_during']:,.0f} calls/s while sampling; files: "
                     + ", ".join(f"{k}: {v}" for k, v in run["files"].items()))
        for role, top in run["top"].items():
            lines.append(f"    {role}: top self time ({top.get('samples', '?')} samples)")
            lines += [f"      {e['pct']:5.1f}%  {e['frame']}" for e in top["self"][:12]]
    return "\n".join(lines)


def machine_line(data: dict[str, Any]) -> str:
    m = data["machine"]
    return (f"{m['cpu']} x{m['cores']} cores (load {m.get('loadavg_at_start', 0):.1f} at start; pinning: "
            f"{m.get('pinning', '?')}), Python {m['python']}, "
            f"load generator loop {m['loop']}, "
            f"commit {data['commit']}{' (dirty)' if data.get('dirty') else ''}, {data['timestamp']}, "
            f"{data['settings']['mode']} run: {data['settings']['rounds']} rounds x "
            f"{data['settings']['duration']}s windows")


def background_line(data: dict[str, Any]) -> str:
    """How busy the machine was with other work while windows were measured: context for the spreads."""
    other = [r["other_cpu_pct"] for scen in data["rounds"].values() for rounds in scen.values() for r in rounds
             if r and "other_cpu_pct" in r]
    steal = [r["steal_pct"] for scen in data["rounds"].values() for rounds in scen.values() for r in rounds
             if r and "steal_pct" in r]
    if not other:
        return ""
    redone = sum(len(r.get("discarded", ())) for scen in data["rounds"].values() for rounds in scen.values()
                 for r in rounds if r)
    quiet = data["settings"].get("quiet_pct")
    return (f"Background: other processes used {statistics.median(other):.0f}% of the machine's CPU during the "
            f"median window (max {max(other):.0f}%); hypervisor steal {statistics.median(steal):.1f}% "
            f"(max {max(steal):.1f}%); {redone} windows measured again because other processes took more than "
            f"{quiet:.0f}% of the CPUs")


def render(data: dict[str, Any]) -> str:
    blocks = [machine_line(data), background_line(data), rows_block(data), latency_table(data),
              load_table(data, "conns"), load_table(data, "pipe"), payload_table(data), cpu_table(data),
              rss_table(data), dispatch_table(data), events_table(data), peers_table(data),
              go_table(data), plugin_cost_table(data), stdio_table(data), mcp_table(data), silent_table(data),
              skipped_block(data), profile_block(data), targets_block(data), repeat_block(data)]
    return "\n\n".join(b for b in blocks if b) + "\n"


def _size(n: int) -> str:
    return size_label(n).replace(" ", "")


# --- plot ------------------------------------------------------------------------------------

MARKERS: Final = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES: Final = ("-", "--", "-.", ":")
BOLD: Final = ("floor", "proxy", "router")
"""The rows every other is read against: drawn thicker."""


def _palette(plt: Any, n: int) -> list[tuple[float, ...]]:
    """`n` colours, no two alike: tab10, tab20's light ones, Dark2, tab20b's darkest; then evenly spaced hues."""
    cm = plt.cm
    curated = [*cm.tab10.colors, *cm.tab20.colors[1::2], *cm.Dark2.colors, *cm.tab20b.colors[::4]]
    colours = list(dict.fromkeys(tuple(c) for c in curated))
    extra = max(0, n - len(colours))
    colours += [tuple(cm.hsv(i / extra)[:3]) for i in range(extra)]
    return colours[:max(n, 1)]


def row_styles(plt: Any, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each row's colour, line style and marker, its own and the same in every run: by its place in bench.rows
    (a row a saved run has that bench.rows no longer does comes after). A colour is never shared; the marker and
    line style change too, so rows whose colours are near still read apart."""
    order = [*DESCRIPTIONS, *(k for k in keys if k not in DESCRIPTIONS)]
    colours = _palette(plt, len(order))
    styles = {}
    for i, key in enumerate(order):
        if key in keys:
            styles[key] = {"color": colours[i], "marker": MARKERS[i % len(MARKERS)],
                           "linestyle": LINESTYLES[(i // len(MARKERS)) % len(LINESTYLES)],
                           "linewidth": 2.5 if key in BOLD else 1.3}
    return styles


PANELS: Final = (
    ("conns", "throughput", "Throughput, one connection per caller (calls/s; higher is better)"),
    ("pipe", "throughput", "Throughput, all callers on one pipelined connection (calls/s; higher is better)"),
    ("conns", "p99_us", "p99 latency, one connection per caller (µs; lower is better)"),
)


def plot(data: dict[str, Any], path: Path) -> str | None:
    """Latency percentiles at c=1, throughput (both connection modes) and p99 by concurrency.

    Returns None, or why there is no plot. Shaded bands span the min..max over rounds. A figure a
    row does not have is a gap in its curve, never a line drawn across it. One legend below the
    panels, where it hides no curve, gives every row its style and its one-line meaning; the
    figure grows to hold it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    rows = [k for k in _live_rows(data) if summary(data, k, LAT1, "p50_us")]
    styles = row_styles(plt, rows)
    legend_lines = math.ceil(len(rows) / 2)
    fig = plt.figure(figsize=(16, 11 + 0.24 * legend_lines), layout="constrained")
    axes = fig.subplots(2, 2)
    _latency_bars(axes[0][0], data, rows)
    curved: set[str] = set()
    for ax, (mode, metric, title) in zip((axes[0][1], axes[1][0], axes[1][1]), PANELS, strict=True):
        curved |= _curves(ax, data, rows, styles, mode, metric)
        ax.set_title(title)
    _legend(fig, data, rows, styles, curved)
    fig.suptitle(f"plugrpc bench: {machine_line(data)}", fontsize=8, wrap=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return None


def _curves(ax: Any, data: dict[str, Any], rows: list[str], styles: dict[str, dict[str, Any]], mode: str,
            metric: str) -> set[str]:
    """One curve per row over the concurrencies, its band min..max; returns the rows drawn (2+ points)."""
    conc = data["settings"]["concurrency"]
    drawn = set()
    for key in rows:
        points = [summary(data, key, LAT1 if c == 1 else f"{mode}-c{c}-100B", metric) for c in conc]
        if sum(p is not None for p in points) < 2:
            continue  # only the c=1 figure (exec rows): no curve
        # NaN where the row has no figure: matplotlib breaks the line and the band there.
        mid, lo, hi = ([math.nan if p is None else p[k] for p in points] for k in ("median", "min", "max"))
        ax.plot(conc, mid, label=key, markersize=5, **styles[key])
        ax.fill_between(conc, lo, hi, color=styles[key]["color"], alpha=0.10)
        drawn.add(key)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(conc, [str(c) for c in conc])
    ax.set_xlabel("concurrent callers")
    ax.grid(True, which="both", alpha=0.3)
    return drawn


def _legend(fig: Any, data: dict[str, Any], rows: list[str], styles: dict[str, dict[str, Any]],
            curved: set[str]) -> None:
    """Below the panels: every row's style, name, hops and one-line meaning (a row without a curve is in the
    latency bars only)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], **styles[k]) for k in rows]
    labels = [f"{_label(data, k)}: {describe(data, k)}" + ("" if k in curved else " (c=1 bars only)") for k in rows]
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=9, frameon=False,
               title="The rows ((2h): 2 hops, the sockets a call crosses; a row has the same colour and marker in "
                     "every panel)", title_fontsize=9)


def _latency_bars(ax: Any, data: dict[str, Any], rows: list[str]) -> None:
    """p50..p99.9 at c=1 per row, log scale; the percentiles' legend between the title and the bars."""
    pcts = [("p50_us", "p50"), ("p90_us", "p90"), ("p99_us", "p99"), ("p999_us", "p99.9")]
    width = 0.8 / len(pcts)
    for i, (metric, name) in enumerate(pcts):
        vals = [median(data, k, LAT1, metric) or math.nan for k in rows]
        ax.bar([x + i * width for x in range(len(rows))], vals, width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))], rows, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("latency (µs, log)")
    ax.set_title("Latency at concurrency 1, 100 B, median over rounds (lower is better)", pad=26)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(ncol=len(pcts), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description="Render a saved bench run again.")
    parser.add_argument("json", type=Path)
    parser.add_argument("--png", type=Path, help="also write the plot here")
    args = parser.parse_args()
    data = json.loads(args.json.read_text())
    data["targets"] = evaluate_targets(data)  # judged again from the rounds, by this version's targets
    print(render(data), end="")
    if args.png:
        why = plot(data, args.png)
        print(f"plot: {why or os.fspath(args.png)}")


if __name__ == "__main__":
    main()
