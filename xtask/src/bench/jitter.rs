//! `jitter`: the machine's own floor under every latency figure. Debian's
//! `cyclictest` runs one `SCHED_FIFO` thread per CPU, at the default
//! priority of xypriss's loop (2), that sleeps 1 ms at a time and records how late each wake-up
//! came. No process woken by the kernel can be served faster than this: an
//! alert's tail on this machine is at least the tail measured here.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{Bench, peers};

const DURATION: Duration = Duration::from_secs(30);
/// The histogram's reach, in µs.
const HISTOGRAM_US: u64 = 20_000;

/// Per CPU: how many wake-ups came how late, from `cyclictest --histogram`.
#[derive(Default)]
struct Histogram {
    /// `(µs late, how many)`, ascending; wake-ups later than the histogram
    /// reaches count in a last bucket at [`HISTOGRAM_US`].
    buckets: Vec<(u64, u64)>,
    max_us: u64,
}

impl Histogram {
    fn total(&self) -> u64 {
        self.buckets.iter().map(|&(_, n)| n).sum()
    }

    fn at_least(&self, us: u64) -> u64 {
        self.buckets
            .iter()
            .filter(|&&(late, _)| late >= us)
            .map(|&(_, n)| n)
            .sum()
    }

    fn percentile(&self, p: f64) -> u64 {
        let rank = (self.total() as f64 * p).ceil() as u64;
        let mut seen = 0;
        for &(late, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return late;
            }
        }
        self.max_us
    }
}

/// Reads `cyclictest --quiet --histogram` output: a line per µs bucket with
/// a count per thread, then `# Max Latencies:` with one figure per thread.
fn parse(output: &str) -> Result<Vec<Histogram>> {
    let mut cpus: Vec<Histogram> = Vec::new();
    let per_thread = |line: &str, figures: &str, cpus: usize| -> Result<Vec<u64>> {
        let figures: Vec<u64> = figures
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("cyclictest: {line:?}"))?;
        if figures.len() != cpus {
            bail!(
                "cyclictest: {line:?} has {} figures for {cpus} threads",
                figures.len()
            );
        }
        Ok(figures)
    };
    for line in output.lines() {
        if let Some(max) = line.strip_prefix("# Max Latencies:") {
            let maxes = per_thread(line, max, cpus.len())?;
            for (cpu, max) in cpus.iter_mut().zip(maxes) {
                cpu.max_us = max;
            }
            continue;
        }
        if let Some(over) = line.strip_prefix("# Histogram Overflows:") {
            let overflows = per_thread(line, over, cpus.len())?;
            for (cpu, n) in cpus.iter_mut().zip(overflows) {
                if n > 0 {
                    cpu.buckets.push((HISTOGRAM_US, n));
                }
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("cyclictest: {line:?}"))?;
        let Some((&late, counts)) = fields.split_first() else {
            continue;
        };
        if cpus.is_empty() {
            cpus.resize_with(counts.len(), Histogram::default);
        }
        if counts.len() != cpus.len() {
            bail!(
                "cyclictest: {line:?} has {} counts for {} threads",
                counts.len(),
                cpus.len()
            );
        }
        for (cpu, &n) in cpus.iter_mut().zip(counts) {
            if n > 0 {
                cpu.buckets.push((late, n));
            }
        }
    }
    if cpus.is_empty() || cpus.iter().any(|c| c.total() == 0) {
        bail!("cyclictest reported no wake-ups");
    }
    Ok(cpus)
}

impl Bench {
    pub(super) fn jitter(&self) -> Result<Value> {
        let cyclictest = peers::debian("cyclictest", "rt-tests")?;
        let output = Command::new(cyclictest)
            .args([
                "--mlockall",
                "--smp",
                "--priority",
                "2",
                "--interval",
                "1000",
            ])
            .args(["--duration", &DURATION.as_secs().to_string()])
            .args(["--quiet", "--histogram", &HISTOGRAM_US.to_string()])
            .output()
            .context("running cyclictest")?;
        if !output.status.success() {
            bail!(
                "cyclictest failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let cpus = parse(&String::from_utf8_lossy(&output.stdout))?;
        println!(
            "jitter: how late a SCHED_FIFO 2 thread wakes from a 1 ms sleep, {} s per CPU",
            DURATION.as_secs()
        );
        println!("| CPU | wake-ups | p50 | p99 | max | ≥ 1 ms | ≥ 5 ms |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        let mut rows = Vec::new();
        for (n, cpu) in cpus.iter().enumerate() {
            println!(
                "| {n} | {} | {} µs | {} µs | {} µs | {} | {} |",
                cpu.total(),
                cpu.percentile(0.5),
                cpu.percentile(0.99),
                cpu.max_us,
                cpu.at_least(1000),
                cpu.at_least(5000)
            );
            rows.push(json!({
                "cpu": n,
                "wakeups": cpu.total(),
                "p50_us": cpu.percentile(0.5),
                "p99_us": cpu.percentile(0.99),
                "max_us": cpu.max_us,
                "at_least_1ms": cpu.at_least(1000),
                "at_least_5ms": cpu.at_least(5000),
            }));
        }
        Ok(json!({ "seconds": DURATION.as_secs(), "priority": "SCHED_FIFO 2", "cpus": rows }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "# /dev/cpu_dma_latency set to 0us
000000 000000\t000000
000001 000003\t000001
000002 000005\t000007
001200 000001\t000000
007000 000001\t000002
# Total: 000000010 000000010
# Min Latencies: 00001 00001
# Avg Latencies: 00002 00002
# Max Latencies: 07003 07100
# Histogram Overflows: 00000 00001
";

    #[test]
    fn a_histogram_gives_counts_percentiles_and_maxima_per_cpu() {
        let cpus = parse(OUTPUT).unwrap();
        assert_eq!(cpus.len(), 2);
        assert_eq!(cpus[0].total(), 10);
        assert_eq!(cpus[0].percentile(0.5), 2);
        assert_eq!(cpus[0].percentile(0.9), 1200);
        assert_eq!(cpus[0].percentile(0.99), 7000);
        assert_eq!(cpus[0].at_least(1000), 2);
        assert_eq!(cpus[1].at_least(5000), 3, "with the one past the histogram");
        assert_eq!(cpus[1].total(), 11);
        assert_eq!(cpus[1].max_us, 7100);
    }

    #[test]
    fn output_without_wake_ups_or_with_odd_columns_is_an_error() {
        assert!(parse("# Max Latencies: 1\n").is_err());
        assert!(parse("000001 000003 000001\n000002 000005\n").is_err());
        assert!(parse("000001 x\n").is_err());
    }
}
