//! `overhead`: the observer's cost on the page-fault path, in nanoseconds
//! per fault of a fault-heavy allocator, cold and warm: unobserved, xypriss
//! running but the process unwatched, watched, and bpftrace doing the same
//! per-process `rss_stat` accounting, and with empty programs: bpftrace's on
//! the classic tracepoint, and a raw-tracepoint one (`raw_tp`), the floor
//! under xypriss's unwatched cost. The
//! benchmark process times itself in thread CPU time, so a busy machine
//! slows each fault less than it would wall-clock figures, though caches
//! shared with other work still do.
//!
//! The conditions run in rounds, one after the other, each round starting
//! one condition later, so that this VM's drift (its first touch varies by a
//! quarter from run to run) hits them alike; an overhead is the median over
//! the rounds of each round's ratio to that round's unobserved run. Then
//! the kernel's own accounting of xypriss's programs, measured inside one
//! faulting process, so that the drift between processes cancels out
//! (`accounting.rs`).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::{Value, json};

use super::{Bench, Pool, accounting, median, peers, raw_tp::EmptyRawTracepoint};

/// The floor: the kernel running a program that does nothing, on the
/// tracepoint xypriss's unwatched path starts from.
const EMPTY_RAW_TRACEPOINT: &str = "empty raw tracepoint program on rss_stat";

impl Bench {
    /// Runs the fault benchmark as a plain process; returns (cold, warm) ns per fault.
    fn faultbench(&self) -> Result<(f64, f64)> {
        let out = Command::new(&self.demo)
            .args(["faultbench", "512", "9"])
            .output()
            .context("running the fault benchmark")?;
        parse_faultbench(&String::from_utf8_lossy(&out.stdout))
    }

    pub(super) fn overhead(&self) -> Result<Value> {
        const REPEATS: usize = 9;
        let demo = self.demo.to_str().context("demo path")?;
        let bpftrace = peers::debian("bpftrace", "bpftrace")
            .inspect_err(|e| eprintln!("xtask: {e:#}; the bpftrace rows are left out"))
            .ok();
        let mut conditions: Vec<&str> = vec![
            "unobserved",
            "observed, unwatched",
            "watched",
            EMPTY_RAW_TRACEPOINT,
        ];
        if bpftrace.is_some() {
            conditions.extend([
                "bpftrace rss_stat accounting, watched",
                "bpftrace empty classic tracepoint",
            ]);
        }
        let mut samples: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        // Interleaved, so that drift on this VM hits every condition alike;
        // each round starts one condition later, so that none always runs
        // first (or right after another that leaves the machine warm).
        for round in 0..REPEATS {
            for &condition in conditions.iter().cycle().skip(round).take(conditions.len()) {
                let (cold, warm) = match condition {
                    "unobserved" => self.faultbench()?,
                    "observed, unwatched" => {
                        let pool = Pool::start(
                            &self.xypriss,
                            &["--workers", "1", "--require-ebpf", demo, "steps", "1"],
                        )?;
                        pool.wait_event("observer", Duration::from_secs(10))?;
                        let r = self.faultbench()?;
                        drop(pool.stop());
                        r
                    }
                    "watched" => {
                        let pool = Pool::start(
                            &self.xypriss,
                            &[
                                "--workers",
                                "1",
                                "--require-ebpf",
                                demo,
                                "faultbench",
                                "512",
                                "9",
                            ],
                        )?;
                        let line = pool.wait_log("faultbench", Duration::from_secs(60))?;
                        drop(pool.stop());
                        parse_faultbench(&line)?
                    }
                    EMPTY_RAW_TRACEPOINT => {
                        let _empty = EmptyRawTracepoint::attach("rss_stat")?;
                        self.faultbench()?
                    }
                    other => {
                        let script = match other {
                            "bpftrace rss_stat accounting, watched" => {
                                "tracepoint:kmem:rss_stat /comm == \"xypriss-demo\"/ { @rss[pid, args->member] = args->size; }"
                            }
                            _ => "tracepoint:kmem:rss_stat { }",
                        };
                        let tracer =
                            Tracer::start(bpftrace.as_deref().context("bpftrace")?, script)?;
                        let r = self.faultbench()?;
                        drop(tracer);
                        r
                    }
                };
                let entry = samples.entry(condition).or_default();
                entry.0.push(cold);
                entry.1.push(warm);
            }
        }
        let (base_cold, base_warm) = samples.get("unobserved").cloned().context("no baseline")?;
        println!(
            "overhead: ns per page fault, 512 MiB first touch, median of {REPEATS} rounds (overhead: of each round's ratio to its unobserved run)"
        );
        println!("| condition | cold ns/fault | cold overhead | warm ns/fault | warm overhead |");
        println!("| --- | --- | --- | --- | --- |");
        let mut rows = Vec::new();
        for &condition in &conditions {
            let (colds, warms) = &samples[condition];
            let (cold, warm) = (median(colds.clone()), median(warms.clone()));
            let (cold_pct, warm_pct) =
                (paired_pct(colds, &base_cold), paired_pct(warms, &base_warm));
            println!("| {condition} | {cold:.0} | {cold_pct:+.1}% | {warm:.0} | {warm_pct:+.1}% |");
            rows.push(json!({
                "condition": condition,
                "cold_ns_per_fault": cold,
                "warm_ns_per_fault": warm,
                "cold_overhead_pct": cold_pct,
                "warm_overhead_pct": warm_pct,
                "runs_cold": samples[condition].0,
                "runs_warm": samples[condition].1,
            }));
        }
        let accounting = self.accounting()?;
        println!(
            "in-program time (the kernel's BPF statistics, {} s of faults each, after the rounds; \
             overhead: the time over the empty program's, on the faulting process's CPU time)",
            accounting::WINDOW.as_secs()
        );
        println!("| condition | program runs/s | ns per run | over the empty program | overhead |");
        println!("| --- | --- | --- | --- | --- |");
        for row in &accounting {
            let number = |field: &str| row[field].as_f64().unwrap_or(f64::NAN);
            println!(
                "| {} | {:.0} | {:.1} | {:+.1} | {:+.1}% |",
                row["condition"].as_str().unwrap_or("?"),
                number("program_runs_per_s"),
                number("ns_per_run"),
                number("ns_per_run_over_empty"),
                number("program_share_pct"),
            );
        }
        Ok(json!({ "repeats": REPEATS, "conditions": rows, "kernel_accounting": accounting }))
    }
}

/// The median over rounds of each round's overhead against its baseline,
/// in percent.
fn paired_pct(runs: &[f64], base: &[f64]) -> f64 {
    median(
        runs.iter()
            .zip(base)
            .map(|(v, b)| (v - b) / b * 100.0)
            .collect(),
    )
}

/// Reads `cold_ns_per_fault=… warm_ns_per_fault=…` from a faultbench line.
fn parse_faultbench(text: &str) -> Result<(f64, f64)> {
    let field = |name: &str| -> Option<f64> {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    match (field("cold_ns_per_fault"), field("warm_ns_per_fault")) {
        (Some(c), Some(w)) => Ok((c, w)),
        _ => bail!("no faultbench figures in {text:?}"),
    }
}

/// A running bpftrace script, stopped on drop, with tracefs mounted for it
/// (bpftrace resolves tracepoints there) and unmounted after if we mounted it.
struct Tracer {
    child: Child,
    mounted: bool,
}

const TRACEFS: &str = "/sys/kernel/tracing";

impl Tracer {
    fn start(bpftrace: &Path, script: &str) -> Result<Self> {
        let mounted = !Path::new(TRACEFS).join("events").is_dir();
        if mounted {
            nix::mount::mount(
                Some("nodev"),
                TRACEFS,
                Some("tracefs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .context("mounting tracefs for bpftrace")?;
        }
        let child = Command::new(bpftrace)
            .args(["-e", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace")?;
        // From here on, dropping the tracer stops bpftrace and unmounts.
        let mut tracer = Self { child, mounted };
        let stdout = tracer.child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // bpftrace says "Attaching N probes..." once they are attached.
        match lines.next() {
            Some(Ok(line)) if line.contains("Attaching") => {}
            other => bail!("bpftrace did not attach: {other:?}"),
        }
        thread::spawn(move || for _ in lines {});
        thread::sleep(Duration::from_millis(200));
        Ok(tracer)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let _ = self.child.wait();
        if self.mounted {
            let _ = nix::mount::umount2(TRACEFS, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overhead_is_the_median_of_each_rounds_ratio() {
        // The machine drifts from round to round; each round's ratio holds.
        let base = [1000.0, 1500.0, 2000.0];
        assert!((paired_pct(&[1100.0, 1650.0, 2200.0], &base) - 10.0).abs() < 1e-9);
        // One round disturbed does not move the median.
        assert!((paired_pct(&[1050.0, 1650.0, 3000.0], &base) - 10.0).abs() < 1e-9);
    }
}
