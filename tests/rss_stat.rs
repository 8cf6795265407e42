//! `kmem/rss_stat`: the memory xypriss reports for a worker is the memory the
//! kernel says it has, while it grows, holds and shrinks; and processes that
//! are not watched cost no events.

mod support;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use support::{DEMO, MIB, Pool, proc_status, root_or_skip, scaled, signal, u64_of};

const GRANULARITY: u64 = MIB;
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long the reported memory may take to match /proc once a step is done
/// (scaled, as every wait in the tests: see tests/support).
const SETTLE: Duration = Duration::from_secs(5);

/// The latest sample of worker 0 against /proc, within 1 MiB + the
/// granularity, once the samples already written have been read: the check
/// is retried for up to [`SETTLE`], for machines (such as a kernel emulated
/// in a VM) where reading them can take longer than the wake-up interval.
fn assert_matches_proc(pool: &mut Pool, pid: u32, step: u64) {
    let tolerance = MIB + GRANULARITY;
    let deadline = Instant::now() + scaled(SETTLE);
    loop {
        // Let samples written without a wake-up be flushed (10 ms wake-up interval).
        pool.collect_for(Duration::from_millis(150));
        let sample = pool.latest_sample(0).expect("a memory_sample").clone();
        assert_eq!(sample["source"], "ebpf", "{sample}");
        let off: Vec<String> = [("rssBytes", "VmRSS"), ("anonBytes", "RssAnon")]
            .into_iter()
            .filter_map(|(field, proc_field)| {
                let reported = u64_of(&sample, field);
                let actual = proc_status(pid, proc_field);
                (reported.abs_diff(actual) > tolerance)
                    .then(|| format!("{field} {reported} vs {proc_field} {actual}"))
            })
            .collect();
        if off.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "at {step} MiB: {} (tolerance {tolerance}): {sample}",
            off.join(", ")
        );
    }
}

#[test]
fn reported_memory_matches_proc_while_growing_holding_and_shrinking() {
    if !root_or_skip("reported_memory_matches_proc_while_growing_holding_and_shrinking") {
        return;
    }
    let steps = [50u64, 100, 200, 100, 50];
    let args: Vec<String> = [
        "--workers",
        "1",
        "--require-ebpf",
        "--granularity",
        "1MiB",
        DEMO,
        "steps",
    ]
    .into_iter()
    .map(String::from)
    .chain(steps.iter().map(u64::to_string))
    .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut pool = Pool::start(&args);
    let spawned = pool.wait_event("worker_spawned", TIMEOUT, |_| true);
    let pid = u64_of(&spawned, "pid") as u32;
    let mut samples_before = 0;
    for (i, step) in steps.into_iter().enumerate() {
        if i > 0 {
            signal(pid, Signal::SIGUSR1);
        }
        pool.wait_log(&format!("at {step} MiB"), TIMEOUT);
        assert_matches_proc(&mut pool, pid, step);
        let samples = pool
            .events
            .iter()
            .filter(|e| e["event"] == "memory_sample")
            .count();
        if step == 200 {
            // Growing from 100 to 200 MiB is seen as it happens, not only at the end.
            assert!(
                samples - samples_before >= 50,
                "only {} samples while growing by 100 MiB",
                samples - samples_before
            );
        }
        samples_before = samples;
    }
    assert!(pool.stop().success());
    let stopped = pool.events.last().expect("events");
    assert_eq!(stopped["event"], "cluster_stopped");
}

#[test]
fn an_unwatched_process_allocating_1gib_produces_no_events() {
    if !root_or_skip("an_unwatched_process_allocating_1gib_produces_no_events") {
        return;
    }
    let mut pool = Pool::start(&["--workers", "1", "--require-ebpf", DEMO, "steps", "1"]);
    pool.wait_log("at 1 MiB", TIMEOUT);
    pool.collect_for(Duration::from_millis(300));
    let before = pool.events.len();

    let mut outsider = Command::new(DEMO)
        .args(["steps", "1024"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("demo starts");
    let outsider_pid = outsider.id();
    let mut line = String::new();
    BufReader::new(outsider.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("demo reports");
    assert_eq!(line.trim(), "at 1024 MiB");
    assert!(proc_status(outsider_pid, "VmRSS") >= 1000 * MIB);
    pool.collect_for(Duration::from_millis(300));
    signal(outsider_pid, Signal::SIGTERM);
    outsider.wait().expect("demo exits");

    let during = &pool.events[before..];
    assert!(
        during.iter().all(|e| e["pid"] != outsider_pid),
        "events about the unwatched process: {during:#?}"
    );
    assert!(
        during
            .iter()
            .filter(|e| e["event"] == "memory_sample")
            .all(|e| u64_of(e, "rssBytes") < 64 * MIB),
        "the outsider's memory was counted: {during:#?}"
    );
    assert!(pool.stop().success());
}

/// minflt + majflt of `pid`, from /proc/<pid>/stat.
fn proc_faults(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process alive");
    // Fields after the command's closing parenthesis, from field 3 (state) on.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    let field = |n: usize| fields[n - 3].parse::<u64>().expect("a count");
    field(10) + field(12)
}

#[test]
fn page_faults_are_counted_from_proc_by_default_and_by_the_kernel_when_asked() {
    if !root_or_skip("page_faults_are_counted_from_proc_by_default_and_by_the_kernel_when_asked") {
        return;
    }
    // 64 MiB touched a page at a time: at least one fault per 4 KiB page.
    let touched = 64 * MIB / 4096;
    for kernel in [false, true] {
        let mut args = vec!["--workers", "1", "--require-ebpf"];
        if kernel {
            args.push("--kernel-fault-counts");
        }
        args.extend([DEMO, "steps", "64"]);
        let mut pool = Pool::start(&args);
        let spawned = pool.wait_event("worker_spawned", TIMEOUT, |_| true);
        let pid = u64_of(&spawned, "pid") as u32;
        pool.wait_log("at 64 MiB", TIMEOUT);
        // Past a --sample-interval (1 s), when /proc's counts are read again.
        let sample = pool.wait_event("memory_sample", TIMEOUT, |e| {
            e["trigger"] == "interval" && u64_of(e, "pageFaults") >= touched
        });
        let counted = u64_of(&sample, "pageFaults");
        // The kernel's count of user-mode faults since the worker registered,
        // or /proc's at the last refresh: never more than /proc says now.
        let now = proc_faults(pid);
        assert!(
            counted <= now,
            "kernel {kernel}: {counted} faults reported, /proc says {now}: {sample}"
        );
        assert!(pool.stop().success());
    }
}
