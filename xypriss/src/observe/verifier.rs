//! The kernel's BPF verifier: what its rejection of a program says, cut to
//! the lines that explain it; a real rejection on demand, for tests; and
//! whether it lets programs read kernel memory (lockdown), for doctor.
//!
//! A rejected program comes back with the verifier's log, which can run to
//! megabytes: every path the verifier walked. The `observer` event and the
//! error on stderr carry only its last lines, where the verifier says what
//! it refused; the whole log goes to the debug log (`XYPRISS_LOG=debug`).
//!
//! # Fault injection (a test hook)
//!
//! With `XYPRISS_FAULT_INJECT=verifier` in its environment, xypriss fails its
//! eBPF load as a verifier rejection would, with a real one: before attaching
//! its programs it asks the kernel to load a one-instruction program that
//! returns without setting its return value, which the verifier refuses, and
//! reports that as the rejection of its first program, saying it was
//! injected. The tests use it to check that a rejected program degrades to
//! /proc polling with one clear `observer` event, and that `--require-ebpf`
//! refuses to start. Nothing else reads the variable.

use std::{ffi::OsStr, io};

/// The environment variable of the test hook, and the value that arms it.
pub const FAULT_INJECT: &str = "XYPRISS_FAULT_INJECT";
const VERIFIER: &str = "verifier";

/// How many lines of the log's end make the summary, and at most how long it is.
const SUMMARY_LINES: usize = 3;
const SUMMARY_CHARS: usize = 400;

/// Whether the test hook asks for a verifier rejection.
pub fn fault_injected() -> bool {
    std::env::var_os(FAULT_INJECT).as_deref() == Some(OsStr::new(VERIFIER))
}

/// The lines of a verifier log that say why the program was refused: its
/// last ones, without the statistics the kernel ends it with, joined on one
/// line and cut to [`SUMMARY_CHARS`] from the end.
pub fn summary(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !["processed ", "verification time", "stack depth"]
                    .iter()
                    .any(|stats| line.starts_with(stats))
        })
        .collect();
    if lines.is_empty() {
        return "the verifier gave no reason".into();
    }
    let tail = lines[lines.len().saturating_sub(SUMMARY_LINES)..].join(" / ");
    let chars = tail.chars().count();
    if chars <= SUMMARY_CHARS {
        return tail;
    }
    let cut: String = tail.chars().skip(chars - SUMMARY_CHARS).collect();
    format!("…{cut}")
}

/// What the test hook reports: a real rejection's error and log, with a
/// note that it was asked for.
pub fn reject_on_purpose() -> (io::Error, String) {
    let (error, log) = load_invalid();
    (
        error,
        format!("{log}\n(injected by {FAULT_INJECT}={VERIFIER})"),
    )
}

/// `union bpf_attr` as `BPF_PROG_LOAD` reads it, up to the log buffer; the
/// kernel takes the fields past it as zero.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
}

/// Asks the kernel to load `exit` alone as a raw tracepoint program: r0, the
/// return value, is never set, so the verifier refuses it (`R0 !read_ok`).
fn load_invalid() -> (io::Error, String) {
    // One `struct bpf_insn`: opcode BPF_JMP | BPF_EXIT, no registers, no offset, no immediate.
    const EXIT: [[u8; 8]; 1] = [[0x95, 0, 0, 0, 0, 0, 0, 0]];
    let (result, log) = load_raw_tracepoint(&EXIT);
    let error = match result {
        Err(error) => error,
        Ok(()) => io::Error::other("the kernel accepted a program its verifier should refuse"),
    };
    (error, log)
}

/// Whether the verifier lets a raw tracepoint program call
/// `bpf_probe_read_kernel`: `Ok(false)` when it refuses the helper, as kernel
/// lockdown's confidentiality mode makes it; an error when no program could
/// be loaded at all (not root, or `bpf()` blocked).
pub fn probe_read_kernel_allowed() -> io::Result<bool> {
    // r1 = r10; r1 += -8; r2 = 8; r3 = 0; call bpf_probe_read_kernel (113); r0 = 0; exit
    const PROGRAM: [[u8; 8]; 7] = [
        [0xbf, 0xa1, 0, 0, 0, 0, 0, 0],
        [0x07, 0x01, 0, 0, 0xf8, 0xff, 0xff, 0xff],
        [0xb7, 0x02, 0, 0, 8, 0, 0, 0],
        [0xb7, 0x03, 0, 0, 0, 0, 0, 0],
        [0x85, 0x00, 0, 0, 113, 0, 0, 0],
        [0xb7, 0x00, 0, 0, 0, 0, 0, 0],
        [0x95, 0x00, 0, 0, 0, 0, 0, 0],
    ];
    match load_raw_tracepoint(&PROGRAM) {
        (Ok(()), _) => Ok(true),
        (Err(err), log) if err.raw_os_error() == Some(libc::EINVAL) && log.contains("func") => {
            Ok(false)
        }
        (Err(err), _) => Err(err),
    }
}

/// Loads `insns` as a GPL raw tracepoint program, and closes it; returns the
/// verifier's log with the outcome.
fn load_raw_tracepoint(insns: &[[u8; 8]]) -> (io::Result<()>, String) {
    // From <linux/bpf.h>.
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
    let mut log = vec![0u8; 64 * 1024];
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_RAW_TRACEPOINT,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
    };
    // SAFETY: the attr points at instructions, a license and a log buffer
    // that outlive the call, with the sizes it gives.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw const attr,
            size_of::<ProgLoadAttr>(),
        )
    };
    let result = if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: the kernel just returned this fd, and nothing else holds it.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ret as i32) });
        Ok(())
    };
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    (result, String::from_utf8_lossy(&log[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_the_reason_without_the_statistics() {
        let log = "func#0 @0\n0: R1=ctx() R10=fp0\n0: (95) exit\nR0 !read_ok\n\
                   processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n";
        assert_eq!(
            summary(log),
            "0: R1=ctx() R10=fp0 / 0: (95) exit / R0 !read_ok"
        );
    }

    #[test]
    fn a_huge_log_makes_a_short_summary_of_its_end() {
        let mut log = "0: (b7) r0 = 0\n".repeat(100_000);
        log.push_str(&format!(
            "{}\ninvalid access to map value\n",
            "x".repeat(1000)
        ));
        let summary = summary(&log);
        assert!(summary.chars().count() <= SUMMARY_CHARS + 1, "{summary}");
        assert!(summary.starts_with('…'), "{summary}");
        assert!(
            summary.ends_with("invalid access to map value"),
            "{summary}"
        );
    }

    #[test]
    fn this_kernel_lets_programs_read_kernel_memory() {
        if !nix::unistd::geteuid().is_root() && std::env::var_os("CI").is_none() {
            return; // Loading a program needs root.
        }
        // Neither this machine nor CI's runs lockdown's confidentiality mode.
        assert!(probe_read_kernel_allowed().unwrap());
    }

    #[test]
    fn an_empty_log_says_so() {
        assert_eq!(summary(""), "the verifier gave no reason");
        assert_eq!(
            summary("processed 0 insns\n\n"),
            "the verifier gave no reason"
        );
    }
}
