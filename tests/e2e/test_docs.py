"""The guides, tried as a new user would: their code runs as written and their samples are real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import plugrpc
from plugrpc.config import EXAMPLE_ROOT
from plugrpc.testing import RouterProcess

from util import REPO, wait_until

README = (REPO / "README.md").read_text()
AUTHORS = (REPO / "docs" / "authors.md").read_text()
OPERATORS = (REPO / "docs" / "operators.md").read_text()


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


@pytest.fixture
def default_router(plugrpc_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RouterProcess]:
    """`make run`: the bundled image on the default socket (here under a private XDG_RUNTIME_DIR)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(plugrpc_tmp))
    monkeypatch.delenv("PLUGRPC_ROUTER", raising=False)
    sock = plugrpc.config.default_socket()
    sock.parent.mkdir(mode=0o700)  # the router would make it; the log file of RouterProcess goes there too
    router = RouterProcess(EXAMPLE_ROOT, sock, ["--log-level", "info"])
    try:
        yield router.wait_ready()
    finally:
        router.stop()


def test_readme_client_snippets_run_as_written_against_make_run(default_router: RouterProcess) -> None:
    snippets = [code for code in blocks(README, "python") if "Client(" in code]
    assert len(snippets) == 2
    outputs = []
    for code in snippets:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        outputs.append(out.stdout)
    assert outputs[0] == "1.0alpha\n[1, 2, 3]\n-32000 Division by zero {'a': 1, 'b': 0}\n"
    assert outputs[1] == "1.0alpha\n"


def test_readme_says_how_make_run_takes_arguments() -> None:
    assert 'make run ARGS="' in README


def test_every_python_plugin_in_the_authors_guide_starts_and_serves(
        plugrpc_tmp: Path, plugrpc_plugin: Callable[..., plugrpc.BlockingClient]) -> None:
    plugins = [code for code in blocks(AUTHORS, "python") if "plugrpc.serve(" in code and "def test_" not in code]
    assert len(plugins) >= 3
    for n, code in enumerate(plugins):
        assert code.startswith("#!/usr/bin/env python3\n"), f"example {n} has no #! line:\n{code}"
        script = plugrpc_tmp / f"example{n}.py"
        script.write_text(code)
        script.chmod(0o755)
        client = plugrpc_plugin(script, ["x"], name=f"example{n}")
        row = wait_until(lambda client=client: [r for r in client.raw("router.plugins") if r["state"] == "running"],
                         f"example {n} to run")[0]
        assert row["restarts"] == 0 and row["last_exit"] is None, row
        described = [m["name"] for m in client.raw("rpc.discover")["methods"] if m["name"].startswith("example")]
        assert described == [f"example{n}.x"]


def test_the_operators_log_sample_is_what_the_router_writes(default_router: RouterProcess) -> None:
    with default_router.client() as c:
        assert c.raw("node.add", [1, 2]) == 3
        with pytest.raises(plugrpc.RpcError):
            c.raw("demo.fail")
    assert default_router.stop() == 0
    shape = re.compile(r"\d+(\.\d+)?")

    def normal(line: str, socket: str) -> str:
        """A log line without its time, with numbers (pids, durations) and the socket's path made alike."""
        return shape.sub("N", line[9:]).replace(shape.sub("N", socket), "SOCKET")

    written = {normal(line, str(default_router.socket)) for line in default_router.log().splitlines()}
    (sample,) = [code for code in blocks(OPERATORS, "text") if "router ready" in code]
    for line in sample.splitlines():
        assert normal(line, "/run/user/1000/plugrpc/router.sock") in written, (
            f"the sample's line {line!r} is not what the router writes")


def test_the_events_walkthrough_of_the_authors_guide_works_as_written(
        plugrpc_tmp: Path, plugrpc_router: Callable[..., RouterProcess]) -> None:
    """The guide's two plugins and manifest as an image; its subscriber script prints what it says, the
    progress script prints what it says, and the plugin that calls the other answers what it says."""
    section = AUTHORS.split("## Events, progress and calls to other plugins", 1)[1].split("\n## ", 1)[0]
    python = blocks(section, "python")
    root = plugrpc_tmp / "guide"
    for code in (c for c in python if "plugrpc.serve(" in c):
        path = root / code.splitlines()[1].removeprefix("# ")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
        path.chmod(0o755)
    (manifest,) = (b for b in blocks(section, "toml") if "events =" in b)
    (root / ".plugin.toml").write_text(manifest)
    router = plugrpc_router(root)
    env = {**os.environ, "PLUGRPC_ROUTER": str(router.socket)}
    (subscriber,) = (c for c in python if "subscribe(" in c)
    (progress,) = (c for c in python if "progress=print" in c)
    printer = subprocess.Popen([sys.executable, "-c", subscriber], env=env, stdout=subprocess.PIPE, text=True)
    try:
        with router.client() as c:
            wait_until(lambda: c.raw("router.stats")["events"]["subscriptions"] == 1, "the script to subscribe")
            call = re.search(r"\$ plugrpc call (ports\.add_port) '(.*)'", section)
            assert call is not None
            assert c.raw(call.group(1), json.loads(call.group(2))) == 1
            assert printer.stdout is not None
            assert f"`{printer.stdout.readline().strip()}`" in section  # "ports.port.added {'port': 'eth9'} 1"
            summary = re.search(r"\$ plugrpc call inventory.summary\n(.*)\n", section)
            assert summary is not None and c.raw("inventory.summary") == json.loads(summary.group(1))
        out = subprocess.run([sys.executable, "-c", progress], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "prints " + ", ".join(f"`{line}`" for line in out.stdout.splitlines()[:3]) in " ".join(section.split())
        assert f"`{out.stdout.splitlines()[3]}`" in section
    finally:
        printer.kill()
        printer.communicate()


def test_the_operators_manifest_table_lists_every_key() -> None:
    from plugrpc.manifest import _FIELDS

    section = OPERATORS.split("## The manifest", 1)[1].split("\n## ", 1)[0]
    listed = {key for cell in re.findall(r"^\| (`[^|]+`) \|", section, re.M) for key in re.findall(r"`(\w+)`", cell)}
    assert listed == set(_FIELDS)


def test_the_operators_manifest_example_loads(plugrpc_tmp: Path) -> None:
    import os

    from plugrpc.manifest import load_manifest

    section = OPERATORS.split("## The manifest", 1)[1]
    example = blocks(section, "toml")[0]
    if os.geteuid() != 0:
        example = example.replace('user = "nobody"', "")  # switching users needs root
    for path in re.findall(r'^path = "(/[^"]+)"', example, re.M):
        script = plugrpc_tmp / path.lstrip("/")
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text("#!/bin/sh\n")
        script.chmod(0o755)
    (plugrpc_tmp / ".plugin.toml").write_text(example)
    plugins = load_manifest(plugrpc_tmp).plugins
    assert set(plugins) == {"ovs", "tool", "api"}
    assert plugins["api"].after == ("tool",) and plugins["api"].limits.memory == 256 << 20
