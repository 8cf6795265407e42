//! The fallback source: polling `/proc/<pid>/status` and `/proc/<pid>/stat`
//! for each worker and its descendants, at `--poll-interval`.
//!
//! It sees what eBPF sees, late by up to one interval, and it reports the
//! same observations: a sample when the resident size moved by the
//! granularity or crossed a threshold, fork and exit of descendants.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    time::Duration,
};

use procfs::process::Process;
use tokio::time::{Interval, MissedTickBehavior, interval};

use super::{
    Counters, Observation, Settings, Trigger,
    faults::{self, Tally},
};

/// A process's counters from `/proc/<pid>/status` (RssFile, RssAnon, RssShmem, VmSwap).
pub fn counters(pid: u32) -> io::Result<Counters> {
    let status = Process::new(pid as i32)
        .and_then(|p| p.status())
        .map_err(io::Error::other)?;
    if status.vmrss.is_none() {
        // A zombie, or a process mid-exit: it holds no memory any more.
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} has no memory"),
        ));
    }
    let kib = |v: Option<u64>| v.unwrap_or(0) * 1024;
    Ok(Counters {
        file: kib(status.rssfile),
        anon: kib(status.rssanon),
        swap: kib(status.vmswap),
        shmem: kib(status.rssshmem),
    })
}

/// The pids of a process's children, over all its threads.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = Process::new(pid as i32).and_then(|p| p.tasks()) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| task.children().ok())
        .flatten()
        .collect()
}

struct Watched {
    root: u32,
    thresholds: [u64; 3],
    /// The descendants seen at the last poll, and their fault counts.
    faults: Tally,
    reported_rss: u64,
    level: u32,
}

pub struct ProcfsObserver {
    watched: BTreeMap<u32, Watched>,
    /// Thresholds of slots prepared for a process not yet started.
    pending: BTreeMap<u32, [u64; 3]>,
    granularity: u64,
    tick: Interval,
}

impl ProcfsObserver {
    pub fn new(config: &Settings) -> Self {
        let mut tick = interval(config.poll_interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            watched: BTreeMap::new(),
            pending: BTreeMap::new(),
            granularity: config.granularity,
            tick,
        }
    }

    pub fn prepare(&mut self, slot: u32, thresholds: [u64; 3]) {
        self.pending.insert(slot, thresholds);
    }

    pub fn watch(&mut self, slot: u32, pid: u32) -> io::Result<Counters> {
        let thresholds = self.pending.remove(&slot).unwrap_or_default();
        let seed = counters(pid)?;
        self.watched.insert(
            slot,
            Watched {
                root: pid,
                thresholds,
                faults: {
                    let mut tally = Tally::default();
                    tally.observe(pid, faults::read(pid).unwrap_or(0));
                    tally
                },
                reported_rss: seed.rss(),
                level: level(&thresholds, seed.rss()),
            },
        );
        Ok(seed)
    }

    pub fn unwatch(&mut self, slot: u32) {
        self.watched.remove(&slot);
    }

    /// New thresholds for a watched worker, from the next poll on.
    pub fn retune(&mut self, slot: u32, thresholds: [u64; 3]) {
        if let Some(w) = self.watched.get_mut(&slot) {
            w.thresholds = thresholds;
        }
    }

    pub fn faults(&self, slot: u32) -> u64 {
        self.watched.get(&slot).map_or(0, |w| w.faults.total())
    }

    pub async fn next_batch(&mut self, out: &mut Vec<Observation>) {
        self.tick.tick().await;
        let at_ns = monotonic_ns();
        for (&slot, w) in &mut self.watched {
            poll_worker(slot, w, self.granularity, at_ns, out);
        }
    }
}

fn poll_worker(
    slot: u32,
    w: &mut Watched,
    granularity: u64,
    at_ns: u64,
    out: &mut Vec<Observation>,
) {
    // Walk the process tree from the root.
    let mut seen = BTreeSet::new();
    let mut queue = vec![w.root];
    let mut total = Counters::default();
    while let Some(pid) = queue.pop() {
        let Ok(c) = counters(pid) else { continue };
        if !seen.insert(pid) {
            continue;
        }
        total.file += c.file;
        total.anon += c.anon;
        total.swap += c.swap;
        total.shmem += c.shmem;
        queue.extend(children(pid));
    }
    for &pid in &seen {
        let count = faults::read(pid).unwrap_or(0);
        if w.faults.observe(pid, count) && pid != w.root {
            out.push(Observation::Fork {
                slot,
                pid,
                parent: w.root,
            });
        }
    }
    for pid in w.faults.retire(|pid| seen.contains(&pid)) {
        out.push(Observation::Exit {
            slot,
            pid,
            at_ns,
            counters: total,
        });
    }
    if seen.is_empty() {
        return;
    }
    let rss = total.rss();
    let new_level = level(&w.thresholds, rss);
    let trigger = if new_level != w.level {
        Trigger::Threshold
    } else if rss.abs_diff(w.reported_rss) >= granularity {
        Trigger::Granularity
    } else {
        return;
    };
    w.level = new_level;
    w.reported_rss = rss;
    out.push(Observation::Memory {
        slot,
        pid: w.root,
        at_ns,
        counters: total,
        trigger,
        level: new_level,
    });
}

fn level(thresholds: &[u64; 3], rss: u64) -> u32 {
    xypriss_ebpf::rss_stat::level(
        &xypriss_ebpf::rss_stat::Thresholds { bytes: *thresholds },
        i64::try_from(rss).unwrap_or(i64::MAX),
    )
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}
