"""Direct connections: a caller's own connection to the plugin, which the router brokered and left.

Before the router hands a fresh connection to a caller, it asks on it
`rpc.direct {"exports": [...], "max_inflight": N}`. Answering `true` binds that connection from then
on, because the router no longer stands in the way: only those exports (and the `rpc.` built-ins)
are callable, anything else -32601; at most N calls run at once (0: no bound), and beyond that the
connection is not read until one finishes (backpressure, not an error); no event is written on it,
since nobody who reads it subscribed (progress of its own calls is). A second `rpc.direct` is -32600.

The router does no work per direct call, so the plugin counts them: its answer to `rpc.ping`,
which the router sends anyway to see it alive, carries the figures.
"""

from __future__ import annotations

from .. import codes
from ..errors import RpcError
from .dispatch import Handler
from .outgoing import INLINE

TYPE_CHECKING = False  # typing's, without importing typing: a plugin loads these modules (see plugin/plain.py)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Final, Protocol

    from .dispatch import Response

    class Directable(Protocol):
        """A connection of either engine, as `rpc.direct` changes it."""

        def make_direct(self, exports: list[str], max_inflight: int) -> None: ...

DIRECT: Final = "rpc.direct"
PING: Final = "rpc.ping"
KEPT: Final = ("rpc.cancel", "rpc.discover", PING)
"""Built-ins still answered on a direct connection: the client cancels calls it timed out there."""


class Figures:
    """The plugin's direct connections open now, and the calls and errors answered on them so far."""

    __slots__ = ("connections", "calls", "errors")

    def __init__(self) -> None:
        self.connections = 0
        self.calls = 0
        self.errors = 0

    def count(self, outcome: Response | list[Response] | None) -> None:
        """One request, batch or notification handled on a direct connection (on the loop's thread)."""
        if type(outcome) is dict:
            self.calls += 1
            self.errors += "error" in outcome
        elif type(outcome) is list:
            self.calls += len(outcome)
            self.errors += sum("error" in response for response in outcome)
        else:  # a notification, or a batch of them: it came, and nobody hears how it went
            self.calls += 1

    def as_dict(self) -> dict[str, int]:
        return {"connections": self.connections, "calls": self.calls, "errors": self.errors}


FIGURES: Final = Figures()


def ping() -> dict[str, Any]:
    """`rpc.ping`: any answer proves the plugin alive to the router; this one carries the direct figures."""
    return {"direct": FIGURES.as_dict()}


def rpc_direct(*, exports: Any = None, max_inflight: Any = 0, **later: Any) -> bool:
    """`rpc.direct`: bind the connection it came on (members a later router may add are ignored)."""
    if type(exports) is not list or not all(type(name) is str for name in exports):
        raise RpcError(codes.INVALID_PARAMS, "Invalid params", "exports must be a list of method names")
    if type(max_inflight) is not int or max_inflight < 0:
        raise RpcError(codes.INVALID_PARAMS, "Invalid params", "max_inflight must be an integer >= 0 (0: no bound)")
    conn: Directable = INLINE.conn  # type: ignore[assignment]  # inline: the connection being dispatched
    conn.make_direct(exports, max_inflight)
    return True


def already_direct(*args: Any, **kwargs: Any) -> bool:
    """`rpc.direct` on a connection that is direct already: its terms are not changed."""
    raise RpcError(codes.INVALID_REQUEST, "Invalid Request", "this connection is direct already")


def direct_table(table: Mapping[str, Handler], exports: list[str]) -> dict[str, Handler]:
    """The commands a direct connection may call: its exports, the kept built-ins, and a refusing `rpc.direct`."""
    allowed = {name: table[name] for name in exports if name in table and not name.startswith("rpc.")}
    allowed.update((name, table[name]) for name in KEPT if name in table)
    allowed[DIRECT] = Handler(DIRECT, already_direct)
    return allowed
