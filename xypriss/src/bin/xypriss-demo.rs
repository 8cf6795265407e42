//! xypriss-demo: a worker whose memory does something visible, for the README's
//! first command, the tests and the benchmarks.
//!
//! Modes (the first argument):
//! - `leak` (the default): a 32 MiB baseline, a request-like sawtooth, and a
//!   slow leak of `--leak` KiB/s (default 1024).
//! - `steps MIB…`: touches memory up (or unmaps it down) to each size in turn,
//!   printing `at N MiB` when there and waiting for SIGUSR1 to go on. It
//!   sends `READY=1` to `NOTIFY_SOCKET`, when set, once at its first size, and
//!   prints `control: LINE` for each line read on `XYPRISS_CONTROL_FD`.
//! - `fork MIB`: forks a child that holds MIB, printing `child PID at N MiB`.
//! - `grow MIB_PER_S`: allocates at that rate until stopped or killed, and
//!   prints `control: LINE` for each line read on `XYPRISS_CONTROL_FD`.
//! - `oscillate LOW_MIB HIGH_MIB`: goes up to HIGH and down to LOW, again and
//!   again, pausing 2 ms at each end (for threshold-latency benchmarks).
//! - `pattern NAME`: a memory pattern for the leak-detection benchmark, on a
//!   100 MiB baseline, until stopped: `leak1m` (1 MiB/s), `leak100k`
//!   (100 KiB/s), `warmup` (a cache filling to +64 MiB, then holding),
//!   `sawtooth` (+24 MiB and back every 4 s, as a garbage collector),
//!   `step` (+64 MiB once, after 30 s), `churn` (1 to 64 MiB held for a
//!   few milliseconds, again and again) or `cache` (a cache filling at
//!   4 MiB/s for 20 s, then churning: 4 MiB/s of garbage, collected every
//!   16 s).
//! - `exit CODE [AFTER_MS]`: exits with CODE, at once or after AFTER_MS.
//! - `crash segv|abort [AFTER_MS]`: dies of a real segmentation fault (a
//!   write to a page mapped without access) or of `abort()`, at once or
//!   after AFTER_MS, without a core dump.
//! - `daemon [exit]`: starts a daemon (a grandchild in a session of its own,
//!   as a double fork makes), prints `daemon PID`, and waits; with `exit`,
//!   exits (status 0) once the daemon is started, leaving it behind.
//! - `stubborn`: ignores SIGTERM and SIGINT (for kill-timeout tests).
//! - `spin`: keeps one core busy until stopped (for load-driven scaling).
//! - `mixed`: what a soak's pool does, chosen by `XYPRISS_WORKER_ID` mod 4:
//!   0 leaks 12 MiB/s (up to its limit, and its replacement), 1 holds 32 MiB,
//!   2 exits with status 1 after 10 s (a crash), 3 takes 64 MiB for a second
//!   every 5 s (bursts).
//! - `faultbench MIB ROUNDS`: times the first touch of MIB, ROUNDS times, and
//!   prints the nanoseconds per page fault of the first (cold) round and the
//!   median of the others (warm). The time is the thread's CPU time (user and
//!   system, the faults and the BPF programs they run included), so that
//!   other processes sharing the CPUs do not count as fault time.
//!
//! Memory is mapped in 1 MiB chunks and every page is written, so it is
//! resident at once; SIGTERM or SIGINT ends the process with status 0.

use std::{
    num::NonZeroUsize,
    process::ExitCode,
    ptr::NonNull,
    thread::sleep,
    time::{Duration, Instant},
};

use nix::{
    libc,
    sys::{
        mman::{MapFlags, ProtFlags, mmap_anonymous, munmap},
        signal::{SigSet, SigmaskHow, Signal, sigprocmask},
    },
    unistd::{ForkResult, fork},
};

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

/// Resident memory in 1 MiB mappings.
#[derive(Default)]
struct Heap(Vec<NonNull<libc::c_void>>);

impl Heap {
    fn mib(&self) -> usize {
        self.0.len()
    }

    fn grow(&mut self) {
        let len = NonZeroUsize::new(MIB).expect("non-zero");
        // SAFETY: a fresh anonymous private mapping aliases nothing.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        }
        .expect("mmap of 1 MiB");
        let bytes = ptr.cast::<u8>().as_ptr();
        for page in (0..MIB).step_by(PAGE) {
            // SAFETY: within the mapping just made.
            unsafe { bytes.add(page).write_volatile(1) };
        }
        self.0.push(ptr);
    }

    fn shrink(&mut self) {
        if let Some(ptr) = self.0.pop() {
            // SAFETY: a mapping this heap made, unmapped once.
            unsafe { munmap(ptr, MIB) }.expect("munmap");
        }
    }

    fn resize(&mut self, mib: usize) {
        while self.mib() < mib {
            self.grow();
        }
        while self.mib() > mib {
            self.shrink();
        }
    }
}

/// Signals the demo handles itself, blocked so that they queue.
fn blocked_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1] {
        set.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).expect("sigprocmask");
    set
}

/// The next queued signal within `timeout`, if any.
fn next_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: valid set and timespec; no siginfo wanted.
    let signo = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    Signal::try_from(signo).ok()
}

fn parse<T: std::str::FromStr>(arg: Option<&String>, what: &str) -> Result<T, String> {
    let arg = arg.ok_or_else(|| format!("missing {what}"))?;
    arg.parse()
        .map_err(|_| format!("{what}: `{arg}` is not a number"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let signals = blocked_signals();
    let result = match args.first().map(String::as_str) {
        None | Some("leak") => leak(&args, &signals),
        Some("steps") => steps(&args[1..], &signals),
        Some("fork") => parse(args.get(1), "MIB").map(|mib| fork_child(mib, &signals)),
        Some("grow") => parse(args.get(1), "MIB_PER_S").map(|rate| grow(rate, &signals)),
        Some("oscillate") => parse(args.get(1), "LOW_MIB").and_then(|low| {
            parse(args.get(2), "HIGH_MIB").map(|high| oscillate(low, high, &signals))
        }),
        Some("faultbench") => parse(args.get(1), "MIB")
            .and_then(|mib| parse(args.get(2), "ROUNDS").map(|rounds| faultbench(mib, rounds))),
        Some("pattern") => match args.get(1).map(String::as_str) {
            Some(
                name @ ("leak1m" | "leak100k" | "warmup" | "sawtooth" | "step" | "churn" | "cache"),
            ) => {
                pattern(name, &signals);
                Ok(())
            }
            other => Err(format!(
                "pattern {other:?}: leak1m, leak100k, warmup, sawtooth, step, churn or cache"
            )),
        },
        Some("exit") => parse::<u8>(args.get(1), "CODE").and_then(|code| {
            let after = if args.len() > 2 {
                parse(args.get(2), "AFTER_MS")?
            } else {
                0
            };
            sleep(Duration::from_millis(after));
            std::process::exit(i32::from(code))
        }),
        Some("crash") => {
            let after = if args.len() > 2 {
                parse(args.get(2), "AFTER_MS")
            } else {
                Ok(0)
            };
            after.and_then(|after| {
                sleep(Duration::from_millis(after));
                crash(args.get(1).map(String::as_str))
            })
        }
        Some("mixed") => {
            mixed(&signals);
            Ok(())
        }
        Some("daemon") => match args.get(1).map(String::as_str) {
            None => {
                daemon(&signals, false);
                Ok(())
            }
            Some("exit") => {
                daemon(&signals, true);
                Ok(())
            }
            Some(other) => Err(format!("daemon {other:?}: only `exit` may follow")),
        },
        Some("spin") => {
            println!("spinning");
            while !stopping(next_signal(&signals, Duration::ZERO)) {
                let until = Instant::now() + Duration::from_millis(50);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            Ok(())
        }
        Some("stubborn") => {
            println!("ignoring SIGTERM and SIGINT");
            loop {
                let _ = next_signal(&signals, Duration::from_secs(3600));
            }
        }
        Some(other) => Err(format!(
            "unknown mode `{other}`: leak, steps, fork, grow, oscillate, pattern, exit, crash, daemon, stubborn, spin, mixed or faultbench"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xypriss-demo: {err}");
            ExitCode::from(2)
        }
    }
}

fn stopping(signal: Option<Signal>) -> bool {
    matches!(signal, Some(Signal::SIGTERM | Signal::SIGINT))
}

fn leak(args: &[String], signals: &SigSet) -> Result<(), String> {
    let leak_kib: usize = match args.iter().position(|a| a == "--leak") {
        Some(i) => parse(args.get(i + 1), "--leak")?,
        None => 1024,
    };
    let worker = std::env::var("XYPRISS_WORKER_ID").unwrap_or_else(|_| "-".into());
    println!("demo worker {worker}: 32 MiB baseline, request sawtooth, leaking {leak_kib} KiB/s");
    let mut baseline = Heap::default();
    baseline.resize(32);
    let mut leaked: Vec<Vec<u8>> = Vec::new();
    let mut requests = Heap::default();
    let start = Instant::now();
    let mut tick: u64 = 0;
    loop {
        if stopping(next_signal(signals, Duration::from_millis(100))) {
            println!("demo worker {worker}: stopping");
            return Ok(());
        }
        tick += 1;
        // Requests: buffers pile up for a second, then are freed (a GC-like sawtooth).
        if tick.is_multiple_of(10) {
            requests.resize(0);
        } else {
            requests.grow();
        }
        // The leak: a tenth of the rate every 100 ms, written so it is resident.
        leaked.push(vec![1u8; leak_kib * 1024 / 10]);
        if tick.is_multiple_of(50) {
            let kib: usize = leaked.iter().map(Vec::len).sum::<usize>() / 1024;
            println!(
                "demo worker {worker}: {}s up, {kib} KiB leaked",
                start.elapsed().as_secs()
            );
        }
    }
}

fn steps(targets: &[String], signals: &SigSet) -> Result<(), String> {
    let targets: Vec<usize> = targets
        .iter()
        .map(|t| parse(Some(t), "MIB"))
        .collect::<Result<_, _>>()?;
    print_control_lines();
    let mut heap = Heap::default();
    for (i, target) in targets.into_iter().enumerate() {
        heap.resize(target);
        println!("at {target} MiB");
        if i == 0 {
            notify_ready();
        }
        loop {
            match next_signal(signals, Duration::from_secs(3600)) {
                Some(Signal::SIGUSR1) => break,
                s if stopping(s) => return Ok(()),
                _ => {}
            }
        }
    }
    println!("done");
    while !stopping(next_signal(signals, Duration::from_secs(3600))) {}
    Ok(())
}

fn fork_child(mib: usize, signals: &SigSet) {
    // SAFETY: single-threaded here; the child only allocates and waits.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let mut heap = Heap::default();
            heap.resize(mib);
            println!("child {} at {mib} MiB", std::process::id());
            while !stopping(next_signal(signals, Duration::from_secs(3600))) {}
        }
        ForkResult::Parent { child } => {
            while !stopping(next_signal(signals, Duration::from_secs(3600))) {}
            let _ = nix::sys::signal::kill(child, Signal::SIGTERM);
            let _ = nix::sys::wait::waitpid(child, None);
        }
    }
}

fn grow(mib_per_s: u64, signals: &SigSet) {
    print_control_lines();
    let mut heap = Heap::default();
    let start = Instant::now();
    loop {
        let due = (start.elapsed().as_secs_f64() * mib_per_s as f64) as usize;
        while heap.mib() < due {
            heap.grow();
        }
        if stopping(next_signal(signals, Duration::from_millis(1))) {
            return;
        }
        if mib_per_s == 0 {
            sleep(Duration::from_millis(100));
        }
    }
}

fn oscillate(low: usize, high: usize, signals: &SigSet) {
    let mut heap = Heap::default();
    loop {
        for target in [high, low] {
            heap.resize(target);
            if stopping(next_signal(signals, Duration::from_millis(2))) {
                return;
            }
        }
    }
}

fn faultbench(mib: usize, rounds: usize) {
    let faults = (mib * MIB / PAGE) as f64;
    let mut heap = Heap::default();
    let mut per_fault: Vec<f64> = (0..rounds.max(2))
        .map(|_| {
            let start = thread_cpu_ns();
            heap.resize(mib);
            let ns = (thread_cpu_ns() - start) as f64 / faults;
            heap.resize(0);
            ns
        })
        .collect();
    let cold = per_fault.remove(0);
    per_fault.sort_by(f64::total_cmp);
    let warm = per_fault[per_fault.len() / 2];
    println!(
        "faultbench mib={mib} rounds={rounds} cold_ns_per_fault={cold:.1} warm_ns_per_fault={warm:.1}"
    );
}

/// The calling thread's CPU time, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("CLOCK_THREAD_CPUTIME_ID");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Dies of `how`: `segv` or `abort`. Returns only to say `how` is neither.
fn crash(how: Option<&str>) -> Result<(), String> {
    // A crash on purpose leaves no core file behind.
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        .map_err(|e| format!("RLIMIT_CORE: {e}"))?;
    match how {
        Some("segv") => {
            let len = NonZeroUsize::new(PAGE).expect("non-zero");
            // SAFETY: a fresh anonymous mapping aliases nothing.
            let page =
                unsafe { mmap_anonymous(None, len, ProtFlags::PROT_NONE, MapFlags::MAP_PRIVATE) }
                    .map_err(|e| format!("mmap: {e}"))?;
            println!("crashing: SIGSEGV");
            // SAFETY: a mapped page; writing it faults, by design, and the
            // kernel kills the process with SIGSEGV.
            unsafe { page.cast::<u8>().as_ptr().write_volatile(1) };
            Err("the write to a page without access did not fault".into())
        }
        Some("abort") => {
            println!("crashing: SIGABRT");
            std::process::abort()
        }
        other => Err(format!("crash {other:?}: segv or abort")),
    }
}

fn daemon(signals: &SigSet, exit: bool) {
    // SAFETY: single-threaded here; the children only call setsid, fork, write and wait.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let _ = nix::unistd::setsid();
            match unsafe { fork() }.expect("fork") {
                ForkResult::Child => loop {
                    let _ = next_signal(signals, Duration::from_secs(3600));
                },
                // Said before the worker can exit, so that the line is out
                // even if the daemon is killed with it at once.
                ForkResult::Parent { child } => {
                    println!("daemon {child}");
                    std::process::exit(0);
                }
            }
        }
        ForkResult::Parent { child } => {
            let _ = nix::sys::wait::waitpid(child, None);
            if exit {
                return;
            }
            while !stopping(next_signal(signals, Duration::from_secs(3600))) {}
        }
    }
}

/// systemd's notify protocol: one datagram to NOTIFY_SOCKET.
fn notify_ready() {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET")
        && let Ok(socket) = std::os::unix::net::UnixDatagram::unbound()
        && let Err(err) = socket.send_to(b"READY=1", &path)
    {
        eprintln!("xypriss-demo: READY=1 to {}: {err}", path.to_string_lossy());
    }
}

/// Prints each line xypriss sends on the control channel, from a thread.
fn print_control_lines() {
    use std::{
        io::{BufRead as _, BufReader},
        os::fd::FromRawFd as _,
    };
    let Some(fd) = std::env::var("XYPRISS_CONTROL_FD")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: xypriss hands this fd to the worker, which owns it from then on.
    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            println!("control: {line}");
        }
    });
}

/// The leak-detection benchmark's patterns; see the module header.
fn mixed(signals: &SigSet) {
    let id: u32 = std::env::var("XYPRISS_WORKER_ID")
        .ok()
        .and_then(|id| id.parse().ok())
        .unwrap_or(0);
    let role = ["leak", "steady", "crash", "bursts"][id as usize % 4];
    println!("mixed worker {id}: {role}");
    let mut heap = Heap::default();
    heap.resize(32);
    let start = Instant::now();
    loop {
        let t = start.elapsed().as_secs_f64();
        match role {
            "leak" => heap.resize(32 + (t * 12.0) as usize),
            "crash" if t >= 10.0 => std::process::exit(1),
            "bursts" => heap.resize(if t % 5.0 < 1.0 { 96 } else { 32 }),
            _ => {}
        }
        if stopping(next_signal(signals, Duration::from_millis(50))) {
            return;
        }
    }
}

fn pattern(name: &str, signals: &SigSet) {
    println!("pattern {name}");
    let mut base = Heap::default();
    base.resize(100);
    let mut extra = Heap::default();
    // Sub-MiB leaks accumulate in small heap blocks.
    let mut leaked: Vec<Vec<u8>> = Vec::new();
    let start = Instant::now();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    loop {
        let t = start.elapsed().as_secs_f64();
        match name {
            "leak1m" => extra.resize(t as usize),
            "leak100k" => {
                let due = (t * 100.0) as usize;
                while leaked.len() < due {
                    leaked.push(vec![1u8; 1024]);
                }
            }
            "warmup" => extra.resize((64.0 * (1.0 - (-t / 5.0).exp())) as usize),
            "sawtooth" => extra.resize(((t % 4.0) / 4.0 * 24.0) as usize),
            "step" => extra.resize(if t >= 30.0 { 64 } else { 0 }),
            // A cache filling at 4 MiB/s for 20 s, then churning: garbage
            // piling up at 4 MiB/s, collected every 16 s.
            "cache" => {
                extra.resize((4.0 * t.min(20.0) + 4.0 * ((t - 20.0).max(0.0) % 16.0)) as usize)
            }
            _ => {
                // churn: xorshift sizes from 1 to 64 MiB, held briefly.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                extra.resize(1 + (rng % 64) as usize);
                extra.resize(0);
            }
        }
        if stopping(next_signal(signals, Duration::from_millis(10))) {
            return;
        }
    }
}
