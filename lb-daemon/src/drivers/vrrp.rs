//! The VRRP socket of the HA interface: IP protocol 112, TTL and hop limit 255 on what it
//! sends, the group 224.0.0.18 or ff02::12 joined on that interface only, and each
//! received message handed on with the IP fields the decoder checks (source,
//! destination, TTL). The election is the core's (core::ha); this only moves bytes.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::io::{Interest, unix::AsyncFd};

use crate::core::vrrp::wire::{Envelope, GROUP_V4, GROUP_V6, PROTO_VRRP, TTL};

pub struct VrrpSocket {
    /// Joined to the group, bound to nothing: a raw socket bound to an address would
    /// receive only what is addressed to it, not the group's adverts.
    rx: AsyncFd<OwnedFd>,
    /// Bound to our source: the primary address for IPv4, the link-local one for IPv6
    /// (RFC 5798 5.1.2.1); the checksum covers it, so the kernel must not pick another.
    tx: OwnedFd,
    src: IpAddr,
    ifindex: u32,
}

impl VrrpSocket {
    /// Opens the sockets of `src`'s family on interface `ifindex` (named `interface`).
    pub fn open(interface: &str, ifindex: u32, src: IpAddr) -> Result<Self> {
        let rx = raw_socket(interface, src)?;
        let tx = raw_socket(interface, src)?;
        let (r, t) = (rx.as_raw_fd(), tx.as_raw_fd());
        match src {
            IpAddr::V4(a) => {
                set_int(t, libc::IPPROTO_IP, libc::IP_TTL, TTL.into())?;
                set_int(t, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, TTL.into())?;
                set_int(t, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, 0)?;
                let mreq = libc::ip_mreqn {
                    imr_multiaddr: libc::in_addr { s_addr: u32::from_ne_bytes(GROUP_V4) },
                    imr_address: libc::in_addr { s_addr: u32::from_ne_bytes(a.octets()) },
                    imr_ifindex: ifindex as i32,
                };
                set(t, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mreq)
                    .context("IP_MULTICAST_IF")?;
                set(r, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &mreq)
                    .context("joining 224.0.0.18")?;
                bind(t, SocketAddr::V4(SocketAddrV4::new(a, 0)))?;
            }
            IpAddr::V6(a) => {
                set_int(t, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, TTL.into())?;
                set_int(t, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, TTL.into())?;
                set_int(t, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, 0)?;
                set_int(t, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, ifindex as i32)?;
                set_int(r, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?;
                set_int(r, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
                let mreq = libc::ipv6_mreq {
                    ipv6mr_multiaddr: libc::in6_addr { s6_addr: GROUP_V6 },
                    ipv6mr_interface: ifindex,
                };
                set(r, libc::IPPROTO_IPV6, libc::IPV6_ADD_MEMBERSHIP, &mreq)
                    .context("joining ff02::12")?;
                bind(t, SocketAddr::V6(SocketAddrV6::new(a, 0, 0, ifindex)))?;
            }
        }
        // SAFETY: an OwnedFd's descriptor stays open, and the same, while the AsyncFd owns it.
        let rx = unsafe { AsyncFd::register_with_interest(rx, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the VRRP socket: {e}"))?;
        Ok(VrrpSocket { rx, tx, src, ifindex })
    }

    /// [`VrrpSocket::open`], waiting while the source cannot be bound yet: an IPv6
    /// link-local address is tentative until duplicate address detection ends, a second
    /// or two after the interface comes up (at boot, or in a fresh namespace).
    pub async fn open_when_ready(
        interface: &str,
        ifindex: u32,
        src: IpAddr,
        limit: Duration,
    ) -> Result<Self> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match Self::open(interface, ifindex, src) {
                Err(e) if tokio::time::Instant::now() < deadline && not_yet_bindable(&e) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                opened => return opened,
            }
        }
    }

    pub fn src(&self) -> IpAddr {
        self.src
    }

    /// Sends one VRRP message to `dst` (the group, or a unicast peer).
    pub fn send(&self, message: &[u8], dst: IpAddr) -> io::Result<()> {
        let to = match dst {
            IpAddr::V4(a) => SocketAddr::V4(SocketAddrV4::new(a, 0)),
            IpAddr::V6(a) => SocketAddr::V6(SocketAddrV6::new(a, 0, 0, self.ifindex)),
        };
        let (storage, len) = sockaddr(to);
        // SAFETY: message and the address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.tx.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&storage as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// The next VRRP message and its envelope.
    pub async fn recv(&self) -> io::Result<(Vec<u8>, Envelope)> {
        loop {
            let mut guard = self.rx.readable().await?;
            match guard.try_io(|fd| receive(fd.as_raw_fd(), self.src)) {
                Ok(Ok(Some(received))) => return Ok(received),
                // Not a whole message (too short for its IP header): read the next.
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

fn not_yet_bindable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>().is_some_and(|e| e.raw_os_error() == Some(libc::EADDRNOTAVAIL))
    })
}

/// The default group of `src`'s family.
pub fn group(src: IpAddr) -> IpAddr {
    match src {
        IpAddr::V4(_) => IpAddr::from(GROUP_V4),
        IpAddr::V6(_) => IpAddr::from(GROUP_V6),
    }
}

fn receive(fd: RawFd, src: IpAddr) -> io::Result<Option<(Vec<u8>, Envelope)>> {
    let mut buf = vec![0u8; 2048];
    // SAFETY: all-zero sockaddr_storage, msghdr and control buffer are valid to fill.
    let mut from: libc::sockaddr_storage = unsafe { zeroed() };
    let mut control = [0u8; 256];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: every pointer in msg points at a buffer of the length it names.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    match src {
        IpAddr::V4(_) => {
            // Raw IPv4 sockets receive the IP header: its TTL, source and destination.
            let ihl = usize::from(buf.first().map_or(0, |b| b & 0x0f)) * 4;
            if n < 20 || ihl < 20 || n < ihl {
                return Ok(None);
            }
            let envelope = Envelope {
                src: IpAddr::from([buf[12], buf[13], buf[14], buf[15]]),
                dst: IpAddr::from([buf[16], buf[17], buf[18], buf[19]]),
                ttl: buf[8],
            };
            Ok(Some((buf[ihl..n].to_vec(), envelope)))
        }
        IpAddr::V6(_) => {
            // IPv6 raw sockets receive the payload; hop limit and destination come as
            // ancillary data, the source as the peer's address.
            // SAFETY: the kernel filled a sockaddr_in6 for an AF_INET6 socket.
            let from6 =
                unsafe { *(&from as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let mut ttl = 0u8;
            let mut dst = Ipv6Addr::UNSPECIFIED;
            // SAFETY: walking the control buffer the kernel wrote, with its own macros.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    let data = libc::CMSG_DATA(c);
                    if (*c).cmsg_level == libc::IPPROTO_IPV6
                        && (*c).cmsg_type == libc::IPV6_HOPLIMIT
                    {
                        ttl = (data.cast::<libc::c_int>().read_unaligned()).clamp(0, 255) as u8;
                    } else if (*c).cmsg_level == libc::IPPROTO_IPV6
                        && (*c).cmsg_type == libc::IPV6_PKTINFO
                    {
                        let info = data.cast::<libc::in6_pktinfo>().read_unaligned();
                        dst = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            let envelope = Envelope {
                src: IpAddr::V6(Ipv6Addr::from(from6.sin6_addr.s6_addr)),
                dst: dst.into(),
                ttl,
            };
            Ok(Some((buf[..n].to_vec(), envelope)))
        }
    }
}

/// A non-blocking raw socket of protocol 112 that sends and receives on `interface` only.
fn raw_socket(interface: &str, src: IpAddr) -> Result<OwnedFd> {
    let family = if src.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let flags = libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let raw = unsafe { libc::socket(family, flags, PROTO_VRRP.into()) };
    if raw < 0 {
        return Err(io::Error::last_os_error())
            .context("opening a raw socket for VRRP (protocol 112)");
    }
    // SAFETY: raw is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = interface.as_bytes();
    // SAFETY: the option value is the interface name, of the length given.
    let bound = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as u32,
        )
    };
    if bound != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("binding VRRP to {interface}"));
    }
    Ok(fd)
}

fn set_int(fd: RawFd, level: i32, name: i32, value: i32) -> Result<()> {
    set(fd, level, name, &value).with_context(|| format!("setsockopt {level}/{name}"))
}

fn set<T>(fd: RawFd, level: i32, name: i32, value: &T) -> Result<()> {
    // SAFETY: value is a T of the size given.
    let rc = unsafe {
        libc::setsockopt(fd, level, name, (value as *const T).cast(), size_of::<T>() as u32)
    };
    if rc != 0 { Err(io::Error::last_os_error().into()) } else { Ok(()) }
}

fn bind(fd: RawFd, addr: SocketAddr) -> Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage holds a sockaddr of the length given.
    let rc = unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("binding VRRP to {}", addr.ip()));
    }
    Ok(())
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: all-zero sockaddr_storage is valid; the family's struct is written into it.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>().write(sin)
            };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6)
            };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as u32)
}
