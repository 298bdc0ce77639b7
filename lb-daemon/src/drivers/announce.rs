//! Telling the segment that the VIPs moved: gratuitous ARP for IPv4 and unsolicited
//! neighbour advertisements for IPv6, so clients and routers update their caches at once
//! instead of when their entries go stale. Frames are built whole (pure functions,
//! tested byte for byte) and sent on an AF_PACKET socket bound to the HA interface.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const BROADCAST: [u8; 6] = [0xff; 6];
/// ff02::1, all nodes, and its multicast MAC (RFC 2464: 33:33 and the low 32 bits).
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// An ARP announcement (RFC 5227 2.3): a request whose sender and target address are the
/// VIP, broadcast, so every host on the segment that caches the VIP takes `mac`.
pub fn gratuitous_arp(mac: [u8; 6], vip: Ipv4Addr) -> Vec<u8> {
    let mut f = ethernet(BROADCAST, mac, ETH_P_ARP);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&vip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&vip.octets());
    f
}

/// An unsolicited neighbour advertisement (RFC 4861 7.2.6) for `vip` to all nodes, with
/// the override flag and `mac` as the target's link-layer address, from the VIP itself.
pub fn unsolicited_na(mac: [u8; 6], vip: Ipv6Addr) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0]); // neighbour advertisement, checksum later
    icmp.extend_from_slice(&[0x20, 0, 0, 0]); // override; neither router nor solicited
    icmp.extend_from_slice(&vip.octets());
    icmp.extend_from_slice(&[2, 1]); // option: target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let sum = icmpv6_checksum(vip, ALL_NODES, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = ethernet(ALL_NODES_MAC, mac, ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]); // ICMPv6, hop limit 255 as neighbour discovery requires
    f.extend_from_slice(&vip.octets());
    f.extend_from_slice(&ALL_NODES.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The announcement for one VIP.
pub fn announcement(mac: [u8; 6], vip: IpAddr) -> Vec<u8> {
    match vip {
        IpAddr::V4(v) => gratuitous_arp(mac, v),
        IpAddr::V6(v) => unsolicited_na(mac, v),
    }
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(86);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An AF_PACKET socket that sends whole frames out of one interface.
pub struct Announcer {
    fd: OwnedFd,
    ifindex: u32,
}

impl Announcer {
    pub fn new(ifindex: u32) -> io::Result<Self> {
        // SAFETY: a plain socket call; the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new, valid descriptor that nothing else owns.
        Ok(Announcer { fd: unsafe { OwnedFd::from_raw_fd(fd) }, ifindex })
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; all zero is valid before the fields are set.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = self.ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and to are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

    #[test]
    fn a_gratuitous_arp_is_a_broadcast_request_for_the_vip_itself() {
        let f = gratuitous_arp(MAC, Ipv4Addr::new(192, 0, 2, 10));
        let expected: Vec<u8> = [
            &BROADCAST[..],
            &MAC,
            &[0x08, 0x06],
            &[0, 1, 0x08, 0, 6, 4, 0, 1],
            &MAC,
            &[192, 0, 2, 10],
            &[0; 6],
            &[192, 0, 2, 10],
        ]
        .concat();
        assert_eq!(f, expected);
    }

    #[test]
    fn an_unsolicited_na_parses_with_a_valid_checksum_and_the_override_flag() {
        let vip: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let f = unsolicited_na(MAC, vip);
        let p = etherparse::SlicedPacket::from_ethernet(&f).expect("parses");
        let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else { panic!("{p:?}") };
        assert_eq!(ip.header().hop_limit(), 255);
        assert_eq!(ip.header().source_addr(), vip);
        assert_eq!(ip.header().destination_addr(), ALL_NODES);
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &p.transport else { panic!("{p:?}") };
        assert!(matches!(
            icmp.icmp_type(),
            etherparse::Icmpv6Type::NeighborAdvertisement(h) if h.r#override && !h.solicited && !h.router
        ));
        assert!(icmp.is_checksum_valid(vip.octets(), ALL_NODES.octets()));
        // The target and its link-layer address.
        assert_eq!(&f[62..78], &vip.octets());
        assert_eq!(&f[78..86], &[2, 1, 0x02, 0, 0, 0, 0, 0x0a]);
        assert_eq!(&f[..6], &ALL_NODES_MAC);
    }
}
