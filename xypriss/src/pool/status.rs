//! Operators' requests, and the pool's status they read.

use std::time::Instant;

use super::{
    Instance, Pool, STATUS_MAX_AGE,
    memory::level_name,
    state::{Health, status_name},
};
use crate::{
    api::{ApiError, Call, Reply, Request},
    detect::threshold::Level,
    observe::Source,
    policy::{self, LowMemoryOrigin},
    recommend,
    report::{self as status, Status},
    supervise::lifecycle::State,
};

impl Pool {
    /// Answers an operator's request (HTTP or the control socket).
    pub(super) fn answer(&mut self, call: Call) {
        let result = match call.request {
            Request::Status => Ok(Reply::Status(Box::new(self.cached_status()))),
            Request::Scale { workers } => self.scale_to(workers),
            Request::LowMemory { enabled } => {
                Ok(self.set_low_memory(enabled, "asked by an operator", LowMemoryOrigin::Operator))
            }
            Request::Restart { worker: Some(id) } => {
                if self.live(id) {
                    self.replace(id);
                    Ok(Reply::Restarting { workers: vec![id] })
                } else {
                    Err(ApiError::UnknownWorker { id })
                }
            }
            Request::Restart { worker: None } | Request::Reload => {
                self.rolling_restart();
                let mut workers = self.rolling.clone();
                // Those whose new process is not ready yet.
                workers.extend(self.doubled(|state| state != State::Stopping));
                workers.sort_unstable();
                workers.dedup();
                Ok(Reply::Restarting { workers })
            }
        };
        // The asker may have gone; nothing to do then.
        let _ = call.reply.send(result);
    }

    /// The pool's status, made anew when anything but memory figures
    /// changed, and otherwise at most every [`STATUS_MAX_AGE`]: a client
    /// polling as fast as it can costs the loop no more than that.
    pub(super) fn cached_status(&mut self) -> Status {
        let changes = self.output.changes();
        if let Some((made, at, status)) = &self.status_cache
            && *at == changes
            && made.elapsed() < STATUS_MAX_AGE
        {
            return status.clone();
        }
        let status = self.status();
        self.status_cache = Some((Instant::now(), changes, status.clone()));
        status
    }

    /// Everything about the pool now.
    pub(super) fn status(&self) -> Status {
        let observed = self.memory_observed();
        let recommendations = recommend::recommendations(&observed);
        let management = &self.config.memory.memory_management;
        let total_rss: u64 = self.instances.values().map(|i| i.counters.rss()).sum();
        let workers: Vec<status::Worker> = self
            .instances
            .values()
            .map(|i| self.worker_status(i))
            .collect();
        let mut details = Vec::new();
        for i in self.instances.values() {
            let health = Health::of(i.leaking, i.alerts.highest());
            if health != Health::Healthy {
                details.push(format!(
                    "worker {} (pid {}) is {}",
                    i.id,
                    i.pid,
                    health.as_str()
                ));
            }
        }
        let errored: Vec<u32> = self
            .workers
            .iter()
            .filter(|(_, w)| w.errored())
            .map(|(&id, _)| id)
            .collect();
        if !errored.is_empty() {
            details.push(format!("workers {errored:?} errored and are not restarted"));
        }
        let ready = self
            .instances
            .values()
            .filter(|i| i.state == State::Ready)
            .count() as u32;
        if ready < self.size {
            details.push(format!("{ready} of {} workers are ready", self.size));
        }
        for (scope, alerts) in [
            ("cluster", &self.pool_alerts),
            ("system", &self.system_alerts),
        ] {
            if let Some(level) = alerts.highest().filter(|&l| l >= Level::Critical) {
                details.push(format!("{scope} memory is over its {}", level_name(level)));
            }
        }
        let healthy = details.is_empty();
        let pressure = self.host.memory_pressure();
        Status {
            pool: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_sec: self.started.elapsed().as_secs(),
            observer: match self.observer.source() {
                Source::Ebpf => "ebpf",
                Source::Procfs => "procfs",
            }
            .into(),
            low_memory_mode: self.low_memory.is_some(),
            low_memory_reason: self.low_memory.as_ref().map(|l| l.reason.clone()),
            workers_desired: self.size,
            min_workers: self.config.min_workers,
            max_workers: self.config.max_workers,
            memory: status::Memory {
                recommendations: recommendations.recommendations,
                suggested_worker_count: recommendations.suggested_worker_count,
                optimal_worker_count: recommend::optimal_worker_count(&observed),
                can_enable_low_memory_mode: recommendations.can_enable_low_memory_mode,
                current_usage: status::Usage {
                    total_rss_bytes: total_rss,
                    percent: policy::percent_of(total_rss, management.max_total_memory)
                        .unwrap_or(0.0),
                    max_total_memory_bytes: management.max_total_memory,
                    max_memory_per_worker_bytes: self.config.memory.max_memory_per_worker,
                    system_available_bytes: observed.available,
                    pressure_some_avg10: pressure,
                    memory_warning_threshold: management.memory_warning_threshold,
                    memory_critical_threshold: management.memory_critical_threshold,
                },
                healthy,
                worker_thresholds: self.worker_thresholds(),
            },
            health: status::Health { healthy, details },
            workers,
            counters: {
                let mut counters = self.output.counters();
                counters.events_lost_kernel = self.observer.lost();
                counters
            },
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        }
    }

    pub(super) fn worker_status(&self, i: &Instance) -> status::Worker {
        let rates = i.series.rates();
        status::Worker {
            id: i.id,
            pid: i.pid,
            generation: i.generation,
            status: status_name(i.state).into(),
            health: Health::of(i.leaking, i.alerts.highest()).as_str().into(),
            rss_bytes: i.counters.rss(),
            anon_bytes: i.counters.anon,
            file_bytes: i.counters.file,
            shmem_bytes: i.counters.shmem,
            swap_bytes: i.counters.swap,
            allocation_rate: rates.allocation.round(),
            fault_rate: rates.faults.round(),
            page_faults: self.observer.faults(i.slot),
            restarts: i.generation.saturating_sub(1),
            uptime_sec: i.started.elapsed().as_secs(),
            throttled: i.throttle.is_some(),
            leak: status::Leak {
                leaking: i.leaking,
                enabled: i.leak.is_some(),
                slope_bytes_per_sec: i.verdict.map(|v| v.slope_bytes_per_sec.round()),
                confidence: i.verdict.map(|v| v.confidence),
            },
            status_text: i.status_text.clone(),
            control_dropped: i.control.dropped,
            control_invalid: i.control.invalid(),
        }
    }
}
