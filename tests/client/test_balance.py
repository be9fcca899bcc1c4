"""The balancer of calls by plugin (client/balance.py): pure state, driven with a clock of the test's own."""

from __future__ import annotations

import random

from plugrpc.client.balance import CAP, Balancer, Pick

P = frozenset({"p"})


def fleet(*names: str) -> Balancer:
    balancer = Balancer(rng=random.Random(7))
    balancer.discovered(dict.fromkeys(names, P))
    return balancer


def test_the_less_loaded_of_two_gets_the_call_and_a_router_that_answers_nothing_stops_being_picked() -> None:
    b = fleet("a", "b", "c")
    stuck = [b.pick("p", 0.0) for _ in range(30)]  # nothing answered: in flight piles up evenly
    assert {name: sum(1 for p in stuck if p and p.router == name) for name in "abc"} == {"a": 10, "b": 10, "c": 10}
    for pick in stuck:  # a and c answer, b says nothing
        assert pick is not None
        if pick.router != "b":
            b.answered(pick)
    picks = [b.pick("p", 0.0) for _ in range(9)]
    assert all(p is not None and p.router != "b" for p in picks)


def test_three_timeouts_in_a_row_eject_for_a_doubling_time_then_one_trial_call() -> None:
    b = fleet("a", "b")
    b.routers["a"].plugins = frozenset()  # only b runs p here
    b.discovered({"a": frozenset(), "b": P})
    for i in range(3):
        pick = b.pick("p", 0.0)
        assert pick == Pick("b")
        assert b.timed_out(pick, 0.0) is (i == 2)
    assert b.pick("p", 0.5) is None  # ejected for 1 s: nobody left (the client falls back to plugrpc.any.p)
    trial = b.pick("p", 1.0)
    assert trial == Pick("b", trial=True)
    assert b.pick("p", 1.0) is None  # one trial at a time
    assert b.timed_out(trial, 3.0)  # failed trial: ejected again, for twice as long
    assert b.ejected(3.0) == {"b": 2.0}
    trial = b.pick("p", 5.0)
    assert trial is not None and trial.trial
    b.answered(trial)
    assert b.pick("p", 5.0) == Pick("b") and b.ejected(5.0) == {}


def test_ejections_are_capped_and_late_timeouts_of_calls_sent_before_do_not_extend_them() -> None:
    b = fleet("b")
    before = [b.pick("p", 0.0) for _ in range(5)]
    for pick in before[:3]:
        assert pick is not None
        b.timed_out(pick, 2.0)
    assert b.ejected(2.0) == {"b": 1.0}
    for pick in before[3:]:  # sent before the ejection, timing out during it
        assert pick is not None
        assert not b.timed_out(pick, 2.5)
    now = 3.0
    for _ in range(10):
        trial = b.pick("p", now)
        assert trial is not None and trial.trial
        b.timed_out(trial, now)
        now += b.ejected(now)["b"]
    assert b.ejected(now - 0.001)["b"] <= CAP


def test_a_router_gone_or_missing_from_discoveries_is_not_picked() -> None:
    b = fleet("a", "b")
    b.gone("a")
    assert {b.pick("p", 0.0).router for _ in range(5)} == {"b"}  # type: ignore[union-attr]
    b.discovered({"a": P, "b": P})  # back
    b.discovered({"b": P})  # missed once: still picked (a slow router may answer late)
    assert "a" in {b.pick("p", 0.0).router for _ in range(20)}  # type: ignore[union-attr]
    b.discovered({"b": P})
    assert "a" not in {b.pick("p", 0.0).router for _ in range(20)}  # type: ignore[union-attr]
    assert b.pick("q", 0.0) is None  # nobody runs q


def test_a_slow_router_gets_a_share_in_proportion_to_its_speed() -> None:
    """Closed-loop callers: each call takes 1 tick at a and b, 20 at c; least in flight keeps c's share small."""
    b = fleet("a", "b", "c")
    took = {"a": 1, "b": 1, "c": 20}
    inflight: list[tuple[int, Pick]] = []
    counts = dict.fromkeys("abc", 0)
    for tick in range(2000):
        for done in [entry for entry in inflight if entry[0] <= tick]:
            inflight.remove(done)
            b.answered(done[1])
        while len(inflight) < 16:
            pick = b.pick("p", float(tick))
            assert pick is not None
            counts[pick.router] += 1
            inflight.append((tick + took[pick.router], pick))
    share = counts["c"] / sum(counts.values())
    assert share < 0.05, counts
