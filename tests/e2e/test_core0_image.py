"""A core0 image runs unchanged: its manifest as core0 read it, its binaries detected and run once per call.

Through a real router: core0's manifest entries (only `path` and `exports`, and `queue`), a
binary that writes what core0's Go library wrote (tests/legacy/core0.sh), and no `mode` anywhere.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import plugrpc
from plugrpc.errors import ManifestError
from plugrpc.manifest import load_manifest
from plugrpc.testing import RouterProcess
from plugrpc.tools.status import render

from util import GO_MODULE, LEGACY, go_build, until

CORE0 = LEGACY / "core0.sh"
BINARY = "/var/lib/corex/plugins/ovs-plugin"
Router = Callable[..., RouterProcess]


def core0_image(root: Path, entry: str = "", binary: Path = CORE0) -> Path:
    """An image with core0's ovs plugin at core0's path, declared as core0 declared it, plus `entry`."""
    path = root / BINARY.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(binary, path)
    (root / ".plugin.toml").write_text(f'[plugin.ovs]\npath = "{BINARY}"\nexports = ["version", "bridge", "echo", '
                                       f'"record"]\n{entry}')
    return root


async def test_core0_binary_without_mode_is_detected(plugrpc_tmp: Path, plugrpc_router: Router) -> None:
    router = plugrpc_router(core0_image(plugrpc_tmp / "image"))
    async with router.aclient() as c:
        # Sent at once, while the binary is being found out: answered, none failed.
        assert await asyncio.gather(*(c.raw("ovs.version", {}) for _ in range(20))) == ["1.0alpha"] * 20
        with pytest.raises(plugrpc.RpcError) as info:
            await c.raw("ovs.bridge", {"name": "br0"})
        assert (info.value.code, info.value.message, info.value.data) == (
            -32000, "bridge br0 does not exist", {"plugin": "ovs", "exit": 1})
        [row] = await c.raw("router.plugins")
    assert (row["mode"], row["mode_detected"], row["state"], row["calls"]) == ("exec", True, "ready", 21)
    assert "exec (core0)" in render([row])
    assert router.log().count('answered "missing command" when started as a server') == 1
    assert router.stop() == 0


async def test_lazy_core0_binary_is_detected_on_its_first_call(plugrpc_tmp: Path, plugrpc_router: Router) -> None:
    router = plugrpc_router(core0_image(plugrpc_tmp / "image", "lazy = true\n"))
    async with router.aclient() as c:
        assert [row["mode"] for row in await c.raw("router.plugins")] == ["rpc"]
        assert await c.raw("ovs.echo", {"a": 1}) == {"a": 1}
        assert [row["mode"] for row in await c.raw("router.plugins")] == ["exec"]


async def test_explicit_mode_wins(plugrpc_tmp: Path, plugrpc_router: Router) -> None:
    router = plugrpc_router(core0_image(plugrpc_tmp / "image", 'mode = "rpc"\ntimeout = 5\n'))
    async with router.aclient() as c:
        with pytest.raises(plugrpc.RpcError) as info:
            await c.raw("ovs.version", {})
        assert info.value.code in (-32001, -32002)
        [row] = await c.raw("router.plugins")
        assert row["mode"] == "rpc"
        assert row["restarts"] >= 1
    assert 'declare it with mode = "exec"' in router.log()
    assert "answered \"missing command\"" not in router.log()


@pytest.mark.parametrize("mode", ["", 'mode = "exec"\n'])
async def test_queue_runs_calls_one_at_a_time_in_order(plugrpc_tmp: Path, plugrpc_router: Router, mode: str) -> None:
    root = core0_image(plugrpc_tmp / "image", "queue = true\n" + mode)
    router = plugrpc_router(root)
    async with router.aclient() as c:
        await c.raw("ovs.version", {})  # detected (or declared) before the ordered calls start
        assert await asyncio.gather(*(c.raw("ovs.record", [i]) for i in range(8))) == [[i] for i in range(8)]
    assert (root / "order").read_text().split() == [f"[{i}]" for i in range(8)]
    assert set((root / "overlap").read_text().split()) == {"1"}


async def test_queue_past_max_pending_is_overloaded(plugrpc_tmp: Path, plugrpc_router: Router) -> None:
    router = plugrpc_router(core0_image(plugrpc_tmp / "image", 'queue = true\nmode = "exec"\nmax_pending = 3\n'))
    async with router.aclient() as c:
        results = await asyncio.gather(*(c.raw("ovs.record", [i]) for i in range(6)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, plugrpc.RpcError)]
    assert [r for r in results if not isinstance(r, Exception)] == [[0], [1], [2]]
    assert len(refused) == 3
    assert {(r.code, r.data["plugin"]) for r in refused} == {(-32003, "ovs")}


def test_queue_with_a_conflicting_bound_is_refused(plugrpc_tmp: Path) -> None:
    root = core0_image(plugrpc_tmp / "image", "queue = true\nmax_inflight = 4\n")
    with pytest.raises(ManifestError, match="queue = true runs calls one at a time") as info:
        load_manifest(root)
    assert info.value.key == "max_inflight"
    spec = load_manifest(core0_image(plugrpc_tmp / "image", "queue = true\n")).plugins["ovs"]
    assert (spec.queue, spec.max_inflight, spec.pool_size, spec.mode_given) == (True, 1, 1, False)


def test_unknown_key_suggests_the_nearest(plugrpc_tmp: Path) -> None:
    with pytest.raises(ManifestError, match="did you mean 'queue'"):
        load_manifest(core0_image(plugrpc_tmp / "image", "queu = true\n"))


# --- the seed's own example, in Go -------------------------------------------------------------

SEED = LEGACY / "seed"
CORE0_IMPORT = '"github.com/zero-os/0-core/base/plugin"'
PLUGRPC_IMPORT = '"github.com/plugrpc/plugrpc/go/plugin"'


@pytest.fixture(scope="module")
def seed_binaries(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The seed's ovs plugin built twice: with core0's library (a stand-in written from its behaviour,
    tests/legacy/core0lib), and with its import path changed to plugrpc's Go package and nothing else."""
    out = tmp_path_factory.mktemp("seed")
    core0 = go_build(SEED, out / "core0" / "ovs-plugin")
    ported = out / "ported"
    ported.mkdir()
    source = (SEED / "main.go").read_text()
    assert source.count(CORE0_IMPORT) == 1
    (ported / "main.go").write_text(source.replace(CORE0_IMPORT, PLUGRPC_IMPORT))
    (ported / "go.mod").write_text(f"module example.com/ovs-plugin\n\ngo 1.21\n\nrequire github.com/plugrpc/plugrpc/go "
                                   f"v0.0.0\n\nreplace github.com/plugrpc/plugrpc/go => {GO_MODULE}\n")
    return core0, go_build(ported, out / "ported" / "ovs-plugin")


def seed_image(root: Path, binary: Path) -> Path:
    """core0's manifest entry for the seed's plugin, unchanged: `path` and `exports`, nothing else."""
    path = root / BINARY.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(binary, path)
    (root / ".plugin.toml").write_text(f'[plugin.ovs]\npath = "{BINARY}"\nexports = ["version", "echo", "bridge.add", '
                                       '"slow"]\n')
    return root


async def test_the_seeds_core0_binary_runs_unchanged(plugrpc_tmp: Path, plugrpc_router: Router,
                                                     seed_binaries: tuple[Path, Path]) -> None:
    router = plugrpc_router(seed_image(plugrpc_tmp / "image", seed_binaries[0]))
    async with router.aclient() as c:
        assert await asyncio.gather(*(c.raw("ovs.version", {}) for _ in range(10))) == ["1.0alpha"] * 10
        assert await c.raw("ovs.echo", {"ports": ["eth0"]}) == {"ports": ["eth0"]}
        with pytest.raises(plugrpc.RpcError) as info:
            await c.raw("ovs.bridge.add", {"name": "br0"})
        assert (info.value.code, info.value.message, info.value.data) == (
            -32000, "bridge br0 does not exist", {"plugin": "ovs", "exit": 1})
        [row] = await c.raw("router.plugins")
        assert (row["mode"], row["mode_detected"]) == ("exec", True)


async def test_the_seed_with_one_import_changed_is_persistent(plugrpc_tmp: Path, plugrpc_router: Router,
                                                              seed_binaries: tuple[Path, Path]) -> None:
    router = plugrpc_router(seed_image(plugrpc_tmp / "image", seed_binaries[1]))
    async with router.aclient() as c:
        [before] = await c.raw("router.plugins")
        slow = [asyncio.ensure_future(c.raw("ovs.slow", {})) for _ in range(10)]

        async def all_in_flight() -> bool:
            [row] = await c.raw("router.plugins")
            return bool(row["inflight"] == 10)

        await until(all_in_flight, "ten calls in flight in the one process at once")
        await asyncio.gather(*slow)
        assert await c.raw("ovs.version", {}) == "1.0alpha"
        with pytest.raises(plugrpc.RpcError) as info:
            await c.raw("ovs.bridge.add", {"name": "br0"})
        assert (info.value.code, info.value.message) == (-32000, "bridge br0 does not exist")
        [after] = await c.raw("router.plugins")
    assert (after["mode"], after["mode_detected"], after["pid"], after["restarts"]) == ("rpc", False, before["pid"], 0)


def test_the_ported_seed_run_by_hand_answers_core0s_way(seed_binaries: tuple[Path, Path]) -> None:
    for binary in seed_binaries:  # one binary serves both runtimes
        done = subprocess.run([binary, "version", "{}"], capture_output=True, timeout=30, check=False)
        assert (done.returncode, done.stdout, done.stderr) == (0, b'20:::"1.0alpha"\n:::', b"")
        done = subprocess.run([binary], capture_output=True, timeout=30, check=False)
        assert (done.returncode, done.stdout, done.stderr) == (1, b'20:::"missing command"\n:::', b"")
