"""The router's own methods: `router.plugins`, `.stats`, `.health`, `.reload`, `.logs`, `.connect`; `rpc.discover`,
`rpc.cancel`.

They are targets like any plugin, reached through the same routing table under the reserved
prefixes `router` and `rpc`, which the manifest refuses as plugin names.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Final

from .. import codes
from ..errors import RpcError
from ..process.logbook import Logbook
from ..process.supervisor import PluginState
from ..version import __version__
from ..wire import error_response, result_response
from .interfaces import Call, Message, Sink

if TYPE_CHECKING:
    from .view import RouterView

log = logging.getLogger("plugrpc.router")

DISCOVER_TIMEOUT: Final = 5.0
"""Seconds `rpc.discover` waits for each plugin's own description before listing its exports only."""
HEALTHY: Final = frozenset({PluginState.RUNNING, PluginState.STARTING, PluginState.STOPPED})
"""Starting is healthy (calls wait in the socket backlog); so is stopped (lazy or idle)."""

BUILTIN_DOCS: Final = {
    "plugins": "Every plugin with its state, pid, exports, restarts, last exit, in-flight calls and latency.",
    "stats": "Call counts, errors and latency percentiles, in total and per plugin.",
    "health": "ok when every plugin is running, starting, or stopped until its next call; else degraded.",
    "reload": "Re-read the manifest; start, swap and stop plugins as it says. Same as SIGHUP.",
    "subscribe": 'Ask for notifications on this connection: {"events": ["ovs.port.*"], "progress": true}.',
    "unsubscribe": 'End a subscription: {"subscription": S}.',
    "logs": "A plugin's recent output lines (seq, time, level, text): {plugin, lines, after, wait}.",
    "connect": 'A connection of your own to a plugin, passed as SCM_RIGHTS with the answer: {"plugin": NAME}.',
}
LOG_LINES: Final = 20
"""Lines `router.logs` returns when not told how many."""
MAX_LOG_WAIT: Final = 60.0
"""Longest `wait` of `router.logs`: a follower asks again rather than hold a call open for ever."""


class _Tasks:
    """The few built-ins that wait (reload, discover) run as tasks, cancelled at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def notify(self, method: str, params: Any, sink: Sink) -> None:
        """Built-ins have no side effect worth a notification, but `rpc.cancel` (see `RpcBuiltins`)."""

    def cancel(self, call: Call) -> None:
        call.sink = None


class Builtins(_Tasks):
    """`router.plugins`, `router.stats`, `router.health` and `router.reload`."""

    def __init__(self, router: RouterView) -> None:
        super().__init__()
        self.router = router
        self.exported = frozenset(BUILTIN_DOCS)
        self.rpc = RpcBuiltins(router)

    async def aclose(self) -> None:
        await asyncio.gather(super().aclose(), self.rpc.aclose())

    def submit(self, call: Call) -> None:
        call.target = self
        if call.method == "reload":
            self.spawn(self._reload(call))
        elif call.method == "plugins":
            call.finish(result_response(call.id, self.plugins()))
        elif call.method == "stats":
            call.finish(result_response(call.id, self.stats()))
        elif call.method == "subscribe":
            call.finish(self.router.events.subscribe(call))
        elif call.method == "unsubscribe":
            call.finish(self.router.events.unsubscribe(call))
        elif call.method == "logs":
            self._logs(call)
        elif call.method == "connect":
            self.spawn(self.router.direct.broker(call))
        else:
            call.finish(result_response(call.id, self.health()))

    async def _reload(self, call: Call) -> None:
        try:
            result = await self.router.reload()
        except Exception as exc:  # a manifest refused, a socket that cannot be bound: answered, never left hanging
            call.finish(error_response(call.id, codes.INTERNAL_ERROR, f"reload refused: {exc}"))
            return
        call.finish(result_response(call.id, result))

    def _logs(self, call: Call) -> None:
        try:
            name, count, after, wait = _logs_params(call.params, self.router.plugins)
        except ValueError as exc:
            call.finish(error_response(call.id, codes.INVALID_PARAMS, data=str(exc)))
            return
        book = self.router.plugins[name].output
        if after is None or book.seq > after or not wait:
            call.finish(result_response(call.id, _log_lines(name, book, count, after)))
            return

        async def follow() -> None:
            await book.wait(after, wait)
            call.finish(result_response(call.id, _log_lines(name, book, count, after)))

        self.spawn(follow())

    def plugins(self) -> list[dict[str, Any]]:
        return [plugin.status() for plugin in self.router.plugins.values()]

    def stats(self) -> dict[str, Any]:
        router = self.router
        plugins = {name: plugin.status() for name, plugin in router.plugins.items()}
        return {
            "uptime": round(time.monotonic() - router.started, 3),
            "clients": len(router.clients),
            "inflight": router.inflight(),
            "calls": sum(p.get("calls", 0) for p in plugins.values()),
            "errors": sum(p.get("errors", 0) for p in plugins.values()),
            "plugins": {name: {k: p.get(k) for k in ("calls", "errors", "timeouts", "inflight", "p50_ms", "p99_ms",
                                                     "notifications_dropped", "direct") if k in p or k != "direct"}
                        for name, p in plugins.items()},
            "events": router.events.status(),
            **({"expired": router.nats.expired.status()} if router.nats is not None else {}),
        }

    def health(self) -> dict[str, Any]:
        sups = [p.supervisor for p in self.router.plugins.values() if p.supervisor is not None]
        healthy = all(sup.state in HEALTHY for sup in sups)
        return {"status": "ok" if healthy else "degraded", "plugins": {sup.spec.name: sup.state.value for sup in sups}}


class RpcBuiltins(_Tasks):
    """`rpc.discover`: one OpenRPC document for every exported method of every plugin.

    `rpc.cancel {"id": X}`: the client gave up on its call X (plugrpc.Client sends it on a
    timeout or a cancelled call); the router stops waiting and tells the plugin.
    """

    def __init__(self, router: RouterView) -> None:
        super().__init__()
        self.router = router
        self.exported = frozenset({"discover", "cancel"})
        self._document: asyncio.Task[tuple[Message, bool]] | None = None
        """The `rpc.discover` answer, built (or being built) once for the routing table in `_routes`."""
        self._routes: object = None

    def submit(self, call: Call) -> None:
        call.target = self
        if call.method == "cancel":
            sink, call.sink = call.sink, None  # so that an `rpc.cancel` never cancels itself
            assert sink is not None
            sink.deliver(call, result_response(call.id, _cancel(call.params, sink)))
            return
        self._discover(call)

    def notify(self, method: str, params: Any, sink: Sink) -> None:
        if method == "cancel":
            _cancel(params, sink)

    async def aclose(self) -> None:
        if self._document is not None:
            self._document.cancel()  # its callers are answered -32001
        await super().aclose()

    def _discover(self, call: Call) -> None:
        """Answer from the document of the current routing table: built once however many ask at once
        (a batch of them), then kept until the table changes (a reload), unless a plugin could not say."""
        document = self._document
        if document is None or self._routes is not self.router.routes:
            self._routes = self.router.routes
            self._document = document = asyncio.get_running_loop().create_task(self._describe())
            document.add_done_callback(self._described)
        if document.done():
            _answer_discover(call, document)
        else:
            document.add_done_callback(functools.partial(_answer_discover, call))

    def _described(self, document: asyncio.Task[tuple[Message, bool]]) -> None:
        """Forget a document that failed or lacks a running plugin's own description: the next call asks again."""
        if document is self._document and (document.cancelled() or document.exception() or not document.result()[1]):
            self._document = None

    async def _describe(self) -> tuple[Message, bool]:
        """The OpenRPC document, and whether every running plugin answered for itself (so it may be kept)."""
        router = self.router
        names = list(router.manifest.plugins)
        docs = await asyncio.gather(*(self._plugin_methods(name) for name in names))
        methods = [m for doc, _ in docs for m in doc]
        methods += [{"name": f"router.{m}", "params": [], "description": BUILTIN_DOCS[m]} for m in sorted(BUILTIN_DOCS)]
        doc = {"openrpc": "1.2.6", "info": {"title": "plugrpc router", "version": __version__}, "methods": methods,
               "x-events": {name: [f"{name}.{p}" for p in router.manifest.plugins[name].events] for name in names}}
        return doc, all(complete for _, complete in docs)

    async def _plugin_methods(self, name: str) -> tuple[list[dict[str, Any]], bool]:
        """A plugin's methods, and False when it was not running or did not answer in time (to ask again later)."""
        plugin = self.router.plugins[name]
        spec = plugin.spec
        described: dict[str, Any] = {}
        complete = plugin.supervisor is None or plugin.supervisor.state is PluginState.RUNNING
        if plugin.supervisor is not None and complete:
            try:
                result = await self.router.call_plugin(name, "rpc.discover",
                                                       timeout=min(spec.timeout, DISCOVER_TIMEOUT))
                described = {m["name"]: m for m in result.get("methods", []) if isinstance(m, dict) and "name" in m}
            except (TimeoutError, RpcError, AttributeError, TypeError) as exc:
                complete = not isinstance(exc, TimeoutError)
                log.info("rpc.discover not answered (%s); listing exports only", exc, extra={"plugin": name})
        methods = [{**described.get(export, {"params": []}), "name": f"{name}.{export}"} for export in spec.exports]
        return methods, complete


def _answer_discover(call: Call, document: asyncio.Task[tuple[Message, bool]]) -> None:
    if document.cancelled():
        call.finish(error_response(call.id, codes.PLUGIN_UNAVAILABLE, data="the router is shutting down"))
    elif document.exception() is not None:
        call.finish(error_response(call.id, codes.INTERNAL_ERROR, data=f"rpc.discover failed: {document.exception()}"))
    else:
        call.finish(result_response(call.id, document.result()[0]))


def _logs_params(params: Any, plugins: Mapping[str, Any]) -> tuple[str, int, int | None, float]:
    """`{plugin, lines = 20, after = none, wait = 0}` checked; ValueError says what is wrong."""
    if type(params) is not dict:
        raise ValueError('expected an object: {"plugin": NAME, "lines": N, "after": SEQ, "wait": SECONDS}')
    name = params.get("plugin")
    if type(name) is not str or name not in plugins:
        raise ValueError(f"no plugin named {name!r}; the plugins are {', '.join(plugins) or 'none'}")
    unknown = set(params) - {"plugin", "lines", "after", "wait"}
    if unknown:
        raise ValueError(f"unknown member(s) {', '.join(sorted(unknown))}; known: plugin, lines, after, wait")
    count, after, wait = params.get("lines", LOG_LINES), params.get("after"), params.get("wait", 0)
    if type(count) is not int or count < 0:
        raise ValueError(f"lines must be a whole number, got {count!r}")
    if after is not None and (type(after) is not int or after < 0):
        raise ValueError(f"after must be the seq of a line already read (0 for all), got {after!r}")
    if type(wait) not in (int, float) or not 0 <= wait <= MAX_LOG_WAIT:
        raise ValueError(f"wait must be 0 to {MAX_LOG_WAIT:g} seconds, got {wait!r}")
    return name, count, after, float(wait)


def _log_lines(name: str, book: Logbook, count: int, after: int | None) -> dict[str, Any]:
    """The last `count` lines, or every line after `after`; `skipped`: lines after `after` the book no longer has."""
    if after is None:
        lines, skipped = book.tail(count), 0
    else:
        lines = book.since(after)
        first = lines[0].seq if lines else book.seq + 1
        skipped = max(0, first - after - 1)
    return {"plugin": name, "lines": [line.as_dict() for line in lines], "seq": book.seq, "skipped": skipped}


def _cancel(params: Any, sink: Sink) -> bool:
    """Cancel the sender's own call with the client id in `params` (never another client's)."""
    if type(params) is not dict or "id" not in params:
        return False
    return sink.cancel(params["id"])
