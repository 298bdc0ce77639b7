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

pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
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

/// A data plane with one VIP per family and protocol, all served by real 0.
pub fn dataplane() -> Dataplane {
    let mut dp = Dataplane::load().expect("load XDP program (are you root?)");
    let vips = [
        (addr16(&VIP4), 80u16, PROTO_TCP, FAMILY_V4, 0u32),
        (addr16(&VIP4), 53, PROTO_UDP, FAMILY_V4, 1),
        (VIP6, 80, PROTO_TCP, FAMILY_V6, 2),
        (VIP6, 53, PROTO_UDP, FAMILY_V6, 3),
    ];
    for (i, (addr, port, proto, family, index)) in vips.into_iter().enumerate() {
        dp.set_vip(
            VipKey { addr, port_be: port.to_be(), proto, family },
            VipInfo { index, forwarding: Forwarding::Dr as u8, _pad: [0; 3] },
        )
        .unwrap();
        dp.set_real(
            i as u32,
            RealInfo {
                addr: addr16(&[10, 0, 0, 11]),
                mac: REAL_MAC,
                family,
                flags: REAL_PRESENT,
                src_mac: DIRECTOR_MAC,
                _pad: [0; 2],
                // 0: leave by the ingress interface (XDP_TX), as BPF_PROG_TEST_RUN has no other.
                ifindex: 0,
                vip: index,
            },
        )
        .unwrap();
        dp.set_maglev(index, &vec![i as u32; MAGLEV_SIZE as usize]).unwrap();
    }
    dp
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
