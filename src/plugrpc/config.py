"""`Config`: every setting of a router in one object, and the helpers that act on them.

As in uvicorn, the CLI only collects options into a `Config`; `Server` runs it. Defaults are
shared by `plugrpc run` and `plugrpc call`, so the two meet on the same socket without flags.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from socket import socket as Socket
from typing import TYPE_CHECKING, Final, Literal

from .errors import ConfigError
from .sockets import bind_socket, check_private_dir, remove_socket
from .wire import DEFAULT_MAX_LINE

if TYPE_CHECKING:
    import asyncio

EXAMPLE_ROOT: Final = Path(__file__).resolve().parent / "example-image"
"""The bundled example image, shipped inside the package (examples/image in the source tree links
to it), run when `plugrpc run` gets no `--root`."""

LoopName = Literal["auto", "uvloop", "asyncio"]
log = logging.getLogger("plugrpc.config")


def runtime_base() -> Path:
    """Where plugrpc keeps its private directories: `$XDG_RUNTIME_DIR`, else the temp dir."""
    return Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())


def default_socket() -> Path:
    """The front socket both `plugrpc run` and `plugrpc call` use unless told otherwise.

    `$PLUGRPC_ROUTER` wins (not `$PLUGRPC_SOCKET`: that is a plugin's own socket, in its
    environment); otherwise a per-user directory keeps users apart on shared hosts.
    """
    if env := os.environ.get("PLUGRPC_ROUTER"):
        return Path(env)
    return default_dir() / "router.sock"


def default_dir() -> Path:
    """The directory of the default front socket: one per user, private (mode 0700), at a well-known name."""
    return runtime_base() / ("plugrpc" if os.environ.get("XDG_RUNTIME_DIR") else f"plugrpc-{os.getuid()}")


def in_default_dir(path: Path) -> bool:
    """Whether a client must find `path`'s directory private: it is the default one, however it was named."""
    return os.path.dirname(os.path.abspath(path)) == os.path.abspath(default_dir())


def private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) or check that an existing one is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private_dir(path)
    return path


def loop_factory(name: LoopName = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop to run on: uvloop by default, the standard loop where it is missing."""
    import asyncio  # here: a plugin's plain engine needs no event loop (see plugin/sdk.py)

    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise ConfigError("uvloop is not installed; use --loop asyncio") from None
            log.debug("uvloop not available, using asyncio's default loop")
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


@dataclass
class Config:
    """Everything a router needs; the CLI and the Python API both build one of these."""

    root: Path = EXAMPLE_ROOT
    socket: Path = field(default_factory=default_socket)
    socket_mode: int = 0o600
    """Permissions of the front socket; 0660 with a shared group lets a group of users call."""
    allow_uids: frozenset[int] | None = None
    """When set, only these peer uids (SO_PEERCRED) may use the front socket."""
    max_line: int = DEFAULT_MAX_LINE
    max_inflight_per_client: int = 1024
    """Calls one client connection may have in flight before the router stops reading from it."""
    max_batch: int = 1024
    """Requests one batch may hold; a longer batch is refused whole (-32600) before any of it runs."""
    max_clients: int | None = None
    """Client connections served at once; past it a new one is told so and closed. None: derived from
    RLIMIT_NOFILE at start (`client_cap`), keeping descriptors for plugins, their sockets and pipes."""
    max_buffered: int = 256 * 1024 * 1024
    """Bytes of unfinished lines the router holds across all clients; a line that would pass it gets -32004."""
    partial_timeout: float = 30.0
    """Seconds a client's unfinished line may wait for its end while the router reads it; then it is closed."""
    shutdown_grace: float = 10.0
    """Seconds in-flight calls get to finish on SIGTERM/SIGINT before plugins are stopped."""
    event_queue: int = 1000
    """Events a subscribed connection that does not read may have waiting; newer ones are dropped (and counted)."""
    loop: LoopName = "auto"
    log_level: str = "info"
    log_json: bool = False
    nats: str | None = None
    """`--nats URL`: also serve on NATS (router/nats_bridge.py); None: the unix socket only."""
    name: str | None = None
    """`--name`: the router's name on NATS (default: the host name); set once `nats` is."""
    nats_creds: Path | None = None
    """`--nats-creds FILE`: a NATS credentials file (JWT and NKey seed)."""
    nats_ca: Path | None = None
    """`--nats-ca FILE`: a CA (PEM) to trust for `tls://` servers, beside the system's."""
    nats_ping_interval: float = 2.0
    """`--nats-ping-interval`: seconds between the router's pings to its NATS server."""
    nats_max_pings_out: int = 2
    """`--nats-max-pings-out`: pings unanswered before the link counts as dead and the router reconnects."""
    metrics: str | None = None
    """`HOST:PORT` or `unix:PATH` to serve Prometheus metrics on (`--metrics`); None: no metrics."""
    direct: bool = True
    """Whether `router.connect` hands callers connections of their own to plugins (`--no-direct`: never)."""

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.socket = Path(self.socket)
        if self.max_line < 1024:
            raise ConfigError(f"--max-line (max_line) must be at least 1024 bytes, got {self.max_line}")
        if not 0 <= self.socket_mode <= 0o777:
            raise ConfigError(f"--socket-mode (socket_mode) must be a permission mode like 0600, "
                              f"got {self.socket_mode:o}")
        if self.max_inflight_per_client < 1:
            raise ConfigError("max_inflight_per_client must be at least 1")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch (max_batch) must be at least 1, got {self.max_batch}")
        if self.max_clients is not None and self.max_clients < 1:
            raise ConfigError(f"--max-clients (max_clients) must be at least 1, got {self.max_clients}")
        if self.max_buffered < self.max_line:
            raise ConfigError(f"--max-buffered (max_buffered) must be at least --max-line ({self.max_line} bytes), "
                              f"got {self.max_buffered}")
        if self.partial_timeout <= 0:
            raise ConfigError(f"--partial-timeout (partial_timeout) must be more than 0 seconds, "
                              f"got {self.partial_timeout}")
        if self.event_queue < 1:
            raise ConfigError(f"--event-queue (event_queue) must be at least 1, got {self.event_queue}")
        if self.shutdown_grace < 0:
            raise ConfigError(f"--shutdown-grace (shutdown_grace) must be 0 or more seconds, got {self.shutdown_grace}")
        if self.nats is not None:
            from .nats_link import router_name, servers  # only routers on NATS load it

            servers(self.nats)
            if self.nats_ping_interval <= 0 or self.nats_max_pings_out < 1:
                raise ConfigError("--nats-ping-interval must be more than 0 seconds and --nats-max-pings-out at "
                                  f"least 1, got {self.nats_ping_interval} and {self.nats_max_pings_out}")
            self.name = router_name(self.name)
            for option, path in (("--nats-creds", self.nats_creds), ("--nats-ca", self.nats_ca)):
                if path is not None and not Path(path).is_file():
                    raise ConfigError(f"{option}: no such file: {path}")
        if self.metrics is not None:
            metrics_address(self.metrics)

    def bind_socket(self) -> Socket:
        """Create the socket's private directory (when it is the default one) and bind it."""
        parent = self.socket.parent
        if self._default_dir():
            private_dir(parent)
        elif not parent.is_dir():
            raise ConfigError(f"directory of --socket does not exist: {parent}")
        return bind_socket(self.socket, self.socket_mode)

    def unbind_socket(self) -> None:
        """Remove the socket, and its private directory when it is the default one and now empty."""
        remove_socket(self.socket)
        if self._default_dir():
            with contextlib.suppress(OSError):  # not empty: another router's socket is in it
                self.socket.parent.rmdir()

    def _default_dir(self) -> bool:
        return self.socket == default_socket() and not os.environ.get("PLUGRPC_ROUTER")


FD_RESERVE: Final = 256
"""Descriptors kept from clients at the least: plugins' sockets, pipes and restarts, the router's own files."""


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one, as servers that hold many connections do; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(OSError, ValueError):  # a hard limit the kernel caps lower (nr_open)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def client_cap(fd_limit: int) -> int:
    """The default `max_clients`: the descriptor limit less a reserve (an eighth of it, at least `FD_RESERVE`)."""
    return max(1, fd_limit - max(FD_RESERVE, fd_limit // 8))


def metrics_address(text: str) -> tuple[str, int] | Path:
    """`--metrics`: `HOST:PORT` (`[::1]:9464` for IPv6) as (host, port), or `unix:PATH` as a Path."""
    if text.startswith("unix:"):
        if len(text) == len("unix:"):
            raise ConfigError("--metrics unix: needs a path, e.g. unix:/run/plugrpc/metrics.sock")
        return Path(text[len("unix:"):])
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--metrics must be HOST:PORT (e.g. 127.0.0.1:9464, 0.0.0.0:9464 for every interface) or "
                          f"unix:PATH, got {text!r}")
    return host, int(port)
