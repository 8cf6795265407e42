//! `scale` on load (`autoScaling`, `lazyWorkerInit`): busy workers grow the
//! pool while memory allows, up to its maximum; an idle, small pool shrinks
//! to its minimum; each step waits out its cooldown.

mod support;

use std::time::Duration;

use support::{DEMO, Pool, of, u64_of};

/// The load window (10 s) plus room for a busy machine.
const TIMEOUT: Duration = Duration::from_secs(40);

fn sizes(pool: &Pool) -> Vec<(u64, u64)> {
    of(&pool.events, "scale")
        .iter()
        .map(|s| (u64_of(s, "from"), u64_of(s, "to")))
        .collect()
}

#[test]
fn busy_workers_scale_the_pool_up_to_its_maximum() {
    // One spinning worker uses a whole core when it can, and on a machine
    // busy with other tests (load 13 on 2 cores was seen) still its share,
    // about a seventh of one: over a 5 % threshold either way.
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--min-workers",
        "1",
        "--max-workers",
        "2",
        "--auto-scaling",
        "true",
        "--aggressive-memory-scaling",
        "true",
        "--scale-up-cpu-threshold",
        "5",
        "--scale-down-cpu-threshold",
        "1",
        DEMO,
        "spin",
    ]);
    let up = pool.wait_event("scale", TIMEOUT, |_| true);
    assert_eq!((u64_of(&up, "from"), u64_of(&up, "to")), (1, 2), "{up}");
    assert!(up["reason"].as_str().unwrap().contains("cpu"), "{up}");
    // Past the 10 s cooldown: still busy, but at the maximum.
    pool.collect_for(Duration::from_secs(13));
    assert!(pool.stop().success());
    assert_eq!(sizes(&pool), [(1, 2)], "{:#?}", of(&pool.events, "scale"));
    assert_eq!(of(&pool.events, "worker_spawned").len(), 2);
}

#[test]
fn an_idle_small_pool_shrinks_to_its_minimum() {
    let mut pool = Pool::start(&[
        "--workers",
        "3",
        "--min-workers",
        "2",
        "--auto-scaling",
        "true",
        "--aggressive-memory-scaling",
        "true",
        DEMO,
        "steps",
        "8",
    ]);
    let down = pool.wait_event("scale", TIMEOUT, |_| true);
    assert_eq!(
        (u64_of(&down, "from"), u64_of(&down, "to")),
        (3, 2),
        "{down}"
    );
    assert!(down["reason"].as_str().unwrap().contains("cpu"), "{down}");
    let stopping = pool.wait_event("worker_stopping", TIMEOUT, |_| true);
    assert_eq!(stopping["reason"], "scale_down");
    pool.collect_for(Duration::from_secs(13));
    assert!(pool.stop().success());
    assert_eq!(sizes(&pool), [(3, 2)], "never under --min-workers");
}

#[test]
fn lazy_workers_start_at_the_minimum_and_grow_on_demand() {
    let mut pool = Pool::start(&[
        "--workers",
        "3",
        "--min-workers",
        "1",
        "--lazy-worker-init",
        "true",
        "--scale-up-cpu-threshold",
        "5",
        "--scale-down-cpu-threshold",
        "1",
        DEMO,
        "spin",
    ]);
    let up = pool.wait_event("scale", TIMEOUT, |_| true);
    let spawned_before: Vec<_> = pool
        .events
        .iter()
        .take_while(|e| e["event"] != "scale")
        .filter(|e| e["event"] == "worker_spawned")
        .collect();
    assert_eq!(spawned_before.len(), 1, "{:#?}", pool.events);
    assert_eq!((u64_of(&up, "from"), u64_of(&up, "to")), (1, 2), "{up}");
    pool.wait_event("worker_spawned", TIMEOUT, |e| e["workerId"] == 1);
    assert!(pool.stop().success());
}
