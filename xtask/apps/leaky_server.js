// The `http-leak` benchmark's server, in Node.js, run alike by xypriss and
// PM2: a plain HTTP server with a listener leak, which drains correctly.
//
//   node leaky_server.js [LEAK_BYTES_PER_S [BALLAST_BYTES]]
//
// LEAK_BYTES_PER_S defaults to 1 MB/s; BALLAST_BYTES (default 0) is held
// from the start, as a bigger app's heap and caches would be, so that the
// leak reaches a limit within a benchmark's minute.
//
// The socket: the listening one it inherits as fd 3 under xypriss
// (`--listen`, LISTEN_FDS), else port PORT, which PM2's cluster mode shares.
// The leak: every request adds a listener to a long-lived emitter, holding a
// 1 KiB buffer, at most LEAK_BYTES_PER_S a second: about 1 MB/s per worker
// under load, none when idle. A real listener leak: nothing ever removes them.
// Draining: on SIGTERM, SIGINT or a drain notice on its xypriss control
// channel ({"event":"drain",…} on XYPRISS_CONTROL_FD), it answers with
// `Connection: close` for 0.5 s, then stops accepting, finishes what it
// holds, and exits.
// With LEAK_LOG set, it appends (O_APPEND, so workers share the file; T is
// CLOCK_MONOTONIC in ns, the benchmark's clock): `start PID T`, `rss PID T
// RSS` every 100 ms, `drain PID T` when told to drain, `exit PID T`.
"use strict";
const http = require("http");
const net = require("net");
const { EventEmitter } = require("events");

const fs = require("fs");

const leakPerSecond = Number(process.argv[2] || 1e6);
// Held by the global object: a local nothing refers to would be collected.
globalThis.ballast = Buffer.alloc(Number(process.argv[3] || 0), 1);
const log = process.env.LEAK_LOG ? fs.openSync(process.env.LEAK_LOG, "a") : null;
const record = (what, extra = "") => {
  if (log !== null) {
    fs.writeSync(log, `${what} ${process.pid} ${process.hrtime.bigint()}${extra}\n`);
  }
};
record("start");
setInterval(() => record("rss", ` ${process.memoryUsage.rss()}`), 100).unref();
process.on("exit", () => record("exit"));
const CHUNK = 1024;
const registry = new EventEmitter();
registry.setMaxListeners(0);
let second = 0;
let leakedThisSecond = 0;
let draining = false;

const server = http.createServer((req, res) => {
  const now = Math.floor(Date.now() / 1000);
  if (now !== second) {
    second = now;
    leakedThisSecond = 0;
  }
  if (leakedThisSecond + CHUNK <= leakPerSecond) {
    const held = Buffer.alloc(CHUNK, 1);
    registry.on("config", () => held.length);
    leakedThisSecond += CHUNK;
  }
  if (draining) {
    res.setHeader("Connection", "close");
  }
  res.setHeader("Content-Type", "text/plain");
  res.end(`ok ${process.pid}\n`);
});
server.keepAliveTimeout = 5000;

function drain() {
  if (draining) {
    return;
  }
  draining = true;
  record("drain");
  setTimeout(() => {
    server.close(() => process.exit(0));
    server.closeIdleConnections();
    // Whatever still holds a connection open gets 5 s more.
    setTimeout(() => process.exit(0), 5000).unref();
  }, 500);
}

process.on("SIGTERM", drain);
process.on("SIGINT", drain);

const controlFd = Number(process.env.XYPRISS_CONTROL_FD);
if (Number.isInteger(controlFd) && controlFd > 0) {
  const control = new net.Socket({ fd: controlFd, readable: true, writable: false });
  let pending = "";
  control.on("data", (chunk) => {
    pending += chunk;
    let newline;
    while ((newline = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      try {
        if (JSON.parse(line).event === "drain") {
          drain();
        }
      } catch {
        // Not JSON: not for us.
      }
    }
  });
  control.on("error", () => {});
  control.unref();
}

if (process.env.LISTEN_FDS) {
  server.listen({ fd: 3 });
} else {
  server.listen(Number(process.env.PORT || 8080), "127.0.0.1");
}
