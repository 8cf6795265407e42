//! xypriss: supervises a pool of worker processes and watches their memory
//! from inside the kernel.
//!
//! The modules follow the data:
//!
//! kernel tracepoints → [`observe`] (BPF maps and ring buffer, or /proc) →
//! [`decode`] → [`series`] (per-worker rates) → [`detect`] (threshold
//! alerts, leaks) → [`policy`] (what to do) → actions (in [`pool`] and
//! [`supervise`]) → [`output`] (NDJSON, Prometheus metrics), with
//! [`supervise`] starting and stopping the workers, and [`pool`]
//! running the loop that ties them together. Operators reach the loop
//! through [`api`] (HTTP and the control socket), which the commands of
//! [`operate`] (`xypriss status`, `top`, …) speak. Before any of it,
//! [`flags`] turns the command line and XyPriss's configuration file into
//! [`settings`], plain checked data that every stage reads and that knows
//! nothing of flags. [`doctor`] checks what the machine offers; [`dist`]
//! makes the shell completions and man pages from the same flags.

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
pub mod recommend;
pub mod runtime_dir;
pub mod series;
pub mod settings;
pub mod size;
pub mod supervise;
