"""`make soak`: one router (three with NATS=1), many plugins and clients, every fault at once, for minutes.

Run as `python -m bench.soak --duration 600 --seed 7 [--nats]`. The faults follow a schedule drawn
from the seed before anything starts (`schedule.py`), so a seed replays the same faults at the same
moments; what they hit (pids, calls in flight) is whatever is running then.

What is checked, continuously and at the end (`tally.py`, `system.py`):
- every call gets exactly one response, carrying its own id and its own result, or its connection ends;
- no call runs twice: every plugin appends each call's unique token to a ledger file (`plugins.py`),
  and no token may appear twice in the ledgers, across restarts, reloads and routers;
- every error is a documented code with a message;
- the plugin no fault touches (`steady`) answers every call, its latency under faults reported beside a
  quiet baseline taken in the same run;
- at the end the router's descriptors, threads, RSS and connection counts are back near where they
  started, no process is left over (nothing whose command line names the soak's directory but the
  routers, their current plugins and nats-server), no child is a zombie, and shutdown leaves no socket
  or directory behind.

Modules: `plugins` (the image), `schedule` (the seeded faults), `callers` (the load), `faults` (doing
each fault), `tally` (outcomes and invariants), `system` (processes and /proc), `run` (the whole run),
`report` (the table).
"""
