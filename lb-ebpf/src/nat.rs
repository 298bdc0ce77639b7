//! NAT (LVS masquerading). Requests: destination address and port become the real's, with
//! incremental checksum updates, and the way back is remembered in NAT_REPLIES. Replies
//! (the real routes them through the director): source address and port become the VIP's
//! again, and the frame goes back where the request came from.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FAMILY_V4, FlowKey, NatReply, PROTO_TCP, PROTO_UDP, RealInfo, Reason, SETTING_FLAGS,
    SETTING_NAT, VipInfo,
};

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
        let mut client_mac = [0u8; 6];
        let mut director_mac = [0u8; 6];
        client_mac.copy_from_slice(&eth[6..12]);
        director_mac.copy_from_slice(&eth[..6]);
        let back = FlowKey {
            src: real.addr,
            dst: packet.key.src,
            sport_be: real.port_be,
            dport_be: packet.key.sport_be,
            ..packet.key
        };
        let reply = NatReply {
            vip_addr: packet.key.dst,
            client_mac,
            director_mac,
            vip_port_be: packet.key.dport_be,
            ifindex: ingress,
            vip_index: vip.index,
            real: real_id,
            ..NatReply::default()
        };
        // Without the way back the real's answers would reach the client from the real's
        // own address: refuse the flow rather than break it.
        NAT_REPLIES.insert(&back, &reply, 0).map_err(|_| Reason::PassInternal)?;
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
    let way = match unsafe { NAT_REPLIES.get(&packet.key) } {
        Some(way) => *way,
        None => return Err(Reason::PassNotVip),
    };
    rewrite(ctx, packet, End::Source, &way.vip_addr, way.vip_port_be)?;
    let eth = unsafe { &mut *bytes_at::<12>(ctx, 0)? };
    eth[..6].copy_from_slice(&way.client_mac);
    eth[6..].copy_from_slice(&way.director_mac);
    crate::count_reply(way.vip_index, way.real, packet.len);
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    Ok(transmit(ingress, way.ifindex))
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
