//! What lbd and lbadm need to know of an interface: index, MAC, MTU, and
//! whether a device driver backs it. Read through ioctls and getifaddrs, which answer for
//! the caller's network namespace; sysfs would answer for the namespace that mounted it,
//! which under `nsenter --net` is the host's.

use std::os::fd::{AsRawFd as _, OwnedFd};

use anyhow::{Context as _, Result, bail};

#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u16,
    /// Backed by a device on a bus (a NIC with a driver), not a virtual link such as veth.
    pub has_device: bool,
}

const SIOCGIFMTU: libc::c_ulong = 0x8921;
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 3;

/// struct ethtool_drvinfo (linux/ethtool.h).
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

impl LinkInfo {
    pub fn read(interface: &str) -> Result<Self> {
        let ifindex = nix::net::if_::if_nametoindex(interface)
            .with_context(|| format!("no interface {interface}"))?;
        let mut mac = None;
        for ifa in nix::ifaddrs::getifaddrs().context("getifaddrs")? {
            if ifa.interface_name != interface {
                continue;
            }
            if let Some(link) = ifa.address.as_ref().and_then(|a| a.as_link_addr()) {
                mac = mac.or(link.addr());
            }
        }
        let Some(mac) = mac else { bail!("interface {interface} has no MAC address") };
        let socket = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .context("socket for interface ioctls")?;
        let mtu = mtu(&socket, interface).with_context(|| format!("interface {interface}: MTU"))?;
        let has_device = bus_info(&socket, interface).is_some_and(|b| !b.is_empty());
        Ok(LinkInfo { ifindex, mac, mtu, has_device })
    }
}

fn ifreq(interface: &str) -> Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = interface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        bail!("interface name {interface} is too long");
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn mtu(socket: &OwnedFd, interface: &str) -> Result<u16> {
    let mut req = ifreq(interface)?;
    // SAFETY: SIOCGIFMTU reads the name and writes ifru_mtu of the ifreq we own.
    if unsafe { libc::ioctl(socket.as_raw_fd(), SIOCGIFMTU, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: the kernel filled the mtu member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u16)
}

/// The driver's bus address ("0000:00:03.0", "virtio0"), empty for virtual links; None
/// when the driver does not answer ethtool.
fn bus_info(socket: &OwnedFd, interface: &str) -> Option<String> {
    let mut req = ifreq(interface).ok()?;
    // SAFETY: DrvInfo is plain data; all zero is valid.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO writes a struct ethtool_drvinfo to ifru_data,
    // which points at `info`, alive for the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut req) } != 0 {
        return None;
    }
    let end = info.bus_info.iter().position(|&b| b == 0).unwrap_or(info.bus_info.len());
    Some(String::from_utf8_lossy(&info.bus_info[..end]).into_owned())
}
