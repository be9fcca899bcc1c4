"""`python -m bench` (`make bench`): measure every row, print the tables, write JSON and a PNG.

    python -m bench               full run (11-13 minutes on 2 cores)
    python -m bench --quick       every row at smaller counts, about a minute
    python -m bench --profile     also sample the router under 64 callers (py-spy, else cProfile)
    python -m bench --tiny --rows floor,proxy --results /tmp/x   seconds; what the smoke test runs
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvloop

from . import figures, log, report, silent, targets
from .mcp import mcp_startup_phase
from .memory import memory_phase
from .plugin_cost import plugin_cost_phase
from .procs import Fleet
from .profiling import profile_router, syscalls_per_call
from .rounds import Results, run_rounds
from .rows import select_fanouts, select_rows
from .servers import BENCH_DIR, Lab
from .settings import Settings, scenarios
from .silent import silent_phase


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="plugrpc call latency, throughput and memory, "
                                     "side by side with the floor, the old exec model and the alternatives.")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="every row at smaller counts (about a minute)")
    size.add_argument("--tiny", action="store_true", help="a few seconds, no meaningful figures (smoke test)")
    parser.add_argument("--profile", action="store_true", help="profile the router under 64 callers")
    parser.add_argument("--rows", help="comma-separated row keys to run (default: all)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--duration", type=float, help="override the measuring window, seconds")
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results", help="where JSON and PNG go")
    parser.add_argument("--pin", choices=["none", "split"], default="none",
                        help="none (default): the scheduler places every process; split: load generator on CPU 0, "
                             "every server on the others (steadier on an idle machine, much worse p99 on a shared one)")
    parser.add_argument("--latest", action="store_true", help="also write latest.json / latest.png (for the README)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings.tiny() if args.tiny else Settings.quick(args.profile) if args.quick else Settings(
        profile=args.profile)
    if args.rounds:
        settings = replace(settings, rounds=args.rounds)
    if args.duration:
        settings = replace(settings, duration=args.duration)
    return settings


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=BENCH_DIR, capture_output=True, text=True, timeout=10,
                              check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "loop": f"uvloop {uvloop.__version__}", "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg()[0]}


def pin(mode: str) -> set[int] | None:
    """With "split": pin this process (the load generator) to the first CPU and return the CPUs for the servers.

    Not the default: on a shared 2-core machine a pinned process cannot move away from whatever
    else runs on its core, and p99 at concurrency 1 went from ~0.1 ms to ~3 ms here.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "none" or len(cpus) < 2:
        return None
    os.sched_setaffinity(0, {cpus[0]})
    return set(cpus[1:])


def describe_pinning(servers: set[int] | None) -> str:
    if servers is None:
        return "none: the scheduler places every process"
    return (f"load generator on CPU {sorted(os.sched_getaffinity(0))[0]}, servers (and the processes they start) on "
            f"CPU {','.join(map(str, sorted(servers)))}")


def raise_fd_limit() -> None:
    """1,000 idle connections need more than the usual 1,024 fds, in this process and the servers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def measure_all(settings: Settings, rows_arg: str | None, results_dir: Path, stamp: str,
                      workdir: Path, fleet: Fleet) -> Results:
    which = set(rows_arg.split(",")) if rows_arg else None
    results = Results(settings, select_rows(which), scenarios(settings), fanouts=select_fanouts(which))
    for key, why in results.skipped.items():
        log(f"[setup] {key}: skipped: {why}")
    lab = Lab(fleet, workdir)
    # Ctrl-C and SIGTERM (e.g. `timeout`) stop the run at once and clean up. The flag is checked
    # before every measurement too: Python 3.11's wait_for can swallow a cancellation that races
    # with a completing call.
    main = asyncio.current_task()
    assert main is not None

    def interrupt() -> None:
        lab.stop_requested = True
        main.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    await run_rounds(lab, results)
    if settings.profile:
        await profile_router(lab, results, results_dir, stamp)
        await syscalls_per_call(lab, results)
    lab.stop_servers()
    await memory_phase(lab, results)
    await plugin_cost_phase(lab, results)
    started = await mcp_startup_phase(lab, {r.key for r in results.rows if r.key not in results.skipped}, settings)
    if started:
        results.plugin_cost["mcp"] = started
    results.silent = await silent_phase(lab, set(silent.ROWS) if which is None else which, settings)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    results_dir: Path = args.results
    results_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    raise_fd_limit()
    host = machine()
    workdir = Path(tempfile.mkdtemp(prefix="plugrpc-bench-", dir="/tmp"))
    fleet = Fleet(workdir, cpus=pin(args.pin))
    host["pinning"] = describe_pinning(fleet.cpus)
    log(f"[setup] {settings.mode} run, {settings.rounds} rounds, work dir {workdir}")
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = runner.run(measure_all(settings, args.rows, results_dir, stamp, workdir, fleet))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("[bench] interrupted: stopping servers")
        return 130
    finally:
        fleet.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    data: dict[str, Any] = {"timestamp": now.isoformat(timespec="seconds"), "commit": git("rev-parse", "--short",
                            "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
                            "machine": host, **results.as_json()}
    json_path = results_dir / f"{stamp}.json"
    data["previous"] = targets.compare_previous(data, results_dir, json_path)
    data["summary"] = figures.summarize_all(data)
    data["targets"] = targets.evaluate_targets(data)
    json_path.write_text(json.dumps(data, indent=1))
    png_path = results_dir / f"{stamp}.png"
    no_plot = report.plot(data, png_path)
    print(report.render(data), end="")
    print(f"\nresults: {json_path}\nplot:    {no_plot or png_path}")
    if args.latest:
        shutil.copyfile(json_path, results_dir / targets.LATEST)
        if not no_plot:
            shutil.copyfile(png_path, results_dir / "latest.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
