"""manifest: core0 manifests load unchanged; every mistake names the file, plugin and key."""

from __future__ import annotations

import grp
import os
from pathlib import Path
from typing import Any

import pytest

from plugrpc.errors import ManifestError
from plugrpc.manifest import PLUGIN_ACCESS, ROUTER_METHODS, Limits, load_manifest


def image(tmp_path: Path, toml: str, files: dict[str, str] | None = None) -> Path:
    root = tmp_path / "img"
    root.mkdir(exist_ok=True)
    for rel, text in (files or {"bin/p": "#!/bin/sh\n"}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    (root / ".plugin.toml").write_text(toml)
    return root


def test_core0_manifest_loads_unchanged(tmp_path: Path) -> None:
    root = image(tmp_path, '[plugin.ovs]\npath = "/var/lib/corex/plugins/ovs-plugin"\nexports = ["version"]\n',
                 {"var/lib/corex/plugins/ovs-plugin": "#!/bin/sh\n"})
    spec = load_manifest(root).plugins["ovs"]
    assert spec.path == (root / "var/lib/corex/plugins/ovs-plugin").resolve()
    assert spec.exports == ("version",)
    assert (spec.mode, spec.pool_size, spec.max_inflight, spec.restart, spec.lazy) == ("rpc", 1, 0, "always", False)


def test_optional_keys(tmp_path: Path) -> None:
    root = image(tmp_path, """
[plugin.p]
path = "bin/p"
exports = ["a", "b.c"]
args = ["--x"]
env = { K = "v" }
mode = "exec"
timeout = 2
pool_size = 3
max_inflight = 1
max_pending = 50
restart = "on-failure"
lazy = true
idle_stop = 1.5
grace = 0.5
inherit_env = ["HOME"]
""")
    spec = load_manifest(root).plugins["p"]
    assert spec.args == ("--x",) and dict(spec.env) == {"K": "v"} and spec.mode == "exec"
    assert (spec.timeout, spec.pool_size, spec.max_inflight, spec.max_pending) == (2.0, 3, 1, 50)
    assert (spec.restart, spec.lazy, spec.idle_stop, spec.grace) == ("on-failure", True, 1.5, 0.5)
    assert spec.exported == frozenset({"a", "b.c"})
    assert spec.events == ()


def test_events_declare_what_a_plugin_may_emit(tmp_path: Path) -> None:
    root = image(tmp_path, '[plugin.p]\npath = "bin/p"\nexports = []\nevents = ["port.*", "build.>", "up"]\n')
    assert load_manifest(root).plugins["p"].events == ("port.*", "build.>", "up")


@pytest.mark.parametrize(("body", "key", "words"), [
    ('path = "bin/p"\nexports = ["a"]\ncolour = "red"', "colour", "unknown key"),
    ('path = "bin/p"\nexports = "a"', "exports", "array of strings"),
    ('path = "bin/p"\nexports = ["a"]\ntimeout = "1s"', "timeout", "number"),
    ('path = "bin/p"\nexports = ["a"]\ntimeout = 0', "timeout", "> 0"),
    ('path = "bin/p"\nexports = ["a"]\npool_size = 1.5', "pool_size", "integer"),
    ('path = "bin/p"\nexports = ["a"]\nlazy = 1', "lazy", "true or false"),
    ('path = "bin/p"\nexports = ["a"]\nmode = "grpc"', "mode", "'rpc', 'exec'"),
    ('path = "bin/p"\nexports = ["rpc.discover"]', "exports", "reserved"),
    ('exports = ["a"]', "path", "missing"),
    ('path = "bin/p"', "exports", "missing"),
    ('path = "bin/p"\nexports = ["a"]\nevents = "port.*"', "events", "array of strings"),
    ('path = "bin/p"\nexports = ["a"]\nevents = ["port..x"]', "events", "not a pattern"),
    ('path = "bin/p"\nexports = ["a"]\nevents = [">.x"]', "events", "only be the last token"),
    ('path = "bin/p"\nexports = ["a"]\nmode = "exec"\nevents = ["x"]', "events", "no connection to emit"),
    ('path = "bin/p"\nexports = ["a"]\nping_interval = -1', "ping_interval", ">= 0"),
    ('path = "bin/p"\nexports = ["a"]\nready = "yes"', "ready", "'started', 'notify'"),
    ('path = "bin/p"\nexports = ["a"]\nafter = "db"', "after", "array of strings"),
    ('path = "bin/p"\nexports = ["a"]\nlimits = 5', "limits", "a table like"),
    ('path = "bin/p"\nexports = ["a"]\nlimits = { memory = "256 MX" }', "limits.memory", 'a size like "256M"'),
    ('path = "bin/p"\nexports = ["a"]\nlimits = { memory = 256 }', "limits.memory", 'write "256M" for 256 MiB'),
    ('path = "bin/p"\nexports = ["a"]\nlimits = { memory = "1K" }', "limits.memory", "at least 1M"),
    ('path = "bin/p"\nexports = ["a"]\nlimits = { memory = true }', "limits.memory", "an integer or a size"),
    ('path = "bin/p"\nexports = ["a"]\nlimits = { open_files = 2 }', "limits.open_files", "at least 4"),
    ('path = "bin/p"\nexports = ["a"]\nlimits = { processes = -1 }', "limits.processes", ">= 0"),
    ('path = "bin/p"\nexports = ["a"]\nlimits = { cpu_seconds = 1.5 }', "limits.cpu_seconds", "integer"),
    ('path = "bin/p"\nexports = ["a"]\nlimits = { swap = 1 }', "limits.swap", "unknown limit"),
    ('path = "bin/p"\nexports = ["a"]\nuser = "no-such-user-here"', "user", "no such user"),
    ('path = "bin/p"\nexports = ["a"]\nuser = 4242', "user", "set `group` too"),
    ('path = "bin/p"\nexports = ["a"]\ngroup = "no-such-group-here"', "group", "no such group"),
    ('path = "bin/p"\nexports = ["a"]\nuser = ""', "user", "non-empty string"),
    ('path = "bin/p"\nexports = ["a"]\nno_new_privileges = "no"', "no_new_privileges", "true or false"),
    ('path = "bin/p"\nexports = ["a"]\nafter = ["ghost"]', "after", "no plugin named 'ghost'"),
    ('path = "bin/p"\nexports = ["a"]\nafter = ["p"]', "after", "circle: p -> p"),
])
def test_errors_name_plugin_and_key(tmp_path: Path, body: str, key: str, words: str) -> None:
    root = image(tmp_path, f"[plugin.p]\n{body}\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(root)
    message = str(info.value)
    assert ".plugin.toml" in message and "plugin 'p'" in message and f"key {key!r}" in message
    assert words in message
    assert info.value.key == key and info.value.plugin == "p"


@pytest.mark.parametrize("name", ["router", "rpc", "a.b", "sp ace"])
def test_bad_or_reserved_names(tmp_path: Path, name: str) -> None:
    root = image(tmp_path, f'[plugin."{name}"]\npath = "bin/p"\nexports = ["a"]\n')
    with pytest.raises(ManifestError, match="plugin"):
        load_manifest(root)


def test_dotdot_escape_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("#!/bin/sh\n")
    (tmp_path / "outside").chmod(0o755)
    root = image(tmp_path, '[plugin.p]\npath = "../outside"\nexports = ["a"]\n')
    with pytest.raises(ManifestError, match="outside the image root"):
        load_manifest(root)


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    root = image(tmp_path, '[plugin.p]\npath = "bin/link"\nexports = ["a"]\n')
    os.symlink("/bin/sh", root / "bin/link")
    with pytest.raises(ManifestError, match="outside the image root"):
        load_manifest(root)


def test_symlink_inside_root_is_followed(tmp_path: Path) -> None:
    root = image(tmp_path, '[plugin.p]\npath = "bin/link"\nexports = ["a"]\n')
    os.symlink("p", root / "bin/link")
    assert load_manifest(root).plugins["p"].path == (root / "bin/p").resolve()


def test_missing_and_not_executable(tmp_path: Path) -> None:
    root = image(tmp_path, '[plugin.p]\npath = "bin/nope"\nexports = ["a"]\n')
    with pytest.raises(ManifestError, match="not a file"):
        load_manifest(root)
    (root / "bin/p").chmod(0o644)
    (root / ".plugin.toml").write_text('[plugin.p]\npath = "bin/p"\nexports = ["a"]\n')
    with pytest.raises(ManifestError, match="not executable"):
        load_manifest(root)


def test_missing_manifest_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path)
    root = image(tmp_path, "[plugin.p\n")
    with pytest.raises(ManifestError, match="invalid TOML"):
        load_manifest(root)
    root = image(tmp_path, 'title = "x"\n')
    with pytest.raises(ManifestError, match="key 'title'"):
        load_manifest(root)


def test_operations_keys_and_their_defaults(tmp_path: Path) -> None:
    me, my_group = str(os.getuid()), grp.getgrgid(os.getgid()).gr_name  # switching to oneself needs no root
    root = image(tmp_path, f"""
[plugin.db]
path = "bin/p"
exports = ["a"]

[plugin.app]
path = "bin/p"
exports = ["a"]
ping_interval = 2
ping_timeout = 0.5
ready = "notify"
after = ["db"]
limits = {{ memory = "1.5G", open_files = 1024, processes = 64, cpu_seconds = 0 }}
user = "{me}"
group = "{my_group}"
no_new_privileges = false
""")
    plugins = load_manifest(root).plugins
    db, app = plugins["db"], plugins["app"]
    assert (db.ping_interval, db.ping_timeout, db.ready, db.after, db.user, db.group) == (10.0, 5.0, "started", (),
                                                                                        None, None)
    assert db.no_new_privileges and not db.limits and db.pings
    assert (app.ping_interval, app.ping_timeout, app.ready, app.after) == (2.0, 0.5, "notify", ("db",))
    assert app.limits == Limits(memory=3 << 29, open_files=1024, processes=64, cpu_seconds=0)
    assert (app.user, app.group, app.no_new_privileges) == (me, my_group, False)


@pytest.mark.parametrize(("text", "size"), [(0, 0), (1 << 20, 1 << 20), ("64M", 64 << 20), ("64MiB", 64 << 20),
                                            ("64mb", 64 << 20), (" 2g ", 2 << 30), ("1T", 1 << 40),
                                            ("1048576", 1 << 20), ("2048K", 2 << 20)])
def test_memory_sizes(tmp_path: Path, text: object, size: int) -> None:
    value = f'"{text}"' if isinstance(text, str) else text
    root = image(tmp_path, f'[plugin.p]\npath = "bin/p"\nexports = ["a"]\nlimits = {{ memory = {value} }}\n')
    assert load_manifest(root).plugins["p"].limits.memory == size


@pytest.mark.parametrize(("keys", "pings"), [("", True), ("ping_interval = 0", False), ("ping_timeout = 0", False),
                                             ('mode = "exec"', False)])
def test_pings_are_off_with_either_setting_at_zero_and_for_exec_plugins(tmp_path: Path, keys: str,
                                                                        pings: bool) -> None:
    root = image(tmp_path, f'[plugin.p]\npath = "bin/p"\nexports = ["a"]\n{keys}\n')
    assert load_manifest(root).plugins["p"].pings is pings


def test_a_cycle_in_after_names_its_path(tmp_path: Path) -> None:
    plugins = "".join(f'[plugin.{n}]\npath = "bin/p"\nexports = ["a"]\nafter = ["{d}"]\n'
                      for n, d in (("a", "b"), ("b", "c"), ("c", "a")))
    root = image(tmp_path, plugins + '[plugin.d]\npath = "bin/p"\nexports = ["a"]\nafter = ["a", "a"]\n')
    with pytest.raises(ManifestError, match="duplicate"):
        load_manifest(root)
    root = image(tmp_path, plugins)
    with pytest.raises(ManifestError) as info:
        load_manifest(root)
    assert info.value.key == "after" and "a -> b -> c -> a" in str(info.value)


def test_switching_user_or_group_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getegid", lambda: 1000)
    for key, value in (("user", '"root"'), ("group", '"root"')):
        root = image(tmp_path, f'[plugin.p]\npath = "bin/p"\nexports = ["a"]\n{key} = {value}\n')
        with pytest.raises(ManifestError) as info:
            load_manifest(root)
        assert info.value.key == key and "needs the router to run as root" in str(info.value)


# --- values a plugin process could not be given, refused while loading -----------------------


@pytest.mark.parametrize(("body", "key", "words"), [
    ("user = 4294967296\ngroup = 0", "user", "at most 4294967294"),
    ('user = "0"\ngroup = "99999999999999999999"', "group", "at most 4294967294"),
    ("limits = { cpu_seconds = 9223372036854775807 }", "limits.cpu_seconds", "at most"),
    ('limits = { memory = "99999999999T" }', "limits.memory", "at most"),
    ('env = { "" = "x" }', "env", "environment variable name"),
    ('env = { "A=B" = "x" }', "env", "environment variable name"),
    ('env = { "A\\u0000" = "x" }', "env", "environment variable name"),
    ('env = { A = "x\\u0000y" }', "env", "NUL"),
    ('args = ["a\\u0000b"]', "args", "NUL"),
    ('inherit_env = ["A=B"]', "inherit_env", "environment variable name"),
    ('user = "a\\u0000b"', "user", "no such user"),
])
def test_values_the_process_could_not_be_given_are_refused_naming_the_key(tmp_path: Path, body: str, key: str,
                                                                         words: str) -> None:
    root = image(tmp_path, f'[plugin.p]\npath = "bin/p"\nexports = ["a"]\n{body}\n')
    with pytest.raises(ManifestError) as info:
        load_manifest(root)
    assert info.value.key == key and info.value.plugin == "p"
    assert words in str(info.value)


def test_a_name_whose_socket_path_would_not_fit_is_refused_naming_the_limit(tmp_path: Path) -> None:
    sockets = tmp_path / "run"
    room = 107 - len(os.fsencode(sockets)) - len("/.99.sock")  # the longest name whose every socket path fits
    longest, too_long = "n" * room, "n" * (room + 1)
    body = 'path = "bin/p"\nexports = ["a"]\n'
    root = image(tmp_path, f"[plugin.{longest}]\n{body}")
    assert list(load_manifest(root, sockets=sockets).plugins) == [longest]
    root = image(tmp_path, f"[plugin.ok]\n{body}[plugin.{too_long}]\n{body}")
    with pytest.raises(ManifestError) as info:
        load_manifest(root, sockets=sockets)
    assert info.value.plugin == too_long and info.value.key == "name"
    assert "107" in str(info.value) and f"at most {room} characters" in str(info.value)
    assert list(load_manifest(root).plugins) == ["ok", too_long]  # no socket directory: no such bound


def test_an_executable_is_hashed_again_only_when_its_size_mtime_or_inode_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    root = image(tmp_path, '[plugin.p]\npath = "bin/p"\nexports = ["a"]\n')
    hashed: list[str] = []
    real = hashlib.file_digest

    def counting(f: Any, digest: str) -> Any:
        hashed.append(f.name)
        return real(f, digest)

    monkeypatch.setattr(hashlib, "file_digest", counting)
    first = load_manifest(root)
    again = load_manifest(root, previous=first)
    assert len(hashed) == 1 and again.plugins["p"] == first.plugins["p"]
    os.utime(root / "bin/p")  # touched, same content: hashed again, and still the same plugin
    touched = load_manifest(root, previous=again)
    assert len(hashed) == 2 and touched.plugins["p"] == first.plugins["p"]
    (root / "bin/p").write_text("#!/bin/sh\necho rebuilt\n")
    rebuilt = load_manifest(root, previous=touched)
    assert len(hashed) == 3 and rebuilt.plugins["p"] != first.plugins["p"]


@pytest.mark.parametrize(("value", "granted"), [
    (None, frozenset({"router.plugins", "router.stats", "router.health", "rpc.discover", "router.subscribe",
                      "router.unsubscribe", "rpc.cancel"})),
    ('"full"', ROUTER_METHODS),
    ('["router.logs"]', None),
])
def test_router_access_defaults_to_what_nats_reaches_plus_events(tmp_path: Path, value: str | None,
                                                                 granted: frozenset[str] | None) -> None:
    line = f"router_access = {value}\n" if value else ""
    root = image(tmp_path, f'[plugin.p]\npath = "bin/p"\nexports = ["a"]\n{line}')
    spec = load_manifest(root).plugins["p"]
    assert spec.router_access == (granted if granted is not None else PLUGIN_ACCESS | {"router.logs"})


@pytest.mark.parametrize(("value", "words"), [('"all"', "'full'"), ('["router.nope"]', "router.logs"),
                                              ("true", "'full'")])
def test_router_access_names_what_it_takes(tmp_path: Path, value: str, words: str) -> None:
    root = image(tmp_path, f'[plugin.p]\npath = "bin/p"\nexports = ["a"]\nrouter_access = {value}\n')
    with pytest.raises(ManifestError) as info:
        load_manifest(root)
    assert info.value.key == "router_access" and words in str(info.value)


def test_router_methods_are_the_builtins() -> None:
    from plugrpc.router.builtins import BUILTIN_DOCS

    assert ROUTER_METHODS == {f"router.{m}" for m in BUILTIN_DOCS} | {"rpc.discover", "rpc.cancel"}
