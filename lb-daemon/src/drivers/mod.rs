//! The thin tokio driver around the core: it feeds the core its inputs with the time,
//! carries out the effects (data-plane batches, checker tasks, the addresses to resolve,
//! control answers) and wakes it when it asks. Everything that decides is in crate::core.

pub mod addresses;
pub mod announce;
pub mod dataplane;
#[cfg(test)]
pub mod fake;
pub mod hooks;
pub mod neighbor;
pub mod pmtu;
pub mod vrrp;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Result, bail};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::config::{self, Config};
use crate::control::{self, ReasonCount, Request, Response, Stats};
use crate::core::{Answer, CheckerId, Core, Effect, Input, Observation, Resolved, Time, Token};
use crate::health;
use dataplane::DataplaneOps;

/// What the driver's tasks send it.
pub enum Event {
    Observation(Observation),
    Resolved(Resolved),
    /// A control API request (SIGHUP arrives as `Request::Reload` too).
    Control(Request, oneshot::Sender<Response>),
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
}

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
        };
        (driver, resolve)
    }

    /// Applies the first config; an error means lbd cannot start with it.
    pub fn start(&mut self, config: Config) -> Result<()> {
        let (tx, mut rx) = oneshot::channel();
        let token = self.token(tx);
        let source = self.config_path.display().to_string();
        self.feed(Input::Config { config, source, reply: Some(token) });
        match rx.try_recv() {
            Ok(Response::Error { message }) => bail!("{message}"),
            Ok(_) => Ok(()),
            Err(_) => bail!("the core did not answer the first config"),
        }
    }

    /// Runs until every sender of events is gone.
    pub async fn run(mut self, mut inbox: mpsc::Receiver<Event>) {
        loop {
            let wake =
                self.core.poll_timeout().map(|at| tokio::time::Instant::now() + at.since(now()));
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
                Event::Control(Request::Reload, reply) => self.reload(reply),
                Event::Control(request, reply) => {
                    let token = self.token(reply);
                    self.feed(Input::Control(token, request));
                }
            }
        }
    }

    /// Rereads the config file. An invalid file changes nothing; a valid one goes to the
    /// core, which applies it whole or not at all.
    fn reload(&mut self, reply: oneshot::Sender<Response>) {
        let path = self.config_path.clone();
        let _span = tracing::info_span!("reload", file = %path.display()).entered();
        match config::load(&path) {
            Ok(config) => {
                let token = self.token(reply);
                let source = path.display().to_string();
                self.feed(Input::Config { config, source, reply: Some(token) });
            }
            Err(invalid) => {
                warn!(problems = %invalid, "reload refused, nothing changed");
                let message = format!("reload refused, nothing changed:\n{invalid}");
                let _ = reply.send(Response::Error { message });
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
                        let response = self.complete(answer);
                        if let Some(reply) = self.replies.remove(&token) {
                            let _ = reply.send(response);
                        }
                    }
                }
            }
        }
    }

    /// Fills a listing or a status with the data plane's counters.
    fn complete(&self, answer: Answer) -> Response {
        match answer {
            Answer::Done(response) => response,
            Answer::Status(mut status) => {
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
                let services: Result<Vec<_>> = listed
                    .into_iter()
                    .map(|l| {
                        let mut view = l.view;
                        view.stats = stats(self.dp.vip_counters(l.index)?);
                        for (real, id) in view.reals.iter_mut().zip(&l.real_ids) {
                            let (active, inactive) = conns.get(id).copied().unwrap_or_default();
                            real.active_conns = active;
                            real.inactive_conns = inactive;
                            real.stats = stats(self.dp.real_counters(*id)?);
                        }
                        Ok(view)
                    })
                    .collect();
                match services {
                    Ok(services) => Response::List { services },
                    Err(e) => Response::Error { message: format!("reading counters: {e:#}") },
                }
            }
        }
    }
}

impl<D: DataplaneOps> Drop for Driver<D> {
    fn drop(&mut self) {
        for task in self.checkers.values() {
            task.abort();
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
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
