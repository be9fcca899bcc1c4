"""`process/restart.py`: the restart policy as pure code, no process and no clock."""

from __future__ import annotations

from plugrpc.process.restart import CRASHLOOP_AFTER, RestartPolicy, backoff_delay


def test_backoff_delay_is_jittered_doubling_and_capped() -> None:
    for streak in range(1, 12):
        ceiling = min(30.0, 0.1 * 2 ** (streak - 1))
        for _ in range(50):
            assert ceiling / 2 <= backoff_delay(streak) <= ceiling
    assert 15.0 <= backoff_delay(10_000) <= 30.0  # no overflow after hours of crash-looping
    assert 1.0 <= backoff_delay(3, base=1.0, cap=2.0) <= 2.0


def test_the_manifest_policy_decides_whether_an_exit_restarts() -> None:
    policy = RestartPolicy()
    assert policy.after_exit("never", failed=True, uptime=0.0) is None
    assert policy.after_exit("on-failure", failed=False, uptime=0.0) is None
    assert policy.streak == 0  # an exit that is not restarted counts in no streak
    assert policy.after_exit("on-failure", failed=True, uptime=0.0) is not None
    assert policy.after_exit("always", failed=False, uptime=0.0) is not None
    assert policy.streak == 2


def test_quick_exits_in_a_row_make_a_crash_loop_and_a_stable_run_ends_it() -> None:
    policy = RestartPolicy(stable_after=10.0, base=1.0, cap=4.0)
    delays = [policy.after_exit("always", failed=True, uptime=1.0) for _ in range(CRASHLOOP_AFTER)]
    assert policy.crashlooping and policy.streak == CRASHLOOP_AFTER and "streak=5" in repr(policy)
    assert all(d is not None and d <= 4.0 for d in delays) and delays[-1] is not None and delays[-1] >= 2.0
    delay = policy.after_exit("always", failed=True, uptime=10.0)  # it had stayed up: a fresh streak
    assert policy.streak == 1 and not policy.crashlooping and delay is not None and 0.5 <= delay <= 1.0
    assert policy.stable(10.0) and not policy.stable(9.9)
    policy.after_exit("always", failed=True, uptime=0.0)
    policy.reset()
    assert policy.streak == 0
