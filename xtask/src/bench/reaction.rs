//! `reaction`: what a user of a memory limit cares about. A Node.js worker
//! (`xtask/apps/allocate.js`) allocates at a fixed rate past a 256 MiB limit;
//! for each crossing, the time to the alert, the time to the old process's
//! death (the restart), and how far over the limit it got first. The same
//! program runs under each monitor, one after the other, at each rate:
//!
//! - xypriss, enforcing the limit (graceful replacement, kernel backstop),
//!   with the default readiness (a successor is ready after a 1 s delay), and
//!   with `--ready-timeout 0s` (ready at once, as PM2's restart); the table
//!   says which readiness each row used;
//! - PM2's `max_memory_restart`, with its default 30 s check and with the
//!   shortest `PM2_WORKER_INTERVAL` it accepts (its code takes any number of
//!   milliseconds; Node clamps a timer to 1 ms);
//! - a `/proc` polling loop at 1 s and at 100 ms, which stands for
//!   earlyoom-style monitors and for upstream XyPriss's periodic check.
//!
//! The worker writes its own crossing time, its RSS after each 256 KiB chunk
//! and the time a stop signal arrived (CLOCK_MONOTONIC, as this benchmark's
//! clock); this benchmark watches each worker's pid for its death every
//! millisecond.
//!
//! Over 600 lines with its unit tests; the benchmark itself is the first 560.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::{Value, json};

use super::{Bench, Pool, alive, median, monotonic_ns, peers, vm_rss};

const LIMIT: u64 = 256 << 20;
/// Where the worker stops growing: an unwatched worker holds there.
const CAP: u64 = LIMIT + (1 << 30);
const RATES: [u64; 3] = [50, 200, 1000];
/// Crossings per monitor and rate, at most.
const CROSSINGS: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Monitor {
    /// xypriss; `true`: with the default readiness (a 1 s delay), `false`:
    /// with `--ready-timeout 0s` (a successor counts as ready at once).
    Xypriss { default_readiness: bool },
    /// PM2 with this `PM2_WORKER_INTERVAL` in ms (`None`: its default).
    Pm2(Option<u64>),
    /// A loop reading `/proc/<pid>/status` at this interval.
    Poll(Duration),
}

impl Monitor {
    fn name(self) -> String {
        match self {
            Self::Xypriss { .. } => "xypriss".into(),
            Self::Pm2(None) => "PM2, default interval (30 s)".into(),
            Self::Pm2(Some(ms)) => format!("PM2, PM2_WORKER_INTERVAL={ms}"),
            Self::Poll(every) => format!("/proc poll every {} ms", every.as_millis()),
        }
    }

    /// When a new worker counts as ready, for the table.
    fn readiness(self) -> &'static str {
        match self {
            Self::Xypriss {
                default_readiness: true,
            } => "default (`--ready delay`, 1 s)",
            Self::Xypriss {
                default_readiness: false,
            } => "`--ready-timeout 0s`",
            Self::Pm2(_) | Self::Poll(_) => "at once (restart)",
        }
    }

    /// How long one monitor gets at one rate.
    fn budget(self) -> Duration {
        match self {
            // Two of its 30 s rounds.
            Self::Pm2(None) => Duration::from_secs(65),
            _ => Duration::from_secs(30),
        }
    }
}

/// A line the worker wrote.
#[derive(Debug, PartialEq)]
enum Record {
    Start { pid: u32 },
    Cross { pid: u32, at: u64, rss: u64 },
    Rss { pid: u32, rss: u64 },
    Signal { pid: u32, at: u64 },
}

fn parse_record(line: &str) -> Option<Record> {
    let mut words = line.split_whitespace();
    let kind = words.next()?;
    let pid = words.next()?.parse().ok()?;
    let at = words.next()?.parse().ok()?;
    let mut rss = || words.next()?.parse().ok();
    Some(match kind {
        "start" => Record::Start { pid },
        "cross" => Record::Cross {
            pid,
            at,
            rss: rss()?,
        },
        "rss" => Record::Rss { pid, rss: rss()? },
        "signal" => Record::Signal { pid, at },
        _ => return None,
    })
}

/// One worker process that crossed the limit, as far as seen.
#[derive(Clone, Debug, Default)]
struct Crossing {
    crossed: u64,
    alert: Option<u64>,
    signal: Option<u64>,
    died: Option<u64>,
    peak: u64,
}

impl Crossing {
    fn alert_ms(&self) -> Option<f64> {
        self.alert.map(|at| ms(at, self.crossed))
    }

    fn restart_ms(&self) -> Option<f64> {
        self.died.map(|at| ms(at, self.crossed))
    }

    /// From the crossing to the stop signal the worker recorded.
    fn signal_ms(&self) -> Option<f64> {
        self.signal.map(|at| ms(at, self.crossed))
    }

    fn overshoot(&self) -> u64 {
        self.peak.saturating_sub(LIMIT)
    }
}

fn ms(at: u64, since: u64) -> f64 {
    (at as f64 - since as f64) / 1e6
}

/// Every worker process of a run: fed the worker's records, the monitor's
/// alerts and deaths, in any order.
#[derive(Default)]
struct Ledger {
    started: Vec<u32>,
    crossings: BTreeMap<u32, Crossing>,
    signals: BTreeMap<u32, u64>,
    alerts: BTreeMap<u32, u64>,
    kernel: BTreeMap<u32, u64>,
    deaths: BTreeMap<u32, u64>,
}

impl Ledger {
    fn record(&mut self, record: Record) {
        match record {
            Record::Start { pid } => self.started.push(pid),
            Record::Cross { pid, at, rss } => {
                self.crossings.insert(
                    pid,
                    Crossing {
                        crossed: at,
                        peak: rss,
                        ..Crossing::default()
                    },
                );
            }
            Record::Rss { pid, rss } => {
                if let Some(c) = self.crossings.get_mut(&pid) {
                    c.peak = c.peak.max(rss);
                }
            }
            Record::Signal { pid, at } => {
                self.signals.insert(pid, at);
            }
        }
    }

    /// The monitor said `pid` is over the limit at `at`.
    fn alert(&mut self, pid: u32, at: u64) {
        self.alerts.entry(pid).or_insert(at);
    }

    /// The kernel saw `pid` cross at `at`: earlier than the worker can tell.
    fn kernel_crossing(&mut self, pid: u32, at: u64) {
        self.kernel.entry(pid).or_insert(at);
    }

    fn died(&mut self, pid: u32, at: u64) {
        self.deaths.entry(pid).or_insert(at);
    }

    /// Started workers not yet seen dead.
    fn living(&self) -> impl Iterator<Item = u32> + '_ {
        self.started
            .iter()
            .copied()
            .filter(|pid| !self.deaths.contains_key(pid))
    }

    /// The first `n` crossings, in time order.
    fn first(&self, n: usize) -> impl Iterator<Item = (&u32, &Crossing)> {
        let mut all: Vec<_> = self.crossings.iter().collect();
        all.sort_by_key(|(_, c)| c.crossed);
        all.into_iter().take(n)
    }

    /// Whether the first `n` crossings are over: their workers are dead.
    fn settled(&self, n: usize) -> bool {
        self.crossings.len() >= n && self.first(n).all(|(pid, _)| self.deaths.contains_key(pid))
    }

    /// The first `n` crossings; a monitor that gives no alert of its own
    /// (PM2) has the stop signal as its alert.
    fn outcome(&self, n: usize) -> Vec<Crossing> {
        self.first(n)
            .map(|(pid, c)| {
                let alert = self.alerts.get(pid).or(self.signals.get(pid));
                let kernel = self.kernel.get(pid).copied().unwrap_or(u64::MAX);
                Crossing {
                    crossed: c.crossed.min(kernel),
                    alert: alert.copied(),
                    signal: self.signals.get(pid).copied(),
                    died: self.deaths.get(pid).copied(),
                    ..c.clone()
                }
            })
            .collect()
    }
}

/// The new lines of the workers' shared log.
struct LogTail {
    path: PathBuf,
    read: usize,
}

impl LogTail {
    fn records(&mut self) -> Vec<Record> {
        let Ok(text) = fs::read_to_string(&self.path) else {
            return Vec::new();
        };
        // Only whole lines: a worker may be writing the last one.
        let end = text.rfind('\n').map_or(0, |i| i + 1);
        let new = text.get(self.read..end).unwrap_or_default();
        self.read = end.max(self.read);
        new.lines().filter_map(parse_record).collect()
    }
}

/// A running monitor, stopped on drop.
enum Running {
    Xypriss(Pool),
    Pm2 {
        bin: PathBuf,
        home: PathBuf,
    },
    Poll {
        stop: Arc<AtomicBool>,
        alerts: Receiver<(u32, u64)>,
        thread: Option<thread::JoinHandle<()>>,
    },
}

impl Drop for Running {
    fn drop(&mut self) {
        match self {
            Self::Xypriss(_) => {}
            Self::Pm2 { bin, home } => pm2_kill(bin, home),
            Self::Poll { stop, thread, .. } => {
                stop.store(true, Ordering::Relaxed);
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

/// Stops PM2's daemon and its apps, if it runs.
fn pm2_kill(bin: &Path, home: &Path) {
    let _ = Command::new(bin)
        .arg("kill")
        .env("PM2_HOME", home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The polling monitor: starts the worker, reads its VmRSS every `every`,
/// and at the limit says so, stops it (SIGTERM) and starts the next.
fn poll_loop(
    worker: Vec<String>,
    every: Duration,
    stop: &AtomicBool,
    alerts: mpsc::Sender<(u32, u64)>,
) {
    let spawn = || -> Option<Child> {
        Command::new(&worker[0])
            .args(&worker[1..])
            .stdin(Stdio::null())
            .spawn()
            .ok()
    };
    let Some(mut child) = spawn() else { return };
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(every);
        if vm_rss(child.id()).is_some_and(|rss| rss >= LIMIT) {
            let _ = alerts.send((child.id(), monotonic_ns()));
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
            let Some(next) = spawn() else { return };
            child = next;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Bench {
    fn start_monitor(&self, monitor: Monitor, worker: &[String]) -> Result<Running> {
        let worker_args: Vec<&str> = worker.iter().map(String::as_str).collect();
        Ok(match monitor {
            Monitor::Xypriss { default_readiness } => {
                let mut args = vec![
                    "--workers",
                    "1",
                    "--require-ebpf",
                    "--name",
                    "reaction",
                    "--max-memory-per-worker",
                    "256MiB",
                    "--enforce-hard-limits",
                    "true",
                ];
                if !default_readiness {
                    // The replacement counts as ready at once, as PM2's
                    // restart does, so the old worker is stopped at once.
                    args.extend(["--ready-timeout", "0s"]);
                }
                args.push("--");
                args.extend(&worker_args);
                let pool = Pool::start(&self.xypriss, &args)?;
                pool.wait_event("worker_spawned", Duration::from_secs(10))?;
                Running::Xypriss(pool)
            }
            Monitor::Pm2(interval) => {
                let bin = peers::pm2(&self.root)?;
                let home = self.root.join(".bench/pm2-home");
                let mut cmd = Command::new(&bin);
                cmd.env("PM2_HOME", &home)
                    .args(["start", worker[1].as_str(), "--name", "reaction"])
                    .args(["--max-memory-restart", "256M", "--"])
                    .args(&worker[2..])
                    .stdout(Stdio::null());
                if let Some(ms) = interval {
                    cmd.env("PM2_WORKER_INTERVAL", ms.to_string());
                }
                // A daemon left by an interrupted run goes first: its interval
                // may differ. From here on, dropping `running` kills ours.
                pm2_kill(&bin, &home);
                let running = Running::Pm2 { bin, home };
                let status = cmd.status().context("starting pm2")?;
                anyhow::ensure!(status.success(), "pm2 start failed: {status}");
                running
            }
            Monitor::Poll(every) => {
                let stop = Arc::new(AtomicBool::new(false));
                let (tx, alerts) = mpsc::channel();
                let worker = worker.to_vec();
                let flag = Arc::clone(&stop);
                let thread = thread::spawn(move || poll_loop(worker, every, &flag, tx));
                Running::Poll {
                    stop,
                    alerts,
                    thread: Some(thread),
                }
            }
        })
    }

    /// One monitor at one rate: up to [`CROSSINGS`] crossings within its budget.
    fn react(&self, monitor: Monitor, rate: u64, log: &Path) -> Result<Vec<Crossing>> {
        let _ = fs::remove_file(log);
        let app = self.root.join("xtask/apps/allocate.js");
        let worker: Vec<String> = vec![
            "node".into(),
            app.to_str().context("app path")?.into(),
            rate.to_string(),
            LIMIT.to_string(),
            CAP.to_string(),
            log.to_str().context("log path")?.into(),
        ];
        let mut tail = LogTail {
            path: log.to_path_buf(),
            read: 0,
        };
        let mut ledger = Ledger::default();
        let running = self.start_monitor(monitor, &worker)?;
        let deadline = Instant::now() + monitor.budget();
        while Instant::now() < deadline && !ledger.settled(CROSSINGS) {
            for record in tail.records() {
                ledger.record(record);
            }
            match &running {
                Running::Xypriss(pool) => {
                    while let Some((read_at, e)) = pool.next(Duration::ZERO) {
                        let pid = e["pid"].as_u64().unwrap_or(0) as u32;
                        if e["event"] == "memory_alert" && e["type"] == "limit_exceeded" {
                            ledger.alert(pid, read_at);
                        }
                        if e["event"] == "memory_sample"
                            && e["trigger"] == "threshold"
                            && e["thresholdLevel"] == 3
                        {
                            ledger.kernel_crossing(
                                pid,
                                e["monotonicNs"].as_u64().unwrap_or(u64::MAX),
                            );
                        }
                    }
                }
                Running::Poll { alerts, .. } => {
                    for (pid, at) in alerts.try_iter() {
                        ledger.alert(pid, at);
                    }
                }
                Running::Pm2 { .. } => {}
            }
            let now = monotonic_ns();
            let dead: Vec<u32> = ledger.living().filter(|&pid| !alive(pid)).collect();
            for pid in dead {
                ledger.died(pid, now);
            }
            thread::sleep(Duration::from_millis(1));
        }
        // What the workers write from here on is the teardown, not the monitor.
        drop(running);
        Ok(ledger.outcome(CROSSINGS))
    }

    pub(super) fn reaction(&self) -> Result<Value> {
        let monitors = [
            Monitor::Xypriss {
                default_readiness: true,
            },
            Monitor::Xypriss {
                default_readiness: false,
            },
            Monitor::Pm2(None),
            Monitor::Pm2(Some(1)),
            Monitor::Poll(Duration::from_secs(1)),
            Monitor::Poll(Duration::from_millis(100)),
        ];
        let log = self.workers_out.join("reaction-worker.log");
        println!(
            "reaction: a Node.js worker allocating past a 256 MiB limit; medians (max) over up to {CROSSINGS} crossings"
        );
        println!(
            "| monitor | readiness | MiB/s | crossings | crossing → alert | crossing → stop signal | crossing → old worker dead | overshoot |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        let mut rows = Vec::new();
        for rate in RATES {
            for monitor in monitors {
                let crossings = self.react(monitor, rate, &log)?;
                let row = summarize(monitor, rate, &crossings);
                println!("{}", table_row(&row));
                rows.push(row);
            }
        }
        Ok(json!({ "limit_bytes": LIMIT, "cap_bytes": CAP, "runs": rows }))
    }
}

fn summarize(monitor: Monitor, rate: u64, crossings: &[Crossing]) -> Value {
    let stat = |values: Vec<f64>| {
        let max = values.iter().copied().fold(f64::NAN, f64::max);
        json!({ "n": values.len(), "median": median(values), "max": max })
    };
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    json!({
        "monitor": monitor.name(),
        "readiness": monitor.readiness(),
        "rate_mib_per_s": rate,
        "crossings": crossings.len(),
        "alert_ms": stat(crossings.iter().filter_map(Crossing::alert_ms).collect()),
        "restart_ms": stat(crossings.iter().filter_map(Crossing::restart_ms).collect()),
        "signal_ms": stat(crossings.iter().filter_map(Crossing::signal_ms).collect()),
        "overshoot_mib": stat(crossings.iter().map(|c| mib(c.overshoot())).collect()),
        "capped": crossings.iter().any(|c| c.peak + (1 << 20) >= CAP),
        "raw": crossings.iter().map(|c| json!({
            "alert_ms": c.alert_ms(),
            "restart_ms": c.restart_ms(),
            "signal_ms": c.signal_ms(),
            "peak_bytes": c.peak,
        })).collect::<Vec<_>>(),
    })
}

fn table_row(row: &Value) -> String {
    let crossings = row["crossings"].as_u64().unwrap_or(0);
    let time = |stat: &Value| -> String {
        let n = stat["n"].as_u64().unwrap_or(0);
        if n == 0 {
            return "none in the run".into();
        }
        let missing = if n < crossings {
            format!(", {} none", crossings - n)
        } else {
            String::new()
        };
        format!(
            "{} ({}){missing}",
            duration(stat["median"].as_f64().unwrap_or(f64::NAN)),
            duration(stat["max"].as_f64().unwrap_or(f64::NAN))
        )
    };
    let over = &row["overshoot_mib"];
    let over_mib = over["median"].as_f64().unwrap_or(f64::NAN);
    let over_max = over["max"].as_f64().unwrap_or(f64::NAN);
    let capped = if row["capped"] == true {
        ", capped"
    } else {
        ""
    };
    format!(
        "| {} | {} | {} | {crossings} | {} | {} | {} | {over_mib:.1} MiB, {:.1}% ({over_max:.1} MiB){capped} |",
        row["monitor"].as_str().unwrap_or_default(),
        row["readiness"].as_str().unwrap_or_default(),
        row["rate_mib_per_s"],
        time(&row["alert_ms"]),
        time(&row["signal_ms"]),
        time(&row["restart_ms"]),
        over_mib / 256.0 * 100.0,
    )
}

/// Milliseconds for people: µs below 1 ms, s above 10 s.
fn duration(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else if ms < 10_000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_read_and_bad_lines_skipped() {
        assert_eq!(parse_record("start 7 100"), Some(Record::Start { pid: 7 }));
        assert_eq!(
            parse_record("cross 7 200 268439552"),
            Some(Record::Cross {
                pid: 7,
                at: 200,
                rss: 268_439_552
            })
        );
        assert_eq!(
            parse_record("signal 7 300 SIGINT"),
            Some(Record::Signal { pid: 7, at: 300 })
        );
        assert_eq!(parse_record("cross 7 200"), None);
        assert_eq!(parse_record("hello 7 200"), None);
        assert_eq!(parse_record(""), None);
    }

    #[test]
    fn a_crossing_takes_the_earliest_alert_and_the_peak() {
        let mut ledger = Ledger::default();
        ledger.record(Record::Start { pid: 7 });
        ledger.record(Record::Cross {
            pid: 7,
            at: 1_000_000,
            rss: LIMIT + 1,
        });
        ledger.record(Record::Rss {
            pid: 7,
            rss: LIMIT + (3 << 20),
        });
        ledger.record(Record::Rss { pid: 7, rss: LIMIT });
        ledger.kernel_crossing(7, 900_000);
        ledger.alert(7, 1_100_000);
        ledger.alert(7, 5_000_000);
        ledger.died(7, 3_900_000);
        let [c] = ledger.outcome(1).try_into().expect("one crossing");
        assert_eq!(c.alert_ms(), Some(0.2));
        assert_eq!(c.restart_ms(), Some(3.0));
        assert_eq!(c.overshoot(), 3 << 20);
        assert!(ledger.settled(1));
        assert_eq!(ledger.living().count(), 0);
    }

    #[test]
    fn without_an_alert_of_its_own_the_stop_signal_is_the_alert() {
        let mut ledger = Ledger::default();
        ledger.record(Record::Start { pid: 8 });
        ledger.record(Record::Cross {
            pid: 8,
            at: 0,
            rss: LIMIT,
        });
        ledger.record(Record::Signal {
            pid: 8,
            at: 30_000_000_000,
        });
        let [c] = ledger.outcome(5).try_into().expect("one crossing");
        assert_eq!(c.alert_ms(), Some(30_000.0));
        assert_eq!(c.restart_ms(), None);
        assert!(!ledger.settled(1));
    }
}
