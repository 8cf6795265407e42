//! The fault soak's reading of a pool's stderr: the flooder's cut pieces,
//! each counting worker's numbered lines (lost, reordered, or written into
//! another line), xypriss's notices of lines it dropped, and its warnings of
//! notifications it refused.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
};

/// What a pool's stderr carried.
#[derive(Debug, Default)]
pub(super) struct Output {
    pub(super) bytes: u64,
    /// Pieces of the flooder's lines cut at the cap.
    pub(super) cuts: u64,
    /// Each counting worker's numbered lines, by `<id>.<generation>`.
    pub(super) ticks: BTreeMap<String, Ticks>,
    /// Lines that carry a numbered line not at their start: a worker's line
    /// written into the middle of another.
    pub(super) garbled: u64,
    /// Lines xypriss said it dropped because stderr did not keep up.
    pub(super) dropped: u64,
    /// The first few numbered lines lost, out of order or garbled, as read:
    /// what to look at if any are.
    pub(super) anomalies: Vec<String>,
    /// xypriss's warnings that it dropped notifications of another uid, and
    /// how many datagrams they covered.
    pub(super) notify_warnings: u64,
    pub(super) notify_dropped: u64,
}

/// One counting worker's numbered lines (`tick 0`, `tick 1`, …) as read.
#[derive(Debug, Default)]
pub(super) struct Ticks {
    pub(super) read: u64,
    /// Numbers skipped: lines lost on the way (those after the last one read
    /// cannot be seen).
    pub(super) missing: u64,
    /// Lines whose number is not above the one before: repeated or reordered.
    pub(super) backwards: u64,
    last: Option<u64>,
}

impl Ticks {
    fn note(&mut self, n: u64) {
        let expected = self.last.map_or(0, |last| last + 1);
        match n.cmp(&expected) {
            std::cmp::Ordering::Greater => self.missing += n - expected,
            std::cmp::Ordering::Less => self.backwards += 1,
            std::cmp::Ordering::Equal => {}
        }
        if n >= expected {
            self.last = Some(n);
        }
        self.read += 1;
    }
}

/// Reads a pool's stderr to its end: xypriss cuts lines at 64 KiB, so a line
/// read here is bounded too.
pub(super) fn count_output(stderr: impl std::io::Read) -> Output {
    let mut output = Output::default();
    let mut reader = BufReader::with_capacity(1 << 20, stderr);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
        output.bytes += line.len() as u64;
        count_line(&mut output, &line);
        line.clear();
    }
    output
}

/// Counts one line of a pool's stderr: a cut piece, a numbered line of a
/// worker (`[worker 1.1 pid 4242] tick 17`), or xypriss's notice of lines
/// it dropped.
fn count_line(output: &mut Output, line: &[u8]) {
    const TICK: &[u8] = b"] tick ";
    if line.ends_with(b"continued]\n") {
        output.cuts += 1;
    }
    let Some(at) = line.windows(TICK.len()).position(|w| w == TICK) else {
        let text = String::from_utf8_lossy(line);
        if let Some(at) = text.find("dropped ")
            && text.contains("notification(s) not from the workers' uid")
        {
            output.notify_warnings += 1;
            output.notify_dropped += text[at + 8..]
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Some(rest) = line.strip_prefix(b"[xypriss] ") {
            let text = String::from_utf8_lossy(rest);
            if text.contains("lines for stderr were dropped") {
                output.dropped += text
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        return;
    };
    // The prefix is the line's start: `[worker <id>.<generation> pid <pid>`.
    let head = &line[..at];
    let clean = head.starts_with(b"[worker ")
        && head.iter().filter(|&&b| b == b'[' || b == b']').count() == 1;
    let n = String::from_utf8_lossy(&line[at + TICK.len()..])
        .trim()
        .parse::<u64>();
    let anomaly = match (clean, n) {
        (true, Ok(n)) => {
            let worker = String::from_utf8_lossy(head)
                .split_whitespace()
                .nth(1)
                .unwrap_or("?")
                .to_owned();
            let ticks = output.ticks.entry(worker).or_default();
            let expected = ticks.last.map_or(0, |last| last + 1);
            ticks.note(n);
            n != expected
        }
        _ => {
            output.garbled += 1;
            true
        }
    };
    if anomaly && output.anomalies.len() < 8 {
        let text = String::from_utf8_lossy(&line[line.len().saturating_sub(120)..]);
        output.anomalies.push(text.trim_end().to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(lines: &[&str]) -> Output {
        let mut output = Output::default();
        for line in lines {
            count_line(&mut output, format!("{line}\n").as_bytes());
        }
        output
    }

    #[test]
    fn one_lost_line_is_one_missing_not_every_later_one() {
        let output = count(&[
            "[worker 1.1 pid 7] tick 0",
            "[worker 1.1 pid 7] tick 1",
            "[worker 1.1 pid 7] tick 3",
            "[worker 1.1 pid 7] tick 4",
            "[worker 1.1 pid 7] tick 5",
            "[worker 2.1 pid 8] tick 0",
        ]);
        let one = &output.ticks["1.1"];
        assert_eq!((one.read, one.missing, one.backwards), (5, 1, 0));
        assert_eq!(output.ticks["2.1"].missing, 0);
        assert_eq!(output.anomalies, ["[worker 1.1 pid 7] tick 3"]);
    }

    #[test]
    fn a_line_out_of_order_is_counted_once() {
        let output = count(&[
            "[worker 1.1 pid 7] tick 0",
            "[worker 1.1 pid 7] tick 2",
            "[worker 1.1 pid 7] tick 1",
            "[worker 1.1 pid 7] tick 3",
        ]);
        let one = &output.ticks["1.1"];
        assert_eq!((one.read, one.missing, one.backwards), (4, 1, 1));
    }

    #[test]
    fn a_line_written_into_another_is_garbled_not_the_other_workers() {
        let output = count(&[
            "[worker 0.1 pid 6] 000[worker 1.1 pid 7] tick 0",
            "[worker 1.1 pid 7] tick 1",
            "[worker 0.1 pid 6 +] 000 [cut at 65536 bytes: continued]",
            "[xypriss] 3 lines for stderr were dropped: it did not keep up",
        ]);
        assert_eq!(output.garbled, 1);
        assert!(!output.ticks.contains_key("0.1"));
        assert_eq!(output.ticks["1.1"].missing, 1);
        assert_eq!((output.cuts, output.dropped), (1, 3));
    }

    #[test]
    fn notify_warnings_and_what_they_cover_are_summed() {
        let output = count(&[
            "2026-12-02T01:00:00Z  WARN xypriss::supervise::notify: dropped 41 notification(s) not from the workers' uid 65534 (the latest from uid 0, pid 9)",
            "2026-12-02T01:00:10Z  WARN xypriss::supervise::notify: dropped 1 notification(s) not from the workers' uid 65534 (the latest from uid 0, pid 9)",
        ]);
        assert_eq!((output.notify_warnings, output.notify_dropped), (2, 42));
    }
}
