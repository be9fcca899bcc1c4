"""The faults of a run, drawn from its seed before anything starts: the same seed, the same schedule.

Each kind of fault arrives as a Poisson process at its own mean interval, so faults overlap freely
(a kill -9 during a reload during an event flood). Nothing is scheduled in the quiet baseline at the
start, nor in the quiet tail at the end that lets everything settle before the final checks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Final

VICTIMS: Final = ("aio", "plain", "relay", "lazy", "idle", "notify", "stdio", "flex", "memhog")
"""Plugins the faults may kill or stop; `steady` is never among them, `exec` has no process to kill."""

# kind: (mean seconds between two, whether it needs NATS)
KINDS: Final[dict[str, tuple[float, bool]]] = {
    "kill9": (6.0, False),              # SIGKILL a plugin process
    "stop": (12.0, False),              # SIGSTOP it, SIGCONT after a while (liveness restarts it)
    "memhog": (20.0, False),            # a call that breaks memhog's memory limit
    "relay_kill": (15.0, False),        # plugin-to-plugin calls in flight, their target killed
    "reload": (10.0, False),            # add, remove or change plugins while calls run
    "disconnect": (4.0, False),         # a client leaves with calls in flight
    "half_close": (8.0, False),         # a client shuts down its writing side after its calls
    "never_read": (15.0, False),        # a client sends and never reads
    "garbage": (6.0, False),            # lines that are not JSON-RPC
    "huge_line": (12.0, False),         # a line past --max-line
    "event_flood": (10.0, False),       # thousands of events, subscribers that never read
    "nats_restart": (45.0, True),       # nats-server killed, started again after a while
    "router_kill9": (60.0, True),       # a router of the fleet killed -9, started again
}


@dataclass(frozen=True, order=True)
class Fault:
    """One fault: when (seconds from the start), what, and its parameters."""

    at: float
    kind: str
    args: dict[str, Any] = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.args.items())
        return f"t={self.at:7.2f}s {self.kind} {args}".rstrip()


@dataclass(frozen=True)
class Phases:
    """The run's clock: quiet baseline, faults, quiet tail (seconds from the start)."""

    baseline: float
    faults_end: float
    end: float

    @classmethod
    def of(cls, duration: float) -> Phases:
        baseline = min(max(duration * 0.12, 5.0), 45.0)
        tail = min(max(duration * 0.08, 5.0), 30.0)
        return cls(baseline, duration - tail, duration)

    def name(self, t: float) -> str:
        return "baseline" if t < self.baseline else "faults" if t < self.faults_end else "tail"


def generate(seed: int, phases: Phases, nats: bool) -> list[Fault]:
    """Every fault of the run, in time order."""
    rng = random.Random(seed)
    faults = []
    for kind, (mean, needs_nats) in KINDS.items():
        if needs_nats and not nats:
            continue
        t = phases.baseline + rng.expovariate(1 / mean)
        while t < phases.faults_end:
            faults.append(Fault(round(t, 3), kind, _args(kind, rng)))
            t += rng.expovariate(1 / mean)
    return sorted(faults)


def _args(kind: str, rng: random.Random) -> dict[str, Any]:
    """A fault's parameters, drawn from the same generator in schedule order."""
    match kind:
        case "kill9":
            return {"plugin": rng.choice(VICTIMS)}
        case "stop":
            return {"plugin": rng.choice(VICTIMS), "seconds": round(rng.uniform(0.3, 4.0), 2)}
        case "relay_kill":
            return {"calls": rng.randint(5, 30), "after": round(rng.uniform(0.05, 0.4), 2)}
        case "reload":
            return {"change": rng.choice(("add", "remove", "modify"))}
        case "disconnect":
            return {"calls": rng.randint(1, 20), "after": round(rng.uniform(0.0, 0.3), 2)}
        case "half_close":
            return {"calls": rng.randint(1, 20)}
        case "never_read":
            return {"seconds": round(rng.uniform(1.0, 6.0), 1)}
        case "garbage":
            return {"lines": rng.randint(1, 10), "salt": rng.randrange(1 << 30)}
        case "huge_line":
            return {"mib": round(rng.uniform(1.1, 3.0), 1)}
        case "event_flood":
            return {"events": rng.randint(1000, 8000), "stuck": rng.randint(1, 4),
                    "seconds": round(rng.uniform(1.0, 5.0), 1)}
        case "nats_restart":
            return {"down": round(rng.uniform(0.5, 5.0), 1)}
        case "router_kill9":
            return {"router": rng.choice(("s2", "s3")), "down": round(rng.uniform(0.5, 3.0), 1)}
    return {}
