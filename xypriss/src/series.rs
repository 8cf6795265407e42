//! Per-worker series: the memory and fault counts a worker reported over
//! time, and the rates derived from them.
//!
//! Rates are first-class fields of the event stream, computed here once for
//! every consumer: the allocation rate is the change of the resident size per
//! second, and the fault rate the user page faults per second, both over the
//! last [`WINDOW_NS`] of points. Pure code, tested on synthetic series.

use std::collections::VecDeque;

/// The span rates are measured over.
pub const WINDOW_NS: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Point {
    at_ns: u64,
    rss: u64,
    faults: u64,
}

/// Rates at the latest point.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    /// Bytes per second the resident size grew (negative when it shrinks).
    pub allocation: f64,
    /// User page faults per second.
    pub faults: f64,
}

#[derive(Debug, Default)]
pub struct Series {
    points: VecDeque<Point>,
    /// What the last emitted sample said, to tell whether a periodic one is news.
    last_emitted: Option<(u64, u64, Rates)>,
}

impl Series {
    /// Adds a point and returns the rates at it. Points older than the newest
    /// are ignored for the rates (a late sample cannot make time go back).
    pub fn push(&mut self, at_ns: u64, rss: u64, faults: u64) -> Rates {
        if self.points.back().is_none_or(|last| at_ns >= last.at_ns) {
            self.points.push_back(Point { at_ns, rss, faults });
        }
        // Keep one point at or before the window's start, so the window is spanned.
        while self.points.len() > 2 && self.points[1].at_ns + WINDOW_NS <= at_ns {
            self.points.pop_front();
        }
        self.rates()
    }

    /// The rates at the latest point.
    pub fn rates(&self) -> Rates {
        let (Some(first), Some(last)) = (self.points.front(), self.points.back()) else {
            return Rates::default();
        };
        let dt = last.at_ns.saturating_sub(first.at_ns);
        if dt == 0 {
            return Rates::default();
        }
        let seconds = dt as f64 / 1e9;
        Rates {
            allocation: (last.rss as f64 - first.rss as f64) / seconds,
            faults: last.faults.saturating_sub(first.faults) as f64 / seconds,
        }
    }

    /// Whether a periodic sample would tell anything new: the resident size or
    /// the fault count moved, or the last rates were not zero (so their return
    /// to zero is reported once).
    pub fn is_news(&self, rss: u64, faults: u64) -> bool {
        match self.last_emitted {
            None => true,
            Some((r, f, rates)) => {
                r != rss || f != faults || rates.allocation != 0.0 || rates.faults != 0.0
            }
        }
    }

    /// The resident size the last emitted sample said.
    pub fn last_emitted_rss(&self) -> Option<u64> {
        self.last_emitted.map(|(rss, _, _)| rss)
    }

    /// Records what a sample said.
    pub fn emitted(&mut self, rss: u64, faults: u64, rates: Rates) {
        self.last_emitted = Some((rss, faults, rates));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn steady_growth_gives_its_rate() {
        let mut s = Series::default();
        let mut rates = Rates::default();
        // 1 MiB every 10 ms: 100 MiB/s, 256 faults per MiB.
        for i in 0..300u64 {
            rates = s.push(i * 10 * MS, i << 20, i * 256);
        }
        assert!(
            (rates.allocation - 100.0 * (1 << 20) as f64).abs() < 1.0,
            "{rates:?}"
        );
        assert!((rates.faults - 25_600.0).abs() < 0.01, "{rates:?}");
    }

    #[test]
    fn the_window_forgets_old_growth() {
        let mut s = Series::default();
        s.push(0, 0, 0);
        s.push(100 * MS, 100 << 20, 0);
        // Then flat for two seconds.
        let rates = s.push(2100 * MS, 100 << 20, 0);
        assert_eq!(rates.allocation, 0.0);
    }

    #[test]
    fn shrinking_is_a_negative_rate() {
        let mut s = Series::default();
        s.push(0, 200 << 20, 0);
        let rates = s.push(500 * MS, 100 << 20, 0);
        assert!((rates.allocation + 200.0 * (1 << 20) as f64).abs() < 1.0);
    }

    #[test]
    fn one_point_or_a_late_point_has_no_rate() {
        let mut s = Series::default();
        assert_eq!(s.push(5 * MS, 1 << 20, 9), Rates::default());
        assert_eq!(s.push(MS, 9 << 20, 99), Rates::default());
    }

    #[test]
    fn periodic_news_includes_the_return_to_zero() {
        let mut s = Series::default();
        assert!(s.is_news(1, 1));
        s.emitted(
            1,
            1,
            Rates {
                allocation: 5.0,
                faults: 0.0,
            },
        );
        assert!(s.is_news(1, 1));
        s.emitted(1, 1, Rates::default());
        assert!(!s.is_news(1, 1));
        assert!(s.is_news(1, 2));
    }
}
