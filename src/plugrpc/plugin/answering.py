"""Answering one connection's requests, whichever engine runs the connection: bytes in, the answers ready now out.

Both engines, `plugin/aio.py` (asyncio) and `plugin/plain.py` (a selectors loop, for plugins whose
commands are all plain functions), feed each chunk a connection reads to `Answerer.answer` and
write what it returns in one write; what cannot be answered at once (async and threaded
commands) goes to the engine's `start`.
"""

from __future__ import annotations

from .. import codes
from ..errors import RpcError
from ..wire import ABSENT, JSONDecodeError, LineSplitter, LineTooLong, loads, parse_error_line, too_large_line, valid_id
from .direct import FIGURES, direct_table
from .dispatch import dispatch, encode
from .outgoing import INLINE

TYPE_CHECKING = False  # typing's, without importing typing: a plugin loads these modules (see plugin/plain.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any, Protocol, TypeVar

    from .direct import Figures
    from .dispatch import Handler, Pending
    from .outgoing import Sender

    class Connection(Protocol):
        answerer: Answerer

    C = TypeVar("C", bound=Connection)

CANCEL = "rpc.cancel"
"""The router giving up on a call it sent (its timeout, or its client went away)."""


class Answerer:
    """Turns what one connection reads into its answers: the connection's line splitter and command table."""

    __slots__ = ("splitter", "table", "direct")

    def __init__(self, table: Mapping[str, Handler], max_line: int) -> None:
        self.splitter = LineSplitter(max_line)
        self.table = table
        self.direct: Figures | None = None
        """Where calls are counted once the connection is direct (see plugin/direct.py); None until then."""

    def make_direct(self, exports: list[str]) -> None:
        """Only `exports` (and the kept built-ins) are callable from now on, and each call is counted."""
        self.table = direct_table(self.table, exports)
        self.direct = FIGURES
        FIGURES.connections += 1

    def end(self) -> None:
        """The connection closed: a direct one is no longer open."""
        if self.direct is not None:
            self.direct = None
            FIGURES.connections -= 1

    def answer(self, data: bytes, conn: Sender, start: Callable[[Pending, Any], None]) -> tuple[bytes, bool]:
        """The answers ready now to the requests in `data` as one write (b"" for none), and whether a
        line was over the maximum (then the connection writes them, answers -32004 and closes);
        `start(pending, id)` takes the calls that run on (async and threaded commands)."""
        too_long = False
        try:
            lines = self.splitter.feed(data)
        except LineTooLong as exc:
            lines, too_long = exc.lines, True  # the complete requests before it are still answered
        answers: list[bytes] = []
        answer = answers.append
        INLINE.conn = conn  # the connection of the inline handlers run below, for plugrpc.progress
        try:
            for line in lines:
                try:
                    msg = loads(line)
                except JSONDecodeError as exc:
                    if line.strip():  # a line of blanks is skipped, as an empty line is
                        answer(parse_error_line(exc))
                    continue
                direct = self.direct  # before dispatch: rpc.direct itself is not a direct call
                outcome = dispatch(self.table, msg)
                if direct is not None and not _is_pending(outcome):
                    direct.count(outcome)  # type: ignore[arg-type]
                if outcome is None:
                    continue
                if type(outcome) is dict or type(outcome) is list:
                    answer(encode(outcome))
                else:
                    # Neither a dict nor a list: a coroutine (mypy does not narrow on `type(x) is`).
                    start(outcome, msg.get("id", ABSENT) if type(msg) is dict else ABSENT)  # type: ignore[arg-type]
        finally:
            INLINE.conn = None
        if too_long:
            answer(too_large_line(self.splitter.max_line))
        return (answers[0] if len(answers) == 1 else b"".join(answers)), too_long


def events_connection(connections: Iterable[C]) -> C | None:
    """The connection events go out on next: any but a direct one (its reader did not subscribe)."""
    return next((conn for conn in connections if conn.answerer.direct is None), None)


def _is_pending(outcome: Any) -> bool:
    """A coroutine: the engine counts it when it completes."""
    return outcome is not None and type(outcome) is not dict and type(outcome) is not list


def check_cancel_id(id: Any) -> None:
    """`rpc.cancel`'s one param: the id of the request to give up on."""
    if not valid_id(id):
        raise RpcError(codes.INVALID_PARAMS, "Invalid params", "id must be a string, a number or null")
