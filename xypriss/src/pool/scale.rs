//! The pool's size: operators' requests, memory's and load's.

use std::time::{Duration, Instant};

use super::{
    LOAD_WINDOW, Pool, StopReason, Worker,
    state::{Failure, cpu_pct, free_id, scale_down_pick},
};
use crate::{
    api::{ApiError, Reply},
    output::event::Event,
    policy, recommend,
    supervise::lifecycle::State,
};

impl Pool {
    /// Sets the wanted pool size to `to` and says so; `None` when it is the
    /// size already (a bound was hit: `bound` says which).
    pub(super) fn resize(&mut self, to: u32, bound: &str, reason: &str) -> Option<u32> {
        let from = self.size;
        if to == from {
            tracing::warn!("scaling refused: the pool is at {bound}");
            return None;
        }
        self.size = to;
        self.output.emit(&Event::Scale {
            from,
            to,
            reason: reason.into(),
        });
        Some(from)
    }

    /// Adds `n` workers, up to `--max-workers`.
    pub(super) fn scale_up(&mut self, n: u32, reason: &str) {
        let cap = self.pool_cap();
        let mut to = self.size.saturating_add(n).min(cap);
        let mut bound = if self.low_memory.as_ref().is_some_and(|l| l.cap.is_some()) {
            format!("its low-memory mode ceiling of {cap}")
        } else {
            format!("--max-workers {cap}")
        };
        let management = &self.config.memory.memory_management;
        if management.enabled && management.auto_scale_on_memory {
            // Memory caps the pool: what fits at the workers' observed size.
            let fits = recommend::optimal_worker_count(&self.memory_observed());
            if fits < to {
                to = fits.max(self.size);
                bound = format!("the {fits} workers that fit its memory budget");
            }
        }
        let Some(from) = self.resize(to, &bound, reason) else {
            return;
        };
        for _ in from..to {
            let id = free_id(&self.workers);
            self.workers.insert(id, Worker::default());
            if let Err(err) = self.start(id) {
                tracing::error!("worker {id}: {err:#}");
                self.failed(id, Duration::ZERO, Failure::SpawnFailed);
            }
        }
    }

    /// What the memory recommendations are computed from, now.
    pub(super) fn memory_observed(&self) -> recommend::Observed {
        let memory = &self.config.memory;
        recommend::Observed {
            worker_rss: self
                .instances
                .values()
                .filter(|i| i.state != State::Stopping)
                .map(|i| i.counters.rss())
                .collect(),
            available: self.host.available_memory(),
            max_total_memory: memory.memory_management.max_total_memory,
            memory_reservation: memory.memory_management.memory_reservation,
            max_memory_per_worker: memory.max_memory_per_worker,
            min_workers: self.config.min_workers,
            max_workers: self.config.max_workers,
            low_memory_mode: self.low_memory.is_some(),
        }
    }

    /// Removes `n` workers, down to `--min-workers`: the one named, or else
    /// the one using the most memory, stopped gracefully.
    pub(super) fn scale_down(&mut self, n: u32, named: Option<u32>, reason: &str) {
        let to = self.size.saturating_sub(n).max(self.config.min_workers);
        let bound = format!("--min-workers {}", self.config.min_workers);
        let Some(from) = self.resize(to, &bound, reason) else {
            return;
        };
        for _ in to..from {
            let running = self
                .instances
                .values()
                .filter(|i| i.state != State::Stopping)
                .map(|i| (i.id, i.counters.rss()));
            let Some(id) = scale_down_pick(named, &self.workers, running) else {
                return;
            };
            if let Some(w) = self.workers.get_mut(&id) {
                w.retire();
            }
            let slots: Vec<u32> = self
                .instances
                .iter()
                .filter(|(_, i)| i.id == id)
                .map(|(&s, _)| s)
                .collect();
            for slot in slots {
                self.stop_instance(slot, StopReason::ScaleDown);
            }
        }
    }

    /// The most workers the pool may have now: `maxWorkers`, or less in
    /// low-memory mode.
    pub(super) fn pool_cap(&self) -> u32 {
        self.low_memory
            .as_ref()
            .and_then(|l| l.cap)
            .unwrap_or(self.config.max_workers)
    }

    /// `POST /cluster/scale`, `xypriss scale N`.
    pub(super) fn scale_to(&mut self, workers: u32) -> Result<Reply, ApiError> {
        let (min, max) = (self.config.min_workers, self.pool_cap());
        if !(min..=max).contains(&workers) {
            return Err(ApiError::OutOfRange {
                requested: workers,
                min,
                max,
            });
        }
        let from = self.size;
        if workers > from {
            self.scale_up(workers - from, "api");
        } else if workers < from {
            self.scale_down(from - workers, None, "api");
        }
        Ok(Reply::Scaled {
            from,
            to: self.size,
        })
    }

    /// Reads each worker's CPU use, and scales the pool on load when
    /// `autoScaling` (or `lazyWorkerInit`) asks for it.
    pub(super) fn measure_load(&mut self) {
        let scaling = &self.config.memory.auto_scaling;
        let lazy = self.config.optimizes(|o| o.lazy_worker_init);
        if !(scaling.enabled || lazy) {
            // Nothing scales on load: no /proc reads every tick for nothing.
            return;
        }
        let now = Instant::now();
        let per_second = self.host.ticks_per_second();
        for i in self.instances.values_mut() {
            let ticks = std::iter::once(i.pid)
                .chain(i.children.iter().copied())
                .filter_map(|pid| self.host.cpu_ticks(pid))
                .sum::<u64>();
            if let Some(before) = i.cpu
                && let Some(pct) = cpu_pct(before, (ticks, now), per_second)
            {
                i.cpu_pct = Some(pct);
            }
            i.cpu = Some((ticks, now));
        }
        let busy: Vec<f64> = self
            .instances
            .values()
            .filter(|i| i.state == State::Ready)
            .filter_map(|i| i.cpu_pct)
            .collect();
        if busy.is_empty() {
            return;
        }
        self.load
            .push_back((now, busy.iter().sum::<f64>() / busy.len() as f64));
        while self
            .load
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > LOAD_WINDOW)
        {
            self.load.pop_front();
        }
        let spanned = self.load.front().is_some_and(|(at, _)| {
            now.duration_since(*at) >= LOAD_WINDOW - self.config.sample_interval
        });
        if !spanned || self.replacing() {
            return;
        }
        let scaling = &self.config.memory.auto_scaling;
        let observed = self.memory_observed();
        let limit = self.config.memory.max_memory_per_worker;
        let ready: Vec<u64> = self
            .instances
            .values()
            .filter(|i| i.state == State::Ready)
            .map(|i| i.counters.rss())
            .collect();
        let worker_memory_pct = (limit != 0 && !ready.is_empty())
            .then(|| ready.iter().sum::<u64>() as f64 * 100.0 / ready.len() as f64 / limit as f64);
        let load = policy::Load {
            cpu_pct: self.load.iter().map(|(_, l)| l).sum::<f64>() / self.load.len() as f64,
            worker_memory_pct,
            memory_pct: recommend::memory_share(&observed, 0),
            memory_pct_with_one_more: recommend::memory_share(&observed, 1),
            size: self.size,
            // lazyWorkerInit alone grows on demand up to --workers, and never shrinks.
            min_workers: if scaling.enabled {
                self.config.min_workers
            } else {
                self.size
            },
            cap: if scaling.enabled {
                self.pool_cap()
            } else {
                self.pool_cap().min(self.config.workers)
            },
            since_last: self.last_load_scale.map(|t| t.elapsed()),
        };
        let step = policy::scale_on_load(&load, scaling);
        let by_cpu = match step {
            policy::Step::Up(_) => load.cpu_pct >= scaling.scale_up_threshold.cpu,
            _ => load.cpu_pct <= scaling.scale_down_threshold.cpu,
        };
        let reason = match (by_cpu, load.worker_memory_pct) {
            (false, Some(m)) => format!(
                "workers at {m:.0}% of maxMemoryPerWorker, cpu {:.0}% over {}s",
                load.cpu_pct,
                LOAD_WINDOW.as_secs()
            ),
            _ => format!("cpu {:.0}% over {}s", load.cpu_pct, LOAD_WINDOW.as_secs()),
        };
        match step {
            policy::Step::Hold => return,
            policy::Step::Up(n) => self.scale_up(n, &reason),
            policy::Step::Down(n) => self.scale_down(n, None, &reason),
        }
        self.last_load_scale = Some(now);
        self.load.clear();
    }
}
