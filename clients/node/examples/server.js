// An HTTP worker for xypriss, with xypriss-worker:
//
//   sudo xypriss run --listen 8080 --ready notify -- node clients/node/examples/server.js
//
// Every worker serves the one socket xypriss bound; each says READY=1 once
// it listens; a worker being replaced (SIGHUP, `xypriss restart`, a limit)
// finishes its requests and exits; a gc_hint collects garbage (run node with
// --expose-gc for that: `-- node --expose-gc clients/node/examples/server.js`).
//
//   GET /          who answered: {"pid", "workerId", "generation"}
//   GET /slow?ms=N answers after N ms (to watch a drain finish it)
//   GET /memory    xypriss's view of this worker (memoryUsage())
//   GET /events    the xypriss events this worker received
//   GET /grow?mb=N keeps N more MiB (to watch the alerts come)
"use strict";

const http = require("node:http");
// In an app of your own: require("xypriss-worker").
const xypriss = require("..");

const received = [];
const kept = [];
for (const name of ["memory_alert", "memory_recovered", "low_memory_mode", "memory_throttling", "gc_hint", "drain"]) {
  xypriss.on(name, (message) => {
    received.push(message);
    const { event, ...rest } = message;
    console.log(`${event}: ${JSON.stringify(rest)}`);
  });
}
// On a gc_hint the library has called global.gc() already, when exposed;
// an app can drop its caches too.
xypriss.on("gc_hint", () => kept.splice(0, kept.length));

function json(res, status, body) {
  res.writeHead(status, { "Content-Type": "application/json" });
  res.end(`${JSON.stringify(body)}\n`);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://worker");
  switch (url.pathname) {
    case "/":
      return json(res, 200, { pid: process.pid, workerId: xypriss.id, generation: xypriss.generation });
    case "/slow": {
      const ms = Number(url.searchParams.get("ms") ?? 1000);
      return setTimeout(() => json(res, 200, { pid: process.pid, workerId: xypriss.id, sleptMs: ms }), ms);
    }
    case "/memory":
      return xypriss.memoryUsage().then(
        (usage) => json(res, 200, usage),
        (err) => json(res, 503, { error: err.message }),
      );
    case "/events":
      return json(res, 200, { pid: process.pid, gcExposed: typeof global.gc === "function", received });
    case "/grow": {
      const mb = Number(url.searchParams.get("mb") ?? 16);
      // Filled, so that the pages are really resident.
      for (let i = 0; i < mb; i++) kept.push(Buffer.alloc(1 << 20, 1));
      return json(res, 200, { pid: process.pid, keptMiB: kept.length });
    }
    default:
      return json(res, 404, { error: `no ${url.pathname}` });
  }
});

xypriss.drain(server);
xypriss.listen(server).then(
  (address) => {
    const where = typeof address === "string" ? address : `${address.address}:${address.port}`;
    xypriss.ready(`serving on ${where}`);
    console.log(`worker ${xypriss.id} (pid ${process.pid}) serves on ${where}`);
  },
  (err) => {
    console.error(`cannot listen: ${err.message}`);
    process.exit(1);
  },
);
