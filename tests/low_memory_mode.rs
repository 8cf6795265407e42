//! `low_memory_mode`: entered from the configuration, by an operator, or
//! when the host's memory turns critical, left when the pressure eases.
//! From the configuration it keeps the configured pool and thresholds; from
//! an operator or pressure the pool is capped and worker thresholds are
//! tighter. Workers are told (in their environment at spawn, and on their
//! control channel).

mod support;

use std::{fs, sync::Mutex, time::Duration};

use nix::sys::signal::Signal;
use support::{DEMO, MIB, Pool, of, root_or_skip, signal, u64_of};

const TIMEOUT: Duration = Duration::from_secs(20);

fn environ(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', "\n"))
        .unwrap_or_default()
}

#[test]
fn configured_low_memory_mode_keeps_the_configured_pool_and_thresholds() {
    // `lowMemoryMode: true` beside `workers: 4` and a 64 MiB limit: the
    // configuration's figures are the user's low-memory figures, so all 4
    // start, and a 64 MiB limit warns at 80 % (51.2 MiB): 48 MiB does not,
    // 52 MiB does.
    let mut pool = Pool::start(&[
        "--workers",
        "4",
        "--low-memory-mode",
        "true",
        "--max-memory-per-worker",
        "64MiB",
        DEMO,
        "steps",
        "8",
        "48",
        "52",
    ]);
    let on = pool.wait_event("low_memory_mode", TIMEOUT, |_| true);
    assert_eq!(on["enabled"], true, "{on}");
    assert_eq!(on["origin"], "configuration", "{on}");
    assert!(on.get("poolCap").is_none(), "no cap: {on}");
    let limit = 64 * MIB;
    assert_eq!(
        on["workerThresholds"],
        serde_json::json!([limit * 80 / 100, limit * 95 / 100, limit]),
        "{on}"
    );
    assert!(
        on["reason"].as_str().unwrap().contains("configuration"),
        "{on}"
    );
    let pids = pool.worker_pids(4, TIMEOUT);
    pool.take_logs("at 8 MiB", 4, TIMEOUT);
    assert_eq!(pids.len(), 4, "the configured size: {:#?}", pool.events);
    for &pid in &pids {
        assert!(
            environ(pid)
                .lines()
                .any(|l| l == "XYPRISS_LOW_MEMORY_MODE=1"),
            "worker {pid} is told in its environment"
        );
    }
    signal(pids[0], Signal::SIGUSR1);
    pool.wait_log("at 48 MiB", TIMEOUT);
    signal(pids[0], Signal::SIGUSR1);
    pool.wait_log("at 52 MiB", TIMEOUT);
    let warning = pool.wait_event("memory_alert", TIMEOUT, |e| e["type"] == "warning");
    assert_eq!(u64_of(&warning, "threshold"), limit * 80 / 100, "{warning}");
    assert!(
        u64_of(&warning, "memoryUsage") >= limit * 80 / 100,
        "48 MiB did not warn: {warning}"
    );
    assert!(
        warning["memoryUsagePercent"].as_f64().unwrap() >= 80.0,
        "{warning}"
    );
    assert!(pool.stop().success());
    assert_eq!(of(&pool.events, "worker_spawned").len(), 4);
    assert!(of(&pool.events, "scale").is_empty(), "{:#?}", pool.events);
}

#[test]
fn an_operators_low_memory_mode_caps_the_pool_and_tightens_thresholds() {
    if !root_or_skip("an_operators_low_memory_mode_caps_the_pool_and_tightens_thresholds") {
        return;
    }
    // 4 workers, capped at 2 when an operator turns the mode on. A 64 MiB
    // limit warns at 80 % (51.2 MiB) normally, at 70 % (44.8 MiB) here:
    // 48 MiB warns.
    let name = format!("lowmem-op-{}", std::process::id());
    let mut pool = Pool::start(&[
        "--name",
        &name,
        "--workers",
        "4",
        "--max-memory-per-worker",
        "64MiB",
        DEMO,
        "steps",
        "8",
        "48",
    ]);
    let pids = pool.worker_pids(4, TIMEOUT);
    pool.take_logs("at 8 MiB", 4, TIMEOUT);
    let asked = std::process::Command::new(support::XYPRISS)
        .args(["low-memory", "on", "--name", &name])
        .output()
        .unwrap();
    assert!(asked.status.success(), "{asked:?}");
    let on = pool.wait_event("low_memory_mode", TIMEOUT, |_| true);
    assert_eq!(on["enabled"], true, "{on}");
    assert_eq!(on["origin"], "operator", "{on}");
    assert_eq!(on["poolCap"], 2, "{on}");
    let scale = pool.wait_event("scale", TIMEOUT, |_| true);
    assert_eq!((u64_of(&scale, "from"), u64_of(&scale, "to")), (4, 2));
    assert_eq!(scale["reason"], "low_memory_mode");
    let first = pool.wait_event("worker_stopping", TIMEOUT, |_| true);
    let second = pool.wait_event("worker_stopping", TIMEOUT, |e| e["pid"] != first["pid"]);
    let stopped = [u64_of(&first, "pid"), u64_of(&second, "pid")];
    let kept: Vec<u32> = pids
        .into_iter()
        .filter(|&pid| !stopped.contains(&u64::from(pid)))
        .collect();
    assert_eq!(kept.len(), 2, "only the cap is left: {:#?}", pool.events);
    signal(kept[0], Signal::SIGUSR1);
    pool.wait_log("at 48 MiB", TIMEOUT);
    let warning = pool.wait_event("memory_alert", TIMEOUT, |e| e["type"] == "warning");
    let threshold = u64_of(&warning, "threshold");
    assert!(
        threshold.abs_diff(64 * MIB * 70 / 100) < 4,
        "warning at 70 %: {warning}"
    );
    assert!(pool.stop().success());
    assert_eq!(of(&pool.events, "worker_spawned").len(), 4);
}

/// The tests that put the host under pressure take turns: each one's 4 GiB
/// would be the other's pressure.
static HOST: Mutex<()> = Mutex::new(());

/// A `--memory-reservation` that leaves the host, as xypriss sees it, 1.5 GiB
/// more than it uses now: a worker holding 4 GiB makes the system scope
/// critical, even if the host's own use drifts by a gigabyte or two
/// meanwhile (other processes, page cache estimates). What it read is
/// printed, for a failure's sake.
fn reservation_leaving_room() -> String {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let kib = |field: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let reservation = (kib("MemAvailable:") * 1024).saturating_sub(1536 * MIB);
    eprintln!(
        "MemTotal {} MiB, MemAvailable {} MiB, MemFree {} MiB, Cached {} MiB: reserving {} MiB",
        kib("MemTotal:") >> 10,
        kib("MemAvailable:") >> 10,
        kib("MemFree:") >> 10,
        kib("Cached:") >> 10,
        reservation >> 20
    );
    reservation.to_string()
}

/// A pool checking the host every 200 ms against `reservation`, with room
/// for a 4 GiB worker, and `args`.
fn under_pressure(reservation: &str, args: &[&str]) -> Pool {
    let mut all = vec![
        "--memory-check-interval",
        "200ms",
        "--memory-reservation",
        reservation,
        "--max-memory-per-worker",
        "4GiB",
    ];
    all.extend(args);
    Pool::start(&all)
}

#[test]
fn host_pressure_enters_low_memory_mode_and_its_end_leaves_it() {
    if !root_or_skip("host_pressure_enters_low_memory_mode_and_its_end_leaves_it") {
        return;
    }
    let _turn = HOST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let reservation = reservation_leaving_room();
    let mut pool = under_pressure(
        &reservation,
        &[
            "--workers",
            "1",
            "--max-total-memory",
            "8GiB",
            DEMO,
            "steps",
            "8",
            "4096",
            "8",
        ],
    );
    let pid = u64_of(&pool.wait_event("worker_spawned", TIMEOUT, |_| true), "pid") as u32;
    pool.wait_log("at 8 MiB", TIMEOUT);
    pool.collect_for(Duration::from_millis(500));
    assert!(
        of(&pool.events, "low_memory_mode").is_empty(),
        "not before the pressure: {:#?}",
        pool.events
    );
    signal(pid, Signal::SIGUSR1);
    pool.wait_log("at 4096 MiB", Duration::from_secs(60));
    let on = pool.wait_event("low_memory_mode", TIMEOUT, |e| e["enabled"] == true);
    assert!(
        on["reason"].as_str().unwrap().contains("system memory"),
        "{on}"
    );
    let critical = pool.wait_event("memory_alert", TIMEOUT, |e| {
        e["scope"] == "system" && e["type"] == "critical"
    });
    assert!(critical.get("workerId").is_none(), "{critical}");
    // The worker hears it on its control channel (among its own alerts).
    let told = pool.wait_for_log(TIMEOUT, |l| {
        l.contains("control: ") && l.contains("low_memory_mode")
    });
    assert!(
        told.contains("low_memory_mode") && told.contains("true"),
        "{told}"
    );
    signal(pid, Signal::SIGUSR1);
    pool.wait_log("at 8 MiB", TIMEOUT);
    let off = pool.wait_event("low_memory_mode", TIMEOUT, |e| e["enabled"] == false);
    assert!(off["reason"].as_str().unwrap().contains("eased"), "{off}");
    assert!(pool.stop().success());
    assert_eq!(
        of(&pool.events, "low_memory_mode").len(),
        2,
        "entered once, left once: {:#?}",
        of(&pool.events, "low_memory_mode")
    );
}

#[test]
fn graceful_degradation_sheds_workers_while_the_host_is_critical() {
    if !root_or_skip("graceful_degradation_sheds_workers_while_the_host_is_critical") {
        return;
    }
    let _turn = HOST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let reservation = reservation_leaving_room();
    let mut pool = under_pressure(
        &reservation,
        &[
            "--workers",
            "3",
            "--min-workers",
            "1",
            "--graceful-degradation",
            "true",
            "--auto-scale-on-memory",
            "false",
            "--max-total-memory",
            "16GiB",
            DEMO,
            "steps",
            "8",
            "4096",
        ],
    );
    let pid = u64_of(&pool.wait_event("worker_spawned", TIMEOUT, |_| true), "pid") as u32;
    pool.wait_event("worker_ready", TIMEOUT, |e| e["workerId"] == 2);
    signal(pid, Signal::SIGUSR1);
    // Low-memory mode halves the pool (3 → 2), stopping the biggest worker
    // (the one holding 4 GiB); degradation sheds one more in the same check.
    let capped = pool.wait_event("scale", Duration::from_secs(60), |_| true);
    assert_eq!((u64_of(&capped, "from"), u64_of(&capped, "to")), (3, 2));
    assert_eq!(capped["reason"], "low_memory_mode");
    let shed = pool.wait_event("scale", TIMEOUT, |e| e["reason"] == "graceful_degradation");
    assert_eq!((u64_of(&shed, "from"), u64_of(&shed, "to")), (2, 1));
    let stopped = pool.wait_event("worker_exited", TIMEOUT, |e| e["pid"] == pid);
    assert_eq!(stopped["expected"], true, "{stopped}");
    // With the pressure gone, the mode ends and the pool is whole again.
    pool.wait_event("low_memory_mode", TIMEOUT, |e| e["enabled"] == false);
    let restored = pool.wait_event("scale", TIMEOUT, |e| e["reason"] == "low_memory_mode_ended");
    assert_eq!(u64_of(&restored, "to"), 3, "{restored}");
    assert!(pool.stop().success());
    assert!(of(&pool.events, "oom_kill").is_empty());
}
