// xypriss dashboard: one page, live from the pool's event stream (/events),
// which starts with the pool's status and carries it again every few
// seconds; nothing is polled. Actions are the token-guarded POSTs; the
// token stays in this tab's sessionStorage.
"use strict";

const WINDOW_MS = 5 * 60 * 1000;
const FEED_MAX = 200;
const MIB = 1024 * 1024;
const TOKEN_KEY = "xypriss-token";

const $ = (id) => document.getElementById(id);

const state = {
  status: null,
  statusAt: 0,
  workers: new Map(), // worker id → its card's model
  pageLost: 0,
  stopped: false,
};

// ---- formatting ---------------------------------------------------------

function bytes(n) {
  if (n === undefined || n === null) return "–";
  const abs = Math.abs(n);
  if (abs >= 1024 * MIB) return (n / (1024 * MIB)).toFixed(2) + " GiB";
  if (abs >= MIB) return (n / MIB).toFixed(1) + " MiB";
  if (abs >= 1024) return (n / 1024).toFixed(0) + " KiB";
  return n.toFixed(0) + " B";
}

function rate(n) {
  return (n >= 0 ? "+" : "−") + bytes(Math.abs(n)) + "/s";
}

function duration(sec) {
  if (sec === undefined || sec === null || !isFinite(sec)) return "–";
  sec = Math.max(0, Math.round(sec));
  const d = Math.floor(sec / 86400), h = Math.floor(sec / 3600) % 24;
  const m = Math.floor(sec / 60) % 60, s = sec % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

// ---- the token ----------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function showMode() {
  const mode = $("mode");
  if (token()) {
    mode.dataset.mode = "operator";
    mode.textContent = "Operator: this tab holds a token; the buttons act on the pool.";
  } else {
    mode.dataset.mode = "read-only";
    mode.textContent = "Read-only: no token in this tab, so the buttons below are refused.";
  }
}

function authHeaders() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const value = $("token").value.trim();
  $("token").value = "";
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  showMode();
  say(true, value ? "Token kept for this tab." : "No token given.");
  if (link.refused) follow();
});

$("token-forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showMode();
  say(true, "Token forgotten: read-only.");
});

// ---- actions ------------------------------------------------------------

function say(ok, text) {
  const out = $("action-result");
  out.dataset.ok = String(ok);
  out.textContent = text;
}

async function act(what, path, body) {
  let answer;
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: body === undefined ? "" : JSON.stringify(body),
    });
    answer = { status: response.status, body: await response.json().catch(() => null) };
  } catch (err) {
    say(false, `${what}: the pool did not answer (${err.message}).`);
    return;
  }
  if (answer.status >= 200 && answer.status < 300) {
    say(true, `${what}: done (${JSON.stringify(answer.body)}).`);
    return;
  }
  const error = (answer.body && answer.body.error) || {};
  let why = error.message || "no reason given";
  if (error.code === "missing_token") {
    why = "this page is read-only: paste the pool's token above to act on it. (" + why + ")";
  } else if (error.code === "invalid_token") {
    why = "the token in this tab is not this pool's: paste the right one. (" + why + ")";
  }
  say(false, `${what} refused (${answer.status} ${error.code || ""}): ${why}`);
}

$("scale-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const n = Number($("scale-to").value);
  act(`Scale to ${n}`, "/cluster/scale", { workers: n });
});
$("reload").addEventListener("click", () => act("Rolling restart", "/cluster/reload"));
$("low-memory-on").addEventListener("click", () =>
  act("Low-memory mode on", "/cluster/low-memory", { enabled: true }));
$("low-memory-off").addEventListener("click", () =>
  act("Low-memory mode off", "/cluster/low-memory", { enabled: false }));

// ---- workers ------------------------------------------------------------

function worker(id) {
  let w = state.workers.get(id);
  if (w) return w;
  const card = $("worker-card").content.firstElementChild.cloneNode(true);
  card.dataset.worker = String(id);
  card.querySelector(".id").textContent = String(id);
  const restart = card.querySelector(".restart");
  restart.textContent = `Restart worker ${id}`;
  restart.addEventListener("click", () => act(`Restart worker ${id}`, `/workers/${id}/restart`));
  w = { id, card, history: [], leak: {}, status: "starting", health: "healthy" };
  state.workers.set(id, w);
  const list = $("workers");
  const after = [...list.children].find((c) => Number(c.dataset.worker) > id);
  list.insertBefore(card, after || null);
  return w;
}

function dropWorker(id) {
  const w = state.workers.get(id);
  if (!w) return;
  w.card.remove();
  state.workers.delete(id);
}

function record(w, at, rss) {
  w.rss = rss;
  w.history.push([at, rss]);
  const cut = at - WINDOW_MS;
  while (w.history.length > 2 && w.history[1][0] < cut) w.history.shift();
}

function thresholds() {
  const usage = state.status && state.status.memory.currentUsage;
  if (!usage || !usage.maxMemoryPerWorkerBytes) return [];
  const limit = usage.maxMemoryPerWorkerBytes;
  return [
    { name: "warning", at: (limit * usage.memoryWarningThreshold) / 100, colour: "#e69f00", dash: [6, 4] },
    { name: "critical", at: (limit * usage.memoryCriticalThreshold) / 100, colour: "#d55e00", dash: [2, 3] },
    { name: "limit", at: limit, colour: "#1a1a1a", dash: [] },
  ];
}

function draw(w, now) {
  const canvas = w.card.querySelector(".chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 320, height = canvas.clientHeight || 120;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const points = w.history.filter(([t]) => t >= now - WINDOW_MS);
  const values = points.map(([, v]) => v);
  const top = Math.max(...values, 1);
  const lines = thresholds();
  let max = top * 1.2;
  // The thresholds show once the worker is near them.
  if (lines.length && top >= lines[0].at * 0.5) max = Math.max(max, lines[2].at * 1.05);
  const x = (t) => ((t - (now - WINDOW_MS)) / WINDOW_MS) * width;
  const y = (v) => height - 4 - (v / max) * (height - 16);
  g.lineWidth = 1.5;
  let above = false;
  for (const line of lines) {
    if (line.at > max) {
      above = true;
      continue;
    }
    g.strokeStyle = line.colour;
    g.setLineDash(line.dash);
    g.beginPath();
    g.moveTo(0, y(line.at));
    g.lineTo(width, y(line.at));
    g.stroke();
  }
  g.setLineDash([]);
  g.fillStyle = "#555";
  g.font = "11px system-ui, sans-serif";
  g.fillText(bytes(max), 3, 11);
  if (above) g.fillText(`thresholds above (limit ${bytes(lines[2].at)})`, 64, 11);
  g.fillText("−5 min", 3, height - 6);
  g.fillText("now", width - 24, height - 6);
  if (points.length) {
    g.strokeStyle = "#0072b2";
    g.lineWidth = 2;
    g.beginPath();
    // A step line: the memory is what it was last said to be until it changes.
    g.moveTo(x(points[0][0]), y(points[0][1]));
    for (let i = 1; i < points.length; i++) {
      g.lineTo(x(points[i][0]), y(points[i - 1][1]));
      g.lineTo(x(points[i][0]), y(points[i][1]));
    }
    g.lineTo(width, y(points[points.length - 1][1]));
    g.stroke();
  }
  const first = values.length ? values[0] : 0, last = values.length ? values[values.length - 1] : 0;
  canvas.dataset.rssFirst = String(first);
  canvas.dataset.rssLast = String(last);
  canvas.dataset.rssMax = String(values.length ? top : 0);
  canvas.setAttribute("aria-label",
    `RSS of worker ${w.id} over the last 5 minutes: from ${bytes(first)} to ${bytes(last)}, highest ${bytes(values.length ? top : 0)}`);
}

function leakText(w) {
  const leak = w.leak || {};
  if (leak.enabled === false) return { text: "detection off", leaking: false };
  const parts = [];
  parts.push(leak.leaking ? "LEAKING" : "no leak");
  if (leak.slopeBytesPerSec !== undefined && leak.slopeBytesPerSec !== null) {
    parts.push(`slope ${rate(leak.slopeBytesPerSec)}`);
  }
  if (leak.confidence !== undefined && leak.confidence !== null) {
    parts.push(`confidence ${(leak.confidence * 100).toFixed(0)}%`);
  }
  const usage = state.status && state.status.memory.currentUsage;
  let eta = leak.etaToLimitSec;
  if (eta === undefined && leak.leaking && leak.slopeBytesPerSec > 0 && usage && usage.maxMemoryPerWorkerBytes) {
    eta = Math.max(0, (usage.maxMemoryPerWorkerBytes - (w.rss || 0)) / leak.slopeBytesPerSec);
  }
  if (leak.leaking && eta !== undefined && eta !== null) parts.push(`limit in ${duration(eta)}`);
  return { text: parts.join(", "), leaking: !!leak.leaking };
}

function renderWorker(w, now) {
  const c = w.card;
  c.dataset.status = w.status;
  c.querySelector(".status").textContent = w.status;
  const health = c.querySelector(".health");
  health.textContent = w.health.replace("_", " ");
  health.dataset.health = w.health;
  c.querySelector(".rss").textContent = bytes(w.rss);
  const split = [w.anon, w.file, w.shmem].map((v) => (v === undefined ? "–" : bytes(v)));
  c.querySelector(".split").textContent = split.join(" / ");
  c.querySelector(".alloc").textContent = w.allocationRate === undefined ? "–" : rate(w.allocationRate);
  c.querySelector(".faults").textContent = w.faultRate === undefined ? "–" : `${Math.round(w.faultRate)}/s`;
  c.querySelector(".restarts").textContent = String(w.restarts ?? 0);
  c.querySelector(".uptime").textContent = w.startedAt ? duration((now - w.startedAt) / 1000) : "–";
  c.querySelector(".pid").textContent = w.pid ? `${w.pid} / ${w.generation}` : "–";
  const leak = leakText(w);
  const el = c.querySelector(".leak");
  el.textContent = leak.text;
  el.dataset.leaking = String(leak.leaking);
  draw(w, now);
}

// ---- the pool -----------------------------------------------------------

function applyStatus(status) {
  const now = Date.now();
  state.status = status;
  state.statusAt = now;
  const seen = new Set();
  // A worker being replaced has two processes: the card shows the newest.
  const newest = new Map();
  for (const p of status.workers) {
    const had = newest.get(p.id);
    if (!had || p.generation > had.generation) newest.set(p.id, p);
  }
  for (const p of newest.values()) {
    seen.add(p.id);
    const w = worker(p.id);
    Object.assign(w, {
      pid: p.pid, generation: p.generation, status: p.status, health: p.health,
      anon: p.anonBytes, file: p.fileBytes, shmem: p.shmemBytes,
      allocationRate: p.allocationRate, faultRate: p.faultRate,
      restarts: p.restarts, startedAt: now - p.uptimeSec * 1000,
      leak: { ...p.leak, etaToLimitSec: p.leak.leaking ? w.leak.etaToLimitSec : undefined },
    });
    record(w, now, p.rssBytes);
  }
  for (const id of [...state.workers.keys()]) {
    const w = state.workers.get(id);
    if (!seen.has(id) && w.status !== "errored") dropWorker(id);
  }
  const title = `${status.pool} — xypriss`;
  if (document.title !== title) document.title = title;
  $("pool-name").textContent = status.pool;
  $("pool-version").textContent = `xypriss ${status.version}, pid ${status.pid}`;
  const scaleTo = $("scale-to");
  scaleTo.min = String(status.minWorkers);
  scaleTo.max = String(status.maxWorkers);
  if (!scaleTo.value && document.activeElement !== scaleTo) scaleTo.value = String(status.workersDesired);
  render();
}

function renderPool(now) {
  const s = state.status;
  if (!s) return;
  const running = [...state.workers.values()].filter((w) => w.status !== "stopping" && w.status !== "exited").length;
  $("pool-size").textContent =
    `${running} running, ${s.workersDesired} wanted (min ${s.minWorkers}, max ${s.maxWorkers})`;
  const usage = s.memory.currentUsage;
  const total = [...state.workers.values()].reduce((sum, w) => sum + (w.rss || 0), 0);
  $("pool-total").textContent = `${bytes(total)} of maxTotalMemory ${bytes(usage.maxTotalMemoryBytes)}`;
  const meter = $("pool-meter");
  meter.max = usage.maxTotalMemoryBytes || 1;
  meter.value = total;
  meter.high = (meter.max * (usage.memoryWarningThreshold || 80)) / 100;
  $("host-available").textContent =
    usage.systemAvailableBytes === undefined ? "not readable" : bytes(usage.systemAvailableBytes);
  $("host-psi").textContent =
    usage.pressureSomeAvg10 === undefined ? "no PSI" : `${usage.pressureSomeAvg10.toFixed(2)}%`;
  $("low-memory").textContent = s.lowMemoryMode
    ? `on${s.lowMemoryReason ? ": " + s.lowMemoryReason : ""}`
    : "off";
  const c = s.counters;
  $("events-lost").textContent =
    `kernel ${c.eventsLostKernel}, stdout ${c.eventsLostOutput}, followers ${c.eventsLostFollower || 0}; this page ${state.pageLost}`;
  $("observer").textContent = s.observer;
  $("pool-uptime").textContent = duration(s.uptimeSec + (now - state.statusAt) / 1000);
}

function render() {
  const now = Date.now();
  renderPool(now);
  for (const w of state.workers.values()) renderWorker(w, now);
}

// ---- the alert feed -----------------------------------------------------

function describe(e) {
  const who = e.workerId !== undefined ? `worker ${e.workerId}` : "";
  switch (e.event) {
    case "memory_alert": {
      const where = e.scope === "worker" ? who : e.scope;
      let extra = "";
      if (e.type === "leak_detected") {
        extra = `, slope ${rate(e.slopeBytesPerSec || 0)}, confidence ${((e.confidence || 0) * 100).toFixed(0)}%`;
        if (e.etaToLimitSec !== undefined) extra += `, limit in ${duration(e.etaToLimitSec)}`;
      }
      const severity = e.type === "warning" ? "medium" : "high";
      return [severity, e.type.replace("_", " "), `${where}: ${e.message} (${bytes(e.memoryUsage)}${extra}; action ${e.action})`];
    }
    case "memory_recovered":
      return ["info", "recovered", `${e.scope === "worker" ? who : e.scope}: back under its ${e.type.replace("_", " ")} threshold (${bytes(e.memoryUsage)})`];
    case "oom_kill":
      return ["high", "OOM kill", `${who} (pid ${e.pid}) killed by the kernel at ${bytes(e.rssBytes)}`];
    case "worker_restarted":
      return ["medium", "restart", `${who} restarted (generation ${e.generation}): ${e.reason}`];
    case "worker_stopping":
      return e.reason === "shutdown" ? null : ["info", e.reason === "replaced" ? "replacement" : "stopping", `${who} (pid ${e.pid}) stopping: ${e.reason}`];
    case "worker_exited":
      return e.expected ? null : ["high", "crash", `${who} (pid ${e.pid}) exited: ${e.signal || "status " + e.code}`];
    case "worker_errored":
      return ["high", "errored", `${who}: ${e.message}`];
    case "scale":
      return ["info", "scale", `${e.from} → ${e.to} workers: ${e.reason}`];
    case "low_memory_mode":
      return ["medium", "low-memory", `${e.enabled ? "on" : "off"}: ${e.reason}`];
    case "memory_throttling":
      return ["medium", "throttling", `${who}: ${e.action} (${e.mechanism})`];
    case "events_lost":
      return ["medium", "events lost", `${e.count} lost (${e.stage === "follower" ? "by this page" : e.stage}), ${e.total} in all`];
    case "cluster_stopped":
      return ["high", "stopped", e.reason];
    default:
      return null;
  }
}

function feed(e) {
  const d = describe(e);
  if (!d) return;
  const [severity, kind, text] = d;
  const li = document.createElement("li");
  li.dataset.event = e.event;
  if (e.type) li.dataset.type = e.type;
  if (e.workerId !== undefined) li.dataset.worker = String(e.workerId);
  li.dataset.severity = severity;
  const at = e.timestamp || Date.now();
  const time = document.createElement("time");
  time.dateTime = new Date(at).toISOString();
  time.textContent = clock(at);
  const k = document.createElement("span");
  k.className = "kind";
  k.textContent = kind;
  const t = document.createElement("span");
  t.className = "text";
  t.textContent = text;
  li.append(time, k, t);
  const list = $("alerts");
  list.prepend(li);
  while (list.children.length > FEED_MAX) list.lastElementChild.remove();
}

// ---- events -------------------------------------------------------------

function onEvent(e) {
  const at = e.timestamp || Date.now();
  const w = e.workerId !== undefined && e.event !== "memory_alert" && e.event !== "memory_recovered"
    ? state.workers.get(e.workerId) : undefined;
  switch (e.event) {
    case "memory_sample": {
      if (!w || (w.pid && w.pid !== e.pid)) break;
      Object.assign(w, { allocationRate: e.allocationRate, faultRate: e.faultRate });
      if (e.anonBytes !== undefined) Object.assign(w, { anon: e.anonBytes, file: e.fileBytes, shmem: e.shmemBytes });
      record(w, at, e.rssBytes);
      break;
    }
    case "worker_spawned": {
      const n = worker(e.workerId);
      Object.assign(n, { pid: e.pid, generation: e.generation, status: "starting", startedAt: at,
        restarts: e.generation - 1, leak: { enabled: n.leak.enabled }, health: "healthy" });
      break;
    }
    case "worker_ready":
      if (w && w.pid === e.pid) w.status = "ready";
      break;
    case "worker_stopping":
      if (w && w.pid === e.pid) w.status = "stopping";
      break;
    case "worker_exited":
      if (w && w.pid === e.pid) {
        if (e.expected) dropWorker(e.workerId);
        else w.status = "exited";
      }
      break;
    case "worker_errored":
      if (w) w.status = "errored";
      break;
    case "memory_alert": {
      const target = e.scope === "worker" ? state.workers.get(e.workerId) : undefined;
      if (target && target.pid === e.pid) {
        if (e.type === "leak_detected") {
          target.leak = { ...target.leak, leaking: true, slopeBytesPerSec: e.slopeBytesPerSec,
            confidence: e.confidence, etaToLimitSec: e.etaToLimitSec };
          target.health = "leaking";
        } else if (target.health !== "leaking") {
          target.health = e.type;
        }
      }
      break;
    }
    case "scale":
      if (state.status) state.status.workersDesired = e.to;
      $("scale-to").value = String(e.to);
      break;
    case "low_memory_mode":
      if (state.status) {
        state.status.lowMemoryMode = e.enabled;
        state.status.lowMemoryReason = e.enabled ? e.reason : undefined;
      }
      break;
    case "events_lost":
      if (e.stage === "follower") state.pageLost = e.total;
      break;
    case "cluster_stopped":
      state.stopped = true;
      setLink("stopped", `pool stopped: ${e.reason}`);
      break;
    default:
      break;
  }
  feed(e);
  schedule();
}

let pending = false;
function schedule() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    render();
  });
}

// ---- the stream ---------------------------------------------------------

const link = { refused: false, controller: null };

function setLink(state_, text) {
  const el = $("link");
  el.dataset.state = state_;
  el.textContent = text;
}

function dispatch(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return;
  let parsed;
  try {
    parsed = JSON.parse(data.join("\n"));
  } catch {
    return;
  }
  if (name === "status") applyStatus(parsed);
  else if (name === "message") onEvent(parsed);
}

async function follow() {
  if (link.controller) link.controller.abort();
  const controller = new AbortController();
  link.controller = controller;
  link.refused = false;
  setLink("connecting", "connecting…");
  let response;
  try {
    response = await fetch("/events", { headers: authHeaders(), cache: "no-store", signal: controller.signal });
  } catch (err) {
    if (controller.signal.aborted) return;
    return retry(controller, `no connection to the pool (${err.message}); retrying`);
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    const error = (body && body.error) || {};
    if (response.status === 401) {
      link.refused = true;
      setLink("down", `reading takes the token on this pool: paste it above (${error.code})`);
      return;
    }
    return retry(controller, `the pool refused the stream (${response.status} ${error.message || ""}); retrying`);
  }
  setLink("live", "live");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        dispatch(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (err) {
    if (controller.signal.aborted) return;
  }
  if (state.stopped) return;
  retry(controller, "the stream ended; reconnecting");
}

function retry(controller, why) {
  setLink("down", why);
  setTimeout(() => {
    if (link.controller === controller) follow();
  }, 2000);
}

showMode();
follow();
// Uptimes and the charts' time axis move on by themselves.
setInterval(render, 1000);
