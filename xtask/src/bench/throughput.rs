//! `throughput`: how fast one worker can allocate before xypriss loses an
//! event, at three granularities.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::{Bench, Pool};

impl Bench {
    pub(super) fn throughput(&self) -> Result<Value> {
        let demo = self.demo.to_str().context("demo path")?;
        println!(
            "throughput: one worker allocating at a target rate for up to 3 s (at most 4 GiB)"
        );
        println!("| granularity | target MiB/s | achieved MiB/s | samples | events lost |");
        println!("| --- | --- | --- | --- | --- |");
        let mut rows = Vec::new();
        for granularity in ["1MiB", "64KiB", "4KiB"] {
            for rate in [256u64, 1024, 4096, 100_000] {
                let seconds = (4096.0 / rate as f64).min(3.0);
                let rate_arg = rate.to_string();
                let pool = Pool::start(
                    &self.xypriss,
                    &[
                        "--workers",
                        "1",
                        "--require-ebpf",
                        "--granularity",
                        granularity,
                        demo,
                        "grow",
                        &rate_arg,
                    ],
                )?;
                let mut events = Vec::new();
                let deadline = Instant::now() + Duration::from_secs_f64(seconds + 0.3);
                while Instant::now() < deadline {
                    match pool.next(deadline.saturating_duration_since(Instant::now())) {
                        Some((_, e)) => events.push(e),
                        None => break,
                    }
                }
                events.extend(pool.stop());
                let samples: Vec<&Value> = events
                    .iter()
                    .filter(|e| e["event"] == "memory_sample" && e["trigger"] == "granularity")
                    .collect();
                let lost: u64 = events
                    .iter()
                    .filter(|e| e["event"] == "events_lost")
                    .filter_map(|e| e["count"].as_u64())
                    .sum();
                let achieved = match (samples.first(), samples.last()) {
                    (Some(a), Some(b)) => {
                        let bytes = b["rssBytes"].as_f64().unwrap_or(0.0)
                            - a["rssBytes"].as_f64().unwrap_or(0.0);
                        let ns = b["monotonicNs"].as_f64().unwrap_or(0.0)
                            - a["monotonicNs"].as_f64().unwrap_or(0.0);
                        if ns > 0.0 {
                            bytes / ns * 1e9 / (1 << 20) as f64
                        } else {
                            0.0
                        }
                    }
                    _ => 0.0,
                };
                let target = if rate >= 100_000 {
                    "as fast as it can".to_string()
                } else {
                    rate.to_string()
                };
                println!(
                    "| {granularity} | {target} | {achieved:.0} | {} | {lost} |",
                    samples.len()
                );
                rows.push(json!({
                    "granularity": granularity,
                    "target_mib_per_s": rate,
                    "achieved_mib_per_s": achieved,
                    "samples": samples.len(),
                    "events_lost": lost,
                }));
            }
        }
        Ok(json!({ "runs": rows }))
    }
}
