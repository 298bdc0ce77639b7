//! "Fragmentation needed" (ICMPv4 type 3 code 4) and "packet too big" (ICMPv6 type 2) for
//! a client whose packet would exceed the egress MTU once encapsulated: the frame is turned
//! into the ICMP error in place and sent back where it came from, from the VIP, as a router
//! on the path would. The error quotes the packet's IP header and first 8 payload bytes,
//! enough for the client's stack to find the connection and lower its path MTU.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{FAMILY_V4, Reason};

use crate::parse::{Packet, bytes_at};

const ETH: usize = 14;
/// IPv4 error: Ethernet, IP, ICMP, quoted IP header (20) and 8 bytes.
const V4_QUOTE: usize = 28;
const V4_FRAME: usize = ETH + 20 + 8 + V4_QUOTE;
/// IPv6 error: Ethernet, IPv6, ICMPv6, quoted IPv6 header (40) and 8 bytes.
const V6_QUOTE: usize = 48;
const V6_FRAME: usize = ETH + 40 + 8 + V6_QUOTE;

#[inline(always)]
pub fn too_big(ctx: &XdpContext, packet: &Packet, mtu: u32) -> Result<(u32, Reason), Reason> {
    // Only untagged frames with an option-less IPv4 header are turned around: other shapes
    // are dropped and counted, never sent on too big to be delivered. Nor is an ICMP error
    // answered with another (RFC 1122 3.2.2, RFC 4443 2.4): it is dropped too.
    if packet.l3 != ETH || packet.icmp_error {
        return Ok((XDP_DROP, Reason::DropTooBig));
    }
    if packet.key.family == FAMILY_V4 {
        let flags = unsafe { (*bytes_at::<8>(ctx, ETH)?)[6] };
        if packet.l4 != ETH + 20 || flags & 0x40 == 0 {
            // Without DF the sender expects routers to fragment, which XDP cannot do.
            return Ok((XDP_DROP, Reason::DropTooBig));
        }
        too_big_v4(ctx, mtu)
    } else {
        too_big_v6(ctx, mtu)
    }
}

#[inline(always)]
fn too_big_v4(ctx: &XdpContext, mtu: u32) -> Result<(u32, Reason), Reason> {
    let eth: [u8; 12] = unsafe { *bytes_at::<12>(ctx, 0)? };
    let ip: [u8; 20] = unsafe { *bytes_at::<20>(ctx, ETH)? };
    // Room for the new IP and ICMP headers in front of the quoted packet, then the tail
    // cut after the quote.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -28) } != 0 {
        return Err(Reason::PassInternal);
    }
    let len = (ctx.data_end() - ctx.data()) as i32;
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, V4_FRAME as i32 - len) } != 0 {
        return Err(Reason::PassInternal);
    }
    let frame = unsafe { &mut *bytes_at::<V4_FRAME>(ctx, 0)? };
    frame[..6].copy_from_slice(&eth[6..12]);
    frame[6..12].copy_from_slice(&eth[..6]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((V4_FRAME - ETH) as u16).to_be_bytes());
    h[8] = 64;
    h[9] = 1; // ICMP
    h[12..16].copy_from_slice(&ip[16..20]); // from the VIP
    h[16..20].copy_from_slice(&ip[12..16]); // to the client
    let csum = crate::csum::ipv4_header(&h).to_be_bytes();
    h[10..12].copy_from_slice(&csum);
    frame[ETH..ETH + 20].copy_from_slice(&h);
    let icmp = ETH + 20;
    frame[icmp] = 3; // destination unreachable
    frame[icmp + 1] = 4; // fragmentation needed and DF set
    frame[icmp + 2] = 0;
    frame[icmp + 3] = 0;
    frame[icmp + 4] = 0;
    frame[icmp + 5] = 0;
    frame[icmp + 6..icmp + 8].copy_from_slice(&(mtu as u16).to_be_bytes());
    // The quote is already in place: the original IP header and 8 bytes follow.
    let sum = sum_words(&frame[icmp..V4_FRAME], 0);
    frame[icmp + 2..icmp + 4].copy_from_slice(&finish(sum).to_be_bytes());
    Ok((XDP_TX, Reason::TooBigSent))
}

#[inline(always)]
fn too_big_v6(ctx: &XdpContext, mtu: u32) -> Result<(u32, Reason), Reason> {
    let eth: [u8; 12] = unsafe { *bytes_at::<12>(ctx, 0)? };
    let ip: [u8; 40] = unsafe { *bytes_at::<40>(ctx, ETH)? };
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -48) } != 0 {
        return Err(Reason::PassInternal);
    }
    let len = (ctx.data_end() - ctx.data()) as i32;
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, V6_FRAME as i32 - len) } != 0 {
        return Err(Reason::PassInternal);
    }
    let frame = unsafe { &mut *bytes_at::<V6_FRAME>(ctx, 0)? };
    frame[..6].copy_from_slice(&eth[6..12]);
    frame[6..12].copy_from_slice(&eth[..6]);
    frame[12..14].copy_from_slice(&[0x86, 0xdd]);
    let payload_len = (V6_FRAME - ETH - 40) as u16;
    let h = ETH;
    frame[h] = 0x60;
    frame[h + 1] = 0;
    frame[h + 2] = 0;
    frame[h + 3] = 0;
    frame[h + 4..h + 6].copy_from_slice(&payload_len.to_be_bytes());
    frame[h + 6] = 58; // ICMPv6
    frame[h + 7] = 64;
    frame[h + 8..h + 24].copy_from_slice(&ip[24..40]); // from the VIP
    frame[h + 24..h + 40].copy_from_slice(&ip[8..24]); // to the client
    let icmp = ETH + 40;
    frame[icmp] = 2; // packet too big
    frame[icmp + 1] = 0;
    frame[icmp + 2] = 0;
    frame[icmp + 3] = 0;
    frame[icmp + 4..icmp + 8].copy_from_slice(&mtu.to_be_bytes());
    // Pseudo-header: addresses, upper-layer length, next header.
    let mut sum = sum_words(&frame[h + 8..h + 40], 0);
    sum += payload_len as u32 + 58;
    let sum = sum_words(&frame[icmp..V6_FRAME], sum);
    frame[icmp + 2..icmp + 4].copy_from_slice(&finish(sum).to_be_bytes());
    Ok((XDP_TX, Reason::TooBigSent))
}

/// Adds the 16-bit words of `bytes` (even length, fixed by the caller) to `sum`.
#[inline(always)]
fn sum_words(bytes: &[u8], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

#[inline(always)]
fn finish(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
