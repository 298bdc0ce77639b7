//! The `ha.track_ping` driver: runs core::track over raw ICMP and ICMPv6 sockets and
//! publishes whether every node is lost, which the failover tasks take as FAULT.

use std::net::{IpAddr, SocketAddr};

use anyhow::Result;
use socket2::{SockAddr, Socket};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{now, sleep_until};
use crate::core::track::{Effect, Settings, Tracker};
use crate::health::ping::{self, echo, open};

/// Pings `nodes` until lbd ends; `fault` says whether all of them are lost.
pub async fn run(nodes: Vec<IpAddr>, fault: watch::Sender<bool>) {
    if let Err(e) = serve(nodes, &fault).await {
        // Without the tracker this director cannot tell it is cut off: say so, and stay
        // out of FAULT rather than give up the VIPs for a socket error.
        warn!(error = %format!("{e:#}"), "track_ping stopped: ping nodes are no longer watched");
    }
}

async fn serve(nodes: Vec<IpAddr>, fault: &watch::Sender<bool>) -> Result<()> {
    let v4 = nodes.iter().any(IpAddr::is_ipv4).then(|| open(true)).transpose()?;
    let v6 = nodes.iter().any(IpAddr::is_ipv6).then(|| open(false)).transpose()?;
    // The identifier of our echoes: other pings on the host get their own.
    let id = (std::process::id() & 0xffff) as u16;
    let mut tracker = Tracker::new(Settings::new(nodes.clone()), now());
    info!(?nodes, "track_ping running");
    loop {
        let wake = tracker.poll_timeout();
        let fx = tokio::select! {
            _ = sleep_until(wake) => tracker.handle_timeout(now()),
            Some(Ok((from, seq))) = recv(v4.as_ref(), id, false) => tracker.reply(from, seq),
            Some(Ok((from, seq))) = recv(v6.as_ref(), id, true) => tracker.reply(from, seq),
        };
        for e in fx {
            match e {
                Effect::Ping { node, seq } => {
                    let socket = if node.is_ipv4() { v4.as_ref() } else { v6.as_ref() };
                    if let Some(socket) = socket {
                        // A send that fails (no route) is an echo without a reply.
                        let _ = socket.get_ref().send_to(
                            &echo(node.is_ipv4(), id, seq),
                            &SockAddr::from(SocketAddr::new(node, 0)),
                        );
                    }
                }
                Effect::Fault(true) => {
                    warn!(lost = ?tracker.lost(), "every track_ping node is lost: FAULT");
                    fault.send_replace(true);
                }
                Effect::Fault(false) => {
                    info!("a track_ping node answers again");
                    fault.send_replace(false);
                }
            }
        }
    }
}

/// The next echo reply of ours on `socket`: its sender and sequence number. Never ready
/// without a socket.
async fn recv(
    socket: Option<&AsyncFd<Socket>>,
    id: u16,
    ipv6: bool,
) -> Option<std::io::Result<(IpAddr, u16)>> {
    match socket {
        Some(s) => Some(ping::recv(s, id, ipv6).await),
        None => std::future::pending().await,
    }
}
