//! The kernel's bound on a worker past its hard limit, on cgroup v2: a pool
//! enforcing a limit writes `memory.high` and `memory.max` above it, and the
//! kernel holds a worker that runs away under `memory.max`, slowing it from
//! `memory.high` on (`memory.events` counts it).
//!
//! This machine binds memory to cgroup v1, so these tests are ignored here:
//! `cargo xtask vmtest` runs ignored tests inside its 6.1 and 6.12 VMs, where
//! cgroup v2 has the memory controller. Each first asserts that it is on v2,
//! so that run anywhere else they fail rather than pass.

mod support;

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use support::{DEMO, MIB, Pool, root_or_skip, scaled};
use xypriss::supervise::cgroup::{Hierarchy, PoolCgroup, Version};

const TIMEOUT: Duration = Duration::from_secs(20);

fn assert_v2() {
    let hierarchy = Hierarchy::find().expect("a memory hierarchy");
    assert_eq!(
        hierarchy.version(),
        Version::V2,
        "these tests need cgroup v2 with the memory controller: `cargo xtask vmtest` runs them in VMs that have it"
    );
}

fn read(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()))
        .trim()
        .to_owned()
}

/// A counter of `memory.events`.
fn event(dir: &Path, name: &str) -> u64 {
    read(dir, "memory.events")
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "needs cgroup v2 with the memory controller: run by cargo xtask vmtest"]
fn a_hard_limit_writes_memory_high_and_memory_max_above_it() {
    if !root_or_skip("a_hard_limit_writes_memory_high_and_memory_max_above_it") {
        return;
    }
    assert_v2();
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--max-memory-per-worker",
        "64MiB",
        "--enforce-hard-limits",
        "true",
        "--name",
        "bound-v2",
        DEMO,
        "grow",
        "0",
    ]);
    let cgroup = pool.wait_event("cgroup", TIMEOUT, |_| true);
    assert_eq!(cgroup["enabled"], true, "{cgroup}");
    pool.wait_event("worker_spawned", TIMEOUT, |_| true);
    let dir = Path::new(cgroup["path"].as_str().expect("a path")).join("w0.g1");
    // memory.high: 64 + max(5 %, 8 MiB); memory.max: 64 + max(10 %, 16 MiB).
    assert_eq!(read(&dir, "memory.high"), (72 * MIB).to_string());
    assert_eq!(read(&dir, "memory.max"), (80 * MIB).to_string());
    assert!(pool.stop().success());
}

#[test]
#[ignore = "needs cgroup v2 with the memory controller: run by cargo xtask vmtest"]
fn the_kernel_holds_a_runaway_worker_under_memory_max() {
    if !root_or_skip("the_kernel_holds_a_runaway_worker_under_memory_max") {
        return;
    }
    assert_v2();
    let pool = PoolCgroup::create("test-bound").expect("a pool cgroup");
    let worker = pool.worker(0, 1).expect("a worker cgroup");
    let bound = worker.bound(32 * MIB, 48 * MIB).expect("bound");
    assert_eq!(bound.high, Some(32 * MIB));
    let mut child = Command::new(DEMO)
        .args(["grow", "200"])
        .stdout(Stdio::null())
        .spawn()
        .expect("the demo runs");
    worker.add(child.id()).expect("joined");
    let dir = worker.path().to_owned();
    // Until the kernel slows it (or kills it), then a while of crawling.
    let mut peak = 0;
    let mut watch = |until: Instant, stop_at_high: bool| loop {
        peak = peak.max(worker.memory_current().expect("memory.current"));
        let exited = child.try_wait().expect("waitable");
        if exited.is_some() || Instant::now() >= until || (stop_at_high && event(&dir, "high ") > 0)
        {
            return exited;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let mut exited = watch(Instant::now() + scaled(Duration::from_secs(20)), true);
    if exited.is_none() {
        exited = watch(Instant::now() + scaled(Duration::from_secs(2)), false);
    }
    let _ = child.kill();
    let _ = child.wait();
    let seen = format!(
        "peak memory.current {peak}, the demo {}, memory.events:\n{}",
        exited.map_or_else(|| "still crawling".to_owned(), |s| s.to_string()),
        read(&dir, "memory.events")
    );
    // It was slowed from memory.high on.
    assert!(event(&dir, "high ") > 0, "{seen}");
    // The exact bound: the charge never exceeds memory.max.
    assert!(peak <= 48 * MIB, "{seen}");
    if let Ok(text) = fs::read_to_string(dir.join("memory.peak")) {
        let kernel_peak: u64 = text.trim().parse().expect("memory.peak");
        assert!(kernel_peak <= 48 * MIB, "memory.peak {kernel_peak}; {seen}");
    }
    // Either it crawls under memory.max still, or the kernel killed it there.
    if exited.is_some() {
        assert!(event(&dir, "oom_kill ") > 0, "{seen}");
    }
    worker.remove().expect("removed");
    pool.remove().expect("removed");
}
