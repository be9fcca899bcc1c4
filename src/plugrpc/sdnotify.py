"""The sd_notify convention (systemd's): a process tells whoever started it that it is ready.

`$NOTIFY_SOCKET` names an AF_UNIX datagram socket (a leading `@` is the abstract namespace); a
message is one datagram of newline-separated `KEY=VALUE` assignments: `READY=1`, `STATUS=...`,
`STOPPING=1`. Shared by both ends: a plugin sends (the SDK, or anything speaking the convention:
`systemd-notify`, libsystemd, Go's `daemon.SdNotify`), the router receives its plugins'
messages (process/notify.py) and, under systemd, sends its own.
"""

from __future__ import annotations

import os
import socket

TYPE_CHECKING = False  # typing's, without importing typing: a plugin loads these modules (see plugin/plain.py)
if TYPE_CHECKING:
    from typing import Final

MAX_MESSAGE: Final = 4096
"""The largest message read; a larger datagram is ignored as a whole."""


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1" or "STATUS=loading the cache") to `$NOTIFY_SOCKET`.

    False when there is no such socket: the process was not started with `ready = "notify"` (or
    systemd's Type=notify), and nobody is waiting to hear it.
    """
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True


def parse(datagram: bytes) -> dict[str, str]:
    """The `KEY=VALUE` assignments of a message; anything else in it (not UTF-8, no `=`) is skipped."""
    try:
        text = datagram.decode()
    except UnicodeDecodeError:
        return {}
    fields = {}
    for line in text.split("\n"):
        key, sep, value = line.partition("=")
        if sep and key and key.isupper() and key.replace("_", "").isalnum():
            fields[key] = value
    return fields
