"""`make bench` must not rot: its tiny mode runs on the baselines in seconds, and Ctrl-C leaves nothing behind.

No timing is asserted: the bench is where speed is measured, this only proves the harness runs
end to end (servers, load generator, memory phase, dispatch, report, JSON) and cleans up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from util import REPO

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the bench reads /proc (Linux)")


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


def test_tiny_run_on_baselines(tmp_path: Path) -> None:
    proc = _bench("--tiny", "--rows", "floor,proxy", "--results", str(tmp_path))
    try:
        out, err = proc.communicate(timeout=50)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    [result] = tmp_path.glob("*.json")
    data = json.loads(result.read_text())
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
