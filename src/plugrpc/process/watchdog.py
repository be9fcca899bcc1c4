"""The watchdog that outlives a killed runtime (see reaper.py): it kills the process groups still listed.

Run as its own small process, `python -I -S .../plugrpc/process/watchdog.py`, on the standard
library alone, so that it costs a few MiB and milliseconds and shows in `ps` by its name. It reads
lines from stdin, `+GROUP` to watch a process group and `-GROUP` to forget it; at end of file (the
runtime exited, in whatever way) it SIGKILLs every group still watched and exits.
"""

import os
import signal


def main() -> None:
    groups: set[int] = set()
    rest = b""
    while True:
        try:
            data = os.read(0, 65536)
        except InterruptedError:
            continue
        if not data:
            break
        *lines, rest = (rest + data).split(b"\n")
        for line in lines:
            (groups.add if line[:1] == b"+" else groups.discard)(int(line[1:]))
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass


if __name__ == "__main__":
    main()
