"""What became of every call, and the invariants it is held to.

A call is made with a unique token; it ends in exactly one of: answered (its own result), failed (a
documented error code with a message), ended (its connection closed before the answer), abandoned (a
fault client gave it up on purpose) or lost (no answer though its connection stayed open, past every
timeout involved). Anything else is a violation, kept with the offending call for the report.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

DOCUMENTED: Final = frozenset({-32700, -32600, -32601, -32602, -32603, -32000, -32001, -32002, -32003, -32004})
"""JSON-RPC's own codes, an exec plugin's failure, and the router's -32001..-32004 (docs/operators.md)."""
ROUTER_CODES: Final = frozenset({-32001, -32002, -32003, -32004})
"""The router's own failures: each must say why (a non-empty `data`)."""


@dataclass
class Call:
    """One call: its unique token (what the plugin records), method, who made it and when."""

    token: str
    method: str
    client: str
    sent: float = field(default_factory=time.monotonic)

    def describe(self) -> str:
        return f"{self.client}: {self.method} token={self.token}"


@dataclass(frozen=True)
class Violation:
    """An invariant broken: which, what exactly, and the call it concerns (if one)."""

    invariant: str
    detail: str
    call: Call | None = None
    at: float = field(default_factory=time.monotonic)


class Tally:
    """Counts of outcomes, the latency of the healthy plugin by phase, and the violations."""

    def __init__(self) -> None:
        self.made = 0
        self.answered = 0
        self.failed: Counter[int] = Counter()
        self.ended = 0
        self.abandoned = 0
        self.lost = 0
        self.late = 0
        self.faults: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.events = 0
        self.events_dropped = 0
        self.steady: dict[str, list[float]] = {"baseline": [], "faults": [], "tail": []}
        self.answered_tokens: set[str] = set()
        self.violations: list[Violation] = []
        self._tokens = itertools.count()

    def token(self, client: str) -> str:
        return f"{client}-{next(self._tokens)}"

    def call(self, method: str, client: str) -> Call:
        self.made += 1
        return Call(self.token(client), method, client)

    def violate(self, invariant: str, detail: str, call: Call | None = None) -> None:
        self.violations.append(Violation(invariant, detail, call))

    # --- outcomes -------------------------------------------------------------------------------

    def result(self, call: Call, result: Any) -> None:
        """An answer with a result: it must be this call's own."""
        problem = wrong_result(call, result)
        if problem is not None:
            self.violate("answer is the call's own", problem, call)
            return
        self.answered += 1
        self.answered_tokens.add(call.token)

    def error(self, call: Call, error: Any) -> None:
        """An answer with an error: a documented code, with a message (and for the router's, data saying why)."""
        problem = undocumented(error)
        if problem is not None:
            self.violate("errors are documented, with a reason", problem, call)
            return
        self.failed[error["code"]] += 1

    def response(self, call: Call, msg: dict[str, Any]) -> None:
        if "error" in msg:
            self.error(call, msg["error"])
        else:
            self.result(call, msg.get("result"))

    def end(self, call: Call, abandoned: bool = False) -> None:
        if abandoned:
            self.abandoned += 1
        else:
            self.ended += 1

    def lose(self, call: Call, why: str) -> None:
        self.lost += 1
        self.violate("every call is answered", why, call)


def wrong_result(call: Call, result: Any) -> str | None:
    """Why `result` is not the answer to `call`, or None."""
    if type(result) is not dict or result.get("token") != call.token:
        return f"answered with another call's result: {result!r:.200}"
    if call.method.endswith(".relay"):
        inner = result.get("inner")
        if type(inner) is not dict or inner.get("token") != call.token + "/r":
            return f"a relayed call answered with another's inner result: {result!r:.200}"
    return None


def undocumented(error: Any) -> str | None:
    """Why `error` is not a documented error with a reason, or None."""
    if type(error) is not dict or type(error.get("code")) is not int:
        return f"malformed error member: {error!r:.200}"
    code, message = error["code"], error.get("message")
    if code not in DOCUMENTED:
        return f"undocumented code {code}: {error!r:.300}"
    if type(message) is not str or not message.strip():
        return f"no message: {error!r:.300}"
    if code in ROUTER_CODES and not error.get("data"):
        return f"no data saying why: {error!r:.300}"
    return None


class Ledger:
    """Every token the plugins recorded, read as the files grow: a token seen twice ran twice."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: Counter[str] = Counter()
        self.where: dict[str, str] = {}
        self.doubled: list[str] = []
        self._offsets: dict[Path, int] = {}

    def read(self) -> list[str]:
        """Read what was appended since last time; return the tokens found twice just now."""
        new: list[str] = []
        for path in sorted(self.root.rglob("*.log")):
            new += self._read_file(path)
        return new

    def _read_file(self, path: Path) -> list[str]:
        offset = self._offsets.get(path, 0)
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line is whole once its newline is there
        self._offsets[path] = offset + end
        twice = []
        where = os.fspath(path.relative_to(self.root))
        for line in data[:end].decode(errors="replace").splitlines():
            self.seen[line] += 1
            if self.seen[line] == 2:
                twice.append(f"{line} (in {self.where[line]} and {where})")
                self.doubled.append(line)
            self.where.setdefault(line, where)
        return twice
