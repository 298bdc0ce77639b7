//! NAT (LVS masquerading). Requests: destination address and port become the real's, with
//! incremental checksum updates; the flow's first frame leaves its way back (client MAC,
//! our MAC, interface) beside it in FLOWS. Replies (the real routes them through the
//! director) are found in the set of their destination, the client, as IPVS finds a
//! connection from either side: source address and port become the VIP's again, and the
//! frame goes back where the request came from. ICMP errors about a NAT flow are
//! translated both ways, quote included, as IPVS's ip_vs_nat_icmp does.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FAMILY_V4, FLOW_NAT, FlowKey, PROTO_TCP, PROTO_UDP, RealInfo, Reason, SETTING_FLAGS,
    SETTING_NAT,
    flow_table::{FLOW_WAYS, WayBack, set_of_hash, tag},
    hash::client_hash,
};

use crate::maps::{FLOWS, REALS, SETTINGS};
use crate::parse::{Packet, bytes_at};
use crate::{Flow, csum, flows, transmit, words};

/// Which end of the packet's 5-tuple a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Source,
    Destination,
}

impl End {
    /// Where this end's address is in an IPv4 or IPv6 header.
    #[inline(always)]
    fn addr_at(self, v4: bool) -> usize {
        match (v4, self) {
            (true, End::Source) => 12,
            (true, End::Destination) => 16,
            (false, End::Source) => 8,
            (false, End::Destination) => 24,
        }
    }

    /// Where this end's port is in a TCP or UDP header.
    #[inline(always)]
    fn port_at(self) -> usize {
        if self == End::Source { 0 } else { 2 }
    }
}

/// Where the checksum is in a TCP or UDP header.
#[inline(always)]
fn l4_csum_at(udp: bool) -> usize {
    if udp { 6 } else { 16 }
}

/// Whether a TCP or UDP checksum is in use: an IPv4 UDP checksum of 0 means "none", and
/// stays so.
#[inline(always)]
fn l4_csum_used(csum: &[u8; 2], v4: bool, udp: bool) -> bool {
    !(v4 && udp && *csum == [0, 0])
}

/// A computed TCP or UDP checksum as stored: UDP sends 0 as 0xffff (0 would mean "none").
#[inline(always)]
fn l4_csum_stored(csum: u16, udp: bool) -> [u8; 2] {
    if udp && csum == 0 { [0xff, 0xff] } else { csum.to_be_bytes() }
}

/// Forwards a request to its flow's real, leaving the way back on the flow's first packet.
#[inline(always)]
pub fn forward(ctx: &XdpContext, packet: &Packet, flow: &Flow) -> Result<(u32, Reason), Reason> {
    let real = flow.real;
    if !real.macs_resolved() {
        return Err(Reason::PassRealUnresolved);
    }
    if flow.new_flow && flow.way < FLOW_WAYS {
        let eth = unsafe { &*bytes_at::<12>(ctx, 0)? };
        let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
        let mut back = WayBack { ifindex: ingress, ..WayBack::default() };
        back.client_mac.copy_from_slice(&eth[6..12]);
        back.director_mac.copy_from_slice(&eth[..6]);
        let check = back.digest(&packet.key.dst, packet.key.dport_be, flow.real_id);
        let way_back = unsafe { &mut (*flow.set).backs[flow.way] };
        // Invalid while it changes: a reply cannot come before this request has left, but
        // a way back must never be read half written.
        unsafe {
            write_volatile(&mut way_back.check, 0);
            write_volatile(way_back, back);
            write_volatile(&mut way_back.check, check);
        }
    }
    rewrite(ctx, packet, End::Destination, &real.addr, real.port_be)?;
    crate::send_to_real(ctx, real)
}

/// An ICMP error about a NAT flow, from a router on the client's side about one of the
/// flow's replies (which left here from the VIP): it goes to the flow's real with the VIP
/// turned back into the real, as destination and as the quoted reply's source, so the
/// real's stack finds its own connection in the quote (a smaller path MTU, an unreachable
/// client).
#[inline(always)]
pub fn icmp_to_real(
    ctx: &XdpContext,
    packet: &Packet,
    real: &RealInfo,
) -> Result<(u32, Reason), Reason> {
    if !real.macs_resolved() {
        return Err(Reason::PassRealUnresolved);
    }
    rewrite_icmp(ctx, packet, End::Destination, &real.addr, real.port_be)?;
    crate::send_to_real(ctx, real)
}

/// A real's reply to a NAT flow goes back to the client from the VIP; anything else is
/// not ours (`PassNotVip`).
#[inline(always)]
pub fn reply(ctx: &XdpContext, packet: &Packet) -> Result<(u32, Reason), Reason> {
    let flow = find_reply_flow(packet)?;
    rewrite(ctx, packet, End::Source, &flow.key.dst, flow.key.dport_be)?;
    send_back(ctx, packet, &flow)
}

/// An ICMP error about a NAT flow's request (the real's "port unreachable", or a router's
/// between us and the real) goes back to the client from the VIP, quoting the request as
/// the client sent it. Its key, read from the quote, is shaped like a reply's.
#[inline(always)]
pub fn icmp_to_client(ctx: &XdpContext, packet: &Packet) -> Result<(u32, Reason), Reason> {
    let flow = find_reply_flow(packet)?;
    rewrite_icmp(ctx, packet, End::Source, &flow.key.dst, flow.key.dport_be)?;
    send_back(ctx, packet, &flow)
}

/// A NAT flow found from its reply's side.
struct ReplyFlow {
    /// The flow's key, (client -> VIP), in its set.
    key: &'static FlowKey,
    back: WayBack,
    real_id: u32,
    vip_index: u32,
}

/// The NAT flow of a reply (real -> client): in the client's set, a NAT way whose client is
/// the reply's destination and whose real's address and port are its source. Marks it
/// seen. `PassNotVip` when there is none (or no NAT VIP at all).
#[inline(always)]
fn find_reply_flow(packet: &Packet) -> Result<ReplyFlow, Reason> {
    let nat_on = SETTINGS.get(SETTING_FLAGS).is_some_and(|s| s & SETTING_NAT != 0);
    if !nat_on {
        return Err(Reason::PassNotVip);
    }
    let key = &packet.key;
    let client = client_hash(&key.dst, key.dport_be, key.proto, key.family);
    let set = unsafe { &mut *FLOWS.get_ptr_mut(set_of_hash(client)).ok_or(Reason::PassInternal)? };
    for w in 0..FLOW_WAYS {
        let t = unsafe { read_volatile(&set.ways.tags[w]) };
        let flags = unsafe { read_volatile(&set.ways.flags[w]) };
        if t == 0 || flags & FLOW_NAT == 0 {
            continue;
        }
        let flow = &set.keys[w];
        if flow.sport_be != key.dport_be
            || flow.proto != key.proto
            || flow.family != key.family
            || !flows::same(&flow.src, &key.dst)
        {
            continue;
        }
        let real_id = unsafe { read_volatile(&set.ways.reals[w]) };
        let Some(real) = REALS.get(real_id) else { continue };
        if real.port_be != key.sport_be || !flows::same(&real.addr, &key.src) {
            continue;
        }
        // The whole way must be one writer's: the tag ties client and real, the digest
        // the way back, the VIP side and the real.
        let back = unsafe { read_volatile(&set.backs[w]) };
        if t != tag(client, real_id) || back.check != back.digest(&flow.dst, flow.dport_be, real_id)
        {
            continue;
        }
        let found = flows::Found { way: w, real: real_id, flags };
        flows::touch(&mut set.ways, &found, crate::clock(), 0);
        return Ok(ReplyFlow { key: flow, back, real_id, vip_index: real.vip });
    }
    Err(Reason::PassNotVip)
}

/// Sends a rewritten reply to the client the way its request came in, and counts it.
#[inline(always)]
fn send_back(ctx: &XdpContext, packet: &Packet, flow: &ReplyFlow) -> Result<(u32, Reason), Reason> {
    let eth = bytes_at::<12>(ctx, 0)? as *mut u8;
    // `client_mac` then `director_mac`, as in the header (lb-common asserts it).
    unsafe { words::copy12(eth, &flow.back as *const WayBack as *const u8) };
    crate::count_reply(flow.vip_index, flow.real_id, packet.len);
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    Ok(transmit(ingress, flow.back.ifindex))
}

/// Rewrites one end's address and port, updating the IPv4 header checksum and the TCP or
/// UDP checksum (whose pseudo-header holds the addresses) incrementally.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    packet: &Packet,
    end: End,
    addr: &[u8; 16],
    port_be: u16,
) -> Result<(), Reason> {
    let (v4, udp) = match packet.key.proto {
        PROTO_TCP => (packet.key.family == FAMILY_V4, false),
        PROTO_UDP => (packet.key.family == FAMILY_V4, true),
        _ => return Err(Reason::PassInternal),
    };
    let l4_csum_at = packet.l4 + l4_csum_at(udp);
    let l4_csum = unsafe { &mut *bytes_at::<2>(ctx, l4_csum_at)? };
    let l4_has_csum = l4_csum_used(l4_csum, v4, udp);
    let mut new_l4 = u16::from_be_bytes(*l4_csum);

    let at = packet.l3 + end.addr_at(v4);
    if v4 {
        let field = unsafe { &mut *bytes_at::<4>(ctx, at)? };
        let mut new = [0u8; 4];
        new.copy_from_slice(&addr[..4]);
        let ip_csum = unsafe { &mut *bytes_at::<2>(ctx, packet.l3 + 10)? };
        *ip_csum = csum::update(u16::from_be_bytes(*ip_csum), field, &new).to_be_bytes();
        new_l4 = csum::update(new_l4, field, &new);
        *field = new;
    } else {
        let field = unsafe { &mut *bytes_at::<16>(ctx, at)? };
        new_l4 = csum::update(new_l4, field, addr);
        *field = *addr;
    }

    let port = unsafe { &mut *bytes_at::<2>(ctx, packet.l4 + end.port_at())? };
    let new_port = port_be.to_ne_bytes();
    new_l4 = csum::update(new_l4, port, &new_port);
    *port = new_port;

    if l4_has_csum {
        let l4_csum = unsafe { &mut *bytes_at::<2>(ctx, l4_csum_at)? };
        *l4_csum = l4_csum_stored(new_l4, udp);
    }
    Ok(())
}

/// Rewrites an ICMP error about a NAT flow: address `outer` of its own header, and the other
/// end's address and port in the quoted packet (which travelled the other way), with every
/// checksum that covers them: the outer and the quoted IPv4 header's, the quoted TCP or
/// UDP checksum when the quote holds it, and the ICMP checksum, which covers the whole
/// quote (ICMPv6's the outer addresses too). The parser has checked that the frame holds
/// the quoted IP header and ports; nothing is written before every field is found.
#[inline(always)]
fn rewrite_icmp(
    ctx: &XdpContext,
    packet: &Packet,
    outer: End,
    addr: &[u8; 16],
    port_be: u16,
) -> Result<(), Reason> {
    let v4 = packet.key.family == FAMILY_V4;
    let udp = packet.key.proto == PROTO_UDP;
    let inner = if outer == End::Source { End::Destination } else { End::Source };
    let quote = packet.l4 + 8;
    let quote_l4 = quote + if v4 { 20 } else { 40 };
    let icmp_csum = unsafe { &mut *bytes_at::<2>(ctx, packet.l4 + 2)? };
    let port = unsafe { &mut *bytes_at::<2>(ctx, quote_l4 + inner.port_at())? };
    // UDP's checksum is in the 8 bytes every error quotes; TCP's only when the router
    // quoted more (Linux quotes up to 576 bytes). Quoted means within the ICMP message:
    // Ethernet padding after it is no part of the quote.
    let csum_at = quote_l4 + l4_csum_at(udp);
    let l4_csum = (csum_at + 2 <= packet.ip_end)
        .then(|| bytes_at::<2>(ctx, csum_at).ok())
        .flatten()
        .map(|c| unsafe { &mut *c })
        .filter(|c| l4_csum_used(c, v4, udp));
    let mut icmp = u16::from_be_bytes(*icmp_csum);
    let mut l4 = l4_csum.as_ref().map(|c| u16::from_be_bytes(**c));

    if v4 {
        let new: [u8; 4] = [addr[0], addr[1], addr[2], addr[3]];
        let outer_addr = unsafe { &mut *bytes_at::<4>(ctx, packet.l3 + outer.addr_at(v4))? };
        let outer_csum = unsafe { &mut *bytes_at::<2>(ctx, packet.l3 + 10)? };
        let quoted = unsafe { &mut *bytes_at::<4>(ctx, quote + inner.addr_at(v4))? };
        let quoted_csum = unsafe { &mut *bytes_at::<2>(ctx, quote + 10)? };
        *outer_csum = csum::update(u16::from_be_bytes(*outer_csum), outer_addr, &new).to_be_bytes();
        *outer_addr = new;
        let new_quoted_csum =
            csum::update(u16::from_be_bytes(*quoted_csum), quoted, &new).to_be_bytes();
        icmp = csum::update(icmp, quoted_csum, &new_quoted_csum);
        icmp = csum::update(icmp, quoted, &new);
        l4 = l4.map(|s| csum::update(s, quoted, &new));
        *quoted_csum = new_quoted_csum;
        *quoted = new;
    } else {
        let outer_addr = unsafe { &mut *bytes_at::<16>(ctx, packet.l3 + outer.addr_at(v4))? };
        let quoted = unsafe { &mut *bytes_at::<16>(ctx, quote + inner.addr_at(v4))? };
        icmp = csum::update(icmp, outer_addr, addr);
        icmp = csum::update(icmp, quoted, addr);
        l4 = l4.map(|s| csum::update(s, quoted, addr));
        *outer_addr = *addr;
        *quoted = *addr;
    }

    let new_port = port_be.to_ne_bytes();
    icmp = csum::update(icmp, port, &new_port);
    l4 = l4.map(|s| csum::update(s, port, &new_port));
    *port = new_port;
    if let (Some(field), Some(new)) = (l4_csum, l4) {
        let new = l4_csum_stored(new, udp);
        icmp = csum::update(icmp, field, &new);
        *field = new;
    }
    *icmp_csum = icmp.to_be_bytes();
    Ok(())
}
