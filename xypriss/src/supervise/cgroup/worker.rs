//! One worker's cgroup, and how a cgroup's processes are killed and drained
//! before it is removed.

use super::*;

/// One worker's cgroup: its memory one, and its cpu one if the pool has one.
#[derive(Debug)]
pub struct WorkerCgroup {
    pub(super) version: Version,
    pub(super) dirs: Dirs,
    /// The `memory.high` of [`Self::bound`] (0: none), which lifting a
    /// throttle restores.
    pub(super) high: AtomicU64,
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

    /// Moves process `pid` (all its threads) into this cgroup, in each
    /// hierarchy. Its children are born in it from then on.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        self.dirs
            .each()
            .try_for_each(|dir| write(&dir.join(PROCS), &pid))
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

    /// Has the kernel bound the worker at `high` and `max` bytes (see
    /// [`Bound`]): `memory.high` and `memory.max` on v2, only
    /// `memory.limit_in_bytes` on v1. Returns what was written.
    pub fn bound(&self, high: u64, max: u64) -> Result<Bound, CgroupError> {
        let bound = Bound::on(self.version, high, max);
        // The ceiling first: a `memory.high` above the old `memory.max`
        // would otherwise hold for a moment with nothing above it.
        self.set_max(Some(bound.max))?;
        if let Some(high) = bound.high {
            self.set(self.version.high_file(), Some(high))?;
            self.high.store(high, Ordering::Relaxed);
        }
        Ok(bound)
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

    /// Lifts [`Self::throttle`]: no CPU bound, and no `memory.high` (or soft
    /// limit) but that of [`Self::bound`].
    pub fn unthrottle(&self) -> Result<(), CgroupError> {
        let high = self.high.load(Ordering::Relaxed);
        self.set(self.version.high_file(), (high != 0).then_some(high))?;
        match &self.dirs.cpu {
            Some(dir) => write(
                &dir.join(self.version.quota_file()),
                &self.version.quota_value(None),
            ),
            None => Ok(()),
        }
    }

    pub(super) fn set(&self, file: &str, bytes: Option<u64>) -> Result<(), CgroupError> {
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

/// Kills everything in `dir` and the cgroups below it, and removes them,
/// deepest first, counting the processes killed in `killed`.
pub(super) fn drain(dir: &Path, version: Version, killed: &mut usize) -> Result<(), CgroupError> {
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
pub(super) fn kill_all(dir: &Path, version: Version) -> Result<usize, CgroupError> {
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
            killed.extend(kill_listed(dir, &listed)?);
        }
        thread::sleep(POLL);
    }
}

/// SIGKILLs the processes of `listed` (read from `dir`'s `cgroup.procs`)
/// that are still in `dir`; returns those killed. A pid read from the list
/// may have been reused by another process since, anywhere on the host: so
/// each one is first pinned with a pidfd, which always means the one process
/// it was opened on, the list is read again, and only a pinned process still
/// listed is signalled, through its pidfd. (The pinned process holds its pid
/// until it is reaped, so the pid in the new list is that process.) A pid
/// gone by then is left for the next round.
pub(super) fn kill_listed(dir: &Path, listed: &[u32]) -> Result<Vec<u32>, CgroupError> {
    let kill_error = |pid, source| CgroupError::Kill {
        path: dir.into(),
        pid,
        source,
    };
    let mut pinned = Vec::new();
    // Pid 0 is a process outside our pid namespace: it cannot be pinned.
    for &pid in listed.iter().filter(|&&pid| pid != 0) {
        match pidfd_open(pid) {
            Ok(fd) => pinned.push((pid, fd)),
            Err(Errno::ESRCH) => {}
            Err(source) => return Err(kill_error(pid, source)),
        }
    }
    let still = read_procs(dir)?;
    let mut killed = Vec::new();
    for (pid, fd) in pinned {
        if !still.contains(&pid) {
            continue;
        }
        match pidfd_send_signal(&fd, Signal::SIGKILL) {
            Ok(()) => killed.push(pid),
            Err(Errno::ESRCH) => {}
            Err(source) => return Err(kill_error(pid, source)),
        }
    }
    Ok(killed)
}

/// `pidfd_open(2)` (Linux 5.3): an fd that means process `pid` and no other.
pub(super) fn pidfd_open(pid: u32) -> Result<OwnedFd, Errno> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| Errno::ESRCH)?;
    // SAFETY: the system call takes a pid and flags, and returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just made this fd, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(2)` (Linux 5.1): `signal` to the process `fd` means.
pub(super) fn pidfd_send_signal(fd: &OwnedFd, signal: Signal) -> Result<(), Errno> {
    // SAFETY: an fd we own, a valid signal, no siginfo, no flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// The pids listed in `dir`'s `cgroup.procs`, 0s included.
pub(super) fn read_procs(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let path = dir.join(PROCS);
    let text = read(&path)?;
    text.lines()
        .map(|line| line.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| CgroupError::Parse { path, text })
}

pub(super) fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
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
