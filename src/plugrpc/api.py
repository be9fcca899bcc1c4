"""What the command line does, as plain functions: `run()` a router, `call()` a method.

The CLI only parses arguments and calls these (as uvicorn's `main` calls `run()`), so
everything it does is reachable from Python and testable without a shell.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from . import logs
from .client import Client
from .config import Config
from .server import Server


def run(config: Config | None = None) -> None:
    """Supervise the image's plugins and serve the router until SIGINT/SIGTERM."""
    config = config or Config()
    logs.configure(config.log_level, config.log_json)
    Server(config).run()


def call(method: str, params: Any = None, *, socket: str | os.PathLike[str] | None = None,
         timeout: float | None = None) -> Any:
    """Call `method` through the router at `socket` and return its result (raises `RpcError`)."""

    async def _call() -> Any:
        async with Client(socket, timeout=timeout) as client:
            return await client.raw(method, params)

    return asyncio.run(_call())
