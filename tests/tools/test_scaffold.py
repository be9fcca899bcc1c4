"""`plugrpc new`: the skeleton it writes runs, and its generated test passes as generated."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from plugrpc.errors import ManifestError
from plugrpc.manifest import load_manifest
from plugrpc.tools.scaffold import new_plugin

from plugins.sources import OVS


def run(*args: str, cwd: Path | None = None, timeout: float = 50) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def pytest_on(path: Path) -> subprocess.CompletedProcess[str]:
    """Run pytest on `path` as its author would: in a fresh process, with no config of ours."""
    return run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(path), cwd=path)


def test_new_image_passes_its_generated_test(plugrpc_tmp: Path) -> None:
    out = run("-m", "plugrpc", "new", "hello", "--dir", "img", cwd=plugrpc_tmp)
    assert out.returncode == 0, out.stderr
    root = plugrpc_tmp / "img"
    assert out.stdout.splitlines()[:3] == [
        f"wrote {Path('img/plugins/hello.py')}", f"wrote {Path('img/.plugin.toml')}",
        f"wrote {Path('img/tests/test_hello.py')}",
    ]
    assert "plugrpc call hello.hello" in out.stdout
    manifest = load_manifest(root)  # as strict as `plugrpc run`: path exists, is executable
    assert list(manifest.plugins) == ["hello"] and manifest.plugins["hello"].exports == ("hello",)
    assert os.access(root / "plugins" / "hello.py", os.X_OK)

    result = pytest_on(root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_new_in_an_existing_image_appends_and_keeps_the_rest(
    plugrpc_image: Callable[..., Path], plugrpc_tmp: Path
) -> None:
    root = plugrpc_image({"ovs": ("plugins/ovs.py", OVS, ["version"])})
    manifest = root / ".plugin.toml"
    before = "# the ovs plugin of core0's seed\n" + manifest.read_text().rstrip("\n")  # no final newline
    manifest.write_text(before)

    made = new_plugin("my-tool", root)
    assert (made.plugin, made.test) == (root / "plugins" / "my-tool.py", root / "tests" / "test_my_tool.py")
    assert not made.manifest_created
    text = manifest.read_text()
    assert text.startswith(before + "\n\n[plugin.my-tool]\n")
    assert list(load_manifest(root).plugins) == ["ovs", "my-tool"]

    result = pytest_on(root)  # starts the whole image, ovs included
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


@pytest.mark.parametrize(("name", "why"), [
    ("bad.name", "letters, digits"),
    ("", "letters, digits"),
    ("router", "reserved"),
    ("rpc", "reserved"),
])
def test_refuses_names_the_manifest_would_refuse(plugrpc_tmp: Path, name: str, why: str) -> None:
    with pytest.raises(ManifestError, match=why):
        new_plugin(name, plugrpc_tmp)
    assert list(plugrpc_tmp.iterdir()) == []


def test_refuses_a_name_already_declared(plugrpc_tmp: Path) -> None:
    new_plugin("hello", plugrpc_tmp)
    (plugrpc_tmp / "plugins" / "hello.py").unlink()
    (plugrpc_tmp / "tests" / "test_hello.py").unlink()
    before = (plugrpc_tmp / ".plugin.toml").read_text()
    with pytest.raises(ManifestError, match="plugin 'hello': already declared"):
        new_plugin("hello", plugrpc_tmp)
    assert (plugrpc_tmp / ".plugin.toml").read_text() == before
    assert not (plugrpc_tmp / "plugins" / "hello.py").exists()


def test_never_overwrites_a_file(plugrpc_tmp: Path) -> None:
    (plugrpc_tmp / "tests").mkdir()
    (plugrpc_tmp / "tests" / "test_hello.py").write_text("mine\n")
    with pytest.raises(FileExistsError, match="test_hello.py"):
        new_plugin("hello", plugrpc_tmp)
    assert (plugrpc_tmp / "tests" / "test_hello.py").read_text() == "mine\n"
    assert sorted(p.name for p in plugrpc_tmp.iterdir()) == ["tests"]


def test_refuses_a_broken_manifest(plugrpc_tmp: Path) -> None:
    (plugrpc_tmp / ".plugin.toml").write_text("[plugin.x\n")
    with pytest.raises(ManifestError, match="invalid TOML"):
        new_plugin("hello", plugrpc_tmp)
    assert sorted(p.name for p in plugrpc_tmp.iterdir()) == [".plugin.toml"]


def test_cli_reports_refusals_in_one_line(plugrpc_tmp: Path) -> None:
    assert run("-m", "plugrpc", "new", "hello", "--dir", str(plugrpc_tmp)).returncode == 0
    out = run("-m", "plugrpc", "new", "hello", "--dir", str(plugrpc_tmp))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "already" in out.stderr and "Traceback" not in out.stderr
    (plugrpc_tmp / ".plugin.toml").unlink()
    out = run("-m", "plugrpc", "new", "hello", "--dir", str(plugrpc_tmp))
    assert out.returncode == 2 and "hello.py already exists" in out.stderr


def test_generated_manifest_entry_is_plain_toml(plugrpc_tmp: Path) -> None:
    new_plugin("hello", plugrpc_tmp)
    doc = tomllib.loads((plugrpc_tmp / ".plugin.toml").read_text())
    assert doc == {"plugin": {"hello": {"path": "/plugins/hello.py", "exports": ["hello"]}}}
