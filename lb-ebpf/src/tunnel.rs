//! IP-in-IP tunnelling (LVS "tunnel"): the client's packet, untouched, inside an outer
//! header to the real, IPv4 in IPv4 (protocol 4, RFC 2003) or IPv6 in IPv6 (next header
//! 41, RFC 2473). The outer source is the director's address on the egress interface; the
//! real decapsulates (lb_decap) and answers the client directly, from the VIP.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{FAMILY_V4, RealInfo, Reason};

use crate::parse::{Packet, bytes_at};
use crate::{csum, icmp, transmit, words};

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const TTL: u8 = 64;

#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    packet: &Packet,
    real: &RealInfo,
) -> Result<(u32, Reason), Reason> {
    if !real.macs_resolved() || real.tunnel_src == [0u8; 16] {
        return Err(Reason::PassRealUnresolved);
    }
    let v4 = packet.key.family == FAMILY_V4;
    let outer_len = if v4 { IPV4_HLEN } else { IPV6_HLEN };
    // The IP packet by its own length: Ethernet padding after it is not carried.
    let inner_len = packet.ip_end - packet.l3;
    if inner_len + outer_len > real.mtu as usize {
        // Too big once encapsulated: tell the client its path MTU, as a router would.
        return icmp::too_big(ctx, packet, real.mtu as u32 - outer_len as u32);
    }
    let padding = ctx.data_end() - ctx.data() - packet.ip_end;
    if padding != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(padding as i32)) } != 0 {
        return Err(Reason::PassInternal);
    }
    // What the outer header copies from the inner one, read before the head moves.
    // IPv4: TOS (byte 1), DF (byte 6); IPv6: version, traffic class, flow label (0..4).
    let inner: [u8; 8] = unsafe { *bytes_at::<8>(ctx, packet.l3)? };
    let second = inner[1];
    let dont_fragment = if v4 { inner[6] & 0x40 } else { 0 };
    // A tagged frame keeps its tag: the TCI is read here, the TPID is 0x8100 (the only one
    // the parser takes), and the outer ethertype follows them.
    let vlan = packet.l3 == 18;
    let tci = if vlan { unsafe { *bytes_at::<2>(ctx, 14)? } } else { [0u8; 2] };

    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer_len as i32)) } != 0 {
        return Err(Reason::PassInternal);
    }
    // The frame is now [L2 header][outer IP][inner packet]: write the first two anew.
    let ethertype: [u8; 2] = if v4 { [0x08, 0x00] } else { [0x86, 0xdd] };
    crate::address_to_real(ctx, real)?;
    if vlan {
        let l2 = unsafe { &mut *bytes_at::<18>(ctx, 0)? };
        l2[12..14].copy_from_slice(&[0x81, 0x00]);
        l2[14..16].copy_from_slice(&tci);
        l2[16..18].copy_from_slice(&ethertype);
    } else {
        let eth = unsafe { &mut *bytes_at::<14>(ctx, 0)? };
        eth[12..14].copy_from_slice(&ethertype);
    }
    // Written in words, as they lie in memory (words.rs says why).
    let out = bytes_at::<IPV6_HLEN>(ctx, packet.l3)? as *mut u8;
    if v4 {
        let total = ((inner_len + IPV4_HLEN) as u16).to_be_bytes();
        // TOS copied from the inner header (RFC 2003, 3.1); identification 0.
        let w0 = u32::from_ne_bytes([0x45, second, total[0], total[1]]);
        let w1 = u32::from_ne_bytes([0, 0, dont_fragment, 0]);
        let w2 = u32::from_ne_bytes([TTL, IPPROTO_IPIP, 0, 0]);
        let (src, dst) = unsafe {
            (words::load_u32(real.tunnel_src.as_ptr()), words::load_u32(real.addr.as_ptr()))
        };
        // The Internet checksum does not depend on byte order as long as it is stored in
        // the order it was summed in: sum the words as they lie, store the same way.
        let sum = [w0, w1, w2, src, dst].iter().fold(0u64, |s, &w| s + w as u64);
        let check = !csum::fold(sum);
        let w2 = w2 | (check as u32) << 16;
        // Word pairs as u64: the first word at the lower address (bpfel is little-endian).
        unsafe {
            words::store_u64(out, w0 as u64 | (w1 as u64) << 32);
            words::store_u64(out.add(8), w2 as u64 | (src as u64) << 32);
            words::store_u32(out.add(16), dst);
        }
    } else {
        // Version 6; traffic class and flow label copied from the inner header.
        let len = (inner_len as u16).to_be_bytes();
        let w1 = u32::from_ne_bytes([len[0], len[1], IPPROTO_IPV6, TTL]);
        unsafe {
            let first = u32::from_ne_bytes([inner[0], inner[1], inner[2], inner[3]]);
            words::store_u64(out, first as u64 | (w1 as u64) << 32);
            words::copy16(out.add(8), real.tunnel_src.as_ptr());
            words::copy16(out.add(24), real.addr.as_ptr());
        }
    }
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    Ok(transmit(ingress, real.ifindex))
}
