"""Plugins' process groups die with the runtime, even when it is killed with SIGKILL.

A plugin process gets SIGKILL when the runtime dies (`process.die_with_parent`), but the kernel
does not pass that setting on to the plugin's own children: after `kill -9` of the router they
would live on, reparented to init (the runtime never leaves a child behind, even when
it is itself killed). Nothing inside a SIGKILLed process runs, so a small watchdog process does
it: the runtime tells it, over a pipe, each process group it creates (`watch`) and each one it has
reaped and killed (`forget`). When the pipe reaches end of file, because the runtime exited in
whatever way, the watchdog SIGKILLs every group still listed and exits.

Every plugin runs in its own session (`start_new_session`), so its process group id is its pid
and holds only its own processes. A listed group still has its leader, a zombie at worst, so its
id cannot have been reused by anyone else.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import threading
from typing import Final

log = logging.getLogger("plugrpc.reaper")

WATCHDOG: Final = os.path.join(os.path.dirname(__file__), "watchdog.py")
"""The watchdog's own file: run by path with -I -S, it imports nothing of plugrpc's."""
STOP_TIMEOUT: Final = 5.0


class Reaper:
    """The runtime's end of the watchdog: started on the first `watch`, stopped at exit."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._failed = False
        self._lock = threading.Lock()  # supervisors and exec plugins may live on several loops

    def __repr__(self) -> str:
        state = "failed" if self._failed else "running" if self._proc is not None else "idle"
        return f"<Reaper {state} pid={self._proc.pid if self._proc else None}>"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def watch(self, group: int) -> None:
        """Kill process group `group` if the runtime dies before it calls `forget(group)`."""
        self._send(b"+%d\n" % group)

    def forget(self, group: int) -> None:
        """`group` is gone (its leader reaped, its members killed): stop watching it."""
        if self._proc is not None:
            self._send(b"-%d\n" % group)

    def close(self) -> None:
        """End the watchdog: it kills the groups still watched, then exits; wait for it."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            os.close(self._fd)
            self._fd = -1
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _send(self, line: bytes) -> None:
        with self._lock:
            if self._proc is None and not self._start():
                return
            try:
                os.write(self._fd, line)  # a few bytes to a pipe: atomic, and the watchdog keeps reading
            except OSError as exc:
                self._give_up(f"the watchdog is gone ({exc.strerror})")

    def _start(self) -> bool:
        if self._failed:
            return False
        read, write = os.pipe()  # not inheritable: no plugin keeps the watchdog from seeing EOF
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", WATCHDOG],
                stdin=read,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # a ^C meant for the runtime must not take the watchdog first
            )
        except OSError as exc:
            os.close(write)
            self._give_up(f"cannot start the watchdog ({exc})")
            return False
        finally:
            os.close(read)
        self._fd = write
        atexit.register(self.close)
        return True

    def _give_up(self, why: str) -> None:
        log.warning("%s: plugins' own child processes may outlive a killed runtime", why)
        self._failed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._proc is not None:
            self._proc.poll()
            self._proc = None


reaper: Final = Reaper()
"""The runtime's one watchdog."""
