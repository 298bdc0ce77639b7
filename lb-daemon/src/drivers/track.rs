//! The `ha.track_ping` driver: runs core::track over raw ICMP and ICMPv6 sockets and
//! publishes whether every node is lost, which the failover tasks take as FAULT.

use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{now, sleep_until};
use crate::core::track::{Effect, Settings, Tracker};

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

/// Pings `nodes` until lbd ends; `fault` says whether all of them are lost.
pub async fn run(nodes: Vec<IpAddr>, fault: watch::Sender<bool>) {
    if let Err(e) = serve(nodes, &fault).await {
        // Without the tracker this director cannot tell it is cut off: say so, and stay
        // out of FAULT rather than give up the VIPs for a socket error.
        warn!(error = %format!("{e:#}"), "track_ping stopped: ping nodes are no longer watched");
    }
}

async fn serve(nodes: Vec<IpAddr>, fault: &watch::Sender<bool>) -> Result<()> {
    let v4 = nodes
        .iter()
        .any(IpAddr::is_ipv4)
        .then(|| open(Domain::IPV4, Protocol::ICMPV4))
        .transpose()?;
    let v6 = nodes
        .iter()
        .any(IpAddr::is_ipv6)
        .then(|| open(Domain::IPV6, Protocol::ICMPV6))
        .transpose()?;
    // The identifier of our echoes: other pings on the host get their own.
    let id = (std::process::id() & 0xffff) as u16;
    let mut tracker = Tracker::new(Settings::new(nodes.clone()), now());
    info!(?nodes, "track_ping running");
    loop {
        let wake = tracker.poll_timeout();
        let fx = tokio::select! {
            _ = sleep_until(wake) => tracker.handle_timeout(now()),
            Some(Ok((from, seq))) = recv(v4.as_ref(), id, false) => tracker.reply(from, seq),
            Some(Ok((from, seq))) = recv(v6.as_ref(), id, true) => tracker.reply(from, seq),
        };
        for e in fx {
            match e {
                Effect::Ping { node, seq } => {
                    let socket = if node.is_ipv4() { v4.as_ref() } else { v6.as_ref() };
                    if let Some(socket) = socket {
                        // A send that fails (no route) is an echo without a reply.
                        let _ = socket.get_ref().send_to(
                            &echo(node.is_ipv4(), id, seq),
                            &SockAddr::from(SocketAddr::new(node, 0)),
                        );
                    }
                }
                Effect::Fault(true) => {
                    warn!(lost = ?tracker.lost(), "every track_ping node is lost: FAULT");
                    fault.send_replace(true);
                }
                Effect::Fault(false) => {
                    info!("a track_ping node answers again");
                    fault.send_replace(false);
                }
            }
        }
    }
}

fn open(domain: Domain, protocol: Protocol) -> Result<AsyncFd<Socket>> {
    let socket =
        Socket::new(domain, Type::RAW, Some(protocol)).context("opening a raw ICMP socket")?;
    socket.set_nonblocking(true)?;
    // SAFETY: a Socket's descriptor stays open, and the same, while the AsyncFd owns it.
    unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ICMP socket: {e}"))
}

/// An echo request: type, code, checksum, identifier, sequence number, 8 bytes of payload.
/// The kernel fills in ICMPv6's checksum; ICMP's is ours.
fn echo(ipv4: bool, id: u16, seq: u16) -> Vec<u8> {
    let kind = if ipv4 { ECHO_REQUEST_V4 } else { ECHO_REQUEST_V6 };
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(b"lbd-ping");
    if ipv4 {
        let sum = checksum(&m);
        m[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    m
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The next echo reply of ours on `socket`: its sender and sequence number. Never ready
/// without a socket.
async fn recv(
    socket: Option<&AsyncFd<Socket>>,
    id: u16,
    ipv6: bool,
) -> Option<std::io::Result<(IpAddr, u16)>> {
    let socket = match socket {
        Some(s) => s,
        None => return std::future::pending().await,
    };
    loop {
        let mut guard = match socket.readable().await {
            Ok(g) => g,
            Err(e) => return Some(Err(e)),
        };
        let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
        let got = guard.try_io(|s| s.get_ref().recv_from(&mut buf));
        let Ok(result) = got else { continue };
        let (n, from) = match result {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        // SAFETY: recv_from initialised the first n bytes.
        let bytes: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
        let Some(from) = from.as_socket().map(|a| a.ip()) else { continue };
        if let Some(seq) = parse_reply(&bytes, id, ipv6) {
            return Some(Ok((from, seq)));
        }
    }
}

/// The sequence number of an echo reply with our identifier; an IPv4 raw socket hands
/// over the IP header too.
fn parse_reply(bytes: &[u8], id: u16, ipv6: bool) -> Option<u16> {
    let icmp = if ipv6 {
        bytes
    } else {
        let ihl = usize::from(bytes.first()? & 0x0f) * 4;
        bytes.get(ihl..)?
    };
    let reply = if ipv6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    if icmp.len() < 8 || icmp[0] != reply || u16::from_be_bytes([icmp[4], icmp[5]]) != id {
        return None;
    }
    Some(u16::from_be_bytes([icmp[6], icmp[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_request_checksums_to_zero_and_its_reply_is_read_back() {
        let m = echo(true, 0x1234, 7);
        assert_eq!(checksum(&m), 0, "a correct ICMP checksum sums to zero");
        // The reply as an IPv4 raw socket gives it: a 20-byte header, then ICMP.
        let mut reply = vec![0x45; 1];
        reply.extend_from_slice(&[0; 19]);
        reply.extend_from_slice(&[ECHO_REPLY_V4, 0, 0, 0, 0x12, 0x34, 0, 7]);
        assert_eq!(parse_reply(&reply, 0x1234, false), Some(7));
        assert_eq!(parse_reply(&reply, 0x9999, false), None, "another pinger's");
        assert_eq!(parse_reply(&reply[..24], 0x1234, false), None, "cut short");
        let v6 = [ECHO_REPLY_V6, 0, 0, 0, 0x12, 0x34, 0, 9];
        assert_eq!(parse_reply(&v6, 0x1234, true), Some(9));
        assert_eq!(parse_reply(&echo(false, 0x1234, 9), 0x1234, true), None, "a request");
    }
}
