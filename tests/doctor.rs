//! `xypriss doctor` on this machine, and pointed at broken paths: what it
//! says, its exit code, its JSON, and that it leaves tracefs mounted or not
//! as it found it.

mod support;

use std::{
    fs::{self, OpenOptions},
    path::PathBuf,
    process::Command,
    sync::{Mutex, MutexGuard},
};

use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;
use support::{XYPRISS, root_or_skip};

/// Every tracepoint the programs attach to.
const TRACEPOINTS: [&str; 5] = [
    "kmem/rss_stat",
    "exceptions/page_fault_user",
    "oom/mark_victim",
    "sched/sched_process_fork",
    "sched/sched_process_exit",
];

/// Held by each test for its whole run: doctor may mount tracefs, so a test
/// comparing the mounts before and after its doctor must not see another's.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `xypriss doctor ARGS…`: its exit code, stdout and stderr.
fn doctor(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(XYPRISS)
        .arg("doctor")
        .args(args)
        .output()
        .expect("xypriss runs");
    (
        out.status.code().expect("doctor exits, not killed"),
        String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `xypriss doctor --json ARGS…`: its exit code and its report.
fn report(args: &[&str]) -> (i32, Value) {
    let (code, stdout, stderr) = doctor(&[&["--json"], args].concat());
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json is not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (code, report)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks is an array")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

/// The tracefs mounts, read while holding the lock xypriss holds whenever
/// it has tracefs mounted for itself, so a concurrent `run` is never caught
/// halfway.
fn tracefs_mounts() -> Vec<String> {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/xypriss/tracefs.lock")
        .expect("the tracefs lock opens");
    let _held = Flock::lock(lock, FlockArg::LockExclusive).expect("the tracefs lock is taken");
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo is readable")
        .lines()
        .filter(|line| line.contains(" - tracefs "))
        .map(str::to_owned)
        .collect();
    mounts.sort();
    mounts
}

/// An empty directory of this test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("xypriss-doctor-{name}-{}", std::process::id()));
        fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn this_machine_runs_everything_and_tracefs_is_left_as_found() {
    let _serial = one_at_a_time();
    if !root_or_skip("doctor on this machine") {
        return;
    }
    let before = tracefs_mounts();
    let (code, report) = report(&[]);
    assert_eq!(tracefs_mounts(), before, "doctor changed tracefs mounts");

    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["degraded"], false, "{report:#}");
    assert_eq!(report["wouldUse"]["observer"], "ebpf", "{report:#}");
    assert_eq!(report["wouldUse"]["cgroups"], true, "{report:#}");
    for c in report["checks"].as_array().expect("checks") {
        assert_ne!(c["status"], "fail", "{c:#}");
        if c["status"] == "ok" {
            assert!(c.get("fix").is_none(), "an ok check with a fix: {c:#}");
        } else {
            assert!(
                c["fix"].is_string(),
                "a {} check without a fix: {c:#}",
                c["status"]
            );
        }
    }
    for tracepoint in TRACEPOINTS {
        let c = check(&report, &format!("tracepoint:{tracepoint}"));
        assert_eq!(c["status"], "ok", "{c:#}");
    }
    for name in [
        "kernel",
        "privileges",
        "btf",
        "ring_buffer",
        "tracefs",
        "cgroup",
    ] {
        assert_eq!(check(&report, name)["status"], "ok", "{report:#}");
    }
    let tracefs = check(&report, "tracefs")["detail"]
        .as_str()
        .expect("detail");
    if before.is_empty() {
        assert!(
            tracefs.contains("unmounted"),
            "tracefs was not mounted, yet: {tracefs}"
        );
    }

    let (code, table, _) = doctor(&[]);
    assert_eq!(code, 0, "{table}");
    assert_eq!(tracefs_mounts(), before, "doctor changed tracefs mounts");
    assert!(table.starts_with("CHECK "), "{table}");
    for tracepoint in TRACEPOINTS {
        assert!(
            table.contains(&format!("tracepoint:{tracepoint} ")),
            "{table}"
        );
    }
    assert!(
        table.ends_with("run would use eBPF and memory cgroups.\n"),
        "{table}"
    );
}

/// `xypriss doctor --json` in a mount namespace of its own, after `setup`
/// (shell) there; fails unless tracefs is mounted afterwards exactly when
/// `mounted`.
fn report_in_namespace(setup: &str, mounted: bool) -> (i32, Value) {
    let script = format!(
        "{setup} || exit 90
        \"$0\" doctor --json; code=$?
        grep -q ' - tracefs ' /proc/self/mountinfo; [ $? -eq {} ] || exit 91
        exit $code",
        if mounted { 0 } else { 1 }
    );
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            XYPRISS,
        ])
        .output()
        .expect("unshare runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().expect("sh exits");
    assert_ne!(code, 90, "setup `{setup}` failed: {stderr}");
    assert_ne!(
        code,
        91,
        "tracefs was {} before doctor, and not after: {stdout}",
        if mounted { "mounted" } else { "unmounted" }
    );
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json is not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (code, report)
}

#[test]
fn tracefs_mounted_or_not_is_left_so() {
    let _serial = one_at_a_time();
    if !root_or_skip("tracefs mounted or not") {
        return;
    }
    let (code, report) = report_in_namespace(
        "umount -l -a -t tracefs; ! grep -q ' - tracefs ' /proc/self/mountinfo",
        false,
    );
    assert_eq!(code, 0, "{report:#}");
    let tracefs = check(&report, "tracefs");
    assert_eq!(tracefs["status"], "ok", "{tracefs:#}");
    assert!(
        tracefs["detail"]
            .as_str()
            .expect("detail")
            .contains("then unmounted"),
        "{tracefs:#}"
    );

    let (code, report) = report_in_namespace(
        "umount -l -a -t tracefs; mount -t tracefs nodev /sys/kernel/tracing",
        true,
    );
    assert_eq!(code, 0, "{report:#}");
    let tracefs = check(&report, "tracefs");
    assert_eq!(
        tracefs["detail"], "mounted at /sys/kernel/tracing",
        "{tracefs:#}"
    );
    for tracepoint in TRACEPOINTS {
        let c = check(&report, &format!("tracepoint:{tracepoint}"));
        assert_eq!(c["status"], "ok", "{c:#}");
    }
}

#[test]
fn a_missing_tracefs_fails_with_a_fix_and_means_proc_polling() {
    let _serial = one_at_a_time();
    let empty = TempDir::new("tracefs");
    for path in ["/nonexistent", empty.path()] {
        let (code, report) = report(&["--tracefs", path]);
        assert_eq!(code, 1, "{report:#}");
        assert_eq!(report["degraded"], true);
        assert_eq!(report["wouldUse"]["observer"], "procfs", "{report:#}");
        let tracefs = check(&report, "tracefs");
        assert_eq!(tracefs["status"], "fail", "{tracefs:#}");
        assert_eq!(tracefs["degrades"], "observer", "{tracefs:#}");
        let detail = tracefs["detail"].as_str().expect("detail");
        assert!(detail.contains(path), "{detail}");
        let fix = tracefs["fix"].as_str().expect("a fix");
        assert!(
            fix.contains(&format!("mount -t tracefs nodev {path}")),
            "{fix}"
        );
    }

    let (code, table, _) = doctor(&["--tracefs", "/nonexistent"]);
    assert_eq!(code, 1, "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with("tracefs "))
        .unwrap_or_else(|| panic!("no tracefs row: {table}"));
    assert!(line.contains(" FAIL "), "{line}");
    assert!(
        table.contains("until then, run polls /proc instead of using eBPF"),
        "{table}"
    );
}

#[test]
fn a_cgroup_root_without_a_memory_hierarchy_means_no_cgroups() {
    let _serial = one_at_a_time();
    let dir = TempDir::new("cgroup");
    let (code, report) = report(&["--cgroup-root", dir.path()]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["wouldUse"]["cgroups"], false, "{report:#}");
    let cgroup = check(&report, "cgroup");
    assert_eq!(cgroup["status"], "fail", "{cgroup:#}");
    assert_eq!(cgroup["degrades"], "cgroups", "{cgroup:#}");
    let detail = cgroup["detail"].as_str().expect("detail");
    assert!(
        detail.contains(&format!("nothing is mounted at {}", dir.path())),
        "{detail}"
    );
}

#[test]
fn a_file_that_is_not_btf_means_proc_polling() {
    let _serial = one_at_a_time();
    let (code, report) = report(&["--btf", "/proc/self/status"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["wouldUse"]["observer"], "procfs", "{report:#}");
    let btf = check(&report, "btf");
    assert_eq!(btf["status"], "fail", "{btf:#}");
    assert!(
        btf["detail"].as_str().expect("detail").contains("not BTF"),
        "{btf:#}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let _serial = one_at_a_time();
    for args in [&["--bogus"][..], &["--btf"], &["--json", "extra"]] {
        let (code, stdout, stderr) = doctor(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?} printed a report: {stdout}");
    }
}
