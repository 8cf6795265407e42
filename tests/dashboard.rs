//! The dashboard (`GET /`) in a real browser against a real pool, and the
//! event stream behind it (`GET /events`) under fifty followers.
//!
//! Over 600 lines: every file in tests/ is a test binary of its own, linked
//! with the whole crate, so the dashboard's browser and stream tests stay
//! in one.
//!
//! The browser is Debian's headless Chromium (`cargo xtask test` installs
//! it), driven over the DevTools protocol on `--remote-debugging-pipe`: the
//! protocol is JSON messages separated by NUL bytes on fds 3 and 4, so a
//! few lines of serde_json drive it, with no WebSocket client, no port to
//! race for, and no crate to generate the protocol's hundreds of types for
//! the four methods used here. The page is driven as an operator would:
//! its inputs filled, its forms submitted, its text read. Each run saves
//! screenshots under `target/tmp/`.

mod support;

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{Value, json};
use support::{DEMO, MIB, Pool, TCP_ESTABLISHED, of, root_or_skip, server_side_state, u64_of};

const TIMEOUT: Duration = Duration::from_secs(60);
const CHROMIUM: &str = "/usr/bin/chromium";

/// Where each run's screenshots go.
fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// True when the browser is there; in CI it must be.
fn chromium_or_skip(test: &str) -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs {CHROMIUM} (`cargo xtask test` installs it), and CI is set");
    }
    eprintln!("skipping {test}: no {CHROMIUM}; `cargo xtask test` installs it");
    false
}

/// A headless Chromium with one page, over the DevTools pipe.
struct Browser {
    child: Child,
    commands: File,
    messages: Receiver<Value>,
    next_id: u64,
    session: String,
    profile: PathBuf,
}

/// A pipe whose ends are closed on exec; the child gets its end by dup2.
fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
}

impl Browser {
    fn launch(name: &str) -> Self {
        let profile =
            std::env::temp_dir().join(format!("xypriss-chromium-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&profile);
        let (their_in, our_out) = pipe();
        let (our_in, their_out) = pipe();
        let (fd_in, fd_out) = (their_in.as_raw_fd(), their_out.as_raw_fd());
        let mut command = Command::new(CHROMIUM);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec. The
        // ends go to fds 3 (what the browser reads) and 4 (what it writes),
        // by way of fds above both so that neither overwrites the other.
        unsafe {
            command.pre_exec(move || {
                let high_in = libc::fcntl(fd_in, libc::F_DUPFD, 10);
                let high_out = libc::fcntl(fd_out, libc::F_DUPFD, 10);
                if high_in < 0
                    || high_out < 0
                    || libc::dup2(high_in, 3) < 0
                    || libc::dup2(high_out, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("chromium starts");
        drop((their_in, their_out));
        let (tx, messages) = mpsc::channel();
        let mut from = File::from(our_in);
        thread::spawn(move || {
            let mut pending = Vec::new();
            let mut chunk = [0u8; 65536];
            while let Ok(n) = from.read(&mut chunk) {
                if n == 0 {
                    return;
                }
                pending.extend_from_slice(&chunk[..n]);
                while let Some(end) = pending.iter().position(|&b| b == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    let Ok(value) = serde_json::from_slice(&message[..end]) else {
                        continue;
                    };
                    if tx.send(value).is_err() {
                        return;
                    }
                }
            }
        });
        let mut browser = Self {
            child,
            commands: File::from(our_out),
            messages,
            next_id: 0,
            session: String::new(),
            profile,
        };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser
    }

    /// One command and its result; the page's when a session is attached.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).expect("the browser reads");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer to {method} ({e})"));
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// What `expression` evaluates to in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is truthy, and returns it.
    fn wait(&mut self, what: &str, timeout: Duration, expression: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(expression);
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!("")
                && value != json!(0);
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let page = self.eval("document.body.innerText");
                panic!("the page never showed {what}; it shows:\n{page}");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn resize(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
    }

    fn screenshot(&mut self, path: &Path) {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.profile);
    }
}

/// The status server's address and token, from the pool's events.
fn server(pool: &mut Pool) -> (SocketAddr, String) {
    let event = pool.wait_event("status_server", TIMEOUT, |_| true);
    let address = event["address"].as_str().unwrap().parse().unwrap();
    let token = fs::read_to_string(event["tokenFile"].as_str().unwrap()).unwrap();
    (address, token.trim().to_owned())
}

#[test]
fn the_dashboard_shows_the_pool_live_and_acts_only_with_the_token() {
    let test = "the_dashboard_shows_the_pool_live_and_acts_only_with_the_token";
    if !root_or_skip(test) || !chromium_or_skip(test) {
        return;
    }
    // Worker 0 leaks 1 MiB/s; the others hold 16 MiB.
    let script = format!(
        "if [ \"$XYPRISS_WORKER_ID\" = 0 ]; then exec {DEMO} leak; fi; exec {DEMO} steps 16"
    );
    let mut pool = Pool::start(&[
        "--workers",
        "2",
        "--max-workers",
        "4",
        "--memory-leak-detection",
        "true",
        "--status-addr",
        "127.0.0.1:0",
        "--name",
        "dashboard-browser",
        "/bin/sh",
        "-c",
        &script,
    ]);
    let (address, token) = server(&mut pool);
    let mut browser = Browser::launch("browser");
    browser.resize(1200, 1500);
    browser.call(
        "Page.navigate",
        json!({"url": format!("http://{address}/")}),
    );

    // The workers appear, live.
    browser.wait(
        "two ready workers",
        TIMEOUT,
        "[...document.querySelectorAll('#workers article')].filter(a => a.dataset.status === 'ready').length === 2",
    );
    assert_eq!(
        browser.eval("document.getElementById('link').dataset.state"),
        "live"
    );
    assert_eq!(
        browser.eval("document.title"),
        "dashboard-browser — xypriss"
    );
    let pool_size = browser.eval("document.getElementById('pool-size').textContent");
    assert_eq!(pool_size, "2 running, 2 wanted (min 1, max 4)");

    // Without the token, an action is refused and the page says why.
    assert_eq!(
        browser.eval("document.getElementById('mode').dataset.mode"),
        "read-only"
    );
    browser.eval(
        "document.getElementById('scale-to').value = '3'; document.getElementById('scale-form').requestSubmit()",
    );
    let refused = browser.wait(
        "the refusal",
        TIMEOUT,
        "document.getElementById('action-result').textContent",
    );
    let refused = refused.as_str().unwrap();
    assert!(
        refused.contains("refused (401 missing_token)") && refused.contains("read-only"),
        "{refused}"
    );
    assert_eq!(
        browser.eval("document.getElementById('action-result').dataset.ok"),
        "false"
    );

    // The leaking worker's chart rises, and its alert comes into the feed.
    let alert = browser.wait(
        "a leak alert for worker 0",
        Duration::from_secs(120),
        "document.querySelector('#alerts li[data-type=\"leak_detected\"][data-worker=\"0\"]')?.textContent",
    );
    let alert = alert.as_str().unwrap();
    assert!(
        alert.contains("leak detected") && alert.contains("worker 0"),
        "{alert}"
    );
    assert!(
        alert.contains("slope") && alert.contains("confidence"),
        "{alert}"
    );
    pool.wait_event("memory_alert", TIMEOUT, |e| {
        e["type"] == "leak_detected" && e["workerId"] == 0
    });
    let chart = |browser: &mut Browser, id: u32, field: &str| -> u64 {
        let value = browser.eval(&format!(
            "document.querySelector('#workers article[data-worker=\"{id}\"] canvas').dataset.{field}"
        ));
        value.as_str().unwrap().parse().unwrap()
    };
    // It leaks 1 MiB/s: its chart, from when the page opened, climbs.
    browser.wait(
        "worker 0's chart 8 MiB higher than it started",
        Duration::from_secs(60),
        &format!(
            "(c => c.dataset.rssLast - c.dataset.rssFirst >= {}) \
             (document.querySelector('#workers article[data-worker=\"0\"] canvas'))",
            8 * MIB
        ),
    );
    // Worker 1 holds its 16 MiB: nothing above where it is now.
    let steady = chart(&mut browser, 1, "rssMax") - chart(&mut browser, 1, "rssLast");
    assert!(
        steady < 4 * MIB,
        "worker 1's chart stays flat: {steady} above now"
    );
    let leak = browser
        .eval("document.querySelector('#workers article[data-worker=\"0\"] .leak').textContent");
    assert!(
        leak.as_str().unwrap().starts_with("LEAKING, slope +"),
        "{leak}"
    );
    // Only the operator's: a loaded host may scale the pool for its memory.
    let scaled: Vec<_> = of(&pool.events, "scale")
        .into_iter()
        .filter(|e| e["reason"] == "api")
        .collect();
    assert!(
        scaled.is_empty(),
        "the refused scale did nothing: {scaled:?}"
    );

    // With the token, scaling from the page changes the pool.
    browser.eval(&format!(
        "document.getElementById('token').value = '{token}'; document.getElementById('token-form').requestSubmit()"
    ));
    assert_eq!(
        browser.eval("document.getElementById('mode').dataset.mode"),
        "operator"
    );
    assert_eq!(
        browser.eval("sessionStorage.getItem('xypriss-token')"),
        json!(token),
        "kept for the tab"
    );
    browser.eval(
        "document.getElementById('scale-to').value = '3'; document.getElementById('scale-form').requestSubmit()",
    );
    let scale = pool.wait_event("scale", TIMEOUT, |e| e["to"] == 3);
    assert_eq!(scale["reason"], "api");
    browser.wait(
        "three ready workers",
        TIMEOUT,
        "[...document.querySelectorAll('#workers article')].filter(a => a.dataset.status === 'ready').length === 3",
    );
    let done = browser.eval("document.getElementById('action-result').textContent");
    assert!(
        done.as_str().unwrap().starts_with("Scale to 3: done"),
        "{done}"
    );
    browser.wait(
        "the scale in the feed",
        TIMEOUT,
        "document.querySelector('#alerts li[data-event=\"scale\"]')?.textContent.includes('→ 3 workers: api')",
    );
    fs::create_dir_all(shots()).unwrap();
    browser.screenshot(&shots().join("dashboard.png"));

    // A narrow window: nothing runs off its side.
    browser.resize(380, 1400);
    browser.wait(
        "no horizontal overflow at 380 px",
        TIMEOUT,
        "document.documentElement.scrollWidth <= window.innerWidth",
    );
    browser.screenshot(&shots().join("dashboard-narrow.png"));
    drop(browser);
    assert!(pool.stop().success());
}

/// A follower of `/events` from `source`, which reads everything and keeps
/// the NDJSON lines that name `memory_alert` or `events_lost`.
fn follower(address: SocketAddr, source: IpAddr) -> thread::JoinHandle<(bool, Vec<Value>)> {
    let stream = connect_from(address, source, None);
    thread::spawn(move || {
        let mut stream = stream;
        stream
            .write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut saw_status = false;
        let mut kept = Vec::new();
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if line.starts_with("event: status") {
                saw_status = true;
            }
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if data.starts_with("{\"event\":\"memory_alert\"")
                || data.starts_with("{\"event\":\"events_lost\"")
            {
                kept.push(serde_json::from_str(data).unwrap());
            }
        }
        (saw_status, kept)
    })
}

/// A connection to `address` from the loopback address `source` (the
/// server holds each address to its share), with a receive buffer of
/// `receive` bytes if given.
fn connect_from(address: SocketAddr, source: IpAddr, receive: Option<usize>) -> TcpStream {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket,
        sockopt::RcvBuf,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    if let Some(bytes) = receive {
        setsockopt(&fd, RcvBuf, &bytes).unwrap();
    }
    let IpAddr::V4(source) = source else {
        panic!("IPv4 only")
    };
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(source, 0)),
    )
    .unwrap();
    let SocketAddr::V4(target) = address else {
        panic!("IPv4 only")
    };
    connect(fd.as_raw_fd(), &SockaddrIn::from(target)).unwrap();
    TcpStream::from(fd)
}

/// The pool's figures, as `/cluster/metrics` says them.
fn totals(address: SocketAddr) -> Value {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .write_all(b"GET /cluster/metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap()
}

#[test]
fn fifty_followers_and_one_that_never_reads() {
    if !root_or_skip("fifty_followers_and_one_that_never_reads") {
        return;
    }
    // One worker swinging across its thresholds: alerts, and a steady stream.
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--max-memory-per-worker",
        "64MiB",
        "--status-addr",
        "127.0.0.1:0",
        "--name",
        "dashboard-sse",
        DEMO,
        "oscillate",
        "40",
        "72",
    ]);
    let (address, _) = server(&mut pool);
    pool.wait_event("worker_ready", TIMEOUT, |_| true);

    // One that asks for the stream and never reads a byte of it.
    let mut idle = connect_from(address, "127.0.0.2".parse().unwrap(), Some(4096));
    idle.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    // Forty-nine that read, ten to a source address.
    let readers: Vec<_> = (0..49u8)
        .map(|i| follower(address, IpAddr::from([127, 0, 1, 10 + i / 10])))
        .collect();

    // Alerts keep coming on stdout while the idle one loses lines.
    let started = Instant::now();
    let lost = loop {
        let lost = u64_of(&totals(address)["eventsLost"], "follower");
        if lost > 0 {
            break lost;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the idle follower's losses are never counted"
        );
        thread::sleep(Duration::from_millis(500));
    };
    let alerts_then = of(&pool.events, "memory_alert").len();
    pool.collect_for(Duration::from_secs(2));
    let mut seen = 0;
    while seen < 10 {
        pool.wait_event("memory_alert", TIMEOUT, |_| true);
        seen = of(&pool.events, "memory_alert").len() - alerts_then;
        pool.collect_for(Duration::from_millis(100));
    }

    // The server lets the idle one go, without its reading a byte: the
    // server's end of it is closed (FIN_WAIT1: its close waits behind what
    // the client never read).
    let idle_port = idle.local_addr().unwrap().port();
    let started = Instant::now();
    while server_side_state(address.port(), idle_port) == Some(TCP_ESTABLISHED) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server holds a follower that does not read"
        );
        thread::sleep(Duration::from_millis(200));
    }
    drop(idle);
    let metrics = totals(address);
    assert!(u64_of(&metrics["eventsLost"], "follower") >= lost);
    assert_eq!(
        u64_of(&metrics["eventsLost"], "output"),
        0,
        "stdout lost nothing"
    );

    // What every reader must have: the alerts written a second or more
    // before the pool stops. Those of the last moment may still be on their
    // way when the server closes the streams at shutdown.
    let expected: Vec<Value> = of(&pool.events, "memory_alert")
        .into_iter()
        .cloned()
        .collect();
    pool.collect_for(Duration::from_secs(1));
    assert!(pool.stop().success());
    let alerts: BTreeSet<String> = expected.iter().map(|e| e.to_string()).collect();
    assert!(alerts.len() >= 10);
    for reader in readers {
        let (saw_status, kept) = reader.join().unwrap();
        assert!(saw_status, "the stream starts with the status");
        assert!(
            kept.iter().all(|e| e["event"] != "events_lost"),
            "a follower that reads loses nothing: {kept:?}"
        );
        let got: BTreeSet<String> = kept.iter().map(Value::to_string).collect();
        // It joined after the first alerts: from its first on, it has them all.
        let first_ts = kept
            .first()
            .map(|e| u64_of(e, "timestamp"))
            .unwrap_or(u64::MAX);
        let missing: Vec<_> = expected
            .iter()
            .filter(|e| u64_of(e, "timestamp") > first_ts)
            .filter(|e| !got.contains(&e.to_string()))
            .collect();
        assert!(missing.is_empty(), "a reader missed alerts: {missing:?}");
        assert!(got.len() >= 10, "{} alerts", got.len());
    }
}
