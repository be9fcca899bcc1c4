"""One hostile client on the front socket must not exhaust the router: batches, connections, unfinished lines.

Each scenario runs `plugrpc run` in a subprocess with real plugins and real sockets, while another
client calls in a loop and must keep being answered. Scaled down by default; `PLUGRPC_SLOW=1` runs
the full sizes (a 900,000-request batch, 20,300 connections, 16 unfinished lines of 63 MiB) and
`PLUGRPC_FIGURES` records the other client's latency and the router's peak RSS.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from plugrpc import codes
from plugrpc.testing import RouterProcess

from plugins.sources import ECHO, ECHO_EXPORTS, FAULTY, FAULTY_EXPORTS
from util import FULL, WAIT, RawConn, fd_count, figure, peak_rss_mib, req, wait_until

Image = Callable[..., Path]
Router = Callable[..., RouterProcess]
MIB = 1 << 20


def FULL_SIZE(test: Callable[..., None]) -> Callable[..., None]:
    """A full-size scenario only: skipped unless PLUGRPC_SLOW=1."""
    for mark in FULL:
        test = mark(test)
    return test


@pytest.fixture
def image(plugrpc_image: Image) -> Path:
    return plugrpc_image({"good": ("plugins/good.py", ECHO, ECHO_EXPORTS),
                          "raw": ("plugins/raw.py", FAULTY, FAULTY_EXPORTS)})


class Caller(threading.Thread):
    """Another client, connected before the attack, calling good.echo in a loop: its latencies."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.conn = RawConn(path, timeout=30)
        assert "result" in self.conn.ask(req("good.echo", [0]))
        self.latencies: list[float] = []
        self.problems: list[Any] = []
        self.killed = threading.Event()
        """Set while a test kills the plugin: a call in flight then may fail -32001, as the contract says."""
        self._done = threading.Event()
        self.start()

    def run(self) -> None:
        n = 0
        while not self._done.is_set():
            n += 1
            started = time.perf_counter()
            try:
                answer = self.conn.ask(req("good.echo", [n], id=n))
            except OSError as exc:
                self.problems.append(repr(exc))
                return
            self.latencies.append(time.perf_counter() - started)
            if answer.get("result") != {"by": "good", "payload": n} and not (
                    self.killed.is_set() and answer.get("error", {}).get("code") == codes.PLUGIN_UNAVAILABLE):
                self.problems.append(answer)
            time.sleep(0.005)

    def finish(self) -> tuple[float, float]:
        """Stop; the median and worst latency in seconds (every call answered, none wrongly)."""
        self._done.set()
        self.join(60)
        self.conn.close()
        assert not self.problems, self.problems[:3]
        assert self.latencies
        return statistics.median(self.latencies), max(self.latencies)


def report(name: str, router: RouterProcess, caller: Caller, **context: Any) -> None:
    median, worst = caller.finish()
    figure(f"{name}_other_client_median", median * 1000, "ms", **context)
    figure(f"{name}_other_client_worst", worst * 1000, "ms", **context)
    figure(f"{name}_router_peak_rss", peak_rss_mib(router.pid), "MiB", **context)
    assert worst < 10, f"another client waited {worst:.1f}s"


def batch_line(calls: int) -> bytes:
    return b"[" + b",".join(b'{"jsonrpc":"2.0","method":"good.echo","params":[%d],"id":%d}' % (i, i)
                            for i in range(calls)) + b"]\n"


# --- batches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("calls", [5_000, pytest.param(900_000, marks=FULL)])
def test_a_batch_past_max_batch_is_refused_whole_before_any_of_it_runs(image: Path, plugrpc_router: Router,
                                                                       calls: int) -> None:
    router = plugrpc_router(image)
    caller = Caller(router.socket)
    with RawConn(router.socket, timeout=60) as c:
        c.send(batch_line(calls))  # longer than one read: counted before it is parsed
        refused = c.recv()
        assert refused["error"]["code"] == codes.INVALID_REQUEST, str(refused)[:300]
        assert "at most 1024 in one batch (plugrpc run --max-batch)" in refused["error"]["data"]["reason"]
        tiny = c.ask(b"[" + b",".join([b"1"] * 2000) + b"]\n")  # 4 kB, in one read: refused once parsed
        assert tiny["error"]["code"] == codes.INVALID_REQUEST
        answers = c.ask([req("good.echo", [i], id=i) for i in range(1024)])  # at the bound: served
        assert sorted(a["id"] for a in answers) == list(range(1024))
        report("batch_refused", router, caller, calls=calls)
        assert c.ask(req("good.stats"))["result"]["calls"] == 1 + 1024 + len(caller.latencies)
    assert router.proc.poll() is None


def test_rpc_discover_is_built_once_per_routing_table_however_many_ask(image: Path, plugrpc_router: Router) -> None:
    router = plugrpc_router(image)
    with RawConn(router.socket) as c:
        for _ in range(2):
            answers = c.ask([req("rpc.discover", id=i) for i in range(500)])
            assert len(answers) == 500 and all(a["result"] == answers[0]["result"] for a in answers)
        names = {m["name"] for m in answers[0]["result"]["methods"]}
        assert {"good.echo", "raw.ok"} <= names
    # raw does not describe itself: said once, not once per request.
    assert router.log().count("rpc.discover not answered") == 1


# --- connections ---------------------------------------------------------------------------


class LimitedRouter(RouterProcess):
    """`plugrpc run` with RLIMIT_NOFILE set to `nofile` (soft and hard), through prlimit (same pid)."""

    def __init__(self, root: Path, sock: Path, nofile: int, args: tuple[str, ...] = ()) -> None:
        self.root, self.socket = root, sock
        self.log_path = sock.parent / f"{sock.stem}.log"
        command = ["prlimit", f"--nofile={nofile}:{nofile}", sys.executable, "-m", "plugrpc", "run",
                   "--root", str(root), "--socket", str(sock), *args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def outcome(conn: RawConn) -> dict[str, Any]:
    """What the router says to a new connection asking router.health: an answer, or why it was turned away."""
    try:
        conn.send(req("router.health"))
    except (BrokenPipeError, ConnectionResetError):
        pass  # turned away before we wrote: its line is there to read
    answer: dict[str, Any] = conn.recv()
    return answer


def restart_and_answer(conn: RawConn) -> None:
    """Kill good's process; a new one must start and answer on `conn`."""
    old = conn.ask(req("good.stats"))["result"]["pid"]
    os.kill(old, signal.SIGKILL)

    def new_pid() -> int | None:
        answer = conn.ask(req("good.stats"))
        pid = answer.get("result", {}).get("pid")
        return pid if pid not in (None, old) else None

    wait_until(new_pid, "good to restart and answer", timeout=20)


def test_connections_past_the_cap_are_turned_away_at_once_and_a_plugin_still_restarts(
        image: Path, plugrpc_tmp: Path) -> None:
    router = LimitedRouter(image, plugrpc_tmp / "cap.sock", nofile=400).wait_ready()  # cap: 400 - 256 = 144
    conns: list[RawConn] = []
    try:
        caller = Caller(router.socket)
        answered = turned_away = 0
        for _ in range(450):
            conn = RawConn(router.socket, timeout=2)
            conns.append(conn)
            answer = outcome(conn)
            if "result" in answer:
                answered += 1
                continue
            assert answer["error"]["code"] == codes.OVERLOADED and "--max-clients" in answer["error"]["data"]["reason"]
            assert conn.closed_by_peer()  # at once: within the 2 s read timeout
            conn.close()
            turned_away += 1
        assert answered == 143 and turned_away == 307  # the caller holds the 144th
        assert fd_count(router.pid) < 400 - 100
        caller.killed.set()
        restart_and_answer(conns[0])
        report("connections_capped", router, caller, connections=450, cap=144)
        assert router.log().count("turned a client away") <= 2  # rate-limited
    finally:
        for conn in conns:
            conn.close()
        router.stop()


def test_a_refused_uid_is_closed_at_once_and_logged_without_a_flood(image: Path, plugrpc_router: Router) -> None:
    router = plugrpc_router(image, "--allow-uid", str(os.getuid() + 1))
    for _ in range(300):
        with RawConn(router.socket, timeout=0.5) as c:
            answer = outcome(c)
            assert answer["error"]["code"] == codes.INVALID_REQUEST
            assert c.closed_by_peer()  # end of file at once: the read times out after 0.5 s
    wait_until(lambda: fd_count(router.pid) < 100, "the refused connections to be closed", timeout=1)
    assert router.log().count("refused a client with uid") <= 2


HOLDER = r'''
import socket, sys
path, count = sys.argv[1], int(sys.argv[2])
held = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()
'''


@FULL_SIZE
def test_twenty_thousand_connections_leave_room_for_a_plugin_to_restart(image: Path, plugrpc_router: Router) -> None:
    router = plugrpc_router(image)  # RLIMIT_NOFILE 20,000 here: 17,500 clients at most
    caller = Caller(router.socket)
    probe = RawConn(router.socket, timeout=30)  # admitted before the flood, to see good restart
    holders = [subprocess.Popen([sys.executable, "-c", HOLDER, str(router.socket), "4060"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(5)]
    try:
        for holder in holders:
            assert holder.stdout is not None and int(holder.stdout.readline()) == 4060
        wait_until(lambda: fd_count(router.pid) >= 17_400, "the router to hold its most connections", timeout=60)
        with RawConn(router.socket, timeout=5) as turned:
            assert outcome(turned)["error"]["code"] == codes.OVERLOADED
        restart_and_answer(probe)
        figure("connections_router_fds", fd_count(router.pid), "fds", attempted=20_300)
    finally:
        probe.close()
        for holder in holders:
            holder.kill()
            holder.wait(WAIT)
    report("connections_capped", router, caller, connections=20_300, cap=17_500)


# --- unfinished lines ------------------------------------------------------------------------


def test_unfinished_lines_share_one_budget_and_the_line_that_would_pass_it_is_refused(
        image: Path, plugrpc_router: Router) -> None:
    router = plugrpc_router(image, "--max-line", str(4 * MIB), "--max-buffered", str(8 * MIB))
    caller = Caller(router.socket)
    head = b'{"jsonrpc":"2.0","method":"good.echo","id":7,"params":["'
    conns = [RawConn(router.socket, timeout=WAIT) for _ in range(3)]
    try:
        def send(conn: RawConn) -> None:
            try:
                conn.sock.sendall(head + b"x" * (3 * MIB))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the one refused: closed while we wrote

        senders = [threading.Thread(target=send, args=(conn,)) for conn in conns]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(WAIT)
        outcomes = []
        for conn in conns:
            try:
                conn.sock.sendall(b'"]}\n')
                outcomes.append(conn.recv())
            except (BrokenPipeError, ConnectionResetError):
                outcomes.append(conn.recv())
        refused = [o for o in outcomes if "error" in o]
        assert len(refused) == 1, [str(o)[:200] for o in outcomes]
        assert refused[0]["error"]["code"] == codes.MESSAGE_TOO_LARGE
        assert "--max-buffered" in refused[0]["error"]["data"]
        assert sorted(len(o["result"]["payload"]) for o in outcomes if "result" in o) == [3 * MIB, 3 * MIB]
    finally:
        for conn in conns:
            conn.close()
    report("unfinished_lines_budget", router, caller, lines=3, mib=3, budget_mib=8)


def test_an_unfinished_line_is_closed_after_the_partial_timeout(image: Path, plugrpc_router: Router) -> None:
    router = plugrpc_router(image, "--partial-timeout", "0.5")
    with RawConn(router.socket) as idle, RawConn(router.socket) as trickle, RawConn(router.socket) as fine:
        started = time.monotonic()
        idle.send(b'{"jsonrpc": "2.0", "meth')
        for byte in b'{"jsonrpc": "2.0", "method": "good.echo", "params": ["' + b"x" * 100:
            try:
                trickle.sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.05)
        for conn in (idle, trickle):
            error = conn.recv()["error"]
            assert error["code"] == codes.INVALID_REQUEST and "--partial-timeout" in error["data"]
            assert conn.closed_by_peer()
        assert time.monotonic() - started < 5
        time.sleep(1)  # idle between whole lines is not an unfinished line
        assert fine.ask(req("good.echo", [1]))["result"]["payload"] == 1
    assert router.log().count("waited over 0.5s for its end") == 1  # rate-limited: two closes, one line


@FULL_SIZE
def test_sixteen_unfinished_lines_of_63_mib_stay_within_the_budget(image: Path, plugrpc_router: Router) -> None:
    router = plugrpc_router(image)
    caller = Caller(router.socket)
    chunk = b"x" * MIB
    conns = [RawConn(router.socket, timeout=WAIT) for _ in range(16)]

    def send(conn: RawConn) -> None:
        try:
            conn.sock.sendall(b'{"jsonrpc":"2.0","method":"good.echo","id":1,"params":["')
            for _ in range(63):
                conn.sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass

    senders = [threading.Thread(target=send, args=(conn,)) for conn in conns]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(120)
    refused = 0
    for conn in conns:
        conn.sock.settimeout(40)  # the ones holding the budget are closed after --partial-timeout (30 s)
        try:
            refused += "error" in conn.recv()
        except (ConnectionError, OSError):
            pass
        conn.close()
    assert refused == 16
    report("unfinished_lines_budget", router, caller, lines=16, mib=63, budget_mib=256)
