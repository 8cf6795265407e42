// Types for xypriss-worker: a Node.js worker's side of xypriss's worker
// protocol (docs/worker-protocol.md in the xypriss repository).

import { EventEmitter } from "node:events";
import type { AddressInfo, Server } from "node:net";

/** The worker: one per process, `require("xypriss-worker")`. */
declare class XyprissWorker extends EventEmitter {
  constructor(env?: NodeJS.ProcessEnv);
  /** XYPRISS_WORKER_ID, or null outside xypriss. */
  readonly id: number | null;
  readonly generation: number | null;
  readonly protocolVersion: number | null;
  readonly controlFd: number | null;
  /** Whether this process runs under xypriss, with a control channel. */
  readonly supervised: boolean;

  on<K extends keyof xyprissWorker.WorkerEvents>(event: K, listener: (...args: xyprissWorker.WorkerEvents[K]) => void): this;
  on(event: string, listener: (message: Record<string, unknown>) => void): this;
  once<K extends keyof xyprissWorker.WorkerEvents>(event: K, listener: (...args: xyprissWorker.WorkerEvents[K]) => void): this;
  once(event: string, listener: (message: Record<string, unknown>) => void): this;

  /** Listens on the socket xypriss handed over, or PORT; resolves with its address. */
  listen(server: Server, options?: xyprissWorker.ListenOptions): Promise<AddressInfo | string | null>;
  /** READY=1 (and STATUS=…); false when there is no xypriss to tell. */
  ready(status?: string): boolean;
  /** STATUS=…: a one-line state, shown by `xypriss status`. */
  status(text: string): boolean;
  /** Drains `server` on xypriss's drain notice or the stop signal. */
  drain(server: Server, options?: xyprissWorker.DrainOptions): this;
  /** Starts the drain now, as a notice from xypriss would. */
  startDrain(reason?: string, deadlineMs?: number): void;
  /** xypriss's view of this worker, asked over the control channel. */
  memoryUsage(options?: { timeoutMs?: number }): Promise<xyprissWorker.MemoryUsage>;
}

declare namespace xyprissWorker {
  /** `memory_alert`: one of this worker's thresholds crossed going up, or a leak. */
  export interface MemoryAlert {
    event: "memory_alert";
    type: "warning" | "critical" | "limit_exceeded" | "leak_detected";
    scope: "worker";
    workerId: number;
    pid: number;
    message: string;
    /** What xypriss did: "none", "gc_hint", "throttle", "restart", "scale_down", … */
    action: string;
    /** Resident bytes. */
    memoryUsage: number;
    /** The threshold crossed in bytes; for a leak, the limit (0 if none). */
    threshold: number;
    slopeBytesPerSec?: number;
    confidence?: number;
    etaToLimitSec?: number;
  }

  /** `memory_recovered`: memory fell back under a raised alert's threshold. */
  export interface MemoryRecovered {
    event: "memory_recovered";
    type: "warning" | "critical" | "limit_exceeded";
    scope: "worker";
    workerId: number;
    pid: number;
    memoryUsage: number;
    threshold: number;
  }

  /** `low_memory_mode`: the pool entered or left low-memory mode. */
  export interface LowMemoryMode {
    event: "low_memory_mode";
    enabled: boolean;
    reason: string;
  }

  /** `memory_throttling`: the kernel slows this worker (or stops doing so). */
  export interface MemoryThrottling {
    event: "memory_throttling";
    action: "throttle" | "release";
    workerId: number;
    pid: number;
    /** What the kernel was told, e.g. "memory.high". */
    mechanism: string;
    memoryUsage: number;
    threshold: number;
  }

  /** `gc_hint`: a good moment to collect garbage (`garbageCollectionHint`). */
  export interface GcHint {
    event: "gc_hint";
    reason: string;
    memoryUsage: number;
    threshold: number;
    /** Whether the library called `global.gc()` (only with `node --expose-gc`). */
    gcCalled: boolean;
  }

  /** `drain`: stop accepting, finish what is in flight, exit by the deadline. */
  export interface Drain {
    event: "drain";
    /** From xypriss: "limit_exceeded", "leak_detected", "restart", "scale_down",
     * "shutdown", …; "signal" when the stop signal came first. */
    reason: string;
    deadlineMs?: number;
    signal?: NodeJS.Signals;
    timestamp?: number;
  }

  /** `drained`: the drain is over; the process exits next (unless `exit: false`). */
  export interface Drained {
    reason: string;
    timedOut: boolean;
    durationMs: number;
  }

  /** xypriss's view of this worker, as a worker in `xypriss status --json`. */
  export interface MemoryUsage {
    id: number;
    pid: number;
    generation: number;
    status: "starting" | "ready" | "stopping" | "stopped";
    health: "healthy" | "warning" | "critical" | "limit_exceeded" | "leaking";
    rssBytes: number;
    anonBytes: number;
    swapBytes: number;
    /** Bytes per second the resident size grew over the last second. */
    allocationRate: number;
    faultRate: number;
    pageFaults: number;
    restarts: number;
    uptimeSec: number;
    throttled: boolean;
    leak: {
      leaking: boolean;
      enabled: boolean;
      slopeBytesPerSec?: number;
      confidence?: number;
    };
    statusText?: string;
    controlDropped: number;
    controlInvalid: number;
  }

  export interface WorkerEvents {
    memory_alert: [MemoryAlert];
    memory_recovered: [MemoryRecovered];
    low_memory_mode: [LowMemoryMode];
    memory_throttling: [MemoryThrottling];
    gc_hint: [GcHint];
    drain: [Drain];
    drained: [Drained];
  }

  export interface ListenOptions {
    /** The LISTEN_FDNAMES name of the socket to take (default: the first). */
    name?: string;
    /** Without a handed-over socket and without PORT. */
    port?: number;
    host?: string;
  }

  export interface DrainOptions {
    /** When the stop signal starts the drain (default 4000, under xypriss's
     * default --kill-timeout 5 s); a drain notice brings its own. */
    deadlineMs?: number;
    /** Exit the process when drained (default true). */
    exit?: boolean;
    /** The signals that start a drain (default SIGTERM and SIGINT). */
    signals?: NodeJS.Signals[];
  }

  export type Worker = XyprissWorker;
}

declare const xyprissWorker: XyprissWorker & {
  Worker: typeof XyprissWorker;
  /** The sockets handed over to this process: fd 3, 4, … with their names. */
  listenFds(env?: NodeJS.ProcessEnv, pid?: number): { fd: number; name: string }[];
  /** The protocol version this library speaks. */
  PROTOCOL_VERSION: 1;
};

export = xyprissWorker;
