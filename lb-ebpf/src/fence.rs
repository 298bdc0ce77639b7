//! The fence: with `ha`, this director answers for the VIPs only while lbd renews its lease
//! (lb_common::Lease). A master whose lbd died with -9 keeps its VIPs on the interface, so
//! its kernel would go on answering ARP for them beside the new master: once the lease
//! lapses, ARP requests and neighbour solicitations for the VIPs are dropped here, and no
//! new flow is taken for them. Established flows go on to their reals meanwhile.

use aya_ebpf::{bindings::xdp_action::XDP_DROP, helpers::bpf_ktime_get_ns, programs::XdpContext};
use lb_common::{FAMILY_V4, FENCE_V4, FENCE_V6, FencedAddr, Reason};

use crate::maps::{FENCE, FENCED};
use crate::parse::bytes_at;
use crate::words;

const ETH_HLEN: usize = 14;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ARP_REQUEST: u16 = 1;
const PROTO_ICMPV6: u8 = 58;
const ND_NEIGHBOR_SOLICIT: u8 = 135;

/// Whether `family`'s lease is armed and has run out. Costs one array read where no `ha`
/// is configured; the clock is read in a function of its own, so the new-flow path it
/// sits on keeps its registers when the fence is not armed.
#[inline(always)]
pub fn lapsed(family: u8) -> bool {
    let index = if family == FAMILY_V4 { FENCE_V4 } else { FENCE_V6 };
    match FENCE.get(index) {
        Some(lease) if lease.armed != 0 => expired(lease.until_ns),
        _ => false,
    }
}

#[inline(never)]
fn expired(until_ns: u64) -> bool {
    let now = unsafe { bpf_ktime_get_ns() };
    now >= until_ns
}

/// A frame the parser passed as not IP, or as IP but not TCP or UDP (`passed`): dropped as
/// `DropFencedNeighbour` when it is an ARP request or a neighbour solicitation for a fenced
/// address whose lease has lapsed; otherwise it passes under its own reason. Cold: ARP and
/// ICMP are rare beside the traffic.
#[cold]
#[inline(always)]
pub fn neighbour_request(ctx: &XdpContext, passed: Reason) -> Result<(u32, Reason), Reason> {
    match solicited(ctx) {
        Some(target) if lapsed(target.family) && unsafe { FENCED.get(&target) }.is_some() => {
            Ok((XDP_DROP, Reason::DropFencedNeighbour))
        }
        _ => Err(passed),
    }
}

/// The address an ARP request or an IPv6 neighbour solicitation asks for.
#[inline(always)]
fn solicited(ctx: &XdpContext) -> Option<FencedAddr> {
    let eth = unsafe { &*bytes_at::<ETH_HLEN>(ctx, 0).ok()? };
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q {
        let tag = unsafe { &*bytes_at::<4>(ctx, ETH_HLEN).ok()? };
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        l3 += 4;
    }
    let mut target = FencedAddr::default();
    if ethertype == ETH_P_ARP {
        // Ethernet and IPv4 (hardware type 1, protocol 0x0800, lengths 6 and 4); the
        // target protocol address is its last four bytes.
        let arp = unsafe { &*bytes_at::<28>(ctx, l3).ok()? };
        let ethernet_ipv4 = arp[0] == 0
            && arp[1] == 1
            && arp[2] == 0x08
            && arp[3] == 0
            && arp[4] == 6
            && arp[5] == 4;
        if !ethernet_ipv4 || u16::from_be_bytes([arp[6], arp[7]]) != ARP_REQUEST {
            return None;
        }
        target.addr = unsafe { words::addr4(arp[24..].as_ptr()) };
        target.family = FAMILY_V4;
        return Some(target);
    }
    if ethertype == ETH_P_IPV6 {
        // A solicitation right after the base header (RFC 4861 sends it so), its target
        // after the ICMPv6 type, code, checksum and reserved word.
        let ns = unsafe { &*bytes_at::<64>(ctx, l3).ok()? };
        if ns[0] >> 4 != 6 || ns[6] != PROTO_ICMPV6 || ns[40] != ND_NEIGHBOR_SOLICIT {
            return None;
        }
        target.addr = unsafe { words::addr16(ns[48..].as_ptr()) };
        target.family = lb_common::FAMILY_V6;
        return Some(target);
    }
    None
}
