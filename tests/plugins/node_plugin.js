#!/usr/bin/env node
// A plugin written from docs/design.md alone: listen on fd 3, NDJSON JSON-RPC 2.0.
const net = require("net");
net.createServer((sock) => {
  let buf = "";
  sock.on("data", (data) => {
    buf += data;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (!line) continue;
      const req = JSON.parse(line);
      if (req.id === undefined) continue;
      let resp;
      if (req.method === "add") resp = { jsonrpc: "2.0", result: req.params[0] + req.params[1], id: req.id };
      else if (req.method === "who") resp = { jsonrpc: "2.0", result: process.env.PLUGRPC_PLUGIN, id: req.id };
      else resp = { jsonrpc: "2.0", error: { code: -32601, message: "Method not found" }, id: req.id };
      sock.write(JSON.stringify(resp) + "\n");
    }
  });
}).listen({ fd: 3 });
