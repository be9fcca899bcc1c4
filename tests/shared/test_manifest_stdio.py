"""manifest: `transport = "stdio"` and its `handshake`, and the keys a server on stdin and stdout cannot take."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugrpc.errors import ManifestError
from plugrpc.manifest import Handshake, load_manifest


def image(tmp_path: Path, body: str) -> Path:
    root = tmp_path / "img"
    (root / "bin").mkdir(parents=True)
    (root / "bin/p").write_text("#!/bin/sh\n")
    (root / "bin/p").chmod(0o755)
    (root / ".plugin.toml").write_text(f'[plugin.p]\npath = "bin/p"\nexports = ["tools/call"]\n{body}\n')
    return root


def test_socket_is_the_default_and_stdio_takes_a_handshake(tmp_path: Path) -> None:
    assert load_manifest(image(tmp_path / "a", "")).plugins["p"].transport == "socket"
    spec = load_manifest(image(tmp_path / "b", """transport = "stdio"
handshake = { method = "initialize", params = { protocolVersion = "2025-06-18", capabilities = {} }, \
notify = "notifications/initialized" }""")).plugins["p"]
    assert spec.transport == "stdio" and spec.pool_size == 1 and spec.mode == "rpc"
    assert spec.handshake == Handshake("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}},
                                       "notifications/initialized")
    bare = load_manifest(image(tmp_path / "c", 'transport = "stdio"\nhandshake = { method = "hello" }'))
    assert bare.plugins["p"].handshake == Handshake("hello")


@pytest.mark.parametrize(("body", "key", "words"), [
    ('transport = "pipe"', "transport", "expected one of 'socket', 'stdio'"),
    ('transport = "stdio"\npool_size = 2', "pool_size", "one connection, its stdin and stdout"),
    ('transport = "stdio"\nmode = "exec"', "transport", "remove transport or mode"),
    ('transport = "stdio"\nready = "notify"', "ready", "once its handshake is answered"),
    ('handshake = { method = "initialize" }', "handshake", 'add transport = "stdio"'),
    ('transport = "stdio"\nhandshake = "initialize"', "handshake", "expected a table"),
    ('transport = "stdio"\nhandshake = {}', "handshake.method", "required key is missing"),
    ('transport = "stdio"\nhandshake = { method = "" }', "handshake.method", "non-empty string"),
    ('transport = "stdio"\nhandshake = { method = "a", params = 3 }', "handshake.params", "a table or an array"),
    ('transport = "stdio"\nhandshake = { method = "a", notify = 1 }', "handshake.notify", "non-empty string"),
    ('transport = "stdio"\nhandshake = { method = "a", notfy = "b" }', "handshake.notfy", "known: method, params"),
])
def test_mistakes_name_the_key(tmp_path: Path, body: str, key: str, words: str) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(image(tmp_path, body))
    assert info.value.key == key and info.value.plugin == "p"
    assert words in str(info.value)


def test_queue_keeps_a_stdio_plugin_to_one_call_at_a_time(tmp_path: Path) -> None:
    spec = load_manifest(image(tmp_path, 'transport = "stdio"\nqueue = true')).plugins["p"]
    assert (spec.pool_size, spec.max_inflight) == (1, 1)
