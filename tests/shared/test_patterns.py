"""patterns: event names and NATS-style patterns, checked and matched (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugrpc.patterns import CACHE_BYTES, CACHE_LIMIT, Matcher, PatternIndex, matches, name_problem, pattern_problem


@pytest.mark.parametrize("name", ["up", "port.added", "ovs.port.added", "a-b_c.9", "naïve.ünïcode"])
def test_names(name: str) -> None:
    assert name_problem(name) is None
    assert pattern_problem(name) is None  # a name is a pattern that matches itself only


@pytest.mark.parametrize("name", ["", ".", "a.", ".a", "a..b", "a b", "a.*", "a.>", "tab\there", 7, None, ["a"]])
def test_bad_names(name: object) -> None:
    problem = name_problem(name)
    assert problem is not None and repr(name) in problem


@pytest.mark.parametrize("pattern", ["*", ">", "ovs.*", "ovs.>", "*.port.*", "a.*.>", "*.*.*"])
def test_patterns(pattern: str) -> None:
    assert pattern_problem(pattern) is None


@pytest.mark.parametrize(("pattern", "words"), [
    ("", "non-empty"), ("a..b", "single dots"), (">.a", "last token"), ("a.>.b", "last token"),
    ("a*", "not a pattern"), ("a>", "not a pattern"), ("a b", "not a pattern"), (3, "non-empty string")])
def test_bad_patterns_say_why(pattern: object, words: str) -> None:
    problem = pattern_problem(pattern)
    assert problem is not None and words in problem


@pytest.mark.parametrize(("pattern", "name", "expected"), [
    ("ovs.port.added", "ovs.port.added", True),
    ("ovs.port.added", "ovs.port.removed", False),
    ("ovs.port.*", "ovs.port.added", True),
    ("ovs.port.*", "ovs.port", False),  # '*' is exactly one token
    ("ovs.port.*", "ovs.port.added.now", False),
    ("ovs.>", "ovs.port", True),
    ("ovs.>", "ovs.port.added.now", True),
    ("ovs.>", "ovs", False),  # '>' is one token at least
    ("*.port.*", "demo.port.x", True),
    ("*", "ovs", True),
    ("*", "ovs.port", False),
    (">", "ovs.port.added", True),
    ("a.*.>", "a.b", False),
    ("a.*.>", "a.b.c", True),
])
def test_matches_token_by_token(pattern: str, name: str, expected: bool) -> None:
    assert matches(tuple(pattern.split(".")), name.split(".")) is expected
    assert Matcher([pattern])(name) is expected


def test_matcher_of_several_patterns_remembers_within_a_bound() -> None:
    matcher = Matcher(["port.*", "build.>"])
    assert matcher("port.up") and matcher("build.step.done") and not matcher("disk.full")
    assert not Matcher([])("anything")
    for i in range(CACHE_LIMIT + 10):
        assert matcher(f"port.{i}")
    assert len(matcher._known) <= CACHE_LIMIT
    assert "port.*" in repr(matcher)


def test_matcher_remembers_names_within_a_bound_of_characters() -> None:
    matcher = Matcher([">"])
    long = "x" * (CACHE_BYTES // 4)
    for i in range(10):
        assert matcher(f"{i}.{long}")
    assert sum(map(len, matcher._known)) <= CACHE_BYTES


_TOKENS = st.sampled_from(["a", "b", "c"])
_NAMES = st.lists(_TOKENS, min_size=1, max_size=4).map(".".join)
_PATTERNS = st.lists(st.sampled_from(["a", "b", "*"]), min_size=1, max_size=4).flatmap(
    lambda tokens: st.sampled_from([".".join(tokens), ".".join([*tokens[:-1], ">"])]))


@settings(max_examples=300, deadline=None)
@given(st.lists(_PATTERNS, max_size=12), st.lists(_NAMES, min_size=1, max_size=8), st.data())
def test_the_index_finds_exactly_what_matching_one_by_one_finds(patterns: list[str], names: list[str],
                                                               data: st.DataObject) -> None:
    index = PatternIndex()
    values = list(enumerate(patterns))
    for value in values:
        index.add(value[1], value)
    gone = data.draw(st.lists(st.sampled_from(values), unique=True)) if values else []
    for value in gone:
        index.remove(value[1], value)
    left = [v for v in values if v not in gone]
    for name in names:
        expected = {v for v in left if matches(tuple(v[1].split(".")), name.split("."))}
        assert index.match(name) == expected, (name, left)
    for value in left:
        index.remove(value[1], value)
    assert not index  # every node pruned
