#!/usr/bin/env node
// A plugrpc plugin in plain Node.js, with no library: the whole contract in one file.
//
//   1. The runtime hands over a unix socket that is already listening, as file descriptor 3
//      (LISTEN_FDS=1, systemd socket activation). Accept connections on it; the router opens
//      one or more and keeps them.
//   2. On each connection: JSON-RPC 2.0, one JSON text per line (NDJSON). Requests may be
//      pipelined; answer each one with its `id` as soon as it is done, in any order. A request
//      without an `id` is a notification: run it, send nothing. An array is a batch.
//   3. SIGTERM: stop taking requests, finish the ones in flight, exit.
//   4. Events: a notification `rpc.event` with params {name, data}, written on any connection the
//      router opened (it keeps one open), reaches every client that subscribed to PLUGIN.name;
//      the manifest declares the names (`events = ["greeted"]`), others are dropped.
//   stdout and stderr go to the router's log, tagged with the plugin's name.
//
//   plugrpc call node.add '[1, 2]'                 -> 3
//   plugrpc call node.greet '{"name": "Ada"}'      -> "Hello, Ada!"  (and the event node.greeted)
//   plugrpc events 'node.>'                        -> {"name":"node.greeted","data":{"name":"Ada"},"seq":1}
//   plugrpc call node.sleep '[0.5]'                -> 0.5 (other calls keep flowing meanwhile)
//   plugrpc call node.add '["1", 2]'               -> error -32602
"use strict";

const net = require("net");

class RpcError extends Error {
  constructor(code, message, data) {
    super(message);
    this.code = code;
    this.data = data;
  }
}

const invalidParams = (why) => new RpcError(-32602, "Invalid params", why);

// Each method names its params (for calls by name, and for rpc.discover) and how many are required.
const METHODS = {
  add: {
    params: ["a", "b"],
    required: 2,
    description: "Add two numbers.",
    run(a, b) {
      if (typeof a !== "number" || typeof b !== "number") throw invalidParams("a and b must be numbers");
      return a + b;
    },
  },
  greet: {
    params: ["name", "greeting"],
    required: 1,
    description: "Greet someone by name.",
    run(name, greeting = "Hello") {
      emit("greeted", { name });
      return `${greeting}, ${name}!`;
    },
  },
  sleep: {
    params: ["seconds"],
    required: 1,
    description: "Wait without blocking other calls, then return the seconds waited.",
    run: (seconds) => new Promise((resolve) => setTimeout(() => resolve(seconds), seconds * 1000)),
  },
  // The router's rpc.discover asks every plugin for this OpenRPC document; it is optional.
  "rpc.discover": {
    params: [],
    required: 0,
    run: () => ({
      openrpc: "1.2.6",
      info: { title: process.env.PLUGRPC_PLUGIN || "node-demo", version: "1.0.0" },
      methods: Object.entries(METHODS)
        .filter(([name]) => !name.startsWith("rpc."))
        .map(([name, m]) => ({
          name,
          description: m.description,
          params: m.params.map((p, i) => ({ name: p, required: i < m.required, schema: {} })),
          result: { name: "result", schema: {} },
        })),
    }),
  },
};

// Params as an array are positional, as an object by name.
function bind(method, params) {
  let args;
  if (params === undefined) args = [];
  else if (Array.isArray(params)) args = params;
  else if (params !== null && typeof params === "object") {
    const unknown = Object.keys(params).filter((k) => !method.params.includes(k));
    if (unknown.length) throw invalidParams(`unexpected params: ${unknown.join(", ")}`);
    args = method.params.map((p) => params[p]);
    while (args.length && args[args.length - 1] === undefined) args.pop();
  } else throw new RpcError(-32600, "Invalid Request", "params must be an array or an object");
  if (args.length < method.required || args.length > method.params.length) {
    throw invalidParams(`expects ${method.params.join(", ")} (${method.required} required)`);
  }
  return args;
}

const validId = (id) => id === null || typeof id === "string" || typeof id === "number";

// One request object -> a Promise of its response, or of null for a notification.
async function handle(msg) {
  const isObject = msg !== null && typeof msg === "object" && !Array.isArray(msg);
  const id = isObject && "id" in msg ? msg.id : undefined;
  if (!isObject || msg.jsonrpc !== "2.0" || typeof msg.method !== "string" || (id !== undefined && !validId(id))) {
    return { jsonrpc: "2.0", error: { code: -32600, message: "Invalid Request" }, id: validId(id) ? id : null };
  }
  let response;
  try {
    const method = Object.hasOwn(METHODS, msg.method) ? METHODS[msg.method] : undefined;
    if (!method) throw new RpcError(-32601, "Method not found", msg.method);
    response = { jsonrpc: "2.0", result: await method.run(...bind(method, msg.params)), id };
  } catch (err) {
    if (!(err instanceof RpcError)) console.error(`${msg.method} failed:`, err); // to the router's log
    const error = err instanceof RpcError
      ? { code: err.code, message: err.message, ...(err.data !== undefined && { data: err.data }) }
      : { code: -32603, message: "Internal error" };
    response = { jsonrpc: "2.0", error, id };
  }
  if (response.result === undefined && !("error" in response)) response.result = null;
  return id === undefined ? null : response;
}

// One line -> the line to send back, or null.
async function handleLine(line) {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (err) {
    return { jsonrpc: "2.0", error: { code: -32700, message: "Parse error", data: err.message }, id: null };
  }
  if (!Array.isArray(msg)) return handle(msg);
  if (msg.length === 0) return { jsonrpc: "2.0", error: { code: -32600, message: "Invalid Request" }, id: null };
  const responses = (await Promise.all(msg.map(handle))).filter((r) => r !== null);
  return responses.length ? responses : null;
}

const sockets = new Set();
let inflight = 0;
let stopping = false;

// An event goes out on any open connection from the router: it needs no request and gets no answer.
function emit(name, data) {
  const line = JSON.stringify({ jsonrpc: "2.0", method: "rpc.event", params: { name, data } }) + "\n";
  for (const sock of sockets) {
    if (!sock.destroyed) return void sock.write(line);
  }
}

// Once nothing is in flight, close every connection after its last response is flushed;
// with no server, sockets or timers left, Node exits (status 0) on its own.
function exitWhenIdle() {
  if (stopping && inflight === 0) for (const sock of sockets) sock.end(() => sock.destroy());
}

const server = net.createServer((sock) => {
  sockets.add(sock);
  sock.on("close", () => sockets.delete(sock));
  sock.on("error", () => {}); // the router went away; "close" follows
  sock.setEncoding("utf8"); // never split a multi-byte character between chunks
  let buffered = "";
  sock.on("data", (chunk) => {
    buffered += chunk;
    let newline;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (!line) continue;
      inflight++;
      handleLine(line).then((reply) => {
        inflight--;
        if (reply !== null && !sock.destroyed) sock.write(JSON.stringify(reply) + "\n");
        exitWhenIdle();
      });
    }
  });
});

server.listen({ fd: 3 }, () => console.log(`serving ${Object.keys(METHODS).length} methods (pid ${process.pid})`));

process.on("SIGTERM", () => {
  stopping = true;
  server.close(); // no new connections
  for (const sock of sockets) sock.pause(); // no new requests
  exitWhenIdle();
});
