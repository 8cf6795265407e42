//! `scale`: does a bigger pool slow xypriss down? With 16, 64 and 256
//! workers, worker 0 swings across its thresholds (`xypriss-demo oscillate`)
//! while the others idle (`steps 1`); the crossing latency as in `latency`,
//! and xypriss's CPU and RSS meanwhile. The largest allocation rate with no
//! event lost is `throughput`'s.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{Bench, Pool, footprint::cpu_seconds, latency::crossing_latencies, percentile, vm_rss};

/// Crossings measured per pool size.
const CROSSINGS: usize = 1000;

impl Bench {
    pub(super) fn scale(&self) -> Result<Value> {
        let demo = self.demo.to_str().context("demo path")?;
        // Worker 0 oscillates, the others hold 1 MiB: one app, chosen by id.
        let script = format!(
            "if [ \"$XYPRISS_WORKER_ID\" = 0 ]; then exec {demo} oscillate 40 72; else exec {demo} steps 1; fi"
        );
        println!("scale: worker 0 swings across 51.2/60.8/64 MiB, the others idle");
        println!(
            "| workers | crossings | p50 | p99 | max | events lost | xypriss CPU | xypriss RSS |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        let mut rows = Vec::new();
        for workers in [16u32, 64, 256] {
            let count = workers.to_string();
            let pool = Pool::start(
                &self.xypriss,
                &[
                    "--workers",
                    &count,
                    "--require-ebpf",
                    "--name",
                    "scale",
                    "--max-memory-per-worker",
                    "64MiB",
                    // Alerts, but worker 0 keeps swinging.
                    "--enforce-hard-limits",
                    "false",
                    "--",
                    "/bin/sh",
                    "-c",
                    &script,
                ],
            )?;
            for _ in 0..workers {
                pool.wait_event("worker_spawned", Duration::from_secs(60))?;
            }
            let pid = pool.child.id();
            let cpu_before = cpu_seconds(pid)?;
            let started = Instant::now();
            let crossings = crossing_latencies(&pool, CROSSINGS, Duration::from_secs(90))?;
            let (latencies_us, lost) = (crossings.samples_us, crossings.lost);
            let cpu_pct =
                (cpu_seconds(pid)? - cpu_before) / started.elapsed().as_secs_f64() * 100.0;
            let rss = vm_rss(pid).context("xypriss is gone")?;
            drop(pool.stop());
            if latencies_us.len() < CROSSINGS / 2 {
                bail!(
                    "{workers} workers: only {} crossings seen in time",
                    latencies_us.len()
                );
            }
            let (p50, p99, max) = (
                percentile(&latencies_us, 0.5),
                percentile(&latencies_us, 0.99),
                percentile(&latencies_us, 1.0),
            );
            let rss_mib = rss as f64 / f64::from(1 << 20);
            println!(
                "| {workers} | {} | {p50:.0} µs | {p99:.0} µs | {max:.0} µs | {lost} | {cpu_pct:.1}% of a core | {rss_mib:.1} MiB |",
                latencies_us.len()
            );
            rows.push(json!({
                "workers": workers,
                "crossings": latencies_us.len(),
                "p50_us": p50,
                "p99_us": p99,
                "max_us": max,
                "events_lost": lost,
                "cpu_pct_of_core": cpu_pct,
                "rss_bytes": rss,
            }));
        }
        Ok(json!({ "runs": rows }))
    }
}
