//! The failover driver: one task per address family of the VIPs, running core::ha on the
//! HA interface's VRRP socket. It carries the effects out in order (adverts to the group
//! or the unicast peers, the VIPs added or removed over rtnetlink, the announcements, the
//! notify script) and publishes the state for `lbadm status`. The election is the core's.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument as _, info, info_span, warn};

use super::announce::{self, Announcer};
use super::hooks::{self, Hook};
use super::vrrp::{VrrpSocket, group};
use super::{addresses, now, sleep_until};
use crate::core::ha::{self, Effect, Ha, View, state_name};
use crate::dataplane::Fence;
use crate::link::LinkInfo;

/// What the HA task needs to run one virtual router.
#[derive(Debug)]
pub struct Setup {
    pub interface: String,
    pub settings: ha::Settings,
    /// Unicast peers; none: the multicast group.
    pub peers: Vec<IpAddr>,
    pub notify: Option<PathBuf>,
    /// The data plane's fence: renewed with every advert as master, so a lbd that dies
    /// stops answering for the VIPs before a backup takes them. None in tests of HA alone.
    pub fence: Option<Fence>,
    /// Whether every service has a real in service: until then this director does not
    /// preempt a lower master. None: always ready.
    pub ready: Option<watch::Receiver<bool>>,
    /// Whether every `track_ping` node is lost (FAULT). None: no nodes to track.
    pub track: Option<watch::Receiver<bool>>,
}

/// What lbd tells a running HA task.
pub enum Command {
    /// A reload's priority, applied through the election.
    Priority(u8),
    /// A graceful stop: priority 0 sent and the VIPs given up; answered when done.
    Shutdown(oneshot::Sender<()>),
}

/// How long a notify script may run.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// This director's source on `interface` for `family`'s adverts: its first IPv4
/// address that is not a VIP, or its IPv6 link-local address (RFC 5798 5.1.2.1).
pub fn source(interface: &str, ipv4: bool, vips: &[IpAddr]) -> Result<IpAddr> {
    let mut found = None;
    for ifa in nix::ifaddrs::getifaddrs().context("getifaddrs")? {
        if ifa.interface_name != interface {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        let ip: Option<IpAddr> = if let Some(a) = addr.as_sockaddr_in() {
            Some(a.ip().into())
        } else {
            addr.as_sockaddr_in6().map(|a| a.ip().into())
        };
        let Some(ip) = ip.filter(|ip| !vips.contains(ip)) else { continue };
        let wanted = match ip {
            IpAddr::V4(_) => ipv4,
            IpAddr::V6(a) => !ipv4 && a.segments()[0] & 0xffc0 == 0xfe80,
        };
        if wanted {
            found = Some(ip);
            break;
        }
    }
    match found {
        Some(ip) => Ok(ip),
        None if ipv4 => {
            bail!("{interface} has no IPv4 address of its own to send VRRP adverts from")
        }
        None => bail!("{interface} has no IPv6 link-local address to send VRRP adverts from"),
    }
}

/// Removes `vips` from `interface` at once. lbd does this before its first data-plane
/// batch: a lbd started again after a kill finds the VIPs it held as master still on the
/// interface, and the batch takes them out of the data plane (a director starts as
/// backup); in between, the kernel would answer the clients' packets for them itself,
/// with resets.
pub async fn release_vips(interface: &str, vips: &[IpAddr]) -> Result<()> {
    let link = LinkInfo::read(interface)?;
    let (connection, netlink, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    let running = tokio::spawn(connection);
    let removed = addresses::remove(&netlink, link.ifindex, vips).await;
    running.abort();
    removed
}

/// Runs the virtual router until told to stop.
pub async fn run(
    setup: Setup,
    mut commands: mpsc::Receiver<Command>,
    view: watch::Sender<Option<View>>,
    driver: mpsc::Sender<super::Event>,
) {
    let family = if setup.settings.vrrp.primary.is_ipv4() { "IPv4" } else { "IPv6" };
    let span = info_span!("ha", vrid = setup.settings.vrrp.vrid, family);
    if let Err(e) = serve(setup, &mut commands, &view, driver).instrument(span).await {
        // No VRRP, no VIPs: this director stays out of the way of the other.
        warn!(error = %format!("{e:#}"), "failover stopped: this director does not take the VIPs");
    }
}

async fn serve(
    mut setup: Setup,
    commands: &mut mpsc::Receiver<Command>,
    view: &watch::Sender<Option<View>>,
    driver: mpsc::Sender<super::Event>,
) -> Result<()> {
    let link = LinkInfo::read(&setup.interface)?;
    let src = setup.settings.vrrp.primary;
    let socket =
        VrrpSocket::open_when_ready(&setup.interface, link.ifindex, src, Duration::from_secs(30))
            .await?;
    let announcer = Announcer::new(link.ifindex).context("opening the announcement socket")?;
    let (connection, netlink, mut links) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])
            .context("opening rtnetlink")?;
    tokio::spawn(connection);
    let notify = hooks::in_order("notify");
    let mut fence = setup.fence.take();
    let mut ready = setup.ready.take();
    let mut track = setup.track.take();
    if let Some(fence) = &mut fence {
        fence.guard(src.is_ipv4(), &setup.settings.vips).context("writing the fence's VIPs")?;
    }
    let mut act = Actions {
        fence,
        setup: &setup,
        socket: &socket,
        announcer,
        netlink,
        ifindex: link.ifindex,
        mac: link.mac,
        notify,
        driver,
        serving: None,
    };
    let mut ha = Ha::new(setup.settings.clone(), now());
    if let Some(r) = &ready {
        ha.set_ready(*r.borrow());
    }
    let fx = ha.start(now());
    act.carry_out(fx).await;
    // An interface without carrier or taken down is FAULT: no VIPs, no adverts, so the
    // other director takes over instead of both thinking the other dead.
    let mut up = link_is_up(&setup.interface);
    let mut lost = track.as_ref().is_some_and(|t| *t.borrow());
    if !up {
        warn!(interface = %setup.interface, "the HA interface is down: FAULT");
    }
    if !up || lost {
        let fx = ha.set_fault(now(), true);
        act.carry_out(fx).await;
    }
    view.send_replace(Some(ha.view()));
    info!(interface = %setup.interface, %src, priority = setup.settings.vrrp.priority, "failover running");
    loop {
        let wake = ha.poll_timeout();
        tokio::select! {
            received = socket.recv() => {
                let (message, envelope) = received.context("reading the VRRP socket")?;
                let fx = ha.heard(now(), &message, envelope);
                act.carry_out(fx).await;
            }
            _ = sleep_until(wake) => {
                let fx = ha.handle_timeout(now());
                act.carry_out(fx).await;
            }
            Some((message, _)) = links.next() => {
                if let Some(now_up) = link_state(&message, link.ifindex)
                    && now_up != up
                {
                    up = now_up;
                    if up {
                        info!(interface = %setup.interface, "the HA interface is up again");
                    } else {
                        warn!(interface = %setup.interface, "the HA interface went down: FAULT");
                    }
                    let fx = ha.set_fault(now(), !up || lost);
                    act.carry_out(fx).await;
                }
            }
            // track_ping: every node lost is FAULT, one back ends it (with the link up).
            Ok(()) = async {
                match track.as_mut() {
                    Some(t) => t.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                lost = track.as_ref().is_some_and(|t| *t.borrow());
                let fx = ha.set_fault(now(), !up || lost);
                act.carry_out(fx).await;
            }
            Ok(()) = async {
                match ready.as_mut() {
                    Some(r) => r.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                let now_ready = ready.as_ref().is_some_and(|r| *r.borrow());
                if now_ready {
                    info!("every service has a real in service: ready to preempt");
                } else {
                    info!("a service has no real in service: not preempting a lower master");
                }
                ha.set_ready(now_ready);
            }
            command = commands.recv() => match command {
                Some(Command::Priority(p)) => {
                    info!(priority = p, "priority changed by a reload");
                    let fx = ha.set_priority(now(), p);
                    act.carry_out(fx).await;
                }
                Some(Command::Shutdown(done)) => {
                    let fx = ha.shutdown(now());
                    act.carry_out(fx).await;
                    view.send_replace(Some(ha.view()));
                    act.finish_notify().await;
                    let _ = done.send(());
                    return Ok(());
                }
                None => {
                    let fx = ha.shutdown(now());
                    act.carry_out(fx).await;
                    act.finish_notify().await;
                    return Ok(());
                }
            },
        }
        view.send_replace(Some(ha.view()));
    }
}

/// Whether an RTM_NEWLINK message says interface `ifindex` is up with carrier; None for
/// another interface or message.
fn link_state(
    message: &rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
    ifindex: u32,
) -> Option<bool> {
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::RouteNetlinkMessage;
    use rtnetlink::packet_route::link::LinkFlags;
    match &message.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link))
            if link.header.index == ifindex =>
        {
            let flags = link.header.flags;
            Some(flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp))
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link))
            if link.header.index == ifindex =>
        {
            Some(false)
        }
        _ => None,
    }
}

/// Whether `interface` is up with carrier now (sysfs would answer for another namespace).
fn link_is_up(interface: &str) -> bool {
    use nix::net::if_::InterfaceFlags;
    let up = InterfaceFlags::IFF_UP | InterfaceFlags::IFF_LOWER_UP;
    nix::ifaddrs::getifaddrs()
        .is_ok_and(|mut addrs| addrs.any(|a| a.interface_name == interface && a.flags.contains(up)))
}

struct Actions<'a> {
    setup: &'a Setup,
    socket: &'a VrrpSocket,
    announcer: Announcer,
    netlink: rtnetlink::Handle,
    ifindex: u32,
    mac: [u8; 6],
    /// The notify script's runs, one after another in the order of the transitions.
    notify: hooks::Queue,
    /// The main driver, told when the data plane is to answer for the VIPs.
    driver: mpsc::Sender<super::Event>,
    serving: Option<bool>,
    fence: Option<Fence>,
}

/// How long lbd, on its way out, waits for the notify script's queued runs (the last
/// one says INIT): lbd's main waits 3 s for each failover task to stop.
const NOTIFY_DRAIN: Duration = Duration::from_secs(2);

impl Actions<'_> {
    /// Lets the notify runs queued so far end (at most [`NOTIFY_DRAIN`]) before lbd exits.
    async fn finish_notify(self) {
        if !self.notify.drain(NOTIFY_DRAIN).await {
            warn!(within = ?NOTIFY_DRAIN, "the notify script's last runs did not end in time");
        }
    }

    /// In order: the VIPs are on the interface before they are announced.
    async fn carry_out(&mut self, fx: Vec<Effect>) {
        let vips = &self.setup.settings.vips;
        for e in fx {
            match e {
                Effect::Send(advert) => {
                    let src = self.socket.src();
                    let targets = if self.setup.peers.is_empty() {
                        vec![group(src)]
                    } else {
                        self.setup.peers.clone()
                    };
                    for dst in targets {
                        let message = crate::core::vrrp::wire::encode(
                            self.setup.settings.vrrp.vrid,
                            advert,
                            vips,
                            src,
                            dst,
                        );
                        if let Err(e) = self.socket.send(&message, dst) {
                            warn!(%dst, error = %e, "sending a VRRP advert");
                        }
                    }
                }
                Effect::TakeVips => {
                    if let Err(e) = addresses::add(&self.netlink, self.ifindex, vips).await {
                        warn!(error = %format!("{e:#}"), "adding the VIPs");
                    }
                }
                Effect::ReleaseVips => {
                    if let Err(e) = addresses::remove(&self.netlink, self.ifindex, vips).await {
                        warn!(error = %format!("{e:#}"), "removing the VIPs");
                    }
                }
                Effect::Announce => {
                    for vip in vips {
                        if let Err(e) = self.announcer.send(&announce::announcement(self.mac, *vip))
                        {
                            warn!(%vip, error = %e, "announcing a VIP");
                        }
                    }
                }
                // The deadline goes to the data plane's fence; whether there is one says
                // whether the data plane answers for the VIPs at all.
                Effect::Lease(lease) => {
                    if let Some(fence) = &mut self.fence {
                        let ipv4 = self.socket.src().is_ipv4();
                        if let Err(e) = fence.lease(ipv4, lease.map(|t| t.as_nanos())) {
                            warn!(error = %format!("{e:#}"), "renewing the fence's lease");
                        }
                    }
                    let serving = lease.is_some();
                    if self.serving != Some(serving) {
                        self.serving = Some(serving);
                        let (done, written) = oneshot::channel();
                        let ipv4 = self.socket.src().is_ipv4();
                        let event = super::Event::Serving { ipv4, on: serving, done };
                        if self.driver.send(event).await.is_ok() {
                            // Bounded by one advert interval: adverts wait meanwhile, and the
                            // lease runs two; a slow driver is logged, not let fence a live
                            // master.
                            let within = Duration::from_millis(
                                u64::from(self.setup.settings.vrrp.interval_cs) * 10,
                            );
                            let waited = tokio::time::timeout(within, written);
                            if !matches!(waited.await, Ok(Ok(()))) {
                                warn!(
                                    serving,
                                    ?within,
                                    "the data plane did not confirm the VIPs' change in time"
                                );
                            }
                        }
                    }
                }
                Effect::Notify { from, to } => {
                    info!(from = state_name(from), to = state_name(to), "HA state changed");
                    if let Some(program) = &self.setup.notify {
                        self.notify.send(Hook {
                            program: program.clone(),
                            args: vec![state_name(to).into()],
                            env: Vec::new(),
                            timeout: NOTIFY_TIMEOUT,
                        });
                    }
                }
            }
        }
    }
}
