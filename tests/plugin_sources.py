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
// A plugin written from DESIGN.md alone: listen on fd 3, NDJSON JSON-RPC 2.0.
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
