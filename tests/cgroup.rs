//! Per-worker cgroups on the real kernel's memory hierarchy (v2, or v1 where
//! memory is bound to v1) and, beside it, the cpu controller's: a process
//! added to a worker cgroup is in it, limits reach the kernel's files, killing
//! empties it, removal leaves nothing behind, and a pool left by an xypriss
//! that is gone is killed and removed. A worker spawned as xypriss spawns it
//! joins its cgroup in each hierarchy, and throttling its cgroup slows its
//! allocations until it is lifted.
//!
//! Each test makes its own pool; guards kill and remove what it made even when
//! an assertion fails.
//!
//! Over 600 lines: every file in tests/ is a test binary of its own, linked
//! with the whole crate, so the cgroup tests and their helpers stay in one.

mod support;

use std::{
    fs,
    io::Write as _,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    fcntl::{Flock, FlockArg},
    sys::{
        signal::{Signal, kill},
        wait::{WaitStatus, waitpid},
    },
    unistd::Pid,
};
use support::{DEMO, MIB, XYPRISS, proc_status, root_or_skip};
use xypriss::supervise::{
    cgroup::{CgroupError, Hierarchy, PoolCgroup, Throttle, Version},
    spawn::{Identity, Spec, spawn},
};

const SIGKILL: i32 = Signal::SIGKILL as i32;

/// A pool cgroup, removed (with whatever runs in it) on drop.
struct PoolGuard(Option<PoolCgroup>);

impl PoolGuard {
    fn create(name: &str) -> Self {
        Self(Some(PoolCgroup::create(name).expect("a pool cgroup")))
    }

    fn get(&self) -> &PoolCgroup {
        self.0.as_ref().expect("the pool is not removed yet")
    }

    fn remove(&mut self) -> usize {
        self.0
            .take()
            .expect("the pool is not removed yet")
            .remove()
            .expect("the pool is removed")
    }
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            let _ = pool.remove();
        }
    }
}

/// A child process, killed and reaped on drop.
struct ChildGuard(Child);

impl ChildGuard {
    fn sleep() -> Self {
        Self(
            Command::new("sleep")
                .arg("60")
                .spawn()
                .expect("sleep starts"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Reaps it, and returns the signal that ended it.
    fn signal(&mut self) -> Option<i32> {
        self.0.wait().expect("the child is reaped").signal()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pool directory made by hand, killed and removed on drop if still there.
struct StaleGuard(PathBuf);

impl Drop for StaleGuard {
    fn drop(&mut self) {
        let worker = self.0.join("w0.g0");
        if let Ok(procs) = fs::read_to_string(worker.join("cgroup.procs")) {
            for pid in procs.split_whitespace().filter_map(|p| p.parse().ok()) {
                if pid > 0 {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        for dir in [worker, self.0.clone()] {
            for _ in 0..100 {
                if !dir.exists() || fs::remove_dir(&dir).is_ok() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "{what} within 5 s");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_worker_cgroup_holds_its_process_and_its_limits() {
    if !root_or_skip("a_worker_cgroup_holds_its_process_and_its_limits") {
        return;
    }
    let hierarchy = Hierarchy::find().expect("a memory hierarchy");
    let mut pool = PoolGuard::create("test-limits");
    assert_eq!(pool.get().version(), hierarchy.version());
    let worker = pool.get().worker(0, 1).expect("a worker cgroup");
    assert!(worker.path().is_dir());

    // The shell waits for a line, so it is in the cgroup when it execs sleep:
    // sleep's memory is then charged to the cgroup.
    let mut child = ChildGuard(
        Command::new("/bin/sh")
            .args(["-c", "read _ && exec sleep 60"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("sh starts"),
    );
    let pid = child.pid();
    worker.add(pid).expect("the process is added");
    child
        .0
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("sh reads");
    wait_until("sh execs sleep", || {
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });

    let relative = worker
        .path()
        .strip_prefix(hierarchy.path())
        .expect("the worker is in the hierarchy");
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("the process is alive");
    let suffix = format!(":/{}", relative.display());
    assert!(
        cgroups.lines().any(|line| line.ends_with(&suffix)),
        "{suffix} not in /proc/{pid}/cgroup:\n{cgroups}"
    );
    assert_eq!(worker.pids().expect("pids"), [pid]);
    let cpu_twin = worker.cpu_path().map(Path::to_owned);
    if let Some(cpu) = &cpu_twin {
        let procs = fs::read_to_string(cpu.join("cgroup.procs")).expect("the cpu cgroup");
        assert_eq!(procs.trim(), pid.to_string(), "{}", cpu.display());
    }

    let max_file = match hierarchy.version() {
        Version::V2 => "memory.max",
        Version::V1 => "memory.limit_in_bytes",
    };
    let read = |file: &str| {
        fs::read_to_string(worker.path().join(file))
            .expect("a limit file")
            .trim()
            .to_owned()
    };
    let unlimited = |value: String| match hierarchy.version() {
        Version::V2 => value == "max",
        Version::V1 => value.parse::<u64>().expect("bytes") >= 1 << 60,
    };
    worker.set_max(Some(64 * MIB)).expect("memory.max set");
    assert_eq!(read(max_file), (64 * MIB).to_string());
    worker.set_max(None).expect("memory.max unset");
    assert!(unlimited(read(max_file)), "{}", read(max_file));

    let current = worker.memory_current().expect("memory.current");
    assert!(current > 0, "sleep's memory is charged to its cgroup");

    assert_eq!(worker.kill_all().expect("killed"), 1);
    assert_eq!(child.signal(), Some(SIGKILL));
    assert!(worker.pids().expect("pids").is_empty());

    let path = worker.path().to_owned();
    assert_eq!(worker.remove().expect("the worker cgroup is removed"), 0);
    assert!(!path.exists(), "{} is left", path.display());
    if let Some(cpu) = &cpu_twin {
        assert!(!cpu.exists(), "{} is left", cpu.display());
    }
    let pool_path = pool.get().path().to_owned();
    assert_eq!(pool.remove(), 0);
    assert!(!pool_path.exists(), "{} is left", pool_path.display());
}

#[test]
fn removing_a_pool_kills_what_its_workers_left() {
    if !root_or_skip("removing_a_pool_kills_what_its_workers_left") {
        return;
    }
    let mut pool = PoolGuard::create("test-remove");
    let mut children = Vec::new();
    for id in 0..2 {
        let worker = pool.get().worker(id, 0).expect("a worker cgroup");
        let child = ChildGuard::sleep();
        worker.add(child.pid()).expect("the process is added");
        children.push(child);
    }
    let path = pool.get().path().to_owned();
    let cpu_twin = cpu_twin_of(&Hierarchy::find().expect("a memory hierarchy"), &path);
    if let Some(cpu) = &cpu_twin {
        assert!(cpu.join("w1.g0").is_dir(), "{}", cpu.display());
    }

    assert_eq!(pool.remove(), 2);
    for child in &mut children {
        assert_eq!(child.signal(), Some(SIGKILL));
    }
    assert!(!path.exists(), "{} is left", path.display());
    if let Some(cpu) = &cpu_twin {
        assert!(!cpu.exists(), "{} is left", cpu.display());
    }
}

#[test]
fn a_pool_whose_xypriss_is_gone_is_killed_and_removed() {
    if !root_or_skip("a_pool_whose_xypriss_is_gone_is_killed_and_removed") {
        return;
    }
    let hierarchy = Hierarchy::find().expect("a memory hierarchy");
    // This process's own pool: its xypriss runs, so it stays.
    let live = PoolGuard::create("test-live");

    let dead = {
        let mut gone = Command::new("true").spawn().expect("true starts");
        gone.wait().expect("true is reaped");
        gone.id()
    };
    // A stale pool as xypriss makes them: its worker in each hierarchy.
    let stale_name = format!("test-stale.{dead}");
    let stale = hierarchy.path().join("xypriss").join(&stale_name);
    let stale_cpu = cpu_twin_of(&hierarchy, &stale);
    let _stale_guards: Vec<_> = [Some(&stale), stale_cpu.as_ref()]
        .into_iter()
        .flatten()
        .map(|dir| StaleGuard(dir.clone()))
        .collect();
    let mut child = ChildGuard::sleep();
    for dir in [Some(&stale), stale_cpu.as_ref()].into_iter().flatten() {
        fs::create_dir_all(dir.join("w0.g0")).expect("a stale pool");
        fs::write(
            dir.join("w0.g0").join("cgroup.procs"),
            child.pid().to_string(),
        )
        .expect("the process is added");
    }

    // A pool whose memory part is gone, but not its cpu part.
    let half_name = format!("test-half.{dead}");
    let half = hierarchy.cpu_path().map(|cpu| {
        let dir = cpu.join("xypriss").join(&half_name);
        fs::create_dir_all(dir.join("w0.g0")).expect("a stale cpu pool");
        (StaleGuard(dir.clone()), dir, ChildGuard::sleep())
    });
    if let Some((_, dir, child)) = &half {
        fs::write(
            dir.join("w0.g0").join("cgroup.procs"),
            child.pid().to_string(),
        )
        .expect("the process is added");
    }

    // A pool whose lock nobody holds, named after a process that runs: its
    // pid was reused.
    let stranger = ChildGuard::sleep();
    let foreign = hierarchy
        .path()
        .join("xypriss")
        .join(format!("test-foreign.{}.flock", stranger.pid()));
    let _foreign_guard = StaleGuard(foreign.clone());
    fs::create_dir_all(foreign.join("w0.g0")).expect("a stale pool");
    // A pool of an older xypriss (no lock), whose process runs: it stays.
    let older = ChildGuard::sleep();
    let legacy = hierarchy
        .path()
        .join("xypriss")
        .join(format!("test-legacy.{}", older.pid()));
    let _legacy_guard = StaleGuard(legacy.clone());
    fs::create_dir_all(legacy.join("w0.g0")).expect("a live legacy pool");
    // A pool whose owner holds its lock, whatever pid names it (the
    // library's user, or an xypriss in a pid namespace of its own, whose pid
    // means another process here, or none): it stays.
    let library = hierarchy
        .path()
        .join("xypriss")
        .join(format!("test-library.{dead}.flock"));
    let _library_guard = StaleGuard(library.clone());
    fs::create_dir_all(library.join("w0.g0")).expect("a live pool");
    let _held = Flock::lock(
        fs::File::open(&library).expect("the pool opens"),
        FlockArg::LockExclusiveNonblock,
    )
    .expect("the pool is locked");

    let removed = hierarchy
        .remove_stale()
        .expect("stale pools are looked for");
    let entry = removed
        .iter()
        .find(|s| s.path == stale)
        .unwrap_or_else(|| panic!("{} is not reported: {removed:?}", stale.display()));
    assert_eq!(entry.pid, dead);
    assert_eq!(entry.killed, 1, "{entry:?}");
    assert!(entry.error.is_none(), "{entry:?}");
    assert_eq!(child.signal(), Some(SIGKILL));
    assert!(!stale.exists(), "{} is left", stale.display());
    if let Some(cpu) = &stale_cpu {
        assert!(!cpu.exists(), "{} is left", cpu.display());
    }
    if let Some((_, dir, mut child)) = half {
        let memory_path = hierarchy.path().join("xypriss").join(&half_name);
        let entry = removed
            .iter()
            .find(|s| s.path == memory_path)
            .unwrap_or_else(|| panic!("{} is not reported: {removed:?}", dir.display()));
        assert_eq!(entry.killed, 1, "{entry:?}");
        assert!(entry.error.is_none(), "{entry:?}");
        assert_eq!(child.signal(), Some(SIGKILL));
        assert!(!dir.exists(), "{} is left", dir.display());
    }

    assert!(!foreign.exists(), "{} is left", foreign.display());
    assert!(library.exists(), "a live owner's pool was removed");
    assert!(legacy.exists(), "an older xypriss's live pool was removed");
    assert!(
        fs::exists(format!("/proc/{}", stranger.pid())).expect("/proc"),
        "the process the pid now names is not touched"
    );

    assert!(removed.iter().all(|s| s.path != live.get().path()));
    assert!(live.get().path().is_dir());
    if let Some(cpu) = cpu_twin_of(&hierarchy, live.get().path()) {
        assert!(cpu.is_dir(), "{} is removed", cpu.display());
    }
}

/// A process spawned as xypriss spawns workers, killed and reaped on drop.
struct Spawned(u32);

impl Spawned {
    /// Reaps it, and returns the signal that ended it.
    fn signal(&self) -> Option<Signal> {
        match waitpid(Pid::from_raw(self.0 as i32), None) {
            Ok(WaitStatus::Signaled(_, signal, _)) => Some(signal),
            _ => None,
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(self.0 as i32), None);
    }
}

/// How long each phase's allocations are measured.
const WINDOW: Duration = Duration::from_secs(1);
/// How fast the allocator allocates when nothing holds it back: a few
/// percent of a CPU in page faults, far more than 1% of one allows.
const RATE_MIB_S: &str = "200";
/// The CPU a throttled worker may use: 1 ms each 100 ms period.
const CPU_FRACTION: f64 = 0.01;

/// How much `pid`'s resident memory grows over [`WINDOW`].
async fn growth(pid: u32) -> u64 {
    let before = proc_status(pid, "VmRSS");
    tokio::time::sleep(WINDOW).await;
    proc_status(pid, "VmRSS").saturating_sub(before)
}

/// The cgroup `pid` is in, in the v1 hierarchy holding `controller`, or in v2.
fn cgroup_of(pid: u32, version: Version, controller: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let here = match version {
            Version::V2 => controllers.is_empty(),
            Version::V1 => controllers.split(',').any(|c| c == controller),
        };
        here.then(|| path.to_owned())
    })
}

// The spawned worker's output is forwarded by tasks on this runtime.
#[tokio::test]
async fn throttling_slows_an_allocating_worker_until_it_is_lifted() {
    if !root_or_skip("throttling_slows_an_allocating_worker_until_it_is_lifted") {
        return;
    }
    let hierarchy = Hierarchy::find().expect("a memory hierarchy");
    let pool = PoolGuard::create("test-throttle");
    let worker = pool.get().worker(0, 1).expect("a worker cgroup");
    let args = ["grow".into(), RATE_MIB_S.into()];
    let pid = spawn(Spec {
        starter: Path::new(XYPRISS),
        app: Path::new(DEMO),
        args: &args,
        id: 0,
        generation: 1,
        identity: &Identity::default(),
        env: Vec::new(),
        cgroup: Some(&worker),
        registration: None,
        listeners: None,
        control: None,
    })
    .expect("the allocator starts");
    let allocator = Spawned(pid);

    // It joined its cgroup in each hierarchy before exec.
    let relative = |dir: &Path, root: &Path| {
        format!(
            "/{}",
            dir.strip_prefix(root).expect("in its hierarchy").display()
        )
    };
    assert_eq!(
        cgroup_of(pid, hierarchy.version(), "memory"),
        Some(relative(worker.path(), hierarchy.path()))
    );
    if let (Some(cpu), Some(root)) = (worker.cpu_path(), hierarchy.cpu_path()) {
        assert_eq!(
            cgroup_of(pid, Version::V1, "cpu"),
            Some(relative(cpu, root))
        );
    }

    let throttled = worker.throttle(64 * MIB, CPU_FRACTION);
    if hierarchy.version() == Version::V1 && hierarchy.cpu_path().is_none() {
        assert!(
            matches!(throttled, Err(CgroupError::NoThrottle { .. })),
            "{throttled:?}"
        );
        return;
    }
    worker.unthrottle().expect("unthrottled");
    assert!(matches!(
        worker.throttle(64 * MIB, f64::NAN),
        Err(CgroupError::CpuFraction { .. })
    ));
    worker.unthrottle().expect("unthrottled");

    let read = |dir: &Path, file: &str| {
        fs::read_to_string(dir.join(file))
            .expect("a cgroup file")
            .trim()
            .to_owned()
    };
    let quota = |period: &str| {
        let period: f64 = period.parse().expect("a period in µs");
        ((period * CPU_FRACTION) as u64).max(1000)
    };
    // What throttling writes, where.
    let cpu_dir = worker.cpu_path().unwrap_or(worker.path());
    let (kind, cpu_file) = match hierarchy.version() {
        Version::V1 => (Throttle::CfsQuotaSoftLimit, "cpu.cfs_quota_us"),
        Version::V2 if cpu_dir.join("cpu.max").exists() => (Throttle::MemoryHighCpuMax, "cpu.max"),
        Version::V2 => (Throttle::MemoryHigh, "cpu.max"),
    };
    let mut expected = vec![match hierarchy.version() {
        Version::V1 => (
            worker.path(),
            "memory.soft_limit_in_bytes",
            (64 * MIB).to_string(),
        ),
        Version::V2 => (worker.path(), "memory.high", (64 * MIB).to_string()),
    }];
    match kind {
        Throttle::MemoryHigh => {}
        Throttle::MemoryHighCpuMax => {
            let max = read(cpu_dir, cpu_file);
            let period = max.split_whitespace().nth(1).expect("a period");
            expected.push((cpu_dir, cpu_file, format!("{} {period}", quota(period))));
        }
        Throttle::CfsQuotaSoftLimit => {
            let period = read(cpu_dir, "cpu.cfs_period_us");
            expected.push((cpu_dir, cpu_file, quota(&period).to_string()));
        }
    }

    // It allocates before anything is held back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_status(pid, "VmRSS") < 16 * MIB {
        assert!(
            Instant::now() < deadline,
            "the allocator allocates within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let free = growth(pid).await;

    let throttle = worker.throttle(64 * MIB, CPU_FRACTION).expect("throttled");
    assert_eq!(throttle, kind);
    for (dir, file, value) in &expected {
        assert_eq!(&read(dir, file), value, "{}/{file}", dir.display());
    }
    let slowed = growth(pid).await;

    worker.unthrottle().expect("unthrottled");
    // Lifted, each file reads as in the pool's cgroup, which is never limited.
    for (dir, file, _) in &expected {
        let pool = dir.parent().expect("a pool above");
        assert_eq!(
            read(dir, file),
            read(pool, file),
            "{}/{file}",
            dir.display()
        );
    }
    let lifted = growth(pid).await;

    eprintln!(
        "{}: {} MiB/s free, {} MiB/s throttled, {} MiB/s lifted",
        throttle.as_str(),
        free / MIB,
        slowed / MIB,
        lifted / MIB
    );
    assert!(
        slowed * 3 < free,
        "throttled {slowed} B against {free} B free"
    );
    // Lifted, it is no longer held to its CPU fraction. Compared with the
    // throttled rate, not the free one: how fast an unthrottled allocator
    // grows follows what else the machine runs at that moment, while the
    // throttled one is held to 1% of a core whatever runs beside it.
    assert!(
        lifted > slowed * 5,
        "lifted {lifted} B against {slowed} B throttled ({free} B free)"
    );

    let cpu_twin = worker.cpu_path().map(Path::to_owned);
    let path = worker.path().to_owned();
    assert_eq!(worker.remove().expect("the worker cgroup is removed"), 1);
    assert_eq!(allocator.signal(), Some(Signal::SIGKILL));
    for dir in [Some(path), cpu_twin].into_iter().flatten() {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}

#[test]
fn live_pools_survive_a_forward_clock_step() {
    if !root_or_skip("live_pools_survive_a_forward_clock_step") {
        return;
    }
    let hierarchy = Hierarchy::find().expect("a memory hierarchy");
    // This process's pool, and one of an older xypriss (no lock) whose
    // process runs. The wall clock jumps an hour forward, as NTP at boot or a
    // resumed VM make it: simulated without touching the machine's clock, by
    // dating both directories an hour back, which is what a check comparing
    // an owner's start (from /proc/stat's boot time, which follows the wall
    // clock) with its pool's mtime sees after such a step.
    let live = PoolGuard::create("test-stepped");
    let older = ChildGuard::sleep();
    let legacy = hierarchy
        .path()
        .join("xypriss")
        .join(format!("test-stepped-legacy.{}", older.pid()));
    let _legacy_guard = StaleGuard(legacy.clone());
    fs::create_dir_all(legacy.join("w0.g0")).expect("a live legacy pool");
    let worker = ChildGuard::sleep();
    let cgroup = live.get().worker(0, 1).expect("a worker cgroup");
    cgroup.add(worker.pid()).expect("the worker joins");
    let dirs = [
        Some(live.get().path().to_owned()),
        cpu_twin_of(&hierarchy, live.get().path()),
        Some(legacy.clone()),
    ];
    for dir in dirs.iter().flatten() {
        let stepped = Command::new("touch")
            .args(["-d", "1 hour ago"])
            .arg(dir)
            .status()
            .expect("touch runs");
        assert!(stepped.success());
    }

    let removed = hierarchy
        .remove_stale()
        .expect("stale pools are looked for");
    assert!(
        removed
            .iter()
            .all(|s| s.path != live.get().path() && s.path != legacy),
        "live pools taken for stale: {removed:?}"
    );
    assert!(live.get().path().is_dir());
    assert!(legacy.is_dir());
    assert_eq!(
        waitpid(
            Pid::from_raw(worker.pid() as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG)
        )
        .expect("the worker is ours"),
        WaitStatus::StillAlive,
        "a live pool's worker was killed"
    );
    drop(cgroup);
}

/// Where `path`, in the memory hierarchy, has its twin in a v1 cpu hierarchy.
fn cpu_twin_of(hierarchy: &Hierarchy, path: &Path) -> Option<PathBuf> {
    let relative = path
        .strip_prefix(hierarchy.path())
        .expect("in the hierarchy");
    hierarchy.cpu_path().map(|cpu| cpu.join(relative))
}
