//! Detectors: pure functions from per-worker series to verdicts (a threshold
//! crossed, a leak). They decide nothing and touch nothing; the policy and
//! the actions are elsewhere.

pub mod threshold;
