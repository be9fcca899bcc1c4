"""plugrpc: plugins as persistent JSON-RPC 2.0 servers behind a multiplexing router.

Plugin side: `plugrpc.serve({"version": version})`. Client side:
`async with plugrpc.Client() as c: await c.raw("ovs.version", {})`, or `BlockingClient` in
scripts. A router: `plugrpc.run(plugrpc.Config(root="image/"))` or `plugrpc run` on the
command line.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import call, run
from .blocking import BlockingClient
from .client import Client
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
from .sdk import serve

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
    "run",
    "serve",
]
