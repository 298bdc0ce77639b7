//! NAT (LVS masquerading). Requests: destination address and port become the real's, with
//! incremental checksum updates, and the way back is remembered in NAT_REPLIES. Replies
//! (the real routes them through the director): source address and port become the VIP's
//! again, and the frame goes back where the request came from.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FAMILY_V4, FlowKey, NatReply, PROTO_TCP, PROTO_UDP, RealInfo, Reason, SETTING_CLOCK,
    SETTING_FLAGS, SETTING_NAT, VipInfo, flow_table::set_of, hash::flow_hash,
};

use crate::flows;
use crate::maps::{NAT_REPLIES, SETTINGS};
use crate::parse::{Packet, bytes_at};
use crate::{csum, transmit};

/// Which end of the packet's 5-tuple a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Source,
    Destination,
}

/// Forwards a request to `real`, remembering the way back on the flow's first packet.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    packet: &Packet,
    real: &RealInfo,
    real_id: u32,
    vip: &VipInfo,
    new_flow: bool,
) -> Result<(u32, Reason), Reason> {
    if real.mac == [0u8; 6] || real.src_mac == [0u8; 6] {
        return Err(Reason::PassRealUnresolved);
    }
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let eth = unsafe { &mut *bytes_at::<12>(ctx, 0)? };
    if new_flow {
        let back = FlowKey {
            src: real.addr,
            dst: packet.key.src,
            sport_be: real.port_be,
            dport_be: packet.key.sport_be,
            ..packet.key
        };
        // Written straight into the table's way, not built on the (small) BPF stack.
        remember_way_back(&back, real_id, |way| {
            way.vip_addr = packet.key.dst;
            way.client_mac.copy_from_slice(&eth[6..12]);
            way.director_mac.copy_from_slice(&eth[..6]);
            way.vip_port_be = packet.key.dport_be;
            way._pad = [0; 2];
            way.ifindex = ingress;
            way.vip_index = vip.index;
            way.real = real_id;
            way._pad2 = 0;
        })?;
    }
    rewrite(ctx, packet, End::Destination, &real.addr, real.port_be)?;
    let eth = unsafe { &mut *bytes_at::<12>(ctx, 0)? };
    eth[..6].copy_from_slice(&real.mac);
    eth[6..].copy_from_slice(&real.src_mac);
    Ok(transmit(ingress, real.ifindex))
}

/// A real's reply to a NAT flow goes back to the client from the VIP; anything else is
/// not ours (`PassNotVip`).
#[inline(always)]
pub fn reply(ctx: &XdpContext, packet: &Packet) -> Result<(u32, Reason), Reason> {
    let nat_on = SETTINGS.get(SETTING_FLAGS).is_some_and(|s| s & SETTING_NAT != 0);
    if !nat_on {
        return Err(Reason::PassNotVip);
    }
    let hash = flow_hash(&packet.key);
    let set = unsafe { &mut *NAT_REPLIES.get_ptr_mut(set_of(hash)).ok_or(Reason::PassInternal)? };
    let found = flows::find(&set.ways, &set.keys, &packet.key, hash, true);
    let found = found.ok_or(Reason::PassNotVip)?;
    let way = *set.replies.get(found.way).ok_or(Reason::PassInternal)?;
    // The tag covers the check, the check covers the reply: a torn reply is no reply.
    if way.check() != found.flags {
        return Err(Reason::PassNotVip);
    }
    flows::touch(&mut set.ways, &found, clock(), 0);
    rewrite(ctx, packet, End::Source, &way.vip_addr, way.vip_port_be)?;
    let eth = unsafe { &mut *bytes_at::<12>(ctx, 0)? };
    eth[..6].copy_from_slice(&way.client_mac);
    eth[6..].copy_from_slice(&way.director_mac);
    crate::count_reply(way.vip_index, way.real, packet.len);
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    Ok(transmit(ingress, way.ifindex))
}

/// Records a NAT flow's way back, in the way that already holds its 5-tuple (a port the
/// client reused) or the one idle longest.
#[inline(always)]
fn remember_way_back(
    back: &FlowKey,
    real: u32,
    fill: impl FnOnce(&mut NatReply),
) -> Result<(), Reason> {
    let hash = flow_hash(back);
    let set = unsafe { &mut *NAT_REPLIES.get_ptr_mut(set_of(hash)).ok_or(Reason::PassInternal)? };
    let now = clock();
    let w = match flows::find(&set.ways, &set.keys, back, hash, true) {
        Some(found) => found.way,
        None => flows::victim(&set.ways, now),
    };
    let slot = set.replies.get_mut(w).ok_or(Reason::PassInternal)?;
    // The way reads as empty while its reply changes: the tag goes to 0 first.
    unsafe { core::ptr::write_volatile(&mut set.ways.tags[w & 3], 0) };
    fill(slot);
    let check = slot.check();
    flows::record(&mut set.ways, &mut set.keys, w, back, hash, real, check, now, true);
    Ok(())
}

#[inline(always)]
fn clock() -> u32 {
    SETTINGS.get(SETTING_CLOCK).copied().unwrap_or(0)
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
