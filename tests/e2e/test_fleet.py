"""A fleet on one machine: a real nats-server, routers as real `plugrpc run --nats` processes,
callers on NATS. Queue-group balancing, a router killed -9 under load, NATS restarted under load and
down at start, subject permissions, TLS with a private CA, and the command line as docs/fleet.md uses it.

Calls carry unique numbers and the plugin counts each number it runs, so a test can tell that no
call ran twice and that every answer is its own call's. Figures go to docs/fleet.md and
docs/reliability.md (PLUGRPC_FIGURES=FILE records them).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

import plugrpc
from plugrpc.client.nats import NatsClient
from plugrpc.config import EXAMPLE_ROOT
from plugrpc.testing import RouterProcess

from util import FULL, REPO, NatsServer, figure, until, wait_until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]
Nats = Callable[..., NatsServer]

# Runs each number it is given, counting how often, so that a test can tell what ran and what ran twice.
RECORDER = '''
#!/usr/bin/env python3
import asyncio, collections, os
import plugrpc

SEEN = collections.Counter()

async def work(n, seconds=0.0):
    SEEN[n] += 1
    if seconds:
        await asyncio.sleep(seconds)
    return {"n": n, "pid": os.getpid()}

def seen():
    return {"ids": list(SEEN), "twice": [n for n, count in SEEN.items() if count > 1]}

plugrpc.serve({"work": work, "seen": seen})
'''
GUIDE = (REPO / "docs" / "fleet.md").read_text()
TIMEOUT = 2.0
"""The callers' timeout: a call at a router that died is given up on after this long."""
FAST = 5.0
"""Generous bound for "within seconds" on a shared machine."""


def start_fleet(nats: NatsServer, plugrpc_router: Router, root: Path, names: list[str], *args: str,
                url: str | None = None) -> dict[str, RouterProcess]:
    return {name: plugrpc_router(root, "--nats", url or nats.url, "--name", name, *args) for name in names}


async def on_nats(client: NatsClient, names: list[str]) -> None:
    """Wait until the Services API lists every router in `names`."""
    async def listed() -> bool:
        return {info["metadata"]["name"] for info in await client.routers(wait=0.5)} >= set(names)

    await until(listed, f"routers {names} on NATS", timeout=20)


async def plugin_pid(url: str, router: str, plugin: str = "p") -> int:
    async with NatsClient(url, router=router, timeout=10) as one:
        return next(row["pid"] for row in await one.raw("router.plugins") if row["name"] == plugin)  # type: ignore[no-any-return]


@dataclass
class Load:
    """Closed-loop callers of `p.work` over NATS, each call numbered, recording what became of it."""

    client: NatsClient
    seconds: float = 0.0
    next_n: itertools.count[int] = field(default_factory=itertools.count)
    answered: list[tuple[float, float, int, int]] = field(default_factory=list)
    """(sent, answered, n, pid of the plugin that ran it)"""
    failed: list[tuple[float, float, int, plugrpc.RpcError]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def caller(self) -> None:
        while not self.stop.is_set():
            n = next(self.next_n)
            sent = time.monotonic()
            try:
                result = await self.client.raw("p.work", [n, self.seconds], timeout=TIMEOUT)
            except plugrpc.RpcError as exc:
                self.failed.append((sent, time.monotonic(), n, exc))
                await asyncio.sleep(0.01)  # a caller that failed tries again shortly, as a real one would
                continue
            assert result["n"] == n, (result, n)  # every answer is its own call's
            self.answered.append((sent, time.monotonic(), n, result["pid"]))

    def first_answer_after(self, when: float) -> float | None:
        return min((t for sent, t, _, _ in self.answered if sent >= when), default=None)


async def seen(client: NatsClient, router: str) -> dict[str, Any]:
    one = NatsClient(client.url, router=router, timeout=10)
    try:
        return await one.raw("p.seen")  # type: ignore[no-any-return]
    finally:
        await one.close()


# --- the fleet as docs/fleet.md runs it ------------------------------------------------------------


def test_two_routers_called_by_name_and_by_plugin_from_the_command_line(nats_server: Nats,
                                                                        plugrpc_router: Router) -> None:
    nats = nats_server()
    routers = start_fleet(nats, plugrpc_router, EXAMPLE_ROOT, ["c1", "c2"])

    def plugrpc_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "plugrpc", *args], capture_output=True, text=True, timeout=60,
                              check=False)

    def both_listed() -> subprocess.CompletedProcess[str] | None:
        done = plugrpc_cli("status", "--nats", nats.url)
        routers = {line.split()[0] for line in done.stdout.splitlines()[1:] if line.strip()}
        return done if routers >= {"c1", "c2"} else None

    status = wait_until(both_listed, "both routers in plugrpc status --nats", 30)
    assert status.returncode == 0, status
    lines = status.stdout.splitlines()
    assert lines[0].split()[:3] == ["ROUTER", "NAME", "MODE"]
    assert {tuple(line.split()[:2]) for line in lines[1:]} >= {("c1", "ovs"), ("c2", "ovs"), ("c1", "demo")}
    for args in (["--router", "c1"], ["--router", "c2"], []):
        done = plugrpc_cli("call", "--nats", nats.url, *args, "ovs.version")
        assert (done.returncode, done.stdout) == (0, '"1.0alpha"\n'), done
    done = plugrpc_cli("call", "--nats", nats.url, "--router", "c1", "demo.add", "[1, 2]")
    assert done.stdout == "3\n"
    done = plugrpc_cli("call", "--nats", nats.url, "--router", "c1", "router.reload")
    assert done.returncode == 1 and '"code":-32601' in done.stderr
    done = plugrpc_cli("call", "--nats", nats.url, "--router", "c9", "ovs.version")
    assert done.returncode == 1 and "no router named 'c9'" in done.stderr
    # The unix socket serves as before.
    with routers["c1"].client() as c:
        assert c.raw("ovs.version") == "1.0alpha"


def test_the_guides_python_example_runs_as_written(nats_server: Nats, plugrpc_router: Router) -> None:
    nats = nats_server()
    start_fleet(nats, plugrpc_router, EXAMPLE_ROOT, ["c1", "c2"])
    [code] = [block for block in re.findall(r"```python\n(.*?)```", GUIDE, re.S) if "asyncio.run(main())" in block]

    def run() -> subprocess.CompletedProcess[str] | None:
        done = subprocess.run([sys.executable, "-c", code.replace("nats://127.0.0.1:4222", nats.url)],
                              capture_output=True, text=True, timeout=60, check=False)
        return done if done.returncode == 0 else None  # until both routers are on NATS

    done = wait_until(run, "the guide's example to run", 30)
    assert done.stdout == ("1.0alpha\n[1, 2, 3]\n1.0alpha\n"
                           "{'status': 'ok', 'plugins': {'ovs': 'running', 'demo': 'running', 'node': 'stopped'}}\n")


# --- balancing and a router killed -9 ------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [pytest.param(2.0, id="2s"), pytest.param(10.0, id="10s", marks=FULL)])
async def test_a_router_killed_9_loses_only_its_own_calls_and_the_others_take_the_rest(
        seconds: float, nats_server: Nats, plugrpc_router: Router, plugrpc_image: Image) -> None:
    nats = nats_server()
    root = plugrpc_image({"p": ("p.py", RECORDER, ["work", "seen"])})
    routers = start_fleet(nats, plugrpc_router, root, ["r1", "r2", "r3"])
    async with NatsClient(nats.url, timeout=TIMEOUT) as client:
        assert isinstance(client, NatsClient)
        await on_nats(client, list(routers))
        pids = {name: await plugin_pid(nats.url, name) for name in routers}
        load = Load(client, seconds=0.02)
        callers = [asyncio.ensure_future(load.caller()) for _ in range(16)]
        await until(lambda: len(load.answered) >= 300, "calls through plugrpc.any.p", timeout=30)
        shares = {name: sum(1 for *_, pid in load.answered if pid == pids[name]) / len(load.answered)
                  for name in routers}
        assert all(share > 0.15 for share in shares.values()), shares  # the queue group spreads the calls
        killed = time.monotonic()
        routers["r2"].proc.send_signal(signal.SIGKILL)
        await asyncio.sleep(seconds)  # the load goes on for this long without r2 (the scenario, not a wait)
        load.stop.set()
        await asyncio.wait_for(asyncio.gather(*callers), TIMEOUT + 10)
        survivors = {name: await seen(client, name) for name in ("r1", "r3")}
    # Errors only for the calls that were at r2 when it died: timeouts of calls sent before the kill.
    assert load.failed, "some calls were in flight at r2"
    assert all(exc.code == plugrpc.codes.CALL_TIMEOUT for *_, exc in load.failed), load.failed[:3]
    assert all(sent < killed + 0.5 for sent, *_ in load.failed), [s - killed for s, *_ in load.failed]
    assert len(load.failed) <= 16  # at most one per caller: those in flight at r2
    later = [(sent, pid) for sent, _, _, pid in load.answered if sent > killed + 0.5]
    assert later and {pid for _, pid in later} <= {pids["r1"], pids["r3"]}
    # Nothing ran twice, and every call answered by a survivor is one it ran.
    assert survivors["r1"]["twice"] == survivors["r3"]["twice"] == []
    assert not set(survivors["r1"]["ids"]) & set(survivors["r3"]["ids"])
    for name in ("r1", "r3"):
        ran = set(survivors[name]["ids"])
        assert {n for _, _, n, pid in load.answered if pid == pids[name]} <= ran
    failed_within = max(t - sent for sent, t, *_ in load.failed)
    assert failed_within < TIMEOUT + 1  # none hangs past its timeout
    figure("fleet_kill9_failed_calls", len(load.failed), "calls", callers=16, routers=3)
    figure("fleet_kill9_failed_within", failed_within, "s", timeout=TIMEOUT)
    figure("fleet_kill9_answered_after", len(later), "calls", seconds=seconds)
    figure("fleet_shares_before_kill", min(shares.values()), "fraction", shares=shares)


# --- NATS restarted under load, and down at start -----------------------------------------------------


@pytest.mark.parametrize("outage", [pytest.param(1.0, id="1s"), pytest.param(5.0, id="5s", marks=FULL)])
async def test_nats_restarted_under_load_fails_calls_in_between_only_and_the_socket_never_notices(
        outage: float, nats_server: Nats, plugrpc_router: Router, plugrpc_image: Image) -> None:
    nats = nats_server()
    root = plugrpc_image({"p": ("p.py", RECORDER, ["work", "seen"])})
    router = start_fleet(nats, plugrpc_router, root, ["r1"])["r1"]
    async with NatsClient(nats.url, timeout=TIMEOUT) as client, plugrpc.Client(router.socket, timeout=10) as local:
        assert isinstance(client, NatsClient)
        await on_nats(client, ["r1"])
        load = Load(client, seconds=0.005)
        callers = [asyncio.ensure_future(load.caller()) for _ in range(8)]
        local_calls: list[float] = []
        stop_local = asyncio.Event()

        async def over_the_socket() -> None:
            n = 10_000_000
            while not stop_local.is_set():
                n += 1
                assert (await local.raw("p.work", [n]))["n"] == n  # never fails
                local_calls.append(time.monotonic())
                await asyncio.sleep(0.002)

        socket_caller = asyncio.ensure_future(over_the_socket())
        await until(lambda: len(load.answered) >= 100, "calls over NATS", timeout=30)
        down = time.monotonic()
        nats.stop(signal.SIGKILL)
        await asyncio.sleep(outage)  # NATS stays away this long (the scenario, not a wait)
        nats.start()
        up = time.monotonic()
        await until(lambda: load.first_answer_after(up) is not None, "calls over NATS again", timeout=30)
        back = load.first_answer_after(up)
        assert back is not None
        await until(lambda: len([a for a in load.answered if a[0] > back]) >= 50, "calls flowing again")
        load.stop.set()
        stop_local.set()
        await asyncio.wait_for(asyncio.gather(*callers, socket_caller), TIMEOUT + 10)
        record = await seen(client, "r1")
    assert load.failed, "calls were caught by the restart"
    assert {exc.code for *_, exc in load.failed} <= {plugrpc.codes.PLUGIN_UNAVAILABLE, plugrpc.codes.CALL_TIMEOUT}
    assert max(t - sent for sent, t, *_ in load.failed) < TIMEOUT + 1  # none hangs
    assert record["twice"] == []  # none ran twice
    assert {n for _, _, n, _ in load.answered} <= set(record["ids"])
    during = [t for t in local_calls if down < t < up]
    assert len(during) > 10  # the socket's caller went on while NATS was away
    assert back - up < FAST
    assert router.log().count("lost the connection to NATS") == 1
    figure("nats_restart_back_after", back - up, "s", outage=outage)
    figure("nats_restart_failed_calls", len(load.failed), "calls", callers=8)
    figure("nats_restart_socket_calls_during_outage", len(during), "calls", outage=outage)


async def test_a_router_started_before_nats_serves_its_socket_logs_once_and_joins_when_nats_comes(
        nats_server: Nats, plugrpc_router: Router) -> None:
    nats = nats_server(start=False)
    router = plugrpc_router(EXAMPLE_ROOT, "--nats", nats.url, "--name", "early")
    with router.client() as c:
        assert c.raw("ovs.version") == "1.0alpha"
    wait_until(lambda: "cannot reach NATS" in router.log(), "the router to say NATS is away")
    nats.start()
    started = time.monotonic()
    async with NatsClient(nats.url, router="early", timeout=TIMEOUT) as client:

        async def answers() -> bool:
            try:
                return await client.raw("ovs.version") == "1.0alpha"
            except plugrpc.PluginUnavailable:
                return False  # not registered yet: no responders

        await until(answers, "the router to join NATS", timeout=20)
    joined = time.monotonic() - started
    assert router.log().count("cannot reach NATS") == 1
    assert "joined NATS" in router.log()
    assert joined < FAST
    figure("nats_late_join", joined, "s")


# --- security -----------------------------------------------------------------------------------------


PERMISSIONS = """
accounts {
  FLEET {
    users = [
      # each router: its own plugrpc.call subject, every plugrpc.any one, the Services API; it publishes
      # nothing but answers (allow_responses), so it cannot pose as another router
      {user: c1, password: c1-secret, permissions: {
        subscribe: {allow: ["plugrpc.call.c1", "plugrpc.any.>", "$SRV.>"]}
        publish: {allow: ["$SRV.none"]}
        allow_responses: true
      }}
      {user: c2, password: c2-secret, permissions: {
        subscribe: {allow: ["plugrpc.call.c2", "plugrpc.any.>", "$SRV.>"]}
        publish: {allow: ["$SRV.none"]}
        allow_responses: true
      }}
      # an operator: may call every router
      {user: ops, password: ops-secret}
      # team A: router c1 by name, plugin ovs on any router, the Services API; nothing else
      {user: team-a, password: a-secret, permissions: {
        publish: {allow: ["plugrpc.call.c1", "plugrpc.any.ovs", "$SRV.>"]}
        subscribe: {allow: ["_INBOX.>"]}
      }}
    ]
  }
}
"""
"""The worked example of docs/fleet.md ("Who may call what"), as it is there."""


def test_the_guides_permissions_example_is_the_one_tested() -> None:
    assert PERMISSIONS.strip() in GUIDE


async def test_subject_permissions_decide_which_routers_an_account_may_call(nats_server: Nats,
                                                                           plugrpc_router: Router) -> None:
    nats = nats_server(PERMISSIONS)
    for name in ("c1", "c2"):
        start_fleet(nats, plugrpc_router, EXAMPLE_ROOT, [name], url=nats.url_for(name, f"{name}-secret"))
    async with NatsClient(nats.url_for("ops", "ops-secret"), timeout=TIMEOUT) as ops, \
            NatsClient(nats.url_for("team-a", "a-secret"), timeout=TIMEOUT) as team:
        assert isinstance(ops, NatsClient) and isinstance(team, NatsClient)
        await on_nats(ops, ["c1", "c2"])
        c1 = NatsClient(team.url, router="c1", timeout=TIMEOUT)
        c2 = NatsClient(team.url, router="c2", timeout=TIMEOUT)
        try:
            assert await c1.raw("ovs.version") == "1.0alpha"
            assert await team.raw("ovs.version") == "1.0alpha"
            started = time.monotonic()
            with pytest.raises(plugrpc.PluginUnavailable) as refused:
                await c2.raw("ovs.version")
            assert "may not publish to plugrpc.call.c2" in refused.value.data["reason"]
            assert time.monotonic() - started < TIMEOUT  # refused at once, not left to time out
            # By plugin the client picks the router: c1, the one this account may call by name (plugrpc.any.demo
            # itself is refused, and so is plugrpc.call.c2, which the client then leaves out).
            assert await team.raw("demo.add", [1, 2]) == 3
        finally:
            await c1.close()
            await c2.close()
        # c2 never got team A's request: its Services API counts only what ops sent it.
        assert await call_requests(ops.url, "c2") == 0
        async with NatsClient(ops.url, router="c2", timeout=TIMEOUT) as c2_ops:
            assert await c2_ops.raw("ovs.version") == "1.0alpha"
        assert await call_requests(ops.url, "c2") == 1
    # nats-server answers a wrong password with -ERR 'Authorization Violation' and closes; the reset can
    # come first, and then that is all the client knows.
    with pytest.raises(plugrpc.ConnectError, match="(?i)authorization|connection reset") as refused:
        await NatsClient(nats.url_for("team-a", "wrong")).connect()
    assert "wrong" not in str(refused.value) and "team-a:***@" in str(refused.value)  # no password in messages


async def call_requests(url: str, router: str) -> int:
    """What router `router`'s endpoint plugrpc.call.NAME counted, from the Services API's STATS."""
    async with NatsClient(url) as client:
        assert isinstance(client, NatsClient)
        [info] = [i for i in await client.routers() if i["metadata"]["name"] == router]
    nc = await nats.connect(url)
    try:
        stats = orjson.loads((await nc.request(f"$SRV.STATS.plugrpc.{info['id']}", b"", timeout=5)).data)
    finally:
        await nc.close()
    return next(e["num_requests"] for e in stats["endpoints"] if e["name"] == "call")  # type: ignore[no-any-return]


def _certificates(where: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate it signed for 127.0.0.1 (openssl)."""
    ca_key, ca, key, csr, cert = (where / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = where / "san.ext"
    ext.write_text("subjectAltName = IP:127.0.0.1\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
            "-subj", "/CN=plugrpc test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out",
            str(cert), "-days", "2", "-extfile", str(ext))
    return ca, cert, key


@pytest.mark.skipif(not os.path.exists("/usr/bin/openssl"), reason="needs openssl to make certificates")
async def test_tls_with_a_private_ca(nats_server: Nats, plugrpc_router: Router, plugrpc_tmp: Path) -> None:
    ca, cert, key = _certificates(plugrpc_tmp)
    nats = nats_server(f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n}}\n')
    url = f"tls://127.0.0.1:{nats.port}"
    plugrpc_router(EXAMPLE_ROOT, "--nats", url, "--nats-ca", str(ca), "--name", "secure")
    async with NatsClient(url, ca=ca, timeout=TIMEOUT) as client:
        assert isinstance(client, NatsClient)
        await on_nats(client, ["secure"])
        assert await client.raw("ovs.version") == "1.0alpha"
    with pytest.raises(plugrpc.ConnectError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await NatsClient(url).connect()  # the system's CAs do not know ours


# --- events on NATS ----------------------------------------------------------------------------------

async def test_events_are_published_on_nats_for_subscribers_anywhere(nats_server: Nats, plugrpc_image: Image,
                                                                    plugrpc_router: Router) -> None:
    from plugins.sources import EMITTER, EMITTER_EXPORTS

    nats = nats_server()
    image = plugrpc_image({"em": ("em.py", EMITTER, EMITTER_EXPORTS, {"events": ["port.*", "big"]})})
    routers = [plugrpc_router(image, "--nats", nats.url, "--name", name) for name in ("e1", "e2")]
    for router in routers:
        wait_until(lambda router=router: "joined NATS" in router.log(), "the router to join NATS")
    async with NatsClient(nats.url, timeout=30) as anywhere, NatsClient(nats.url, router="e2", timeout=30) as e2:
        async with anywhere.subscribe("em.port.*", "em.>") as all_events, e2.subscribe("em.port.up") as e2_events:
            # The subscriptions are in place on the server once a round trip after them has come back.
            for router in routers:
                async with plugrpc.Client(router.socket, timeout=30) as c:
                    assert await c.raw("em.emit", ["port.up", 3]) == 3
                    assert await c.raw("em.emit", ["nope", 1]) == 1  # undeclared: the router drops it
                    assert await c.raw("em.emit", ["port.down", 1]) == 1
            got = [await asyncio.wait_for(anext(all_events), 10) for _ in range(8)]
            mine = [await asyncio.wait_for(anext(e2_events), 10) for _ in range(3)]
        # Two patterns match em.port.up: each event is kept once all the same, in its plugin's order.
        assert sorted((ev.name, ev.data["i"]) for ev in got) == sorted(
            [("em.port.up", i) for i in range(3)] * 2 + [("em.port.down", 0)] * 2)
        assert [ev.data["i"] for ev in mine] == [0, 1, 2] and all(ev.name == "em.port.up" for ev in mine)
        # Each router counts its own sequence: the events say which router they come from.
        assert sorted({ev.router for ev in got}) == ["e1", "e2"] and {ev.router for ev in mine} == {"e2"}
        for name in ("e1", "e2"):
            seqs = [ev.seq for ev in got if ev.router == name and ev.name == "em.port.up"]
            assert seqs == sorted(seqs)
        with pytest.raises(plugrpc.RpcError) as info:
            async with anywhere.subscribe("em..x"):
                pass
        assert info.value.code == -32602 and "em..x" in str(info.value.data)
    # The command line, as on the socket: one JSON line per event, until it is stopped.
    cli = await asyncio.create_subprocess_exec(sys.executable, "-m", "plugrpc", "events", "--nats", nats.url,
                                               "--router", "e1", "em.>", stdout=asyncio.subprocess.PIPE)
    try:
        assert cli.stdout is not None
        line = asyncio.ensure_future(cli.stdout.readline())
        async with plugrpc.Client(routers[0].socket, timeout=30) as c:
            async def printed() -> bool:
                await c.raw("em.emit", ["port.up", 1])  # until the command's subscription is in place
                await asyncio.wait((line,), timeout=0.2)
                return line.done()
            await until(printed, "plugrpc events --nats to print an event")
        event = orjson.loads(line.result())
        assert event["name"] == "em.port.up" and event["data"] == {"i": 0} and event["seq"] >= 1
        assert event["router"] == "e1"
    finally:
        cli.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(cli.wait(), 10) in (0, 130)
