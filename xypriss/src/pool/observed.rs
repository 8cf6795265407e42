//! What the observer says: memory samples, forks, exits and OOM kills,
//! turned into events and fed to the memory checks; the periodic tick.

use super::{COARSE_FACTOR, Instance, Pool};
use crate::{
    observe::{Observation, Observer, Trigger, faults::Refresh, procfs::monotonic_ns},
    output::event::{Event, LossStage, MemorySample},
};

impl Pool {
    pub(super) fn observed(&mut self, batch: &mut Vec<Observation>) {
        for observation in batch.drain(..) {
            self.observe(observation);
        }
    }

    pub(super) fn observe(&mut self, observation: Observation) {
        match observation {
            Observation::Memory {
                slot,
                at_ns,
                counters,
                trigger,
                level,
                ..
            } => {
                let Some(i) = self.instances.get_mut(&slot) else {
                    return;
                };
                i.counters = counters;
                i.level = level;
                self.report(slot, at_ns, trigger);
                self.check_thresholds(slot);
            }
            Observation::Fork { slot, pid, parent } => {
                let Some(i) = self.instances.get_mut(&slot) else {
                    return;
                };
                // Threads are cloned tasks too; only processes are children.
                if self.host.is_process(pid) && i.children.insert(pid) {
                    self.output.emit(&Event::ChildSpawned {
                        worker_id: i.id,
                        pid,
                        parent_pid: parent,
                    });
                }
            }
            Observation::Exit {
                slot,
                pid,
                at_ns,
                counters,
            } => {
                let Some(i) = self.instances.get_mut(&slot) else {
                    return;
                };
                if pid == i.pid {
                    return; // worker_exited comes from its exit status.
                }
                // A child too short-lived to be seen at its fork is reported now.
                if i.children.insert(pid) {
                    self.output.emit(&Event::ChildSpawned {
                        worker_id: i.id,
                        pid,
                        parent_pid: i.pid,
                    });
                }
                i.children.remove(&pid);
                self.output.emit(&Event::ChildExited {
                    worker_id: i.id,
                    pid,
                });
                if counters != i.counters {
                    i.counters = counters;
                    self.report(slot, at_ns, Trigger::Granularity);
                    self.check_thresholds(slot);
                }
            }
            Observation::FaultsCounted => self.sampled(),
            Observation::OomVictim {
                slot,
                pid,
                counters,
            } => {
                let Some(i) = self.instances.get_mut(&slot) else {
                    return;
                };
                if pid == i.pid {
                    i.oom_killed = true;
                }
                self.output.emit(&Event::OomKill {
                    worker_id: i.id,
                    pid,
                    rss_bytes: counters.rss(),
                    anon_bytes: counters.anon,
                });
            }
        }
    }

    /// Says instance `slot`'s memory at `at_ns` in a `memory_sample`. In
    /// low-memory mode sampling is coarser: a move of less than
    /// [`COARSE_FACTOR`] × the granularity since the last sample is only
    /// recorded in the series (threshold crossings are always said).
    pub(super) fn report(&mut self, slot: u32, at_ns: u64, trigger: Trigger) {
        let coarse_step = self.config.granularity.saturating_mul(COARSE_FACTOR);
        let coarse = self.low_memory.is_some() && trigger == Trigger::Granularity;
        let compact = self.config.optimizes(|o| o.compact_metrics);
        let Some(i) = self.instances.get_mut(&slot) else {
            return;
        };
        let rss = i.counters.rss();
        if coarse
            && i.series
                .last_emitted_rss()
                .is_some_and(|last| last.abs_diff(rss) < coarse_step)
        {
            i.series.push(at_ns, rss, self.observer.faults(i.slot));
            return;
        }
        let event = sample(i, &self.observer, at_ns, trigger, compact);
        self.output.emit(&event);
    }

    /// The periodic refresh: fault counts and rates of quiet workers, and losses.
    pub(super) fn tick(&mut self) {
        // The reader reads records written without a wake-up at one flush after
        // the last wake-up. The tick reads the ring too, so that a record
        // that arrived after that flush (it has no wake-up of its own) waits
        // at most a sample interval, never until the next wake-up: in a quiet
        // pool that could be never, and its worker's samples would stay stale.
        self.drain_ring();
        match self.observer.refresh_faults() {
            Refresh::Fresh | Refresh::Busy => self.sampled(),
            // It goes on at Observation::FaultsCounted.
            Refresh::Asked => {}
        }
    }

    /// The last tick, when the workers are gone: fault counts read here.
    pub(super) fn last_tick(&mut self) {
        self.observer.count_faults_now();
        self.sampled();
    }

    /// The tick, once the fault counts are in.
    fn sampled(&mut self) {
        let now = monotonic_ns();
        self.ticks += 1;
        // reducedLogging leaves the periodic samples out; low-memory mode
        // sends one in COARSE_FACTOR.
        let periodic = !self.config.optimizes(|o| o.reduced_logging)
            && (self.low_memory.is_none() || self.ticks.is_multiple_of(COARSE_FACTOR));
        let slots: Vec<u32> = self.instances.keys().copied().collect();
        if periodic {
            for &slot in &slots {
                let i = &self.instances[&slot];
                if i.series
                    .is_news(i.counters.rss(), self.observer.faults(i.slot))
                {
                    self.report(slot, now, Trigger::Interval);
                }
            }
        }
        // The leak detectors want a point at least every second, quiet or not.
        for slot in slots {
            self.check_leak(slot, now);
        }
        self.replacement_timers();
        self.measure_load();
        let lost = self.observer.lost();
        if lost > self.lost_reported {
            self.output.emit(&Event::EventsLost {
                stage: LossStage::Kernel,
                count: lost - self.lost_reported,
                total: lost,
            });
            self.lost_reported = lost;
            self.resync(now);
        }
    }

    /// Takes in every record already in the ring, without waiting.
    fn drain_ring(&mut self) {
        let mut batch = Vec::new();
        self.observer.drain_now(&mut batch);
        self.observed(&mut batch);
    }

    /// Kernel records were lost: the last ones received may be stale, and
    /// an idle worker sends no other. The kernel's totals are right: each
    /// worker whose totals differ from what was received is reported from them.
    pub(super) fn resync(&mut self, now: u64) {
        self.drain_ring();
        let slots: Vec<u32> = self.instances.keys().copied().collect();
        for slot in slots {
            let Some((counters, level)) = self.observer.totals(slot) else {
                continue;
            };
            let Some(i) = self.instances.get_mut(&slot) else {
                continue;
            };
            if counters == i.counters {
                continue;
            }
            i.counters = counters;
            i.level = level;
            self.report(slot, now, Trigger::Interval);
            self.check_thresholds(slot);
        }
    }
}

/// A `memory_sample` for `i` at `at_ns`, updating its series; `compact`
/// leaves the breakdown out (`compactMetrics`).
pub(super) fn sample(
    i: &mut Instance,
    observer: &Observer,
    at_ns: u64,
    trigger: Trigger,
    compact: bool,
) -> Event {
    let faults = observer.faults(i.slot);
    let rss = i.counters.rss();
    let rates = i.series.push(at_ns, rss, faults);
    i.series.emitted(rss, faults, rates);
    let detail = |value: u64| (!compact).then_some(value);
    Event::MemorySample(Box::new(MemorySample {
        worker_id: i.id,
        pid: i.pid,
        rss_bytes: rss,
        anon_bytes: detail(i.counters.anon),
        file_bytes: detail(i.counters.file),
        shmem_bytes: detail(i.counters.shmem),
        swap_bytes: detail(i.counters.swap),
        page_faults: detail(faults),
        allocation_rate: rates.allocation.round(),
        fault_rate: rates.faults.round(),
        threshold_level: i.level,
        trigger,
        source: observer.source(),
        monotonic_ns: at_ns,
    }))
}
