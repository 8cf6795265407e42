//! The second measure of `bench overhead`: the kernel's own accounting of
//! the time spent in xypriss's programs, per run and as a share of the
//! faulting process's CPU time over the same window.
//!
//! The rounds' ratios compare separate processes, and on this VM a process
//! faults up to a tenth faster or slower than the one before it for no
//! reason of ours: that noise is as large as the effect. The kernel's BPF
//! statistics (`run_time_ns` and `run_cnt` in each program's fdinfo) time
//! every run in the faulting thread itself. They cost two clock reads per
//! run, which they count too, so the empty program's figure (the same
//! instrument on a program that does nothing) is taken off the others; and
//! they leave out the tracepoint's dispatch around the program, which is
//! what the empty program's row in the rounds measures. They are on only
//! for this pass, after the rounds.

use std::{
    fs,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{Bench, Pool, raw_tp::EmptyRawTracepoint};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// How long the faulting process runs before and during the window.
const SETTLE: Duration = Duration::from_secs(1);
pub(super) const WINDOW: Duration = Duration::from_secs(4);

/// A program's `run_time_ns` and `run_cnt`, summed over every program `pid`
/// holds open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ProgramTime {
    ns: u64,
    runs: u64,
}

/// One condition's window.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Window {
    programs: ProgramTime,
    /// The faulting process's CPU time meanwhile.
    cpu_ns: u64,
}

impl Window {
    fn ns_per_run(&self) -> f64 {
        self.programs.ns as f64 / self.programs.runs.max(1) as f64
    }

    /// Its row, with `instrument` (the empty program's ns per run) taken
    /// off each run.
    fn row(&self, condition: &str, instrument: f64) -> Value {
        let net_ns = (self.programs.ns as f64 - instrument * self.programs.runs as f64).max(0.0);
        json!({
            "condition": condition,
            "program_runs_per_s": self.programs.runs as f64 / WINDOW.as_secs_f64(),
            "ns_per_run": self.ns_per_run(),
            "ns_per_run_over_empty": self.ns_per_run() - instrument,
            "program_share_pct": share_pct(net_ns, self.cpu_ns.saturating_sub(self.programs.ns)),
        })
    }
}

/// `program_ns` as an overhead on `rest_ns`, the process's CPU time
/// without the programs, in percent.
fn share_pct(program_ns: f64, rest_ns: u64) -> f64 {
    program_ns / rest_ns.max(1) as f64 * 100.0
}

/// Sums `run_time_ns` and `run_cnt` over the BPF programs in an fdinfo
/// listing's texts.
fn program_time<'a>(fdinfos: impl IntoIterator<Item = &'a str>) -> ProgramTime {
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    fdinfos
        .into_iter()
        .filter(|text| text.lines().any(|line| line.starts_with("prog_tag:")))
        .fold(ProgramTime::default(), |sum, text| ProgramTime {
            ns: sum.ns + field(text, "run_time_ns:"),
            runs: sum.runs + field(text, "run_cnt:"),
        })
}

fn programs_of(pid: u32) -> Result<ProgramTime> {
    let dir = format!("/proc/{pid}/fdinfo");
    let texts: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .filter_map(|entry| fs::read_to_string(entry.ok()?.path()).ok())
        .collect();
    Ok(program_time(texts.iter().map(String::as_str)))
}

/// A process's CPU time so far: the first field of its `schedstat`.
fn cpu_ns(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/schedstat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .with_context(|| format!("no CPU time in {path}: {text:?}"))
}

/// The kernel's BPF statistics, on while this lives; then as they were.
struct Stats {
    before: String,
}

impl Stats {
    fn on() -> Result<Self> {
        let before =
            fs::read_to_string(STATS_SYSCTL).with_context(|| format!("reading {STATS_SYSCTL}"))?;
        fs::write(STATS_SYSCTL, "1").with_context(|| format!("writing {STATS_SYSCTL}"))?;
        Ok(Self { before })
    }
}

impl Drop for Stats {
    fn drop(&mut self) {
        let _ = fs::write(STATS_SYSCTL, self.before.trim());
    }
}

/// Stops and reaps a process on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The window over `WINDOW`, after `SETTLE`, of the programs `holder` has
/// open and the CPU time of `faulting`.
fn window(holder: u32, faulting: u32) -> Result<Window> {
    thread::sleep(SETTLE);
    let (programs, cpu) = (programs_of(holder)?, cpu_ns(faulting)?);
    thread::sleep(WINDOW);
    let (programs_after, cpu_after) = (programs_of(holder)?, cpu_ns(faulting)?);
    if programs_after.runs <= programs.runs {
        bail!("xypriss's programs did not run while pid {faulting} faulted");
    }
    Ok(Window {
        programs: ProgramTime {
            ns: programs_after.ns - programs.ns,
            runs: programs_after.runs - programs.runs,
        },
        cpu_ns: cpu_after.saturating_sub(cpu),
    })
}

/// A fault benchmark that outlasts the window, stopped on drop.
fn faulting(demo: &std::path::Path) -> Result<Reaped> {
    Command::new(demo)
        .args(FAULTBENCH)
        .stdout(Stdio::null())
        .spawn()
        .map(Reaped)
        .context("starting the fault benchmark")
}

const FAULTBENCH: [&str; 3] = ["faultbench", "512", "1000"];

impl Bench {
    /// The empty program's and xypriss's two conditions' windows, as rows.
    pub(super) fn accounting(&self) -> Result<Vec<Value>> {
        let demo = self.demo.to_str().context("demo path")?;
        let _stats = Stats::on()?;

        let empty = {
            let _empty = EmptyRawTracepoint::attach("rss_stat")?;
            let outside = faulting(&self.demo)?;
            window(std::process::id(), outside.0.id())?
        };

        let pool = Pool::start(
            &self.xypriss,
            &["--workers", "1", "--require-ebpf", demo, "steps", "1"],
        )?;
        pool.wait_event("observer", Duration::from_secs(10))?;
        let unwatched = {
            let outside = faulting(&self.demo)?;
            window(pool.pid(), outside.0.id())?
        };
        drop(pool.stop());

        let mut args = vec!["--workers", "1", "--require-ebpf", demo];
        args.extend(FAULTBENCH);
        let pool = Pool::start(&self.xypriss, &args)?;
        let spawned = pool.wait_event("worker_spawned", Duration::from_secs(10))?;
        let worker = spawned["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .with_context(|| format!("no pid in {spawned}"))?;
        let watched = window(pool.pid(), worker)?;
        drop(pool.stop());

        let instrument = empty.ns_per_run();
        Ok(vec![
            empty.row("empty raw tracepoint program on rss_stat", instrument),
            unwatched.row("observed, unwatched", instrument),
            watched.row("watched", instrument),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_programs_and_skips_other_fds() {
        let program = "pos:\t0\nflags:\t02000002\nprog_type:\t17\nprog_jited:\t1\n\
                       prog_tag:\t0123456789abcdef\nmemlock:\t4096\nprog_id:\t41\n\
                       run_time_ns:\t3000\nrun_cnt:\t30\nrecursion_misses:\t0\n";
        let other = "pos:\t0\nflags:\t02\nmnt_id:\t3\nino:\t7\n";
        let map = "pos:\t0\nflags:\t02000002\nmap_type:\t27\nmax_entries:\t1\n";
        let idle = "prog_tag:\tfedcba9876543210\nrun_time_ns:\t0\nrun_cnt:\t0\n";
        assert_eq!(
            program_time([program, other, map, idle, program]),
            ProgramTime { ns: 6000, runs: 60 }
        );
    }

    #[test]
    fn a_share_is_the_programs_time_net_of_the_instrument_over_the_rest() {
        // 1000 runs of 80 ns in 1.08 ms of CPU time, the instrument 30 ns a
        // run: 50 µs of program on the 1 ms without it, 5%.
        let window = Window {
            programs: ProgramTime {
                ns: 80_000,
                runs: 1000,
            },
            cpu_ns: 1_080_000,
        };
        let row = window.row("watched", 30.0);
        assert!((row["ns_per_run_over_empty"].as_f64().unwrap() - 50.0).abs() < 1e-9);
        assert!((row["program_share_pct"].as_f64().unwrap() - 5.0).abs() < 1e-9);
        // A program no dearer than the instrument costs nothing, never less.
        let row = window.row("unwatched", 90.0);
        assert!(row["program_share_pct"].as_f64().unwrap().abs() < 1e-9);
    }
}
