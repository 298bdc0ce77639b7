//! Health checking: one task per real and check, running the check every `interval` (with a
//! little jitter, so a hundred reals are not checked in the same millisecond), bounded by
//! `timeout`, through the rise/fall state machine. Results go to the engine; nothing here
//! touches the data plane.

pub mod http;
pub mod hysteresis;
pub mod tcp;

use std::hash::{BuildHasher as _, RandomState};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument as _, debug, info, info_span, warn};

pub use hysteresis::{Health, Hysteresis};

use crate::config::{Check, CheckType};

/// What one checker task checks.
#[derive(Debug, Clone)]
pub struct Target {
    /// The engine's id of the real.
    pub real: u32,
    /// Which of the service's checks this is.
    pub check_index: usize,
    /// Where the check connects: the real's address and the check's (or service's) port.
    pub addr: SocketAddr,
    pub check: Check,
}

/// One check result, with the transition it caused.
#[derive(Debug, Clone)]
pub struct Report {
    pub real: u32,
    pub check_index: usize,
    pub success: bool,
    pub detail: String,
    pub transition: Option<Health>,
}

/// Starts the checker; it ends when aborted or when the receiver is gone.
pub fn spawn<E: From<Report> + Send + 'static>(
    target: Target,
    tx: mpsc::Sender<E>,
) -> JoinHandle<()> {
    // A root span: checks outlive whatever (config apply, reload) started them.
    let span = info_span!(parent: None, "check", real = %target.addr, kind = ?target.check.kind, index = target.check_index);
    tokio::spawn(run(target, tx).instrument(span))
}

async fn run<E: From<Report>>(target: Target, tx: mpsc::Sender<E>) {
    let check = &target.check;
    let mut state = Hysteresis::new(check.rise, check.fall);
    // Spread the first checks of many reals over a tenth of the interval.
    tokio::time::sleep(jitter(check.interval / 10)).await;
    loop {
        let result = match tokio::time::timeout(check.timeout, once(&target)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", check.timeout)),
        };
        let success = result.is_ok();
        let detail = result.unwrap_or_else(|e| e);
        let transition = state.observe(success);
        match transition {
            Some(Health::Up) => info!(%detail, "real is up"),
            Some(Health::Down) => warn!(%detail, "real is down"),
            _ => debug!(success, %detail, "check"),
        }
        let report = Report {
            real: target.real,
            check_index: target.check_index,
            success,
            detail,
            transition,
        };
        if tx.send(report.into()).await.is_err() {
            return;
        }
        // interval +- 5%: checks of reals started together drift apart.
        let spread = check.interval / 10;
        tokio::time::sleep(check.interval - spread / 2 + jitter(spread)).await;
    }
}

async fn once(target: &Target) -> Result<String, String> {
    match target.check.kind {
        CheckType::Tcp => tcp::check(target.addr).await,
        CheckType::Http => match &target.check.http {
            Some(spec) => http::check(target.addr, spec).await,
            None => Err("http check without its settings".into()),
        },
        CheckType::None => Ok("no check".into()),
    }
}

/// A random duration in [0, max).
fn jitter(max: Duration) -> Duration {
    let nanos = max.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(RandomState::new().hash_one(0u8) % nanos)
}
