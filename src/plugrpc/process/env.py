"""What every plugin process gets from the runtime, whatever its mode (docs/design.md, "The plugin process").

An explicit environment (never the runtime's whole one), a PATH that starts with this
interpreter's directory so `#!/usr/bin/env python3` plugins import plugrpc, and a child-side
setup that ties the child's life to ours, and the one rule for logging a line a plugin printed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from ..manifest import PluginSpec

STANDARD_PATH: Final = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
BASICS: Final = ("HOME", "LANG", "LC_ALL", "TZ", "COVERAGE_PROCESS_CONFIG", "COVERAGE_FILE")
"""The few variables of the runtime's environment every plugin gets, where they are set. The
`COVERAGE_*` ones are set only while coverage.py measures the runtime: its plugins are measured too."""

plugin_log = logging.getLogger("plugrpc.plugin")
LEVELS: Final = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
                  "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}

_PR_SET_PDEATHSIG: Final = 1
libc: Final = (ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
               if sys.platform == "linux" else None)
"""The C library, for what Python's os module lacks (prctl, mallopt, malloc_trim); Linux only."""


def plugin_env(spec: PluginSpec, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a plugin process: basics, PATH, what the manifest asks for, `extra`."""
    env = {k: os.environ[k] for k in BASICS if k in os.environ}
    env["PATH"] = os.pathsep.join(dict.fromkeys((os.path.dirname(sys.executable), *STANDARD_PATH)))
    env["PLUGRPC_PLUGIN"] = spec.name
    env.update((k, os.environ[k]) for k in spec.inherit_env if k in os.environ)
    env.update(spec.env)
    if extra:
        env.update(extra)
    return env


def router_env(front: Path | None) -> dict[str, str]:
    """`PLUGRPC_ROUTER`, the router's front socket, through which a plugin calls other plugins."""
    return {} if front is None else {"PLUGRPC_ROUTER": os.fspath(front)}


def die_with_parent(parent_pid: int) -> None:
    """In a forked child: get SIGKILL when the runtime dies, even by `kill -9` (Linux only).

    If the runtime already died between fork and here, exit at once rather than run orphaned.
    """
    if libc is not None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def log_line(line: bytes, level: int, extra: Mapping[str, Any], suffix: str = "") -> tuple[int, str]:
    """Log one line a plugin printed, tagged with `extra` (plugin name, pid); return its level and text.

    A line that starts with a level name ("ERROR ...", as the SDK's logging writes) keeps that
    level; other lines get `level`, the stream's (INFO for stdout, WARNING for stderr).
    """
    text = line.decode("utf-8", "replace").rstrip("\r")
    word, _, rest = text.partition(" ")
    if word in LEVELS:
        level, text = LEVELS[word], rest
    text += suffix
    if plugin_log.isEnabledFor(level):
        plugin_log.log(level, "%s", text, extra=extra)
    return level, text
