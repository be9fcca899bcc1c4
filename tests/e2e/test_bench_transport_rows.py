"""The bench's stdio, MCP and silent-failure rows run end to end in `--tiny` (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from util import REPO

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the bench reads /proc (Linux)")

ROWS = "router_stdio,router_line,mcp_shared,mcp_each,nats_fleet3,nats_blackhole"


def test_tiny_run_of_the_stdio_mcp_and_silent_rows(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--rows", ROWS, "--results", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=170, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [saved] = tmp_path.glob("*.json")
    data = json.loads(saved.read_text())
    assert not data["errors"], data["errors"]
    for row, scen in (("router_stdio", "conns-c1-100B"), ("router_line", "conns-c1-100B"),
                      ("mcp_shared", "conns-c8-100B"), ("mcp_each", "conns-c8-100B")):
        [window] = data["rounds"][row][scen]
        assert window["calls"] > 0 and window["p50_us"] > 0, (row, window)
    assert data["rounds"]["mcp_each"]["conns-c8-100B"][0]["rss_kib"]["mcp servers"] > 8 * 1000
    for key in ("mcp_shared", "mcp_each"):
        [start] = data["plugin_cost"]["mcp"][key]["runs"]
        assert start["first_answer_ms"] > 0 and start["cpu_ms"] > 0, start
    for key in ("nats_fleet3", "nats_blackhole"):
        [window] = data["silent"]["rows"][key]
        assert window is not None and window["sent"] > 0, data["silent"]
    for title in ("The stdio transport", "MCP: N callers", "A fleet under a silent failure"):
        assert title in proc.stdout
