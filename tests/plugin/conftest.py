"""Fixtures of the plugin side's tests: plugin processes started as the runtime starts them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from util import PLUGINS, Fd3Plugin

BASIC = PLUGINS / "sdk_basic.py"


@pytest.fixture
def start(plugrpc_tmp: Path) -> Iterator[Callable[..., Fd3Plugin]]:
    plugins: list[Fd3Plugin] = []

    def start(script: Path = BASIC, *, name: str = "basic", env: Mapping[str, str] | None = None,
              wrapper: Sequence[str] = ()) -> Fd3Plugin:
        plugins.append(Fd3Plugin(script, plugrpc_tmp, name, env or {}, wrapper))
        return plugins[-1]

    yield start
    for plugin in plugins:
        plugin.stop()


