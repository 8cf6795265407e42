//! xypriss: supervises a pool of worker processes and watches their memory
//! from inside the kernel.
//!
//! The modules follow the data, and each imports only what comes before it:
//!
//! kernel tracepoints → [`observe`] (BPF maps and ring buffer, or /proc; and
//! [`observe::host`], every other read of the host) → [`decode`] →
//! [`series`] (per-worker rates) → [`detect`] (threshold alerts, leaks) →
//! [`policy`], [`predict`] and [`recommend`] (what to do, and when; pure) →
//! [`pool`] (the loop that owns all state and carries the decisions out,
//! the only side effects, through [`supervise`], which starts and stops the
//! workers) → [`output`] (NDJSON, Prometheus metrics). [`report`] is a leaf: the status the pool
//! makes and that [`output`], [`api`] and [`operate`] share. Operators reach
//! the loop through [`api`] (HTTP and the control socket), which the
//! commands of [`operate`] (`xypriss status`, `top`, …) speak. Before any
//! of it, [`flags`] turns the command line and XyPriss's configuration file
//! into [`settings`], plain checked data that knows nothing of flags; the
//! [`pool`] hands each stage its own part of it (`observe::Settings`).
//! [`doctor`] checks what the machine offers; [`dist`] makes the shell
//! completions and man pages from the same flags.

pub mod api;
pub mod decode;
pub mod detect;
pub mod dist;
pub mod doctor;
pub mod flags;
pub mod observe;
pub mod operate;
pub mod output;
pub mod policy;
pub mod pool;
pub mod predict;
pub mod recommend;
pub mod report;
pub mod runtime_dir;
pub mod series;
pub mod settings;
pub mod size;
pub mod supervise;
