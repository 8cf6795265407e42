//! What `xypriss status` and `xypriss recommend` print, cut from the pool's
//! [`Status`]: a header with the pool's totals, a table of its workers with
//! aligned columns (as `pm2 list`, with the memory columns), what is not
//! well; and the recommendations with the figures behind them. Pure, so that
//! what an operator reads is tested without a pool.

use std::{fmt::Write as _, io::Write as _};

use tabwriter::TabWriter;

use super::format::{byte_rate, duration, leak, mib, on_off, per_sec};
use crate::{
    recommend::p95,
    report::{Status, Worker},
};

/// A column of a worker's figures, in `status` and `top`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Id,
    Pid,
    Generation,
    Status,
    Health,
    Rss,
    Anon,
    Swap,
    FaultRate,
    AllocationRate,
    Restarts,
    Uptime,
    Leak,
}

impl Column {
    pub fn heading(self) -> &'static str {
        match self {
            Self::Id => "ID",
            Self::Pid => "PID",
            Self::Generation => "GEN",
            Self::Status => "STATUS",
            Self::Health => "HEALTH",
            Self::Rss => "RSS",
            Self::Anon => "ANON",
            Self::Swap => "SWAP",
            Self::FaultRate => "FAULTS/S",
            Self::AllocationRate => "ALLOC/S",
            Self::Restarts => "RESTARTS",
            Self::Uptime => "UPTIME",
            Self::Leak => "LEAK",
        }
    }

    /// Worker `w`'s figure in this column.
    pub fn cell(self, w: &Worker) -> String {
        match self {
            Self::Id => w.id.to_string(),
            Self::Pid => w.pid.to_string(),
            Self::Generation => w.generation.to_string(),
            Self::Status => w.status.clone(),
            Self::Health => w.health.clone(),
            Self::Rss => mib(w.rss_bytes),
            Self::Anon => mib(w.anon_bytes),
            Self::Swap => mib(w.swap_bytes),
            Self::FaultRate => per_sec(w.fault_rate),
            Self::AllocationRate => byte_rate(w.allocation_rate),
            Self::Restarts => w.restarts.to_string(),
            Self::Uptime => duration(w.uptime_sec),
            Self::Leak => leak(&w.leak),
        }
    }
}

/// The columns of `xypriss status`.
const STATUS: [Column; 13] = [
    Column::Id,
    Column::Pid,
    Column::Generation,
    Column::Status,
    Column::Health,
    Column::Rss,
    Column::Anon,
    Column::Swap,
    Column::FaultRate,
    Column::AllocationRate,
    Column::Restarts,
    Column::Uptime,
    Column::Leak,
];

/// The status table.
pub fn status(status: &Status) -> String {
    let mut text = String::new();
    let usage = &status.memory.current_usage;
    let _ = writeln!(
        text,
        "pool {}  pid {}  up {}  observer {}  workers {} (min {}, max {})  low-memory {}",
        status.pool,
        status.pid,
        duration(status.uptime_sec),
        status.observer,
        status.workers_desired,
        status.min_workers,
        status.max_workers,
        on_off(status.low_memory_mode),
    );
    let _ = writeln!(
        text,
        "memory {} of {} (maxTotalMemory)  {}",
        mib(usage.total_rss_bytes),
        mib(usage.max_total_memory_bytes),
        if status.health.healthy {
            "healthy"
        } else {
            "unhealthy"
        },
    );
    text.push('\n');
    text.push_str(&aligned(
        std::iter::once(STATUS.map(Column::heading).join("\t")).chain(
            status
                .workers
                .iter()
                .map(|w| STATUS.map(|c| c.cell(w)).join("\t")),
        ),
    ));
    if status.workers.is_empty() {
        text.push_str("(no worker runs)\n");
    }
    for detail in &status.health.details {
        let _ = writeln!(text, "! {detail}");
    }
    text
}

/// The recommendations, and the figures they come from.
pub fn recommend(status: &Status) -> String {
    let memory = &status.memory;
    let usage = &memory.current_usage;
    let rss: Vec<u64> = status.workers.iter().map(|w| w.rss_bytes).collect();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "pool {}: {} workers run, {} wanted (min {}, max {})",
        status.pool,
        status.workers.len(),
        status.workers_desired,
        status.min_workers,
        status.max_workers,
    );
    let _ = writeln!(
        text,
        "optimal worker count for memory: {}\n\nwhy:",
        memory.optimal_worker_count
    );
    let per_worker = match p95(&rss).filter(|&b| b > 0) {
        Some(p95) => {
            let _ = writeln!(
                text,
                "  a worker uses {} (p95 of the {} workers' resident memory)",
                mib(p95),
                rss.len()
            );
            p95
        }
        None => {
            let _ = writeln!(
                text,
                "  no worker was measured yet: each counts at maxMemoryPerWorker {}",
                mib(usage.max_memory_per_worker_bytes)
            );
            usage.max_memory_per_worker_bytes
        }
    };
    let _ = writeln!(
        text,
        "  maxTotalMemory {} holds {} of them",
        mib(usage.max_total_memory_bytes),
        usage.max_total_memory_bytes / per_worker.max(1)
    );
    if let Some(available) = usage.system_available_bytes {
        let _ = writeln!(
            text,
            "  this host or cgroup has {} available, plus the pool's {}, less memoryReservation",
            mib(available),
            mib(usage.total_rss_bytes)
        );
    }
    let _ = writeln!(
        text,
        "  within minWorkers {} and maxWorkers {}: {}",
        status.min_workers, status.max_workers, memory.optimal_worker_count
    );
    if let Some(pressure) = usage.pressure_some_avg10 {
        let _ = writeln!(
            text,
            "  memory pressure: tasks stalled {pressure:.2}% of the last 10 s (PSI)"
        );
    }
    text.push_str("\nrecommendations:\n");
    if memory.recommendations.is_empty() {
        text.push_str("  none: the pool fits its memory\n");
    }
    for advice in &memory.recommendations {
        let _ = writeln!(text, "  - {advice}");
    }
    let _ = writeln!(
        text,
        "\nlow-memory mode: {}{}",
        on_off(status.low_memory_mode),
        match (&status.low_memory_reason, memory.can_enable_low_memory_mode) {
            (Some(reason), _) => format!(" ({reason})"),
            (None, true) => " (`xypriss low-memory on` enables it)".into(),
            (None, false) => String::new(),
        }
    );
    text
}

/// Tab-separated `rows`, in aligned columns.
fn aligned(rows: impl Iterator<Item = String>) -> String {
    let mut writer = TabWriter::new(Vec::new()).padding(2);
    for row in rows {
        // Writing to a Vec cannot fail.
        let _ = writeln!(writer, "{row}");
    }
    writer
        .into_inner()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::{Counters, Health, Leak, Memory, Usage};

    const MIB: u64 = 1 << 20;

    pub(crate) fn worker(id: u32, rss_mib: u64) -> Worker {
        Worker {
            id,
            pid: 4000 + id,
            generation: 1,
            status: "ready".into(),
            health: "healthy".into(),
            rss_bytes: rss_mib * MIB,
            anon_bytes: rss_mib * MIB / 2,
            file_bytes: rss_mib * MIB / 2,
            shmem_bytes: 0,
            swap_bytes: 0,
            allocation_rate: 0.0,
            fault_rate: 12.0,
            page_faults: 100,
            restarts: 0,
            uptime_sec: 75,
            throttled: false,
            leak: Leak {
                leaking: false,
                enabled: true,
                slope_bytes_per_sec: None,
                confidence: None,
            },
            status_text: None,
            control_dropped: 0,
            control_invalid: 0,
        }
    }

    pub(crate) fn sample() -> Status {
        let mut leaking = worker(1, 300);
        leaking.health = "leaking".into();
        leaking.generation = 3;
        leaking.restarts = 2;
        leaking.allocation_rate = 1.5 * MIB as f64;
        leaking.leak = Leak {
            leaking: true,
            enabled: true,
            slope_bytes_per_sec: Some(MIB as f64),
            confidence: Some(0.99),
        };
        Status {
            pool: "web".into(),
            version: "0.1.0".into(),
            pid: 42,
            uptime_sec: 3600,
            observer: "ebpf".into(),
            low_memory_mode: false,
            low_memory_reason: None,
            workers_desired: 2,
            min_workers: 1,
            max_workers: 4,
            memory: Memory {
                recommendations: vec!["raise the limit".into()],
                suggested_worker_count: 3,
                optimal_worker_count: 3,
                can_enable_low_memory_mode: true,
                current_usage: Usage {
                    total_rss_bytes: 400 * MIB,
                    percent: 19.5,
                    max_total_memory_bytes: 2048 * MIB,
                    max_memory_per_worker_bytes: 512 * MIB,
                    system_available_bytes: Some(8192 * MIB),
                    pressure_some_avg10: Some(0.5),
                    memory_warning_threshold: 80.0,
                    memory_critical_threshold: 95.0,
                },
                healthy: false,
                worker_thresholds: [0; 3],
            },
            health: Health {
                healthy: false,
                details: vec!["worker 1 (pid 4001) is leaking".into()],
            },
            workers: vec![worker(0, 100), leaking],
            counters: Counters::default(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn the_table_aligns_one_row_per_worker() {
        let text = status(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("pool web  pid 42  up 1h00m  observer ebpf  workers 2"));
        assert_eq!(
            lines[1],
            "memory 400.0 MiB of 2048.0 MiB (maxTotalMemory)  unhealthy"
        );
        let header = lines[3];
        let rows = &lines[4..6];
        // Every column starts where its heading does.
        for heading in ["PID", "RSS", "FAULTS/S", "ALLOC/S", "LEAK"] {
            let at = header.find(heading).unwrap();
            for row in rows {
                assert_ne!(&row[at..at + 1], " ", "{heading} in {row:?}");
                assert_eq!(&row[at - 1..at], " ", "{heading} in {row:?}");
            }
        }
        assert!(rows[0].starts_with("0   4000  1    ready   healthy  100.0 MiB"));
        assert!(rows[1].contains("leaking"), "{}", rows[1]);
        assert!(rows[1].ends_with("yes +1.0 MiB/s (99%)"), "{}", rows[1]);
        assert_eq!(lines[6], "! worker 1 (pid 4001) is leaking");
    }

    #[test]
    fn an_empty_pool_says_so() {
        let mut empty = sample();
        empty.workers.clear();
        assert!(status(&empty).contains("(no worker runs)"));
    }

    #[test]
    fn recommendations_show_their_figures() {
        let text = recommend(&sample());
        assert!(
            text.contains("optimal worker count for memory: 3"),
            "{text}"
        );
        // p95 of 100 and 300 MiB is 300 MiB; 2048 MiB holds 6 of them.
        assert!(text.contains("a worker uses 300.0 MiB (p95"), "{text}");
        assert!(
            text.contains("maxTotalMemory 2048.0 MiB holds 6 of them"),
            "{text}"
        );
        assert!(text.contains("  - raise the limit"), "{text}");
        assert!(text.contains("`xypriss low-memory on`"), "{text}");
        let mut fresh = sample();
        fresh.workers.clear();
        fresh.memory.recommendations.clear();
        let text = recommend(&fresh);
        assert!(text.contains("each counts at maxMemoryPerWorker 512.0 MiB"));
        assert!(text.contains("none: the pool fits its memory"));
    }
}
