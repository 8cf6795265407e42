//! xypriss: supervises a pool of worker processes and watches their memory
//! from inside the kernel.
//!
//! The modules follow the data:
//!
//! kernel tracepoints → [`observe`] (BPF maps and ring buffer, or /proc) →
//! [`decode`] → [`series`] (per-worker rates) → [`detect`] (threshold
//! alerts, leaks) → [`policy`] (what to do) → actions (in [`controller`] and
//! [`supervise`]) → [`output`] (NDJSON, Prometheus metrics), with
//! [`supervise`] starting and stopping the workers, and [`controller`]
//! running the loop that ties them together. Operators reach the loop
//! through [`api`] (HTTP and the control socket). [`cli`] turns flags into a
//! checked configuration first; [`config`] does the same for the memory
//! options, from XyPriss's cluster configuration file and flags.

pub mod api;
pub mod cli;
pub mod config;
pub mod controller;
pub mod decode;
pub mod detect;
pub mod observe;
pub mod output;
pub mod policy;
pub mod recommend;
pub mod series;
pub mod size;
pub mod supervise;
