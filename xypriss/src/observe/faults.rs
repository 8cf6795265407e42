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
//! The bookkeeping ([`Tallies`]) is pure: the caller reads the counts and
//! says which processes the worker has now. The eBPF observer's reads run
//! on a thread of their own ([`ProcCounts`]): one `stat` costs about 20 µs
//! on the development VM, so a tick of 64 workers held the loop 1.3 ms
//! (p50; 2.1 ms max), and every alert that came meanwhile waited.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io,
    sync::mpsc::{Receiver, SyncSender, sync_channel},
    thread,
};

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

    fn take(&mut self, slot: u32) -> Option<Tally> {
        self.0.remove(&slot)
    }

    fn put(&mut self, slot: u32, tally: Tally) {
        self.0.insert(slot, tally);
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

/// Whether a tick's fault counts are fresh, or on their way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresh {
    /// Counted already: the kernel counts them, or they were read here.
    Fresh,
    /// Asked of the reading thread: the tick goes on when they come.
    Asked,
    /// The previous read is still under way: the tick goes on with the
    /// counts it has, and that read's answer is only recorded.
    Busy,
}

/// The default fault counts: [`Tallies`], read on a thread of their own.
#[derive(Debug)]
pub struct ProcCounts {
    tallies: Tallies,
    asks: SyncSender<Vec<u32>>,
    answers: tokio::sync::mpsc::Receiver<Vec<Option<u64>>>,
    asked: Option<Asked>,
}

/// A read under way.
#[derive(Debug)]
struct Asked {
    /// Each worker's processes when it was asked, by slot.
    processes: BTreeMap<u32, Vec<u32>>,
    /// Slots given a new process since: this read's counts are not theirs.
    reset: BTreeSet<u32>,
    /// Whether a tick waits for the answer.
    tick_waits: bool,
}

impl ProcCounts {
    /// Starts the reading thread, which runs `on_thread` first.
    pub fn start(on_thread: fn()) -> io::Result<Self> {
        let (asks, asked) = sync_channel(1);
        let (answer, answers) = tokio::sync::mpsc::channel(1);
        thread::Builder::new()
            .name("xypriss-faults".into())
            .spawn(move || {
                on_thread();
                count(&asked, &answer);
            })?;
        Ok(Self {
            tallies: Tallies::default(),
            asks,
            answers,
            asked: None,
        })
    }

    /// Worker `slot`'s faults so far.
    pub fn total(&self, slot: u32) -> u64 {
        self.tallies.total(slot)
    }

    /// A new process in `slot`: its count starts over.
    pub fn reset(&mut self, slot: u32) {
        self.tallies.reset(slot);
        if let Some(asked) = &mut self.asked {
            asked.reset.insert(slot);
        }
    }

    /// See [`Tallies::observe`].
    pub fn observe(&mut self, slot: u32, pid: u32, count: u64) {
        self.tallies.observe(slot, pid, count);
    }

    /// Asks for the counts of each worker's processes now (`processes`:
    /// slot → pids); [`Self::answered`] records them.
    pub fn ask(&mut self, processes: BTreeMap<u32, Vec<u32>>) -> Refresh {
        if let Some(asked) = &mut self.asked {
            asked.tick_waits = false;
            return Refresh::Busy;
        }
        let pids = processes.values().flatten().copied().collect();
        // One read at a time, so the channel is never full: an error means
        // the thread is gone, and the counts are read here instead.
        if self.asks.try_send(pids).is_err() {
            self.tallies.refresh(&processes, read);
            return Refresh::Fresh;
        }
        self.asked = Some(Asked {
            processes,
            reset: BTreeSet::new(),
            tick_waits: true,
        });
        Refresh::Asked
    }

    /// Reads the counts on this thread, now: the pool's last tick.
    pub fn count_now(&mut self, processes: &BTreeMap<u32, Vec<u32>>) {
        self.tallies.refresh(processes, read);
    }

    /// Records the answer to the read under way, when it comes (never,
    /// while none is); `true` when a tick waits for it. Cancel-safe.
    pub async fn answered(&mut self) -> bool {
        if self.asked.is_none() {
            return std::future::pending().await;
        }
        let answer = self.answers.recv().await;
        let Some(Asked {
            mut processes,
            reset,
            tick_waits,
        }) = self.asked.take()
        else {
            return false;
        };
        let counts: HashMap<u32, Option<u64>> = match answer {
            Some(counts) => processes.values().flatten().copied().zip(counts).collect(),
            // The thread is gone: read here.
            None => processes
                .values()
                .flatten()
                .map(|&pid| (pid, read(pid)))
                .collect(),
        };
        let kept: Vec<(u32, Tally)> = reset
            .iter()
            .filter_map(|&slot| self.tallies.take(slot).map(|tally| (slot, tally)))
            .collect();
        processes.retain(|slot, _| !reset.contains(slot));
        self.tallies
            .refresh(&processes, |pid| counts.get(&pid).copied().flatten());
        for (slot, tally) in kept {
            self.tallies.put(slot, tally);
        }
        tick_waits
    }
}

/// The reading thread: each ask's counts, in its order, until the observer goes.
fn count(asks: &Receiver<Vec<u32>>, answers: &tokio::sync::mpsc::Sender<Vec<Option<u64>>>) {
    while let Ok(pids) = asks.recv() {
        let counts = pids.iter().map(|&pid| read(pid)).collect();
        if answers.blocking_send(counts).is_err() {
            return;
        }
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

    fn faults_of(pid: u32) -> u64 {
        read(pid).expect("a running process's stat")
    }

    #[tokio::test]
    async fn a_read_on_the_thread_counts_the_processes_asked_for() {
        let mut counts = ProcCounts::start(|| {}).expect("the reading thread");
        let me = std::process::id();
        let before = faults_of(me);
        assert_eq!(counts.ask(BTreeMap::from([(2, vec![me])])), Refresh::Asked);
        assert!(counts.answered().await, "the tick waits for its answer");
        let total = counts.total(2);
        assert!(
            total >= before && total <= faults_of(me),
            "{before} <= {total}"
        );
        assert_eq!(counts.total(3), 0);
    }

    #[tokio::test]
    async fn a_tick_during_a_read_goes_on_and_the_read_is_only_recorded() {
        let mut counts = ProcCounts::start(|| {}).expect("the reading thread");
        let me = std::process::id();
        assert_eq!(counts.ask(BTreeMap::from([(0, vec![me])])), Refresh::Asked);
        assert_eq!(counts.ask(BTreeMap::from([(0, vec![me])])), Refresh::Busy);
        assert!(!counts.answered().await, "no tick waits for it any more");
        assert!(counts.total(0) > 0);
        assert_eq!(counts.ask(BTreeMap::from([(0, vec![me])])), Refresh::Asked);
    }

    #[tokio::test]
    async fn a_slot_given_a_new_process_during_a_read_starts_over() {
        let mut counts = ProcCounts::start(|| {}).expect("the reading thread");
        let me = std::process::id();
        counts.observe(1, me, 5);
        assert_eq!(
            counts.ask(BTreeMap::from([(0, vec![me]), (1, vec![me])])),
            Refresh::Asked
        );
        counts.reset(1);
        counts.observe(1, 4_000_000, 7);
        assert!(counts.answered().await);
        assert_eq!(
            counts.total(1),
            7,
            "the old process's count is not the new one's"
        );
        assert!(counts.total(0) > 0);
    }
}
