//! `oom/mark_victim`: a worker killed by the OOM killer is named as such.
//!
//! Worker 1 moves itself into a test memory cgroup limited to 64 MiB (v1's
//! `memory.limit_in_bytes`, or v2's `memory.max` where the hierarchy is v2,
//! as in the kernels `cargo xtask vmtest` boots) and grows; the kernel's OOM
//! killer kills it. The cgroup is removed afterwards.

mod support;

use std::{fs, path::PathBuf, time::Duration};

use support::{DEMO, Pool, root_or_skip, u64_of};

const TIMEOUT: Duration = Duration::from_secs(30);

struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(limit: u64) -> Self {
        let name = format!("xypriss-test-{}", std::process::id());
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let path = if v2.join("cgroup.controllers").exists() {
            // v2: the memory controller must be enabled for the root's children.
            fs::write(v2.join("cgroup.subtree_control"), "+memory")
                .expect("the memory controller enabled at /sys/fs/cgroup");
            let path = v2.join(name);
            fs::create_dir_all(&path).expect("a v2 cgroup at /sys/fs/cgroup");
            fs::write(path.join("memory.max"), limit.to_string()).expect("memory.max set");
            path
        } else {
            let path = PathBuf::from("/sys/fs/cgroup/memory").join(name);
            fs::create_dir_all(&path).expect("a v1 memory cgroup at /sys/fs/cgroup/memory");
            fs::write(path.join("memory.limit_in_bytes"), limit.to_string()).expect("limit set");
            path
        };
        Self(path)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Its processes are dead by now; the kernel removes the directory's files.
        for _ in 0..50 {
            if fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn an_oom_kill_is_attributed_to_its_worker() {
    if !root_or_skip("an_oom_kill_is_attributed_to_its_worker") {
        return;
    }
    let cgroup = TestCgroup::new(64 << 20);
    let script = format!(
        "if [ \"$XYPRISS_WORKER_ID\" = 1 ]; then echo $$ > {}/cgroup.procs; exec {DEMO} grow 200; else exec {DEMO} steps 1; fi",
        cgroup.0.display()
    );
    let mut pool = Pool::start(&["--workers", "2", "--require-ebpf", "/bin/sh", "-c", &script]);
    let victim = pool.wait_event("worker_spawned", TIMEOUT, |e| e["workerId"] == 1);
    let victim_pid = u64_of(&victim, "pid");

    let oom = pool.wait_event("oom_kill", TIMEOUT, |_| true);
    assert_eq!(oom["workerId"], 1, "{oom}");
    assert_eq!(oom["pid"], victim_pid, "{oom}");
    let exited = pool.wait_event("worker_exited", TIMEOUT, |e| e["workerId"] == 1);
    assert_eq!(exited["oomKilled"], true, "{exited}");
    assert_eq!(exited["signal"], "SIGKILL", "{exited}");

    // It is restarted, and the cause is named.
    let restarted = pool.wait_event("worker_restarted", TIMEOUT, |e| e["workerId"] == 1);
    assert_eq!(restarted["reason"], "oom_killed", "{restarted}");
    assert_eq!(restarted["generation"], 2);
    // The other worker is untouched.
    assert!(
        pool.events
            .iter()
            .all(|e| !(e["event"] == "worker_exited" && e["workerId"] == 0))
    );
    assert!(pool.stop().success());
    drop(cgroup);
}
