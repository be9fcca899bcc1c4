"""`.plugin.toml`: the image's declaration of its plugins (docs/design.md, "Image and manifest").

A core0 manifest (`path` and `exports` only) loads unchanged; every further key is optional
with a default. Loading is strict: an unknown key, a wrong type, a path that leaves the image root or a value
the plugin process could not be given (a socket path too long, an id or limit past what the
kernel takes, an environment variable name with `=`) is a `ManifestError` naming the file, the
plugin and the key, before anything runs or changes.
"""

from __future__ import annotations

import difflib
import grp
import hashlib
import math
import os
import pwd
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
Ready = Literal["started", "notify"]
Transport = Literal["socket", "stdio"]
SIZE_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
"""Multiples a `limits.memory` size may end with (powers of 1024: "256M" is 256 MiB)."""
MIN_MEMORY: Final = 1 << 20
"""The smallest non-zero memory limit: `memory = 256` (bytes) is a mistake for "256M"."""
RLIMIT_MAX: Final = (1 << 63) - 1
"""The largest limit setrlimit takes from Python (a signed 64-bit number)."""
CPU_KILL_AFTER: Final = 2
"""Seconds of CPU between SIGXCPU (limits.cpu_seconds used up) and the kernel's SIGKILL: the hard limit's margin."""
ID_MAX: Final = (1 << 32) - 2
"""The largest uid or gid: ids are 32 bits and all ones, (uid_t) -1, means "no change" to setuid."""
SUN_PATH_MAX: Final = 107
"""Bytes a unix socket path may have (sun_path is 108 bytes with its terminating NUL)."""
SOCKET_COPIES: Final = 99
"""The highest N of `NAME.N.sock`, where a changed plugin's new process listens while older ones drain."""
ROUTER_METHODS: Final = frozenset({"router.plugins", "router.stats", "router.health", "router.reload",
                                   "router.subscribe", "router.unsubscribe", "router.logs", "router.connect",
                                   "rpc.discover", "rpc.cancel"})
"""The router's built-in methods: what `router_access` may grant."""
READ_ONLY: Final = frozenset({"router.plugins", "router.stats", "router.health", "rpc.discover"})
"""The built-ins that only read: what callers over NATS reach besides exported methods."""
PLUGIN_ACCESS: Final = READ_ONLY | {"router.subscribe", "router.unsubscribe", "rpc.cancel"}
"""The built-ins a plugin's own connections reach by default: NATS's read-only ones, events (a plugin may
follow another's), and cancelling its own calls. Not `router.reload`, nor every plugin's `router.logs`."""


@dataclass(frozen=True, slots=True)
class Limits:
    """`limits = {...}`: what the kernel holds a plugin process to (setrlimit in the child); 0 is none."""

    memory: int = 0
    """Bytes of heap and other private writable memory (RLIMIT_DATA): allocations beyond it fail."""
    open_files: int = 0
    """File descriptors (RLIMIT_NOFILE)."""
    processes: int = 0
    """Processes and threads of the plugin's user, all of them counted (RLIMIT_NPROC)."""
    cpu_seconds: int = 0
    """CPU time (RLIMIT_CPU): SIGXCPU when it is used up, SIGKILL two seconds of CPU later."""

    def __bool__(self) -> bool:
        return any((self.memory, self.open_files, self.processes, self.cpu_seconds))


@dataclass(frozen=True, slots=True)
class Handshake:
    """`handshake = {...}`: what the router asks a stdio server at every start before the plugin is ready."""

    method: str
    params: Any = None
    """The request's params as the manifest gives them; None: the request has none."""
    notify: str | None = None
    """A notification sent once the request is answered (MCP's `notifications/initialized`)."""


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
    mode_given: bool = False
    """Whether the manifest names `mode`. Without it, a plugin that turns out to be a core0 binary
    (it answers a start as a server with core0's `missing command`) is run in exec mode."""
    queue: bool = False
    """core0's `queue`: calls one at a time, in the order they came (one connection, one call in flight)."""
    transport: Transport = "socket"
    """`socket`: a listening socket on fd 3; `stdio`: JSON-RPC on its stdin and stdout, as MCP servers speak it."""
    handshake: Handshake | None = None
    """The request a stdio server needs before any call, made at every start (`initialize` for MCP)."""
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
    ping_interval: float = 10.0
    """Seconds between liveness pings (`rpc.ping`) of a running plugin with room for a call (0: none)."""
    ping_timeout: float = 5.0
    """Seconds a ping may go unanswered before the plugin is unresponsive and restarted (0: no pings)."""
    ready: Ready = "started"
    """`started`: ready once its process runs; `notify`: once it says READY=1 on $NOTIFY_SOCKET."""
    after: tuple[str, ...] = ()
    """Plugins that must be ready before this one starts (and restarts)."""
    limits: Limits = Limits()
    user: str | None = None
    """User to run the plugin as (the router must run as root to switch), as a name or a uid."""
    group: str | None = None
    """Group to run it as; default: the user's own group (and the user's other groups)."""
    no_new_privileges: bool = True
    """PR_SET_NO_NEW_PRIVS: neither the plugin nor what it runs can gain privileges (setuid, file caps)."""
    router_access: frozenset[str] = PLUGIN_ACCESS
    """The built-ins the plugin's own connections to the router may call (`PLUGIN_ACCESS`, or more)."""
    direct: bool = True
    """Whether callers may get a connection of their own to it (`router.connect`), one hop instead of two."""
    max_direct: int = 256
    """Direct connections handed out to it and not yet ended; `router.connect` gets -32003 past it."""
    digest: str = ""
    """Hash of the executable when loaded: a rebuilt plugin counts as changed on reload."""
    file_id: tuple[int, int, int] = field(default=(0, 0, 0), compare=False)
    """(inode, size, mtime in ns) of the executable when hashed: while they stay, a reload keeps `digest`."""

    @property
    def pings(self) -> bool:
        """Whether the router checks this plugin's liveness (rpc plugins, both settings non-zero)."""
        return self.mode == "rpc" and self.ping_interval > 0 and self.ping_timeout > 0

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


def load_manifest(root: str | os.PathLike[str], *, sockets: Path | None = None,
                  previous: Manifest | None = None) -> Manifest:
    """Read and validate `<root>/.plugin.toml`.

    `sockets`: the directory plugin sockets go in; a name whose socket paths would not fit there is
    refused. `previous`: the manifest loaded last, whose hashes are kept for executables unchanged
    since. Blocking (it reads and hashes files): a running router calls it in a thread.
    """
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
    return parse_manifest(text, root_path, file, sockets=sockets, previous=previous)


def parse_manifest(text: str, root: Path, file: Path, *, sockets: Path | None = None,
                   previous: Manifest | None = None) -> Manifest:
    """Validate manifest text whose plugin paths resolve inside `root` (see `load_manifest`)."""
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
    known = previous.plugins if previous is not None else {}
    plugins = {name: _plugin(name, table, root, str(file), sockets, known.get(name)) for name, table in tables.items()}
    _check_order(plugins, str(file))
    return Manifest(root=root, file=file, plugins=MappingProxyType(plugins))


def _plugin(name: str, table: Any, root: Path, file: str, sockets: Path | None, older: PluginSpec | None) -> PluginSpec:
    def fail(message: str, key: str = "") -> ManifestError:
        return ManifestError(message, file=file, plugin=name, key=key)

    if not NAME_RE.fullmatch(name):
        raise fail("plugin names may use only letters, digits, '_' and '-'")
    if name in RESERVED_NAMES:
        raise fail(f"the name {name!r} is reserved for the router's built-in methods")
    if sockets is not None and len(name) > (room := _name_room(sockets)):
        raise fail(f"its socket path ({sockets}/{name}.sock, or .{SOCKET_COPIES}.sock while an older process "
                   f"drains) would pass the {SUN_PATH_MAX} bytes a unix socket path may have: use at most {room} "
                   "characters", "name")
    if not isinstance(table, dict):
        raise fail("must be a table with at least `path` and `exports`")
    for key in table:
        if key not in _FIELDS:
            near = difflib.get_close_matches(key, _FIELDS, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise fail(f"unknown key ({hint}known keys: {', '.join(sorted(_FIELDS))})", key)
    for key in ("path", "exports"):
        if key not in table:
            raise fail("required key is missing", key)
    values: dict[str, Any] = {}
    for key, raw in table.items():
        try:
            values[key] = _FIELDS[key](raw)
        except (TypeError, ValueError) as exc:
            raise fail(str(exc), exc.key if isinstance(exc, _KeyedError) else key) from None
    try:
        _check_identity(values.get("user"), values.get("group"))
    except _KeyedError as exc:
        raise fail(str(exc), exc.key) from None
    if values.get("events") and values.get("mode") == "exec":
        raise fail("an exec plugin runs once per call and has no connection to emit events on; "
                   "remove `events` or use mode = \"rpc\"", "events")
    if values.get("queue"):
        for key in ("max_inflight", "pool_size"):
            if values.get(key, 1) != 1:
                raise fail(f"queue = true runs calls one at a time: remove {key} or set it to 1", key)
        values["max_inflight"] = values["pool_size"] = 1
    _check_transport(values, fail)
    values["mode_given"] = "mode" in values
    values["path"] = path = _confine(values["path"], root, fail)
    values["digest"], values["file_id"] = _digest(path, older)
    return PluginSpec(name=name, **values)


def _check_transport(values: dict[str, Any], fail: Callable[[str, str], ManifestError]) -> None:
    """A stdio server has one connection, its pipes, and is ready once its handshake is answered."""
    if values.get("transport") != "stdio":
        if "handshake" in values:
            raise fail('only a server on stdin and stdout needs a handshake: add transport = "stdio" or remove '
                       "handshake", "handshake")
        return
    if values.get("pool_size", 1) != 1:
        raise fail("a stdio plugin has one connection, its stdin and stdout: remove pool_size or set it to 1",
                   "pool_size")
    if values.get("mode") == "exec":
        raise fail('an exec plugin runs once per call, read as core0 read it: remove transport or mode', "transport")
    if values.get("ready") == "notify":
        raise fail("a stdio plugin is ready once its handshake is answered (or once it runs, without one): remove "
                   "ready", "ready")


def _name_room(sockets: Path) -> int:
    """The longest plugin name whose every socket path in `sockets` (`NAME.N.sock` too) fits."""
    return SUN_PATH_MAX - len(os.fsencode(sockets)) - len(f"/.{SOCKET_COPIES}.sock")


def _digest(path: Path, older: PluginSpec | None) -> tuple[str, tuple[int, int, int]]:
    """The executable's hash and file id: `older`'s hash while its inode, size and mtime are the same."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        file_id = (st.st_ino, st.st_size, st.st_mtime_ns)
        if older is not None and older.path == path and older.file_id == file_id:
            return older.digest, file_id
        return hashlib.file_digest(f, "blake2b").hexdigest(), file_id


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


def _check_order(plugins: Mapping[str, PluginSpec], file: str) -> None:
    """`after` names plugins of this manifest and never goes round in a circle."""
    for spec in plugins.values():
        for name in spec.after:
            if name not in plugins:
                raise ManifestError(f"no plugin named {name!r} in this manifest (it has {', '.join(plugins)})",
                                    file=file, plugin=spec.name, key="after")
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = " -> ".join([*path[path.index(name):], name])
            raise ManifestError(f"start order goes round in a circle: {cycle}; remove one of these `after` entries",
                                file=file, plugin=path[-1], key="after")
        if name in done:
            return
        for dep in plugins[name].after:
            visit(dep, [*path, name])
        done.add(name)

    for name in plugins:
        visit(name, [])


def _check_identity(user: str | None, group: str | None) -> None:
    """`user` and `group` exist here, and the router may switch to them (it runs as root, or as them)."""
    uid = gid = None
    if user is not None:
        entry = passwd_entry(user)
        if entry is None and not user.isdigit():
            raise _KeyedError("user", f"no such user {user!r} on this machine (see /etc/passwd); give an existing "
                                      "name or a numeric uid")
        if entry is None and group is None:
            raise _KeyedError("user", f"uid {user} is not in /etc/passwd, so it has no group of its own: set `group` "
                                      "too")
        uid = entry.pw_uid if entry is not None else int(user)
    if group is not None:
        gentry = group_entry(group)
        if gentry is None and not group.isdigit():
            raise _KeyedError("group", f"no such group {group!r} on this machine (see /etc/group); give an existing "
                                       "name or a numeric gid")
        gid = gentry.gr_gid if gentry is not None else int(group)
    if os.geteuid() == 0:
        return
    for key, wanted, have in (("user", uid, os.geteuid()), ("group", gid, os.getegid())):
        if wanted is not None and wanted != have:
            raise _KeyedError(key, f"switching to {key} {user if key == 'user' else group!r} needs the router to run "
                                   f"as root (it runs as uid {os.geteuid()}); drop the key or start the router as root")


def passwd_entry(user: str) -> pwd.struct_passwd | None:
    """The /etc/passwd entry of a user name or numeric uid, or None."""
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError, ValueError):
        return None


def group_entry(group: str) -> grp.struct_group | None:
    """The /etc/group entry of a group name or numeric gid, or None."""
    try:
        return grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
    except (KeyError, OverflowError, ValueError):
        return None


# --- per-key converters: each raises TypeError/ValueError with a message for the user -----


class _KeyedError(ValueError):
    """A converter's error about one entry inside a key (`limits.memory`): names that entry."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a non-empty string, got {value!r}")
    return value


def _str_tuple(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected an array of strings, got {value!r}")
    return tuple(value)


def _text(value: Any) -> str:
    """A string the kernel takes as a path or an argument: C strings end at the first NUL."""
    text = _str(value)
    _no_nul(text)
    return text


def _args(value: Any) -> tuple[str, ...]:
    args = _str_tuple(value)
    for arg in args:
        _no_nul(arg)
    return args


def _no_nul(text: str) -> None:
    if "\0" in text:
        raise ValueError(f"{text!r} contains a NUL character, which a process cannot be given")


def _env_name(name: str) -> str:
    if not name or "=" in name or "\0" in name:
        raise ValueError(f"{name!r} is not an environment variable name (non-empty, without '=' or NUL)")
    return name


def _env_names(value: Any) -> tuple[str, ...]:
    return tuple(_env_name(name) for name in _str_tuple(value))


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
    for name, text in value.items():
        _env_name(name)
        _no_nul(text)
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


def _identity(value: Any) -> str:
    """A user or group: a name, or a numeric id (as an integer or a string of digits)."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else _str(value)
    if text.isdigit() and int(text) > ID_MAX:
        raise ValueError(f"{value!r} is not an id this kernel has: ids are at most {ID_MAX}")
    return text


_SIZE_RE: Final = re.compile(r"(\d+(?:\.\d+)?)([kmgt]?)(?:i?b)?", re.I)


def _size(value: Any) -> int:
    """Bytes, from an integer or a size like "256M", "1.5G", "512MiB" (multiples of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE_RE.fullmatch(value.strip())):
        size = int(float(match[1]) * SIZE_UNITS[match[2].lower()])
    else:
        raise TypeError(f"expected bytes as an integer or a size like \"256M\" or \"1.5G\" (K, M, G, T: powers of "
                        f"1024), got {value!r}")
    if size < 0 or 0 < size < MIN_MEMORY:
        hint = f"; write \"{value}M\" for {value} MiB" if isinstance(value, int) else ""
        raise ValueError(f"{value!r} is {size} bytes, too small for a process (at least 1M, or 0 for none){hint}")
    return size


_LIMITS: Final[dict[str, Callable[[Any], Any]]] = {
    "memory": _size,
    "open_files": _number(0, integer=True),
    "processes": _number(0, integer=True),
    "cpu_seconds": _number(0, integer=True),
}


def _limits(value: Any) -> Limits:
    if not isinstance(value, dict):
        raise TypeError(f"expected a table like {{ memory = \"256M\", open_files = 1024 }}, got {value!r}")
    values = {}
    for key, raw in value.items():
        if key not in _LIMITS:
            raise _KeyedError(f"limits.{key}", f"unknown limit (known: {', '.join(_LIMITS)})")
        try:
            values[key] = _LIMITS[key](raw)
        except (TypeError, ValueError) as exc:
            raise _KeyedError(f"limits.{key}", str(exc)) from None
        top = RLIMIT_MAX - (CPU_KILL_AFTER if key == "cpu_seconds" else 0)
        if values[key] > top:
            raise _KeyedError(f"limits.{key}", f"{raw!r} is past what this platform can set: at most {top} "
                                               "(0 for none)")
    if 0 < values.get("open_files", 0) < 4:
        raise _KeyedError("limits.open_files", "must be 0 (none) or at least 4: fds 0-3 are the plugin's stdio and "
                                               "its socket")
    return Limits(**values)


def _router_access(value: Any) -> frozenset[str]:
    """"full", or the built-ins to grant beyond `PLUGIN_ACCESS`."""
    if value == "full":
        return ROUTER_METHODS
    names = ", ".join(sorted(ROUTER_METHODS))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected 'full' or an array of built-in methods to grant ({names}), got {value!r}")
    for method in value:
        if method not in ROUTER_METHODS:
            raise ValueError(f"{method!r} is not a built-in method; they are {names}")
    return PLUGIN_ACCESS | frozenset(value)


_HANDSHAKE_KEYS: Final = ("method", "params", "notify")


def _handshake(value: Any) -> Handshake:
    """`{ method = "initialize", params = {...}, notify = "notifications/initialized" }`."""
    if not isinstance(value, dict):
        raise TypeError(f"expected a table like {{ method = \"initialize\", params = {{...}}, notify = "
                        f"\"notifications/initialized\" }}, got {value!r}")
    for key in value:
        if key not in _HANDSHAKE_KEYS:
            raise _KeyedError(f"handshake.{key}", f"unknown key (known: {', '.join(_HANDSHAKE_KEYS)})")
    if "method" not in value:
        raise _KeyedError("handshake.method", "required key is missing: the request to make, e.g. \"initialize\"")
    try:
        method = _str(value["method"])
    except TypeError as exc:
        raise _KeyedError("handshake.method", str(exc)) from None
    params = value.get("params")
    if params is not None and not isinstance(params, dict | list):
        raise _KeyedError("handshake.params", f"expected a table or an array, got {params!r}")
    notify = value.get("notify")
    if notify is not None and (not isinstance(notify, str) or not notify):
        raise _KeyedError("handshake.notify", f"expected a non-empty string, got {notify!r}")
    return Handshake(method, params, notify)


def _after(value: Any) -> tuple[str, ...]:
    names = _str_tuple(value)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate names in {list(names)!r}")
    return names


_FIELDS: Final[dict[str, Callable[[Any], Any]]] = {
    "path": _text,
    "exports": _exports,
    "args": _args,
    "env": _env,
    "inherit_env": _env_names,
    "mode": _choice("rpc", "exec"),
    "timeout": _number(0, positive=True),
    "pool_size": _number(1, integer=True),
    "max_inflight": _number(0, integer=True),
    "max_pending": _number(1, integer=True),
    "restart": _choice("always", "on-failure", "never"),
    "lazy": _bool,
    "queue": _bool,
    "transport": _choice("socket", "stdio"),
    "handshake": _handshake,
    "idle_stop": _number(0),
    "grace": _number(0),
    "events": _events,
    "ping_interval": _number(0),
    "ping_timeout": _number(0),
    "ready": _choice("started", "notify"),
    "after": _after,
    "limits": _limits,
    "user": _identity,
    "group": _identity,
    "no_new_privileges": _bool,
    "router_access": _router_access,
    "direct": _bool,
    "max_direct": _number(1, integer=True),
}
