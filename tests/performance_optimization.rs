//! `performanceOptimization.*`: the flags that concern the supervisor change
//! what it does (`compactMetrics`, `reducedLogging`, `disableDebugFeatures`;
//! `lazyWorkerInit` is in `scale.rs`), and those that concern the app reach
//! the workers as environment variables.

mod support;

use std::{process::Command, time::Duration};

use support::{DEMO, Pool, XYPRISS, of, u64_of};

const TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn app_flags_reach_the_workers_environment() {
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--memory-pooling",
        "true",
        "--efficient-data-structures",
        "true",
        "/bin/sh",
        "-c",
        "echo \"env mp=$XYPRISS_MEMORY_POOLING wp=$XYPRISS_WORKER_POOLING eds=$XYPRISS_EFFICIENT_DATA_STRUCTURES lmm=$XYPRISS_LOW_MEMORY_MODE\"; exec sleep 60",
    ]);
    let line = pool.wait_log("env mp=", TIMEOUT);
    assert!(line.ends_with("env mp=1 wp=0 eds=1 lmm=0"), "{line}");
    assert!(pool.stop().success());
}

#[test]
fn the_section_switch_turns_every_flag_off() {
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--performance-optimization",
        "false",
        "--memory-pooling",
        "true",
        "/bin/sh",
        "-c",
        "echo \"env mp=$XYPRISS_MEMORY_POOLING\"; exec sleep 60",
    ]);
    let line = pool.wait_log("env mp=", TIMEOUT);
    assert!(line.ends_with("env mp=0"), "{line}");
    assert!(pool.stop().success());
}

#[test]
fn compact_metrics_leave_the_breakdown_out_of_samples() {
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--compact-metrics",
        "true",
        DEMO,
        "steps",
        "16",
    ]);
    // The first sample may come before the worker's exec, at 0 bytes.
    let sample = pool.wait_event("memory_sample", TIMEOUT, |e| u64_of(e, "rssBytes") > 0);
    assert!(sample["allocationRate"].is_number(), "{sample}");
    for field in [
        "anonBytes",
        "fileBytes",
        "shmemBytes",
        "swapBytes",
        "pageFaults",
    ] {
        assert!(sample.get(field).is_none(), "{field} in {sample}");
    }
    assert!(pool.stop().success());
}

#[test]
fn reduced_logging_sends_no_periodic_samples() {
    // A sawtooth every second: news at every tick, but only the moves by the
    // granularity are said.
    let mut pool = Pool::start(&[
        "--workers",
        "1",
        "--reduced-logging",
        "true",
        "--sample-interval",
        "100ms",
        DEMO,
        "leak",
        "--leak",
        "0",
    ]);
    pool.wait_event("memory_sample", TIMEOUT, |e| e["trigger"] != "initial");
    pool.collect_for(Duration::from_secs(3));
    assert!(pool.stop().success());
    let samples = of(&pool.events, "memory_sample");
    assert!(samples.len() > 3, "{samples:#?}");
    assert!(
        samples.iter().all(|s| s["trigger"] != "interval"),
        "{samples:#?}"
    );
}

#[test]
fn disabled_debug_features_refuse_bpf_logging() {
    let out = Command::new(XYPRISS)
        .args(["run", "--disable-debug-features", "true", "--bpf-log", DEMO])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--bpf-log") && stderr.contains("disableDebugFeatures"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
