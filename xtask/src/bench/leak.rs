//! `leak`: leak detection on real processes, every scenario in its own pool,
//! side by side: the time to detect the leaks, and false positives on the
//! steady patterns. The demo's patterns sit on a 100 MiB baseline; the
//! `stress-ng` ones are real allocators: `--vm` with `--vm-hang 0` (touch
//! 256 MiB, then hold: steady), `--bigheap` (a heap that only grows, by
//! `realloc`) and `--malloc` (allocation churn). Unchecked, bigheap grows
//! about 1 GiB/s here and malloc takes a whole core, so they run in a v1 cpu
//! cgroup with a CPU quota: bigheap then grows about 20 MiB/s.

use std::{
    fs,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{Bench, Pool, peers};

/// One pool of the benchmark.
struct Scenario {
    name: &'static str,
    description: &'static str,
    /// The leaks' time-to-detect target in seconds; `None` for a steady pattern.
    target: Option<u64>,
    /// A cpu-cgroup quota, in percent of a core, for the worker.
    cpu_percent: Option<u32>,
    app: Vec<String>,
}

/// A v1 cpu cgroup with a CPU quota, removed on drop (once empty).
struct CpuQuota {
    path: PathBuf,
}

impl CpuQuota {
    fn new(name: &str, percent: u32) -> Result<Self> {
        let path = PathBuf::from(format!("/sys/fs/cgroup/cpu/xypriss-bench-{name}"));
        fs::create_dir_all(&path)
            .with_context(|| format!("creating the cpu cgroup {}", path.display()))?;
        let quota = Self { path };
        // The worker moves itself in, and workers do not run as root: any
        // user may write the cgroup's process list (v1 also asks that the
        // writer be the process it moves, which it is).
        fs::set_permissions(
            quota.path.join("cgroup.procs"),
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .context("opening cgroup.procs to the worker's user")?;
        fs::write(quota.path.join("cpu.cfs_period_us"), "100000")?;
        fs::write(
            quota.path.join("cpu.cfs_quota_us"),
            (percent * 1000).to_string(),
        )
        .context("setting cpu.cfs_quota_us")?;
        Ok(quota)
    }

    /// `command` run as a shell line that first moves itself into the cgroup.
    fn wrap(&self, command: &[String]) -> Vec<String> {
        let procs = self.path.join("cgroup.procs");
        vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("echo $$ > {} && exec \"$@\"", procs.display()),
            "sh".into(),
        ]
        .into_iter()
        .chain(command.iter().cloned())
        .collect()
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.path);
    }
}

impl Bench {
    fn leak_scenarios(&self, run_for: Duration) -> Result<Vec<Scenario>> {
        let demo = self.demo.to_str().context("demo path")?;
        let pattern = |name: &'static str, description, target| Scenario {
            name,
            description,
            target,
            cpu_percent: None,
            app: vec![demo.into(), "pattern".into(), name.into()],
        };
        let stress_ng = peers::debian("stress-ng", "stress-ng")?;
        let stress_ng = stress_ng.to_str().context("stress-ng path")?;
        // Longer than any scenario: the pool stops it first.
        let timeout = format!("{}s", run_for.as_secs() + 600);
        let stress = |name, description, target, cpu_percent, args: &[&str]| Scenario {
            name,
            description,
            target,
            cpu_percent,
            // Workers run as nobody here, who cannot write in the checkout.
            app: [
                stress_ng,
                "-q",
                "--temp-path",
                "/tmp",
                "--timeout",
                &timeout,
            ]
            .iter()
            .chain(args)
            .map(|a| a.to_string())
            .collect(),
        };
        Ok(vec![
            pattern("leak1m", "1 MiB/s leak", Some(15)),
            pattern("leak100k", "100 KiB/s leak", Some(180)),
            pattern("warmup", "warm-up to +64 MiB, then flat", None),
            pattern("sawtooth", "GC sawtooth, 24 MiB every 4 s", None),
            pattern("step", "one-off +64 MiB step at 30 s", None),
            pattern("churn", "churn, 1-64 MiB held briefly", None),
            pattern(
                "cache",
                "cache filling 20 s at 4 MiB/s, then churning (4 MiB/s of garbage collected every 16 s)",
                None,
            ),
            stress(
                "stress-bigheap",
                "stress-ng --bigheap 1 (1% of a core: about 20 MiB/s)",
                // Growth this fast must last 60 s to be a leak (see
                // detect/leak.rs), or the next scale that long.
                Some(75),
                Some(1),
                &["--bigheap", "1"],
            ),
            stress(
                "stress-vm-hang",
                "stress-ng --vm 1 --vm-bytes 256M --vm-hang 0",
                None,
                None,
                &["--vm", "1", "--vm-bytes", "256M", "--vm-hang", "0"],
            ),
            stress(
                "stress-malloc",
                "stress-ng --malloc 1 (25% of a core)",
                None,
                Some(25),
                &["--malloc", "1"],
            ),
        ])
    }

    pub(super) fn leak(&self, minutes: f64) -> Result<Value> {
        let run_for = Duration::from_secs_f64(minutes * 60.0);
        let scenarios = self.leak_scenarios(run_for)?;
        let handles: Vec<_> = scenarios
            .iter()
            .map(|scenario| {
                let xypriss = self.xypriss.clone();
                let (name, target) = (scenario.name, scenario.target);
                let quota = scenario
                    .cpu_percent
                    .map(|percent| CpuQuota::new(name, percent))
                    .transpose();
                let app = scenario.app.clone();
                thread::spawn(move || -> Result<(Option<f64>, usize)> {
                    let quota = quota?;
                    let app = quota.as_ref().map_or(app.clone(), |q| q.wrap(&app));
                    let mut args = vec![
                        "--workers",
                        "1",
                        "--memory-leak-detection",
                        "true",
                        "--name",
                        name,
                        "--",
                    ];
                    args.extend(app.iter().map(String::as_str));
                    let pool = Pool::start(&xypriss, &args)?;
                    let spawned = pool.wait_event("worker_spawned", Duration::from_secs(20))?;
                    let spawned_ms = spawned["timestamp"].as_u64().unwrap_or(0);
                    // Leaks: until found (at most 5 × the target); steady: the whole run.
                    let deadline =
                        Instant::now() + target.map_or(run_for, |t| Duration::from_secs(t * 5));
                    let (mut detected, mut alerts) = (None, 0);
                    while let Some((_, e)) =
                        pool.next(deadline.saturating_duration_since(Instant::now()))
                    {
                        // A scenario whose worker cannot run measures nothing.
                        if e["event"] == "worker_errored" {
                            bail!(
                                "{name}: {}",
                                e["message"].as_str().unwrap_or("the worker errored")
                            );
                        }
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
        for (scenario, handle) in scenarios.iter().zip(handles) {
            let (name, description, target) =
                (scenario.name, scenario.description, &scenario.target);
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
