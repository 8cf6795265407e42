//! `dashboards`: the alert latency of `latency` (one worker swinging across
//! its thresholds), with the status server on and no dashboard open, then
//! with ten open: ten followers of `/events` reading as a browser does. The
//! status server runs on the control loop's thread, so what the dashboards
//! cost shows here. Also: how soon the same crossings reach a dashboard
//! (kernel timestamp → the SSE line read by one of the ten).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    Bench, Pool,
    latency::{Crossings, crossing_latencies},
    monotonic_ns, percentile,
};

const CROSSINGS: usize = 2000;
const DASHBOARDS: usize = 10;

/// A follower of `/events` that reads everything; the first one also times
/// the threshold samples it receives (kernel timestamp → line read), in µs.
fn dashboard(
    address: &str,
    timed: bool,
    stop: Arc<AtomicBool>,
) -> Result<thread::JoinHandle<Vec<f64>>> {
    let mut stream = TcpStream::connect(address).context("connecting to /events")?;
    stream.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    Ok(thread::spawn(move || {
        let mut latencies = Vec::new();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while !stop.load(Ordering::Relaxed) && reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if timed && line.contains(r#""trigger":"threshold""#) {
                let read_at = monotonic_ns();
                let sent = line
                    .strip_prefix("data: ")
                    .and_then(|d| serde_json::from_str::<Value>(d).ok())
                    .and_then(|v| v["monotonicNs"].as_u64());
                if let Some(at) = sent {
                    latencies.push(read_at.saturating_sub(at) as f64 / 1000.0);
                }
            }
            line.clear();
        }
        latencies.sort_by(f64::total_cmp);
        latencies
    }))
}

impl Bench {
    /// The pool's crossings with `dashboards` followers of `/events`, and
    /// what the first follower saw.
    fn with_dashboards(&self, dashboards: usize) -> Result<(Crossings, Vec<f64>)> {
        let demo = self.demo.to_str().context("demo path")?;
        let pool = Pool::start(
            &self.xypriss,
            &[
                "--workers",
                "1",
                "--require-ebpf",
                "--max-memory-per-worker",
                "64MiB",
                "--status-addr",
                "127.0.0.1:0",
                "--name",
                "bench-dashboards",
                demo,
                "oscillate",
                "40",
                "72",
            ],
        )?;
        let server = pool.wait_event("status_server", Duration::from_secs(30))?;
        let address = server["address"].as_str().context("address")?.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let followers = (0..dashboards)
            .map(|i| dashboard(&address, i == 0, Arc::clone(&stop)))
            .collect::<Result<Vec<_>>>()?;
        let crossings = crossing_latencies(&pool, CROSSINGS, Duration::from_secs(120))?;
        stop.store(true, Ordering::Relaxed);
        drop(pool.stop());
        let mut seen = Vec::new();
        for (i, follower) in followers.into_iter().enumerate() {
            let latencies = follower
                .join()
                .map_err(|_| anyhow::anyhow!("a follower panicked"))?;
            if i == 0 {
                seen = latencies;
            }
        }
        if crossings.samples_us.len() < 1000 {
            bail!("only {} crossings seen in time", crossings.samples_us.len());
        }
        Ok((crossings, seen))
    }

    pub(super) fn dashboards(&self) -> Result<Value> {
        let (none, _) = self.with_dashboards(0)?;
        let (ten, seen) = self.with_dashboards(DASHBOARDS)?;
        let row = |c: &Crossings| {
            json!({
                "crossings": c.samples_us.len(),
                "sample_p50_us": percentile(&c.samples_us, 0.5),
                "sample_p99_us": percentile(&c.samples_us, 0.99),
                "alerts": c.alerts_us.len(),
                "alert_p50_us": percentile(&c.alerts_us, 0.5),
                "alert_p99_us": percentile(&c.alerts_us, 0.99),
                "alert_max_us": percentile(&c.alerts_us, 1.0),
                "events_lost": c.lost,
            })
        };
        println!("dashboards: threshold crossing (kernel) → memory_alert read from stdout");
        println!("| dashboards open | alerts | p50 | p99 | max | events lost |");
        println!("| --- | --- | --- | --- | --- | --- |");
        for (n, c) in [(0, &none), (DASHBOARDS, &ten)] {
            println!(
                "| {n} | {} | {:.0} µs | {:.0} µs | {:.0} µs | {} |",
                c.alerts_us.len(),
                percentile(&c.alerts_us, 0.5),
                percentile(&c.alerts_us, 0.99),
                percentile(&c.alerts_us, 1.0),
                c.lost
            );
        }
        println!(
            "on a dashboard (kernel → SSE line read), {} crossings: p50 {:.0} µs | p99 {:.0} µs | max {:.0} µs",
            seen.len(),
            percentile(&seen, 0.5),
            percentile(&seen, 0.99),
            percentile(&seen, 1.0)
        );
        Ok(json!({
            "none": row(&none),
            "ten": row(&ten),
            "on_a_dashboard": {
                "crossings": seen.len(),
                "p50_us": percentile(&seen, 0.5),
                "p99_us": percentile(&seen, 0.99),
                "max_us": percentile(&seen, 1.0),
            },
        }))
    }
}
