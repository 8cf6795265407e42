//! The supervisor: restarts with backoff, the errored state, graceful and
//! forced stops, rolling restarts, scaling, privileges and the workers'
//! environment, with real processes.
//!
//! Over 600 lines: every file in tests/ is a test binary of its own, linked
//! with the whole crate, so the supervisor's cases stay in one.

mod support;

use std::{fs, path::Path, thread, time::Duration};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::{DEMO, Pool, alive, daemon_pid, of, root_or_skip, signal, u64_of};

const TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn a_crash_loop_backs_off_then_the_worker_errors() {
    if !root_or_skip("a_crash_loop_backs_off_then_the_worker_errors") {
        return;
    }
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--restart-delay",
        "100ms",
        "--restart-backoff",
        "2",
        "--max-quick-restarts",
        "3",
        DEMO,
        "exit",
        "3",
    ]);
    pool.wait_event("worker_errored", TIMEOUT, |_| true);
    let status = pool.wait();
    assert!(
        !status.success(),
        "a pool whose every worker errored exits non-zero"
    );
    let events = &pool.events;
    let exits = of(events, "worker_exited");
    assert_eq!(exits.len(), 4, "{events:#?}");
    assert!(
        exits
            .iter()
            .all(|e| e["code"] == 3 && e["expected"] == false)
    );
    let spawns = of(events, "worker_spawned");
    assert_eq!(spawns.len(), 4);
    assert_eq!(
        spawns
            .iter()
            .map(|e| u64_of(e, "generation"))
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    // Delays of 100, 200 and 400 ms between an exit and the next spawn.
    for (n, expected) in [100u64, 200, 400].into_iter().enumerate() {
        let gap = u64_of(spawns[n + 1], "timestamp") - u64_of(exits[n], "timestamp");
        assert!(
            gap + 5 >= expected && gap < expected + 400,
            "restart {}: waited {gap} ms, expected about {expected} ms",
            n + 1
        );
    }
    let restarted = of(events, "worker_restarted");
    assert_eq!(restarted.len(), 3);
    assert_eq!(restarted[2]["restarts"], 3);
    assert_eq!(restarted[0]["reason"], "crashed");
    let errored = of(events, "worker_errored");
    assert_eq!(errored.len(), 1);
    assert_eq!(errored[0]["failures"], 4);
    assert_eq!(events.last().unwrap()["reason"], "every worker errored");
}

#[test]
fn an_errored_worker_leaves_the_rest_of_the_pool_serving() {
    if !root_or_skip("an_errored_worker_leaves_the_rest_of_the_pool_serving") {
        return;
    }
    let script = format!("if [ \"$XYPRISS_WORKER_ID\" = 1 ]; then exit 1; fi; exec {DEMO} steps 1");
    let mut pool = Pool::start(&[
        "--workers",
        "2",
        "--restart-delay",
        "10ms",
        "--max-quick-restarts",
        "2",
        "/bin/sh",
        "-c",
        &script,
    ]);
    let healthy = pool.wait_event("worker_spawned", TIMEOUT, |e| e["workerId"] == 0);
    pool.wait_event("worker_errored", TIMEOUT, |e| e["workerId"] == 1);
    pool.collect_for(Duration::from_millis(500));
    assert!(
        of(&pool.events, "cluster_stopped").is_empty(),
        "the pool stopped"
    );
    assert!(alive(u64_of(&healthy, "pid") as u32));
    assert!(
        of(&pool.events, "worker_exited")
            .iter()
            .all(|e| e["workerId"] == 1)
    );
    assert!(pool.stop().success());
}

#[test]
fn a_stop_is_graceful_then_forced_after_the_kill_timeout() {
    if !root_or_skip("a_stop_is_graceful_then_forced_after_the_kill_timeout") {
        return;
    }
    let script = format!(
        "if [ \"$XYPRISS_WORKER_ID\" = 1 ]; then exec {DEMO} stubborn; fi; exec {DEMO} steps 1"
    );
    let mut pool = Pool::start(&[
        "--workers",
        "2",
        "--kill-timeout",
        "700ms",
        "/bin/sh",
        "-c",
        &script,
    ]);
    pool.wait_log("ignoring SIGTERM", TIMEOUT);
    pool.wait_log("at 1 MiB", TIMEOUT);
    let started = std::time::Instant::now();
    assert!(pool.stop().success());
    let took = started.elapsed();
    let events = &pool.events;
    assert_eq!(of(events, "worker_stopping").len(), 2, "{events:#?}");
    let exits = of(events, "worker_exited");
    let graceful = exits
        .iter()
        .find(|e| e["workerId"] == 0)
        .expect("worker 0 exited");
    assert_eq!(graceful["code"], 0);
    assert_eq!(graceful["expected"], true);
    let forced = exits
        .iter()
        .find(|e| e["workerId"] == 1)
        .expect("worker 1 exited");
    assert_eq!(forced["signal"], "SIGKILL");
    assert!(
        took >= Duration::from_millis(650),
        "SIGKILL came before the kill timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "the stop took {took:?}");
    assert!(
        of(events, "worker_restarted").is_empty(),
        "a stop restarted a worker"
    );
    assert_eq!(events.last().unwrap()["event"], "cluster_stopped");
}

#[test]
fn a_second_sigint_forces_the_stop() {
    if !root_or_skip("a_second_sigint_forces_the_stop") {
        return;
    }
    let mut pool = Pool::start(&["--workers", "1", "--kill-timeout", "60s", DEMO, "stubborn"]);
    pool.wait_log("ignoring SIGTERM", TIMEOUT);
    let started = std::time::Instant::now();
    signal(pool.pid(), Signal::SIGINT);
    pool.wait_event("worker_stopping", TIMEOUT, |_| true);
    thread::sleep(Duration::from_millis(200));
    assert!(pool.stop().success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second SIGINT did not force the stop"
    );
    let exited = of(&pool.events, "worker_exited");
    assert_eq!(exited.len(), 1);
    assert_eq!(exited[0]["signal"], "SIGKILL");
}

#[test]
fn sigkill_of_xypriss_leaves_no_worker_or_daemon_alive() {
    if !root_or_skip("sigkill_of_xypriss_leaves_no_worker_or_daemon_alive") {
        return;
    }
    let mut pool = Pool::start(&["--workers", "3", "--name", "sigkill", DEMO, "daemon"]);
    let mut pids = pool.worker_pids(3, TIMEOUT);
    for line in pool.take_logs("daemon ", 3, TIMEOUT) {
        pids.push(daemon_pid(&line));
    }
    signal(pool.pid(), Signal::SIGKILL);
    pool.wait();
    for _ in 0..50 {
        if pids.iter().all(|&p| !alive(p)) {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "outlived xypriss: {:?}",
        pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
    );
}

#[test]
fn sighup_replaces_each_worker_after_its_replacement_is_ready() {
    if !root_or_skip("sighup_replaces_each_worker_after_its_replacement_is_ready") {
        return;
    }
    let mut pool = Pool::start(&[
        "--workers",
        "2",
        "--ready-timeout",
        "200ms",
        DEMO,
        "steps",
        "1",
    ]);
    for id in 0..2u64 {
        pool.wait_event("worker_ready", TIMEOUT, |e| e["workerId"] == id);
    }
    signal(pool.pid(), Signal::SIGHUP);
    for id in 0..2u64 {
        pool.wait_event("worker_exited", TIMEOUT, |e| {
            e["workerId"] == id && e["generation"] == 1
        });
    }
    assert!(pool.stop().success());
    let events = &pool.events;
    let position =
        |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred).expect("event present");
    for id in 0..2u64 {
        let ready = position(&|e| {
            e["event"] == "worker_ready" && e["workerId"] == id && e["generation"] == 2
        });
        let stopping = position(&|e| {
            e["event"] == "worker_stopping" && e["workerId"] == id && e["generation"] == 1
        });
        assert!(
            ready < stopping,
            "worker {id}: the old one was stopped before the new one was ready"
        );
        assert_eq!(events[stopping]["reason"], "replaced");
    }
    // One at a time: worker 1's replacement starts after worker 0's old process is gone.
    let exit0 =
        position(&|e| e["event"] == "worker_exited" && e["workerId"] == 0 && e["generation"] == 1);
    let spawn1 =
        position(&|e| e["event"] == "worker_spawned" && e["workerId"] == 1 && e["generation"] == 2);
    assert!(exit0 < spawn1, "{events:#?}");
    assert!(of(events, "worker_restarted").is_empty());
}

#[test]
fn sigttin_and_sigttou_scale_within_the_bounds() {
    if !root_or_skip("sigttin_and_sigttou_scale_within_the_bounds") {
        return;
    }
    let mut pool = Pool::start(&["--workers", "1", "--max-workers", "2", DEMO, "steps", "1"]);
    pool.wait_event("worker_spawned", TIMEOUT, |e| e["workerId"] == 0);
    signal(pool.pid(), Signal::SIGTTIN);
    let scale = pool.wait_event("scale", TIMEOUT, |_| true);
    assert_eq!(
        (scale["from"].clone(), scale["to"].clone()),
        (1.into(), 2.into())
    );
    pool.wait_event("worker_spawned", TIMEOUT, |e| e["workerId"] == 1);
    signal(pool.pid(), Signal::SIGTTIN);
    pool.collect_for(Duration::from_millis(300));
    assert_eq!(
        of(&pool.events, "scale").len(),
        1,
        "scaled above --max-workers"
    );
    signal(pool.pid(), Signal::SIGTTOU);
    let stopping = pool.wait_event("worker_stopping", TIMEOUT, |_| true);
    assert_eq!(stopping["reason"], "scale_down");
    let id = stopping["workerId"].clone();
    let exited = pool.wait_event("worker_exited", TIMEOUT, |e| e["workerId"] == id);
    assert_eq!(exited["expected"], true);
    pool.collect_for(Duration::from_millis(500));
    assert!(
        of(&pool.events, "worker_restarted").is_empty(),
        "a scaled-down worker was restarted"
    );
    signal(pool.pid(), Signal::SIGTTOU);
    pool.collect_for(Duration::from_millis(300));
    assert_eq!(
        of(&pool.events, "scale").len(),
        2,
        "scaled below --min-workers"
    );
    assert!(pool.stop().success());
}

/// The words of each field of process `pid`'s `/proc/<pid>/status`, by name
/// (`"Uid:"`, `"CapEff:"`, …).
fn status_fields(pid: u64) -> impl Fn(&str) -> Vec<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    move |name| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap()
    }
}

#[test]
fn workers_run_as_the_given_user_without_capabilities() {
    if !root_or_skip("workers_run_as_the_given_user_without_capabilities") {
        return;
    }
    let mut pool = Pool::start(&["--workers", "1", "--user", "nobody", DEMO, "steps", "1"]);
    let spawned = pool.wait_event("worker_spawned", TIMEOUT, |_| true);
    pool.wait_log("at 1 MiB", TIMEOUT);
    let field = status_fields(u64_of(&spawned, "pid"));
    assert_eq!(field("Uid:"), ["65534"; 4]);
    assert_eq!(field("CapEff:"), ["0000000000000000"]);
    assert_eq!(field("CapPrm:"), ["0000000000000000"]);
    assert_eq!(field("CapAmb:"), ["0000000000000000"]);
    assert!(pool.stop().success());
}

#[test]
fn workers_run_as_another_user_still_die_with_xypriss() {
    if !root_or_skip("workers_run_as_another_user_still_die_with_xypriss") {
        return;
    }
    // setuid clears the parent-death signal; the worker must have it back.
    let script = "import ctypes; v = ctypes.c_int(); \
                  ctypes.CDLL(None).prctl(2, ctypes.byref(v)); \
                  print('pdeathsig', v.value, flush=True); \
                  import time; time.sleep(60)";
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--user",
        "nobody",
        "/usr/bin/python3",
        "-c",
        script,
    ]);
    let line = pool.wait_log("pdeathsig", TIMEOUT);
    assert!(line.ends_with("pdeathsig 9"), "SIGKILL is 9: {line}");
    assert!(pool.stop().success());
}

#[test]
fn workers_left_as_root_have_no_capabilities_either() {
    if !root_or_skip("workers_left_as_root_have_no_capabilities_either") {
        return;
    }
    let mut pool = Pool::start(&["--workers", "1", DEMO, "steps", "1"]);
    let spawned = pool.wait_event("worker_spawned", TIMEOUT, |_| true);
    pool.wait_log("at 1 MiB", TIMEOUT);
    let field = status_fields(u64_of(&spawned, "pid"));
    assert_eq!(field("Uid:").first().map(String::as_str), Some("0"));
    for caps in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:", "CapBnd:"] {
        assert_eq!(field(caps), ["0000000000000000"], "{caps}");
    }
    assert!(pool.stop().success());
}

#[test]
fn workers_get_their_environment_and_directory() {
    let dir = std::env::temp_dir();
    let mut pool = Pool::start(&[
        "--workers",
        "2",
        "--no-ebpf",
        "--env",
        "GREETING=hello world",
        "--cwd",
        dir.to_str().unwrap(),
        "/bin/sh",
        "-c",
        "echo \"id=$XYPRISS_WORKER_ID of $XYPRISS_WORKER_COUNT gen=$XYPRISS_GENERATION greeting=$GREETING cwd=$(pwd)\"; exec sleep 60",
    ]);
    let expected_cwd = fs::canonicalize(&dir).unwrap();
    for id in 0..2 {
        let line = pool.wait_log(&format!("id={id} of 2 gen=1"), TIMEOUT);
        assert!(line.contains("greeting=hello world"), "{line}");
        assert!(
            line.contains(&format!("cwd={}", expected_cwd.display())),
            "{line} (expected cwd {})",
            expected_cwd.display()
        );
        assert!(line.starts_with(&format!("[worker {id}.1 pid ")), "{line}");
    }
    assert!(pool.events.iter().all(|e| e["event"] != "worker_exited"));
    assert!(pool.stop().success());
    assert!(Path::new(&expected_cwd).is_dir());
}

fn cgroup_of(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

#[test]
fn a_worker_runs_in_its_own_cgroup_and_its_daemons_die_with_it() {
    if !root_or_skip("a_worker_runs_in_its_own_cgroup_and_its_daemons_die_with_it") {
        return;
    }
    let mut pool = Pool::start(&["--workers", "1", "--name", "cgtest", DEMO, "daemon"]);
    let cgroup = pool.wait_event("cgroup", TIMEOUT, |_| true);
    assert_eq!(cgroup["enabled"], true, "{cgroup}");
    let pool_dir = cgroup["path"].as_str().unwrap().to_owned();
    assert!(
        pool_dir.contains(&format!("/xypriss/cgtest.{}", pool.pid())),
        "{pool_dir}"
    );
    let spawned = pool.wait_event("worker_spawned", TIMEOUT, |_| true);
    let worker = u64_of(&spawned, "pid") as u32;
    let daemon = daemon_pid(&pool.wait_log("daemon ", TIMEOUT));
    let relative = pool_dir
        .split_once("/xypriss/")
        .map(|(_, r)| format!("/xypriss/{r}/w0.g1"))
        .unwrap();
    assert!(
        cgroup_of(worker).contains(&relative),
        "worker: {}",
        cgroup_of(worker)
    );
    assert!(
        cgroup_of(daemon).contains(&relative),
        "daemon: {}",
        cgroup_of(daemon)
    );
    assert_ne!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(daemon as i32))).unwrap(),
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(worker as i32))).unwrap(),
        "the daemon left the worker's session"
    );

    // The worker crashes: its daemon goes with it, and its restart gets a new cgroup.
    signal(worker, Signal::SIGKILL);
    pool.wait_event("worker_spawned", TIMEOUT, |e| e["generation"] == 2);
    for _ in 0..50 {
        if !alive(daemon) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(daemon), "the crashed worker's daemon is still alive");
    assert!(
        !Path::new(&pool_dir).join("w0.g1").exists(),
        "the old worker cgroup is left"
    );
    assert!(pool.stop().success());
    assert!(
        !Path::new(&pool_dir).exists(),
        "the pool's cgroup is left after a stop"
    );
}

#[test]
fn the_next_start_cleans_up_after_a_sigkilled_xypriss() {
    if !root_or_skip("the_next_start_cleans_up_after_a_sigkilled_xypriss") {
        return;
    }
    let mut first = Pool::start(&["--workers", "1", "--name", "stale", DEMO, "daemon"]);
    let cgroup = first.wait_event("cgroup", TIMEOUT, |_| true);
    let pool_dir = cgroup["path"].as_str().unwrap().to_owned();
    let daemon = daemon_pid(&first.wait_log("daemon ", TIMEOUT));
    let first_pid = first.pid();
    // Kill the watchdog first, as `kill -9` of everything would: only the
    // next start is left to clean up.
    let children =
        fs::read_to_string(format!("/proc/{first_pid}/task/{first_pid}/children")).unwrap();
    let watchdog = children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.windows(10).any(|w| w == b"__watchdog"))
        })
        .expect("xypriss runs a watchdog");
    signal(watchdog, Signal::SIGKILL);
    signal(first_pid, Signal::SIGKILL);
    first.wait();

    let mut second = Pool::start(&["--workers", "1", "--name", "stale", DEMO, "steps", "1"]);
    second.wait_event("worker_spawned", TIMEOUT, |_| true);
    // This start cleans it, or another xypriss starting at the same moment
    // (the tests run side by side) did; either way, before workers run.
    if let Some(removed) = second
        .events
        .iter()
        .find(|e| e["event"] == "stale_cgroup_removed" && e["ownerPid"] == first_pid)
    {
        assert_eq!(removed["path"], pool_dir.as_str());
        assert!(u64_of(removed, "killed") >= 1, "{removed}");
    }
    assert!(
        !Path::new(&pool_dir).exists(),
        "the stale pool {pool_dir} is left"
    );
    assert!(
        !alive(daemon),
        "the daemon of the SIGKILLed pool survived the next start"
    );
    assert!(second.stop().success());
}

#[test]
fn the_last_event_counts_the_ones_before_it() {
    let mut pool = Pool::start(&["--workers", "2", "--no-ebpf", DEMO, "steps", "8"]);
    pool.wait_event("worker_ready", TIMEOUT, |e| e["workerId"] == 1);
    assert!(pool.stop().success());
    let last = pool.events.last().expect("events");
    assert_eq!(last["event"], "cluster_stopped");
    assert_eq!(
        u64_of(last, "eventsEmitted"),
        pool.events.len() as u64 - 1,
        "{:#?}",
        pool.events
    );
}

/// Field `n` (from 1, as proc(5) counts) of a process's or thread's `stat`.
fn stat_field(stat_path: &str, n: usize) -> i64 {
    let stat = fs::read_to_string(stat_path).unwrap_or_else(|e| panic!("{stat_path}: {e}"));
    let (_, rest) = stat.rsplit_once(')').expect("a stat line");
    // After the name, the state is field 3.
    rest.split_whitespace()
        .nth(n - 3)
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("no field {n} in {stat_path}: {stat}"))
}

/// A process's or thread's nice value, from its `stat`.
fn nice_of(stat_path: &str) -> i64 {
    stat_field(stat_path, 19)
}

/// The `stat` paths of every thread of process `pid`.
fn thread_stats(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .expect("xypriss runs")
        .map(|task| {
            let tid = task.expect("a task").file_name();
            format!("/proc/{pid}/task/{}/stat", tid.to_string_lossy())
        })
        .collect()
}

/// A thread's scheduling: (policy, real-time priority), from its `stat`.
fn scheduling(stat_path: &str) -> (i64, i64) {
    (stat_field(stat_path, 41), stat_field(stat_path, 40))
}

/// xypriss's threads that keep books, never urgent: they run as its
/// workers do.
const BACKGROUND: [&str; 1] = ["xypriss-faults"];

/// The threads an alert passes through: the loop's (the main thread, named
/// as the process) and the stdout writer's.
const ALERT_PATH: [&str; 2] = ["xypriss", "ndjson"];

/// A thread's name, from the `comm` beside its `stat`.
fn thread_name(stat_path: &str) -> String {
    std::fs::read_to_string(stat_path.replace("/stat", "/comm"))
        .map_or_else(|_| String::new(), |name| name.trim().to_owned())
}

/// What `read` says of each thread of a one-worker pool, by kind.
struct Threads<T> {
    /// Those on the alert's path ([`ALERT_PATH`]).
    alert_path: Vec<T>,
    /// Every other thread of xypriss's, the status server's among them.
    rest: Vec<T>,
    /// Its background threads ([`BACKGROUND`]).
    background: Vec<T>,
    /// Its worker's.
    worker: T,
}

/// Starts a one-worker pool with `args` and a status server, and reads
/// each thread of it with `read` (see [`Threads`]).
fn threads_and_worker<T>(args: &[&str], read: fn(&str) -> T) -> Threads<T> {
    let mut pool_args = args.to_vec();
    pool_args.extend([
        "--status-addr",
        "127.0.0.1:0",
        "--workers",
        "1",
        DEMO,
        "steps",
        "1",
    ]);
    let mut pool = Pool::start(&pool_args);
    let spawned = pool.wait_event("worker_spawned", TIMEOUT, |_| true);
    let pid = u64_of(&spawned, "pid") as u32;
    pool.wait_log("at 1 MiB", TIMEOUT);
    let stats = thread_stats(pool.pid());
    let named = |names: &[&str]| -> Vec<String> {
        let mut found: Vec<String> = stats
            .iter()
            .map(|s| thread_name(s))
            .filter(|n| names.contains(&n.as_str()))
            .collect();
        found.sort();
        found
    };
    // The eBPF observer reads fault counts there; the /proc one has none.
    let ebpf = pool
        .events
        .iter()
        .any(|e| e["event"] == "observer" && e["source"] == "ebpf");
    assert_eq!(
        named(&BACKGROUND),
        if ebpf { vec!["xypriss-faults"] } else { vec![] },
        "{args:?}: the background threads"
    );
    assert_eq!(
        named(&ALERT_PATH),
        ["ndjson", "xypriss"],
        "{args:?}: the alert's path"
    );
    let all: Vec<String> = stats.iter().map(|s| thread_name(s)).collect();
    assert!(
        all.iter().any(|name| name == "xypriss-http"),
        "{args:?}: the status server's thread among {all:?}"
    );
    let of = |kinds: &[&str]| -> Vec<T> {
        stats
            .iter()
            .filter(|s| kinds.contains(&thread_name(s).as_str()))
            .map(|s| read(s))
            .collect()
    };
    let threads = Threads {
        alert_path: of(&ALERT_PATH),
        rest: stats
            .iter()
            .filter(|s| {
                let name = thread_name(s);
                !ALERT_PATH.contains(&name.as_str()) && !BACKGROUND.contains(&name.as_str())
            })
            .map(|s| read(s))
            .collect(),
        background: of(&BACKGROUND),
        worker: read(&format!("/proc/{pid}/stat")),
    };
    assert!(pool.stop().success());
    threads
}

/// By default every thread of xypriss runs SCHED_FIFO at priority 1 but the
/// two an alert passes through, which run at 2, and its worker and
/// background threads with normal scheduling; `--realtime 7` takes
/// priorities 7 and 8, and `--realtime off` leaves xypriss's scheduling
/// alone.
#[test]
fn realtime_runs_xyprisss_threads_fifo_and_not_its_workers() {
    if !root_or_skip("realtime_runs_xyprisss_threads_fifo_and_not_its_workers") {
        return;
    }
    // (policy, real-time priority)
    let normal = (i64::from(libc::SCHED_OTHER), 0);
    assert_eq!(
        scheduling("/proc/thread-self/stat"),
        normal,
        "the test's own"
    );
    let fifo = |priority| (i64::from(libc::SCHED_FIFO), priority);
    for (args, alert_path, rest) in [
        (&[][..], fifo(2), fifo(1)),
        (&["--realtime", "7"][..], fifo(8), fifo(7)),
        (&["--realtime", "off"][..], normal, normal),
    ] {
        let threads = threads_and_worker(args, scheduling);
        assert!(
            threads.alert_path.iter().all(|&t| t == alert_path),
            "{args:?}: the alert's path at {alert_path:?}: {:?}",
            threads.alert_path
        );
        assert!(
            !threads.rest.is_empty() && threads.rest.iter().all(|&t| t == rest),
            "{args:?}: every other thread of xypriss at {rest:?}: {:?}",
            threads.rest
        );
        assert!(
            threads.background.iter().all(|&t| t == normal),
            "{args:?}: the background threads at {normal:?}: {:?}",
            threads.background
        );
        assert_eq!(threads.worker, normal, "{args:?}: the worker's");
    }
}

/// `--nice -10`: every thread of xypriss at nice -10, its worker and
/// background threads at the nice value xypriss was started with; by default (`keep`), xypriss too.
#[test]
fn nice_raises_xyprisss_priority_and_not_its_workers() {
    if !root_or_skip("nice_raises_xyprisss_priority_and_not_its_workers") {
        return;
    }
    // What xypriss is started with: this thread's.
    let own = nice_of("/proc/thread-self/stat");
    assert!(own > -10, "the test runs at nice {own}: nothing to raise");
    for (args, expected) in [(&["--nice", "-10"][..], -10), (&[][..], own)] {
        let threads = threads_and_worker(args, nice_of);
        let xypriss: Vec<i64> = threads.alert_path.into_iter().chain(threads.rest).collect();
        assert!(
            xypriss.iter().all(|&n| n == expected),
            "{args:?}: every thread of xypriss at nice {expected}: {xypriss:?}"
        );
        assert!(
            threads.background.iter().all(|&n| n == own),
            "{args:?}: the background threads at nice {own}: {:?}",
            threads.background
        );
        assert_eq!(threads.worker, own, "{args:?}: the worker's");
    }
}
