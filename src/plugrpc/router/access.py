"""What a plugin's own connections to the router may call: exported methods, and the built-ins of its `router_access`.

Every plugin can reach the front socket (`$PLUGRPC_ROUTER`), so a plugin method that passes calls
on would hand its callers, NATS's included, `router.reload` and every plugin's `router.logs`. A
connection is a plugin's when the peer the kernel names (SO_PEERCRED, read once at accept) is a
process of the plugin: its pid, process group or session is the pid of a plugin process the router
runs. Each plugin process (and each execution of an exec plugin) leads a session of its own, and
everything it starts stays in that session unless it leaves on purpose (`setsid`), so children
(`plugrpc call` from a shell plugin) count as the plugin too; no token to pass on or leak, nothing
for a plugin in any language to do. A peer that is gone before its connection is accepted cannot
be told apart, and gets the default `PLUGIN_ACCESS`; one outside the router's pid namespace (pid 0)
is no plugin of this router.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import Any

from .. import codes
from ..manifest import PLUGIN_ACCESS, RESERVED_NAMES, ROUTER_METHODS
from ..sockets import peer_credentials
from ..wire import error_response, request_problem
from .interfaces import Handle, Sink

Access = tuple[str, frozenset[str]]
"""A plugin's name and its `router_access`."""


def peer_pid(sock: socket.socket | None) -> int | None:
    """The pid of the process that connected `sock` (SO_PEERCRED), if the OS says."""
    creds = None if sock is None else peer_credentials(sock)
    return None if creds is None else creds[0]


def owner(pid: int | None, plugins: Iterable[tuple[str, frozenset[str], set[int]]]) -> Access | None:
    """The plugin (name, router_access) whose process `pid` is, or which started it; None for another client.

    `plugins`: (name, router_access, pids of its processes running now) of every plugin.
    """
    if pid is None or pid <= 0:
        return None
    try:
        ids = {pid, os.getpgid(pid), os.getsid(pid)}
    except OSError:  # gone already: whoever holds its connection now, it gets no more than a plugin would
        return "", PLUGIN_ACCESS
    for name, access, pids in plugins:
        if ids & pids:
            return name, access
    return None


class Limited:
    """`Router.handle` for a plugin's own connection: a built-in beyond its `router_access` is -32601.

    Only connections of plugins pay for this check; everyone else's calls go to `handle` directly.
    """

    __slots__ = ("handle", "name", "allowed")

    def __init__(self, handle: Handle, name: str, allowed: frozenset[str]) -> None:
        self.handle = handle
        self.name = name
        self.allowed = allowed

    def __call__(self, msg: Any, sink: Sink) -> None:
        if type(msg) is dict:
            method = msg.get("method")
            if (type(method) is str and method.partition(".")[0] in RESERVED_NAMES and method not in self.allowed
                    and request_problem(msg) is None):
                if "id" in msg:
                    sink.reply(error_response(msg["id"], codes.METHOD_NOT_FOUND, data={"reason": self._why(method)}))
                return
        self.handle(msg, sink)

    def _why(self, method: str) -> str:
        who = f"plugin {self.name}'s" if self.name else "a plugin's"
        grant = (f'; grant it with router_access = ["{method}"] (or "full") under [plugin.{self.name}]'
                 if method in ROUTER_METHODS and self.name else "")
        return f"{method} is not reachable from {who} own connections to the router{grant}"


def handler(handle: Handle, found: Access | None) -> Handle:
    """What routes a connection's requests: `handle`, unless it is a plugin's with less than full access."""
    if found is None or found[1] >= ROUTER_METHODS:
        return handle
    return Limited(handle, *found)
