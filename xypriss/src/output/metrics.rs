//! `/metrics`: the pool's status in the OpenMetrics text format, for
//! Prometheus.
//!
//! The metric names are a contract: dashboards and alerts are written
//! against them. They follow Prometheus's conventions (a `xypriss_` prefix,
//! base units in the name, `_total` on counters, `_info` on info metrics).
//! prometheus-client writes the exposition, and so decides its format: the
//! OpenMetrics 1.0 text format, with `# UNIT` lines and `# EOF`, which
//! Prometheus negotiates by default.
//!
//! A registry is built afresh from a [`Status`] at each scrape: the control
//! loop owns the figures and hands over a snapshot, so nothing here keeps
//! state, and a worker that is gone leaves no stale series behind.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Registry, Unit},
};

use super::event::AlertType;
use crate::report::{Status, Worker};

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One series per worker id: `worker="<id>"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: u32,
}

/// Where a `memory_alert` can be raised; each (type, scope) series is there
/// from the start, at 0, so that `rate()` sees the first alert.
const ALERT_SCOPES: [&str; 3] = ["worker", "cluster", "system"];

/// The alerts every scope raises; a leak is a worker's only.
const THRESHOLD_ALERTS: [AlertType; 3] = [
    AlertType::Warning,
    AlertType::Critical,
    AlertType::LimitExceeded,
];

type PerWorker<M> = Family<WorkerLabel, M>;
type Labelled<M> = Family<Vec<(&'static str, String)>, M>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The exposition of `status`.
pub fn render(status: &Status) -> String {
    let mut registry = Registry::with_prefix("xypriss");
    register_workers(&mut registry, status);
    register_pool(&mut registry, status);
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing into a String cannot fail");
    text
}

/// A gauge's value from a count (bytes, seconds, processes): none comes near
/// `i64::MAX`, where it would saturate.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn flag(value: bool) -> i64 {
    i64::from(value)
}

/// The per-worker series, from each worker's newest process: during a
/// replacement, the one that stays.
fn register_workers(registry: &mut Registry, status: &Status) {
    let workers: Vec<&Worker> = status.newest_workers().collect();
    let label = |w: &Worker| WorkerLabel { worker: w.id };
    let gauge = |value: fn(&Worker) -> i64| {
        let family = PerWorker::<Gauge>::default();
        for w in &workers {
            family.get_or_create(&label(w)).set(value(w));
        }
        family
    };
    let float_gauge = |value: fn(&Worker) -> f64| {
        let family = PerWorker::<FloatGauge>::default();
        for w in &workers {
            family.get_or_create(&label(w)).set(value(w));
        }
        family
    };
    let counter = |value: fn(&Worker) -> u64| {
        let family = PerWorker::<Counter>::default();
        for w in &workers {
            family.get_or_create(&label(w)).inc_by(value(w));
        }
        family
    };

    registry.register_with_unit(
        "worker_rss",
        "Resident memory of the worker and its descendants",
        Unit::Bytes,
        gauge(|w| int(w.rss_bytes)),
    );
    registry.register_with_unit(
        "worker_anon",
        "Anonymous resident memory of the worker and its descendants",
        Unit::Bytes,
        gauge(|w| int(w.anon_bytes)),
    );
    registry.register_with_unit(
        "worker_swap",
        "Swapped-out memory of the worker and its descendants",
        Unit::Bytes,
        gauge(|w| int(w.swap_bytes)),
    );
    registry.register_with_unit(
        "worker_allocation_rate",
        "Growth of the worker's resident memory over the last second (negative when shrinking)",
        Unit::Other("bytes_per_second".into()),
        float_gauge(|w| w.allocation_rate),
    );
    registry.register(
        "worker_fault_rate",
        "User page faults per second over the last second",
        float_gauge(|w| w.fault_rate),
    );
    registry.register(
        "worker_leaking",
        "1 when the leak detector says the worker leaks",
        gauge(|w| flag(w.leak.leaking)),
    );
    registry.register(
        "worker_throttled",
        "1 while the worker's memory is throttled",
        gauge(|w| flag(w.throttled)),
    );
    registry.register(
        "worker_ready",
        "1 when the worker's process is ready",
        gauge(|w| flag(w.status == "ready")),
    );
    registry.register_with_unit(
        "worker_uptime",
        "Time since the worker's process was spawned",
        Unit::Seconds,
        gauge(|w| int(w.uptime_sec)),
    );
    registry.register(
        "worker_page_faults",
        "User page faults of the worker's process",
        counter(|w| w.page_faults),
    );
    registry.register(
        "worker_restarts",
        "Processes the worker had before this one: crash restarts and replacements",
        counter(|w| u64::from(w.restarts)),
    );
}

fn register_pool(registry: &mut Registry, status: &Status) {
    let live = status
        .workers
        .iter()
        .filter(|w| w.status != "stopping")
        .count();
    let usage = &status.memory.current_usage;
    let gauge = |value: i64| {
        let gauge = Gauge::<i64>::default();
        gauge.set(value);
        gauge
    };
    registry.register(
        "pool_workers",
        "Worker processes not stopping (two for a worker being replaced)",
        gauge(int(live as u64)),
    );
    registry.register(
        "pool_workers_desired",
        "The wanted pool size",
        gauge(i64::from(status.workers_desired)),
    );
    registry.register_with_unit(
        "pool_rss",
        "Resident memory of every worker process, summed",
        Unit::Bytes,
        gauge(int(usage.total_rss_bytes)),
    );
    registry.register_with_unit(
        "pool_max_total_memory",
        "The pool's memory limit (maxTotalMemory)",
        Unit::Bytes,
        gauge(int(usage.max_total_memory_bytes)),
    );
    registry.register(
        "low_memory_mode",
        "1 while low-memory mode is on",
        gauge(flag(status.low_memory_mode)),
    );

    let counters = &status.counters;
    let labelled = |series: Vec<(Vec<(&'static str, String)>, u64)>| {
        let family = Labelled::<Counter>::default();
        for (labels, value) in series {
            family.get_or_create(&labels).inc_by(value);
        }
        family
    };
    let possible = ALERT_SCOPES
        .iter()
        .flat_map(|&scope| THRESHOLD_ALERTS.map(|kind| (kind.as_str(), scope)))
        .chain([(AlertType::LeakDetected.as_str(), "worker")])
        .map(|(kind, scope)| (kind.to_owned(), scope.to_owned(), 0));
    let seen = counters.alerts.iter().flat_map(|(kind, scopes)| {
        scopes
            .iter()
            .map(move |(scope, &n)| (kind.clone(), scope.clone(), n))
    });
    registry.register(
        "memory_alerts",
        "memory_alert events by type and scope",
        labelled(
            possible
                .chain(seen)
                .map(|(kind, scope, n)| (vec![("type", kind), ("scope", scope)], n))
                .collect(),
        ),
    );
    registry.register(
        "events_lost",
        "Events lost: by the kernel's ring buffer, by a stdout that did not keep up, or by followers of the stream that did not",
        labelled(vec![
            (
                vec![("stage", "kernel".into())],
                counters.events_lost_kernel,
            ),
            (
                vec![("stage", "output".into())],
                counters.events_lost_output,
            ),
            (
                vec![("stage", "follower".into())],
                counters.events_lost_follower,
            ),
        ]),
    );
    registry.register(
        "scale_events",
        "Changes of the pool's size, by direction",
        labelled(vec![
            (vec![("direction", "up".into())], counters.scale_ups),
            (vec![("direction", "down".into())], counters.scale_downs),
        ]),
    );
    registry.register(
        "observer",
        "Where memory is observed from",
        Info::new(vec![("source", status.observer.clone())]),
    );
    registry.register(
        "build",
        "xypriss's version",
        Info::new(vec![("version", status.version.clone())]),
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};

    use super::*;
    use crate::report::sample;

    type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

    fn parsed() -> Exposition {
        let text = render(&sample());
        openmetrics_parser::openmetrics::parse_openmetrics(&text)
            .unwrap_or_else(|e| panic!("not OpenMetrics ({e:?}):\n{text}"))
    }

    /// Every sample of family `name` as (labels sorted by name, value).
    fn samples(exposition: &Exposition, name: &str) -> BTreeMap<Vec<(String, String)>, f64> {
        let family = exposition
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name}"));
        family
            .iter_samples()
            .map(|s| {
                let mut labels: Vec<_> = s
                    .get_labelset()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                labels.sort();
                let value = match &s.value {
                    OpenMetricsValue::Gauge(v) => v.as_f64(),
                    OpenMetricsValue::Counter(c) => c.value.as_f64(),
                    OpenMetricsValue::Info => 1.0,
                    other => panic!("{name}: unexpected {other:?}"),
                };
                (labels, value)
            })
            .collect()
    }

    fn worker(id: &str) -> Vec<(String, String)> {
        vec![("worker".into(), id.into())]
    }

    #[test]
    fn every_fixed_name_is_there_with_its_type() {
        let exposition = parsed();
        for (name, kind) in [
            ("xypriss_worker_rss_bytes", OpenMetricsType::Gauge),
            ("xypriss_worker_anon_bytes", OpenMetricsType::Gauge),
            ("xypriss_worker_swap_bytes", OpenMetricsType::Gauge),
            (
                "xypriss_worker_allocation_rate_bytes_per_second",
                OpenMetricsType::Gauge,
            ),
            ("xypriss_worker_fault_rate", OpenMetricsType::Gauge),
            ("xypriss_worker_leaking", OpenMetricsType::Gauge),
            ("xypriss_worker_throttled", OpenMetricsType::Gauge),
            ("xypriss_worker_ready", OpenMetricsType::Gauge),
            ("xypriss_worker_uptime_seconds", OpenMetricsType::Gauge),
            ("xypriss_worker_page_faults", OpenMetricsType::Counter),
            ("xypriss_worker_restarts", OpenMetricsType::Counter),
            ("xypriss_pool_workers", OpenMetricsType::Gauge),
            ("xypriss_pool_workers_desired", OpenMetricsType::Gauge),
            ("xypriss_pool_rss_bytes", OpenMetricsType::Gauge),
            (
                "xypriss_pool_max_total_memory_bytes",
                OpenMetricsType::Gauge,
            ),
            ("xypriss_low_memory_mode", OpenMetricsType::Gauge),
            ("xypriss_memory_alerts", OpenMetricsType::Counter),
            ("xypriss_events_lost", OpenMetricsType::Counter),
            ("xypriss_scale_events", OpenMetricsType::Counter),
            ("xypriss_observer", OpenMetricsType::Info),
            ("xypriss_build", OpenMetricsType::Info),
        ] {
            let family = exposition
                .families
                .get(name)
                .unwrap_or_else(|| panic!("no family {name}"));
            assert_eq!(family.family_type, kind, "{name}");
        }
        assert_eq!(
            exposition.families.len(),
            21,
            "no family beyond the fixed ones"
        );
    }

    #[test]
    fn a_replaced_worker_reports_its_newest_process_only() {
        let exposition = parsed();
        let rss = samples(&exposition, "xypriss_worker_rss_bytes");
        assert_eq!(
            rss,
            BTreeMap::from([
                (worker("0"), 200.0 * 1048576.0),
                (worker("1"), 300.0 * 1048576.0)
            ])
        );
        let restarts = samples(&exposition, "xypriss_worker_restarts");
        assert_eq!(restarts[&worker("0")], 1.0);
        assert_eq!(
            samples(&exposition, "xypriss_worker_ready")[&worker("0")],
            0.0,
            "generation 2 is still starting"
        );
        assert_eq!(
            samples(&exposition, "xypriss_pool_workers")[&vec![]],
            2.0,
            "the stopping process is not counted"
        );
    }

    #[test]
    fn flags_and_rates_keep_their_values() {
        let exposition = parsed();
        assert_eq!(
            samples(&exposition, "xypriss_worker_leaking")[&worker("1")],
            1.0
        );
        assert_eq!(
            samples(&exposition, "xypriss_worker_throttled")[&worker("1")],
            1.0
        );
        assert_eq!(
            samples(&exposition, "xypriss_worker_leaking")[&worker("0")],
            0.0
        );
        assert_eq!(
            samples(
                &exposition,
                "xypriss_worker_allocation_rate_bytes_per_second"
            )[&worker("1")],
            -2048.5
        );
        assert_eq!(
            samples(&exposition, "xypriss_low_memory_mode")[&vec![]],
            1.0
        );
    }

    #[test]
    fn counters_carry_their_labels() {
        let exposition = parsed();
        let label = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            let mut labels: Vec<_> = pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect();
            labels.sort();
            labels
        };
        let alerts = samples(&exposition, "xypriss_memory_alerts");
        assert_eq!(
            alerts[&label(&[("type", "warning"), ("scope", "worker")])],
            3.0
        );
        assert_eq!(
            alerts[&label(&[("type", "warning"), ("scope", "cluster")])],
            1.0
        );
        assert_eq!(
            alerts[&label(&[("type", "critical"), ("scope", "system")])],
            0.0,
            "an alert never raised is there at 0"
        );
        assert_eq!(
            alerts[&label(&[("type", "leak_detected"), ("scope", "worker")])],
            0.0
        );
        assert_eq!(alerts.len(), 10, "3 thresholds × 3 scopes, and leaks");
        assert_eq!(
            samples(&exposition, "xypriss_events_lost")[&label(&[("stage", "kernel")])],
            7.0
        );
        assert_eq!(
            samples(&exposition, "xypriss_scale_events")[&label(&[("direction", "down")])],
            1.0
        );
        assert_eq!(
            samples(&exposition, "xypriss_build").keys().next().unwrap(),
            &label(&[("version", "0.1.0")])
        );
    }

    #[test]
    fn counters_are_written_with_their_total_suffix() {
        let text = render(&sample());
        assert!(text.contains("xypriss_worker_page_faults_total{worker=\"0\"} 102000\n"));
        assert!(text.contains("xypriss_build_info{version=\"0.1.0\"} 1\n"));
        assert!(text.ends_with("# EOF\n"));
    }
}
