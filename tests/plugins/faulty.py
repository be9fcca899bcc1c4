#!/usr/bin/env python3
# Speaks the contract without plugrpc, one connection at a time, and misbehaves on request.
# `hold` is never answered, so it stays in flight until something else breaks the connection.
import json
import socket

server = socket.socket(fileno=3)

def handle(f, req):
    method, rid, params = req.get("method"), req.get("id"), req.get("params")
    if rid is None or method == "hold":
        return True
    if method == "ok":
        out = json.dumps({"jsonrpc": "2.0", "result": params, "id": rid}).encode() + b"\n"
    elif method == "garbage":
        out = b"this is not json\n"
    elif method == "half":
        f.write(b'{"jsonrpc": "2.0", "res')
        f.flush()
        return False
    elif method == "unknown-id":
        out = json.dumps({"jsonrpc": "2.0", "result": 1, "id": rid + 1000000}).encode() + b"\n"
    elif method == "twice":
        line = json.dumps({"jsonrpc": "2.0", "result": "once", "id": rid}).encode() + b"\n"
        out = line + line
    elif method == "reply":  # answer with any JSON value, our id filled in when it is an object
        reply = params["reply"]
        if isinstance(reply, dict) and params.get("with_id", True):
            reply["id"] = rid
        out = json.dumps(reply).encode() + b"\n"
    elif method == "bytes":  # answer with any bytes at all
        out = bytes.fromhex(params["hex"])
    elif method == "deep":  # an answer nested params[0] levels deep
        n = params[0]
        out = b'{"jsonrpc": "2.0", "result": ' + b"[" * n + b"]" * n + b', "id": %d}\n' % rid
    elif method == "flood":  # a line of params["mib"] MiB, ended only if it is ever finished
        f.write(b'{"jsonrpc": "2.0", "result": "')
        chunk = b"x" * (1 << 20)
        for _ in range(params["mib"]):
            f.write(chunk)
        out = b'", "id": %d}\n' % rid
    else:
        out = json.dumps({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"},
                          "id": rid}).encode() + b"\n"
    f.write(out)
    f.flush()
    return True

while True:
    conn, _ = server.accept()
    f = conn.makefile("rwb")
    try:
        for line in f:
            if not handle(f, json.loads(line)):
                break
    except (OSError, ValueError):
        pass
    finally:
        try:
            f.close()
        except OSError:
            pass
        conn.close()
