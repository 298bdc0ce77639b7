//! NAT (LVS masquerading). Requests: destination address and port become the real's, with
//! incremental checksum updates; the flow's first frame leaves its way back (client MAC,
//! our MAC, interface) beside it in FLOWS. Replies (the real routes them through the
//! director) are found in the set of their destination, the client, as IPVS finds a
//! connection from either side: source address and port become the VIP's again, and the
//! frame goes back where the request came from.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FAMILY_V4, FLOW_NAT, PROTO_TCP, PROTO_UDP, Reason, SETTING_FLAGS, SETTING_NAT,
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

/// Forwards a request to its flow's real, leaving the way back on the flow's first packet.
#[inline(always)]
pub fn forward(ctx: &XdpContext, packet: &Packet, flow: &Flow) -> Result<(u32, Reason), Reason> {
    let real = flow.real;
    if !real.macs_resolved() {
        return Err(Reason::PassRealUnresolved);
    }
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    if flow.new_flow && flow.way < FLOW_WAYS {
        let eth = unsafe { &*bytes_at::<12>(ctx, 0)? };
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
    crate::address_to_real(ctx, real)?;
    Ok(transmit(ingress, real.ifindex))
}

/// A real's reply to a NAT flow goes back to the client from the VIP; anything else is
/// not ours (`PassNotVip`). The reply is (real -> client); its flow is (client -> VIP),
/// in the client's set, with a real whose address and port are the reply's source.
#[inline(always)]
pub fn reply(ctx: &XdpContext, packet: &Packet) -> Result<(u32, Reason), Reason> {
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
        let vip_index = real.vip;
        let found = flows::Found { way: w, real: real_id, flags };
        flows::touch(&mut set.ways, &found, crate::clock(), 0);
        rewrite(ctx, packet, End::Source, &flow.dst, flow.dport_be)?;
        let eth = bytes_at::<12>(ctx, 0)? as *mut u8;
        // `client_mac` then `director_mac`, as in the header (lb-common asserts it).
        unsafe { words::copy12(eth, &back as *const WayBack as *const u8) };
        crate::count_reply(vip_index, real_id, packet.len);
        let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
        return Ok(transmit(ingress, back.ifindex));
    }
    Err(Reason::PassNotVip)
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
    let l4_csum_at = match packet.key.proto {
        PROTO_TCP => packet.l4 + 16,
        PROTO_UDP => packet.l4 + 6,
        _ => return Err(Reason::PassInternal),
    };
    let l4_csum = unsafe { &mut *bytes_at::<2>(ctx, l4_csum_at)? };
    let old_l4 = u16::from_be_bytes(*l4_csum);
    // An IPv4 UDP checksum of 0 means "none" and stays so.
    let l4_has_csum =
        !(packet.key.proto == PROTO_UDP && packet.key.family == FAMILY_V4 && old_l4 == 0);
    let mut new_l4 = old_l4;

    if packet.key.family == FAMILY_V4 {
        let at = packet.l3 + if end == End::Source { 12 } else { 16 };
        let field = unsafe { &mut *bytes_at::<4>(ctx, at)? };
        let mut new = [0u8; 4];
        new.copy_from_slice(&addr[..4]);
        let ip_csum = unsafe { &mut *bytes_at::<2>(ctx, packet.l3 + 10)? };
        *ip_csum = csum::update(u16::from_be_bytes(*ip_csum), field, &new).to_be_bytes();
        new_l4 = csum::update(new_l4, field, &new);
        *field = new;
    } else {
        let at = packet.l3 + if end == End::Source { 8 } else { 24 };
        let field = unsafe { &mut *bytes_at::<16>(ctx, at)? };
        new_l4 = csum::update(new_l4, field, addr);
        *field = *addr;
    }

    let port_at = packet.l4 + if end == End::Source { 0 } else { 2 };
    let port = unsafe { &mut *bytes_at::<2>(ctx, port_at)? };
    let new_port = port_be.to_ne_bytes();
    new_l4 = csum::update(new_l4, port, &new_port);
    *port = new_port;

    if l4_has_csum {
        // UDP sends a computed 0 as 0xffff (0 would mean "no checksum").
        if packet.key.proto == PROTO_UDP && new_l4 == 0 {
            new_l4 = 0xffff;
        }
        let l4_csum = unsafe { &mut *bytes_at::<2>(ctx, l4_csum_at)? };
        *l4_csum = new_l4.to_be_bytes();
    }
    Ok(())
}
