//! Where a check comes from. The kernel picks a source by the route to the real, and
//! that can be a VIP on the director's interface (an IPv6 VIP added as operators add it,
//! by longest matching prefix): the reals, which hold their own copy of the VIP, then
//! answer the check to themselves, and every real reads "no answer". A check's source is
//! the route's own when it is not a VIP, else another address of the same interface that
//! is not one; none such is said plainly.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// The address a check to `real` is sent from, when the kernel's own choice is a VIP;
/// `None` when the kernel's choice is fine (bind nothing).
pub fn for_real(real: IpAddr, vips: &HashSet<IpAddr>) -> Result<Option<IpAddr>, String> {
    let chosen = kernel_source(real)?;
    if !vips.contains(&chosen) {
        return Ok(None);
    }
    let addrs = interface_addresses(chosen)?;
    pick(real, chosen, &addrs, vips).map(Some).ok_or_else(|| {
        format!(
            "the route to {real} leaves from {chosen}, a VIP, and its interface has no other \
             {} address to check from: add one (the VIP deprecated, preferred_lft 0, also works)",
            if real.is_ipv4() { "IPv4" } else { "IPv6" }
        )
    })
}

/// The source the kernel would give a packet to `real` (a connected UDP socket's name;
/// nothing is sent).
fn kernel_source(real: IpAddr) -> Result<IpAddr, String> {
    let any: SocketAddr =
        if real.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = UdpSocket::bind(any).map_err(|e| format!("UDP socket: {e}"))?;
    socket.connect(SocketAddr::new(real, 9)).map_err(|e| format!("no route to {real}: {e}"))?;
    Ok(socket.local_addr().map_err(|e| format!("getsockname: {e}"))?.ip())
}

/// Every address of the interface that holds `addr`.
fn interface_addresses(addr: IpAddr) -> Result<Vec<IpAddr>, String> {
    let all: Vec<(String, IpAddr)> = nix::ifaddrs::getifaddrs()
        .map_err(|e| format!("getifaddrs: {e}"))?
        .filter_map(|ifa| {
            let a = ifa.address?;
            let ip: IpAddr = match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
                (Some(v4), _) => v4.ip().into(),
                (_, Some(v6)) => v6.ip().into(),
                _ => return None,
            };
            Some((ifa.interface_name, ip))
        })
        .collect();
    let interface = all.iter().find(|(_, ip)| *ip == addr).map(|(name, _)| name.clone());
    Ok(all
        .into_iter()
        .filter(|(name, _)| Some(name) == interface.as_ref())
        .map(|(_, ip)| ip)
        .collect())
}

/// Of `addrs`, one of `real`'s family that is not a VIP; for IPv6, a link-local one only
/// for a link-local real.
fn pick(real: IpAddr, chosen: IpAddr, addrs: &[IpAddr], vips: &HashSet<IpAddr>) -> Option<IpAddr> {
    let link_local =
        |ip: &IpAddr| matches!(ip, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80);
    addrs.iter().copied().find(|ip| {
        ip.is_ipv4() == real.is_ipv4()
            && *ip != chosen
            && !vips.contains(ip)
            && (link_local(ip) == link_local(&real))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn another_address_of_the_interface_that_is_not_a_vip() {
        let vips: HashSet<IpAddr> = [ip("2001:db8::10"), ip("2001:db8::20")].into();
        let addrs = [
            ip("fe80::1"),
            ip("2001:db8::10"),
            ip("2001:db8::20"),
            ip("2001:db8::2"),
            ip("192.0.2.2"),
        ];
        let real = ip("2001:db8::11");
        assert_eq!(pick(real, ip("2001:db8::10"), &addrs, &vips), Some(ip("2001:db8::2")));
        // Only VIPs and a link-local address: none for a global real.
        let addrs = [ip("fe80::1"), ip("2001:db8::10"), ip("2001:db8::20")];
        assert_eq!(pick(real, ip("2001:db8::10"), &addrs, &vips), None);
        assert_eq!(pick(ip("fe80::11"), ip("2001:db8::10"), &addrs, &vips), Some(ip("fe80::1")));
    }

    #[test]
    fn the_kernels_own_choice_stands_when_it_is_not_a_vip() {
        // Loopback: the kernel picks 127.0.0.1, no VIP.
        assert_eq!(for_real(ip("127.0.0.2"), &HashSet::new()), Ok(None));
        let vips: HashSet<IpAddr> = [ip("127.0.0.1")].into();
        // 127.0.0.1 is a VIP here; lo has no other IPv4 address in a test's namespace.
        match for_real(ip("127.0.0.2"), &vips) {
            Ok(Some(other)) => assert_ne!(other, ip("127.0.0.1")),
            Ok(None) => panic!("the VIP kept as source"),
            Err(why) => assert!(why.contains("a VIP"), "{why}"),
        }
    }
}
