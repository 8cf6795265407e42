//! Per-worker cgroups: memory, and CPU bandwidth where it throttles.
//!
//! v1 and v2 are two dialects of one object (create, limit, throttle, kill,
//! remove, find the stale), and each operation reads best with both dialects
//! side by side; the files split by object instead: the hierarchy and its
//! pools' directories (`hierarchy.rs`), one worker's cgroup and the killing
//! of a cgroup's processes (`worker.rs`), and here what both share.
//!
//! Each worker runs in a cgroup of its own, under one cgroup per pool, so that
//! the supervisor can throttle it, have the kernel enforce its limit
//! (`memory.max`), read its memory as the kernel charges it, and kill
//! everything it started, whatever process group or session it moved to: a
//! process group is left with one `setsid`, a cgroup only by a process allowed
//! to write to another cgroup's `cgroup.procs`.
//!
//! The layout is
//! `<hierarchy>/xypriss/<pool>.<xypriss pid>.flock/w<id>.g<generation>`.
//! A SIGKILLed xypriss cannot clean up, so what it left behind is killed and
//! removed at the next start ([`Hierarchy::remove_stale`]). Which pools are
//! left behind is told by a lock, not by a clock or a pid: each xypriss holds
//! an exclusive `flock` on its pool's directory for as long as it runs, and
//! the kernel releases it when the process ends, however it ends. A pool
//! whose lock can be taken has no owner. (A pool named `<pool>.<pid>`, made
//! before the lock by an older xypriss that may still run, holds none: it is
//! stale only once no process has its pid, ESRCH and nothing else; and an
//! older xypriss does not read the new names at all.) Comparing start times instead would
//! drift: `/proc/stat`'s boot time is recomputed from the wall clock, so a
//! forward clock step (NTP at boot, a VM resumed) made every live pool look
//! younger than its owner, and the next xypriss killed their workers. A pool
//! is made, and locked, while its maker holds the lock of the `xypriss`
//! directory, which a search for stale pools holds too, so no pool is ever
//! seen between its birth and its lock. The `xypriss` directory itself is
//! shared by every xypriss on the machine and never removed: removing it
//! would race with another one creating its pool.
//!
//! Where pools are made: on cgroup v2, under xypriss's own cgroup (from
//! /proc/self/cgroup) when its service manager delegated it (systemd's
//! `Delegate=yes`, which the unit in deploy/systemd has; systemd marks such
//! a cgroup with the `trusted.delegate` xattr), so that the unit's
//! `MemoryMax=`, `TasksMax=` and systemd-oomd cover the workers too. v2 lets
//! no cgroup with processes of its own hand controllers down, so xypriss
//! first moves the unit's processes (itself) into a leaf of it,
//! [`SUPERVISOR`]. A cgroup nobody delegated (a login session's scope) is not
//! xypriss's to rearrange: pools go under the hierarchy's root then, as they
//! always do on v1, whose hierarchies are each their own tree: a v1 memory
//! pool is outside the unit's memory cgroup, and the unit's v1 limits do not
//! cover it.
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
//! `spawn_blocking`. v2 kills with `cgroup.kill`; v1 has none, and reads
//! `cgroup.procs` before it signals, so it pins each process with a pidfd
//! and signals only those still listed ([`kill_listed`]): a pid reused
//! elsewhere in between is never hit.
//!
//! Over 600 lines with its unit tests; the module itself is the first 488.

use std::{
    collections::{BTreeSet, HashSet},
    fs::{self, File},
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
    libc,
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use procfs::process::{MountInfo, Process};

use super::pid_namespace::own_pid_namespace;

mod hierarchy;
mod worker;

pub use self::{hierarchy::*, worker::*};

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
    #[error("cannot lock {}: {source}", path.display())]
    Lock { path: PathBuf, source: Errno },
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
    /// Says the pool is in use, for as long as this process holds it.
    _lock: Flock<File>,
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
            high: AtomicU64::new(0),
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

/// The kernel's bound on a worker's memory past its limit, as
/// [`WorkerCgroup::bound`] writes it. What it guarantees is the cgroup's
/// charge (v2 `memory.current`, v1 `memory.usage_in_bytes`: the worker's
/// anonymous memory, page cache and kernel memory charged to it), not its
/// RSS: a file page first touched by another cgroup is charged there.
///
/// - `max` (v2 `memory.max`, v1 `memory.limit_in_bytes`) is exact: a
///   charge that would take the cgroup past it first reclaims from the
///   cgroup, and fails when that frees too little, which OOM-kills a process
///   of the cgroup. So the charge never exceeds it, by a page or by the
///   per-CPU charge batch (pre-charged pages count as charged). Without swap
///   an anonymous leak cannot be reclaimed, so reaching it means a SIGKILL:
///   no drain, and the requests in flight fail. It is the last resort, for a
///   worker that outruns its graceful replacement or ignores its stop signal.
/// - `high` (v2 `memory.high`; v1 has nothing like it) is a throttle, not a
///   bound: a task that charged past it reclaims on its way back to user
///   space, and when that cannot bring the cgroup under it (anonymous memory,
///   no swap) sleeps in proportion to the square of the excess, up to 2 s
///   each time. The worker crawls from there to `max`, and is not killed.
///   It sits above the limit so that it only ever slows a worker already
///   told to drain and stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    pub high: Option<u64>,
    pub max: u64,
}

impl Bound {
    /// What a `version` hierarchy can hold of `high` and `max`: v1 keeps
    /// only `max`.
    pub fn on(version: Version, high: u64, max: u64) -> Self {
        Bound {
            high: (version == Version::V2).then_some(high.min(max)),
            max,
        }
    }
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

    fn hierarchy(version: Version, root: Dirs) -> Hierarchy {
        Hierarchy {
            version,
            base: root.clone(),
            root,
        }
    }

    #[test]
    fn on_v2_pools_go_under_a_delegated_cgroup_of_ours() {
        let unit = "/system.slice/system-xypriss.slice/xypriss@web.service";
        let text = format!("0::{unit}\n");
        let own = v2_own_cgroup(&text).unwrap();
        let delegated = |dir: &str| dir == unit;
        assert_eq!(v2_base(own, delegated).as_deref(), Some(unit));
        // Once xypriss moved into its leaf (and for the watchdog, born there).
        let leaf = format!("{unit}/{SUPERVISOR}");
        assert_eq!(v2_base(&leaf, delegated).as_deref(), Some(unit));
        // A login session's scope, not delegated: the hierarchy's root.
        let session = "/user.slice/user-1000.slice/session-4.scope";
        assert_eq!(v2_base(session, delegated), None);
        assert_eq!(v2_base("/", |_| true), None);
        assert_eq!(v2_base(&format!("/{SUPERVISOR}"), |_| true), None);
        // A hybrid machine's v1 lines are not v2's.
        let hybrid = "12:memory:/system.slice/x.service\n1:name=systemd:/x\n0::/x.service\n";
        assert_eq!(v2_own_cgroup(hybrid), Some("/x.service"));
        assert_eq!(v2_own_cgroup("4:memory:/a\n"), None);
    }

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
            Ok(hierarchy(
                Version::V2,
                Dirs {
                    memory: "/sys/fs/cgroup".into(),
                    cpu: Some("/sys/fs/cgroup".into()),
                },
            ))
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
            Ok(hierarchy(
                Version::V1,
                Dirs {
                    memory: "/sys/fs/cgroup/memory".into(),
                    cpu: Some("/sys/fs/cgroup/cpu".into()),
                },
            ))
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

    /// A worker cgroup of `version` in a fresh directory of the temp dir,
    /// its memory files holding what a new cgroup's hold.
    fn fake_worker(version: Version, name: &str) -> WorkerCgroup {
        let dir = std::env::temp_dir().join(format!("xypriss-{name}-{}", std::process::id()));
        drop(fs::remove_dir_all(&dir));
        fs::create_dir_all(&dir).unwrap();
        let unlimited = version.limit_value(None);
        for file in [version.high_file(), version.max_file()] {
            fs::write(dir.join(file), &unlimited).unwrap();
        }
        WorkerCgroup {
            version,
            dirs: Dirs {
                memory: dir,
                cpu: None,
            },
            high: AtomicU64::new(0),
        }
    }

    fn file(w: &WorkerCgroup, name: &str) -> String {
        fs::read_to_string(w.path().join(name)).unwrap()
    }

    #[test]
    fn v2_is_bound_by_memory_high_and_memory_max() {
        let w = fake_worker(Version::V2, "bound-v2");
        let bound = w.bound(200 << 20, 220 << 20).unwrap();
        assert_eq!(
            bound,
            Bound {
                high: Some(200 << 20),
                max: 220 << 20
            }
        );
        assert_eq!(file(&w, "memory.high"), (200u64 << 20).to_string());
        assert_eq!(file(&w, "memory.max"), (220u64 << 20).to_string());
        // A throttle lowers memory.high; lifting it restores the bound's.
        w.set(w.version.high_file(), Some(100 << 20)).unwrap();
        w.unthrottle().unwrap();
        assert_eq!(file(&w, "memory.high"), (200u64 << 20).to_string());
        // Never a memory.high over memory.max.
        assert_eq!(Bound::on(Version::V2, 9, 5).high, Some(5));
        fs::remove_dir_all(w.path()).unwrap();
    }

    #[test]
    fn v1_is_bound_by_its_limit_alone() {
        let w = fake_worker(Version::V1, "bound-v1");
        let bound = w.bound(200 << 20, 220 << 20).unwrap();
        assert_eq!(
            bound,
            Bound {
                high: None,
                max: 220 << 20
            }
        );
        assert_eq!(
            file(&w, "memory.limit_in_bytes"),
            (220u64 << 20).to_string()
        );
        // The soft limit is no bound: left as it was.
        assert_eq!(file(&w, "memory.soft_limit_in_bytes"), "-1");
        w.unthrottle().unwrap();
        assert_eq!(file(&w, "memory.soft_limit_in_bytes"), "-1");
        fs::remove_dir_all(w.path()).unwrap();
    }

    #[test]
    fn a_bound_that_cannot_be_written_says_where() {
        let w = fake_worker(Version::V2, "bound-missing");
        fs::remove_dir_all(w.path()).unwrap();
        let err = w.bound(1 << 20, 2 << 20).unwrap_err();
        assert!(
            matches!(&err, CgroupError::Write { path, .. } if path.ends_with("memory.max")),
            "{err}"
        );
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
            Ok(hierarchy(
                Version::V1,
                Dirs {
                    memory: "/sys/fs/cgroup/memory".into(),
                    cpu: Some("/sys/fs/cgroup/cpu".into()),
                },
            ))
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
    fn a_listed_pid_now_outside_the_cgroup_is_not_killed() {
        let dir = std::env::temp_dir().join(format!("xypriss-kill-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut outsider = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = outsider.id();
        // Read as the cgroup's when its process was there; by now the pid
        // names a process elsewhere, and the cgroup lists nothing.
        fs::write(dir.join(PROCS), "").unwrap();
        assert_eq!(kill_listed(&dir, &[pid]).unwrap(), Vec::<u32>::new());
        thread::sleep(Duration::from_millis(50));
        assert!(
            outsider.try_wait().unwrap().is_none(),
            "a process outside the cgroup was killed"
        );
        // Still listed: it is the cgroup's, and is killed.
        fs::write(dir.join(PROCS), format!("{pid}\n")).unwrap();
        assert_eq!(kill_listed(&dir, &[pid]).unwrap(), [pid]);
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(outsider.wait().unwrap().signal(), Some(libc::SIGKILL));
        fs::remove_dir_all(&dir).unwrap();
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
        assert_eq!(pool_owner("web.4242.flock"), Some(PoolOwner::Locked(4242)));
        assert_eq!(pool_owner("web.4242"), Some(PoolOwner::Legacy(4242)));
        assert_eq!(pool_owner("web-2.1"), Some(PoolOwner::Legacy(1)));
        assert_eq!(pool_owner("web"), None);
        assert_eq!(pool_owner("web.flock"), None);
        assert_eq!(pool_owner("web.x"), None);
        assert_eq!(pool_owner("a.b.12"), None);
        assert_eq!(pool_owner("a.b.12.flock"), None);
        assert!(!process_gone(std::process::id()));
        assert!(process_gone(u32::MAX));
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
}
