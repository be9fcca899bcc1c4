"""What the router's own parts see of it: `RouterView`, the read-mostly face of `Router` that the
built-ins, `router.connect` and the NATS bridge are given instead of the class (router/routing.py
imports them, never the other way round).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..wire import ABSENT
from .interfaces import Call, Peer, Sink, Target

if TYPE_CHECKING:
    from ..config import Config
    from ..manifest import Manifest
    from .deadline import Expired
    from .events import EventHub
    from .plugin import Plugin


class Broker(Protocol):
    """`router.connect` (router/direct.py)."""

    async def broker(self, call: Call) -> None: ...


class NatsSide(Protocol):
    """The router's NATS side (router/nats_bridge.py), as the built-ins count it."""

    @property
    def expired(self) -> Expired: ...


class RouterView(Protocol):
    """The router as its parts read it, and the few things they may ask of it."""

    @property
    def config(self) -> Config: ...

    @property
    def manifest(self) -> Manifest: ...

    @property
    def plugins(self) -> Mapping[str, Plugin]:
        """The manifest's plugins, in manifest order."""

    @property
    def retiring(self) -> Collection[Plugin]:
        """Records a reload replaced or removed, finishing their calls before they stop."""

    @property
    def routes(self) -> Mapping[str, Target]: ...

    @property
    def clients(self) -> Collection[Peer]: ...

    @property
    def events(self) -> EventHub: ...

    @property
    def direct(self) -> Broker: ...

    @property
    def nats(self) -> NatsSide | None: ...

    @property
    def started(self) -> float: ...

    @property
    def on_routes(self) -> list[Callable[[], None]]:
        """Called after the routing table changes."""

    def handle(self, msg: Any, sink: Sink) -> None: ...

    def inflight(self) -> int: ...

    async def reload(self) -> dict[str, list[str]]: ...

    async def call_plugin(self, name: str, method: str, params: Any = ABSENT, timeout: float = 5.0) -> Any: ...
