"""`.plugin.toml`: the image's declaration of its plugins (DESIGN.md, "Image and manifest").

A core0 manifest (`path` and `exports` only) loads unchanged; every further key is optional
with a default. Loading is strict: an unknown key, a wrong type or a path that leaves the image
root is a `ManifestError` naming the file, the plugin and the key, before anything runs.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from .errors import ManifestError
from .patterns import pattern_problem

MANIFEST_NAME: Final = ".plugin.toml"
NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
RESERVED_NAMES: Final = frozenset({"router", "rpc"})

Mode = Literal["rpc", "exec"]
Restart = Literal["always", "on-failure", "never"]


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """One `[plugin.NAME]` table, validated, with defaults filled in."""

    name: str
    path: Path
    """Absolute path on this machine, resolved (symlinks included) and inside the image root."""
    exports: tuple[str, ...]
    """The only methods callers may reach, in manifest order."""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Extra environment for the plugin process; the runtime's own is never passed whole."""
    inherit_env: tuple[str, ...] = ()
    """Names of the runtime's environment variables to pass through, when a plugin needs them."""
    mode: Mode = "rpc"
    timeout: float = 30.0
    """Seconds a call may take before it fails with -32002."""
    pool_size: int = 1
    """Connections the router keeps to the plugin; one pipelined connection is usually fastest."""
    max_inflight: int = 0
    """Calls in flight per connection; 0 means unlimited, 1 for a plugin that serves one at a time."""
    max_pending: int = 10_000
    """Calls queued or in flight for this plugin before new ones get -32003."""
    restart: Restart = "always"
    lazy: bool = False
    """Start the process on the first call instead of at router start."""
    idle_stop: float = 0.0
    """Stop the process after this many idle seconds (0: never); it starts again on the next call."""
    grace: float = 5.0
    """Seconds between SIGTERM and SIGKILL when stopping."""
    events: tuple[str, ...] = ()
    """Patterns of the event names the plugin may emit (`port.*`); others are dropped."""
    digest: str = ""
    """Hash of the executable when loaded: a rebuilt plugin counts as changed on reload."""

    @property
    def exported(self) -> frozenset[str]:
        """Exports as a set, for the router's per-call membership test."""
        return frozenset(self.exports)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A whole image: its root directory and its plugins by name."""

    root: Path
    file: Path
    plugins: Mapping[str, PluginSpec]


# --- loading -------------------------------------------------------------------------------


def load_manifest(root: str | os.PathLike[str]) -> Manifest:
    """Read and validate `<root>/.plugin.toml`."""
    root_path = Path(root).resolve()
    file = root_path / MANIFEST_NAME
    if not root_path.is_dir():
        raise ManifestError(f"image root {str(root_path)!r} is not a directory")
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError("no such file; an image declares its plugins in .plugin.toml at its root",
                            file=str(file)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read: {exc}", file=str(file)) from exc
    return parse_manifest(text, root_path, file)


def parse_manifest(text: str, root: Path, file: Path) -> Manifest:
    """Validate manifest text whose plugin paths resolve inside `root`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"invalid TOML: {exc}", file=str(file)) from exc
    for key in doc:
        if key != "plugin":
            raise ManifestError("unknown top-level key; plugins are declared as [plugin.NAME]", file=str(file), key=key)
    tables = doc.get("plugin", {})
    if not isinstance(tables, dict):
        raise ManifestError("must be a table of [plugin.NAME] tables", file=str(file), key="plugin")
    plugins = {name: _plugin(name, table, root, str(file)) for name, table in tables.items()}
    return Manifest(root=root, file=file, plugins=MappingProxyType(plugins))


def _plugin(name: str, table: Any, root: Path, file: str) -> PluginSpec:
    def fail(message: str, key: str = "") -> ManifestError:
        return ManifestError(message, file=file, plugin=name, key=key)

    if not NAME_RE.fullmatch(name):
        raise fail("plugin names may use only letters, digits, '_' and '-'")
    if name in RESERVED_NAMES:
        raise fail(f"the name {name!r} is reserved for the router's built-in methods")
    if not isinstance(table, dict):
        raise fail("must be a table with at least `path` and `exports`")
    for key in table:
        if key not in _FIELDS:
            raise fail(f"unknown key (known keys: {', '.join(sorted(_FIELDS))})", key)
    for key in ("path", "exports"):
        if key not in table:
            raise fail("required key is missing", key)
    values: dict[str, Any] = {}
    for key, raw in table.items():
        try:
            values[key] = _FIELDS[key](raw)
        except (TypeError, ValueError) as exc:
            raise fail(str(exc), key) from None
    if values.get("events") and values.get("mode") == "exec":
        raise fail("an exec plugin runs once per call and has no connection to emit events on; "
                   "remove `events` or use mode = \"rpc\"", "events")
    values["path"] = path = _confine(values["path"], root, fail)
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "blake2b").hexdigest()
    return PluginSpec(name=name, digest=digest, **values)


def _confine(declared: str, root: Path, fail: Callable[[str, str], ManifestError]) -> Path:
    """Resolve `declared` inside `root`, as core0 did: absolute paths count from the image root.

    Symlinks are resolved on this machine, so one that points outside the root (including an
    absolute link meant for a chroot) is refused rather than followed.
    """
    resolved = (root / declared.lstrip("/")).resolve()
    if not resolved.is_relative_to(root):
        raise fail(f"{declared!r} resolves to {str(resolved)!r}, outside the image root {str(root)!r}", "path")
    if not resolved.is_file():
        raise fail(f"{declared!r} is not a file in the image (looked at {str(resolved)!r})", "path")
    if not os.access(resolved, os.X_OK):
        raise fail(f"{declared!r} is not executable (chmod +x {str(resolved)!r})", "path")
    return resolved


# --- per-key converters: each raises TypeError/ValueError with a message for the user -----


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a non-empty string, got {value!r}")
    return value


def _str_tuple(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected an array of strings, got {value!r}")
    return tuple(value)


def _exports(value: Any) -> tuple[str, ...]:
    names = _str_tuple(value)
    for n in names:
        if not n or n.startswith("rpc."):
            raise ValueError(f"cannot export {n!r}: empty names and the reserved 'rpc.' prefix are refused")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate names in {list(names)!r}")
    return names


def _events(value: Any) -> tuple[str, ...]:
    patterns = _str_tuple(value)
    for pattern in patterns:
        problem = pattern_problem(pattern)
        if problem is not None:
            raise ValueError(f"{problem} (event names without the plugin's name: 'port.added', 'port.*')")
    return patterns


def _env(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise TypeError(f"expected a table of strings, got {value!r}")
    return MappingProxyType(dict(value))


def _choice(*options: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(map(repr, options))}, got {value!r}")
        return str(value)

    return convert


def _number(minimum: float, *, integer: bool = False, positive: bool = False) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or (not integer and not math.isfinite(value)):
            raise TypeError(f"expected {'an integer' if integer else 'a number'}, got {value!r}")
        if value < minimum or (positive and value <= 0):
            raise ValueError(f"must be {'> ' if positive else '>= '}{minimum}, got {value!r}")
        return value if integer else float(value)

    return convert


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


_FIELDS: Final[dict[str, Callable[[Any], Any]]] = {
    "path": _str,
    "exports": _exports,
    "args": _str_tuple,
    "env": _env,
    "inherit_env": _str_tuple,
    "mode": _choice("rpc", "exec"),
    "timeout": _number(0, positive=True),
    "pool_size": _number(1, integer=True),
    "max_inflight": _number(0, integer=True),
    "max_pending": _number(1, integer=True),
    "restart": _choice("always", "on-failure", "never"),
    "lazy": _bool,
    "idle_stop": _number(0),
    "grace": _number(0),
    "events": _events,
}
