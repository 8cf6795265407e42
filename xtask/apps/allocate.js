// The threshold-reaction benchmark's worker, in Node.js, run alike by
// xypriss, PM2 and the /proc polling loops: it allocates Buffers at a fixed
// rate and writes every page of them, so the memory is resident at once.
//
//   node allocate.js RATE_MIB_PER_S LIMIT_BYTES CAP_BYTES LOG
//
// It appends to LOG (one line per record, `O_APPEND`, so restarts share it):
//   start PID T          when it starts
//   cross PID T RSS      the first time its RSS is at or over LIMIT_BYTES
//   rss PID T RSS        after each chunk from then on
//   signal PID T NAME    when SIGTERM or SIGINT arrives; it then exits
// T is CLOCK_MONOTONIC in nanoseconds (process.hrtime.bigint on Linux), as
// the benchmark's own clock. At CAP_BYTES it stops growing and holds, so an
// unwatched worker cannot take the machine.
"use strict";
const fs = require("fs");

const CHUNK = 256 * 1024;
const [rate, limit, cap] = process.argv.slice(2, 5).map(Number);
const log = fs.openSync(process.argv[5], "a");
const pid = process.pid;
const now = () => process.hrtime.bigint();
const record = (line) => fs.writeSync(log, `${line}\n`);

const held = [];
const started = now();
let allocated = 0;
let crossed = false;

record(`start ${pid} ${started}`);
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    record(`signal ${pid} ${now()} ${signal}`);
    process.exit(0);
  });
}

// Allocates what is due, a few MiB at most per turn of the event loop, so
// that signals are handled between turns.
function tick() {
  const due = (Number(now() - started) / 1e9) * rate * 1024 * 1024;
  for (let burst = 0; allocated < due && burst < 16; burst++) {
    const rss = process.memoryUsage.rss();
    if (rss >= cap) {
      return setTimeout(tick, 100);
    }
    held.push(Buffer.allocUnsafeSlow(CHUNK).fill(1));
    allocated += CHUNK;
    const after = process.memoryUsage.rss();
    if (after >= limit) {
      record(`${crossed ? "rss" : "cross"} ${pid} ${now()} ${after}`);
      crossed = true;
    }
  }
  if (allocated < due) {
    setImmediate(tick);
  } else {
    setTimeout(tick, 1);
  }
}
tick();
