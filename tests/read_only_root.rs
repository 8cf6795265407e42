//! A read-only root filesystem, as deploy/systemd/xypriss@.service makes it
//! (`ProtectSystem=strict`): only `/run/xypriss` (`RuntimeDirectory=`) and
//! the kernel's own filesystems stay writable, and the eBPF observer must
//! still start (it mounts nothing), binding the workers' notify
//! sockets there. Run in a private mount namespace, so the machine's own
//! mounts are never touched.

mod support;

use std::{process::Command, time::Duration};

use support::{DEMO, Pool, XYPRISS, root_or_skip};

/// Binds `/run/xypriss` onto itself (so it stays writable), makes `/` and,
/// where it is a mount of its own, `/run` read-only, then runs xypriss.
const SANDBOX: &str = r#"
set -e
mkdir -p /run/xypriss
mount --bind /run/xypriss /run/xypriss
mount -o remount,bind,ro /
if mountpoint -q /run; then mount -o remount,bind,ro /run; fi
if touch /run/xypriss-probe 2>/dev/null; then echo "/run is still writable" >&2; exit 97; fi
exec "$0" "$@"
"#;

#[test]
fn ebpf_starts_with_only_its_runtime_directory_writable() {
    if !root_or_skip("ebpf_starts_with_only_its_runtime_directory_writable") {
        return;
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", SANDBOX])
        .args([
            XYPRISS,
            "run",
            "--user",
            "root",
            "--workers",
            "1",
            "--require-ebpf",
            DEMO,
        ]);
    let mut pool = Pool::start_command(&mut cmd);
    let observer = pool.wait_event("observer", Duration::from_secs(20), |_| true);
    assert_eq!(observer["source"], "ebpf", "{observer}");
    pool.wait_event("worker_ready", Duration::from_secs(10), |_| true);
    let sample = pool.wait_event("memory_sample", Duration::from_secs(10), |e| {
        e["rssBytes"].as_u64().is_some_and(|rss| rss > 0)
    });
    assert_eq!(sample["source"], "ebpf", "{sample}");
    assert!(pool.stop().success(), "{:#?}", pool.log);
}
