"""`make bench` must not rot: its tiny mode runs on the baselines in seconds, and Ctrl-C leaves nothing behind;
the report judges a run's targets as it says it does.

No timing is asserted: the bench is where speed is measured, this only proves the harness runs
end to end (servers, load generator, memory phase, dispatch, report, JSON) and cleans up, and
checks the report's verdicts on made-up runs whose figures are known.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from util import REPO

sys.path.insert(0, os.fspath(REPO))  # bench/ runs from the checkout; it is not installed

from bench import report, rows, targets
from bench.rounds import Results
from bench.settings import Scenario, Settings

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the bench reads /proc (Linux)")

LAT1, C64 = "conns-c1-100B", "conns-c64-100B"
TARGET_LINE = re.compile(r"^(PASS|MISS|SKIP|NOT JUDGED) +([a-z0-9-]+): ")


def _bench(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry))
    return found


def _tiny_run(rows: str, results: Path) -> tuple[dict[str, Any], str, str]:
    """`python -m bench --tiny --rows ROWS`: its saved run, stdout and stderr (it must succeed)."""
    proc = _bench("--tiny", "--rows", rows, "--results", str(results))
    try:
        out, err = proc.communicate(timeout=50)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    [result] = results.glob("*.json")
    return json.loads(result.read_text()), out, err


def test_tiny_run_on_baselines(tmp_path: Path) -> None:
    data, out, err = _tiny_run("floor,proxy", tmp_path)
    assert data["settings"]["mode"] == "tiny"
    for row in ("floor", "proxy"):
        for scenario, rounds in data["rounds"][row].items():
            assert rounds and all(r is not None for r in rounds), (row, scenario, data["errors"])
            assert all(r["calls"] > 0 and r["p50_us"] > 0 for r in rounds)
        assert data["rss"][row]["idle_kib"], data["rss"][row]
    assert set(data["rounds"]["proxy"]["conns-c1-100B"][0]["cpu_us_per_call"]) == {"proxy", "echo"}
    assert isinstance(data["dispatch"]["rounds"][0]["jsonrpcserver.dispatch"], float)
    assert "Latency at concurrency 1" in out
    assert "floor (1h)" in out and "proxy (2h)" in out
    assert any(t["status"] == "SKIP" for t in data["targets"]), "router targets cannot be judged without the router"
    assert "[round 1/1" in err  # progress goes to stderr


def test_ctrl_c_stops_servers_and_removes_sockets(tmp_path: Path) -> None:
    proc = _bench("--tiny", "--rows", "floor,proxy", "--rounds", "50", "--results", str(tmp_path))
    try:
        assert proc.stderr is not None
        workdir = None
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "work dir " in line:
                workdir = line.rsplit("work dir ", 1)[1].strip()
            if line.startswith("[round 1/50") and "proxy" in line:
                break
        assert workdir and Path(workdir).is_dir()
        assert _processes_mentioning(workdir), "servers should be running mid-run"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert not Path(workdir).exists()
    assert not _processes_mentioning(workdir)
    assert not list(tmp_path.glob("*.json")), "an interrupted run writes no results"


# --- the report, on made-up runs ---------------------------------------------------------------


def _window(p50: float, throughput: float) -> dict[str, Any]:
    """One measured window, as the load generator records it (bench.load.drive)."""
    return {"calls": 1000, "seconds": 0.4, "throughput": throughput, "p50_us": p50, "p90_us": p50, "p99_us": p50,
            "p999_us": p50, "max_us": p50, "mean_us": p50, "cpu_us_per_call": {"server": 10.0},
            "client_cpu_us_per_call": 5.0, "rss_kib": {"server": 20_000}, "other_cpu_pct": 0.0, "steal_pct": 0.0,
            "discarded": []}


def _run(settings: Settings, router_x_proxy: Sequence[float],
         timestamp: str = "2026-06-01T00:00:00+00:00") -> dict[str, Any]:
    """A saved run of the floor, the proxy and the router, with the router `router_x_proxy[i]` times slower
    than the proxy in round i (at c=1 and at c=64), the dispatch and RSS figures of a good run."""
    n = len(router_x_proxy)
    settings = replace(settings, rounds=n, concurrency=(1, 64), payloads=(100,))

    def row(p50: float, throughput: float, factors: Sequence[float]) -> dict[str, list[dict[str, Any]]]:
        return {LAT1: [_window(p50 * f, throughput / f) for f in factors],
                C64: [_window(10 * p50 * f, 5 * throughput / f) for f in factors]}

    rounds = {"floor": row(40, 20_000, [1.0] * n), "proxy": row(80, 12_000, [1.0] * n),
              "router": row(80, 12_000, router_x_proxy)}
    return {
        "timestamp": timestamp, "commit": "0000000", "dirty": False,
        "machine": {"cpu": "test", "cores": 2, "python": "3", "loop": "uvloop", "platform": "test",
                    "loadavg_at_start": 0.0, "pinning": "none"},
        "settings": asdict(settings),
        "rows": {k: {"label": k, "hops": 1 if k == "floor" else 2, "client": "bare", "skipped": None} for k in rounds},
        "scenarios": {LAT1: {"mode": "conns", "callers": 1, "payload": 100},
                      C64: {"mode": "conns", "callers": 64, "payload": 100}},
        "rounds": rounds, "errors": {}, "not_applicable": {},
        "dispatch": {"rounds": [{"plugrpc.dispatch (SDK)": 1000.0, "jsonrpcserver.dispatch": 75_000.0,
                                 "payload_1mib_ns": 2e6}] * n},
        "rss": {"router": {"plugins": 10, "idle_connections": 1000, "load_callers": 64, "rest_kib": {"router": 28_000},
                           "idle_kib": {"router": 29_000}, "load_kib": {"router": 29_500},
                           "load_throughput": 50_000.0}},
        "profile": {}, "previous": None,
    }


def _target_lines(data: dict[str, Any]) -> list[str]:
    """The target lines `python -m bench` prints for `data`."""
    data["targets"] = targets.evaluate_targets(data)
    block = report.render(data).split("\nTargets (", 1)[1].split("\n\n", 1)[0]  # the key ratios' block follows
    return [line for line in block.splitlines()[1:] if not line.startswith("(")]


def test_saved_runs_are_judged_again_with_targets_keyed_by_what_they_measure(tmp_path: Path) -> None:
    """Older saved runs (their targets carry issue numbers) render with each target's id in their place."""
    older = _run(Settings(), [1.1] * 3)
    older["targets"] = [{"issue": 4, "target": "router p50 <= 1.3x line proxy p50", "status": "PASS", "value": 1.1,
                         "min": 1.1, "max": 1.1, "what": "router/proxy p50", "limit": "<= 1.3"}]
    path = tmp_path / "older.json"
    path.write_text(json.dumps(older))
    ids = [t.id for t in targets.TARGETS]
    assert len(set(ids)) == len(ids)
    for saved in (path, REPO / "bench" / "results" / "latest.json"):
        proc = subprocess.run([sys.executable, "-m", "bench.report", os.fspath(saved)], cwd=REPO, capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = proc.stdout.split("\nTargets (", 1)[1].splitlines()[1:]
        printed = [m.group(2) for line in lines if (m := TARGET_LINE.match(line))]
        assert printed == ids, lines
        assert "issue " not in proc.stdout.split("\nTargets (", 1)[1]


def test_repeat_check_compares_with_the_previous_full_run_latest_json_included(tmp_path: Path) -> None:
    """latest.json is committed (the other results are git-ignored), so it is often the only earlier full run."""
    (tmp_path / "latest.json").write_text(json.dumps(_run(Settings(), [1.2] * 3, "2026-05-01T00:00:00+00:00")))
    (tmp_path / "20260401T000000Z.json").write_text(json.dumps(_run(Settings(), [2.0] * 3,
                                                                     "2026-04-01T00:00:00+00:00")))
    (tmp_path / "20260515T000000Z.json").write_text(json.dumps(_run(Settings.quick(), [2.0] * 2,
                                                                     "2026-05-15T00:00:00+00:00")))
    now = _run(Settings(), [1.26] * 3)
    now["previous"] = targets.compare_previous(now, tmp_path, tmp_path / "20260601T000000Z.json")
    assert now["previous"]["file"] == "latest.json"
    assert now["previous"]["ratios"]["router/proxy p50"] == pytest.approx({"now": 1.26, "before": 1.2})
    [line] = [line for line in _target_lines(now) if line.split()[1] == "ratios-repeat-vs-previous:"]
    assert line.startswith("PASS") and "latest.json" in line

    empty = tmp_path / "empty"
    empty.mkdir()
    now["previous"] = targets.compare_previous(now, empty, empty / "20260601T000000Z.json")
    [line] = [line for line in _target_lines(now) if line.split()[1] == "ratios-repeat-vs-previous:"]
    assert f"no earlier run of the same kind in {empty}" in line and not line.startswith(("PASS", "MISS"))


def test_quick_run_judges_no_target_on_its_short_windows() -> None:
    """2 rounds of 0.12 s windows say nothing about a 1.3x bound: such targets are "not judged", never PASS/MISS;
    the router's RSS with 1,000 idle connections is measured as in a full run, so it is judged."""
    lines = _target_lines(_run(Settings.quick(), [1.0, 2.0]))
    judged = [line for line in lines if line.startswith(("PASS", "MISS"))]
    assert judged and all("RSS" in line for line in judged), judged
    p50 = next(line for line in lines if "router p50 <= 1.3x line proxy p50" in line)
    assert "not judged" in p50.lower() and "quick run" in p50


@pytest.mark.parametrize(("router_x_proxy", "verdict", "held"), [
    ([1.0, 1.0, 1.5, 1.5], "MISS", "held in 2/4 rounds"),  # the median (1.25) is within 1.3, only half the rounds are
    ([1.0, 1.0, 1.0, 1.5, 1.5], "PASS", "held in 3/5 rounds"),
    ([1.0, 1.0, 1.5, 1.5, 1.5], "MISS", "held in 2/5 rounds"),
])
def test_target_passes_only_when_its_median_and_most_rounds_hold(router_x_proxy: list[float], verdict: str,
                                                                 held: str) -> None:
    lines = _target_lines(_run(Settings(), router_x_proxy))
    line = next(line for line in lines if line.split()[1] == "router-p50-vs-proxy:")
    assert line.startswith(verdict) and held in line, line


def test_a_failed_round_counts_as_not_held() -> None:
    data = _run(Settings(), [1.0, 1.0, 1.0, 1.0])
    for scenario in data["rounds"]["router"].values():
        scenario[0] = scenario[1] = scenario[2] = None  # the router failed in 3 of the 4 rounds
    line = next(line for line in _target_lines(data) if line.split()[1] == "router-p50-vs-proxy:")
    assert line.startswith("MISS") and "held in 1/4 rounds" in line, line


def _plotted(data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """`report.plot(data)` run for real, and the figure it saved with its renderer, to look at what it drew."""
    from matplotlib.figure import Figure

    drawn: list[tuple[Figure, Any]] = []
    savefig = Figure.savefig

    def keep(fig: Figure, *args: Any, **kwargs: Any) -> None:
        savefig(fig, *args, **kwargs)
        drawn.append((fig, fig.canvas.get_renderer()))

    monkeypatch.setattr(Figure, "savefig", keep)
    assert report.plot(data, tmp_path / "run.png") is None
    [(fig, renderer)] = drawn
    return fig, renderer


def test_plot_breaks_lines_at_missing_points_and_keeps_legends_off_the_curves(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")  # the bench extra

    data = _run(Settings(), [1.1] * 3)
    data["settings"]["concurrency"] = concurrency = [1, 8, 64]
    for mode in ("conns", "pipe"):
        for callers in (8, 64):
            data["scenarios"][f"{mode}-c{callers}-100B"] = {"mode": mode, "callers": callers, "payload": 100}
        for row in ("floor", "proxy"):  # the router has no c=8 figure, as bare_router in a real run
            data["rounds"][row][f"{mode}-c8-100B"] = [_window(200, 60_000)] * 3
        for row in ("floor", "proxy", "router"):
            data["rounds"][row].setdefault(f"{mode}-c64-100B", [_window(1000, 90_000)] * 3)
    fig, renderer = _plotted(data, tmp_path, monkeypatch)
    curves = [line for ax in fig.axes for line in ax.get_lines()]
    assert {line.get_label() for line in curves} >= {"floor", "proxy", "router"}
    for line in curves:
        points = list(zip(line.get_xdata(), line.get_ydata(), strict=True))
        # matplotlib draws a segment between neighbouring points unless one is NaN (y != y)
        segments = [(a[0], b[0]) for a, b in itertools.pairwise(points) if a[1] == a[1] and b[1] == b[1]]
        assert all(concurrency.index(b) == concurrency.index(a) + 1 for a, b in segments), (
            f"{line.get_label()} is drawn across a missing point: {points}")
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes), "a legend covers a panel"


# --- the peers a Python user would pick, and what a plugin costs to keep -----------------------

PEER_ROWS = ("rpyc", "pyro5", "grpclib")


def _missing_peers() -> list[str]:
    """What to install for each peer row that cannot run here."""
    return [why for row in rows.ROWS if row.key in PEER_ROWS and (why := row.missing())]


def test_tiny_run_measures_the_peers_and_what_plugins_cost(tmp_path: Path) -> None:
    """The peers run in the same rounds as the router; one plugin's start-up and idle RSS and `plugrpc run`'s start
    of an image of SDK plugins come after them, in the output and the JSON, with their targets."""
    data, out, _ = _tiny_run("bare_router,direct,router,rpyc,pyro5,grpclib", tmp_path)
    for key in PEER_ROWS:
        if data["rows"][key]["skipped"]:  # the bench extra is not installed: the row says what to install
            assert "pip install -e '.[bench]'" in data["rows"][key]["skipped"]
            assert f"SKIPPED {key}: " in out
            continue
        [window] = data["rounds"][key][LAT1]
        assert window is not None and window["calls"] > 0 and window["p50_us"] > 0, data["errors"]
        assert window["cpu_us_per_call"]["server"] >= 0
        assert f"{key} (1h)" in out.split("The peers a Python user would pick", 1)[1]
    assert "pipe-c8-100B" in data["not_applicable"]["pyro5"], "a Pyro5 proxy carries one call at a time"

    cost = data["plugin_cost"]
    for plugin in ("sdk_echo", "ovs"):
        [start] = cost["plugins"][plugin]["runs"]
        assert 0 < start["first_answer_ms"] < 30_000 and start["idle_rss_kib"] > 1000, start
    assert cost["start"]["plugins"] == Settings.tiny().start_plugins
    [run] = cost["start"]["runs"]
    assert 0 < run["connected_s"] <= run["first_answer_s"] <= run["all_answered_s"] < cost["start"]["bound_s"], run
    assert run["plugin_processes"] == cost["start"]["plugins"] and run["rss_kib"]["router"] > 1000
    assert "Plugins that cost little to keep" in out and "exec to all answered" in out

    verdicts = {t["id"]: t for t in data["targets"]}
    assert verdicts["router-p50-vs-bare-router"]["status"] == "NOT JUDGED"  # tiny windows
    assert verdicts["sdk-plugin-rss-idle"]["status"] in ("PASS", "MISS")  # RSS is judged in any run
    assert verdicts["sdk-plugin-rss-idle"]["of"] == "starts"
    assert verdicts["plugins-100-start"]["status"] == "NOT JUDGED"
    assert verdicts["router-rss-100-plugins"]["not_judged"] == "the target is for 100 plugins"


async def _measured(row_key: str, scenario: Scenario, tmp_path: Path) -> dict[str, Any]:
    from bench.load import measure
    from bench.procs import Fleet
    from bench.servers import Lab

    fleet = Fleet(tmp_path)
    try:
        [row] = rows.select_rows({row_key})
        return await asyncio.wait_for(measure(Lab(fleet, tmp_path), row, scenario, Settings.tiny()), 30)
    finally:
        fleet.stop_all()


@pytest.mark.parametrize(("row_key", "mode"), [("rpyc", "conns"), ("rpyc", "pipe"), ("pyro5", "conns")])
async def test_blocking_peers_run_a_thread_per_caller(row_key: str, mode: str, tmp_path: Path) -> None:
    """rpyc and Pyro5 block in their calls: each caller is a thread of its own, on its own connection or (rpyc,
    pipelined) all on one, and every call is checked to come back intact before the window."""
    if _missing_peers():
        pytest.skip(f"the bench extra is not installed: {_missing_peers()}")
    window = await _measured(row_key, Scenario(mode, 4, 100), tmp_path)
    assert window["calls"] > 0 and window["p50_us"] > 0
    assert window["client_cpu_us_per_call"] > 0


def test_a_peer_whose_library_is_missing_is_skipped_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = rows.importlib.util.find_spec
    monkeypatch.setattr(rows.importlib.util, "find_spec", lambda name: None if name == "Pyro5" else real(name))
    results = Results(Settings.tiny(), rows.select_rows({"pyro5", "floor"}), [])
    assert results.skipped == {"pyro5": "Pyro5 is not installed (pip install -e '.[bench]')"}
    data = _run(Settings(), [1.0] * 3)
    data["rows"]["pyro5"] = {"label": "Pyro5", "hops": 1, "client": "Pyro5", "skipped": results.skipped["pyro5"]}
    assert "SKIPPED pyro5: Pyro5 is not installed (pip install -e '.[bench]')" in report.render(
        {**data, "targets": targets.evaluate_targets(data)})


def _with_peers(data: dict[str, Any], p50: dict[str, float], tput64: dict[str, float]) -> dict[str, Any]:
    """`data` with more rows, each at the given p50 (c=1) and throughput (64 callers) in every round."""
    n = data["settings"]["rounds"]
    for key in p50:
        data["rows"][key] = {"label": key, "hops": 2 if key == "bare_router" else 1, "client": key, "skipped": None}
        data["rounds"][key] = {LAT1: [_window(p50[key], 1e6 / p50[key])] * n,
                               C64: [_window(64e6 / tput64[key], tput64[key])] * n}
    return data


def _verdict(data: dict[str, Any], target_id: str) -> str:
    return next(line for line in _target_lines(data) if (m := TARGET_LINE.match(line)) and m.group(2) == target_id)


def test_router_against_the_bare_router_and_the_peers() -> None:
    """The router's p50 (80 us) and 64-caller throughput (60,000/s) against rows whose figures are known."""
    data = _with_peers(_run(Settings(), [1.0] * 3),
                       p50={"bare_router": 75, "rpyc": 160, "pyro5": 160, "grpclib": 400},
                       tput64={"bare_router": 70_000, "rpyc": 5_000, "pyro5": 7_000, "grpclib": 3_000})
    expected = {"router-p50-vs-bare-router": ("PASS", "1.07"), "router-tput64-vs-bare-router": ("MISS", "0.86"),
                "router-p50-vs-rpyc": ("PASS", "2.00"), "router-p50-vs-pyro5": ("MISS", "2.00"),
                "router-tput64-vs-rpyc": ("PASS", "12.00"), "router-tput64-vs-pyro5": ("MISS", "8.57")}
    for target_id, (status, value) in expected.items():
        line = _verdict(data, target_id)
        assert line.startswith(status) and f"-- {value} " in line and "held in " in line, line
    peers = report.peers_table(data)
    grpclib = next(line for line in peers.splitlines() if line.startswith("grpclib (1h)"))
    assert "5.00x [5.00..5.00]" in grpclib and "20.00x [20.00..20.00]" in grpclib, peers  # reported, no target
    assert not any(t.id.endswith("-grpclib") for t in targets.TARGETS)


def _plugin_cost(sdk_mb: Sequence[float | None], start_s: Sequence[float | None], plugins: int = 100,
                 router_mb: float = 30.0) -> dict[str, Any]:
    """What bench.plugin_cost records, a None in a list being a failed start."""
    def one(mb: float | None) -> dict[str, Any]:
        return {"error": "no answer"} if mb is None else {"first_answer_ms": 90.0, "idle_rss_kib": mb * 1e6 / 1024}

    def fleet(s: float | None) -> dict[str, Any]:
        if s is None:
            return {"error": "gave up"}
        return {"connected_s": 0.1, "first_answer_s": s / 2, "all_answered_s": s, "plugin_processes": plugins,
                "rss_kib": {"router": router_mb * 1e6 / 1024, "plugin": plugins * 25_000},
                "plugin_rss_kib_median": 25_000}

    return {"plugins": {"sdk_echo": {"runs": [one(v) for v in sdk_mb]}, "ovs": {"runs": [one(14.0)]}},
            "start": {"plugins": plugins, "bound_s": 30.0, "runs": [fleet(v) for v in start_s]}}


@pytest.mark.parametrize(("sdk_mb", "verdict", "held"), [
    ([14.0, 14.0, 30.0], "PASS", "held in 2/3 starts"),
    ([14.0, 14.0, None, None, 14.0], "PASS", "held in 3/5 starts"),
    ([14.0, 14.0, None, None, None], "MISS", "held in 2/5 starts"),  # the median of the answers is 14, but 3 failed
    ([16.0, 16.0, 14.0], "MISS", "held in 1/3 starts"),
])
def test_plugin_rss_passes_when_its_median_and_most_starts_hold(sdk_mb: list[float | None], verdict: str,
                                                                held: str) -> None:
    data = _run(Settings(), [1.0] * 3)
    data["plugin_cost"] = _plugin_cost(sdk_mb, [2.5, 2.8, 3.5])
    line = _verdict(data, "sdk-plugin-rss-idle")
    assert line.startswith(verdict) and held in line, line
    assert _verdict(data, "ovs-plugin-rss-idle").startswith("PASS")
    start = _verdict(data, "plugins-100-start")
    assert start.startswith("PASS") and "-- 2.80 [2.50..3.50], held in 2/3 starts" in start, start
    assert _verdict(data, "router-rss-100-plugins").startswith("PASS")
    table = report.plugin_cost_table(data)
    assert "plugrpc run, 100 SDK plugins: exec to all answered (s)" in table and "2.80" in table, table


def test_plugrpc_run_start_needs_100_plugins_and_a_few_starts_to_be_judged() -> None:
    quick = _run(Settings.quick(), [1.0] * 2)
    quick["plugin_cost"] = _plugin_cost([14.0], [2.0])
    assert "quick run, 1 start of plugrpc run" in _verdict(quick, "plugins-100-start")
    assert _verdict(quick, "router-rss-100-plugins").startswith("PASS")  # RSS does not need the median of a few
    small = _run(Settings(), [1.0] * 3)
    small["plugin_cost"] = _plugin_cost([14.0], [0.3, 0.3, 0.3], plugins=3)
    for target_id in ("plugins-100-start", "router-rss-100-plugins"):
        line = _verdict(small, target_id)
        assert line.startswith("NOT JUDGED") and "the target is for 100 plugins" in line, line
    failed = _run(Settings(), [1.0] * 3)
    failed["plugin_cost"] = _plugin_cost([14.0], [None, None, 2.0])
    assert _verdict(failed, "plugins-100-start").startswith("MISS")
    assert "FAILED  plugrpc run start 1: gave up" in report.plugin_cost_table(failed)


@pytest.mark.parametrize(("now", "verdict"), [(1.14, "PASS"), (1.16, "MISS")])
def test_repeat_check_allows_15_percent_and_says_which_ratio_moved(tmp_path: Path, now: float, verdict: str) -> None:
    (tmp_path / "latest.json").write_text(json.dumps(_run(Settings(), [1.0] * 3, "2026-05-01T00:00:00+00:00")))
    data = _run(Settings(), [now] * 3)
    data["previous"] = targets.compare_previous(data, tmp_path, tmp_path / "20260601T000000Z.json")
    assert _verdict(data, "ratios-repeat-vs-previous").startswith(verdict)
    block = report.repeat_block(data)
    p50 = next(line for line in block.splitlines() if "router/proxy p50" in line)
    assert "1.00 ->" in p50 and f"{now:.2f}" in p50 and f"+{(now - 1) * 100:.1f}%" in p50, block
    assert ("<- moved" in p50) == (verdict == "MISS"), p50
    assert "latest.json" in block.splitlines()[0]


# --- a report a newcomer reads without a question ----------------------------------------------


def _blocks(text: str) -> list[str]:
    return text.split("\n\n")


def test_report_opens_with_every_row_explained_from_the_rows_table() -> None:
    data = _run(Settings(), [1.0] * 3)
    data["rows"]["gone"] = {"label": "a row a newer bench no longer has", "hops": 1, "client": "bare", "skipped": None}
    data["fanouts"] = {f.key: {"label": f.label, "subscribers": f.subscribers} for f in rows.FANOUTS}
    text = report.render({**data, "targets": targets.evaluate_targets(data)})
    listing = next(b for b in _blocks(text) if b.startswith("The rows"))
    assert text.index(listing) < text.index("Latency at concurrency 1")
    labels = {r.key: r.label for r in rows.ROWS} | {f.key: f.label for f in rows.FANOUTS}
    for key in ("floor", "proxy", "router", *(f.key for f in rows.FANOUTS)):
        assert re.search(rf"^  {key}( \(\dh\))? +{re.escape(labels[key])}$", listing, re.M), listing
    assert "gone (1h)" in listing and "a row a newer bench no longer has" in listing  # saved label, no longer a row
    assert len(set(labels.values())) == len(labels), "two rows read the same"


def test_every_table_says_which_way_is_better() -> None:
    data = _with_peers(_run(Settings(), [1.0] * 3), p50={"rpyc": 160}, tput64={"rpyc": 5_000})
    data["plugin_cost"] = _plugin_cost([14.0], [2.5, 2.8, 3.5])
    tables = [b for b in _blocks(report.render({**data, "targets": targets.evaluate_targets(data)}))
              if re.search(r"^-+( +-+)*$", b, re.M)]
    assert len(tables) >= 8
    for block in tables:
        assert len(re.findall(r"(lower|higher) is better", block)) in (1, 2) and block.count("\n") >= 3, block


def test_targets_are_records_naming_rows_statistics_and_bounds() -> None:
    known = {r.key for r in rows.ROWS}
    for t in targets.TARGETS:
        assert t.metric.statistic in targets.STATISTICS and t.bound.op in targets.OPERATORS, t
        if t.metric.statistic in targets.RATIO_KEYS:
            assert {t.metric.row, t.metric.baseline} <= known, t
    data = _run(Settings(), [1.2] * 3)
    [entry] = [e for e in targets.evaluate_targets(data) if e["id"] == "router-p50-vs-proxy"]
    assert entry["metric"] == {"row": "router", "baseline": "proxy", "scenario": LAT1, "statistic": "p50",
                               "baseline_scenario": None}
    assert entry["bound"] == {"op": "<=", "number": 1.3} and entry["limit"] == "<= 1.3"


def test_repeat_check_does_not_compare_a_quick_run_with_a_full_one(tmp_path: Path) -> None:
    (tmp_path / "latest.json").write_text(json.dumps(_run(Settings(), [1.0] * 3, "2026-05-01T00:00:00+00:00")))
    quick = _run(Settings.quick(), [1.5] * 2)
    quick["previous"] = targets.compare_previous(quick, tmp_path, tmp_path / "20260601T000000Z.json")
    assert quick["previous"]["file"] is None
    block = report.repeat_block(quick)
    assert block.startswith("Key ratios: not compared: the saved run latest.json is a full run") and (
        "this one is a quick run" in block) and "moved" not in block, block
    line = _verdict(quick, "ratios-repeat-vs-previous")
    assert line.startswith("SKIP") and "-- not compared: the saved run latest.json is a full run" in line, line

    (tmp_path / "20260515T000000Z.json").write_text(json.dumps(_run(Settings.quick(), [1.0] * 2,
                                                                     "2026-05-15T00:00:00+00:00")))
    quick["previous"] = targets.compare_previous(quick, tmp_path, tmp_path / "20260601T000000Z.json")
    assert quick["previous"]["file"] == "20260515T000000Z.json"  # an earlier quick run: the same kind
    assert "<- moved" in report.repeat_block(quick)
    assert _verdict(quick, "ratios-repeat-vs-previous").startswith("NOT JUDGED")


def test_plot_gives_each_of_many_rows_its_own_colour_and_meaning(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_hex

    keys = [r.key for r in rows.ROWS] + ["extra1", "extra2"]  # 25+ rows, two a saved run has and bench.rows not
    data = _run(Settings(), [1.0] * 3)
    data = _with_peers(data, p50=dict.fromkeys(keys, 100.0), tput64=dict.fromkeys(keys, 50_000.0))
    fig, renderer = _plotted(data, tmp_path, monkeypatch)
    [legend] = fig.legends
    entries = {text.get_text().split(" ", 1)[0]: text.get_text() for text in legend.get_texts()}
    assert set(entries) == set(data["rows"]) and len(entries) >= 27
    for key in ("floor", "router", "nats_any3"):
        assert entries[key].endswith(report.describe(data, key)), entries[key]
    colours = [to_hex(handle.get_color()) for handle in legend.legend_handles]
    assert len(set(colours)) == len(colours), "two rows share a colour"
    assert not any(legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    titles = [ax.get_title() for ax in fig.axes]
    assert all(re.search(r"(lower|higher) is better", t) for t in titles), titles


def test_ratio_columns_to_a_row_the_run_did_not_measure_are_left_out() -> None:
    data = _run(Settings(), [1.0] * 3)
    del data["rows"]["proxy"], data["rounds"]["proxy"]
    text = report.render({**data, "targets": targets.evaluate_targets(data)})
    latency = next(b for b in _blocks(text) if b.startswith("Latency at concurrency 1"))
    assert "p50 xfloor" in latency and "xproxy" not in latency, latency
    line = _verdict(data, "router-p50-vs-proxy")
    assert line.startswith("SKIP") and "(proxy not in this run)" in line, line
