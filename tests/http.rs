//! The HTTP status server (`--status-addr`) of a real pool, through real
//! requests: what each endpoint reports, what the mutating ones change (in
//! the event stream and in the status), what they refuse and how, the
//! token's file, and clients that send too slowly. The `/metrics`
//! exposition is checked by an OpenMetrics parser.
//!
//! Over 600 lines: every file in tests/ is a test binary of its own, linked
//! with the whole crate, so the status server's tests stay in one.

mod support;

use std::{
    collections::BTreeSet,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use serde_json::{Value, json};
use support::{DEMO, Pool, TCP_ESTABLISHED, of, root_or_skip, server_side_state, u64_of};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A pool of two demo workers holding 8 MiB each, named `name` (the token
/// file is named after the pool, so tests running at once use their own).
fn start(name: &str) -> (Pool, Api) {
    let name = format!("http-{name}");
    let mut pool = Pool::start(&[
        "--workers",
        "2",
        "--status-addr",
        "127.0.0.1:0",
        "--name",
        &name,
        DEMO,
        "steps",
        "8",
    ]);
    let server = pool.wait_event("status_server", TIMEOUT, |_| true);
    let api = Api {
        address: server["address"].as_str().unwrap().parse().unwrap(),
        token_file: PathBuf::from(server["tokenFile"].as_str().unwrap()),
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .build()
            .into(),
    };
    for id in 0..2u64 {
        pool.wait_event("worker_ready", TIMEOUT, |e| e["workerId"] == id);
    }
    (pool, api)
}

/// A client of one pool's status server.
struct Api {
    address: SocketAddr,
    token_file: PathBuf,
    agent: ureq::Agent,
}

/// An answer: status, `Content-Type`, body.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// Asserts a refusal: its status, and the JSON error body's code.
    fn refused(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(
            self.content_type.starts_with("application/json"),
            "{}",
            self.content_type
        );
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            !body["error"]["message"].as_str().unwrap().is_empty(),
            "{body}"
        );
    }
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn token(&self) -> String {
        fs::read_to_string(&self.token_file)
            .expect("the token file is readable by root")
            .trim()
            .to_owned()
    }

    fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
        let mut response = response.expect("the server answers");
        Answer {
            status: response.status().as_u16(),
            content_type: response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
            body: response.body_mut().read_to_string().unwrap(),
        }
    }

    fn get(&self, path: &str) -> Answer {
        Self::answer(self.agent.get(self.url(path)).call())
    }

    /// A GET that must succeed, as JSON.
    fn get_json(&self, path: &str) -> Value {
        let answer = self.get(path);
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
        assert_eq!(answer.content_type, "application/json");
        answer.json()
    }

    /// A POST with `authorization` (a whole header value) and `body`.
    fn post_as(&self, path: &str, authorization: Option<&str>, body: &str) -> Answer {
        let mut request = self.agent.post(self.url(path));
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        Self::answer(request.content_type("application/json").send(body))
    }

    /// A POST with this pool's token.
    fn post(&self, path: &str, body: &str) -> Answer {
        self.post_as(path, Some(&format!("Bearer {}", self.token())), body)
    }

    /// The worker processes now, as (id, generation, status).
    fn processes(&self) -> BTreeSet<(u64, u64, String)> {
        self.get_json("/workers")["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    u64_of(w, "id"),
                    u64_of(w, "generation"),
                    w["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Polls `/workers` until `pred` holds.
    fn wait_processes(&self, what: &str, pred: impl Fn(&BTreeSet<(u64, u64, String)>) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let now = self.processes();
            if pred(&now) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/workers never showed {what}: {now:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn reads_report_the_pool() {
    if !root_or_skip("reads_report_the_pool") {
        return;
    }
    let (mut pool, api) = start("reads");
    let pids: BTreeSet<u64> = of(&pool.events, "worker_spawned")
        .iter()
        .map(|e| u64_of(e, "pid"))
        .collect();

    // Each worker holds 8 MiB once it says "at 8 MiB"; the figures follow.
    let deadline = Instant::now() + TIMEOUT;
    let memory = loop {
        let memory = api.get_json("/cluster/memory");
        let workers = memory["memory"]["workers"].as_array().unwrap();
        if workers.len() == 2 && workers.iter().all(|w| u64_of(w, "rssBytes") >= 8 << 20) {
            break memory;
        }
        assert!(Instant::now() < deadline, "no 8 MiB workers: {memory}");
        thread::sleep(Duration::from_millis(100));
    };
    assert!(memory["timestamp"].as_str().unwrap().ends_with('Z'));
    let body = &memory["memory"];
    assert!(body["recommendations"].is_array(), "{body}");
    assert!(u64_of(body, "suggestedWorkerCount") >= 1, "{body}");
    assert!(u64_of(body, "optimalWorkerCount") >= 1, "{body}");
    assert!(body["canEnableLowMemoryMode"].is_boolean(), "{body}");
    assert_eq!(body["healthy"], true, "{body}");
    let workers = body["workers"].as_array().unwrap();
    assert_eq!(
        u64_of(&body["currentUsage"], "totalRssBytes"),
        workers.iter().map(|w| u64_of(w, "rssBytes")).sum::<u64>(),
        "the total is the workers' sum: {body}"
    );
    for w in workers {
        assert!(pids.contains(&u64_of(w, "pid")), "{w} is a spawned worker");
        assert_eq!(w["status"], "ready");
        assert_eq!(w["health"], "healthy");
        assert!(u64_of(w, "anonBytes") > 0, "{w}");
        assert!(u64_of(w, "anonBytes") <= u64_of(w, "rssBytes"), "{w}");
        assert_eq!(u64_of(w, "swapBytes"), 0, "no swap here: {w}");
        assert!(w["faultRate"].is_number(), "{w}");
        assert_eq!(u64_of(w, "restarts"), 0);
        assert!(w["uptimeSec"].is_u64(), "{w}");
        assert_eq!(w["leak"]["leaking"], false, "{w}");
    }

    let health = api.get_json("/cluster/health");
    assert_eq!(health["healthy"], true, "{health}");
    assert_eq!(health["details"], json!([]));

    let totals = api.get_json("/cluster/metrics");
    assert_eq!(totals["workers"], 2, "{totals}");
    assert_eq!(totals["workersReady"], 2, "{totals}");
    assert_eq!(totals["workersDesired"], 2, "{totals}");
    assert_eq!(totals["restarts"], 0, "{totals}");
    assert!(u64_of(&totals["memoryUsage"], "totalRssBytes") >= 16 << 20);
    let anon = u64_of(&totals, "anonBytes");
    assert!(
        anon > 0 && anon <= u64_of(&totals["memoryUsage"], "totalRssBytes"),
        "{totals}"
    );
    assert_eq!(totals["lowMemoryMode"], false);

    assert_eq!(
        api.processes(),
        BTreeSet::from([(0, 1, "ready".to_owned()), (1, 1, "ready".to_owned())])
    );

    let metrics = api.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    check_exposition(&metrics.body);

    api.get("/cluster").refused(404, "not_found");
    api.post_as("/workers", None, "")
        .refused(405, "method_not_allowed");
    assert!(pool.stop().success());
}

/// Parses `text` as OpenMetrics, checks every fixed name and its type, and
/// the pool's figures; and runs the reference parser (Python's
/// prometheus_client) on it when it is installed. (`promtool check metrics`
/// reads only the older text format: it rejects OpenMetrics' `info` type.)
fn check_exposition(text: &str) {
    let exposition: MetricsExposition<OpenMetricsType, OpenMetricsValue> =
        openmetrics_parser::openmetrics::parse_openmetrics(text)
            .unwrap_or_else(|e| panic!("not OpenMetrics ({e:?}):\n{text}"));
    let gauge = OpenMetricsType::Gauge;
    let counter = OpenMetricsType::Counter;
    let info = OpenMetricsType::Info;
    for (name, kind) in [
        ("xypriss_worker_rss_bytes", gauge),
        ("xypriss_worker_anon_bytes", gauge),
        ("xypriss_worker_swap_bytes", gauge),
        ("xypriss_worker_allocation_rate_bytes_per_second", gauge),
        ("xypriss_worker_fault_rate", gauge),
        ("xypriss_worker_leaking", gauge),
        ("xypriss_worker_throttled", gauge),
        ("xypriss_worker_ready", gauge),
        ("xypriss_worker_uptime_seconds", gauge),
        ("xypriss_worker_page_faults", counter),
        ("xypriss_worker_restarts", counter),
        ("xypriss_pool_workers", gauge),
        ("xypriss_pool_workers_desired", gauge),
        ("xypriss_pool_rss_bytes", gauge),
        ("xypriss_pool_max_total_memory_bytes", gauge),
        ("xypriss_low_memory_mode", gauge),
        ("xypriss_memory_alerts", counter),
        ("xypriss_events_lost", counter),
        ("xypriss_scale_events", counter),
        ("xypriss_observer", info),
        ("xypriss_build", info),
    ] {
        let family = exposition
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        assert_eq!(family.family_type, kind, "{name}");
    }
    let values = |name: &str| -> Vec<(String, f64)> {
        exposition.families[name]
            .iter_samples()
            .map(|s| {
                let labels = s.get_labelset().unwrap();
                let worker = labels.get_label_value("worker").unwrap_or("").to_owned();
                let value = match &s.value {
                    OpenMetricsValue::Gauge(v) => v.as_f64(),
                    OpenMetricsValue::Counter(c) => c.value.as_f64(),
                    other => panic!("{name}: {other:?}"),
                };
                (worker, value)
            })
            .collect()
    };
    let mut rss = values("xypriss_worker_rss_bytes");
    rss.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(rss.len(), 2, "one series per worker: {rss:?}");
    assert_eq!((rss[0].0.as_str(), rss[1].0.as_str()), ("0", "1"));
    assert!(rss.iter().all(|(_, v)| *v >= 8.0 * 1048576.0), "{rss:?}");
    assert_eq!(values("xypriss_pool_workers"), [(String::new(), 2.0)]);
    assert!(
        values("xypriss_worker_ready")
            .iter()
            .all(|(_, v)| *v == 1.0),
        "{text}"
    );
    assert!(
        values("xypriss_worker_page_faults")
            .iter()
            .all(|(_, v)| *v > 0.0),
        "touching 8 MiB faults: {text}"
    );

    let reference = "from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
        import sys\n\
        print(len(list(parse(sys.stdin.read()))))";
    match Command::new("python3")
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => {
            let mut python = Command::new("python3")
                .args(["-c", reference])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            python
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = python.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "the reference parser rejects the exposition: {}\n{text}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "21");
        }
        _ => eprintln!("python3 with prometheus_client is not installed: its parser is not run"),
    }
}

#[test]
fn mutations_take_the_token_and_only_it() {
    if !root_or_skip("mutations_take_the_token_and_only_it") {
        return;
    }
    let (mut pool, api) = start("token");
    let meta = fs::metadata(&api.token_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    assert_eq!(
        api.token_file.parent().unwrap(),
        std::path::Path::new("/run/xypriss")
    );
    let token = api.token();
    assert_eq!(token.len(), 64);

    for (path, body) in [
        ("/cluster/scale", r#"{"workers": 3}"#),
        ("/cluster/low-memory", r#"{"enabled": true}"#),
        ("/workers/0/restart", ""),
        ("/cluster/reload", ""),
    ] {
        let missing = api.post_as(path, None, body);
        missing.refused(401, "missing_token");
        api.post_as(path, Some(&format!("Basic {token}")), body)
            .refused(401, "missing_token");
        api.post_as(path, Some("Bearer 0123456789abcdef"), body)
            .refused(401, "invalid_token");
        let mut wrong = token.clone().into_bytes();
        wrong[63] = if wrong[63] == b'0' { b'1' } else { b'0' };
        api.post_as(
            path,
            Some(&format!("Bearer {}", String::from_utf8(wrong).unwrap())),
            body,
        )
        .refused(401, "invalid_token");
    }
    let challenge = api
        .agent
        .post(api.url("/cluster/reload"))
        .send_empty()
        .unwrap();
    assert_eq!(
        challenge.headers()["www-authenticate"],
        r#"Bearer realm="xypriss""#
    );

    // Nothing was done: no scale, no replacement, no low-memory mode.
    pool.collect_for(Duration::from_secs(1));
    for event in ["scale", "low_memory_mode", "worker_stopping"] {
        assert!(of(&pool.events, event).is_empty(), "{event} after a 401");
    }
    assert_eq!(api.processes().len(), 2);

    assert!(pool.stop().success());
    for event in &pool.events {
        assert!(!event.to_string().contains(&token), "stdout: {event}");
    }
    for line in &pool.log {
        assert!(!line.contains(&token), "stderr: {line}");
    }
    assert!(!api.token_file.exists(), "the token file goes at exit");
    assert!(
        TcpStream::connect(api.address).is_err(),
        "the server stops with the pool"
    );
}

#[test]
fn scale_up_and_down_within_bounds() {
    if !root_or_skip("scale_up_and_down_within_bounds") {
        return;
    }
    let (mut pool, api) = start("scale");

    let up = api.post("/cluster/scale", r#"{"workers": 3}"#);
    assert_eq!(up.status, 200, "{}", up.body);
    assert_eq!(up.json(), json!({"from": 2, "to": 3}));
    let scale = pool.wait_event("scale", TIMEOUT, |e| e["to"] == 3);
    assert_eq!(scale["from"], 2);
    pool.wait_event("worker_ready", TIMEOUT, |e| e["workerId"] == 2);
    api.wait_processes("three ready workers", |p| {
        p.iter().filter(|(_, _, s)| s == "ready").count() == 3
    });

    let down = api.post("/cluster/scale", r#"{"workers": 1}"#);
    assert_eq!(down.status, 200, "{}", down.body);
    assert_eq!(down.json(), json!({"from": 3, "to": 1}));
    pool.wait_event("scale", TIMEOUT, |e| e["from"] == 3 && e["to"] == 1);
    api.wait_processes("one worker left", |p| p.len() == 1);
    assert_eq!(api.get_json("/cluster/metrics")["workersDesired"], 1);

    api.post("/cluster/scale", r#"{"workers": 0}"#)
        .refused(422, "out_of_range");
    let too_many = api.post("/cluster/scale", r#"{"workers": 4000000000}"#);
    too_many.refused(422, "out_of_range");
    assert!(
        too_many.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4000000000"),
        "{}",
        too_many.body
    );
    for bad in [
        r#"{"workers": "#,
        r#"{"workers": -1}"#,
        r#"{"workers": "3"}"#,
        r#"{"workers": 2, "extra": 1}"#,
        r#"{}"#,
        "",
        "[2]",
    ] {
        api.post("/cluster/scale", bad).refused(400, "bad_body");
    }
    let large = format!(r#"{{"workers": 2{}}}"#, " ".repeat(8192));
    api.post("/cluster/scale", &large)
        .refused(413, "body_too_large");

    // None of it changed the pool, nor stopped the server.
    pool.collect_for(Duration::from_millis(500));
    assert_eq!(of(&pool.events, "scale").len(), 2);
    assert_eq!(api.get_json("/cluster/health")["healthy"], true);
    assert!(pool.stop().success());
}

#[test]
fn restart_one_worker_then_reload_all() {
    if !root_or_skip("restart_one_worker_then_reload_all") {
        return;
    }
    let (mut pool, api) = start("restart");

    let restart = api.post("/workers/1/restart", "");
    assert_eq!(restart.status, 202, "{}", restart.body);
    assert_eq!(restart.json(), json!({"workers": [1]}));
    pool.wait_event("worker_ready", TIMEOUT, |e| {
        e["workerId"] == 1 && e["generation"] == 2
    });
    pool.wait_event("worker_exited", TIMEOUT, |e| {
        e["workerId"] == 1 && e["generation"] == 1
    });
    api.wait_processes("worker 1 at generation 2", |p| {
        p.contains(&(1, 2, "ready".into())) && p.len() == 2
    });
    let worker = api.get_json("/workers")["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == 1)
        .unwrap()
        .clone();
    assert_eq!(worker["restarts"], 1, "{worker}");

    api.post("/workers/7/restart", "")
        .refused(404, "unknown_worker");
    api.post("/workers/abc/restart", "")
        .refused(400, "bad_worker_id");
    api.post("/workers/-1/restart", "")
        .refused(400, "bad_worker_id");

    let reload = api.post("/cluster/reload", "");
    assert_eq!(reload.status, 202, "{}", reload.body);
    assert_eq!(reload.json(), json!({"workers": [0, 1]}));
    api.wait_processes("every worker replaced", |p| {
        *p == BTreeSet::from([(0, 2, "ready".into()), (1, 3, "ready".into())])
    });
    assert!(pool.stop().success());
}

#[test]
fn low_memory_mode_on_and_off() {
    if !root_or_skip("low_memory_mode_on_and_off") {
        return;
    }
    let (mut pool, api) = start("lowmem");
    let metric = |api: &Api| {
        api.get("/metrics")
            .body
            .lines()
            .find_map(|l| l.strip_prefix("xypriss_low_memory_mode "))
            .map(str::to_owned)
    };

    let on = api.post("/cluster/low-memory", r#"{"enabled": true}"#);
    assert_eq!(on.status, 200, "{}", on.body);
    assert_eq!(on.json(), json!({"enabled": true, "changed": true}));
    let event = pool.wait_event("low_memory_mode", TIMEOUT, |e| e["enabled"] == true);
    assert!(event["reason"].is_string(), "{event}");
    assert_eq!(api.get_json("/cluster/metrics")["lowMemoryMode"], true);
    assert_eq!(metric(&api).as_deref(), Some("1"));

    let again = api.post("/cluster/low-memory", r#"{"enabled": true}"#);
    assert_eq!(again.json(), json!({"enabled": true, "changed": false}));

    let off = api.post("/cluster/low-memory", r#"{"enabled": false}"#);
    assert_eq!(off.json(), json!({"enabled": false, "changed": true}));
    pool.wait_event("low_memory_mode", TIMEOUT, |e| e["enabled"] == false);
    assert_eq!(api.get_json("/cluster/metrics")["lowMemoryMode"], false);
    assert_eq!(metric(&api).as_deref(), Some("0"));

    for bad in [r#"{"enabled": "yes"}"#, r#"{"enabled": 1}"#, "{"] {
        api.post("/cluster/low-memory", bad)
            .refused(400, "bad_body");
    }
    assert!(pool.stop().success());
    assert_eq!(of(&pool.events, "low_memory_mode").len(), 2);
}

#[test]
fn slow_clients_do_not_hold_up_others() {
    if !root_or_skip("slow_clients_do_not_hold_up_others") {
        return;
    }
    let (mut pool, api) = start("slow");
    // Half a request's headers, then nothing.
    let mut headers = TcpStream::connect(api.address).unwrap();
    headers
        .write_all(b"GET /workers HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    // A whole request's headers, and a tenth of its body.
    let mut body = TcpStream::connect(api.address).unwrap();
    write!(
        body,
        "POST /cluster/scale HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n{{\"workers\"",
        api.token()
    )
    .unwrap();

    for _ in 0..5 {
        assert_eq!(api.get_json("/cluster/health")["healthy"], true);
    }

    // The server gives up on both in its own time.
    body.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut answer = String::new();
    body.read_to_string(&mut answer)
        .expect("the server answers, then closes");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"body_timeout""#), "{answer}");

    headers.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut rest = Vec::new();
    let closed = headers.read_to_end(&mut rest);
    assert!(
        closed.is_ok()
            || closed
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the server closes a client that never ends its headers: {closed:?}"
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("\"workers\""),
        "no answer to half a request"
    );

    pool.collect_for(Duration::from_millis(200));
    assert!(of(&pool.events, "scale").is_empty());
    assert!(pool.stop().success());
}

#[test]
fn a_taken_status_address_is_a_startup_error() {
    if !root_or_skip("a_taken_status_address_is_a_startup_error") {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--status-addr",
        &address,
        "--name",
        "http-taken",
        DEMO,
        "steps",
        "8",
    ]);
    let status = pool.wait();
    assert_eq!(status.code(), Some(2), "{:?}", pool.log);
    let error = pool.log.join("\n");
    assert!(
        error.contains(&format!("--status-addr {address}")),
        "the error names the flag and address: {error}"
    );
    assert!(of(&pool.events, "worker_spawned").is_empty());
}

/// A connection to `address` from the loopback address `source`, with a
/// small receive buffer: what it does not read fills up soon.
fn connect_from(address: SocketAddr, source: std::net::Ipv4Addr) -> TcpStream {
    use std::os::fd::AsRawFd as _;

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
    setsockopt(&fd, RcvBuf, &4096).unwrap();
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

#[test]
fn clients_that_pipeline_and_never_read_do_not_lock_out_others() {
    if !root_or_skip("clients_that_pipeline_and_never_read_do_not_lock_out_others") {
        return;
    }
    let (mut pool, api) = start("pipeline");
    // 64 clients, as many as the server serves at once, sixteen from each of
    // four addresses: each sends requests back to back as long as its socket
    // takes them, and reads none of the answers.
    let request = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(64);
    let hogs: Vec<TcpStream> = (0..64u8)
        .map(|i| {
            let mut hog = connect_from(api.address, [127, 0, 2, 10 + i / 16].into());
            hog.set_nonblocking(true).unwrap();
            while hog.write_all(&request).is_ok() {}
            hog
        })
        .collect();

    // Prometheus and an operator are still served.
    let metrics = api.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(api.get_json("/cluster/health")["healthy"], true);

    // Each hog is let go, though it reads nothing: the server's end of its
    // connection closes.
    let deadline = Instant::now() + Duration::from_secs(90);
    for hog in &hogs {
        let port = hog.local_addr().unwrap().port();
        while server_side_state(api.address.port(), port) == Some(TCP_ESTABLISHED) {
            assert!(
                Instant::now() < deadline,
                "the server holds a client that does not read"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
    drop(hogs);
    assert_eq!(api.get_json("/cluster/health")["healthy"], true);
    assert!(pool.stop().success());
}

#[test]
fn a_page_of_another_site_cannot_read_the_pool_through_dns_rebinding() {
    if !root_or_skip("a_page_of_another_site_cannot_read_the_pool_through_dns_rebinding") {
        return;
    }
    let (mut pool, api) = start("rebinding");
    let port = api.address.port();
    // What a browser sends once rebind.example resolves to 127.0.0.1.
    for path in ["/workers", "/cluster/memory", "/metrics", "/events", "/"] {
        let answer = Api::answer(
            api.agent
                .get(api.url(path))
                .header("Host", format!("rebind.example:{port}"))
                .call(),
        );
        answer.refused(421, "host_not_allowed");
    }
    for host in [format!("localhost:{port}"), api.address.to_string()] {
        let answer = Api::answer(
            api.agent
                .get(api.url("/workers"))
                .header("Host", host)
                .call(),
        );
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    assert!(pool.stop().success());
}

#[test]
fn reads_take_the_token_when_asked_to() {
    if !root_or_skip("reads_take_the_token_when_asked_to") {
        return;
    }
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--status-addr",
        "127.0.0.1:0",
        "--status-read-token",
        "--name",
        "http-read-token",
        DEMO,
        "steps",
        "8",
    ]);
    let server = pool.wait_event("status_server", TIMEOUT, |_| true);
    let api = Api {
        address: server["address"].as_str().unwrap().parse().unwrap(),
        token_file: PathBuf::from(server["tokenFile"].as_str().unwrap()),
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .build()
            .into(),
    };
    for path in ["/workers", "/cluster/health", "/metrics", "/events"] {
        api.get(path).refused(401, "missing_token");
    }
    let page = api.get("/");
    assert_eq!(page.status, 200, "the page holds no data of the pool");
    assert!(page.content_type.starts_with("text/html"));
    let token = api.token();
    let answer = Api::answer(
        api.agent
            .get(api.url("/cluster/health"))
            .header("Authorization", format!("Bearer {token}"))
            .call(),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(pool.stop().success());
}
