#!/usr/bin/env python3
"""Fixture plugin for tests/test_supervisor.py: serves the socket it gets as fd 3.

Every line received is answered with one JSON line of facts about this process (pid, env, open
fds, fd 3, cwd), so a test can check what the supervisor handed over. Options:
  --crash-if FILE   exit 1 at once while FILE exists
  --ignore-term     ignore SIGTERM (by default: print "got SIGTERM", then "bye" without newline, exit 0)
  --grandchild      start a `sleep` child in the same process group and report its pid
  --long N          print a line of N bytes, then "after long"
  --say TEXT        print TEXT on stderr (repeatable)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys


def open_fds() -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:  # listdir's own descriptor, closed by now
            continue
        fds.append(int(name))
    return sorted(fds)


def on_term(signum: int, frame: object) -> None:
    sys.stdout.write("got SIGTERM\nbye")
    sys.stdout.flush()
    os._exit(0)


def main(argv: list[str]) -> None:
    if "--crash-if" in argv and os.path.exists(argv[argv.index("--crash-if") + 1]):
        sys.exit(1)
    facts_at_start = {"fds": open_fds()}
    signal.signal(signal.SIGTERM, signal.SIG_IGN if "--ignore-term" in argv else on_term)
    grandchild = None
    if "--grandchild" in argv:
        grandchild = subprocess.Popen(["sleep", "600"]).pid
    if "--long" in argv:
        sys.stdout.write("x" * int(argv[argv.index("--long") + 1]) + "\nafter long\n")
    for i, arg in enumerate(argv):
        if arg == "--say":
            sys.stderr.write(argv[i + 1] + "\n")
    sys.stderr.flush()
    sys.stdout.write("hello from stdout\n")
    sys.stdout.flush()
    sys.stderr.write("hello from stderr\n")
    sys.stderr.flush()

    listener = socket.socket(fileno=3)
    fd3 = {
        "family": int(listener.family),
        "type": int(listener.type),
        "listening": listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
        "name": listener.getsockname(),
    }
    while True:
        conn, _ = listener.accept()
        with conn, conn.makefile("rwb") as stream:
            for _line in stream:
                facts = {
                    "pid": os.getpid(),
                    "env": dict(os.environ),
                    "cwd": os.getcwd(),
                    "fd3": fd3,
                    "grandchild": grandchild,
                    **facts_at_start,
                }
                stream.write(json.dumps(facts).encode() + b"\n")
                stream.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
