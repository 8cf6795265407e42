//! The fault soak's attackers: a local user's notify flood, and slow HTTP
//! clients from a loopback address of their own.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::{Value, json};

/// Sends READY=1 to `socket` as fast as it can until SIGTERM, as `uid`
/// (through setpriv, with no capability and no group) or as root; prints,
/// as JSON, how many datagrams went and the errors of those refused, by name.
pub(super) fn notify_flooder(socket: &Path, uid: Option<u32>) -> Result<Child> {
    let mut command = match uid {
        Some(uid) => {
            let mut setpriv = Command::new("setpriv");
            setpriv.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--inh-caps=-all",
                "/usr/bin/python3",
            ]);
            setpriv
        }
        None => Command::new("/usr/bin/python3"),
    };
    command
        .args([
            "-c",
            "import errno, json, signal, socket, sys\n\
             sent, refused = 0, {}\n\
             def done(*_):\n\
             \x20   print(json.dumps({'sent': sent, 'refused': refused}), flush=True); sys.exit(0)\n\
             signal.signal(signal.SIGTERM, done)\n\
             s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
             while True:\n\
             \x20   try:\n\
             \x20       s.sendto(b'READY=1\\nSTATUS=flood', sys.argv[1]); sent += 1\n\
             \x20   except OSError as e:\n\
             \x20       name = errno.errorcode.get(e.errno, str(e.errno))\n\
             \x20       refused[name] = refused.get(name, 0) + 1\n",
        ])
        .arg(socket)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting a notify flooder")
}

/// Stops a flooder; what it printed.
pub(super) fn stop_flooder(mut flooder: Child) -> Value {
    let _ = kill(Pid::from_raw(flooder.id() as i32), Signal::SIGTERM);
    let mut out = String::new();
    if let Some(mut stdout) = flooder.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    let _ = flooder.wait();
    serde_json::from_str(out.trim()).unwrap_or(Value::Null)
}

/// Where the slow clients connect from: a loopback address of its own,
/// so that the per-peer cap they meet is theirs, not the polite client's.
const SLOW_PEER: [u8; 4] = [127, 0, 0, 2];
/// Slow clients: more than one peer may hold (the server's `PER_PEER`, 16).
pub(super) const SLOW_CLIENTS: usize = 20;
/// Connections one peer may hold (xypriss's `api::limits::PER_PEER`).
pub(super) const PER_PEER: u64 = 16;
/// The longest a connection may last: the deadline (60 s), the answer in
/// progress's grace (5 s), and slack for a loaded machine.
pub(super) const LONGEST_CONNECTION_SECS: f64 = 80.0;

/// A TCP connection to `address` from `from`.
fn connect_from(from: [u8; 4], address: SocketAddr) -> Result<TcpStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let SocketAddr::V4(v4) = address else {
        bail!("{address}: not IPv4");
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let [a, b, c, d] = from;
    bind(fd.as_raw_fd(), &SockaddrIn::new(a, b, c, d, 0))?;
    let [a, b, c, d] = v4.ip().octets();
    connect(fd.as_raw_fd(), &SockaddrIn::new(a, b, c, d, v4.port()))?;
    Ok(TcpStream::from(fd))
}

/// [`SLOW_CLIENTS`] clients from [`SLOW_PEER`] that connect at once; those
/// the server admits pipeline GETs and never read. Returns how many were
/// admitted and refused (told 429 at once), and when the server closed
/// each admitted one.
pub(super) fn slow_clients(address: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<Value> {
    thread::spawn(move || {
        let opened = Instant::now();
        let streams: Vec<TcpStream> = (0..SLOW_CLIENTS)
            .filter_map(|_| connect_from(SLOW_PEER, address).ok())
            .collect();
        // A refused connection has its 429 waiting; an admitted one has
        // nothing until it asks. Peeked, not read.
        thread::sleep(Duration::from_secs(1));
        let mut head = [0u8; 12];
        let (mut admitted, mut refused, mut other) = (Vec::new(), 0u64, 0u64);
        for stream in streams {
            let _ = stream.set_nonblocking(true);
            match stream.peek(&mut head) {
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                    admitted.push((stream, None));
                }
                Ok(12) if &head == b"HTTP/1.1 429" => refused += 1,
                _ => other += 1,
            }
        }
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n");
        let mut written = 0u64;
        while !stop.load(Ordering::Relaxed) && admitted.iter().any(|(_, closed)| closed.is_none()) {
            for (stream, closed) in &mut admitted {
                if closed.is_some() {
                    continue;
                }
                match stream.write_all(request.as_bytes()) {
                    Ok(()) => written += 1,
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => *closed = Some(opened.elapsed().as_secs_f64()),
                }
            }
            thread::sleep(Duration::from_millis(200));
        }
        let closed: Vec<f64> = admitted.iter().filter_map(|(_, c)| *c).collect();
        // Its slots given back, the peer is served again.
        let served_after = connect_from(SLOW_PEER, address)
            .and_then(|stream| crate::soak::get_on(stream, address, "/metrics"));
        json!({
            "clients": SLOW_CLIENTS,
            "admitted": admitted.len(),
            "refused429": refused,
            "otherwise": other,
            "requestsWritten": written,
            "closedByServer": closed.len(),
            "closedAfterS": {
                "min": closed.iter().copied().fold(f64::NAN, f64::min),
                "max": closed.iter().copied().fold(f64::NAN, f64::max),
            },
            "servedAgainAfter": served_after.map_or_else(|err| json!(err.to_string()), |code| json!(code)),
        })
    })
}
