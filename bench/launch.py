"""Exec shim for the bench's child processes: tie the child's life to the bench, hand over fd 3, exec.

`python -m bench.launch PARENT_PID FD -- ARGV...` (FD is -1 for none; $PLUGRPC_BENCH_CPUS pins;
$PLUGRPC_BENCH_EXEC_STAMP names a file for the time of the exec). Doing this in a shim
rather than a `preexec_fn` keeps `subprocess` on its fork-safe path even when the bench process
already runs threads (grpc starts some), and PR_SET_PDEATHSIG survives the exec, so a bench
killed with SIGKILL still takes every server with it.
"""

from __future__ import annotations

import os
import sys
import time

from plugrpc.process.env import die_with_parent

LISTEN_FD = 3
"""systemd socket activation (and plugrpc's plugin contract, docs/design.md) put the listening socket here."""
CPUS_ENV = "PLUGRPC_BENCH_CPUS"
"""Comma-separated CPUs the server (and every process it starts) is pinned to, when set."""
EXEC_STAMP_ENV = "PLUGRPC_BENCH_EXEC_STAMP"
"""A file the shim writes `time.monotonic_ns()` into just before the exec, when set: start-up times count from
the moment the command itself starts, not from the shim's own start (CLOCK_MONOTONIC is the same in every process)."""


def main(argv: list[str]) -> None:
    """Set up the child side and replace this process with `argv`."""
    parent, fd, sep, *command = argv
    if sep != "--" or not command:
        raise SystemExit("usage: python -m bench.launch PARENT_PID FD -- ARGV...")
    die_with_parent(int(parent))
    cpus = os.environ.pop(CPUS_ENV, "")
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    listen_fd = int(fd)
    if listen_fd >= 0:
        if listen_fd != LISTEN_FD:
            os.dup2(listen_fd, LISTEN_FD)
            os.close(listen_fd)
        else:
            os.set_inheritable(LISTEN_FD, True)
    stamp = os.environ.pop(EXEC_STAMP_ENV, "")
    if stamp:
        with open(stamp, "w") as f:
            f.write(str(time.monotonic_ns()))
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
