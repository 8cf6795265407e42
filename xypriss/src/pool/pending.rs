//! The worker processes being created off the loop ([`super::launch`]):
//! the kernel slot and worker id each one holds until its pid (or its
//! error) is back on the loop, and what the pool's other decisions make of
//! them. A start under way counts as a process to come, in the `starting`
//! state: without that, a scale-up would give its slot away twice, a crash
//! would restart a worker whose successor is on its way, and a rolling
//! restart would not wait for it. I/O-free, so unit-tested below.

use std::collections::{BTreeSet, HashMap};

use crate::supervise::lifecycle::State;

/// What to do when a start made off the loop fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OnFailure {
    /// A failure of the worker: restart it after its backoff, or give up.
    Restart,
    /// A rolling restart: go on with the next worker.
    NextReplacement,
    /// A replacement: the process it was to replace serves on.
    KeepOld,
}

/// What a process being created holds meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Reservation {
    pub(super) slot: u32,
    pub(super) id: u32,
    pub(super) on_failure: OnFailure,
}

/// The starts under way, by the number of each.
#[derive(Debug, Default)]
pub(super) struct Launches {
    held: HashMap<u64, Reservation>,
}

impl Launches {
    /// Start `number` creates a process for `reservation`.
    pub(super) fn reserve(&mut self, number: u64, reservation: Reservation) {
        self.held.insert(number, reservation);
    }

    /// Start `number` is over: what it held, if it held anything.
    pub(super) fn release(&mut self, number: u64) -> Option<Reservation> {
        self.held.remove(&number)
    }

    /// Whether any process is being created.
    pub(super) fn any(&self) -> bool {
        !self.held.is_empty()
    }

    /// The processes being created for worker `id`.
    pub(super) fn of(&self, id: u32) -> usize {
        self.held.values().filter(|r| r.id == id).count()
    }

    /// The lowest kernel slot that neither a live process (`taken`) nor a
    /// process being created holds.
    pub(super) fn free_slot(&self, taken: impl Fn(u32) -> bool) -> u32 {
        (0..)
            .find(|&slot| !taken(slot) && !self.held.values().any(|r| r.slot == slot))
            .unwrap_or(0)
    }

    /// The worker ids with more than one process in the states `counted`,
    /// among the live `processes` (worker id, state) and those being created.
    pub(super) fn doubled(
        &self,
        processes: impl Iterator<Item = (u32, State)>,
        counted: impl Fn(State) -> bool,
    ) -> Vec<u32> {
        let mut seen = BTreeSet::new();
        let launching = self
            .held
            .values()
            .map(|r| (r.id, State::Starting))
            .collect::<Vec<_>>();
        processes
            .chain(launching)
            .filter(|&(_, state)| counted(state))
            .map(|(id, _)| id)
            .filter(|&id| !seen.insert(id))
            .collect()
    }

    /// Whether worker `id` has a process that will serve, besides the one
    /// that just ended or failed to start: one among `processes` (worker id,
    /// state) not stopping, or one being created. If not, that end is the
    /// worker's failure.
    pub(super) fn serves_on(&self, id: u32, processes: impl Iterator<Item = (u32, State)>) -> bool {
        self.of(id) > 0
            || processes
                .into_iter()
                .any(|(other, state)| other == id && state != State::Stopping)
    }
}

/// What a start that failed leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct AfterFailedStart {
    /// Counted against the worker: restarted after its backoff, or errored.
    pub(super) failure: bool,
    /// The rolling restart goes on with the next worker.
    pub(super) next_replacement: bool,
    /// The processes it was to replace serve on, no longer being replaced.
    pub(super) old_serves_on: bool,
}

/// What a start made `on_failure` leads to when it fails, whether the
/// worker still `serves_on` ([`Launches::serves_on`]) or not: whatever the
/// start was for, a worker left with no process fails.
pub(super) fn after_failed_start(on_failure: OnFailure, serves_on: bool) -> AfterFailedStart {
    AfterFailedStart {
        failure: on_failure == OnFailure::Restart || !serves_on,
        next_replacement: on_failure == OnFailure::NextReplacement,
        old_serves_on: on_failure == OnFailure::KeepOld && serves_on,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(launches: &[(u32, u32)]) -> Launches {
        let mut l = Launches::default();
        for (number, &(slot, id)) in launches.iter().enumerate() {
            l.reserve(
                number as u64,
                Reservation {
                    slot,
                    id,
                    on_failure: OnFailure::Restart,
                },
            );
        }
        l
    }

    #[test]
    fn a_slot_being_started_is_not_given_away_until_released() {
        let mut l = held(&[(1, 4)]);
        // Slots 0 and 2 hold live processes, 1 a process being created.
        let live = |slot| slot == 0 || slot == 2;
        assert_eq!(l.free_slot(live), 3);
        assert!(l.any());
        let released = l.release(0).expect("start 0 held a slot");
        assert_eq!((released.slot, released.id), (1, 4));
        assert_eq!(l.free_slot(live), 1);
        assert!(!l.any());
        // A start released twice (or never reserved) holds nothing.
        assert_eq!(l.release(0), None);
    }

    #[test]
    fn a_start_under_way_counts_as_a_second_process_starting() {
        let l = held(&[(2, 0)]);
        let processes = [(0, State::Ready), (1, State::Ready)];
        // Worker 0: its ready process and its successor being created.
        assert_eq!(l.doubled(processes.into_iter(), |_| true), vec![0]);
        // A successor counts as `starting`, not as `ready`.
        assert!(
            l.doubled(processes.into_iter(), |s| s == State::Ready)
                .is_empty()
        );
        assert_eq!(
            l.doubled(processes.into_iter(), |s| s == State::Starting),
            Vec::<u32>::new(),
            "one process starting for worker 0 is not two"
        );
        let two = held(&[(2, 0), (3, 0)]);
        assert_eq!(
            two.doubled(processes.into_iter(), |s| s == State::Starting),
            vec![0]
        );
        assert!(
            held(&[])
                .doubled(processes.into_iter(), |_| true)
                .is_empty()
        );
    }

    #[test]
    fn a_worker_serves_on_through_a_process_not_stopping_or_one_being_created() {
        let none = held(&[]);
        // Only a process that is stopping: nobody will serve.
        assert!(!none.serves_on(0, [(0, State::Stopping), (1, State::Ready)].into_iter()));
        assert!(none.serves_on(0, [(0, State::Starting)].into_iter()));
        assert!(none.serves_on(0, [(0, State::Ready)].into_iter()));
        // A successor being created serves on after the old one stops.
        let successor = held(&[(3, 0)]);
        assert!(successor.serves_on(0, [(0, State::Stopping)].into_iter()));
        assert!(!successor.serves_on(1, std::iter::empty()));
        assert_eq!((successor.of(0), successor.of(1)), (1, 0));
    }

    #[test]
    fn a_failed_start_fails_the_worker_only_when_it_is_left_with_no_process() {
        let after = |on_failure, serves_on| after_failed_start(on_failure, serves_on);
        let failed = AfterFailedStart {
            failure: true,
            next_replacement: false,
            old_serves_on: false,
        };
        // A restart or a scale-up: the worker's own failure, always.
        assert_eq!(after(OnFailure::Restart, true), failed);
        assert_eq!(after(OnFailure::Restart, false), failed);
        // A replacement: the old process serves on, and is no longer
        // replaced; unless it stopped meanwhile.
        assert_eq!(
            after(OnFailure::KeepOld, true),
            AfterFailedStart {
                failure: false,
                next_replacement: false,
                old_serves_on: true,
            }
        );
        assert_eq!(after(OnFailure::KeepOld, false), failed);
        // A rolling restart goes on with the next worker either way.
        assert_eq!(
            after(OnFailure::NextReplacement, true),
            AfterFailedStart {
                failure: false,
                next_replacement: true,
                old_serves_on: false,
            }
        );
        assert_eq!(
            after(OnFailure::NextReplacement, false),
            AfterFailedStart {
                failure: true,
                next_replacement: true,
                old_serves_on: false,
            }
        );
    }
}
