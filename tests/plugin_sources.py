"""Plugin sources used by the end-to-end tests, written into images by `plugrpc_image`."""

from __future__ import annotations

# An SDK plugin with a bit of everything. `hidden` is served but never exported.
KITCHEN = '''
#!/usr/bin/env python3
import asyncio, os, sys
import plugrpc

ACTIVE = 0
PEAK = 0

def echo(*args, **kwargs):
    return kwargs if kwargs else list(args)

def subtract(minuend, subtrahend):
    return minuend - subtrahend

def update(*args):
    return None

async def sleep(seconds):
    global ACTIVE, PEAK
    ACTIVE += 1
    PEAK = max(PEAK, ACTIVE)
    try:
        await asyncio.sleep(seconds)
    finally:
        ACTIVE -= 1
    return seconds

def peak():
    return PEAK

def pid():
    return os.getpid()

def env(name):
    return os.environ.get(name)

def boom():
    raise ValueError("boom")

def crash():
    print("crashing now", flush=True)
    os._exit(3)

def hidden():
    return "secret"

plugrpc.serve({"echo": echo, "subtract": subtract, "update": update, "sleep": sleep, "peak": peak,
               "pid": pid, "env": env, "boom": boom, "crash": crash, "hidden": hidden})
'''
KITCHEN_EXPORTS = ["echo", "subtract", "update", "sleep", "peak", "pid", "env", "boom", "crash"]

OVS = '''
#!/usr/bin/env python3
import plugrpc

def version():
    return "1.0alpha"

plugrpc.serve({"version": version})
'''

# Speaks the contract with no plugrpc at all: fd 3, NDJSON. `mode` picks how it misbehaves.
RAW_TEMPLATE = '''
#!/usr/bin/env python3
import json, socket, sys
MODE = "{mode}"
server = socket.socket(fileno=3)
while True:
    conn, _ = server.accept()
    f = conn.makefile("rwb")
    for line in f:
        req = json.loads(line)
        if MODE == "garbage":
            f.write(b"this is not json\\n")
        elif MODE == "half":
            f.write(b'{{"jsonrpc": "2.0", "res')
            f.flush()
            f.close()
            conn.close()
            break
        elif MODE == "unknown-id":
            f.write(json.dumps({{"jsonrpc": "2.0", "result": 1, "id": 987654}}).encode() + b"\\n")
        else:
            f.write(json.dumps({{"jsonrpc": "2.0", "result": req.get("params"), "id": req["id"]}}).encode() + b"\\n")
        f.flush()
'''


def raw(mode: str) -> str:
    return RAW_TEMPLATE.format(mode=mode)


NODE = '''
#!/usr/bin/env node
// A plugin written from docs/design.md alone: listen on fd 3, NDJSON JSON-RPC 2.0.
const net = require("net");
net.createServer((sock) => {
  let buf = "";
  sock.on("data", (data) => {
    buf += data;
    let i;
    while ((i = buf.indexOf("\\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (!line) continue;
      const req = JSON.parse(line);
      if (req.id === undefined) continue;
      let resp;
      if (req.method === "add") resp = { jsonrpc: "2.0", result: req.params[0] + req.params[1], id: req.id };
      else if (req.method === "who") resp = { jsonrpc: "2.0", result: process.env.PLUGRPC_PLUGIN, id: req.id };
      else resp = { jsonrpc: "2.0", error: { code: -32601, message: "Method not found" }, id: req.id };
      sock.write(JSON.stringify(resp) + "\\n");
    }
  });
}).listen({ fd: 3 });
'''


# Operations: a plugin that can get stuck, stay busy, eat memory or CPU, leave orphans.
OPS = '''
#!/usr/bin/env python3
import os, resource, sys, time
import plugrpc

HOARD = []

def pid():
    return os.getpid()

def echo(value=None):
    return value

def hang():
    time.sleep(3600)  # a sync handler that never returns: the loop is stuck

def block(seconds):
    time.sleep(seconds)  # a sync handler that is busy for a while, then answers
    return seconds

def hog(mib):
    for _ in range(mib):
        HOARD.append(bytearray(1 << 20))
    return len(HOARD)

def spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return seconds

def say(text):
    print(text, flush=True)
    return text

def orphan():
    """Double fork: the grandchild (a `sleep`) is orphaned when its parent exits at once."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        grandchild = os.fork()
        if grandchild == 0:
            os.execv("/bin/sleep", ["sleep", "60"])
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.close(w)
    grandchild = int(os.read(r, 64))
    os.close(r)
    os.waitpid(child, 0)
    return grandchild

plugrpc.serve({"pid": pid, "echo": echo, "hang": hang, "block": block, "hog": hog, "spin": spin, "say": say,
               "orphan": orphan})
'''
OPS_EXPORTS = ["pid", "echo", "hang", "block", "hog", "spin", "say", "orphan"]

# `after` order: each plugin notes when it starts and when its start-up hook is done in $ORDER_LOG
# (O_APPEND: the file's order is the order of events), then says READY=1.
ORDERED = '''
#!/usr/bin/env python3
import os, time
import plugrpc

NAME = os.environ["PLUGRPC_PLUGIN"]

def note(what):
    with open(os.environ["ORDER_LOG"], "a") as f:
        f.write(f"{what} {NAME}\\n")

def start_up():
    time.sleep(0.2)
    note("ready")

note("start")
plugrpc.serve({"name": lambda: NAME}, on_start=start_up)
'''

# A `ready = "notify"` plugin without the SDK: it writes its $NOTIFY_SOCKET where the test can read
# it, sends what the test put in $NOTIFY_SCRIPT (a JSON list of {"data": base64, "repeat": N} or
# {"size": N}: N bytes of "X") and then creates $FLOODED if set,
# waits for the file $GO to exist, then says READY=1 and echoes. With NEVER_ANSWER=1 it says READY=1
# and then never reads a request.
RAW_NOTIFY = '''
#!/usr/bin/env python3
import base64, json, os, socket, time
address = os.environ["NOTIFY_SOCKET"]
with open(os.environ["ADDRESS_FILE"], "w") as f:
    f.write(address)
target = "\\0" + address[1:]
out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for entry in json.loads(os.environ.get("NOTIFY_SCRIPT", "[]")):
    data = base64.b64decode(entry["data"]) if "data" in entry else b"X" * entry["size"]
    for _ in range(entry.get("repeat", 1)):
        out.sendto(data, target)
if os.environ.get("FLOODED"):
    open(os.environ["FLOODED"], "w").close()
while not os.path.exists(os.environ["GO"]):
    time.sleep(0.01)
out.sendto(b"STATUS=serving\\nREADY=1", target)
server = socket.socket(fileno=3)
while True:
    conn, _ = server.accept()
    if os.environ.get("NEVER_ANSWER") == "1":
        continue  # accepted, never read: a plugin that said READY=1 and answers nothing
    f = conn.makefile("rwb")
    for line in f:
        req = json.loads(line)
        f.write(json.dumps({"jsonrpc": "2.0", "result": req.get("params"), "id": req["id"]}).encode() + b"\\n")
        f.flush()
'''
