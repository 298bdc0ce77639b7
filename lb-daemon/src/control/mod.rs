//! The control API: one JSON request and one JSON response per connection on a Unix
//! socket. `lbadm` is only a client of it ([`call`]); the server ([`server`]) hands each
//! request to the driver, and the core alone knows the state. What a client may send and
//! hold is bounded ([`Limits`]).

mod server;

pub use server::{
    Accept, Limits, MAX_CONNECTIONS, MAX_REQUEST, READ_TIMEOUT, WRITE_TIMEOUT, bind, serve,
    serve_with,
};

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::config::{Forwarding, Protocol};
use crate::health::Health;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Services, reals, weights, connection counts and counters.
    List,
    /// Health of every real and HA state of the director.
    Status,
    /// `lbadm -e`: a real's weight at run time, until the next reload.
    SetWeight { protocol: Protocol, vip: SocketAddr, real: SocketAddr, weight: u32 },
    /// Reread the config file, as SIGHUP does.
    Reload,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    List { services: Vec<ServiceView> },
    Status(StatusView),
    Ok { message: String },
    Error { message: String },
}

/// ipvsadm's per-service and per-real counters.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub conns: u64,
    pub in_packets: u64,
    pub out_packets: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub protocol: Protocol,
    pub vip: SocketAddr,
    pub scheduler: String,
    pub stats: Stats,
    pub reals: Vec<RealView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RealView {
    pub address: SocketAddr,
    pub forwarding: Forwarding,
    /// The weight the data plane uses now: 0 while quiesced or down.
    pub weight: u32,
    /// The weight from the config or `lbadm -e`.
    pub configured_weight: u32,
    pub active_conns: u64,
    pub inactive_conns: u64,
    pub stats: Stats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub director: DirectorView,
    pub reals: Vec<RealStatus>,
    /// The data plane's packets by what it did with them (forwarded, or passed to the
    /// kernel and why), summed over CPUs since the program was loaded.
    #[serde(default)]
    pub packets: Vec<ReasonCount>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReasonCount {
    /// `lb_common::Reason::name`: tx, redirect, pass_not_vip, too_big_sent, ...
    pub reason: String,
    pub packets: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectorView {
    /// MASTER, BACKUP or FAULT with an `ha` section; STANDALONE without one.
    pub ha_state: String,
    pub priority: Option<u8>,
    /// The current master's address, as last heard (ours while master).
    #[serde(default)]
    pub master: Option<IpAddr>,
    /// Seconds in the current HA state.
    #[serde(default)]
    pub since_secs: Option<u64>,
    /// VRRP adverts dropped, by reason (`ttl`, `checksum`, `other_vrid`, ...), summed over
    /// the virtual routers; reasons with none are left out.
    #[serde(default)]
    pub adverts_dropped: Vec<ReasonCount>,
    /// HA transitions since lbd started, by the state entered (`MASTER`, `BACKUP`, ...),
    /// summed over the virtual routers.
    #[serde(default)]
    pub transitions: Vec<ReasonCount>,
    pub interfaces: Vec<InterfaceView>,
    /// Each virtual router (one per family of the VIPs), as `ha_state` and the fields
    /// after it give the first: they may differ (one master, the other still backup).
    #[serde(default)]
    pub routers: Vec<RouterView>,
    /// Probes that started more than a tenth of their interval late since lbd started: a
    /// director too loaded to check on time.
    #[serde(default)]
    pub checks_late: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouterView {
    /// `IPv4` or `IPv6`.
    pub family: String,
    pub state: String,
    pub master: Option<IpAddr>,
    pub since_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InterfaceView {
    pub name: String,
    pub xdp_mode: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RealStatus {
    pub service: String,
    /// The service's VIP and protocol: its name need not be unique.
    #[serde(default)]
    pub vip: Option<SocketAddr>,
    #[serde(default)]
    pub protocol: Option<Protocol>,
    pub address: SocketAddr,
    pub health: Health,
    pub weight: u32,
    /// MAC the data plane sends to, if resolved: the real's, or its router's.
    pub mac: Option<String>,
    /// The router the real is reached through, when it is not on the director's segment.
    #[serde(default)]
    pub via: Option<IpAddr>,
    /// Why the data plane cannot send it the service's packets, whatever its health.
    #[serde(default)]
    pub unreachable: Option<String>,
    /// The last result of each check: (success, detail).
    pub last_check: Option<(bool, String)>,
    /// Seconds since the health state last changed (or since the real was added).
    pub since_secs: u64,
    /// Health transitions (up to down and back) since the real was added.
    #[serde(default)]
    pub transitions: u64,
    /// Each check of the real: its type, state, last result and since when.
    #[serde(default)]
    pub checks: Vec<CheckStatus>,
}

/// One check of a real, as `lbadm status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStatus {
    /// The `type` keyword.
    pub kind: String,
    pub health: Health,
    /// The last result: (success, detail).
    pub last: Option<(bool, String)>,
    /// Seconds since the result last changed between success and failure.
    pub since_secs: Option<u64>,
}

/// A request on its way to the driver, with where its answer goes.
pub type Call = (Request, oneshot::Sender<Response>);

/// How an answer that means "not now, the request was not read" begins: lbd serves a
/// bounded number of connections and listings at once, and tells the ones beyond so at
/// once. Sending the request again is safe.
pub const BUSY: &str = "busy:";

/// How long [`call`] goes on asking again while lbd says it is busy.
const BUSY_RETRY: Duration = Duration::from_secs(3);
/// How long [`call`] waits for an answer: a reload of the largest config takes seconds.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The client side, for lbadm and the tests: one request, one response. A busy lbd is
/// asked again for up to 3 s.
pub fn call(socket: &Path, request: &Request) -> Result<Response> {
    let deadline = Instant::now() + BUSY_RETRY;
    let mut pause = Duration::from_millis(20);
    loop {
        let response = call_once(socket, request)?;
        match &response {
            Response::Error { message }
                if message.starts_with(BUSY) && Instant::now() + pause < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            _ => return Ok(response),
        }
    }
}

fn call_once(socket: &Path, request: &Request) -> Result<Response> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to lbd at {} (is lbd running?)", socket.display()))?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut out = serde_json::to_vec(request)?;
    out.push(b'\n');
    // lbd may answer (busy) and close before it reads the request: read its answer even
    // when the write failed.
    let wrote = stream.write_all(&out);
    let mut line = String::new();
    let read = std::io::BufReader::new(stream).read_line(&mut line);
    if line.is_empty() {
        wrote.context("sending the request to lbd")?;
        read.context("reading lbd's answer")?;
    }
    serde_json::from_str(&line).with_context(|| format!("bad response from lbd: {line:?}"))
}
