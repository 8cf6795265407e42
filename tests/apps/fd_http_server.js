// A worker for xypriss's `--ready socket` tests, in Node.js: it serves HTTP
// on the socket it inherits as fd 3 (LISTEN_FDS), through libuv's epoll,
// after READY_DELAY_MS milliseconds. It never sends READY=1. On SIGTERM it
// stops accepting and exits once the requests in hand are answered.
"use strict";
const http = require("http");

const delay = Number(process.env.READY_DELAY_MS || 0);
const server = http.createServer((req, res) => {
  res.setHeader("Content-Type", "application/json");
  res.end(JSON.stringify({ pid: process.pid, workerId: process.env.XYPRISS_WORKER_ID }) + "\n");
});
setTimeout(() => server.listen({ fd: 3 }), delay);
process.on("SIGTERM", () => server.close(() => process.exit(0)));
