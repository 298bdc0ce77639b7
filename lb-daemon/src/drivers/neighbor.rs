//! Next-hop resolution for the reals. The data plane rewrites frames to the MAC of a real's
//! next hop: the real itself when it shares a segment with the director, the router the
//! kernel's route names when it does not (NAT and tunnel reals may sit in other networks).
//! This task asks the kernel for the route and reads the next hop's MAC from the neighbour
//! table over rtnetlink; when an entry is missing or stale, it makes the kernel resolve it
//! by sending the real a datagram (ARP/ND are the kernel's job: XDP neither sends nor
//! answers them).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures_util::{StreamExt as _, TryStreamExt as _};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMetric};
use rtnetlink::{MulticastGroup, RouteMessageBuilder};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::pmtu::Learnt;
use crate::core::fmt_mac;

pub use crate::core::Resolved;

/// What the kernel's route to a real says.
#[derive(Debug, Default, Clone, Copy)]
struct Route {
    ifindex: u32,
    gateway: Option<IpAddr>,
    src: Option<IpAddr>,
    mtu: Option<u32>,
}

/// Interval between looks at the neighbour table.
const PERIOD: Duration = Duration::from_millis(500);
/// How long a path MTU learnt from a router holds, as the kernel's own
/// (net.ipv4.route.mtu_expires): the path may widen again.
const LEARNT_MTU_EXPIRES: Duration = Duration::from_secs(600);

/// How often routes are read again though the kernel announced no change: a path MTU it
/// learns for its own traffic is not announced.
const ROUTE_REFRESH: Duration = Duration::from_secs(30);

/// The neighbour table: (address, ifindex) to (MAC, needs a probe). By interface too: the
/// same address may be a neighbour on two links, and the route names the one that counts.
type Neighbours = HashMap<(IpAddr, u32), ([u8; 6], bool)>;

/// Watches the addresses in `targets`, sending a [`Resolved`] whenever one changes. Path
/// MTUs that routers report (`learnt`, from [`crate::pmtu`]) narrow the routes' for a while.
pub async fn run<E: From<Resolved>>(
    mut targets: watch::Receiver<Vec<IpAddr>>,
    mut learnt: mpsc::Receiver<Learnt>,
    tx: mpsc::Sender<E>,
) {
    // Subscribed to route changes, so routes are read once per change, not per period.
    let groups = [MulticastGroup::Ipv4Route, MulticastGroup::Ipv6Route];
    let (connection, handle, mut route_changes) = match rtnetlink::new_multicast_connection(&groups)
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot open rtnetlink: reals' MACs will not be resolved");
            return;
        }
    };
    tokio::spawn(connection);
    let mut known: HashMap<IpAddr, Resolved> = HashMap::new();
    let mut narrowed: HashMap<IpAddr, (u32, Instant)> = HashMap::new();
    let mut routes: HashMap<IpAddr, Result<Route, String>> = HashMap::new();
    let mut routes_read = Instant::now();
    loop {
        let wanted = targets.borrow_and_update().clone();
        narrowed.retain(|_, (_, until)| *until > Instant::now());
        if routes_read.elapsed() > ROUTE_REFRESH {
            routes.clear();
            routes_read = Instant::now();
        }
        routes.retain(|ip, _| wanted.contains(ip));
        for ip in &wanted {
            if !routes.contains_key(ip) {
                let route = route_to(&handle, *ip).await.map_err(|e| format!("{e:#}"));
                routes.insert(*ip, route);
            }
        }
        match dump(&handle).await {
            Ok(table) => {
                for (ip, route) in &routes {
                    let narrowed = narrowed.get(ip).map(|n| n.0);
                    let now = next_hop(*ip, route, &table, narrowed, known.get(ip));
                    let previous = known.get(ip).copied();
                    if previous != Some(now) {
                        if now.mac.is_some() || previous.is_some_and(|p| p.mac.is_some()) {
                            info!(
                                real = %ip,
                                mac = ?now.mac.map(fmt_mac),
                                ifindex = now.ifindex,
                                via = ?now.via,
                                mtu = ?now.mtu,
                                "next hop"
                            );
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
        let tick = tokio::time::sleep(PERIOD);
        tokio::pin!(tick);
        loop {
            tokio::select! {
                _ = &mut tick => break,
                changed = targets.changed() => if changed.is_err() { return } else { break },
                // A burst of changes is read once, at the next tick.
                Some(_) = route_changes.next() => routes.clear(),
                Some(l) = learnt.recv() => {
                    let mtu = narrowed.get(&l.real).map_or(l.mtu, |n| n.0.min(l.mtu));
                    narrowed.insert(l.real, (mtu, Instant::now() + LEARNT_MTU_EXPIRES));
                    break;
                }
            }
        }
    }
}

/// Where the data plane sends `ip`'s frames, by its route and the neighbour table; asks the
/// kernel to resolve the next hop when the table has no fresh entry.
fn next_hop(
    ip: IpAddr,
    route: &Result<Route, String>,
    table: &Neighbours,
    narrowed: Option<u32>,
    known: Option<&Resolved>,
) -> Resolved {
    let route = match route {
        Ok(route) => route,
        Err(e) => {
            if known.is_none_or(|k| k.ifindex != 0) {
                warn!(real = %ip, error = %e, "no route to the real: it gets no traffic");
            }
            return Resolved { ip, mac: None, ifindex: 0, via: None, src: None, mtu: None };
        }
    };
    let entry = table.get(&(route.gateway.unwrap_or(ip), route.ifindex));
    // A stale entry is still right, but the kernel only refreshes entries it uses itself;
    // our forwarded frames bypass it, so we ask it to confirm. A datagram to the real makes
    // it resolve the router, when there is one.
    if entry.is_none_or(|e| e.1) {
        probe(ip);
    }
    Resolved {
        ip,
        mac: entry.map(|e| e.0),
        ifindex: route.ifindex,
        via: route.gateway,
        src: route.src,
        mtu: route.mtu.into_iter().chain(narrowed).min(),
    }
}

async fn dump(handle: &rtnetlink::Handle) -> Result<Neighbours, rtnetlink::Error> {
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
            table.insert((ip, msg.header.ifindex), (mac, needs_probe));
        }
    }
    Ok(table)
}

/// The kernel's route to `ip` (`ip route get`): the interface, the router if any, the
/// preferred source, the MTU if it sets one.
async fn route_to(handle: &rtnetlink::Handle, ip: IpAddr) -> Result<Route> {
    let host = if ip.is_ipv4() { 32 } else { 128 };
    let query = RouteMessageBuilder::<IpAddr>::new().destination_prefix(ip, host)?.build();
    let answer = handle
        .route()
        .get(query)
        .execute()
        .try_next()
        .await
        .context("route lookup")?
        .context("the kernel sent no route")?;
    let mut route = Route::default();
    for attr in answer.attributes {
        match attr {
            RouteAttribute::Oif(i) => route.ifindex = i,
            RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
            RouteAttribute::PrefSource(a) => route.src = ip_of(a),
            RouteAttribute::Metrics(metrics) => {
                route.mtu = metrics.into_iter().find_map(|m| match m {
                    RouteMetric::Mtu(mtu) if mtu > 0 => Some(mtu),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    Ok(route)
}

fn ip_of(a: RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(a.into()),
        RouteAddress::Inet6(a) => Some(a.into()),
        _ => None,
    }
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
