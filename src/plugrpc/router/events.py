"""The event hub: subscriptions, events fanned out to them, progress passed on (docs/design.md, "Events").

Plugins emit `rpc.event` and `rpc.progress` notifications on the router's connections to them;
`pool.py` hands them here. Clients ask for notifications with `router.subscribe` and get none
before they do; each event whose full name (`plugin.event`) matches one of a subscription's
patterns reaches it as `rpc.event` with the plugin's `seq`, in order, at most once.

What it costs, and who pays:
- a client that never subscribed has no state here; its connection's `events` stays None;
- an event is encoded once, and subscriptions that share their patterns and their id (ids
  count per connection, so most are 1) share it further: they form a `SubscriptionGroup`, which keeps the
  lines of a loop turn once for all of them and, at the end of the turn (it is a writer of the
  router's `Outbox`), queues them joined on each member's `LineWriter`: a subscriber costs one
  queued chunk per turn, however many events the turn had;
- the groups a name reaches are found in a `PatternIndex` of every group's patterns (time bounded
  by the name's tokens, not by the count of patterns), then remembered per name, for at most
  `ROUTE_CACHE` names, until subscriptions change;
- a connection's patterns are bounded in count and characters (`MAX_PATTERNS`, `MAX_PATTERN_CHARS`),
  so is the count of its subscriptions (`MAX_SUBSCRIPTIONS`).

A subscriber that does not read never slows anyone: once its transport's buffer is full
(`pause_writing`), its events wait in a backlog of at most `Config.event_queue` events and
`BACKLOG_BYTES` bytes; what overflows is dropped and counted per subscription, and its next event
carries `"dropped": K`. The backlog holds the events' bodies, shared with every other backlog
that holds the same event; a subscription's line is made when it is written.
Progress is dropped rather than queued for such a connection: late progress is worth nothing.

Another part of the router (the NATS bridge) gets every accepted event by `EventHub.listen`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import orjson

from .. import codes
from ..flow import FlowControl
from ..outbox import Outbox
from ..patterns import Matcher, PatternIndex, name_problem, pattern_problem
from ..wire import dumps, error_response, result_response
from .batch import Batch
from .interfaces import Call, Message, Sink

log = logging.getLogger("plugrpc.events")

MAX_SUBSCRIPTIONS: Final = 1024
"""Subscriptions one connection may hold."""
MAX_PATTERNS: Final = 1024
"""Patterns one connection's subscriptions may have in all..."""
MAX_PATTERN_CHARS: Final = 64 << 10
"""...and their characters in all: what a connection costs in the index stays bounded."""
BACKLOG_BYTES: Final = 8 << 20
"""Bytes of events a paused connection may have waiting (with at most `Config.event_queue` events)."""
ROUTE_CACHE: Final = 4096
"""Event names whose groups are remembered; past that, or past `ROUTE_CACHE_CHARS`, they start again."""
ROUTE_CACHE_CHARS: Final = 1 << 20
WARN_LIMIT: Final = 256
"""Different faults logged per plugin; past that, faults are still counted but no longer logged."""
_HEAD: Final = b'{"jsonrpc":"2.0","method":"rpc.event","params":{"subscription":%d,'
_DROPPED: Final = b'"dropped":%d,'
_END: Final = b"}\n"
_dumps = orjson.dumps


class Event(NamedTuple):
    """An event as listeners get it: accepted from its plugin, numbered, and encoded once."""

    plugin: str
    name: str
    """As the plugin emitted it, without the plugin's name: `port.added`."""
    data: Any
    seq: int
    body: bytes
    """`{"name": "ovs.port.added", "data": ..., "seq": N}`: the params of `rpc.event` without
    `subscription`, as the NATS bridge publishes them."""


Listener = Callable[[Event], None]
"""Called on the loop for every accepted event, subscribers or not; it must not block."""


class Subscription:
    """One `router.subscribe` of one connection: its patterns, and what it missed since its last event."""

    __slots__ = ("id", "subscriber", "patterns", "progress", "dropped", "head")

    def __init__(self, id: int, subscriber: Subscriber, patterns: tuple[str, ...], progress: bool) -> None:
        self.id = id
        self.subscriber = subscriber
        self.patterns = patterns
        self.progress = progress
        self.dropped = 0
        """Events that overflowed the backlog since this subscription's last one: its next says so."""
        self.head = _HEAD % id

    def __repr__(self) -> str:
        return f"<Subscription {self.id} {list(self.patterns)!r}{' progress' if self.progress else ''}>"

    def missed(self) -> int:
        """The events it missed since its last one, which its next one says: counting starts again."""
        dropped, self.dropped = self.dropped, 0
        return dropped

    def line(self, body: bytes, dropped: int) -> bytes:
        """This subscription's `rpc.event` line for an event's body, with the count it missed before it."""
        return self.head + (_DROPPED % dropped if dropped else b"") + body[1:] + _END


class SubscriptionGroup:
    """Subscriptions with the same patterns and the same id: the same lines reach them all, so the same bytes.

    A writer of the router's `Outbox`: the lines of one loop turn are kept once, and leave at the
    end of the turn, joined, queued on each member's connection. A member that is paused, or that
    missed events, takes them one by one instead (`Subscriber.hold`).
    """

    __slots__ = ("hub", "key", "members", "lines", "bodies")

    def __init__(self, hub: EventHub, key: tuple[tuple[str, ...], int]) -> None:
        self.hub = hub
        self.key = key
        self.members: list[Subscription] = []
        self.lines: list[bytes] = []
        """This turn's lines (of the members' id)..."""
        self.bodies: list[bytes] = []
        """...and the same events' bodies, for a member that needs a line of its own."""

    def __repr__(self) -> str:
        return (f"<SubscriptionGroup {list(self.key[0])!r} id={self.key[1]} members={len(self.members)} "
                f"waiting={len(self.lines)}>")

    def add(self, line: bytes, body: bytes) -> None:
        if not self.lines:
            self.hub.outbox.add(self)
        self.lines.append(line)
        self.bodies.append(body)

    def flush(self) -> None:
        lines, bodies = self.lines, self.bodies
        if not lines:
            return
        self.lines, self.bodies = [], []
        data = lines[0] if len(lines) == 1 else b"".join(lines)
        for sub in self.members:
            subscriber = sub.subscriber
            if subscriber.paused or sub.dropped:
                for body in bodies:
                    subscriber.hold(sub, body)
            else:
                subscriber.front.queue(data)


class Subscribable:
    """What a client's socket connection (router/front.py) is to the hub: it may hold subscriptions (`events`,
    None until it subscribes), it takes lines with `queue`, and `flow` says whether its peer reads."""

    __slots__ = ("events",)

    events: Subscriber | None
    flow: FlowControl

    def queue(self, line: bytes) -> None:
        raise NotImplementedError


class Subscriber:
    """A client connection's side of its subscriptions: what it asked for, and its bounded backlog."""

    __slots__ = ("hub", "front", "subs", "next_id", "progress", "paused", "backlog", "held", "patterns", "chars")

    def __init__(self, hub: EventHub, front: Subscribable) -> None:
        self.hub = hub
        self.front = front
        self.subs: dict[int, Subscription] = {}
        self.next_id = 1
        self.progress = 0
        """Subscriptions that asked for progress: the connection gets progress while there is one."""
        self.paused = front.flow.write_paused
        """The transport's buffer is full: events wait in `backlog` instead of being written."""
        self.backlog: deque[tuple[Subscription, bytes, int]] = deque()
        """Events waiting: the subscription, the event's body, and what the subscription missed before it."""
        self.held = 0
        """Bytes of the bodies in `backlog`."""
        self.patterns = 0
        self.chars = 0
        """Patterns of its subscriptions, and their characters: bounded by `MAX_PATTERNS`, `MAX_PATTERN_CHARS`."""

    def __repr__(self) -> str:
        paused = " paused" if self.paused else ""
        return f"<Subscriber {len(self.subs)} subscriptions{paused} backlog={len(self.backlog)}>"

    def hold(self, sub: Subscription, body: bytes) -> None:
        """An event for `sub` while the connection is paused, or after `sub` missed some."""
        if not self.paused:
            self.front.queue(sub.line(body, sub.missed()))
        elif len(self.backlog) < self.hub.queue_limit and self.held + len(body) <= BACKLOG_BYTES:
            self.backlog.append((sub, body, sub.missed()))
            self.held += len(body)
        else:
            sub.dropped += 1
            self.hub.dropped += 1

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        """The peer reads again: what waited goes out first, in order, with the next loop turn's write."""
        self.paused = False
        backlog, queue = self.backlog, self.front.queue
        while backlog and not self.paused:
            sub, body, dropped = backlog.popleft()
            self.held -= len(body)
            queue(sub.line(body, dropped))

    def close(self) -> None:
        """The connection is gone: its subscriptions end."""
        self.hub.forget(self)
        self.subs.clear()
        self.backlog.clear()
        self.held = 0


class EventHub:
    """Every subscription of every client connection, and the events and progress that go to them."""

    def __init__(self, queue_limit: int, outbox: Outbox) -> None:
        self.queue_limit = queue_limit
        """Lines a paused connection may have waiting before its events are dropped (`Config.event_queue`)."""
        self.outbox = outbox
        self.groups: dict[tuple[tuple[str, ...], int], SubscriptionGroup] = {}
        """The subscriptions with patterns, by their patterns and id."""
        self._index = PatternIndex()
        """Every group, under each of its patterns."""
        self._routes: dict[str, list[SubscriptionGroup]] = {}
        """Full event name -> the groups it reaches; emptied whenever subscriptions change, or it is full."""
        self._route_chars = 0
        """Characters of the names in `_routes`."""
        self._seq: dict[str, int] = {}
        self._listeners: list[Listener] = []
        self._warned: dict[str, set[str]] = {}
        # figures for router.stats
        self.emitted: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<EventHub {self.subscriptions()} subscriptions, {sum(self.emitted.values())} events>"

    def subscriptions(self) -> int:
        """Subscriptions with patterns, of every connection."""
        return sum(len(group.members) for group in self.groups.values())

    # --- built-ins: router.subscribe, router.unsubscribe -----------------------------------

    def subscribe(self, call: Call) -> Message:
        """`router.subscribe {"events": [patterns], "progress": bool}` -> `{"subscription": S}`."""
        front = _front_of(call.sink)
        params = call.params
        problem = _subscribe_problem(params)
        if problem is None and front is None:
            problem = {"reason": "subscriptions need a connection to the router's socket that can receive "
                                 "notifications"}
        if problem is not None:
            return error_response(call.id, codes.INVALID_PARAMS, data=problem)
        assert front is not None
        subscriber = front.events
        if subscriber is None:
            subscriber = front.events = Subscriber(self, front)
        patterns, progress = tuple(dict.fromkeys(params.get("events", ()))), bool(params.get("progress", False))
        chars = sum(map(len, patterns))
        full = _full_problem(subscriber, len(patterns), chars)
        if full is not None:
            return error_response(call.id, codes.OVERLOADED, data={"reason": full})
        sub = Subscription(subscriber.next_id, subscriber, patterns, progress)
        subscriber.next_id += 1
        subscriber.subs[sub.id] = sub
        subscriber.patterns += len(patterns)
        subscriber.chars += chars
        if progress:
            subscriber.progress += 1
        if patterns:
            key = (patterns, sub.id)
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = SubscriptionGroup(self, key)
                for pattern in patterns:
                    self._index.add(pattern, group)
                self._routes.clear()
            group.members.append(sub)
        return result_response(call.id, {"subscription": sub.id})

    def unsubscribe(self, call: Call) -> Message:
        """`router.unsubscribe {"subscription": S}` -> true (false: this connection has no subscription S)."""
        params = call.params
        sid = params.get("subscription") if type(params) is dict else None
        if type(sid) is not int or len(params) != 1:
            return error_response(call.id, codes.INVALID_PARAMS, data={
                "reason": 'params must be {"subscription": S}, S as router.subscribe answered it'})
        front = _front_of(call.sink)
        subscriber = front.events if front is not None else None
        sub = subscriber.subs.pop(sid, None) if subscriber is not None else None
        if sub is None:
            return result_response(call.id, False)
        self._end(sub)
        return result_response(call.id, True)

    def _end(self, sub: Subscription) -> None:
        subscriber = sub.subscriber
        if sub.progress:
            subscriber.progress -= 1
        subscriber.patterns -= len(sub.patterns)
        subscriber.chars -= sum(map(len, sub.patterns))
        if sub.patterns:
            key = (sub.patterns, sub.id)
            group = self.groups[key]
            group.members.remove(sub)
            if not group.members:
                del self.groups[key]
                for pattern in sub.patterns:
                    self._index.remove(pattern, group)
                self._routes.clear()

    def forget(self, subscriber: Subscriber) -> None:
        """Every subscription of a connection that closed."""
        for sub in subscriber.subs.values():
            self._end(sub)

    # --- from plugins ----------------------------------------------------------------------

    def emit(self, plugin: str, declared: Matcher, params: Any) -> None:
        """An `rpc.event` from `plugin`, whose manifest declares the names `declared` matches."""
        name = params.get("name") if type(params) is dict else None
        if type(name) is not str or not declared(name):
            self._refuse(plugin, declared, params, name)
            return
        seq = self._seq[plugin] = self._seq.get(plugin, 0) + 1
        self.emitted[plugin] = self.emitted.get(plugin, 0) + 1
        full = f"{plugin}.{name}"
        groups = self._routes.get(full)
        if groups is None:
            groups = self._route(full)
        if not groups and not self._listeners:
            return
        data = params.get("data")
        try:
            body = _dumps({"name": full, "data": data, "seq": seq})
        except orjson.JSONEncodeError as exc:  # orjson reads 1024 levels of nesting but writes 254
            self.reject(plugin, "unencodable", f"emitted {name!r} with data that cannot be passed on: {exc}")
            return
        if self._listeners:
            self._tell(Event(plugin, name, data, seq, body))
        lines: dict[int, bytes] = {}
        for group in groups:
            sid = group.key[1]
            line = lines.get(sid)
            if line is None:
                line = lines[sid] = _HEAD % sid + body[1:] + _END
            group.add(line, body)

    def _route(self, full: str) -> list[SubscriptionGroup]:
        """The groups `full` reaches, from the index, remembered within `ROUTE_CACHE` (none is, with no group)."""
        if not self.groups:
            return []
        groups: list[SubscriptionGroup] = list(self._index.match(full))  # type: ignore[arg-type]
        if len(self._routes) >= ROUTE_CACHE or self._route_chars + len(full) > ROUTE_CACHE_CHARS:
            self._routes.clear()
        if not self._routes:
            self._route_chars = 0
        self._routes[full] = groups
        self._route_chars += len(full)
        return groups

    def _refuse(self, plugin: str, declared: Matcher, params: Any, name: Any) -> None:
        """Why an `rpc.event` is dropped: not of the contract's shape, or a name the manifest does not declare."""
        if type(name) is not str:
            self.reject(plugin, "malformed-event", 'sent an rpc.event whose params are not {"name": ..., "data": ...}:'
                        f" {params!r:.200}")
        elif (problem := name_problem(name)) is not None:
            self.reject(plugin, "bad-name", f"sent an rpc.event with a bad name: {problem}")
        else:
            declares = f"declares only {list(declared.patterns)}" if declared.patterns else "declares no events"
            self.reject(plugin, f"undeclared:{name}", f"emitted {name!r}, which its manifest {declares}: add it to "
                        f"`events` under [plugin.{plugin}] in .plugin.toml")

    def progress(self, call: Call, value: Any) -> None:
        """`rpc.progress` for a call in flight: to its caller's connection, if that asked for progress."""
        front = _front_of(call.sink)
        subscriber = front.events if front is not None else None
        if subscriber is None or not subscriber.progress or subscriber.paused:
            return
        try:
            line = dumps({"jsonrpc": "2.0", "method": "rpc.progress", "params": {"id": call.id, "value": value}})
        except orjson.JSONEncodeError:
            return
        subscriber.front.queue(line)

    def started(self, plugin: str) -> None:
        """A new process of `plugin` runs: its events may have been lost in between, so `seq` skips one."""
        seq = self._seq.get(plugin)
        self._seq[plugin] = 0 if seq is None else seq + 1

    def reject(self, plugin: str, key: str, why: str) -> None:
        """Drop something a plugin sent, count it, and log it the first time it comes (per plugin and `key`)."""
        self.rejected[plugin] = self.rejected.get(plugin, 0) + 1
        warned = self._warned.setdefault(plugin, set())
        if key in warned or len(warned) >= WARN_LIMIT:
            return
        warned.add(key)
        log.warning("plugin %s; dropped it (said once; router.stats counts them)", why, extra={"plugin": plugin})

    # --- for other parts of the router -----------------------------------------------------

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` for every event accepted from now on; returns what stops it.

        The NATS bridge uses this to publish events (`event.body` on `plugrpc.event.NAME.PLUGIN.EVENT`).
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _tell(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("an event listener failed on %s.%s", event.plugin, event.name)

    def status(self) -> dict[str, Any]:
        """Figures for `router.stats`."""
        return {"subscriptions": self.subscriptions(), "emitted": sum(self.emitted.values()),
                "rejected": sum(self.rejected.values()), "dropped": self.dropped}


def _front_of(sink: Sink | None) -> Subscribable | None:
    """The client connection a call came on, for calls from a socket (alone or in a batch)."""
    if isinstance(sink, Subscribable):
        return sink
    if type(sink) is Batch and isinstance(sink.front, Subscribable):  # not a batch that came over NATS
        return sink.front
    return None


_SUBSCRIBE_KEYS: Final = frozenset({"events", "progress"})


def _subscribe_problem(params: Any) -> dict[str, Any] | None:
    """What is wrong with `router.subscribe`'s params (the `error.data` of its -32602), or None."""
    usage = 'params are {"events": ["ovs.port.*", "demo.>"], "progress": true}, either one optional'
    if type(params) is not dict:
        return {"reason": usage}
    unknown = sorted(set(params) - _SUBSCRIBE_KEYS)
    if unknown:
        return {"reason": f"unknown member(s) {', '.join(map(repr, unknown))}: {usage}"}
    patterns = params.get("events", [])
    progress = params.get("progress", False)
    if type(patterns) is not list or type(progress) is not bool:
        return {"reason": usage}
    if not patterns and not progress:
        return {"reason": f"nothing to subscribe to: {usage}"}
    if len(patterns) > MAX_PATTERNS:
        return {"reason": f"a subscription may have {MAX_PATTERNS} patterns"}
    bad = {str(p): problem for p in patterns if (problem := pattern_problem(p)) is not None}
    if bad:
        return {"reason": "; ".join(bad.values()), "patterns": list(bad)}
    if sum(map(len, patterns)) > MAX_PATTERN_CHARS:
        return {"reason": f"a subscription's patterns may have {MAX_PATTERN_CHARS} characters in all"}
    return None


def _full_problem(subscriber: Subscriber, patterns: int, chars: int) -> str | None:
    """Why a connection cannot take one more subscription (the reason of its -32003), or None."""
    if len(subscriber.subs) >= MAX_SUBSCRIPTIONS:
        return f"a connection may hold {MAX_SUBSCRIPTIONS} subscriptions; router.unsubscribe some first"
    if subscriber.patterns + patterns > MAX_PATTERNS or subscriber.chars + chars > MAX_PATTERN_CHARS:
        return (f"a connection's subscriptions may have {MAX_PATTERNS} patterns of {MAX_PATTERN_CHARS} characters "
                f"in all; this one has {subscriber.patterns} of {subscriber.chars}: router.unsubscribe some first")
    return None
