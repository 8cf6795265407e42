//! What keeps one client of the status server from taking it from the
//! others, and what keeps a web page elsewhere from reading it.
//!
//! Every connection holds one of the server's slots, so each is bounded in
//! time twice: a write that makes no progress for [`WRITE_STALL`] (a client
//! that sends requests and never reads the answers; its socket's send buffer
//! is kept to [`SEND_BUFFER`], so that it fills soon, and holds little of the
//! kernel's memory meanwhile) ends the connection, and
//! so does [`CONNECTION_DEADLINE`] after it opened (after its answer in
//! progress). A peer address holds at most [`PER_PEER`] connections, so one
//! client cannot take every slot even for that long. An event stream
//! (`/events`) is meant to last: it is spared the deadline, but not the
//! write stall, and its keep-alive comments make a reader that left show.
//!
//! A server bound to loopback is reachable from every browser on the host,
//! and a page of any site can point a name of its own at 127.0.0.1 (DNS
//! rebinding) and read the answers as same-origin. The browser still sends
//! that name in `Host`, so such a server answers only requests naming it
//! by a loopback address or `localhost`.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use axum::http::uri::Authority;

/// Connections one peer address may hold at once. A browser opens at most
/// six to a host, Prometheus one.
pub const PER_PEER: usize = 16;

/// How long a connection may last (an event stream excepted): then it is
/// closed once its answer in progress is written.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);

/// How long the answer in progress has, after the deadline.
pub const GRACE: Duration = Duration::from_secs(5);

/// How long a write may make no progress before the connection is closed.
pub const WRITE_STALL: Duration = Duration::from_secs(10);

/// The send buffer of each connection's socket (the kernel doubles it for
/// its bookkeeping); an answer is a few KiB, and loopback autotuning would
/// otherwise let each connection queue up to `tcp_wmem`'s 4 MiB.
pub const SEND_BUFFER: usize = 64 * 1024;

/// The connections each peer address holds.
#[derive(Debug, Default)]
pub struct Peers(HashMap<IpAddr, usize>);

impl Peers {
    /// Counts a connection from `ip`, unless it holds [`PER_PEER`] already.
    pub fn admit(&mut self, ip: IpAddr) -> bool {
        let held = self.0.entry(canonical(ip)).or_default();
        if *held >= PER_PEER {
            return false;
        }
        *held += 1;
        true
    }

    /// A connection from `ip` ended.
    pub fn release(&mut self, ip: IpAddr) {
        let ip = canonical(ip);
        if let Some(held) = self.0.get_mut(&ip) {
            *held -= 1;
            if *held == 0 {
                self.0.remove(&ip);
            }
        }
    }
}

/// An IPv4 client of a dual-stack listener is the same peer as over IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Which `Host` headers the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hosts {
    /// Bound off loopback: the names it is reached by are the operator's.
    Any,
    /// Bound to loopback: `localhost` and loopback addresses only.
    Loopback,
}

impl Hosts {
    /// What a server bound to `address` answers.
    pub fn for_address(address: SocketAddr) -> Self {
        if address.ip().is_loopback() {
            Self::Loopback
        } else {
            Self::Any
        }
    }

    /// Whether a request with this `Host` header is answered. A request
    /// without one does not come from a browser, and is.
    pub fn allow(self, host: Option<&str>) -> bool {
        match (self, host) {
            (Self::Any, _) | (Self::Loopback, None) => true,
            (Self::Loopback, Some(host)) => is_loopback_name(host),
        }
    }
}

/// `localhost` or a loopback address, with or without a port.
fn is_loopback_name(host: &str) -> bool {
    let Ok(authority) = host.parse::<Authority>() else {
        return false;
    };
    if authority.as_str().contains('@') {
        return false;
    }
    let name = authority.host();
    let port = &authority.as_str()[name.len()..];
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !port_ok {
        return false;
    }
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let literal = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    literal.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_holds_at_most_its_share_and_gets_it_back() {
        let mut peers = Peers::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        for _ in 0..PER_PEER {
            assert!(peers.admit(a));
        }
        assert!(!peers.admit(a));
        assert!(
            !peers.admit("::ffff:127.0.0.2".parse().unwrap()),
            "the same peer over a dual-stack listener"
        );
        assert!(peers.admit(b), "another peer is not held up");
        peers.release(a);
        assert!(peers.admit(a));
        peers.release(b);
        assert!(
            !peers.0.contains_key(&b),
            "a peer with nothing is forgotten"
        );
    }

    #[test]
    fn loopback_answers_only_loopback_names() {
        let hosts = Hosts::for_address("127.0.0.1:9464".parse().unwrap());
        assert_eq!(hosts, Hosts::Loopback);
        for good in [
            "localhost",
            "LocalHost:9464",
            "127.0.0.1",
            "127.0.0.1:9464",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:9464",
        ] {
            assert!(hosts.allow(Some(good)), "{good}");
        }
        for bad in [
            "evil.example",
            "evil.example:9464",
            "localhost.evil.example",
            "10.0.0.1:9464",
            "user@localhost",
            "",
            "[::1",
            "127.0.0.1:notaport",
        ] {
            assert!(!hosts.allow(Some(bad)), "{bad}");
        }
        assert!(hosts.allow(None));
        let open = Hosts::for_address("0.0.0.0:9464".parse().unwrap());
        assert!(open.allow(Some("status.example:9464")));
        assert_eq!(
            Hosts::for_address("[::1]:9464".parse().unwrap()),
            Hosts::Loopback
        );
    }
}
