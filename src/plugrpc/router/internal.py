"""Calls the router makes itself (a liveness ping, `rpc.discover` of a plugin): `ask` submits one to a
target and waits for its answer, which a `FutureSink` receives. Their id is `INTERNAL`, so they are
never counted in a plugin's statistics.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..wire import ABSENT
from .interfaces import INTERNAL, Call, Message, Target, clock


async def ask(target: Target, method: str, params: Any = ABSENT, timeout: float = 5.0) -> Message:
    """A call of the router's own to `target`: its answer (an error included), or TimeoutError.

    Such calls are not counted in the plugin's statistics; one left unanswered is withdrawn, and
    the plugin is told so with `rpc.cancel`.
    """
    fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
    call = Call(FutureSink(fut), INTERNAL, method, params, clock())
    target.submit(call)
    try:
        return await asyncio.wait_for(fut, timeout)
    finally:
        if call.sink is not None and call.target is not None:
            call.target.cancel(call)


class FutureSink:
    """The sink of a call the router makes itself: its answer resolves a future."""

    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[Message]) -> None:
        self.fut = fut

    def track(self, call: Call) -> None:
        pass

    def deliver(self, call: Call, msg: Message) -> None:
        if not self.fut.done():
            self.fut.set_result(msg)

    def reply(self, msg: Message) -> None:
        if not self.fut.done():
            self.fut.set_result(msg)

    def cancel(self, id: Any) -> bool:
        return False
