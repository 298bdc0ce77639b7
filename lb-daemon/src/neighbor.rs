//! MAC resolution for direct routing. The data plane rewrites frames to a real's MAC, which
//! only the kernel's neighbour table knows; this task reads it over rtnetlink and, when an
//! entry is missing or stale, makes the kernel resolve it by sending the real a datagram
//! (ARP/ND are the kernel's job: XDP neither sends nor answers them).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use futures_util::TryStreamExt as _;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// A real's link-layer address as the kernel knows it; `mac: None` when it is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub ip: IpAddr,
    pub mac: Option<[u8; 6]>,
    pub ifindex: u32,
}

/// Interval between looks at the neighbour table.
const PERIOD: Duration = Duration::from_millis(500);

/// Watches the addresses in `targets`, sending a [`Resolved`] whenever one changes.
pub async fn run<E: From<Resolved>>(
    mut targets: watch::Receiver<Vec<IpAddr>>,
    tx: mpsc::Sender<E>,
) {
    let (connection, handle, _) = match rtnetlink::new_connection() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot open rtnetlink: reals' MACs will not be resolved");
            return;
        }
    };
    tokio::spawn(connection);
    let mut known: HashMap<IpAddr, Resolved> = HashMap::new();
    loop {
        let wanted = targets.borrow_and_update().clone();
        match dump(&handle).await {
            Ok(table) => {
                for ip in &wanted {
                    let entry = table.get(ip);
                    let now = Resolved {
                        ip: *ip,
                        mac: entry.map(|e| e.0),
                        ifindex: entry.map_or(0, |e| e.1),
                    };
                    // A stale entry is still right, but the kernel only refreshes entries it
                    // uses itself; our forwarded frames bypass it, so we ask it to confirm.
                    if entry.is_none_or(|e| e.2) {
                        probe(*ip);
                    }
                    let previous = known.get(ip).copied();
                    if previous.map(|p| (p.mac, p.ifindex)) != Some((now.mac, now.ifindex)) {
                        if now.mac.is_some() || previous.is_some_and(|p| p.mac.is_some()) {
                            info!(real = %ip, mac = ?now.mac.map(fmt_mac), ifindex = now.ifindex, "neighbour");
                            if tx.send(now.into()).await.is_err() {
                                return;
                            }
                        }
                        known.insert(*ip, now);
                    }
                }
                known.retain(|ip, _| wanted.contains(ip));
            }
            Err(e) => warn!(error = %e, "reading the neighbour table"),
        }
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            changed = targets.changed() => if changed.is_err() { return },
        }
    }
}

/// The neighbour table: address to (MAC, ifindex, needs a probe).
async fn dump(
    handle: &rtnetlink::Handle,
) -> Result<HashMap<IpAddr, ([u8; 6], u32, bool)>, rtnetlink::Error> {
    let mut table = HashMap::new();
    let mut stream = handle.neighbours().get().execute();
    while let Some(msg) = stream.try_next().await? {
        let usable = match msg.header.state {
            NeighbourState::Reachable | NeighbourState::Permanent | NeighbourState::Noarp => {
                Some(false)
            }
            NeighbourState::Stale | NeighbourState::Delay | NeighbourState::Probe => Some(true),
            _ => None,
        };
        let Some(needs_probe) = usable else { continue };
        let mut ip = None;
        let mut mac = None;
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    ip = Some(IpAddr::V4(*a))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                    ip = Some(IpAddr::V6(*a))
                }
                NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                    mac = Some([l[0], l[1], l[2], l[3], l[4], l[5]]);
                }
                _ => {}
            }
        }
        if let (Some(ip), Some(mac)) = (ip, mac) {
            table.insert(ip, (mac, msg.header.ifindex, needs_probe));
        }
    }
    Ok(table)
}

/// Makes the kernel resolve `ip`: a datagram to the discard port needs its MAC.
fn probe(ip: IpAddr) {
    let bind: SocketAddr =
        if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let sent = UdpSocket::bind(bind).and_then(|s| s.send_to(&[], SocketAddr::new(ip, 9)));
    if let Err(e) = sent {
        debug!(real = %ip, error = %e, "neighbour probe");
    }
}

pub fn fmt_mac(m: [u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}
