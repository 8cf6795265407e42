//! `--listen` and readiness: one socket bound by xypriss and served by every
//! worker (systemd socket activation), readiness through `NOTIFY_SOCKET`, and
//! rolling restarts that refuse no connection. The worker is a real HTTP
//! server in Python that takes its socket from fd 3.

mod support;

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::{Pool, root_or_skip, signal, u64_of};

const TIMEOUT: Duration = Duration::from_secs(30);
const SERVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/apps/fd_http_server.py"
);

/// `xypriss run ARGS…` with `env` for the workers.
fn start_with(args: &[&str], env: &[(&str, &str)]) -> Pool {
    // Workers get only an allow-listed environment: what the app needs is
    // handed over with --env, before the app and its arguments.
    let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut all: Vec<&str> = env.iter().flat_map(|kv| ["--env", kv.as_str()]).collect();
    all.extend_from_slice(args);
    let mut cmd = std::process::Command::new(support::XYPRISS);
    cmd.arg("run").args(support::named(&all));
    Pool::start_command(&mut cmd)
}

/// The port of the pool's first listener, from its `listening` event.
fn port(pool: &mut Pool) -> u16 {
    let listening = pool.wait_event("listening", TIMEOUT, |_| true);
    let address = listening["addresses"][0].as_str().unwrap().to_owned();
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// One `GET /` on a new connection; the server's JSON report.
fn get(port: u16) -> std::io::Result<Value> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP response: {response:?}")))?;
    if !(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")) {
        return Err(std::io::Error::other(format!("not 200: {head}")));
    }
    serde_json::from_str(body).map_err(std::io::Error::other)
}

#[test]
fn four_workers_share_one_listening_socket() {
    if !root_or_skip("four_workers_share_one_listening_socket") {
        return;
    }
    let mut pool = Pool::start(&[
        "--workers",
        "4",
        "--listen",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "python3",
        SERVER,
    ]);
    let port = port(&mut pool);
    for id in 0..4u64 {
        pool.wait_event("worker_ready", TIMEOUT, |e| e["workerId"] == id);
    }
    let workers: BTreeSet<u64> = (0..4)
        .map(|id| {
            u64_of(
                &pool
                    .events
                    .iter()
                    .find(|e| e["event"] == "worker_spawned" && e["workerId"] == id)
                    .unwrap()
                    .clone(),
                "pid",
            )
        })
        .collect();
    let mut served = BTreeSet::new();
    for _ in 0..400 {
        let report = get(port).expect("a request to the shared socket");
        assert_eq!(
            report["listenPidMatched"], true,
            "LISTEN_PID is the worker's own pid: {report}"
        );
        assert_eq!(report["fds"][0]["fd"], 3);
        assert_eq!(
            report["port"],
            port.to_string().as_str(),
            "PORT is exported"
        );
        served.insert(u64_of(&report, "pid"));
        if served.len() == 4 {
            break;
        }
    }
    assert_eq!(
        served, workers,
        "every worker served requests on the one socket"
    );
    assert!(pool.stop().success());
}

#[test]
fn a_worker_is_ready_when_it_says_so() {
    if !root_or_skip("a_worker_is_ready_when_it_says_so") {
        return;
    }
    let mut pool = start_with(
        &[
            "--workers",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--ready",
            "notify",
            "python3",
            SERVER,
        ],
        &[("READY_DELAY_MS", "600")],
    );
    let ready = pool.wait_event("worker_ready", TIMEOUT, |_| true);
    let startup = u64_of(&ready, "startupMs");
    assert!(
        (600..5000).contains(&startup),
        "ready after {startup} ms, READY=1 was sent after 600 ms"
    );
    assert!(pool.stop().success());
}

#[test]
fn a_worker_that_never_says_ready_is_restarted() {
    if !root_or_skip("a_worker_that_never_says_ready_is_restarted") {
        return;
    }
    let mut pool = start_with(
        &[
            "--workers",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--ready",
            "notify",
            "--ready-timeout",
            "700ms",
            "python3",
            SERVER,
        ],
        &[("READY_NEVER", "1")],
    );
    let exited = pool.wait_event("worker_exited", TIMEOUT, |_| true);
    assert_eq!(exited["signal"], "SIGKILL", "{exited}");
    assert!(u64_of(&exited, "uptimeMs") >= 650);
    let restarted = pool.wait_event("worker_restarted", TIMEOUT, |_| true);
    assert_eq!(restarted["reason"], "not_ready");
    assert!(pool.events.iter().all(|e| e["event"] != "worker_ready"));
    assert!(pool.stop().success());
}

#[test]
fn a_rolling_restart_refuses_no_connection() {
    if !root_or_skip("a_rolling_restart_refuses_no_connection") {
        return;
    }
    let mut pool = Pool::start(&[
        "--workers",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "python3",
        SERVER,
    ]);
    let port = port(&mut pool);
    for id in 0..2u64 {
        pool.wait_event("worker_ready", TIMEOUT, |e| e["workerId"] == id);
    }
    let running = Arc::new(AtomicBool::new(true));
    let client = {
        let running = Arc::clone(&running);
        thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut pids = BTreeSet::new();
            while running.load(Ordering::Relaxed) {
                match get(port) {
                    Ok(report) => {
                        ok += 1;
                        pids.insert(u64_of(&report, "pid"));
                    }
                    Err(err) => failed.push(err.to_string()),
                }
            }
            (ok, failed, pids)
        })
    };
    thread::sleep(Duration::from_millis(300));
    signal(pool.pid(), Signal::SIGHUP);
    for id in 0..2u64 {
        pool.wait_event("worker_exited", TIMEOUT, |e| {
            e["workerId"] == id && e["generation"] == 1
        });
    }
    thread::sleep(Duration::from_millis(300));
    running.store(false, Ordering::Relaxed);
    let (ok, failed, pids) = client.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the restart: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 20, "only {ok} requests went through");
    let new: BTreeSet<u64> = pool
        .events
        .iter()
        .filter(|e| e["event"] == "worker_spawned" && e["generation"] == 2)
        .map(|e| u64_of(e, "pid"))
        .collect();
    assert_eq!(new.len(), 2);
    assert!(
        new.iter().any(|p| pids.contains(p)),
        "no request reached the new generation"
    );
    assert!(pool.stop().success());
}

/// `--ready socket` with `app…`: the worker must be seen waiting on the socket
/// after its READY_DELAY_MS, and never earlier.
fn ready_when_serving(app: &[&str]) {
    let mut args = vec![
        "--workers",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--ready",
        "socket",
    ];
    args.extend_from_slice(app);
    let mut pool = start_with(&args, &[("READY_DELAY_MS", "800"), ("READY_NEVER", "1")]);
    let port = port(&mut pool);
    let ready = pool.wait_event("worker_ready", TIMEOUT, |_| true);
    let startup = u64_of(&ready, "startupMs");
    assert!(
        (800..5000).contains(&startup),
        "ready after {startup} ms; it serves after 800 ms"
    );
    let report = get(port).expect("it serves once ready");
    assert_eq!(report["pid"], ready["pid"]);
    assert!(pool.stop().success());
}

#[test]
fn socket_readiness_sees_a_poll_server() {
    if !root_or_skip("socket_readiness_sees_a_poll_server") {
        return;
    }
    ready_when_serving(&["python3", SERVER]);
}

#[test]
fn socket_readiness_sees_an_epoll_server() {
    if !root_or_skip("socket_readiness_sees_an_epoll_server") {
        return;
    }
    let node = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/apps/fd_http_server.js"
    );
    ready_when_serving(&["node", node]);
}

#[test]
fn a_worker_that_never_serves_is_not_ready() {
    if !root_or_skip("a_worker_that_never_serves_is_not_ready") {
        return;
    }
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--ready",
        "socket",
        "--ready-timeout",
        "700ms",
        "/bin/sleep",
        "60",
    ]);
    let restarted = pool.wait_event("worker_restarted", TIMEOUT, |_| true);
    assert_eq!(restarted["reason"], "not_ready");
    assert!(pool.events.iter().all(|e| e["event"] != "worker_ready"));
    assert!(pool.stop().success());
}
