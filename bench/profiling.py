"""`--profile`: where the router's time goes under load, and how many system calls a call costs.

py-spy samples the router and its plugin under 64 callers and under 1 (cProfile runs the router
instead when py-spy is missing); `strace -c` counts the system calls per call of each front
process, which on a VM explain most of the gap between a router and a byte proxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import log
from .clients import NdjsonConnections
from .load import drive
from .rounds import Results
from .servers import Lab, Router
from .settings import payload_params


def py_spy() -> str | None:
    """The py-spy binary (next to this interpreter or on PATH), if installed."""
    beside = Path(sys.executable).with_name("py-spy")
    return os.fspath(beside) if beside.exists() else shutil.which("py-spy")


async def profile_router(lab: Lab, results: Results, out_dir: Path, stamp: str) -> None:
    """Sample the router and its plugin with py-spy under 64 callers (the brief) and 1 (the latency
    targets); cProfile when py-spy is missing."""
    settings = results.settings
    row = results.live("router")
    if row is None:
        results.profile = {"skipped": "the router row did not run"}
        return
    spy = py_spy()
    if spy is None:
        await _cprofile_router(lab, results)
        return
    server = await lab.server(row.server)
    pids = server.roles()
    targets = {"router": pids["router"][0]}
    if pids["plugin"]:
        targets["plugin"] = pids["plugin"][0]
    runs = {}
    for callers in (64, 1):
        lab.check_stop()
        conns = await NdjsonConnections.open(server.path, callers, [row.method])
        spies = _start_py_spy(spy, targets, settings.profile_seconds, out_dir, f"{stamp}-c{callers}")
        try:
            log(f"[profile] py-spy on the router and its plugin, {callers} callers, {settings.profile_seconds:.0f}s")
            run = await drive(conns.calls, callers, payload_params(100), 0.5, settings.profile_seconds + 1.0,
                              server.roles)
        finally:
            await conns.aclose()
            files = _finish_py_spy(spies)
        top = {role: top_frames(Path(p)) for role, p in files.items() if not p.startswith("py-spy failed")}
        runs[f"c{callers}"] = {"callers": callers, "throughput_during": run["throughput"], "files": files, "top": top}
    results.profile = {"tool": "py-spy (sampling, --nonblocking; idle time excluded)", "runs": runs}


def _start_py_spy(spy: str, pids: dict[str, int], seconds: float, out_dir: Path,
                  stamp: str) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
    spies = []
    for role, pid in pids.items():
        path = out_dir / f"{stamp}-profile-{role}.speedscope.json"
        cmd = [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", "500",
               "--nonblocking", "--format", "speedscope", "--output", os.fspath(path)]
        spies.append((role, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), path))
    return spies


def _finish_py_spy(spies: list[tuple[str, subprocess.Popen[bytes], Path]]) -> dict[str, str]:
    """Wait for each py-spy; the collapsed-stack file of each, or why there is none."""
    files = {}
    for role, proc, path in spies:
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode == 0 and path.exists():
            files[role] = os.fspath(path)
        else:
            files[role] = f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}"
    return files



async def syscalls_per_call(lab: Lab, results: Results, rows: Sequence[str] = ("proxy", "router", "floor", "direct"),
                            callers: Sequence[int] = (1, 64), seconds: float = 1.0) -> None:
    """System calls per call of each front process (strace -c), at 1 and 64 callers.

    On a VM where a syscall or a wake-up costs microseconds, the count per call explains most
    of the gap between a router and a byte proxy; strace slows the process, so only the counts
    are kept, never its timings.
    """
    tracer = shutil.which("strace")
    if tracer is None:
        results.profile["syscalls"] = {"skipped": "strace is not installed (apt-get install strace)"}
        return
    out: dict[str, Any] = {}
    for key in rows:
        row = results.live(key)
        if row is None:
            continue
        server = await lab.server(row.server)
        front_role = next(iter(server.roles()))
        pid = server.roles()[front_role][0]
        for n in callers:
            lab.check_stop()
            conns = await NdjsonConnections.open(server.path, n, [row.method])
            try:
                counts, calls = await _strace_window(tracer, pid, conns, n, seconds, lab.workdir / f"strace-{key}.txt")
            finally:
                await conns.aclose()
            per_call = {name: round(c / calls, 2) for name, c in sorted(counts.items(), key=lambda kv: -kv[1])
                        if c / calls >= 0.05}
            out.setdefault(key, {})[f"c{n}"] = {"process": front_role, "calls": calls,
                                                "total": round(sum(counts.values()) / calls, 2), "per_call": per_call}
            log(f"[profile] syscalls per call, {key} ({front_role}) at {n} callers: "
                f"{out[key][f'c{n}']['total']} {per_call}")
    results.profile["syscalls"] = out


async def _strace_window(tracer: str, pid: int, conns: NdjsonConnections, callers: int, seconds: float,
                         path: Path) -> tuple[dict[str, int], int]:
    """Attach strace -c to `pid`, run `callers` for `seconds`, detach; syscall counts and calls made."""
    proc = await asyncio.create_subprocess_exec(tracer, "-c", "-f", "-p", str(pid), "-o", os.fspath(path),
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        await asyncio.wait_for(proc.stderr.readline(), 10)  # "strace: Process N attached"
        run = await drive(conns.calls, callers, payload_params(100), 0.0, seconds, _no_pids)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 10)
    return _strace_counts(path), run["calls"] + callers


def _no_pids() -> dict[str, list[int]]:
    return {}


def _strace_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            counts[parts[-1]] = int(parts[3])
    return counts

async def _cprofile_router(lab: Lab, results: Results) -> None:
    """Without py-spy: a second router run under cProfile (deterministic, so it slows the router).

    The binary stats stay in the work dir; the top functions go into the results.
    """
    path = lab.workdir / "router.pstats"
    spec = Router("router-profile", cprofile=os.fspath(path))
    server = await lab.server(spec)
    conns = await NdjsonConnections.open(server.path, 64, ["bench.echo"])
    try:
        log(f"[profile] cProfile on the router under 64 callers for {results.settings.profile_seconds:.0f}s")
        run = await drive(conns.calls, 64, payload_params(100), 0.5, results.settings.profile_seconds, server.roles)
    finally:
        await conns.aclose()
        lab.stop(spec, grace=15)  # cProfile writes its stats as the router exits
    import pstats

    stats = pstats.Stats(os.fspath(path))
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:20]  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.stats.values()) or 1  # type: ignore[attr-defined]
    top = [{"frame": f"{fn} ({Path(file).name}:{line})", "pct": round(100 * v[2] / total, 1)}
           for (file, line, fn), v in rows]
    results.profile = {"tool": "cProfile (py-spy not installed)", "runs": {"c64": {
        "callers": 64, "throughput_during": run["throughput"], "files": {}, "top": {"router": {"self": top}}}}}


def top_frames(path: Path, n: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from a py-spy speedscope file (all threads)."""
    doc = json.loads(path.read_text())
    names = [_frame_name(f) for f in doc["shared"]["frames"]]
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for prof in doc["profiles"]:
        for stack in prof.get("samples", []):
            if not stack:
                continue
            total += 1
            frames = [names[i] for i in stack]
            self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + 1
            for frame in set(frames):
                incl_counts[frame] = incl_counts.get(frame, 0) + 1

    def top(counts: dict[str, int]) -> list[dict[str, Any]]:
        best = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:n]
        return [{"frame": f, "pct": round(100 * c / max(total, 1), 1)} for f, c in best]

    return {"samples": total, "self": top(self_counts), "inclusive": top(incl_counts)}


def _frame_name(frame: dict[str, Any]) -> str:
    """Lines of one function merged: `fn (file.py)`."""
    file = frame.get("file") or ""
    return f"{frame['name']} ({Path(file).name})" if file else str(frame["name"])
