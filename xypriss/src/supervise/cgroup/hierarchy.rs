//! The hierarchy: where the pools' cgroups live (which mount, which version,
//! which controllers), who owns each pool's directory, and, on v2, the
//! delegated subtree xypriss may write in.

use super::*;

/// A mounted cgroup hierarchy with the memory controller, and where the cpu
/// controller is, if it is usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub(super) version: Version,
    pub(super) root: Dirs,
    /// Where the `xypriss` directory of pools is: the root, or on v2 the
    /// delegated cgroup xypriss runs in.
    pub(super) base: Dirs,
}

impl Hierarchy {
    /// Finds the memory hierarchy, and the cpu controller, in this process's mounts.
    pub fn find() -> Result<Self, CgroupError> {
        choose(&mounts()?, read_controllers)
            .map(Self::placed)
            .map_err(|reason| CgroupError::NoMemoryController { reason })
    }

    /// On v2, pools go under this process's cgroup when it was delegated:
    /// see the module header.
    fn placed(mut self) -> Self {
        if self.version != Version::V2 {
            return self;
        }
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mount = self.root.memory.clone();
        let delegated = |unit: &str| is_delegated(&mount.join(unit.trim_start_matches('/')));
        if let Some(unit) = v2_own_cgroup(&own).and_then(|own| v2_base(own, delegated)) {
            self.base = self.root.join(unit.trim_start_matches('/'));
        }
        self
    }

    /// The memory hierarchy mounted at `root`, if that is one: for a look at
    /// one place rather than the choice [`Self::find`] makes.
    pub fn find_at(root: &Path) -> Result<Self, CgroupError> {
        choose_at(&mounts()?, root, read_controllers)
            .map(Self::placed)
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
        self.base.memory.join(TOP)
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
        let name = format!("{name}.{}{LOCKED}", std::process::id());
        let root = &self.base.memory;
        if self.base != self.root {
            enter_leaf(root)?;
        }
        // Held until the pool is made and locked: see the module header.
        let _top = lock_top(root)?;
        let memory = make_pool(root, &name)?;
        let lock = match try_lock(&memory) {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                return Err(CgroupError::Lock {
                    path: memory,
                    source: Errno::EWOULDBLOCK,
                });
            }
            Err(source) => {
                // Nothing runs in it yet.
                let _ = fs::remove_dir(&memory);
                return Err(CgroupError::Lock {
                    path: memory,
                    source,
                });
            }
        };
        if self.version == Version::V2
            && let Err(err) = enable_down(root, &memory, "memory")
        {
            // Nothing runs in it yet.
            let _ = fs::remove_dir(&memory);
            return Err(err);
        }
        let cpu = self.base.cpu.as_deref().and_then(|cpu_root| {
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
            _lock: lock,
        })
    }

    /// Kills and removes every pool whose owner is gone: nothing holds its
    /// lock (see the module header). Pools of a running xypriss, this one's
    /// included, are left alone, whatever the clock did. A pool's cpu twin
    /// goes with it, and one left without its memory part too. Each pool is
    /// reported, with what went wrong if it could not be removed whole.
    ///
    /// In a pid namespace of its own xypriss is likely in a container whose
    /// view of the cgroup files is not the host's (and flock locks are not
    /// shared between two mounts of different cgroup namespaces), so nothing
    /// is judged stale there: see [`Self::remove_pools_of`].
    pub fn remove_stale(&self) -> Result<Vec<Stale>, CgroupError> {
        if own_pid_namespace().is_some() {
            return Ok(Vec::new());
        }
        self.remove_where(|owner| match owner {
            PoolOwner::Locked(_) => true,
            PoolOwner::Legacy(pid) => process_gone(pid),
        })
    }

    /// Kills and removes the pools named after process `pid`, which is gone,
    /// and which nobody holds: what the watchdog of an xypriss in a pid
    /// namespace of its own can still clean.
    pub fn remove_pools_of(&self, pid: u32) -> Result<Vec<Stale>, CgroupError> {
        self.remove_where(|owner| owner.pid() == pid)
    }

    /// Kills and removes the pools nobody holds for which `remove(owner)` holds.
    fn remove_where(&self, remove: impl Fn(PoolOwner) -> bool) -> Result<Vec<Stale>, CgroupError> {
        let top_lock = lock_top(&self.base.memory)?;
        let top = self.base.join(TOP);
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
        // Every pool whose lock is free, locked now: none is being made
        // (that takes the top lock), and no other xypriss drains them too.
        let mut orphans = Vec::new();
        for name in names {
            let Some(owner) = name.to_str().and_then(pool_owner) else {
                continue;
            };
            if !remove(owner) {
                continue;
            }
            let pid = owner.pid();
            let pool = top.join(&name);
            // Its memory part, or the cpu twin left without one.
            let Some(dir) = pool.each().find(|dir| dir.exists()) else {
                continue;
            };
            match try_lock(dir) {
                Ok(Some(lock)) => orphans.push((pid, pool, lock)),
                // Its xypriss runs; or it went, with its pool, just now.
                Ok(None) | Err(Errno::ENOENT) => {}
                Err(source) => {
                    return Err(CgroupError::Lock {
                        path: dir.into(),
                        source,
                    });
                }
            }
        }
        drop(top_lock);
        let mut removed = Vec::new();
        for (pid, pool, _lock) in orphans {
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

pub(super) fn mounts() -> Result<Vec<MountInfo>, CgroupError> {
    Process::myself()
        .and_then(|me| me.mountinfo())
        .map(|mounts| mounts.0)
        .map_err(|source| CgroupError::MountInfo { source })
}

pub(super) fn read_controllers(hierarchy: &Path) -> io::Result<String> {
    fs::read_to_string(hierarchy.join("cgroup.controllers"))
}

/// Whether the hierarchy mounted at `root` (the last mount there hides the
/// others) is one xypriss can use, and why not if it is not.
pub(super) fn choose_at(
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
pub(super) fn choose(
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
pub(super) fn judge(
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
                let root = Dirs {
                    memory: mount.mount_point.clone(),
                    cpu: cpu.then(|| mount.mount_point.clone()),
                };
                Ok(Hierarchy {
                    version: Version::V2,
                    base: root.clone(),
                    root,
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
            let root = Dirs {
                memory: mount.mount_point.clone(),
                cpu: cpu.map(|m| m.mount_point.clone()),
            };
            Ok(Hierarchy {
                version: Version::V1,
                base: root.clone(),
                root,
            })
        }
        other => Err(format!("{at} is a {other} mount, not a cgroup hierarchy")),
    }
}

pub(super) fn check_pool_name(name: &str) -> Result<(), CgroupError> {
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

/// The end of the name of a pool whose maker holds its lock.
pub(super) const LOCKED: &str = ".flock";

/// How a pool directory's name says who made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PoolOwner {
    /// `<pool>.<pid>.flock`: its xypriss holds the directory's lock while it runs.
    Locked(u32),
    /// `<pool>.<pid>`: made by an xypriss from before the lock; only the pid tells.
    Legacy(u32),
}

impl PoolOwner {
    fn pid(self) -> u32 {
        match self {
            Self::Locked(pid) | Self::Legacy(pid) => pid,
        }
    }
}

/// Who made the pool directory named `dir_name`.
pub(super) fn pool_owner(dir_name: &str) -> Option<PoolOwner> {
    let (stem, locked) = match dir_name.strip_suffix(LOCKED) {
        Some(stem) => (stem, true),
        None => (dir_name, false),
    };
    let (pool, pid) = stem.rsplit_once('.')?;
    check_pool_name(pool).ok()?;
    let pid = pid.parse().ok()?;
    Some(if locked {
        PoolOwner::Locked(pid)
    } else {
        PoolOwner::Legacy(pid)
    })
}

/// Whether no process has pid `pid`: only ESRCH says so. EPERM (another
/// user's) or anything else means it may run.
pub(super) fn process_gone(pid: u32) -> bool {
    match i32::try_from(pid) {
        Ok(raw) => kill(Pid::from_raw(raw), None) == Err(Errno::ESRCH),
        Err(_) => true,
    }
}

/// Opens `dir` (CLOEXEC, so no worker inherits the lock) and takes its
/// exclusive lock if nobody holds it; `None` when somebody does.
pub(super) fn try_lock(dir: &Path) -> Result<Option<Flock<File>>, Errno> {
    let file = File::open(dir).map_err(|err| Errno::from_raw(err.raw_os_error().unwrap_or(0)))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(errno),
    }
}

/// Makes `<root>/xypriss` if need be, and waits for its exclusive lock:
/// held while a pool is made and locked, and while stale pools are found.
pub(super) fn lock_top(root: &Path) -> Result<Flock<File>, CgroupError> {
    let top = root.join(TOP);
    match mkdir(&top) {
        Err(CgroupError::Exists { .. }) | Ok(()) => {}
        Err(err) => return Err(err),
    }
    let failed = |source| CgroupError::Lock {
        path: top.clone(),
        source,
    };
    let file =
        File::open(&top).map_err(|err| failed(Errno::from_raw(err.raw_os_error().unwrap_or(0))))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| failed(errno))
}

/// The leaf of a delegated cgroup that its own processes move into, so that
/// it may hand controllers down to the pools beside the leaf.
pub const SUPERVISOR: &str = "xypriss-supervisor";

/// This process's cgroup v2 path, from /proc/self/cgroup's `0::` line.
pub(super) fn v2_own_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// The cgroup pools are made under, for a process in v2 cgroup `own`: the
/// unit's cgroup (`own`, or its parent when `own` is the [`SUPERVISOR`] leaf
/// of it) if it is not the root and `delegated` says it was delegated;
/// `None` for the hierarchy's root.
pub(super) fn v2_base(own: &str, delegated: impl Fn(&str) -> bool) -> Option<String> {
    let own = own.trim().trim_end_matches('/');
    let unit = own
        .strip_suffix(SUPERVISOR)
        .and_then(|parent| parent.strip_suffix('/'))
        .unwrap_or(own);
    (!unit.is_empty() && delegated(unit)).then(|| unit.to_owned())
}

/// Whether systemd delegated the cgroup at `dir` (`Delegate=yes`): it marks
/// it with the `trusted.delegate` xattr (`user.delegate` for a user manager).
pub(super) fn is_delegated(dir: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    ["trusted.delegate", "user.delegate"]
        .into_iter()
        .any(|name| {
            let name = std::ffi::CString::new(name).expect("no NUL");
            let mut value = [0u8; 8];
            // SAFETY: NUL-terminated strings and a buffer of the length given.
            let len = unsafe {
                libc::getxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    value.as_mut_ptr().cast(),
                    value.len(),
                )
            };
            len > 0 && value[..len as usize].starts_with(b"1")
        })
}

/// Moves every process of the delegated cgroup `unit` (xypriss, and what
/// its service manager started beside it) into its [`SUPERVISOR`] leaf, so
/// that `unit` may enable controllers for its children.
pub(super) fn enter_leaf(unit: &Path) -> Result<(), CgroupError> {
    let leaf = unit.join(SUPERVISOR);
    match mkdir(&leaf) {
        Err(CgroupError::Exists { .. }) | Ok(()) => {}
        Err(err) => return Err(err),
    }
    for pid in read_procs(unit)?.into_iter().filter(|&pid| pid != 0) {
        match fs::write(leaf.join(PROCS), pid.to_string()) {
            // Gone meanwhile.
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
            result => result.map_err(|source| CgroupError::Write {
                path: leaf.join(PROCS),
                value: pid.to_string(),
                source,
            })?,
        }
    }
    Ok(())
}

/// Makes `<root>/xypriss/<pool>`; the shared `xypriss` may exist already.
pub(super) fn make_pool(root: &Path, pool: &str) -> Result<PathBuf, CgroupError> {
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
pub(super) fn enable_down(root: &Path, pool: &Path, controller: &str) -> Result<(), CgroupError> {
    [root, &root.join(TOP), pool]
        .into_iter()
        .try_for_each(|dir| enable(dir, controller))
}

/// Enables `controller` for `dir`'s children (v2).
pub(super) fn enable(dir: &Path, controller: &str) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    if read(&path)?.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    write(&path, &format!("+{controller}"))
}
