"""The router: `plugin.method` calls from every client, routed to plugins by name.

A method is split at its first dot into plugin and method. Only exported methods are
reachable; `router.*` and `rpc.discover` are the router's own (plugins can never take those
names: the manifest refuses them). Each plugin is a `Target`: a `PluginPool` for persistent
plugins, an `ExecTarget` for core0 `mode = "exec"` binaries, and `Builtins` for the router.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from . import codes
from .config import Config
from .errors import ManifestError, RpcError
from .execmode import ExecPlugin
from .manifest import Manifest, PluginSpec, load_manifest
from .outbox import Outbox
from .pool import NOPARAMS, Call, PluginPool, PluginTarget, Target, clock
from .process import release_free_memory
from .stats import CallStats
from .supervisor import PluginState, RuntimeDir, Supervisor
from .wire import error_response, reply_id, request_problem, result_response

if TYPE_CHECKING:
    from .protocol import FrontProtocol

log = logging.getLogger("plugrpc.router")

SWEEP_INTERVAL: Final = 0.05
"""Seconds between timeout sweeps; a call times out at most this late."""
DISCOVER_TIMEOUT: Final = 5.0
GIVEN_UP: Final = frozenset({PluginState.CRASHLOOP, PluginState.FAILED})


class Router:
    """Routes calls to plugin targets; owns the plugins' supervisors, pools and the timeout sweep."""

    def __init__(self, config: Config, manifest: Manifest, runtime_dir: RuntimeDir) -> None:
        self.config = config
        self.manifest = manifest
        self.runtime_dir = runtime_dir
        self.outbox = Outbox()
        self.targets: dict[str, Target] = {}
        """What a method's prefix routes to: every plugin, plus `router` and `rpc` (the built-ins)."""
        self.plugins: dict[str, PluginTarget] = {}
        self.supervisors: dict[str, Supervisor] = {}
        self.clients: set[FrontProtocol] = set()
        self.started = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._sweeper: asyncio.TimerHandle | None = None
        self._pool_of: dict[Supervisor, PluginPool] = {}
        self._calls_seen = 0
        """Calls finished, as of the last sweep."""
        self._heap_used = False
        """Whether calls finished since memory was last given back (see `_sweep`)."""
        self._generation = 0
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        builtins = Builtins(self)
        self.targets["router"] = builtins
        self.targets["rpc"] = builtins.rpc

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every plugin's socket and start the plugins that are not lazy."""
        await asyncio.gather(*(self._add(spec) for spec in self.manifest.plugins.values()))
        self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def _add(self, spec: PluginSpec) -> None:
        """Create a plugin's target, start its process, and only then route calls to it."""
        if spec.mode == "exec":
            self.targets[spec.name] = self.plugins[spec.name] = ExecTarget(ExecPlugin(spec, self.manifest.root))
            return
        self._generation += 1
        # A fresh socket per generation: a changed plugin starts beside the old one, which drains.
        sock = self.runtime_dir.socket_for(spec.name if self._generation == 1 else f"{spec.name}.{self._generation}")
        sup = Supervisor(spec, self.manifest.root, sock, on_state=self._on_state)
        pool = PluginPool(spec, sock, sup, self.outbox, self.config.max_line)
        self._pool_of[sup] = pool
        await sup.start()
        self.supervisors[spec.name] = sup
        self.targets[spec.name] = self.plugins[spec.name] = pool

    async def _retire(self, target: PluginTarget, sup: Supervisor | None, timeout: float) -> None:
        """Stop routing to an old target: let its calls finish (up to `timeout`), then stop it."""
        await _until_idle(target.busy, timeout)
        await target.aclose()
        if sup is not None:
            await sup.stop()
            self._pool_of.pop(sup, None)

    async def reload(self) -> dict[str, list[str]]:
        """Re-read the manifest: start new plugins, swap changed ones, drain and stop removed ones.

        Calls to unchanged plugins are never touched. A changed plugin's new process starts on a
        new socket before calls move to it; the old one finishes its in-flight calls, then stops.
        An invalid manifest raises `ManifestError` and changes nothing.
        """
        async with self._reload_lock:
            new = load_manifest(self.manifest.root)
            old = self.manifest.plugins
            added = [n for n in new.plugins if n not in old]
            removed = [n for n in old if n not in new.plugins]
            changed = [n for n in new.plugins if n in old and new.plugins[n] != old[n]]
            retiring = [(self.plugins[n], self.supervisors.get(n), old[n].timeout) for n in removed + changed]
            for name in removed:
                del self.targets[name], self.plugins[name]
                self.supervisors.pop(name, None)
            await asyncio.gather(*(self._add(new.plugins[n]) for n in added + changed))
            self.manifest = new
            log.info("reloaded %s: added %s, removed %s, changed %s", new.file, added or "none",
                     removed or "none", changed or "none")
            self._retiring.update(
                self._loop.create_task(self._retire(target, sup, timeout)) for target, sup, timeout in retiring
            )
            await asyncio.gather(*self._retiring)
            self._retiring.clear()
            unchanged = [n for n in new.plugins if n not in added and n not in changed]
            return {"added": added, "removed": removed, "changed": changed, "unchanged": unchanged}

    def inflight(self) -> int:
        """Calls given to plugins and not yet answered (queued in the router or running)."""
        return sum(target.busy() for target in self.plugin_targets().values())

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` for in-flight calls to finish; True if they all did."""
        return await _until_idle(self.inflight, timeout)

    async def aclose(self) -> None:
        """Stop the sweep, close every connection to plugins, stop every plugin."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in self._retiring:
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for target in self.plugin_targets().values():
            await target.aclose()
        await asyncio.gather(*(sup.stop() for sup in self.supervisors.values()))

    def fail_all(self, reason: str) -> None:
        """Answer every call still in flight with -32001 (shutdown, after the grace period)."""
        for target in self.plugin_targets().values():
            target.fail_all(reason)
        self.outbox.flush()

    def plugin_targets(self) -> dict[str, PluginTarget]:
        """The targets of the manifest's plugins (not the built-ins)."""
        return {name: self.plugins[name] for name in self.manifest.plugins if name in self.plugins}

    # --- the hot path ----------------------------------------------------------------------

    def handle(self, msg: Any, sink: Any) -> None:
        """Route one request object from a client (`sink` is its connection or batch).

        The fast path checks a well-formed call to an exported method inline; everything else
        (invalid requests, unknown methods) is sorted out by `_refuse`, off the hot path.
        """
        if type(msg) is dict and msg.get("jsonrpc") == "2.0":
            method = msg.get("method")
            if type(method) is str:
                plugin, _, name = method.partition(".")
                target = self.targets.get(plugin)
                if target is not None and name in target.exported:
                    params = msg.get("params", NOPARAMS)
                    kind = type(params)
                    if params is NOPARAMS or kind is list or kind is dict:
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
        self._refuse(msg, sink)

    def _refuse(self, msg: Any, sink: Any) -> None:
        """Answer what the fast path did not take: -32600 for invalid requests, else -32601."""
        problem = request_problem(msg)
        if problem is not None:
            sink.reply(error_response(reply_id(msg), codes.INVALID_REQUEST, data=problem))
        elif "id" in msg:
            plugin, _, name = msg["method"].partition(".")
            sink.reply(error_response(msg["id"], codes.METHOD_NOT_FOUND, data=self._not_found(plugin, name)))

    def cancel(self, call: Call) -> None:
        """The client of `call` went away."""
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
        for pool in self._pool_of.values():  # retiring pools too: their calls keep their timeouts
            pool.sweep(now)
            calls += pool.stats.calls
            busy += pool.busy()
        if calls != self._calls_seen:
            self._calls_seen = calls
            self._heap_used = True
        elif self._heap_used and not busy:
            self._heap_used = False
            release_free_memory()
        self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _on_state(self, sup: Supervisor) -> None:
        extra = {"plugin": sup.spec.name, "pid": sup.pid}
        log.info("plugin is %s", sup.state.value, extra=extra)
        if sup.state in GIVEN_UP:
            pool = self._pool_of.get(sup)
            if pool is not None:
                # Calls parked in the socket backlog would wait for their timeout: fail them now.
                pool.fail_all(f"plugin {sup.spec.name} is {sup.state.value}")

    # --- internal calls --------------------------------------------------------------------

    async def call_plugin(self, name: str, method: str, params: Any = NOPARAMS, timeout: float = 5.0) -> Any:
        """Call any method of a plugin from inside the router (not limited to its exports)."""
        fut: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        call = Call(FutureSink(fut), 0, method, params, clock())
        self.targets[name].submit(call)
        try:
            msg = await asyncio.wait_for(fut, timeout)
        finally:
            if call.sink is not None:
                self.cancel(call)
        if "error" in msg:
            raise RpcError(msg["error"].get("code", codes.INTERNAL_ERROR), msg["error"].get("message", ""),
                           msg["error"].get("data"))
        return msg.get("result")

    # --- views -----------------------------------------------------------------------------

    def plugin_status(self, name: str) -> dict[str, Any]:
        spec = self.manifest.plugins[name]
        target = self.plugins[name]
        sup = self.supervisors.get(name)
        status: dict[str, Any] = sup.status() if sup else {"name": name, "mode": "exec", "state": "ready",
                                                           "pid": None, "restarts": 0}
        status["exports"] = list(spec.exports)
        status.update(target.status())
        return status


async def _until_idle(busy: Callable[[], int], timeout: float) -> bool:
    """Poll `busy()` every 20 ms until it is 0 or `timeout` passes; True if it reached 0."""
    deadline = clock() + timeout
    while busy() and clock() < deadline:
        await asyncio.sleep(0.02)
    return not busy()


class FutureSink:
    """Receives the response of a call the router makes itself."""

    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[dict[str, Any]]) -> None:
        self.fut = fut

    def track(self, call: Call) -> None:
        pass

    def deliver(self, call: Call, msg: dict[str, Any]) -> None:
        if not self.fut.done():
            self.fut.set_result(msg)

    def reply(self, msg: dict[str, Any]) -> None:
        if not self.fut.done():
            self.fut.set_result(msg)


class ExecTarget:
    """Routes calls to a core0-style plugin run once per call (`mode = "exec"`)."""

    def __init__(self, plugin: ExecPlugin) -> None:
        self.plugin = plugin
        self.exported = plugin.spec.exported
        self.stats = CallStats()
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._calls: set[Call] = set()

    def submit(self, call: Call) -> None:
        call.target = self
        params = None if call.params is NOPARAMS else call.params
        task = self._loop.create_task(self.plugin.call(call.method, params))
        call.conn = task
        self._calls.add(call)
        task.add_done_callback(lambda t: self._done(call, t))

    def notify(self, method: str, params: Any, sink: Any) -> None:
        task = self._loop.create_task(self.plugin.call(method, None if params is NOPARAMS else params))
        self._tasks.add(task)
        task.add_done_callback(self._notified)

    def _notified(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("notification failed: %s", task.exception(), extra={"plugin": self.plugin.spec.name})

    def cancel(self, call: Call) -> None:
        call.sink = None
        call.conn.cancel()

    def busy(self) -> int:
        return self.plugin.busy()

    def fail_all(self, reason: str) -> None:
        """Answer every running call -32001 and stop its process (shutdown after the grace period)."""
        for task in self._tasks:
            task.cancel()
        for call in list(self._calls):
            call.conn.cancel()
            _reply(call, error_response(call.id, codes.PLUGIN_UNAVAILABLE,
                                        data={"plugin": self.plugin.spec.name, "reason": reason}))

    def _done(self, call: Call, task: asyncio.Task[Any]) -> None:
        self._calls.discard(call)
        sink = call.sink
        if sink is None or task.cancelled():
            return
        call.sink = None
        exc = task.exception()
        if exc is None:
            msg = result_response(call.id, task.result())
        elif isinstance(exc, RpcError):
            msg = error_response(call.id, exc.code, exc.message, exc.data)
        else:
            log.error("exec call failed: %r", exc, extra={"plugin": self.plugin.spec.name})
            msg = error_response(call.id, codes.INTERNAL_ERROR, data={"plugin": self.plugin.spec.name})
        self.stats.record(clock() - call.started, exc is not None)
        sink.deliver(call, msg)

    def status(self) -> dict[str, Any]:
        return {**self.plugin.status(), **self.stats.snapshot()}

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.plugin.aclose()


class Builtins:
    """`router.plugins`, `router.stats`, `router.health` and `rpc.discover`."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.exported = frozenset(BUILTIN_DOCS)
        self.rpc = _RpcBuiltins(router)
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, call: Call) -> None:
        call.target = self
        if call.method == "reload":
            task = asyncio.get_running_loop().create_task(self._reload(call))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        _reply(call, result_response(call.id, getattr(self, "_" + call.method)()))

    async def _reload(self, call: Call) -> None:
        try:
            result = await self.router.reload()
        except ManifestError as exc:
            _reply(call, error_response(call.id, codes.INTERNAL_ERROR, f"reload refused: {exc}"))
            return
        _reply(call, result_response(call.id, result))

    def notify(self, method: str, params: Any, sink: Any) -> None:
        pass  # built-ins have no side effects worth a notification

    def cancel(self, call: Call) -> None:
        call.sink = None

    def _plugins(self) -> list[dict[str, Any]]:
        return [self.router.plugin_status(name) for name in self.router.plugin_targets()]

    def _stats(self) -> dict[str, Any]:
        router = self.router
        plugins = {name: router.plugin_status(name) for name in router.plugin_targets()}
        return {
            "uptime": round(time.monotonic() - router.started, 3),
            "clients": len(router.clients),
            "inflight": router.inflight(),
            "calls": sum(p.get("calls", 0) for p in plugins.values()),
            "errors": sum(p.get("errors", 0) for p in plugins.values()),
            "plugins": {name: {k: p.get(k) for k in ("calls", "errors", "timeouts", "inflight", "p50_ms", "p99_ms")}
                        for name, p in plugins.items()},
        }

    def _health(self) -> dict[str, Any]:
        states = {name: sup.state.value for name, sup in self.router.supervisors.items()}
        # Starting is healthy (calls wait in the socket backlog); so is stopped (lazy or idle).
        healthy = all(state in ("running", "starting", "stopped") for state in states.values())
        return {"status": "ok" if healthy else "degraded", "plugins": states}


class _RpcBuiltins:
    """`rpc.discover`: one OpenRPC document for every exported method of every plugin.

    `rpc.cancel {"id": X}`: the client gave up on its call X (plugrpc.Client sends it on a
    timeout or a cancelled call); the router stops waiting and tells the plugin.
    """

    def __init__(self, router: Router) -> None:
        self.router = router
        self.exported = frozenset({"discover", "cancel"})
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, call: Call) -> None:
        call.target = self
        if call.method == "cancel":
            cancelled = self._cancel(call.params, call.sink)
            _reply(call, result_response(call.id, cancelled))
            return
        task = asyncio.get_running_loop().create_task(self._discover(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def notify(self, method: str, params: Any, sink: Any) -> None:
        if method == "cancel":
            self._cancel(params, sink)

    def _cancel(self, params: Any, sink: Any) -> bool:
        """Cancel the sender's own call with the client id in `params` (never another client's)."""
        if type(params) is not dict or "id" not in params:
            return False
        front = getattr(sink, "front", sink)
        for call in list(getattr(front, "calls", ())):
            if call.id == params["id"] and call.sink is not None:
                front.calls.discard(call)
                self.router.cancel(call)
                return True
        return False

    def cancel(self, call: Call) -> None:
        call.sink = None

    async def _discover(self, call: Call) -> None:
        router = self.router
        names = list(router.manifest.plugins)
        docs = await asyncio.gather(*(self._plugin_methods(name) for name in names))
        methods = [m for doc in docs for m in doc]
        methods += [{"name": f"router.{m}", "params": [], "description": BUILTIN_DOCS[m]} for m in sorted(BUILTIN_DOCS)]
        from . import __version__

        doc = {"openrpc": "1.2.6", "info": {"title": "plugrpc router", "version": __version__}, "methods": methods}
        _reply(call, result_response(call.id, doc))

    async def _plugin_methods(self, name: str) -> list[dict[str, Any]]:
        router = self.router
        spec = router.manifest.plugins[name]
        described: dict[str, Any] = {}
        sup = router.supervisors.get(name)
        if sup is not None and sup.state is PluginState.RUNNING:
            try:
                result = await router.call_plugin(name, "rpc.discover", timeout=min(spec.timeout, DISCOVER_TIMEOUT))
                described = {m["name"]: m for m in result.get("methods", []) if isinstance(m, dict) and "name" in m}
            except (TimeoutError, RpcError, AttributeError, TypeError) as exc:
                log.info("rpc.discover not answered (%s); listing exports only", exc, extra={"plugin": name})
        return [{**described.get(export, {"params": []}), "name": f"{name}.{export}"} for export in spec.exports]


BUILTIN_DOCS: Final = {
    "plugins": "Every plugin with its state, pid, exports, restarts, in-flight calls and latency.",
    "stats": "Call counts, errors and latency percentiles, in total and per plugin.",
    "health": "ok when every plugin is running, starting, or stopped until its next call; else degraded.",
    "reload": "Re-read the manifest; start, swap and stop plugins as it says. Same as SIGHUP.",
}


def _reply(call: Call, msg: dict[str, Any]) -> None:
    """Finish a built-in call with `msg`, unless its caller has gone."""
    sink = call.sink
    if sink is not None:
        call.sink = None
        sink.deliver(call, msg)
