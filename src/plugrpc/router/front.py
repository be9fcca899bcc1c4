"""The router's front socket: one `FrontProtocol` per client connection.

The hot path reads top to bottom: `data_received` splits lines, each line is parsed and handed
to the router; `deliver` writes an answer at once when it is the client's last call in flight,
else queues it for the end of the loop turn, so a busy client gets one write per turn.

Backpressure both ways, decided by one `FlowControl`: a client that stops reading stops being
read from, and so does a client with `max_inflight_per_client` calls in flight, until half of
them are answered, whether they came one by one or in batches.

Notifications to the client (events and progress, once it subscribed: router/events.py) leave
through the same writer; while the client does not read, its events wait in the bounded backlog
of its `Subscriber` instead of the transport's buffer.

What one client could otherwise take from all, `FrontDoor` bounds for every connection at once:
connections (`--max-clients`), requests per batch (`--max-batch`, counted before a long batch is
parsed), bytes of unfinished lines (`--max-buffered`) and how long one may stay unfinished
(`--partial-timeout`). Each bound is checked where its data already flows, never per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json.decoder
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

import orjson

from .. import codes
from ..config import Config
from ..flow import FlowControl
from ..logs import RateLimited
from ..outbox import LineWriter
from ..sockets import hung_up, peer_uid
from ..wire import (
    JSONDecodeError,
    LineSplitter,
    LineTooLong,
    OverBudget,
    ReadBudget,
    dumps,
    error_line,
    error_response,
    loads,
    parse_error_line,
    too_large_line,
)
from .batch import Batch, unencodable
from .events import Subscribable, Subscriber
from .interfaces import Call, Dispatch, Handle, Message

if TYPE_CHECKING:
    from .direct_state import Brokered

log = logging.getLogger("plugrpc.front")
_NEWLINE: Final = orjson.OPT_APPEND_NEWLINE
_dumps = orjson.dumps
REFUSED_LINGER: Final = 0.25
"""Seconds a client refused by `--allow-uid` gets to send its request and read why before the close."""
_scan: Callable[[str, int], tuple[Any, int]] = json.decoder.JSONDecoder().scan_once  # type: ignore[attr-defined]
"""The standard library's C scanner: the value at an index of a str, and the index after it."""
_BATCH_START: Final = re.compile(r"[ \t\r]*\[[ \t\r]*")
_SEPARATOR: Final = re.compile(r"[ \t\r]*([,\]])[ \t\r]*")
FD_WRITE_TIMEOUT: Final = 10.0
"""Seconds `router.connect`'s answer waits for what was written before it to leave, for a client that does not read."""
FD_WRITE_POLL: Final = 0.005


class FrontDoor:
    """What every client connection of the front socket shares: the router, the bounds, the read budget.

    It is the server's protocol factory, and watches unfinished lines (`sweep`) on a timer of its own.
    """

    def __init__(self, router: Dispatch, config: Config, max_clients: int) -> None:
        self.router = router
        self.max_line = config.max_line
        self.limit = config.max_inflight_per_client
        self.max_batch = config.max_batch
        self.max_clients = max_clients
        self.allow_uids = config.allow_uids
        self.partial_timeout = config.partial_timeout
        self.budget = ReadBudget(config.max_buffered)
        self.connections = 0
        """Client connections open now, those being turned away included."""
        self.log_full = RateLimited(log)
        self.log_refused = RateLimited(log)
        self.log_too_long = RateLimited(log)
        self.log_over_budget = RateLimited(log)
        self.log_stalled = RateLimited(log)
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self) -> FrontProtocol:
        return FrontProtocol(self)

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._interval(), self.sweep)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def sweep(self) -> None:
        """Close connections whose unfinished line waited too long; say what the rate-limited logs left out."""
        if self.budget.used:
            now = time.monotonic()
            for client in list(self.router.clients):
                if type(client) is FrontProtocol:
                    client.check_partial(now, self.partial_timeout)
        for limited in (self.log_full, self.log_refused, self.log_too_long, self.log_over_budget, self.log_stalled):
            limited.flush()
        self.start()

    def _interval(self) -> float:
        """A quarter of the timeout: an unfinished line is closed within 1.25 to 1.5 times it."""
        return min(1.0, self.partial_timeout / 4)


class FrontSplitter(LineSplitter):
    """A client's lines, its unfinished one counted against the door's budget; a batch too long to parse is dropped."""

    __slots__ = ("front", "joins")

    def __init__(self, front: FrontProtocol, door: FrontDoor) -> None:
        super().__init__(door.max_line, door.budget)
        self.front = front
        self.joins = 0
        """Lines completed from several chunks: while it stays the same, the unfinished line is the same one."""

    def joined(self, line: bytes) -> bytes:
        """A line longer than one read may be a batch too long to parse: refuse it before it is."""
        self.joins += 1
        limit = self.front.max_batch
        if len(line) > 2 * limit and batch_longer_than(line, limit):
            self.front.reply(too_long_batch(limit))
            return b""
        return line


class FrontProtocol(LineWriter, Subscribable, asyncio.Protocol):
    """A client connection to the router; the `Sink` of the calls it makes one by one."""

    __slots__ = ("router", "door", "outbox", "handle", "limit", "resume_at", "max_batch", "transport", "flow",
                 "splitter", "_out", "calls", "_closing", "_partial", "brokered")

    def __init__(self, door: FrontDoor) -> None:
        # shared by every connection
        self.router = router = door.router
        self.door = door
        self.outbox = router.outbox
        self.handle: Handle = router.handle
        self.limit = door.limit
        self.resume_at = self.limit // 2
        self.max_batch = door.max_batch
        # this connection
        self.transport: asyncio.Transport | None = None
        self.flow = FlowControl()
        self.splitter = FrontSplitter(self, door)
        self._out: list[bytes] = []
        self.calls: set[Call] = set()
        """Calls of this client still in flight: cancelled if it disconnects."""
        self._closing = False
        """Set after an oversized or stalled line: answer what is in flight, then close."""
        self._partial: tuple[int, float] | None = None
        """(`splitter.joins`, when `FrontDoor.sweep` first saw the unfinished line), while there is one."""
        self.events: Subscriber | None = None
        """Its subscriptions (router/events.py), once it asks for notifications: until then, none reach it."""
        self.brokered: Brokered | None = None
        """The connections to plugins it got with `router.connect` (router/direct.py): they end with it."""

    # --- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's methods but not its class.
        self.transport = self.flow.transport = cast(asyncio.Transport, transport)
        door = self.door
        door.connections += 1
        if door.connections > door.max_clients:
            door.log_full("turned a client away: %d connections open, the most --max-clients allows", door.max_clients)
            self._turn_away(error_line(None, codes.OVERLOADED, data={
                "reason": f"the router serves {door.max_clients} client connections, its most (plugrpc run "
                          "--max-clients): try again later"}))
            return
        if door.allow_uids is not None:
            uid = _peer_uid(transport)
            if uid not in door.allow_uids:
                self._refuse(uid)
                return
        self.handle = self.router.handler_for(transport.get_extra_info("socket"))  # a plugin's: narrower
        self.router.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.door.connections -= 1
        self.splitter.release()
        self.router.clients.discard(self)
        if self.events is not None:
            self.events.close()
        if self.brokered is not None:
            self.brokered.close()
        if self.calls:
            cancel = self.router.cancel
            for call in self.calls:
                cancel(call)
            self.calls.clear()

    def eof_received(self) -> bool:
        """The client stopped writing: after a half-close, answer what it asked, then close.

        A client that half-closes (`shutdown(SHUT_WR)`, as `nc -N` and socat do after their input)
        still reads; one that closed fully never will, and its calls are cancelled as it goes
        (`connection_lost`). On a unix socket only a full close sets POLLHUP. A last request
        without its newline counts, as a line ended by the end of input.
        """
        if self.splitter.buffered and not self._closing:
            self.data_received(b"\n")
        if not self.calls or self.transport is None or hung_up(self.transport.get_extra_info("socket").fileno()):
            return False
        self._closing = True
        return True

    def close(self) -> None:
        """Close at once (shutdown): what was queued is written first."""
        if self.transport is not None:
            self.flush()
            self.transport.close()

    def _refuse(self, uid: int | None) -> None:
        """A peer whose uid `--allow-uid` does not list: say so, end our side, close soon after.

        Until the peer closes (or `REFUSED_LINGER` passes) what it sends is read and dropped: a
        peer that writes after a close gets "broken pipe" instead of reading why. The connection
        counts against `--max-clients` meanwhile, so a flood of them is turned away at once.
        """
        who = "an unknown uid" if uid is None else f"uid {uid}"
        self.door.log_refused("refused a client with %s: not in --allow-uid", who)
        transport = self.transport
        assert transport is not None
        self.splitter = _Discard(self, self.door)
        transport.write(error_line(None, codes.INVALID_REQUEST,
                                   data={"reason": f"{who} may not use this socket (plugrpc run --allow-uid)"}))
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSED_LINGER, transport.close)

    def _turn_away(self, why: bytes) -> None:
        """Past `--max-clients`: write why, then close at once, so the descriptor is free now.

        What the peer already sent is read and dropped first: closing a unix socket with unread
        data makes the peer's next read fail with "connection reset" instead of end of file.
        """
        transport = self.transport
        assert transport is not None
        self.flow.close()
        transport.write(why)
        _drop_unread(transport)
        transport.close()

    # --- requests ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        too_long = None
        try:
            lines = self.splitter.feed(data)
        except LineTooLong as exc:
            lines, too_long = exc.lines, exc
        handle = self.handle
        for line in lines:
            try:
                msg = loads(line)
            except JSONDecodeError as exc:
                if line.strip():  # a line of blanks is skipped, as an empty line is
                    self.queue(parse_error_line(exc))
                continue
            if type(msg) is list:
                self._batch(msg)
            else:
                handle(msg, self)
        if too_long is not None:
            self._too_large(too_long)

    def _batch(self, msgs: list[Any]) -> None:
        if not msgs:
            self.reply(error_response(None, codes.INVALID_REQUEST, data="an empty batch is not a request"))
            return
        if len(msgs) > self.max_batch:
            self.reply(too_long_batch(self.max_batch))
            return
        batch = Batch(self)
        for msg in msgs:
            self.handle(msg, batch)
        batch.seal()

    def _too_large(self, exc: LineTooLong) -> None:
        """A line over the limit, or over what all clients' unfinished lines may hold: -32004, then close."""
        door = self.door
        if isinstance(exc, OverBudget):
            door.log_over_budget("closing a client connection: its unfinished line would take the bytes held for "
                                 "all clients past %d (--max-buffered)", door.budget.limit)
            self._shut(error_line(None, codes.MESSAGE_TOO_LARGE, data=(
                f"the router holds {door.budget.limit} bytes of unfinished lines for all clients at most "
                "(plugrpc run --max-buffered), and this line would pass it: send it again later")))
            return
        door.log_too_long("closing a client connection: line over %d bytes (--max-line)", self.splitter.max_line)
        self._shut(too_large_line(self.splitter.max_line))

    def check_partial(self, now: float, timeout: float) -> None:
        """From `FrontDoor.sweep`: close the connection if the same unfinished line has waited `timeout`.

        The wait counts only while its calls in flight leave the router reading it (not while `busy`).
        """
        splitter = self.splitter
        if not splitter.buffered or self.flow.busy or self._closing:
            self._partial = None
            return
        mark = self._partial
        if mark is None or mark[0] != splitter.joins:
            self._partial = (splitter.joins, now)
        elif now - mark[1] >= timeout:
            size = splitter.buffered
            self.door.log_stalled("closing a client connection: an unfinished line waited over %gs for its end "
                                  "(--partial-timeout)", timeout)
            self._shut(error_line(None, codes.INVALID_REQUEST, data=(
                f"an unfinished line ({size} bytes, no newline yet) waited over {timeout:g}s for its end "
                "(plugrpc run --partial-timeout): end every request with a newline")))

    def _shut(self, why: bytes) -> None:
        """Stop reading, drop the unfinished line, answer `why`; close once the calls in flight are answered."""
        self.flow.close()
        self.splitter.release()
        self.queue(why)
        self._closing = True
        self._close_when_done()

    def _close_when_done(self) -> None:
        if not self.calls:
            self.close()

    # --- Sink ----------------------------------------------------------------------------

    def track(self, call: Call) -> None:
        calls = self.calls
        calls.add(call)
        if len(calls) >= self.limit:
            self.flow.too_many()

    def deliver(self, call: Call, msg: Message) -> None:
        """An answer for one of our calls: restore the client's id and send it (see outbox.py).

        `finished`, inlined for the common case: this runs once per call.
        """
        msg["id"] = call.id
        try:
            line = _dumps(msg, option=_NEWLINE)
        except orjson.JSONEncodeError as exc:
            line = _dumps(unencodable(msg, exc), option=_NEWLINE)
        calls = self.calls
        calls.discard(call)
        if calls:  # more answers may come for this client in this turn: one write for them all
            self.queue(line)
        else:
            self.write_now(line)
        if self._closing or len(calls) == self.resume_at:
            self._left_flight(len(calls))

    def reply(self, msg: Message) -> None:
        """An answer the router made itself (errors, built-ins)."""
        self.queue(dumps(msg))

    async def deliver_fd(self, call: Call, msg: Message, sock: socket.socket) -> bool:
        """`deliver` for `router.connect`: the answer's bytes carry `sock` to the client (SCM_RIGHTS).

        sendmsg goes around the transport, so whatever was written before must have left first:
        what is queued is flushed and the transport's buffer drains (polled: brokering is rare).
        Nothing is awaited between the last look and the sendmsg, so nothing slips in between;
        bytes the kernel does not take at once follow through the transport, the descriptor having
        gone with the first ones. False if the client left, or did not read for `FD_WRITE_TIMEOUT`.
        """
        line = _dumps(msg, option=_NEWLINE)
        deadline = time.monotonic() + FD_WRITE_TIMEOUT
        while True:
            transport = self.transport
            if call.sink is None or transport is None or transport.is_closing():
                return False
            self.flush()
            if not transport.get_write_buffer_size():
                sent = _send_fd(transport, line, sock.fileno())
                if sent is None:
                    return False
                if sent:
                    if sent < len(line):
                        transport.write(line[sent:])
                    call.sink = None
                    self.finished(call)
                    return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(FD_WRITE_POLL)

    def cancel(self, id: Any) -> bool:
        for call in self.calls:
            if call.id == id and call.sink is not None:
                self.router.cancel(call)
                self.finished(call)
                return True
        return False

    def finished(self, call: Call) -> None:
        """`call` has left flight, answered or cancelled (`deliver` does this itself)."""
        calls = self.calls
        calls.discard(call)
        self._left_flight(len(calls))

    def _left_flight(self, inflight: int) -> None:
        """After a call left flight: close once the last one is answered, or read again at the resume mark."""
        if self._closing:
            self._close_when_done()
        elif inflight == self.resume_at:  # one at a time down from the limit: it passes here
            self.flow.few_enough()

    # --- backpressure --------------------------------------------------------------------

    def pause_writing(self) -> None:
        self.flow.pause_writing()
        if self.events is not None:
            self.events.pause()  # events wait in its bounded backlog, not in the transport's buffer

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        if self.events is not None:
            self.events.resume()


class _Discard(FrontSplitter):
    """The splitter of a refused connection: whatever arrives is dropped unread."""

    def feed(self, data: bytes) -> list[bytes]:
        return []


def too_long_batch(limit: int) -> Message:
    """The -32600 that a batch of more than `limit` requests gets instead of any answer."""
    return error_response(None, codes.INVALID_REQUEST, data={
        "reason": f"a batch of more than {limit} requests: the router takes at most {limit} in one batch "
                  "(plugrpc run --max-batch); send them as smaller batches"})


def batch_longer_than(line: bytes, limit: int) -> bool:
    """Whether `line` is a batch of more than `limit` requests, counted one at a time, never parsed whole.

    Fewer than `limit` commas cannot make more than `limit` elements. Otherwise the standard library's
    scanner steps over `limit` elements of the line's start read as latin-1 (one character per byte;
    JSON's syntax is all ASCII), a start twice as long each time they do not fit in it. A line whose
    first `limit` elements are not valid JSON is left to the parser.
    """
    if line.count(b",") < limit:
        return False
    window = 64 * limit
    while True:
        counted = _count_elements(str(memoryview(line)[:window], "latin-1"), limit)
        if counted is not None or window >= len(line):
            return bool(counted)
        window *= 2


def _count_elements(text: str, limit: int) -> bool | None:
    """True if `text` starts a batch with more than `limit` elements, False if not, None if it is cut too short."""
    start = _BATCH_START.match(text)
    if start is None:
        return False
    index = start.end()
    try:
        for _ in range(limit):
            _value, index = _scan(text, index)
            separator = _SEPARATOR.match(text, index)
            if separator is None or separator.group(1) == "]":
                return None if separator is None and index == len(text) else False
            index = separator.end()
    except (StopIteration, ValueError, RecursionError):
        return None
    return True


def _drop_unread(transport: asyncio.BaseTransport, most: int = 1 << 20) -> None:
    """Read and drop what the peer has sent so far, up to `most` bytes (the socket is non-blocking)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    fd = sock.fileno()
    with contextlib.suppress(OSError):  # BlockingIOError once nothing is left
        while most > 0 and (chunk := os.read(fd, 1 << 16)):
            most -= len(chunk)


def _send_fd(transport: asyncio.Transport, data: bytes, fd: int) -> int | None:
    """sendmsg `data` with `fd` as SCM_RIGHTS on the transport's socket: bytes sent (0: the kernel's buffer is
    full), None if the socket is broken. uvloop's transports hand out a stand-in without sendmsg: a duplicate
    of the descriptor is a real socket object of the same connection."""
    raw = transport.get_extra_info("socket")
    if raw is None:
        return None
    try:
        with socket.socket(fileno=os.dup(raw.fileno())) as sock:
            return sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError:
        return None


def _peer_uid(transport: asyncio.BaseTransport) -> int | None:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED), if the OS says."""
    sock = transport.get_extra_info("socket")
    return None if sock is None else peer_uid(sock)
