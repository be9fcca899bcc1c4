"""The plugins the end-to-end tests write into images (`plugrpc_image`), by name: each one a file beside
this module (read once, at import), with the methods its manifest entry exports; and the one template.

Files here are whole plugins, readable and linted as such; tests that need a variant take the text and
replace a line of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent


def source(name: str) -> str:
    """The text of the plugin file `name` in tests/plugins/."""
    return (HERE / name).read_text()


# --- SDK plugins ------------------------------------------------------------------------------

KITCHEN: Final = source("kitchen.py")
"""A bit of everything; `hidden` is served but never exported."""
KITCHEN_EXPORTS: Final = ["echo", "subtract", "update", "sleep", "peak", "pid", "env", "boom", "crash"]
OVS: Final = source("ovs.py")
"""core0's ovs plugin, persistent: `version`."""
OPS: Final = source("ops.py")
"""Operations: gets stuck, stays busy, eats memory or CPU, leaves orphans."""
OPS_EXPORTS: Final = ["pid", "echo", "hang", "block", "hog", "spin", "say", "orphan"]
ORDERED: Final = source("ordered.py")
"""Notes its start and the end of its start-up hook in $ORDER_LOG (`after` order)."""
ECHO: Final = source("echo.py")
"""Counts what it is given (nothing lost, duplicated or left running); served by several names at once."""
ECHO_EXPORTS: Final = ["echo", "sleep", "hang", "block", "stats", "spawn", "environ", "argv"]
FUZZ: Final = source("fuzz.py")
"""Every kind of handler the SDK knows, for fuzzing it."""
FUZZ_EXPORTS: Final = ["echo", "add", "kwonly", "aecho", "boom", "refuse", "unserializable", "huge", "deep"]
EMITTER: Final = source("emitter.py")
"""Emits, reports progress and calls other plugins, from every kind of handler."""
EMITTER_EXPORTS: Final = ["emit", "aemit", "temit", "later", "inline_progress", "async_progress",
                          "threaded_progress", "progress_elsewhere", "pid", "call", "fan", "loop"]

# --- plugins without the SDK ------------------------------------------------------------------

NODE: Final = source("node_plugin.js")
"""Written from the contract alone, in Node: `add`, `who`."""
RAW_NOTIFY: Final = source("raw_notify.py")
"""A `ready = "notify"` plugin that says READY=1 itself, when the test lets it."""
FAULTY: Final = source("faulty.py")
"""Misbehaves on request, one connection at a time; `hold` is never answered."""
FAULTY_EXPORTS: Final = ["ok", "hold", "garbage", "half", "unknown-id", "twice", "reply", "bytes", "deep", "flood"]
RAW_EVENTS: Final = source("raw_events.py")
"""Writes the lines it is given on the request's connection, before (`send`) or after (`late`) its answer."""
RAW_EVENTS_EXPORTS: Final = ["send", "late"]
CRASHER: Final = source("crasher.sh")
"""Exits at once, every time: a crash loop."""

# --- templates --------------------------------------------------------------------------------

# Speaks the contract with no plugrpc at all: fd 3, NDJSON. `mode` picks how it misbehaves.
RAW_TEMPLATE: Final = '''
#!/usr/bin/env python3
import json, socket, sys
MODE = "{mode}"
server = socket.socket(fileno=3)
while True:
    conn, _ = server.accept()
    f = conn.makefile("rwb")
    for line in f:
        req = json.loads(line)
        if MODE == "garbage":
            f.write(b"this is not json\\n")
        elif MODE == "half":
            f.write(b'{{"jsonrpc": "2.0", "res')
            f.flush()
            f.close()
            conn.close()
            break
        elif MODE == "unknown-id":
            f.write(json.dumps({{"jsonrpc": "2.0", "result": 1, "id": 987654}}).encode() + b"\\n")
        else:
            f.write(json.dumps({{"jsonrpc": "2.0", "result": req.get("params"), "id": req["id"]}}).encode() + b"\\n")
        f.flush()
'''


def raw(mode: str) -> str:
    """`RAW_TEMPLATE` misbehaving as `mode` says: garbage, half, unknown-id, or an echo."""
    return RAW_TEMPLATE.format(mode=mode)
