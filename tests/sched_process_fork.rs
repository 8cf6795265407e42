//! `sched/sched_process_fork` and `sched_process_exit`: a worker's children
//! count toward its memory, and their birth and exit are reported.

mod support;

use std::time::Duration;

use support::{DEMO, MIB, Pool, proc_status, root_or_skip, u64_of};

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn a_workers_child_counts_toward_the_worker() {
    if !root_or_skip("a_workers_child_counts_toward_the_worker") {
        return;
    }
    let mut pool = Pool::start(&["--workers", "1", "--require-ebpf", DEMO, "fork", "100"]);
    let spawned = pool.wait_event("worker_spawned", TIMEOUT, |_| true);
    let parent = u64_of(&spawned, "pid") as u32;
    let line = pool.wait_log("at 100 MiB", TIMEOUT);
    let child: u32 = line
        .split_whitespace()
        .skip_while(|w| *w != "child")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no child pid in {line}"));

    let born = pool.wait_event("child_spawned", TIMEOUT, |e| e["pid"] == child);
    assert_eq!(born["workerId"], 0);
    assert_eq!(born["parentPid"], parent);

    pool.wait_event("memory_sample", TIMEOUT, |e| {
        u64_of(e, "rssBytes") >= 100 * MIB
    });
    pool.collect_for(Duration::from_millis(150));
    let sample = pool.latest_sample(0).expect("a sample").clone();
    let both = proc_status(parent, "VmRSS") + proc_status(child, "VmRSS");
    let reported = u64_of(&sample, "rssBytes");
    // The child's copy of the parent's pages before its first event is not
    // seen, hence a wider tolerance than for a single process.
    assert!(
        reported.abs_diff(both) <= 4 * MIB,
        "worker 0 reported {reported} bytes, parent + child have {both}: {sample}"
    );
    assert_eq!(sample["pid"], parent, "samples name the worker's own pid");

    assert!(pool.stop().success());
    let exited = pool
        .events
        .iter()
        .find(|e| e["event"] == "child_exited" && e["pid"] == child)
        .unwrap_or_else(|| panic!("no child_exited for {child}: {:#?}", pool.events));
    assert_eq!(exited["workerId"], 0);
    // Threads are cloned tasks too, but never reported as children.
    let children = pool
        .events
        .iter()
        .filter(|e| e["event"] == "child_spawned")
        .count();
    assert_eq!(children, 1, "{:#?}", pool.events);
}
