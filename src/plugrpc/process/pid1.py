"""PID 1: as the first process of a PID namespace (a container), `plugrpc run` is its own init.

The kernel gives every orphan in the namespace to PID 1 to reap, and delivers to PID 1 only the
signals it has handlers for. Reaping every child from inside the router would take the exit
statuses the supervisor and exec mode wait for, so, as tini and dumb-init do, the first process
forks: the child runs the router as it runs anywhere else, and the parent is a small init that
forwards signals to it, reaps whatever exits (the router's own orphans, a plugin's
double-forked child among them) and, once the router is gone, exits with its status (the kernel
then ends whatever is left in the namespace).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Final

FORWARDED: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
"""What the init passes on to the router: stop (TERM, INT, QUIT), reload (HUP), and the two left to users."""


def is_init() -> bool:
    """Whether this process is the first of its PID namespace."""
    return os.getpid() == 1


def run_as_init(main: Callable[[], int]) -> int:
    """Fork; run `main` in the child (the router) and return its status there; in the parent, forward
    signals and reap until the child is gone, then return its exit status (128 + N for signal N)."""
    pending: list[int] = []
    router = 0

    def forward(signum: int, frame: FrameType | None) -> None:
        if router:
            with contextlib.suppress(ProcessLookupError):
                os.kill(router, signum)
        else:
            pending.append(signum)  # came before the fork returned: passed on right after

    # Handlers first: until PID 1 has one, the kernel drops the signal (docker stop's SIGTERM included).
    for sig in FORWARDED:
        signal.signal(sig, forward)
    sys.stdout.flush()
    sys.stderr.flush()
    router = os.fork()
    if router == 0:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        # Its own process group: a ^C on the terminal reaches the init only, which passes it on once.
        os.setpgid(0, 0)
        return main()
    for signum in pending:
        forward(signum, None)
    return _reap_until_gone(router)


def _reap_until_gone(router: int) -> int:
    """Reap every child as it exits; return once `router` is one of them."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)  # a signal's handler runs, then this waits again (PEP 475)
        except ChildProcessError:  # cannot happen while the router lives; nothing left to wait for
            return 0
        if pid == router:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code
