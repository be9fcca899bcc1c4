"""Which router a call by plugin goes to: the better of two random choices, routers that stopped
answering ejected for a while (as Envoy's outlier detection does). Pure state: no I/O, no clock of
its own; the NATS client (client/nats.py) feeds it what it learns and what became of each call.

A queue group (`plugrpc.any.PLUGIN`) picks a member at random, however long that member takes:
a router partitioned away or stopped keeps its share of the calls, and each one waits for its
timeout. Here the client counts its own calls in flight to each router and sends a call to the
less loaded of two routers picked at random: a router that answers nothing piles up calls in
flight and stops being picked; a slow one gets a share in proportion to its speed. A router whose
calls time out `consecutive` times in a row is ejected for `base` seconds, doubled each time it is
ejected again, up to `cap`; then it gets one call, and only once that is answered, the rest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

CONSECUTIVE: Final = 3
"""Timeouts in a row that eject a router."""
BASE: Final = 1.0
"""Seconds of a router's first ejection; each one after it lasts twice as long."""
CAP: Final = 30.0
"""Most seconds an ejection lasts."""
FORGET: Final = 2
"""Discoveries in a row a router may be missing from before it is no longer picked (one may be late)."""


@dataclass
class RouterState:
    """What the client knows of one router: its calls in flight and how it has been answering."""

    name: str
    plugins: frozenset[str] = frozenset()
    inflight: int = 0
    timeouts: int = 0
    """Timeouts in a row, since the last answer."""
    ejections: int = 0
    """Times ejected since it last answered a trial call: the next ejection lasts BASE * 2**ejections."""
    ejected_until: float = 0.0
    trial: bool = False
    """Its ejection is over and one call is out to try it: no other call goes to it meanwhile."""
    missing: int = 0
    """Discoveries in a row it was missing from."""
    refused: bool = False
    """NATS refused this client's requests to it (subject permissions): never picked again."""


@dataclass(frozen=True, slots=True)
class Pick:
    """Where one call went: the router, and whether it is the trial call of an ejected router."""

    router: str
    trial: bool = False


@dataclass
class Balancer:
    """The routers of a NATS client (see the module docstring)."""

    consecutive: int = CONSECUTIVE
    base: float = BASE
    cap: float = CAP
    rng: random.Random = field(default_factory=random.Random)
    routers: dict[str, RouterState] = field(default_factory=dict)

    def discovered(self, found: dict[str, frozenset[str]]) -> None:
        """What a discovery found: each router's plugins. A router missing `FORGET` times in a row is dropped."""
        for name, plugins in found.items():
            state = self.routers.get(name)
            if state is None:
                self.routers[name] = RouterState(name, plugins)
            else:
                state.plugins, state.missing = plugins, 0
        for name, state in list(self.routers.items()):
            if name not in found:
                state.missing += 1
                if state.missing >= FORGET and not state.inflight:
                    del self.routers[name]

    def gone(self, name: str) -> None:
        """NATS says nobody answers as `name` any more: never pick it until a discovery finds it again."""
        state = self.routers.get(name)
        if state is not None:
            state.plugins = frozenset()
            state.missing = FORGET

    def refused(self, name: str) -> None:
        """NATS may not carry this client's requests to `name` (its account's permissions): leave it out for good."""
        state = self.routers.get(name)
        if state is not None:
            state.refused = True

    def pick(self, plugin: str, now: float) -> Pick | None:
        """The router for a call to `plugin`, counted in flight; None when no known router can take it."""
        healthy: list[RouterState] = []
        trial: RouterState | None = None
        for state in self.routers.values():
            if plugin not in state.plugins or state.missing >= FORGET or state.refused:
                continue
            if state.ejected_until > now:
                continue
            if state.ejections:  # its ejection is over: one trial call before the rest
                if not state.trial and trial is None:
                    trial = state
                continue
            healthy.append(state)
        if trial is not None:
            trial.trial = True
            trial.inflight += 1
            return Pick(trial.name, trial=True)
        if not healthy:
            return None
        if len(healthy) == 1:
            best = healthy[0]
        else:
            a, b = self.rng.sample(healthy, 2)
            best = a if a.inflight < b.inflight or (a.inflight == b.inflight and self.rng.random() < 0.5) else b
        best.inflight += 1
        return Pick(best.name)

    def answered(self, pick: Pick) -> None:
        """The router answered (a result or any JSON-RPC error: it is alive)."""
        state = self._done(pick)
        if state is not None:
            state.timeouts = 0
            if pick.trial or not state.ejected_until:
                state.ejections = 0
                state.ejected_until = 0.0

    def timed_out(self, pick: Pick, now: float) -> bool:
        """The call got no answer within its timeout; True when that ejected the router."""
        state = self._done(pick)
        if state is None:
            return False
        if pick.trial:
            return self._eject(state, now)
        if state.ejected_until > now:
            return False  # sent before its ejection: counted already
        state.timeouts += 1
        if state.timeouts >= self.consecutive:
            return self._eject(state, now)
        return False

    def abandoned(self, pick: Pick) -> None:
        """The call ended without telling anything of the router (cancelled, NATS itself lost)."""
        state = self._done(pick)
        if state is not None and pick.trial:
            state.trial = False  # another call may try it

    def _done(self, pick: Pick) -> RouterState | None:
        state = self.routers.get(pick.router)
        if state is None:
            return None
        state.inflight -= 1
        if pick.trial:
            state.trial = False
        return state

    def _eject(self, state: RouterState, now: float) -> bool:
        state.ejected_until = now + min(self.base * 2 ** state.ejections, self.cap)
        state.ejections += 1
        state.timeouts = 0
        return True

    def ejected(self, now: float) -> dict[str, float]:
        """Routers ejected now, and for how many more seconds."""
        return {s.name: s.ejected_until - now for s in self.routers.values() if s.ejected_until > now}
