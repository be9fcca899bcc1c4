"""A TCP proxy that fails silently on demand, between a router or a caller and a real nats-server.

Silent failures are what a fleet must survive and what a killed process never shows: a link that
drops everything (iptables DROP, a partition), a peer that stops answering (SIGSTOP), a slow link.
The proxy itself is the bench's (`bench/nats_fault.py`, which says what each mode does); this runs
one as its own process, so a busy test loop delays nothing, and drives it: `NatsProxy`.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

from bench.nats_fault import HOST

REPO = Path(__file__).resolve().parents[1]


class NatsProxy:
    """A proxy process in front of the nats-server at `upstream` (a port); `url` is what to connect to."""

    def __init__(self, upstream: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.nats_fault", str(upstream)], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().split()
        assert first[:1] == ["port"], first
        self.port = int(first[1])
        self.url = f"nats://{HOST}:{self.port}"

    def set(self, command: str) -> None:
        """Switch mode (`pass`, `latency 0.2`, `pause`, `blackhole`, `reset`); returns once the proxy has."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer == "ok", answer

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

