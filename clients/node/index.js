// xypriss-worker: a Node.js worker's side of xypriss's worker protocol
// (docs/worker-protocol.md in the xypriss repository). No dependencies.
//
// - listen(server): the socket xypriss binds once and hands to every worker
//   (LISTEN_FDS, from fd 3, picked by LISTEN_FDNAMES), or PORT.
// - ready(): READY=1 on the control channel (XYPRISS_CONTROL_FD), which
//   `--ready notify` waits for: Node has no Unix datagram sockets, so it
//   cannot use NOTIFY_SOCKET.
// - drain(server): on xypriss's drain notice or the stop signal, stop
//   accepting, answer what is in flight with `Connection: close`, exit when
//   done or at the deadline.
// - events with XyPriss's names for this worker (memory_alert,
//   low_memory_mode, memory_throttling, gc_hint, ...), and memoryUsage(),
//   xypriss's view of this worker, asked over the channel.
//
// Outside xypriss (no XYPRISS_CONTROL_FD) everything still works: ready()
// and status() say nothing, no event comes, listen() takes PORT.
"use strict";

const { EventEmitter } = require("node:events");
const net = require("node:net");
const tls = require("node:tls");

/** The protocol version this library speaks. */
const PROTOCOL_VERSION = 1;
/** xypriss takes lines up to 4096 bytes. */
const LINE_MAX = 4096;
/** The longest line read from xypriss; a longer one is skipped. */
const READ_LINE_MAX = 1 << 20;
/** Within xypriss's default --kill-timeout of 5 s. */
const DEFAULT_DRAIN_DEADLINE_MS = 4000;
const DEFAULT_REQUEST_TIMEOUT_MS = 5000;
/** Names EventEmitter gives a meaning to: never emitted from the wire. */
const RESERVED = new Set(["error", "newListener", "removeListener"]);

function numberOr(value, fallback) {
  if (value === undefined || value === "") return fallback;
  const n = Number(value);
  return Number.isInteger(n) && n >= 0 ? n : fallback;
}

/** One line, bounded: newlines would end the assignment early. */
function oneLine(text) {
  return String(text).replace(/[\r\n]+/g, " ").slice(0, LINE_MAX - "STATUS=".length);
}

/**
 * The sockets handed over with systemd's protocol, for this process only
 * (LISTEN_PID, when set, must be ours): [{ fd, name }].
 */
function listenFds(env = process.env, pid = process.pid) {
  const count = numberOr(env.LISTEN_FDS, 0);
  if (count === 0) return [];
  if (env.LISTEN_PID !== undefined && Number(env.LISTEN_PID) !== pid) return [];
  const names = env.LISTEN_FDNAMES ? env.LISTEN_FDNAMES.split(":") : [];
  return Array.from({ length: count }, (_, i) => ({ fd: 3 + i, name: names[i] ?? "unknown" }));
}

class Worker extends EventEmitter {
  constructor(env = process.env) {
    super();
    this.env = env;
    /** XYPRISS_WORKER_ID, or null outside xypriss. */
    this.id = env.XYPRISS_WORKER_ID === undefined ? null : numberOr(env.XYPRISS_WORKER_ID, null);
    this.generation = numberOr(env.XYPRISS_GENERATION, null);
    this.protocolVersion = numberOr(env.XYPRISS_PROTOCOL_VERSION, null);
    this.controlFd = numberOr(env.XYPRISS_CONTROL_FD, null);
    /** Whether this process runs under xypriss, with a control channel. */
    this.supervised = this.controlFd !== null;
    this._channel = undefined;
    this._buffer = "";
    this._skipping = false;
    this._pending = new Map();
    this._nextRequest = 1;
    this._drains = [];
    this._drainArmed = false;
    this._draining = null;
    this._drainDefaults = { deadlineMs: DEFAULT_DRAIN_DEADLINE_MS, exit: true };
    for (const method of ["listen", "ready", "status", "drain", "memoryUsage", "startDrain"]) {
      this[method] = this[method].bind(this);
    }
    // Listening to an event opens the channel.
    this.on("newListener", () => this._open());
  }

  /** The control channel, opened on first use; null outside xypriss. */
  _open() {
    if (this._channel !== undefined) return this._channel;
    this._channel = null;
    if (!this.supervised) return null;
    let socket;
    try {
      socket = new net.Socket({ fd: this.controlFd, readable: true, writable: true });
    } catch {
      return null;
    }
    socket.setEncoding("utf8");
    socket.on("data", (chunk) => this._onData(chunk));
    // A channel that fails or closes only stops the messages.
    socket.on("error", () => {});
    socket.on("close", () => {
      this._channel = null;
      for (const [, pending] of this._pending) {
        pending.reject(new Error("the xypriss control channel closed"));
      }
      this._pending.clear();
    });
    // The channel never keeps the process alive by itself.
    socket.unref();
    this._channel = socket;
    return socket;
  }

  _onData(chunk) {
    let text = this._buffer + chunk;
    let end;
    while ((end = text.indexOf("\n")) !== -1) {
      const line = text.slice(0, end);
      text = text.slice(end + 1);
      if (this._skipping) this._skipping = false;
      else this._onLine(line);
    }
    if (text.length > READ_LINE_MAX) {
      text = "";
      this._skipping = true;
    }
    this._buffer = text;
  }

  _onLine(line) {
    let message;
    try {
      message = JSON.parse(line);
    } catch {
      return;
    }
    if (message === null || typeof message !== "object" || typeof message.event !== "string") {
      return;
    }
    switch (message.event) {
      case "memory_usage": {
        const pending = this._pending.get(message.id);
        if (pending) {
          this._pending.delete(message.id);
          pending.resolve(message.usage);
        }
        return;
      }
      case "gc_hint":
        message.gcCalled = typeof global.gc === "function";
        if (message.gcCalled) global.gc();
        break;
      case "drain":
        this.emit("drain", message);
        // Without drain(server) the app handles it itself.
        if (this._drainArmed) this._drain(message.reason, message.deadlineMs);
        return;
      default:
        break;
    }
    if (!RESERVED.has(message.event)) this.emit(message.event, message);
  }

  /** Writes sd_notify assignments; false outside xypriss. */
  _notify(assignments) {
    const channel = this._open();
    if (!channel || channel.destroyed) return false;
    channel.write(assignments.map((a) => `${a}\n`).join(""));
    return true;
  }

  /**
   * Tells xypriss this worker serves (READY=1), with an optional one-line
   * status. Returns false when there is no xypriss to tell.
   */
  ready(status) {
    return this._notify(status === undefined ? ["READY=1"] : [`STATUS=${oneLine(status)}`, "READY=1"]);
  }

  /** A one-line state for humans (STATUS=…), shown by `xypriss status`. */
  status(text) {
    return this._notify([`STATUS=${oneLine(text)}`]);
  }

  /**
   * Listens on the socket xypriss handed over: the one named `name` in
   * LISTEN_FDNAMES, or the first; without one, on PORT (or `port`).
   * Resolves with the server's address.
   */
  listen(server, { name, port, host } = {}) {
    this._open();
    const fds = listenFds(this.env);
    let target;
    if (fds.length > 0) {
      const found = name === undefined ? fds[0] : fds.find((f) => f.name === name);
      if (!found) {
        const names = fds.map((f) => f.name).join(", ");
        return Promise.reject(new Error(`no socket named ${JSON.stringify(name)} was handed over (LISTEN_FDNAMES: ${names})`));
      }
      target = { fd: found.fd };
    } else {
      const chosen = this.env.PORT !== undefined && this.env.PORT !== "" ? Number(this.env.PORT) : port;
      if (!Number.isInteger(chosen) || chosen < 0 || chosen > 65535) {
        return Promise.reject(new Error(`no socket was handed over (LISTEN_FDS) and no valid PORT: ${this.env.PORT ?? port}`));
      }
      target = host === undefined ? { port: chosen } : { port: chosen, host };
    }
    return new Promise((resolve, reject) => {
      const failed = (err) => reject(err);
      server.once("error", failed);
      server.listen(target, () => {
        server.off("error", failed);
        resolve(server.address());
      });
    });
  }

  /**
   * Drains `server` when xypriss asks (its drain notice on the channel, or
   * the stop signal): stops accepting, answers requests in flight with
   * `Connection: close`, closes idle connections, and exits once every
   * drained server has no connection left, or at the deadline.
   */
  drain(server, { deadlineMs, exit, signals = ["SIGTERM", "SIGINT"] } = {}) {
    this._open();
    if (deadlineMs !== undefined) this._drainDefaults.deadlineMs = deadlineMs;
    if (exit !== undefined) this._drainDefaults.exit = exit;
    this._drains.push(trackConnections(server));
    if (!this._drainArmed) {
      this._drainArmed = true;
      for (const signal of signals) {
        process.on(signal, () => {
          if (this._draining) return;
          this.emit("drain", { event: "drain", reason: "signal", signal });
          this._drain("signal");
        });
      }
    }
    if (this._draining) this._drains.at(-1).start();
    return this;
  }

  /** Starts the drain now, as xypriss's notice would. */
  startDrain(reason = "asked", deadlineMs) {
    this._drain(reason, deadlineMs);
  }

  _drain(reason, deadlineMs) {
    if (this._draining) return;
    const deadline = Number.isFinite(deadlineMs) && deadlineMs >= 0 ? deadlineMs : this._drainDefaults.deadlineMs;
    this._notify(["STOPPING=1", `STATUS=${oneLine(`draining: ${reason}`)}`]);
    const started = Date.now();
    let left = this._drains.length;
    const finish = (timedOut) => {
      if (this._draining.done) return;
      this._draining.done = true;
      clearTimeout(timer);
      for (const d of this._drains) d.destroyAll();
      this.emit("drained", { reason, timedOut, durationMs: Date.now() - started });
      if (this._drainDefaults.exit) process.exit(0);
    };
    const timer = setTimeout(() => finish(true), deadline);
    this._draining = { reason, done: false };
    if (left === 0) {
      finish(false);
      return;
    }
    for (const d of this._drains) {
      d.start(() => {
        left -= 1;
        if (left === 0) finish(false);
      });
    }
  }

  /**
   * xypriss's view of this worker: RSS, anon, swap, allocation and fault
   * rates, health and the leak verdict, as in `xypriss status --json`.
   */
  memoryUsage({ timeoutMs = DEFAULT_REQUEST_TIMEOUT_MS } = {}) {
    const channel = this._open();
    if (!channel || channel.destroyed) {
      return Promise.reject(new Error("not running under xypriss: no XYPRISS_CONTROL_FD"));
    }
    const id = this._nextRequest++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new Error(`xypriss did not answer memoryUsage() within ${timeoutMs} ms`));
      }, timeoutMs);
      this._pending.set(id, {
        resolve: (usage) => {
          clearTimeout(timer);
          resolve(usage);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      });
      channel.write(`${JSON.stringify({ request: "memory_usage", id })}\n`);
    });
  }
}

/**
 * Follows a server's connections, so that a drain can tell those that
 * carry a request from those idle between requests, and those that have
 * not sent their first request yet (which must not be cut: their request
 * is on its way).
 */
function trackConnections(server) {
  const connections = new Map();
  let draining = false;
  let onClosed = null;
  // With TLS, requests come on the TLS socket, made at the handshake.
  server.on(server instanceof tls.Server ? "secureConnection" : "connection", (socket) => {
    const state = { active: 0, served: false, responses: new Set() };
    connections.set(socket, state);
    socket.once("close", () => connections.delete(socket));
  });
  server.prependListener("request", (req, res) => {
    const state = connections.get(req.socket);
    if (state) {
      state.active += 1;
      state.served = true;
      state.responses.add(res);
    }
    if (draining) res.setHeader("Connection", "close");
    res.once("close", () => {
      if (!state) return;
      state.active -= 1;
      state.responses.delete(res);
      // Answered after the drain began with its headers already out: no
      // more requests on it.
      if (draining && state.active === 0 && !req.socket.destroyed) req.socket.end();
    });
  });
  return {
    start(closed) {
      if (draining) return;
      draining = true;
      onClosed = closed ?? null;
      // net.Server's close: stop accepting, and call back once every
      // connection has ended. (http.Server's close would also cut the
      // connections it finds idle, among them one accepted a moment ago
      // whose request is not read yet.)
      net.Server.prototype.close.call(server, () => onClosed?.());
      for (const [socket, state] of connections) {
        if (state.active > 0) {
          for (const res of state.responses) {
            if (!res.headersSent) res.setHeader("Connection", "close");
          }
        } else if (state.served) {
          socket.end();
        }
      }
    },
    destroyAll() {
      for (const socket of connections.keys()) socket.destroy();
    },
  };
}

const worker = new Worker();

module.exports = worker;
module.exports.Worker = Worker;
module.exports.listenFds = listenFds;
module.exports.PROTOCOL_VERSION = PROTOCOL_VERSION;
