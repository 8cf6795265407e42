//! `cargo xtask soak --faults --minutes N`: the soak under attack. Two pools
//! run side by side while:
//! - a worker of pool A floods its stdout without a newline (`cat /dev/zero`);
//! - a local user who is neither root nor the workers' user (`daemon`)
//!   floods pool A's notify socket;
//! - an HTTP client pipelines requests to pool B's status server and never
//!   reads the answers, while another client asks both servers in a loop;
//! - halfway, the wall clock steps an hour forward for both pools, as a
//!   stale-pool check would see it (their cgroup directories are dated an
//!   hour back: the machine's clock is never touched), and a third xypriss
//!   starts in a time namespace whose boot time is a day off, and looks for
//!   stale pools.
//!
//! Every pool, every worker and the well-behaved client must survive it, with
//! nothing lost: each of the other workers' numbered lines arrives, in order,
//! and every event is received or counted as lost. The figures go to
//! `target/bench/soak-faults.json` and BENCHMARKS.md.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
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

/// What a pool's stderr carried.
#[derive(Debug, Default)]
struct Output {
    bytes: u64,
    /// Pieces of the flooder's lines cut at the cap.
    cuts: u64,
    /// Each counting worker's ticks: how many, and ticks missing or out of order.
    ticks: BTreeMap<String, (u64, u64)>,
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

/// Reads a pool's stderr to its end: xypriss cuts lines at 64 KiB, so a line
/// read here is bounded too.
fn count_output(stderr: impl std::io::Read) -> Output {
    let mut output = Output::default();
    let mut reader = BufReader::with_capacity(1 << 20, stderr);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
        output.bytes += line.len() as u64;
        if line.ends_with(b"continued]\n") {
            output.cuts += 1;
        } else if let Some(at) = line.windows(7).position(|w| w == b"] tick ") {
            let head = String::from_utf8_lossy(&line[..at]);
            // `[worker 1.1 pid 4242`: worker and generation.
            let worker = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
            let n: u64 = String::from_utf8_lossy(&line[at + 7..])
                .trim()
                .parse()
                .unwrap_or(u64::MAX);
            let (count, gaps) = output.ticks.entry(worker).or_default();
            if n != *count {
                *gaps += 1;
            }
            *count += 1;
        }
        line.clear();
    }
    output
}

/// `daemon` (uid 1: a local user who is not root, and not the workers'
/// `nobody`) sending READY=1 to `socket` as fast as it can until killed;
/// prints how many datagrams went and how many the kernel refused.
fn notify_flooder(socket: &Path) -> Result<Child> {
    Command::new("setpriv")
        .args([
            "--reuid=1",
            "--regid=1",
            "--clear-groups",
            "--inh-caps=-all",
            "/usr/bin/python3",
            "-c",
            "import signal, socket, sys\n\
             sent = refused = 0\n\
             def done(*_):\n\
             \x20   print(sent, refused, flush=True); sys.exit(0)\n\
             signal.signal(signal.SIGTERM, done)\n\
             s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
             while True:\n\
             \x20   try:\n\
             \x20       s.sendto(b'READY=1\\nSTATUS=flood', sys.argv[1]); sent += 1\n\
             \x20   except OSError:\n\
             \x20       refused += 1\n",
        ])
        .arg(socket)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the notify flooder")
}

/// A client that pipelines GETs and never reads; returns, at `stop`, how
/// many requests it wrote and whether the server had closed on it.
fn slow_reader(address: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<Value> {
    thread::spawn(move || {
        let Ok(mut stream) = TcpStream::connect(address) else {
            return json!({"connected": false});
        };
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n");
        let (mut written, mut write_error) = (0u64, None);
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match stream.write_all(request.as_bytes()) {
                Ok(()) => written += 1,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) => {
                    write_error.get_or_insert((started.elapsed().as_secs_f64(), err.to_string()));
                    break;
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        json!({
            "requestsWritten": written,
            "closedByServerAfterS": write_error.as_ref().map(|(at, _)| at),
            "error": write_error.map(|(_, err)| err),
        })
    })
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
    let mut flooder = notify_flooder(&notify_socket("faults-a", a.child.id()))?;
    let slow = slow_reader(server_b, Arc::clone(&stop));
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
    let _ = kill(Pid::from_raw(flooder.id() as i32), Signal::SIGTERM);
    let mut counts = String::new();
    if let Some(mut out) = flooder.stdout.take() {
        let _ = out.read_to_string(&mut counts);
    }
    let _ = flooder.wait();
    stop.store(true, Ordering::Relaxed);
    let requests = hammers.map(|h| h.join().unwrap_or_default());
    let slow = slow.join().unwrap_or_default();
    let output_a = a.stop(&mut seen_a);
    let output_b = b.stop(&mut seen_b);

    let mut notify = counts
        .split_whitespace()
        .map(|n| n.parse::<u64>().unwrap_or(0));
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
        "notifyFlood": {"sent": notify.next(), "refused": notify.next()},
        "statusServers": requests,
        "slowReader": slow,
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
        if p["tickGaps"] != 0 {
            failures.push(format!("{pool}: worker lines lost: {}", p["tickGaps"]));
        }
    }
    for (server, r) in ["A", "B"].iter().zip(&requests) {
        if r["failed"] != 0 || r["ok"] == 0 {
            failures.push(format!("status server {server}: {r}"));
        }
    }
    match &stepped {
        Some(step) if step["thirdPoolRan"] != true => {
            failures.push("the third pool, in its time namespace, did not run".to_owned());
        }
        Some(step) if step["poolsTakenForStale"] != 0 => {
            failures.push("the clock step made a live pool stale".to_owned());
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
    let ticks: u64 = output.ticks.values().map(|(n, _)| n).sum();
    let gaps: u64 = output.ticks.values().map(|(_, g)| g).sum();
    json!({
        "workerExits": unexpected_exits,
        "eventsEmitted": emitted,
        "eventsReceived": received,
        "eventsLostAtOutput": lost,
        "eventsUnaccounted": emitted as i64 - received as i64 - lost as i64,
        "stderrMiB": output.bytes as f64 / (1 << 20) as f64,
        "linesCut": output.cuts,
        "ticks": ticks,
        "tickGaps": gaps,
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
    Ok(json!({
        "steppedBySecs": 3600,
        "thirdPoolBoottimeOffsetSecs": 86400,
        "thirdPoolRan": started,
        "poolsTakenForStale": taken.len(),
        "taken": taken,
    }))
}
