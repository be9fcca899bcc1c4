"""`Client("nats://...")` and `BlockingClient` over NATS (client/nats.py): the socket's API, errors and timeouts,
against a real nats-server and a real `plugrpc run --nats`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import plugrpc
from plugrpc import codes
from plugrpc.client.nats import NatsClient
from plugrpc.config import Config
from plugrpc.errors import ConfigError
from plugrpc.testing import RouterProcess
from plugrpc.tools import cli

from plugins.sources import ECHO, ECHO_EXPORTS
from util import NatsServer, free_port, until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]


@pytest.fixture
def on_nats(nats_server: Callable[..., NatsServer], plugrpc_router: Router,
            plugrpc_image: Image) -> tuple[NatsServer, RouterProcess]:
    """A nats-server with a 64 KiB max_payload, and router t1 on it serving plugin a (ECHO)."""
    nats = nats_server("max_payload: 65536\n")
    router = plugrpc_router(plugrpc_image({"a": ("a.py", ECHO, ECHO_EXPORTS)}), "--nats", nats.url, "--name", "t1")
    return nats, router


async def registered(url: str) -> None:
    async with NatsClient(url, router="t1", timeout=5) as c:

        async def answers() -> bool:
            try:
                return bool(await c.raw("router.health"))
            except plugrpc.PluginUnavailable:
                return False

        await until(answers, "router t1 on NATS", timeout=20)


async def test_same_results_errors_and_timeouts_as_over_the_socket(on_nats: tuple[NatsServer, RouterProcess]) -> None:
    nats, router = on_nats
    await registered(nats.url)
    async with plugrpc.Client(nats.url, router="t1", timeout=10) as by_name, \
            plugrpc.Client(nats.url, timeout=10) as by_plugin, plugrpc.Client(router.socket, timeout=10) as local:
        assert isinstance(by_name, NatsClient) and isinstance(by_plugin, NatsClient)
        assert repr(by_name).startswith(f"<NatsClient {nats.url} router=t1 open")
        for client in (by_name, by_plugin):
            assert await client.raw("a.echo", [1]) == await local.raw("a.echo", [1]) == {"by": "a", "payload": 1}
            many = await asyncio.gather(*(client.raw("a.echo", {"payload": i}) for i in range(200)))
            assert [r["payload"] for r in many] == list(range(200))  # concurrent calls, each its own answer
            errors = []
            for c in (client, local):
                with pytest.raises(plugrpc.RpcError) as info:
                    await c.raw("a.echo", {"nope": 1})
                errors.append((type(info.value), info.value.code, info.value.message))
            assert errors[0] == errors[1] and errors[0][1] == codes.INVALID_PARAMS
            with pytest.raises(plugrpc.CallTimeout) as timeout:
                await client.raw("a.sleep", [5], timeout=0.2)
            assert timeout.value.code == codes.CALL_TIMEOUT and "0.2s" in timeout.value.data
            assert await client.raw("a.echo", [2]) == {"by": "a", "payload": 2}  # the late answer is dropped
        before = (await by_name.raw("a.stats"))["calls"]
        await by_plugin.notify("a.echo", [3])
        await until(lambda: _calls(by_name), "the notification to reach the plugin", expect=before + 1)
        assert (await by_name.raw("router.plugins"))[0]["name"] == "a"
        with pytest.raises(plugrpc.RpcError) as builtin:
            await by_plugin.raw("router.plugins")  # which router's? say so
        assert builtin.value.code == codes.METHOD_NOT_FOUND and "router=NAME" in builtin.value.data["reason"]
        with pytest.raises(plugrpc.MessageTooLarge) as big:
            await by_name.raw("a.echo", ["x" * 70_000])
        assert "max_payload of 65536 bytes" in big.value.data["reason"]
    with pytest.raises(plugrpc.ConnectionLost):
        await by_name.raw("a.echo", [1])  # closed


async def _calls(client: plugrpc.Client) -> int:
    return (await client.raw("a.stats"))["calls"]  # type: ignore[no-any-return]


def test_blocking_client_over_nats(on_nats: tuple[NatsServer, RouterProcess]) -> None:
    nats, _ = on_nats
    asyncio.run(registered(nats.url))
    with plugrpc.BlockingClient(nats.url, router="t1", timeout=10) as c:
        assert c.raw("a.echo", [1]) == {"by": "a", "payload": 1}
        with pytest.raises(plugrpc.CallTimeout):
            c.raw("a.sleep", [5], timeout=0.2)
        c.notify("a.echo", [2])
    with plugrpc.BlockingClient(nats.url) as c:
        assert c.raw("a.echo", [3])["payload"] == 3
        with pytest.raises(plugrpc.PluginUnavailable) as nobody:
            c.raw("b.echo", [1])
        assert nobody.value.data == {"plugin": "b", "reason": "no router connected to NATS runs plugin 'b'"}


async def test_connect_errors_and_misuse_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(plugrpc.ConnectError, match="cannot connect to NATS at nats://127.0.0.1:.*start nats-server"):
        await plugrpc.Client(f"nats://127.0.0.1:{free_port()}").connect()
    with pytest.raises(ConfigError, match="are for NATS URLs"):
        plugrpc.Client(tmp_path / "r.sock", router="t1")
    with pytest.raises(ConfigError, match="router must be a router's name"):
        plugrpc.Client("nats://127.0.0.1:4222", router="a.b")
    with pytest.raises(ConfigError, match="NatsClient takes a NATS URL"):
        NatsClient(tmp_path / "r.sock")
    with pytest.raises(ConfigError, match="--nats-creds: no such file"):
        await plugrpc.Client("nats://127.0.0.1:4222", creds=tmp_path / "none.creds").connect()
    with pytest.raises(ConfigError, match="--nats-ca: no such file"):
        await plugrpc.Client("tls://127.0.0.1:4222", ca=tmp_path / "none.pem").connect()
    with pytest.raises(ConfigError, match="starts with nats:// or tls://"):
        Config(nats="http://127.0.0.1:4222")
    with pytest.raises(ConfigError, match="--name must be"):
        Config(nats="nats://127.0.0.1:4222", name="a.b")
    assert Config(nats="nats://127.0.0.1:4222").name  # defaults to the host name


@pytest.mark.parametrize("argv, message", [
    (["run", "--name", "c1"], "--name is the router's name on NATS: it needs --nats URL"),
    (["call", "--router", "c1", "ovs.version"], "--router, --nats-creds and --nats-ca go with --nats URL"),
    (["status", "--nats-ca", "ca.pem"], "--router, --nats-creds and --nats-ca go with --nats URL"),
])
def test_nats_options_without_nats_are_refused(argv: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_socket_callers_and_routers_without_nats_never_import_nats(plugrpc_router: Router,
                                                                  plugrpc_image: Image) -> None:
    router = plugrpc_router(plugrpc_image({"a": ("a.py", ECHO, ECHO_EXPORTS)}))
    script = (f"import sys, plugrpc; import plugrpc.tools.cli, plugrpc.router.server\n"
              f"with plugrpc.BlockingClient({str(router.socket)!r}) as c: assert c.raw('a.echo', [1])['payload'] == 1\n"
              f"print(sorted(m for m in sys.modules if m == 'nats' or m.startswith('nats.')))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"  # the router's modules (without --nats) and the client's


@pytest.mark.parametrize(("patterns", "subject"), [
    (("ovs.port.*",), "ovs.port.*"),
    (("ovs.port.*", "ovs.port.*"), "ovs.port.*"),
    (("ovs.port.*", "ovs.link.>"), "ovs.>"),
    (("ovs.port.up", "ovs.port.down"), "ovs.port.>"),
    (("ovs.>", "demo.>"), ">"),
    (("*.up", "ovs.up"), ">"),
])
def test_several_patterns_share_one_subject_that_covers_them(patterns: tuple[str, ...], subject: str) -> None:
    from plugrpc.client.nats import _covering

    assert _covering(tuple(dict.fromkeys(patterns))) == subject
