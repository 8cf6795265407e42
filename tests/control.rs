//! The control socket and the commands that use it, against real pools: each
//! test starts `xypriss run --name <unique>` and drives it with `xypriss
//! status`, `scale`, `restart`, `low-memory`, `events`, `recommend` and
//! `top` (through tmux, as a person would), checking what the commands print
//! against what the pool's own NDJSON stdout says.
//!
//! Over 600 lines: every file in tests/ is a test binary of its own, linked
//! with the whole crate, so the control socket's tests stay in one.

mod support;

use std::{
    fs,
    io::{BufRead as _, BufReader},
    ops::{Deref, DerefMut},
    os::unix::{
        fs::{MetadataExt as _, PermissionsExt as _},
        net::UnixListener,
    },
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{DEMO, Pool, XYPRISS, of, root_or_skip, u64_of};

const WAIT: Duration = Duration::from_secs(20);

/// A pool name of this test's own.
fn name(test: &str) -> String {
    format!("ctl-{test}-{}", std::process::id())
}

fn socket(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/xypriss/{name}.sock"))
}

/// A pool that is stopped gracefully when the test ends (passed or not), so
/// that it removes its socket; if it lingers, the [`Pool`] kills it.
struct Running {
    pool: Pool,
    name: String,
}

impl Deref for Running {
    type Target = Pool;

    fn deref(&self) -> &Pool {
        &self.pool
    }
}

impl DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Pool {
        &mut self.pool
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pool.pid() as i32);
        // Gone already is fine.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while socket(&self.name).exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A pool of two demo workers (at most four), both ready, both measured.
fn pool(name: &str) -> Running {
    let mut pool = Pool::start(&[
        "--name",
        name,
        "--workers",
        "2",
        "--max-workers",
        "4",
        DEMO,
        "oscillate",
        "8",
        "24",
    ]);
    for id in 0..2u64 {
        pool.wait_event("worker_ready", WAIT, |e| e["workerId"] == id);
        pool.wait_event("memory_sample", WAIT, |e| e["workerId"] == id);
    }
    Running {
        pool,
        name: name.to_owned(),
    }
}

/// `xypriss ARGS…`, to its end.
fn xypriss(args: &[&str]) -> Output {
    Command::new(XYPRISS)
        .args(args)
        .output()
        .expect("xypriss runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `xypriss ARGS…`, which must succeed; its stdout.
#[track_caller]
fn ok(args: &[&str]) -> String {
    let out = xypriss(args);
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        stderr(&out)
    );
    stdout(&out)
}

/// `xypriss ARGS…`, which must fail; its stderr.
#[track_caller]
fn refused(args: &[&str]) -> String {
    let out = xypriss(args);
    assert!(
        !out.status.success(),
        "{args:?} succeeded: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    err
}

/// `xypriss status --json --name NAME`.
#[track_caller]
fn status(name: &str) -> Value {
    let text = ok(&["status", "--json", "--name", name]);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {text}"))
}

/// Polls the status until `pred` holds.
#[track_caller]
fn status_until(name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = status(name);
        if pred(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "no status with {what}: {status:#}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_prints_a_table_and_json() {
    if !root_or_skip("status_prints_a_table_and_json") {
        return;
    }
    let name = name("status");
    let mut pool = pool(&name);
    let text = ok(&["status", "--name", &name]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!("pool {name}  pid {}", pool.pid())),
        "{text}"
    );
    let header = lines
        .iter()
        .position(|l| l.starts_with("ID  PID"))
        .unwrap_or_else(|| panic!("no table header: {text}"));
    for heading in [
        "HEALTH", "RSS", "ANON", "SWAP", "FAULTS/S", "RESTARTS", "UPTIME", "LEAK",
    ] {
        assert!(lines[header].contains(heading), "{heading}: {text}");
    }
    let rows = &lines[header + 1..header + 3];
    for (id, row) in rows.iter().enumerate() {
        assert!(row.starts_with(&format!("{id} ")), "{text}");
        assert!(row.contains(" ready ") && row.contains(" MiB"), "{text}");
    }

    let json = status(&name);
    assert_eq!(json["pool"], name.as_str());
    assert_eq!(json["pid"], pool.pid());
    let workers = json["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{json:#}");
    for w in workers {
        assert!(u64_of(w, "rssBytes") > 0, "{w}");
        assert_eq!(w["status"], "ready");
    }
    assert!(pool.stop().success());
    assert!(!socket(&name).exists(), "the socket is removed at exit");
}

#[test]
fn scale_changes_the_pool_within_its_bounds() {
    if !root_or_skip("scale_changes_the_pool_within_its_bounds") {
        return;
    }
    let name = name("scale");
    let mut pool = pool(&name);
    assert!(ok(&["scale", "3", "--name", &name]).contains("2 → 3 workers"));
    pool.wait_event("scale", WAIT, |e| e["from"] == 2 && e["to"] == 3);
    pool.wait_event("worker_ready", WAIT, |e| e["workerId"] == 2);
    let three = status(&name);
    assert_eq!(three["workersDesired"], 3);
    assert_eq!(three["workers"].as_array().unwrap().len(), 3);

    assert!(ok(&["scale", "1", "--name", &name]).contains("3 → 1 workers"));
    pool.wait_event("scale", WAIT, |e| e["from"] == 3 && e["to"] == 1);
    status_until(&name, "one worker left", |s| {
        s["workersDesired"] == 1 && s["workers"].as_array().unwrap().len() == 1
    });

    let err = refused(&["scale", "9", "--name", &name]);
    assert!(
        err.contains("cannot scale to 9 workers: the pool takes 1 to 4"),
        "{err}"
    );
    assert_eq!(
        status(&name)["workersDesired"],
        1,
        "a refused scale changes nothing"
    );
}

#[test]
fn restart_replaces_one_worker_or_all() {
    if !root_or_skip("restart_replaces_one_worker_or_all") {
        return;
    }
    let name = name("restart");
    let mut pool = pool(&name);
    assert!(ok(&["restart", "0", "--name", &name]).contains("restarting worker 0"));
    pool.wait_event("worker_ready", WAIT, |e| {
        e["workerId"] == 0 && e["generation"] == 2
    });
    pool.wait_event("worker_stopping", WAIT, |e| {
        e["workerId"] == 0 && e["generation"] == 1 && e["reason"] == "replaced"
    });
    let after = status_until(&name, "worker 0 replaced", |s| {
        s["workers"].as_array().unwrap().len() == 2
    });
    let generation = |s: &Value, id: u64| {
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == id)
            .map(|w| u64_of(w, "generation"))
    };
    assert_eq!(generation(&after, 0), Some(2));
    assert_eq!(generation(&after, 1), Some(1));

    assert!(ok(&["restart", "all", "--name", &name]).contains("restarting workers 0, 1"));
    pool.wait_event("worker_ready", WAIT, |e| {
        e["workerId"] == 0 && e["generation"] == 3
    });
    pool.wait_event("worker_ready", WAIT, |e| {
        e["workerId"] == 1 && e["generation"] == 2
    });

    let err = refused(&["restart", "7", "--name", &name]);
    assert!(err.contains("no worker 7"), "{err}");
}

#[test]
fn low_memory_mode_turns_on_and_off() {
    if !root_or_skip("low_memory_mode_turns_on_and_off") {
        return;
    }
    let name = name("lowmem");
    let mut pool = pool(&name);
    assert!(ok(&["low-memory", "on", "--name", &name]).contains("low-memory mode on"));
    pool.wait_event("low_memory_mode", WAIT, |e| e["enabled"] == true);
    assert_eq!(status(&name)["lowMemoryMode"], true);
    assert!(ok(&["low-memory", "on", "--name", &name]).contains("was already on"));
    assert!(ok(&["low-memory", "off", "--name", &name]).contains("low-memory mode off"));
    pool.wait_event("low_memory_mode", WAIT, |e| e["enabled"] == false);
    assert_eq!(status(&name)["lowMemoryMode"], false);
    assert_eq!(of(&pool.events, "low_memory_mode").len(), 2);
}

#[test]
fn events_follow_the_stream_to_its_end() {
    if !root_or_skip("events_follow_the_stream_to_its_end") {
        return;
    }
    let name = name("events");
    let mut pool = pool(&name);
    let mut follower = Command::new(XYPRISS)
        .args(["events", "--name", &name])
        .stdout(Stdio::piped())
        .spawn()
        .expect("xypriss events runs");
    let (tx, lines) = mpsc::channel();
    let out = follower.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen: Vec<Value> = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !seen.iter().any(|e| e["event"] == "memory_sample") {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no memory_sample followed: {seen:#?}"));
        seen.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
    }
    // Something the follower sees because it asked for it.
    ok(&["scale", "3", "--name", &name]);
    while !seen.iter().any(|e| e["event"] == "scale") {
        let line = lines.recv_timeout(WAIT).expect("the scale is followed");
        seen.push(serde_json::from_str(&line).unwrap());
    }
    assert!(pool.stop().success());
    let rest: Vec<String> = lines.iter().collect();
    let last: Value = serde_json::from_str(rest.last().expect("lines until the end")).unwrap();
    assert_eq!(last["event"], "cluster_stopped", "{rest:#?}");
    assert!(
        follower.wait().unwrap().success(),
        "events ends with the pool"
    );
}

#[test]
fn recommend_explains_the_worker_count() {
    if !root_or_skip("recommend_explains_the_worker_count") {
        return;
    }
    let name = name("recommend");
    let _pool = pool(&name);
    let text = ok(&["recommend", "--name", &name]);
    assert!(text.contains("optimal worker count for memory: "), "{text}");
    assert!(
        text.contains("(p95 of the 2 workers' resident memory)"),
        "{text}"
    );
    assert!(
        text.contains("within minWorkers 1 and maxWorkers 4: "),
        "{text}"
    );
    assert!(text.contains("recommendations:"), "{text}");
    let json: Value = serde_json::from_str(&ok(&["recommend", "--json", "--name", &name])).unwrap();
    let optimal = u64_of(&json["memory"], "optimalWorkerCount");
    assert!((1..=4).contains(&optimal), "{json:#}");
    assert!(u64_of(&json, "workerRssP95Bytes") > 0, "{json:#}");
    assert!(text.contains(&format!("optimal worker count for memory: {optimal}")));
}

#[test]
fn recommend_can_try_an_app_in_a_pool_of_its_own() {
    if !root_or_skip("recommend_can_try_an_app_in_a_pool_of_its_own") {
        return;
    }
    // As `sudo xypriss recommend` is run: the trial's workers run as the
    // user behind sudo (a root xypriss runs none as root unasked).
    let out = Command::new(XYPRISS)
        .args(["recommend", "--json", "--trial", "3s", "--workers", "2"])
        .args(["--app", DEMO, "steps", "40"])
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65534")
        .output()
        .expect("xypriss runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let json: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["workers"], 2, "{json:#}");
    assert!(
        u64_of(&json, "workerRssP95Bytes") >= 40 * 1024 * 1024,
        "{json:#}"
    );
    let pool = json["pool"].as_str().unwrap().to_owned();
    assert!(pool.starts_with("recommend-"), "{json:#}");
    // The trial pool is gone, socket and all.
    assert!(!socket(&pool).exists());
    let refused = refused(&["recommend", "--trial", "1s"]);
    assert!(refused.contains("--app"), "{refused}");
}

#[test]
fn pools_of_different_names_run_side_by_side() {
    if !root_or_skip("pools_of_different_names_run_side_by_side") {
        return;
    }
    let (a, b) = (name("side-a"), name("side-b"));
    let pool_a = pool(&a);
    let pool_b = pool(&b);
    assert_eq!(status(&a)["pid"], pool_a.pid());
    assert_eq!(status(&b)["pid"], pool_b.pid());
    ok(&["scale", "1", "--name", &a]);
    assert_eq!(status(&a)["workersDesired"], 1);
    assert_eq!(
        status(&b)["workersDesired"],
        2,
        "the other pool is left alone"
    );
    let err = refused(&["status", "--name", &name("side-c")]);
    assert!(
        err.contains(&format!("no pool named {} is running", name("side-c"))),
        "{err}"
    );
}

#[test]
fn a_stale_socket_is_replaced() {
    if !root_or_skip("a_stale_socket_is_replaced") {
        return;
    }
    let name = name("stale");
    fs::create_dir_all("/run/xypriss").unwrap();
    // What a SIGKILLed xypriss leaves: a socket file nobody listens on.
    drop(UnixListener::bind(socket(&name)).unwrap());
    let err = refused(&["status", "--name", &name]);
    assert!(err.contains("was left by one that ended"), "{err}");
    let pool = pool(&name);
    assert_eq!(status(&name)["pid"], pool.pid());
}

#[test]
fn a_second_pool_of_the_same_name_is_refused() {
    if !root_or_skip("a_second_pool_of_the_same_name_is_refused") {
        return;
    }
    let name = name("twice");
    let first = pool(&name);
    let mut second = Pool::start(&[
        "--name",
        &name,
        "--workers",
        "1",
        DEMO,
        "oscillate",
        "8",
        "24",
    ]);
    assert!(!second.wait().success());
    assert!(
        second
            .log
            .iter()
            .any(|l| l.contains(&format!("a pool named {name} already runs"))),
        "{:#?}",
        second.log
    );
    assert!(
        of(&second.events, "worker_spawned").is_empty(),
        "no worker started"
    );
    assert_eq!(
        status(&name)["pid"],
        first.pid(),
        "the first pool still answers"
    );
}

#[test]
fn only_the_owner_may_connect() {
    if !root_or_skip("only_the_owner_may_connect") {
        return;
    }
    let as_nobody = |name: &str| {
        Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                XYPRISS,
            ])
            .args(["status", "--json", "--name", name])
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .expect("setpriv runs")
    };
    let root_name = name("perm-root");
    let _root_pool = pool(&root_name);
    let meta = fs::metadata(socket(&root_name)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    let out = as_nobody(&root_name);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Permission denied (os error 13)"),
        "EACCES: {err}"
    );
    assert!(err.contains("sudo"), "{err}");

    // Started through sudo by nobody: the socket is theirs.
    let sudo_name = name("perm-sudo");
    let mut sudo_pool = Running {
        pool: Pool::start_command(
            Command::new(XYPRISS)
                .args(["run", "--name", &sudo_name, "--workers", "1", DEMO])
                .args(["oscillate", "8", "24"])
                .env("SUDO_UID", "65534")
                .env("SUDO_GID", "65534"),
        ),
        name: sudo_name.clone(),
    };
    sudo_pool.wait_event("worker_ready", WAIT, |_| true);
    let meta = fs::metadata(socket(&sudo_name)).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let out = as_nobody(&sudo_name);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pid"], sudo_pool.pid());
}

/// A tmux server of this test's own.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs")
    }

    fn screen(&self) -> String {
        stdout(&self.run(&["capture-pane", "-p", "-t", "top"]))
    }

    /// Starts `command` in a 160×40 session named `top`.
    fn start(&self, command: &str) {
        let started = self.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "160",
            "-y",
            "40",
            command,
        ]);
        assert!(started.status.success(), "{}", stderr(&started));
    }

    /// Waits until the screen shows `text`.
    #[track_caller]
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "never showed {text:?}:\n{screen}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

#[test]
fn top_shows_the_pool_and_quits_on_q() {
    if !root_or_skip("top_shows_the_pool_and_quits_on_q") {
        return;
    }
    let name = name("top");
    let pool = pool(&name);
    let pids: Vec<u64> = status(&name)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| u64_of(w, "pid"))
        .collect();
    let tmux = Tmux {
        socket: format!("xypriss-test-{}", std::process::id()),
    };
    tmux.start(&format!("{XYPRISS} top --name {name}"));

    let deadline = Instant::now() + WAIT;
    let screen = loop {
        let screen = tmux.screen();
        // A few polls in, so that the sparklines have points.
        if screen.chars().filter(|c| ('▁'..='█').contains(c)).count() >= 4 {
            break screen;
        }
        assert!(
            Instant::now() < deadline,
            "top never drew sparklines:\n{screen}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        screen.contains(&format!("pool {name}  pid {}", pool.pid())),
        "{screen}"
    );
    assert!(screen.contains("workers 2 (min 1, max 4)"), "{screen}");
    for (id, pid) in pids.iter().enumerate() {
        let row = screen
            .lines()
            .find(|l| l.contains(&format!("│{id} ")) && l.contains(&pid.to_string()))
            .unwrap_or_else(|| panic!("no row for worker {id} (pid {pid}):\n{screen}"));
        assert!(row.contains("ready") && row.contains("MiB"), "{row}");
    }

    ok(&["scale", "3", "--name", &name]);
    tmux.wait_for("scaled from 2 to 3 (api)");

    tmux.run(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + WAIT;
    while tmux.run(&["has-session", "-t", "top"]).status.success() {
        assert!(Instant::now() < deadline, "top did not quit on q");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn top_restores_the_terminal_when_killed() {
    if !root_or_skip("top_restores_the_terminal_when_killed") {
        return;
    }
    let name = name("topkill");
    let _pool = pool(&name);
    let tmux = Tmux {
        socket: format!("xypriss-test-kill-{}", std::process::id()),
    };
    // After top, the shell says how it ended and whether the terminal is
    // back in canonical mode with echo (raw mode clears both).
    tmux.start(&format!(
        "{XYPRISS} top --name {name}; echo \"top ended $?\"; stty -a | tr ' ' '\\n' | grep -x -e icanon -e echo; sleep 60"
    ));
    tmux.wait_for(&format!("pool {name}"));
    let shell = stdout(&tmux.run(&["list-panes", "-t", "top", "-F", "#{pane_pid}"]));
    let shell = shell.trim();
    let top: i32 = fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .expect("top runs under the shell")
        .parse()
        .unwrap();
    support::signal(top as u32, nix::sys::signal::Signal::SIGTERM);
    let screen = tmux.wait_for("top ended 0");
    let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
    assert!(
        lines.contains(&"icanon") && lines.contains(&"echo"),
        "raw mode was left on:\n{screen}"
    );
    assert!(
        !screen.contains("xypriss top"),
        "the alternate screen was not left:\n{screen}"
    );
}
