"""The chaos soak (bench/soak, `make soak`) in the suite, with a fixed seed, so every change replays it.

One router, every plugin kind, every fault at once for 60 s: no call lost or run twice, every answer
the call's own, every error documented, the healthy plugin answering throughout, the router's
footprint back at the end, nothing left behind. The fleet variant (three routers on a real
nats-server, NATS restarted, a router killed -9) runs with PLUGRPC_SLOW=1 or NATS=1.
"""

from __future__ import annotations

import os
import sys

import pytest

from util import REPO, SLOW

sys.path.insert(0, os.fspath(REPO))  # bench/ runs from the checkout; it is not installed

from bench.soak.report import summary
from bench.soak.run import Outcome, Settings, soak

SEED = 20261207
FLEET = pytest.mark.skipif(not (SLOW or os.environ.get("NATS") == "1"),
                           reason="the fleet soak: run with PLUGRPC_SLOW=1 or NATS=1")


def assert_held(outcome: Outcome) -> None:
    report = summary(outcome)
    assert outcome.ok, report
    tally = outcome.tally
    assert tally.lost == 0 and outcome.ledger is not None and not outcome.ledger.doubled, report
    assert sum(tally.faults.values()) >= 20 and tally.answered >= 1000, report  # it did soak
    assert tally.steady["faults"] and tally.steady["baseline"], report


@pytest.mark.timeout(300)
async def test_a_minute_of_every_fault_at_once_breaks_no_invariant() -> None:
    assert_held(await soak(Settings(duration=60, seed=SEED, quiet=True)))


@FLEET
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_minute_of_every_fault_in_a_fleet_on_nats_breaks_no_invariant() -> None:
    assert_held(await soak(Settings(duration=60, seed=SEED, nats=True, quiet=True)))
