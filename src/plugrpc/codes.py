"""Every JSON-RPC error code plugrpc sends, named once (docs/design.md, "Errors")."""

from __future__ import annotations

# JSON-RPC 2.0
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# A core0 (`mode = "exec"`) plugin exited non-zero; the message is its error text.
EXEC_FAILED = -32000

# The router's own failures
PLUGIN_UNAVAILABLE = -32001
CALL_TIMEOUT = -32002
OVERLOADED = -32003
MESSAGE_TOO_LARGE = -32004

# A process exit status, not a JSON-RPC code: systemd's EXIT_MEMORY. An SDK plugin that runs out
# of memory (its manifest's limits.memory) exits with it, and the router reads it as that limit.
EXIT_MEMORY = 204

MESSAGES: dict[int, str] = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
    EXEC_FAILED: "Plugin error",
    PLUGIN_UNAVAILABLE: "Plugin unavailable",
    CALL_TIMEOUT: "Call timed out",
    OVERLOADED: "Overloaded",
    MESSAGE_TOO_LARGE: "Message too large",
}
