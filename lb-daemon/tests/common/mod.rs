//! What the packet tests and the per-packet benchmark share: a data plane loaded with one
//! VIP per family and protocol, frames built with etherparse, and one BPF_PROG_TEST_RUN.
#![allow(dead_code)]

use aya::programs::{TestRun, TestRunOptions};
use etherparse::PacketBuilder;
use lb_common::{
    FAMILY_V4, FAMILY_V6, Forwarding, MAGLEV_SIZE, PROTO_TCP, PROTO_UDP, REAL_PRESENT, RealInfo,
    VipInfo, VipKey,
};
use lb_daemon::dataplane::Dataplane;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DIRECTOR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const REAL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
pub const VIP4: [u8; 4] = [192, 0, 2, 10];
pub const VIP6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];

pub fn addr16(a: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..a.len()].copy_from_slice(a);
    out
}

/// The director's addresses a tunnel's outer header leaves from, by family (v4, v6).
pub const TUNNEL_SRC: [[u8; 16]; 2] = [
    [198, 51, 100, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02],
];

/// The NAT services' reals: a port other than the VIP's, as NAT allows.
pub const NAT_REAL4: [u8; 4] = [10, 0, 0, 21];
pub const NAT_REAL6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21];
pub const NAT_REAL_PORT_TCP: u16 = 8080;
pub const NAT_REAL_PORT_UDP: u16 = 5353;
/// The tunnel services: VIP port 90 (TCP) to reals 10.0.0.31 / 2001:db8::31, whose
/// interface has an MTU of 1500; VIP port 91 (TCP) to a real behind an MTU of 120.
pub const TUNNEL_REAL4: [u8; 4] = [10, 0, 0, 31];
pub const TUNNEL_REAL6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x31];
pub const TUNNEL_VIP_PORT: u16 = 90;
pub const SMALL_MTU_VIP_PORT: u16 = 91;
pub const SMALL_MTU: u16 = 120;
/// The tunnel services over UDP: VIP port 92 to the same reals.
pub const TUNNEL_VIP_PORT_UDP: u16 = 92;
/// VIP ports of the NAT services (the DR ones use 80 and 53).
pub const NAT_VIP_PORT_TCP: u16 = 81;
pub const NAT_VIP_PORT_UDP: u16 = 54;

/// One service of the test data plane: its VIP, how it forwards, and its one real.
#[derive(Clone, Copy, Debug)]
pub struct Service {
    pub vip: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    pub forwarding: Forwarding,
    pub real: [u8; 16],
    /// The real's port (NAT translates to it; the others keep the VIP's).
    pub real_port: u16,
    /// The MTU of the real's interface (what the tunnel's too-big check uses).
    pub mtu: u16,
}

/// The services `dataplane()` loads, VIP index i served by real i: a DR VIP per family and
/// protocol (ports 80, 53; real 10.0.0.11 / 2001:db8::11), a NAT VIP per family and
/// protocol (ports 81, 54; reals 10.0.0.21 / 2001:db8::21 on ports 8080, 5353), then the
/// tunnel VIPs (ports 90, 91 TCP and 92 UDP).
pub fn services() -> Vec<Service> {
    let dr = Forwarding::Dr;
    let nat = Forwarding::Nat;
    let tun = Forwarding::Tunnel;
    let (dr4, dr6) = (
        addr16(&[10, 0, 0, 11]),
        addr16(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11]),
    );
    let (v4, v6) = (addr16(&VIP4), VIP6);
    let (nat4, nat6) = (addr16(&NAT_REAL4), NAT_REAL6);
    let (tun4, tun6) = (addr16(&TUNNEL_REAL4), TUNNEL_REAL6);
    let (tcp, udp) = (PROTO_TCP, PROTO_UDP);
    let (f4, f6) = (FAMILY_V4, FAMILY_V6);
    let (nat_tcp, nat_udp) = (NAT_REAL_PORT_TCP, NAT_REAL_PORT_UDP);
    let (t, small, tu) = (TUNNEL_VIP_PORT, SMALL_MTU_VIP_PORT, TUNNEL_VIP_PORT_UDP);
    [
        (v4, 80u16, tcp, f4, dr, dr4, 80u16),
        (v4, 53, udp, f4, dr, dr4, 53),
        (v6, 80, tcp, f6, dr, dr6, 80),
        (v6, 53, udp, f6, dr, dr6, 53),
        (v4, NAT_VIP_PORT_TCP, tcp, f4, nat, nat4, nat_tcp),
        (v4, NAT_VIP_PORT_UDP, udp, f4, nat, nat4, nat_udp),
        (v6, NAT_VIP_PORT_TCP, tcp, f6, nat, nat6, nat_tcp),
        (v6, NAT_VIP_PORT_UDP, udp, f6, nat, nat6, nat_udp),
        (v4, t, tcp, f4, tun, tun4, t),
        (v6, t, tcp, f6, tun, tun6, t),
        (v4, small, tcp, f4, tun, tun4, small),
        (v6, small, tcp, f6, tun, tun6, small),
        (v4, tu, udp, f4, tun, tun4, tu),
        (v6, tu, udp, f6, tun, tun6, tu),
    ]
    .into_iter()
    .map(|(vip, port, proto, family, forwarding, real, real_port)| Service {
        vip,
        port,
        proto,
        family,
        forwarding,
        real,
        real_port,
        mtu: if port == SMALL_MTU_VIP_PORT { SMALL_MTU } else { 1500 },
    })
    .collect()
}

/// A data plane with `services()`, NAT on.
pub fn dataplane() -> Dataplane {
    let mut dp = Dataplane::load().expect("load XDP program (are you root?)");
    dp.set_nat(true).unwrap();
    for (i, s) in services().into_iter().enumerate() {
        let index = i as u32;
        dp.set_vip(
            VipKey { addr: s.vip, port_be: s.port.to_be(), proto: s.proto, family: s.family },
            VipInfo { index, forwarding: s.forwarding as u8, _pad: [0; 3] },
        )
        .unwrap();
        dp.set_real(index, real_of(index)).unwrap();
        dp.set_maglev(index, &vec![index; MAGLEV_SIZE as usize]).unwrap();
    }
    dp
}

/// Real `index` as `dataplane()` writes it: service `index`'s one real, serving it.
pub fn real_of(index: u32) -> RealInfo {
    let s = services()[index as usize];
    RealInfo {
        addr: s.real,
        mac: REAL_MAC,
        family: s.family,
        flags: REAL_PRESENT,
        src_mac: DIRECTOR_MAC,
        port_be: s.real_port.to_be(),
        tunnel_src: TUNNEL_SRC[s.family as usize / 6],
        mtu: s.mtu,
        _pad: [0; 2],
        // 0: leave by the ingress interface (XDP_TX), as BPF_PROG_TEST_RUN has no other.
        ifindex: 0,
        vip: index,
    }
}

pub fn run(dp: &mut Dataplane, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    let opts =
        TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() };
    let result = dp.program().unwrap().test_run(opts).expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

pub fn tcp4(dst: [u8; 4], dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, DIRECTOR_MAC)
        .ipv4([198, 51, 100, 7], dst, 64)
        .tcp(40000, dport, 1, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    v
}

pub fn udp6(dst: [u8; 16], dport: u16) -> Vec<u8> {
    let src = addr16(&[0x20, 0x01, 0x0d, 0xb8, 0, 1]);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, DIRECTOR_MAC)
        .ipv6(src, dst, 64)
        .udp(41000, dport)
        .write(&mut v, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00")
        .unwrap();
    v
}

/// One BPF_PROG_TEST_RUN with repeat = 1: the verdict and the kernel-measured duration.
pub fn run_timed(dp: &mut Dataplane, frame: &[u8]) -> (u32, std::time::Duration) {
    let mut out = vec![0u8; frame.len() + 256];
    let opts =
        TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() };
    let result = dp.program().unwrap().test_run(opts).expect("BPF_PROG_TEST_RUN");
    (result.return_value, result.duration)
}

/// Any TCP or UDP frame, checksums computed by etherparse: the independent reference the
/// rewriting paths are compared with.
#[derive(Clone)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: std::net::SocketAddr,
    pub dst: std::net::SocketAddr,
    pub udp: bool,
    /// TCP flags: SYN if true, else ACK.
    pub syn: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A client's empty TCP SYN (or UDP datagram) to the director.
    pub fn opening(src: std::net::SocketAddr, dst: std::net::SocketAddr, udp: bool) -> Frame {
        Frame {
            src_mac: CLIENT_MAC,
            dst_mac: DIRECTOR_MAC,
            src,
            dst,
            udp,
            syn: true,
            payload: vec![],
        }
    }

    pub fn build(&self) -> Vec<u8> {
        use std::net::IpAddr;
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let ip = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
            _ => panic!("mixed families"),
        };
        let mut v = Vec::new();
        if self.udp {
            ip.udp(self.src.port(), self.dst.port()).write(&mut v, &self.payload).unwrap();
        } else {
            let tcp = ip.tcp(self.src.port(), self.dst.port(), 1000, 64240);
            let tcp = if self.syn { tcp.syn() } else { tcp.ack(1) };
            tcp.write(&mut v, &self.payload).unwrap();
        }
        v
    }
}

/// `frame` with an 802.1Q tag (TPID 0x8100, then `tci`) inserted after the MACs.
pub fn vlan_tagged(frame: &[u8], tci: u16) -> Vec<u8> {
    let tci = tci.to_be_bytes();
    [&frame[..12], &[0x81, 0x00, tci[0], tci[1]], &frame[12..]].concat()
}

/// What the tunnel must send for the client's IP packet `inner` (exactly its IP length):
/// Ethernet from the director to the real, the 802.1Q tag `tci` kept if the request had
/// one, and an outer header built by etherparse (checksum included) from the family's
/// tunnel source to its tunnel real, copying TOS and DF (IPv4), or traffic class and flow
/// label (IPv6), from the inner header.
pub fn tunnelled(inner: &[u8], tci: Option<u16>) -> Vec<u8> {
    use etherparse::{IpDscp, IpEcn, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header};
    let v6 = inner[0] >> 4 == 6;
    let mut want = [REAL_MAC, DIRECTOR_MAC].concat();
    if let Some(tci) = tci {
        want.extend_from_slice(&[0x81, 0x00]);
        want.extend_from_slice(&tci.to_be_bytes());
    }
    if v6 {
        want.extend_from_slice(&[0x86, 0xdd]);
        let first = u32::from_be_bytes([inner[0], inner[1], inner[2], inner[3]]);
        Ipv6Header {
            traffic_class: (first >> 20) as u8,
            flow_label: Ipv6FlowLabel::try_new(first & 0xf_ffff).unwrap(),
            payload_length: inner.len() as u16,
            next_header: IpNumber::IPV6,
            hop_limit: 64,
            source: TUNNEL_SRC[1],
            destination: TUNNEL_REAL6,
        }
        .write(&mut want)
        .unwrap();
    } else {
        want.extend_from_slice(&[0x08, 0x00]);
        let source = TUNNEL_SRC[0][..4].try_into().unwrap();
        let mut outer =
            Ipv4Header::new(inner.len() as u16, 64, IpNumber::IPV4, source, TUNNEL_REAL4).unwrap();
        outer.dscp = IpDscp::try_new(inner[1] >> 2).unwrap();
        outer.ecn = IpEcn::try_new(inner[1] & 3).unwrap();
        outer.dont_fragment = inner[6] & 0x40 != 0;
        outer.write(&mut want).unwrap(); // computes the header checksum
    }
    want.extend_from_slice(inner);
    want
}
