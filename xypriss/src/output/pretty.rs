//! Human lines for a terminal: the events of the NDJSON stream, one line
//! each, sized in MiB and coloured by severity.
//!
//! For people only. Machines read NDJSON, which a pipe gets unless
//! `--pretty` asks otherwise; the wording here may change between versions,
//! the stream's schema may not (see `docs/events.md`). Rendering goes through
//! the event's JSON form, so that every event has a line, the ones without
//! a shape of their own as `key=value` pairs.

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};
use serde_json::{Map, Value};

use super::event::Event;

const MIB: f64 = (1u64 << 20) as f64;

/// How bad an event is, for its colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Severity {
    Quiet,
    Normal,
    Good,
    Warning,
    Bad,
}

impl Severity {
    fn style(self) -> Style {
        match self {
            Self::Quiet => Style::new().dimmed(),
            Self::Normal => Style::new(),
            Self::Good => AnsiColor::Green.on_default(),
            Self::Warning => AnsiColor::Yellow.on_default().bold(),
            Self::Bad => AnsiColor::Red.on_default().bold(),
        }
    }
}

/// `event` at `timestamp_ms` (Unix time) as one line, newline included; with
/// ANSI colours when `colour`.
pub fn line(event: &Event, timestamp_ms: u64, colour: bool) -> String {
    let Ok(Value::Object(mut fields)) = serde_json::to_value(event) else {
        return String::from("?\n");
    };
    let name = match fields.remove("event") {
        Some(Value::String(name)) => name,
        _ => String::from("?"),
    };
    let (severity, text) = describe(&name, &mut fields);
    let style = if colour {
        severity.style()
    } else {
        Style::new()
    };
    format!(
        "{}  {style}{name:<18}{style:#} {text}\n",
        clock(timestamp_ms)
    )
}

/// The time of day, UTC, to the millisecond.
fn clock(timestamp_ms: u64) -> String {
    let ms = timestamp_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

fn mib(bytes: Option<&Value>) -> String {
    match bytes.and_then(Value::as_f64) {
        Some(b) => format!("{:.1} MiB", b / MIB),
        None => String::from("?"),
    }
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// The event's severity and its words; the fields it does not use are left
/// in `fields` for the generic tail.
fn describe(name: &str, fields: &mut Map<String, Value>) -> (Severity, String) {
    let get = |key: &str| fields.get(key).cloned();
    match name {
        "memory_sample" => {
            let rate = get("allocationRate")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0);
            (
                Severity::Quiet,
                format!(
                    "worker {} pid {}  rss {}  {:+.1} MiB/s  {:.0} faults/s  ({})",
                    text(get("workerId").as_ref()),
                    text(get("pid").as_ref()),
                    mib(get("rssBytes").as_ref()),
                    rate / MIB,
                    get("faultRate").and_then(|v| v.as_f64()).unwrap_or(0.0),
                    text(get("trigger").as_ref()),
                ),
            )
        }
        "memory_alert" => {
            let kind = text(get("type").as_ref());
            let severity = if kind == "warning" {
                Severity::Warning
            } else {
                Severity::Bad
            };
            (
                severity,
                format!(
                    "{kind} ({} scope): {} → {}",
                    text(get("scope").as_ref()),
                    text(get("message").as_ref()),
                    text(get("action").as_ref()),
                ),
            )
        }
        "memory_recovered" => (
            Severity::Good,
            format!(
                "{} ({} scope{}) back to {}, under {}",
                text(get("type").as_ref()),
                text(get("scope").as_ref()),
                get("workerId")
                    .map(|id| format!(", worker {id}"))
                    .unwrap_or_default(),
                mib(get("memoryUsage").as_ref()),
                mib(get("threshold").as_ref()),
            ),
        ),
        "worker_exited" => {
            let expected = get("expected") == Some(Value::Bool(true));
            let severity = if expected {
                Severity::Normal
            } else {
                Severity::Bad
            };
            (severity, pairs(fields))
        }
        "worker_errored" | "oom_kill" | "events_lost" => (Severity::Bad, pairs(fields)),
        "low_memory_mode" | "memory_throttling" | "scale" | "stale_cgroup_removed" => {
            (Severity::Warning, pairs(fields))
        }
        "worker_ready" => (Severity::Good, pairs(fields)),
        _ => (Severity::Normal, pairs(fields)),
    }
}

/// `key=value` for each field, sizes in MiB.
fn pairs(fields: &Map<String, Value>) -> String {
    let mut out = String::new();
    for (key, value) in fields {
        if !out.is_empty() {
            out.push(' ');
        }
        if key.ends_with("Bytes") || key == "memoryUsage" || key == "threshold" {
            let _ = write!(out, "{key}={}", mib(Some(value)).replace(' ', ""));
        } else {
            let _ = write!(out, "{key}={}", text(Some(value)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        observe::{Source, Trigger},
        output::event::{AlertType, MemorySample},
    };

    #[test]
    fn an_alert_reads_as_a_sentence_with_its_action() {
        let alert = Event::MemoryAlert {
            kind: AlertType::Critical,
            scope: "worker",
            worker_id: Some(0),
            pid: Some(42),
            message: "worker 0 uses 490 MiB".into(),
            action: "throttle",
            memory_usage: 490 << 20,
            memory_usage_percent: Some(95.7),
            threshold: 486 << 20,
            slope_bytes_per_sec: None,
            confidence: None,
            eta_to_limit_sec: None,
        };
        let plain = line(&alert, 3_723_004, false);
        assert_eq!(
            plain,
            "01:02:03.004  memory_alert       critical (worker scope): worker 0 uses 490 MiB → throttle\n"
        );
        let coloured = line(&alert, 3_723_004, true);
        assert!(coloured.contains("\u{1b}[1m\u{1b}[31m"), "{coloured:?}");
        assert!(coloured.ends_with("→ throttle\n"));
    }

    #[test]
    fn a_sample_says_memory_in_mib_and_its_rates() {
        let sample = Event::MemorySample(Box::new(MemorySample {
            worker_id: 1,
            pid: 7,
            rss_bytes: 100 << 20,
            anon_bytes: None,
            file_bytes: None,
            shmem_bytes: None,
            swap_bytes: None,
            page_faults: None,
            allocation_rate: (2 << 20) as f64,
            fault_rate: 512.0,
            threshold_level: 0,
            trigger: Trigger::Granularity,
            source: Source::Ebpf,
            monotonic_ns: 1,
        }));
        let text = line(&sample, 0, false);
        assert!(
            text.contains("worker 1 pid 7  rss 100.0 MiB  +2.0 MiB/s  512 faults/s  (granularity)"),
            "{text}"
        );
    }

    #[test]
    fn other_events_list_their_fields() {
        let exited = Event::WorkerExited {
            worker_id: 3,
            pid: 9,
            generation: 2,
            code: None,
            signal: Some("SIGSEGV".into()),
            oom_killed: false,
            uptime_ms: 1500,
            expected: false,
        };
        let text = line(&exited, 0, false);
        assert!(text.contains("worker_exited"), "{text}");
        assert!(text.contains("signal=SIGSEGV"), "{text}");
        assert!(text.contains("workerId=3"), "{text}");
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
    }
}
