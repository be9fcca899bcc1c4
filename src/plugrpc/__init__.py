"""plugrpc: plugins as persistent JSON-RPC 2.0 servers behind a multiplexing router.

Plugin side: `plugrpc.serve({"version": version})`; in its handlers `plugrpc.emit(name, data)`,
`plugrpc.progress(value)` and `await plugrpc.call("other.method", params)`. Client side:
`async with plugrpc.Client() as c: await c.raw("ovs.version", {})`, or `BlockingClient` in
scripts. A router: `plugrpc.run(plugrpc.Config(root="image/"))` or `plugrpc run` on the
command line.
"""

from __future__ import annotations

import importlib

from .version import __version__

TYPE_CHECKING = False  # typing's, without importing typing: a plugin loads these modules (see plugin/plain.py)
if TYPE_CHECKING:
    from typing import Any

    from .client.aio import Client
    from .client.blocking import BlockingClient
    from .config import Config
    from .errors import (
        CallTimeout,
        ConfigError,
        ConnectError,
        ConnectionLost,
        ManifestError,
        MessageTooLarge,
        Overloaded,
        PluginUnavailable,
        PlugrpcError,
        RpcError,
    )
    from .plugin.outgoing import call, emit, progress
    from .plugin.sdk import serve, threaded
    from .sdnotify import notify
    from .tools.api import run

# Names are imported on first use: a plugin process that only needs `serve` must not pay for
# importing the router, the supervisor and the clients at every (re)start.
_WHERE = {
    "call": "plugin.outgoing", "emit": "plugin.outgoing", "progress": "plugin.outgoing", "notify": "sdnotify",
    "run": "tools.api", "BlockingClient": "client.blocking", "Client": "client.aio",
    "Config": "config", "serve": "plugin.sdk", "threaded": "plugin.sdk", **{name: "errors" for name in (
        "CallTimeout", "ConfigError", "ConnectError", "ConnectionLost", "ManifestError", "MessageTooLarge",
        "Overloaded", "PluginUnavailable", "PlugrpcError", "RpcError")},
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'plugrpc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "BlockingClient",
    "CallTimeout",
    "Client",
    "Config",
    "ConfigError",
    "ConnectError",
    "ConnectionLost",
    "ManifestError",
    "MessageTooLarge",
    "Overloaded",
    "PluginUnavailable",
    "PlugrpcError",
    "RpcError",
    "__version__",
    "call",
    "emit",
    "notify",
    "progress",
    "run",
    "serve",
    "threaded",
]
