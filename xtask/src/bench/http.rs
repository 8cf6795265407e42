//! `http`: the observer's cost on a realistic server. The same Node.js HTTP
//! server (`tests/apps/fd_http_server.js`, serving on the listening socket it
//! inherits as fd 3) runs directly, with xypriss running beside it, and as a
//! xypriss worker on a `--listen` socket; `wrk` loads it, and the requests
//! per second and p99 latency are compared. Conditions are interleaved, so
//! that drift on this VM hits each alike.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    os::fd::OwnedFd,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{Bench, Pool, median, peers};

const ROUNDS: usize = 3;
const SECONDS: u32 = 10;
const CONNECTIONS: u32 = 32;

const DIRECT: &str = "direct";
const UNWATCHED: &str = "direct, xypriss running beside";
const WATCHED: &str = "as a xypriss worker";

/// Requests per second and p99 latency (ms) from `wrk --latency`'s report.
fn parse_wrk(report: &str) -> Option<(f64, f64)> {
    let rps = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let p99 = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))?
        .trim();
    let (number, unit) = p99.split_at(p99.find(|c: char| c.is_ascii_alphabetic())?);
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        _ => return None,
    };
    Some((rps, number.parse::<f64>().ok()? * scale))
}

fn load(wrk: &Path, port: u16) -> Result<(f64, f64)> {
    let out = Command::new(wrk)
        .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{SECONDS}s")])
        .arg("--latency")
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("running wrk")?;
    let report = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&report).with_context(|| format!("no figures in wrk's report: {report}"))
}

impl Bench {
    /// The server run directly on a socket bound here, handed over as fd 3.
    fn serve_direct(&self, app: &Path, wrk: &Path) -> Result<(f64, f64)> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let mut server = Command::new("/bin/sh")
            .args(["-c", "exec node \"$0\" 3<&0 0</dev/null"])
            .arg(app)
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .spawn()
            .context("starting node")?;
        // The socket is bound and listening: connections queue until node accepts.
        thread::sleep(Duration::from_millis(500));
        let result = load(wrk, port);
        let _ = server.kill();
        let _ = server.wait();
        result
    }

    pub(super) fn http(&self) -> Result<Value> {
        let wrk = peers::debian("wrk", "wrk")?;
        let app = self.root.join("tests/apps/fd_http_server.js");
        let app_arg = app.to_str().context("app path")?;
        let demo = self.demo.to_str().context("demo path")?;
        let mut runs: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for _ in 0..ROUNDS {
            runs.entry(DIRECT)
                .or_default()
                .push(self.serve_direct(&app, &wrk)?);
            let beside = Pool::start(
                &self.xypriss,
                &[
                    "--workers",
                    "1",
                    "--require-ebpf",
                    "--name",
                    "http-beside",
                    demo,
                    "steps",
                    "1",
                ],
            )?;
            beside.wait_event("observer", Duration::from_secs(10))?;
            runs.entry(UNWATCHED)
                .or_default()
                .push(self.serve_direct(&app, &wrk)?);
            drop(beside.stop());
            let pool = Pool::start(
                &self.xypriss,
                &[
                    "--workers",
                    "1",
                    "--require-ebpf",
                    "--name",
                    "http",
                    "--listen",
                    "127.0.0.1:0",
                    "--ready",
                    "socket",
                    "--",
                    "node",
                    app_arg,
                ],
            )?;
            let listening = pool.wait_event("listening", Duration::from_secs(10))?;
            let address = listening["addresses"][0].as_str().unwrap_or_default();
            let Some(port) = address.rsplit_once(':').and_then(|(_, p)| p.parse().ok()) else {
                bail!("no port in xypriss's `listening` event: {listening}");
            };
            pool.wait_event("worker_ready", Duration::from_secs(10))?;
            let result = load(&wrk, port);
            drop(pool.stop());
            runs.entry(WATCHED).or_default().push(result?);
        }
        let (base_rps, base_p99) = medians(&runs[DIRECT]);
        println!(
            "http: Node.js server, wrk -t1 -c{CONNECTIONS} -d{SECONDS}s, median of {ROUNDS} interleaved runs"
        );
        println!("| condition | requests/s | vs direct | p99 latency | vs direct |");
        println!("| --- | --- | --- | --- | --- |");
        let mut rows = Vec::new();
        for condition in [DIRECT, UNWATCHED, WATCHED] {
            let (rps, p99) = medians(&runs[condition]);
            let pct = |v: f64, b: f64| (v - b) / b * 100.0;
            println!(
                "| {condition} | {rps:.0} | {:+.1}% | {p99:.2} ms | {:+.1}% |",
                pct(rps, base_rps),
                pct(p99, base_p99)
            );
            rows.push(json!({
                "condition": condition,
                "requests_per_s": rps,
                "p99_ms": p99,
                "rps_change_pct": pct(rps, base_rps),
                "p99_change_pct": pct(p99, base_p99),
                "runs": runs[condition].iter().map(|(r, p)| json!({"requests_per_s": r, "p99_ms": p})).collect::<Vec<_>>(),
            }));
        }
        Ok(
            json!({ "connections": CONNECTIONS, "seconds": SECONDS, "rounds": ROUNDS, "conditions": rows }),
        )
    }
}

fn medians(runs: &[(f64, f64)]) -> (f64, f64) {
    (
        median(runs.iter().map(|r| r.0).collect()),
        median(runs.iter().map(|r| r.1).collect()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_figures_are_read_in_their_units() {
        let report = "  Latency Distribution\n     50%  412.00us\n     99%    2.31ms\n  \
                      100 requests in 10.00s\nRequests/sec:  12345.67\nTransfer/sec: 1MB\n";
        assert_eq!(parse_wrk(report), Some((12345.67, 2.31)));
        let slow = "     99%    1.50s\nRequests/sec:  10.00\n";
        assert_eq!(parse_wrk(slow), Some((10.0, 1500.0)));
        assert_eq!(parse_wrk("Requests/sec:  10.00\n"), None);
    }
}
