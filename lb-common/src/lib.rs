//! The contract between the XDP data plane and the director: every map's key and value
//! type, its name and size. Both sides compile this crate, so a layout change cannot drift;
//! the `std` feature adds what only userspace needs (the Maglev builder, `aya::Pod`).
#![no_std]

#[cfg(feature = "std")]
extern crate std;

pub mod flow_table;
pub mod hash;
#[cfg(feature = "std")]
pub mod maglev;

/// Slots in every VIP's Maglev table. Prime, as the Maglev paper requires; 65537 keeps the
/// share of each real within a fraction of a percent of its weight for up to a few hundred reals.
pub const MAGLEV_SIZE: u32 = 65537;
/// VIPs (service = address, port, protocol) the maps are declared for. lbd sizes MAGLEV
/// and VIP_STATS for `director.max_vips` when it loads the program; this is its default
/// (Katran's).
pub const MAX_VIPS: u32 = 512;
/// The most VIPs the data plane can be sized for: at most a quarter of `VIP_SLOTS`.
pub const VIPS_LIMIT: u32 = VIP_SLOTS / 4;
/// Slots of each generation of `VIPS`, a power of two fixed at build time (the program
/// masks with it): at most a quarter are used, so every VIP sits within a few slots of
/// its home.
pub const VIP_SLOTS: u32 = 4096;
/// How far from its home slot a VIP may sit; the data plane probes no further.
pub const VIP_PROBES: u32 = 8;
/// Real servers over all services (a real in two services takes two slots) the maps are
/// declared for; lbd sizes REALS and REAL_STATS for `director.max_reals` at load time.
pub const MAX_REALS: u32 = 16384;
/// The most reals the data plane can be sized for: real ids fit a 16-bit Maglev slot,
/// below its empty marker.
pub const REALS_LIMIT: u32 = MAGLEV_EMPTY as u32 - 1;
/// Flows the connection table holds (in each set, the way idle longest is replaced first).
pub const MAX_FLOWS: u32 = flow_table::FLOW_SETS * flow_table::FLOW_WAYS as u32;
/// Maglev slot value of a VIP without any real in service.
pub const NO_REAL: u32 = u32::MAX;

/// Maglev slots per entry of the MAGLEV map: one cache line of 16-bit real ids. A new
/// flow reads one random slot, and the table's footprint decides whether that read
/// misses the cache: as lines of `u16` a VIP's table takes 128 KiB, where `u32` entries,
/// which the kernel rounds to 8 bytes each, took 512 KiB (docs/BENCHMARKS.md).
pub const MAGLEV_LINE_SLOTS: u32 = 32;
/// MAGLEV entries per VIP: slot `s` of VIP `i` is `reals[s % 32]` of entry
/// `i * MAGLEV_LINES + s / 32`, which is also `u16` number `i * MAGLEV_LINES * 32 + s`
/// of the map's memory. The last line's spare slots stay empty.
pub const MAGLEV_LINES: u32 = MAGLEV_SIZE.div_ceil(MAGLEV_LINE_SLOTS);
/// An empty Maglev slot in MAGLEV: [`NO_REAL`] in 16 bits.
pub const MAGLEV_EMPTY: u16 = u16::MAX;

/// One entry of MAGLEV: 32 consecutive slots of one VIP's table.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct MaglevLine {
    pub reals: [u16; MAGLEV_LINE_SLOTS as usize],
}

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Names of the maps in the eBPF object, as the daemon looks them up.
pub mod map_names {
    pub const VIPS: &str = "VIPS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const REALS: &str = "REALS";
    pub const FLOWS: &str = "FLOWS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const REAL_STATS: &str = "REAL_STATS";
    pub const REASONS: &str = "REASONS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const FENCE: &str = "FENCE";
    pub const FENCED: &str = "FENCED";
}

/// The name of the XDP program in the eBPF object.
pub const XDP_PROGRAM: &str = "lb_xdp";

/// A service's key in `VIPS`. Addresses are 16 bytes for both families (IPv4 in the first
/// four, the rest zero) so one table serves both; the port is in network byte order, as
/// on the wire. Aligned to 4 so the data plane compares keys a word at a time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}

/// How a VIP's packets reach its reals.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Direct routing (LVS "gatewaying"): only the MACs change.
    Dr = 1,
    /// NAT (LVS "masquerading"): destination address and port become the real's, and the
    /// real's answers, routed back through the director, get the VIP's back.
    Nat = 2,
    /// IP-in-IP to the real (LVS "tunnel"), which decapsulates and answers directly.
    Tunnel = 3,
}

/// Value of `VIPS`: where the VIP's Maglev table starts and how to forward.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Index into `MAGLEV` (in units of `MAGLEV_SIZE`) and into `VIP_STATS`.
    pub index: u32,
    /// A [`Forwarding`] value.
    pub forwarding: u8,
    pub _pad: [u8; 3],
}

/// A slot of `VIPS`: an open-addressing table the daemon builds whole and the data plane
/// probes from the VIP's home slot (see [`vip_home`]) until the VIP or an unused slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot {
    pub key: VipKey,
    pub info: VipInfo,
    /// 0: unused, and the end of every probe that reaches it.
    pub used: u32,
}

/// The slot a VIP's probe starts from: a multiplicative hash of the key's words.
#[inline(always)]
pub fn vip_home(key: &VipKey) -> u32 {
    let word = |i| hash::word(&key.addr, i);
    let mut h =
        word(0) ^ word(4).rotate_left(7) ^ word(8).rotate_left(14) ^ word(12).rotate_left(21);
    h ^= ((key.port_be as u32) << 16) | ((key.proto as u32) << 8) | key.family as u32;
    h.wrapping_mul(0x9e37_79b1) >> (32 - VIP_SLOTS.trailing_zeros())
}

/// `RealInfo::flags`: the daemon has written this slot and the real belongs to a service.
pub const REAL_PRESENT: u8 = 1;
/// `RealInfo::flags`: the real's health checks say it is down (not an operator's weight 0,
/// which drains). Its TCP flows stay (a quiesced real finishes what it has); a UDP flow's
/// next packet is scheduled again, so a DNS client that reuses its source port is not
/// held on a dead real until the flow times out (keepalived issue 1781).
pub const REAL_DOWN: u8 = 2;

/// Value of `REALS`, indexed by the daemon's real id (one per service and real).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RealInfo {
    pub addr: [u8; 16],
    /// The real's MAC, as the daemon resolved it through the neighbour table; all zero
    /// while unresolved (the data plane then passes the packet and counts it).
    pub mac: [u8; 6],
    /// The MAC of the director's interface the real is reached through: the source of
    /// frames to it. Right after `mac`, as in an Ethernet header, so the data plane
    /// writes both in two stores.
    pub src_mac: [u8; 6],
    pub family: u8,
    pub flags: u8,
    /// The real's port (network byte order): NAT rewrites the VIP's port to it.
    pub port_be: u16,
    /// That interface's index: XDP_TX when it is the ingress one, a redirect otherwise.
    pub ifindex: u32,
    /// The VIP (`VipInfo::index`) this real serves: a flow whose VIP no longer owns its
    /// real is scheduled again.
    pub vip: u32,
    /// Tunnel: the outer source, the director's address on that interface.
    pub tunnel_src: [u8; 16],
    /// Tunnel: that interface's MTU, which an encapsulated packet must fit.
    pub mtu: u16,
    pub _pad: [u8; 2],
}

impl RealInfo {
    /// Both MACs known: the data plane can address frames to this real.
    #[inline(always)]
    pub fn macs_resolved(&self) -> bool {
        self.mac != [0u8; 6] && self.src_mac != [0u8; 6]
    }
}

/// A flow's 5-tuple as seen from the client (ports in network byte order), the key of the
/// connection tables. Aligned to 8 so the data plane compares keys a word at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// `FlowValue::flags`: a FIN or RST was seen, the connection is closing (InActConn).
pub const FLOW_CLOSING: u32 = 1;
/// `FlowValue::flags`: a NAT flow, whose way back its replies are rewritten by.
pub const FLOW_NAT: u32 = 2;

/// One flow of the connection table, as the daemon reads it from a way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub real: u32,
    pub flags: u32,
    /// `SETTINGS[SETTING_CLOCK]` at the last packet: the daemon's CLOCK_MONOTONIC in whole
    /// seconds, as fine as IPVS's timeouts need, and read per packet without a helper call.
    pub last_seen_s: u32,
    pub _pad: u32,
}

/// `SETTINGS` entries.
pub const SETTING_FLAGS: u32 = 0;
/// The daemon's clock: CLOCK_MONOTONIC in whole seconds, written every second.
pub const SETTING_CLOCK: u32 = 1;
/// Which generation of `VIPS` is live (0 or 1): the daemon writes the other one whole,
/// then flips this, so a packet never sees a table half rebuilt.
pub const SETTING_VIP_GENERATION: u32 = 2;
pub const SETTINGS_LEN: u32 = 3;

/// `SETTINGS[SETTING_FLAGS]` bits.
pub const SETTING_NAT: u32 = 1;

/// `FENCE` entries: one lease per address family, as each family's VIPs have a virtual
/// router of their own.
pub const FENCE_V4: u32 = 0;
pub const FENCE_V6: u32 = 1;
pub const FENCE_LEN: u32 = 2;
/// Addresses `FENCED` holds at most: every VIP address of the largest config.
pub const MAX_FENCED: u32 = VIPS_LIMIT;

/// Value of `FENCE`: how long this director may answer for its family's VIPs. With `ha`,
/// lbd renews it with every advert it sends as master; when lbd dies or hangs it lapses,
/// and from then on the data plane drops ARP requests and neighbour solicitations for the
/// VIPs and takes no new flow for them, so only the new master answers for them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// CLOCK_MONOTONIC in nanoseconds (the kernel's `bpf_ktime_get_ns`); 0: lapsed.
    pub until_ns: u64,
    /// 0: no fence (a director without `ha`); the lease is not looked at.
    pub armed: u32,
    pub _pad: u32,
}

/// Key of `FENCED`: an address whose ARP requests or neighbour solicitations are dropped
/// while its family's lease has lapsed (the `ha` VIPs).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FencedAddr {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Per-CPU value of `VIP_STATS` and `REAL_STATS`: ipvsadm's Conns, InPkts, InBytes, and
/// OutPkts, OutBytes (the replies NAT sees; direct routing never sees them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub conns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
}

/// Why the data plane passed, dropped or forwarded a packet: the index into `REASONS`.
/// Every packet is counted under exactly one reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Forwarded to a real by XDP_TX.
    Transmitted = 0,
    /// Forwarded to a real on another interface by XDP_REDIRECT.
    Redirected,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    PassNotIp,
    /// IP, but not for any VIP.
    PassNotVip,
    /// IP, neither TCP nor UDP (ICMP, ICMPv6 neighbour discovery, ...).
    PassOtherProto,
    /// A header ends past the end of the frame.
    PassTruncated,
    /// A header is inconsistent (IPv4 IHL below 5, wrong version, ...).
    PassMalformed,
    /// An IPv4 fragment: left to the kernel (only the first carries ports).
    PassFragment,
    /// IPv6 with extension headers before the transport header.
    PassIpv6ExtHeader,
    /// A VIP whose Maglev table has no real (every real down or weight 0).
    PassNoReal,
    /// The chosen real's MAC (or the interface to reach it) is not known.
    PassRealUnresolved,
    /// A map lookup that cannot fail did (a bug, counted rather than hidden).
    PassInternal,
    /// Too big to tunnel and no ICMP error possible (no DF, IPv4 options, VLAN): dropped.
    DropTooBig,
    /// Too big to tunnel: turned into ICMP fragmentation-needed / packet-too-big.
    TooBigSent,
    /// An ICMP error about a VIP flow the table does not hold.
    PassIcmpNoFlow,
    /// An ARP request or IPv6 neighbour solicitation for a VIP while the fence's lease has
    /// lapsed (lbd dead or hung as master): dropped, so only the new master answers.
    DropFencedNeighbour,
    /// A packet that would open a flow to a VIP while the lease has lapsed: dropped.
    DropFencedFlow,
}

impl Reason {
    pub const COUNT: u32 = Reason::DropFencedFlow as u32 + 1;
    pub const ALL: [Reason; Reason::COUNT as usize] = [
        Reason::Transmitted,
        Reason::Redirected,
        Reason::PassNotIp,
        Reason::PassNotVip,
        Reason::PassOtherProto,
        Reason::PassTruncated,
        Reason::PassMalformed,
        Reason::PassFragment,
        Reason::PassIpv6ExtHeader,
        Reason::PassNoReal,
        Reason::PassRealUnresolved,
        Reason::PassInternal,
        Reason::DropTooBig,
        Reason::TooBigSent,
        Reason::PassIcmpNoFlow,
        Reason::DropFencedNeighbour,
        Reason::DropFencedFlow,
    ];

    /// The name used in logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Transmitted => "tx",
            Reason::Redirected => "redirect",
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassNotVip => "pass_not_vip",
            Reason::PassOtherProto => "pass_other_proto",
            Reason::PassTruncated => "pass_truncated",
            Reason::PassMalformed => "pass_malformed",
            Reason::PassFragment => "pass_fragment",
            Reason::PassIpv6ExtHeader => "pass_ipv6_ext_header",
            Reason::PassNoReal => "pass_no_real",
            Reason::PassRealUnresolved => "pass_real_unresolved",
            Reason::PassInternal => "pass_internal",
            Reason::DropTooBig => "drop_too_big",
            Reason::TooBigSent => "too_big_sent",
            Reason::PassIcmpNoFlow => "pass_icmp_no_flow",
            Reason::DropFencedNeighbour => "drop_fenced_neighbour",
            Reason::DropFencedFlow => "drop_fenced_flow",
        }
    }
}

// The layouts are part of the kernel ABI of the maps: no implicit padding, fixed sizes.
const _: () = {
    assert!(core::mem::size_of::<VipKey>() == 20);
    assert!(core::mem::size_of::<VipInfo>() == 8);
    assert!(core::mem::size_of::<VipSlot>() == 32);
    assert!(VIP_SLOTS.is_power_of_two() && VIP_SLOTS >= 4 * VIPS_LIMIT);
    assert!(MAX_VIPS <= VIPS_LIMIT);
    assert!(core::mem::size_of::<RealInfo>() == 60);
    // Destination then source MAC, as the Ethernet header holds them.
    assert!(core::mem::offset_of!(RealInfo, src_mac) == core::mem::offset_of!(RealInfo, mac) + 6);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowValue>() == 16);
    assert!(core::mem::size_of::<Counters>() == 40);
    assert!(core::mem::size_of::<MaglevLine>() == 64);
    assert!(core::mem::size_of::<Lease>() == 16);
    assert!(core::mem::size_of::<FencedAddr>() == 20);
    // Real ids fit a Maglev slot, below the empty marker.
    assert!(REALS_LIMIT < MAGLEV_EMPTY as u32 && MAX_REALS <= REALS_LIMIT);
};

#[cfg(feature = "std")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)], made only of integers and byte arrays, without padding
    // (checked by the size asserts above), so every bit pattern is valid.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for VipSlot {}
    unsafe impl aya::Pod for RealInfo {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for Lease {}
    unsafe impl aya::Pod for FencedAddr {}
    unsafe impl aya::Pod for flow_table::FlowSet {}
}
