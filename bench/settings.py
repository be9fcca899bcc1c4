"""What a run measures and for how long: the settings (`--quick` and `--tiny` shrink them) and the load shapes.

A scenario is one load shape (callers, one connection each or one pipelined connection, a payload
size); every row is measured in every scenario it can serve, so the tables and targets compare
rows under the same load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

KIB: Final = 1024
MIB: Final = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """How much to measure; `--quick` and `--tiny` shrink the same scenarios."""

    rounds: int = 11
    warmup: float = 0.15
    duration: float = 0.4
    concurrency: tuple[int, ...] = (1, 8, 64, 256)
    payloads: tuple[int, ...] = (100, 10 * KIB, MIB)
    idle_conns: int = 1000
    rss_plugins: int = 10
    max_subscribers: int = 1000
    """The most subscribers a fan-out row has (tiny runs cap the 1,000)."""
    dispatch_seconds: float = 0.2
    profile: bool = False
    profile_seconds: float = 5.0
    quiet_pct: float = 20.0
    """A window during which other processes used more than this % of all CPUs is measured again..."""
    retries: int = 2
    """...at most this many times per measurement..."""
    retry_seconds: float = 90.0
    """...and for at most this many seconds over the whole run."""
    plugin_starts: int = 5
    """Starts of one SDK plugin (each to its first answer, then idle for its RSS)..."""
    start_plugins: int = 100
    """...the SDK plugins of the image `plugrpc run` starts..."""
    start_runs: int = 3
    """...that many times, each bounded: a run gives up when not all answered within `start_bound` seconds."""
    start_bound: float = 30.0
    idle_settle: float = 0.5
    """Seconds a process that has answered is left alone before its RSS counts as idle."""
    mode: str = "full"

    @classmethod
    def quick(cls, profile: bool = False) -> Settings:
        return cls(rounds=2, warmup=0.05, duration=0.12, dispatch_seconds=0.05, profile=profile,
                   profile_seconds=2.0, retries=1, retry_seconds=15.0, plugin_starts=3, start_runs=1, mode="quick")

    @classmethod
    def tiny(cls) -> Settings:
        """Seconds, for the smoke test: every code path, no meaningful figure."""
        return cls(rounds=1, warmup=0.02, duration=0.05, concurrency=(1, 8), payloads=(100, 10 * KIB),
                   idle_conns=20, rss_plugins=2, max_subscribers=20, dispatch_seconds=0.02, retries=0,
                   plugin_starts=1, start_plugins=3, start_runs=1, idle_settle=0.2, mode="tiny")


@dataclass(frozen=True)
class Scenario:
    """One load shape: `callers` closed-loop callers on their own connections or on one, one payload size."""

    mode: str
    callers: int
    payload: int

    @property
    def key(self) -> str:
        return f"{self.mode}-c{self.callers}-{size_label(self.payload).replace(' ', '')}"

    @property
    def connections(self) -> int:
        return self.callers if self.mode == "conns" else 1

    def describe(self) -> str:
        return f"{self.mode:5} c={self.callers:<3} {size_label(self.payload):>6}"


def size_label(n: int) -> str:
    if n >= MIB and n % MIB == 0:
        return f"{n // MIB} MiB"
    if n >= KIB and n % KIB == 0:
        return f"{n // KIB} KiB"
    return f"{n} B"


def scenarios(settings: Settings) -> list[Scenario]:
    """Latency at concurrency 1 for every payload, then 100 B at each concurrency, both modes."""
    small = settings.payloads[0]
    out = [Scenario("conns", 1, p) for p in settings.payloads]
    for c in settings.concurrency:
        if c > 1:
            out += [Scenario("conns", c, small), Scenario("pipe", c, small)]
    return out


def payload_params(size: int) -> dict[str, str]:
    """Params whose JSON text is exactly `size` bytes: `{"data":"xxxx..."}`."""
    return {"data": "x" * max(0, size - len('{"data":""}'))}
