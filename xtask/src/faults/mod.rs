//! `cargo xtask soak --faults --minutes N`: the soak under attack. Two pools
//! run side by side while:
//! - a worker of pool A floods its stdout without a newline (`cat /dev/zero`);
//! - a local user who is neither root nor the workers' user (`daemon`)
//!   floods pool A's notify socket: the kernel must refuse every datagram
//!   (the socket is the workers' user's, mode 0600); and root floods it too,
//!   as a sender the kernel lets through would: xypriss must drop each
//!   datagram on its credentials, and say so at most every 10 s;
//! - from another loopback address (127.0.0.2), more clients than one peer
//!   may hold connect to pool B's status server, pipeline requests and never
//!   read the answers: all but the per-peer cap must be refused, and those
//!   admitted closed by the server in time, while a client on 127.0.0.1
//!   asks both servers in a loop and sees no failure;
//! - halfway, the wall clock steps an hour forward for both pools, as a
//!   stale-pool check would see it (their cgroup directories are dated an
//!   hour back: the machine's clock is never touched), and a third xypriss
//!   starts in a time namespace whose boot time is a day off, and looks for
//!   stale pools.
//!
//! Every pool, every worker and the well-behaved client must survive it, with
//! nothing lost: each of the other workers' numbered lines arrives, in order
//! and whole (a lost line counts once, not every line after it: see
//! [`stderr`]), and every event is received or counted as lost. Any of
//! these that fails makes the command fail. The figures go to
//! `target/bench/soak-faults.json` and BENCHMARKS.md.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    os::unix::fs::FileTypeExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::{Value, json};

use crate::{bench::vm_rss, soak::hammer};

mod attackers;
mod stderr;

use attackers::{
    LONGEST_CONNECTION_SECS, PER_PEER, SLOW_CLIENTS, notify_flooder, slow_clients, stop_flooder,
};
use stderr::{Output, count_output};

/// Workers per pool; worker 0 of pool A floods, the others count.
const WORKERS: u32 = 4;
/// What every counting worker runs: a numbered line every 50 ms.
const COUNTER: &str = "n=0; while :; do echo \"tick $n\"; n=$((n+1)); sleep 0.05; done";

/// One pool of the fault soak, its stdout read into events, its stderr
/// (a gibibyte a second, from the flooder) counted, never held.
struct FaultPool {
    child: Child,
    events: Receiver<Value>,
    output: JoinHandle<Output>,
}

impl FaultPool {
    fn start(xypriss: &Path, name: &str, script: &str) -> Result<Self> {
        let workers = WORKERS.to_string();
        let mut child = Command::new(xypriss)
            .args(["run", "--user", "nobody", "--name", name])
            .args(["--workers", &workers, "--status-addr", "127.0.0.1:0"])
            .args(["/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting xypriss")?;
        let (tx, events) = mpsc::channel();
        let stdout = child.stdout.take().context("stdout")?;
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str(&line)
                    && tx.send(event).is_err()
                {
                    return;
                }
            }
        });
        let stderr = child.stderr.take().context("stderr")?;
        let output = thread::spawn(move || count_output(stderr));
        Ok(Self {
            child,
            events,
            output,
        })
    }

    fn wait_event(&self, name: &str, timeout: Duration, seen: &mut Vec<Value>) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        while let Ok(event) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            seen.push(event.clone());
            if event["event"] == name {
                return Ok(event);
            }
        }
        bail!("no {name} within {timeout:?}")
    }

    fn drain(&self, seen: &mut Vec<Value>) {
        seen.extend(self.events.try_iter());
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().is_ok_and(|status| status.is_none())
    }

    /// SIGINT; every remaining event, and what stderr carried.
    fn stop(mut self, seen: &mut Vec<Value>) -> Output {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        while let Ok(event) = self.events.recv_timeout(Duration::from_secs(15)) {
            let last = event["event"] == "cluster_stopped";
            seen.push(event);
            if last {
                break;
            }
        }
        let _ = self.child.wait();
        self.output.join().unwrap_or_default()
    }
}

/// The pool's notify socket, named after its name and pid.
fn notify_socket(name: &str, pid: u32) -> PathBuf {
    PathBuf::from(format!("/run/xypriss/{name}.{pid}.notify"))
}

pub fn run(root: &Path, minutes: f64) -> Result<()> {
    let release = root.join("target/release");
    let xypriss = release.join("xypriss");
    let demo = release.join("xypriss-demo");
    let flooding =
        format!("if [ \"$XYPRISS_WORKER_ID\" = 0 ]; then exec cat /dev/zero; fi; {COUNTER}");
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    let a = FaultPool::start(&xypriss, "faults-a", &flooding)?;
    let b = FaultPool::start(&xypriss, "faults-b", COUNTER)?;
    let server = |pool: &FaultPool, seen: &mut Vec<Value>| -> Result<SocketAddr> {
        let event = pool.wait_event("status_server", Duration::from_secs(30), seen)?;
        Ok(event["address"].as_str().context("address")?.parse()?)
    };
    let (server_a, server_b) = (server(&a, &mut seen_a)?, server(&b, &mut seen_b)?);
    let pool_dir = |pool: &FaultPool, seen: &mut Vec<Value>| -> Result<PathBuf> {
        let event = seen
            .iter()
            .find(|e| e["event"] == "cgroup")
            .cloned()
            .map_or_else(
                || pool.wait_event("cgroup", Duration::from_secs(30), seen),
                Ok,
            )?;
        Ok(event["path"].as_str().context("no pool cgroup")?.into())
    };
    let (dir_a, dir_b) = (pool_dir(&a, &mut seen_a)?, pool_dir(&b, &mut seen_b)?);
    thread::sleep(Duration::from_secs(2));

    let stop = Arc::new(AtomicBool::new(false));
    let socket = notify_socket("faults-a", a.child.id());
    if !fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
        bail!("pool A's notify socket is not at {}", socket.display());
    }
    // uid 1, `daemon`: neither root nor the workers' `nobody`.
    let flooding = Instant::now();
    let flooders = [
        notify_flooder(&socket, Some(1))?,
        notify_flooder(&socket, None)?,
    ];
    let slow = slow_clients(server_b, Arc::clone(&stop));
    let hammers = [server_a, server_b].map(|address| {
        let stop = Arc::clone(&stop);
        thread::spawn(move || hammer(address, &stop))
    });

    let run_for = Duration::from_secs_f64(minutes * 60.0);
    let started = Instant::now();
    let mut rss = Vec::new();
    let mut stepped = None;
    let (mut a, mut b) = (a, b);
    while started.elapsed() < run_for {
        a.drain(&mut seen_a);
        b.drain(&mut seen_b);
        rss.push(vm_rss(a.child.id()).unwrap_or(0) as f64 / (1 << 20) as f64);
        if stepped.is_none() && started.elapsed() >= run_for / 2 {
            stepped = Some(clock_step(&xypriss, &demo, &[&dir_a, &dir_b])?);
        }
        thread::sleep(Duration::from_secs(1));
    }
    let alive = (a.running(), b.running());
    let [daemon, root_flood] = flooders.map(stop_flooder);
    let flooded_for = flooding.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let requests = hammers.map(|h| h.join().unwrap_or_default());
    let slow = slow.join().unwrap_or_default();
    let output_a = a.stop(&mut seen_a);
    let output_b = b.stop(&mut seen_b);

    let result = json!({
        "minutes": minutes,
        "workersPerPool": WORKERS,
        "poolsAliveAtEnd": [alive.0, alive.1],
        "poolA": summary(&seen_a, &output_a),
        "poolB": summary(&seen_b, &output_b),
        "poolARssMiB": {
            "first": rss.first(),
            "last": rss.last(),
            "max": rss.iter().copied().fold(f64::NAN, f64::max),
        },
        "notifyFlood": {
            "asDaemon": daemon,
            "asRoot": root_flood,
            "seconds": flooded_for,
            "xyprissWarnings": output_a.notify_warnings,
            "xyprissWarnedDropped": output_a.notify_dropped,
        },
        "statusServers": requests,
        "slowClients": slow,
        "clockStep": stepped,
    });
    let out = root.join("target/bench");
    fs::create_dir_all(&out)?;
    fs::write(
        out.join("soak-faults.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    println!("→ {}", out.join("soak-faults.json").display());
    let mut failures = Vec::new();
    if !(alive.0 && alive.1) {
        failures.push("a pool did not survive".to_owned());
    }
    for pool in ["poolA", "poolB"] {
        let p = &result[pool];
        if p["workerExits"] != 0 {
            failures.push(format!("{pool}: workers exited: {}", p["workerExits"]));
        }
        if p["eventsUnaccounted"] != 0 {
            failures.push(format!(
                "{pool}: events unaccounted: {}",
                p["eventsUnaccounted"]
            ));
        }
        for (key, what) in [
            ("ticksMissing", "numbered lines lost"),
            ("ticksBackwards", "numbered lines out of order"),
            ("linesGarbled", "lines written into others"),
        ] {
            if p[key] != 0 {
                failures.push(format!("{pool}: {what}: {}", p[key]));
            }
        }
    }
    for (pool, workers) in [("poolA", WORKERS - 1), ("poolB", WORKERS)] {
        let p = &result[pool];
        if p["countingWorkers"] != workers || p["ticks"] == 0 {
            failures.push(format!(
                "{pool}: numbered lines of {} workers, {} lines; {workers} workers expected",
                p["countingWorkers"], p["ticks"]
            ));
        }
    }
    let notify = &result["notifyFlood"];
    let refused = notify["asDaemon"]["refused"]["EACCES"]
        .as_u64()
        .unwrap_or(0);
    if notify["asDaemon"]["sent"] != 0
        || refused == 0
        || notify["asDaemon"]["refused"]
            .as_object()
            .is_none_or(|r| r.len() != 1)
    {
        failures.push(format!(
            "daemon's notify flood was not refused by the kernel (EACCES alone): {}",
            notify["asDaemon"]
        ));
    }
    let root_sent = notify["asRoot"]["sent"].as_u64().unwrap_or(0);
    // xypriss warns at once, then at most every 10 s (one more: the two
    // clocks' edges need not agree).
    let warnings_allowed = (flooded_for / 10.0).floor() as u64 + 2;
    let warnings = output_a.notify_warnings;
    if root_sent == 0
        || warnings == 0
        || warnings > warnings_allowed
        || output_a.notify_dropped > root_sent
    {
        failures.push(format!(
            "root's notify flood: {root_sent} sent, {warnings} warnings (at most {warnings_allowed}) for {} dropped",
            output_a.notify_dropped
        ));
    }
    let slow = &result["slowClients"];
    let closed_in_time = slow["closedAfterS"]["max"]
        .as_f64()
        .is_some_and(|max| max <= LONGEST_CONNECTION_SECS);
    if slow["admitted"] != PER_PEER
        || slow["refused429"] != SLOW_CLIENTS as u64 - PER_PEER
        || (run_for.as_secs_f64() > LONGEST_CONNECTION_SECS
            && (slow["closedByServer"] != PER_PEER
                || !closed_in_time
                || slow["servedAgainAfter"] != 200))
    {
        failures.push(format!("slow clients: {slow}"));
    }
    for (server, r) in ["A", "B"].iter().zip(&requests) {
        if r["failed"] != 0 || r["ok"] == 0 {
            failures.push(format!("status server {server}: {r}"));
        }
    }
    match &stepped {
        None => failures.push("no clock step: the run was too short".to_owned()),
        Some(step) if step["thirdPoolRan"] != true => {
            failures.push("the third pool, in its time namespace, did not run".to_owned());
        }
        Some(step) if step["poolsTakenForStale"] != 0 || step["poolDirsIntact"] != 2 => {
            failures.push(format!("the clock step made a live pool stale: {step}"));
        }
        _ => {}
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// A pool's events and output, summed up.
fn summary(events: &[Value], output: &Output) -> Value {
    // Exits xypriss did not ask for: a stop at the end is expected.
    let unexpected_exits = events
        .iter()
        .filter(|e| e["event"] == "worker_exited" && e["expected"] != true)
        .count();
    let lost: u64 = events
        .iter()
        .filter(|e| e["event"] == "events_lost" && e["stage"] == "output")
        .filter_map(|e| e["count"].as_u64())
        .sum();
    let emitted = events
        .iter()
        .find(|e| e["event"] == "cluster_stopped")
        .and_then(|e| e["eventsEmitted"].as_u64())
        .unwrap_or(0);
    // cluster_stopped itself is not counted in eventsEmitted.
    let received = events.len() as u64 - 1;
    let ticks: u64 = output.ticks.values().map(|t| t.read).sum();
    let missing: u64 = output.ticks.values().map(|t| t.missing).sum();
    let backwards: u64 = output.ticks.values().map(|t| t.backwards).sum();
    json!({
        "workerExits": unexpected_exits,
        "eventsEmitted": emitted,
        "eventsReceived": received,
        "eventsLostAtOutput": lost,
        "eventsUnaccounted": emitted as i64 - received as i64 - lost as i64,
        "stderrMiB": output.bytes as f64 / (1 << 20) as f64,
        "linesCut": output.cuts,
        "ticks": ticks,
        "ticksMissing": missing,
        "ticksBackwards": backwards,
        "linesGarbled": output.garbled,
        "linesDroppedByXypriss": output.dropped,
        "firstAnomalies": output.anomalies,
        "countingWorkers": output.ticks.len(),
    })
}

/// Dates `pools` an hour back (a forward clock step, as a start-time check
/// would see it), then runs a third xypriss for a few seconds in a time
/// namespace whose boot time is a day off: it looks for stale pools at
/// start, and its watchdog at exit. Returns which pools it took for stale.
fn clock_step(xypriss: &Path, demo: &Path, pools: &[&Path]) -> Result<Value> {
    for pool in pools {
        let status = Command::new("touch")
            .args(["-d", "1 hour ago"])
            .arg(pool)
            .status()?;
        if !status.success() {
            bail!("touch {} failed", pool.display());
        }
    }
    let output = Command::new("unshare")
        .args([
            "--time",
            "--fork",
            "--boottime",
            "86400",
            "timeout",
            "-s",
            "INT",
            "5",
        ])
        .arg(xypriss)
        .args([
            "run",
            "--user",
            "nobody",
            "--name",
            "faults-c",
            "--workers",
            "1",
        ])
        .arg(demo)
        .args(["steps", "1"])
        .stdin(Stdio::null())
        .output()
        .context("the third xypriss")?;
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let started = events.iter().any(|e| e["event"] == "worker_spawned");
    let taken: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "stale_cgroup_removed")
        .filter_map(|e| e["path"].as_str().map(str::to_owned))
        .filter(|path| pools.iter().any(|pool| Path::new(path) == *pool))
        .collect();
    thread::sleep(Duration::from_secs(1));
    let intact = pools.iter().filter(|pool| pool.is_dir()).count();
    Ok(json!({
        "poolDirsIntact": intact,
        "steppedBySecs": 3600,
        "thirdPoolBoottimeOffsetSecs": 86400,
        "thirdPoolRan": started,
        "poolsTakenForStale": taken.len(),
        "taken": taken,
    }))
}
