//! The system scope's `memory_alert`: the host's memory in use against what
//! it has less `memoryReservation`. A test binary of its own, because its
//! input is the whole host's memory: in a binary with other tests, their
//! workers (hundreds of MiB each, in parallel threads) move that input while
//! it runs, and a threshold crossing it did not cause would count against
//! it. Cargo runs test binaries one after another, so nothing else of the
//! suite runs beside it.

mod support;

use std::time::Duration;

use support::{DEMO, Pool, root_or_skip, u64_of};

const TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn the_system_scope_alerts_on_the_hosts_memory_less_the_reservation() {
    if !root_or_skip("the_system_scope_alerts_on_the_hosts_memory_less_the_reservation") {
        return;
    }
    // Reserve all but what puts the host's use now at 87.5% of what is left:
    // midway between the 80% warning and the 95% critical threshold, so that
    // the host's own drift (page cache estimates, other processes) can move
    // it by 7% of what is left either way without another crossing.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib = |key: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let (total, available) = (kib("MemTotal:") * 1024, kib("MemAvailable:") * 1024);
    let used = total - available;
    let reservation = total - used * 8 / 7;
    let reservation_arg = reservation.to_string();
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--memory-check-interval",
        "100ms",
        "--memory-reservation",
        &reservation_arg,
        DEMO,
        "steps",
        "1",
    ]);
    let alert = pool.wait_event("memory_alert", TIMEOUT, |e| e["scope"] == "system");
    assert!(
        alert["type"] == "warning" || alert["type"] == "critical",
        "{alert}"
    );
    assert!(alert.get("workerId").is_none());
    let threshold = u64_of(&alert, "threshold");
    assert!(u64_of(&alert, "memoryUsage") >= threshold);
    pool.collect_for(Duration::from_millis(500));
    let system_alerts = pool
        .events
        .iter()
        .filter(|e| e["event"] == "memory_alert" && e["scope"] == "system")
        .count();
    assert!(
        system_alerts <= 2,
        "an alert storm: {system_alerts} system alerts in 0.5 s"
    );
    assert!(pool.stop().success());
}
