"""The soak's image: a mix of plugins, each appending the token of every call it runs to a ledger.

Every plugin serves `work {"token": T, "sleep": S}` and answers `{"token": T, "by": NAME}`; before it
answers it appends T to `$SOAK_LEDGER/NAME.log` (O_APPEND, one write per call, so a line survives a
kill -9 that comes after it). A token is unique in the run, so a token found twice in the ledgers is
a call that ran twice.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from plugrpc.testing import toml_value

LEDGER_PY: Final = '''
import os
_LEDGER = os.open(os.path.join(os.environ["SOAK_LEDGER"], os.environ.get("PLUGRPC_PLUGIN", "stdio") + ".log"),
                  os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

def record(token):
    os.write(_LEDGER, (str(token) + "\\n").encode())
'''

# The asyncio engine: async handlers; `relay` calls another plugin through the router; `flood` emits events.
AIO: Final = '''#!/usr/bin/env python3
import asyncio
import plugrpc
''' + LEDGER_PY + '''
NAME = os.environ["PLUGRPC_PLUGIN"]

async def work(token, sleep=0.0):
    record(token)
    if sleep:
        await asyncio.sleep(sleep)
    return {"token": token, "by": NAME}

async def relay(token, target, sleep=0.0):
    record(token)
    inner = await plugrpc.call(target + ".work", {"token": token + "/r", "sleep": sleep}, timeout=10)
    return {"token": token, "by": NAME, "inner": inner}

async def flood(n):
    for i in range(n):
        plugrpc.emit("tick", i)
        if i % 200 == 0:
            await asyncio.sleep(0)
    return n

plugrpc.serve({"work": work, "relay": relay, "flood": flood})
'''

# The plain engine (no asyncio): sync handlers; `hog` allocates MiB until its memory limit stops it.
PLAIN: Final = '''#!/usr/bin/env python3
import time
import plugrpc
''' + LEDGER_PY + '''
NAME = os.environ["PLUGRPC_PLUGIN"]
HOARD = []

def work(token, sleep=0.0):
    record(token)
    if sleep:
        time.sleep(min(float(sleep), 0.05))
    return {"token": token, "by": NAME}

def hog(mib):
    for _ in range(int(mib)):
        HOARD.append(bytearray(1 << 20))
    return len(HOARD)

def on_start():
    time.sleep(float(os.environ.get("SOAK_START_DELAY", "0")))

plugrpc.serve({"work": work, "hog": hog}, on_start=on_start)
'''

# A server on stdin and stdout, without plugrpc, one request at a time.
STDIO: Final = '''#!/usr/bin/env python3
import json, sys
''' + LEDGER_PY + '''
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    if msg.get("method") == "work":
        token = msg["params"]["token"]
        record(token)
        out = {"jsonrpc": "2.0", "id": msg["id"], "result": {"token": token, "by": "stdio"}}
    else:
        out = {"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "Method not found"}}
    sys.stdout.write(json.dumps(out) + "\\n")
    sys.stdout.flush()
'''

# core0's exec contract: `PATH work ARGS_JSON`, the result framed as `20:::JSON` then `:::`.
EXEC: Final = r'''#!/bin/sh
token=$(printf '%s' "$2" | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
printf '%s\n' "$token" >> "$SOAK_LEDGER/exec.log"
printf '20:::{"token": "%s", "by": "exec"}\n:::' "$token"
'''

FAST_PINGS: Final[dict[str, Any]] = {"ping_interval": 0.5, "ping_timeout": 1.0, "grace": 1, "timeout": 5}
"""Victims of SIGSTOP are found unresponsive and restarted within about two seconds."""
SOURCES: Final = {"aio.py": AIO, "plain.py": PLAIN, "stdio.py": STDIO, "exec.sh": EXEC}


@dataclass(frozen=True)
class Plugin:
    """One `[plugin.NAME]` table: its script in the image, its exports and further manifest keys."""

    name: str
    script: str
    exports: tuple[str, ...] = ("work",)
    keys: Mapping[str, Any] = field(default_factory=dict)
    callable: bool = True
    """Whether the load calls its `work` (`memhog` is called, and hogs only as a fault)."""


def base_plugins() -> list[Plugin]:
    """The plugins every router of the soak runs, before any reload."""
    return [
        Plugin("steady", "plain.py", keys={"timeout": 5}),  # never faulted: the healthy plugin
        Plugin("aio", "aio.py", ("work", "relay", "flood"), {**FAST_PINGS, "events": ["tick"]}),
        Plugin("plain", "plain.py", keys=FAST_PINGS),
        Plugin("relay", "aio.py", ("work", "relay"), FAST_PINGS),
        Plugin("exec", "exec.sh", keys={"mode": "exec", "timeout": 5, "max_inflight": 4}),
        Plugin("lazy", "plain.py", keys={**FAST_PINGS, "lazy": True}),
        Plugin("idle", "plain.py", keys={**FAST_PINGS, "idle_stop": 2}),
        Plugin("memhog", "plain.py", ("work", "hog"), {**FAST_PINGS, "limits": {"memory": "160M"}}),
        Plugin("notify", "plain.py", keys={**FAST_PINGS, "ready": "notify", "after": ["plain"],
                                           "env": {"SOAK_START_DELAY": "0.3"}}),
        Plugin("stdio", "stdio.py", keys={**FAST_PINGS, "transport": "stdio"}),
        Plugin("flex", "plain.py", keys={**FAST_PINGS, "env": {"SOAK_VERSION": "0"}}),
    ]


def manifest_text(plugins: list[Plugin], ledger: Path) -> str:
    """The `.plugin.toml` for `plugins`, each told where its ledger is (`SOAK_LEDGER` in its env)."""
    out = []
    for plugin in plugins:
        env = {**plugin.keys.get("env", {}), "SOAK_LEDGER": os.fspath(ledger)}
        keys = {**plugin.keys, "env": env}
        out += [f"[plugin.{plugin.name}]", f"path = {toml_value('/' + plugin.script)}",
                f"exports = {toml_value(list(plugin.exports))}"]
        out += [f"{key} = {toml_value(value)}" for key, value in keys.items()]
        out.append("")
    return "\n".join(out)


def write_scripts(root: Path) -> None:
    """The image's executables, written once: a reload rewrites only the manifest, never a script in use."""
    root.mkdir(parents=True, exist_ok=True)
    for name, source in SOURCES.items():
        path = root / name
        path.write_text(textwrap.dedent(source))
        path.chmod(0o755)


def write_manifest(root: Path, plugins: list[Plugin], ledger: Path) -> None:
    """Replace the manifest at once (a reload never reads half of one)."""
    ledger.mkdir(parents=True, exist_ok=True)
    tmp = root / ".plugin.toml.new"
    tmp.write_text(manifest_text(plugins, ledger))
    os.replace(tmp, root / ".plugin.toml")
