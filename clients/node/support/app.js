// The worker the tests run, on xypriss-worker like the example, with what a
// test needs to look inside:
//   GET /           {"pid", "workerId", "generation"}
//   GET /hold       answered only once this worker drains (300 ms after),
//                   or after ?ms= (default 60 s): a request surely in flight
//                   when the drain begins
//   GET /memory     memoryUsage()
//   GET /events     the events received, and how often global.gc ran
//   GET /grow?mb=N  keeps N more MiB, resident
// It never says READY=1 when NO_READY is set.
"use strict";

const http = require("node:http");
const xypriss = require("..");

let gcCalls = 0;
if (typeof global.gc === "function") {
  const gc = global.gc;
  global.gc = (...args) => {
    gcCalls += 1;
    return gc(...args);
  };
}

const received = [];
for (const name of ["memory_alert", "memory_recovered", "low_memory_mode", "memory_throttling", "gc_hint", "drain"]) {
  xypriss.on(name, (message) => received.push(message));
}
const holding = new Set();
xypriss.on("drain", () => {
  setTimeout(() => {
    for (const answer of holding) answer();
  }, 300);
});

const kept = [];
// With FREE_ON_THROTTLE, a throttled worker lets go of what it kept, so
// that xypriss lifts the throttle.
xypriss.on("memory_throttling", (message) => {
  if (process.env.FREE_ON_THROTTLE && message.action === "throttle") {
    kept.length = 0;
    global.gc?.();
  }
});
function json(res, status, body) {
  res.writeHead(status, { "Content-Type": "application/json" });
  res.end(`${JSON.stringify(body)}\n`);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://worker");
  const me = { pid: process.pid, workerId: xypriss.id, generation: xypriss.generation };
  switch (url.pathname) {
    case "/":
      return json(res, 200, me);
    case "/hold": {
      const answer = () => {
        holding.delete(answer);
        clearTimeout(timer);
        json(res, 200, { ...me, held: true });
      };
      const timer = setTimeout(answer, Number(url.searchParams.get("ms") ?? 60000));
      holding.add(answer);
      return undefined;
    }
    case "/memory":
      return xypriss.memoryUsage().then(
        (usage) => json(res, 200, usage),
        (err) => json(res, 503, { error: err.message }),
      );
    case "/events":
      return json(res, 200, { ...me, gcCalls, holding: holding.size, received });
    case "/grow": {
      const mb = Number(url.searchParams.get("mb") ?? 16);
      for (let i = 0; i < mb; i++) kept.push(Buffer.alloc(1 << 20, 1));
      return json(res, 200, { ...me, keptMiB: kept.length });
    }
    default:
      return json(res, 404, { error: `no ${url.pathname}` });
  }
});

xypriss.drain(server, { deadlineMs: Number(process.env.DRAIN_DEADLINE_MS ?? 10000) });
xypriss.listen(server).then(
  (address) => {
    const where = typeof address === "string" ? address : `${address.address}:${address.port}`;
    if (process.env.NO_READY) xypriss.status(`serving on ${where}`);
    else xypriss.ready(`serving on ${where}`);
  },
  (err) => {
    console.error(`cannot listen: ${err.message}`);
    process.exit(1);
  },
);
