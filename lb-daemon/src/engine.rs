//! The engine: the one owner of desired state. It folds the config, health reports, resolved
//! MACs and admin changes into the tables the data plane needs, and is the only writer of
//! the data plane's maps. Other tasks talk to it through one channel of [`Event`]s.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use lb_common::{
    FAMILY_V4, FAMILY_V6, FLOW_CLOSING, Forwarding as DpForwarding, MAGLEV_SIZE, MAX_REALS,
    MAX_VIPS, REAL_PRESENT, RealInfo, VipInfo, VipKey, maglev,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, info_span, warn};

use crate::config::{self, Check, Config, OnFailure, Protocol, Service};
use crate::control::{
    self, RealStatus, RealView, Request, Response, ServiceView, Stats, StatusView,
};
use crate::dataplane::Dataplane;
use crate::health::{self, Health};
use crate::neighbor::{self, Resolved};

/// Everything the engine reacts to.
pub enum Event {
    Check(health::Report),
    Neighbor(Resolved),
    /// A control API request (SIGHUP arrives as `Request::Reload` too).
    Control(Request, oneshot::Sender<Response>),
}

impl From<control::Call> for Event {
    fn from((request, reply): control::Call) -> Self {
        Event::Control(request, reply)
    }
}

impl From<health::Report> for Event {
    fn from(r: health::Report) -> Self {
        Event::Check(r)
    }
}

impl From<Resolved> for Event {
    fn from(r: Resolved) -> Self {
        Event::Neighbor(r)
    }
}

struct ServiceState {
    spec: Service,
    key: VipKey,
    index: u32,
    reals: Vec<RealState>,
    /// Reals in the Maglev table at the last publish.
    serving: usize,
}

struct RealState {
    id: u32,
    addr: SocketAddr,
    /// From the config, or `lbadm -e` until the next reload.
    weight: u32,
    checks: Vec<CheckState>,
    checkers: Vec<JoinHandle<()>>,
    /// Its next hop's MAC: its own, or the router's when `via` is set.
    mac: Option<[u8; 6]>,
    /// The interface the real is reached through; None while the real is unresolved or
    /// behind an interface XDP is not attached to.
    link: Option<u32>,
    /// The router on the kernel's route to the real, if it is not on our segment.
    via: Option<IpAddr>,
    /// The kernel's source address for the real: a tunnel's outer source.
    route_src: Option<IpAddr>,
    /// The route's MTU, if it sets one below the interface's.
    route_mtu: Option<u32>,
    health: Health,
    since: Instant,
}

struct CheckState {
    spec: Check,
    health: Health,
    last: Option<(bool, String)>,
}

impl RealState {
    /// Up only while every check is up; a real without checks is up.
    fn combined_health(&self) -> Health {
        if self.checks.iter().any(|c| c.health == Health::Down) {
            Health::Down
        } else if self.checks.iter().any(|c| c.health == Health::Unknown) {
            Health::Unknown
        } else {
            Health::Up
        }
    }

    /// Receives new connections: up, weighted, and reachable as `forwarding` needs.
    fn schedulable(&self, forwarding: config::Forwarding) -> bool {
        self.health == Health::Up && self.weight > 0 && self.unreachable(forwarding).is_none()
    }

    /// Why the data plane cannot send the real a `forwarding` service's packets, whatever
    /// its health; None when it can.
    fn unreachable(&self, forwarding: config::Forwarding) -> Option<String> {
        if self.mac.is_none() {
            return Some("its next hop is not resolved".into());
        }
        if self.link.is_none() {
            return Some("it is reached through an interface XDP is not attached to".into());
        }
        match (forwarding, self.via) {
            // The frame keeps the VIP as its destination: a router would send it back.
            (config::Forwarding::Dr, Some(router)) => {
                return Some(format!(
                    "direct routing needs it on the director's segment, but the route to it goes via {router}"
                ));
            }
            (config::Forwarding::Tunnel, _) if self.tunnel_src().is_none() => {
                return Some("the route to it has no source address to tunnel from".into());
            }
            _ => {}
        }
        None
    }

    /// What a tunnelled packet may measure: the interface's MTU, or the route's when it is
    /// narrower (a tunnel across a WAN link).
    fn path_mtu(&self, link_mtu: u16) -> u16 {
        self.route_mtu.map_or(link_mtu, |m| link_mtu.min(m.min(u16::MAX.into()) as u16))
    }

    /// A tunnel's outer source: the kernel's source for the real, of the real's family.
    fn tunnel_src(&self) -> Option<IpAddr> {
        self.route_src.filter(|s| s.is_ipv4() == self.addr.is_ipv4())
    }

    /// Listed by lbadm and kept by established flows: everything but a failed real of an
    /// `on_failure: remove` service (IPVS deletes such a destination).
    fn present(&self, on_failure: OnFailure) -> bool {
        !(self.health == Health::Down && on_failure == OnFailure::Remove)
    }

    fn effective_weight(&self) -> u32 {
        if self.health == Health::Up { self.weight } else { 0 }
    }
}

impl Drop for RealState {
    fn drop(&mut self) {
        for c in &self.checkers {
            c.abort();
        }
    }
}

pub struct Engine {
    dp: Dataplane,
    services: Vec<ServiceState>,
    interfaces: Vec<control::InterfaceView>,
    /// The file `Request::Reload` rereads.
    config_path: PathBuf,
    director: crate::config::Director,
    events: mpsc::Sender<Event>,
    neighbor_targets: watch::Sender<Vec<IpAddr>>,
}

impl Engine {
    /// Takes the data plane and applies `config` to it. Health checkers report on `events`;
    /// the addresses to resolve are published on the returned watch channel.
    pub fn new(
        dp: Dataplane,
        config_path: &Path,
        config: &Config,
        interfaces: Vec<control::InterfaceView>,
        events: mpsc::Sender<Event>,
    ) -> Result<(Self, watch::Receiver<Vec<IpAddr>>)> {
        let (neighbor_targets, targets) = watch::channel(Vec::new());
        let mut engine = Engine {
            dp,
            services: Vec::new(),
            interfaces,
            config_path: config_path.into(),
            director: config.director.clone(),
            events,
            neighbor_targets,
        };
        // The clock first: flows the program records from now on carry a real age.
        engine.dp.set_clock(monotonic_s())?;
        engine.apply(config)?;
        Ok((engine, targets))
    }

    /// Runs until every sender of events is gone. Between events, keeps the data plane's
    /// clock (flow ages) within a second of CLOCK_MONOTONIC.
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
                _ = tick.tick() => {
                    if let Err(e) = self.dp.set_clock(monotonic_s()) {
                        warn!(error = %format!("{e:#}"), "engine could not update the data plane's clock");
                    }
                    continue;
                }
            };
            let result = match event {
                Event::Check(report) => self.on_check(report),
                Event::Neighbor(resolved) => self.on_neighbor(resolved),
                Event::Control(request, reply) => {
                    let response = self.on_control(request);
                    let _ = reply.send(response);
                    Ok(())
                }
            };
            if let Err(e) = result {
                warn!(error = %format!("{e:#}"), "engine could not update the data plane");
            }
        }
    }

    /// Applies a config as a diff: services and reals that stay keep their ids, health and
    /// flows; new ones start unknown; removed ones leave the data plane.
    pub fn apply(&mut self, config: &Config) -> Result<()> {
        let _span = info_span!("apply").entered();
        let mut old: HashMap<(SocketAddr, Protocol), ServiceState> =
            self.services.drain(..).map(|s| ((s.spec.vip, s.spec.protocol), s)).collect();
        let mut used_vips: HashSet<u32> = HashSet::new();
        let mut used_reals: HashSet<u32> = HashSet::new();
        // First pass: keep what survives, so its ids are taken before new ones are handed out.
        let mut kept: Vec<Option<ServiceState>> = config
            .services
            .iter()
            .map(|spec| {
                let s = old.remove(&(spec.vip, spec.protocol))?;
                used_vips.insert(s.index);
                used_reals.extend(s.reals.iter().map(|r| r.id));
                Some(s)
            })
            .collect();
        // What is gone leaves the data plane first, VIP before its reals.
        for (_, gone) in old {
            info!(service = %gone.spec.name, vip = %gone.spec.vip, "service removed");
            self.dp.remove_vip(&gone.key)?;
            for r in &gone.reals {
                self.dp.set_real(r.id, RealInfo::default())?;
            }
            // Its flows would otherwise linger in the table and be counted (ActiveConn) for
            // whichever new real takes over their real ids below.
            let purged = self.dp.purge_vip(&gone.key);
            info!(service = %gone.spec.name, flows = purged, "its flows removed");
        }
        let mut services = Vec::new();
        for (spec, kept) in config.services.iter().zip(kept.iter_mut()) {
            let mut state = match kept.take() {
                Some(s) => s,
                None => {
                    let index = take_free(&mut used_vips, MAX_VIPS).context("no free VIP slot")?;
                    self.dp.reset_vip_counters(index)?;
                    info!(service = %spec.name, vip = %spec.vip, "service added");
                    ServiceState {
                        spec: spec.clone(),
                        key: vip_key(spec),
                        index,
                        reals: Vec::new(),
                        serving: 0,
                    }
                }
            };
            let checks = spec.all_checks();
            let mut old_reals: HashMap<SocketAddr, RealState> =
                state.reals.drain(..).map(|r| (r.addr, r)).collect();
            for real in &spec.reals {
                let addr = real.socket_addr(&spec.vip);
                let r = match old_reals.remove(&addr) {
                    Some(mut r) if r.checks.iter().map(|c| &c.spec).eq(checks.iter()) => {
                        r.weight = real.weight;
                        r
                    }
                    Some(mut r) => {
                        // Same real, other checks: keep its id (and its flows), check anew.
                        for c in r.checkers.drain(..) {
                            c.abort();
                        }
                        self.start_checks(&mut r, &checks);
                        r.weight = real.weight;
                        r
                    }
                    None => {
                        let id =
                            take_free(&mut used_reals, MAX_REALS).context("no free real slot")?;
                        self.dp.reset_real_counters(id)?;
                        let mut r = RealState {
                            id,
                            addr,
                            weight: real.weight,
                            checks: Vec::new(),
                            checkers: Vec::new(),
                            mac: None,
                            link: None,
                            via: None,
                            route_src: None,
                            route_mtu: None,
                            health: Health::Unknown,
                            since: Instant::now(),
                        };
                        self.start_checks(&mut r, &checks);
                        r
                    }
                };
                state.reals.push(r);
            }
            for (_, gone) in old_reals {
                info!(service = %spec.name, real = %gone.addr, "real removed");
                self.dp.set_real(gone.id, RealInfo::default())?;
            }
            state.spec = spec.clone();
            services.push(state);
        }
        self.services = services;
        // Replies are looked for only while some VIP uses NAT (before its VIP goes live).
        let nat = self.services.iter().any(|s| s.spec.forwarding == config::Forwarding::Nat);
        self.dp.set_nat(nat)?;
        for i in 0..self.services.len() {
            self.publish(i)?;
        }
        let mut targets: Vec<IpAddr> =
            self.services.iter().flat_map(|s| s.reals.iter().map(|r| r.addr.ip())).collect();
        targets.sort();
        targets.dedup();
        self.neighbor_targets.send_replace(targets);
        Ok(())
    }

    fn start_checks(&self, real: &mut RealState, checks: &[Check]) {
        real.checks = checks
            .iter()
            .map(|c| CheckState { spec: c.clone(), health: Health::Unknown, last: None })
            .collect();
        real.health = real.combined_health();
        real.since = Instant::now();
        real.checkers = checks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let target = health::Target {
                    real: real.id,
                    check_index: i,
                    addr: SocketAddr::new(real.addr.ip(), c.port.unwrap_or(real.addr.port())),
                    check: c.clone(),
                };
                health::spawn(target, self.events.clone())
            })
            .collect();
    }

    /// Writes service `i` to the data plane: its reals, its Maglev table, then its VIP.
    fn publish(&mut self, i: usize) -> Result<()> {
        let s = &self.services[i];
        let on_failure = s.spec.on_failure;
        let forwarding = s.spec.forwarding;
        for r in &s.reals {
            let (addr, family) = addr16(r.addr.ip());
            let link = r.link.and_then(|l| self.dp.link(l));
            let info = RealInfo {
                addr,
                mac: r.mac.unwrap_or_default(),
                family,
                flags: if r.present(on_failure) { REAL_PRESENT } else { 0 },
                src_mac: link.map(|l| l.mac).unwrap_or_default(),
                port_be: r.addr.port().to_be(),
                ifindex: r.link.unwrap_or(0),
                vip: s.index,
                tunnel_src: r.tunnel_src().map_or([0; 16], |a| addr16(a).0),
                mtu: link.map_or(0, |l| r.path_mtu(l.mtu)),
                _pad: [0; 2],
            };
            self.dp.set_real(r.id, info)?;
        }
        let keys: Vec<String> = s.reals.iter().map(|r| r.addr.to_string()).collect();
        let entries: Vec<maglev::Entry<'_>> = s
            .reals
            .iter()
            .zip(&keys)
            .filter(|(r, _)| r.schedulable(forwarding))
            .map(|(r, k)| maglev::Entry { key: k.as_bytes(), weight: r.weight, id: r.id })
            .collect();
        let serving = entries.len();
        let table = maglev::build(&entries, MAGLEV_SIZE);
        let (index, key) = (s.index, s.key);
        let changed = self.dp.set_maglev(index, &table)?;
        self.dp.set_vip(
            key,
            VipInfo { index, forwarding: dp_forwarding(forwarding) as u8, _pad: [0; 3] },
        )?;
        let s = &mut self.services[i];
        let was = std::mem::replace(&mut s.serving, serving);
        if changed > 0 {
            info!(service = %s.spec.name, serving, slots_changed = changed, "maglev table written");
        }
        if serving == 0 && was > 0 {
            warn!(service = %s.spec.name, "no real server can take new connections");
        }
        Ok(())
    }

    fn find_real(&mut self, id: u32) -> Option<(usize, &mut RealState)> {
        self.services
            .iter_mut()
            .enumerate()
            .find_map(|(i, s)| s.reals.iter_mut().find(|r| r.id == id).map(|r| (i, r)))
    }

    fn on_check(&mut self, report: health::Report) -> Result<()> {
        let Some((i, real)) = self.find_real(report.real) else {
            return Ok(());
        };
        let Some(check) = real.checks.get_mut(report.check_index) else {
            return Ok(());
        };
        check.last = Some((report.success, report.detail));
        if let Some(h) = report.transition {
            check.health = h;
        }
        let now = real.combined_health();
        if now == real.health {
            return Ok(());
        }
        let was = real.health;
        real.health = now;
        real.since = Instant::now();
        let addr = real.addr;
        let name = &self.services[i].spec.name;
        let _span = info_span!("health", service = %name, real = %addr).entered();
        info!(from = ?was, to = ?now, "real health changed");
        self.publish(i)
    }

    fn on_neighbor(&mut self, resolved: Resolved) -> Result<()> {
        let link = self.dp.link(resolved.ifindex).map(|_| resolved.ifindex);
        let mut touched = Vec::new();
        for (i, s) in self.services.iter_mut().enumerate() {
            for r in s.reals.iter_mut().filter(|r| r.addr.ip() == resolved.ip) {
                r.mac = resolved.mac;
                r.link = link;
                r.via = resolved.via;
                r.route_src = resolved.src;
                r.route_mtu = resolved.mtu;
                touched.push(i);
                // Unresolved is said by the neighbour task; these are the config's problem.
                if let Some(why) = r.unreachable(s.spec.forwarding).filter(|_| r.mac.is_some()) {
                    warn!(service = %s.spec.name, real = %r.addr, ifindex = resolved.ifindex, "{why}: it gets no new connections");
                }
            }
        }
        touched.dedup();
        for i in touched {
            self.publish(i)?;
        }
        Ok(())
    }

    fn on_control(&mut self, request: Request) -> Response {
        let result = match request {
            Request::List => self.list().map(|services| Response::List { services }),
            Request::Status => Ok(Response::Status(self.status())),
            Request::SetWeight { protocol, vip, real, weight } => {
                self.set_weight(protocol, vip, real, weight)
            }
            Request::Reload => self.reload(),
        };
        result.unwrap_or_else(|e| Response::Error { message: format!("{e:#}") })
    }

    /// Rereads the config file. An invalid file changes nothing; a valid one is applied as
    /// a diff (see [`Engine::apply`]), so established flows keep their reals.
    fn reload(&mut self) -> Result<Response> {
        let _span = info_span!("reload", file = %self.config_path.display()).entered();
        let config = match config::load(&self.config_path) {
            Ok(c) => c,
            Err(invalid) => {
                warn!(problems = %invalid, "reload refused, nothing changed");
                bail!("reload refused, nothing changed:\n{invalid}");
            }
        };
        if config.director != self.director {
            warn!(
                "the director section changed: interfaces, socket and XDP mode take effect at restart"
            );
        }
        self.apply(&config)?;
        info!(services = self.services.len(), "reloaded");
        Ok(Response::Ok { message: format!("reloaded {}", self.config_path.display()) })
    }

    fn set_weight(
        &mut self,
        protocol: Protocol,
        vip: SocketAddr,
        real: SocketAddr,
        weight: u32,
    ) -> Result<Response> {
        if weight > 65535 {
            bail!("weight {weight} is above 65535");
        }
        let Some(i) =
            self.services.iter().position(|s| s.spec.vip == vip && s.spec.protocol == protocol)
        else {
            bail!("no service {} {vip}", format!("{protocol:?}").to_uppercase());
        };
        let Some(r) = self.services[i].reals.iter_mut().find(|r| r.addr == real) else {
            bail!("service {vip} has no real server {real}");
        };
        let _span = info_span!("admin", service = %vip, real = %real).entered();
        info!(from = r.weight, to = weight, "weight set by lbadm");
        r.weight = weight;
        self.publish(i)?;
        Ok(Response::Ok { message: format!("{real} weight {weight}") })
    }

    fn list(&self) -> Result<Vec<ServiceView>> {
        let conns = self.connection_counts();
        self.services
            .iter()
            .map(|s| {
                let reals = s
                    .reals
                    .iter()
                    .filter(|r| r.present(s.spec.on_failure))
                    .map(|r| {
                        let (active, inactive) = conns.get(&r.id).copied().unwrap_or_default();
                        Ok(RealView {
                            address: r.addr,
                            forwarding: s.spec.forwarding,
                            weight: r.effective_weight(),
                            configured_weight: r.weight,
                            active_conns: active,
                            inactive_conns: inactive,
                            stats: stats(self.dp.real_counters(r.id)?),
                        })
                    })
                    .collect::<Result<_>>()?;
                Ok(ServiceView {
                    name: s.spec.name.clone(),
                    protocol: s.spec.protocol,
                    vip: s.spec.vip,
                    scheduler: "maglev".into(),
                    stats: stats(self.dp.vip_counters(s.index)?),
                    reals,
                })
            })
            .collect()
    }

    /// ActiveConn and InActConn per real id from the connection table, with IPVS's default
    /// timeouts: an established TCP flow is active for 900 s after its last packet, a
    /// closing one inactive for 120 s, a UDP flow inactive for 300 s.
    fn connection_counts(&self) -> HashMap<u32, (u64, u64)> {
        let now = monotonic_s();
        let mut counts: HashMap<u32, (u64, u64)> = HashMap::new();
        for (key, flow) in self.dp.flows() {
            let age = now.saturating_sub(flow.last_seen_s);
            let closing = flow.flags & FLOW_CLOSING != 0;
            let entry = counts.entry(flow.real).or_default();
            if key.proto == lb_common::PROTO_TCP && !closing && age < 900 {
                entry.0 += 1;
            } else if (key.proto == lb_common::PROTO_TCP && closing && age < 120)
                || (key.proto == lb_common::PROTO_UDP && age < 300)
            {
                entry.1 += 1;
            }
        }
        counts
    }

    fn status(&self) -> StatusView {
        let reals = self
            .services
            .iter()
            .flat_map(|s| {
                s.reals.iter().map(|r| RealStatus {
                    service: s.spec.name.clone(),
                    address: r.addr,
                    health: r.health,
                    weight: r.effective_weight(),
                    mac: r.mac.map(neighbor::fmt_mac),
                    via: r.via,
                    unreachable: r.unreachable(s.spec.forwarding),
                    last_check: r
                        .checks
                        .iter()
                        .filter_map(|c| c.last.clone())
                        .find(|(ok, _)| !ok)
                        .or_else(|| r.checks.first().and_then(|c| c.last.clone())),
                    since_secs: r.since.elapsed().as_secs(),
                })
            })
            .collect();
        StatusView {
            director: control::DirectorView {
                ha_state: "STANDALONE".into(),
                priority: None,
                interfaces: self.interfaces.clone(),
            },
            reals,
            packets: self.packet_counts(),
        }
    }

    fn packet_counts(&self) -> Vec<control::ReasonCount> {
        match self.dp.reasons() {
            Ok(counts) => counts
                .into_iter()
                .map(|(r, packets)| control::ReasonCount { reason: r.name().into(), packets })
                .collect(),
            Err(e) => {
                warn!(error = %e, "reading the data plane's reason counters");
                Vec::new()
            }
        }
    }
}

/// The lowest id below `max` not in `used`, now marked used.
fn take_free(used: &mut HashSet<u32>, max: u32) -> Option<u32> {
    let id = (0..max).find(|i| !used.contains(i))?;
    used.insert(id);
    Some(id)
}

fn stats(c: lb_common::Counters) -> Stats {
    // Out counts the replies NAT rewrites; direct routing's answers bypass the director,
    // so there they stay 0, as with IPVS/DR.
    Stats {
        conns: c.conns,
        in_packets: c.packets,
        out_packets: c.out_packets,
        in_bytes: c.bytes,
        out_bytes: c.out_bytes,
    }
}

fn dp_forwarding(f: config::Forwarding) -> DpForwarding {
    match f {
        config::Forwarding::Dr => DpForwarding::Dr,
        config::Forwarding::Nat => DpForwarding::Nat,
        config::Forwarding::Tunnel => DpForwarding::Tunnel,
    }
}

fn vip_key(s: &Service) -> VipKey {
    let (addr, family) = addr16(s.vip.ip());
    VipKey { addr, port_be: s.vip.port().to_be(), proto: s.protocol.number(), family }
}

fn addr16(ip: IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(a) => {
            out[..4].copy_from_slice(&a.octets());
            (out, FAMILY_V4)
        }
        IpAddr::V6(a) => (a.octets(), FAMILY_V6),
    }
}

/// CLOCK_MONOTONIC in whole seconds: the clock the data plane ages flows by.
fn monotonic_s() -> u32 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}
