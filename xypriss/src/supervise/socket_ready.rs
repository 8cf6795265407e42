//! `--ready socket`: a worker is ready once it waits for connections on the
//! shared listening socket.
//!
//! A connection to the shared socket says nothing about one worker: the kernel
//! queues it for whichever worker accepts first, and during a rolling restart
//! that is the old one. So readiness is read from the worker itself: a thread
//! blocked in `accept` on the socket, or in `epoll_wait` on an epoll set that
//! holds it (libuv, Go, nginx…), or in `poll` over it (Python's socketserver).
//! `/proc/<pid>/task/*/syscall` names the blocking call and its arguments;
//! epoll sets are listed in `/proc/<pid>/fdinfo`, and a `poll` array is read
//! from `/proc/<pid>/mem`. Sockets are matched by inode, so a worker that
//! duplicated its fd is still seen. Reading another process's `syscall` and
//! `mem` needs the rights of a tracer: xypriss has them as root.

use std::{collections::BTreeSet, fs, os::unix::fs::FileExt as _};

/// Whether process `pid` waits for connections on a socket with one of
/// `inodes` (the listening sockets' inodes).
pub fn waiting_on(pid: u32, inodes: &BTreeSet<u64>) -> bool {
    let listening = listening_fds(pid, inodes);
    if listening.is_empty() {
        return false;
    }
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).any(|task| {
        fs::read_to_string(task.path().join("syscall"))
            .ok()
            .and_then(|line| Blocked::parse(&line))
            .is_some_and(|blocked| blocked.waits_on(pid, &listening))
    })
}

/// The worker's fd numbers that are the listening sockets.
fn listening_fds(pid: u32, inodes: &BTreeSet<u64>) -> BTreeSet<i64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    fds.filter_map(Result::ok)
        .filter(|fd| {
            fs::read_link(fd.path()).is_ok_and(|target| {
                socket_inode(&target.to_string_lossy()).is_some_and(|ino| inodes.contains(&ino))
            })
        })
        .filter_map(|fd| fd.file_name().to_str()?.parse().ok())
        .collect()
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// A thread's blocking system call, from `/proc/<pid>/task/<tid>/syscall`.
#[derive(Debug, PartialEq, Eq)]
struct Blocked {
    nr: i64,
    args: Vec<u64>,
}

impl Blocked {
    /// `"43 0x3 0x0 0x0 …"`; "running" and "-1 …" (not in a call) are `None`.
    fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let nr: i64 = words.next()?.parse().ok()?;
        if nr < 0 {
            return None;
        }
        let args = words
            .take(6)
            .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(Self { nr, args })
    }

    fn waits_on(&self, pid: u32, listening: &BTreeSet<i64>) -> bool {
        let arg = |i: usize| self.args.get(i).copied().unwrap_or(0);
        match self.nr {
            libc::SYS_accept | libc::SYS_accept4 => listening.contains(&(arg(0) as i64)),
            libc::SYS_epoll_wait | libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 => {
                epoll_targets(pid, arg(0))
                    .iter()
                    .any(|fd| listening.contains(fd))
            }
            libc::SYS_poll | libc::SYS_ppoll => poll_fds(pid, arg(0), arg(1))
                .iter()
                .any(|fd| listening.contains(fd)),
            _ => false,
        }
    }
}

/// The fds in epoll set `epfd` of `pid`: its fdinfo's `tfd:` lines.
fn epoll_targets(pid: u32, epfd: u64) -> Vec<i64> {
    fs::read_to_string(format!("/proc/{pid}/fdinfo/{epfd}"))
        .map(|info| parse_epoll_fdinfo(&info))
        .unwrap_or_default()
}

fn parse_epoll_fdinfo(info: &str) -> Vec<i64> {
    info.lines()
        .filter_map(|line| line.trim().strip_prefix("tfd:"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The fds of the `struct pollfd` array at `address` (`count` of them) in `pid`.
fn poll_fds(pid: u32, address: u64, count: u64) -> Vec<i64> {
    const MAX: u64 = 1024;
    let count = count.min(MAX) as usize;
    let mut bytes = vec![0u8; count * 8];
    let Ok(mem) = fs::File::open(format!("/proc/{pid}/mem")) else {
        return Vec::new();
    };
    if mem.read_exact_at(&mut bytes, address).is_err() {
        return Vec::new();
    }
    parse_pollfds(&bytes)
}

/// `struct pollfd { int fd; short events; short revents; }`, native endian.
fn parse_pollfds(bytes: &[u8]) -> Vec<i64> {
    bytes
        .as_chunks::<8>()
        .0
        .iter()
        .map(|c| i64::from(i32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blocking_calls() {
        let accept = Blocked::parse("43 0x3 0x7ffd1 0x7ffd2 0x0 0x0 0x0 0x7ffd3 0x7f01").unwrap();
        assert_eq!(accept.nr, libc::SYS_accept);
        assert_eq!(accept.args[0], 3);
        assert_eq!(Blocked::parse("running"), None);
        assert_eq!(Blocked::parse("-1 0x7ffd 0x7f01"), None);
        assert_eq!(Blocked::parse(""), None);
        assert!(accept.waits_on(0, &BTreeSet::from([3])));
        assert!(!accept.waits_on(0, &BTreeSet::from([4])));
    }

    #[test]
    fn reads_epoll_sets_and_poll_arrays() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
                    tfd:        3 events:       19 data:                3  pos:0 ino:5e1 sdev:8\n\
                    tfd:        7 events:       19 data:                7  pos:0 ino:5e2 sdev:8\n";
        assert_eq!(parse_epoll_fdinfo(info), [3, 7]);
        let mut bytes = Vec::new();
        for fd in [5i32, 3] {
            bytes.extend_from_slice(&fd.to_ne_bytes());
            bytes.extend_from_slice(&[1, 0, 0, 0]);
        }
        assert_eq!(parse_pollfds(&bytes), [5, 3]);
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
    }

    #[test]
    fn sees_a_real_process_blocked_in_accept() {
        use std::{net::TcpListener, os::fd::AsRawFd as _, thread, time::Duration};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = {
            let link = fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
            socket_inode(&link.to_string_lossy()).unwrap()
        };
        let inodes = BTreeSet::from([inode]);
        let me = std::process::id();
        // Only other threads block here, and only once started.
        let before = waiting_on(me, &inodes);
        let accepting = listener.try_clone().unwrap();
        thread::spawn(move || {
            let _ = accepting.accept();
        });
        let seen = (0..100).any(|_| {
            thread::sleep(Duration::from_millis(10));
            waiting_on(me, &inodes)
        });
        assert!(!before, "seen waiting before any thread accepted");
        assert!(seen, "a thread blocked in accept was not seen");
    }
}
