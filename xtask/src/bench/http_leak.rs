//! `http-leak`: a memory limit under real traffic. A Node.js HTTP server
//! with a real listener leak (`xtask/apps/leaky_server.js`, about 1 MB/s per
//! worker under load, draining correctly on SIGTERM, SIGINT or a drain
//! notice, holding 120 MiB from its start so that the leak reaches the limit
//! within the minute) runs as 2 workers on one shared socket, with a 192 MiB
//! limit per worker, under `wrk -t2 -c32` for 60 s:
//!
//! - xypriss: `--listen`, `--enforce-hard-limits true`, the default
//!   readiness, 3 runs;
//! - the same without the leak, once: the leak-free p99;
//! - PM2 7 cluster mode (`-i 2`, `--max-memory-restart 192M`) with its
//!   default 30 s check and with the check at 100 ms, once each.
//!
//! For each: wrk's socket errors, non-2xx responses and p99; the number of
//! replacements (workers that were told to drain, from the servers' own log)
//! and, for xypriss, why (its `memory_alert`s that replace a worker, by
//! type, and its `worker_stopping` reasons); the highest RSS a server reached;
//! the worst overshoot over the limit (their RSS, logged every 100 ms); the
//! fewest workers serving at once; and the p99 during replacements, from a
//! probe beside wrk that makes one request on a new connection every 10 ms:
//! its requests from 100 ms before a worker is told to drain until 500 ms
//! after it exits. The servers' log and the probe share CLOCK_MONOTONIC.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{Bench, Pool, monotonic_ns, peers, percentile};

const SECONDS: u32 = 60;
const LIMIT_MIB: u64 = 192;
const WORKERS: u32 = 2;
const ROUNDS: usize = 3;
/// What each server holds from its start, in bytes.
const BALLAST: &str = "125829120";
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// A replacement's window: from this long before a worker is told to drain…
const BEFORE_NS: u64 = 100_000_000;
/// …until this long after it exits.
const AFTER_NS: u64 = 500_000_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Supervisor {
    /// xypriss; `false`: the same server without its leak.
    Xypriss { leak: bool },
    /// PM2 cluster mode with this `PM2_WORKER_INTERVAL` in ms (`None`: its default).
    Pm2(Option<u64>),
}

impl Supervisor {
    fn name(self) -> String {
        match self {
            Self::Xypriss { leak: true } => {
                "xypriss, `--listen`, `--enforce-hard-limits true`".into()
            }
            Self::Xypriss { leak: false } => "xypriss, the same server without the leak".into(),
            Self::Pm2(None) => "PM2 cluster mode, `max_memory_restart`, default 30 s check".into(),
            Self::Pm2(Some(ms)) => {
                format!("PM2 cluster mode, `max_memory_restart`, check every {ms} ms")
            }
        }
    }
}

/// What wrk says.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Wrk {
    requests_per_s: f64,
    p99_ms: f64,
    socket_errors: u64,
    non_2xx: u64,
}

/// wrk's report, with `--latency`: the socket errors (connect, read, write,
/// timeout) and the non-2xx-or-3xx count are absent when zero.
fn parse_wrk(report: &str) -> Option<Wrk> {
    let line = |prefix: &str| {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
    };
    let requests_per_s = line("Requests/sec:")?.parse().ok()?;
    let p99 = line("99%")?;
    let (number, unit) = p99.split_at(p99.find(|c: char| c.is_ascii_alphabetic())?);
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        _ => return None,
    };
    let socket_errors = line("Socket errors:").map_or(Some(0), |errors| {
        errors
            .split(',')
            .map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    })?;
    let non_2xx = line("Non-2xx or 3xx responses:").map_or(Some(0), |n| n.parse().ok())?;
    Some(Wrk {
        requests_per_s,
        p99_ms: number.parse::<f64>().ok()? * scale,
        socket_errors,
        non_2xx,
    })
}

/// One probe request: when it started, how long it took, whether it got a 200.
#[derive(Clone, Copy, Debug)]
struct Probe {
    at: u64,
    ms: f64,
    ok: bool,
}

fn probe_once(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = "GET /probe HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).is_ok() && answer.starts_with("HTTP/1.1 200")
}

fn probe(port: u16, stop: &AtomicBool) -> Vec<Probe> {
    let mut probes = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let at = monotonic_ns();
        let ok = probe_once(port);
        probes.push(Probe {
            at,
            ms: started.elapsed().as_secs_f64() * 1e3,
            ok,
        });
        thread::sleep(PROBE_EVERY.saturating_sub(started.elapsed()));
    }
    probes
}

/// One server process, from its log.
#[derive(Clone, Copy, Debug, Default)]
struct Server {
    start: u64,
    drain: Option<u64>,
    exit: Option<u64>,
    peak: u64,
}

fn read_log(path: &Path) -> BTreeMap<u32, Server> {
    let mut servers: BTreeMap<u32, Server> = BTreeMap::new();
    let text = fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(kind), Some(pid), Some(at)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let (Ok(pid), Ok(at)) = (pid.parse::<u32>(), at.parse::<u64>()) else {
            continue;
        };
        let s = servers.entry(pid).or_default();
        match kind {
            "start" => s.start = at,
            "drain" => s.drain = Some(at),
            "exit" => s.exit = Some(at),
            "rss" => {
                let rss = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                s.peak = s.peak.max(rss);
            }
            _ => {}
        }
    }
    servers
}

/// The fewest servers taking requests at once from `from` to `to`: started,
/// and not yet told to drain (a start counts once it has logged its first
/// line, a little before it listens).
fn fewest_serving(servers: &BTreeMap<u32, Server>, from: u64, to: u64) -> usize {
    let mut changes: Vec<(u64, i64)> = Vec::new();
    for s in servers.values() {
        changes.push((s.start, 1));
        if let Some(end) = s.drain.or(s.exit) {
            changes.push((end, -1));
        }
    }
    changes.sort_unstable();
    let serving_at = |at: u64| {
        changes
            .iter()
            .take_while(|&&(when, _)| when <= at)
            .map(|&(_, change)| change)
            .sum::<i64>()
    };
    // Serving when the load starts, and after each change while it lasts.
    let fewest = changes
        .iter()
        .filter(|&&(at, _)| at >= from && at <= to)
        .map(|&(at, _)| serving_at(at))
        .fold(serving_at(from), i64::min);
    fewest.max(0) as usize
}

impl Bench {
    fn http_leak_run(&self, supervisor: Supervisor, wrk: &Path, log: &Path) -> Result<Value> {
        let _ = fs::remove_file(log);
        let app = self.root.join("xtask/apps/leaky_server.js");
        let app = app.to_str().context("app path")?;
        let leak = match supervisor {
            Supervisor::Xypriss { leak: false } => "0",
            _ => "1000000",
        };
        let log_str = log.to_str().context("log path")?;
        let limit = format!("{LIMIT_MIB}MiB");
        let workers = WORKERS.to_string();
        let mut pm2 = None;
        let (pool, port) = match supervisor {
            Supervisor::Xypriss { .. } => {
                let args = [
                    "--workers",
                    &workers,
                    "--require-ebpf",
                    "--name",
                    "http-leak",
                    "--listen",
                    "127.0.0.1:0",
                    "--max-memory-per-worker",
                    &limit,
                    "--enforce-hard-limits",
                    "true",
                    "--env",
                    &format!("LEAK_LOG={log_str}"),
                    "--",
                    "node",
                    app,
                    leak,
                    BALLAST,
                ];
                let pool = Pool::start(&self.xypriss, &args)?;
                let listening = pool.wait_event("listening", Duration::from_secs(10))?;
                let address = listening["addresses"][0].as_str().unwrap_or_default();
                let Some(port) = address.rsplit_once(':').and_then(|(_, p)| p.parse().ok()) else {
                    bail!("no port in xypriss's `listening` event: {listening}");
                };
                for _ in 0..WORKERS {
                    pool.wait_event("worker_ready", Duration::from_secs(20))?;
                }
                // Ready after the default 1 s delay is not yet listening
                // on a loaded machine: the load starts once one answers.
                let deadline = Instant::now() + Duration::from_secs(20);
                while !probe_once(port) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(100));
                }
                (Some(pool), port)
            }
            Supervisor::Pm2(interval) => {
                let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
                let bin = peers::pm2(&self.root)?;
                let home = self.root.join(".bench/pm2-home");
                pm2_kill(&bin, &home);
                let mut cmd = Command::new(&bin);
                cmd.env("PM2_HOME", &home)
                    .env("PORT", port.to_string())
                    .env("LEAK_LOG", log)
                    .args(["start", app, "--name", "http-leak", "-i", &workers])
                    .args(["--max-memory-restart", &format!("{LIMIT_MIB}M")])
                    .args(["--kill-timeout", "6000", "--", leak, BALLAST])
                    .stdout(Stdio::null());
                if let Some(ms) = interval {
                    cmd.env("PM2_WORKER_INTERVAL", ms.to_string());
                }
                pm2 = Some((bin, home));
                let status = cmd.status().context("starting pm2")?;
                anyhow::ensure!(status.success(), "pm2 start failed: {status}");
                // Until both workers answer.
                let deadline = Instant::now() + Duration::from_secs(20);
                while !probe_once(port) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(100));
                }
                (None, port)
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let prober = thread::spawn(move || probe(port, &flag));
        let from = monotonic_ns();
        let out = Command::new(wrk)
            .args(["-t2", "-c32", &format!("-d{SECONDS}s"), "--latency"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .context("running wrk")?;
        let to = monotonic_ns();
        stop.store(true, Ordering::Relaxed);
        let probes = prober
            .join()
            .map_err(|_| anyhow::anyhow!("the probe panicked"))?;
        let why = pool.map(|pool| why_replaced(&pool.stop()));
        if let Some((bin, home)) = &pm2 {
            pm2_kill(bin, home);
        }
        let report = String::from_utf8_lossy(&out.stdout);
        let wrk =
            parse_wrk(&report).with_context(|| format!("no figures in wrk's report: {report}"))?;
        let servers = read_log(log);
        let mut row = summarize(supervisor, wrk, &probes, &servers, from, to);
        if let (Some(why), Some(object)) = (why, row.as_object_mut()) {
            object.insert("why".into(), json!(why));
        }
        Ok(row)
    }

    pub(super) fn http_leak(&self) -> Result<Value> {
        let wrk = peers::debian("wrk", "wrk")?;
        let log = self.workers_out.join("http-leak-servers.log");
        println!(
            "http-leak: a Node.js server leaking ~1 MB/s per worker under load, {WORKERS} workers, {LIMIT_MIB} MiB limit each, wrk -t2 -c32 -d{SECONDS}s"
        );
        println!(
            "| supervisor | replacements | why | socket errors | non-2xx | p99 | p99 during replacements | fewest serving | peak RSS | worst overshoot |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        let mut runs = Vec::new();
        let mut plan = vec![Supervisor::Xypriss { leak: false }];
        plan.extend([Supervisor::Xypriss { leak: true }; ROUNDS]);
        plan.extend([Supervisor::Pm2(None), Supervisor::Pm2(Some(100))]);
        for supervisor in plan {
            let row = self.http_leak_run(supervisor, &wrk, &log)?;
            println!("{}", table_row(&row));
            runs.push(row);
        }
        Ok(json!({
            "seconds": SECONDS,
            "workers": WORKERS,
            "limit_mib": LIMIT_MIB,
            "runs": runs,
        }))
    }
}

/// Why xypriss stopped workers before its shutdown, from its events: the
/// `memory_alert`s whose action replaces a worker, by type, then the
/// `worker_stopping` reasons other than the shutdown, as `name: count`.
fn why_replaced(events: &[Value]) -> BTreeMap<String, usize> {
    let mut why = BTreeMap::new();
    for event in events {
        let name = match event["event"].as_str() {
            Some("memory_alert") if event["action"] == "restart" => {
                format!("alert {}", event["type"].as_str().unwrap_or("?"))
            }
            Some("worker_stopping") if event["reason"] != "shutdown" => {
                format!("stopping {}", event["reason"].as_str().unwrap_or("?"))
            }
            _ => continue,
        };
        *why.entry(name).or_insert(0) += 1;
    }
    why
}

/// Stops PM2's daemon and its apps, if it runs.
fn pm2_kill(bin: &Path, home: &PathBuf) {
    let _ = Command::new(bin)
        .arg("kill")
        .env("PM2_HOME", home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn summarize(
    supervisor: Supervisor,
    wrk: Wrk,
    probes: &[Probe],
    servers: &BTreeMap<u32, Server>,
    from: u64,
    to: u64,
) -> Value {
    let windows: Vec<(u64, u64)> = servers
        .values()
        .filter_map(|s| {
            let drain = s.drain.filter(|&d| d >= from && d <= to)?;
            let end = s.exit.unwrap_or(to).max(drain);
            Some((drain.saturating_sub(BEFORE_NS), end + AFTER_NS))
        })
        .collect();
    let mut during: Vec<f64> = probes
        .iter()
        .filter(|p| windows.iter().any(|&(a, b)| p.at >= a && p.at <= b))
        .map(|p| p.ms)
        .collect();
    during.sort_by(f64::total_cmp);
    let mut all: Vec<f64> = probes.iter().map(|p| p.ms).collect();
    all.sort_by(f64::total_cmp);
    let limit = LIMIT_MIB << 20;
    let peak = servers.values().map(|s| s.peak).max().unwrap_or(0);
    let overshoot = peak.saturating_sub(limit);
    json!({
        "supervisor": supervisor.name(),
        "requests_per_s": wrk.requests_per_s,
        "p99_ms": wrk.p99_ms,
        "socket_errors": wrk.socket_errors,
        "non_2xx": wrk.non_2xx,
        "replacements": windows.len(),
        "probe_requests": probes.len(),
        "probe_failures": probes.iter().filter(|p| !p.ok).count(),
        "probe_p99_ms": percentile(&all, 0.99),
        "probe_requests_during_replacements": during.len(),
        "probe_p99_during_replacements_ms": percentile(&during, 0.99),
        "fewest_serving": fewest_serving(servers, from, to),
        "peak_rss_mib": peak as f64 / f64::from(1 << 20),
        "worst_overshoot_mib": overshoot as f64 / f64::from(1 << 20),
        "worst_overshoot_pct": overshoot as f64 / limit as f64 * 100.0,
    })
}

fn table_row(row: &Value) -> String {
    let during = row["probe_p99_during_replacements_ms"]
        .as_f64()
        .filter(|v| v.is_finite())
        .map_or("none".to_string(), |v| {
            format!(
                "{v:.1} ms ({} probes)",
                row["probe_requests_during_replacements"]
            )
        });
    let why = row["why"].as_object().map_or("-".to_string(), |why| {
        let parts: Vec<String> = why.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    });
    format!(
        "| {} | {} | {why} | {} | {} | {:.1} ms | {during} | {} | {:.1} MiB | {:.1} MiB, {:.1}% |",
        row["supervisor"].as_str().unwrap_or_default(),
        row["replacements"],
        row["socket_errors"],
        row["non_2xx"],
        row["p99_ms"].as_f64().unwrap_or(f64::NAN),
        row["fewest_serving"],
        row["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
        row["worst_overshoot_mib"].as_f64().unwrap_or(f64::NAN),
        row["worst_overshoot_pct"].as_f64().unwrap_or(f64::NAN),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_errors_are_summed_and_absent_ones_are_zero() {
        let report = "     99%   13.50ms\n  Socket errors: connect 1, read 2, write 3, timeout 20\n  \
                      Non-2xx or 3xx responses: 7\nRequests/sec:  5000.00\n";
        assert_eq!(
            parse_wrk(report),
            Some(Wrk {
                requests_per_s: 5000.0,
                p99_ms: 13.5,
                socket_errors: 26,
                non_2xx: 7
            })
        );
        let clean = "     99%    1.01s\nRequests/sec:  10.00\n";
        assert_eq!(
            parse_wrk(clean).map(|w| (w.p99_ms, w.socket_errors, w.non_2xx)),
            Some((1010.0, 0, 0))
        );
        assert_eq!(parse_wrk("Requests/sec:  10.00\n"), None);
    }

    #[test]
    fn serving_counts_starts_until_drains() {
        let mut servers = BTreeMap::new();
        let server = |start, drain, exit| Server {
            start,
            drain,
            exit,
            peak: 0,
        };
        servers.insert(1, server(0, Some(50), Some(60)));
        servers.insert(2, server(0, None, None));
        // The successor starts before its predecessor drains: never fewer than 2.
        servers.insert(3, server(40, None, None));
        assert_eq!(fewest_serving(&servers, 10, 100), 2);
        // A successor that starts after the drain leaves one serving.
        servers.insert(3, server(55, None, None));
        assert_eq!(fewest_serving(&servers, 10, 100), 1);
        // No change while the load runs: those serving when it started,
        // whatever happens after it (the pool's shutdown).
        let mut quiet = BTreeMap::new();
        quiet.insert(1, server(0, Some(150), Some(160)));
        quiet.insert(2, server(0, Some(150), Some(160)));
        assert_eq!(fewest_serving(&quiet, 10, 100), 2);
    }

    #[test]
    fn replacements_are_explained_by_their_alerts_and_stops() {
        let events = [
            json!({"event": "memory_alert", "type": "warning", "action": "none"}),
            json!({"event": "memory_alert", "type": "critical", "action": "restart"}),
            json!({"event": "memory_alert", "type": "critical", "action": "restart"}),
            json!({"event": "worker_stopping", "reason": "replaced"}),
            json!({"event": "worker_stopping", "reason": "shutdown"}),
        ];
        let why = why_replaced(&events);
        assert_eq!(why.get("alert critical"), Some(&2));
        assert_eq!(why.get("stopping replaced"), Some(&1));
        assert_eq!(why.len(), 2, "{why:?}");
    }
}
