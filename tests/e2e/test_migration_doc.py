"""docs/migration-core0.md, followed as a core0 user would: the image as it is, then one import path changed.

The core0 binary is the seed's example built with a stand-in of core0's library
(tests/legacy/core0lib); the manifest, the commands and the diff are the guide's own, read from it.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson

from plugrpc.testing import RouterProcess

from util import GO_MODULE, LEGACY, REPO, go_build, go_command, go_env

GUIDE = (REPO / "docs" / "migration-core0.md").read_text()
BINARY = "var/lib/corex/plugins/ovs-plugin"


def cli(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "plugrpc", *args, "--socket", str(router.socket)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def call(router: RouterProcess, method: str) -> object:
    done = subprocess.run([sys.executable, "-m", "plugrpc", "call", "--socket", str(router.socket), method],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def test_the_guide_as_a_core0_user_follows_it(plugrpc_tmp: Path, plugrpc_router: Callable[..., RouterProcess]) -> None:
    # Step 1: the image as it is, its manifest the guide's.
    image = plugrpc_tmp / "image"
    manifest = re.search(r"```toml\n(.*?)```", GUIDE, re.S)
    assert manifest is not None and "mode" not in manifest[1]
    (image / BINARY).parent.mkdir(parents=True)
    (image / ".plugin.toml").write_text(manifest[1])
    go_build(LEGACY / "seed", image / BINARY)
    router = plugrpc_router(image)
    assert call(router, "ovs.version") == "1.0alpha"
    assert 'answered "missing command" when started as a server' in router.log()
    assert "exec (core0)" in cli(router, "status").stdout

    # Step 2: the guide's diff applied to the seed's source, then its commands, as written.
    source = shutil.copytree(LEGACY / "seed", plugrpc_tmp / "src")
    diff = re.search(r"```diff\n(.*?)```", GUIDE, re.S)
    assert diff is not None
    removed = [line[1:].strip() for line in diff[1].splitlines() if line.startswith("-")]
    added = [line[1:].strip() for line in diff[1].splitlines() if line.startswith("+")]
    main = (source / "main.go").read_text()
    assert len(removed) == len(added) == 1 and main.count(removed[0]) == 1
    (source / "main.go").write_text(main.replace(removed[0], added[0]))
    console = re.search(r"```console\n(\$ go mod edit.*?)```", GUIDE, re.S)
    assert console is not None
    for line in console[1].splitlines():
        words = shlex.split(line.removeprefix("$ ").partition("#")[0])
        words = [w.replace("/path/to/plugrpc/go", str(GO_MODULE)).replace("/srv/image", str(image)) for w in words]
        if words[0] == "go":
            done = subprocess.run([go_command(), *words[1:]], cwd=source, env=go_env(), capture_output=True,
                                  text=True, timeout=180, stdin=subprocess.DEVNULL)
        else:
            done = subprocess.run([sys.executable, "-m", "plugrpc", *words[1:], "--socket", str(router.socket)],
                                  capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"{line}: {done.stdout}{done.stderr}"
    assert "require github.com/zero-os" not in (source / "go.mod").read_text()  # tidy dropped it
    assert call(router, "ovs.version") == "1.0alpha"
    status = cli(router, "status", "--json")
    [row] = orjson.loads(status.stdout)
    assert (row["mode"], row["mode_detected"], row["state"]) == ("rpc", False, "running")
