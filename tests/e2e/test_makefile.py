"""The Makefile's bootstrap installs what each command needs and no more (`make -n` on a fresh venv path)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def planned(target: str, tmp_path: Path) -> str:
    """What `make TARGET` would run on a machine with no venv yet."""
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed; the README's two commands need it")
    done = subprocess.run([make, "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL, check=True)
    return done.stdout


def installs(plan: str) -> list[str]:
    return [line.split("install --quiet -e ")[1] for line in plan.splitlines() if "install --quiet -e " in line]


def test_make_run_installs_the_runtime_only(tmp_path: Path) -> None:
    assert installs(planned("run", tmp_path)) == ["'.'"]


def test_make_test_and_bench_bring_their_extras(tmp_path: Path) -> None:
    assert installs(planned("test", tmp_path)) == ["'.[test]'"]
    assert installs(planned("bench", tmp_path)) == ["'.[test,bench]'"]
