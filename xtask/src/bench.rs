//! `cargo xtask bench [NAME…]`: the observer's benchmarks, run on the release
//! build and the bundled demo worker. Each prints a table and writes its
//! figures as JSON to `target/bench/NAME.json`; BENCHMARKS.md records them.
//!
//! - `latency`: threshold crossing (kernel timestamp) → the JSON line read
//!   from xypriss's stdout, over at least 1000 crossings.
//! - `overhead`: nanoseconds per page fault of a fault-heavy allocator, cold
//!   and warm, unobserved / observed but unwatched / watched, and with
//!   bpftrace doing the same per-process rss_stat accounting.
//! - `throughput`: the allocation rates at which `events_lost` stays 0.
//! - `leak`: leak detection on real processes: the time to detect a 1 MiB/s
//!   and a 100 KiB/s leak on a 100 MiB baseline, and false positives over
//!   `--minutes` (default 10) of a warm-up, a GC sawtooth, a one-off step and
//!   allocation churn. The scenarios run side by side.
//! - `footprint`: start-up time until every worker is ready, and xypriss's
//!   own RSS and CPU, with 16, 64 and 256 idle workers.
//!
//! Every scenario is bounded in time and stops what it started.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    time::{ClockId, clock_gettime},
    unistd::Pid,
};
use serde_json::{Value, json};

const ALL: [&str; 5] = ["latency", "overhead", "throughput", "footprint", "leak"];

pub fn run(root: &Path, names: &[String], minutes: f64) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmarks load eBPF programs: run them as root");
    }
    let names: Vec<&str> = if names.is_empty() {
        ALL.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };
    let bench = Bench {
        xypriss: root.join("target/release/xypriss"),
        demo: root.join("target/release/xypriss-demo"),
        out: root.join("target/bench"),
    };
    fs::create_dir_all(&bench.out)?;
    for name in names {
        let result = match name {
            "latency" => bench.latency()?,
            "overhead" => bench.overhead()?,
            "throughput" => bench.throughput()?,
            "footprint" => bench.footprint()?,
            "leak" => bench.leak(minutes)?,
            other => bail!("unknown benchmark `{other}`: {}", ALL.join(", ")),
        };
        let path = bench.out.join(format!("{name}.json"));
        fs::write(&path, serde_json::to_string_pretty(&result)?)?;
        println!("→ {}\n", path.display());
    }
    Ok(())
}

struct Bench {
    xypriss: PathBuf,
    demo: PathBuf,
    out: PathBuf,
}

fn monotonic_ns() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// A running `xypriss run`: stdout lines with the monotonic time they were read.
struct Pool {
    child: Child,
    lines: Receiver<(u64, String)>,
    stderr: Receiver<String>,
}

impl Pool {
    fn start(xypriss: &Path, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(xypriss)
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting xypriss")?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().context("stdout")?;
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let at = monotonic_ns();
                if tx.send((at, std::mem::take(&mut line))).is_err() {
                    return;
                }
            }
        });
        let (etx, stderr) = mpsc::channel();
        let err = child.stderr.take().context("stderr")?;
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if etx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            stderr,
        })
    }

    /// The next event within `timeout`, with when it was read.
    fn next(&self, timeout: Duration) -> Option<(u64, Value)> {
        let (at, line) = self.lines.recv_timeout(timeout).ok()?;
        Some((at, serde_json::from_str(&line).ok()?))
    }

    fn wait_event(&self, name: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        while let Some((_, event)) = self.next(deadline.saturating_duration_since(Instant::now())) {
            if event["event"] == name {
                return Ok(event);
            }
        }
        bail!("no {name} from xypriss within {timeout:?}")
    }

    /// A stderr line containing `text` (workers' output is forwarded there).
    fn wait_log(&self, text: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        while let Ok(line) = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.contains(text) {
                return Ok(line);
            }
        }
        bail!("no `{text}` on xypriss's stderr within {timeout:?}")
    }

    /// SIGINT, then every remaining event.
    fn stop(mut self) -> Vec<Value> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let mut rest = Vec::new();
        while let Some((_, event)) = self.next(Duration::from_secs(10)) {
            let last = event["event"] == "cluster_stopped";
            rest.push(event);
            if last {
                break;
            }
        }
        let _ = self.child.wait();
        rest
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 0.5)
}

impl Bench {
    fn latency(&self) -> Result<Value> {
        const CROSSINGS: usize = 2000;
        let demo = self.demo.to_str().context("demo path")?;
        // Thresholds at 51.2, 60.8 and 64 MiB; the worker swings between 40 and 72 MiB.
        let pool = Pool::start(
            &self.xypriss,
            &[
                "--workers",
                "1",
                "--require-ebpf",
                "--max-memory-per-worker",
                "64MiB",
                demo,
                "oscillate",
                "40",
                "72",
            ],
        )?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut latencies_us = Vec::with_capacity(CROSSINGS);
        let mut lost = 0;
        while latencies_us.len() < CROSSINGS && Instant::now() < deadline {
            let Some((read_at, event)) = pool.next(Duration::from_secs(5)) else {
                break;
            };
            if event["event"] == "events_lost" {
                lost += event["count"].as_u64().unwrap_or(0);
            }
            if event["event"] == "memory_sample" && event["trigger"] == "threshold" {
                let at = event["monotonicNs"].as_u64().context("monotonicNs")?;
                latencies_us.push(read_at.saturating_sub(at) as f64 / 1000.0);
            }
        }
        drop(pool.stop());
        if latencies_us.len() < 1000 {
            bail!("only {} crossings seen in time", latencies_us.len());
        }
        latencies_us.sort_by(f64::total_cmp);
        let result = json!({
            "crossings": latencies_us.len(),
            "p50_us": percentile(&latencies_us, 0.5),
            "p90_us": percentile(&latencies_us, 0.9),
            "p99_us": percentile(&latencies_us, 0.99),
            "max_us": percentile(&latencies_us, 1.0),
            "events_lost": lost,
        });
        println!("latency: threshold crossing (kernel) → JSON line read from stdout");
        println!("| crossings | p50 | p90 | p99 | max | events lost |");
        println!("| --- | --- | --- | --- | --- | --- |");
        println!(
            "| {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {lost} |",
            latencies_us.len(),
            percentile(&latencies_us, 0.5),
            percentile(&latencies_us, 0.9),
            percentile(&latencies_us, 0.99),
            percentile(&latencies_us, 1.0)
        );
        Ok(result)
    }

    /// Runs the fault benchmark as a plain process; returns (cold, warm) ns per fault.
    fn faultbench(&self) -> Result<(f64, f64)> {
        let out = Command::new(&self.demo)
            .args(["faultbench", "512", "9"])
            .output()
            .context("running the fault benchmark")?;
        parse_faultbench(&String::from_utf8_lossy(&out.stdout))
    }

    fn overhead(&self) -> Result<Value> {
        const REPEATS: usize = 5;
        let demo = self.demo.to_str().context("demo path")?;
        let bpftrace = which_bpftrace();
        let mut conditions: Vec<&str> = vec!["unobserved", "observed, unwatched", "watched"];
        if bpftrace.is_some() {
            conditions.extend([
                "bpftrace rss_stat accounting, watched",
                "bpftrace empty classic tracepoint",
            ]);
        }
        let mut samples: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        // Interleaved, so that drift on this VM hits every condition alike.
        for _ in 0..REPEATS {
            for &condition in &conditions {
                let (cold, warm) = match condition {
                    "unobserved" => self.faultbench()?,
                    "observed, unwatched" => {
                        let pool = Pool::start(
                            &self.xypriss,
                            &["--workers", "1", "--require-ebpf", demo, "steps", "1"],
                        )?;
                        pool.wait_event("observer", Duration::from_secs(10))?;
                        let r = self.faultbench()?;
                        drop(pool.stop());
                        r
                    }
                    "watched" => {
                        let pool = Pool::start(
                            &self.xypriss,
                            &[
                                "--workers",
                                "1",
                                "--require-ebpf",
                                demo,
                                "faultbench",
                                "512",
                                "9",
                            ],
                        )?;
                        let line = pool.wait_log("faultbench", Duration::from_secs(60))?;
                        drop(pool.stop());
                        parse_faultbench(&line)?
                    }
                    other => {
                        let script = match other {
                            "bpftrace rss_stat accounting, watched" => {
                                "tracepoint:kmem:rss_stat /comm == \"xypriss-demo\"/ { @rss[pid, args->member] = args->size; }"
                            }
                            _ => "tracepoint:kmem:rss_stat { }",
                        };
                        let tracer =
                            Tracer::start(bpftrace.as_deref().context("bpftrace")?, script)?;
                        let r = self.faultbench()?;
                        drop(tracer);
                        r
                    }
                };
                let entry = samples.entry(condition).or_default();
                entry.0.push(cold);
                entry.1.push(warm);
            }
        }
        let base = samples
            .get("unobserved")
            .map(|(c, w)| (median(c.clone()), median(w.clone())));
        let (base_cold, base_warm) = base.context("no baseline")?;
        println!("overhead: ns per page fault, 512 MiB first touch, median of {REPEATS} runs");
        println!("| condition | cold ns/fault | cold overhead | warm ns/fault | warm overhead |");
        println!("| --- | --- | --- | --- | --- |");
        let mut rows = Vec::new();
        for &condition in &conditions {
            let (cold, warm) = &samples[condition];
            let (cold, warm) = (median(cold.clone()), median(warm.clone()));
            let pct = |v: f64, b: f64| (v - b) / b * 100.0;
            println!(
                "| {condition} | {cold:.0} | {:+.1}% | {warm:.0} | {:+.1}% |",
                pct(cold, base_cold),
                pct(warm, base_warm)
            );
            rows.push(json!({
                "condition": condition,
                "cold_ns_per_fault": cold,
                "warm_ns_per_fault": warm,
                "cold_overhead_pct": pct(cold, base_cold),
                "warm_overhead_pct": pct(warm, base_warm),
                "runs_cold": samples[condition].0,
                "runs_warm": samples[condition].1,
            }));
        }
        Ok(json!({ "repeats": REPEATS, "conditions": rows }))
    }

    fn throughput(&self) -> Result<Value> {
        let demo = self.demo.to_str().context("demo path")?;
        println!(
            "throughput: one worker allocating at a target rate for up to 3 s (at most 4 GiB)"
        );
        println!("| granularity | target MiB/s | achieved MiB/s | samples | events lost |");
        println!("| --- | --- | --- | --- | --- |");
        let mut rows = Vec::new();
        for granularity in ["1MiB", "64KiB", "4KiB"] {
            for rate in [256u64, 1024, 4096, 100_000] {
                let seconds = (4096.0 / rate as f64).min(3.0);
                let rate_arg = rate.to_string();
                let pool = Pool::start(
                    &self.xypriss,
                    &[
                        "--workers",
                        "1",
                        "--require-ebpf",
                        "--granularity",
                        granularity,
                        demo,
                        "grow",
                        &rate_arg,
                    ],
                )?;
                let mut events = Vec::new();
                let deadline = Instant::now() + Duration::from_secs_f64(seconds + 0.3);
                while Instant::now() < deadline {
                    match pool.next(deadline.saturating_duration_since(Instant::now())) {
                        Some((_, e)) => events.push(e),
                        None => break,
                    }
                }
                events.extend(pool.stop());
                let samples: Vec<&Value> = events
                    .iter()
                    .filter(|e| e["event"] == "memory_sample" && e["trigger"] == "granularity")
                    .collect();
                let lost: u64 = events
                    .iter()
                    .filter(|e| e["event"] == "events_lost")
                    .filter_map(|e| e["count"].as_u64())
                    .sum();
                let achieved = match (samples.first(), samples.last()) {
                    (Some(a), Some(b)) => {
                        let bytes = b["rssBytes"].as_f64().unwrap_or(0.0)
                            - a["rssBytes"].as_f64().unwrap_or(0.0);
                        let ns = b["monotonicNs"].as_f64().unwrap_or(0.0)
                            - a["monotonicNs"].as_f64().unwrap_or(0.0);
                        if ns > 0.0 {
                            bytes / ns * 1e9 / (1 << 20) as f64
                        } else {
                            0.0
                        }
                    }
                    _ => 0.0,
                };
                let target = if rate >= 100_000 {
                    "as fast as it can".to_string()
                } else {
                    rate.to_string()
                };
                println!(
                    "| {granularity} | {target} | {achieved:.0} | {} | {lost} |",
                    samples.len()
                );
                rows.push(json!({
                    "granularity": granularity,
                    "target_mib_per_s": rate,
                    "achieved_mib_per_s": achieved,
                    "samples": samples.len(),
                    "events_lost": lost,
                }));
            }
        }
        Ok(json!({ "runs": rows }))
    }

    fn footprint(&self) -> Result<Value> {
        const SECONDS: u64 = 10;
        let demo = self.demo.to_str().context("demo path")?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
        let ticks = |pid: u32| -> Result<u64> {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
            let after = stat.rsplit_once(')').context("stat")?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
        };
        println!("footprint: xypriss with idle workers (`xypriss-demo steps 1`), over {SECONDS} s");
        println!("| workers | start until all ready | xypriss RSS | xypriss CPU |");
        println!("| --- | --- | --- | --- |");
        let mut rows = Vec::new();
        for workers in [16u32, 64, 256] {
            let count = workers.to_string();
            let started = Instant::now();
            let pool = Pool::start(
                &self.xypriss,
                &[
                    "--workers",
                    &count,
                    "--require-ebpf",
                    "--ready",
                    "notify",
                    demo,
                    "steps",
                    "1",
                ],
            )?;
            let mut ready = 0;
            while ready < workers {
                pool.wait_event("worker_ready", Duration::from_secs(60))?;
                ready += 1;
            }
            let startup = started.elapsed();
            thread::sleep(Duration::from_secs(1));
            let pid = pool.child.id();
            let before = ticks(pid)?;
            let start = Instant::now();
            thread::sleep(Duration::from_secs(SECONDS));
            let used = ticks(pid)? - before;
            let elapsed = start.elapsed().as_secs_f64();
            let cpu_pct = used as f64 / hz / elapsed * 100.0;
            let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
            let rss_kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .context("VmRSS")?;
            drop(pool.stop());
            println!(
                "| {workers} | {:.0} ms | {:.1} MiB | {cpu_pct:.2}% of a core |",
                startup.as_secs_f64() * 1000.0,
                rss_kib as f64 / 1024.0
            );
            rows.push(json!({
                "workers": workers,
                "startup_ms": startup.as_secs_f64() * 1000.0,
                "rss_kib": rss_kib,
                "cpu_pct_of_core": cpu_pct,
                "seconds": elapsed,
            }));
        }
        Ok(json!({ "runs": rows }))
    }
}

impl Bench {
    fn leak(&self, minutes: f64) -> Result<Value> {
        const LEAKS: [(&str, &str, u64); 2] = [
            ("leak1m", "1 MiB/s leak", 15),
            ("leak100k", "100 KiB/s leak", 180),
        ];
        const STEADY: [(&str, &str); 4] = [
            ("warmup", "warm-up to +64 MiB, then flat"),
            ("sawtooth", "GC sawtooth, 24 MiB every 4 s"),
            ("step", "one-off +64 MiB step at 30 s"),
            ("churn", "churn, 1-64 MiB held briefly"),
        ];
        let demo = self.demo.to_str().context("demo path")?.to_owned();
        let run_for = Duration::from_secs_f64(minutes * 60.0);
        let scenarios: Vec<(&str, &str, Option<u64>)> = LEAKS
            .iter()
            .map(|&(n, d, target)| (n, d, Some(target)))
            .chain(STEADY.iter().map(|&(n, d)| (n, d, None)))
            .collect();
        let handles: Vec<_> = scenarios
            .iter()
            .map(|&(name, _, target)| {
                let xypriss = self.xypriss.clone();
                let demo = demo.clone();
                thread::spawn(move || -> Result<(Option<f64>, usize)> {
                    let pool = Pool::start(
                        &xypriss,
                        &[
                            "--workers",
                            "1",
                            "--memory-leak-detection",
                            "true",
                            "--name",
                            name,
                            &demo,
                            "pattern",
                            name,
                        ],
                    )?;
                    let spawned = pool.wait_event("worker_spawned", Duration::from_secs(20))?;
                    let spawned_ms = spawned["timestamp"].as_u64().unwrap_or(0);
                    // Leaks: until found (at most 5 × the target); steady: the whole run.
                    let deadline =
                        Instant::now() + target.map_or(run_for, |t| Duration::from_secs(t * 5));
                    let (mut detected, mut alerts) = (None, 0);
                    while let Some((_, e)) =
                        pool.next(deadline.saturating_duration_since(Instant::now()))
                    {
                        if e["event"] == "memory_alert" && e["type"] == "leak_detected" {
                            alerts += 1;
                            if detected.is_none() {
                                let at = e["timestamp"].as_u64().unwrap_or(0);
                                detected = Some(at.saturating_sub(spawned_ms) as f64 / 1000.0);
                            }
                            if target.is_some() {
                                break;
                            }
                        }
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                    drop(pool.stop());
                    Ok((detected, alerts))
                })
            })
            .collect();
        println!(
            "leak: real processes on a 100 MiB baseline, side by side; steady scenarios for {minutes} min"
        );
        println!("| scenario | expected | result | target |");
        println!("| --- | --- | --- | --- |");
        let mut rows = Vec::new();
        for ((name, description, target), handle) in scenarios.iter().zip(handles) {
            let (detected, alerts) = handle
                .join()
                .map_err(|_| anyhow::anyhow!("{name} panicked"))??;
            let (result, met) = match (target, detected) {
                (Some(t), Some(s)) => (format!("found after {s:.1} s"), s <= *t as f64),
                (Some(_), None) => ("not found".to_string(), false),
                (None, None) => ("no false positive".to_string(), true),
                (None, Some(s)) => (
                    format!("{alerts} false positive(s), first after {s:.1} s"),
                    false,
                ),
            };
            let target_text = match target {
                Some(t) => format!("under {t} s"),
                None => format!("none in {minutes} min"),
            };
            let verdict = if met { "met" } else { "**missed**" };
            println!(
                "| {description} | {} | {result} | {target_text}: {verdict} |",
                if target.is_some() { "leak" } else { "no leak" }
            );
            rows.push(json!({
                "scenario": name,
                "leak": target.is_some(),
                "detected_after_s": detected,
                "leak_alerts": alerts,
                "target_s": target,
                "met": met,
            }));
        }
        Ok(json!({ "minutes": minutes, "scenarios": rows }))
    }
}

/// Reads `cold_ns_per_fault=… warm_ns_per_fault=…` from a faultbench line.
fn parse_faultbench(text: &str) -> Result<(f64, f64)> {
    let field = |name: &str| -> Option<f64> {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    match (field("cold_ns_per_fault"), field("warm_ns_per_fault")) {
        (Some(c), Some(w)) => Ok((c, w)),
        _ => bail!("no faultbench figures in {text:?}"),
    }
}

/// bpftrace, from Debian's package: installed when missing.
fn which_bpftrace() -> Option<PathBuf> {
    let find = || {
        ["/usr/bin/bpftrace", "/usr/sbin/bpftrace"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(found) = find() {
        return Some(found);
    }
    eprintln!("xtask: installing bpftrace (Debian) for the comparison");
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-qq", "bpftrace"])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        eprintln!("xtask: bpftrace could not be installed; its rows are left out");
    }
    find()
}

/// A running bpftrace script, stopped on drop, with tracefs mounted for it
/// (bpftrace resolves tracepoints there) and unmounted after if we mounted it.
struct Tracer {
    child: Child,
    mounted: bool,
}

const TRACEFS: &str = "/sys/kernel/tracing";

impl Tracer {
    fn start(bpftrace: &Path, script: &str) -> Result<Self> {
        let mounted = !Path::new(TRACEFS).join("events").is_dir();
        if mounted {
            nix::mount::mount(
                Some("nodev"),
                TRACEFS,
                Some("tracefs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .context("mounting tracefs for bpftrace")?;
        }
        let child = Command::new(bpftrace)
            .args(["-e", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace")?;
        // From here on, dropping the tracer stops bpftrace and unmounts.
        let mut tracer = Self { child, mounted };
        let stdout = tracer.child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // bpftrace says "Attaching N probes..." once they are attached.
        match lines.next() {
            Some(Ok(line)) if line.contains("Attaching") => {}
            other => bail!("bpftrace did not attach: {other:?}"),
        }
        thread::spawn(move || for _ in lines {});
        thread::sleep(Duration::from_millis(200));
        Ok(tracer)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let _ = self.child.wait();
        if self.mounted {
            let _ = nix::mount::umount2(TRACEFS, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
