#!/usr/bin/env python3
# Speaks the contract without the SDK: `send` writes the lines it is given (`{id}` replaced by the
# request's id) on the connection the request came on, then answers; `late` answers first.
import json
import socket
import threading

server = socket.socket(fileno=3)

def serve(conn):
    f = conn.makefile("rwb")
    for line in f:
        req = json.loads(line)
        rid = req.get("id")
        if rid is None:
            continue
        lines = [text.replace("{id}", json.dumps(rid)).encode() + b"\n" for text in req["params"]["lines"]]
        answer = json.dumps({"jsonrpc": "2.0", "result": "ok", "id": rid}).encode() + b"\n"
        f.write(b"".join(lines) + answer if req["method"] == "send" else answer + b"".join(lines))
        f.flush()

while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
