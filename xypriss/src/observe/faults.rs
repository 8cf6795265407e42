//! A worker's page faults counted from `/proc/<pid>/stat` (minflt + majflt
//! of each of its processes), the way both observers count them by default.
//!
//! Why not in the kernel: `exceptions/page_fault_user` fires on every user
//! page fault of every process on the host, and a raw tracepoint's dispatch
//! costs about as much as the rest of the unwatched path together. Without
//! it a fault of a process xypriss does not watch costs only the `rss_stat`
//! program (BENCHMARKS.md, *Overhead*). Faults feed only the reported counts
//! and rates, which read well enough at each refresh;
//! `--kernel-fault-counts` attaches the program for exact, immediate counts.
//!
//! The bookkeeping is pure: the caller reads the counts and says which
//! processes the worker has now.

use std::collections::BTreeMap;

use procfs::process::Process;

/// A process's page faults so far, minor and major, over all its threads.
pub fn read(pid: u32) -> Option<u64> {
    let stat = Process::new(pid as i32).ok()?.stat().ok()?;
    Some(stat.minflt + stat.majflt)
}

/// One worker's processes and their latest counts, and the counts of those
/// that have exited, so that its total never goes back.
#[derive(Debug, Default)]
pub struct Tally {
    processes: BTreeMap<u32, u64>,
    exited: u64,
}

impl Tally {
    /// Records `pid`'s count; true when `pid` is new to this tally.
    pub fn observe(&mut self, pid: u32, count: u64) -> bool {
        self.processes.insert(pid, count).is_none()
    }

    /// Moves every process `alive` says is gone into the exited count, and
    /// returns their pids.
    pub fn retire(&mut self, alive: impl Fn(u32) -> bool) -> Vec<u32> {
        let gone: Vec<u32> = self
            .processes
            .keys()
            .copied()
            .filter(|&pid| !alive(pid))
            .collect();
        for pid in &gone {
            self.exited += self.processes.remove(pid).unwrap_or(0);
        }
        gone
    }

    /// The worker's faults so far.
    pub fn total(&self) -> u64 {
        self.exited + self.processes.values().sum::<u64>()
    }
}

/// Every worker's [`Tally`], by slot.
#[derive(Debug, Default)]
pub struct Tallies(BTreeMap<u32, Tally>);

impl Tallies {
    /// A new process in `slot`: its count starts over.
    pub fn reset(&mut self, slot: u32) {
        self.0.remove(&slot);
    }

    /// Records process `pid` of worker `slot` and its count, leaving the
    /// other workers as they are (a worker first watched).
    pub fn observe(&mut self, slot: u32, pid: u32, count: u64) {
        self.0.entry(slot).or_default().observe(pid, count);
    }

    /// Each worker's processes now (`processes`: slot → pids), counted with
    /// `read`. A process that is gone keeps its last count; one that cannot
    /// be read (it exits as we read) is taken for gone.
    pub fn refresh(
        &mut self,
        processes: &BTreeMap<u32, Vec<u32>>,
        read: impl Fn(u32) -> Option<u64>,
    ) {
        for (&slot, pids) in processes {
            let tally = self.0.entry(slot).or_default();
            let mut alive = Vec::with_capacity(pids.len());
            for &pid in pids {
                if let Some(count) = read(pid) {
                    tally.observe(pid, count);
                    alive.push(pid);
                }
            }
            tally.retire(|pid| alive.contains(&pid));
        }
        for (slot, tally) in &mut self.0 {
            if !processes.contains_key(slot) {
                tally.retire(|_| false);
            }
        }
    }

    /// Worker `slot`'s faults so far.
    pub fn total(&self, slot: u32) -> u64 {
        self.0.get(&slot).map_or(0, Tally::total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_total_sums_its_processes_and_keeps_those_that_exited() {
        let mut tallies = Tallies::default();
        let counts = BTreeMap::from([(10, 100), (11, 5)]);
        tallies.refresh(&BTreeMap::from([(0, vec![10, 11])]), |pid| {
            counts.get(&pid).copied()
        });
        assert_eq!(tallies.total(0), 105);
        // The child exits with 7 faults seen last; the parent goes on.
        let counts = BTreeMap::from([(10, 150), (11, 7)]);
        tallies.refresh(&BTreeMap::from([(0, vec![10, 11])]), |pid| {
            counts.get(&pid).copied()
        });
        tallies.refresh(&BTreeMap::from([(0, vec![10])]), |pid| {
            (pid == 10).then_some(160)
        });
        assert_eq!(tallies.total(0), 167);
        // A process listed but already gone counts as exited, not as zero.
        tallies.refresh(&BTreeMap::from([(0, vec![10])]), |_| None);
        assert_eq!(tallies.total(0), 167);
    }

    #[test]
    fn a_worker_with_no_process_left_keeps_its_count_until_reset() {
        let mut tallies = Tallies::default();
        tallies.refresh(&BTreeMap::from([(3, vec![30])]), |_| Some(42));
        tallies.refresh(&BTreeMap::new(), |_| Some(1000));
        assert_eq!(tallies.total(3), 42);
        tallies.reset(3);
        assert_eq!(tallies.total(3), 0);
        assert_eq!(tallies.total(4), 0);
    }

    #[test]
    fn a_worker_first_watched_leaves_the_others_counts_alone() {
        let mut tallies = Tallies::default();
        tallies.refresh(&BTreeMap::from([(0, vec![10])]), |_| Some(100));
        tallies.observe(1, 20, 5);
        tallies.refresh(&BTreeMap::from([(0, vec![10]), (1, vec![20])]), |pid| {
            Some(if pid == 10 { 110 } else { 6 })
        });
        assert_eq!((tallies.total(0), tallies.total(1)), (110, 6));
    }

    #[test]
    fn a_tally_says_which_processes_are_new_and_which_are_gone() {
        let mut tally = Tally::default();
        assert!(tally.observe(1, 10));
        assert!(!tally.observe(1, 12));
        assert!(tally.observe(2, 3));
        assert_eq!(tally.retire(|pid| pid == 1), vec![2]);
        assert_eq!(tally.total(), 15);
    }
}
