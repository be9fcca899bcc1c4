"""`plugrpc.testing`: the authors' fixtures start real images and scripts and clean up after."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import plugrpc
from plugrpc.config import EXAMPLE_ROOT
from plugrpc.testing import RouterProcess

from plugins.sources import OVS
from util import alive, wait_until


def write_script(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source).lstrip())
    path.chmod(0o755)
    return path


def test_plugrpc_client_runs_an_image(plugrpc_client: Callable[..., plugrpc.BlockingClient]) -> None:
    client = plugrpc_client(EXAMPLE_ROOT)
    assert "open" in repr(client)  # handed back connected
    assert client.raw("ovs.version") == "1.0alpha"
    assert client.raw("demo.greet", {"name": "Ada"}) == "Hello, Ada!"


def test_plugrpc_plugin_runs_a_script_where_it_lies(
    plugrpc_tmp: Path, plugrpc_plugin: Callable[..., plugrpc.BlockingClient]
) -> None:
    # The script imports a module next to it: it runs in place, not copied into an image.
    write_script(plugrpc_tmp / "src" / "helper.py", "ANSWER = 42\n")
    script = write_script(plugrpc_tmp / "src" / "tool.py", """
        #!/usr/bin/env python3
        import os
        import plugrpc
        from helper import ANSWER

        plugrpc.serve({"answer": lambda: ANSWER, "env": lambda name: os.environ.get(name), "hidden": lambda: 1})
    """)
    client = plugrpc_plugin(script, ["answer", "env"], env={"COLOUR": "red"})
    assert client.raw("tool.answer") == 42  # named after the file
    assert client.raw("tool.env", ["COLOUR"]) == "red"  # further manifest keys apply
    with pytest.raises(plugrpc.RpcError) as info:
        client.raw("tool.hidden")
    assert info.value.code == -32601  # only exports are reachable, as in an image

    other = plugrpc_plugin(script, ["answer"], name="other")
    assert other.raw("other.answer") == 42


def test_plugrpc_plugin_refuses_what_cannot_run(
    plugrpc_tmp: Path, plugrpc_plugin: Callable[..., plugrpc.BlockingClient]
) -> None:
    script = plugrpc_tmp / "plain.py"
    script.write_text(OVS)
    with pytest.raises(ValueError, match="chmod"):
        plugrpc_plugin(script, ["version"])
    script.chmod(0o755)
    with pytest.raises(ValueError, match="name="):
        plugrpc_plugin(script, ["version"], name="no.dots")
    with pytest.raises(ValueError, match="not an executable file"):
        plugrpc_plugin(plugrpc_tmp / "missing.py", ["version"])


async def test_aclient_for_async_tests(
    plugrpc_image: Callable[..., Path], plugrpc_router: Callable[..., RouterProcess]
) -> None:
    router = plugrpc_router(plugrpc_image({"ovs": ("ovs.py", OVS, ["version"])}))
    async with router.aclient() as c:
        assert await asyncio.gather(*(c.raw("ovs.version") for _ in range(20))) == ["1.0alpha"] * 20


def test_teardown_leaves_nothing_behind(plugrpc_tmp: Path) -> None:
    """An author's test session, run for real; afterwards its router and plugin are gone."""
    report = plugrpc_tmp / "report.json"
    script = write_script(plugrpc_tmp / "ppid.py", """
        #!/usr/bin/env python3
        import os
        import plugrpc

        plugrpc.serve({"pids": lambda: [os.getpid(), os.getppid()]})
    """)
    write_script(plugrpc_tmp / "authors" / "test_it.py", f"""
        import json

        def test_it(plugrpc_plugin, plugrpc_tmp):
            client = plugrpc_plugin({str(script)!r}, ["pids"])
            plugin, router = client.raw("ppid.pids")
            with open({str(report)!r}, "w") as f:
                json.dump({{"plugin": plugin, "router": router, "tmp": str(plugrpc_tmp)}}, f)
    """)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "authors"],
                         cwd=plugrpc_tmp, capture_output=True, text=True, timeout=50, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    seen = json.loads(report.read_text())
    wait_until(lambda: not any(alive(pid) for pid in (seen["plugin"], seen["router"])),
               "the session's router and plugin to exit")
    assert not Path(seen["tmp"]).exists()


@pytest.mark.parametrize("how", ["-p", "pytest_plugins", "entry point"])
def test_the_fixtures_load_however_a_project_asks_for_them(plugrpc_tmp: Path, how: str) -> None:
    """Installed, the plugin loads by itself; naming it again (`-p plugrpc.testing`, `pytest_plugins`)
    must not be refused as a plugin "already registered under a different name"."""
    (plugrpc_tmp / "test_it.py").write_text(textwrap.dedent("""
        def test_it(plugrpc_client):
            assert plugrpc_client is not None
    """))
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_it.py"]
    if how == "-p":
        args[4:4] = ["-p", "plugrpc.testing"]
    elif how == "pytest_plugins":
        (plugrpc_tmp / "conftest.py").write_text('pytest_plugins = ["plugrpc.testing"]\n')
    out = subprocess.run(args, cwd=plugrpc_tmp, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
