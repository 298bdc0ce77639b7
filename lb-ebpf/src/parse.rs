//! Header parsing: Ethernet, at most one 802.1Q tag, IPv4 (options skipped by IHL) or the
//! IPv6 base header, then the TCP or UDP ports. No loops: every offset is bounded and
//! checked against the end of the frame before it is read.
//!
//! Lengths are checked too (ARCHITECTURE.md, "Input policy: frames"): the IP packet, as
//! its header says, must lie in the frame, and every header after it in the IP packet,
//! TCP's data offset and UDP's length included; anything shorter is `PassTruncated`.
//! Bytes after the IP packet are Ethernet padding, never part of it.

use aya_ebpf::programs::XdpContext;
use lb_common::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, Reason};

use crate::words;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const UDP_HLEN: usize = 8;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// What the rest of the path needs to know about a packet.
pub struct Packet {
    /// The 5-tuple, which is also the connection table key.
    pub key: FlowKey,
    pub tcp_flags: u8,
    /// Frame length, for the byte counters.
    pub len: u64,
    /// Offsets of the IP and transport headers, for the paths that rewrite them.
    pub l3: usize,
    pub l4: usize,
    /// Where the IP packet ends (by its header's length): at the end of the frame, or
    /// before Ethernet padding.
    pub ip_end: usize,
    /// An ICMP error (destination unreachable, packet too big) about a packet of `key`'s
    /// flow; `key` is that flow's, seen from the client, read from the quoted header.
    pub icmp_error: bool,
}

impl Packet {
    /// A packet that may open a connection: a TCP SYN without ACK, or any UDP datagram.
    #[inline(always)]
    pub fn opens_connection(&self) -> bool {
        self.key.proto == PROTO_UDP || self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// A TCP FIN or RST: the connection is closing.
    #[inline(always)]
    pub fn closes_connection(&self) -> bool {
        self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }
}

/// A pointer to `len` bytes at `offset`, or `PassTruncated` if the frame is shorter.
#[inline(always)]
pub fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<*mut [u8; N], Reason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return Err(Reason::PassTruncated);
    }
    Ok((start + offset) as *mut [u8; N])
}

/// `bytes_at`, for a header that must also end within the IP packet, at `end` or before.
#[inline(always)]
fn bytes_in<const N: usize>(
    ctx: &XdpContext,
    offset: usize,
    end: usize,
) -> Result<*mut [u8; N], Reason> {
    if offset + N > end {
        return Err(Reason::PassTruncated);
    }
    bytes_at::<N>(ctx, offset)
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

#[inline(always)]
fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Reason> {
    let eth = unsafe { &*bytes_at::<ETH_HLEN>(ctx, 0)? };
    let mut ethertype = be16(eth, 12);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q {
        let tag = unsafe { &*bytes_at::<VLAN_HLEN>(ctx, ETH_HLEN)? };
        ethertype = be16(tag, 2);
        l3 = ETH_HLEN + VLAN_HLEN;
    }
    let mut key = FlowKey::default();
    let (l4, ip_end) = match ethertype {
        ETH_P_IP => parse_ipv4(ctx, l3, &mut key)?,
        ETH_P_IPV6 => parse_ipv6(ctx, l3, &mut key)?,
        _ => return Err(Reason::PassNotIp),
    };
    let len = frame_len(ctx) as u64;
    if key.proto == PROTO_ICMP || key.proto == PROTO_ICMPV6 {
        let key = parse_icmp_error(ctx, l4, ip_end, key.family)?;
        return Ok(Packet { key, tcp_flags: 0, len, l3, l4, ip_end, icmp_error: true });
    }
    let tcp_flags = parse_ports(ctx, l4, ip_end, &mut key)?;
    Ok(Packet { key, tcp_flags, len, l3, l4, ip_end, icmp_error: false })
}

/// An ICMP error quotes the packet that caused it: the IP header and at least 8 bytes,
/// the ports. That packet went from a VIP to a client (a real's answer), so the flow it
/// belongs to is the quote reversed. Anything but destination unreachable (ICMPv4 3,
/// ICMPv6 1) and packet too big (ICMPv6 2), with a TCP or UDP quote, is not ours.
#[inline(always)]
fn parse_icmp_error(
    ctx: &XdpContext,
    l4: usize,
    ip_end: usize,
    family: u8,
) -> Result<FlowKey, Reason> {
    let icmp = unsafe { &*bytes_in::<ICMP_HLEN>(ctx, l4, ip_end)? };
    let error = if family == FAMILY_V4 { icmp[0] == 3 } else { icmp[0] == 1 || icmp[0] == 2 };
    if !error {
        return Err(Reason::PassOtherProto);
    }
    let quote = l4 + ICMP_HLEN;
    let mut key = FlowKey { family, ..FlowKey::default() };
    let ports_at = if family == FAMILY_V4 {
        let ip = unsafe { &*bytes_in::<20>(ctx, quote, ip_end)? };
        if ip[0] != 0x45 {
            return Err(Reason::PassMalformed);
        }
        key.proto = ip[9];
        key.dst = unsafe { words::addr4(ip[12..].as_ptr()) };
        key.src = unsafe { words::addr4(ip[16..].as_ptr()) };
        quote + 20
    } else {
        let ip = unsafe { &*bytes_in::<IPV6_HLEN>(ctx, quote, ip_end)? };
        if ip[0] >> 4 != 6 {
            return Err(Reason::PassMalformed);
        }
        key.proto = ip[6];
        key.dst = unsafe { words::addr16(ip[8..].as_ptr()) };
        key.src = unsafe { words::addr16(ip[24..].as_ptr()) };
        quote + IPV6_HLEN
    };
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
        return Err(Reason::PassOtherProto);
    }
    let ports = bytes_in::<4>(ctx, ports_at, ip_end)? as *const u8;
    (key.dport_be, key.sport_be) = unsafe { words::ports(ports) };
    Ok(key)
}

/// Fills addresses and protocol; returns the offsets of the transport header and of the
/// IP packet's end.
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize, key: &mut FlowKey) -> Result<(usize, usize), Reason> {
    let ip = unsafe { &*bytes_at::<20>(ctx, l3)? };
    if ip[0] >> 4 != 4 {
        return Err(Reason::PassMalformed);
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let total = be16(ip, 2) as usize;
    if ihl < 20 || total < ihl {
        return Err(Reason::PassMalformed);
    }
    // The options, too, lie within the total length, so within the frame.
    if l3 + total > frame_len(ctx) {
        return Err(Reason::PassTruncated);
    }
    // More-fragments set or a non-zero offset: only the first fragment has ports.
    if be16(ip, 6) & 0x3fff != 0 {
        return Err(Reason::PassFragment);
    }
    let proto = ip[9];
    if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMP {
        return Err(Reason::PassOtherProto);
    }
    key.family = FAMILY_V4;
    key.proto = proto;
    key.src = unsafe { words::addr4(ip[12..].as_ptr()) };
    key.dst = unsafe { words::addr4(ip[16..].as_ptr()) };
    Ok((l3 + ihl, l3 + total))
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize, key: &mut FlowKey) -> Result<(usize, usize), Reason> {
    let ip = unsafe { &*bytes_at::<IPV6_HLEN>(ctx, l3)? };
    if ip[0] >> 4 != 6 {
        return Err(Reason::PassMalformed);
    }
    let end = l3 + IPV6_HLEN + be16(ip, 4) as usize;
    if end > frame_len(ctx) {
        return Err(Reason::PassTruncated);
    }
    let next = ip[6];
    if next != PROTO_TCP && next != PROTO_UDP && next != PROTO_ICMPV6 {
        return Err(if is_ipv6_extension(next) {
            Reason::PassIpv6ExtHeader
        } else {
            Reason::PassOtherProto
        });
    }
    key.family = FAMILY_V6;
    key.proto = next;
    key.src = unsafe { words::addr16(ip[8..].as_ptr()) };
    key.dst = unsafe { words::addr16(ip[24..].as_ptr()) };
    Ok((l3 + IPV6_HLEN, end))
}

/// Hop-by-hop, routing, fragment, ESP, AH, destination options, mobility, HIP, shim6,
/// experimental: headers that would have to be walked to find the ports.
#[inline(always)]
fn is_ipv6_extension(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

/// Fills the ports; returns the TCP flags (0 for UDP). The header, and the length it
/// claims (TCP's data offset, UDP's length), must end within the IP packet.
#[inline(always)]
fn parse_ports(
    ctx: &XdpContext,
    l4: usize,
    ip_end: usize,
    key: &mut FlowKey,
) -> Result<u8, Reason> {
    if key.proto == PROTO_TCP {
        let tcp = unsafe { &*bytes_in::<TCP_MIN_HLEN>(ctx, l4, ip_end)? };
        let doff = (tcp[12] >> 4) as usize * 4;
        if doff < TCP_MIN_HLEN {
            return Err(Reason::PassMalformed);
        }
        if l4 + doff > ip_end {
            return Err(Reason::PassTruncated);
        }
        (key.sport_be, key.dport_be) = unsafe { words::ports(tcp.as_ptr()) };
        Ok(tcp[13])
    } else {
        let udp = unsafe { &*bytes_in::<UDP_HLEN>(ctx, l4, ip_end)? };
        let len = be16(udp, 4) as usize;
        if len < UDP_HLEN {
            return Err(Reason::PassMalformed);
        }
        if l4 + len > ip_end {
            return Err(Reason::PassTruncated);
        }
        (key.sport_be, key.dport_be) = unsafe { words::ports(udp.as_ptr()) };
        Ok(0)
    }
}
