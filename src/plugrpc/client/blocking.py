"""`BlockingClient`: `Client` for plain synchronous scripts, with no logic of its own.

The portal pattern (anyio's `start_blocking_portal`): one daemon thread runs an event loop
and a `Client` on it; each method forwards to the same-named `Client` coroutine with
`asyncio.run_coroutine_threadsafe` and waits. A test keeps both classes' methods in step.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from ..config import loop_factory
from ..errors import ConnectionLost
from .aio import Client
from .common import CLOSED, MAXSIZE, Event, Progress, Subscription
from .direct import DirectMode

__all__ = ["BlockingClient"]

T = TypeVar("T")


class BlockingClient:
    """Blocking twin of `Client`: `with BlockingClient(path) as c: c.raw("ovs.version", {})`."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float | None = None,
                 router: str | None = None, creds: str | os.PathLike[str] | None = None,
                 ca: str | os.PathLike[str] | None = None, direct: DirectMode = False) -> None:
        self._client = Client(path, timeout=timeout, router=router, creds=creds, ca=ca, direct=direct)
        self._loop = loop_factory("auto")()
        self._thread = threading.Thread(target=self._loop.run_forever, name="plugrpc-client", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<BlockingClient {self._client!r}>"

    def __enter__(self) -> BlockingClient:
        self.connect()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def connect(self) -> None:
        """See `Client.connect`."""
        self._portal(self._client.connect())

    def raw(self, method: str, params: Any = None, *, timeout: float | None = None,
            progress: Progress | None = None) -> Any:
        """See `Client.raw`; `progress` is called on the client's loop thread."""
        return self._portal(self._client.raw(method, params, timeout=timeout, progress=progress))

    def subscribe(self, *patterns: str, maxsize: int = MAXSIZE) -> BlockingSubscription:
        """See `Client.subscribe`: `with c.subscribe("ovs.>") as events: for ev in events: ...`."""
        return BlockingSubscription(self._client.subscribe(*patterns, maxsize=maxsize), self._portal)

    def notify(self, method: str, params: Any = None) -> None:
        """See `Client.notify`."""
        self._portal(self._client.notify(method, params))

    def close(self) -> None:
        """See `Client.close`; also stops the loop thread. Calling it again does nothing."""
        if self._loop.is_closed():
            return
        try:
            self._portal(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _portal(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop thread and wait for it; if we are interrupted, so is it."""
        if self._loop.is_closed():
            coro.close()
            raise ConnectionLost(CLOSED)
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise


class BlockingSubscription:
    """Blocking twin of `Subscription`: each method runs the same-named coroutine through the client's portal."""

    def __init__(self, subscription: Subscription, portal: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._subscription = subscription
        self._portal = portal

    def __repr__(self) -> str:
        return f"<BlockingSubscription {self._subscription!r}>"

    def __enter__(self) -> BlockingSubscription:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        try:
            event: Event = self._portal(self._subscription.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None
        return event

    def start(self) -> None:
        """See `Subscription.start`."""
        self._portal(self._subscription.start())

    def close(self) -> None:
        """See `Subscription.close`."""
        self._portal(self._subscription.close())
