//! `cargo xtask soak --minutes N`: a long run under load, to show that
//! xypriss loses no event without saying so, does not leak itself, restarts
//! what it should, and keeps its alert latency while busy.
//!
//! 64 workers run `xypriss-demo mixed` (leakers that reach their limit and are
//! replaced, steady workers, crashers that exit every 10 s, bursts); this
//! process reads the whole NDJSON stream as a consumer would; a thread
//! hammers the status server (`/cluster/memory` and `/metrics`) as fast as it
//! answers. At the end: events made against events received, the
//! controller's RSS over time, restarts against what the workers' roles
//! imply, and the alert latency (the kernel's timestamp of the crossing to
//! the alert line read here), with xypriss's own word on each time its ring
//! buffer was held up by a record left half-written, or its loop spent 5 ms
//! or more on one turn (`xyprissSaid`). With
//! `--watch-stalls`, the machine's own stalls meanwhile too, seen by a
//! do-nothing thread per CPU one priority above xypriss
//! (`bench/stalls.rs`), against which each slow alert is read. The
//! figures go to `target/bench/soak.json` and
//! BENCHMARKS.md. With `--stress-cpu N` it all runs beside `stress-ng --cpu
//! N` (the figures to `soak-stress-cpuN.json`): the alert latency must hold
//! on busy CPUs too.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::bench::{CpuHogs, Pool, monotonic_ns, percentile, stalls, vm_rss};

const WORKERS: u32 = 64;
/// The demo's crashers exit after this long.
const CRASH_AFTER_SECS: f64 = 10.0;
/// The demo's leakers grow this fast from 32 MiB, against a 128 MiB limit:
/// they reach it (warning, critical, limit) before a trend test could say
/// "leak", so each makes three threshold alerts and a replacement.
const LEAK_MIB_PER_SEC: f64 = 12.0;

pub fn run(root: &Path, minutes: f64, stress_cpu: Option<u32>, watch_stalls: bool) -> Result<()> {
    let hogs = stress_cpu.map(CpuHogs::start).transpose()?;
    let (mut condition, mut suffix) = (
        CpuHogs::condition(hogs.as_ref()),
        CpuHogs::suffix(hogs.as_ref()),
    );
    if watch_stalls {
        condition.push_str(", stall watchers beside");
        suffix.push_str("-stall-watch");
    }
    let release = root.join("target/release");
    let (xypriss, demo) = (release.join("xypriss"), release.join("xypriss-demo"));
    let demo = demo.to_str().context("demo path")?;
    let workers = WORKERS.to_string();
    let pool = Pool::start(
        &xypriss,
        &[
            "--workers",
            &workers,
            "--name",
            "soak",
            "--status-addr",
            "127.0.0.1:0",
            "--max-memory-per-worker",
            "128MiB",
            "--max-total-memory",
            "16GiB",
            "--enforce-hard-limits",
            "true",
            // A crasher up 10 s was healthy: its restart delay starts over.
            "--restart-reset-after",
            "5s",
            demo,
            "mixed",
        ],
    )?;
    let pid = pool.pid();
    let reader = pool.reader();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut alerts = Alerts {
        started_ns: monotonic_ns(),
        ..Alerts::default()
    };
    let mut received = 0;
    let server = loop {
        let (read_at, event) = pool
            .next(Duration::from_secs(30))
            .context("no status_server event within 30 s")?;
        received += 1;
        tally(&event, read_at, &mut counts, &mut alerts);
        if event["event"] == "status_server" {
            break event;
        }
    };
    let address: SocketAddr = server["address"]
        .as_str()
        .context("status_server.address")?
        .parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || hammer(address, &stop))
    };
    let watchers = watch_stalls.then(stalls::Watchers::start);
    let watchers_realtime = watchers.as_ref().is_some_and(|w| w.realtime);

    let run_for = Duration::from_secs_f64(minutes * 60.0);
    let started = Instant::now();
    let mut rss = Vec::new();
    let mut next_rss = Instant::now();
    while started.elapsed() < run_for {
        if Instant::now() >= next_rss {
            let mib = vm_rss(pid).unwrap_or(0) as f64 / (1 << 20) as f64;
            rss.push((started.elapsed().as_secs(), mib));
            next_rss += Duration::from_secs(10);
        }
        let Some((read_at, event)) = pool.next(Duration::from_millis(200)) else {
            continue;
        };
        received += 1;
        tally(&event, read_at, &mut counts, &mut alerts);
    }
    stop.store(true, Ordering::Relaxed);
    let requests = hammer.join().expect("the hammer thread does not panic");
    // Each with when it was read: the lines that waited while the hammer
    // stopped were read on time, only taken later.
    let said = pool.logs_containing(&["half-written", "the loop spent"]);
    let rest = pool.stop_timed();
    let stalls = watchers.map(stalls::Watchers::stop);
    let stopped = rest
        .iter()
        .find(|(_, e)| e["event"] == "cluster_stopped")
        .context("no cluster_stopped at the end")?
        .1
        .clone();
    for (read_at, event) in &rest {
        if event["event"] != "cluster_stopped" {
            received += 1;
            tally(event, *read_at, &mut counts, &mut alerts);
        }
    }
    // Every event before cluster_stopped, whether read here or lost on the way.
    let emitted = stopped["eventsEmitted"].as_u64().unwrap_or(0);
    let lost_output = counts.get("lost:output").copied().unwrap_or(0);
    let lost_kernel = counts.get("lost:kernel").copied().unwrap_or(0);
    let seconds = started.elapsed().as_secs_f64();
    let per_role = f64::from(WORKERS / 4);
    let expected_crashes = per_role * (seconds / (CRASH_AFTER_SECS + 0.2)).floor();
    let expected_replacements =
        per_role * (seconds / ((128.0 - 32.0) / LEAK_MIB_PER_SEC + 1.0)).floor();
    alerts.latencies.sort_by(|a, b| a.0.total_cmp(&b.0));
    let latencies: Vec<f64> = alerts.latencies.iter().map(|(ms, ..)| *ms).collect();
    let beside = |from: u64, to: u64| -> String {
        let Some(stalls) = &stalls else {
            return String::new();
        };
        match stalls::overlapping(stalls, from, to).first() {
            Some(stall) => format!(
                "; meanwhile a watcher on CPU {} woke {:.2} ms late",
                stall.cpu,
                stall.late_ns as f64 / 1e6
            ),
            None => "; no watcher woke 1 ms late meanwhile".into(),
        }
    };
    let slowest: Vec<String> = alerts
        .latencies
        .iter()
        .rev()
        .take(5)
        .map(|(_, what, from, to)| format!("{what}{}", beside(*from, *to)))
        .collect();
    let over_5ms_in_a_stall = stalls.as_ref().map(|stalls| {
        alerts
            .latencies
            .iter()
            .filter(|(ms, _, from, to)| {
                *ms > 5.0
                    && stalls::overlapping(stalls, *from, *to)
                        .first()
                        .is_some_and(|stall| stall.late_ns >= 5_000_000)
            })
            .count()
    });
    let machine_stalls = stalls.as_ref().map(|stalls| {
        let ms: Vec<f64> = stalls.iter().map(|s| s.late_ns as f64 / 1e6).collect();
        json!({
            "watchers": if watchers_realtime { "SCHED_FIFO 3, one pinned per CPU" } else { "normal scheduling" },
            "over1ms": ms.len(),
            "over5ms": ms.iter().filter(|&&ms| ms >= 5.0).count(),
            "maxMs": ms.iter().copied().fold(0.0, f64::max),
        })
    });
    drop(hogs);
    let result = json!({
        "minutes": minutes,
        "workers": WORKERS,
        "condition": condition,
        "events": {
            "emitted": emitted,
            "received": received,
            "lostOutput": lost_output,
            "lostKernel": lost_kernel,
            "unaccounted": emitted as i64 - received as i64 - lost_output as i64,
            "byName": counts,
        },
        "controllerRssMiB": rss,
        "restarts": {
            "crashes": counts.get("worker_restarted").copied().unwrap_or(0),
            "crashesExpected": expected_crashes,
            "replacements": counts.get("action:restart").copied().unwrap_or(0),
            "replacementsExpected": expected_replacements,
            "errored": counts.get("worker_errored").copied().unwrap_or(0),
        },
        "alertLatencyMs": {
            "reader": reader,
            "count": latencies.len(),
            "p50": percentile(&latencies, 0.5),
            "p99": percentile(&latencies, 0.99),
            "max": latencies.last().copied().unwrap_or(f64::NAN),
            "over5ms": latencies.iter().filter(|&&ms| ms > 5.0).count(),
            "over5msDuringAStallOf5ms": over_5ms_in_a_stall,
            "slowest": slowest,
            "xyprissSaid": said,
        },
        "machineStalls": machine_stalls,
        "statusServer": requests,
    });
    let out = root.join("target/bench");
    fs::create_dir_all(&out)?;
    let file = out.join(format!("soak{suffix}.json"));
    fs::write(&file, serde_json::to_string_pretty(&result)?)?;
    print(&result);
    for what in result["alertLatencyMs"]["slowest"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!("slowest: {}", what.as_str().unwrap_or("?"));
    }
    for line in result["alertLatencyMs"]["xyprissSaid"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!("xypriss: {}", line.as_str().unwrap_or("?"));
    }
    println!("→ {}", file.display());
    if result["events"]["unaccounted"] != 0 {
        bail!("events unaccounted for: {}", result["events"]);
    }
    Ok(())
}

/// What [`tally`] keeps of the stream, besides counts.
#[derive(Default)]
struct Alerts {
    /// By pid: the kernel's timestamp of its last threshold crossing.
    crossed: BTreeMap<u64, u64>,
    /// By pid: its last `memory_sample`'s kernel timestamp and trigger.
    last_sample: BTreeMap<u64, (u64, String)>,
    /// Each worker alert's latency, in ms, with who and what it was.
    /// Each with its crossing's and its read's `CLOCK_MONOTONIC` ns.
    latencies: Vec<(f64, String, u64, u64)>,
    /// When the run started, and when the line before this one was read.
    started_ns: u64,
    previous_read_ns: u64,
}

/// Counts `event` and, for a worker's alert, its latency from the kernel's
/// timestamp of the crossing (its process's threshold sample before it) to
/// `read_at`. By pid, not worker id: a worker's successor runs beside it.
fn tally(event: &Value, read_at: u64, counts: &mut BTreeMap<String, u64>, alerts: &mut Alerts) {
    let name = event["event"].as_str().unwrap_or("?").to_owned();
    let pid = event["pid"].as_u64();
    match name.as_str() {
        "memory_sample" => {
            if let (Some(pid), Some(at)) = (pid, event["monotonicNs"].as_u64()) {
                let trigger = event["trigger"].as_str().unwrap_or("?");
                if trigger == "threshold" {
                    alerts.crossed.insert(pid, at);
                }
                alerts.last_sample.insert(pid, (at, trigger.to_owned()));
            }
        }
        "memory_alert" => {
            if let Some(at) = pid.and_then(|pid| alerts.crossed.remove(&pid))
                && event["type"] != "leak_detected"
            {
                let ms = read_at.saturating_sub(at) as f64 / 1e6;
                let (last_at, trigger) = pid
                    .and_then(|pid| alerts.last_sample.get(&pid))
                    .cloned()
                    .unwrap_or_default();
                let what = format!(
                    "worker {} pid {} {} at {:.1} s: crossed {ms:.2} ms before it was read; its last sample ({trigger}) {:.2} ms before; the line before read {:.2} ms before",
                    event["workerId"],
                    event["pid"],
                    event["type"].as_str().unwrap_or("?"),
                    read_at.saturating_sub(alerts.started_ns) as f64 / 1e9,
                    read_at.saturating_sub(last_at) as f64 / 1e6,
                    read_at.saturating_sub(alerts.previous_read_ns) as f64 / 1e6,
                );
                alerts.latencies.push((ms, what, at, read_at));
            }
            if let Some(action) = event["action"].as_str() {
                *counts.entry(format!("action:{action}")).or_default() += 1;
            }
        }
        "worker_exited" => {
            if let Some(pid) = pid {
                alerts.crossed.remove(&pid);
                alerts.last_sample.remove(&pid);
            }
        }
        "events_lost" => {
            let stage = event["stage"].as_str().unwrap_or("?");
            *counts.entry(format!("lost:{stage}")).or_default() +=
                event["count"].as_u64().unwrap_or(0);
        }
        _ => {}
    }
    *counts.entry(name).or_default() += 1;
    alerts.previous_read_ns = read_at;
}

/// GETs `/cluster/memory` and `/metrics` in turn until `stop`: how many
/// answered 200, how many did not, and the latency percentiles.
pub(crate) fn hammer(address: SocketAddr, stop: &AtomicBool) -> Value {
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut times = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for path in ["/cluster/memory", "/metrics"].iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let sent = Instant::now();
        match get(address, path) {
            Ok(200) => {
                ok += 1;
                times.push(sent.elapsed().as_secs_f64() * 1e3);
            }
            Ok(status) => {
                failed += 1;
                *errors.entry(format!("HTTP {status}")).or_default() += 1;
            }
            Err(err) => {
                failed += 1;
                *errors.entry(err.to_string()).or_default() += 1;
            }
        }
    }
    times.sort_by(f64::total_cmp);
    json!({
        "ok": ok,
        "failed": failed,
        "errors": errors,
        "p50Ms": percentile(&times, 0.5),
        "p99Ms": percentile(&times, 0.99),
    })
}

/// One HTTP/1.1 GET; the response's status code.
fn get(address: SocketAddr, path: &str) -> Result<u16> {
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    get_on(stream, address, path)
}

/// One HTTP/1.1 GET of `path` on a connected `stream`; the response's status code.
pub(crate) fn get_on(mut stream: TcpStream, address: SocketAddr, path: &str) -> Result<u16> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head = String::from_utf8_lossy(&response[..response.len().min(32)]).into_owned();
    head.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP response: {head:?}"))
}

fn print(result: &Value) {
    let events = &result["events"];
    let restarts = &result["restarts"];
    let alerts = &result["alertLatencyMs"];
    let server = &result["statusServer"];
    let rss = result["controllerRssMiB"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mib = |i: usize| {
        rss.get(i)
            .map_or(f64::NAN, |p| p[1].as_f64().unwrap_or(f64::NAN))
    };
    println!(
        "soak: {} workers for {} min, {}",
        result["workers"],
        result["minutes"],
        result["condition"].as_str().unwrap_or("?")
    );
    println!("| measure | figure |\n| --- | --- |");
    println!(
        "| events emitted / received / lost at stdout / lost in the kernel | {} / {} / {} / {} (unaccounted: {}) |",
        events["emitted"],
        events["received"],
        events["lostOutput"],
        events["lostKernel"],
        events["unaccounted"]
    );
    println!(
        "| controller RSS: first / last / max | {:.1} / {:.1} / {:.1} MiB |",
        mib(0),
        mib(rss.len().saturating_sub(1)),
        rss.iter()
            .filter_map(|p| p[1].as_f64())
            .fold(f64::NAN, f64::max)
    );
    println!(
        "| crash restarts (expected) | {} ({}) |",
        restarts["crashes"], restarts["crashesExpected"]
    );
    println!(
        "| limit replacements (expected) | {} ({}) |",
        restarts["replacements"], restarts["replacementsExpected"]
    );
    println!("| workers errored | {} |", restarts["errored"]);
    println!(
        "| worker alert latency p50 / p99 / max ({} alerts, reader {}) | {:.2} / {:.2} / {:.2} ms |",
        alerts["count"],
        alerts["reader"].as_str().unwrap_or("?"),
        alerts["p50"].as_f64().unwrap_or(f64::NAN),
        alerts["p99"].as_f64().unwrap_or(f64::NAN),
        alerts["max"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "| worker alerts read over 5 ms after the crossing | {} |",
        alerts["over5ms"]
    );
    let stalls = &result["machineStalls"];
    if !stalls.is_null() {
        println!(
            "| of them, during a machine stall of 5 ms or more | {} |",
            alerts["over5msDuringAStallOf5ms"]
        );
        println!(
            "| machine stalls: watchers ({}) woken 1 ms / 5 ms late or more, longest | {} / {}, {:.2} ms |",
            stalls["watchers"].as_str().unwrap_or("?"),
            stalls["over1ms"],
            stalls["over5ms"],
            stalls["maxMs"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "| status server: ok / failed, p50 / p99 | {} / {}, {:.2} / {:.2} ms |",
        server["ok"],
        server["failed"],
        server["p50Ms"].as_f64().unwrap_or(f64::NAN),
        server["p99Ms"].as_f64().unwrap_or(f64::NAN)
    );
}
