//! Ring-buffer records → [`Observation`]s.
//!
//! The layout is `xypriss_ebpf::ring_buf::Record`; records are read field by
//! field with `bytes::Buf`, so a short or unknown record is an error value,
//! never undefined behaviour.

use bytes::Buf as _;
use xypriss_ebpf::ring_buf::{
    KIND_EXIT, KIND_FORK, KIND_OOM_VICTIM, KIND_SAMPLE, KIND_THRESHOLD, Record,
};

use crate::observe::{Counters, Observation, Trigger};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("a ring-buffer record of {len} bytes is shorter than the {expected} of a record")]
    Short { len: usize, expected: usize },
    #[error("a ring-buffer record has unknown kind {kind}")]
    UnknownKind { kind: u32 },
}

/// Decodes one record.
pub fn decode(mut bytes: &[u8]) -> Result<Observation, DecodeError> {
    let expected = size_of::<Record>();
    if bytes.len() < expected {
        return Err(DecodeError::Short {
            len: bytes.len(),
            expected,
        });
    }
    let kind = bytes.get_u32_ne();
    let slot = bytes.get_u32_ne();
    let pid = bytes.get_u32_ne();
    let aux = bytes.get_u32_ne();
    let at_ns = bytes.get_u64_ne();
    let counters = Counters::from_kernel([
        bytes.get_i64_ne(),
        bytes.get_i64_ne(),
        bytes.get_i64_ne(),
        bytes.get_i64_ne(),
    ]);
    Ok(match kind {
        KIND_SAMPLE | KIND_THRESHOLD => Observation::Memory {
            slot,
            pid,
            at_ns,
            counters,
            trigger: if kind == KIND_SAMPLE {
                Trigger::Granularity
            } else {
                Trigger::Threshold
            },
            level: aux,
        },
        KIND_FORK => Observation::Fork {
            slot,
            pid,
            parent: aux,
        },
        KIND_EXIT => Observation::Exit {
            slot,
            pid,
            at_ns,
            counters,
        },
        KIND_OOM_VICTIM => Observation::OomVictim {
            slot,
            pid,
            counters,
        },
        kind => return Err(DecodeError::UnknownKind { kind }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(record: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [record.kind, record.worker, record.pid, record.aux] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        out.extend_from_slice(&record.ktime_ns.to_ne_bytes());
        for c in record.counters {
            out.extend_from_slice(&c.to_ne_bytes());
        }
        out
    }

    #[test]
    fn decodes_a_threshold_crossing() {
        let record = Record {
            kind: KIND_THRESHOLD,
            worker: 3,
            pid: 42,
            aux: 2,
            ktime_ns: 1_000,
            counters: [4096, 8192, 0, 1024],
        };
        assert_eq!(
            decode(&bytes(&record)),
            Ok(Observation::Memory {
                slot: 3,
                pid: 42,
                at_ns: 1_000,
                counters: Counters {
                    file: 4096,
                    anon: 8192,
                    swap: 0,
                    shmem: 1024
                },
                trigger: Trigger::Threshold,
                level: 2,
            })
        );
    }

    #[test]
    fn negative_transient_totals_read_as_zero() {
        let record = Record {
            kind: KIND_EXIT,
            counters: [-4096, 0, 0, 0],
            ..Record::default()
        };
        let Ok(Observation::Exit { counters, .. }) = decode(&bytes(&record)) else {
            panic!("not an exit");
        };
        assert_eq!(counters.file, 0);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert_eq!(
            decode(&[0; 8]),
            Err(DecodeError::Short {
                len: 8,
                expected: 56
            })
        );
        let record = Record {
            kind: 99,
            ..Record::default()
        };
        assert_eq!(
            decode(&bytes(&record)),
            Err(DecodeError::UnknownKind { kind: 99 })
        );
    }
}
