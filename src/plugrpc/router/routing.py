"""The router: `plugin.method` calls from every client, routed to plugins by name.

A method is split at its first dot into plugin and method. Only exported methods are
reachable; `router.*` and `rpc.*` are the router's own (plugins can never take those names: the
manifest refuses them). Each plugin is one `Plugin` record: its spec, its supervisor (for
`mode = "rpc"`) and its target, a `PluginPool` or, for core0 binaries, an `ExecTarget`.
`routes` is derived from the records and the built-ins, and is all the hot path reads. A plugin's
own connections get a narrower `handle` (router/access.py), chosen once when they connect.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .. import codes
from ..config import Config
from ..errors import ConfigError, rpc_error
from ..manifest import SOCKET_COPIES, Manifest, PluginSpec, load_manifest
from ..outbox import Outbox
from ..process.execmode import ExecPlugin
from ..process.logbook import Logbook
from ..process.runtime_dir import RuntimeDir
from ..process.supervisor import GIVEN_UP, PluginState, Supervisor
from ..wire import ABSENT, error_response, reply_id, request_problem
from .access import handler, owner, peer_pid
from .builtins import Builtins
from .direct import DirectHub
from .events import EventHub
from .exec_target import ExecTarget
from .interfaces import INTERNAL, Call, Handle, Peer, Sink, Target, clock
from .internal import ask
from .liveness import Liveness
from .memory import release_free_memory
from .plugin import Plugin
from .pool import PluginPool
from .start_order import wait_after
from .stdio import StdioPool

if TYPE_CHECKING:
    from .nats_bridge import NatsBridge

log = logging.getLogger("plugrpc.router")

SWEEP_INTERVAL: Final = 0.05
"""Seconds between timeout sweeps; a call times out at most this late."""


class Router:
    """Routes calls to plugin targets; owns the plugin records and the timeout sweep."""

    def __init__(self, config: Config, manifest: Manifest, runtime_dir: RuntimeDir) -> None:
        self.config = config
        self.manifest = manifest
        self.runtime_dir = runtime_dir
        self.outbox = Outbox()
        self.plugins: dict[str, Plugin] = {}
        """The manifest's plugins, in manifest order."""
        self.retiring: set[Plugin] = set()
        """Records replaced or removed by a reload, finishing their calls before they stop."""
        self._newest: dict[str, Plugin] = {}
        """The latest record of each plugin of the manifest, from its creation on: what `after` waits for."""
        self.clients: set[Peer] = set()
        self.nats: NatsBridge | None = None
        """The router's NATS side, once the server started it (`--nats`)."""
        self.events = EventHub(config.event_queue, self.outbox)
        """Subscriptions, and the events and progress plugins send them (router/events.py)."""
        self.started = time.monotonic()
        self.builtins = Builtins(self)
        self.direct = DirectHub(self)
        """`router.connect`: connections of callers' own to plugins (router/direct.py)."""
        self.routes: dict[str, Target] = {}
        """What a method's prefix routes to: every plugin's target, and the built-ins."""
        self._loop = asyncio.get_running_loop()
        self._sweeper: asyncio.TimerHandle | None = None
        self._calls_seen = 0
        """Calls finished, as of the last sweep."""
        self._heap_used = False
        """Whether calls finished since memory was last given back (see `_sweep`)."""
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        """Background work the router started itself (stopping a plugin that runs in exec mode now)."""
        self.on_routes: list[Callable[[], None]] = []
        """Called after the routing table changes (start, reload): the NATS bridge re-registers its subjects."""
        self._publish()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every plugin's socket and start the plugins that are not lazy."""
        plugins = await self._create(self.manifest.plugins.values())
        self.plugins = {plugin.spec.name: plugin for plugin in plugins}
        self._publish()
        self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def _create(self, specs: Iterable[PluginSpec]) -> list[Plugin]:
        """Plugins' records with their processes started; calls are routed to them once they are published.

        Every record exists before any process starts, so a plugin may start `after` one created with it.
        If one cannot start (its socket cannot be bound), every one of them is stopped and the error raised.
        """
        plugins: list[Plugin] = []
        try:
            plugins.extend(self._record(spec) for spec in specs)
            starts = await asyncio.gather(*(p.supervisor.start() for p in plugins if p.supervisor is not None),
                                          return_exceptions=True)
            for outcome in starts:
                if isinstance(outcome, BaseException):
                    raise outcome
        except BaseException:
            await asyncio.gather(*(plugin.stop() for plugin in plugins))
            raise
        return plugins

    def _record(self, spec: PluginSpec) -> Plugin:
        front = self.config.socket.absolute()  # PLUGRPC_ROUTER: plugins call other plugins through it
        older = self._newest.get(spec.name)
        output = older.output if older is not None else Logbook()
        if spec.mode == "exec":
            exec_plugin = ExecPlugin(spec, self.manifest.root, router_socket=front)
            exec_plugin.output = output
            plugin = Plugin(spec, ExecTarget(exec_plugin), output=output)
        else:
            sock = self._free_socket(spec.name)
            sup = Supervisor(spec, self.manifest.root, sock, router_socket=front)
            sup.output = output
            kind = StdioPool if spec.transport == "stdio" else PluginPool
            pool = kind(spec, sock, sup, self.outbox, self.config.max_line, self.events)
            plugin = Plugin(spec, pool, sup, sock, output)
            sup.on_state = lambda _: self._on_state(plugin)
            if spec.after:
                sup.gate = functools.partial(wait_after, sup, spec.after, self._newest)
            if spec.pings:
                plugin.liveness = Liveness(pool, sup, ask, plugin.direct.report)
        self._newest[spec.name] = plugin
        return plugin

    def _free_socket(self, name: str) -> Path:
        """`NAME.sock`, or while an older process of the plugin still drains there, `NAME.2.sock`..."""
        taken = {p.socket for p in (*self.plugins.values(), *self.retiring)}
        n = 1
        while (path := self.runtime_dir.socket_for(name if n == 1 else f"{name}.{n}")) in taken:
            n += 1
        if n > SOCKET_COPIES:  # the manifest checked that names fit up to NAME.99.sock
            raise ConfigError(f"plugin {name} has {n - 1} older processes still finishing their calls; reload "
                              "again once they have")
        return path

    def _publish(self) -> None:
        """Rebuild the routing table from the records: the only place `routes` changes."""
        routes: dict[str, Target] = {name: plugin.target for name, plugin in self.plugins.items()}
        routes["router"] = self.builtins
        routes["rpc"] = self.builtins.rpc
        self.routes = routes
        for hook in self.on_routes:
            hook()

    async def reload(self) -> dict[str, list[str]]:
        """Re-read the manifest: start new plugins, swap changed ones, drain and stop removed ones.

        Calls to unchanged plugins are never touched. A changed plugin's new process starts on a
        new socket before calls move to it; the old one finishes its in-flight calls, then stops.
        The manifest is read in a thread (executables are hashed again only if they changed on
        disk), so calls go on meanwhile. An invalid manifest raises `ManifestError`, a plugin that
        cannot be started the error why; either way nothing has changed and nothing new is left running.
        """
        async with self._reload_lock:
            new = await asyncio.to_thread(load_manifest, self.manifest.root, sockets=self.runtime_dir.path,
                                          previous=self.manifest)
            old = self.manifest.plugins
            added = [n for n in new.plugins if n not in old]
            removed = [n for n in old if n not in new.plugins]
            changed = [n for n in new.plugins if n in old and new.plugins[n] != old[n]]
            unchanged = [n for n in new.plugins if n not in added and n not in changed]
            newest = dict(self._newest)
            try:
                fresh = await self._create(new.plugins[n] for n in added + changed)
            except BaseException:
                self._newest.clear()  # in place: the `after` gates of running plugins hold this dict
                self._newest.update(newest)
                raise
            for name in removed:
                del self._newest[name]
            retiring = [self.plugins[n] for n in removed + changed]
            for name in removed + changed:
                _revoke_on_reload(old[name], new.plugins.get(name), self.plugins[name])
            self.retiring.update(retiring)
            by_name = {plugin.spec.name: plugin for plugin in fresh}
            self.plugins = {n: by_name.get(n) or self.plugins[n] for n in new.plugins}
            self.manifest = new
            self._publish()
            log.info("reloaded %s: added %s, removed %s, changed %s", new.file, added or "none",
                     removed or "none", changed or "none")
            await asyncio.gather(*(self._retire(plugin) for plugin in retiring))
            return {"added": added, "removed": removed, "changed": changed, "unchanged": unchanged}

    async def _retire(self, plugin: Plugin) -> None:
        """Stop an unrouted plugin: let its calls finish (up to their timeout), then stop it."""
        try:
            await _until_idle(plugin.target.busy, plugin.spec.timeout)
            await plugin.stop()
        finally:
            self.retiring.discard(plugin)

    def handler_for(self, sock: Any) -> Handle:
        """How a new client connection's requests are routed: `handle`, or a plugin's narrower one.

        Decided once per connection, from the peer's pid (router/access.py); never per call.
        """
        plugins = ((p.spec.name, p.spec.router_access, p.pids()) for p in (*self.plugins.values(), *self.retiring))
        return handler(self.handle, owner(peer_pid(sock), plugins))

    def inflight(self) -> int:
        """Calls given to plugins and not yet answered (queued in the router or running)."""
        return sum(plugin.target.busy() for plugin in self.plugins.values())

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` for in-flight calls to finish; True if they all did."""
        return await _until_idle(self.inflight, timeout)

    def fail_all(self, reason: str) -> None:
        """Answer every call still in flight with -32001 (shutdown, after the grace period)."""
        for plugin in (*self.plugins.values(), *self.retiring):
            plugin.target.fail_all(reason)
        self.outbox.flush()

    async def aclose(self) -> None:
        """Stop the sweep and the built-ins' work, then every plugin (retiring ones included)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.direct.close()
        await self.builtins.aclose()
        await asyncio.gather(*(plugin.stop() for plugin in (*self.plugins.values(), *self.retiring)))
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- the hot path ----------------------------------------------------------------------

    def handle(self, msg: Any, sink: Sink) -> None:
        """Route one request object from a client (`sink` is its connection or batch).

        The fast path takes a well-formed call to an exported method inline; everything else
        goes through `handle_checked`, which gives the same answer the long way round.
        """
        if type(msg) is dict and msg.get("jsonrpc") == "2.0":
            method = msg.get("method")
            if type(method) is str:
                plugin, _, name = method.partition(".")
                target = self.routes.get(plugin)
                if target is not None and name in target.exported:
                    params = msg.get("params", ABSENT)
                    kind = type(params)
                    if params is ABSENT or kind is list or kind is dict:
                        if "id" not in msg:
                            target.notify(name, params, sink)
                            return
                        id = msg["id"]
                        kind = type(id)
                        if kind is int or kind is str or id is None or kind is float:
                            call = Call(sink, id, name, params, clock())
                            sink.track(call)
                            target.submit(call)
                            return
        self.handle_checked(msg, sink)

    def handle_checked(self, msg: Any, sink: Sink) -> None:
        """Route any message step by step: -32600 for an invalid request, -32601 for an unknown
        or unexported method, else the call (or notification) the fast path would have made."""
        problem = request_problem(msg)
        if problem is not None:
            sink.reply(error_response(reply_id(msg), codes.INVALID_REQUEST, data=problem))
            return
        plugin, _, name = msg["method"].partition(".")
        target = self.routes.get(plugin)
        if target is None or name not in target.exported:
            if "id" in msg:
                sink.reply(error_response(msg["id"], codes.METHOD_NOT_FOUND, data=self._not_found(plugin, name)))
            return
        params = msg.get("params", ABSENT)
        if "id" not in msg:
            target.notify(name, params, sink)
            return
        call = Call(sink, msg["id"], name, params, clock())
        sink.track(call)
        target.submit(call)

    def cancel(self, call: Call) -> None:
        """The client of `call` went away or gave up on it."""
        if call.sink is not None and call.target is not None:
            call.target.cancel(call)

    def _not_found(self, plugin: str, name: str) -> dict[str, Any]:
        if plugin in self.manifest.plugins:
            exports = self.manifest.plugins[plugin].exports
            return {"plugin": plugin, "reason": f"{plugin} does not export {name!r}; it exports {', '.join(exports)}"}
        if not name:
            return {"reason": "methods are named plugin.method"}
        return {"plugin": plugin, "reason": f"no plugin named {plugin!r}"}

    def _sweep(self) -> None:
        """Time calls out; once a sweep interval passed with no call and none in flight, free memory."""
        now = clock()
        calls = busy = 0
        for plugin in (*self.plugins.values(), *self.retiring):  # retiring ones' calls keep their timeouts
            calls += plugin.target.sweep(now)
            busy += plugin.target.busy()
        if calls != self._calls_seen:
            self._calls_seen = calls
            self._heap_used = True
        elif self._heap_used and not busy:
            self._heap_used = False
            release_free_memory()
        self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _on_state(self, plugin: Plugin) -> None:
        sup = plugin.supervisor
        assert sup is not None
        log.info("%s", sup.state.value, extra={"plugin": sup.spec.name, "pid": sup.pid})
        if sup.state is not PluginState.RUNNING:
            plugin.direct.revoke(f"the plugin is {sup.state.value}", sup.spec.name)
        if sup.state is PluginState.EXEC:
            self._run_as_exec(plugin)
            return
        if isinstance(plugin.target, PluginPool):
            plugin.target.state_changed(sup.state)
        if sup.state in GIVEN_UP:
            # Calls parked in the socket backlog would wait for their timeout: fail them now.
            plugin.target.fail_all(sup.unavailable_reason())
        elif isinstance(plugin.target, PluginPool):
            if sup.state is PluginState.UNRESPONSIVE:
                # Written calls would wait for their timeout in a stuck process: fail them now.
                plugin.target.abort_connections(f"plugin {sup.spec.name} is unresponsive ({sup.exit_detail}); it is "
                                                "being restarted, calls made from now on wait for it")
            elif sup.state is PluginState.RUNNING:
                plugin.target.wake()

    def _run_as_exec(self, plugin: Plugin) -> None:
        """A plugin with no `mode` turned out to be a core0 binary: run it once per call from now on.

        Its process never read its socket, so the calls that came meanwhile are run in exec mode
        instead of failed; the router's own (pings, discovery) are not for a core0 binary.
        """
        name = plugin.spec.name
        if self.plugins.get(name) is not plugin:
            return  # replaced by a reload meanwhile: the new record decides for itself
        log.warning('answered "missing command" when started as a server, as a core0 plugin binary does: running it '
                    'once per call from now on, as core0 did (mode = "exec"); declare mode = "exec" in its manifest '
                    'entry to skip this check', extra={"plugin": name})
        pool = plugin.target
        assert isinstance(pool, PluginPool)
        calls = pool.hand_over()
        record = self._record(dataclasses.replace(plugin.spec, mode="exec"))
        self.plugins[name] = record
        self._publish()
        for call in calls:
            if call.id is INTERNAL:
                pool.fail(call, codes.PLUGIN_UNAVAILABLE, f"plugin {name} runs in exec mode now")
            else:
                record.target.submit(call)
        self.retiring.add(plugin)
        task = self._loop.create_task(self._retire(plugin))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- internal calls --------------------------------------------------------------------

    async def call_plugin(self, name: str, method: str, params: Any = ABSENT, timeout: float = 5.0) -> Any:
        """Call any method of a plugin from inside the router (not limited to its exports)."""
        msg = await ask(self.plugins[name].target, method, params, timeout)
        if "error" in msg:
            raise rpc_error(msg["error"])
        return msg.get("result")


def _revoke_on_reload(old: PluginSpec, new: PluginSpec | None, plugin: Plugin) -> None:
    """A reload that removes a plugin, changes its exports or turns direct calls off ends its direct connections
    at once; for any other change they end when the old process stops, after its calls through the router."""
    if new is None:
        plugin.direct.revoke("a reload removed the plugin", old.name)
    elif new.exports != old.exports:
        plugin.direct.revoke("a reload changed its exports", old.name)
    elif not new.direct:
        plugin.direct.revoke("a reload turned its direct connections off", old.name)


async def _until_idle(busy: Callable[[], int], timeout: float) -> bool:
    """Poll `busy()` every 20 ms until it is 0 or `timeout` passes; True if it reached 0.

    Polling keeps the hot path free of an event to set per call; drains are rare.
    """
    deadline = clock() + timeout
    while busy() and clock() < deadline:
        await asyncio.sleep(0.02)
    return not busy()
