//! BPF_PROG_TEST_RUN packet tests: the real XDP program, loaded by the real loader, run on
//! hand-built frames; the output is compared byte for byte. Needs root (CAP_BPF).

mod common;

use common::*;
use etherparse::PacketBuilder;
use lb_common::{
    FAMILY_V4, FlowKey, MAGLEV_LINE_SLOTS, MAGLEV_SIZE, NO_REAL, PROTO_TCP, REAL_PRESENT, RealInfo,
    Reason, hash::maglev_slot,
};
use lb_daemon::dataplane::Dataplane;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

fn reason_count(dp: &Dataplane, reason: Reason) -> u64 {
    dp.reasons().unwrap().into_iter().find(|(r, _)| *r == reason).unwrap().1
}

/// What direct routing must produce: the same frame with only the MACs changed.
fn dr_rewritten(frame: &[u8]) -> Vec<u8> {
    let mut want = frame.to_vec();
    want[..6].copy_from_slice(&REAL_MAC);
    want[6..12].copy_from_slice(&DIRECTOR_MAC);
    want
}

/// The NAT tests' addresses, IPv4 then IPv6: (VIP, real, client).
fn nat_addresses() -> [(IpAddr, IpAddr, IpAddr); 2] {
    [
        (
            IpAddr::V4(Ipv4Addr::from(VIP4)),
            IpAddr::V4(Ipv4Addr::from(NAT_REAL4)),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
        ),
        (
            IpAddr::V6(Ipv6Addr::from(VIP6)),
            IpAddr::V6(Ipv6Addr::from(NAT_REAL6)),
            IpAddr::V6("2001:db8:1::7".parse().unwrap()),
        ),
    ]
}

/// A NAT flow's request (client -> VIP, a SYN for TCP) and its real's reply (real ->
/// client, before the director rewrites it), with the VIP and real ports of `udp`.
fn nat_flow(vip: IpAddr, real: IpAddr, client: SocketAddr, udp: bool) -> (Frame, Frame) {
    let (vip_port, real_port) = if udp {
        (NAT_VIP_PORT_UDP, NAT_REAL_PORT_UDP)
    } else {
        (NAT_VIP_PORT_TCP, NAT_REAL_PORT_TCP)
    };
    let request = Frame {
        src_mac: CLIENT_MAC,
        dst_mac: DIRECTOR_MAC,
        src: client,
        dst: SocketAddr::new(vip, vip_port),
        udp,
        syn: true,
        payload: b"request".to_vec(),
    };
    let reply = Frame {
        src_mac: REAL_MAC,
        dst_mac: DIRECTOR_MAC,
        src: SocketAddr::new(real, real_port),
        dst: client,
        udp,
        syn: false,
        payload: b"the answer".to_vec(),
    };
    (request, reply)
}

/// ICMP fragmentation-needed (IPv4) or packet-too-big (IPv6), MTU 1400, from `from` to `to`,
/// between `macs` (source, destination), quoting `quoted` (an IP packet, or its start).
fn too_big_error(macs: ([u8; 6], [u8; 6]), from: IpAddr, to: IpAddr, quoted: &[u8]) -> Vec<u8> {
    use etherparse::{Icmpv4Type, Icmpv6Type, icmpv4::DestUnreachableHeader};
    let mut v = Vec::new();
    let b = PacketBuilder::ethernet2(macs.0, macs.1);
    match (from, to) {
        (IpAddr::V4(f), IpAddr::V4(t)) => b
            .ipv4(f.octets(), t.octets(), 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
            ))
            .write(&mut v, quoted)
            .unwrap(),
        (IpAddr::V6(f), IpAddr::V6(t)) => b
            .ipv6(f.octets(), t.octets(), 64)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1400 })
            .write(&mut v, quoted)
            .unwrap(),
        _ => panic!("mixed families"),
    }
    v
}

#[test]
fn vip_packets_leave_with_only_their_macs_changed() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    for frame in [tcp4(VIP4, 80, true), tcp4(VIP4, 80, false), udp6(VIP6, 53)] {
        let (action, out) = run(&mut dp, &frame);
        assert_eq!(action, XDP_TX);
        assert_eq!(out, dr_rewritten(&frame));
    }
    assert_eq!(reason_count(&dp, Reason::Transmitted), 3);
    // One SYN and one UDP datagram opened connections; the ACK belonged to the SYN's flow.
    assert_eq!(dp.vip_counters(0).unwrap().conns, 1);
    assert_eq!(dp.vip_counters(0).unwrap().packets, 2);
    assert_eq!(dp.vip_counters(3).unwrap().conns, 1);
    assert_eq!(dp.flows().len(), 2);
}

/// A DNS query to the IPv4 VIP in VLAN 42.
fn vlan_dns_query() -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, DIRECTOR_MAC)
        .single_vlan(etherparse::VlanId::try_new(42).unwrap())
        .ipv4([198, 51, 100, 7], VIP4, 64)
        .udp(41000, 53)
        .write(&mut v, b"query")
        .unwrap();
    v
}

#[test]
fn vlan_tagged_vip_packets_keep_their_tag() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let v = vlan_dns_query();
    let (action, out) = run(&mut dp, &v);
    assert_eq!(action, XDP_TX);
    assert_eq!(out, dr_rewritten(&v));
}

#[test]
fn ipv4_options_are_skipped() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let mut frame = tcp4(VIP4, 80, true);
    // Insert 4 bytes of options (NOP NOP NOP EOL): IHL 6, total length +4, checksum redone.
    frame.splice(34..34, [1u8, 1, 1, 0]);
    frame[14] = 0x46;
    let total = u16::from_be_bytes([frame[16], frame[17]]) + 4;
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    let (action, out) = run(&mut dp, &frame);
    assert_eq!(action, XDP_TX);
    assert_eq!(out, dr_rewritten(&frame));
}

#[test]
fn not_for_a_vip_passes_untouched() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    for frame in [tcp4([192, 0, 2, 11], 80, true), tcp4(VIP4, 82, true), udp6(VIP6, 55)] {
        let (action, out) = run(&mut dp, &frame);
        assert_eq!((action, &out), (XDP_PASS, &frame));
    }
    assert_eq!(reason_count(&dp, Reason::PassNotVip), 3);
}

/// VIPS is rebuilt whole in its idle generation and then made live: a removed VIP stops
/// at once, the others go on, and a VIP added back forwards again.
#[test]
fn removing_and_adding_a_vip_switches_the_live_table() {
    lb_lab::needs_root!();
    use lb_common::{PROTO_TCP, VipKey};
    let mut dp = dataplane();
    let key =
        VipKey { addr: addr16(&VIP4), port_be: 80u16.to_be(), proto: PROTO_TCP, family: FAMILY_V4 };
    let web = tcp4(VIP4, 80, true);
    let dns6 = udp6(VIP6, 53);
    let (action, _) = run(&mut dp, &web);
    assert_eq!(action, XDP_TX);
    let info =
        lb_common::VipInfo { index: 0, forwarding: lb_common::Forwarding::Dr as u8, _pad: [0; 3] };

    dp.remove_vip(&key).unwrap();
    assert_eq!(run(&mut dp, &web), (XDP_PASS, web.clone()));
    assert_eq!(run(&mut dp, &dns6).0, XDP_TX, "another VIP stopped with it");
    assert_eq!(reason_count(&dp, Reason::PassNotVip), 1);

    dp.set_vip(key, info).unwrap();
    assert_eq!(run(&mut dp, &web).0, XDP_TX);
    assert_eq!(run(&mut dp, &dns6).0, XDP_TX);
}

#[test]
fn truncated_and_malformed_frames_pass_untouched() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let good = tcp4(VIP4, 80, true);
    // Cut inside the IPv4 and TCP headers (the kernel refuses test frames under 14 bytes).
    for cut in [14, 20, 40, 50] {
        let frame = &good[..cut];
        let (action, out) = run(&mut dp, frame);
        assert_eq!((action, out.as_slice()), (XDP_PASS, frame), "cut at {cut}");
    }
    assert_eq!(reason_count(&dp, Reason::PassTruncated), 4);

    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    let mut bad_version = good.clone();
    bad_version[14] = 0x55;
    let mut bad_doff = good.clone();
    bad_doff[14 + 20 + 12] = 0x40;
    for frame in [bad_ihl, bad_version, bad_doff] {
        let (action, out) = run(&mut dp, &frame);
        assert_eq!((action, &out), (XDP_PASS, &frame));
    }
    assert_eq!(reason_count(&dp, Reason::PassMalformed), 3);

    let mut fragment = good.clone();
    fragment[20] = 0x20; // more fragments
    let (action, out) = run(&mut dp, &fragment);
    assert_eq!((action, &out), (XDP_PASS, &fragment));
    assert_eq!(reason_count(&dp, Reason::PassFragment), 1);

    let arp = [&[0xffu8; 6][..], &CLIENT_MAC, &[0x08, 0x06], &[0u8; 28]].concat();
    let (action, out) = run(&mut dp, &arp);
    assert_eq!((action, &out), (XDP_PASS, &arp));
    assert_eq!(reason_count(&dp, Reason::PassNotIp), 1);

    // IPv6 with a hop-by-hop header before UDP.
    let mut ext = udp6(VIP6, 53);
    ext[14 + 6] = 0;
    let (action, out) = run(&mut dp, &ext);
    assert_eq!((action, &out), (XDP_PASS, &ext));
    assert_eq!(reason_count(&dp, Reason::PassIpv6ExtHeader), 1);
    assert_eq!(reason_count(&dp, Reason::Transmitted), 0);
}

#[test]
fn a_vip_without_reals_passes() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    dp.set_maglev(0, &vec![NO_REAL; MAGLEV_SIZE as usize]).unwrap();
    let frame = tcp4(VIP4, 80, true);
    let (action, out) = run(&mut dp, &frame);
    assert_eq!((action, &out), (XDP_PASS, &frame));
    assert_eq!(reason_count(&dp, Reason::PassNoReal), 1);
}

/// Another real of the IPv4 TCP DR VIP (index 0), told apart by its MAC.
fn second_dr_real() -> RealInfo {
    RealInfo {
        mac: [0x02, 0, 0, 0, 0, 0x12],
        src_mac: DIRECTOR_MAC,
        flags: REAL_PRESENT,
        family: FAMILY_V4,
        vip: 0,
        ..Default::default()
    }
}

#[test]
fn an_established_flow_keeps_its_real_when_the_table_changes() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let second = second_dr_real();
    dp.set_real(10, second).unwrap();
    let syn = tcp4(VIP4, 80, true);
    let (_, out) = run(&mut dp, &syn);
    assert_eq!(&out[..6], &REAL_MAC);
    // Every slot now names the second real (the first was set to weight 0).
    dp.set_maglev(0, &vec![10; MAGLEV_SIZE as usize]).unwrap();
    let (_, out) = run(&mut dp, &tcp4(VIP4, 80, false));
    assert_eq!(&out[..6], &REAL_MAC, "established flow moved");
    // A new connection goes to the second real.
    let mut other = syn.clone();
    other[34..36].copy_from_slice(&40001u16.to_be_bytes());
    let (_, out) = run(&mut dp, &other);
    assert_eq!(&out[..6], &second.mac);
}

/// lbd stores only the Maglev slots a rebuild changes, and the data plane reads each slot
/// where lbd stored it: 16-bit ids in lines of 32, from the first line to the last slot.
#[test]
fn a_maglev_rebuild_stores_only_changed_slots_and_each_is_read_where_stored() {
    lb_lab::needs_root!();
    let key = |sport: u16| FlowKey {
        src: addr16(&[198, 51, 100, 7]),
        dst: addr16(&VIP4),
        sport_be: sport.to_be(),
        dport_be: 80u16.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    let port_at = |want: fn(u32) -> bool| {
        (1..=u16::MAX).find(|&p| want(maglev_slot(&key(p)))).expect("some port hashes there")
    };
    for sport in [port_at(|s| s == MAGLEV_SIZE - 1), port_at(|s| s < MAGLEV_LINE_SLOTS)] {
        let slot = maglev_slot(&key(sport)) as usize;
        let mut dp = dataplane();
        let second = second_dr_real();
        dp.set_real(10, second).unwrap();
        // dataplane() gave every slot of VIP 0 to real 0.
        let mut table = vec![0u32; MAGLEV_SIZE as usize];
        assert_eq!(dp.set_maglev(0, &table).unwrap(), 0, "the same table again");
        let mut syn = tcp4(VIP4, 80, true);
        syn[34..36].copy_from_slice(&sport.to_be_bytes());

        table[slot] = NO_REAL;
        assert_eq!(dp.set_maglev(0, &table).unwrap(), 1, "slot {slot} emptied");
        assert_eq!(run(&mut dp, &syn).0, XDP_PASS, "slot {slot} reads empty");
        assert_eq!(reason_count(&dp, Reason::PassNoReal), 1);

        table[slot] = 10;
        assert_eq!(dp.set_maglev(0, &table).unwrap(), 1, "slot {slot} given to real 10");
        let (action, out) = run(&mut dp, &syn);
        assert_eq!((action, &out[..6]), (XDP_TX, &second.mac[..]), "slot {slot}");
    }
}

/// Flows are aged by the clock the daemon publishes (SETTINGS), not a kernel helper.
#[test]
fn a_flow_records_the_published_clock_at_each_packet() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let last_seen = |dp: &Dataplane| {
        let flows = dp.flows();
        assert_eq!(flows.len(), 1, "{flows:?}");
        flows[0].1.last_seen_s
    };
    dp.set_clock(1000).unwrap();
    assert_eq!(run(&mut dp, &tcp4(VIP4, 80, true)).0, XDP_TX);
    assert_eq!(last_seen(&dp), 1000);
    dp.set_clock(1042).unwrap();
    assert_eq!(run(&mut dp, &tcp4(VIP4, 80, false)).0, XDP_TX);
    assert_eq!(last_seen(&dp), 1042);
}

/// A removed VIP's flows and NAT ways back leave with it (lbd purges them on reload).
#[test]
fn purging_a_vip_removes_its_flows_and_nat_replies() {
    lb_lab::needs_root!();
    use lb_common::{PROTO_TCP, VipKey};
    let mut dp = dataplane();
    run(&mut dp, &tcp4(VIP4, 80, true));
    run(&mut dp, &udp6(VIP6, 53));
    let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let vip = SocketAddr::new(Ipv4Addr::from(VIP4).into(), NAT_VIP_PORT_TCP);
    let real = SocketAddr::new(Ipv4Addr::from(NAT_REAL4).into(), NAT_REAL_PORT_TCP);
    let request = Frame::opening(client, vip, false);
    let request_frame = request.build();
    let reply =
        Frame { src_mac: REAL_MAC, dst_mac: DIRECTOR_MAC, src: real, dst: client, ..request }
            .build();
    assert_eq!(run(&mut dp, &request_frame).0, XDP_TX);
    assert_eq!(run(&mut dp, &reply).0, XDP_TX);
    assert_eq!(dp.flows().len(), 3);

    let key = |addr, port: u16| VipKey {
        addr: addr16(addr),
        port_be: port.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
    };
    assert_eq!(dp.purge_vip(&key(&VIP4, 80)), 1);
    assert_eq!(dp.purge_vip(&key(&VIP4, NAT_VIP_PORT_TCP)), 1);
    let left = dp.flows();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].0.dst, VIP6);
    // Without its way back, the real's reply is no longer rewritten.
    assert_eq!(run(&mut dp, &reply), (XDP_PASS, reply.clone()));
}

#[test]
fn a_syn_on_a_closed_tuple_is_a_new_connection() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let syn = tcp4(VIP4, 80, true);
    run(&mut dp, &syn);
    let mut fin = tcp4(VIP4, 80, false);
    fin[14 + 20 + 13] |= 0x01;
    run(&mut dp, &fin);
    // The same tuple again, after the close: counted, and scheduled by the current table.
    let second = RealInfo {
        mac: [0x02, 0, 0, 0, 0, 0x12],
        src_mac: DIRECTOR_MAC,
        flags: REAL_PRESENT,
        family: FAMILY_V4,
        vip: 0,
        ..Default::default()
    };
    dp.set_real(10, second).unwrap();
    dp.set_maglev(0, &vec![10; MAGLEV_SIZE as usize]).unwrap();
    let (action, out) = run(&mut dp, &syn);
    assert_eq!(action, XDP_TX);
    assert_eq!(&out[..6], &second.mac);
    assert_eq!(dp.vip_counters(0).unwrap().conns, 2);
}

/// NAT, both directions, for every family and protocol: the output must equal the frame
/// etherparse builds for the rewritten addresses, checksums included.
#[test]
fn nat_rewrites_requests_and_replies_with_correct_checksums() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    for (vip, real, client) in nat_addresses() {
        for udp in [false, true] {
            let client = SocketAddr::new(client, 40000 + udp as u16);
            let (request, reply) = nat_flow(vip, real, client, udp);
            let (vip, real) = (request.dst, reply.src);
            let (action, out) = run(&mut dp, &request.build());
            let want = Frame { src_mac: DIRECTOR_MAC, dst_mac: REAL_MAC, dst: real, ..request };
            assert_eq!(action, XDP_TX, "{client} -> {vip}");
            assert_eq!(out, want.build(), "request {client} -> {vip} udp={udp}");

            let (action, out) = run(&mut dp, &reply.build());
            let want = Frame { src_mac: DIRECTOR_MAC, dst_mac: CLIENT_MAC, src: vip, ..reply };
            assert_eq!(action, XDP_TX, "{real} -> {client}");
            assert_eq!(out, want.build(), "reply {real} -> {client} udp={udp}");
        }
    }
    let out_packets: u64 = (4..8).map(|i| dp.vip_counters(i).unwrap().out_packets).sum();
    assert_eq!(out_packets, 4);
}

#[test]
fn nat_keeps_an_absent_ipv4_udp_checksum_absent() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let client: SocketAddr = "198.51.100.7:41000".parse().unwrap();
    let vip = SocketAddr::new(Ipv4Addr::from(VIP4).into(), NAT_VIP_PORT_UDP);
    let request = Frame {
        src_mac: CLIENT_MAC,
        dst_mac: DIRECTOR_MAC,
        src: client,
        dst: vip,
        udp: true,
        syn: false,
        payload: b"q".to_vec(),
    };
    let mut frame = request.build();
    frame[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let (action, out) = run(&mut dp, &frame);
    assert_eq!(action, XDP_TX);
    assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    assert_eq!(&out[14 + 16..14 + 20], &NAT_REAL4);
}

#[test]
fn a_reply_without_a_nat_flow_passes_untouched() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let client: SocketAddr = "198.51.100.9:40000".parse().unwrap();
    let real = SocketAddr::new(Ipv4Addr::from(NAT_REAL4).into(), NAT_REAL_PORT_TCP);
    let reply_from = |src: SocketAddr, udp: bool| {
        Frame {
            src_mac: REAL_MAC,
            dst_mac: DIRECTOR_MAC,
            src,
            dst: client,
            udp,
            syn: false,
            payload: vec![],
        }
        .build()
    };
    let reply = reply_from(real, false);
    let (action, out) = run(&mut dp, &reply);
    assert_eq!((action, &out), (XDP_PASS, &reply));

    // With the client's NAT flow open, its set holds the flow: only the real's own reply
    // (its address, its port, the flow's protocol) is taken back through the VIP.
    let vip = SocketAddr::new(Ipv4Addr::from(VIP4).into(), NAT_VIP_PORT_TCP);
    assert_eq!(run(&mut dp, &Frame::opening(client, vip, false).build()).0, XDP_TX);
    let other_port = SocketAddr::new(real.ip(), NAT_REAL_PORT_TCP + 1);
    let other_real = SocketAddr::new(Ipv4Addr::new(10, 0, 0, 99).into(), NAT_REAL_PORT_TCP);
    for near_miss in
        [reply_from(other_port, false), reply_from(other_real, false), reply_from(real, true)]
    {
        let (action, out) = run(&mut dp, &near_miss);
        assert_eq!((action, &out), (XDP_PASS, &near_miss));
    }
    assert_eq!(run(&mut dp, &reply).0, XDP_TX);
}

/// Tunnel: the frame leaves as [Ethernet to the real][outer header][the client's packet,
/// byte for byte]; the outer header is checked field by field and its checksum with
/// etherparse's.
#[test]
fn tunnel_wraps_the_packet_in_ip_in_ip() {
    lb_lab::needs_root!();
    use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice};
    let mut dp = dataplane();
    let clients =
        [IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), IpAddr::V6("2001:db8:1::7".parse().unwrap())];
    let vips = [IpAddr::V4(Ipv4Addr::from(VIP4)), IpAddr::V6(Ipv6Addr::from(VIP6))];
    for (client, vip) in clients.into_iter().zip(vips) {
        let request = Frame {
            src_mac: CLIENT_MAC,
            dst_mac: DIRECTOR_MAC,
            src: SocketAddr::new(client, 40000),
            dst: SocketAddr::new(vip, TUNNEL_VIP_PORT),
            udp: false,
            syn: true,
            payload: b"hello".to_vec(),
        }
        .build();
        let (action, out) = run(&mut dp, &request);
        assert_eq!(action, XDP_TX, "{vip}");
        assert_eq!(&out[..6], &REAL_MAC);
        assert_eq!(&out[6..12], &DIRECTOR_MAC);
        let inner = &request[14..];
        if client.is_ipv4() {
            assert_eq!(&out[12..14], &[0x08, 0x00]);
            let outer = Ipv4HeaderSlice::from_slice(&out[14..]).unwrap().to_header();
            assert_eq!(outer.protocol.0, 4);
            assert_eq!(outer.source, TUNNEL_SRC[0][..4]);
            assert_eq!(outer.destination, TUNNEL_REAL4);
            assert_eq!(outer.time_to_live, 64);
            assert_eq!(outer.total_len as usize, 20 + inner.len());
            // etherparse's builder sets DF on the inner packet; the outer copies it.
            assert!(outer.dont_fragment);
            assert_eq!(outer.header_checksum, outer.calc_header_checksum());
            assert_eq!(&out[34..], inner);
        } else {
            assert_eq!(&out[12..14], &[0x86, 0xdd]);
            let outer = Ipv6HeaderSlice::from_slice(&out[14..]).unwrap().to_header();
            assert_eq!(outer.next_header.0, 41);
            assert_eq!(outer.source, TUNNEL_SRC[1]);
            assert_eq!(outer.destination, TUNNEL_REAL6);
            assert_eq!(outer.payload_length as usize, inner.len());
            assert_eq!(&out[54..], inner);
        }
    }
}

/// Direct routing and tunnel for each family and protocol, byte for byte: DR changes only
/// the MACs; tunnel's output is compared with an outer header built by etherparse
/// (common::tunnelled), checksum included. (NAT's matrix, reply path included, is the test
/// above.)
#[test]
fn dr_and_tunnel_forward_every_family_and_protocol_byte_exact() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    for v6 in [false, true] {
        let (client, vip) = client_and_vip(v6);
        for udp in [false, true] {
            let frame = |port| {
                let opening =
                    Frame::opening(SocketAddr::new(client, 40100), SocketAddr::new(vip, port), udp);
                Frame { payload: b"request".to_vec(), ..opening }.build()
            };
            let request = frame(if udp { 53 } else { 80 });
            let (action, out) = run(&mut dp, &request);
            assert_eq!((action, out), (XDP_TX, dr_rewritten(&request)), "dr v6={v6} udp={udp}");

            let request = frame(if udp { TUNNEL_VIP_PORT_UDP } else { TUNNEL_VIP_PORT });
            let want = tunnelled(&request[14..], None);
            let (action, out) = run(&mut dp, &request);
            assert_eq!((action, out), (XDP_TX, want), "tunnel v6={v6} udp={udp}");
        }
    }
}

/// The client's address and a VIP of one family: IPv4 or IPv6.
fn client_and_vip(v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        (IpAddr::V6("2001:db8:1::7".parse().unwrap()), IpAddr::V6(Ipv6Addr::from(VIP6)))
    } else {
        (IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), IpAddr::V4(Ipv4Addr::from(VIP4)))
    }
}

/// A tunnelled frame keeps its 802.1Q tag whole: TPID 0x8100 and the TCI (priority bits
/// included), then the outer header's ethertype; the rest as untagged.
#[test]
fn tunnel_keeps_a_vlan_tag_byte_exact() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let tci = 0x2007; // priority 1, VLAN 7
    for v6 in [false, true] {
        let (client, vip) = client_and_vip(v6);
        for udp in [false, true] {
            let port = if udp { TUNNEL_VIP_PORT_UDP } else { TUNNEL_VIP_PORT };
            let opening =
                Frame::opening(SocketAddr::new(client, 40200), SocketAddr::new(vip, port), udp);
            let request = Frame { payload: b"request".to_vec(), ..opening }.build();
            let (action, out) = run(&mut dp, &vlan_tagged(&request, tci));
            let want = tunnelled(&request[14..], Some(tci));
            assert_eq!((action, out), (XDP_TX, want), "v6={v6} udp={udp}");
        }
    }
    assert_eq!(reason_count(&dp, Reason::Transmitted), 4);
}

/// Too big to tunnel, with a tag: the ICMP answer is sent for untagged frames only
/// (ARCHITECTURE.md), so a tagged one is dropped and counted, IPv4 (DF set) and IPv6.
#[test]
fn too_big_to_tunnel_with_a_vlan_tag_is_dropped() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    for v6 in [false, true] {
        let (client, vip) = client_and_vip(v6);
        let request = Frame {
            syn: false,
            payload: vec![0x5a; 200],
            ..Frame::opening(
                SocketAddr::new(client, 40000),
                SocketAddr::new(vip, SMALL_MTU_VIP_PORT),
                false,
            )
        }
        .build();
        assert_eq!(run(&mut dp, &vlan_tagged(&request, 7)).0, XDP_DROP, "v6={v6}");
    }
    assert_eq!(reason_count(&dp, Reason::DropTooBig), 2);
    assert_eq!(reason_count(&dp, Reason::TooBigSent), 0);
}

/// Too big for the egress MTU once wrapped: the client gets ICMP fragmentation-needed
/// (IPv4) or packet-too-big (IPv6) from the VIP, with correct checksums, quoting its packet.
#[test]
fn tunnel_answers_too_big_packets_with_icmp() {
    lb_lab::needs_root!();
    use etherparse::{
        Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, Ipv4HeaderSlice, Ipv6HeaderSlice,
        icmpv4::DestUnreachableHeader,
    };
    let mut dp = dataplane();
    let clients =
        [IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), IpAddr::V6("2001:db8:1::7".parse().unwrap())];
    let vips = [IpAddr::V4(Ipv4Addr::from(VIP4)), IpAddr::V6(Ipv6Addr::from(VIP6))];
    for (client, vip) in clients.into_iter().zip(vips) {
        let request = Frame {
            src_mac: CLIENT_MAC,
            dst_mac: DIRECTOR_MAC,
            src: SocketAddr::new(client, 40000),
            dst: SocketAddr::new(vip, SMALL_MTU_VIP_PORT),
            udp: false,
            syn: false,
            payload: vec![0x5a; 200],
        }
        .build();
        let (action, out) = run(&mut dp, &request);
        assert_eq!(action, XDP_TX, "{vip}");
        assert_eq!(&out[..6], &CLIENT_MAC);
        assert_eq!(&out[6..12], &DIRECTOR_MAC);
        if let (IpAddr::V4(c), IpAddr::V4(v)) = (client, vip) {
            let ip = Ipv4HeaderSlice::from_slice(&out[14..]).unwrap().to_header();
            assert_eq!((ip.source, ip.destination, ip.protocol.0), (v.octets(), c.octets(), 1));
            assert_eq!(ip.header_checksum, ip.calc_header_checksum());
            assert_eq!(ip.total_len as usize, out.len() - 14);
            let quoted = &out[42..];
            assert_eq!(quoted, &request[14..14 + 28]);
            let kind =
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: SMALL_MTU - 20,
                });
            assert_eq!(&out[34..42], &Icmpv4Header::with_checksum(kind, quoted).to_bytes()[..]);
        } else if let (IpAddr::V6(c), IpAddr::V6(v)) = (client, vip) {
            let ip = Ipv6HeaderSlice::from_slice(&out[14..]).unwrap().to_header();
            assert_eq!((ip.source, ip.destination, ip.next_header.0), (v.octets(), c.octets(), 58));
            assert_eq!(ip.payload_length as usize, out.len() - 54);
            let quoted = &out[62..];
            assert_eq!(quoted, &request[14..14 + 48]);
            let kind = Icmpv6Type::PacketTooBig { mtu: (SMALL_MTU - 40) as u32 };
            let header = Icmpv6Header::with_checksum(kind, v.octets(), c.octets(), quoted).unwrap();
            assert_eq!(&out[54..62], &header.to_bytes()[..]);
        }
    }
    let sent = dp.reasons().unwrap().into_iter().find(|(r, _)| *r == Reason::TooBigSent).unwrap().1;
    assert_eq!(sent, 2);
}

/// An ICMP error about a VIP flow (a router on the real's way to the client says "too big"
/// or "unreachable" to the VIP, so to the director) reaches the real that owns the flow.
#[test]
fn icmp_errors_about_a_flow_go_to_its_real() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let clients =
        [IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), IpAddr::V6("2001:db8:1::7".parse().unwrap())];
    let vips = [IpAddr::V4(Ipv4Addr::from(VIP4)), IpAddr::V6(Ipv6Addr::from(VIP6))];
    for (client, vip) in clients.into_iter().zip(vips) {
        let client = SocketAddr::new(client, 40000);
        let (vip, router) = (SocketAddr::new(vip, 80), client.ip());
        let quote = |from: SocketAddr, to: SocketAddr| {
            let answer = Frame {
                src_mac: REAL_MAC,
                dst_mac: CLIENT_MAC,
                src: from,
                dst: to,
                udp: false,
                syn: false,
                payload: vec![0; 100],
            }
            .build();
            answer[14..14 + if from.is_ipv4() { 28 } else { 48 }].to_vec()
        };
        let icmp =
            |quoted: &[u8]| too_big_error((CLIENT_MAC, DIRECTOR_MAC), router, vip.ip(), quoted);
        // Before the flow exists: passed to the kernel, counted.
        let early = icmp(&quote(vip, client));
        let (action, out) = run(&mut dp, &early);
        assert_eq!((action, &out), (XDP_PASS, &early));
        // The client opens the flow; now the error follows it to the real, MACs rewritten.
        let syn = Frame::opening(client, vip, false).build();
        assert_eq!(run(&mut dp, &syn).0, XDP_TX);
        let (action, out) = run(&mut dp, &early);
        assert_eq!(action, XDP_TX, "{vip}");
        assert_eq!(out, dr_rewritten(&early));
        // About another client's connection: not ours.
        let other = SocketAddr::new(client.ip(), 40001);
        let stray = icmp(&quote(vip, other));
        let (action, out) = run(&mut dp, &stray);
        assert_eq!((action, &out), (XDP_PASS, &stray));
    }
    assert_eq!(reason_count(&dp, Reason::PassIcmpNoFlow), 4);
}

/// ICMP errors about a NAT flow are translated both ways, as IPVS does: a router's error
/// about a reply (quoting VIP -> client) reaches the real quoting the reply as the real sent
/// it; the real's error about a request (quoting client -> real) reaches the client
/// quoting the request as the client sent it ("too big" stands for every error here: the
/// translation does not depend on the type). Whole quotes (as Linux routers send) and the
/// minimal 8 bytes (a TCP quote then lacks its checksum); every output equals the frame
/// etherparse builds, so every checksum, the quoted ones included, is checked.
#[test]
fn nat_translates_icmp_errors_both_ways_with_correct_checksums() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let error = too_big_error;
    let mut port = 42000;
    for (vip, real, client) in nat_addresses() {
        let router: IpAddr =
            if vip.is_ipv4() { "203.0.113.1" } else { "2001:db8:ff::1" }.parse().unwrap();
        for udp in [false, true] {
            for whole_quote in [true, false] {
                port += 1;
                let (request, reply) = nat_flow(vip, real, SocketAddr::new(client, port), udp);
                let (client, vip, real) = (request.src, request.dst, reply.src);
                let cut = |frame: Vec<u8>| {
                    let ip = &frame[14..];
                    let len = if whole_quote {
                        ip.len()
                    } else {
                        8 + if vip.is_ipv4() { 20 } else { 40 }
                    };
                    ip[..len].to_vec()
                };
                let case = format!("{client} -> {vip} udp={udp} whole quote={whole_quote}");
                assert_eq!(run(&mut dp, &request.build()).0, XDP_TX, "{case}");
                let sent_reply = Frame { src: vip, ..reply.clone() };

                // A router on the client's side: too big / unreachable, about a reply.
                let frame =
                    error((CLIENT_MAC, DIRECTOR_MAC), router, vip.ip(), &cut(sent_reply.build()));
                let want = error((DIRECTOR_MAC, REAL_MAC), router, real.ip(), &cut(reply.build()));
                let (action, out) = run(&mut dp, &frame);
                assert_eq!(action, XDP_TX, "to the real: {case}");
                assert_eq!(out, want, "to the real: {case}");

                // The real (or a router between us and it), about a request as it arrived.
                let arrived = Frame { dst: real, ..request.clone() };
                let frame =
                    error((REAL_MAC, DIRECTOR_MAC), real.ip(), client.ip(), &cut(arrived.build()));
                let want =
                    error((DIRECTOR_MAC, CLIENT_MAC), vip.ip(), client.ip(), &cut(request.build()));
                let (action, out) = run(&mut dp, &frame);
                assert_eq!(action, XDP_TX, "to the client: {case}");
                assert_eq!(out, want, "to the client: {case}");
            }
        }
    }
    assert_eq!(reason_count(&dp, Reason::PassIcmpNoFlow), 0);
}

/// An ICMP error belongs to a flow only when it is addressed to the quoted packet's source:
/// the VIP for an error about a VIP's answer, the client for one about a NAT request. The
/// same quote addressed elsewhere (here the director's own address, or the VIP for a NAT
/// request's) passes to the kernel untouched: `pass_icmp_no_flow` when it quotes a VIP,
/// `pass_not_vip` otherwise. Addressed as it should be, each is forwarded.
#[test]
fn icmp_errors_not_addressed_to_the_quoted_source_pass() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let quote = |from: SocketAddr, to: SocketAddr| {
        let packet = Frame { syn: false, payload: vec![0; 100], ..Frame::opening(from, to, false) };
        let packet = packet.build();
        packet[14..14 + if from.is_ipv4() { 28 } else { 48 }].to_vec()
    };
    let macs = (CLIENT_MAC, DIRECTOR_MAC);
    let (mut no_flow, mut not_vip) = (0, 0);
    for v6 in [false, true] {
        let (client, vip) = client_and_vip(v6);
        // The director's own address (the tunnels' source).
        let director = if v6 {
            IpAddr::from(TUNNEL_SRC[1])
        } else {
            IpAddr::from(<[u8; 4]>::try_from(&TUNNEL_SRC[0][..4]).unwrap())
        };
        let router: IpAddr = if v6 { "2001:db8:ff::1" } else { "203.0.113.1" }.parse().unwrap();
        for (mode, port) in [("dr", 80), ("nat", NAT_VIP_PORT_TCP), ("tunnel", TUNNEL_VIP_PORT)] {
            let (client, vip) = (SocketAddr::new(client, 40500), SocketAddr::new(vip, port));
            assert_eq!(run(&mut dp, &Frame::opening(client, vip, false).build()).0, XDP_TX);
            let quoted = quote(vip, client);
            let stray = too_big_error(macs, router, director, &quoted);
            let case = format!("{mode} v6={v6}");
            assert_eq!(run(&mut dp, &stray), (XDP_PASS, stray.clone()), "{case}");
            no_flow += 1;
            assert_eq!(reason_count(&dp, Reason::PassIcmpNoFlow), no_flow, "{case}");
            let error = too_big_error(macs, router, vip.ip(), &quoted);
            assert_eq!(run(&mut dp, &error).0, XDP_TX, "{case}");
        }
        // The NAT real's error about the request as it arrived (client -> real).
        let client = SocketAddr::new(client, 40500);
        let real_port = SocketAddr::new(
            if v6 { IpAddr::from(NAT_REAL6) } else { IpAddr::from(NAT_REAL4) },
            NAT_REAL_PORT_TCP,
        );
        let quoted = quote(client, real_port);
        let back = (REAL_MAC, DIRECTOR_MAC);
        for elsewhere in [vip, director] {
            let stray = too_big_error(back, real_port.ip(), elsewhere, &quoted);
            assert_eq!(run(&mut dp, &stray), (XDP_PASS, stray.clone()), "nat v6={v6}");
            not_vip += 1;
            assert_eq!(reason_count(&dp, Reason::PassNotVip), not_vip, "to {elsewhere}");
        }
        let error = too_big_error(back, real_port.ip(), client.ip(), &quoted);
        assert_eq!(run(&mut dp, &error).0, XDP_TX, "nat v6={v6}");
    }
}

/// An ICMP error about a tunnel flow that is too big to tunnel is dropped and counted, not
/// answered: no ICMP error is sent about an ICMP error (RFC 1122 3.2.2, RFC 4443 2.4).
/// Found by the fuzzer (tests/fuzz_dataplane.rs): the error went back to its sender as a
/// fragmentation-needed / packet-too-big quoting it.
#[test]
fn an_icmp_error_too_big_to_tunnel_is_dropped_not_answered() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    for v6 in [false, true] {
        let (client, vip) = client_and_vip(v6);
        let (client, vip) =
            (SocketAddr::new(client, 40600), SocketAddr::new(vip, SMALL_MTU_VIP_PORT));
        assert_eq!(run(&mut dp, &Frame::opening(client, vip, false).build()).0, XDP_TX);
        let answer =
            Frame { syn: false, payload: vec![0; 100], ..Frame::opening(vip, client, false) };
        let router: IpAddr = if v6 { "2001:db8:ff::1" } else { "203.0.113.1" }.parse().unwrap();
        let error =
            too_big_error((CLIENT_MAC, DIRECTOR_MAC), router, vip.ip(), &answer.build()[14..]);
        assert_eq!(run(&mut dp, &error).0, XDP_DROP, "v6={v6}");
    }
    assert_eq!(reason_count(&dp, Reason::DropTooBig), 2);
    assert_eq!(reason_count(&dp, Reason::TooBigSent), 0);
}

/// Echo requests to a VIP, and ICMPv6 neighbour discovery, are the director kernel's.
#[test]
fn echo_and_neighbour_discovery_pass() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, DIRECTOR_MAC)
        .ipv4([198, 51, 100, 7], VIP4, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut echo, b"ping")
        .unwrap();
    let mut solicit = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, [0x33, 0x33, 0xff, 0, 0, 0x10])
        .ipv6(addr16(&[0xfe, 0x80]), VIP6, 255)
        .icmpv6(etherparse::Icmpv6Type::Unknown { type_u8: 135, code_u8: 0, bytes5to8: [0; 4] })
        .write(&mut solicit, &VIP6)
        .unwrap();
    for frame in [echo, solicit] {
        let (action, out) = run(&mut dp, &frame);
        assert_eq!((action, &out), (XDP_PASS, &frame));
    }
    assert_eq!(reason_count(&dp, Reason::PassOtherProto), 2);
}

/// More malformed and unusual inputs, each with its defined action.
#[test]
fn more_malformed_inputs_have_defined_actions() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    // IPv6 UDP cut inside the IPv6 header and inside the UDP header.
    let udp = udp6(VIP6, 53);
    for cut in [14 + 20, 14 + 40 + 4] {
        let (action, out) = run(&mut dp, &udp[..cut]);
        assert_eq!((action, out.as_slice()), (XDP_PASS, &udp[..cut]), "cut at {cut}");
    }
    assert_eq!(reason_count(&dp, Reason::PassTruncated), 2);
    // A UDP length below the header's own 8 bytes (zero-length UDP).
    let mut zero = udp.clone();
    zero[14 + 40 + 4..14 + 40 + 6].copy_from_slice(&[0, 0]);
    let (action, out) = run(&mut dp, &zero);
    assert_eq!((action, &out), (XDP_PASS, &zero));
    assert_eq!(reason_count(&dp, Reason::PassMalformed), 1);
    // TCP with options (MSS, SACK permitted, timestamps): a VIP packet like any other.
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, DIRECTOR_MAC)
        .ipv4([198, 51, 100, 7], VIP4, 64)
        .tcp(40002, 80, 1, 64240)
        .syn()
        .options(&[
            etherparse::TcpOptionElement::MaximumSegmentSize(1460),
            etherparse::TcpOptionElement::SelectiveAcknowledgementPermitted,
            etherparse::TcpOptionElement::Timestamp(1, 0),
        ])
        .unwrap()
        .write(&mut v, &[])
        .unwrap();
    let (action, out) = run(&mut dp, &v);
    assert_eq!((action, &out), (XDP_TX, &dr_rewritten(&v)));
    // An IPv6 fragment header before UDP: passed (fragments are the kernel's).
    let mut frag = udp.clone();
    frag[14 + 6] = 44;
    let (action, out) = run(&mut dp, &frag);
    assert_eq!((action, &out), (XDP_PASS, &frag));
    // An unknown transport (SCTP) to the VIP: passed.
    let mut sctp = tcp4(VIP4, 80, true);
    sctp[14 + 9] = 132;
    let (action, out) = run(&mut dp, &sctp);
    assert_eq!((action, &out), (XDP_PASS, &sctp));

    // Cut inside the headers the first test does not reach: the 802.1Q tag, IPv4 options,
    // an ICMP error's own header, its quoted IP header and its quoted ports.
    let tagged = vlan_dns_query();
    let mut with_options = tcp4(VIP4, 80, true);
    with_options[14] = 0x46; // IHL 6: 4 bytes of options the frame below does not hold
    let mut quoted = tcp4([198, 51, 100, 7], 40000, false);
    quoted[26..30].copy_from_slice(&VIP4); // the real's answer, from the VIP
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, DIRECTOR_MAC)
        .ipv4([198, 51, 100, 1], VIP4, 64)
        .icmpv4_raw(3, 4, [0, 0, 5, 0x78])
        .write(&mut icmp, &quoted[14..14 + 28])
        .unwrap();
    let cuts: [(&[u8], usize); 5] = [
        (&tagged, 16),
        (&with_options, 14 + 22),
        (&icmp, 14 + 20 + 4),
        (&icmp, 14 + 20 + 8 + 10),
        (&icmp, 14 + 20 + 8 + 20 + 2),
    ];
    for (frame, cut) in cuts {
        let (action, out) = run(&mut dp, &frame[..cut]);
        assert_eq!((action, out.as_slice()), (XDP_PASS, &frame[..cut]), "cut at {cut}");
    }
    assert_eq!(reason_count(&dp, Reason::PassTruncated), 2 + cuts.len() as u64);
}

/// A request to each kind of service: (mode, VIP port for TCP, for UDP).
const SERVICES: [(&str, u16, u16); 3] = [
    ("dr", 80, 53),
    ("nat", NAT_VIP_PORT_TCP, NAT_VIP_PORT_UDP),
    ("tunnel", TUNNEL_VIP_PORT, TUNNEL_VIP_PORT_UDP),
];

/// Sets an IPv4 header's total length (and its checksum) or an IPv6 header's payload
/// length, in a frame without a tag.
fn set_ip_length(frame: &mut [u8], len: u16) {
    if frame[14] >> 4 == 4 {
        frame[16..18].copy_from_slice(&len.to_be_bytes());
        frame[24..26].copy_from_slice(&[0, 0]);
        let sum = etherparse::Ipv4HeaderSlice::from_slice(&frame[14..34])
            .unwrap()
            .to_header()
            .calc_header_checksum();
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
    } else {
        frame[18..20].copy_from_slice(&len.to_be_bytes());
    }
}

/// The IP length of a frame without a tag: IPv4 total length, or 40 + IPv6 payload length.
fn ip_length(frame: &[u8]) -> usize {
    if frame[14] >> 4 == 4 {
        u16::from_be_bytes([frame[16], frame[17]]) as usize
    } else {
        40 + u16::from_be_bytes([frame[18], frame[19]]) as usize
    }
}

/// An IP length, a TCP data offset or a UDP length that claims more bytes than there are
/// is a header cut short (`pass_truncated`), in every mode, family and protocol; an IPv4
/// total length below its own header is malformed. None of them may be forwarded.
#[test]
fn lengths_beyond_the_packet_pass_as_truncated() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let mut truncated = 0;
    let mut malformed = 0;
    for (mode, tcp_port, udp_port) in SERVICES {
        for v6 in [false, true] {
            let (client, vip) = client_and_vip(v6);
            for udp in [false, true] {
                let port = if udp { udp_port } else { tcp_port };
                let opening =
                    Frame::opening(SocketAddr::new(client, 40300), SocketAddr::new(vip, port), udp);
                let good = Frame { payload: b"request".to_vec(), ..opening }.build();
                let l4 = if v6 { 54 } else { 34 };
                let ip_len = ip_length(&good) as u16;
                let mut cases = vec![];
                // One byte more than the frame holds.
                let mut long = good.clone();
                set_ip_length(&mut long, ip_len + 1 - if v6 { 40 } else { 0 });
                cases.push(("ip length", long));
                // The IP length ends inside the transport header.
                let mut short = good.clone();
                set_ip_length(&mut short, (l4 - 14 + 6 - if v6 { 40 } else { 0 }) as u16);
                cases.push(("ip length inside the transport header", short));
                let mut beyond = good.clone();
                if udp {
                    let len = (good.len() - l4 + 1) as u16;
                    beyond[l4 + 4..l4 + 6].copy_from_slice(&len.to_be_bytes());
                    cases.push(("udp length", beyond));
                } else {
                    beyond[l4 + 12] = 0xf0; // 60 bytes of header in 27 bytes of segment
                    cases.push(("tcp data offset", beyond));
                }
                for (what, frame) in cases {
                    let case = format!("{mode} v6={v6} udp={udp}: {what}");
                    assert_eq!(run(&mut dp, &frame), (XDP_PASS, frame.clone()), "{case}");
                    truncated += 1;
                    assert_eq!(reason_count(&dp, Reason::PassTruncated), truncated, "{case}");
                }
                if !v6 {
                    let mut below = good.clone();
                    set_ip_length(&mut below, 19);
                    assert_eq!(run(&mut dp, &below), (XDP_PASS, below.clone()), "{mode}");
                    malformed += 1;
                    assert_eq!(reason_count(&dp, Reason::PassMalformed), malformed, "{mode}");
                }
            }
        }
    }
    assert_eq!(reason_count(&dp, Reason::Transmitted), 0);
}

/// `frame` with `n` bytes of padding (0xa5, so a checksum that covers them shows) after its
/// IP packet.
fn padded(frame: &[u8], n: usize) -> Vec<u8> {
    [frame, &vec![0xa5; n]].concat()
}

/// Ethernet pads a short frame to 60 bytes beyond its IP packet: such a frame is forwarded
/// by its IP length in each mode. DR sends it as it came (MACs changed); NAT's checksums
/// are those etherparse computes over the IP packet alone (the padding follows unchanged);
/// the tunnel wraps the IP packet alone, and its outer length counts that, not the padding.
#[test]
fn padded_frames_are_forwarded_by_their_ip_length() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let nat_real = |v6: bool, udp: bool| {
        let port = if udp { NAT_REAL_PORT_UDP } else { NAT_REAL_PORT_TCP };
        let addr = if v6 { IpAddr::from(NAT_REAL6) } else { IpAddr::from(NAT_REAL4) };
        SocketAddr::new(addr, port)
    };
    for (mode, tcp_port, udp_port) in SERVICES {
        // An empty IPv4 TCP ACK (54 bytes) and a 1-byte IPv4 UDP datagram (43) padded to 60;
        // an IPv6 UDP datagram with 6 bytes after it.
        for (v6, udp, payload) in [(false, false, 0), (false, true, 1), (true, true, 1)] {
            let (client, vip) = client_and_vip(v6);
            let port = if udp { udp_port } else { tcp_port };
            let opening =
                Frame::opening(SocketAddr::new(client, 40400), SocketAddr::new(vip, port), udp);
            let request = Frame { syn: false, payload: vec![0x42; payload], ..opening };
            let bare = request.build();
            let pad = if v6 { 6 } else { 60 - bare.len() };
            let frame = padded(&bare, pad);
            let want = match mode {
                "dr" => dr_rewritten(&frame),
                "nat" => {
                    let rewritten = Frame {
                        src_mac: DIRECTOR_MAC,
                        dst_mac: REAL_MAC,
                        dst: nat_real(v6, udp),
                        ..request.clone()
                    };
                    padded(&rewritten.build(), pad)
                }
                _ => tunnelled(&bare[14..], None),
            };
            let case = format!("{mode} v6={v6} udp={udp}");
            assert_eq!(run(&mut dp, &frame), (XDP_TX, want), "{case}");
            if mode == "nat" {
                // The real's reply, padded too, goes back from the VIP.
                let reply = Frame {
                    src_mac: REAL_MAC,
                    dst_mac: DIRECTOR_MAC,
                    src: nat_real(v6, udp),
                    dst: request.src,
                    ..request.clone()
                };
                let want = Frame {
                    src_mac: DIRECTOR_MAC,
                    dst_mac: CLIENT_MAC,
                    src: request.dst,
                    ..reply.clone()
                };
                let out = run(&mut dp, &padded(&reply.build(), pad));
                assert_eq!(out, (XDP_TX, padded(&want.build(), pad)), "reply: {case}");
            }
        }
    }
}

/// A set of the connection table holds four flows: a fifth replaces the one idle longest,
/// and the other three stay where they are.
#[test]
fn a_new_flow_in_a_full_set_replaces_the_one_idle_longest() {
    lb_lab::needs_root!();
    use lb_common::{FlowKey, PROTO_TCP, flow_table::set_of};
    let mut dp = dataplane();
    let key_of = |f: &[u8]| FlowKey {
        src: addr16(&f[26..30]),
        dst: addr16(&f[30..34]),
        sport_be: u16::from_ne_bytes([f[34], f[35]]),
        dport_be: u16::from_ne_bytes([f[36], f[37]]),
        proto: PROTO_TCP,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    // The same client host, a client port from 1024 on.
    let client = |frame: &[u8], port: u16| {
        let mut f = frame.to_vec();
        f[34..36].copy_from_slice(&port.to_be_bytes());
        f
    };
    let syn = tcp4(VIP4, 80, true);
    let ack = tcp4(VIP4, 80, false);
    // Five client ports whose flows fall into one set (lb-common's, as the program's).
    // A port picks one of 65 536 sets: look among all of them for the fullest set's five.
    let mut by_set: std::collections::HashMap<u32, Vec<u16>> = Default::default();
    for port in 1024..=u16::MAX {
        by_set.entry(set_of(&key_of(&client(&syn, port)))).or_default().push(port);
    }
    let ports = by_set.into_values().find(|p| p.len() >= 5).expect("five ports in one set");
    for (i, &port) in ports[..4].iter().enumerate() {
        dp.set_clock(100 + i as u32).unwrap();
        assert_eq!(run(&mut dp, &client(&syn, port)).0, XDP_TX);
    }
    assert_eq!(dp.flows().len(), 4);
    // The first flow is busy again; the second is now the one idle longest.
    dp.set_clock(104).unwrap();
    assert_eq!(run(&mut dp, &client(&ack, ports[0])).0, XDP_TX);
    dp.set_clock(105).unwrap();
    assert_eq!(run(&mut dp, &client(&syn, ports[4])).0, XDP_TX);

    let mut left: Vec<u16> = dp.flows().iter().map(|(k, _)| u16::from_be(k.sport_be)).collect();
    left.sort_unstable();
    let mut want = vec![ports[0], ports[2], ports[3], ports[4]];
    want.sort_unstable();
    assert_eq!(left, want);
}

/// The per-VIP and per-real maps are as large as the config asks (director.max_vips,
/// max_reals): a write past the end is refused by the kernel, one inside is taken, and the
/// program still passes the verifier with them resized.
#[test]
fn maps_are_sized_at_load_time_for_the_configured_capacity() {
    lb_lab::needs_root!();
    use lb_daemon::core::Capacity;
    let mut dp = Dataplane::load_with(Capacity { vips: 3, reals: 5 }).expect("load (root?)");
    assert_eq!(dp.capacity(), Capacity { vips: 3, reals: 5 });
    let real = RealInfo { flags: lb_common::REAL_PRESENT, ..Default::default() };
    assert!(dp.set_real(4, real).is_ok());
    assert!(dp.set_real(5, real).is_err(), "REALS holds 5 reals");
    let table = vec![0u32; lb_common::MAGLEV_SIZE as usize];
    assert!(dp.set_maglev(2, &table).is_ok());
    assert!(dp.set_maglev(3, &table).is_err(), "MAGLEV holds 3 VIPs");
    assert!(dp.reset_vip_counters(2).is_ok());
    assert!(dp.reset_vip_counters(3).is_err(), "VIP_STATS holds 3 VIPs");
    // The defaults: Katran's 512 VIPs, and 16384 reals.
    let dp = Dataplane::load().expect("load");
    assert_eq!(dp.capacity(), Capacity { vips: 512, reals: 16384 });
    assert!(Dataplane::load_with(Capacity { vips: 1025, reals: 5 }).is_err());
}

/// An ARP request (`op` 1) or reply (2) from the client for `target`.
fn arp(op: u8, target: [u8; 4]) -> Vec<u8> {
    let body =
        [&[0, 1, 0x08, 0, 6, 4, 0, op][..], &CLIENT_MAC, &[198, 51, 100, 7], &[0; 6], &target];
    [&[0xffu8; 6][..], &CLIENT_MAC, &[0x08, 0x06], &body.concat(), &[0u8; 18]].concat()
}

/// A neighbour solicitation from the client for `target`.
fn solicitation(target: [u8; 16]) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, [0x33, 0x33, 0xff, 0, 0, target[15]])
        .ipv6(addr16(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]), target, 255)
        .icmpv6(etherparse::Icmpv6Type::Unknown { type_u8: 135, code_u8: 0, bytes5to8: [0; 4] })
        .write(&mut frame, &target)
        .unwrap();
    frame
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn the_fence_silences_arp_and_new_flows_for_its_vips_once_the_lease_lapses() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    let mut fence = dp.fence().unwrap();
    let vip4 = IpAddr::from(VIP4);
    fence.guard(true, &[vip4]).unwrap();
    fence.guard(false, &[IpAddr::from(VIP6)]).unwrap();
    let established = tcp4(VIP4, 80, true);
    let opening = |port: u16| {
        let client = SocketAddr::from(([198, 51, 100, 7], port));
        Frame::opening(client, SocketAddr::from((VIP4, 80)), false).build()
    };
    let quiet = [arp(1, VIP4), solicitation(VIP6)];
    let unguarded = [arp(1, [198, 51, 100, 2]), arp(2, VIP4), solicitation(addr16(&[0xfe, 0x80]))];

    // Within the lease: ARP and neighbour discovery pass, new flows are taken.
    fence.lease(true, Some(monotonic_ns() + 60_000_000_000)).unwrap();
    fence.lease(false, Some(monotonic_ns() + 60_000_000_000)).unwrap();
    for frame in quiet.iter().chain(&unguarded) {
        let (action, out) = run(&mut dp, frame);
        assert_eq!((action, &out), (XDP_PASS, frame));
    }
    assert_eq!(run(&mut dp, &established).0, XDP_TX);
    assert_eq!(run(&mut dp, &opening(40001)).0, XDP_TX);

    // Lapsed (lbd stopped renewing it): requests for the VIPs are dropped, the rest pass,
    // established flows go on, new ones are refused.
    fence.lease(true, Some(monotonic_ns() - 1)).unwrap();
    fence.lease(false, None).unwrap();
    for frame in &quiet {
        assert_eq!(run(&mut dp, frame).0, XDP_DROP);
    }
    for frame in &unguarded {
        let (action, out) = run(&mut dp, frame);
        assert_eq!((action, &out), (XDP_PASS, frame));
    }
    assert_eq!(reason_count(&dp, Reason::DropFencedNeighbour), 2);
    assert_eq!(run(&mut dp, &tcp4(VIP4, 80, false)).0, XDP_TX, "an established flow");
    assert_eq!(run(&mut dp, &opening(40002)).0, XDP_DROP, "a new flow");
    assert_eq!(run(&mut dp, &udp6(VIP6, 53)).0, XDP_DROP, "a new IPv6 flow");
    assert_eq!(reason_count(&dp, Reason::DropFencedFlow), 2);

    // One family's lease is its own: IPv4 renewed, IPv6 still fenced.
    fence.lease(true, Some(monotonic_ns() + 60_000_000_000)).unwrap();
    assert_eq!(run(&mut dp, &arp(1, VIP4)).0, XDP_PASS);
    assert_eq!(run(&mut dp, &opening(40003)).0, XDP_TX);
    assert_eq!(run(&mut dp, &solicitation(VIP6)).0, XDP_DROP);

    // Disarmed (a director without ha): no fence at all.
    dp.disarm_fence().unwrap();
    assert_eq!(run(&mut dp, &solicitation(VIP6)).0, XDP_PASS);
    assert_eq!(run(&mut dp, &udp6(VIP6, 53)).0, XDP_TX);
    // The guarded addresses are replaced, not added to.
    fence.guard(true, &[]).unwrap();
    fence.lease(true, None).unwrap();
    assert_eq!(run(&mut dp, &arp(1, VIP4)).0, XDP_PASS);
}

#[test]
fn a_udp_flow_leaves_a_real_its_checks_found_down_and_a_tcp_flow_stays() {
    lb_lab::needs_root!();
    let mut dp = dataplane();
    // VIP index 3 (IPv6 UDP, port 53) and index 0 (IPv4 TCP, port 80), each with a
    // second real that the Maglev tables name from now on.
    let second6 = RealInfo { family: lb_common::FAMILY_V6, vip: 3, ..second_dr_real() };
    dp.set_real(20, second6).unwrap();
    dp.set_real(21, second_dr_real()).unwrap();
    let query = udp6(VIP6, 53);
    let syn = tcp4(VIP4, 80, true);
    assert_eq!(&run(&mut dp, &query).1[..6], &REAL_MAC);
    assert_eq!(&run(&mut dp, &syn).1[..6], &REAL_MAC);
    dp.set_maglev(3, &vec![20; MAGLEV_SIZE as usize]).unwrap();
    dp.set_maglev(0, &vec![21; MAGLEV_SIZE as usize]).unwrap();
    // Weight 0 (out of the tables, still present): both flows drain on their real.
    assert_eq!(&run(&mut dp, &query).1[..6], &REAL_MAC, "a drained UDP flow stays");
    assert_eq!(&run(&mut dp, &tcp4(VIP4, 80, false)).1[..6], &REAL_MAC);
    // Down by its checks: the UDP flow's next datagram goes to the table's real, and
    // stays there; the TCP flow stays on its quiesced real.
    for id in [3, 0] {
        let mut down = real_of(id);
        down.flags |= lb_common::REAL_DOWN;
        dp.set_real(id, down).unwrap();
    }
    assert_eq!(&run(&mut dp, &query).1[..6], &second6.mac, "rescheduled");
    assert_eq!(&run(&mut dp, &query).1[..6], &second6.mac, "and recorded");
    assert_eq!(&run(&mut dp, &tcp4(VIP4, 80, false)).1[..6], &REAL_MAC, "TCP stays");
}
