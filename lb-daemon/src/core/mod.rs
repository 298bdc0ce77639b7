//! The director's core: the one owner of desired state, as a sans-IO state machine in the
//! manner of quinn-proto. The time and inputs (the config, check observations, next hops,
//! control requests, the data plane's answers) come in through [`Core::handle`]; effects
//! (data-plane batches, checkers to start or stop, addresses to resolve, answers) go out.
//! It holds no socket, task or map: `drivers` runs it, and its tests run it on a virtual
//! clock against a fake data plane.

pub mod ha;
mod hysteresis;
pub mod tables;
pub mod track;
mod view;
pub mod vrrp;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::{Add, Sub};
use std::sync::Arc;
use std::time::Duration;

use lb_common::{
    FAMILY_V4, FAMILY_V6, Forwarding as DpForwarding, REAL_DOWN, REAL_PRESENT, RealInfo,
};
use lb_common::{VipInfo, VipKey};
use tracing::{debug, info, info_span, warn};

pub use hysteresis::{Health, Hysteresis};
pub use tables::{Batch, Op, Tables};
pub use view::{Listed, connection_counts, fmt_mac};

use crate::config::{self, Check, Config, OnFailure, Protocol, Service};
use crate::control::{InterfaceView, Request, Response, StatusView};
use crate::link::LinkInfo;
use tables::{MaglevEntry, RealEntry};

/// Monotonic time as the core sees it: CLOCK_MONOTONIC in the driver, any value in tests.
/// The data plane ages flows by its whole seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(Duration);

impl Time {
    pub const fn from_duration(d: Duration) -> Self {
        Time(d)
    }

    pub const fn from_secs(s: u64) -> Self {
        Time(Duration::from_secs(s))
    }

    /// Whole seconds: the data plane's clock.
    pub fn secs(self) -> u32 {
        self.0.as_secs() as u32
    }

    /// Nanoseconds since the clock's start: the data plane's fence compares them with the
    /// kernel's CLOCK_MONOTONIC.
    pub fn as_nanos(self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Time since `earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d))
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(d))
    }
}

/// How many VIPs and reals the data plane's maps hold (sized when they are created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub vips: u32,
    pub reals: u32,
}

/// Names one checker: observations carry it, so a stopped checker's late report is ignored.
pub type CheckerId = u64;
/// Names one control request, so its answer finds its way back.
pub type Token = u64;

/// What a checker checks.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckTarget {
    /// The real's address and the check's (or the service's) port.
    pub addr: SocketAddr,
    pub check: Check,
    /// Seeds the checker's jitter, so the spacing of checks is reproducible.
    pub seed: u64,
    /// The service's name and VIP, for an exec check's environment.
    pub service: String,
    pub vip: SocketAddr,
    /// Every VIP of the config: a check is never sent from one (health/source.rs).
    pub vips: Arc<HashSet<IpAddr>>,
}

/// One raw check result: the core applies hysteresis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub checker: CheckerId,
    pub success: bool,
    pub detail: String,
    /// A weight the real reported (an exec check's stdout), applied while it is up.
    pub weight: Option<u32>,
    /// How long after it was due the probe started: beyond a tenth of the interval, the
    /// director is too loaded to check on time (counted in the status).
    pub late: Duration,
}

/// How the data plane reaches a real, as the kernel knows it; `mac: None` when it is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub ip: IpAddr,
    /// The next hop's MAC: the real's own, or the router's when `via` is set.
    pub mac: Option<[u8; 6]>,
    pub ifindex: u32,
    /// The router the kernel's route to the real goes through; None when the real is on a
    /// segment of the director's.
    pub via: Option<IpAddr>,
    /// The route's preferred source address: what a tunnel to the real leaves from.
    pub src: Option<IpAddr>,
    /// The path's MTU, when something narrows it: the route (`ip route ... mtu N`) or a
    /// router's "too big" answer to a tunnel packet (drivers::pmtu).
    pub mtu: Option<u32>,
}

/// Everything the core reacts to.
#[derive(Debug)]
pub enum Input {
    /// A config to apply: at start, and on each reload (`source` names it in answers).
    Config {
        config: Box<Config>,
        source: String,
        reply: Option<Token>,
    },
    Observation(Observation),
    Resolved(Resolved),
    /// A control request other than reload (the driver reads the file and sends `Config`).
    Control(Token, Request),
    /// The outcome of an [`Effect::Apply`]: applied whole, or undone whole.
    Applied {
        batch: u64,
        result: Result<(), String>,
    },
    /// Time passed ([`Core::poll_timeout`] was reached).
    Tick,
    /// Whether this director answers for its VIPs of one family: always without `ha`;
    /// with it, only while that family's virtual router is master (each family has its
    /// own, and one may be master while the other is not). Not serving, the family's VIPs
    /// leave the data plane's VIPS (their reals and tables stay written, so a takeover
    /// flips VIPS alone).
    Serving {
        ipv4: bool,
        on: bool,
    },
}

/// What the driver does for the core.
#[derive(Debug)]
pub enum Effect {
    /// Write these to the data plane, all or none, then report [`Input::Applied`].
    Apply(Batch),
    StartCheck {
        id: CheckerId,
        target: CheckTarget,
    },
    StopCheck(CheckerId),
    /// The reals' addresses whose next hops the core needs (the whole set).
    Resolve(Vec<IpAddr>),
    Answer(Token, Answer),
    /// Run an operator's script (a service's `notify` or a `recover` step); the driver
    /// never waits for it.
    Hook(HookRun),
}

/// A script to run: what it is for, the program, its arguments and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    pub what: HookKind,
    pub program: std::path::PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// What a service's script is for: the driver runs `notify`s one after another in the
/// order of the transitions, `recover` steps each on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Notify,
    Recover,
}

impl HookKind {
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Notify => "notify",
            HookKind::Recover => "recover",
        }
    }
}

/// A control answer; listings and status still need the data plane's counters, which the
/// driver reads and fills in.
#[derive(Debug)]
pub enum Answer {
    Done(Response),
    List(Vec<Listed>),
    Status(StatusView),
}

#[derive(Debug, Clone)]
struct ServiceState {
    spec: Service,
    key: VipKey,
    index: u32,
    reals: Vec<RealState>,
    /// Reals in the Maglev table at the last publish.
    serving: usize,
}

#[derive(Debug, Clone)]
struct RealState {
    id: u32,
    addr: SocketAddr,
    /// From the config, or `lbadm -e` until the next reload.
    weight: u32,
    checks: Vec<CheckState>,
    /// Its next hop, as the neighbour task last reported it.
    hop: Option<Resolved>,
    health: Health,
    since: Time,
    /// Health transitions (up to down and back) since the real was added.
    transitions: u64,
    /// The weight its exec check last printed (keepalived's dynamic MISC_CHECK): in
    /// force over the config's and lbadm's until the check prints another, or a reload
    /// checks the real anew.
    reported: Option<u32>,
    /// `recover` steps already run in this outage (since `since`, while down).
    recovered: usize,
    /// The service's fallback (sorry server), not one of its reals.
    sorry: bool,
}

#[derive(Debug, Clone)]
struct CheckState {
    spec: Check,
    checker: CheckerId,
    hysteresis: Hysteresis,
    last: Option<(bool, String)>,
    /// When this check's result last changed between success and failure (its first).
    since: Option<Time>,
}

/// A batch in flight, and what to do when it lands.
enum Pending {
    /// The clock: nothing to commit.
    Clock,
    /// A config or an admin change, planned on a copy of the state: committed only when
    /// the data plane took it whole.
    Plan(Box<Plan>),
    /// A health or next-hop change, already in the state: the tables become the
    /// data plane's on success; on failure they are written again at the next tick.
    Sync(Tables),
}

struct Plan {
    services: Vec<ServiceState>,
    tables: Tables,
    start: Vec<(CheckerId, CheckTarget)>,
    stop: Vec<CheckerId>,
    reply: Option<Token>,
    ok: Response,
}

pub struct Core {
    capacity: Capacity,
    /// Interfaces the program is attached to, by ifindex.
    links: HashMap<u32, LinkInfo>,
    interfaces: Vec<InterfaceView>,
    services: Vec<ServiceState>,
    /// What the data plane holds.
    published: Tables,
    /// The last next hop reported per address: a real added later starts from it.
    hops: HashMap<IpAddr, Resolved>,
    /// Where each checker's and each real's state sits in `services`.
    checkers: HashMap<CheckerId, (usize, usize, usize)>,
    reals_by_ip: HashMap<IpAddr, Vec<(usize, usize)>>,
    resolving: Vec<IpAddr>,
    pending: HashMap<u64, Pending>,
    next_batch: u64,
    next_checker: CheckerId,
    clock_due: Option<Time>,
    /// A sync failed: write the tables again at the next tick.
    stale: bool,
    /// See [`Input::Serving`]: IPv4, IPv6.
    serving: [bool; 2],
    /// Probes that started more than a tenth of their interval late, since lbd started.
    checks_late: u64,
    seed: u64,
    /// What a pinned data plane held when lbd started, until the first config is applied.
    adopted: Option<Adopted>,
}

/// What an earlier lbd left in a pinned data plane (read back from its maps), so a
/// restarted lbd goes on from it: services and reals keep their ids (so flows keep their
/// reals, counters their values), reals the data plane was sending to start up, next hops
/// start resolved. Only the first config applied after [`Core::adopt`] uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adopted {
    /// The live generation of VIPS.
    pub vips: BTreeMap<VipKey, VipInfo>,
    /// REALS entries that were written, by id.
    pub reals: BTreeMap<u32, RealInfo>,
    /// Each VIP's Maglev table (real ids, `NO_REAL` for none), by VIP index.
    pub maglev: BTreeMap<u32, Vec<u32>>,
}

impl Adopted {
    /// The (VIP, real address) each REALS entry was written for, where its VIP is known.
    fn owners(&self) -> HashMap<(VipKey, SocketAddr), u32> {
        let keys: HashMap<u32, VipKey> = self.vips.iter().map(|(k, v)| (v.index, *k)).collect();
        self.reals
            .iter()
            .filter_map(|(&id, info)| {
                let key = keys.get(&info.vip)?;
                Some(((*key, SocketAddr::new(ip_of(info), u16::from_be(info.port_be))), id))
            })
            .collect()
    }
}

fn ip_of(info: &RealInfo) -> IpAddr {
    if info.family == lb_common::FAMILY_V4 {
        IpAddr::from([info.addr[0], info.addr[1], info.addr[2], info.addr[3]])
    } else {
        IpAddr::from(info.addr)
    }
}

/// How often the data plane's clock (flow ages) is written.
const CLOCK_PERIOD: Duration = Duration::from_secs(1);

impl Core {
    /// A core with nothing applied yet. `seed` seeds the checkers' jitter.
    pub fn new(
        capacity: Capacity,
        links: Vec<LinkInfo>,
        interfaces: Vec<InterfaceView>,
        seed: u64,
    ) -> Self {
        Core {
            capacity,
            links: links.into_iter().map(|l| (l.ifindex, l)).collect(),
            interfaces,
            services: Vec::new(),
            published: Tables::default(),
            hops: HashMap::new(),
            checkers: HashMap::new(),
            reals_by_ip: HashMap::new(),
            resolving: Vec::new(),
            pending: HashMap::new(),
            next_batch: 0,
            next_checker: 0,
            clock_due: None,
            stale: false,
            serving: [true; 2],
            checks_late: 0,
            seed,
            adopted: None,
        }
    }

    /// Goes on from a data plane an earlier lbd left pinned (see [`Adopted`]): what it
    /// holds becomes what the core diffs against, so the first config writes only what
    /// differs, and zeroes no counter of a service or real that stays.
    pub fn adopt(&mut self, mut adopted: Adopted) {
        // Only what fits the maps as sized now (a changed capacity renews them anyway).
        let (vips, reals) = (self.capacity.vips, self.capacity.reals);
        adopted.vips.retain(|_, v| v.index < vips);
        adopted.reals.retain(|id, _| *id < reals);
        adopted.maglev.retain(|index, _| *index < vips);
        let owners = adopted.owners();
        let by_index: HashMap<u32, VipKey> =
            adopted.vips.iter().map(|(k, v)| (v.index, *k)).collect();
        self.published.vips = adopted.vips.clone();
        for ((key, addr), id) in &owners {
            let info = adopted.reals[id];
            self.published.reals.insert(*id, RealEntry { owner: (*key, *addr), info });
            if info.macs_resolved() {
                let hop = Resolved {
                    ip: addr.ip(),
                    mac: Some(info.mac),
                    ifindex: info.ifindex,
                    via: None,
                    src: (info.tunnel_src != [0; 16])
                        .then(|| ip_of(&RealInfo { addr: info.tunnel_src, ..info })),
                    mtu: (info.mtu > 0).then_some(u32::from(info.mtu)),
                };
                self.hops.entry(addr.ip()).or_insert(hop);
            }
        }
        for (index, table) in &adopted.maglev {
            if let Some(key) = by_index.get(index) {
                let entry =
                    MaglevEntry { owner: *key, inputs: Vec::new(), table: Arc::new(table.clone()) };
                self.published.maglev.insert(*index, entry);
            }
        }
        self.adopted = Some(adopted);
    }

    /// When the core next wants [`Input::Tick`]: the data plane's clock, or a `recover`
    /// step coming due.
    pub fn poll_timeout(&self) -> Option<Time> {
        let recover = self.services.iter().flat_map(|s| {
            s.reals
                .iter()
                .filter(|r| r.health == Health::Down)
                .filter_map(|r| s.spec.recover.get(r.recovered).map(|step| r.since + step.after))
        });
        self.clock_due.into_iter().chain(recover).min()
    }

    /// Runs the `recover` steps due: each once per outage, in order, while the real stays
    /// down.
    fn recover(&mut self, now: Time, fx: &mut Vec<Effect>) {
        for s in &mut self.services {
            for r in s.reals.iter_mut().filter(|r| r.health == Health::Down) {
                while let Some(step) = s.spec.recover.get(r.recovered) {
                    if now < r.since + step.after {
                        break;
                    }
                    r.recovered += 1;
                    warn!(service = %s.spec.name, real = %r.addr, step = r.recovered, command = %step.command, "real still down: recover step");
                    fx.push(Effect::Hook(HookRun {
                        what: HookKind::Recover,
                        program: "/bin/sh".into(),
                        args: vec!["-c".into(), step.command.clone()],
                        env: hook_env(&s.spec, r.addr),
                    }));
                }
            }
        }
    }

    /// Takes one input at `now`; returns what the driver must do, in order.
    pub fn handle(&mut self, now: Time, input: Input) -> Vec<Effect> {
        let mut fx = Vec::new();
        // The clock first: flows recorded from now on carry a real age.
        if self.clock_due.is_none_or(|due| due <= now) {
            self.clock_due = Some(now + CLOCK_PERIOD);
            self.submit(vec![Op::SetClock(now.secs())], Pending::Clock, &mut fx);
            if self.stale {
                self.sync(now, &mut fx);
            }
        }
        match input {
            Input::Config { config, source, reply } => {
                self.on_config(now, *config, source, reply, &mut fx)
            }
            Input::Observation(o) => self.on_observation(now, o, &mut fx),
            Input::Resolved(r) => self.on_resolved(now, r, &mut fx),
            Input::Control(token, request) => self.on_control(now, token, request, &mut fx),
            Input::Applied { batch, result } => self.on_applied(now, batch, result, &mut fx),
            Input::Tick => self.recover(now, &mut fx),
            Input::Serving { ipv4, on } => {
                let family = if ipv4 { "IPv4" } else { "IPv6" };
                if std::mem::replace(&mut self.serving[usize::from(!ipv4)], on) != on {
                    info!(serving = on, "the data plane answers for the {family} VIPs: {on}");
                    self.sync(now, &mut fx);
                }
            }
        }
        fx
    }

    fn submit(&mut self, ops: Vec<Op>, pending: Pending, fx: &mut Vec<Effect>) {
        let id = self.next_batch;
        self.next_batch += 1;
        self.pending.insert(id, pending);
        fx.push(Effect::Apply(Batch { id, ops }));
    }

    fn on_applied(
        &mut self,
        now: Time,
        batch: u64,
        result: Result<(), String>,
        fx: &mut Vec<Effect>,
    ) {
        let Some(pending) = self.pending.remove(&batch) else {
            return;
        };
        match (pending, result) {
            (Pending::Clock, Ok(())) => {}
            (Pending::Clock, Err(e)) => {
                warn!(error = %e, "could not update the data plane's clock")
            }
            (Pending::Sync(tables), Ok(())) => {
                self.published = tables;
                self.stale = false;
                self.note_serving();
            }
            (Pending::Sync(_), Err(e)) => {
                warn!(error = %e, "could not update the data plane; nothing changed there, retrying");
                self.stale = true;
            }
            (Pending::Plan(plan), Ok(())) => self.commit(now, *plan, fx),
            (Pending::Plan(plan), Err(e)) => {
                warn!(error = %e, "change refused by the data plane, nothing changed");
                if let Some(token) = plan.reply {
                    let message = format!("refused, nothing changed: {e}");
                    fx.push(Effect::Answer(token, Answer::Done(Response::Error { message })));
                }
                // The plan's checkers were never started; its ids were never taken.
            }
        }
    }

    // --- config -----------------------------------------------------------------------

    fn on_config(
        &mut self,
        now: Time,
        config: Config,
        source: String,
        reply: Option<Token>,
        fx: &mut Vec<Effect>,
    ) {
        let _span = info_span!("apply", file = %source).entered();
        let plan = self.plan(now, &config).and_then(|(services, start, stop)| {
            let tables = self.tables_for(&services);
            // Every VIP must fit, live or not: a takeover writes them all at once.
            tables::vip_slots(&vip_set(&services)).map_err(|e| {
                format!(
                    "the VIPs do not fit the data plane's VIPS table: {e}; give that service another address or port (lbd --check names it)"
                )
            })?;
            Ok(Plan {
                services,
                tables,
                start,
                stop,
                reply,
                ok: Response::Ok { message: format!("reloaded {source}") },
            })
        });
        match plan {
            Ok(plan) => self.submit_plan(now, plan, fx),
            Err(why) => {
                warn!(%why, "config refused, nothing changed");
                if let Some(token) = reply {
                    let message = format!("reload refused, nothing changed: {why}");
                    fx.push(Effect::Answer(token, Answer::Done(Response::Error { message })));
                }
            }
        }
    }

    fn submit_plan(&mut self, now: Time, plan: Plan, fx: &mut Vec<Effect>) {
        let ops = tables::diff(&self.published, &plan.tables);
        if ops.is_empty() {
            self.commit(now, plan, fx);
        } else {
            self.submit(ops, Pending::Plan(Box::new(plan)), fx);
        }
    }

    /// The state `config` asks for, planned on a copy: services and reals that stay keep
    /// their ids, health and checkers; new ones get the lowest free ids. Fails, changing
    /// nothing, when the data plane has no room.
    #[allow(clippy::type_complexity)]
    fn plan(
        &self,
        now: Time,
        config: &Config,
    ) -> Result<(Vec<ServiceState>, Vec<(CheckerId, CheckTarget)>, Vec<CheckerId>), String> {
        let mut old: HashMap<(SocketAddr, Protocol), &ServiceState> =
            self.services.iter().map(|s| ((s.spec.vip, s.spec.protocol), s)).collect();
        let mut used_vips = FreeIds::new(self.capacity.vips);
        let mut used_reals = FreeIds::new(self.capacity.reals);
        // Ids a pinned data plane already gives a new service or real are theirs again.
        let adopted_owners = self.adopted.as_ref().map(Adopted::owners).unwrap_or_default();
        let adopted_vip = |spec: &Service| -> Option<u32> {
            let adopted = self.adopted.as_ref()?;
            adopted.vips.get(&vip_key(spec)).map(|v| v.index)
        };
        // Keep what survives first, so its ids are taken before new ones are handed out.
        // A kept service's removed reals keep their ids taken: one batch never clears a
        // real and hands its id to another.
        let kept: Vec<Option<&ServiceState>> = config
            .services
            .iter()
            .map(|spec| {
                let s = old.remove(&(spec.vip, spec.protocol))?;
                used_vips.insert(s.index);
                used_reals.extend(s.reals.iter().map(|r| r.id));
                Some(s)
            })
            .collect();
        // Every id the pinned data plane holds stays taken for this first plan, also those
        // of reals the config no longer lists: one batch never hands a real's id, and the
        // flows that name it, to another (their REALS entries are cleared by this batch).
        used_reals.extend(adopted_owners.values().copied());
        for (spec, kept) in config.services.iter().zip(&kept) {
            if kept.is_some() {
                continue;
            }
            if let Some(index) = adopted_vip(spec).filter(|i| !used_vips.used.contains(i)) {
                used_vips.insert(index);
            }
        }
        let mut next_checker = self.next_checker;
        let mut start = Vec::new();
        let mut all_vips: HashSet<IpAddr> = config.services.iter().map(|s| s.vip.ip()).collect();
        if let Some(ha) = &config.ha {
            all_vips.extend(ha.vips(&config.services));
        }
        let vips = Arc::new(all_vips);
        let mut stop: Vec<CheckerId> =
            old.values().flat_map(|s| s.reals.iter()).flat_map(|r| r.checkers()).collect();
        let mut services = Vec::new();
        for (spec, kept) in config.services.iter().zip(kept) {
            let (index, mut old_reals) = match kept {
                Some(s) => (s.index, s.reals.iter().map(|r| (r.addr, r)).collect()),
                None if adopted_vip(spec).is_some() => {
                    (adopted_vip(spec).unwrap_or_default(), HashMap::new())
                }
                None => {
                    let index = used_vips.take().ok_or_else(|| {
                        format!(
                            "no free VIP slot: the data plane holds {} VIPs",
                            self.capacity.vips
                        )
                    })?;
                    (index, HashMap::new())
                }
            };
            let all_checks = spec.all_checks();
            let mut reals = Vec::new();
            // The fallback is a real of the table too, never checked, and in it only while
            // no other real can take new connections (tables_for).
            let fallback = spec.fallback.map(|address| config::Real { address, weight: 1 });
            let listed = spec.reals.iter().map(|r| (r, false));
            for (real, sorry) in listed.chain(fallback.iter().map(|r| (r, true))) {
                let checks = if sorry { Vec::new() } else { all_checks.clone() };
                let addr = real.socket_addr(&spec.vip);
                let mut r = match old_reals.remove(&addr) {
                    Some(r) if r.checks.iter().map(|c| &c.spec).eq(checks.iter()) => r.clone(),
                    Some(r) => {
                        // Same real, other checks: keep its id (and its flows), check anew.
                        stop.extend(r.checkers());
                        let mut r = r.clone();
                        r.checks = self.new_checks(
                            &mut next_checker,
                            &vips,
                            spec,
                            addr,
                            &checks,
                            &mut start,
                        );
                        r.health = r.combined_health();
                        r.since = now;
                        r
                    }
                    None => {
                        let adopted_id = adopted_owners.get(&(vip_key(spec), addr)).copied();
                        let id = match adopted_id {
                            Some(id) => id,
                            None => used_reals.take().ok_or_else(|| {
                                format!(
                                    "no free real slot: the data plane holds {} reals",
                                    self.capacity.reals
                                )
                            })?,
                        };
                        let mut checks = self.new_checks(
                            &mut next_checker,
                            &vips,
                            spec,
                            addr,
                            &checks,
                            &mut start,
                        );
                        // As the data plane had it: sent to (up), or marked down.
                        let assumed = match adopted_id {
                            Some(id) if self.adopted_serving(spec, id) => Some(Health::Up),
                            Some(id) if self.adopted_down(id) => Some(Health::Down),
                            _ => None,
                        };
                        if let Some(health) = assumed {
                            for c in &mut checks {
                                c.hysteresis.assume(health);
                            }
                        }
                        let mut r = RealState {
                            id,
                            addr,
                            weight: real.weight,
                            checks,
                            hop: self.hops.get(&addr.ip()).copied(),
                            health: Health::Unknown,
                            since: now,
                            transitions: 0,
                            reported: None,
                            recovered: 0,
                            sorry: false,
                        };
                        r.health = r.combined_health();
                        r
                    }
                };
                r.weight = real.weight;
                r.sorry = sorry;
                reals.push(r);
            }
            stop.extend(old_reals.values().flat_map(|r| r.checkers()));
            let serving = kept.map_or(0, |s| s.serving);
            services.push(ServiceState {
                spec: spec.clone(),
                key: vip_key(spec),
                index,
                reals,
                serving,
            });
        }
        Ok((services, start, stop))
    }

    /// Whether the pinned data plane's Maglev table of `spec`'s VIP sends to real `id`.
    fn adopted_serving(&self, spec: &Service, id: u32) -> bool {
        let Some(adopted) = &self.adopted else { return false };
        let Some(vip) = adopted.vips.get(&vip_key(spec)) else { return false };
        adopted.maglev.get(&vip.index).is_some_and(|t| t.contains(&id))
    }

    /// Whether the pinned data plane has real `id` marked down by its checks.
    fn adopted_down(&self, id: u32) -> bool {
        self.adopted
            .as_ref()
            .and_then(|a| a.reals.get(&id))
            .is_some_and(|r| r.flags & REAL_DOWN != 0)
    }

    #[allow(clippy::too_many_arguments)]
    fn new_checks(
        &self,
        next: &mut CheckerId,
        vips: &Arc<HashSet<IpAddr>>,
        spec: &Service,
        addr: SocketAddr,
        checks: &[Check],
        start: &mut Vec<(CheckerId, CheckTarget)>,
    ) -> Vec<CheckState> {
        checks
            .iter()
            .map(|c| {
                let id = *next;
                *next += 1;
                let target = CheckTarget {
                    addr: SocketAddr::new(addr.ip(), c.port.unwrap_or(addr.port())),
                    check: c.clone(),
                    seed: splitmix64(self.seed ^ id),
                    service: spec.name.clone(),
                    vip: spec.vip,
                    vips: vips.clone(),
                };
                start.push((id, target));
                let mut hysteresis = Hysteresis::new(c.rise, c.fall);
                // `initial`: the state until results say otherwise (rise successes from
                // down, fall failures from up); without it the first result decides.
                match c.initial {
                    Some(config::Initial::Up) => hysteresis.assume(Health::Up),
                    Some(config::Initial::Down) => hysteresis.assume(Health::Down),
                    None => {}
                }
                CheckState { spec: c.clone(), checker: id, hysteresis, last: None, since: None }
            })
            .collect()
    }

    /// Makes a plan the state, once the data plane holds its tables.
    fn commit(&mut self, now: Time, plan: Plan, fx: &mut Vec<Effect>) {
        let now_keys: HashSet<VipKey> = plan.services.iter().map(|s| s.key).collect();
        for s in self.services.iter().filter(|s| !now_keys.contains(&s.key)) {
            info!(service = %s.spec.name, vip = %s.spec.vip, "service removed");
        }
        let old_keys: HashSet<VipKey> = self.services.iter().map(|s| s.key).collect();
        for s in &plan.services {
            if !old_keys.contains(&s.key) {
                info!(service = %s.spec.name, vip = %s.spec.vip, "service added");
            }
        }
        let stays: HashSet<(VipKey, SocketAddr)> = plan
            .services
            .iter()
            .flat_map(|s| s.reals.iter().map(move |r| (s.key, r.addr)))
            .collect();
        for s in self.services.iter().filter(|s| now_keys.contains(&s.key)) {
            for r in s.reals.iter().filter(|r| !stays.contains(&(s.key, r.addr))) {
                info!(service = %s.spec.name, real = %r.addr, "real removed");
            }
        }
        self.services = plan.services;
        self.published = plan.tables;
        self.adopted = None;
        self.next_checker =
            self.next_checker.max(plan.start.iter().map(|(id, _)| id + 1).max().unwrap_or(0));
        self.reindex();
        self.note_serving();
        fx.extend(plan.stop.into_iter().map(Effect::StopCheck));
        fx.extend(plan.start.into_iter().map(|(id, target)| Effect::StartCheck { id, target }));
        let mut targets: Vec<IpAddr> =
            self.services.iter().flat_map(|s| s.reals.iter().map(|r| r.addr.ip())).collect();
        targets.sort();
        targets.dedup();
        if targets != self.resolving {
            self.resolving = targets.clone();
            fx.push(Effect::Resolve(targets));
        }
        self.hops.retain(|ip, _| self.reals_by_ip.contains_key(ip));
        if let Some(token) = plan.reply {
            fx.push(Effect::Answer(token, Answer::Done(plan.ok)));
        }
        debug!(services = self.services.len(), at = ?now, "committed");
    }

    fn reindex(&mut self) {
        self.checkers.clear();
        self.reals_by_ip.clear();
        for (si, s) in self.services.iter().enumerate() {
            for (ri, r) in s.reals.iter().enumerate() {
                self.reals_by_ip.entry(r.addr.ip()).or_default().push((si, ri));
                for (ci, c) in r.checks.iter().enumerate() {
                    self.checkers.insert(c.checker, (si, ri, ci));
                }
            }
        }
    }

    /// Whether this director's view of the reals has settled, so its Maglev tables are the
    /// ones any director with the same config computes: what a backup needs before it
    /// preempts a lower master (see `vrrp::Vrrp::set_ready`). Settled: every check of
    /// every real stands on a full count of results (rise successes, fall failures), every
    /// real that is up has its next hop, and every service has a real in its table. A
    /// director back from a FAULT (its checks failed with its link) or just started is
    /// not: preempting then would send a master's flows to other reals, or to none.
    pub fn ready(&self) -> bool {
        let settled = |r: &RealState| {
            r.checks.iter().all(|c| c.hysteresis.settled())
                && (r.health != Health::Up || r.hop.is_some_and(|h| h.mac.is_some()))
        };
        !self.services.is_empty()
            && self.services.iter().all(|s| {
                s.reals.iter().all(settled)
                    && self.published.maglev.get(&s.index).is_some_and(|m| m.serving() > 0)
            })
    }

    /// Whether `r` is in its service's table as published: a fallback is listed only then.
    fn in_table(&self, s: &ServiceState, r: &RealState) -> bool {
        self.published
            .maglev
            .get(&s.index)
            .is_some_and(|m| m.inputs.iter().any(|(_, _, id)| *id == r.id))
    }

    /// Logs a service that lost its last real able to take new connections.
    fn note_serving(&mut self) {
        for s in &mut self.services {
            let serving = self.published.maglev.get(&s.index).map_or(0, MaglevEntry::serving);
            let was = std::mem::replace(&mut s.serving, serving);
            if serving != was {
                info!(service = %s.spec.name, serving, "maglev table written");
            }
            if serving == 0 && was > 0 {
                warn!(service = %s.spec.name, "no real server can take new connections");
            }
        }
    }

    // --- tables -----------------------------------------------------------------------

    /// The tables `services` need. A Maglev table whose inputs did not change is the one
    /// the data plane holds, not rebuilt.
    fn tables_for(&self, services: &[ServiceState]) -> Tables {
        let mut t = Tables { vips: vip_set(services), ..Tables::default() };
        t.vips.retain(|key, _| self.serving[usize::from(key.family != lb_common::FAMILY_V4)]);
        for s in services {
            for r in &s.reals {
                t.reals
                    .insert(r.id, RealEntry { owner: (s.key, r.addr), info: self.real_info(s, r) });
            }
            let inputs_of = |sorry: bool| -> Vec<(String, u32, u32)> {
                s.reals
                    .iter()
                    .filter(|r| r.sorry == sorry && r.schedulable(s.spec.forwarding, &self.links))
                    .map(|r| (r.addr.to_string(), r.weight_now(), r.id))
                    .collect()
            };
            // The fallback serves only while no real can take new connections.
            let mut inputs = inputs_of(false);
            if inputs.is_empty() {
                inputs = inputs_of(true);
            }
            let entry = match self.published.maglev.get(&s.index) {
                Some(e) if e.owner == s.key && e.inputs == inputs => e.clone(),
                _ => MaglevEntry::build(s.key, inputs),
            };
            t.maglev.insert(s.index, entry);
        }
        t.nat = services.iter().any(|s| s.spec.forwarding == config::Forwarding::Nat);
        t
    }

    fn real_info(&self, s: &ServiceState, r: &RealState) -> RealInfo {
        let (addr, family) = addr16(r.addr.ip());
        let link = r.link(&self.links).and_then(|l| self.links.get(&l));
        RealInfo {
            addr,
            mac: r.hop.and_then(|h| h.mac).unwrap_or_default(),
            family,
            flags: if r.present(s.spec.on_failure) { REAL_PRESENT } else { 0 }
                | if r.health == Health::Down { REAL_DOWN } else { 0 },
            src_mac: link.map(|l| l.mac).unwrap_or_default(),
            port_be: r.addr.port().to_be(),
            ifindex: link.map_or(0, |l| l.ifindex),
            vip: s.index,
            tunnel_src: r.tunnel_src().map_or([0; 16], |a| addr16(a).0),
            mtu: link.map_or(0, |l| r.path_mtu(l.mtu)),
            _pad: [0; 2],
        }
    }

    /// Writes what the state asks for, if the data plane holds anything else.
    fn sync(&mut self, _now: Time, fx: &mut Vec<Effect>) {
        let tables = self.tables_for(&self.services);
        let ops = tables::diff(&self.published, &tables);
        if ops.is_empty() {
            self.published = tables;
            self.stale = false;
            return;
        }
        self.submit(ops, Pending::Sync(tables), fx);
    }

    // --- health and next hops ---------------------------------------------------------

    fn on_observation(&mut self, now: Time, o: Observation, fx: &mut Vec<Effect>) {
        let Some(&(si, ri, ci)) = self.checkers.get(&o.checker) else {
            return; // a stopped checker's last word
        };
        let s = &mut self.services[si];
        let r = &mut s.reals[ri];
        let c = &mut r.checks[ci];
        let _span = info_span!("health", service = %s.spec.name, real = %r.addr, check = c.spec.probe.name()).entered();
        if o.late > c.spec.interval / 10 {
            self.checks_late += 1;
            debug!(late = ?o.late, "probe started late");
        }
        match c.hysteresis.observe(o.success) {
            Some(Health::Up) => info!(detail = %o.detail, "check up"),
            Some(Health::Down) => warn!(detail = %o.detail, "check down"),
            _ => debug!(success = o.success, detail = %o.detail, "check"),
        }
        if c.last.as_ref().map(|(ok, _)| *ok) != Some(o.success) {
            c.since = Some(now);
        }
        c.last = Some((o.success, o.detail));
        let reweighted = match o.weight.filter(|_| o.success) {
            Some(w) if r.reported != Some(w) => {
                info!(from = r.weight_now(), to = w, "weight reported by the check");
                r.reported = Some(w);
                true
            }
            _ => false,
        };
        let health = r.combined_health();
        if health == r.health {
            if reweighted {
                self.sync(now, fx);
            }
            return;
        }
        let failing = r.checks.iter().filter_map(|c| c.last.as_ref()).find(|(ok, _)| !ok);
        let why = failing.map(|(_, detail)| detail.as_str()).unwrap_or("every check passes");
        info!(from = ?r.health, to = ?health, why, "real health changed");
        // A first result that finds a real up is no news; down, or any later change, is.
        let news = r.health != Health::Unknown || health == Health::Down;
        if r.health != Health::Unknown {
            r.transitions += 1;
        }
        r.health = health;
        r.since = now;
        // A new outage escalates from its first step; a real back stops the escalation.
        r.recovered = 0;
        if let (true, Some(program)) = (news, &s.spec.notify) {
            let state = if health == Health::Up { "UP" } else { "DOWN" };
            fx.push(Effect::Hook(HookRun {
                what: HookKind::Notify,
                program: program.clone(),
                args: vec![state.into()],
                env: hook_env(&s.spec, r.addr),
            }));
        }
        self.sync(now, fx);
    }

    fn on_resolved(&mut self, now: Time, hop: Resolved, fx: &mut Vec<Effect>) {
        self.hops.insert(hop.ip, hop);
        let Some(at) = self.reals_by_ip.get(&hop.ip) else {
            return;
        };
        for &(si, ri) in at {
            let s = &mut self.services[si];
            let r = &mut s.reals[ri];
            r.hop = Some(hop);
            // Unresolved is said by the neighbour task; these are the config's problem.
            if let Some(why) =
                r.unreachable(s.spec.forwarding, &self.links).filter(|_| hop.mac.is_some())
            {
                warn!(service = %s.spec.name, real = %r.addr, ifindex = hop.ifindex, "{why}: it gets no new connections");
            }
        }
        self.sync(now, fx);
    }

    // --- control ----------------------------------------------------------------------

    fn on_control(&mut self, now: Time, token: Token, request: Request, fx: &mut Vec<Effect>) {
        let answer = match request {
            Request::List => Answer::List(self.listing()),
            Request::Status => Answer::Status(self.status(now)),
            Request::SetWeight { protocol, vip, real, weight } => {
                match self.set_weight(protocol, vip, real, weight) {
                    Ok(plan) => {
                        let plan = Plan { reply: Some(token), ..plan };
                        return self.submit_plan(now, plan, fx);
                    }
                    Err(message) => Answer::Done(Response::Error { message }),
                }
            }
            Request::Reload => Answer::Done(Response::Error {
                message: "reload: the driver reads the file and hands the core its config".into(),
            }),
        };
        fx.push(Effect::Answer(token, answer));
    }

    /// `lbadm -e`: a weight until the next reload, planned on a copy like a reload.
    fn set_weight(
        &self,
        protocol: Protocol,
        vip: SocketAddr,
        real: SocketAddr,
        weight: u32,
    ) -> Result<Plan, String> {
        if weight > 65535 {
            return Err(format!("weight {weight} is above 65535"));
        }
        let Some(i) =
            self.services.iter().position(|s| s.spec.vip == vip && s.spec.protocol == protocol)
        else {
            return Err(format!("no service {} {vip}", format!("{protocol:?}").to_uppercase()));
        };
        let mut services = self.services.clone();
        let Some(r) = services[i].reals.iter_mut().find(|r| r.addr == real) else {
            return Err(format!("service {vip} has no real server {real}"));
        };
        let _span = info_span!("admin", service = %vip, real = %real).entered();
        info!(from = r.weight, to = weight, "weight set by lbadm");
        r.weight = weight;
        let tables = self.tables_for(&services);
        Ok(Plan {
            services,
            tables,
            start: Vec::new(),
            stop: Vec::new(),
            reply: None,
            ok: Response::Ok { message: format!("{real} weight {weight}") },
        })
    }
}

impl RealState {
    fn checkers(&self) -> impl Iterator<Item = CheckerId> + '_ {
        self.checks.iter().map(|c| c.checker)
    }

    /// Up only while every check is up; a real without checks is up.
    fn combined_health(&self) -> Health {
        let states = self.checks.iter().map(|c| c.hysteresis.state());
        if states.clone().any(|h| h == Health::Down) {
            Health::Down
        } else if states.clone().any(|h| h == Health::Unknown) {
            Health::Unknown
        } else {
            Health::Up
        }
    }

    /// The attached interface the real is reached through, if it is resolved.
    fn link(&self, links: &HashMap<u32, LinkInfo>) -> Option<u32> {
        self.hop.filter(|h| h.mac.is_some()).map(|h| h.ifindex).filter(|i| links.contains_key(i))
    }

    /// Receives new connections: up, weighted, and reachable as `forwarding` needs.
    fn schedulable(&self, forwarding: config::Forwarding, links: &HashMap<u32, LinkInfo>) -> bool {
        self.health == Health::Up
            && self.weight_now() > 0
            && self.unreachable(forwarding, links).is_none()
    }

    /// Why the data plane cannot send the real a `forwarding` service's packets, whatever
    /// its health; None when it can.
    fn unreachable(
        &self,
        forwarding: config::Forwarding,
        links: &HashMap<u32, LinkInfo>,
    ) -> Option<String> {
        if self.hop.and_then(|h| h.mac).is_none() {
            return Some("its next hop is not resolved".into());
        }
        if self.link(links).is_none() {
            return Some("it is reached through an interface XDP is not attached to".into());
        }
        match (forwarding, self.hop.and_then(|h| h.via)) {
            // The frame keeps the VIP as its destination: a router would send it back.
            (config::Forwarding::Dr, Some(router)) => Some(format!(
                "direct routing needs it on the director's segment, but the route to it goes via {router}"
            )),
            (config::Forwarding::Tunnel, _) if self.tunnel_src().is_none() => {
                Some("the route to it has no source address to tunnel from".into())
            }
            _ => None,
        }
    }

    /// What a tunnelled packet may measure: the interface's MTU, or the route's when it is
    /// narrower (a tunnel across a WAN link).
    fn path_mtu(&self, link_mtu: u16) -> u16 {
        self.hop
            .and_then(|h| h.mtu)
            .map_or(link_mtu, |m| link_mtu.min(m.min(u16::MAX.into()) as u16))
    }

    /// A tunnel's outer source: the kernel's source for the real, of the real's family.
    fn tunnel_src(&self) -> Option<IpAddr> {
        self.hop.and_then(|h| h.src).filter(|s| s.is_ipv4() == self.addr.is_ipv4())
    }

    /// Listed by lbadm and kept by established flows: everything but a failed real of an
    /// `on_failure: remove` service (IPVS deletes such a destination).
    fn present(&self, on_failure: OnFailure) -> bool {
        !(self.health == Health::Down && on_failure == OnFailure::Remove)
    }

    fn effective_weight(&self) -> u32 {
        if self.health == Health::Up { self.weight_now() } else { 0 }
    }

    /// The weight in force: the last one its exec check reported, else its own.
    fn weight_now(&self) -> u32 {
        self.reported.unwrap_or(self.weight)
    }
}

/// Ids below a bound, some taken: hands out the lowest free one. Ids are only ever taken
/// while a plan is made, so every id below `next` is taken, and handing out n ids costs
/// O(n + max), not O(n * max) (tens of thousands of reals in one config).
struct FreeIds {
    used: HashSet<u32>,
    next: u32,
    max: u32,
}

impl FreeIds {
    fn new(max: u32) -> Self {
        FreeIds { used: HashSet::new(), next: 0, max }
    }

    fn insert(&mut self, id: u32) {
        self.used.insert(id);
    }

    fn extend(&mut self, ids: impl IntoIterator<Item = u32>) {
        self.used.extend(ids);
    }

    /// The lowest id below `max` not taken, now taken.
    fn take(&mut self) -> Option<u32> {
        while self.next < self.max && self.used.contains(&self.next) {
            self.next += 1;
        }
        if self.next >= self.max {
            return None;
        }
        self.used.insert(self.next);
        Some(self.next)
    }
}

/// The environment of a service's scripts: LBD_SERVICE, LBD_VIP, LBD_REAL.
fn hook_env(spec: &Service, real: SocketAddr) -> Vec<(String, String)> {
    vec![
        ("LBD_SERVICE".into(), spec.name.clone()),
        ("LBD_VIP".into(), spec.vip.to_string()),
        ("LBD_REAL".into(), real.to_string()),
    ]
}

/// One step of SplitMix64: a seed per checker from the core's seed and the checker's id.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// VIPS as `services` need it.
fn vip_set(services: &[ServiceState]) -> std::collections::BTreeMap<VipKey, VipInfo> {
    services
        .iter()
        .map(|s| {
            let forwarding = dp_forwarding(s.spec.forwarding) as u8;
            (s.key, VipInfo { index: s.index, forwarding, _pad: [0; 3] })
        })
        .collect()
}

fn dp_forwarding(f: config::Forwarding) -> DpForwarding {
    match f {
        config::Forwarding::Dr => DpForwarding::Dr,
        config::Forwarding::Nat => DpForwarding::Nat,
        config::Forwarding::Tunnel => DpForwarding::Tunnel,
    }
}

pub fn vip_key(s: &Service) -> VipKey {
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
