"""plugrpc as a user installs it: a wheel in a fresh virtual environment, outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugrpc.testing import wait_for_socket

from util import REPO

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, str]]:
    """(the venv, the wheel, the build's output): `pip wheel` of the checkout, installed in a new venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    # From a copy of the source files: the checkout's own build/ (stale or not) must not count.
    source = tmp / "source"
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           check=True, capture_output=True).stdout
    for name in files.decode().split("\0"):
        if name and (REPO / name).is_file() and not (REPO / name).is_symlink():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next((tmp / "dist").glob("plugrpc-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                             capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert install.returncode == 0, install.stdout + install.stderr
    yield venv, wheel, build.stdout + build.stderr


def outside(venv: Path) -> dict[str, str]:
    """An environment that knows nothing of the checkout or of the test's own virtual environment."""
    keep = ("HOME", "LANG", "TZ", "XDG_RUNTIME_DIR")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "PATH": f"{venv / 'bin'}:/usr/bin:/bin"}


def test_the_build_is_quiet_about_deprecations(installed: tuple[Path, Path, str]) -> None:
    _, _, output = installed
    assert "deprecat" not in output.lower() and "warning" not in output.lower(), output


def test_the_wheel_carries_the_bundled_image_executable(installed: tuple[Path, Path, str]) -> None:
    _, wheel, _ = installed
    with zipfile.ZipFile(wheel) as zf:
        modes = {info.filename: info.external_attr >> 16 for info in zf.infolist()}
    assert "plugrpc/example-image/.plugin.toml" in modes
    for plugin in ("plugins/ovs", "plugins/demo", "plugins/node-demo.js", "legacy/sysinfo.sh"):
        plugin = f"plugrpc/example-image/{plugin}"
        assert modes[plugin] & 0o111, f"{plugin} is not executable in the wheel"


def test_plugrpc_run_with_no_root_serves_the_bundled_image(installed: tuple[Path, Path, str], tmp_path: Path) -> None:
    venv, _, _ = installed
    env = outside(venv)
    sock = tmp_path / "r.sock"
    version = subprocess.run([str(venv / "bin" / "python"), "-m", "plugrpc", "--version"], capture_output=True,
                             text=True, env=env, cwd=tmp_path, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("plugrpc "), version.stderr
    router = subprocess.Popen([str(venv / "bin" / "plugrpc"), "run", "--socket", str(sock)], env=env, cwd=tmp_path,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_socket(sock, 30, lambda: router.poll() is None)
        for command in ([str(venv / "bin" / "plugrpc")], [str(venv / "bin" / "python"), "-m", "plugrpc"]):
            call = subprocess.run([*command, "call", "--socket", str(sock), "ovs.version"], capture_output=True,
                                  text=True, env=env, cwd=tmp_path, timeout=60)
            assert (call.returncode, call.stdout) == (0, '"1.0alpha"\n'), call.stderr
    finally:
        router.terminate()
        out, _ = router.communicate(timeout=30)
    assert router.returncode == 0, out.decode(errors="replace")
    assert b"is not a directory" not in out
