"""Rounds: every (row, scenario) once per round, rows rotated from round to round, into one `Results`.

Rotating the order spreads drift on the machine over all rows; figures are medians over rounds,
and ratios are taken within a round (bench.report). A window during which other processes took
much of the machine is measured again, within a budget, so a busy shared machine cannot spoil
a row nor stretch the run; one row failing is reported and never ends the run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from . import log
from .dispatch import dispatch_round
from .fanout import fanout_round
from .load import measure
from .procs import BenchError
from .report import us
from .rows import Fanout, Row
from .servers import Lab
from .settings import Scenario, Settings


@dataclass
class Results:
    """Everything measured, as it goes into the JSON file (see bench.report for the figures)."""

    settings: Settings
    rows: list[Row]
    scenarios: list[Scenario]
    rounds: dict[str, dict[str, list[dict[str, Any] | None]]] = field(default_factory=dict)
    """row key -> scenario key -> one entry per round (None: that round failed)."""
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    not_applicable: dict[str, dict[str, str]] = field(default_factory=dict)
    dispatch: dict[str, Any] = field(default_factory=dict)
    rss: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    plugin_cost: dict[str, Any] = field(default_factory=dict)
    """What a plugin costs to keep: one plugin's start-up and idle RSS, `plugrpc run` with many (bench.plugin_cost)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """row key -> why it does not run: what its machine lacks, or that its server failed."""
    fanouts: list[Fanout] = field(default_factory=list)
    fanout: dict[str, Any] = field(default_factory=dict)
    """"rounds": one entry per round, fan-out row key (and "calls100") -> its figures (bench.fanout)."""
    silent: dict[str, Any] = field(default_factory=dict)
    """The fleet under a silent failure (bench.silent): one entry per round for each of its rows."""

    def __post_init__(self) -> None:
        self.skipped.update((r.key, why) for r in self.rows if (why := r.missing()))

    def live(self, key: str) -> Row | None:
        """The row `key`, if it is selected and still runs."""
        return next((r for r in self.rows if r.key == key and r.key not in self.skipped), None)

    def record(self, row: Row, scen: Scenario, rnd: int, value: dict[str, Any] | None) -> None:
        per_round = self.rounds.setdefault(row.key, {}).setdefault(scen.key, [None] * self.settings.rounds)
        per_round[rnd] = value

    def as_json(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "rows": {r.key: {"label": r.label, "hops": r.hops, "client": r.client.name,
                             "skipped": self.skipped.get(r.key)} for r in self.rows},
            "fanouts": {f.key: {"label": f.label, "subscribers": f.subscribers} for f in self.fanouts},
            "fanout": self.fanout,
            "scenarios": {s.key: asdict(s) for s in self.scenarios},
            "rounds": self.rounds,
            "errors": self.errors,
            "not_applicable": self.not_applicable,
            "dispatch": self.dispatch,
            "rss": self.rss,
            "profile": self.profile,
            "plugin_cost": self.plugin_cost,
            "silent": self.silent,
        }


async def run_rounds(lab: Lab, results: Results) -> None:
    """Every applicable (row, scenario) once per round, rows rotated from round to round."""
    settings = results.settings
    rows = [r for r in results.rows if r.key not in results.skipped]
    plan = []
    for scen in results.scenarios:
        runnable = []
        for row in rows:
            reason = row.not_applicable(scen)
            if reason:
                results.not_applicable.setdefault(row.key, {})[scen.key] = reason
            else:
                runnable.append(row)
        plan.append((scen, runnable))
    total = sum(len(r) for _, r in plan) * settings.rounds
    done = 0
    retry_budget = _Budget(settings.retry_seconds)
    for rnd in range(settings.rounds):
        started = time.monotonic()
        for i, (scen, runnable) in enumerate(plan):
            shift = (rnd + i) % len(runnable) if runnable else 0
            order = runnable[shift:] + runnable[:shift]
            for row in order:
                done += 1
                if row.key in results.skipped:
                    continue
                prefix = f"[round {rnd + 1}/{settings.rounds} {done:>4}/{total}] {row.key:15} {scen.describe()}"
                try:
                    value = await measure_when_quiet(lab, row, scen, settings, retry_budget, prefix)
                except Exception as exc:  # one row failing must not end the run: it is reported
                    message = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
                    results.errors.setdefault(row.key, {})[scen.key] = message
                    results.record(row, scen, rnd, None)
                    log(f"{prefix}  FAILED: {message}")
                    if _server_gone(lab, row):
                        results.skipped[row.key] = f"its server failed: {message}"
                    continue
                results.record(row, scen, rnd, value)
                log(f"{prefix}  {value['throughput']:>9,.0f}/s  p50 {us(value['p50_us']):>8}"
                    f"  p99 {us(value['p99_us']):>8}  other CPU {value['other_cpu_pct']:3.0f}%")
        results.dispatch.setdefault("rounds", []).append(dispatch_round(settings.dispatch_seconds))
        try:
            fanned = await fanout_round(lab, results.fanouts, settings)
        except Exception as exc:  # its server failed: reported, and the run goes on
            fanned = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"[fanout] FAILED: {exc}")
        results.fanout.setdefault("rounds", []).append(fanned)
        log(f"[round {rnd + 1}/{settings.rounds}] done in {time.monotonic() - started:.0f}s")


class _Budget:
    """Seconds the run may still spend measuring windows again, so a busy machine cannot stretch it."""

    __slots__ = ("left",)

    def __init__(self, seconds: float) -> None:
        self.left = seconds


async def measure_when_quiet(lab: Lab, row: Row, scen: Scenario, settings: Settings, budget: _Budget,
                             prefix: str) -> dict[str, Any]:
    """`measure`, again (up to `settings.retries` times) while other work took more than
    `settings.quiet_pct` of the machine's CPU during the window.

    Other sessions on a shared machine come and go within seconds and halve a row's throughput
    while they run; a window they spoiled is measured again (the discarded windows are kept in
    the results, under "discarded"), as long as the retry budget lasts.
    """
    discarded: list[dict[str, float]] = []
    while True:
        started = time.monotonic()
        value = await measure(lab, row, scen, settings)
        busy = value["other_cpu_pct"] > settings.quiet_pct
        if not busy or len(discarded) >= settings.retries or budget.left <= 0:
            value["discarded"] = discarded
            return value
        discarded.append({k: value[k] for k in ("throughput", "p50_us", "p99_us", "other_cpu_pct")})
        budget.left -= time.monotonic() - started
        log(f"{prefix}  other processes took {value['other_cpu_pct']:.0f}% of the CPUs: measuring again")
        await asyncio.sleep(0.2)


def _server_gone(lab: Lab, row: Row) -> bool:
    """True when the row's server can no longer be reached (it died or never started)."""
    try:
        lab.check_alive(row.server)
    except BenchError:
        return True
    return False
