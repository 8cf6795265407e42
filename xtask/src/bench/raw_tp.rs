//! An empty raw-tracepoint program (`r0 = 0; exit`), attached for as long
//! as it lives: the cost of the kernel running *any* BPF program on a
//! tracepoint, which no program of xypriss's can go below. Loaded with the
//! `bpf(2)` system call directly, because the instrument is two
//! instructions: nothing to compile, no loader library to trust.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to the license: the kernel
/// takes a shorter attribute as zeros beyond it (no log, no name).
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
}

/// `union bpf_attr` for `BPF_RAW_TRACEPOINT_OPEN`.
#[repr(C)]
struct RawTracepointOpen {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

/// `r0 = 0` (`BPF_ALU64 | BPF_MOV | BPF_K`), then `exit`: `struct
/// bpf_insn`s, the opcode in the first byte and every operand zero.
const EMPTY: [u64; 2] = [
    u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]),
    u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
];

/// An empty program attached to a raw tracepoint; detached on drop.
pub(super) struct EmptyRawTracepoint {
    _program: OwnedFd,
    _link: OwnedFd,
}

/// `bpf(command, attr)`: the new file descriptor.
fn bpf<T>(command: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a `union bpf_attr` prefix of the size given, alive
    // for the call; the kernel copies it in.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_ref(attr),
            size_of::<T>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel gave this process alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl EmptyRawTracepoint {
    pub(super) fn attach(tracepoint: &str) -> Result<Self> {
        let program = bpf(
            BPF_PROG_LOAD,
            &ProgLoad {
                prog_type: BPF_PROG_TYPE_RAW_TRACEPOINT,
                insn_cnt: EMPTY.len() as u32,
                insns: EMPTY.as_ptr() as u64,
                license: c"GPL".as_ptr() as u64,
            },
        )
        .context("loading an empty raw-tracepoint program")?;
        let name = CString::new(tracepoint)?;
        let link = bpf(
            BPF_RAW_TRACEPOINT_OPEN,
            &RawTracepointOpen {
                name: name.as_ptr() as u64,
                prog_fd: program.as_raw_fd() as u32,
                _pad: 0,
            },
        )
        .with_context(|| format!("attaching the empty program to raw tracepoint {tracepoint}"))?;
        Ok(Self {
            _program: program,
            _link: link,
        })
    }
}
