//! Detectors: pure functions of a worker's series that turn it into verdicts
//! (a threshold crossed, a leak).
//!
//! A detector is fed the points of one worker process as they arrive (the
//! `rssBytes` and `monotonicNs` of its `memory_sample` events) and answers a
//! question about them. It decides nothing: what to do with a verdict (an
//! alert, a restart) is the policy's, and the actions are the supervisor's.
//! Keeping the detectors free of I/O, clocks and processes lets them be tested
//! on synthetic series, scenario by scenario, with no kernel and no worker.

pub mod leak;
pub mod threshold;
