// The library against the real xypriss (XYPRISS_BIN, as root): readiness on
// the control channel, one socket served by every worker, a rolling restart
// under load with no failed request, gc_hint reaching global.gc, the events
// (memory_alert, low_memory_mode, memory_throttling) and memoryUsage()
// in-process. Run by `cargo test -p xypriss --test
// node_client`, which builds the binary and sets XYPRISS_BIN.
"use strict";

const assert = require("node:assert/strict");
const { test } = require("node:test");

const { EXAMPLE, FIXTURE, Pool, get, until, xyprissOrSkip } = require("../support/helpers");

const LISTEN = ["--listen", "127.0.0.1:0", "--ready", "notify", "--ready-timeout", "60s"];

function start(t, bin, args) {
  const pool = new Pool(bin, args);
  t.after(() => pool.stop());
  return pool;
}

test("the example becomes ready through the library, and every worker serves the one socket", async (t) => {
  const bin = xyprissOrSkip(t);
  if (!bin) return;
  const pool = start(t, bin, [...LISTEN, "--workers", "3", "--", "node", EXAMPLE]);
  const port = await pool.port();
  // --ready notify: only READY=1 makes a worker ready, and Node can send it
  // on the control channel only.
  const ready = await Promise.all([0, 1, 2].map((id) => pool.waitEvent("worker_ready", (e) => e.workerId === id)));
  const pids = new Set(ready.map((e) => e.pid));
  assert.equal(pids.size, 3);
  // Slow requests side by side keep each worker busy in turn, so that the
  // kernel hands connections to all of them.
  const served = new Set();
  await until("every worker answers", async () => {
    const replies = await Promise.all(Array.from({ length: 9 }, () => get(port, "/slow?ms=200")));
    for (const { status, body } of replies) {
      assert.equal(status, 200);
      served.add(body.pid);
    }
    return served.size === 3;
  });
  assert.deepEqual([...served].sort(), [...pids].sort());
  // STATUS= went the same way, and `xypriss status` shows it.
  const status = JSON.parse(pool.command("status", "--json"));
  for (const worker of status.workers) {
    assert.equal(worker.statusText, `serving on 127.0.0.1:${port}`, JSON.stringify(worker));
    assert.equal(worker.controlInvalid, 0);
  }
});

test("a rolling restart under a load loop fails no request", async (t) => {
  const bin = xyprissOrSkip(t);
  if (!bin) return;
  const pool = start(t, bin, [...LISTEN, "--workers", "2", "--", "node", FIXTURE]);
  const port = await pool.port();
  const first = await Promise.all([0, 1].map((id) => pool.waitEvent("worker_ready", (e) => e.workerId === id && e.generation === 1)));
  // Requests in flight when the replacement begins: each is answered only
  // once its worker drains.
  const held = [get(port, "/hold"), get(port, "/hold")];
  await until("both requests are held", async () => {
    let holding = 0;
    const seen = new Map();
    for (let i = 0; i < 20; i++) {
      const { body } = await get(port, "/events");
      seen.set(body.pid, body.holding);
    }
    for (const count of seen.values()) holding += count;
    return seen.size === 2 && holding === 2;
  });
  const tally = { ok: 0, failed: [], pids: new Set() };
  let loading = true;
  const loop = async () => {
    while (loading) {
      try {
        const { status, body } = await get(port, "/");
        if (status === 200) {
          tally.ok += 1;
          tally.pids.add(body.pid);
        } else tally.failed.push(`status ${status}`);
      } catch (err) {
        tally.failed.push(err.message);
      }
    }
  };
  const loops = Array.from({ length: 4 }, loop);
  pool.signal("SIGHUP");
  const exits = await Promise.all(first.map((w) => pool.waitEvent("worker_exited", (e) => e.pid === w.pid)));
  const second = await Promise.all([0, 1].map((id) => pool.waitEvent("worker_ready", (e) => e.workerId === id && e.generation === 2)));
  // Some more load on the new generation, then the tally.
  const before = tally.ok;
  await until("the new generation serves the loop", async () => tally.ok > before + 50);
  loading = false;
  await Promise.all(loops);
  t.diagnostic(`${tally.ok} requests answered, ${tally.failed.length} failed, across the rolling restart`);
  assert.deepEqual(tally.failed, [], `${tally.failed.length} failed of ${tally.ok + tally.failed.length}`);
  for (const exit of exits) {
    assert.equal(exit.expected, true);
    assert.equal(exit.code, 0, `drained and exited by itself: ${JSON.stringify(exit)}`);
  }
  for (const { status, headers, body } of await Promise.all(held)) {
    assert.equal(status, 200);
    assert.equal(body.held, true);
    assert.equal(headers.connection, "close");
  }
  for (const w of second) assert.ok(tally.pids.has(w.pid), `the new worker ${w.pid} served`);
});

test("gc_hint reaches global.gc, and the events and memoryUsage() reach the worker", async (t) => {
  const bin = xyprissOrSkip(t);
  if (!bin) return;
  const pool = start(t, bin, [
    ...LISTEN,
    "--workers",
    "1",
    "--max-memory-per-worker",
    "512MB",
    "--memory-warning-threshold",
    "40",
    "--memory-critical-threshold",
    "50",
    "--garbage-collection-hint",
    "true",
    "--",
    "node",
    "--expose-gc",
    FIXTURE,
  ]);
  const port = await pool.port();
  const { pid } = await pool.waitEvent("worker_ready", (e) => e.workerId === 0);

  // xypriss's view of this worker, asked over the channel.
  const usage = await until("a measured worker", async () => {
    const { status, body } = await get(port, "/memory");
    assert.equal(status, 200, JSON.stringify(body));
    return body.rssBytes > 0 && body;
  });
  assert.equal(usage.pid, pid);
  assert.equal(usage.id, 0);
  assert.equal(usage.status, "ready");
  assert.equal(typeof usage.anonBytes, "number");
  assert.equal(typeof usage.allocationRate, "number");
  assert.equal(typeof usage.leak.leaking, "boolean");

  // Past the critical threshold (256 MiB), under the limit (512 MiB).
  await get(port, "/grow?mb=300");
  const critical = await pool.waitEvent("memory_alert", (e) => e.type === "critical" && e.workerId === 0);
  assert.equal(critical.action, "gc_hint");
  const inside = await until("the alerts and the hint in the worker", async () => {
    const { body } = await get(port, "/events");
    const names = body.received.map((m) => `${m.event}:${m.type ?? m.reason}`);
    return names.includes("memory_alert:warning") && names.includes("memory_alert:critical") && names.includes("gc_hint:critical") && body;
  });
  const hint = inside.received.find((m) => m.event === "gc_hint");
  assert.equal(hint.gcCalled, true);
  assert.ok(inside.gcCalls >= 1, "global.gc ran");
  const alert = inside.received.find((m) => m.event === "memory_alert" && m.type === "critical");
  assert.equal(alert.pid, pid);
  assert.equal(alert.scope, "worker");
  assert.equal(alert.memoryUsage, critical.memoryUsage);

  // An operator's low-memory mode reaches the worker too.
  pool.command("low-memory", "on");
  const mode = await until("low_memory_mode in the worker", async () => {
    const { body } = await get(port, "/events");
    return body.received.find((m) => m.event === "low_memory_mode");
  });
  assert.equal(mode.enabled, true);
  assert.equal(mode.reason, "asked by an operator");
});

test("memory_throttling reaches the worker, both ways", async (t) => {
  const bin = xyprissOrSkip(t);
  if (!bin) return;
  const pool = start(t, bin, [
    ...LISTEN,
    "--workers",
    "1",
    "--max-memory-per-worker",
    "512MB",
    "--memory-warning-threshold",
    "40",
    "--memory-critical-threshold",
    "50",
    "--enforcement",
    "true",
    "--resource-throttling",
    "true",
    "--env",
    "FREE_ON_THROTTLE=1",
    "--",
    "node",
    "--expose-gc",
    FIXTURE,
  ]);
  const port = await pool.port();
  const { pid } = await pool.waitEvent("worker_ready", (e) => e.workerId === 0);
  await get(port, "/grow?mb=300");
  const throttled = await pool.waitEvent("memory_throttling", (e) => e.action === "throttle");
  // The worker frees what it kept when it hears it, and the throttle goes.
  await pool.waitEvent("memory_throttling", (e) => e.action === "release");
  const inside = await until("both in the worker", async () => {
    const { body } = await get(port, "/events");
    const got = body.received.filter((m) => m.event === "memory_throttling");
    return got.length === 2 && got;
  });
  assert.deepEqual(
    inside.map((m) => m.action),
    ["throttle", "release"],
  );
  assert.equal(inside[0].pid, pid);
  assert.equal(inside[0].mechanism, throttled.mechanism);
  assert.equal(inside[0].threshold, throttled.threshold);
});
