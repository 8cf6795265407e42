//! What `--workers auto` reads of the host: the memory this process may use,
//! the smaller of the host's available memory and what is left under this
//! process's memory cgroup limit (v1 or v2). The count itself is decided by
//! `settings::auto_workers`, from these figures and the CPUs
//! (`available_parallelism`, which honours affinity, cpusets and quotas).
//! The read itself is the host's ([`crate::observe::host`]), where every
//! read of the host is.

pub use crate::observe::host::available_memory;
