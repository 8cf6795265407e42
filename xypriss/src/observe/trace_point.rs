//! tracefs: mounting it when needed, and reading tracepoint formats.
//!
//! Classic tracepoints (`oom/mark_victim`, `sched/sched_process_fork`,
//! `sched/sched_process_exit`) are attached by the id tracefs gives them, and
//! our programs read their fields at the offsets the format files give, not at
//! offsets compiled in. (Raw tracepoints need no tracefs.) A fresh machine may have tracefs unmounted: as root we
//! mount it, and unmount it again once the programs are attached, so the
//! machine is left as we found it on every exit path.
//!
//! Several xypriss may start at once: each holds an exclusive lock on
//! [`LOCK`] from the look for a mount until it has attached (and unmounted
//! what it mounted), so none unmounts tracefs under another. The lock lives
//! in xypriss's runtime directory, the one place under /run a sandboxed
//! xypriss may write (the systemd unit's `RuntimeDirectory=xypriss` under
//! `ProtectSystem=strict`).

use std::{
    fmt,
    fs::{self, DirBuilder, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use nix::{
    fcntl::{Flock, FlockArg},
    mount::{MntFlags, MsFlags, mount, umount2},
};
use xypriss_ebpf::trace_point::{HEADER_BYTES, Offsets};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
/// Where tracefs is looked for, in order; it is mounted at the first when it
/// is at neither.
pub const PLACES: [&str; 2] = [TRACEFS, DEBUGFS_TRACING];
/// xypriss's runtime directory as root, where [`LOCK`] lives.
const LOCK_DIR: &str = "/run/xypriss";
/// Serializes tracefs use between xypriss processes.
const LOCK: &str = "/run/xypriss/tracefs.lock";

#[derive(Debug, thiserror::Error)]
pub enum TraceFsError {
    #[error("cannot lock {LOCK}: {source}")]
    Lock { source: io::Error },
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed ({source}); as root: mount -t tracefs nodev {TRACEFS}"
    )]
    Mount { source: nix::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{event}: the format has no field `{field}`")]
    MissingField { event: String, field: &'static str },
    #[error(
        "{event}: field `{field}` at offset {offset} with size {size} is not what the programs read (size {expected}, within the first {HEADER_BYTES} bytes, aligned)"
    )]
    UnsupportedField {
        event: String,
        field: &'static str,
        offset: u32,
        size: u32,
        expected: u32,
    },
}

/// A usable tracefs, unmounted on drop if we mounted it.
pub struct TraceFs {
    path: PathBuf,
    mounted_here: bool,
    /// Released after the unmount, when this is dropped.
    _lock: Flock<fs::File>,
}

impl TraceFs {
    /// Finds a mounted tracefs, or mounts one at /sys/kernel/tracing.
    pub fn open() -> Result<Self, TraceFsError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(LOCK_DIR)
            .map_err(|source| TraceFsError::Lock { source })?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(LOCK)
            .map_err(|source| TraceFsError::Lock { source })?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
            TraceFsError::Lock {
                source: errno.into(),
            }
        })?;
        for path in PLACES {
            if Path::new(path).join("events").is_dir() {
                return Ok(Self {
                    path: path.into(),
                    mounted_here: false,
                    _lock: lock,
                });
            }
        }
        mount(
            Some("nodev"),
            TRACEFS,
            Some("tracefs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|source| TraceFsError::Mount { source })?;
        tracing::info!("mounted tracefs at {TRACEFS}; it is unmounted when no longer needed");
        Ok(Self {
            path: TRACEFS.into(),
            mounted_here: true,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it was not mounted before [`Self::open`] mounted it.
    pub fn mounted_here(&self) -> bool {
        self.mounted_here
    }

    /// The text of `tracepoint`'s format file.
    pub fn format(&self, tracepoint: &Tracepoint) -> Result<String, TraceFsError> {
        let path = self.path.join(tracepoint.format_path());
        fs::read_to_string(&path).map_err(|source| TraceFsError::Read { path, source })
    }

    /// Reads every field offset the programs need.
    pub fn offsets(&self) -> Result<Offsets, TraceFsError> {
        let read = |tracepoint: &Tracepoint| tracepoint.offsets(&self.format(tracepoint)?);
        let victim = read(&MARK_VICTIM)?;
        let fork = read(&SCHED_PROCESS_FORK)?;
        let exit = read(&SCHED_PROCESS_EXIT)?;
        Ok(Offsets {
            victim_pid: victim[0],
            fork_child_pid: fork[0],
            exit_pid: exit[0],
            exit_group_dead: exit[1],
        })
    }
}

impl Drop for TraceFs {
    fn drop(&mut self) {
        if self.mounted_here
            && let Err(err) = umount2(&self.path, MntFlags::MNT_DETACH)
        {
            tracing::warn!(
                "could not unmount the tracefs we mounted at {}: {err}",
                self.path.display()
            );
        }
    }
}

/// A tracepoint the programs attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracepoint {
    pub category: &'static str,
    pub name: &'static str,
    /// The fields of its record the program reads, with their sizes in
    /// bytes. Empty for raw tracepoints: their programs get the kernel's
    /// arguments, not a record.
    pub fields: &'static [(&'static str, u32)],
}

pub const RSS_STAT: Tracepoint = Tracepoint {
    category: "kmem",
    name: "rss_stat",
    fields: &[],
};
pub const PAGE_FAULT_USER: Tracepoint = Tracepoint {
    category: "exceptions",
    name: "page_fault_user",
    fields: &[],
};
pub const MARK_VICTIM: Tracepoint = Tracepoint {
    category: "oom",
    name: "mark_victim",
    fields: &[("pid", 4)],
};
pub const SCHED_PROCESS_FORK: Tracepoint = Tracepoint {
    category: "sched",
    name: "sched_process_fork",
    fields: &[("child_pid", 4)],
};
pub const SCHED_PROCESS_EXIT: Tracepoint = Tracepoint {
    category: "sched",
    name: "sched_process_exit",
    fields: &[("pid", 4), ("group_dead", 1)],
};

/// Attached by name: they need no tracefs.
pub const RAW: [Tracepoint; 2] = [RSS_STAT, PAGE_FAULT_USER];
/// Attached by the id tracefs gives, their fields read at the offsets it gives.
pub const CLASSIC: [Tracepoint; 3] = [MARK_VICTIM, SCHED_PROCESS_FORK, SCHED_PROCESS_EXIT];

impl Tracepoint {
    /// Its format file, relative to tracefs.
    pub fn format_path(&self) -> PathBuf {
        Path::new("events")
            .join(self.category)
            .join(self.name)
            .join("format")
    }

    /// The offsets of [`Self::fields`] in its record, in their order, from
    /// the text of its format file; each checked against what the programs
    /// read.
    pub fn offsets(&self, format: &str) -> Result<Vec<u32>, TraceFsError> {
        let found = parse_format(format);
        self.fields
            .iter()
            .map(|&(field, size)| {
                let at = found.iter().find(|f| f.name == field).ok_or_else(|| {
                    TraceFsError::MissingField {
                        event: self.to_string(),
                        field,
                    }
                })?;
                let fits = at.size == size
                    && at.offset % size == 0
                    && (at.offset + size) as usize <= HEADER_BYTES;
                if !fits {
                    return Err(TraceFsError::UnsupportedField {
                        event: self.to_string(),
                        field,
                        offset: at.offset,
                        size: at.size,
                        expected: size,
                    });
                }
                Ok(at.offset)
            })
            .collect()
    }
}

impl fmt::Display for Tracepoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.category, self.name)
    }
}

/// One `field:` line of a tracepoint format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// Parses the `field:` lines of a format file, such as
/// `field:unsigned int mm_id;<TAB>offset:8;<TAB>size:4;<TAB>signed:0;`.
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in line.split(';').map(str::trim) {
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d);
                } else if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.parse().ok();
                } else if let Some(s) = part.strip_prefix("size:") {
                    size = s.parse().ok();
                }
            }
            // The name is the declaration's last word, without any array suffix.
            let name = decl?
                .split_whitespace()
                .last()?
                .split('[')
                .next()?
                .to_owned();
            Some(Field {
                name,
                offset: offset?,
                size: size?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSS_STAT_FORMAT: &str = "name: rss_stat
ID: 646
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned int mm_id;\toffset:8;\tsize:4;\tsigned:0;
\tfield:unsigned int curr;\toffset:12;\tsize:4;\tsigned:0;
\tfield:int member;\toffset:16;\tsize:4;\tsigned:1;
\tfield:long size;\toffset:24;\tsize:8;\tsigned:1;

print fmt: \"mm_id=%u curr=%d type=%s size=%ldB\"
";

    #[test]
    fn parses_field_lines() {
        let fields = parse_format(RSS_STAT_FORMAT);
        assert_eq!(fields.len(), 6);
        assert_eq!(
            fields[5],
            Field {
                name: "size".into(),
                offset: 24,
                size: 8
            }
        );
        let comm = parse_format("\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;");
        assert_eq!(comm[0].name, "comm");
    }

    #[test]
    fn offsets_are_checked_against_what_the_programs_read() {
        let reads = |fields| Tracepoint {
            category: "kmem",
            name: "rss_stat",
            fields,
        };
        assert_eq!(
            reads(&[("size", 8), ("mm_id", 4)])
                .offsets(RSS_STAT_FORMAT)
                .unwrap(),
            [24, 8]
        );
        assert!(reads(&[]).offsets(RSS_STAT_FORMAT).unwrap().is_empty());
        assert!(matches!(
            reads(&[("size", 4)]).offsets(RSS_STAT_FORMAT),
            Err(TraceFsError::UnsupportedField {
                offset: 24,
                size: 8,
                ..
            })
        ));
        assert!(matches!(
            reads(&[("nope", 4)]).offsets(RSS_STAT_FORMAT),
            Err(TraceFsError::MissingField { field: "nope", .. })
        ));
    }
}
