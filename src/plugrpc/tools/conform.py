"""`plugrpc conform PATH`: check a plugin executable against the plugin contract, from outside.

A plugin in any language is started exactly as the router starts it (its socket listening on fd 3
with LISTEN_FDS=1, its own session, an explicit environment, no shell) and probed over raw
connections, one clause at a time; each clause prints one line, PASS, FAIL or SKIP, and one FAIL
makes the exit status 1. `--exec` checks core0's exec contract instead (`PATH COMMAND ARGS` once
per call, its answer in a `20:::` frame on stdout).

The probes do the I/O, every wait bounded, a plugin that hangs is a FAIL naming the clause; small
pure functions (`judge_*`, `_frames`) turn what the plugin wrote into a verdict.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple

import orjson

from ..manifest import PluginSpec
from ..process import core0
from ..process.child import Child, ExecFailed, above_stdio
from ..process.env import plugin_env, plugin_log
from ..process.exits import describe_exit
from ..process.runtime_dir import RuntimeDir
from ..sockets import bind_socket

Status = Literal["PASS", "FAIL", "SKIP"]

BIG: Final = 4 << 20
"""Bytes of params in the multi-MiB line (the router's own limit is 64 MiB)."""
IN_FLIGHT: Final = 0.3
"""Seconds between sending the slow call and SIGTERM: long enough for the plugin to have read it."""
UNKNOWN: Final = "conform.no-such-method"
"""A method no plugin has: its -32601 answer is the probe when no --call METHOD is given."""
IDS: Final = ("conform", 42, "42", -7, 0, None, "ünï ☃ 🙂")
"""Ids of every JSON type a request may carry, pipelined at once: 42 and "42" must not be confused."""
OUTPUT_LINES: Final = 20
"""Lines of the plugin's own output shown (on stderr) when a clause fails."""
_NAME: Final = re.compile(r"[^A-Za-z0-9_-]+")


# --- what is checked, and what comes out --------------------------------------------------------


class Method(NamedTuple):
    """A method the author names on the command line, with its params (None: no params member)."""

    name: str
    params: Any = None

    @classmethod
    def parse(cls, option: str, values: Sequence[str] | None) -> Method | None:
        """`--call METHOD [PARAMS_JSON]` as a Method; ValueError saying what is wrong."""
        if not values:
            return None
        if len(values) > 2:
            raise ValueError(f"{option} takes METHOD and at most one PARAMS_JSON, got {len(values)} values")
        if len(values) == 1:
            return cls(values[0])
        try:
            params = orjson.loads(values[1])
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{option} {values[0]}: PARAMS_JSON is not valid JSON: {exc}") from None
        if not isinstance(params, dict | list):
            raise ValueError(f"{option} {values[0]}: PARAMS_JSON must be a JSON object or array")
        return cls(values[0], params)


@dataclass(frozen=True)
class Options:
    """What to check: the executable, where it runs, and the methods the author points at."""

    path: Path
    root: Path | None = None
    """Working directory of the plugin (the image root); default: the executable's directory."""
    call: Method | None = None
    """An ordinary, quick method: round trips, ids, connections."""
    slow: Method | None = None
    """A method that takes ~0.5-2 s: answers out of order, SIGTERM finishing it."""
    event: Method | None = None
    """A method whose call emits an event (`rpc.event`)."""
    progress: Method | None = None
    """A method that reports progress (`rpc.progress`) before its answer."""
    timeout: float = 10.0
    """Seconds any one answer may take."""
    grace: float = 5.0
    """Seconds it may take to exit after SIGTERM: the manifest's `grace`, the router's default 5 s."""


class Verdict(NamedTuple):
    """What a check found: PASS, FAIL or SKIP, and why."""

    status: Status
    detail: str


class Result(NamedTuple):
    """One printed line: a clause of the contract and its verdict."""

    status: Status
    clause: str
    detail: str

    def line(self, width: int = 0) -> str:
        return f"{self.status}  {self.clause:<{width}} — {self.detail}"


def passed(detail: str) -> Verdict:
    return Verdict("PASS", detail)


def failed(detail: str) -> Verdict:
    return Verdict("FAIL", detail)


def skipped(detail: str) -> Verdict:
    return Verdict("SKIP", detail)


# --- reading the wire ---------------------------------------------------------------------------


class Answer(NamedTuple):
    """A line that is one JSON text."""

    value: Any


class Gap(NamedTuple):
    """No line came: `why` says what happened instead (silence, a closed connection, an exit)."""

    why: str


class Bad(NamedTuple):
    """A line that is not one JSON text, or bytes never ended by a newline."""

    why: str


Read = Answer | Gap | Bad


def request(method: str, params: Any = None, *, id: Any = ..., jsonrpc: Any = "2.0") -> bytes:
    """One request as a line; `id=...` (the default) makes it a notification."""
    msg: dict[str, Any] = {"jsonrpc": jsonrpc, "method": method}
    if params is not None:
        msg["params"] = params
    if id is not ...:
        msg["id"] = id
    return orjson.dumps(msg) + b"\n"


def call_line(method: Method | None, id: Any = ...) -> bytes:
    """A request for `method`, or for UNKNOWN when the author gave none."""
    return request(UNKNOWN, id=id) if method is None else request(method.name, method.params, id=id)


def parse_line(line: bytes) -> Answer | Bad:
    """A line as one JSON text, or why it is not."""
    try:
        return Answer(orjson.loads(line))
    except orjson.JSONDecodeError as exc:
        return Bad(f"a line that is not one JSON text ({exc}): {_excerpt(line)}")


def is_note(value: Any, method: str | None = None) -> bool:
    """Whether `value` is a notification the plugin sent (`rpc.event`, `rpc.progress`), not an answer."""
    return (isinstance(value, dict) and "id" not in value and isinstance(value.get("method"), str)
            and (method is None or value["method"] == method))


def same_id(a: Any, b: Any) -> bool:
    """Ids equal as JSON texts: 42 is not "42", nor 42.0, nor true."""
    return orjson.dumps(a) == orjson.dumps(b)


def show(value: Any, limit: int = 60) -> str:
    """A JSON value as compact text, shortened for a verdict line."""
    return _excerpt(orjson.dumps(value), limit)


def _excerpt(data: bytes, limit: int = 60) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(data)} bytes)"


def envelope_problem(value: Any) -> str | None:
    """What makes `value` something other than a JSON-RPC 2.0 response, or None."""
    if not isinstance(value, dict):
        return f"an answer that is not an object: {show(value)}"
    if value.get("jsonrpc") != "2.0":
        return f'an answer without "jsonrpc": "2.0": {show(value)}'
    if "id" not in value:
        return f"an answer without an id: {show(value)}"
    if ("result" in value) == ("error" in value):
        return f"an answer with {'both' if 'result' in value else 'neither'} result and error: {show(value)}"
    error = value.get("error")
    if "error" in value and not (isinstance(error, dict) and type(error.get("code")) is int
                                 and isinstance(error.get("message"), str)):
        return f"an error without an integer code and a string message: {show(value)}"
    return None


def error_code(value: Any) -> int | None:
    """The code of an error response, None for a result."""
    error = value.get("error") if isinstance(value, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if type(code) is int else None


def judge_answer(read: Read, id: Any, code: int | None = None, *, ids: Sequence[Any] = ()) -> str | None:
    """What is wrong with `read` as the answer to request `id` (a result, or error `code`); None if right.

    `ids`: further ids the answer may carry (an invalid request's id may be null).
    """
    if not isinstance(read, Answer):
        return read.why
    value = read.value
    problem = envelope_problem(value)
    if problem is not None:
        return problem
    if not any(same_id(value["id"], want) for want in (id, *ids)):
        return f"an answer with id {show(value['id'])} to the request with id {show(id)}"
    got = error_code(value)
    if code is None and got is not None:
        return f"error {got} {show(value['error'].get('message'))} where a result was expected"
    if code is not None and got != code:
        return f"{'a result' if got is None else f'error {got}'} instead of error {code}: {show(value)}"
    return None


class Conn:
    """One raw connection to the plugin: lines in and out, every wait bounded by the plugin's life too."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, exited: asyncio.Future[int],
                 timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.exited = exited
        self.timeout = timeout
        self.buffer = bytearray()
        self.notes: list[Any] = []
        """Notifications the plugin sent on this connection (events, progress), in order."""

    async def send(self, *lines: bytes) -> None:
        """Write; `Stalled` when the plugin does not read it within the timeout."""
        for data in lines:
            self.writer.write(data)
        drain = asyncio.ensure_future(self.writer.drain())
        await asyncio.wait((drain, self.exited), timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
        if not drain.done():
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            if self.exited.done():
                raise Stalled(f"the plugin exited ({describe_exit(self.exited.result())})")
            raise Stalled(f"it stopped reading a {sum(map(len, lines))}-byte write for {self.timeout:g} s")
        drain.result()

    async def line(self, timeout: float | None = None) -> bytes | Gap | Bad:
        """The next line, without its newline; or what came instead."""
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while (newline := self.buffer.find(b"\n")) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return (Bad(f"{len(self.buffer)} bytes with no newline after them: {_excerpt(bytes(self.buffer))}")
                        if self.buffer else Gap(f"no answer within {wait:g} s"))
            read = asyncio.ensure_future(self.reader.read(1 << 20))
            done, _ = await asyncio.wait((read, self.exited), timeout=remaining,
                                         return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await read
                if self.exited.done():
                    return Gap(f"the plugin exited ({describe_exit(self.exited.result())})")
                continue
            try:
                data = read.result()
            except OSError as exc:
                return Gap(f"the connection failed: {exc}")
            if not data:
                return (Bad(f"{len(self.buffer)} bytes and then the end, with no newline: "
                            f"{_excerpt(bytes(self.buffer))}") if self.buffer else Gap("it closed the connection"))
            self.buffer += data
        line = bytes(self.buffer[:newline])
        del self.buffer[: newline + 1]
        return line

    async def answer(self, timeout: float | None = None, *, until: str | None = None) -> Read:
        """The next line that is not one of the plugin's own notifications (kept in `notes`).

        With `until`, return as soon as a notification of that method comes (as an Answer).
        """
        while True:
            line = await self.line(timeout)
            if not isinstance(line, bytes):
                return line
            read = parse_line(line)
            if isinstance(read, Answer) and is_note(read.value):
                self.notes.append(read.value)
                if until is not None and is_note(read.value, until):
                    return read
                continue
            return read

    async def ask(self, data: bytes) -> Read:
        await self.send(data)
        return await self.answer()

    async def answers(self, count: int) -> list[Read]:
        """Up to `count` answers, stopping at the first line that is not one (a verdict needs no more)."""
        reads: list[Read] = []
        while len(reads) < count and (not reads or isinstance(reads[-1], Answer)):
            reads.append(await self.answer())
        return reads

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


class Stalled(Exception):
    """The plugin stopped reading: the clause being checked fails with this message."""


@dataclass
class Probe:
    """The running plugin as the checks see it: its socket, its process, the connections opened."""

    socket: Path
    child: Child
    timeout: float
    conns: list[Conn] = field(default_factory=list)

    async def connect(self) -> Conn:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(os.fspath(self.socket), limit=1 << 20), self.timeout)
        except TimeoutError:
            raise Stalled(f"connecting took longer than {self.timeout:g} s (backlog full?)") from None
        conn = Conn(reader, writer, self.child.exited, self.timeout)
        self.conns.append(conn)
        return conn

    async def ask(self, data: bytes) -> Read:
        """One request on a connection of its own."""
        return await (await self.connect()).ask(data)

    async def close_all(self) -> None:
        conns, self.conns = self.conns, []
        for conn in conns:
            await conn.close()


# --- the clauses ----------------------------------------------------------------------------------

Check = Callable[[Probe, Options], Awaitable[Verdict]]


async def check_activation(probe: Probe, opts: Options) -> Verdict:
    """fd 3: a connection to the handed socket is accepted and a request on it answered."""
    conn = await probe.connect()
    await conn.send(request(UNKNOWN, id=1))
    read = await conn.answer()
    if isinstance(read, Gap):
        return failed(f"{read.why}: it must accept connections on the listening socket it gets as fd 3")
    return passed("accepted a connection on fd 3 and answered on it")


async def check_lines(probe: Probe, opts: Options) -> Verdict:
    """Every answer is one JSON text and a newline; a request split across two writes is read whole."""
    conn = await probe.connect()
    first, second = call_line(opts.call, id=1), request(UNKNOWN, id=2)
    await conn.send(first + second[:10])
    await asyncio.sleep(0.05)
    await conn.send(second[10:], request(UNKNOWN, id=3))
    return judge_lines(await conn.answers(3))


def judge_lines(reads: Sequence[Read]) -> Verdict:
    for read in reads:
        if isinstance(read, Gap | Bad):
            return failed(read.why)
        problem = envelope_problem(read.value)
        if problem is not None:
            return failed(problem)
    got = sorted(orjson.dumps(read.value["id"]) for read in reads if isinstance(read, Answer))
    if got != [b"1", b"2", b"3"]:
        return failed(f"answers with ids {b', '.join(got).decode()} to requests 1, 2 and 3")
    return passed("3 answers, each one JSON text and a newline; a request split over two writes read whole")


async def check_ids(probe: Probe, opts: Options) -> Verdict:
    """Pipelined requests with ids of every type: each answer carries its own id, exactly."""
    conn = await probe.connect()
    await conn.send(b"".join(call_line(opts.call, id=id) for id in IDS))
    return judge_ids(await conn.answers(len(IDS)), IDS, opts.call is not None)


def judge_ids(reads: Sequence[Read], ids: Sequence[Any], results: bool) -> Verdict:
    left = list(ids)
    for read in reads:
        if not isinstance(read, Answer):
            return failed(f"{read.why} (after {len(ids) - len(left)} of {len(ids)} answers)")
        problem = envelope_problem(read.value)
        if problem is not None:
            return failed(problem)
        got = read.value["id"]
        match = next((i for i, want in enumerate(left) if same_id(got, want)), None)
        if match is None:
            return failed(f"an answer with id {show(got)}, which no request still waiting had (sent: {show(ids)})")
        del left[match]
        if results and error_code(read.value) is not None:
            return failed(f"--call answered error {error_code(read.value)} to the request with id {show(got)}")
    return passed(f"{len(ids)} pipelined requests, ids {show(list(ids))}: each answer had its own id, exactly")


async def check_call(probe: Probe, opts: Options) -> Verdict:
    """The author's ordinary method answers with a result."""
    if opts.call is None:
        return skipped("no --call METHOD given")
    read = await probe.ask(call_line(opts.call, id="call"))
    problem = judge_answer(read, "call")
    if problem is not None:
        return failed(f"{opts.call.name}: {problem}")
    assert isinstance(read, Answer)
    return passed(f"{opts.call.name} answered {show(read.value['result'])}")


async def check_order(probe: Probe, opts: Options) -> Verdict:
    """A quick call sent after a slow one on the same connection may be answered first."""
    if opts.slow is None:
        return skipped("no --slow METHOD given")
    conn = await probe.connect()
    await conn.send(call_line(opts.slow, id="slow"), call_line(opts.call, id="quick"))
    return judge_order(await conn.answers(2), opts.slow.name, opts.call is not None)


def judge_order(reads: Sequence[Read], slow: str, results: bool) -> Verdict:
    order: list[str] = []
    for read in reads:
        if not isinstance(read, Answer):
            return failed(read.why)
        problem = envelope_problem(read.value)
        if problem is not None:
            return failed(problem)
        id = read.value["id"]
        if id not in ("slow", "quick") or id in order:
            return failed(f"an answer with id {show(id)} to requests with ids \"slow\" and \"quick\"")
        if (id == "slow" or results) and error_code(read.value) is not None:
            return failed(f"the {id} call ({slow if id == 'slow' else '--call'}) answered {show(read.value)}")
        order.append(id)
    if order[0] == "quick":
        return passed(f"the quick call was answered before the slow {slow} call sent ahead of it")
    return skipped(f"answered in order, the quick call after the slow {slow}: allowed, but calls then "
                   "wait for each other (declare max_inflight = 1)")


async def check_batches(probe: Probe, opts: Options) -> Verdict:
    """An array is answered by an array; [] by -32600; a batch of notifications by nothing."""
    conn = await probe.connect()
    batch = b"[" + b",".join(line.rstrip(b"\n") for line in (
        request(UNKNOWN, id="b1"), request(UNKNOWN), call_line(opts.call, id="b2"))) + b"]\n"
    mixed = await conn.ask(batch)
    empty = await conn.ask(b"[]\n")
    await conn.send(b"[" + request(UNKNOWN).rstrip() + b"," + request(UNKNOWN).rstrip() + b"]\n")
    after = await conn.ask(request(UNKNOWN, id="after"))
    return judge_batches(mixed, empty, after)


def judge_batches(mixed: Read, empty: Read, after: Read) -> Verdict:
    if isinstance(mixed, Answer) and isinstance(mixed.value, dict) and error_code(mixed.value) == -32600:
        return skipped("batches answered with -32600: allowed, as the router never sends a plugin a batch")
    if not isinstance(mixed, Answer):
        return failed(f"a batch of 2 requests and a notification: {mixed.why}")
    if not isinstance(mixed.value, list):
        return failed(f"a batch answered by something other than an array: {show(mixed.value)}")
    for value in mixed.value:
        problem = envelope_problem(value)
        if problem is not None:
            return failed(f"in the batch's answer, {problem}")
    ids = sorted(orjson.dumps(value["id"]) for value in mixed.value)
    if ids != [b'"b1"', b'"b2"']:
        return failed(f"a batch of requests b1, b2 and a notification answered with ids {show(mixed.value)}")
    problem = judge_answer(empty, None, -32600)
    if problem is not None:
        return failed(f"an empty batch []: {problem}")
    problem = judge_answer(after, "after", -32601)
    if problem is not None:
        return failed(f"a batch of notifications must get nothing; the next request got {problem}")
    return passed("[2 requests, a notification] answered by an array of 2; [] by -32600; "
                  "notifications only: nothing")


async def check_notifications(probe: Probe, opts: Options) -> Verdict:
    """Notifications (no id) get no answer at all, not even an error."""
    conn = await probe.connect()
    await conn.send(request(UNKNOWN), request("rpc.cancel", {"id": 999}), call_line(opts.call))
    read = await conn.ask(request(UNKNOWN, id="after"))
    problem = judge_answer(read, "after", -32601)
    if problem is not None:
        return failed(f"3 notifications, then a request: {problem}")
    return passed("no answer to notifications of an unknown method, rpc.cancel" +
                  (f" and {opts.call.name}" if opts.call else ""))


async def check_parse_error(probe: Probe, opts: Options) -> Verdict:
    """Garbage is answered with -32700 (id null) and the connection goes on serving."""
    conn = await probe.connect()
    garbage = await conn.ask(b'{"jsonrpc": "2.0", "method": \n')
    problem = judge_answer(garbage, None, -32700)
    if problem is not None:
        return failed(f"a line that is not JSON: {problem}")
    problem = judge_answer(await conn.ask(request(UNKNOWN, id="after")), "after", -32601)
    if problem is not None:
        return failed(f"the connection must stay usable after a parse error: {problem}")
    return passed("-32700 with id null, and the next request on the connection answered")


INVALID: Final = (
    ('"jsonrpc": "1.0"', b'{"jsonrpc": "1.0", "method": "conform.x", "id": "v1"}\n', "v1"),
    ("an object id", b'{"jsonrpc": "2.0", "method": "conform.x", "id": {"a": 1}}\n', None),
    ("a method that is not a string", b'{"jsonrpc": "2.0", "method": 1, "id": "v3"}\n', "v3"),
    ("a request that is not an object", b'"conform"\n', None),
)
"""Invalid requests: what is wrong, the line, the id the answer may carry besides null."""


async def check_invalid(probe: Probe, opts: Options) -> Verdict:
    """Each invalid request is answered with -32600, one at a time on one connection."""
    conn = await probe.connect()
    for what, data, id in INVALID:
        problem = judge_answer(await conn.ask(data), id, -32600, ids=(None,))
        if problem is not None:
            return failed(f"{what}: {problem}")
    return passed(f"-32600 for {', '.join(what for what, _, _ in INVALID)}")


async def check_unknown(probe: Probe, opts: Options) -> Verdict:
    problem = judge_answer(await probe.ask(request(UNKNOWN, id=404)), 404, -32601)
    return failed(problem) if problem is not None else passed(f"{UNKNOWN} answered with -32601")


async def check_big(probe: Probe, opts: Options) -> Verdict:
    """A multi-MiB line is read whole and answered."""
    data = request(UNKNOWN, {"data": "x" * BIG}, id="big")
    problem = judge_answer(await probe.ask(data), "big", -32601)
    if problem is not None:
        return failed(f"a {len(data) >> 20} MiB request: {problem}")
    return passed(f"a {len(data) >> 20} MiB request (one line) answered")


async def check_connections(probe: Probe, opts: Options) -> Verdict:
    """Several connections at once, each answered on its own, never mixed up."""
    conns = [await probe.connect() for _ in range(4)]
    for i, conn in reversed(list(enumerate(conns))):
        await conn.send(call_line(opts.call, id=f"conn-{i}"))
    for i, conn in enumerate(conns):
        problem = judge_answer(await conn.answer(), f"conn-{i}", None if opts.call else -32601)
        if problem is not None:
            return failed(f"connection {i + 1} of 4: {problem}")
    return passed("4 connections open at once, each request answered on its own connection")


async def check_direct(probe: Probe, opts: Options) -> Verdict:
    """`rpc.direct` is optional: -32601 says the plugin is never handed out; true must then bind exports."""
    conn = await probe.connect()
    read = await conn.ask(request("rpc.direct", {"exports": [UNKNOWN], "max_inflight": 16}, id="direct"))
    if judge_answer(read, "direct", -32601) is None:
        return skipped("answered -32601: direct calls are optional, the router will not hand it out")
    problem = judge_answer(read, "direct")
    if problem is not None:
        return failed(problem)
    assert isinstance(read, Answer)
    if read.value["result"] is not True:
        return failed(f"rpc.direct must answer true or -32601, not {show(read.value['result'])}")
    if opts.call is None:
        return passed("answered true (give --call METHOD to check it then refuses what is not exported)")
    problem = judge_answer(await conn.ask(call_line(opts.call, id="outside")), "outside", -32601)
    if problem is not None:
        return failed(f"after rpc.direct, {opts.call.name} was not in the exports: {problem}")
    return passed(f"answered true, then refused {opts.call.name} (not in the exports given) with -32601")


async def check_events(probe: Probe, opts: Options) -> Verdict:
    """A call of --event METHOD makes the plugin write an `rpc.event` on a connection of ours."""
    if opts.event is None:
        return skipped("no --event METHOD given")
    idle, conn = await probe.connect(), await probe.connect()
    problem = judge_answer(await conn.ask(call_line(opts.event, id="event")), "event")
    if problem is not None:
        return failed(f"{opts.event.name}: {problem}")
    if not any(is_note(note, "rpc.event") for c in (idle, conn) for note in c.notes):
        waits = [asyncio.ensure_future(c.answer(until="rpc.event")) for c in (idle, conn)]
        done, pending = await asyncio.wait(waits, timeout=opts.timeout, return_when=asyncio.FIRST_COMPLETED)
        for wait in pending:
            wait.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for read in (wait.result() for wait in done):
            if isinstance(read, Bad) or isinstance(read, Answer) and not is_note(read.value):
                return failed(f"while waiting for its event: {read.why if isinstance(read, Bad) else show(read.value)}")
    return judge_events([note for c in (idle, conn) for note in c.notes], opts.event.name)


_EVENT_NAME: Final = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def judge_events(notes: Sequence[Any], method: str) -> Verdict:
    events = [note for note in notes if is_note(note, "rpc.event")]
    if not events:
        return failed(f"no rpc.event within the timeout after {method} was answered")
    for event in events:
        params = event.get("params")
        if event.get("jsonrpc") != "2.0" or not isinstance(params, dict):
            return failed(f"an event that is not a JSON-RPC 2.0 notification with params: {show(event)}")
        if not (isinstance(params.get("name"), str) and _EVENT_NAME.fullmatch(params["name"])):
            return failed(f"an event whose name is not dot-separated tokens: {show(event)}")
    names = ", ".join(dict.fromkeys(event["params"]["name"] for event in events))
    return passed(f"{method} emitted {names} (rpc.event on a connection of the router's)")


async def check_progress(probe: Probe, opts: Options) -> Verdict:
    """Progress of a call comes before its answer, on its connection, with the id the call had."""
    if opts.progress is None:
        return skipped("no --progress METHOD given")
    conn = await probe.connect()
    read = await conn.ask(call_line(opts.progress, id=7070))
    problem = judge_answer(read, 7070)
    if problem is not None:
        return failed(f"{opts.progress.name}: {problem}")
    return judge_progress(conn.notes, opts.progress.name, 7070)


def judge_progress(notes: Sequence[Any], method: str, id: Any) -> Verdict:
    reports = [note for note in notes if is_note(note, "rpc.progress")]
    if not reports:
        return failed(f"{method} was answered with no rpc.progress before its answer")
    for note in reports:
        params = note.get("params")
        if not (isinstance(params, dict) and "value" in params and same_id(params.get("id"), id)):
            return failed(f'progress must carry {{"id": {show(id)}, "value": ...}}: {show(note)}')
    return passed(f"{len(reports)} rpc.progress with the call's id, before the answer to {method}")


CHECKS: Final[tuple[tuple[str, Check], ...]] = (
    ("one message per line", check_lines),
    ("answers matched by id", check_ids),
    ("ordinary call", check_call),
    ("out-of-order answers", check_order),
    ("batches", check_batches),
    ("notifications unanswered", check_notifications),
    ("-32700 parse error", check_parse_error),
    ("-32600 invalid request", check_invalid),
    ("-32601 unknown method", check_unknown),
    ("multi-MiB line", check_big),
    ("several connections", check_connections),
    ("rpc.direct", check_direct),
    ("events", check_events),
    ("progress", check_progress),
)
ACTIVATION: Final = "fd 3 activation"
SIGTERM_INFLIGHT: Final = "SIGTERM: in-flight calls"
SIGTERM_EXIT: Final = "SIGTERM: exit"


# --- SIGTERM, last: one observation, two verdicts ---------------------------------------------------


class Termination(NamedTuple):
    """What SIGTERM led to: the slow call's answer (None: none was in flight) and the exit."""

    answer: Read | None
    returncode: int | None
    """None: still running `grace` seconds after SIGTERM."""
    grace: float
    early: bool = False
    """The slow call was answered before SIGTERM was sent (too quick to check anything)."""


async def observe_sigterm(probe: Probe, opts: Options) -> Termination:
    """SIGTERM the plugin's group, as the router does, with an idle connection open and maybe a slow call."""
    idle = await probe.connect()
    await idle.ask(request(UNKNOWN, id="idle"))  # the router always keeps a connection open
    answer: asyncio.Future[Read] | None = None
    if opts.slow is not None:
        conn = await probe.connect()
        await conn.send(call_line(opts.slow, id="term"))
        answer = asyncio.ensure_future(conn.answer(opts.grace + IN_FLIGHT))
        await asyncio.wait((answer,), timeout=IN_FLIGHT)
        if answer.done():
            return Termination(answer.result(), None, opts.grace, early=True)
    probe.child.signal_group(signal.SIGTERM)
    done, _ = await asyncio.wait((probe.child.exited,), timeout=opts.grace)
    read = await answer if answer is not None else None
    return Termination(read, probe.child.exited.result() if done else None, opts.grace)


def judge_inflight(term: Termination, slow: Method | None) -> Verdict:
    if slow is None or term.answer is None:
        return skipped("no --slow METHOD given: nothing was in flight")
    problem = judge_answer(term.answer, "term")
    if problem is not None:
        return failed(f"the {slow.name} call{'' if term.early else ' in flight at SIGTERM'}: {problem}")
    if term.early:
        return skipped(f"{slow.name} was answered within {IN_FLIGHT} s, before SIGTERM: give a slower --slow")
    return passed(f"the {slow.name} call in flight at SIGTERM was answered with its result")


def judge_exit(term: Termination) -> Verdict:
    if term.early:
        return skipped("not sent (see above)")
    if term.returncode is None:
        return failed(f"still running {term.grace:g} s after SIGTERM: the router would SIGKILL it")
    if term.returncode != 0:
        return failed(f"exited with {describe_exit(term.returncode)} after SIGTERM; expected exit code 0")
    return passed(f"exited with exit code 0 within {term.grace:g} s, a connection of the router's still open")


# --- the runner ------------------------------------------------------------------------------------

Report = Callable[[Result], None]


def plugin_name(path: Path) -> str:
    """The name the plugin gets (PLUGRPC_PLUGIN, LISTEN_FDNAMES): its file name, as a manifest name."""
    return _NAME.sub("-", path.name.partition(".")[0]).strip("-")[:40] or "plugin"


async def check_plugin(opts: Options, report: Report, output: collections.deque[str] | None = None) -> list[Result]:
    """Start the plugin as the router would, run every clause against it, stop it; the results in order."""
    results: list[Result] = []

    def record(clause: str, verdict: Verdict) -> None:
        results.append(Result(verdict.status, clause, verdict.detail))
        report(results[-1])

    lines = output if output is not None else collections.deque(maxlen=OUTPUT_LINES)
    name = plugin_name(opts.path)
    spec = PluginSpec(name=name, path=opts.path, exports=())
    rundir = RuntimeDir()
    sock = above_stdio(bind_socket(rundir.socket_for(name), 0o600))
    child: Child | None = None
    quiet, plugin_log.disabled = plugin_log.disabled, True  # its lines are kept in `lines` instead
    try:
        env = plugin_env(spec, {"PLUGRPC_SOCKET": str(rundir.socket_for(name)), "LISTEN_FDS": "1",
                                "LISTEN_FDNAMES": name})
        try:
            child = Child(spec, opts.root or opts.path.parent, sock.fileno(), env)
        except (OSError, subprocess.SubprocessError) as exc:
            why = exc.strerror if isinstance(exc, ExecFailed) else str(exc)
            record(ACTIVATION, failed(f"cannot start it: {why}"))
            return results
        await child.capture_logs(lambda level, text: lines.append(text))
        probe = Probe(rundir.socket_for(name), child, opts.timeout)
        record(ACTIVATION, await _guarded(check_activation, probe, opts))
        if results[-1].status == "FAIL":
            for clause, _ in CHECKS:
                record(clause, skipped("not checked: it answered nothing on fd 3"))
            return results
        for clause, check in CHECKS:
            record(clause, await _guarded(check, probe, opts))
        if child.exited.done():
            why = f"the plugin exited ({describe_exit(child.exited.result())}) before SIGTERM"
            record(SIGTERM_INFLIGHT, failed(why))
            record(SIGTERM_EXIT, failed(why))
            return results
        term = await observe_sigterm(probe, opts)
        record(SIGTERM_INFLIGHT, judge_inflight(term, opts.slow))
        record(SIGTERM_EXIT, judge_exit(term))
        await probe.close_all()
        return results
    finally:
        plugin_log.disabled = quiet
        if child is not None:
            child.signal_group(signal.SIGKILL)
            await asyncio.wait((child.exited,), timeout=opts.grace)
            await child.close()
        sock.close()
        rundir.remove()


async def _guarded(check: Check, probe: Probe, opts: Options) -> Verdict:
    """Run one check; a plugin that stops reading or resets the connection fails it, not the run."""
    try:
        return await check(probe, opts)
    except Stalled as exc:
        return failed(str(exc))
    except OSError as exc:
        return failed(f"the connection failed: {exc.strerror or exc}")
    finally:
        await probe.close_all()


# --- core0's exec contract ---------------------------------------------------------------------------

class Frame(NamedTuple):
    """A level-20 message read from stdout as core0 read it: how it was framed, and its text."""

    framing: str
    text: bytes


class Ran(NamedTuple):
    """One execution: exit status (None: killed at the timeout), stdout and stderr."""

    returncode: int | None
    stdout: bytes
    stderr: bytes


def _frames(stdout: bytes) -> tuple[list[Frame], bool]:
    """The level-20 messages of `stdout` as core0 read them (the rest is log), and whether a block was left open."""
    lines = stdout.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    found, unclosed = core0.messages(lines)
    last = len(found) - 1
    # Only the last message can lack a newline after it: the output ended there.
    return [Frame(core0.framing(msg, i < last or stdout.endswith(b"\n")), msg.text)
            for i, msg in enumerate(found) if msg.level == core0.RESULT_JSON], unclosed


def judge_exec(ran: Ran, code: int, expect: str | None = None) -> tuple[Frame | None, Any, str | None]:
    """The frame and its JSON value in one execution's stdout, and what is wrong with it (None: nothing)."""
    if ran.returncode is None:
        return None, None, "still running at the timeout (killed)"
    frames, open_block = _frames(ran.stdout)
    stderr = ran.stderr.decode("utf-8", "replace").strip()
    said = f" (stderr: {_excerpt(stderr.encode())})" if stderr else ""
    if not frames:
        what = "an unclosed 20::: block" if open_block else "no 20::: frame"
        hint = (": core0's library frames errors on stdout (without it, declare mode = \"exec\")"
                if code and ran.returncode else "")
        return None, None, f"{what} on stdout, {describe_exit(ran.returncode)}{said}{hint}"
    frame = frames[-1]
    try:
        value = orjson.loads(frame.text)
    except orjson.JSONDecodeError as exc:
        return frame, None, f"a 20::: frame that is not JSON ({exc}): {_excerpt(frame.text)}"
    if ran.returncode != code:
        return frame, value, f"{describe_exit(ran.returncode)} instead of exit code {code}, framed {show(value)}"
    if code != 0 and not isinstance(value, str):
        return frame, value, f"an error must be framed as a JSON string, got {show(value)}"
    if expect is not None and value != expect:
        return frame, value, f"framed {show(value)} instead of {show(expect)}"
    return frame, value, None


def verdict_exec(what: str, judged: tuple[Frame | None, Any, str | None]) -> Verdict:
    frame, value, problem = judged
    if problem is not None:
        return failed(problem)
    assert frame is not None
    return passed(f"{what} {show(value)} on stdout as {frame.framing}")


def run_once(argv: Sequence[str], cwd: Path, env: dict[str, str], timeout: float) -> Ran:
    """One execution in its own session, its whole group killed at the end: nothing is left behind."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=cwd, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return Ran(proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        return Ran(None, b"", b"")
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def check_exec(opts: Options, report: Report) -> list[Result]:
    """core0's exec contract: errors framed on stdout with exit 1, a command's result framed with exit 0."""
    path = os.fspath(opts.path)
    cwd = opts.root or opts.path.parent
    env = plugin_env(PluginSpec(name=plugin_name(opts.path), path=opts.path, exports=()))
    results: list[Result] = []

    def record(clause: str, verdict: Verdict) -> None:
        results.append(Result(verdict.status, clause, verdict.detail))
        report(results[-1])

    try:
        ran = run_once([path], cwd, env, opts.timeout)
    except OSError as exc:
        record("exec: no command", failed(f"cannot run it: {exc.strerror or exc}"))
        return results
    record("exec: no command", verdict_exec("exit code 1, framed", judge_exec(ran, 1, "missing command")))
    unknown = "conform-no-such-command"
    judged = judge_exec(run_once([path, unknown, "{}"], cwd, env, opts.timeout), 1)
    verdict = verdict_exec("exit code 1, framed", judged)
    if verdict.status == "PASS" and judged[1] != f"unknown command: {unknown}":
        verdict = passed(f"{verdict.detail} (core0's own text: \"unknown command: {unknown}\")")
    record("exec: unknown command", verdict)
    if opts.call is None:
        record("exec: call", skipped("no --call METHOD given"))
    else:
        params = orjson.dumps(opts.call.params if opts.call.params is not None else {}).decode()
        judged = judge_exec(run_once([path, opts.call.name, params], cwd, env, opts.timeout), 0)
        record("exec: call", verdict_exec(f"{opts.call.name} {params}: exit code 0, framed", judged))
    return results


# --- entry point -------------------------------------------------------------------------------------

CLAUSES: Final = (ACTIVATION, *(clause for clause, _ in CHECKS), SIGTERM_INFLIGHT, SIGTERM_EXIT,
                  "exec: no command", "exec: unknown command", "exec: call")
WIDTH: Final = max(map(len, CLAUSES))


def conform(opts: Options, *, exec_mode: bool = False, out: Callable[[str], object] | None = None,
            err: Callable[[str], object] | None = None) -> int:
    """Check the plugin, writing one line per clause to `out` as it goes; 1 if a clause failed, else 0.

    When one failed, the plugin's last lines of output go to `err`, where its author looks for why.
    """
    write_out = out or (lambda text: (sys.stdout.write(text + "\n"), sys.stdout.flush()))
    write_err = err or (lambda text: sys.stderr.write(text + "\n"))

    def report(result: Result) -> None:
        write_out(result.line(WIDTH))

    output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
    if exec_mode:
        results = check_exec(opts, report)
    else:
        results = asyncio.run(check_plugin(opts, report, output))
    counts = collections.Counter(result.status for result in results)
    write_out(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    if counts["FAIL"] and output:
        write_err(f"its last {len(output)} lines of output:")
        for text in output:
            write_err(f"  {text}")
    return 1 if counts["FAIL"] else 0

