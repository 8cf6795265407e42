// The library against a stand-in for xypriss that speaks the protocol of
// docs/worker-protocol.md over a socket pair, byte for byte: what the worker
// writes, and what it does with each message xypriss may send, the drain
// notice included. The same behaviours against the real xypriss are in
// xypriss.test.js.
"use strict";

const assert = require("node:assert/strict");
const { test } = require("node:test");

const { FIXTURE, FakeSupervisor, get, until } = require("../support/helpers");
const xypriss = require("..");

test("outside xypriss the library is inert and says so", async () => {
  const alone = new xypriss.Worker({ PORT: "" });
  assert.equal(alone.supervised, false);
  assert.equal(alone.id, null);
  assert.equal(alone.ready(), false);
  assert.equal(alone.status("x"), false);
  await assert.rejects(alone.memoryUsage(), /not running under xypriss/);
  const server = require("node:http").createServer();
  await assert.rejects(alone.listen(server), /no socket was handed over \(LISTEN_FDS\) and no valid PORT/);
});

test("listenFds takes LISTEN_FDS and LISTEN_FDNAMES for this pid only", () => {
  const env = { LISTEN_FDS: "2", LISTEN_PID: "42", LISTEN_FDNAMES: "tcp-0.0.0.0-8080:unix-run-app.sock" };
  assert.deepEqual(xypriss.listenFds(env, 42), [
    { fd: 3, name: "tcp-0.0.0.0-8080" },
    { fd: 4, name: "unix-run-app.sock" },
  ]);
  assert.deepEqual(xypriss.listenFds(env, 43), []);
  assert.deepEqual(xypriss.listenFds({ LISTEN_FDS: "1" }, 43), [{ fd: 3, name: "unknown" }]);
  assert.deepEqual(xypriss.listenFds({}, 43), []);
});

test("the worker says STATUS= and READY=1 on its channel once it listens", async (t) => {
  const fake = new FakeSupervisor(FIXTURE);
  t.after(() => fake.stop());
  const port = await fake.port();
  await fake.waitLine((l) => l === "READY=1");
  assert.equal((await get(port, "/")).body.pid, fake.child.pid);
});

test("events arrive in-process with their names, gc_hint calls global.gc, bad lines are skipped", async (t) => {
  const fake = new FakeSupervisor(FIXTURE, { nodeArgs: ["--expose-gc"] });
  t.after(() => fake.stop());
  const port = await fake.port();
  const alert = { event: "memory_alert", type: "critical", scope: "worker", workerId: 0, pid: fake.child.pid, message: "m", action: "gc_hint", memoryUsage: 3, threshold: 2 };
  const throttling = { event: "memory_throttling", action: "throttle", workerId: 0, pid: fake.child.pid, mechanism: "memory.high", memoryUsage: 3, threshold: 2 };
  // Garbage, an event EventEmitter would throw for, one too long, then real ones.
  fake.send("not json\n[1]\n{\"event\":\"error\"}\n");
  fake.send(`{"event":"x","pad":"${"x".repeat(2 << 20)}"}\n`);
  fake.send(alert);
  fake.send({ event: "low_memory_mode", enabled: true, reason: "asked by an operator" });
  fake.send(throttling);
  fake.send({ event: "gc_hint", reason: "critical", memoryUsage: 3, threshold: 2 });
  const seen = await until("the four events", async () => {
    const { body } = await get(port, "/events");
    return body.received.length >= 4 && body;
  });
  assert.deepEqual(seen.received, [
    alert,
    { event: "low_memory_mode", enabled: true, reason: "asked by an operator" },
    throttling,
    { event: "gc_hint", reason: "critical", memoryUsage: 3, threshold: 2, gcCalled: true },
  ]);
  assert.equal(seen.gcCalls, 1);
  assert.equal(fake.child.exitCode, null, "still running");
});

test("memoryUsage() asks on the channel and resolves with the answer", async (t) => {
  const fake = new FakeSupervisor(FIXTURE);
  t.after(() => fake.stop());
  const port = await fake.port();
  const answer = get(port, "/memory");
  const line = await fake.waitLine((l) => l.startsWith("{"));
  const request = JSON.parse(line);
  assert.equal(request.request, "memory_usage");
  assert.ok(Number.isInteger(request.id) && request.id > 0);
  // An answer to another request is not taken for this one.
  fake.send({ event: "memory_usage", id: request.id + 1000, usage: { rssBytes: 1 } });
  fake.send({ event: "memory_usage", id: request.id, usage: { pid: fake.child.pid, rssBytes: 12345, leak: { leaking: false, enabled: true } } });
  const { status, body } = await answer;
  assert.equal(status, 200);
  assert.deepEqual(body, { pid: fake.child.pid, rssBytes: 12345, leak: { leaking: false, enabled: true } });
});

test("the drain notice: no new connection, the request in flight answered with Connection: close, exit 0", async (t) => {
  const fake = new FakeSupervisor(FIXTURE);
  t.after(() => fake.stop());
  const port = await fake.port();
  const held = get(port, "/hold");
  // The request is in the worker's hands before the notice.
  await until("the request is held", async () => (await get(port, "/events")).body.holding === 1);
  fake.send({ event: "drain", reason: "limit_exceeded", deadlineMs: 30000, timestamp: Date.now() });
  const { status, headers, body } = await held;
  assert.equal(status, 200);
  assert.equal(body.held, true);
  assert.equal(headers.connection, "close");
  assert.deepEqual(await fake.exited, { code: 0, signal: null });
  await fake.waitLine((l) => l === "STOPPING=1");
  await fake.waitLine((l) => l === "STATUS=draining: limit_exceeded");
  await assert.rejects(get(port, "/"), /ECONNREFUSED/);
});

test("a drain that cannot finish ends at its deadline", async (t) => {
  const fake = new FakeSupervisor(FIXTURE);
  t.after(() => fake.stop());
  const port = await fake.port();
  const held = get(port, "/hold?ms=120000").catch((err) => err);
  await until("the request is held", async () => (await get(port, "/events")).body.holding === 1);
  // The fixture answers held requests 300 ms into a drain: this one it
  // cannot, the deadline is shorter.
  fake.send({ event: "drain", reason: "replaced", deadlineMs: 100 });
  assert.deepEqual(await fake.exited, { code: 0, signal: null });
  const outcome = await held;
  assert.ok(outcome instanceof Error, `cut at the deadline, not answered: ${JSON.stringify(outcome)}`);
});

test("SIGTERM drains as the notice does", async (t) => {
  const fake = new FakeSupervisor(FIXTURE);
  t.after(() => fake.stop());
  const port = await fake.port();
  const held = get(port, "/hold");
  await until("the request is held", async () => (await get(port, "/events")).body.holding === 1);
  fake.child.kill("SIGTERM");
  const { status, headers } = await held;
  assert.equal(status, 200);
  assert.equal(headers.connection, "close");
  assert.deepEqual(await fake.exited, { code: 0, signal: null });
});
