"""How a plugin process's end is named: its exit status in words (`describe_exit`), and the limit it
ran into, when the evidence says so (`broken_limit`), for logs, errors and `plugrpc status`."""

from __future__ import annotations

import signal
from collections.abc import Iterable
from typing import Final

from ..codes import EXIT_MEMORY
from ..manifest import Limits

OUT_OF_MEMORY_SIGNS: Final = ("MemoryError", "out of memory", "Cannot allocate memory", "std::bad_alloc")
"""What runtimes print when an allocation fails (Python, Go and Node, C, C++): with a memory limit set,
an exit after one of these in the plugin's last lines is put down to the limit."""


def describe_exit(returncode: int) -> str:
    """`exit code 3` or `signal SIGKILL`, for logs and error messages."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def broken_limit(limits: Limits, returncode: int, cpu_seconds: float | None, last_lines: Iterable[str]) -> str | None:
    """The limit a process that ended with `returncode` ran into, when the evidence says so; else None.

    CPU: the kernel's SIGXCPU, or its SIGKILL once the CPU time (from wait4) is past the limit.
    Memory: rlimits do not kill, a failed allocation does, in the plugin's own way: exit status
    204 (what the SDK exits with), or one of `OUT_OF_MEMORY_SIGNS` in its last lines.
    """
    if returncode == 0:
        return None
    if limits.cpu_seconds and (returncode == -signal.SIGXCPU or (
            returncode == -signal.SIGKILL and cpu_seconds is not None and cpu_seconds >= limits.cpu_seconds)):
        return f"limits.cpu_seconds: it used its {limits.cpu_seconds} s of CPU"
    if limits.memory and (returncode == EXIT_MEMORY or any(sign in line for line in last_lines
                                                           for sign in OUT_OF_MEMORY_SIGNS)):
        return f"limits.memory: it ran out of its {limits.memory / (1 << 20):g} MiB"
    return None
