//! `leak`: leak detection on real processes, every scenario in its own pool,
//! side by side: the time to detect the leaks, and false positives on the
//! steady patterns.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::{Bench, Pool};

impl Bench {
    pub(super) fn leak(&self, minutes: f64) -> Result<Value> {
        const LEAKS: [(&str, &str, u64); 2] = [
            ("leak1m", "1 MiB/s leak", 15),
            ("leak100k", "100 KiB/s leak", 180),
        ];
        const STEADY: [(&str, &str); 4] = [
            ("warmup", "warm-up to +64 MiB, then flat"),
            ("sawtooth", "GC sawtooth, 24 MiB every 4 s"),
            ("step", "one-off +64 MiB step at 30 s"),
            ("churn", "churn, 1-64 MiB held briefly"),
        ];
        let demo = self.demo.to_str().context("demo path")?.to_owned();
        let run_for = Duration::from_secs_f64(minutes * 60.0);
        let scenarios: Vec<(&str, &str, Option<u64>)> = LEAKS
            .iter()
            .map(|&(n, d, target)| (n, d, Some(target)))
            .chain(STEADY.iter().map(|&(n, d)| (n, d, None)))
            .collect();
        let handles: Vec<_> = scenarios
            .iter()
            .map(|&(name, _, target)| {
                let xypriss = self.xypriss.clone();
                let demo = demo.clone();
                thread::spawn(move || -> Result<(Option<f64>, usize)> {
                    let pool = Pool::start(
                        &xypriss,
                        &[
                            "--workers",
                            "1",
                            "--memory-leak-detection",
                            "true",
                            "--name",
                            name,
                            &demo,
                            "pattern",
                            name,
                        ],
                    )?;
                    let spawned = pool.wait_event("worker_spawned", Duration::from_secs(20))?;
                    let spawned_ms = spawned["timestamp"].as_u64().unwrap_or(0);
                    // Leaks: until found (at most 5 × the target); steady: the whole run.
                    let deadline =
                        Instant::now() + target.map_or(run_for, |t| Duration::from_secs(t * 5));
                    let (mut detected, mut alerts) = (None, 0);
                    while let Some((_, e)) =
                        pool.next(deadline.saturating_duration_since(Instant::now()))
                    {
                        if e["event"] == "memory_alert" && e["type"] == "leak_detected" {
                            alerts += 1;
                            if detected.is_none() {
                                let at = e["timestamp"].as_u64().unwrap_or(0);
                                detected = Some(at.saturating_sub(spawned_ms) as f64 / 1000.0);
                            }
                            if target.is_some() {
                                break;
                            }
                        }
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                    drop(pool.stop());
                    Ok((detected, alerts))
                })
            })
            .collect();
        println!(
            "leak: real processes on a 100 MiB baseline, side by side; steady scenarios for {minutes} min"
        );
        println!("| scenario | expected | result | target |");
        println!("| --- | --- | --- | --- |");
        let mut rows = Vec::new();
        for ((name, description, target), handle) in scenarios.iter().zip(handles) {
            let (detected, alerts) = handle
                .join()
                .map_err(|_| anyhow::anyhow!("{name} panicked"))??;
            let (result, met) = match (target, detected) {
                (Some(t), Some(s)) => (format!("found after {s:.1} s"), s <= *t as f64),
                (Some(_), None) => ("not found".to_string(), false),
                (None, None) => ("no false positive".to_string(), true),
                (None, Some(s)) => (
                    format!("{alerts} false positive(s), first after {s:.1} s"),
                    false,
                ),
            };
            let target_text = match target {
                Some(t) => format!("under {t} s"),
                None => format!("none in {minutes} min"),
            };
            let verdict = if met { "met" } else { "**missed**" };
            println!(
                "| {description} | {} | {result} | {target_text}: {verdict} |",
                if target.is_some() { "leak" } else { "no leak" }
            );
            rows.push(json!({
                "scenario": name,
                "leak": target.is_some(),
                "detected_after_s": detected,
                "leak_alerts": alerts,
                "target_s": target,
                "met": met,
            }));
        }
        Ok(json!({ "minutes": minutes, "scenarios": rows }))
    }
}
