//! `latency`: how soon a threshold crossing reaches a reader. One worker
//! swings across its three thresholds; for each crossing, the time from the
//! kernel's timestamp to the moment its line is read from xypriss's stdout.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{Bench, Pool, percentile};

/// What [`crossing_latencies`] saw.
pub(super) struct Crossings {
    /// Kernel timestamp → threshold `memory_sample` read, in µs, sorted.
    pub samples_us: Vec<f64>,
    /// Kernel timestamp of the crossing → its `memory_alert` read (a worker
    /// alert follows the threshold sample that raised it), in µs, sorted.
    pub alerts_us: Vec<f64>,
    pub lost: u64,
}

/// Reads `pool`'s events until `count` threshold crossings or `within`: the
/// latency of each crossing and of each alert, and the events lost meanwhile.
pub(super) fn crossing_latencies(pool: &Pool, count: usize, within: Duration) -> Result<Crossings> {
    let deadline = Instant::now() + within;
    let (mut latencies_us, mut lost) = (Vec::with_capacity(count), 0);
    let (mut alerts_us, mut crossed) = (Vec::new(), None);
    while latencies_us.len() < count && Instant::now() < deadline {
        let Some((read_at, event)) = pool.next(Duration::from_secs(5)) else {
            break;
        };
        if event["event"] == "events_lost" {
            lost += event["count"].as_u64().unwrap_or(0);
        }
        if event["event"] == "memory_sample" && event["trigger"] == "threshold" {
            let at = event["monotonicNs"].as_u64().context("monotonicNs")?;
            latencies_us.push(read_at.saturating_sub(at) as f64 / 1000.0);
            crossed = Some(at);
        }
        if event["event"] == "memory_alert"
            && event["type"] != "leak_detected"
            && let Some(at) = crossed.take()
        {
            alerts_us.push(read_at.saturating_sub(at) as f64 / 1000.0);
        }
    }
    latencies_us.sort_by(f64::total_cmp);
    alerts_us.sort_by(f64::total_cmp);
    Ok(Crossings {
        samples_us: latencies_us,
        alerts_us,
        lost,
    })
}

impl Bench {
    pub(super) fn latency(&self) -> Result<Value> {
        const CROSSINGS: usize = 2000;
        let demo = self.demo.to_str().context("demo path")?;
        // Thresholds at 51.2, 60.8 and 64 MiB; the worker swings between 40 and 72 MiB.
        let pool = Pool::start(
            &self.xypriss,
            &[
                "--workers",
                "1",
                "--require-ebpf",
                "--max-memory-per-worker",
                "64MiB",
                demo,
                "oscillate",
                "40",
                "72",
            ],
        )?;
        let Crossings {
            samples_us: latencies_us,
            alerts_us,
            lost,
        } = crossing_latencies(&pool, CROSSINGS, Duration::from_secs(120))?;
        let reader = pool.reader();
        drop(pool.stop());
        if latencies_us.len() < 1000 {
            bail!("only {} crossings seen in time", latencies_us.len());
        }
        let result = json!({
            "crossings": latencies_us.len(),
            "p50_us": percentile(&latencies_us, 0.5),
            "p90_us": percentile(&latencies_us, 0.9),
            "p99_us": percentile(&latencies_us, 0.99),
            "max_us": percentile(&latencies_us, 1.0),
            "events_lost": lost,
            "reader": reader,
            "alerts": alerts_us.len(),
            "alert_p50_us": percentile(&alerts_us, 0.5),
            "alert_p99_us": percentile(&alerts_us, 0.99),
            "alert_max_us": percentile(&alerts_us, 1.0),
        });
        println!(
            "latency: threshold crossing (kernel) → JSON line read from stdout (reader: {reader})"
        );
        println!("| crossings | p50 | p90 | p99 | max | events lost |");
        println!("| --- | --- | --- | --- | --- | --- |");
        println!(
            "| {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {lost} |",
            latencies_us.len(),
            percentile(&latencies_us, 0.5),
            percentile(&latencies_us, 0.9),
            percentile(&latencies_us, 0.99),
            percentile(&latencies_us, 1.0)
        );
        println!(
            "alerts (kernel crossing → memory_alert read): {} | p50 {:.0} µs | p99 {:.0} µs | max {:.0} µs",
            alerts_us.len(),
            percentile(&alerts_us, 0.5),
            percentile(&alerts_us, 0.99),
            percentile(&alerts_us, 1.0)
        );
        Ok(result)
    }
}
