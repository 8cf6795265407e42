//! The Node.js worker library (`clients/node/`) against the real xypriss:
//! runs its `node --test` suite with this build's binary, as root. The suite
//! itself says what it proves (readiness on the control channel, one socket
//! served by every worker, a rolling restart under load with no failed
//! request, gc_hint reaching global.gc, memory_alert, low_memory_mode and
//! memory_throttling in-process, memoryUsage()).

mod support;

use std::{path::Path, process::Command};

use support::{XYPRISS, root_or_skip};

#[test]
fn the_node_library_passes_its_suite_against_this_xypriss() {
    if !root_or_skip("the_node_library_passes_its_suite_against_this_xypriss") {
        return;
    }
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/node");
    let output = Command::new("node")
        .args(["--test", "--test-concurrency=1", "test/"])
        .current_dir(&client)
        .env("XYPRISS_BIN", XYPRISS)
        .output()
        .expect("node runs: `cargo xtask test` installs it (Debian's nodejs)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "node --test failed ({}): see its output above",
        output.status
    );
    // A suite that ran nothing proves nothing.
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(stdout.contains("# skipped 0"), "{stdout}");
}
