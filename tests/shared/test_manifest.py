"""manifest: core0 manifests load unchanged; every mistake names the file, plugin and key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plugrpc.errors import ManifestError
from plugrpc.manifest import load_manifest


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
