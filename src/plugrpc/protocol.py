"""The router's front socket: one `FrontProtocol` per client connection.

The hot path reads top to bottom: `data_received` splits lines, each line is parsed and
handed to the router; `deliver` writes a response at once when it is the client's last call in
flight, else queues it for the end of the loop turn, so a busy client gets one write per turn.

Backpressure both ways: a client that stops reading stops being read from, and so does a
client with more than `max_inflight_per_client` calls in flight.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import TYPE_CHECKING, Any

import orjson

from . import codes
from .outbox import LineWriter
from .pool import Call
from .wire import (
    JSONDecodeError,
    LineSplitter,
    LineTooLong,
    dumps,
    error_response,
    loads,
    parse_error_line,
    too_large_line,
)

if TYPE_CHECKING:
    from .router import Router

log = logging.getLogger("plugrpc.protocol")
_PEERCRED = struct.Struct("3i")
_NEWLINE = orjson.OPT_APPEND_NEWLINE
_dumps = orjson.dumps


class FrontProtocol(LineWriter, asyncio.Protocol):
    """A client connection to the router."""

    __slots__ = ("router", "outbox", "handle", "limit", "transport", "splitter", "_out", "calls",
                 "_reading_paused", "_write_paused", "_inflight_paused", "_closing")

    def __init__(self, router: Router) -> None:
        # shared by every connection
        self.router = router
        self.outbox = router.outbox
        self.handle = router.handle
        self.limit = router.config.max_inflight_per_client
        # this connection
        self.transport: asyncio.WriteTransport | None = None
        self.splitter = LineSplitter(router.config.max_line)
        self._out: list[bytes] = []
        self.calls: set[Call] = set()
        """Calls of this client still in flight: cancelled if it disconnects."""
        self._write_paused = False
        self._inflight_paused = False
        self._reading_paused = False
        self._closing = False
        """Set after an oversized line: answer what is in flight, then close."""

    # --- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        allowed = self.router.config.allow_uids
        if allowed is not None and _peer_uid(transport) not in allowed:
            log.warning("refused a client whose uid is not in allow_uids")
            transport.close()
            return
        self.router.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.router.clients.discard(self)
        if self.calls:
            cancel = self.router.cancel
            for call in self.calls:
                cancel(call)
            self.calls.clear()

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
        elif len(self.calls) >= self.limit and not self._inflight_paused:
            self._inflight_paused = True
            self._update_reading()

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
        log.warning("closing a client connection: line over %d bytes", self.splitter.max_line)
        transport = self.transport
        if transport is not None:
            transport.pause_reading()  # type: ignore[attr-defined]
            self.queue(too_large_line(self.splitter.max_line))
            self._closing = True
            self._close_when_done()

    def _close_when_done(self) -> None:
        if self._closing and not self.calls and self.transport is not None:
            self.flush()
            self.transport.close()

    # --- Sink ----------------------------------------------------------------------------

    def track(self, call: Call) -> None:
        self.calls.add(call)

    def deliver(self, call: Call, msg: dict[str, Any]) -> None:
        """A response for one of our calls: restore the client's id and send it (see outbox.py)."""
        calls = self.calls
        calls.discard(call)
        msg["id"] = call.id
        try:
            line = _dumps(msg, option=_NEWLINE)
        except orjson.JSONEncodeError as exc:
            line = _dumps(_unencodable(msg, exc), option=_NEWLINE)
        if calls:  # more answers may come for this client in this turn: one write for them all
            self.queue(line)
        else:
            self.write_now(line)
        if self._closing:
            self._close_when_done()
        elif self._inflight_paused and len(calls) <= self.limit // 2:
            self._inflight_paused = False
            self._update_reading()

    def reply(self, msg: dict[str, Any]) -> None:
        """A response the router made itself (errors, built-ins)."""
        self.queue(dumps(msg))

    # --- backpressure --------------------------------------------------------------------

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self._closing:
            return
        pause = self._write_paused or self._inflight_paused
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                transport.pause_reading()  # type: ignore[attr-defined]
            else:
                transport.resume_reading()  # type: ignore[attr-defined]


class Batch:
    """Collects the responses of one batch request and sends them as one array (JSON-RPC 2.0 §6)."""

    __slots__ = ("front", "responses", "remaining", "sealed")

    def __init__(self, front: FrontProtocol) -> None:
        self.front = front
        self.responses: list[dict[str, Any]] = []
        self.remaining = 0
        self.sealed = False

    def track(self, call: Call) -> None:
        self.remaining += 1
        self.front.calls.add(call)

    def deliver(self, call: Call, msg: dict[str, Any]) -> None:
        self.front.calls.discard(call)
        msg["id"] = call.id
        self.responses.append(msg)
        self.remaining -= 1
        self._maybe_send()
        if self.front._closing:
            self.front._close_when_done()

    def reply(self, msg: dict[str, Any]) -> None:
        self.responses.append(msg)

    def seal(self) -> None:
        """Every element has been routed; send once the last response is in."""
        self.sealed = True
        self._maybe_send()

    def _maybe_send(self) -> None:
        # A batch of notifications only gets no response at all.
        if self.sealed and not self.remaining and self.responses:
            try:
                line = dumps(self.responses)
            except orjson.JSONEncodeError:
                line = dumps([_encodable(msg) for msg in self.responses])
            self.front.queue(line)
            self.responses = []


def _unencodable(msg: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """The -32603 sent instead of a plugin's answer that JSON cannot carry (nested over 254 levels)."""
    return error_response(msg.get("id"), codes.INTERNAL_ERROR, data={"reason": f"the answer cannot be encoded: {exc}"})


def _encodable(msg: dict[str, Any]) -> dict[str, Any]:
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
