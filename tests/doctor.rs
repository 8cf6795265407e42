//! `xypriss doctor` on this machine, and pointed at broken paths: what it
//! says, its exit code, its JSON, and that it needs no tracefs and mounts
//! nothing.

mod support;

use std::{
    fs,
    path::PathBuf,
    process::Command,
    sync::{Mutex, MutexGuard},
};

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

/// Held by each test for its whole run, so that their doctors' BPF probes
/// do not overlap.
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

/// This process's mount points.
fn mount_points() -> Vec<String> {
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo is readable")
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4).map(str::to_owned))
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
fn this_machine_runs_everything_and_nothing_is_mounted() {
    let _serial = one_at_a_time();
    if !root_or_skip("doctor on this machine") {
        return;
    }
    let before = mount_points();
    let (code, report) = report(&[]);
    let mounted: Vec<_> = mount_points()
        .into_iter()
        .filter(|m| !before.contains(m))
        .collect();
    assert!(mounted.is_empty(), "doctor mounted {mounted:?}");

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
        "lockdown",
        "btf",
        "ring_buffer",
        "cgroup",
    ] {
        assert_eq!(check(&report, name)["status"], "ok", "{report:#}");
    }

    let (code, table, _) = doctor(&[]);
    assert_eq!(code, 0, "{table}");
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

/// Every tracepoint's check names the program chosen for it and what that
/// reads, so a kernel's report says which variant runs there.
#[test]
fn each_tracepoint_names_its_program_and_what_it_reads() {
    let _serial = one_at_a_time();
    if !root_or_skip("doctor's tracepoint checks") {
        return;
    }
    let (_, report) = report(&[]);
    let rss_stat = check(&report, "tracepoint:kmem/rss_stat");
    let detail = rss_stat["detail"].as_str().expect("detail");
    assert!(
        detail.contains("program `rss_stat`") || detail.contains("program `rss_stat_count`"),
        "{detail}"
    );
    let exit = check(&report, "tracepoint:sched/sched_process_exit");
    let detail = exit["detail"].as_str().expect("detail");
    assert!(
        detail.contains("group_dead from the arguments") || detail.contains("signal->live at +"),
        "{detail}"
    );
    let fork = check(&report, "tracepoint:sched/sched_process_fork");
    let detail = fork["detail"].as_str().expect("detail");
    assert!(
        detail.contains("child->pid at +") && detail.contains("child->tgid at +"),
        "{detail}"
    );
}

/// Without tracefs mounted anywhere, doctor is all ok, and leaves it so:
/// neither it nor `run` needs tracefs.
#[test]
fn no_tracefs_is_needed_and_none_is_mounted() {
    let _serial = one_at_a_time();
    if !root_or_skip("no tracefs") {
        return;
    }
    let script = "umount -l -a -t tracefs; umount -l -a -t debugfs
        grep -q ' - tracefs ' /proc/self/mountinfo && exit 90
        \"$0\" doctor --json; code=$?
        grep -q ' - tracefs ' /proc/self/mountinfo && exit 91
        exit $code";
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            XYPRISS,
        ])
        .output()
        .expect("unshare runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().expect("sh exits");
    assert_ne!(code, 90, "tracefs could not be unmounted: {stderr}");
    assert_ne!(code, 91, "doctor mounted tracefs: {stdout}");
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json is not JSON ({e}): {stdout}\nstderr: {stderr}"));
    for tracepoint in TRACEPOINTS {
        let c = check(&report, &format!("tracepoint:{tracepoint}"));
        assert_eq!(c["status"], "ok", "{c:#}");
    }
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
    for tracepoint in TRACEPOINTS {
        let c = check(&report, &format!("tracepoint:{tracepoint}"));
        assert_eq!(c["status"], "fail", "{c:#}");
        assert!(
            c["detail"].as_str().expect("detail").contains("no BTF"),
            "{c:#}"
        );
    }
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
