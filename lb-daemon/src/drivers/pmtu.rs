//! Path MTU discovery for tunnels. A router beyond the director answers a tunnel packet too
//! big for its next link with ICMP "fragmentation needed" / "packet too big" to the
//! tunnel's source, the director, whose kernel has no ipip module to learn from it. Raw
//! sockets of the tunnel protocols with IP_RECVERR / IPV6_RECVERR get those errors on their
//! error queue; the neighbour task caps the real's tunnel MTU with what they say.

use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{Context as _, Result};
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6, recv, recvmsg, setsockopt, sockopt,
};
use tokio::io::{Interest, unix::AsyncFd};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// A router's word on the path to a real: tunnel packets to it may measure `mtu` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learnt {
    pub real: IpAddr,
    pub mtu: u32,
    /// The router that said so.
    pub from: Option<IpAddr>,
}

/// The least MTU believed: the kernel's own floor for IPv4 (net.ipv4.route.min_pmtu) and
/// IPv6's minimum link MTU. A forged error cannot shrink tunnels further than the kernel
/// would shrink its own paths.
pub const MIN_MTU_V4: u32 = 552;
pub const MIN_MTU_V6: u32 = 1280;

const IPPROTO_IPIP: i32 = 4;
const IPPROTO_IPV6_IN_IP: i32 = 41;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PKT_TOOBIG: u8 = 2;

/// Listens for both families' errors until the receiver is gone. Without the raw sockets
/// (no CAP_NET_RAW) it warns and returns: tunnels then rely on the routes' MTUs.
pub async fn run(tx: mpsc::Sender<Learnt>) {
    tokio::join!(listen(false, tx.clone()), listen(true, tx));
}

async fn listen(v6: bool, tx: mpsc::Sender<Learnt>) {
    let family = if v6 { "IPv6" } else { "IPv4" };
    let socket = match open(v6) {
        Ok(s) => s,
        Err(e) => {
            warn!(family, error = %format!("{e:#}"), "tunnel path MTU discovery is off");
            return;
        }
    };
    loop {
        let mut guard = match socket.ready(Interest::READABLE | Interest::ERROR).await {
            Ok(g) => g,
            Err(e) => {
                warn!(family, error = %e, "tunnel path MTU discovery stopped");
                return;
            }
        };
        let fd = socket.get_ref().as_raw_fd();
        // Tunnel packets addressed to the director itself are not ours to read: drop them,
        // or they would fill the buffer the error queue is charged to. A pending error is
        // reported once by recv, then cleared: read on past it.
        for _ in 0..1024 {
            match recv(fd, &mut [0u8; 64], MsgFlags::MSG_DONTWAIT) {
                Err(nix::errno::Errno::EAGAIN) => break,
                _ => continue,
            }
        }
        while let Some(learnt) = next_error(fd, v6) {
            let Some(learnt) = learnt else { continue };
            info!(real = %learnt.real, mtu = learnt.mtu, router = ?learnt.from, "tunnel path MTU learnt");
            if tx.send(learnt).await.is_err() {
                return;
            }
        }
        guard.clear_ready();
    }
}

/// A raw socket of the family's tunnel protocol with its error queue on.
fn open(v6: bool) -> Result<AsyncFd<OwnedFd>> {
    let (domain, protocol) =
        if v6 { (libc::AF_INET6, IPPROTO_IPV6_IN_IP) } else { (libc::AF_INET, IPPROTO_IPIP) };
    let flags = libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) with constant arguments; the descriptor is owned from here on.
    let fd = unsafe { libc::socket(domain, flags, protocol) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("raw socket");
    }
    // SAFETY: a descriptor socket(2) just returned, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if v6 {
        setsockopt(&fd, sockopt::Ipv6RecvErr, &true).context("IPV6_RECVERR")?;
    } else {
        setsockopt(&fd, sockopt::Ipv4RecvErr, &true).context("IP_RECVERR")?;
    }
    // SAFETY: an OwnedFd's descriptor stays open, and the same, while the AsyncFd owns it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::ERROR) }
        .map_err(|e| e.into_parts().1)
        .context("registering")
}

/// The next error on the queue: None when it is empty, Some(None) for one that says
/// nothing of a path MTU.
fn next_error(fd: i32, v6: bool) -> Option<Option<Learnt>> {
    // The quoted packet is of no use: the original destination comes as the address.
    let mut quote = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut quote)];
    let mut cmsgs = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
    let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
    let (real, error) = if v6 {
        let msg = recvmsg::<SockaddrIn6>(fd, &mut iov, Some(&mut cmsgs), flags).ok()?;
        (msg.address.map(|a| IpAddr::from(a.ip())), extended_error(msg.cmsgs().ok()?))
    } else {
        let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsgs), flags).ok()?;
        (msg.address.map(|a| IpAddr::from(a.ip())), extended_error(msg.cmsgs().ok()?))
    };
    let (Some(real), Some((err, from))) = (real, error) else {
        return Some(None);
    };
    let too_big = if v6 {
        err.ee_origin == libc::SO_EE_ORIGIN_ICMP6 && err.ee_type == ICMPV6_PKT_TOOBIG
    } else {
        err.ee_origin == libc::SO_EE_ORIGIN_ICMP
            && err.ee_type == ICMP_DEST_UNREACH
            && err.ee_code == ICMP_FRAG_NEEDED
    };
    if !too_big {
        debug!(real = %real, errno = err.ee_errno, "tunnel error that is not about size");
        return Some(None);
    }
    // An IPv4 router of before RFC 1191 says 0: it does not know; nothing is learnt.
    if err.ee_info == 0 {
        return Some(None);
    }
    let floor = if v6 { MIN_MTU_V6 } else { MIN_MTU_V4 };
    Some(Some(Learnt { real, mtu: err.ee_info.max(floor), from }))
}

/// The extended error among a message's control messages, and the address of whoever
/// sent the ICMP (SO_EE_OFFENDER).
fn extended_error(
    mut cmsgs: impl Iterator<Item = ControlMessageOwned>,
) -> Option<(libc::sock_extended_err, Option<IpAddr>)> {
    cmsgs.find_map(|c| match c {
        ControlMessageOwned::Ipv4RecvErr(e, from) => {
            Some((e, from.map(|f| Ipv4Addr::from(u32::from_be(f.sin_addr.s_addr)).into())))
        }
        ControlMessageOwned::Ipv6RecvErr(e, from) => {
            Some((e, from.map(|f| Ipv6Addr::from(f.sin6_addr.s6_addr).into())))
        }
        _ => None,
    })
}
