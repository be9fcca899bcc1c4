"""A batch request (JSON-RPC 2.0 §6): its answers collected and sent as one array, from a client's
connection (router/front.py) or a NATS request (router/nats_bridge.py) alike."""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from .. import codes
from ..wire import dumps, error_response
from .interfaces import Call, Message


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
                line = dumps([encodable(msg) for msg in self.responses])
            self.front.queue(line)
            self.responses = []


def unencodable(msg: Message, exc: Exception) -> Message:
    """The -32603 sent instead of a plugin's answer that JSON cannot carry (nested over 254 levels)."""
    return error_response(msg.get("id"), codes.INTERNAL_ERROR, data={"reason": f"the answer cannot be encoded: {exc}"})


def encodable(msg: Message) -> Message:
    try:
        dumps(msg)
    except orjson.JSONEncodeError as exc:
        return unencodable(msg, exc)
    return msg
