"""The wire format: JSON-RPC 2.0, one JSON text per line (docs/design.md, "Wire format").

Pure helpers shared by every protocol in plugrpc (router front, plugin side, client):
splitting a byte stream into bounded lines, checking a request's envelope, and encoding
responses. Nothing here does I/O, so all of it is tested without sockets.
"""

from __future__ import annotations

import orjson

from . import codes

TYPE_CHECKING = False  # typing's, without importing typing: a plugin loads these modules (see plugin/plain.py)
if TYPE_CHECKING:
    from typing import Any, Final

DEFAULT_MAX_LINE: Final = 64 * 1024 * 1024
"""Default maximum line size in bytes: large enough for multi-MiB payloads."""

NL: Final = b"\n"
_NEWLINE: Final = orjson.OPT_APPEND_NEWLINE


class _Absent:
    """Sentinel for a member a message does not have: an `id` (a notification) or `params`, where `None`
    would be the member given as null (`"id": null` is a request, `"params": null` is invalid)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final[Any] = _Absent()

loads = orjson.loads
JSONDecodeError = orjson.JSONDecodeError


def dumps(obj: Any) -> bytes:
    """Encode one message as a line (orjson appends the newline without another copy)."""
    return orjson.dumps(obj, option=_NEWLINE)


class LineTooLong(Exception):
    """A line grew past the maximum; the connection must answer -32004 and close.

    `lines` holds the complete lines that came before it in the same chunk: they are valid
    requests and still get their answers before the connection closes.
    """

    def __init__(self, size: int, lines: list[bytes] | None = None) -> None:
        super().__init__(size)
        self.size = size
        self.lines = lines or []


class OverBudget(LineTooLong):
    """The unfinished lines of every connection sharing a `ReadBudget` would pass its limit with this one.

    Handled as `LineTooLong` (answer -32004, close), so that no connection can hold the budget's bytes
    hostage by growing a line it never ends.
    """


class ReadBudget:
    """Bytes of unfinished lines held across connections (`used`), and how many they may hold (`limit`)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


SMALL_CHUNK: Final = 4096
"""Chunks shorter than this are merged into one buffer while a line is incomplete: a peer writing one
byte at a time costs about one byte of memory per byte, not one object per byte."""


class LineSplitter:
    """Turns a byte stream into complete lines, never buffering more than `max_line` bytes.

    Chunks of a partial line are kept in a list and joined once, when the newline arrives,
    so a multi-MiB message costs one copy rather than one per chunk. With a `budget`, the
    bytes of the partial line count against it, shared with other connections.
    """

    __slots__ = ("max_line", "budget", "_parts", "_size")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE, budget: ReadBudget | None = None) -> None:
        self.max_line = max_line
        self.budget = budget
        self._parts: list[bytes | bytearray | memoryview] = []
        self._size = 0

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete line held so far."""
        return self._size

    def feed(self, data: bytes) -> list[bytes]:
        """Return the complete lines in `data` (without newlines, blank ones dropped).

        Raises `LineTooLong` as soon as a line is known to exceed `max_line`, before it is
        read whole: an attacker's 500 MiB line costs at most `max_line` bytes of memory.
        A line that came in several chunks is copied once, when its newline arrives.
        """
        max_line = self.max_line
        parts = self._parts
        first = data.find(NL)
        if first < 0:
            size = self._size + len(data)
            if size > max_line:
                raise LineTooLong(size)
            self._hold(size, [])
            if len(data) < SMALL_CHUNK and parts and type(parts[-1]) is bytearray:
                parts[-1] += data
            else:
                parts.append(bytearray(data) if len(data) < SMALL_CHUNK else data)
            return []
        if not parts and 0 < first == len(data) - 1 and first <= max_line:
            return [data[:first]]  # the common case: exactly one whole line
        nl = data.rfind(NL)
        lines: list[bytes] = []
        start = 0
        if parts:
            if self._size + first > max_line:
                raise LineTooLong(self._size + first)
            parts.append(memoryview(data)[:first])
            line = b"".join(parts)
            parts.clear()  # the chunks go now, before `joined` looks at the line
            lines.append(self.joined(line))
            start = first + 1
        if start <= nl:
            more = data.split(NL) if start == 0 and nl == len(data) - 1 else data[start:nl + 1].split(NL)
            more.pop()  # what follows the last newline: the tail, handled below
            for i, line in enumerate(more):
                if len(line) > max_line:
                    raise LineTooLong(len(line), [line for line in lines + more[:i] if line])
            lines += more
        if b"" in lines:
            lines = [line for line in lines if line]
        tail_size = len(data) - nl - 1
        if tail_size > max_line:
            raise LineTooLong(tail_size, lines)
        self._hold(tail_size, lines)
        if tail_size:
            parts.append(data[nl + 1 :])
        return lines

    def joined(self, line: bytes) -> bytes:
        """A line that came in several chunks, whole: a subclass may vet it (b"" drops it)."""
        return line

    def release(self) -> None:
        """Drop the incomplete line and give its bytes back to the budget (the connection is closing)."""
        self._hold(0, [])
        self._parts = []

    def _hold(self, size: int, lines: list[bytes]) -> None:
        """The incomplete line is now `size` bytes: count the change against the budget, if any.

        Raises `OverBudget` (carrying `lines`, the complete lines before it) when it would grow past it.
        """
        budget = self.budget
        if budget is not None:
            used = budget.used + size - self._size
            if size > self._size and used > budget.limit:
                raise OverBudget(size, lines)
            budget.used = used
        self._size = size


def request_problem(msg: Any) -> str | None:
    """Why `msg` is not a valid JSON-RPC 2.0 request object, or None when it is.

    The router and the plugin SDK answer a non-None reason with -32600.
    """
    if type(msg) is not dict:
        return "a request must be a JSON object"
    if msg.get("jsonrpc") != "2.0":
        return 'the "jsonrpc" member must be exactly "2.0"'
    if type(msg.get("method")) is not str:
        return 'the "method" member must be a string'
    if "id" in msg and not valid_id(msg["id"]):
        return 'the "id" member must be a string, a number or null'
    params = msg.get("params")
    if params is not None and type(params) is not dict and type(params) is not list:
        return 'the "params" member must be an object or an array'
    if "params" in msg and params is None:
        return 'the "params" member must be an object or an array'
    return None


def valid_id(value: Any) -> bool:
    """True for the id types JSON-RPC 2.0 allows: string, number (not bool) or null."""
    t = type(value)
    return t is str or t is int or t is float or value is None


def reply_id(msg: Any) -> Any:
    """The id to answer an invalid request with: its own when valid, else null."""
    if type(msg) is dict:
        value = msg.get("id")
        if valid_id(value):
            return value
    return None


def error_obj(code: int, message: str | None = None, data: Any = None) -> dict[str, Any]:
    """A JSON-RPC `error` member; `message` defaults to the standard text for `code`."""
    err: dict[str, Any] = {"code": code, "message": message or codes.MESSAGES.get(code, "Error")}
    if data is not None:
        err["data"] = data
    return err


def error_response(id: Any, code: int, message: str | None = None, data: Any = None) -> dict[str, Any]:
    """A whole JSON-RPC error response object."""
    return {"jsonrpc": "2.0", "error": error_obj(code, message, data), "id": id}


def error_line(id: Any, code: int, message: str | None = None, data: Any = None) -> bytes:
    """An error response, encoded as a line."""
    return dumps(error_response(id, code, message, data))


def result_response(id: Any, result: Any) -> dict[str, Any]:
    """A whole JSON-RPC success response object."""
    return {"jsonrpc": "2.0", "result": result, "id": id}


def parse_error_line(exc: Exception) -> bytes:
    """The -32700 response for a line that is not JSON, saying why."""
    return error_line(None, codes.PARSE_ERROR, data=str(exc))


def too_large_line(max_line: int) -> bytes:
    """The -32004 response sent before closing a connection whose line was too long."""
    return error_line(None, codes.MESSAGE_TOO_LARGE, data=f"a line exceeded the maximum of {max_line} bytes")
