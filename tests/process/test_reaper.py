"""reaper: the watchdog that kills plugins' process groups once the runtime is gone, however it went."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from plugrpc.process.reaper import Reaper

from util import alive, descendants, wait_until

# A plugin-like process: its own session, and a child of its own in its group.
GROUP = [sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"]


@pytest.fixture
def group() -> Iterator[list[int]]:
    """A process group of two: [leader, its child]; whatever is left is killed at teardown."""
    leader = subprocess.Popen(GROUP, start_new_session=True)
    try:
        members = wait_until(lambda: [leader.pid, *descendants(leader.pid)] if descendants(leader.pid) else None,
                             "the group's child")
        yield members
    finally:
        for pid in descendants(leader.pid):
            os.kill(pid, signal.SIGKILL)
        leader.kill()
        leader.wait(10)


def test_watched_group_is_killed_when_the_runtime_side_closes(group: list[int]) -> None:
    reaper = Reaper()
    reaper.watch(group[0])
    watchdog = reaper.pid
    assert watchdog is not None and alive(watchdog)
    with open(f"/proc/{watchdog}/cmdline", "rb") as f:  # what ps shows: its name, not a page of code
        assert f.read().split(b"\0")[1:4] == [b"-I", b"-S", os.fsencode(os.path.join(
            os.path.dirname(sys.modules[Reaper.__module__].__file__ or ""), "watchdog.py"))]
    reaper.close()
    wait_until(lambda: not any(alive(p) for p in group), timeout=10)
    assert not alive(watchdog)


def test_forgotten_group_is_left_alone(group: list[int]) -> None:
    reaper = Reaper()
    reaper.watch(group[0])
    reaper.forget(group[0])
    reaper.close()
    assert all(alive(p) for p in group)


def test_group_dies_with_a_runtime_killed_by_sigkill() -> None:
    runtime = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        from plugrpc.process.reaper import reaper
        leader = subprocess.Popen({GROUP!r}, start_new_session=True)
        reaper.watch(leader.pid)
        print(leader.pid, flush=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE)
    try:
        assert runtime.stdout is not None
        leader = int(runtime.stdout.readline())
        members = wait_until(lambda: [leader, *descendants(leader)] if descendants(leader) else None,
                             "the group's child")
        runtime.kill()
        runtime.wait(10)
        wait_until(lambda: not any(alive(p) for p in members), timeout=10)
    finally:
        runtime.kill()
        runtime.wait(10)
        runtime.stdout.close()  # type: ignore[union-attr]


def test_a_dead_watchdog_is_logged_not_fatal(group: list[int], caplog: pytest.LogCaptureFixture) -> None:
    reaper = Reaper()
    reaper.watch(group[0])
    assert reaper.pid is not None
    os.kill(reaper.pid, signal.SIGKILL)
    wait_until(lambda: not alive(reaper.pid), timeout=10)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="plugrpc.reaper"):
        reaper.watch(group[0])
        reaper.watch(group[0])
    assert len(caplog.records) == 1 and "outlive" in caplog.records[0].getMessage()
    assert repr(reaper) == "<Reaper failed pid=None>"
    reaper.close()
    assert all(alive(p) for p in group)
