"""Fixtures shared by the process-supervision tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def short_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short directory under /tmp (AF_UNIX paths < 108 bytes), also used as $XDG_RUNTIME_DIR."""
    path = Path(tempfile.mkdtemp(prefix="sup-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)
