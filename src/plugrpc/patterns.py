"""Event names and the patterns that match them, as NATS subjects (docs/design.md, "Events").

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
"""Names a `Matcher` remembers the answer for; past that it starts again (names can be unbounded)..."""
CACHE_BYTES: Final = 1 << 20
"""...and the characters of those names, at most (a name may be as long as a line)."""


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

    __slots__ = ("patterns", "_compiled", "_known", "_size")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._compiled = [tuple(p.split(".")) for p in self.patterns]
        self._known: dict[str, bool] = {}
        self._size = 0
        """Characters of the names in `_known`."""

    def __repr__(self) -> str:
        return f"<Matcher {list(self.patterns)!r}>"

    def __call__(self, name: str) -> bool:
        known = self._known.get(name)
        if known is None:
            tokens = name.split(".")
            known = any(matches(p, tokens) for p in self._compiled)
            if len(self._known) >= CACHE_LIMIT or self._size + len(name) > CACHE_BYTES:
                self._known.clear()
                self._size = 0
            self._known[name] = known
            self._size += len(name)
        return known


class _Node:
    """A token of some patterns, after the tokens of its parents: what ends here, what `>` takes from here."""

    __slots__ = ("children", "one", "here", "rest")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.one: _Node | None = None
        """The patterns with `*` at this token."""
        self.here: set[object] = set()
        """Values of the patterns that end at this token."""
        self.rest: set[object] = set()
        """Values of the patterns whose next token is `>`."""

    def empty(self) -> bool:
        return not (self.children or self.one or self.here or self.rest)


class PatternIndex:
    """Values by valid pattern, in a tree of tokens: the values a name reaches, in time bounded by the
    tree's nodes along the name (at most two ways per token, a token and `*`), whatever the count of
    patterns, as NATS's own subject index."""

    __slots__ = ("_root",)

    def __init__(self) -> None:
        self._root = _Node()

    def add(self, pattern: str, value: object) -> None:
        node = self._root
        for token in pattern.split("."):
            if token == REST:
                node.rest.add(value)
                return
            if token == ONE:
                if node.one is None:
                    node.one = _Node()
                node = node.one
            else:
                node = node.children.setdefault(token, _Node())
        node.here.add(value)

    def remove(self, pattern: str, value: object) -> None:
        """Forget `value` under `pattern`, and the nodes left empty."""
        path: list[tuple[_Node, str]] = []
        node = self._root
        for token in pattern.split("."):
            if token == REST:
                node.rest.discard(value)
                break
            child = node.one if token == ONE else node.children.get(token)
            if child is None:
                return
            path.append((node, token))
            node = child
        else:
            node.here.discard(value)
        for parent, token in reversed(path):
            child = parent.one if token == ONE else parent.children.get(token)
            if child is not None and not child.empty():
                return
            if token == ONE:
                parent.one = None
            else:
                del parent.children[token]

    def match(self, name: str) -> set[object]:
        """The values of every pattern that `name` matches."""
        found: set[object] = set()
        nodes = [self._root]
        for token in name.split("."):
            below = []
            for node in nodes:
                if node.rest:
                    found |= node.rest  # '>' takes this token and the rest, one at least
                child = node.children.get(token)
                if child is not None:
                    below.append(child)
                if node.one is not None:
                    below.append(node.one)
            nodes = below
            if not nodes:
                return found
        for node in nodes:
            found |= node.here
        return found

    def __bool__(self) -> bool:
        return not self._root.empty()
