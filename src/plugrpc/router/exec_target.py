"""Calls to a core0-style plugin run once per call (`mode = "exec"`), as a router target.

`ExecPlugin` (process/execmode.py) runs one execution per call; this adapts it to the router's
`Target`: a task per call, its outcome turned into the caller's answer, cancellation when the
caller goes, statistics like a pool's.

A notification runs only on a slot free at once (at most `max_inflight` executions, and within
`max_pending`): it never waits for one, since nobody waits for it, so a flood of them costs the
router at most that many executions; the others are dropped, counted in `CallStats.dropped` and
logged at most once per `DROP_LOG_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .. import codes
from ..errors import RpcError
from ..process.execmode import ExecPlugin
from ..wire import ABSENT, error_response, result_response
from .deadline import overdue, owner
from .interfaces import Call, Sink, clock
from .stats import DROP_LOG_INTERVAL, OUTCOMES, CallStats

log = logging.getLogger("plugrpc.exec")


class ExecTarget:
    """Routes calls to an `ExecPlugin`: one task, and one process, per call."""

    def __init__(self, plugin: ExecPlugin) -> None:
        self.plugin = plugin
        self.name = plugin.spec.name
        self.exported = plugin.spec.exported
        self.stats = CallStats(plugin.spec.exports)
        self._loop = asyncio.get_running_loop()
        self._running: dict[Call, asyncio.Task[Any]] = {}
        self._notifications: set[asyncio.Task[Any]] = set()
        self._room = min(plugin._limit, plugin.spec.max_pending)
        """Executions running or waiting past which a notification is dropped: a notification never waits."""
        self._drop_logged = -DROP_LOG_INTERVAL
        self._fail_logged = -DROP_LOG_INTERVAL

    def submit(self, call: Call) -> None:
        call.target = self
        late = None if owner(call.sink) is None else lambda: self._late(call)
        task = self._loop.create_task(self.plugin.call(call.method, _params(call.params), late))
        self._running[call] = task
        task.add_done_callback(lambda t: self._done(call, t))

    def _late(self, call: Call) -> str | None:
        """Why `call`, which has a slot now, must not start: its caller's deadline passed (router/deadline.py)."""
        found = overdue(call.sink, clock())
        if found is None:
            return None
        who, late = found
        who.expired(self.name, late)
        return f"its caller's deadline passed {late:.3f} s ago while it waited for a slot; it was not run"

    def notify(self, method: str, params: Any, sink: Sink) -> None:
        """Run a notification on a free slot, or drop it (module docstring)."""
        if len(self._running) + len(self._notifications) >= self._room:  # tasks not started yet included
            self.stats.dropped += 1
            now = clock()
            if now - self._drop_logged >= DROP_LOG_INTERVAL:
                self._drop_logged = now
                log.warning("dropping notifications: every slot is taken (%d so far; router.plugins counts them)",
                            self.stats.dropped, extra={"plugin": self.name})
            return
        task = self._loop.create_task(self.plugin.call(method, _params(params)))
        self._notifications.add(task)
        task.add_done_callback(self._notified)

    def _notified(self, task: asyncio.Task[Any]) -> None:
        self._notifications.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        now = clock()
        if now - self._fail_logged >= DROP_LOG_INTERVAL:  # a flood of failing ones must not flood the log
            self._fail_logged = now
            log.warning("notification failed: %s", task.exception(), extra={"plugin": self.name})

    def cancel(self, call: Call) -> None:
        call.sink = None
        task = self._running.get(call)
        if task is not None:
            task.cancel()

    def busy(self) -> int:
        return self.plugin.busy()

    def sweep(self, now: float) -> int:
        """Executions time themselves out (`ExecPlugin.call`); only the count is wanted here."""
        return self.stats.calls

    def fail_all(self, reason: str) -> None:
        """Answer every running call -32001 and stop its process (shutdown after the grace period)."""
        for task in self._notifications:
            task.cancel()
        for call, task in list(self._running.items()):
            task.cancel()
            call.finish(error_response(call.id, codes.PLUGIN_UNAVAILABLE, data={"plugin": self.name, "reason": reason}))

    def _done(self, call: Call, task: asyncio.Task[Any]) -> None:
        del self._running[call]
        if task.cancelled():
            return
        exc = task.exception()  # retrieved even when nobody waits for the answer any more
        if call.sink is None:
            return
        if exc is None:
            msg = result_response(call.id, task.result())
        elif isinstance(exc, RpcError):
            msg = error_response(call.id, exc.code, exc.message, exc.data)
        else:
            log.error("exec call failed: %r", exc, extra={"plugin": self.name})
            msg = error_response(call.id, codes.INTERNAL_ERROR, data={"plugin": self.name})
        outcome = None if exc is None else OUTCOMES.get(exc.code, "error") if isinstance(exc, RpcError) else "error"
        self.stats.record(call.method, clock() - call.started, outcome)
        call.finish(msg)

    def status(self) -> dict[str, Any]:
        return {**self.plugin.status(), **self.stats.snapshot()}

    async def aclose(self) -> None:
        for task in list(self._notifications):
            task.cancel()
        await self.plugin.aclose()


def _params(params: Any) -> Any:
    return None if params is ABSENT else params
