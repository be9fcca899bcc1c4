"""Start order: a plugin with `after = ["db"]` starts (and restarts) only once `db` is ready.

Ready is RUNNING: for a `ready = "notify"` plugin, once it said READY=1; for the others, once
their process runs. An exec plugin has no process to wait for. A lazy plugin named in `after` is
started by the wait (as systemd's Wants= with After=). The manifest has refused unknown names and
cycles already, so every wait can end.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..process.supervisor import Supervisor
    from .plugin import Plugin

log = logging.getLogger("plugrpc.router")


async def wait_after(sup: Supervisor, names: Sequence[str], plugins: Mapping[str, Plugin]) -> None:
    """Wait until every plugin in `names` is ready; `sup.waiting_for` says which ones it still waits for."""
    try:
        while True:
            deps = [(name, dep) for name in names if (dep := plugins[name].supervisor) is not None]
            pending = [(name, dep) for name, dep in deps if not dep.up.is_set()]
            if not pending:
                return
            if sup.waiting_for != [name for name, _ in pending]:
                sup.waiting_for = [name for name, _ in pending]
                log.info("waiting for %s to be ready", ", ".join(sup.waiting_for), extra={"plugin": sup.spec.name})
            name, dep = pending[0]
            dep.ensure_running()
            await dep.up.wait()
    finally:
        sup.waiting_for = []
