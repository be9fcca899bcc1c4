"""`Server` runs a `Config`: startup, main loop, graceful shutdown (as uvicorn's `Server`).

Startup validates the manifest before anything is created, starts the plugins, then binds
the front socket: the router is ready when that socket accepts connections (and, under systemd's
Type=notify, says READY=1). SIGINT/SIGTERM set `should_exit`; shutdown stops accepting, gives
in-flight calls `shutdown_grace` seconds, stops every plugin (SIGTERM, then SIGKILL after its
grace) and removes every socket. With `--metrics`, a Prometheus endpoint serves alongside.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import TYPE_CHECKING, Any

from .. import sdnotify
from ..config import FD_RESERVE, Config, client_cap, loop_factory, metrics_address, raise_fd_limit
from ..errors import ConfigError
from ..manifest import load_manifest
from ..process.runtime_dir import RuntimeDir
from ..sockets import BACKLOG
from .front import FrontDoor
from .memory import keep_large_buffers
from .routing import Router

if TYPE_CHECKING:
    from .metrics import MetricsServer
    from .nats_bridge import NatsBridge

log = logging.getLogger("plugrpc.server")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Server:
    """One router process serving one image."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.router: Router | None = None
        self.should_exit = asyncio.Event()
        self.started = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._runtime_dir: RuntimeDir | None = None
        self._bound = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.bridge: NatsBridge | None = None
        """The router's NATS side, with `--nats` (router/nats_bridge.py)."""
        self._metrics_sock: socket.socket | None = None
        self.metrics: MetricsServer | None = None
        self.door: FrontDoor | None = None
        """What the front socket's connections share: its bounds, counts and read budget."""

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM, on the configured event loop (this process is the router's)."""
        keep_large_buffers()
        with asyncio.Runner(loop_factory=loop_factory(self.config.loop)) as runner:
            runner.run(self.serve())

    async def serve(self) -> None:
        try:
            await self.startup()
            await self.should_exit.wait()
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        # First: the socket accepts connections (into its backlog) as soon as it is bound, and a
        # SIGTERM from then on must shut down gracefully, not kill us mid-start.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.should_exit.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        max_clients = _max_clients(config)  # before any plugin starts: they all inherit the same limit
        # Everything that can be refused is checked before any process starts: names against the
        # directory their sockets go in, made first (and removed by shutdown if startup fails).
        self._runtime_dir = RuntimeDir()
        manifest = load_manifest(config.root, sockets=self._runtime_dir.path)
        bridge = _nats_bridge() if config.nats else None
        if config.metrics is not None:
            self._metrics_sock = _metrics_module().bind(metrics_address(config.metrics))
        sock = config.bind_socket()
        self._bound = True
        self.router = router = Router(config, manifest, self._runtime_dir)
        await router.start()
        self.door = FrontDoor(router, config, max_clients)
        self.door.start()
        self._server = await loop.create_unix_server(self.door, sock=sock, backlog=BACKLOG)
        if self._metrics_sock is not None:
            self.metrics = _metrics_module().MetricsServer(router)
            await self.metrics.serve(self._metrics_sock)
            self._metrics_sock = None
        plugins = ", ".join(
            f"{name} ({plugin.supervisor.pid or plugin.supervisor.state.value})" if plugin.supervisor
            else f"{name} (exec)"
            for name, plugin in router.plugins.items()
        )
        log.info("router ready on %s; plugins: %s", config.socket, plugins or "none")
        if bridge is not None:  # after the socket: NATS being away never delays it
            self.bridge = router.nats = bridge(router, config)
            self.bridge.start()
        self.started.set()
        _tell_systemd("READY=1")

    def _on_sighup(self) -> None:
        """SIGHUP re-reads the manifest (like `router.reload`); a bad manifest is logged and ignored."""
        if self.router is None:
            return  # still starting: the manifest is being read now
        task = asyncio.get_running_loop().create_task(self._reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload(self) -> None:
        assert self.router is not None
        try:
            await self.router.reload()
        except Exception as exc:  # as router.reload answers it
            log.error("reload refused, still serving the previous manifest: %s", exc)

    async def shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        # Signals stay handled until the cleanup is done: a second SIGTERM must not kill us mid-way
        # and leave plugins without their grace or the runtime directory behind.
        for sig in SIGNALS:
            with contextlib.suppress(RuntimeError):  # no running loop's handlers if startup failed early
                loop.add_signal_handler(sig, self._already_stopping, sig)
        if self.started.is_set():
            _tell_systemd("STOPPING=1")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._metrics_sock is not None:  # bound, not served: startup failed after it
            self._metrics_sock.close()
        if self.metrics is not None:
            await self.metrics.close()
        if self._server is not None:
            self._server.close()
        if self.door is not None:
            self.door.close()
        if self._bound:
            self.config.unbind_socket()
        if self.bridge is not None:
            await self.bridge.stop_serving()
        router = self.router
        if router is not None:
            if router.inflight():
                log.info("shutting down: waiting up to %gs for %d call(s)", self.config.shutdown_grace,
                         router.inflight())
            if not await router.drain(self.config.shutdown_grace):
                log.warning("shutting down with %d call(s) unfinished", router.inflight())
            router.fail_all("the router is shutting down")  # answered -32001 before their clients close
            for client in list(router.clients):
                client.close()
            if self.bridge is not None:
                await self.bridge.aclose()
            await router.aclose()
        if self._server is not None:
            await self._server.wait_closed()
        if self._runtime_dir is not None:
            self._runtime_dir.remove()
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
        if self.started.is_set():
            log.info("router stopped")

    def _already_stopping(self, sig: signal.Signals) -> None:
        log.info("got %s while shutting down; still finishing the shutdown", sig.name)


def _max_clients(config: Config) -> int:
    """`--max-clients`, or what the descriptor limit (raised to its hard limit first) leaves for clients."""
    fd_limit = raise_fd_limit()
    if config.max_clients is None:
        return client_cap(fd_limit)
    if config.max_clients > fd_limit - FD_RESERVE:
        log.warning("--max-clients %d leaves fewer than %d of the %d file descriptors this process may open for "
                    "plugins: a plugin may fail to restart while that many clients are connected",
                    config.max_clients, FD_RESERVE, fd_limit)
    return config.max_clients


def _nats_bridge() -> type[NatsBridge]:
    """The NATS bridge class, imported only by routers that use it; without nats-py, say what to install."""
    from ..nats_link import INSTALL, lacks_nats

    try:
        from .nats_bridge import NatsBridge
    except ModuleNotFoundError as exc:
        if not lacks_nats(exc):
            raise
        raise ConfigError(INSTALL) from None
    return NatsBridge


def _metrics_module() -> Any:
    """router.metrics, imported only for --metrics: prometheus-client is an optional extra."""
    try:
        from . import metrics
    except ImportError as exc:
        raise ConfigError(f"--metrics needs prometheus-client ({exc}): pip install 'plugrpc[metrics]'") from None
    return metrics


def _tell_systemd(state: str) -> None:
    """READY=1 / STOPPING=1 to systemd when it runs the router as Type=notify ($NOTIFY_SOCKET set)."""
    try:
        sdnotify.notify(state)
    except OSError as exc:
        log.warning("cannot tell $NOTIFY_SOCKET %s: %s", state, exc)
