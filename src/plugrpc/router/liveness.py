"""Liveness: the router pings each running `rpc` plugin, and restarts one that stopped answering.

Every `ping_interval` seconds a plugin that is RUNNING and has room for a call gets
`{"jsonrpc":"2.0","method":"rpc.ping","id":N}` through its own pool, as an internal call. Any
answer proves it alive, an error included (a plugin need not implement `rpc.ping`, and one that
does not answers -32601; the SDK answers with its direct-call figures). No answer within
`ping_timeout` makes it `unresponsive`: the supervisor stops it (SIGTERM, grace, SIGKILL), the
router fails its calls in flight with -32001 saying so, and the restart policy brings the next
process. A plugin busy up to its `max_inflight` has no room, so
it is not pinged: a legitimately long call never gets it restarted. Nothing here runs per call.

A ping waits behind whatever was written to the connection before it (clients' notifications,
calls), in the router's buffer and the kernel's. A plugin reading that slowly is busy, not stuck:
the ping's wait is judged by whether the plugin reads, not by the clock alone. While a ping is
unanswered, the bytes the plugin has not read are looked at every `PROGRESS_POLL`; the plugin is
unresponsive only after a whole `ping_timeout` in which it neither answered nor read anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .. import codes
from ..process.supervisor import PluginState, Supervisor
from ..wire import ABSENT
from .interfaces import Message, Target
from .pool import PluginPool

PING: Final = "rpc.ping"
PROGRESS_POLL: Final = 0.02
"""Seconds between two looks at what a plugin with a ping unanswered has read."""

Ask = Callable[[Target, str, Any, float], Awaitable[Message]]
Report = Callable[[int | None, Message], None]
"""Takes a ping's answer and the pid that gave it: the figures of direct calls ride on it (router/direct.py)."""


class Liveness:
    """Pings one plugin for as long as its record lives (`close()` ends it)."""

    def __init__(self, pool: PluginPool, supervisor: Supervisor, ask: Ask, report: Report | None = None) -> None:
        self.pool = pool
        self.supervisor = supervisor
        self.pings = 0
        """Pings sent (an answer to each was had, but for the last one when it made the plugin unresponsive)."""
        self._ask = ask
        self._report = report
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"plugrpc-liveness-{pool.name}")

    def __repr__(self) -> str:
        return f"<Liveness {self.pool.name} pings={self.pings}>"

    def close(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        spec = self.pool.spec
        while True:
            await asyncio.sleep(spec.ping_interval)
            sup = self.supervisor
            if sup.state is not PluginState.RUNNING or not self.pool.has_room():
                continue
            pid = sup.pid
            self.pings += 1
            if not await self._answered() and sup.pid == pid:  # not a process that died and was replaced meanwhile
                sup.unresponsive(f"no answer to {PING} within {min(spec.ping_timeout, spec.timeout):g} s")

    async def _answered(self) -> bool:
        """Whether the plugin answers a ping, given more time for as long as it reads what came before it."""
        spec = self.pool.spec
        ask = asyncio.ensure_future(self._ask(self.pool, PING, ABSENT, spec.timeout + spec.ping_timeout))
        try:
            while True:
                read = await self._reads(ask, spec.ping_timeout)
                if not ask.done():
                    if read:
                        continue
                    return False
                try:
                    msg: Message | None = ask.result()
                except TimeoutError:
                    msg = None
                # The pool's own timeout (when `timeout` < `ping_timeout`) is no answer either. Any other
                # error is: the plugin's own, or the router's when the process died meanwhile, which the
                # supervisor deals with.
                silent = msg is None or (msg.get("error") or {}).get("code") == codes.CALL_TIMEOUT
                if msg is not None and "result" in msg and self._report is not None:
                    self._report(self.supervisor.pid, msg)
                return not silent or read
        finally:
            ask.cancel()  # the call is withdrawn and the plugin told (routing.ask)

    async def _reads(self, ask: asyncio.Future[Message], window: float) -> bool:
        """Wait up to `window` for `ask`; whether the plugin read some of what was written to it meanwhile."""
        pool = self.pool
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window
        unread, resumed = pool.unread(), pool.resumed()
        read = False
        while not ask.done() and (left := deadline - loop.time()) > 0:
            await asyncio.wait((ask,), timeout=min(PROGRESS_POLL, left))
            now = pool.unread()
            read = read or now < unread
            unread = now
        return read or pool.resumed() != resumed
