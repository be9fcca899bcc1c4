"""The router's record of one plugin (`Plugin`): what the manifest says of it, its process, where its
calls go, what it printed, its liveness and its direct connections. The router keeps one per
plugin of the manifest (router/routing.py), and a reload swaps records, never edits them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..manifest import PluginSpec
from ..process.logbook import Logbook
from ..process.supervisor import Supervisor
from .direct_state import DirectState
from .exec_target import ExecTarget
from .interfaces import PluginTarget
from .liveness import Liveness


@dataclass(eq=False)
class Plugin:
    """One plugin as the router runs it: what the manifest says, its process, where its calls go."""

    spec: PluginSpec
    target: PluginTarget
    supervisor: Supervisor | None = None
    """None for exec plugins, which have a process per call instead."""
    socket: Path | None = None
    output: Logbook = field(default_factory=Logbook)
    """What its processes printed (`router.logs`): kept across restarts and reloads."""
    liveness: Liveness | None = None
    direct: DirectState = field(default_factory=DirectState)
    """The connections callers got to it with `router.connect` (router/direct.py), and their calls' figures."""

    def status(self) -> dict[str, Any]:
        """Its row of `router.plugins`."""
        sup = self.supervisor
        status: dict[str, Any] = sup.status() if sup is not None else {"pid": None, "restarts": 0}
        status.update(self.target.status())
        status["exports"] = list(self.spec.exports)
        status["events"] = list(self.spec.events)
        if self.liveness is not None:
            status["pings"] = self.liveness.pings
        if sup is not None and self.spec.transport == "socket":
            status["direct"] = self.direct.status()
        return status

    def pids(self) -> set[int]:
        """Its processes running now: each leads a process group and session of its own."""
        if self.supervisor is not None:
            return set() if self.supervisor.pid is None else {self.supervisor.pid}
        return self.target.plugin.pids() if isinstance(self.target, ExecTarget) else set()

    async def stop(self) -> None:
        if self.liveness is not None:
            self.liveness.close()
        await self.target.aclose()
        if self.supervisor is not None:
            await self.supervisor.stop()
