"""The restart policy of a supervised plugin, as pure code: whether an exit is followed by a start (the
manifest's `restart`), after how long (exponential backoff with jitter), and when exits in a row make
a crash loop. No I/O and no clock: the supervisor says how long the process ran.
"""

from __future__ import annotations

import random
from typing import Final

BACKOFF_BASE: Final = 0.1
"""Seconds before the first restart; doubles with every quick exit in a row."""
BACKOFF_CAP: Final = 30.0
STABLE_AFTER: Final = 10.0
"""A process that ran this long was healthy: its exit starts a fresh backoff streak."""
CRASHLOOP_AFTER: Final = 5
"""Quick exits in a row after which the plugin is reported as crash-looping (and fails calls fast)."""


def backoff_delay(streak: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait before restart number `streak` (1-based) of a streak: full jitter in [d/2, d].

    Jitter keeps many plugins that crashed together (a bad deploy) from restarting in lockstep.
    """
    ceiling = min(cap, base * 2.0 ** min(streak - 1, 64))
    return random.uniform(ceiling / 2, ceiling)


class RestartPolicy:
    """One plugin's streak of quick exits, and what the next exit leads to."""

    __slots__ = ("stable_after", "base", "cap", "streak")

    def __init__(self, stable_after: float = STABLE_AFTER, base: float = BACKOFF_BASE,
                 cap: float = BACKOFF_CAP) -> None:
        self.stable_after = stable_after
        self.base = base
        self.cap = cap
        self.streak = 0
        """Exits in a row of processes that did not stay up for `stable_after` seconds."""

    def __repr__(self) -> str:
        return f"<RestartPolicy streak={self.streak}>"

    def after_exit(self, restart: str, failed: bool, uptime: float) -> float | None:
        """Seconds until the next start after an exit (`restart`: the manifest's policy; `failed`: the exit
        was one; `uptime`: seconds the process ran), or None when the policy starts no more."""
        if restart == "never" or (restart == "on-failure" and not failed):
            return None
        if self.stable(uptime):
            self.streak = 0
        self.streak += 1
        return backoff_delay(self.streak, self.base, self.cap)

    def stable(self, uptime: float) -> bool:
        """Whether a process that ran `uptime` seconds was healthy."""
        return uptime >= self.stable_after

    @property
    def crashlooping(self) -> bool:
        return self.streak >= CRASHLOOP_AFTER

    def reset(self) -> None:
        """A fresh start (a reload): no exits in a row so far."""
        self.streak = 0
