"""router.logs: a plugin's recent output from the router's ring buffer, a tail or everything after a
seq, waiting a bounded time for more; kept across restarts and reloads; exec plugins' too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import plugrpc
from plugrpc.config import Config
from plugrpc.router.server import Server
from plugrpc.testing import write_image

from plugins.sources import OPS, OPS_EXPORTS
from util import LEGACY, WAIT, run_server, until

EXEC = (LEGACY / "plugin.sh").read_text()


@pytest.fixture
async def router(plugrpc_tmp: Path) -> AsyncIterator[Server]:
    root = plugrpc_tmp / "image"
    root.mkdir()
    write_image(root, {"a": ("a.py", OPS, OPS_EXPORTS), "sh": ("sh", EXEC, ["version", "fail"], {"mode": "exec"})})
    async with run_server(Config(root=root, socket=plugrpc_tmp / "r.sock")) as server:
        yield server


async def logs(c: plugrpc.Client, **params: Any) -> dict[str, Any]:
    result: dict[str, Any] = await c.raw("router.logs", params)
    return result


async def said(c: plugrpc.Client, text: str) -> int:
    """Have plugin `a` print `text`; once the router has the line (it comes on a pipe of its own, maybe
    after the answer), its seq."""
    await c.raw("a.say", [text])

    async def seq() -> int | None:
        lines = (await logs(c, plugin="a", lines=1))["lines"]
        return lines[0]["seq"] if lines and lines[0]["text"] == text else None

    found: int = await until(seq, f"the line {text!r}")
    return found


async def test_the_tail_of_a_plugins_output_with_time_and_level(router: Server) -> None:
    async with plugrpc.Client(router.config.socket, timeout=WAIT) as c:
        for n in range(25):
            await c.raw("a.say", [f"line {n}"])
        await said(c, "line 25")
        answer = await logs(c, plugin="a")
        texts = [line["text"] for line in answer["lines"]]
        assert len(texts) == 20 and texts[-1] == "line 25" and texts[0] == "line 6"
        assert all(line["level"] == "info" and line["time"] > 0 for line in answer["lines"])
        assert answer["seq"] == answer["lines"][-1]["seq"] and answer["skipped"] == 0
        assert [line["text"] for line in (await logs(c, plugin="a", lines=2))["lines"]] == ["line 24", "line 25"]
        assert (await logs(c, plugin="a", lines=0))["lines"] == []


async def test_following_waits_for_the_next_line_or_gives_up_after_wait(router: Server) -> None:
    async with plugrpc.Client(router.config.socket, timeout=WAIT) as c:
        seq = await said(c, "first")
        follow = asyncio.ensure_future(logs(c, plugin="a", after=seq, wait=WAIT))
        await asyncio.sleep(0)
        assert not follow.done()
        await c.raw("a.say", ["second"])
        answer = await asyncio.wait_for(follow, WAIT)
        assert [line["text"] for line in answer["lines"]] == ["second"] and answer["lines"][0]["seq"] == seq + 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        empty = await logs(c, plugin="a", after=answer["seq"], wait=0.2)
        assert empty["lines"] == [] and 0.15 < loop.time() - started < WAIT
        assert (await logs(c, plugin="a", after=0))["lines"][0]["text"].startswith("plugrpc.sdk: serving")


async def test_lines_that_fell_out_of_the_ring_are_counted_as_skipped(router: Server) -> None:
    assert router.router is not None
    book = router.router.plugins["a"].output
    async with plugrpc.Client(router.config.socket, timeout=WAIT) as c:
        seq = await said(c, "mark")
        book.max_lines = 3
        for n in range(9):
            await c.raw("a.say", [f"n{n}"])
        await said(c, "n9")
        answer = await logs(c, plugin="a", after=seq)
        assert [line["text"] for line in answer["lines"]] == ["n7", "n8", "n9"] and answer["skipped"] == 7


async def test_exec_plugins_have_logs_too_and_a_reload_keeps_them(router: Server) -> None:
    assert router.router is not None
    async with plugrpc.Client(router.config.socket, timeout=WAIT) as c:
        with pytest.raises(plugrpc.RpcError):
            await c.raw("sh.fail")
        assert (await logs(c, plugin="sh"))["lines"], "the exec plugin's stderr"
        await said(c, "before the reload")
        manifest = router.config.root / ".plugin.toml"
        manifest.write_text(manifest.read_text().replace('path = "a.py"', 'path = "a.py"\ntimeout = 7'))
        assert (await c.raw("router.reload"))["changed"] == ["a"]
        await said(c, "after the reload")
        texts = [line["text"] for line in (await logs(c, plugin="a", lines=1000))["lines"]]
        assert texts.index("before the reload") < texts.index("after the reload")


@pytest.mark.parametrize(("params", "words"), [
    (["a"], "expected an object"),
    ({"plugin": "nope"}, "no plugin named 'nope'; the plugins are a, sh"),
    ({"lines": 3}, "no plugin named None"),
    ({"plugin": "a", "lines": -1}, "lines must be a whole number"),
    ({"plugin": "a", "lines": "10"}, "lines must be a whole number"),
    ({"plugin": "a", "after": -3}, "after must be the seq"),
    ({"plugin": "a", "wait": 61}, "wait must be 0 to 60 seconds"),
    ({"plugin": "a", "tail": 3}, "unknown member(s) tail"),
])
async def test_bad_params_are_invalid_params_saying_what_is_wrong(router: Server, params: Any, words: str) -> None:
    async with plugrpc.Client(router.config.socket, timeout=WAIT) as c:
        with pytest.raises(plugrpc.RpcError) as info:
            await c.raw("router.logs", params)
    assert info.value.code == -32602 and words in info.value.data
