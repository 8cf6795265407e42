//! What the integration tests share: running a real `xypriss run` pool,
//! reading its NDJSON stdout and its stderr as they come, and the root check.
//!
//! Tests that need root skip outside CI only; with `CI` set they fail.
//!
//! Every wait here is multiplied by `XYPRISS_TEST_TIME_SCALE` (1 when unset):
//! `cargo xtask vmtest` runs these tests in emulated VMs, some ten times
//! slower than the host, and sets it there. It makes waits longer, never
//! shorter, so a test that passes unscaled passes scaled.

#![allow(
    dead_code,
    reason = "each test binary uses its own part of the support module"
)]

use std::{
    fs,
    io::{BufRead as _, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const XYPRISS: &str = env!("CARGO_BIN_EXE_xypriss");
pub const DEMO: &str = env!("CARGO_BIN_EXE_xypriss-demo");
pub const MIB: u64 = 1 << 20;

/// `wait` multiplied by `XYPRISS_TEST_TIME_SCALE`, a whole number ≥ 1.
pub fn scaled(wait: Duration) -> Duration {
    static SCALE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let scale = *SCALE.get_or_init(|| match std::env::var("XYPRISS_TEST_TIME_SCALE") {
        Ok(text) => text
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .unwrap_or_else(|| panic!("XYPRISS_TEST_TIME_SCALE={text:?}: a whole number ≥ 1")),
        Err(_) => 1,
    });
    wait * scale
}

/// True when the test may go on: running as root. Outside CI, a test without
/// root is skipped with a note; in CI it fails.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root, and CI is set: it may not skip");
    }
    eprintln!("skipping {test}: needs root");
    false
}

/// A running `xypriss run` and what it has printed so far.
pub struct Pool {
    child: Child,
    stdout: Receiver<Value>,
    stderr: Receiver<String>,
    pub events: Vec<Value>,
    pub log: Vec<String>,
}

/// `run`'s ARGS with a `--name` of their own if they have none: tests run
/// side by side, and two pools of one name cannot (the control socket). As
/// root, without a `--user` of their own, they say `--user root`: root's
/// workers run as the sudo user or not at all unless asked, and the tests'
/// workers write where only root may.
pub fn named(args: &[&str]) -> Vec<String> {
    static POOLS: AtomicU32 = AtomicU32::new(0);
    let mut named: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    if nix::unistd::geteuid().is_root() && !args.contains(&"--user") {
        named.splice(0..0, ["--user".into(), "root".into()]);
    }
    if !args.contains(&"--name") {
        let n = POOLS.fetch_add(1, Ordering::Relaxed);
        named.splice(
            0..0,
            ["--name".into(), format!("t{}-{n}", std::process::id())],
        );
    }
    named
}

impl Pool {
    /// Starts `xypriss run ARGS…`, named by [`named`].
    pub fn start(args: &[&str]) -> Self {
        Self::start_command(Command::new(XYPRISS).arg("run").args(named(args)))
    }

    pub fn start_command(cmd: &mut Command) -> Self {
        Self::start_gated(cmd, None)
    }

    /// Starts `xypriss run ARGS…` with nobody reading its stdout until the
    /// returned sender sends (or is dropped): a stalled consumer.
    pub fn start_paused(args: &[&str]) -> (Self, mpsc::Sender<()>) {
        let (resume, gate) = mpsc::channel();
        let pool = Self::start_gated(
            Command::new(XYPRISS).arg("run").args(named(args)),
            Some(gate),
        );
        (pool, resume)
    }

    fn start_gated(cmd: &mut Command, gate: Option<Receiver<()>>) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("xypriss starts");
        let (out_tx, stdout) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            if let Some(gate) = gate {
                let _ = gate.recv();
            }
            for line in BufReader::new(out).lines() {
                let line = line.expect("stdout is UTF-8");
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                if out_tx.send(value).is_err() {
                    return;
                }
            }
        });
        let (err_tx, stderr) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if err_tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            stdout,
            stderr,
            events: Vec::new(),
            log: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads events until one matches `pred`, and returns it.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let timeout = scaled(timeout);
        let deadline = Instant::now() + timeout;
        if let Some(found) = self.events.iter().find(|e| pred(e)) {
            return found.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(event) => {
                    let hit = pred(&event);
                    self.events.push(event.clone());
                    if hit {
                        return event;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.drain_log();
                    panic!(
                        "no {what} within {timeout:?}; events: {:#?}\nstderr: {:#?}",
                        self.events, self.log
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.drain_log();
                    panic!(
                        "xypriss closed stdout before {what}; events: {:#?}\nstderr: {:#?}",
                        self.events, self.log
                    )
                }
            }
        }
    }

    /// Waits for an event named `name` matching `pred`.
    pub fn wait_event(
        &mut self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_for(name, timeout, |e| e["event"] == name && pred(e))
    }

    /// Collects whatever events arrive within `period`.
    pub fn collect_for(&mut self, period: Duration) {
        let deadline = Instant::now() + scaled(period);
        while let Ok(event) = self
            .stdout
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.events.push(event);
        }
    }

    /// Waits for a stderr line containing `text` (workers' output is forwarded there).
    pub fn wait_log(&mut self, text: &str, timeout: Duration) -> String {
        self.wait_for_log(timeout, |line| line.contains(text))
    }

    /// Waits for `n` stderr lines containing `text` (one per worker, say),
    /// and takes them out of the log, so that the next wait sees new ones.
    pub fn take_logs(&mut self, text: &str, n: usize, timeout: Duration) -> Vec<String> {
        (0..n)
            .map(|_| {
                let line = self.wait_log(text, timeout);
                self.log.retain(|l| *l != line);
                line
            })
            .collect()
    }

    /// The pids of workers 0 to `n` - 1, from their first `worker_spawned`.
    pub fn worker_pids(&mut self, n: u64, timeout: Duration) -> Vec<u32> {
        (0..n)
            .map(|id| {
                let spawned = self.wait_event("worker_spawned", timeout, |e| e["workerId"] == id);
                u64_of(&spawned, "pid") as u32
            })
            .collect()
    }

    /// Waits for a stderr line matching `pred`.
    pub fn wait_for_log(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let timeout = scaled(timeout);
        let deadline = Instant::now() + timeout;
        if let Some(line) = self.log.iter().find(|l| pred(l)) {
            return line.clone();
        }
        loop {
            match self
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.log.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no matching stderr line within {timeout:?}; stderr: {:#?}",
                    self.log
                ),
            }
        }
    }

    fn drain_log(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            self.log.push(line);
        }
    }

    /// The latest `memory_sample` of worker `id` seen so far.
    pub fn latest_sample(&self, id: u64) -> Option<&Value> {
        self.events
            .iter()
            .rev()
            .find(|e| e["event"] == "memory_sample" && e["workerId"] == id)
    }

    /// SIGINT, then the exit status and every remaining event.
    pub fn stop(&mut self) -> ExitStatus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        self.wait()
    }

    /// Waits for xypriss to exit (at most 20 s) and reads every remaining event.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + scaled(Duration::from_secs(20));
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "xypriss did not exit within {:?}",
                scaled(Duration::from_secs(20))
            );
            thread::sleep(Duration::from_millis(20));
        };
        while let Ok(event) = self.stdout.recv_timeout(scaled(Duration::from_secs(2))) {
            self.events.push(event);
        }
        // Its last words (an error, say) may still be on their way from the
        // reader thread: read stderr to its end, not only what has come.
        while let Ok(line) = self.stderr.recv_timeout(scaled(Duration::from_secs(2))) {
            self.log.push(line);
        }
        status
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/proc/<pid>/status` fields in bytes (VmRSS, RssAnon, …).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).expect("process alive");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no {field}"))
}

/// Whether `pid` runs. A zombie is dead for our purposes: it runs nothing
/// and holds no memory.
pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// The pid in the `daemon PID` line of `xypriss-demo daemon`.
pub fn daemon_pid(line: &str) -> u32 {
    line.split_whitespace()
        .skip_while(|w| *w != "daemon")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no daemon pid in {line}"))
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
        .expect("signal delivered");
}

pub fn u64_of(event: &Value, field: &str) -> u64 {
    event[field]
        .as_u64()
        .unwrap_or_else(|| panic!("`{field}` is not a number in {event}"))
}

/// The events named `name`, in order.
pub fn of<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// `TCP_ESTABLISHED` in /proc/net/tcp's `st` column.
pub const TCP_ESTABLISHED: u8 = 1;

/// The state of the server's end (local port `server`) of the IPv4
/// connection from port `client`, as /proc/net/tcp says it; `None` once the
/// kernel dropped it.
pub fn server_side_state(server: u16, client: u16) -> Option<u8> {
    let table = fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
        (port(fields[1]) == Some(server) && port(fields[2]) == Some(client))
            .then(|| u8::from_str_radix(fields[3], 16).expect("a hex state"))
    })
}
