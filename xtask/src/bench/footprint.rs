//! `footprint`: what an idle pool costs. xypriss starts N workers that each
//! touch 1 MiB and say `READY=1`; the time until all are ready, then
//! xypriss's own RSS and CPU while they idle.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::{Bench, Pool, vm_rss};

/// CPU time (user + system) a process used so far, in seconds.
pub(super) fn cpu_seconds(pid: u32) -> Result<f64> {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .context("/proc/PID/stat has no `)`")?
        .1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        Ok(fields.get(i).context("/proc/PID/stat is short")?.parse()?)
    };
    Ok((field(11)? + field(12)?) as f64 / hz)
}

impl Bench {
    pub(super) fn footprint(&self) -> Result<Value> {
        const SECONDS: u64 = 10;
        let demo = self.demo.to_str().context("demo path")?;
        println!("footprint: xypriss with idle workers (`xypriss-demo steps 1`), over {SECONDS} s");
        println!("| workers | start until all ready | xypriss RSS | xypriss CPU |");
        println!("| --- | --- | --- | --- |");
        let mut rows = Vec::new();
        for workers in [16u32, 64, 256] {
            let count = workers.to_string();
            let started = Instant::now();
            let pool = Pool::start(
                &self.xypriss,
                &[
                    "--workers",
                    &count,
                    "--require-ebpf",
                    "--ready",
                    "notify",
                    demo,
                    "steps",
                    "1",
                ],
            )?;
            let mut ready = 0;
            while ready < workers {
                pool.wait_event("worker_ready", Duration::from_secs(60))?;
                ready += 1;
            }
            let startup = started.elapsed();
            thread::sleep(Duration::from_secs(1));
            let pid = pool.child.id();
            let before = cpu_seconds(pid)?;
            let start = Instant::now();
            thread::sleep(Duration::from_secs(SECONDS));
            let used = cpu_seconds(pid)? - before;
            let elapsed = start.elapsed().as_secs_f64();
            let cpu_pct = used / elapsed * 100.0;
            let rss_kib = vm_rss(pid).context("xypriss is gone")? / 1024;
            drop(pool.stop());
            println!(
                "| {workers} | {:.0} ms | {:.1} MiB | {cpu_pct:.2}% of a core |",
                startup.as_secs_f64() * 1000.0,
                rss_kib as f64 / 1024.0
            );
            rows.push(json!({
                "workers": workers,
                "startup_ms": startup.as_secs_f64() * 1000.0,
                "rss_kib": rss_kib,
                "cpu_pct_of_core": cpu_pct,
                "seconds": elapsed,
            }));
        }
        Ok(json!({ "runs": rows }))
    }
}
