#!/usr/bin/env python3
"""A plugin without the SDK, raw sockets and threads, for tests/tools/test_conform.py.

Run with no argument it keeps the whole contract; `conform_plugin.py MODE` breaks one clause on
purpose (see MODES), so the test can check that `plugrpc conform` names that clause. Methods:
`echo` (its params), `sleep` [seconds], `emit` (an event), `steps` [n] (progress, then n).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time

MODES = {
    "good": "keeps the contract",
    "never-accepts": "never accepts a connection on fd 3",
    "wrong-id": "answers with id 1, whatever the request's id",
    "answers-notifications": "answers notifications too",
    "two-per-line": "writes each answer twice on one line",
    "no-newline": "never ends an answer with a newline",
    "exits-on-garbage": "exits on a line that is not JSON",
    "no-batches": "answers an array with one -32600",
    "short-lines": "closes a connection on a line over 1 MiB",
    "ignores-term": "ignores SIGTERM",
    "drops-inflight": "exits at once on SIGTERM, calls in flight unanswered",
    "term-exit-3": "exits with status 3 on SIGTERM",
    "direct": "answers rpc.direct with true and enforces its exports",
    "direct-lax": "answers rpc.direct with true and enforces nothing",
    "bad-progress": "reports progress with another id",
    "bad-event": "emits an event with a name that is not dot-separated tokens",
    "no-event": "emits nothing",
    "lax": "ignores the jsonrpc member and answers an object id as it came",
}
MODE = sys.argv[1] if len(sys.argv) > 1 else "good"
assert MODE in MODES, MODE

lock = threading.Lock()
inflight = 0
conns: list[Connection] = []


class Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.write_lock = threading.Lock()
        self.exports: set[str] | None = None

    def send(self, msg: object) -> None:
        data = json.dumps(msg).encode()
        if MODE == "two-per-line":
            data += data
        if MODE != "no-newline":
            data += b"\n"
        with self.write_lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass

    def serve(self) -> None:
        buffer = b""
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                break
            buffer += data
            if MODE == "short-lines" and len(buffer) > 1 << 20 and b"\n" not in buffer:
                break
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    self.line(line)
        conns.remove(self)
        self.sock.close()

    def line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            if MODE == "exits-on-garbage":
                os._exit(2)
            self.send(error(None, -32700, "Parse error"))
            return
        if isinstance(msg, list):
            if MODE == "no-batches" or not msg:
                self.send(error(None, -32600, "Invalid Request"))
                return
            answers = [a for a in (self.handle(m) for m in msg) if a is not None]
            if answers:
                self.send(answers)
            return
        threading.Thread(target=self.run, args=(msg,), daemon=True).start()

    def run(self, msg: object) -> None:
        global inflight
        with lock:
            inflight += 1
        try:
            answer = self.handle(msg)
            if answer is not None:
                self.send(answer)
        finally:
            with lock:
                inflight -= 1

    def handle(self, msg: object) -> dict[str, object] | None:
        if not isinstance(msg, dict):
            return error(None, -32600, "Invalid Request")
        id = msg.get("id")
        valid_id = id is None or (isinstance(id, str | int | float) and not isinstance(id, bool))
        if MODE != "lax" and (msg.get("jsonrpc") != "2.0" or not isinstance(msg.get("method"), str) or not valid_id):
            return error(id if valid_id else None, -32600, "Invalid Request")
        if "id" not in msg and MODE != "answers-notifications":
            return None
        if MODE == "wrong-id":
            id = 1
        method, params = msg.get("method"), msg.get("params")
        if self.exports is not None and method not in self.exports:
            return error(id, -32601, "Method not found")
        if method == "rpc.direct" and MODE in ("direct", "direct-lax"):
            if MODE == "direct":
                self.exports = set(params["exports"])
            return {"jsonrpc": "2.0", "result": True, "id": id}
        if method == "echo":
            return {"jsonrpc": "2.0", "result": params, "id": id}
        if method == "sleep":
            time.sleep(params[0])
            return {"jsonrpc": "2.0", "result": params[0], "id": id}
        if method == "emit":
            name = "bad name!" if MODE == "bad-event" else "poked"
            if MODE != "no-event":
                # The newest connection: an older one conform closed may not have been noticed yet.
                conns[-1].send({"jsonrpc": "2.0", "method": "rpc.event", "params": {"name": name, "data": 1}})
            return {"jsonrpc": "2.0", "result": True, "id": id}
        if method == "steps":
            for i in range(params[0]):
                report = {"id": "other" if MODE == "bad-progress" else id, "value": i}
                self.send({"jsonrpc": "2.0", "method": "rpc.progress", "params": report})
            return {"jsonrpc": "2.0", "result": params[0], "id": id}
        return error(id, -32601, "Method not found")


def error(id: object, code: int, message: str) -> dict[str, object]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id}


def on_term(signum: int, frame: object) -> None:
    if MODE == "drops-inflight":
        os._exit(0)

    def finish() -> None:
        while True:
            with lock:
                if inflight == 0:
                    break
            time.sleep(0.01)
        os._exit(3 if MODE == "term-exit-3" else 0)

    threading.Thread(target=finish, daemon=True).start()


def main() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN if MODE == "ignores-term" else on_term)
    assert os.environ["LISTEN_FDS"] == "1" and os.environ["LISTEN_PID"] == str(os.getpid())
    server = socket.socket(fileno=3)
    if MODE == "never-accepts":
        while True:
            time.sleep(60)
    while True:
        sock, _ = server.accept()
        conn = Connection(sock)
        conns.append(conn)
        threading.Thread(target=conn.serve, daemon=True).start()


if __name__ == "__main__":
    main()
