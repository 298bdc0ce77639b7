//! The director's XDP program. Each packet goes down one list, top to bottom:
//! parse, find the VIP, find the flow (or pick a real by Maglev), forward, count.
//! Anything that is not for a VIP, or cannot be handled, passes to the kernel untouched,
//! counted under its reason.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod csum;
mod fence;
mod floor;
mod flows;
mod icmp;
mod maps;
mod nat;
mod parse;
mod tunnel;
mod words;

use core::{mem::offset_of, ptr::read_volatile};

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::bpf_redirect,
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    FAMILY_V4, FLOW_CLOSING, FLOW_NAT, Forwarding, MAGLEV_EMPTY, MAGLEV_LINE_SLOTS, MAGLEV_LINES,
    PROTO_UDP, REAL_DOWN, REAL_PRESENT, RealInfo, Reason, SETTING_CLOCK, SETTING_VIP_GENERATION,
    VIP_PROBES, VIP_SLOTS, VipInfo, VipKey,
    flow_table::{FlowSet, set_of_hash},
    hash::{flow_client_hash, maglev_slot},
    vip_home,
};
use maps::{FLOWS, MAGLEV, REAL_STATS, REALS, REASONS, SETTINGS, VIP_STATS, VIPS};
use parse::Packet;

#[xdp]
#[inline(always)]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let (action, reason) = match balance(&ctx) {
        Ok(done) => done,
        Err(Reason::DropFencedFlow) => (XDP_DROP, Reason::DropFencedFlow),
        Err(reason) => (XDP_PASS, reason),
    };
    count_reason(reason);
    action
}

#[inline(always)]
fn balance(ctx: &XdpContext) -> Result<(u32, Reason), Reason> {
    let packet = match parse::parse(ctx) {
        Ok(packet) => packet,
        // ARP and neighbour discovery: the fence may keep this director quiet.
        Err(reason @ (Reason::PassNotIp | Reason::PassOtherProto)) => {
            return fence::neighbour_request(ctx, reason);
        }
        Err(other) => return Err(other),
    };
    if packet.icmp_error {
        return icmp_error(ctx, &packet);
    }
    let vip = match find_vip(&packet) {
        Ok(vip) => vip,
        // Not for a VIP: maybe a real's answer to a NAT flow, on its way back.
        Err(Reason::PassNotVip) => return nat::reply(ctx, &packet),
        Err(other) => return Err(other),
    };
    let flow = find_real(&packet, &vip)?;
    let real = flow.real;
    let done = match vip.forwarding {
        f if f == Forwarding::Dr as u8 => forward_dr(ctx, real)?,
        f if f == Forwarding::Tunnel as u8 => tunnel::forward(ctx, &packet, real)?,
        f if f == Forwarding::Nat as u8 => nat::forward(ctx, &packet, &flow)?,
        _ => return Err(Reason::PassInternal),
    };
    count_traffic(vip.index, flow.real_id, flow.new_connection, packet.len);
    Ok(done)
}

/// An ICMP error about a flow: about one to a VIP, it goes to the flow's real; about a NAT
/// flow's request, back to the client. Cold: errors are rare, and without the hint their
/// code cost every other packet registers and about 8 ns (docs/BENCHMARKS.md).
///
/// An error is about a flow only when it is addressed to the source of the packet it
/// quotes, as a router addresses it: the VIP (an answer of the flow's), or the client (a
/// NAT request). The same quote addressed elsewhere is not the flow's to forward.
#[cold]
#[inline(always)]
fn icmp_error(ctx: &XdpContext, packet: &Packet) -> Result<(u32, Reason), Reason> {
    let addressed = to_quoted_source(ctx, packet)?;
    match find_vip(packet) {
        Ok(vip) if addressed => icmp_to_real(ctx, packet, &vip),
        Ok(_) => Err(Reason::PassIcmpNoFlow),
        Err(Reason::PassNotVip) if addressed => nat::icmp_to_client(ctx, packet),
        Err(other) => Err(other),
    }
}

/// Whether an ICMP error's destination is the quoted packet's source (`key.dst`: the key
/// is the quoted packet's, reversed).
#[inline(always)]
fn to_quoted_source(ctx: &XdpContext, packet: &Packet) -> Result<bool, Reason> {
    let dst = if packet.key.family == FAMILY_V4 {
        unsafe { words::addr4(parse::bytes_at::<4>(ctx, packet.l3 + 16)? as *const u8) }
    } else {
        unsafe { words::addr16(parse::bytes_at::<16>(ctx, packet.l3 + 24)? as *const u8) }
    };
    Ok(flows::same(&dst, &packet.key.dst))
}

/// An ICMP error about a VIP flow goes to the real that owns the flow, as the flow's own
/// packets do, so its stack learns of the unreachable client or the smaller path MTU.
#[inline(always)]
fn icmp_to_real(ctx: &XdpContext, packet: &Packet, vip: &VipInfo) -> Result<(u32, Reason), Reason> {
    let client = flow_client_hash(&packet.key);
    let set = FLOWS.get(set_of_hash(client)).ok_or(Reason::PassInternal)?;
    let found = flows::find(&set.ways, &set.keys, &packet.key, client);
    let real_id = found.ok_or(Reason::PassIcmpNoFlow)?.real;
    let real = serving_real(real_id, vip).ok_or(Reason::PassIcmpNoFlow)?;
    let done = match vip.forwarding {
        f if f == Forwarding::Dr as u8 => forward_dr(ctx, real)?,
        f if f == Forwarding::Tunnel as u8 => tunnel::forward(ctx, packet, real)?,
        f if f == Forwarding::Nat as u8 => nat::icmp_to_real(ctx, packet, real)?,
        _ => return Err(Reason::PassInternal),
    };
    count_traffic(vip.index, real_id, false, packet.len);
    Ok(done)
}

#[inline(always)]
fn find_vip(packet: &Packet) -> Result<VipInfo, Reason> {
    let key = VipKey {
        addr: packet.key.dst,
        port_be: packet.key.dport_be,
        proto: packet.key.proto,
        family: packet.key.family,
    };
    let generation = SETTINGS.get(SETTING_VIP_GENERATION).copied().unwrap_or(0) & 1;
    let home = vip_home(&key);
    for probe in 0..VIP_PROBES {
        let index = generation * VIP_SLOTS + ((home + probe) & (VIP_SLOTS - 1));
        let slot = VIPS.get(index).ok_or(Reason::PassInternal)?;
        if slot.used == 0 {
            break;
        }
        if flows::same(&slot.key, &key) {
            return Ok(slot.info);
        }
    }
    Err(Reason::PassNotVip)
}

/// A packet's flow, found or new, and its real.
pub(crate) struct Flow {
    pub real_id: u32,
    pub real: &'static RealInfo,
    /// First packet of the flow in the table: NAT writes its way back.
    pub new_flow: bool,
    /// The packet opens a connection (ipvsadm's Conns).
    pub new_connection: bool,
    /// Where the flow is: its set and way in FLOWS.
    pub set: *mut FlowSet,
    pub way: usize,
}

/// The real of an established flow, or a new one from the VIP's Maglev table. A flow keeps
/// its real while the real still serves this VIP, whatever the weights say.
#[inline(always)]
fn find_real(packet: &Packet, vip: &VipInfo) -> Result<Flow, Reason> {
    let now = clock();
    let client = flow_client_hash(&packet.key);
    let set_ptr = FLOWS.get_ptr_mut(set_of_hash(client)).ok_or(Reason::PassInternal)?;
    let set = unsafe { &mut *set_ptr };
    let closes = if packet.closes_connection() { FLOW_CLOSING } else { 0 };
    let mut way = None;
    if let Some(found) = flows::find(&set.ways, &set.keys, &packet.key, client) {
        // A SYN on a tuple whose connection closed is a new connection (the client reused
        // its port): schedule it afresh, as IPVS does with conn_reuse_mode.
        let reused = found.flags & FLOW_CLOSING != 0 && packet.opens_connection();
        // A UDP flow leaves a real its checks found down; a TCP flow stays (quiesced).
        let dead = |r: &&RealInfo| packet.key.proto == PROTO_UDP && r.flags & REAL_DOWN != 0;
        if let Some(real) = serving_real(found.real, vip).filter(|r| !reused && !dead(r)) {
            flows::touch(&mut set.ways, &found, now, closes);
            let (real_id, way) = (found.real, found.way);
            return Ok(Flow {
                real_id,
                real,
                new_flow: false,
                new_connection: false,
                set: set_ptr,
                way,
            });
        }
        // Rescheduled: the new real takes over this way (a second way would hide it).
        way = Some(found.way);
    }
    // A new flow only while this director may answer for the VIP (fence.rs).
    if fence::lapsed(packet.key.family) {
        return Err(Reason::DropFencedFlow);
    }
    let real_id = maglev_pick(packet, vip)?;
    let real = serving_real(real_id, vip).ok_or(Reason::PassInternal)?;
    let nat = if vip.forwarding == Forwarding::Nat as u8 { FLOW_NAT } else { 0 };
    let w = way.unwrap_or_else(|| flows::victim(&set.ways, now));
    flows::record(&mut set.ways, &mut set.keys, w, &packet.key, client, real_id, closes | nat, now);
    let new_connection = packet.opens_connection();
    Ok(Flow { real_id, real, new_flow: true, new_connection, set: set_ptr, way: w })
}

/// The real that VIP `vip`'s Maglev table gives the packet's flow; `PassNoReal` when the
/// VIP has no real in service.
#[inline(always)]
fn maglev_pick(packet: &Packet, vip: &VipInfo) -> Result<u32, Reason> {
    let slot = maglev_slot(&packet.key);
    let line = vip.index * MAGLEV_LINES + slot / MAGLEV_LINE_SLOTS;
    let line = MAGLEV.get(line).ok_or(Reason::PassInternal)?;
    // One aligned 16-bit load: the daemon stores each slot whole.
    match unsafe { read_volatile(&line.reals[(slot % MAGLEV_LINE_SLOTS) as usize]) } {
        MAGLEV_EMPTY => Err(Reason::PassNoReal),
        real_id => Ok(real_id as u32),
    }
}

/// The daemon's clock, `SETTINGS[SETTING_CLOCK]`: what flows are aged by.
#[inline(always)]
pub(crate) fn clock() -> u32 {
    SETTINGS.get(SETTING_CLOCK).copied().unwrap_or(0)
}

#[inline(always)]
fn serving_real(real_id: u32, vip: &VipInfo) -> Option<&'static RealInfo> {
    let real = REALS.get(real_id)?;
    (real.flags & REAL_PRESENT != 0 && real.vip == vip.index).then_some(real)
}

/// Direct routing: the frame goes to the real's MAC from ours; the IP packet is untouched
/// (the real carries the VIP on its loopback and answers the client directly).
#[inline(always)]
fn forward_dr(ctx: &XdpContext, real: &RealInfo) -> Result<(u32, Reason), Reason> {
    if !real.macs_resolved() {
        return Err(Reason::PassRealUnresolved);
    }
    send_to_real(ctx, real)
}

/// Addresses the frame to the real and sends it out of the real's interface. The caller
/// has checked that the real's MACs are known, before changing anything else.
#[inline(always)]
pub(crate) fn send_to_real(ctx: &XdpContext, real: &RealInfo) -> Result<(u32, Reason), Reason> {
    address_to_real(ctx, real)?;
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    Ok(transmit(ingress, real.ifindex))
}

/// Addresses the frame to the real's MAC from ours on its side.
#[inline(always)]
pub(crate) fn address_to_real(ctx: &XdpContext, real: &RealInfo) -> Result<(), Reason> {
    let eth = parse::bytes_at::<12>(ctx, 0)? as *mut u8;
    let macs = unsafe { (real as *const RealInfo as *const u8).add(offset_of!(RealInfo, mac)) };
    // `mac` then `src_mac`, adjacent as in the header (lb-common asserts it).
    unsafe { words::copy12(eth, macs) };
    Ok(())
}

/// Sends the rewritten frame out of `egress`: XDP_TX when it is where the frame came in
/// (or unknown, 0), a redirect otherwise.
#[inline(always)]
pub(crate) fn transmit(ingress: u32, egress: u32) -> (u32, Reason) {
    if egress == 0 || egress == ingress {
        (XDP_TX, Reason::Transmitted)
    } else {
        (unsafe { bpf_redirect(egress, 0) } as u32, Reason::Redirected)
    }
}

#[inline(always)]
fn count_traffic(vip_index: u32, real_id: u32, new_connection: bool, bytes: u64) {
    let conns = new_connection as u64;
    if let Some(c) = VIP_STATS.get_ptr_mut(vip_index) {
        let c = unsafe { &mut *c };
        c.conns += conns;
        c.packets += 1;
        c.bytes += bytes;
    }
    if let Some(c) = REAL_STATS.get_ptr_mut(real_id) {
        let c = unsafe { &mut *c };
        c.conns += conns;
        c.packets += 1;
        c.bytes += bytes;
    }
}

/// A NAT reply: ipvsadm's OutPkts and OutBytes.
#[inline(always)]
pub(crate) fn count_reply(vip_index: u32, real_id: u32, bytes: u64) {
    if let Some(c) = VIP_STATS.get_ptr_mut(vip_index) {
        let c = unsafe { &mut *c };
        c.out_packets += 1;
        c.out_bytes += bytes;
    }
    if let Some(c) = REAL_STATS.get_ptr_mut(real_id) {
        let c = unsafe { &mut *c };
        c.out_packets += 1;
        c.out_bytes += bytes;
    }
}

#[inline(always)]
fn count_reason(reason: Reason) {
    if let Some(n) = REASONS.get_ptr_mut(reason as u32) {
        unsafe { *n += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier rejects a program whose panic paths survive optimisation.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
