//! xypriss: supervises a pool of worker processes and watches their memory
//! from inside the kernel.
//!
//! The modules follow the data:
//!
//! kernel tracepoints → [`observe`] (BPF maps and ring buffer, or /proc) →
//! [`decode`] → [`series`] (per-worker rates) → [`output`] (NDJSON), with
//! [`detect`] turning a worker's series into verdicts (is it leaking?),
//! [`supervise`] starting and stopping the workers, and [`controller`]
//! running the loop that ties them together. [`cli`] turns flags into a
//! checked configuration first.

pub mod cli;
pub mod controller;
pub mod decode;
pub mod detect;
pub mod observe;
pub mod output;
pub mod series;
pub mod size;
pub mod supervise;
