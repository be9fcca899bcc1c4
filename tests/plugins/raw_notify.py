#!/usr/bin/env python3
# A `ready = "notify"` plugin without the SDK: it writes its $NOTIFY_SOCKET where the test can read
# it, sends what the test put in $NOTIFY_SCRIPT (a JSON list of {"data": base64, "repeat": N} or
# {"size": N}: N bytes of "X") and then creates $FLOODED if set,
# waits for the file $GO to exist, then says READY=1 and echoes. With NEVER_ANSWER=1 it says READY=1
# and then never reads a request.
import base64
import json
import os
import socket
import time

address = os.environ["NOTIFY_SOCKET"]
with open(os.environ["ADDRESS_FILE"], "w") as f:
    f.write(address)
target = "\0" + address[1:]
out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for entry in json.loads(os.environ.get("NOTIFY_SCRIPT", "[]")):
    data = base64.b64decode(entry["data"]) if "data" in entry else b"X" * entry["size"]
    for _ in range(entry.get("repeat", 1)):
        out.sendto(data, target)
if os.environ.get("FLOODED"):
    open(os.environ["FLOODED"], "w").close()
while not os.path.exists(os.environ["GO"]):
    time.sleep(0.01)
out.sendto(b"STATUS=serving\nREADY=1", target)
server = socket.socket(fileno=3)
while True:
    conn, _ = server.accept()
    if os.environ.get("NEVER_ANSWER") == "1":
        continue  # accepted, never read: a plugin that said READY=1 and answers nothing
    f = conn.makefile("rwb")
    for line in f:
        req = json.loads(line)
        f.write(json.dumps({"jsonrpc": "2.0", "result": req.get("params"), "id": req["id"]}).encode() + b"\n")
        f.flush()
