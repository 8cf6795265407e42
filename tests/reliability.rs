//! Faults xypriss must survive, with real processes, cgroups and eBPF:
//! workers that crash in every way or are OOM-killed together, a memory hog
//! beside the pool, xypriss itself stopped, signalled mid-restart, SIGKILLed
//! (what it leaves) or left with a stalled or closed stdout, eBPF refused by
//! the verifier or tracefs missing; and what keeps others out: the OOM
//! killer's choice, and BPF objects no unprivileged process can reach.
//!
//! The existing suites cover the rest (tests/supervise.rs: crash-loop
//! backoff, kill timeout, SIGKILL of xypriss, stale cleanup, SIGHUP,
//! capabilities; tests/procfs.rs: no root).
//!
//! Over 600 lines: every file in tests/ is a test binary of its own, linked
//! with the whole crate (and the CI machine has two cores), so the fault
//! tests stay in one.

mod support;

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::{signal::Signal, wait::WaitStatus},
};
use serde_json::Value;
use support::{
    DEMO, MIB, Pool, XYPRISS, alive, daemon_pid, of, proc_status, root_or_skip, scaled, signal,
    u64_of,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Polls `done` every 20 ms until it holds, or panics after `timeout`
/// ([`scaled`] as every wait of the support module) saying `what`.
fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let timeout = scaled(timeout);
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The pids of every `worker_spawned` so far.
fn spawned_pids(events: &[Value]) -> Vec<u32> {
    of(events, "worker_spawned")
        .iter()
        .map(|e| u64_of(e, "pid") as u32)
        .collect()
}

/// The event `name` (`worker_spawned`, `worker_exited`) of worker `id`'s
/// generation `generation`.
fn of_generation<'a>(events: &'a [Value], name: &str, id: u64, generation: u64) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == name && e["workerId"] == id && e["generation"] == generation)
        .unwrap_or_else(|| panic!("no {name} {id}.{generation}: {events:#?}"))
}

/// The pool's cgroup as the `cgroup` event says, and the part of it
/// `/proc/<pid>/cgroup` shows.
fn pool_cgroup(pool: &mut Pool) -> (PathBuf, String) {
    let cgroup = pool.wait_event("cgroup", TIMEOUT, |_| true);
    assert_eq!(cgroup["enabled"], true, "{cgroup}");
    let path = cgroup["path"].as_str().expect("a path").to_owned();
    let relative = path
        .split_once("/xypriss/")
        .map(|(_, r)| format!("/xypriss/{r}/"))
        .expect("under xypriss/");
    (PathBuf::from(path), relative)
}

/// Every process whose cgroup is under the pool's (`relative`, from [`pool_cgroup`]).
fn processes_in(relative: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(relative))
                && alive(*pid)
        })
        .collect()
}

/// Every live process in the process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32)))
                .is_ok_and(|g| g.as_raw() as u32 == pgid)
                && alive(pid)
        })
        .collect()
}

/// After a stop: no worker (nor anything they started) runs, and the pool's cgroup is gone.
fn nothing_left(pids: &[u32], cgroup: &Path, relative: &str) {
    wait_until(
        "every process of the pool gone",
        Duration::from_secs(5),
        || {
            pids.iter()
                .all(|&p| !alive(p) && group_members(p).is_empty())
                && processes_in(relative).is_empty()
        },
    );
    assert!(!cgroup.exists(), "{} is left", cgroup.display());
}

#[test]
fn crashes_of_every_kind_are_reported_and_restarted_while_the_pool_serves() {
    if !root_or_skip("crashes_of_every_kind_are_reported_and_restarted_while_the_pool_serves") {
        return;
    }
    let script = format!(
        "case \"$XYPRISS_WORKER_ID\" in
           1) exec {DEMO} crash segv 200;;
           2) exec {DEMO} crash abort 200;;
           3) exec {DEMO} exit 1 200;;
           *) exec {DEMO} steps 1;;
         esac"
    );
    let mut pool = Pool::start(&[
        "--workers",
        "4",
        "--restart-delay",
        "300ms",
        "--restart-backoff",
        "2",
        "--name",
        "crashes",
        "/bin/sh",
        "-c",
        &script,
    ]);
    let (cgroup, relative) = pool_cgroup(&mut pool);
    let healthy = u64_of(
        &pool.wait_event("worker_spawned", TIMEOUT, |e| e["workerId"] == 0),
        "pid",
    ) as u32;
    for id in 1..=3u64 {
        pool.wait_event("worker_spawned", TIMEOUT, |e| {
            e["workerId"] == id && e["generation"] == 3
        });
    }
    assert!(alive(healthy), "worker 0 died with its neighbours");
    let events = pool.events.clone();
    for (id, signal, code) in [
        (1u64, Some("SIGSEGV"), None),
        (2, Some("SIGABRT"), None),
        (3, None, Some(1)),
    ] {
        for generation in 1..=2u64 {
            let exit = of_generation(&events, "worker_exited", id, generation);
            assert_eq!(exit["signal"].as_str(), signal, "{exit}");
            assert_eq!(exit["code"].as_i64(), code, "{exit}");
            assert_eq!(exit["expected"], false, "{exit}");
            assert_eq!(exit["oomKilled"], false, "{exit}");
            // The backoff holds: 300 ms, then 600 ms, from the exit to the next spawn.
            let delay = 300 << (generation - 1);
            let gap = u64_of(
                of_generation(&events, "worker_spawned", id, generation + 1),
                "timestamp",
            ) - u64_of(exit, "timestamp");
            assert!(
                gap + 5 >= delay,
                "worker {id} restarted {gap} ms after its exit {generation}, before its {delay} ms delay"
            );
        }
        let restarts: Vec<&Value> = of(&events, "worker_restarted")
            .into_iter()
            .filter(|e| e["workerId"] == id)
            .collect();
        assert_eq!(restarts.len(), 2, "{restarts:#?}");
        assert!(restarts.iter().all(|e| e["reason"] == "crashed"));
        assert_eq!(restarts[1]["restarts"], 2);
    }
    assert!(
        events
            .iter()
            .all(|e| !(e["workerId"] == 0 && e["event"] == "worker_exited")),
        "worker 0 exited"
    );
    assert!(pool.stop().success());
    nothing_left(&spawned_pids(&pool.events), &cgroup, &relative);
}

#[test]
fn a_worker_that_forks_a_daemon_and_exits_leaves_nothing_behind() {
    if !root_or_skip("a_worker_that_forks_a_daemon_and_exits_leaves_nothing_behind") {
        return;
    }
    // A long restart delay: what the exit left is seen before the next start.
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--restart-delay",
        "10s",
        "--name",
        "daemonexit",
        DEMO,
        "daemon",
        "exit",
    ]);
    let (cgroup, relative) = pool_cgroup(&mut pool);
    let worker = u64_of(&pool.wait_event("worker_spawned", TIMEOUT, |_| true), "pid") as u32;
    let daemon = daemon_pid(&pool.wait_log("daemon ", TIMEOUT));
    let exit = pool.wait_event("worker_exited", TIMEOUT, |_| true);
    assert_eq!(exit["code"], 0, "{exit}");
    assert_eq!(exit["expected"], false, "{exit}");
    wait_until(
        "the daemon killed with its worker's cgroup",
        TIMEOUT,
        || !alive(daemon),
    );
    assert!(group_members(worker).is_empty());
    assert!(
        processes_in(&relative).is_empty(),
        "left in the pool: {:?}",
        processes_in(&relative)
    );
    wait_until("the worker's cgroup removed", TIMEOUT, || {
        !cgroup.join("w0.g1").exists()
    });
    assert!(pool.stop().success());
    assert!(
        of(&pool.events, "worker_spawned").len() == 1,
        "the stop cancelled the pending restart: {:#?}",
        pool.events
    );
    nothing_left(&[worker, daemon], &cgroup, &relative);
}

#[test]
fn workers_oom_killed_together_are_each_attributed_and_restarted() {
    if !root_or_skip("workers_oom_killed_together_are_each_attributed_and_restarted") {
        return;
    }
    // Each first generation limits its own cgroup (v1, or v2 mounted at
    // /sys/fs/cgroup) to 64 MiB and grows past it at once; later ones idle.
    let script = format!(
        "if [ \"$XYPRISS_GENERATION\" = 1 ]; then
           cg=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)
           if [ -n \"$cg\" ]; then echo 64M > /sys/fs/cgroup/memory$cg/memory.limit_in_bytes
           else echo 64M > /sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)/memory.max; fi || exit 9
           exec {DEMO} grow 400
         fi
         exec {DEMO} steps 1"
    );
    let mut pool = Pool::start(&[
        "--workers",
        "3",
        "--require-ebpf",
        "--name",
        "oomtogether",
        "/bin/sh",
        "-c",
        &script,
    ]);
    let (cgroup, relative) = pool_cgroup(&mut pool);
    for id in 0..3u64 {
        pool.wait_event("worker_restarted", TIMEOUT, |e| e["workerId"] == id);
    }
    let events = pool.events.clone();
    for id in 0..3u64 {
        let victim = u64_of(of_generation(&events, "worker_spawned", id, 1), "pid");
        let kills: Vec<&Value> = of(&events, "oom_kill")
            .into_iter()
            .filter(|e| e["pid"] == victim)
            .collect();
        assert_eq!(kills.len(), 1, "worker {id} (pid {victim}): {events:#?}");
        assert_eq!(kills[0]["workerId"], id, "{}", kills[0]);
        let exit = of_generation(&events, "worker_exited", id, 1);
        assert_eq!(exit["oomKilled"], true, "{exit}");
        assert_eq!(exit["signal"], "SIGKILL", "{exit}");
        let restarted = of(&events, "worker_restarted")
            .into_iter()
            .find(|e| e["workerId"] == id)
            .expect("waited for above");
        assert_eq!(restarted["reason"], "oom_killed", "{restarted}");
        assert_eq!(restarted["generation"], 2, "{restarted}");
    }
    assert!(pool.stop().success());
    nothing_left(&spawned_pids(&pool.events), &cgroup, &relative);
}

/// Whether this process has CAP_SYS_RESOURCE, which lowering an
/// oom_score_adj takes.
fn has_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
            u64::from_str_radix(hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

fn oom_score_adj(pid: u32) -> i32 {
    fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .expect("process alive")
        .trim()
        .parse()
        .expect("a number")
}

#[test]
fn xypriss_shields_itself_from_the_oom_killer_and_its_workers_do_not() {
    if !root_or_skip("xypriss_shields_itself_from_the_oom_killer_and_its_workers_do_not") {
        return;
    }
    let before = oom_score_adj(std::process::id());
    let script = format!(
        "if echo -900 > /proc/self/oom_score_adj; then echo lowered; else echo refused; fi
         exec {DEMO} steps 1"
    );
    let mut pool = Pool::start(&[
        "--workers",
        "2",
        "--user",
        "nobody",
        "--name",
        "oomscore",
        "/bin/sh",
        "-c",
        &script,
    ]);
    let workers = pool.worker_pids(2, TIMEOUT);
    pool.take_logs("at 1 MiB", 2, TIMEOUT);
    let supervisor = oom_score_adj(pool.pid());
    if has_sys_resource() {
        assert_eq!(supervisor, before.min(-900));
        for &pid in &workers {
            assert_eq!(oom_score_adj(pid), 0, "worker {pid}");
        }
        // Reset while root, the floor came up too: nobody cannot go back down.
        assert!(
            pool.log.iter().all(|l| !l.ends_with("] lowered")),
            "a worker took xypriss's protection back: {:#?}",
            pool.log
        );
    } else {
        // Without the capability (root in a container) xypriss says so and goes on.
        let warning = pool.wait_log("oom_score_adj", TIMEOUT);
        assert!(warning.contains("CAP_SYS_RESOURCE"), "{warning}");
        assert_eq!(supervisor, before);
        for &pid in &workers {
            assert_eq!(oom_score_adj(pid), before, "worker {pid}");
        }
    }
    assert!(pool.stop().success());
}

#[test]
fn the_next_start_removes_the_notify_socket_a_sigkilled_xypriss_left() {
    if !root_or_skip("the_next_start_removes_the_notify_socket_a_sigkilled_xypriss_left") {
        return;
    }
    let args = [
        "--workers",
        "1",
        "--name",
        "stalesocket",
        DEMO,
        "steps",
        "1",
    ];
    let mut first = Pool::start(&args);
    let worker = first.worker_pids(1, TIMEOUT)[0];
    first.wait_log("at 1 MiB", TIMEOUT);
    let environ = fs::read(format!("/proc/{worker}/environ")).expect("the worker's environment");
    let socket = environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"NOTIFY_SOCKET="))
        .map(|path| PathBuf::from(String::from_utf8_lossy(path).into_owned()))
        .expect("NOTIFY_SOCKET");
    signal(first.pid(), Signal::SIGKILL);
    first.wait();
    let mut second = Pool::start(&args);
    second.worker_pids(1, TIMEOUT);
    // This start removed it, or another one starting meanwhile did.
    assert!(!socket.exists(), "{} is left", socket.display());
    assert!(second.stop().success());
}

#[test]
fn sigterm_during_a_rolling_restart_stops_cleanly() {
    if !root_or_skip("sigterm_during_a_rolling_restart_stops_cleanly") {
        return;
    }
    let mut pool = Pool::start(&[
        "--workers",
        "2",
        "--ready-timeout",
        "500ms",
        "--name",
        "rollingterm",
        DEMO,
        "steps",
        "1",
    ]);
    let (cgroup, relative) = pool_cgroup(&mut pool);
    for id in 0..2u64 {
        pool.wait_event("worker_ready", TIMEOUT, |e| e["workerId"] == id);
    }
    signal(pool.pid(), Signal::SIGHUP);
    // Worker 0's replacement is starting, not ready yet: now stop.
    pool.wait_event("worker_spawned", TIMEOUT, |e| e["generation"] == 2);
    signal(pool.pid(), Signal::SIGTERM);
    assert!(pool.wait().success(), "{:#?}", pool.log);
    let events = &pool.events;
    let last = events.last().expect("events");
    assert_eq!(last["event"], "cluster_stopped", "{events:#?}");
    assert_eq!(last["reason"], "received SIGTERM");
    let stop = events
        .iter()
        .position(|e| e["event"] == "worker_stopping" && e["reason"] == "shutdown")
        .expect("the stop");
    assert!(
        of(&events[stop..], "worker_spawned").is_empty(),
        "a replacement started after the stop: {events:#?}"
    );
    let pids = spawned_pids(events);
    for pid in &pids {
        let exit = events
            .iter()
            .find(|e| e["event"] == "worker_exited" && e["pid"] == *pid)
            .unwrap_or_else(|| panic!("no worker_exited for {pid}: {events:#?}"));
        assert_eq!(exit["expected"], true, "{exit}");
    }
    assert!(of(events, "worker_restarted").is_empty(), "{events:#?}");
    nothing_left(&pids, &cgroup, &relative);
}

#[test]
fn sigstop_then_sigcont_drains_the_backlog_and_counts_what_was_lost() {
    if !root_or_skip("sigstop_then_sigcont_drains_the_backlog_and_counts_what_was_lost") {
        return;
    }
    // The kernel's resident counters move in batches of about 128 KiB: four
    // workers growing by 312 MiB each make some 10 000 records while
    // nobody reads, against a ring of 4096.
    const WORKERS: u64 = 4;
    let mut pool = Pool::start(&[
        "--workers",
        "4",
        "--require-ebpf",
        "--granularity",
        "4KiB",
        "--memory-leak-detection",
        "false",
        "--name",
        "sigstop",
        DEMO,
        "steps",
        "8",
        "320",
    ]);
    let workers = pool.worker_pids(WORKERS, TIMEOUT);
    pool.take_logs("at 8 MiB", WORKERS as usize, TIMEOUT);
    signal(pool.pid(), Signal::SIGSTOP);
    for &pid in &workers {
        signal(pid, Signal::SIGUSR1);
    }
    wait_until("every worker at 320 MiB", TIMEOUT, || {
        workers
            .iter()
            .all(|&pid| proc_status(pid, "VmRSS") >= 320 * MIB)
    });
    let stopped_at = pool.events.len();
    signal(pool.pid(), Signal::SIGCONT);
    // Whatever was lost, each worker's memory is known again, and said.
    for (id, &pid) in (0..).zip(&workers) {
        let rss = proc_status(pid, "VmRSS");
        pool.wait_event("memory_sample", TIMEOUT, |e| {
            e["workerId"] == id && u64_of(e, "rssBytes").abs_diff(rss) <= 2 * MIB
        });
    }
    // A tick later, what was lost is said.
    pool.collect_for(Duration::from_millis(1500));
    let after = &pool.events[stopped_at..];
    let lost: u64 = of(after, "events_lost")
        .iter()
        .filter(|e| e["stage"] == "kernel")
        .map(|e| u64_of(e, "count"))
        .sum();
    if lost == 0 {
        // Nothing lost: the samples climb without a gap.
        for id in 0..WORKERS {
            let rss: Vec<u64> = of(after, "memory_sample")
                .iter()
                .filter(|e| e["workerId"] == id)
                .map(|e| u64_of(e, "rssBytes"))
                .collect();
            let gap = rss.windows(2).map(|w| w[0].abs_diff(w[1])).max();
            assert!(
                gap.is_some_and(|g| g < 4 * MIB),
                "no loss said, yet worker {id}'s samples jump by {gap:?} bytes"
            );
        }
    }
    for (id, &pid) in (0..).zip(&workers) {
        let latest = u64_of(pool.latest_sample(id).expect("a sample"), "rssBytes");
        let actual = proc_status(pid, "VmRSS");
        assert!(
            latest.abs_diff(actual) <= 2 * MIB,
            "worker {id}: latest sample {latest}, VmRSS {actual}"
        );
    }
    assert!(pool.stop().success());
    eprintln!("records lost while xypriss was stopped: {lost}");
}

/// The live children of `pid` that run the demo worker.
fn demo_children(pid: u32) -> BTreeSet<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|children| {
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|&child| {
            alive(child)
                && fs::read_to_string(format!("/proc/{child}/comm"))
                    .is_ok_and(|comm| comm.trim() == "xypriss-demo")
        })
        .collect()
}

#[test]
fn a_stalled_stdout_never_stalls_the_control_loop() {
    if !root_or_skip("a_stalled_stdout_never_stalls_the_control_loop") {
        return;
    }
    // The kernel's counters move by about 128 KiB: growing to its 512 MiB
    // limit, a worker makes some 4000 lines while nobody reads, then is
    // replaced, again and again; at most 4096 lines wait.
    let (mut pool, resume) = Pool::start_paused(&[
        "--workers",
        "1",
        "--require-ebpf",
        "--granularity",
        "4KiB",
        "--minimal-footprint",
        "true",
        "--max-memory-per-worker",
        "512MiB",
        "--enforce-hard-limits",
        "true",
        "--memory-leak-detection",
        "false",
        "--ready-timeout",
        "100ms",
        "--name",
        "stalled",
        DEMO,
        "grow",
        "400",
    ]);
    let mut seen = BTreeSet::new();
    wait_until("the first worker", TIMEOUT, || {
        seen.extend(demo_children(pool.pid()));
        !seen.is_empty()
    });
    let first = *seen.first().expect("one worker");
    // Three replacements, seen in the process tree alone.
    wait_until(
        "three limit replacements while stdout is stalled",
        TIMEOUT,
        || {
            seen.extend(demo_children(pool.pid()));
            seen.len() >= 4 && !alive(first)
        },
    );
    resume.send(()).expect("the reader waits");
    let lost = pool.wait_event("events_lost", TIMEOUT, |e| e["stage"] == "output");
    assert!(u64_of(&lost, "count") > 0, "{lost}");
    assert!(pool.stop().success());
    eprintln!("lines lost while stdout was stalled: {}", lost["total"]);
}

#[test]
fn a_closed_stdout_stops_the_pool_gracefully() {
    if !root_or_skip("a_closed_stdout_stops_the_pool_gracefully") {
        return;
    }
    let mut child = Command::new(XYPRISS)
        .args([
            "run",
            "--user",
            "root",
            "--workers",
            "2",
            "--ready-timeout",
            "100ms",
            "--name",
            "closedout",
            DEMO,
            "steps",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("xypriss starts");
    let mut workers = Vec::new();
    let mut cgroup = None;
    let mut ready = 0;
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    loop {
        // Once both are ready, read until the pool has been quiet for 1.5 s.
        if ready == 2 && reader.buffer().is_empty() {
            let mut fds = [PollFd::new(reader.get_ref().as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(1500u16)).expect("poll") == 0 {
                break;
            }
        }
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).expect("a line") > 0,
            "stdout ended"
        );
        let event: Value = serde_json::from_str(&line).expect("JSON");
        match event["event"].as_str() {
            Some("worker_spawned") => workers.push(u64_of(&event, "pid") as u32),
            Some("cgroup") => cgroup = event["path"].as_str().map(PathBuf::from),
            Some("worker_ready") => ready += 1,
            _ => {}
        }
    }
    drop(reader);
    // The reader is gone, and the pool is idle: no write will fail.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("xypriss did not stop within {TIMEOUT:?} of its stdout closing");
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let cgroup = cgroup.expect("a cgroup event");
    let relative = cgroup
        .to_str()
        .and_then(|p| p.split_once("/xypriss/"))
        .map(|(_, r)| format!("/xypriss/{r}/"))
        .expect("under xypriss/");
    nothing_left(&workers, &cgroup, &relative);
}

#[test]
fn a_verifier_rejection_degrades_to_procfs_or_refuses_when_required() {
    if !root_or_skip("a_verifier_rejection_degrades_to_procfs_or_refuses_when_required") {
        return;
    }
    let mut cmd = Command::new(XYPRISS);
    cmd.env("XYPRISS_FAULT_INJECT", "verifier").args([
        "run",
        "--user",
        "root",
        "--workers",
        "1",
        "--name",
        "verifier",
        DEMO,
        "steps",
        "8",
    ]);
    let mut pool = Pool::start_command(&mut cmd);
    let observer = pool.wait_event("observer", TIMEOUT, |_| true);
    assert_eq!(observer["source"], "procfs", "{observer}");
    let reason = observer["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("rejected by the kernel's verifier") && reason.contains("R0 !read_ok"),
        "{reason}"
    );
    assert!(
        reason.len() < 1000 && !reason.contains('\n'),
        "one short line: {reason}"
    );
    pool.wait_event("memory_sample", TIMEOUT, |e| e["source"] == "procfs");
    assert!(pool.stop().success());
    assert_eq!(
        of(&pool.events, "observer").len(),
        1,
        "the reason is said once"
    );

    let refused = Command::new(XYPRISS)
        .env("XYPRISS_FAULT_INJECT", "verifier")
        .args([
            "run",
            "--user",
            "root",
            "--workers",
            "1",
            "--require-ebpf",
            "--name",
            "verifier",
            DEMO,
        ])
        .output()
        .expect("xypriss runs");
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("eBPF is required") && stderr.contains("rejected by the kernel's verifier"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("worker_spawned"));
}

const TRACEFS: &str = "/sys/kernel/tracing";

fn mounted(path: &str, fstype: &str) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let separator = fields.iter().position(|f| *f == "-");
            fields.get(4) == Some(&path)
                && separator.and_then(|s| fields.get(s + 1)) == Some(&fstype)
        })
}

/// tracefs unmounted for a test; mounted again at the end if it was.
struct NoTraceFs {
    was_mounted: bool,
}

impl NoTraceFs {
    fn new() -> Self {
        let was_mounted = mounted(TRACEFS, "tracefs");
        while mounted(TRACEFS, "tracefs") {
            umount2(TRACEFS, MntFlags::MNT_DETACH).expect("tracefs unmounted");
        }
        Self { was_mounted }
    }
}

impl Drop for NoTraceFs {
    fn drop(&mut self) {
        if self.was_mounted && !mounted(TRACEFS, "tracefs") {
            let _ = mount(
                Some("nodev"),
                TRACEFS,
                Some("tracefs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            );
        }
    }
}

/// Every program is a raw tracepoint attached by name: the kernel observer
/// loads with no tracefs, and xypriss mounts nothing, neither for a load
/// that works nor for one the verifier refuses.
#[test]
fn ebpf_loads_without_tracefs_and_mounts_nothing() {
    if !root_or_skip("ebpf_loads_without_tracefs_and_mounts_nothing") {
        return;
    }
    let _unmounted = NoTraceFs::new();
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--require-ebpf",
        "--name",
        "notracefs",
        DEMO,
        "steps",
        "1",
    ]);
    let observer = pool.wait_event("observer", TIMEOUT, |_| true);
    assert_eq!(observer["source"], "ebpf", "{observer}");
    pool.wait_event("worker_spawned", TIMEOUT, |_| true);
    assert!(
        !mounted(TRACEFS, "tracefs"),
        "xypriss mounted tracefs for the load"
    );
    assert!(pool.stop().success());

    let refused = Command::new(XYPRISS)
        .env("XYPRISS_FAULT_INJECT", "verifier")
        .args([
            "run",
            "--user",
            "root",
            "--require-ebpf",
            "--workers",
            "1",
            "--name",
            "notracefs",
            DEMO,
        ])
        .output()
        .expect("xypriss runs");
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        !mounted(TRACEFS, "tracefs"),
        "xypriss mounted tracefs for a refused load"
    );
}

/// `union bpf_attr` for `BPF_MAP_GET_FD_BY_ID`.
#[repr(C)]
struct GetFdById {
    map_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `bpf(BPF_MAP_GET_FD_BY_ID)`: the fd, or the errno.
fn map_fd_by_id(id: u32) -> Result<i32, i32> {
    const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
    let attr = GetFdById {
        map_id: id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: a live attr of the size given.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_GET_FD_BY_ID,
            &raw const attr,
            size_of::<GetFdById>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(ret as i32)
    }
}

/// `bpf(BPF_MAP_GET_FD_BY_ID)` from a process running as nobody: the errno,
/// or 0 if it got the map.
fn map_fd_by_id_as_nobody(id: u32) -> i32 {
    // SAFETY: the child only makes system calls, then exits.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            // SAFETY: plain system calls in the child.
            let code = unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(65534, 65534, 65534) != 0
                    || libc::setresuid(65534, 65534, 65534) != 0
                {
                    100
                } else {
                    map_fd_by_id(id).err().unwrap_or(0)
                }
            };
            // SAFETY: leaves the forked child at once.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            match nix::sys::wait::waitpid(child, None).expect("waitpid") {
                WaitStatus::Exited(_, code) => code,
                other => panic!("the nobody child: {other:?}"),
            }
        }
    }
}

/// The ids of the BPF maps `pid` holds.
fn map_ids(pid: u32) -> Vec<u32> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the fds")
        .filter_map(|fd| {
            let fd = fd.ok()?;
            let target = fs::read_link(fd.path()).ok()?;
            (target.to_str()? == "anon_inode:bpf-map").then_some(fd.file_name())
        })
        .filter_map(|fd| {
            let info =
                fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy())).ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))?
                .trim()
                .parse()
                .ok()
        })
        .collect()
}

/// bpffs at /sys/fs/bpf for a test, unmounted at the end if it was not there.
struct BpfFs {
    mounted_here: bool,
}

impl BpfFs {
    const PATH: &str = "/sys/fs/bpf";

    fn new() -> Self {
        let mounted_here = !mounted(Self::PATH, "bpf");
        if mounted_here {
            mount(
                Some("bpf"),
                Self::PATH,
                Some("bpf"),
                MsFlags::empty(),
                None::<&str>,
            )
            .expect("bpffs mounted");
        }
        Self { mounted_here }
    }

    fn entries() -> BTreeSet<PathBuf> {
        fs::read_dir(Self::PATH)
            .expect("bpffs")
            .filter_map(|e| Some(e.ok()?.path()))
            .collect()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = umount2(Self::PATH, MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn bpf_objects_are_neither_pinned_nor_reachable_without_privilege() {
    if !root_or_skip("bpf_objects_are_neither_pinned_nor_reachable_without_privilege") {
        return;
    }
    let bpffs = BpfFs::new();
    let pinned_before = BpfFs::entries();
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--require-ebpf",
        "--user",
        "nobody",
        "--name",
        "bpfperm",
        DEMO,
        "steps",
        "1",
    ]);
    let worker = u64_of(&pool.wait_event("worker_spawned", TIMEOUT, |_| true), "pid") as u32;
    pool.wait_log("at 1 MiB", TIMEOUT);
    assert_eq!(BpfFs::entries(), pinned_before, "xypriss pinned objects");

    // The worker (nobody) holds no BPF object: the fd it registered with
    // before exec was close-on-exec.
    let held: Vec<PathBuf> = fs::read_dir(format!("/proc/{worker}/fd"))
        .expect("the worker's fds")
        .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("anon_inode:bpf"))
        .collect();
    assert!(held.is_empty(), "the worker holds {held:?}");

    // Its maps exist, root reaches them by id, nobody does not.
    let ids = map_ids(pool.pid());
    assert!(ids.len() >= 5, "xypriss's maps: {ids:?}");
    for id in ids {
        let fd = map_fd_by_id(id).unwrap_or_else(|e| panic!("root cannot open map {id}: {e}"));
        // SAFETY: an fd the kernel just gave this process.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        assert_eq!(
            map_fd_by_id_as_nobody(id),
            libc::EPERM,
            "nobody reached map {id}"
        );
    }
    assert!(pool.stop().success());
    assert_eq!(BpfFs::entries(), pinned_before);
    drop(bpffs);
}

/// A `stress-ng --vm` hog outside the pool, in a process group of its own,
/// killed whole when dropped.
struct Hog(std::process::Child);

impl Hog {
    fn start(bytes: &str) -> Self {
        use std::os::unix::process::CommandExt as _;
        assert!(
            Path::new("/usr/bin/stress-ng").exists(),
            "stress-ng is needed (apt-get install stress-ng)"
        );
        let child = Command::new("stress-ng")
            .args(["--vm", "1", "--vm-bytes", bytes, "--vm-keep"])
            // Holds its memory once written; gone after a minute whatever happens.
            .args(["--vm-hang", "0", "--timeout", "60s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("stress-ng starts");
        Self(child)
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn mem_available() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .expect("meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .expect("MemAvailable")
}

#[test]
fn a_memory_hog_outside_the_pool_makes_it_shed_workers_before_any_oom_kill() {
    if !root_or_skip("a_memory_hog_outside_the_pool_makes_it_shed_workers_before_any_oom_kill") {
        return;
    }
    // The host's capacity, as xypriss sees it, is its memory less
    // memoryReservation: reserving all but 2 GiB of what is available now,
    // a 3 GiB hog takes the host past it, as a real shortage would, without
    // starving this shared machine.
    let reservation = mem_available().saturating_sub(2048 * MIB).to_string();
    let mut pool = Pool::start(&[
        "--workers",
        "4",
        "--min-workers",
        "1",
        "--memory-check-interval",
        "200ms",
        "--memory-reservation",
        &reservation,
        "--name",
        "hog",
        DEMO,
        "steps",
        "8",
    ]);
    pool.take_logs("at 8 MiB", 4, TIMEOUT);
    pool.collect_for(Duration::from_millis(500));
    assert!(
        of(&pool.events, "low_memory_mode").is_empty(),
        "not before the hog: {:#?}",
        pool.events
    );
    let hog = Hog::start("3G");
    let on = pool.wait_event("low_memory_mode", Duration::from_secs(60), |e| {
        e["enabled"] == true
    });
    assert!(
        on["reason"]
            .as_str()
            .is_some_and(|r| r.contains("system memory")),
        "{on}"
    );
    // Shed to the low-memory ceiling: half the pool.
    pool.wait_event("scale", TIMEOUT, |e| e["to"] == 2);
    let mut shed = BTreeSet::new();
    while shed.len() < 2 {
        let stopping = pool.wait_event("worker_stopping", TIMEOUT, |e| {
            e["reason"] == "scale_down" && !shed.contains(&u64_of(e, "pid"))
        });
        shed.insert(u64_of(&stopping, "pid"));
    }
    for pid in shed {
        pool.wait_event("worker_exited", TIMEOUT, |e| {
            e["pid"] == pid && e["expected"] == true
        });
    }
    drop(hog);
    let off = pool.wait_event("low_memory_mode", Duration::from_secs(60), |e| {
        e["enabled"] == false
    });
    assert!(
        off["reason"].as_str().is_some_and(|r| r.contains("eased")),
        "{off}"
    );
    pool.wait_event("scale", TIMEOUT, |e| e["reason"] == "low_memory_mode_ended");
    assert!(pool.stop().success());
    let events = &pool.events;
    assert!(of(events, "oom_kill").is_empty(), "{events:#?}");
    assert!(
        of(events, "worker_exited")
            .iter()
            .all(|e| e["oomKilled"] == false && e["expected"] == true),
        "{events:#?}"
    );
}
