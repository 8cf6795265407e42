//! The degraded path: without eBPF, xypriss says why in one `observer` event
//! and polls /proc instead; with `--require-ebpf` it refuses to start.

mod support;

use std::{path::Path, process::Command, time::Duration};

use support::{DEMO, MIB, Pool, XYPRISS, proc_status, root_or_skip, u64_of};

const TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn no_ebpf_polls_proc_and_says_so() {
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--no-ebpf",
        "--poll-interval",
        "50ms",
        DEMO,
        "steps",
        "64",
    ]);
    let observer = pool.wait_event("observer", TIMEOUT, |_| true);
    assert_eq!(observer["source"], "procfs");
    assert_eq!(observer["reason"], "disabled by --no-ebpf");
    let spawned = pool.wait_event("worker_spawned", TIMEOUT, |_| true);
    let pid = u64_of(&spawned, "pid") as u32;
    pool.wait_log("at 64 MiB", TIMEOUT);
    pool.collect_for(Duration::from_millis(300));
    let sample = pool.latest_sample(0).expect("a sample").clone();
    assert_eq!(sample["source"], "procfs");
    let reported = u64_of(&sample, "rssBytes");
    let actual = proc_status(pid, "VmRSS");
    assert!(
        reported.abs_diff(actual) <= 2 * MIB,
        "{reported} vs VmRSS {actual}"
    );
    assert!(pool.stop().success());
}

/// `setpriv` (util-linux) runs xypriss as nobody.
fn as_nobody(args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        XYPRISS,
        "run",
    ])
    // Itself: as nobody, xypriss cannot run workers as anybody else.
    .args(support::named(&[&["--user", "nobody"], args].concat()));
    cmd
}

#[test]
fn without_root_it_degrades_with_a_reason_or_refuses_when_required() {
    if !root_or_skip("without_root_it_degrades_with_a_reason_or_refuses_when_required") {
        return;
    }
    assert!(
        Path::new("/usr/bin/setpriv").exists(),
        "setpriv (util-linux) is needed"
    );
    let mut pool = Pool::start_command(&mut as_nobody(&["--workers", "1", DEMO, "steps", "8"]));
    let observer = pool.wait_event("observer", TIMEOUT, |_| true);
    assert_eq!(observer["source"], "procfs");
    let reason = observer["reason"].as_str().expect("a reason");
    assert!(reason.contains("not running as root"), "{reason}");
    pool.wait_event("memory_sample", TIMEOUT, |e| e["source"] == "procfs");
    // Nor can it make cgroups: it says so and carries on.
    let cgroup = pool.wait_event("cgroup", TIMEOUT, |_| true);
    assert_eq!(cgroup["enabled"], false, "{cgroup}");
    assert!(
        cgroup["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{cgroup}"
    );
    assert!(pool.stop().success());
    let observers = pool
        .events
        .iter()
        .filter(|e| e["event"] == "observer")
        .count();
    assert_eq!(observers, 1, "the reason is said once");

    let refused = as_nobody(&["--workers", "1", "--require-ebpf", DEMO])
        .output()
        .expect("xypriss runs");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("eBPF is required") && stderr.contains("not running as root"),
        "{stderr}"
    );
    assert!(
        refused.stdout.is_empty()
            || !String::from_utf8_lossy(&refused.stdout).contains("worker_spawned")
    );
}

#[test]
fn in_a_pid_namespace_of_its_own_it_polls_proc_and_says_why() {
    if !root_or_skip("in_a_pid_namespace_of_its_own_it_polls_proc_and_says_why") {
        return;
    }
    // A pool of the host's, whose owner's pid means nothing in the namespace:
    // the namespaced xypriss must not take it for stale.
    let mut host = Pool::start(&["--workers", "1", DEMO, "steps", "8"]);
    host.wait_log("at 8 MiB", TIMEOUT);
    // BPF sees the host's pids; workers there are known by the namespace's.
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        XYPRISS,
        "run",
        "--user",
        "root",
        "--workers",
        "1",
    ])
    .args(["--name", &format!("pidns-{}", std::process::id())])
    .args(["--poll-interval", "50ms", DEMO, "steps", "64"]);
    let mut pool = Pool::start_command(&mut cmd);
    let observer = pool.wait_event("observer", TIMEOUT, |_| true);
    assert_eq!(observer["source"], "procfs", "{observer}");
    assert!(
        observer["reason"]
            .as_str()
            .unwrap()
            .contains("pid namespace"),
        "{observer}"
    );
    pool.wait_log("at 64 MiB", TIMEOUT);
    pool.collect_for(Duration::from_millis(300));
    let sample = pool.latest_sample(0).expect("a sample").clone();
    assert!(u64_of(&sample, "rssBytes") >= 64 * MIB, "{sample}");
    let refused = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            XYPRISS,
            "run",
            "--user",
            "root",
            "--require-ebpf",
            DEMO,
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("pid namespace"), "{stderr}");
    // Its start-up cleanup (done by its `cgroup` event) left the host's pool alone.
    pool.wait_event("cgroup", TIMEOUT, |_| true);
    host.collect_for(Duration::from_millis(500));
    assert!(
        host.events.iter().all(|e| e["event"] != "worker_exited"),
        "{:#?}",
        host.events
    );
    assert!(host.stop().success());
}
