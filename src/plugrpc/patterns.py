"""Event names and the patterns that match them, as NATS subjects (DESIGN.md, "Events, progress and calls").

A name is tokens joined by dots: `port.added` as a plugin emits it, `ovs.port.added` with its
plugin in front, as subscribers see it. A pattern is a name in which a token may be `*` (exactly
one token) or, as the last token only, `>` (one or more tokens). Tokens are what NATS allows, so
the NATS bridge can publish every event under its name: no whitespace, no `.`, `*` or `>`.

Pure, and shared by every process: the manifest checks what a plugin declares, the router what a
client subscribes to and what a plugin emits, the SDK what its plugin emits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

TYPE_CHECKING = False  # typing's, without importing typing: a plugin loads these modules (see plugin/plain.py)
if TYPE_CHECKING:
    from typing import Final

_TOKEN: Final = re.compile(r"[^\s.*>]+")
ONE: Final = "*"
REST: Final = ">"
CACHE_LIMIT: Final = 4096
"""Names a `Matcher` remembers the answer for; past that it starts again (names can be unbounded)."""


def name_problem(name: object) -> str | None:
    """Why `name` is not an event name, or None when it is one."""
    if type(name) is not str or not name:
        return f"an event name is a non-empty string, got {name!r}"
    for token in name.split("."):
        if not _TOKEN.fullmatch(token):
            return (f"{name!r} is not an event name: tokens are joined by single dots and hold no spaces, "
                    "'*' or '>' (e.g. 'port.added')")
    return None


def pattern_problem(pattern: object) -> str | None:
    """Why `pattern` is not a pattern (a name with `*` tokens, `>` last), or None when it is one."""
    if type(pattern) is not str or not pattern:
        return f"a pattern is a non-empty string, got {pattern!r}"
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if token == ONE or (token == REST and i == len(tokens) - 1):
            continue
        if token == REST:
            return f"{pattern!r}: '>' matches the rest of a name, so it can only be the last token"
        if not _TOKEN.fullmatch(token):
            return (f"{pattern!r} is not a pattern: tokens are joined by single dots; a token is a name part, "
                    "'*' (any one token) or, last, '>' (one or more tokens), e.g. 'ovs.port.*' or 'demo.>'")
    return None


def matches(pattern: tuple[str, ...], name: list[str]) -> bool:
    """Whether a name (split at its dots) matches a valid pattern (split the same way)."""
    if pattern[-1] == REST:
        if len(name) < len(pattern):  # '>' takes one token at least
            return False
        pattern = pattern[:-1]
    elif len(name) != len(pattern):
        return False
    return all(p == ONE or p == n for p, n in zip(pattern, name, strict=False))


class Matcher:
    """Whether names match any of some valid patterns, each name's answer remembered."""

    __slots__ = ("patterns", "_compiled", "_known")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._compiled = [tuple(p.split(".")) for p in self.patterns]
        self._known: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"<Matcher {list(self.patterns)!r}>"

    def __call__(self, name: str) -> bool:
        known = self._known.get(name)
        if known is None:
            tokens = name.split(".")
            known = any(matches(p, tokens) for p in self._compiled)
            if len(self._known) >= CACHE_LIMIT:
                self._known.clear()
            self._known[name] = known
        return known
