#!/usr/bin/env python3
"""Fixture for tests/test_supervisor.py: a runtime that supervises one plugin until killed.

Usage: sup_host.py PLUGIN SOCKET. Binds SOCKET before anything else, so that when the test
starts this program with stdin closed the socket is created on fd 0; starts PLUGIN, prints
"<plugin pid> <1 if fd 0 was free at bind time>", then waits to be killed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from plugrpc.manifest import PluginSpec
from plugrpc.process.supervisor import PluginState, Supervisor


def fd_free(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


async def main(sup: Supervisor, running: asyncio.Event, stdin_was_free: bool) -> None:
    await sup.start()
    await running.wait()
    sys.stdout.write(f"{sup.pid} {int(stdin_was_free)}\n")
    sys.stdout.flush()
    await asyncio.sleep(3600)


if __name__ == "__main__":
    plugin, sock = Path(sys.argv[1]), Path(sys.argv[2])
    running = asyncio.Event()

    def on_state(sup: Supervisor) -> None:
        if sup.state is PluginState.RUNNING:
            running.set()

    supervisor = Supervisor(PluginSpec(name="orphan", path=plugin, exports=("x",)), plugin.parent, sock, on_state)
    stdin_was_free = fd_free(0)
    supervisor.bind()  # before asyncio.run creates the loop's descriptors
    asyncio.run(main(supervisor, running, stdin_was_free))
