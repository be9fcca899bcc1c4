"""The router's front socket: one `FrontProtocol` per client connection.

The hot path reads top to bottom: `data_received` splits lines, each line is parsed and handed
to the router; `deliver` writes an answer at once when it is the client's last call in flight,
else queues it for the end of the loop turn, so a busy client gets one write per turn.

Backpressure both ways, decided by one `FlowControl`: a client that stops reading stops being
read from, and so does a client with `max_inflight_per_client` calls in flight, until half of
them are answered, whether they came one by one or in batches.

Notifications to the client (events and progress, once it subscribed: router/events.py) leave
through the same writer; while the client does not read, its events wait in the bounded backlog
of its `Outlet` instead of the transport's buffer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import orjson

from .. import codes
from ..config import Config
from ..flow import FlowControl
from ..outbox import LineWriter
from ..wire import (
    JSONDecodeError,
    LineSplitter,
    LineTooLong,
    dumps,
    error_line,
    error_response,
    loads,
    parse_error_line,
    too_large_line,
)
from .interfaces import Call, Dispatch, Handle, Message

if TYPE_CHECKING:
    from .events import Outlet

log = logging.getLogger("plugrpc.front")
_PEERCRED: Final = struct.Struct("3i")
_NEWLINE: Final = orjson.OPT_APPEND_NEWLINE
_dumps = orjson.dumps
REFUSED_LINGER: Final = 1.0
"""Seconds a refused client gets to read why before its connection is closed."""


class FrontProtocol(LineWriter, asyncio.Protocol):
    """A client connection to the router; the `Sink` of the calls it makes one by one."""

    __slots__ = ("router", "outbox", "handle", "limit", "resume_at", "allow_uids", "transport", "flow",
                 "splitter", "_out", "calls", "_closing", "events")

    def __init__(self, router: Dispatch, config: Config) -> None:
        # shared by every connection
        self.router = router
        self.outbox = router.outbox
        self.handle: Handle = router.handle
        self.limit = config.max_inflight_per_client
        self.resume_at = self.limit // 2
        self.allow_uids = config.allow_uids
        # this connection
        self.transport: asyncio.Transport | None = None
        self.flow = FlowControl()
        self.splitter = LineSplitter(config.max_line)
        self._out: list[bytes] = []
        self.calls: set[Call] = set()
        """Calls of this client still in flight: cancelled if it disconnects."""
        self._closing = False
        """Set after an oversized line: answer what is in flight, then close."""
        self.events: Outlet | None = None
        """Its subscriptions (router/events.py), once it asks for notifications: until then, none reach it."""

    # --- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's methods but not its class.
        self.transport = self.flow.transport = cast(asyncio.Transport, transport)
        if self.allow_uids is not None:
            uid = _peer_uid(transport)
            if uid not in self.allow_uids:
                self._refuse(uid)
                return
        self.handle = self.router.handler_for(transport.get_extra_info("socket"))  # a plugin's: narrower
        self.router.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.router.clients.discard(self)
        if self.events is not None:
            self.events.close()
        if self.calls:
            cancel = self.router.cancel
            for call in self.calls:
                cancel(call)
            self.calls.clear()

    def close(self) -> None:
        """Close at once (shutdown): what was queued is written first."""
        if self.transport is not None:
            self.flush()
            self.transport.close()

    def _refuse(self, uid: int | None) -> None:
        """A peer whose uid `--allow-uid` does not list: say so, then close.

        Whatever it already sent is read and dropped until it closes (or `REFUSED_LINGER`
        passes): closing a unix socket with unread data resets the peer, which would lose the
        explanation.
        """
        transport = self.transport
        assert transport is not None
        who = "an unknown uid" if uid is None else f"uid {uid}"
        log.warning("refused a client with %s: not in --allow-uid", who)
        self.splitter = _Discard()
        transport.write(error_line(None, codes.INVALID_REQUEST,
                                   data={"reason": f"{who} may not use this socket (plugrpc run --allow-uid)"}))
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSED_LINGER, transport.close)

    # --- requests ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        too_long = False
        try:
            lines = self.splitter.feed(data)
        except LineTooLong as exc:
            lines, too_long = exc.lines, True
        handle = self.handle
        for line in lines:
            try:
                msg = loads(line)
            except JSONDecodeError as exc:
                self.queue(parse_error_line(exc))
                continue
            if type(msg) is list:
                self._batch(msg)
            else:
                handle(msg, self)
        if too_long:
            self._too_large()

    def _batch(self, msgs: list[Any]) -> None:
        if not msgs:
            self.reply(error_response(None, codes.INVALID_REQUEST, data="an empty batch is not a request"))
            return
        batch = Batch(self)
        for msg in msgs:
            self.handle(msg, batch)
        batch.seal()

    def _too_large(self) -> None:
        """A line over the limit: answer -32004 and close this connection only, without reading the rest.

        Calls still in flight are answered before the close: the transport is closed once they are.
        """
        log.warning("closing a client connection: line over %d bytes (--max-line)", self.splitter.max_line)
        self.flow.close()
        self.queue(too_large_line(self.splitter.max_line))
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
            line = _dumps(_unencodable(msg, exc), option=_NEWLINE)
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


class BatchOwner(Protocol):
    """Whoever received a batch: a client connection, or a NATS request (router/nats_bridge.py)."""

    def track(self, call: Call) -> None: ...

    def finished(self, call: Call) -> None: ...

    def cancel(self, id: Any) -> bool: ...

    def queue(self, line: bytes) -> None: ...


class Batch:
    """Collects the answers of one batch request and sends them as one array (JSON-RPC 2.0 §6).

    The `Sink` of the batch's calls; they count against the connection's in-flight limit
    like any other, and leave it through `FrontProtocol.finished`.
    """

    __slots__ = ("front", "responses", "remaining", "sealed")

    def __init__(self, front: BatchOwner) -> None:
        self.front = front
        self.responses: list[Message] = []
        self.remaining = 0
        self.sealed = False

    def track(self, call: Call) -> None:
        self.remaining += 1
        self.front.track(call)

    def deliver(self, call: Call, msg: Message) -> None:
        msg["id"] = call.id
        self.responses.append(msg)
        self.remaining -= 1
        self._maybe_send()
        self.front.finished(call)

    def reply(self, msg: Message) -> None:
        self.responses.append(msg)

    def cancel(self, id: Any) -> bool:
        return self.front.cancel(id)

    def seal(self) -> bool:
        """Every element has been routed; send once the last answer is in. False: notifications only, no answer."""
        self.sealed = True
        answers = bool(self.remaining or self.responses)
        self._maybe_send()
        return answers

    def _maybe_send(self) -> None:
        # A batch of notifications only gets no response at all.
        if self.sealed and not self.remaining and self.responses:
            try:
                line = dumps(self.responses)
            except orjson.JSONEncodeError:
                line = dumps([_encodable(msg) for msg in self.responses])
            self.front.queue(line)
            self.responses = []


class _Discard(LineSplitter):
    """The splitter of a refused connection: whatever arrives is dropped unread."""

    def feed(self, data: bytes) -> list[bytes]:
        return []


def _unencodable(msg: Message, exc: Exception) -> Message:
    """The -32603 sent instead of a plugin's answer that JSON cannot carry (nested over 254 levels)."""
    return error_response(msg.get("id"), codes.INTERNAL_ERROR, data={"reason": f"the answer cannot be encoded: {exc}"})


def _encodable(msg: Message) -> Message:
    try:
        dumps(msg)
    except orjson.JSONEncodeError as exc:
        return _unencodable(msg, exc)
    return msg


def _peer_uid(transport: asyncio.BaseTransport) -> int | None:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED), if the OS says."""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except OSError:
        return None
    return int(uid)
