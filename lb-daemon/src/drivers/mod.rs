//! The thin tokio driver around the core: it feeds the core its inputs with the time,
//! carries out the effects (data-plane batches, checker tasks, the addresses to resolve,
//! control answers) and wakes it when it asks. Everything that decides is in crate::core.
//!
//! Listings are finished off the driver's task: walking the connection table takes
//! milliseconds, and health reports and other requests must not queue behind it. With
//! [`Driver::list_with`], the driver hands the core's listing to a thread of its own
//! ([`ListingReads`]), which serves every listing waiting when it starts with one walk.

pub mod addresses;
pub mod announce;
pub mod dataplane;
#[cfg(test)]
pub mod fake;
pub mod ha;
pub mod hooks;
pub mod neighbor;
pub mod pmtu;
pub mod track;
pub mod vrrp;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use lb_common::{Counters, FlowKey, FlowValue};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, warn};

use crate::config::{self, Config};
use crate::control::{self, BUSY, ReasonCount, Request, Response, RouterView, Stats};
use crate::core::Listed;
use crate::core::{
    Answer, CheckerId, Core, Effect, HookKind, Input, Observation, Resolved, Time, Token,
};
use crate::health;
use dataplane::DataplaneOps;

/// What the driver's tasks send it.
pub enum Event {
    Observation(Observation),
    Resolved(Resolved),
    /// A control API request (SIGHUP arrives as `Request::Reload` too).
    Control(Request, oneshot::Sender<Response>),
    /// From a failover task: its family's VIPs are to be answered for (master) or not;
    /// `done` once the data plane's VIPS says so, so the VIPs go on the interface only
    /// after.
    Serving {
        ipv4: bool,
        on: bool,
        done: oneshot::Sender<()>,
    },
}

impl From<control::Call> for Event {
    fn from((request, reply): control::Call) -> Self {
        Event::Control(request, reply)
    }
}

impl From<Observation> for Event {
    fn from(o: Observation) -> Self {
        Event::Observation(o)
    }
}

impl From<Resolved> for Event {
    fn from(r: Resolved) -> Self {
        Event::Resolved(r)
    }
}

/// The reads behind a listing, through handles of their own (the mapped connection
/// table, the counter maps), so the listing thread makes them while the driver goes on.
pub trait ListingReads: Send + 'static {
    fn vip_counters(&self, index: u32) -> Result<Counters>;
    fn real_counters(&self, id: u32) -> Result<Counters>;
    /// A snapshot of the connection table.
    fn flows(&self) -> Vec<(FlowKey, FlowValue)>;
}

/// Listings waiting for the listing thread, at most; one more is told busy. The control
/// server's connection limit keeps them fewer.
pub const LISTINGS_WAITING: usize = 256;

/// A listing for the listing thread to finish, and where its answer goes.
struct ListingJob {
    listed: Vec<Listed>,
    reply: oneshot::Sender<Response>,
}

pub struct Driver<D: DataplaneOps> {
    core: Core,
    dp: D,
    /// The file `Request::Reload` rereads.
    config_path: PathBuf,
    /// Where checkers report.
    events: mpsc::Sender<Event>,
    checkers: HashMap<CheckerId, JoinHandle<()>>,
    replies: HashMap<Token, oneshot::Sender<Response>>,
    next_token: Token,
    targets: watch::Sender<Vec<IpAddr>>,
    /// The failover tasks (one per family of the VIPs), and their state for status.
    ha: Vec<(mpsc::Sender<ha::Command>, watch::Receiver<Option<crate::core::ha::View>>)>,
    /// The priority the failover tasks run with, so a reload that changes it says so.
    ha_priority: Option<u8>,
    /// The config lbd started with: what a reload cannot change (the director section,
    /// `ha` but its priority) is compared with it, and the answer says what waits.
    started: Option<Config>,
    /// The listing thread, when there is one; without, listings are finished here.
    listings: Option<mpsc::Sender<ListingJob>>,
    /// Whether every service has a real in service ([`Core::ready`]), for the failover
    /// tasks: a backup preempts only when it is.
    ready: watch::Sender<bool>,
    /// The services' notify scripts, run one after another in the order of the
    /// transitions (made at the first).
    notify: Option<hooks::Queue>,
    /// When readiness was last computed.
    ready_at: Option<std::time::Instant>,
}

/// How often readiness is computed at most.
const READINESS_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);

/// How long a service's notify script may run, and a recover step.
const NOTIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const RECOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

impl<D: DataplaneOps> Driver<D> {
    /// A driver for `core` over `dp`. Checkers report on `events`; the addresses to resolve
    /// are published on the returned watch channel.
    pub fn new(
        core: Core,
        dp: D,
        config_path: PathBuf,
        events: mpsc::Sender<Event>,
    ) -> (Self, watch::Receiver<Vec<IpAddr>>) {
        let (targets, resolve) = watch::channel(Vec::new());
        let driver = Driver {
            core,
            dp,
            config_path,
            events,
            checkers: HashMap::new(),
            replies: HashMap::new(),
            next_token: 0,
            targets,
            listings: None,
            ha: Vec::new(),
            ha_priority: None,
            started: None,
            ready: watch::Sender::new(false),
            notify: None,
            ready_at: None,
        };
        (driver, resolve)
    }

    /// Finishes listings on a thread of their own, over `reads`: the walk of the
    /// connection table and the counter reads leave the driver's task, and one walk serves
    /// every listing waiting when it starts (each still sees the table as it was after its
    /// request came). One thread: a burst of listings takes one core at most.
    pub fn list_with(&mut self, reads: impl ListingReads) -> Result<()> {
        let (tx, rx) = mpsc::channel(LISTINGS_WAITING);
        std::thread::Builder::new()
            .name("lbd-listings".into())
            .spawn(move || list(reads, rx))
            .context("starting the listing thread")?;
        self.listings = Some(tx);
        Ok(())
    }

    /// Whether every service has a real in service, as it changes.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Hands the driver the failover tasks lbd started, with the priority they run with.
    pub fn ha_with(
        &mut self,
        priority: u8,
        tasks: Vec<(mpsc::Sender<ha::Command>, watch::Receiver<Option<crate::core::ha::View>>)>,
    ) {
        self.ha_priority = Some(priority);
        self.ha = tasks;
    }

    /// Whether the data plane answers for one family's VIPs (see `Input::Serving`); with
    /// `ha`, lbd says false before the first config for each family a virtual router
    /// moves, so none of its VIPs is live before an election.
    pub fn serve_family(&mut self, ipv4: bool, on: bool) {
        self.feed(Input::Serving { ipv4, on });
    }

    /// Applies the first config; an error means lbd cannot start with it.
    pub fn start(&mut self, config: Config) -> Result<()> {
        let (tx, mut rx) = oneshot::channel();
        let token = self.token(tx);
        let source = self.config_path.display().to_string();
        self.started = Some(config.clone());
        self.feed(Input::Config { config: Box::new(config), source, reply: Some(token) });
        match rx.try_recv() {
            Ok(Response::Error { message }) => bail!("{message}"),
            Ok(_) => Ok(()),
            Err(_) => bail!("the core did not answer the first config"),
        }
    }

    /// Runs until every sender of events is gone.
    pub async fn run(mut self, mut inbox: mpsc::Receiver<Event>) {
        loop {
            let wake = self.core.poll_timeout();
            let event = tokio::select! {
                event = inbox.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
                _ = sleep_until(wake) => {
                    self.feed(Input::Tick);
                    continue;
                }
            };
            match event {
                Event::Observation(o) => self.feed(Input::Observation(o)),
                Event::Resolved(r) => self.feed(Input::Resolved(r)),
                Event::Serving { ipv4, on, done } => {
                    // A batch is applied within feed, before it returns.
                    self.feed(Input::Serving { ipv4, on });
                    let _ = done.send(());
                }
                Event::Control(Request::Reload, reply) => self.reload(reply),
                // A client gone already (an aborted scrape, a killed lbadm) costs nothing.
                Event::Control(_, reply) if reply.is_closed() => {}
                Event::Control(request, reply) => {
                    let token = self.token(reply);
                    self.feed(Input::Control(token, request));
                }
            }
        }
    }

    /// Rereads the config file, for SIGHUP and `lbadm reload` alike, telling systemd it
    /// is reloading and then how the reload ended (its status line).
    fn reload(&mut self, reply: oneshot::Sender<Response>) {
        crate::systemd::reloading();
        let response = self.reload_file();
        crate::systemd::ready(match &response {
            Response::Ok { message } | Response::Error { message } => message,
            _ => "reloaded",
        });
        let _ = reply.send(response);
    }

    /// An invalid file changes nothing; a valid one goes to the core, which applies it
    /// whole or not at all.
    fn reload_file(&mut self) -> Response {
        let path = self.config_path.clone();
        let _span = tracing::info_span!("reload", file = %path.display()).entered();
        match config::load(&path) {
            Ok(config) => {
                let priority = config.ha.as_ref().map(|h| h.priority);
                let waiting = self
                    .started
                    .as_ref()
                    .map(|started| config::restart_only(started, &config))
                    .unwrap_or_default();
                let (tx, mut rx) = oneshot::channel();
                let token = self.token(tx);
                let source = path.display().to_string();
                self.feed(Input::Config { config: Box::new(config), source, reply: Some(token) });
                // The core answered within feed. A reload that applied gives the failover
                // tasks a changed priority, through the election: never a drop to backup,
                // and nothing else of HA moves on a reload.
                let mut response = rx.try_recv().unwrap_or_else(|_| Response::Error {
                    message: "the core did not answer the reload".into(),
                });
                if let Response::Ok { message } = &mut response
                    && !waiting.is_empty()
                {
                    let keys = waiting.join(", ");
                    warn!(changed = %keys, "applied but for changes that take effect at restart");
                    message.push_str(&format!("; these changes take effect at restart: {keys}"));
                }
                if matches!(response, Response::Ok { .. })
                    && let (Some(new), Some(old)) = (priority, self.ha_priority)
                    && new != old
                {
                    self.ha_priority = Some(new);
                    for (commands, _) in &self.ha {
                        let _ = commands.try_send(ha::Command::Priority(new));
                    }
                }
                response
            }
            Err(invalid) => {
                warn!(problems = %invalid, "reload refused, nothing changed");
                let message = format!("reload refused, nothing changed:\n{invalid}");
                Response::Error { message }
            }
        }
    }

    fn token(&mut self, reply: oneshot::Sender<Response>) -> Token {
        let token = self.next_token;
        self.next_token += 1;
        self.replies.insert(token, reply);
        token
    }

    /// Hands the core `input`, then everything its effects lead to (a batch's outcome).
    fn feed(&mut self, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            for effect in self.core.handle(now(), input) {
                match effect {
                    Effect::Apply(batch) => {
                        let result = dataplane::apply(&mut self.dp, &batch);
                        inputs.push_back(Input::Applied { batch: batch.id, result });
                    }
                    Effect::StartCheck { id, target } => {
                        let task = health::spawn(id, target, self.events.clone());
                        if let Some(old) = self.checkers.insert(id, task) {
                            old.abort();
                        }
                    }
                    Effect::StopCheck(id) => {
                        if let Some(task) = self.checkers.remove(&id) {
                            task.abort();
                        }
                    }
                    Effect::Resolve(targets) => {
                        self.targets.send_replace(targets);
                    }
                    Effect::Answer(token, answer) => {
                        if let Some(reply) = self.replies.remove(&token) {
                            self.answer(answer, reply);
                        }
                    }
                    Effect::Hook(run) => {
                        let timeout = match run.what {
                            HookKind::Notify => NOTIFY_TIMEOUT,
                            HookKind::Recover => RECOVER_TIMEOUT,
                        };
                        let hook = hooks::Hook {
                            program: run.program,
                            args: run.args,
                            env: run.env,
                            timeout,
                        };
                        match run.what {
                            HookKind::Notify => {
                                let queue =
                                    self.notify.get_or_insert_with(|| hooks::in_order("notify"));
                                queue.send(hook);
                            }
                            HookKind::Recover => hooks::spawn(run.what.name(), hook),
                        }
                    }
                }
            }
        }
        self.publish_readiness();
    }

    /// Publishes [`Core::ready`] for the failover tasks. It walks every real, so it is
    /// not redone for each of thousands of check results a second: only where a failover
    /// task listens, and at most every 100 ms (the clock's tick each second comes after
    /// the last change, so none is missed for long; preempting waits on the election's
    /// seconds anyway).
    fn publish_readiness(&mut self) {
        if self.ready.receiver_count() == 0
            || self.ready_at.is_some_and(|at| at.elapsed() < READINESS_PERIOD)
        {
            return;
        }
        self.ready_at = Some(std::time::Instant::now());
        let ready = self.core.ready();
        self.ready.send_if_modified(|r| std::mem::replace(r, ready) != ready);
    }

    /// Answers, or hands a listing to the listing thread.
    fn answer(&mut self, answer: Answer, reply: oneshot::Sender<Response>) {
        let Answer::List(listed) = answer else {
            let _ = reply.send(self.complete(answer));
            return;
        };
        let Some(listings) = &self.listings else {
            let _ = reply.send(self.complete(Answer::List(listed)));
            return;
        };
        match listings.try_send(ListingJob { listed, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                let message = format!("{BUSY} {LISTINGS_WAITING} listings are waiting, try again");
                let _ = job.reply.send(Response::Error { message });
            }
            Err(TrySendError::Closed(job)) => {
                error!("the listing thread stopped: listings are made by the driver from now on");
                self.listings = None;
                let _ = job.reply.send(self.complete(Answer::List(job.listed)));
            }
        }
    }

    /// Fills a listing or a status with the data plane's counters.
    fn complete(&self, answer: Answer) -> Response {
        match answer {
            Answer::Done(response) => response,
            Answer::Status(mut status) => {
                if let Some(view) = self.ha.iter().find_map(|(_, v)| v.borrow().clone()) {
                    let d = &mut status.director;
                    d.ha_state = crate::core::ha::state_name(view.state).into();
                    d.priority = Some(view.priority);
                    d.master = view.master;
                    d.since_secs = Some(now().since(view.since).as_secs());
                }
                status.director.routers = self
                    .ha
                    .iter()
                    .filter_map(|(_, v)| v.borrow().clone())
                    .map(|v| RouterView {
                        family: if v.ipv4 { "IPv4" } else { "IPv6" }.into(),
                        state: crate::core::ha::state_name(v.state).into(),
                        master: v.master,
                        since_secs: now().since(v.since).as_secs(),
                    })
                    .collect();
                let summed = |of: fn(&crate::core::ha::View) -> &BTreeMap<&'static str, u64>| {
                    let mut sum: BTreeMap<&str, u64> = BTreeMap::new();
                    for (_, v) in &self.ha {
                        for (name, n) in v.borrow().iter().flat_map(|v| of(v).clone()) {
                            *sum.entry(name).or_default() += n;
                        }
                    }
                    sum.into_iter()
                        .map(|(reason, packets)| ReasonCount { reason: reason.into(), packets })
                        .collect()
                };
                status.director.adverts_dropped = summed(|v| &v.dropped);
                status.director.transitions = summed(|v| &v.transitions);
                status.packets = match self.dp.reasons() {
                    Ok(counts) => counts
                        .into_iter()
                        .map(|(r, packets)| ReasonCount { reason: r.name().into(), packets })
                        .collect(),
                    Err(e) => {
                        warn!(error = %e, "reading the data plane's reason counters");
                        Vec::new()
                    }
                };
                Response::Status(status)
            }
            Answer::List(listed) => {
                let conns = crate::core::connection_counts(&self.dp.flows(), now().secs());
                fill(
                    listed,
                    &conns,
                    |index| self.dp.vip_counters(index),
                    |id| self.dp.real_counters(id),
                )
            }
        }
    }
}

/// A listing with its connection counts and counters.
fn fill(
    listed: Vec<Listed>,
    conns: &HashMap<u32, (u64, u64)>,
    mut vip_counters: impl FnMut(u32) -> Result<Counters>,
    mut real_counters: impl FnMut(u32) -> Result<Counters>,
) -> Response {
    let services: Result<Vec<_>> = listed
        .into_iter()
        .map(|l| {
            let mut view = l.view;
            view.stats = stats(vip_counters(l.index)?);
            for (real, id) in view.reals.iter_mut().zip(&l.real_ids) {
                let (active, inactive) = conns.get(id).copied().unwrap_or_default();
                real.active_conns = active;
                real.inactive_conns = inactive;
                real.stats = stats(real_counters(*id)?);
            }
            Ok(view)
        })
        .collect();
    match services {
        Ok(services) => Response::List { services },
        Err(e) => Response::Error { message: format!("reading counters: {e:#}") },
    }
}

/// The listing thread: takes every listing waiting, walks the connection table once for
/// them all, reads each counter once, answers each; until the driver is gone.
fn list(reads: impl ListingReads, mut jobs: mpsc::Receiver<ListingJob>) {
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(job) = jobs.try_recv() {
            batch.push(job);
        }
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let conns = crate::core::connection_counts(&reads.flows(), now().secs());
        let (mut vips, mut reals) = (HashMap::new(), HashMap::new());
        for job in batch {
            let response = fill(
                job.listed,
                &conns,
                |index| once(&mut vips, index, |i| reads.vip_counters(i)),
                |id| once(&mut reals, id, |i| reads.real_counters(i)),
            );
            let _ = job.reply.send(response);
        }
    }
}

/// `read(key)`, read at most once per batch of listings.
fn once(
    seen: &mut HashMap<u32, Counters>,
    key: u32,
    read: impl FnOnce(u32) -> Result<Counters>,
) -> Result<Counters> {
    if let Some(c) = seen.get(&key) {
        return Ok(*c);
    }
    let c = read(key)?;
    seen.insert(key, c);
    Ok(c)
}

impl<D: DataplaneOps> Drop for Driver<D> {
    fn drop(&mut self) {
        for task in self.checkers.values() {
            task.abort();
        }
    }
}

/// Sleeps until `at` on the core's clock; for ever when nothing is due.
async fn sleep_until(at: Option<Time>) {
    match at {
        Some(at) => tokio::time::sleep(at.since(now())).await,
        None => std::future::pending().await,
    }
}

/// CLOCK_MONOTONIC: the core's time, whose whole seconds age the data plane's flows.
pub fn now() -> Time {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Time::from_duration(std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    use lb_common::{PROTO_TCP, PROTO_UDP, RealInfo, Reason, VipInfo, VipKey};

    use super::fake::FakeDataplane;
    use super::*;
    use crate::core::Capacity;
    use crate::link::LinkInfo;

    const CONFIG: &str = "
director:
  interfaces: [eth0]
services:
  - name: web
    vip: 192.0.2.10:80
    protocol: tcp
    reals:
      - address: 10.0.0.11
      - address: 10.0.0.12
  - name: dns
    vip: 192.0.2.10:53
    protocol: udp
    reals:
      - address: 10.0.0.11
";

    /// The fake data plane, shared by the driver and the listing thread, whose walks of
    /// the connection table take `walk` and are counted.
    #[derive(Clone, Default)]
    struct Shared {
        dp: Arc<Mutex<FakeDataplane>>,
        walk: Duration,
        walks: Arc<AtomicUsize>,
    }

    impl Shared {
        fn dp(&self) -> std::sync::MutexGuard<'_, FakeDataplane> {
            self.dp.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    impl DataplaneOps for Shared {
        fn set_clock(&mut self, seconds: u32) -> Result<()> {
            self.dp().set_clock(seconds)
        }
        fn set_nat(&mut self, on: bool) -> Result<()> {
            self.dp().set_nat(on)
        }
        fn set_real(&mut self, id: u32, real: RealInfo) -> Result<()> {
            self.dp().set_real(id, real)
        }
        fn set_maglev(&mut self, index: u32, table: &[u32]) -> Result<usize> {
            self.dp().set_maglev(index, table)
        }
        fn set_vips(&mut self, vips: &BTreeMap<VipKey, VipInfo>) -> Result<()> {
            self.dp().set_vips(vips)
        }
        fn reset_real_counters(&mut self, id: u32) -> Result<Vec<Counters>> {
            self.dp().reset_real_counters(id)
        }
        fn reset_vip_counters(&mut self, index: u32) -> Result<Vec<Counters>> {
            self.dp().reset_vip_counters(index)
        }
        fn restore_real_counters(&mut self, id: u32, held: &[Counters]) -> Result<()> {
            self.dp().restore_real_counters(id, held)
        }
        fn restore_vip_counters(&mut self, index: u32, held: &[Counters]) -> Result<()> {
            self.dp().restore_vip_counters(index, held)
        }
        fn purge_vip(&mut self, vip: &VipKey) -> usize {
            self.dp().purge_vip(vip)
        }
        fn vip_counters(&self, index: u32) -> Result<Counters> {
            DataplaneOps::vip_counters(&*self.dp(), index)
        }
        fn real_counters(&self, id: u32) -> Result<Counters> {
            DataplaneOps::real_counters(&*self.dp(), id)
        }
        fn reasons(&self) -> Result<Vec<(Reason, u64)>> {
            self.dp().reasons()
        }
        fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
            self.walks.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.walk);
            DataplaneOps::flows(&*self.dp())
        }
    }

    impl ListingReads for Shared {
        fn vip_counters(&self, index: u32) -> Result<Counters> {
            DataplaneOps::vip_counters(self, index)
        }
        fn real_counters(&self, id: u32) -> Result<Counters> {
            DataplaneOps::real_counters(self, id)
        }
        fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
            DataplaneOps::flows(self)
        }
    }

    /// A running driver over `dp` with CONFIG applied (and a listing thread when asked),
    /// and where to send it requests.
    fn driver(dp: Shared, thread: bool) -> (mpsc::Sender<Event>, watch::Receiver<Vec<IpAddr>>) {
        let link = LinkInfo { ifindex: 2, mac: [2, 0, 0, 0, 0, 1], mtu: 1500, has_device: false };
        let core = Core::new(Capacity { vips: 8, reals: 16 }, vec![link], Vec::new(), 42);
        let (events, inbox) = mpsc::channel(1024);
        let (mut driver, targets) = Driver::new(core, dp.clone(), "lb.yaml".into(), events.clone());
        if thread {
            driver.list_with(dp).unwrap();
        }
        driver.start(config::parse(Path::new("lb.yaml"), CONFIG).unwrap()).unwrap();
        tokio::spawn(driver.run(inbox));
        (events, targets)
    }

    async fn ask(events: &mpsc::Sender<Event>, request: Request) -> oneshot::Receiver<Response> {
        let (tx, rx) = oneshot::channel();
        events.send(Event::Control(request, tx)).await.unwrap();
        rx
    }

    /// Counters and flows on every id the config could have given, after the config's
    /// own writes (which zero a new id's counters).
    fn traffic(dp: &Shared) {
        let mut dp = dp.dp();
        let now = now().secs();
        for id in 0..16 {
            let c = |n: u64| Counters {
                conns: n,
                packets: 10 * n,
                bytes: 1000 * n,
                ..Counters::default()
            };
            dp.real_counters.insert(id, c(u64::from(id) + 1));
            dp.vip_counters.insert(id, c(u64::from(id) + 100));
            for (i, proto) in [PROTO_TCP, PROTO_TCP, PROTO_UDP].into_iter().enumerate() {
                let key =
                    FlowKey { proto, sport_be: (id * 8 + i as u32) as u16, ..FlowKey::default() };
                let value = FlowValue { real: id, last_seen_s: now, ..FlowValue::default() };
                dp.flows.push((key, value));
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listing_from_the_listing_thread_is_the_one_the_driver_made() {
        let (inline, threaded) = (Shared::default(), Shared::default());
        let (a, _ta) = driver(inline.clone(), false);
        let (b, _tb) = driver(threaded.clone(), true);
        // Wait for both to have applied the config, then give both the same traffic.
        let _ = ask(&a, Request::Status).await.await.unwrap();
        let _ = ask(&b, Request::Status).await.await.unwrap();
        traffic(&inline);
        traffic(&threaded);
        let made = ask(&a, Request::List).await.await.unwrap();
        let listed = ask(&b, Request::List).await.await.unwrap();
        let Response::List { services } = &made else { panic!("{made:?}") };
        assert_eq!(services.len(), 2);
        assert!(services.iter().all(|s| s.stats.conns > 0 && !s.reals.is_empty()));
        assert!(services.iter().flat_map(|s| &s.reals).all(|r| r.active_conns == 2));
        assert_eq!(serde_json::to_string(&listed).unwrap(), serde_json::to_string(&made).unwrap());
        assert_eq!(threaded.walks.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listings_hold_up_neither_status_nor_other_requests() {
        // Each walk of the connection table takes 200 ms here (5 ms with a full one).
        let dp = Shared { walk: Duration::from_millis(200), ..Shared::default() };
        let (events, _targets) = driver(dp.clone(), true);
        let mut lists = Vec::new();
        for _ in 0..20 {
            lists.push(ask(&events, Request::List).await);
        }
        let asked = std::time::Instant::now();
        let status =
            tokio::time::timeout(Duration::from_secs(30), ask(&events, Request::Status).await)
                .await
                .expect("a status")
                .unwrap();
        assert!(matches!(status, Response::Status(_)), "{status:?}");
        // Answered while the listings still wait for their walk: 20 walks in turn
        // would take 4 s.
        let took = asked.elapsed();
        let walks = dp.walks.load(Ordering::SeqCst);
        assert!(walks <= 2, "the status waited for {walks} walks ({took:?})");
        let weight = Request::SetWeight {
            protocol: config::Protocol::Tcp,
            vip: "192.0.2.10:80".parse().unwrap(),
            real: "10.0.0.11:80".parse().unwrap(),
            weight: 3,
        };
        let set = ask(&events, weight).await.await.unwrap();
        assert!(matches!(&set, Response::Ok { .. }), "{set:?}");
        for list in lists {
            let list = tokio::time::timeout(Duration::from_secs(30), list).await.unwrap().unwrap();
            assert!(matches!(list, Response::List { .. }), "{list:?}");
        }
        // One walk served every listing waiting when it started.
        let walks = dp.walks.load(Ordering::SeqCst);
        assert!(walks <= 3, "{walks} walks for 20 listings");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn absurd_fields_are_answered_with_errors() {
        let (events, _targets) = driver(Shared::default(), true);
        let vip: std::net::SocketAddr = "192.0.2.10:80".parse().unwrap();
        let real: std::net::SocketAddr = "10.0.0.11:80".parse().unwrap();
        let cases = [
            (vip, real, u32::MAX, "above 65535"),
            (vip, real, 65536, "above 65535"),
            ("198.51.100.99:80".parse().unwrap(), real, 1, "no service"),
            (vip, "10.9.9.9:80".parse().unwrap(), 1, "no real"),
            ("[::]:0".parse().unwrap(), real, 1, "no service"),
        ];
        for (vip, real, weight, want) in cases {
            let request = Request::SetWeight { protocol: config::Protocol::Tcp, vip, real, weight };
            match ask(&events, request).await.await.unwrap() {
                Response::Error { message } => assert!(message.contains(want), "{message}"),
                other => panic!("{vip} {real} {weight}: {other:?}"),
            }
        }
        let status = ask(&events, Request::Status).await.await.unwrap();
        assert!(matches!(status, Response::Status(_)));
    }
}
