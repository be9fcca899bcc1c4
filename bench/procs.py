"""The bench's child processes and what /proc says about them: start, wait until ready, CPU, RSS, stop.

Every server runs in its own session (so a Ctrl-C on the terminal reaches only the bench, which
then stops them in order) and dies with the bench even when the bench is killed (bench.launch).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from .launch import CPUS_ENV

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A row could not be measured; the message says why and ends up in the results."""


class Child:
    """One server process, with its log file (stdout and stderr) for error reports."""

    __slots__ = ("name", "popen", "log")

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 12) -> str:
        """The end of the child's output, to explain why it failed."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def died(self) -> BenchError:
        """The error to raise when the child exited when it should be serving."""
        tail = self.log_tail()
        return BenchError(f"{self.name} exited with status {self.popen.returncode}" + (f": {tail}" if tail else ""))


class Fleet:
    """Starts children and guarantees they are all stopped, also on Ctrl-C or an exception."""

    def __init__(self, workdir: Path, cpus: set[int] | None = None) -> None:
        self.workdir = workdir
        self.cpus = cpus
        """CPUs every server is pinned to (None: wherever the scheduler puts them)."""
        self.children: list[Child] = []

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        listen: socket.socket | None = None,
        cwd: Path | None = None,
    ) -> Child:
        """Start `argv`; `listen` is handed over as fd 3 with LISTEN_FDS=1 (the plugin contract)."""
        log = self.workdir / f"{name}.log"
        child_env = dict(os.environ if env is None else env)
        if self.cpus:
            child_env[CPUS_ENV] = ",".join(map(str, sorted(self.cpus)))
        fd = -1
        if listen is not None:
            fd = listen.fileno()
            child_env.update(LISTEN_FDS="1", LISTEN_FDNAMES=name)
        shim = [sys.executable, "-m", "bench.launch", str(os.getpid()), str(fd), "--", *argv]
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                shim,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env,
                cwd=cwd or Path(__file__).resolve().parent.parent,
                pass_fds=(fd,) if fd >= 0 else (),
                start_new_session=True,
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def stop(self, child: Child, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; waits for the exit either way."""
        _terminate([child], grace)
        with contextlib.suppress(ValueError):
            self.children.remove(child)

    def stop_all(self, grace: float = 5.0) -> None:
        """Stop every child still registered, newest first (a proxy before its upstream)."""
        _terminate(self.children, grace)
        self.children.clear()


def _terminate(children: Sequence[Child], grace: float) -> None:
    """SIGTERM to every live child, then SIGKILL to any still running `grace` seconds later; waits for each exit,
    newest first."""
    live = [c for c in children if c.alive()]
    for child in live:
        with contextlib.suppress(ProcessLookupError):
            child.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in reversed(live):
        try:
            child.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                child.popen.kill()
            child.popen.wait(5)


def listening_socket(path: Path) -> socket.socket:
    """A unix socket bound and listening at `path`, for a child to take over as fd 3."""
    from plugrpc.sockets import bind_socket

    sock = bind_socket(path)
    sock.setblocking(True)
    return sock


async def wait_connectable(path: Path | int, child: Child, within: float = 30.0) -> None:
    """Return once `path` (a unix socket, or a TCP port on 127.0.0.1) accepts a connection; fail early if
    `child` exits meanwhile."""
    deadline = time.monotonic() + within
    while True:
        if not child.alive():
            raise child.died()
        try:
            if isinstance(path, int):
                _, writer = await asyncio.open_connection("127.0.0.1", path)
            else:
                _, writer = await asyncio.open_unix_connection(os.fspath(path))
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"{child.name} did not accept connections on {path} within {within:.0f}s") from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


class Reaped(int):
    """A process whose children are what a role is charged for: those it has waited for, as a router running an
    exec-mode plugin waits for each execution. Its CPU is theirs (cutime + cstime), its RSS none: they are gone."""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads), from /proc/<pid>/stat; for a `Reaped` pid, that of
    its children it has waited for."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    first = 13 if isinstance(pid, Reaped) else 11
    return (int(fields[first]) + int(fields[first + 1])) / CLK_TCK


def machine_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    fields = (fields + [0] * 8)[:8]  # user nice system idle iowait irq softirq steal
    idle, iowait, steal = fields[3], fields[4], fields[7]
    total = sum(fields)
    return (total - idle - iowait - steal) / CLK_TCK, steal / CLK_TCK, total / CLK_TCK


def rss_kib(pid: int) -> int:
    """Resident set size in KiB (VmRSS); 0 for a `Reaped` pid (the processes it stands for have exited)."""
    if isinstance(pid, Reaped):
        return 0
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (from every thread's /proc children list)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
            found.extend(int(p) for p in f.read().split())
    return found
