"""What the command line does, as plain functions: `run()` a router, `call()` a method,
`status()`, `reload()` and `logs()` of a running router, its `events()`, `new()` plugin skeletons.

The CLI only parses arguments and calls these (as uvicorn's `main` calls `run()`), so
everything it does is reachable from Python and testable without a shell.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any, Final

from .. import logs as logging_setup
from ..client.aio import Client
from ..client.blocking import BlockingClient
from ..client.direct import DirectMode
from ..client.events import Event
from ..config import Config
from ..router.server import Server
from .scaffold import Scaffold, new_plugin

FOLLOW_WAIT: Final = 30.0
"""Seconds one `router.logs` call of `logs(follow=True)` waits for new lines before asking again."""


def run(config: Config | None = None) -> None:
    """Supervise the image's plugins and serve the router until SIGINT/SIGTERM."""
    config = config or Config()
    logging_setup.configure(config.log_level, config.log_json)
    Server(config).run()


def call(method: str, params: Any = None, *, socket: str | os.PathLike[str] | None = None,
         timeout: float | None = None, nats: str | None = None, router: str | None = None,
         creds: str | os.PathLike[str] | None = None, ca: str | os.PathLike[str] | None = None,
         direct: DirectMode = False) -> Any:
    """Call `method` through the router at `socket` and return its result (raises `RpcError`).

    With `nats` (a NATS URL), through router `router`, or any router that runs the plugin. With
    `direct`, on a connection of its own to the plugin that the router brokers (`Client(direct=...)`).
    """

    async def _call() -> Any:
        target = socket if nats is None else nats
        options: dict[str, Any] = {"direct": direct} if direct else {}
        async with Client(target, timeout=timeout, router=router, creds=creds, ca=ca, **options) as client:
            return await client.raw(method, params)

    return asyncio.run(_call())


def fleet_status(nats: str, *, creds: str | os.PathLike[str] | None = None, ca: str | os.PathLike[str] | None = None,
                 timeout: float | None = None) -> list[dict[str, Any]]:
    """Every plugin of every router on NATS: rows of `router.plugins`, each with its `router` (`NatsClient.fleet`)."""

    from ..client.nats import NatsClient

    async def _fleet() -> list[dict[str, Any]]:
        client = NatsClient(nats, timeout=timeout, creds=creds, ca=ca)
        async with client:
            return await client.fleet()

    return asyncio.run(_fleet())


def status(*, socket: str | os.PathLike[str] | None = None, timeout: float | None = None) -> list[dict[str, Any]]:
    """Every plugin's row of `router.plugins`: state, pid, uptime, restarts, calls, latency..."""
    plugins: list[dict[str, Any]] = call("router.plugins", socket=socket, timeout=timeout)
    return plugins


def reload(*, socket: str | os.PathLike[str] | None = None, timeout: float | None = None) -> dict[str, list[str]]:
    """Ask the router to re-read its manifest (`router.reload`, as SIGHUP does).

    Returns the plugin names by outcome: `added`, `removed`, `changed`, `unchanged`. It returns
    once removed and changed plugins have drained, so it can take up to their call timeout.
    """
    outcome: dict[str, list[str]] = call("router.reload", socket=socket, timeout=timeout)
    return outcome


def events(*patterns: str, socket: str | os.PathLike[str] | None = None, nats: str | None = None,
           router: str | None = None, creds: str | os.PathLike[str] | None = None,
           ca: str | os.PathLike[str] | None = None) -> Iterator[Event]:
    """Every event whose name matches one of `patterns`, as it comes, until the caller stops iterating.

    With `nats` (a NATS URL), the events of router `router`, or of every router on NATS. Raises
    RpcError (-32602) for a bad pattern, ConnectionLost when the router (or NATS) goes away.
    """
    target = socket if nats is None else nats
    with BlockingClient(target, router=router, creds=creds, ca=ca) as client, \
            client.subscribe(*patterns) as subscription:
        yield from subscription


def logs(name: str, lines: int = 20, *, follow: bool = False,
         socket: str | os.PathLike[str] | None = None) -> Iterator[dict[str, Any]]:
    """A plugin's last `lines` output lines (`router.logs`), oldest first; with `follow`, then every new
    one as it comes, for as long as the router runs. Each is {seq, time, level, text}; lines the router
    dropped before they could be read (it keeps the last 1000) come as one {"skipped": N}."""
    with BlockingClient(socket, timeout=None) as client:
        answer = client.raw("router.logs", {"plugin": name, "lines": lines})
        yield from answer["lines"]
        while follow:
            answer = client.raw("router.logs", {"plugin": name, "after": answer["seq"], "wait": FOLLOW_WAIT})
            if answer["skipped"]:
                yield {"skipped": answer["skipped"]}
            yield from answer["lines"]


def new(name: str, directory: str | os.PathLike[str] = ".") -> Scaffold:
    """Write a Python plugin skeleton, its manifest entry and a test into the image at `directory`."""
    return new_plugin(name, directory)
