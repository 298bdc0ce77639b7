//! Ping check: the real is up when it answers an ICMP (or ICMPv6) echo. Also the echo
//! requests and replies `ha.track_ping` sends and reads (drivers/track.rs): raw sockets,
//! the messages built and read here, the ICMPv6 checksum left to the kernel.

use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

pub async fn check(addr: IpAddr, from: Option<IpAddr>) -> Result<String, String> {
    let socket = open(addr.is_ipv4()).map_err(|e| format!("{e:#}"))?;
    if let Some(from) = from {
        let at = SockAddr::from(SocketAddr::new(from, 0));
        socket.get_ref().bind(&at).map_err(|e| format!("binding to {from}: {e}"))?;
    }
    // An identifier of this probe's own: replies to other pings are not its answer.
    let id = fastrand::u16(..);
    let request = echo(addr.is_ipv4(), id, 1);
    let to = SockAddr::from(SocketAddr::new(addr, 0));
    socket.get_ref().send_to(&request, &to).map_err(|e| format!("echo to {addr}: {e}"))?;
    loop {
        let (from, seq) =
            recv(&socket, id, addr.is_ipv6()).await.map_err(|e| format!("reading echoes: {e}"))?;
        if from == addr && seq == 1 {
            return Ok(format!("echo answered by {addr}"));
        }
    }
}

/// A raw ICMP (`ipv4`) or ICMPv6 socket, non-blocking, for tokio.
pub(crate) fn open(ipv4: bool) -> Result<AsyncFd<Socket>> {
    let (domain, protocol) =
        if ipv4 { (Domain::IPV4, Protocol::ICMPV4) } else { (Domain::IPV6, Protocol::ICMPV6) };
    let socket =
        Socket::new(domain, Type::RAW, Some(protocol)).context("opening a raw ICMP socket")?;
    socket.set_nonblocking(true)?;
    // SAFETY: a Socket's descriptor stays open, and the same, while the AsyncFd owns it.
    unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ICMP socket: {e}"))
}

/// The next echo reply with identifier `id` on `socket`: its sender and sequence number.
pub(crate) async fn recv(
    socket: &AsyncFd<Socket>,
    id: u16,
    ipv6: bool,
) -> std::io::Result<(IpAddr, u16)> {
    loop {
        let mut guard = socket.readable().await?;
        let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
        let Ok(result) = guard.try_io(|s| s.get_ref().recv_from(&mut buf)) else { continue };
        let (n, from) = result?;
        // SAFETY: recv_from initialised the first n bytes.
        let bytes: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
        let Some(from) = from.as_socket().map(|a| a.ip()) else { continue };
        if let Some(seq) = parse_reply(&bytes, id, ipv6) {
            return Ok((from, seq));
        }
    }
}

/// An echo request: type, code, checksum, identifier, sequence number, 8 bytes of payload.
/// The kernel fills in ICMPv6's checksum; ICMP's is ours.
pub(crate) fn echo(ipv4: bool, id: u16, seq: u16) -> Vec<u8> {
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

/// The sequence number of an echo reply with our identifier; an IPv4 raw socket hands
/// over the IP header too.
pub(crate) fn parse_reply(bytes: &[u8], id: u16, ipv6: bool) -> Option<u16> {
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
