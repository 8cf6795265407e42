//! Every cluster configuration in XyPriss's memory-management reference
//! (`tests/reference/*.json`: its TypeScript blocks as JSON, keys quoted and
//! comments dropped) run as `xypriss run --config FILE`, with its runtime
//! effect checked as a user would: the pool's size, the thresholds the
//! workers get, the modes on or off, from the NDJSON events and `xypriss
//! status --json`.
//!
//! The high-memory example is for hosts with more than 16 GB: it runs from
//! its file as written, with its three sizes divided by 32 by flags (which
//! override the file, as docs/configuration.md says), so that a worker can
//! cross its thresholds on any CI host. Its percentages, modes and switches
//! are the file's own. The "Start Conservative" fragment has its three
//! options in the places the schema gives them.

mod support;

use std::{
    fs,
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::{DEMO, MIB, Pool, XYPRISS, of, root_or_skip, signal, u64_of};

/// Generous: the machine is shared, and nothing here is timed.
const WAIT: Duration = Duration::from_secs(60);

fn example(name: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "tests", "reference", name]
        .iter()
        .collect();
    assert!(path.is_file(), "{}", path.display());
    path.display().to_string()
}

/// A pool name of this test's own.
fn name(test: &str) -> String {
    format!("ref-{test}-{}", std::process::id())
}

/// `xypriss run --name NAME --config FILE FLAGS… xypriss-demo ARGS…`.
fn run(name: &str, file: &str, flags: &[&str], demo: &[&str]) -> Pool {
    let config = example(file);
    let mut args = vec!["--name", name, "--config", &config];
    args.extend_from_slice(flags);
    args.push(DEMO);
    args.extend_from_slice(demo);
    Pool::start(&args)
}

fn xypriss(args: &[&str]) -> Output {
    Command::new(XYPRISS).args(args).output().unwrap()
}

/// `xypriss ARGS…`, which must succeed; its stdout.
#[track_caller]
fn ok(args: &[&str]) -> String {
    let out = xypriss(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `xypriss status --json --name NAME`.
fn status(name: &str) -> Value {
    let text = ok(&["status", "--json", "--name", name]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Polls the status until `pred` holds.
#[track_caller]
fn status_until(name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = status(name);
        if pred(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "no status with {what}: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Warning, critical and limit at `warning` % and `critical` % of `limit`,
/// as xypriss computes them (to a byte).
#[track_caller]
fn assert_thresholds(got: &Value, limit: u64, warning: u64, critical: u64) {
    let got: Vec<u64> = got
        .as_array()
        .unwrap_or_else(|| panic!("thresholds: {got}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let want = [limit * warning / 100, limit * critical / 100, limit];
    assert!(
        got.len() == 3 && got.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= 1),
        "thresholds {got:?}, want {want:?} ({warning} % and {critical} % of {limit})"
    );
}

/// The pids of workers 0 to `n` - 1, once each is at its first size.
fn first_workers(pool: &mut Pool, n: usize) -> Vec<u32> {
    let pids = pool.worker_pids(n as u64, WAIT);
    pool.take_logs("at 8 MiB", n, WAIT);
    pids
}

fn environ(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', "\n"))
        .unwrap_or_default()
}

/// `getClusterMetrics().memoryUsage` as a percentage, beside the bytes.
#[track_caller]
fn assert_usage_percent(status: &Value) {
    let usage = &status["memory"]["currentUsage"];
    let total = u64_of(usage, "totalRssBytes") as f64;
    let budget = u64_of(usage, "maxTotalMemoryBytes") as f64;
    let percent = usage["percent"].as_f64().expect("memoryUsage.percent");
    assert!((percent - total * 100.0 / budget).abs() <= 0.05, "{usage}");
}

#[test]
fn basic_memory_management() {
    if !root_or_skip("basic_memory_management") {
        return;
    }
    // workers "auto"; 512MB each at 80 % and 95 %; 4GB in all; leaks watched;
    // normal mode. One worker goes to 420 MiB, past 80 % of 512 MiB.
    let name = name("basic");
    let mut pool = run(&name, "basic.json", &[], &["steps", "8", "420"]);
    let started = pool.wait_event("cluster_started", WAIT, |_| true);
    let n = u64_of(&started, "workers");
    assert!(n >= 1, "{started}");
    let pids = first_workers(&mut pool, n as usize);
    let s = status(&name);
    assert_eq!(u64_of(&s, "workersDesired"), n, "{s:#}");
    assert_eq!(s["lowMemoryMode"], false, "{s:#}");
    let usage = &s["memory"]["currentUsage"];
    assert_eq!(u64_of(usage, "maxMemoryPerWorkerBytes"), 512 * MIB);
    assert_eq!(u64_of(usage, "maxTotalMemoryBytes"), 4096 * MIB);
    assert_thresholds(&s["memory"]["workerThresholds"], 512 * MIB, 80, 95);
    assert_usage_percent(&s);
    assert_eq!(s["memory"]["canEnableLowMemoryMode"], true, "{s:#}");
    for w in s["workers"].as_array().unwrap() {
        assert_eq!(w["leak"]["enabled"], true, "memoryLeakDetection: {w}");
    }
    signal(pids[0], Signal::SIGUSR1);
    let warning = pool.wait_event("memory_alert", WAIT, |e| e["type"] == "warning");
    assert_eq!(warning["scope"], "worker", "{warning}");
    assert!(
        u64_of(&warning, "threshold").abs_diff(512 * MIB * 80 / 100) <= 1,
        "{warning}"
    );
    assert!(
        warning["memoryUsagePercent"].as_f64().unwrap() >= 80.0,
        "{warning}"
    );
    assert!(of(&pool.events, "low_memory_mode").is_empty());
    assert!(pool.stop().success());
}

#[test]
fn advanced_memory_configuration() {
    if !root_or_skip("advanced_memory_configuration") {
        return;
    }
    // lazyWorkerInit with autoScaling 1…6: it starts at minWorkers. It
    // starts in low-memory mode (from the configuration: no cap, its own
    // 70 %/85 % of 256MB). A worker at 210 MiB (82 % of its limit, over
    // scaleUpThreshold.memory 80 %) adds capacity, two at a time
    // (aggressiveMemoryScaling); an operator reaches maxWorkers 6 and ends
    // the mode (disableLowMemoryMode()).
    let name = name("advanced");
    let mut pool = run(&name, "advanced.json", &[], &["steps", "8", "210"]);
    let on = pool.wait_event("low_memory_mode", WAIT, |_| true);
    assert_eq!(on["enabled"], true, "{on}");
    assert_eq!(on["origin"], "configuration", "{on}");
    assert!(
        on.get("poolCap").is_none(),
        "maxWorkers stays reachable: {on}"
    );
    assert_thresholds(&on["workerThresholds"], 256 * MIB, 70, 85);
    let pids = first_workers(&mut pool, 1);
    let s = status(&name);
    assert_eq!(u64_of(&s, "workersDesired"), 1, "lazyWorkerInit: {s:#}");
    assert_eq!(u64_of(&s, "minWorkers"), 1);
    assert_eq!(u64_of(&s, "maxWorkers"), 6);
    assert_eq!(s["lowMemoryMode"], true);
    assert_eq!(
        s["memory"]["canEnableLowMemoryMode"], false,
        "it is on already: {s:#}"
    );
    assert_thresholds(&s["memory"]["workerThresholds"], 256 * MIB, 70, 85);
    assert!(
        environ(pids[0])
            .lines()
            .any(|l| l == "XYPRISS_LOW_MEMORY_MODE=1"),
        "the worker is told"
    );

    signal(pids[0], Signal::SIGUSR1);
    let warning = pool.wait_event("memory_alert", WAIT, |e| e["type"] == "warning");
    assert!(
        u64_of(&warning, "threshold").abs_diff(256 * MIB * 70 / 100) <= 1,
        "{warning}"
    );
    let up = pool.wait_event("scale", WAIT, |e| {
        e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("maxMemoryPerWorker"))
    });
    assert_eq!((u64_of(&up, "from"), u64_of(&up, "to")), (1, 3), "{up}");

    let said = ok(&["scale", "6", "--name", &name]);
    assert!(said.contains("6 workers"), "{said}");
    pool.wait_event("scale", WAIT, |e| e["to"] == 6 && e["reason"] == "api");
    let refused = xypriss(&["scale", "7", "--name", &name]);
    assert!(!refused.status.success(), "7 is over maxWorkers");

    assert!(ok(&["low-memory", "off", "--name", &name]).contains("low-memory mode off"));
    let off = pool.wait_event("low_memory_mode", WAIT, |e| e["enabled"] == false);
    assert_eq!(off["origin"], "configuration", "{off}");
    status_until(&name, "low-memory mode off", |s| {
        s["lowMemoryMode"] == false && s["memory"]["canEnableLowMemoryMode"] == true
    });
    assert!(pool.stop().success());
}

#[test]
fn low_memory_environments() {
    if !root_or_skip("low_memory_environments") {
        return;
    }
    // workers 2 at 60 %/75 % of 256MB, in low-memory mode from the
    // configuration: 2 workers, at 60 % and 75 %. One goes to 160 MiB, past
    // 60 % (153.6 MiB).
    let name = name("low");
    let mut pool = run(&name, "low-memory.json", &[], &["steps", "8", "160"]);
    let on = pool.wait_event("low_memory_mode", WAIT, |_| true);
    assert_eq!(on["enabled"], true, "{on}");
    assert_eq!(on["origin"], "configuration", "{on}");
    assert!(on.get("poolCap").is_none(), "{on}");
    assert_thresholds(&on["workerThresholds"], 256 * MIB, 60, 75);
    let pids = first_workers(&mut pool, 2);
    assert_eq!(pids.len(), 2, "{:#?}", pool.events);
    let s = status(&name);
    assert_eq!(
        (u64_of(&s, "workersDesired"), &s["lowMemoryMode"]),
        (2, &Value::Bool(true)),
        "{s:#}\n{:#?}",
        pool.events
    );
    assert_eq!(
        u64_of(&s["memory"]["currentUsage"], "maxTotalMemoryBytes"),
        1536 * MIB
    );
    assert_thresholds(&s["memory"]["workerThresholds"], 256 * MIB, 60, 75);
    assert_usage_percent(&s);
    signal(pids[1], Signal::SIGUSR1);
    let warning = pool.wait_event("memory_alert", WAIT, |e| e["type"] == "warning");
    assert!(
        u64_of(&warning, "threshold").abs_diff(256 * MIB * 60 / 100) <= 1,
        "{warning}"
    );
    assert!(
        warning["memoryUsagePercent"].as_f64().unwrap() >= 60.0,
        "{warning}"
    );
    assert!(pool.stop().success());
    assert_eq!(of(&pool.events, "worker_spawned").len(), 2);
    assert!(of(&pool.events, "scale").is_empty(), "{:#?}", pool.events);
}

#[test]
fn high_memory_environments_scaled_down() {
    if !root_or_skip("high_memory_environments_scaled_down") {
        return;
    }
    // The file as written, its sizes divided by 32 by flags: 2GB → 64MB per
    // worker, 12GB → 384MB in all, 2GB → 64MB reserved. 85 %/95 %, GC hints,
    // normal mode and the pooling hints are the file's. One worker goes to
    // 62 MiB: past 95 % of 64 MiB, so it is sent a gc_hint.
    let name = name("high");
    let mut pool = run(
        &name,
        "high-memory.json",
        &[
            "--max-memory-per-worker",
            "64MB",
            "--max-total-memory",
            "384MB",
            "--memory-reservation",
            "64MB",
        ],
        &["steps", "8", "62"],
    );
    let started = pool.wait_event("cluster_started", WAIT, |_| true);
    let n = u64_of(&started, "workers");
    assert!(n >= 1, "{started}");
    let pids = first_workers(&mut pool, n as usize);
    let s = status(&name);
    assert_eq!(u64_of(&s, "workersDesired"), n, "{s:#}");
    assert_eq!(s["lowMemoryMode"], false);
    assert_thresholds(&s["memory"]["workerThresholds"], 64 * MIB, 85, 95);
    assert_eq!(
        u64_of(&s["memory"]["currentUsage"], "maxTotalMemoryBytes"),
        384 * MIB
    );
    for hint in ["XYPRISS_WORKER_POOLING=1", "XYPRISS_MEMORY_POOLING=1"] {
        assert!(environ(pids[0]).lines().any(|l| l == hint), "{hint}");
    }
    signal(pids[0], Signal::SIGUSR1);
    let critical = pool.wait_event("memory_alert", WAIT, |e| e["type"] == "critical");
    assert_eq!(critical["action"], "gc_hint", "{critical}");
    assert!(
        critical["memoryUsagePercent"].as_f64().unwrap() >= 95.0,
        "{critical}"
    );
    pool.wait_log("gc_hint", WAIT);
    assert!(of(&pool.events, "low_memory_mode").is_empty());
    assert!(pool.stop().success());
}

#[test]
fn start_conservative() {
    if !root_or_skip("start_conservative") {
        return;
    }
    let name = name("conservative");
    let mut pool = run(&name, "conservative.json", &[], &["steps", "8"]);
    first_workers(&mut pool, 1);
    let s = status(&name);
    assert_thresholds(&s["memory"]["workerThresholds"], 256 * MIB, 70, 85);
    assert!(pool.stop().success());
}

#[test]
fn memory_management_off_watches_no_leak_and_sets_no_threshold() {
    if !root_or_skip("memory_management_off_watches_no_leak_and_sets_no_threshold") {
        return;
    }
    // The basic example with `memoryManagement.enabled: false` (by its
    // flag) and hard limits: no leak detector, no threshold, so nothing is
    // raised or restarted for memory.
    let name = name("off");
    let mut pool = run(
        &name,
        "basic.json",
        &[
            "--memory-management",
            "false",
            "--enforce-hard-limits",
            "true",
            "--workers",
            "1",
        ],
        &["steps", "8"],
    );
    first_workers(&mut pool, 1);
    let s = status(&name);
    assert_eq!(
        s["memory"]["workerThresholds"],
        serde_json::json!([0, 0, 0])
    );
    let workers = s["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{s:#}");
    assert_eq!(workers[0]["leak"]["enabled"], false, "{s:#}");
    assert!(pool.stop().success());
    assert!(of(&pool.events, "memory_alert").is_empty());
}
