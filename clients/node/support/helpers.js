// What the tests share: a real `xypriss run` pool and its NDJSON stdout, a
// stand-in for xypriss that speaks the protocol over a socket pair, and HTTP
// requests that each take a fresh connection.
"use strict";

const { spawn, execFileSync } = require("node:child_process");
const http = require("node:http");
const path = require("node:path");
const readline = require("node:readline");

const ROOT = path.resolve(__dirname, "..");
const FIXTURE = path.join(__dirname, "app.js");
const EXAMPLE = path.join(ROOT, "examples", "server.js");
/** Generous: the machine may be busy. */
const WAIT_MS = 60000;

/**
 * The xypriss binary (XYPRISS_BIN), or why the tests that need it cannot
 * run. In CI (CI set) a missing binary or root is a failure, not a skip.
 */
function xyprissOrSkip(t) {
  const bin = process.env.XYPRISS_BIN;
  const why = !bin ? "XYPRISS_BIN is not set" : process.getuid() !== 0 ? "xypriss run needs root" : null;
  if (why === null) return bin;
  if (process.env.CI) throw new Error(`${why}, and CI is set: the test may not skip`);
  t.skip(why);
  return null;
}

let pools = 0;

class Pool {
  /** Starts `xypriss run --name <unique> ARGS…`. */
  constructor(bin, args) {
    this.bin = bin;
    this.name = `node-${process.pid}-${pools++}`;
    this.events = [];
    this.stderr = "";
    this.waiters = new Set();
    // As root, the workers run as root only when asked (as in the Rust
    // tests' support module).
    const user = process.getuid() === 0 && !args.includes("--user") ? ["--user", "root"] : [];
    this.child = spawn(bin, ["run", "--name", this.name, ...user, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    this.exited = new Promise((resolve) => this.child.on("exit", (code, signal) => resolve({ code, signal })));
    readline.createInterface({ input: this.child.stdout }).on("line", (line) => {
      let event;
      try {
        event = JSON.parse(line);
      } catch {
        return;
      }
      this.events.push(event);
      for (const check of this.waiters) check();
    });
    this.child.stderr.on("data", (chunk) => {
      this.stderr += chunk;
    });
  }

  /** The first event named `name` that satisfies `pred`, waiting for it. */
  waitEvent(name, pred = () => true, timeoutMs = WAIT_MS) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.events.find((e) => e.event === name && pred(e));
        if (!found) return;
        this.waiters.delete(check);
        clearTimeout(timer);
        resolve(found);
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`no ${name} within ${timeoutMs} ms; events:\n${this.events.map((e) => JSON.stringify(e)).join("\n")}\nstderr:\n${this.stderr}`));
      }, timeoutMs);
      this.waiters.add(check);
      check();
    });
  }

  /** The port of the first --listen address. */
  async port() {
    const listening = await this.waitEvent("listening");
    return Number(listening.addresses[0].split(":").pop());
  }

  /** `xypriss ARGS… --name NAME`, to its end; its stdout. */
  command(...args) {
    return execFileSync(this.bin, [...args, "--name", this.name], { encoding: "utf8" });
  }

  signal(name) {
    this.child.kill(name);
  }

  /** SIGINT, then its exit. */
  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGINT");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), WAIT_MS);
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
  }
}

/**
 * GET http://127.0.0.1:PORT/PATH on a connection of its own: { status,
 * headers, body (parsed JSON) }.
 */
function get(port, urlPath, { timeoutMs = WAIT_MS } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path: urlPath, agent: false, timeout: timeoutMs }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => {
        text += chunk;
      });
      res.on("end", () => {
        try {
          resolve({ status: res.statusCode, headers: res.headers, body: JSON.parse(text) });
        } catch (err) {
          reject(new Error(`${urlPath}: not JSON (${err.message}): ${text}`));
        }
      });
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`${urlPath}: no answer within ${timeoutMs} ms`)));
    req.on("error", reject);
  });
}

/** Polls `probe` until it returns something truthy. */
async function until(what, probe, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`${what} not within ${timeoutMs} ms; last: ${last instanceof Error ? last.stack : JSON.stringify(last)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * A stand-in for xypriss: runs `script` with its control channel on fd 3
 * (a Unix stream socket pair, as xypriss gives) and PORT=0, and reads what
 * the worker writes on it.
 */
class FakeSupervisor {
  constructor(script, { nodeArgs = [], env = {} } = {}) {
    this.lines = [];
    this.waiters = new Set();
    this.output = "";
    this.child = spawn(process.execPath, [...nodeArgs, script], {
      stdio: ["ignore", "pipe", "pipe", "pipe"],
      env: {
        ...process.env,
        XYPRISS_CONTROL_FD: "3",
        XYPRISS_PROTOCOL_VERSION: "1",
        XYPRISS_WORKER_ID: "0",
        XYPRISS_GENERATION: "1",
        PORT: "0",
        ...env,
      },
    });
    this.channel = this.child.stdio[3];
    this.exited = new Promise((resolve) => this.child.on("exit", (code, signal) => resolve({ code, signal })));
    for (const stream of [this.child.stdout, this.child.stderr]) {
      stream.on("data", (chunk) => {
        this.output += chunk;
      });
    }
    readline.createInterface({ input: this.channel }).on("line", (line) => {
      this.lines.push(line);
      for (const check of this.waiters) check();
    });
  }

  /** The first line from the worker that satisfies `pred`. */
  waitLine(pred, timeoutMs = WAIT_MS) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.lines.find(pred);
        if (found === undefined) return;
        this.waiters.delete(check);
        clearTimeout(timer);
        resolve(found);
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`no such line within ${timeoutMs} ms; lines: ${JSON.stringify(this.lines)}; output: ${this.output}`));
      }, timeoutMs);
      this.waiters.add(check);
      check();
    });
  }

  /** The port it serves on, from its STATUS= line. */
  async port() {
    const status = await this.waitLine((l) => l.startsWith("STATUS=serving on "));
    return Number(status.split(":").pop());
  }

  send(message) {
    this.channel.write(typeof message === "string" ? message : `${JSON.stringify(message)}\n`);
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    return this.exited;
  }
}

module.exports = { EXAMPLE, FIXTURE, WAIT_MS, FakeSupervisor, Pool, get, until, xyprissOrSkip };
