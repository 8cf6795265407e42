//! `/proc/<pid>/oom_score_adj`: a service manager may shield xypriss from the
//! OOM killer (deploy/systemd/xypriss@.service sets `OOMScoreAdjust=-900`);
//! its workers must not inherit that shield, or the kernel could not pick a
//! runaway worker over the supervisor.

mod support;

use std::{fs, process::Command, time::Duration};

use support::{DEMO, Pool, XYPRISS, root_or_skip, u64_of};

/// What the unit's `OOMScoreAdjust=` gives xypriss.
const SHIELD: i32 = -900;

fn oom_score_adj(pid: u64) -> i32 {
    fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .expect("process alive")
        .trim()
        .parse()
        .expect("an integer")
}

#[test]
fn workers_do_not_inherit_a_shielded_oom_score_adj() {
    if !root_or_skip("workers_do_not_inherit_a_shielded_oom_score_adj") {
        return;
    }
    // Lowering it takes CAP_SYS_RESOURCE, which some containers withhold
    // even from root; systemd, running on the host, has it.
    let lowered = Command::new("sh")
        .args(["-c", &format!("echo {SHIELD} > /proc/self/oom_score_adj")])
        .status()
        .expect("sh runs");
    if !lowered.success() {
        eprintln!(
            "skipping workers_do_not_inherit_a_shielded_oom_score_adj: \
             this machine does not let root lower oom_score_adj (no CAP_SYS_RESOURCE)"
        );
        return;
    }
    // As systemd does it: the shield is set before xypriss starts.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!("echo {SHIELD} > /proc/self/oom_score_adj && exec \"$0\" \"$@\""),
        XYPRISS,
        "run",
        "--workers",
        "2",
        "--no-ebpf",
        DEMO,
    ]);
    let mut pool = Pool::start_command(&mut cmd);
    for id in 0..2u64 {
        let spawned = pool.wait_event("worker_spawned", Duration::from_secs(10), |e| {
            e["workerId"] == id
        });
        assert_eq!(
            oom_score_adj(u64_of(&spawned, "pid")),
            0,
            "worker {id} kept xypriss's shield"
        );
    }
    assert_eq!(
        oom_score_adj(pool.pid().into()),
        SHIELD,
        "xypriss lost its own shield"
    );
    assert!(pool.stop().success());
}
