"""`mode = "exec"`: core0 plugins run once per call, their output read as core0 read it.

Real processes throughout: a C plugin built with the system's compiler and POSIX sh plugins, all
in tests/legacy/ (core0.sh writes exactly what core0's Go library wrote, in each of its framings),
plus the example image's legacy plugin.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from plugrpc import codes
from plugrpc.config import EXAMPLE_ROOT
from plugrpc.errors import CallTimeout, MessageTooLarge, Overloaded, PluginUnavailable, RpcError
from plugrpc.manifest import PluginSpec
from plugrpc.process.execmode import EXEC_FAILED, MAX_ERROR_TEXT, MAX_OUTPUT, ExecPlugin

from util import LEGACY, WAIT, alive, until

SH_PLUGIN = LEGACY / "plugin.sh"
CORE0 = LEGACY / "core0.sh"
EXAMPLE_PLUGIN = EXAMPLE_ROOT / "legacy" / "sysinfo.sh"
"""Upper bound for anything the tests wait on; only reached when something hangs."""

Make = Callable[..., ExecPlugin]


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def c_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/legacy/plugin.c compiled for this machine."""
    cc = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None:
        pytest.skip("no C compiler (cc, gcc or clang) on PATH to build tests/legacy/plugin.c")
    out = tmp_path_factory.mktemp("legacy") / "plugin"
    subprocess.run([cc, "-O2", "-o", str(out), str(LEGACY / "plugin.c")], check=True, timeout=60)
    return out


@pytest.fixture(params=["c", "sh"])
def legacy(request: pytest.FixtureRequest) -> Path:
    """Either legacy plugin: both implement the core0 contract (version, echo, errors)."""
    if request.param == "c":
        return request.getfixturevalue("c_plugin")  # type: ignore[no-any-return]
    return SH_PLUGIN


@pytest.fixture
def root(short_dir: Path) -> Path:
    """The image root: the plugins' working directory, where the sh plugin leaves its traces."""
    return short_dir


@pytest.fixture
async def make(root: Path) -> AsyncIterator[Make]:
    """Build `ExecPlugin`s on real executables; every one is closed at teardown."""
    made: list[ExecPlugin] = []

    def build(path: Path, name: str = "legacy", max_output: int = MAX_OUTPUT, **spec: Any) -> ExecPlugin:
        plugin_spec = PluginSpec(name=name, path=path, exports=("version", "echo"), mode="exec",
                                 mode_given=True, **spec)
        plugin = ExecPlugin(plugin_spec, root, max_output=max_output)
        made.append(plugin)
        return plugin

    yield build
    for plugin in made:
        await asyncio.wait_for(plugin.aclose(), WAIT)


async def gone(*pids: int) -> bool:
    """Wait (bounded) until none of `pids` runs."""
    await until(lambda: not any(alive(p) for p in pids), f"pids {pids} to exit")
    return True


def read_pids(file: Path) -> list[int] | None:
    """The pids the sh plugin's `sleep`/`stubborn` commands write, once the line is complete."""
    try:
        text = file.read_text()
    except FileNotFoundError:
        return None
    return [int(p) for p in text.split()] if text.endswith("\n") else None


async def pids_of(file: Path) -> list[int]:
    """Wait (bounded) for the pids of a running `sleep`/`stubborn` call: the script's and its child's."""
    pids: list[int] = await until(lambda: read_pids(file), f"{file} to appear")
    return pids


async def counted(plugin: ExecPlugin, file: Path) -> list[int]:
    """`pids_of`, once `plugin` counts the execution in flight too: the script may write its pids
    before subprocess_exec has returned to call(), which counts it then."""
    pids = await pids_of(file)
    await until(lambda: plugin.inflight == 1, "the execution to be counted")
    return pids


# --- results -------------------------------------------------------------------------------


async def test_version(make: Make, legacy: Path) -> None:
    assert await make(legacy).call("version", {}) == "1.0alpha"


@pytest.mark.parametrize("params", [{"a": [1, 2.5, None, True]}, ["x", {"é": "ü ☃"}], "text", 0, False])
async def test_echo_round_trips_params(make: Make, legacy: Path, params: Any) -> None:
    assert await make(legacy).call("echo", params) == params


async def test_the_args_json_is_always_given(make: Make) -> None:
    # core0 ran `<path> <command> <args-json>`, `{}` when the caller sent no params.
    plugin = make(SH_PLUGIN)
    assert await plugin.call("argc", None) == 2
    assert await make(CORE0).call("argv", None) == ["argv", {}]
    assert await make(CORE0).call("argv", [1, "two"]) == ["argv", [1, "two"]]


# --- core0's own output, as its Go library wrote it ----------------------------------------

FRAMINGS = ["latest", "blank", "split"]


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_core0_result_in_every_framing(make: Make, framing: str) -> None:
    plugin = make(CORE0, env={"FRAMING": framing})
    assert await plugin.call("version", {}) == "1.0alpha"
    assert await plugin.call("echo", {"name": "br0", "ports": [1, 2]}) == {"name": "br0", "ports": [1, 2]}


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_core0_error_is_the_framed_text(make: Make, framing: str) -> None:
    plugin = make(CORE0, name="ovs", env={"FRAMING": framing})
    with pytest.raises(RpcError) as info:
        await plugin.call("bridge", {"name": "br0"})
    assert (info.value.code, info.value.message, info.value.data) == (
        EXEC_FAILED, "bridge br0 does not exist", {"plugin": "ovs", "exit": 1})
    with pytest.raises(RpcError, match="^unknown command: nope "):
        await plugin.call("nope", {})


async def test_core0_levels_are_logged_at_matching_levels(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="plugrpc.plugin")
    plugin = make(CORE0, name="lv")
    assert await plugin.call("levels", {}) == {"done": True}
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "plugrpc.plugin"]
    assert logged == [
        (logging.INFO, "a plain line"),
        (logging.WARNING, "a warning"),
        (logging.ERROR, "an ops error"),
        (logging.DEBUG, "a debug line"),
        (logging.INFO, "a public message"),
        (logging.INFO, "of two lines"),
    ]
    assert [line.text for line in plugin.output.tail(10)][-2:] == ["a public message", "of two lines"]


async def test_core0_result_framed_on_stderr(make: Make) -> None:
    # core0 read stderr with the same parser as stdout (at level 2 for plain lines).
    assert await make(CORE0).call("stderr-frame", {}) == "from stderr"


async def test_failure_without_a_frame_is_the_end_of_stderr(make: Make) -> None:
    with pytest.raises(RpcError) as info:
        await make(CORE0).call("crash", {})
    assert (info.value.message, info.value.data) == ("lost my way", {"plugin": "legacy", "exit": 2})


async def test_failure_with_nothing_said_names_the_exit(make: Make) -> None:
    with pytest.raises(RpcError) as info:
        await make(CORE0).call("silent-crash", {})
    assert (info.value.code, info.value.message, info.value.data) == (
        EXEC_FAILED, "ended with exit code 4", {"plugin": "legacy", "exit": 4})


async def test_queue_runs_calls_one_at_a_time_in_order(make: Make, root: Path) -> None:
    plugin = make(SH_PLUGIN, max_inflight=1, queue=True)
    calls = [asyncio.create_task(plugin.call("count", None)) for _ in range(4)]
    assert await asyncio.wait_for(asyncio.gather(*calls), WAIT) == ["counted"] * 4
    assert [int(n) for n in (root / "counts").read_text().split()] == [1, 1, 1, 1]


async def test_manifest_args_come_before_the_command(make: Make) -> None:
    # spec.args = ["echo"] makes every call `plugin.sh echo <method> ...`: the method is the result.
    assert await make(SH_PLUGIN, args=("echo",)).call('"a method"', None) == "a method"


async def test_no_block_is_a_null_result(make: Make) -> None:
    assert await make(SH_PLUGIN).call("nothing", None) is None


async def test_runs_in_image_root_with_explicit_env(make: Make, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGRPC_TEST_SECRET", "runtime secret")
    context = await make(SH_PLUGIN, name="ctx").call("context", None)
    assert context == {"cwd": str(root), "plugin": "ctx", "listen": "", "secret": ""}


async def test_example_image_legacy_plugin(make: Make) -> None:
    plugin = make(EXAMPLE_PLUGIN, name="sysinfo")
    assert await plugin.call("hostname", None) == os.uname().nodename
    assert await plugin.call("echo", {"a": [1]}) == {"a": [1]}
    with pytest.raises(RpcError, match="unknown command: uptime"):
        await plugin.call("uptime", None)


# --- logs ----------------------------------------------------------------------------------


async def test_stdout_outside_the_block_is_logged(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plugrpc.plugin")
    assert await make(SH_PLUGIN, name="chatty").call("version", None) == "1.0alpha"
    logged = [(r.levelno, r.plugin, r.getMessage()) for r in caplog.records if r.name == "plugrpc.plugin"]  # type: ignore[attr-defined]
    assert logged == [
        (logging.INFO, "chatty", "before the result"),
        (logging.INFO, "chatty", "after the result"),
    ]


async def test_c_plugin_log_line(make: Make, c_plugin: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plugrpc.plugin")
    await make(c_plugin, name="cplug").call("version", None)
    [record] = [r for r in caplog.records if r.name == "plugrpc.plugin"]
    assert (record.levelno, record.plugin, record.getMessage()) == (  # type: ignore[attr-defined]
        logging.INFO,
        "cplug",
        "legacy plugin: version requested",
    )


async def test_stderr_is_logged_as_warnings(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plugrpc.plugin")
    with pytest.raises(RpcError):
        await make(SH_PLUGIN).call("fail", None)
    warnings = [(r.plugin, r.getMessage()) for r in caplog.records  # type: ignore[attr-defined]
                if r.name == "plugrpc.plugin" and r.levelno == logging.WARNING]
    assert warnings == [("legacy", "warming up"), ("legacy", "disk on fire")]


# --- failures ------------------------------------------------------------------------------


async def test_unknown_command(make: Make, legacy: Path) -> None:
    with pytest.raises(RpcError) as info:
        await make(legacy, name="old").call("bogus", {})
    assert (info.value.code, info.value.message, info.value.data) == (
        EXEC_FAILED,
        "unknown command: bogus",
        {"plugin": "old", "exit": 1},
    )


async def test_failure_message_is_the_stderr_text(make: Make) -> None:
    with pytest.raises(RpcError) as info:
        await make(SH_PLUGIN).call("fail", None)
    assert (info.value.code, info.value.message, info.value.data) == (
        EXEC_FAILED,
        "warming up\ndisk on fire",
        {"plugin": "legacy", "exit": 3},
    )


async def test_failure_message_keeps_the_end_of_long_stderr(make: Make) -> None:
    with pytest.raises(RpcError) as info:
        await make(SH_PLUGIN).call("longfail", None)
    assert len(info.value.message) == 3 + MAX_ERROR_TEXT
    assert info.value.message.startswith("...")
    assert info.value.message.endswith("the actual error")


async def test_go_style_failure_uses_the_framed_error(make: Make) -> None:
    # core0's Go plugin.Plugin wrote `20:::\n"<error>"\n:::` and exited 1.
    with pytest.raises(RpcError) as info:
        await make(SH_PLUGIN).call("gofail", None)
    assert (info.value.code, info.value.message) == (EXEC_FAILED, "bad things happened")


@pytest.mark.parametrize("command", ["garbage", "unterminated"])
async def test_broken_block_is_plugin_unavailable(make: Make, command: str) -> None:
    with pytest.raises(PluginUnavailable) as info:
        await make(SH_PLUGIN, name="broken").call(command, None)
    assert info.value.code == codes.PLUGIN_UNAVAILABLE
    assert info.value.data == {"plugin": "broken"}


async def test_not_executable_is_plugin_unavailable(make: Make, root: Path) -> None:
    path = root / "not-executable"
    path.write_text("#!/bin/sh\n")
    with pytest.raises(PluginUnavailable, match="cannot run exec plugin"):
        await make(path).call("version", None)


async def test_params_too_large_for_argv(make: Make) -> None:
    # Linux caps one argument at 128 KiB (MAX_ARG_STRLEN): core0's calling convention cannot carry more.
    with pytest.raises(MessageTooLarge) as info:
        await make(SH_PLUGIN).call("echo", "x" * 300_000)
    assert info.value.data == {"plugin": "legacy"}


async def test_output_is_bounded(make: Make) -> None:
    plugin = make(SH_PLUGIN, max_output=256 * 1024, timeout=WAIT)
    with pytest.raises(MessageTooLarge) as info:
        await plugin.call("flood", None)
    assert info.value.data == {"plugin": "legacy"}
    assert plugin.inflight == 0


# --- process lifetime ----------------------------------------------------------------------


async def test_timeout_kills_the_process_group(make: Make, root: Path) -> None:
    plugin = make(SH_PLUGIN, name="slow", timeout=1.0)
    with pytest.raises(CallTimeout) as info:
        await plugin.call("sleep", "t")
    assert (info.value.code, info.value.data) == (codes.CALL_TIMEOUT, {"plugin": "slow"})
    assert await gone(*await pids_of(root / "t.pids"))
    assert plugin.inflight == 0


async def test_cancellation_kills_the_process_group(make: Make, root: Path) -> None:
    plugin = make(SH_PLUGIN)
    task = asyncio.create_task(plugin.call("sleep", "c"))
    pids = await counted(plugin, root / "c.pids")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)
    # The script itself is reaped before call() returns; its child got SIGKILL with the group,
    # but on a busy machine may take a moment to die, so it is waited for (bounded).
    assert not alive(pids[0]), "call() returned before its process was killed and reaped"
    assert await gone(*pids)
    assert plugin.inflight == 0


async def test_children_left_behind_are_killed(make: Make, root: Path) -> None:
    # The child keeps stdout open: without the group kill the call would wait for it.
    assert await asyncio.wait_for(make(SH_PLUGIN).call("daemon", None), WAIT) == "left a child"
    assert await gone(int((root / "daemon.pid").read_text()))


async def test_concurrent_executions_are_bounded(make: Make, root: Path) -> None:
    plugin = make(SH_PLUGIN, max_inflight=2)
    results = await asyncio.wait_for(asyncio.gather(*(plugin.call("count", None) for _ in range(6))), WAIT)
    assert results == ["counted"] * 6
    counts = [int(n) for n in (root / "counts").read_text().split()]
    assert len(counts) == 6
    assert max(counts) == 2
    assert plugin.status()["inflight"] == 0


async def test_too_many_pending_calls_are_overloaded(make: Make, root: Path) -> None:
    plugin = make(SH_PLUGIN, max_inflight=1, max_pending=2)
    running = asyncio.create_task(plugin.call("sleep", "o1"))
    queued = asyncio.create_task(plugin.call("sleep", "o2"))
    pids = await counted(plugin, root / "o1.pids")
    with pytest.raises(Overloaded) as info:
        await plugin.call("version", None)
    assert info.value.data == {"plugin": "legacy"}
    assert (plugin.inflight, plugin.status()["pending"]) == (1, 2)
    assert not (root / "o2.pids").exists()
    for task in (running, queued):
        task.cancel()
    await asyncio.wait([running, queued], timeout=WAIT)
    assert await gone(*pids)


async def test_aclose_terminates_running_executions(make: Make, root: Path) -> None:
    plugin = make(SH_PLUGIN)
    task = asyncio.create_task(plugin.call("sleep", "a"))
    pids = await pids_of(root / "a.pids")
    await asyncio.wait_for(plugin.aclose(), WAIT)
    assert not alive(pids[0])
    with pytest.raises(PluginUnavailable):
        await asyncio.wait_for(task, WAIT)
    assert await gone(*pids)
    assert plugin.status()["state"] == "stopped"
    with pytest.raises(PluginUnavailable):
        await plugin.call("version", None)


async def test_aclose_kills_after_grace(make: Make, root: Path) -> None:
    plugin = make(SH_PLUGIN, grace=0.3)
    task = asyncio.create_task(plugin.call("stubborn", "s"))
    pids = await pids_of(root / "s.pids")
    await asyncio.wait_for(plugin.aclose(), WAIT)  # SIGTERM is ignored: only SIGKILL ends it
    assert not alive(pids[0])
    with pytest.raises(PluginUnavailable):
        await asyncio.wait_for(task, WAIT)
    assert await gone(*pids)


async def test_status_counts_calls_and_errors(make: Make) -> None:
    plugin = make(SH_PLUGIN, name="counted")
    await plugin.call("version", None)
    with pytest.raises(RpcError):
        await plugin.call("bogus", None)
    assert plugin.status() == {
        "name": "counted",
        "mode": "exec",
        "mode_detected": False,
        "state": "ready",
        "inflight": 0,
        "pending": 0,
        "calls": 2,
        "errors": 1,
    }


# --- uvloop --------------------------------------------------------------------------------


def test_contract_holds_on_uvloop(root: Path) -> None:
    """The runtime runs on uvloop by default; its process transport differs from asyncio's."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        plugin = ExecPlugin(PluginSpec(name="uv", path=SH_PLUGIN, exports=(), mode="exec", timeout=1.0), root)
        try:
            assert await plugin.call("version", None) == "1.0alpha"
            assert await plugin.call("echo", {"é": [1]}) == {"é": [1]}
            with pytest.raises(RpcError, match="unknown command: bogus"):
                await plugin.call("bogus", None)
            with pytest.raises(CallTimeout):
                await plugin.call("sleep", "u1")
            assert await gone(*await pids_of(root / "u1.pids"))
            task = asyncio.create_task(plugin.call("sleep", "u2"))
            pids = await pids_of(root / "u2.pids")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, WAIT)
            assert await gone(*pids)
            assert await plugin.call("daemon", None) == "left a child"
            assert await gone(int((root / "daemon.pid").read_text()))
        finally:
            await asyncio.wait_for(plugin.aclose(), WAIT)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
