//! Loads the BPF programs, attaches them to their tracepoints, and owns the
//! maps userspace talks through.
//!
//! Every program is a raw tracepoint, attached by name, and which program a
//! tracepoint gets is chosen from the kernel's BTF ([`trace_point`]): no
//! tracefs, nothing mounted, nothing chosen from a version number.
//!
//! Nothing here outlives the process: programs, links and maps are not pinned,
//! so the kernel frees them when xypriss exits, however it exits.
//! A program the verifier refuses is reported with the end of its log
//! ([`verifier`], which also holds the test hook that injects a rejection).
//!
//! # Minimum kernel version
//!
//! 5.12 on paper: raw tracepoints (4.17), `rss_stat` (5.5),
//! `bpf_probe_read_kernel` (5.5), ring buffers (5.8), BPF atomic exchange
//! and add (5.12), and BTF at /sys/kernel/btf/vmlinux (5.4). Measured: 6.1,
//! 6.12 and 6.18 (README, "Requirements").

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd},
    path::Path,
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, RawTracePoint},
};
use xypriss_ebpf::{
    map_name,
    rss_stat::{self, TaskEntry, Thresholds, WorkerState},
    trace_point::{self, Settings},
};

use super::{
    Counters, Observation,
    btf::{self, Btf, BtfError},
    faults::{self, ProcCounts, Refresh},
    ring_buf::Reader,
    trace_point::{Kind, Plan, Tracepoint},
    verifier,
};
use super::{Settings as Config, host::own_pid_namespace};

/// The BPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xypriss"));

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "not running as root (euid {euid}): loading BPF programs needs root or CAP_BPF and CAP_PERFMON"
    )]
    NotRoot { euid: u32 },
    #[error(
        "xypriss runs in a pid namespace of its own (pid:[{inode}]): the BPF programs see the host's pids, its workers are known by this namespace's, so eBPF would watch nobody; share the host's pid namespace (hostPID in Kubernetes, no PrivatePIDs= in systemd)"
    )]
    PidNamespace { inode: u64 },
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("tracepoint {tracepoint}: {source}")]
    Unsupported {
        tracepoint: Tracepoint,
        source: BtfError,
    },
    #[error("loading the BPF object failed: {0}")]
    Load(Box<aya::EbpfError>),
    #[error("BPF program `{program}` is missing from the object")]
    MissingProgram { program: &'static str },
    #[error("BPF map `{map}` is missing from the object")]
    MissingMap { map: &'static str },
    #[error("BPF map `{map}`: {source}")]
    Map { map: &'static str, source: MapError },
    #[error(
        "BPF program `{program}` on {tracepoint} was rejected by the kernel's verifier ({source}): {verifier}"
    )]
    Rejected {
        program: &'static str,
        tracepoint: Tracepoint,
        source: io::Error,
        /// The end of the verifier's log, where it says why.
        verifier: String,
    },
    #[error("BPF program `{program}` on {tracepoint}: {source}")]
    Program {
        program: &'static str,
        tracepoint: Tracepoint,
        source: Box<ProgramError>,
    },
    #[error("the ring buffer cannot be polled: {0}")]
    Poll(io::Error),
    #[error("cannot start the thread that reads fault counts: {0}")]
    Thread(io::Error),
    #[error("aya-log: {0}")]
    Log(#[from] aya_log::Error),
}

pub struct EbpfObserver {
    tasks: HashMap<MapData, u32, TaskEntry>,
    /// A second fd of `TASKS`, for workers to register themselves before exec.
    tasks_fd: OwnedFd,
    workers: Array<MapData, WorkerState>,
    thresholds: Array<MapData, Thresholds>,
    faults: FaultCounts,
    lost: PerCpuArray<MapData, u64>,
    reader: Reader,
    /// Holds the programs and their links: dropping it detaches them.
    _ebpf: Ebpf,
}

/// Who counts the workers' page faults.
enum FaultCounts {
    /// `page_fault_user`, per worker and CPU (`--kernel-fault-counts`).
    Kernel(PerCpuArray<MapData, u64>),
    /// /proc, at each refresh, on a thread of its own (the default: see observe::faults).
    Proc(ProcCounts),
}

fn take<T>(ebpf: &mut Ebpf, map: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let raw = ebpf.take_map(map).ok_or(EbpfError::MissingMap { map })?;
    T::try_from(raw).map_err(|source| EbpfError::Map { map, source })
}

impl EbpfObserver {
    /// Loads and attaches the programs. Its background thread (the fault
    /// counts') runs `on_thread` first.
    pub fn load(config: &Config, on_thread: fn()) -> Result<Self, EbpfError> {
        let euid = nix::unistd::geteuid();
        if !euid.is_root() {
            return Err(EbpfError::NotRoot {
                euid: euid.as_raw(),
            });
        }
        if let Some(inode) = own_pid_namespace() {
            return Err(EbpfError::PidNamespace { inode });
        }
        let Plan { layout, choices } =
            Plan::new(&Btf::from_file(Path::new(btf::VMLINUX))?, page_size());
        let programs = choices
            .into_iter()
            .map(|(tracepoint, choice)| match choice {
                Ok(choice) => Ok((choice.program, tracepoint)),
                Err(source) => Err(EbpfError::Unsupported { tracepoint, source }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let settings = Settings {
            granularity: config.granularity,
            wakeup_interval_ns: u64::try_from(config.wakeup_interval.as_nanos())
                .unwrap_or(u64::MAX),
            log: u32::from(config.bpf_log),
            supervisor: std::process::id(),
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(trace_point::SETTINGS, &settings, true)
            .override_global(trace_point::LAYOUT, &layout, true)
            .load(OBJECT)
            .map_err(|e| EbpfError::Load(Box::new(e)))?;
        if config.bpf_log {
            spawn_logger(&mut ebpf)?;
        }
        if verifier::fault_injected() {
            tracing::warn!(
                "{}=verifier: failing the eBPF load on purpose",
                verifier::FAULT_INJECT
            );
            let (program, tracepoint) = programs[0];
            let (source, log) = verifier::reject_on_purpose();
            return Err(rejected(program, tracepoint, source, &log));
        }
        for (program, tracepoint) in programs {
            // Every user page fault on the host would pay for it (see observe::faults).
            if tracepoint.kind == Kind::PageFaultUser && !config.kernel_fault_counts {
                continue;
            }
            attach(&mut ebpf, program, tracepoint)?;
        }
        let ring: RingBuf<MapData> = take(&mut ebpf, map_name::EVENTS)?;
        let tasks_fd = match ebpf.map(map_name::TASKS) {
            Some(aya::maps::Map::HashMap(data)) => data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(EbpfError::Poll)?,
            _ => {
                return Err(EbpfError::MissingMap {
                    map: map_name::TASKS,
                });
            }
        };
        Ok(Self {
            tasks_fd,
            tasks: take(&mut ebpf, map_name::TASKS)?,
            workers: take(&mut ebpf, map_name::WORKERS)?,
            thresholds: take(&mut ebpf, map_name::THRESHOLDS)?,
            faults: if config.kernel_fault_counts {
                FaultCounts::Kernel(take(&mut ebpf, map_name::FAULTS)?)
            } else {
                FaultCounts::Proc(ProcCounts::start(on_thread).map_err(EbpfError::Thread)?)
            },
            lost: take(&mut ebpf, map_name::LOST)?,
            reader: Reader::new(ring, flush_delay(config.wakeup_interval))
                .map_err(EbpfError::Poll)?,
            _ebpf: ebpf,
        })
    }

    /// Readies worker slot `slot` for a new process: zero totals and fault
    /// counts, and `thresholds`. Nothing is watched in the slot yet, so no
    /// program races these writes.
    pub fn prepare(&mut self, slot: u32, thresholds: [u64; 3]) -> io::Result<()> {
        self.workers
            .set(slot, &WorkerState::default(), 0)
            .map_err(io::Error::other)?;
        self.thresholds
            .set(slot, &Thresholds { bytes: thresholds }, 0)
            .map_err(io::Error::other)?;
        let zero = aya::maps::PerCpuValues::try_from(vec![
            0u64;
            aya::util::nr_cpus().map_err(|(_, e)| e)?.get()
                as usize
        ])
        .map_err(io::Error::other)?;
        match &mut self.faults {
            FaultCounts::Kernel(faults) => faults.set(slot, zero, 0).map_err(io::Error::other),
            FaultCounts::Proc(counts) => {
                counts.reset(slot);
                Ok(())
            }
        }
    }

    /// New thresholds for a watched worker: the programs compare each update
    /// with them from the next one on (one map entry, written at once).
    pub fn retune(&mut self, slot: u32, thresholds: [u64; 3]) -> io::Result<()> {
        self.thresholds
            .set(slot, &Thresholds { bytes: thresholds }, 0)
            .map_err(io::Error::other)
    }

    /// What puts a new worker process in `TASKS` as worker `slot`, before
    /// it runs the app: from then on the programs count its memory
    /// and follow its forks, before it can run a single instruction of the app.
    pub fn registration(&self, slot: u32) -> Registration {
        Registration {
            tasks_fd: self.tasks_fd.as_raw_fd(),
            entry: TaskEntry {
                worker: slot,
                ..TaskEntry::default()
            },
        }
    }

    /// The worker's totals, now that its process runs. It was registered
    /// before exec (a failed registration fails the spawn), so a missing entry
    /// means it has exited already: its exit is on its way.
    pub fn watch(&mut self, slot: u32, pid: u32) -> io::Result<Counters> {
        self.tasks.get(&pid, 0).map_err(|_| {
            io::Error::new(io::ErrorKind::NotFound, format!("process {pid} has exited"))
        })?;
        let state = self.workers.get(&slot, 0).map_err(io::Error::other)?;
        if let FaultCounts::Proc(counts) = &mut self.faults {
            counts.observe(slot, pid, faults::read(pid).unwrap_or(0));
        }
        Ok(Counters::from_kernel(state.counters))
    }

    /// The worker's totals and threshold level as the kernel has them now,
    /// whatever records were lost on the way.
    pub fn totals(&self, slot: u32) -> io::Result<(Counters, u32)> {
        let state = self.workers.get(&slot, 0).map_err(io::Error::other)?;
        let thresholds = self.thresholds.get(&slot, 0).map_err(io::Error::other)?;
        let level = rss_stat::level(&thresholds, rss_stat::resident(&state.counters));
        Ok((Counters::from_kernel(state.counters), level))
    }

    pub fn unwatch(&mut self, slot: u32) {
        let stale: Vec<u32> = self
            .tasks
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, entry)| entry.worker == slot)
            .map(|(pid, _)| pid)
            .collect();
        for pid in stale {
            let _ = self.tasks.remove(&pid);
        }
        let _ = self.thresholds.set(slot, &Thresholds::default(), 0);
    }

    /// The next records, or the fault counts a tick waits for.
    pub async fn next_batch(&mut self, out: &mut Vec<Observation>) {
        match &mut self.faults {
            FaultCounts::Proc(counts) => tokio::select! {
                biased;
                () = self.reader.next_batch(out) => {}
                waits = counts.answered() => {
                    if waits {
                        out.push(Observation::FaultsCounted);
                    }
                }
            },
            FaultCounts::Kernel(_) => self.reader.next_batch(out).await,
        }
    }

    pub fn drain_now(&mut self, out: &mut Vec<Observation>) {
        self.reader.drain(out);
    }

    pub fn faults(&self, slot: u32) -> u64 {
        match &self.faults {
            FaultCounts::Kernel(faults) => faults
                .get(&slot, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0),
            FaultCounts::Proc(counts) => counts.total(slot),
        }
    }

    /// Asks for every watched process's fault count from /proc, unless the
    /// kernel counts them: the processes are `TASKS`' entries, by worker.
    /// Asked, they come as [`Observation::FaultsCounted`].
    pub fn refresh_faults(&mut self) -> Refresh {
        let processes = self.processes();
        match &mut self.faults {
            FaultCounts::Proc(counts) => counts.ask(processes),
            FaultCounts::Kernel(_) => Refresh::Fresh,
        }
    }

    /// Reads them on this thread, now: the pool's last tick.
    pub fn count_faults_now(&mut self) {
        let processes = self.processes();
        if let FaultCounts::Proc(counts) = &mut self.faults {
            counts.count_now(&processes);
        }
    }

    /// Every watched process, by worker slot.
    fn processes(&self) -> BTreeMap<u32, Vec<u32>> {
        let mut processes: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        if let FaultCounts::Proc(_) = self.faults {
            for (pid, entry) in self.tasks.iter().filter_map(Result::ok) {
                processes.entry(entry.worker).or_default().push(pid);
            }
        }
        processes
    }

    pub fn lost(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

/// A new worker's entry in `TASKS`, made before it runs the app.
#[derive(Clone, Copy)]
pub struct Registration {
    tasks_fd: RawFd,
    entry: TaskEntry,
}

/// `union bpf_attr` as `BPF_MAP_UPDATE_ELEM` reads it.
#[repr(C)]
struct MapUpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl Registration {
    /// Puts process `pid` in `TASKS`.
    pub fn register(&self, pid: u32) -> io::Result<()> {
        const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
        let attr = MapUpdateAttr {
            map_fd: self.tasks_fd as u32,
            _pad: 0,
            key: &raw const pid as u64,
            value: &raw const self.entry as u64,
            flags: 0,
        };
        // SAFETY: the attr points at live stack values of the sizes the map was made with.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_ELEM,
                &raw const attr,
                size_of::<MapUpdateAttr>(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Loads `program` and attaches it to raw tracepoint `tracepoint`, by name.
fn attach(ebpf: &mut Ebpf, program: &'static str, tracepoint: Tracepoint) -> Result<(), EbpfError> {
    let prog = ebpf
        .program_mut(program)
        .ok_or(EbpfError::MissingProgram { program })?;
    let attached = <&mut RawTracePoint>::try_from(prog).and_then(|tp| {
        tp.load()?;
        tp.attach(tracepoint.name).map(drop)
    });
    attached.map_err(|source| match source {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => rejected(program, tracepoint, io_error, &verifier_log.to_string()),
        source => EbpfError::Program {
            program,
            tracepoint,
            source: Box::new(source),
        },
    })
}

/// The verifier refused `program`: its whole log to the debug log, the
/// lines that say why in the error.
fn rejected(
    program: &'static str,
    tracepoint: Tracepoint,
    source: io::Error,
    log: &str,
) -> EbpfError {
    tracing::debug!("the verifier's log for `{program}`:\n{log}");
    EbpfError::Rejected {
        program,
        tracepoint,
        source,
        verifier: verifier::summary(log),
    }
}

pub(crate) fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |v| v as u64)
}

/// How long after a wake-up to look again for samples written without one.
fn flush_delay(wakeup_interval: Duration) -> Duration {
    wakeup_interval + Duration::from_millis(1)
}

/// Forwards aya-log records from the programs to `tracing`, on stderr.
fn spawn_logger(ebpf: &mut Ebpf) -> Result<(), EbpfError> {
    let logger = aya_log::EbpfLogger::init(ebpf)?;
    // SAFETY: the logger owns its map fd, and flushing neither closes nor replaces it.
    let mut logger = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(|e| EbpfError::Poll(e.into()))?;
    tokio::spawn(async move {
        while let Ok(mut guard) = logger.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}
