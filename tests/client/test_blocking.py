"""plugrpc.blocking: the portal twin of Client, from plain synchronous tests."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugrpc import codes
from plugrpc.client.aio import Client
from plugrpc.client.blocking import BlockingClient, BlockingSubscription
from plugrpc.client.events import Subscription
from plugrpc.errors import CallTimeout, ConnectError, ConnectionLost, RpcError

from util import WAIT, BasicPlugin, wait_until


@pytest.fixture
def plugin_socket(plugrpc_tmp: Path) -> Iterator[Path]:
    """sdk_basic.py serving on a path it binds itself."""
    plugin = BasicPlugin(plugrpc_tmp / "blocking.sock", wait=WAIT)
    try:
        yield plugin.socket
    finally:
        plugin.stop()


TWINS = {"BlockingSubscription": "Subscription"}
"""What a blocking method returns where its async twin returns the async class."""


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    signatures = {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }
    return {name: sig.replace(return_annotation=TWINS.get(sig.return_annotation, sig.return_annotation))
            for name, sig in signatures.items()}


def test_same_methods_as_client() -> None:
    """Our `unasync --check`: BlockingClient exposes exactly Client's methods, same signatures."""
    assert public_methods(BlockingClient) == public_methods(Client)
    assert inspect.signature(BlockingClient) == inspect.signature(Client)
    assert hasattr(BlockingClient, "__enter__") and hasattr(Client, "__aenter__")


def test_same_methods_as_subscription() -> None:
    """The blocking subscription forwards every method of Subscription, and iterates as it does."""
    assert public_methods(BlockingSubscription).keys() == public_methods(Subscription).keys() == {"start", "close"}
    for sync, name in (("__enter__", "__aenter__"), ("__exit__", "__aexit__"), ("__iter__", "__aiter__"),
                       ("__next__", "__anext__")):
        assert hasattr(BlockingSubscription, sync) and hasattr(Subscription, name)


def test_calls_from_plain_sync_code(plugin_socket: Path) -> None:
    with BlockingClient(plugin_socket, timeout=WAIT) as c:
        assert c.raw("add", [1, 2]) == 3
        assert c.raw("add", {"a": 4}) == 4
        assert c.raw("blocking", [0.01]) == "slept"
        with pytest.raises(RpcError) as info:
            c.raw("own_error")
        assert (info.value.code, info.value.message, info.value.data) == (4000, "custom failure", [1, 2])
        c.notify("wait_forever", ["b1"])
        wait_until(lambda: c.raw("started", ["b1"]), "the notification to reach the plugin")
        with pytest.raises(CallTimeout) as timeout:
            c.raw("wait_forever", ["b2"], timeout=0.05)
        assert timeout.value.code == codes.CALL_TIMEOUT
        assert "open pending=0" in repr(c)
    with pytest.raises(ConnectionLost, match="closed"):
        c.raw("add", [1])
    c.close()  # twice is fine


def test_connects_on_first_call_and_reports_connect_errors(plugin_socket: Path) -> None:
    c = BlockingClient(plugin_socket, timeout=WAIT)
    try:
        assert c.raw("fast") == "fast"
    finally:
        c.close()
    missing = BlockingClient(plugin_socket.with_name("missing.sock"))
    try:
        with pytest.raises(ConnectError, match="plugrpc run"):
            missing.connect()
    finally:
        missing.close()
