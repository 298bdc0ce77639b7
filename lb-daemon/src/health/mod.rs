//! The checkers: one task per real and check, probing every `interval` (spread by a
//! seeded jitter, so a hundred reals are not checked in the same millisecond) within
//! `timeout`, and reporting each raw result, with how late the probe started (an
//! overloaded director). Judging a run of results (rise, fall) is the core's; nothing here
//! touches the data plane. One probe module per check type.

pub mod dns;
pub mod exec;
pub mod http;
pub mod https;
pub mod ldap;
pub mod ping;
pub mod schedule;
pub mod source;
pub mod tcp;
pub mod udp;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument as _, debug, info_span};

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::config::Probe;
pub use crate::core::Health;
use crate::core::{CheckTarget, CheckerId, Observation};
use schedule::Schedule;

/// Starts checker `id`; it ends when aborted or when the receiver is gone.
pub fn spawn<E: From<Observation> + Send + 'static>(
    id: CheckerId,
    target: CheckTarget,
    tx: mpsc::Sender<E>,
) -> JoinHandle<()> {
    // A root span: checks outlive whatever (config apply, reload) started them.
    let span = info_span!(parent: None, "check", real = %target.addr, kind = target.check.probe.name(), id);
    tokio::spawn(run(id, target, tx).instrument(span))
}

async fn run<E: From<Observation>>(id: CheckerId, target: CheckTarget, tx: mpsc::Sender<E>) {
    let check = &target.check;
    let mut schedule = Schedule::new(check.interval, target.seed);
    let mut due = schedule.first(Instant::now());
    loop {
        tokio::time::sleep_until(due.into()).await;
        let started = Instant::now();
        // Against when it was due, also when the last probe ran past that.
        let late = started.saturating_duration_since(due);
        let (result, weight) = match tokio::time::timeout(check.timeout, probe(&target)).await {
            Ok(answer) => answer,
            Err(_) => (Err(format!("no answer within {:?}", check.timeout)), None),
        };
        let success = result.is_ok();
        let detail = result.unwrap_or_else(|e| e);
        debug!(success, %detail, ?weight, "probed");
        let observation = Observation { checker: id, success, detail, weight, late };
        if tx.send(observation.into()).await.is_err() {
            return;
        }
        due = schedule.next(due, started);
    }
}

/// The one dispatch on the check type: each type's probe, and the judgement of its answer;
/// and the weight the real reported, where the type carries one (exec). Network probes
/// leave from a source that is not a VIP (source.rs).
async fn probe(target: &CheckTarget) -> (Result<String, String>, Option<u32>) {
    if let Probe::Exec(spec) = &target.check.probe {
        return exec::check(target, spec).await;
    }
    let from = match source::for_real(target.addr.ip(), &target.vips) {
        Ok(from) => from,
        Err(why) => return (Err(why), None),
    };
    let result = match &target.check.probe {
        Probe::Exec(_) => unreachable!("run above"),
        Probe::Tcp => tcp::check(target.addr, from).await,
        Probe::Udp(spec) => udp::check(target.addr, from, spec).await,
        Probe::Http(spec) => http::check(target.addr, from, spec).await,
        Probe::Https(spec) => https::check(target.addr, from, spec).await,
        Probe::Dns(spec) => dns::check(target.addr, from, spec).await,
        Probe::Ldap(spec) => ldap::check(target.addr, from, spec).await,
        Probe::Ping => ping::check(target.addr.ip(), from).await,
        Probe::None => Ok("no check".into()),
    };
    (result, None)
}

/// A TCP connection to `addr`, from `from` when a source must be chosen.
pub(crate) async fn connect(
    addr: SocketAddr,
    from: Option<IpAddr>,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(from) = from {
        socket.bind(SocketAddr::new(from, 0))?;
    }
    socket.connect(addr).await
}
