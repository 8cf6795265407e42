//! Where memory observations come from: the kernel, through eBPF programs and
//! a ring buffer ([`ebpf`]), or, when eBPF cannot be used, polling `/proc`
//! ([`procfs`]). Both produce the same [`Observation`]s, so everything
//! downstream is the same whichever source is active.

pub mod btf;
pub mod ebpf;
pub mod faults;
pub mod host;
pub mod procfs;
mod ring_buf;
pub mod trace_point;
pub mod verifier;

use std::time::Duration;

/// Which source to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// eBPF, or /proc polling when eBPF cannot be used.
    Prefer,
    /// eBPF or nothing.
    Require,
    /// /proc polling only.
    Procfs,
}

/// What the observers need to know, taken from the run's settings at the
/// pool's boundary: observe depends on no configuration format.
#[derive(Clone, Debug)]
pub struct Settings {
    pub choice: Choice,
    /// Bytes of change that make a new observation.
    pub granularity: u64,
    /// The longest a kernel record may wait in the ring buffer.
    pub wakeup_interval: Duration,
    /// How often /proc is read, when it is the source.
    pub poll_interval: Duration,
    /// The BPF programs' own log (`--bpf-log`).
    pub bpf_log: bool,
    /// Count page faults in the kernel (`--kernel-fault-counts`), rather
    /// than from /proc at each refresh.
    pub kernel_fault_counts: bool,
}

/// A process's (or a worker's) memory counters, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub file: u64,
    pub anon: u64,
    pub swap: u64,
    pub shmem: u64,
}

impl Counters {
    /// From the kernel's `[file, anon, swapents, shmem]`. A total can be briefly
    /// negative while two CPUs race on it; it reads as 0.
    pub fn from_kernel(c: [i64; 4]) -> Self {
        let b = |v: i64| u64::try_from(v).unwrap_or(0);
        Self {
            file: b(c[0]),
            anon: b(c[1]),
            swap: b(c[2]),
            shmem: b(c[3]),
        }
    }

    /// The resident set size, as VmRSS: file + anon + shmem.
    pub fn rss(&self) -> u64 {
        self.file + self.anon + self.shmem
    }
}

/// Why a memory sample was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The first sample of a worker.
    Initial,
    /// The resident size moved by the granularity.
    Granularity,
    /// The resident size crossed a threshold, either way.
    Threshold,
    /// The periodic refresh of fault counts and rates.
    Interval,
}

/// One thing the source saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// A worker's memory totals.
    Memory {
        slot: u32,
        pid: u32,
        /// CLOCK_MONOTONIC nanoseconds when the source saw it.
        at_ns: u64,
        counters: Counters,
        trigger: Trigger,
        /// How many thresholds the resident size is at or above.
        level: u32,
    },
    /// A watched task cloned a task (a process, or a thread).
    Fork { slot: u32, pid: u32, parent: u32 },
    /// A watched process exited; `counters` are its worker's totals without it.
    Exit {
        slot: u32,
        pid: u32,
        at_ns: u64,
        counters: Counters,
    },
    /// The OOM killer chose a watched process.
    OomVictim {
        slot: u32,
        pid: u32,
        counters: Counters,
    },
    /// The fault counts a tick asked for are in: it can go on.
    FaultsCounted,
}

/// Which source is active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Ebpf,
    Procfs,
}

pub enum Observer {
    Ebpf(Box<ebpf::EbpfObserver>),
    Procfs(procfs::ProcfsObserver),
}

#[derive(Debug, thiserror::Error)]
#[error("eBPF is required (--require-ebpf) but unavailable: {0}")]
pub struct Required(pub ebpf::EbpfError);

impl Observer {
    /// Starts the configured source. With [`Choice::Prefer`], an eBPF
    /// failure falls back to /proc and the reason is returned with it. Its
    /// background threads run `on_thread` first.
    pub fn start(config: &Settings, on_thread: fn()) -> Result<(Self, Option<String>), Required> {
        let procfs = || Self::Procfs(procfs::ProcfsObserver::new(config));
        match config.choice {
            Choice::Procfs => Ok((procfs(), Some("disabled by --no-ebpf".into()))),
            Choice::Require => ebpf::EbpfObserver::load(config, on_thread)
                .map(|o| (Self::Ebpf(Box::new(o)), None))
                .map_err(Required),
            Choice::Prefer => match ebpf::EbpfObserver::load(config, on_thread) {
                Ok(o) => Ok((Self::Ebpf(Box::new(o)), None)),
                Err(err) => Ok((procfs(), Some(err.to_string()))),
            },
        }
    }

    pub fn source(&self) -> Source {
        match self {
            Self::Ebpf(_) => Source::Ebpf,
            Self::Procfs(_) => Source::Procfs,
        }
    }

    /// Readies slot `slot` for a new worker process with `thresholds` in bytes.
    pub fn prepare(&mut self, slot: u32, thresholds: [u64; 3]) -> std::io::Result<()> {
        match self {
            Self::Ebpf(o) => o.prepare(slot, thresholds),
            Self::Procfs(o) => {
                o.prepare(slot, thresholds);
                Ok(())
            }
        }
    }

    /// New thresholds for the watched worker of `slot`.
    pub fn retune(&mut self, slot: u32, thresholds: [u64; 3]) -> std::io::Result<()> {
        match self {
            Self::Ebpf(o) => o.retune(slot, thresholds),
            Self::Procfs(o) => {
                o.retune(slot, thresholds);
                Ok(())
            }
        }
    }

    /// What the worker process of `slot` runs before exec to be watched from
    /// its first instruction (eBPF only).
    pub fn registration(&self, slot: u32) -> Option<ebpf::Registration> {
        match self {
            Self::Ebpf(o) => Some(o.registration(slot)),
            Self::Procfs(_) => None,
        }
    }

    /// Watches process `pid` as worker `slot` (prepared); returns its counters now.
    pub fn watch(&mut self, slot: u32, pid: u32) -> std::io::Result<Counters> {
        match self {
            Self::Ebpf(o) => o.watch(slot, pid),
            Self::Procfs(o) => o.watch(slot, pid),
        }
    }

    /// Stops watching worker `slot` and every task still counted under it.
    pub fn unwatch(&mut self, slot: u32) {
        match self {
            Self::Ebpf(o) => o.unwatch(slot),
            Self::Procfs(o) => o.unwatch(slot),
        }
    }

    /// Waits for observations, then appends every one available to `out`.
    /// Cancel-safe: nothing is read until the wait is over.
    pub async fn next_batch(&mut self, out: &mut Vec<Observation>) {
        match self {
            Self::Ebpf(o) => o.next_batch(out).await,
            Self::Procfs(o) => o.next_batch(out).await,
        }
    }

    /// Appends what is already waiting, without waiting.
    pub fn drain_now(&mut self, out: &mut Vec<Observation>) {
        if let Self::Ebpf(o) = self {
            o.drain_now(out);
        }
    }

    /// Brings the workers' fault counts up to date, where they are read
    /// rather than sent (see [`faults`]); the procfs source reads them at
    /// each poll.
    /// Refreshes the fault counts, or asks for them: see [`faults::Refresh`].
    pub fn refresh_faults(&mut self) -> faults::Refresh {
        match self {
            Self::Ebpf(o) => o.refresh_faults(),
            Self::Procfs(_) => faults::Refresh::Fresh,
        }
    }

    /// Refreshes the fault counts on this thread, now.
    pub fn count_faults_now(&mut self) {
        if let Self::Ebpf(o) = self {
            o.count_faults_now();
        }
    }

    /// The worker's user page faults so far.
    pub fn faults(&self, slot: u32) -> u64 {
        match self {
            Self::Ebpf(o) => o.faults(slot),
            Self::Procfs(o) => o.faults(slot),
        }
    }

    /// Worker `slot`'s totals and threshold level as the source has them
    /// now, when they can differ from what it sent: records lost (eBPF).
    pub fn totals(&self, slot: u32) -> Option<(Counters, u32)> {
        match self {
            Self::Ebpf(o) => o.totals(slot).ok(),
            Self::Procfs(_) => None,
        }
    }

    /// Records the kernel could not send so far (the ring buffer was full).
    pub fn lost(&self) -> u64 {
        match self {
            Self::Ebpf(o) => o.lost(),
            Self::Procfs(_) => 0,
        }
    }
}
