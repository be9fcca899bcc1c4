"""What the soak prints: a progress line every few seconds, each violation as it is found, the final table."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import TYPE_CHECKING

from .schedule import Phases
from .tally import Ledger, Tally, Violation

if TYPE_CHECKING:
    from .run import Outcome


def percentile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def progress_line(t: float, phases: Phases, tally: Tally, ledger: Ledger) -> str:
    recent = tally.steady[phases.name(t)][-250:]
    return (f"[{t:6.1f}s {phases.name(t):8}] calls {tally.made:7} answered {tally.answered:7} "
            f"failed {sum(tally.failed.values()):5} lost {tally.lost} doubled {len(ledger.doubled)} "
            f"faults {sum(tally.faults.values()):4} violations {len(tally.violations)} "
            f"steady p99 {_ms(percentile_ms(recent, 0.99))} ms")


def violation_text(violation: Violation, seed: int, log_tail: str) -> str:
    call = violation.call.describe() if violation.call is not None else "-"
    return (f"\nINVARIANT BROKEN (seed {seed}): {violation.invariant}\n  {violation.detail}\n  call: {call}\n"
            f"  --- the router's log, last lines ---\n" + "\n".join(f"  | {line}" for line in log_tail.splitlines()))


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k.ljust(width)} | {v} |" for k, v in rows)


def summary(outcome: Outcome) -> str:
    """The final report: a markdown table, then the violations if any."""
    tally, s = outcome.tally, outcome.settings
    rows = [("seed", str(s.seed)), ("duration", f"{s.duration:g} s ({outcome.elapsed:.0f} s with set-up and checks)"),
            ("routers", "3 (fleet on NATS)" if s.nats else "1"),
            ("faults injected", _counts(tally.faults)), ("faults that found nothing to hit", _counts(tally.skipped)),
            ("calls made", f"{tally.made:,}"), ("answered with their own result", f"{tally.answered:,}"),
            ("failed, by code", _counts(Counter({str(k): v for k, v in tally.failed.items()}))),
            ("connection ended first", f"{tally.ended:,}"),
            ("abandoned by fault clients", f"{tally.abandoned:,}"),
            ("answered late (after counted lost)", str(tally.late)),
            ("doubled (ran twice)", str(len(outcome.ledger.doubled) if outcome.ledger else "?")),
            ("lost", str(tally.lost)),
            ("events received by reading subscribers / missed", f"{tally.events:,} / {tally.events_dropped:,}")]
    rows += _steady_rows(tally)
    rows += _footprint_rows(outcome)
    rows.append(("invariants broken", str(len(tally.violations))))
    out = table([("what", "figure"), ("---", "---"), *rows])
    if tally.violations:
        out += "\n\n" + _violations(tally.violations, s.seed)
    return out


def _counts(counter: Counter[str]) -> str:
    if not counter:
        return "0"
    return f"{sum(counter.values()):,}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counter.items()))


def _steady_rows(tally: Tally) -> list[tuple[str, str]]:
    rows = []
    for phase in ("baseline", "faults", "tail"):
        values = tally.steady[phase]
        if values:
            rows.append((f"steady.work in {phase} (calls, p50 / p99 / max ms)",
                         f"{len(values):,}, {_ms(statistics.median(values) * 1000)} / "
                         f"{_ms(percentile_ms(values, 0.99))} / {_ms(max(values) * 1000)}"))
    return rows


def _footprint_rows(outcome: Outcome) -> list[tuple[str, str]]:
    start, end = outcome.start, outcome.end
    if start is None or end is None:
        return [("router footprint", "not measured (the run stopped early)")]
    return [("router fds start -> end", f"{start.fds} -> {end.fds}"),
            ("router threads start -> end", f"{start.threads} -> {end.threads}"),
            ("router RSS start -> end", f"{start.rss_mib:.1f} -> {end.rss_mib:.1f} MiB"),
            ("router clients / in flight / subscriptions, start -> end",
             f"{start.clients} / {start.inflight} / {start.subscriptions} -> "
             f"{end.clients} / {end.inflight} / {end.subscriptions}"),
            ("events emitted / dropped for subscribers that did not read (router.stats)",
             f"{end.events.get('emitted', 0):,} / {end.events.get('dropped', 0):,}"),
            ("router exit statuses", ", ".join(f"{k} {v}" for k, v in outcome.exits.items()) or "-")]


def _violations(violations: list[Violation], seed: int) -> str:
    by: dict[str, list[Violation]] = {}
    for v in violations:
        by.setdefault(v.invariant, []).append(v)
    lines = [f"INVARIANTS BROKEN (replay with SEED={seed}):"]
    for invariant, found in by.items():
        lines.append(f"- {invariant}: {len(found)}")
        for v in found[:3]:
            lines.append(f"    {v.detail}" + (f" [{v.call.describe()}]" if v.call else ""))
    return "\n".join(lines)
