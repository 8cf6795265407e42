//! Per-worker cgroups: memory, and CPU bandwidth where it throttles.
//!
//! Each worker runs in a cgroup of its own, under one cgroup per pool, so that
//! the supervisor can throttle it, have the kernel enforce its limit
//! (`memory.max`), read its memory as the kernel charges it, and kill
//! everything it started, whatever process group or session it moved to: a
//! process group is left with one `setsid`, a cgroup only by a process allowed
//! to write to another cgroup's `cgroup.procs`.
//!
//! The layout is `<hierarchy>/xypriss/<pool>.<xypriss pid>/w<id>.g<generation>`.
//! The pid in the pool's name lets the next xypriss tell whether the one that
//! made the pool still runs: a SIGKILLed xypriss cannot clean up, so what it
//! left behind is killed and removed at the next start
//! ([`Hierarchy::remove_stale`]). The `xypriss` directory itself is shared by
//! every xypriss on the machine and never removed: removing it would race with
//! another one creating its pool.
//!
//! The memory controller is used where it is: cgroup v2 when its root offers
//! it, otherwise a cgroup v1 `memory` hierarchy (hybrid machines bind memory to
//! v1 and leave the v2 tree without it). Mount points come from
//! /proc/self/mountinfo, never from a fixed path.
//!
//! Throttling slows a worker down instead of killing it
//! ([`WorkerCgroup::throttle`]). On v2 that is `memory.high`: past it the
//! kernel reclaims from the worker and stalls its allocations. v1 has no
//! `memory.high`: its soft limit acts only under global memory pressure, and
//! without swap its hard limit can only OOM-kill. What does slow an allocating
//! worker on v1 is bounding its CPU time, page faults included, with the `cpu`
//! controller's bandwidth (`cpu.cfs_quota_us`), while the soft limit makes it
//! the first to be reclaimed from when the host runs short. So each pool and
//! worker cgroup has a twin with the same layout in the hierarchy holding the
//! cpu controller: a v1 `cpu` hierarchy of its own, or the memory cgroup
//! itself where cpu sits beside memory (v2, where it adds `cpu.max`, or a v1
//! hierarchy mounting both). The worker joins both before exec, and both are
//! made, removed and cleaned up together. The cpu controller is an extra:
//! where its cgroups cannot be made, the pool goes on with memory alone.
//!
//! Killing and removing wait for the cgroup to empty, at most
//! [`DRAIN_TIMEOUT`]: these calls block, so async code runs them with
//! `spawn_blocking`.

use std::{
    collections::{BTreeSet, HashSet},
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use nix::{
    errno::Errno,
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use procfs::process::{MountInfo, Process};

use super::pid_namespace::own_pid_namespace;

/// How long killing a cgroup's processes may take before it is reported as still populated.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a draining cgroup is looked at again.
const POLL: Duration = Duration::from_millis(10);
/// The directory under the hierarchy's root that holds every pool.
const TOP: &str = "xypriss";
const PROCS: &str = "cgroup.procs";
/// The smallest CPU quota the kernel takes, in microseconds.
const MIN_QUOTA_US: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup memory controller: {reason}")]
    NoMemoryController { reason: String },
    #[error("cannot read /proc/self/mountinfo: {source}")]
    MountInfo { source: procfs::ProcError },
    #[error("invalid pool name {name:?}: use only letters, digits, `_` and `-`")]
    PoolName { name: String },
    #[error("{} already exists", path.display())]
    Exists { path: PathBuf },
    #[error("cannot create {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {value:?} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("{} holds {text:?}, not what was expected", path.display())]
    Parse { path: PathBuf, text: String },
    #[error("cannot kill process {pid} of {}: {source}", path.display())]
    Kill {
        path: PathBuf,
        pid: u32,
        source: Errno,
    },
    #[error("{} still holds processes {pids:?} after {DRAIN_TIMEOUT:?}", path.display())]
    StillPopulated { path: PathBuf, pids: Vec<u32> },
    #[error("cannot remove {}: {source}", path.display())]
    Remove { path: PathBuf, source: io::Error },
    #[error(
        "cannot throttle {}: cgroup v1 has no memory.high, and the worker has no cgroup in a v1 cpu hierarchy to bound its CPU time",
        path.display()
    )]
    NoThrottle { path: PathBuf },
    #[error("invalid cpu_fraction {fraction}: it must be a positive number of CPUs")]
    CpuFraction { fraction: f64 },
}

/// Which cgroup interface a hierarchy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// The soft limit. v1 has no `memory.high`: its soft limit is the closest,
    /// and acts only under global memory pressure, when the kernel reclaims
    /// from cgroups above their soft limit first; it never throttles on its own.
    fn high_file(self) -> &'static str {
        match self {
            Self::V1 => "memory.soft_limit_in_bytes",
            Self::V2 => "memory.high",
        }
    }

    /// The hard limit, enforced by the cgroup's own OOM killer.
    fn max_file(self) -> &'static str {
        match self {
            Self::V1 => "memory.limit_in_bytes",
            Self::V2 => "memory.max",
        }
    }

    fn current_file(self) -> &'static str {
        match self {
            Self::V1 => "memory.usage_in_bytes",
            Self::V2 => "memory.current",
        }
    }

    /// What a limit file is given for `bytes`, or for no limit.
    fn limit_value(self, bytes: Option<u64>) -> String {
        match (self, bytes) {
            (_, Some(bytes)) => bytes.to_string(),
            (Self::V1, None) => "-1".to_owned(),
            (Self::V2, None) => "max".to_owned(),
        }
    }

    /// The CPU bandwidth's quota: the CPU time the cgroup may use each period.
    fn quota_file(self) -> &'static str {
        match self {
            Self::V1 => "cpu.cfs_quota_us",
            Self::V2 => "cpu.max",
        }
    }

    /// The CPU bandwidth's period (v2 keeps it in the quota's file).
    fn period_file(self) -> &'static str {
        match self {
            Self::V1 => "cpu.cfs_period_us",
            Self::V2 => "cpu.max",
        }
    }

    /// The period, in microseconds, in the text of [`Self::period_file`]:
    /// v2's `cpu.max` is `<quota|max> <period>`.
    fn parse_period(self, text: &str) -> Option<u64> {
        match self {
            Self::V1 => text.trim().parse().ok(),
            Self::V2 => text.split_whitespace().nth(1)?.parse().ok(),
        }
    }

    /// What the quota file is given for `(quota, period)` in microseconds,
    /// or for no bound. v2's `max` alone keeps the period as it is.
    fn quota_value(self, bandwidth: Option<(u64, u64)>) -> String {
        match (self, bandwidth) {
            (Self::V1, Some((quota, _))) => quota.to_string(),
            (Self::V2, Some((quota, period))) => format!("{quota} {period}"),
            (Self::V1, None) => "-1".to_owned(),
            (Self::V2, None) => "max".to_owned(),
        }
    }
}

/// What [`WorkerCgroup::throttle`] applied, to name it in the `memory_throttling` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// v2 `memory.high`: above it the kernel reclaims from the worker and
    /// stalls its allocations (the pool has no cpu controller).
    MemoryHigh,
    /// v2 `memory.high`, and `cpu.max` bounding the worker's CPU time.
    MemoryHighCpuMax,
    /// v1 `cpu.cfs_quota_us` bounding the worker's CPU time, page faults
    /// included, and `memory.soft_limit_in_bytes`, so that reclaim under host
    /// pressure takes from the worker first.
    CfsQuotaSoftLimit,
}

impl Throttle {
    /// How a cgroup of `version`, with or without a cpu controller, throttles.
    fn of(version: Version, cpu: bool) -> Option<Self> {
        match (version, cpu) {
            (Version::V2, false) => Some(Self::MemoryHigh),
            (Version::V2, true) => Some(Self::MemoryHighCpuMax),
            (Version::V1, true) => Some(Self::CfsQuotaSoftLimit),
            (Version::V1, false) => None,
        }
    }

    /// The cgroup files written, joined by `+`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MemoryHigh => "memory.high",
            Self::MemoryHighCpuMax => "memory.high+cpu.max",
            Self::CfsQuotaSoftLimit => "cpu.cfs_quota_us+memory.soft_limit_in_bytes",
        }
    }
}

/// `fraction` of one CPU, if it is a positive number.
fn check_fraction(fraction: f64) -> Result<f64, CgroupError> {
    if fraction.is_finite() && fraction > 0.0 {
        Ok(fraction)
    } else {
        Err(CgroupError::CpuFraction { fraction })
    }
}

/// The CPU quota, in microseconds per `period` ones, for a checked `fraction`
/// of one CPU, raised to the kernel's smallest. A huge fraction saturates to
/// a huge quota, which the kernel refuses with a write error.
fn quota_us(period: u64, fraction: f64) -> u64 {
    ((period as f64 * fraction).round() as u64).max(MIN_QUOTA_US)
}

/// One cgroup's directories: in the memory hierarchy, and in the one with the
/// cpu controller if there is one, which is the same directory where cpu sits
/// beside memory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dirs {
    memory: PathBuf,
    cpu: Option<PathBuf>,
}

impl Dirs {
    fn join(&self, name: impl AsRef<Path>) -> Self {
        Self {
            memory: self.memory.join(&name),
            cpu: self.cpu.as_ref().map(|cpu| cpu.join(&name)),
        }
    }

    /// The cpu directory when it is not the memory one.
    fn cpu_twin(&self) -> Option<&Path> {
        self.cpu.as_deref().filter(|cpu| *cpu != self.memory)
    }

    /// Each distinct directory, the memory one first.
    fn each(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.memory.as_path()).chain(self.cpu_twin())
    }

    /// Creates each directory; on failure, removes those it made.
    fn create(&self) -> Result<(), CgroupError> {
        let mut made = Vec::new();
        for dir in self.each() {
            if let Err(err) = mkdir(dir) {
                for dir in made {
                    // Nothing runs in it yet.
                    let _ = fs::remove_dir(dir);
                }
                return Err(err);
            }
            made.push(dir);
        }
        Ok(())
    }

    /// Kills everything in each directory and below, and removes them all.
    /// Goes on past a failure, and returns the first.
    fn drain(&self, version: Version, killed: &mut usize) -> Result<(), CgroupError> {
        let mut first_error = None;
        for dir in self.each() {
            if let Err(err) = drain(dir, version, killed) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A mounted cgroup hierarchy with the memory controller, and where the cpu
/// controller is, if it is usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    version: Version,
    root: Dirs,
}

impl Hierarchy {
    /// Finds the memory hierarchy, and the cpu controller, in this process's mounts.
    pub fn find() -> Result<Self, CgroupError> {
        choose(&mounts()?, read_controllers)
            .map_err(|reason| CgroupError::NoMemoryController { reason })
    }

    /// The memory hierarchy mounted at `root`, if that is one: for a look at
    /// one place rather than the choice [`Self::find`] makes.
    pub fn find_at(root: &Path) -> Result<Self, CgroupError> {
        choose_at(&mounts()?, root, read_controllers)
            .map_err(|reason| CgroupError::NoMemoryController { reason })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Where the memory hierarchy is mounted.
    pub fn path(&self) -> &Path {
        &self.root.memory
    }

    /// The directory every pool's memory cgroup is made in; it may not exist yet.
    pub fn pools(&self) -> PathBuf {
        self.root.memory.join(TOP)
    }

    /// Where the v1 hierarchy with the cpu controller is mounted, when it is
    /// another than the memory one.
    pub fn cpu_path(&self) -> Option<&Path> {
        self.root.cpu_twin()
    }

    /// Creates `xypriss/<name>.<our pid>`, with the memory controller (and
    /// cpu, when there is one) enabled down to it on v2, and its twin in a v1
    /// cpu hierarchy. Without its cpu part, the pool goes on with a warning.
    pub fn pool(&self, name: &str) -> Result<PoolCgroup, CgroupError> {
        check_pool_name(name)?;
        let name = format!("{name}.{}", std::process::id());
        let root = &self.root.memory;
        let memory = make_pool(root, &name)?;
        if self.version == Version::V2
            && let Err(err) = enable_down(root, &memory, "memory")
        {
            // Nothing runs in it yet.
            let _ = fs::remove_dir(&memory);
            return Err(err);
        }
        let cpu = self.root.cpu.as_deref().and_then(|cpu_root| {
            let made = match self.version {
                Version::V2 => enable_down(cpu_root, &memory, "cpu").map(|()| memory.clone()),
                Version::V1 if cpu_root == root => Ok(memory.clone()),
                Version::V1 => make_pool(cpu_root, &name),
            };
            made.inspect_err(|err| tracing::warn!("workers' CPU time cannot be bounded: {err}"))
                .ok()
        });
        Ok(PoolCgroup {
            version: self.version,
            dirs: Dirs { memory, cpu },
        })
    }

    /// Kills and removes every pool whose owner is gone: its pid is not
    /// running, or started after the pool was made (the pid was reused). Pools of a running xypriss,
    /// this one's included, are left alone. A pool's cpu twin goes with it,
    /// and one left without its memory part too. Each pool is reported, with
    /// what went wrong if it could not be removed whole.
    ///
    /// In a pid namespace of its own, pools' pids cannot be told apart from
    /// the host's, so nothing is judged stale there: see [`Self::remove_pools_of`].
    pub fn remove_stale(&self) -> Result<Vec<Stale>, CgroupError> {
        if own_pid_namespace().is_some() {
            return Ok(Vec::new());
        }
        self.remove_where(|pid, created| is_stale(owner(pid).as_ref(), created))
    }

    /// Kills and removes the pools made by process `pid`, which is gone:
    /// what the watchdog of an xypriss in a pid namespace of its own can
    /// still clean.
    pub fn remove_pools_of(&self, pid: u32) -> Result<Vec<Stale>, CgroupError> {
        self.remove_where(|owner, _| owner == pid)
    }

    /// Kills and removes the pools for which `remove(owner pid, made at)` holds.
    fn remove_where(
        &self,
        remove: impl Fn(u32, Option<SystemTime>) -> bool,
    ) -> Result<Vec<Stale>, CgroupError> {
        let top = self.root.join(TOP);
        let mut names = BTreeSet::new();
        for dir in top.each() {
            let entries = match fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(CgroupError::Read {
                        path: dir.into(),
                        source,
                    });
                }
            };
            for entry in entries {
                let entry = entry.map_err(|source| CgroupError::Read {
                    path: dir.into(),
                    source,
                })?;
                names.insert(entry.file_name());
            }
        }
        let mut removed = Vec::new();
        for name in names {
            let Some(pid) = name.to_str().and_then(pool_pid) else {
                continue;
            };
            let pool = top.join(&name);
            let created = pool
                .each()
                .find_map(|dir| fs::metadata(dir).and_then(|m| m.modified()).ok());
            if !remove(pid, created) {
                continue;
            }
            let mut killed = 0;
            let error = pool.drain(self.version, &mut killed).err();
            removed.push(Stale {
                path: pool.memory,
                pid,
                killed,
                error,
            });
        }
        Ok(removed)
    }
}

/// A pool left behind by an xypriss that is gone, and what removing it did.
#[derive(Debug)]
pub struct Stale {
    /// Its directory in the memory hierarchy.
    pub path: PathBuf,
    /// The pid of the xypriss that made it.
    pub pid: u32,
    /// Processes that were still running in it, now killed.
    pub killed: usize,
    /// Why it could not be removed whole, if it could not.
    pub error: Option<CgroupError>,
}

/// This xypriss's cgroup for one pool: a directory holding one cgroup per worker.
#[derive(Debug)]
pub struct PoolCgroup {
    version: Version,
    dirs: Dirs,
}

impl PoolCgroup {
    /// Finds the memory hierarchy and creates the pool's cgroup in it.
    pub fn create(pool: &str) -> Result<Self, CgroupError> {
        Hierarchy::find()?.pool(pool)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Its directory in the memory hierarchy.
    pub fn path(&self) -> &Path {
        &self.dirs.memory
    }

    /// Creates the cgroup of worker `id`'s `generation`th process, in each hierarchy.
    pub fn worker(&self, id: u32, generation: u32) -> Result<WorkerCgroup, CgroupError> {
        let dirs = self.dirs.join(format!("w{id}.g{generation}"));
        dirs.create()?;
        Ok(WorkerCgroup {
            version: self.version,
            dirs,
        })
    }

    /// Kills whatever still runs in any of the pool's cgroups and removes
    /// them all. Returns how many processes were killed.
    pub fn remove(self) -> Result<usize, CgroupError> {
        let mut killed = 0;
        self.dirs.drain(self.version, &mut killed)?;
        Ok(killed)
    }
}

/// One worker's cgroup: its memory one, and its cpu one if the pool has one.
#[derive(Debug)]
pub struct WorkerCgroup {
    version: Version,
    dirs: Dirs,
}

impl WorkerCgroup {
    /// Its directory in the memory hierarchy.
    pub fn path(&self) -> &Path {
        &self.dirs.memory
    }

    /// Its directory in a v1 cpu hierarchy, when it has one apart from [`Self::path`].
    pub fn cpu_path(&self) -> Option<&Path> {
        self.dirs.cpu_twin()
    }

    /// The `cgroup.procs` files a process writes itself (`0`) into to join
    /// this cgroup, one per hierarchy.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.each().map(|dir| dir.join(PROCS)).collect()
    }

    /// Moves process `pid` (all its threads) into this cgroup, in each
    /// hierarchy. Its children are born in it from then on.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        self.procs_files()
            .iter()
            .try_for_each(|procs| write(procs, &pid.to_string()))
    }

    /// The processes in this cgroup, as our pid namespace numbers them; those
    /// outside it (the kernel lists them as 0) are left out.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let mut pids = read_procs(&self.dirs.memory)?;
        pids.retain(|&pid| pid != 0);
        Ok(pids)
    }

    /// SIGKILLs every process in this cgroup, again until it is empty, for at
    /// most [`DRAIN_TIMEOUT`]. Returns how many processes were killed.
    pub fn kill_all(&self) -> Result<usize, CgroupError> {
        kill_all(&self.dirs.memory, self.version)
    }

    /// Sets the hard limit (v2 `memory.max`, v1 `memory.limit_in_bytes`):
    /// past it, the kernel's OOM killer acts within this cgroup. `None` removes it.
    pub fn set_max(&self, bytes: Option<u64>) -> Result<(), CgroupError> {
        self.set(self.version.max_file(), bytes)
    }

    /// Slows the worker down instead of killing it: `memory_high` bytes as
    /// v2 `memory.high` or v1 `memory.soft_limit_in_bytes`, and its CPU time
    /// bounded to `cpu_fraction` of one CPU (0.1: 10 ms each 100 ms period,
    /// never less than the kernel's 1 ms) through v2 `cpu.max` or v1
    /// `cpu.cfs_quota_us`, when it has a cpu controller. Returns what was
    /// applied. On v1 without a cpu controller nothing would slow it, which is
    /// [`CgroupError::NoThrottle`]. After an error, [`Self::unthrottle`]
    /// undoes what was written.
    pub fn throttle(&self, memory_high: u64, cpu_fraction: f64) -> Result<Throttle, CgroupError> {
        let throttle = Throttle::of(self.version, self.dirs.cpu.is_some()).ok_or_else(|| {
            CgroupError::NoThrottle {
                path: self.dirs.memory.clone(),
            }
        })?;
        let fraction = check_fraction(cpu_fraction)?;
        let bandwidth = match &self.dirs.cpu {
            Some(dir) => {
                let path = dir.join(self.version.period_file());
                let text = read(&path)?;
                let period = self
                    .version
                    .parse_period(&text)
                    .ok_or(CgroupError::Parse { path, text })?;
                Some((dir, quota_us(period, fraction), period))
            }
            None => None,
        };
        self.set(self.version.high_file(), Some(memory_high))?;
        if let Some((dir, quota, period)) = bandwidth {
            let value = self.version.quota_value(Some((quota, period)));
            write(&dir.join(self.version.quota_file()), &value)?;
        }
        Ok(throttle)
    }

    /// Lifts [`Self::throttle`]: no `memory.high` (or soft limit), no CPU bound.
    pub fn unthrottle(&self) -> Result<(), CgroupError> {
        self.set(self.version.high_file(), None)?;
        match &self.dirs.cpu {
            Some(dir) => write(
                &dir.join(self.version.quota_file()),
                &self.version.quota_value(None),
            ),
            None => Ok(()),
        }
    }

    fn set(&self, file: &str, bytes: Option<u64>) -> Result<(), CgroupError> {
        write(
            &self.dirs.memory.join(file),
            &self.version.limit_value(bytes),
        )
    }

    /// The memory charged to this cgroup, in bytes (v2 `memory.current`, v1
    /// `memory.usage_in_bytes`).
    pub fn memory_current(&self) -> Result<u64, CgroupError> {
        let path = self.dirs.memory.join(self.version.current_file());
        let text = read(&path)?;
        text.trim()
            .parse()
            .map_err(|_| CgroupError::Parse { path, text })
    }

    /// Kills whatever is left in it, and removes it, in each hierarchy.
    /// Returns how many processes were killed.
    pub fn remove(self) -> Result<usize, CgroupError> {
        let mut killed = 0;
        self.dirs.drain(self.version, &mut killed)?;
        Ok(killed)
    }
}

fn mounts() -> Result<Vec<MountInfo>, CgroupError> {
    Process::myself()
        .and_then(|me| me.mountinfo())
        .map(|mounts| mounts.0)
        .map_err(|source| CgroupError::MountInfo { source })
}

fn read_controllers(hierarchy: &Path) -> io::Result<String> {
    fs::read_to_string(hierarchy.join("cgroup.controllers"))
}

/// Whether the hierarchy mounted at `root` (the last mount there hides the
/// others) is one xypriss can use, and why not if it is not.
fn choose_at(
    mounts: &[MountInfo],
    root: &Path,
    controllers: impl Fn(&Path) -> io::Result<String>,
) -> Result<Hierarchy, String> {
    match mounts.iter().rfind(|m| m.mount_point == root) {
        Some(mount) => judge(mounts, mount, controllers),
        None => Err(format!("nothing is mounted at {}", root.display())),
    }
}

/// Picks the memory hierarchy among `mounts`: cgroup v2 when its root's
/// controllers (read by `controllers` from the mount point) include memory,
/// otherwise cgroup v1's memory hierarchy; and the cpu controller beside it:
/// v2's own, or a v1 hierarchy with cpu (perhaps the memory one). Read-only
/// mounts are of no use. The error says why no memory hierarchy fits.
fn choose(
    mounts: &[MountInfo],
    controllers: impl Fn(&Path) -> io::Result<String>,
) -> Result<Hierarchy, String> {
    let v2 = mounts.iter().filter(|m| m.fs_type == "cgroup2");
    let v1 = mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup" && m.super_options.contains_key("memory"));
    let mut reasons = Vec::new();
    for mount in v2.clone().chain(v1.clone()) {
        match judge(mounts, mount, &controllers) {
            Ok(found) => return Ok(found),
            Err(reason) => reasons.push(reason),
        }
    }
    if v1.count() == 0 {
        reasons.push("no cgroup v1 memory hierarchy is mounted".to_owned());
    }
    if v2.count() == 0 {
        reasons.push("no cgroup2 is mounted".to_owned());
    }
    Err(reasons.join("; "))
}

/// Whether `mount` is a memory hierarchy xypriss can use, with the cpu
/// controller found beside it among `mounts`, or why not.
fn judge(
    mounts: &[MountInfo],
    mount: &MountInfo,
    controllers: impl Fn(&Path) -> io::Result<String>,
) -> Result<Hierarchy, String> {
    let at = mount.mount_point.display();
    let read_only = |m: &MountInfo| m.mount_options.contains_key("ro");
    match mount.fs_type.as_str() {
        "cgroup2" if read_only(mount) => Err(format!("cgroup2 at {at} is read-only")),
        "cgroup2" => match controllers(&mount.mount_point) {
            Ok(list) if list.split_whitespace().any(|c| c == "memory") => {
                let cpu = list.split_whitespace().any(|c| c == "cpu");
                Ok(Hierarchy {
                    version: Version::V2,
                    root: Dirs {
                        memory: mount.mount_point.clone(),
                        cpu: cpu.then(|| mount.mount_point.clone()),
                    },
                })
            }
            Ok(list) => Err(format!(
                "cgroup2 at {at} does not offer memory (cgroup.controllers: {:?})",
                list.trim()
            )),
            Err(err) => Err(format!("cannot read {at}/cgroup.controllers: {err}")),
        },
        "cgroup" if !mount.super_options.contains_key("memory") => Err(format!(
            "the cgroup v1 hierarchy at {at} has no memory controller"
        )),
        "cgroup" if read_only(mount) => Err(format!(
            "the cgroup v1 memory hierarchy at {at} is read-only"
        )),
        "cgroup" => {
            let cpu = mounts.iter().find(|m| {
                m.fs_type == "cgroup" && m.super_options.contains_key("cpu") && !read_only(m)
            });
            Ok(Hierarchy {
                version: Version::V1,
                root: Dirs {
                    memory: mount.mount_point.clone(),
                    cpu: cpu.map(|m| m.mount_point.clone()),
                },
            })
        }
        other => Err(format!("{at} is a {other} mount, not a cgroup hierarchy")),
    }
}

fn check_pool_name(name: &str) -> Result<(), CgroupError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(CgroupError::PoolName { name: name.into() })
    }
}

/// The xypriss pid in a pool directory's name `<pool>.<pid>`.
fn pool_pid(dir_name: &str) -> Option<u32> {
    let (pool, pid) = dir_name.rsplit_once('.')?;
    check_pool_name(pool).ok()?;
    pid.parse().ok()
}

/// What is known of the process whose pid names a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    /// When it started, if that could be read.
    started: Option<SystemTime>,
}

/// The running (not zombie) process `pid`, if any.
fn owner(pid: u32) -> Option<Owner> {
    let process = Process::new(i32::try_from(pid).ok()?).ok()?;
    let stat = process.stat().ok()?;
    if matches!(stat.state, 'Z' | 'X' | 'x') {
        return None;
    }
    // Boot time is whole seconds, rounded down: the start may come out up to a
    // second early, never late, so a live pool is never taken for stale.
    let started = procfs::boot_time_secs().ok().map(|boot| {
        let ticks = procfs::ticks_per_second().max(1);
        UNIX_EPOCH
            + Duration::from_secs(boot)
            + Duration::from_millis(stat.starttime.saturating_mul(1000) / ticks)
    });
    Some(Owner { started })
}

/// Whether a pool made at `created` by the process now known as `owner` is
/// stale: the process is gone, or started after the pool was made (its pid
/// was reused). What the process runs is not asked: a pool made through the
/// library belongs to a process that is not xypriss, and one made in a pid
/// namespace of its own is named after a pid that means another process
/// here; killing either while its owner runs would be far worse than leaving
/// it to its own watchdog.
fn is_stale(owner: Option<&Owner>, created: Option<SystemTime>) -> bool {
    match owner {
        None => true,
        Some(owner) => matches!((owner.started, created), (Some(s), Some(c)) if s > c),
    }
}

/// Kills everything in `dir` and the cgroups below it, and removes them,
/// deepest first, counting the processes killed in `killed`.
fn drain(dir: &Path, version: Version, killed: &mut usize) -> Result<(), CgroupError> {
    if !dir.exists() {
        // Another xypriss cleaning the same stale pool got here first.
        return Ok(());
    }
    let mut first_error = None;
    for child in subdirs(dir)? {
        if let Err(err) = drain(&child, version, killed) {
            first_error.get_or_insert(err);
        }
    }
    if let Some(err) = first_error {
        return Err(err);
    }
    *killed += kill_all(dir, version)?;
    remove_dir(dir)
}

/// SIGKILLs everything in the cgroup at `dir` (v2: through `cgroup.kill`,
/// which also stops forks racing with it), until it is empty or
/// [`DRAIN_TIMEOUT`] has passed. Returns how many processes were killed.
fn kill_all(dir: &Path, version: Version) -> Result<usize, CgroupError> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let kill_file = dir.join("cgroup.kill");
    let use_kill_file = version == Version::V2 && kill_file.exists();
    let mut killed = HashSet::new();
    loop {
        let listed = read_procs(dir)?;
        if listed.is_empty() {
            return Ok(killed.len());
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::StillPopulated {
                path: dir.into(),
                pids: listed,
            });
        }
        if use_kill_file {
            write(&kill_file, "1")?;
            killed.extend(listed.into_iter().filter(|&pid| pid != 0));
        } else {
            // Pid 0 is a process outside our pid namespace: kill(0) would hit our own group.
            for pid in listed.into_iter().filter(|&pid| pid != 0) {
                let Ok(raw) = i32::try_from(pid) else {
                    continue;
                };
                match kill(Pid::from_raw(raw), Signal::SIGKILL) {
                    Ok(()) => {
                        killed.insert(pid);
                    }
                    Err(Errno::ESRCH) => {}
                    Err(source) => {
                        return Err(CgroupError::Kill {
                            path: dir.into(),
                            pid,
                            source,
                        });
                    }
                }
            }
        }
        thread::sleep(POLL);
    }
}

/// The pids listed in `dir`'s `cgroup.procs`, 0s included.
fn read_procs(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let path = dir.join(PROCS);
    let text = read(&path)?;
    text.lines()
        .map(|line| line.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| CgroupError::Parse { path, text })
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let read_error = |source| CgroupError::Read {
        path: dir.into(),
        source,
    };
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        if entry.file_type().map_err(read_error)?.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// Makes `<root>/xypriss/<pool>`; the shared `xypriss` may exist already.
fn make_pool(root: &Path, pool: &str) -> Result<PathBuf, CgroupError> {
    let top = root.join(TOP);
    match mkdir(&top) {
        Err(CgroupError::Exists { .. }) | Ok(()) => {}
        Err(err) => return Err(err),
    }
    let path = top.join(pool);
    mkdir(&path)?;
    Ok(path)
}

/// Enables `controller` for the children of `root`, of its `xypriss` and of
/// `pool` in it (v2), so that the pool's workers have it.
fn enable_down(root: &Path, pool: &Path, controller: &str) -> Result<(), CgroupError> {
    [root, &root.join(TOP), pool]
        .into_iter()
        .try_for_each(|dir| enable(dir, controller))
}

/// Enables `controller` for `dir`'s children (v2).
fn enable(dir: &Path, controller: &str) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    if read(&path)?.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    write(&path, &format!("+{controller}"))
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            CgroupError::Exists { path: path.into() }
        } else {
            CgroupError::Create {
                path: path.into(),
                source,
            }
        }
    })
}

/// Removes an emptied cgroup, retrying while the kernel still counts it busy.
fn remove_dir(path: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err)
                if err.raw_os_error() == Some(Errno::EBUSY as i32) && Instant::now() < deadline =>
            {
                thread::sleep(POLL);
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: path.into(),
                    source,
                });
            }
        }
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.into(),
        value: value.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 8:1 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";

    const PURE_V2: &str = "\
25 1 8:1 / / rw,relatime - ext4 /dev/vda rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot";

    fn mounts(text: &str) -> Vec<MountInfo> {
        text.lines()
            .map(|line| MountInfo::from_line(line).unwrap())
            .collect()
    }

    /// A controllers reader giving `list` for `at` and failing elsewhere.
    fn controllers(at: &str, list: &str) -> impl Fn(&Path) -> io::Result<String> {
        let (at, list) = (PathBuf::from(at), list.to_owned());
        move |dir| {
            if dir == at {
                Ok(list.clone())
            } else {
                Err(io::ErrorKind::NotFound.into())
            }
        }
    }

    #[test]
    fn v2_is_chosen_when_its_root_offers_memory() {
        let found = choose(
            &mounts(PURE_V2),
            controllers("/sys/fs/cgroup", "cpuset cpu io memory hugetlb pids\n"),
        );
        assert_eq!(
            found,
            Ok(Hierarchy {
                version: Version::V2,
                root: Dirs {
                    memory: "/sys/fs/cgroup".into(),
                    cpu: Some("/sys/fs/cgroup".into()),
                },
            })
        );
        let without_cpu = choose(
            &mounts(PURE_V2),
            controllers("/sys/fs/cgroup", "io memory pids\n"),
        )
        .unwrap();
        assert_eq!(without_cpu.root.cpu, None);
        assert_eq!(without_cpu.cpu_path(), None);
    }

    #[test]
    fn v1_memory_is_chosen_when_v2_lacks_memory() {
        let found = choose(
            &mounts(HYBRID),
            controllers("/sys/fs/cgroup/unified", "hugetlb\n"),
        );
        assert_eq!(
            found,
            Ok(Hierarchy {
                version: Version::V1,
                root: Dirs {
                    memory: "/sys/fs/cgroup/memory".into(),
                    cpu: Some("/sys/fs/cgroup/cpu".into()),
                },
            })
        );
    }

    #[test]
    fn the_v1_cpu_hierarchy_is_found_however_it_is_mounted() {
        let cpu_of = |text: &str| {
            choose(&mounts(text), controllers("/sys/fs/cgroup/unified", ""))
                .unwrap()
                .root
                .cpu
        };
        let with_cpuacct = HYBRID.replace(
            "/cpu rw,relatime - cgroup cgroup rw,cpu",
            "/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct",
        );
        assert_eq!(
            cpu_of(&with_cpuacct),
            Some("/sys/fs/cgroup/cpu,cpuacct".into())
        );
        let cpuset_only = HYBRID.replace("rw,cpu\n", "rw,cpuset\n");
        assert_eq!(cpu_of(&cpuset_only), None);
        let read_only = HYBRID.replace("/cpu rw,", "/cpu ro,");
        assert_eq!(cpu_of(&read_only), None);

        // Mounted with memory: the worker's memory cgroup is its cpu one too.
        let together = HYBRID
            .lines()
            .filter(|l| !l.contains("rw,cpu"))
            .map(|l| l.replace("rw,memory", "rw,cpu,memory"))
            .collect::<Vec<_>>()
            .join("\n");
        let found = choose(&mounts(&together), controllers("/", "")).unwrap();
        assert_eq!(found.root.cpu.as_deref(), Some(found.path()));
        assert_eq!(found.cpu_path(), None, "no twin to make or remove");
    }

    #[test]
    fn a_cgroup_has_one_directory_per_hierarchy() {
        let apart = Dirs {
            memory: "/m".into(),
            cpu: Some("/c".into()),
        }
        .join("xypriss");
        assert_eq!(
            apart.each().collect::<Vec<_>>(),
            [Path::new("/m/xypriss"), Path::new("/c/xypriss")]
        );
        let together = Dirs {
            memory: "/m".into(),
            cpu: Some("/m".into()),
        }
        .join("p");
        assert_eq!(together.each().collect::<Vec<_>>(), [Path::new("/m/p")]);
        let memory_only = Dirs {
            memory: "/m".into(),
            cpu: None,
        };
        assert_eq!(memory_only.each().collect::<Vec<_>>(), [Path::new("/m")]);
    }

    #[test]
    fn throttling_picks_what_each_cgroup_offers() {
        assert_eq!(Throttle::of(Version::V2, false), Some(Throttle::MemoryHigh));
        assert_eq!(
            Throttle::of(Version::V2, true),
            Some(Throttle::MemoryHighCpuMax)
        );
        assert_eq!(
            Throttle::of(Version::V1, true),
            Some(Throttle::CfsQuotaSoftLimit)
        );
        assert_eq!(Throttle::of(Version::V1, false), None);
        assert_eq!(
            Throttle::CfsQuotaSoftLimit.as_str(),
            "cpu.cfs_quota_us+memory.soft_limit_in_bytes"
        );
        assert_eq!(Throttle::MemoryHighCpuMax.as_str(), "memory.high+cpu.max");
    }

    #[test]
    fn a_cpu_fraction_becomes_a_quota_of_the_period() {
        assert_eq!(quota_us(100_000, 0.25), 25_000);
        assert_eq!(quota_us(100_000, 1.5), 150_000);
        assert_eq!(quota_us(100_000, 0.001), MIN_QUOTA_US, "the kernel's least");
        assert_eq!(check_fraction(0.5).ok(), Some(0.5));
        for bad in [0.0, -0.5, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(check_fraction(bad), Err(CgroupError::CpuFraction { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn cpu_bandwidth_is_written_as_each_version_reads_it() {
        assert_eq!(Version::V1.parse_period("100000\n"), Some(100_000));
        assert_eq!(Version::V2.parse_period("max 100000\n"), Some(100_000));
        assert_eq!(Version::V2.parse_period("5000 20000\n"), Some(20_000));
        assert_eq!(Version::V2.parse_period("max\n"), None);
        assert_eq!(Version::V1.quota_value(Some((5000, 100_000))), "5000");
        assert_eq!(
            Version::V2.quota_value(Some((5000, 100_000))),
            "5000 100000"
        );
        assert_eq!(Version::V1.quota_value(None), "-1");
        assert_eq!(Version::V2.quota_value(None), "max");
        assert_eq!(Version::V1.quota_file(), "cpu.cfs_quota_us");
        assert_eq!(Version::V1.period_file(), "cpu.cfs_period_us");
        assert_eq!(Version::V2.quota_file(), "cpu.max");
    }

    #[test]
    fn a_given_root_is_judged_alone() {
        let v2 = controllers("/sys/fs/cgroup/unified", "hugetlb\n");
        let at = |root: &str| choose_at(&mounts(HYBRID), Path::new(root), &v2);
        assert_eq!(
            at("/sys/fs/cgroup/memory"),
            Ok(Hierarchy {
                version: Version::V1,
                root: Dirs {
                    memory: "/sys/fs/cgroup/memory".into(),
                    cpu: Some("/sys/fs/cgroup/cpu".into()),
                },
            })
        );
        let unified = at("/sys/fs/cgroup/unified").unwrap_err();
        assert!(unified.contains("does not offer memory"), "{unified}");
        assert!(!unified.contains("/sys/fs/cgroup/memory"), "{unified}");
        assert_eq!(
            at("/sys/fs/cgroup"),
            Err("/sys/fs/cgroup is a tmpfs mount, not a cgroup hierarchy".into())
        );
        assert_eq!(
            at("/sys/fs/cgroup/cpu"),
            Err("the cgroup v1 hierarchy at /sys/fs/cgroup/cpu has no memory controller".into())
        );
        assert_eq!(at("/srv"), Err("nothing is mounted at /srv".into()));
    }

    #[test]
    fn without_memory_anywhere_the_reason_names_each_mount() {
        let no_v1_memory: String = HYBRID
            .lines()
            .filter(|l| !l.contains("rw,memory"))
            .collect::<Vec<_>>()
            .join("\n");
        let reason = choose(
            &mounts(&no_v1_memory),
            controllers("/sys/fs/cgroup/unified", "hugetlb\n"),
        )
        .unwrap_err();
        assert!(
            reason.contains("/sys/fs/cgroup/unified does not offer memory"),
            "{reason}"
        );
        assert!(reason.contains("no cgroup v1 memory"), "{reason}");

        let reason = choose(
            &mounts(HYBRID.lines().next().unwrap()),
            controllers("/", ""),
        )
        .unwrap_err();
        assert!(reason.contains("no cgroup2 is mounted"), "{reason}");
    }

    #[test]
    fn read_only_mounts_are_not_used() {
        let ro = PURE_V2.replace(" rw,nosuid", " ro,nosuid");
        let reason = choose(&mounts(&ro), controllers("/sys/fs/cgroup", "memory")).unwrap_err();
        assert!(reason.contains("read-only"), "{reason}");
    }

    #[test]
    fn pool_names_are_letters_digits_underscore_and_dash() {
        assert!(check_pool_name("web_2-api").is_ok());
        for bad in ["", "a.b", "a/b", "..", "é", "a b"] {
            assert!(
                matches!(check_pool_name(bad), Err(CgroupError::PoolName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pool_directories_name_their_xypriss() {
        assert_eq!(pool_pid("web.4242"), Some(4242));
        assert_eq!(pool_pid("web-2.1"), Some(1));
        assert_eq!(pool_pid("web"), None);
        assert_eq!(pool_pid("web.x"), None);
        assert_eq!(pool_pid("a.b.12"), None);
    }

    #[test]
    fn limits_are_written_as_each_version_reads_them() {
        assert_eq!(Version::V2.limit_value(Some(64 << 20)), "67108864");
        assert_eq!(Version::V1.limit_value(Some(64 << 20)), "67108864");
        assert_eq!(Version::V2.limit_value(None), "max");
        assert_eq!(Version::V1.limit_value(None), "-1");
        assert_eq!(Version::V2.high_file(), "memory.high");
        assert_eq!(Version::V1.high_file(), "memory.soft_limit_in_bytes");
        assert_eq!(Version::V2.max_file(), "memory.max");
        assert_eq!(Version::V1.max_file(), "memory.limit_in_bytes");
    }

    #[test]
    fn a_pool_is_stale_once_its_xypriss_is_gone() {
        let made = UNIX_EPOCH + Duration::from_secs(1000);
        let before = Some(made - Duration::from_secs(1));
        let after = Some(made + Duration::from_secs(1));
        let xypriss = |started| Owner { started };
        assert!(is_stale(None, Some(made)));
        assert!(is_stale(Some(&xypriss(after)), Some(made)), "pid reused");
        assert!(!is_stale(Some(&xypriss(before)), Some(made)));
        assert!(!is_stale(Some(&xypriss(None)), Some(made)));
        assert!(!is_stale(Some(&xypriss(after)), None));
    }
}
