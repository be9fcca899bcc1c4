"""The plugin side: `serve(commands)` runs a plugin as a persistent JSON-RPC server.

It mirrors core0's `plugin.Plugin(plugin.Commands{...})` (docs/design.md, "Command line and Python API"): a mapping
of names to plain or async callables, served on the socket the runtime hands over as fd 3
(the systemd socket-activation convention). With no mapping it serves jsonrpcserver's `@method`
registry, so a jsonrpcserver module serves unchanged.

Two engines serve the same protocol: a plugin whose commands (and `on_start`) are all plain
functions runs on `plain.py`, a selectors loop that loads no asyncio (half the start-up time,
6 MB less memory); one with async or `@threaded` commands runs on `aio.py`, on asyncio (uvloop
where installed). `loop=` chooses by hand. Built-ins: `rpc.discover` (an OpenRPC document, built
on the first call), `rpc.cancel` (the router giving up on a call), `rpc.ping` (the router's liveness
check, answered with the direct-call figures) and `rpc.direct` (see `direct.py`).

`on_start` is the plugin's start-up work (open a database, warm a cache): it runs before the
first request is read, and once it is done the plugin says READY=1 on `$NOTIFY_SOCKET` when it
has one (a manifest's `ready = "notify"`), so the router holds calls until then.
"""

from __future__ import annotations

import logging
import os
import socket

from ..errors import ConfigError
from ..sockets import bind_socket, remove_socket
from ..wire import DEFAULT_MAX_LINE
from .direct import DIRECT, PING, ping, rpc_direct
from .dispatch import Handler, _is_coroutine_function, resolve, threaded

TYPE_CHECKING = False  # typing's, without importing typing: a plugin loads these modules (see plugin/plain.py)
if TYPE_CHECKING:
    from typing import Any, Final, Literal

    Loop = Literal["auto", "none", "asyncio", "uvloop"]
    from collections.abc import Callable, Mapping

__all__ = ["serve", "threaded"]

LISTEN_FDS_START: Final = 3
"""The first socket-activation fd (systemd's SD_LISTEN_FDS_START)."""
DISCOVER: Final = "rpc.discover"


def serve(
    commands: Mapping[str, Callable[..., Any]] | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    max_line: int = DEFAULT_MAX_LINE,
    on_start: Callable[[], Any] | None = None,
    loop: Loop = "auto",
) -> None:
    """Serve `commands` until SIGTERM or SIGINT, then finish in-flight calls and return.

    The socket is fd 3 when the runtime started us (`LISTEN_FDS`); otherwise `path` or
    `$PLUGRPC_SOCKET` is bound, for running a plugin by hand. A request line longer than
    `max_line` bytes is answered -32004 and its connection closed. `on_start` (plain or async)
    runs before the first request is read; if it raises, the plugin exits with status 1. Then,
    with `$NOTIFY_SOCKET` set, READY=1 is sent there. `loop`: "auto" serves plain commands with
    no event loop and the others on uvloop (asyncio without it); "none", "asyncio" or "uvloop"
    choose, "none" only for plain commands.
    """
    if commands is None:
        from jsonrpcserver.methods import global_methods

        commands = global_methods
    table = resolve(commands)
    table[DISCOVER] = Handler(DISCOVER, _discover(table, os.environ.get("PLUGRPC_PLUGIN") or "plugin"))
    table[PING] = Handler(PING, ping)
    table[DIRECT] = Handler(DIRECT, rpc_direct)
    engine = _engine(table, on_start, loop)
    sock, bound = listening_socket(path)
    # stderr is the plugin's log (the runtime tags each line); a no-op if logging is set up already.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if engine == "none":
            from .plain import PlainServer

            PlainServer(table, max_line, on_start).serve(sock)
        else:
            import asyncio

            from ..config import loop_factory
            from .aio import AsyncServer

            with asyncio.Runner(loop_factory=loop_factory(engine)) as runner:
                runner.run(AsyncServer(table, max_line, on_start).serve(sock))
    finally:
        sock.close()
        if bound is not None:
            remove_socket(bound)


def _engine(table: Mapping[str, Handler], on_start: Callable[[], Any] | None,
            loop: Loop) -> Literal["none", "auto", "asyncio", "uvloop"]:
    """"none" (the plain engine), or the event loop for `config.loop_factory`."""
    plain = all(handler.inline for handler in table.values()) and not (
        on_start is not None and _is_coroutine_function(on_start))
    if loop == "none" and not plain:
        raise ConfigError('serve(loop="none") serves plain commands only: async and @threaded ones need an event '
                          'loop (loop="auto" picks one)')
    if loop == "auto":
        return "none" if plain else "auto"
    return loop


def _discover(table: Mapping[str, Handler], title: str) -> Callable[[], dict[str, Any]]:
    """`rpc.discover`: the document is built on the first call (the router asks only when a client does),
    so no plugin pays for inspecting its handlers at start."""
    document: dict[str, Any] | None = None

    def discover() -> dict[str, Any]:
        nonlocal document
        if document is None:
            from .discovery import discover_document

            document = discover_document(table, title)
        return document

    return discover


def listening_socket(path: str | os.PathLike[str] | None = None) -> tuple[socket.socket, str | None]:
    """The listening socket to serve on, and the path we bound (to remove at exit), if any."""
    fds = os.environ.get("LISTEN_FDS")
    pid = os.environ.get("LISTEN_PID")
    if fds is not None and (pid is None or pid == str(os.getpid())):
        # Consume the variables as sd_listen_fds(1) does, so our own children do not claim fd 3.
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
        if fds != "1":
            raise ConfigError(f"expected exactly one socket from the runtime, got LISTEN_FDS={fds!r}")
        try:
            return socket.socket(fileno=LISTEN_FDS_START), None
        except OSError as exc:
            raise ConfigError(f"LISTEN_FDS=1 but fd 3 is not a usable socket: {exc.strerror}") from exc
    target = path if path is not None else os.environ.get("PLUGRPC_SOCKET")
    if not target:
        raise ConfigError(
            "no socket to serve on: a plugin is meant to be started by `plugrpc run`, which hands it a "
            "listening socket as fd 3 (LISTEN_FDS=1); to run it by hand, pass serve(path=...) or set "
            "PLUGRPC_SOCKET=/path/to/plugin.sock"
        )
    bound = os.fspath(target)
    return bind_socket(bound), bound
