"""The one exception hierarchy of plugrpc.

Every error a user can see derives from `PlugrpcError`. A JSON-RPC error that came back from
a call is an `RpcError` carrying `code`, `message` and `data`; the router's own failures have
a subclass each so callers can `except CallTimeout:` instead of comparing numbers.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import codes

TYPE_CHECKING = False  # typing's, without importing typing: a plugin loads these modules (see plugin/plain.py)
if TYPE_CHECKING:
    from typing import Any


class PlugrpcError(Exception):
    """Base of every exception plugrpc raises."""


class ManifestError(PlugrpcError):
    """Raised when `.plugin.toml` is missing, unreadable or invalid; names the file, plugin and key."""

    def __init__(self, message: str, *, file: str = "", plugin: str = "", key: str = "") -> None:
        self.file, self.plugin, self.key = file, plugin, key
        where = ": ".join(p for p in (file, f"plugin {plugin!r}" if plugin else "", f"key {key!r}" if key else "") if p)
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(PlugrpcError):
    """Raised when the runtime's own settings are invalid (socket path, sizes, modes)."""


class ConnectError(PlugrpcError):
    """Raised by clients when the router's socket is missing or refuses connections.

    The message says which socket was tried and how to start a router on it.
    """


class ConnectionLost(PlugrpcError):
    """Raised for calls in flight when the connection closes before their response arrives.

    `error` is the JSON-RPC error the peer sent about no call in particular just before it
    closed (a line over its size limit: -32004; a refused uid), which is usually why.
    """

    def __init__(self, message: str, error: RpcError | None = None) -> None:
        super().__init__(message)
        self.error = error


class RpcError(PlugrpcError):
    """Raised when a call returns a JSON-RPC error: `code`, `message` and `data` as sent."""

    code: int = codes.INTERNAL_ERROR

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        self.code, self.message, self.data = code, message, data
        super().__init__(f"{message} ({code})" + (f": {data}" if data is not None else ""))

    def to_error(self) -> dict[str, Any]:
        """The JSON-RPC `error` member for this exception."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class PluginUnavailable(RpcError):
    """-32001: the plugin is not running, crashed mid-call, or sent a broken response."""

    code = codes.PLUGIN_UNAVAILABLE


class CallTimeout(RpcError):
    """-32002: the call did not complete within its timeout."""

    code = codes.CALL_TIMEOUT


class Overloaded(RpcError):
    """-32003: too many calls in flight; retry later or raise the plugin's `max_pending`."""

    code = codes.OVERLOADED


class MessageTooLarge(RpcError):
    """-32004: a line exceeded the configured maximum message size."""

    code = codes.MESSAGE_TOO_LARGE


_BY_CODE: dict[int, type[RpcError]] = {
    cls.code: cls for cls in (PluginUnavailable, CallTimeout, Overloaded, MessageTooLarge)
}


def rpc_error(error: Mapping[str, Any]) -> RpcError:
    """Build the right `RpcError` subclass from a JSON-RPC `error` object."""
    code = error.get("code", codes.INTERNAL_ERROR)
    cls = _BY_CODE.get(code, RpcError) if isinstance(code, int) else RpcError
    return cls(code, str(error.get("message", "")), error.get("data"))
