"""Plugins that cost little to keep: how soon one SDK plugin answers and what it holds once idle, and how soon
`plugrpc run` has a hundred of them answering, with the router's own RSS then.

Measured once per run, after the rounds and the memory phase, on fresh processes:

- One plugin (the bench's `sdk_echo` and the bundled `ovs`), started `plugin_starts` times as the
  runtime starts one: its socket already listening, handed over as fd 3, and the first call
  written at once (it waits in the socket's backlog). Its start-up time runs from the exec of its
  command to that answer; its RSS (VmRSS from /proc) is read `idle_settle` s later, with the
  connection open and nothing to do.
- `plugrpc run` on an image of `start_plugins` SDK plugins, `start_runs` times: from the exec of
  `plugrpc run` to the moment every plugin has answered one call, each call sent as soon as the
  front socket accepts. A run gives up after `start_bound` s, saying how many answered and which
  did not. Then, idle, the router's RSS and its plugins'.

Times count from the exec of the command (bench.launch stamps it), not from the launch shim's own
start; the bench's part of each figure is one connect and one call.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import plugrpc

from . import log
from .clients import NdjsonConnection, NdjsonConnections, open_ndjson
from .figures import MB
from .launch import EXEC_STAMP_ENV
from .load import rss_of
from .procs import BenchError, Child, listening_socket, rss_kib
from .rounds import Results
from .servers import PLUGINS, PLUGRPC, Lab, router_roles, sdk_image, sdk_methods
from .settings import Settings

OVS_PLUGIN: Final = Path(plugrpc.__file__).resolve().parent / "example-image" / "plugins" / "ovs"
"""The bundled example image's ovs plugin, what `plugrpc run` with no --root serves."""
READY: Final = {"data": "ready?"}


@dataclass(frozen=True)
class Subject:
    """One plugin started on its own: its script, and a call with the answer it must give."""

    key: str
    script: Path
    method: str
    params: Any
    expected: Any


SUBJECTS: Final = (
    Subject("sdk_echo", PLUGINS / "sdk_echo.py", "echo", READY, READY),
    Subject("ovs", OVS_PLUGIN, "version", {}, "1.0alpha"),
)


async def plugin_cost_phase(lab: Lab, results: Results) -> None:
    """The one-plugin starts with the `direct` row (an SDK plugin on its own), the `plugrpc run` starts with the
    `router` row."""
    selected = {r.key for r in results.rows}
    settings = results.settings
    if "direct" in selected:
        results.plugin_cost["plugins"] = {s.key: await _starts(lab, s, settings) for s in SUBJECTS}
    if "router" in selected:
        results.plugin_cost["start"] = await _fleet_starts(lab, settings)


def _exec_time(stamp: Path) -> int:
    """When the command started (time.monotonic_ns() of its exec), as bench.launch wrote it."""
    try:
        return int(stamp.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"no exec time in {stamp} (bench.launch writes it): {exc}") from exc


def _stamped_env(stamp: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, **{EXEC_STAMP_ENV: os.fspath(stamp)}, **extra)


def _failure(what: str, exc: Exception) -> dict[str, str]:
    message = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
    log(f"[plugins] {what} FAILED: {message}")
    return {"error": message}


# --- one plugin ------------------------------------------------------------------------------


async def _starts(lab: Lab, subject: Subject, settings: Settings) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for i in range(settings.plugin_starts):
        lab.check_stop()
        try:
            runs.append(await _one_start(lab, subject, settings, f"{subject.key}-start{i}"))
        except Exception as exc:  # one failed start is reported, and does not hold
            runs.append(_failure(f"{subject.key} start {i + 1}", exc))
            continue
        log(f"[plugins] {subject.key} start {i + 1}/{settings.plugin_starts}: first answer "
            f"{runs[-1]['first_answer_ms']:.0f} ms after exec, idle RSS {runs[-1]['idle_rss_kib'] * 1024 / MB:.1f} MB")
    return {"script": os.fspath(subject.script), "runs": runs}


async def _one_start(lab: Lab, subject: Subject, settings: Settings, name: str) -> dict[str, Any]:
    path, stamp = lab.socket(name), lab.workdir / f"{name}.exec"
    sock = listening_socket(path)
    try:
        child = lab.fleet.spawn(name, [sys.executable, os.fspath(subject.script)], listen=sock,
                                env=_stamped_env(stamp))
    finally:
        sock.close()
    try:
        conn = await open_ndjson(os.fspath(path), subject.method)
        try:
            result = await _answer(conn, subject.params, child, settings.start_bound)
            answered = time.monotonic_ns()
            if result != subject.expected:
                raise BenchError(f"{name}: {subject.method} returned {result!r}, expected {subject.expected!r}")
            await asyncio.sleep(settings.idle_settle)
            rss = rss_kib(child.pid)
        finally:
            await conn.aclose()
    finally:
        lab.fleet.stop(child)
    return {"first_answer_ms": (answered - _exec_time(stamp)) / 1e6, "idle_rss_kib": rss}


async def _answer(conn: NdjsonConnection, params: Any, child: Child, bound: float) -> Any:
    """The result of one call, within `bound` seconds; the child's exit status and output if it died instead."""
    try:
        return await asyncio.wait_for(conn.call(params), bound)
    except (TimeoutError, BenchError) as exc:
        if not child.alive():
            raise child.died() from exc
        raise BenchError(f"{child.name}: no answer within {bound:g} s: {exc!r}") from exc


# --- plugrpc run with many plugins -----------------------------------------------------------


async def _fleet_starts(lab: Lab, settings: Settings) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    n = settings.start_plugins
    for i in range(settings.start_runs):
        lab.check_stop()
        log(f"[plugins] plugrpc run with {n} SDK plugins, start {i + 1}/{settings.start_runs}")
        try:
            runs.append(await _fleet_start(lab, settings, f"start{i}"))
        except Exception as exc:  # reported, and does not hold
            runs.append(_failure(f"plugrpc run start {i + 1}", exc))
            continue
        r = runs[-1]
        log(f"[plugins] all {n} answered {r['all_answered_s']:.2f} s after exec (front socket accepted at "
            f"{r['connected_s']:.2f} s, first answer {r['first_answer_s']:.2f} s); router RSS "
            f"{r['rss_kib']['router'] * 1024 / MB:.1f} MB")
    return {"plugins": n, "bound_s": settings.start_bound, "runs": runs}


async def _fleet_start(lab: Lab, settings: Settings, name: str) -> dict[str, Any]:
    n, bound = settings.start_plugins, settings.start_bound
    image = sdk_image(lab.fresh_dir(f"{name}-image"), n)
    path, stamp = lab.socket(name), lab.workdir / f"{name}.exec"
    env = _stamped_env(stamp, XDG_RUNTIME_DIR=os.fspath(lab.fresh_dir(f"{name}-run")))
    child = lab.fleet.spawn(name, [*PLUGRPC, "run", "--root", os.fspath(image), "--socket", os.fspath(path)],
                            env=env)
    try:
        deadline = time.monotonic() + bound
        methods = sdk_methods(n)
        conns = await _connect_when_bound(os.fspath(path), child, methods, deadline)
        try:
            connected = time.monotonic_ns()
            answers = await _all_answer(conns, methods, child, deadline, bound)
        finally:
            await conns.aclose()
        await asyncio.sleep(settings.idle_settle)
        roles = router_roles([child.pid])
        rss = rss_of(roles)
        plugin_rss = [rss_kib(p) for p in roles["plugin"]]
    finally:
        lab.fleet.stop(child, grace=30)
    started = _exec_time(stamp)
    return {"connected_s": (connected - started) / 1e9, "first_answer_s": (min(answers) - started) / 1e9,
            "all_answered_s": (max(answers) - started) / 1e9, "rss_kib": rss, "plugin_processes": len(plugin_rss),
            "plugin_rss_kib_median": statistics.median(plugin_rss) if plugin_rss else None}


async def _connect_when_bound(path: str, child: Child, methods: list[str], deadline: float) -> NdjsonConnections:
    """One connection per plugin, as soon as the front socket accepts (the router binds it before it starts any
    plugin; connections wait in its backlog until it serves them)."""
    while True:
        if not child.alive():
            raise child.died()
        try:
            return await NdjsonConnections.open(path, len(methods), methods)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise BenchError(f"{child.name}: the front socket {path} did not accept a connection in time") from None
            await asyncio.sleep(0.002)


async def _all_answer(conns: NdjsonConnections, methods: list[str], child: Child, deadline: float,
                      bound: float) -> list[int]:
    """When each plugin answered its call (time.monotonic_ns()); a clear error when one fails or, at the bound,
    which had not answered."""
    answered: dict[str, int] = {}
    calls: dict[asyncio.Future[Any], str] = {}

    def record(fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            answered[calls[fut]] = time.monotonic_ns()

    for call, method in zip(conns.calls, methods, strict=True):
        fut = asyncio.ensure_future(call(READY))
        calls[fut] = method
        fut.add_done_callback(record)
    pending: set[asyncio.Future[Any]] = set(calls)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()),
                                               return_when=asyncio.FIRST_EXCEPTION)
            for fut in done:
                if fut.exception() is not None:
                    raise BenchError(f"{calls[fut]} failed while plugrpc run started: {fut.exception()}")
                if fut.result() != READY:
                    raise BenchError(f"{calls[fut]} returned {fut.result()!r}, expected {READY!r}")
            if pending and time.monotonic() >= deadline:
                left = {calls[f] for f in pending}
                missing = [m for m in methods if m in left]
                state = "running" if child.alive() else f"exited with status {child.popen.returncode}"
                raise BenchError(f"gave up: {len(missing)} of {len(methods)} plugins had not answered {bound:g} s "
                                 f"after plugrpc run started (router {state}), e.g. {', '.join(missing[:5])}; "
                                 f"its log ends: {child.log_tail(2)}")
    finally:
        for fut in pending:
            fut.cancel()
    return list(answered.values())
