//! The YAML service definitions of SPEC.md: schema, parsing and validation, with no I/O
//! beyond reading the file. Every problem is reported as `FILE:LINE:COLUMN: message`, and a
//! config that has one is never applied.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de::Error as _};

/// One problem in a config file, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

/// Everything wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub struct Invalid(pub Vec<Problem>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub director: Director,
    /// VIP failover between directors (VRRPv3); none: a standalone director.
    #[serde(default)]
    pub ha: Option<Ha>,
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Director {
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Where the data plane is pinned so it outlives lbd (`director.pin_root`).
    #[serde(default = "default_pin_root")]
    pub pin_root: PathBuf,
    /// How many services the data plane's maps are sized for (`director.max_vips`).
    #[serde(default = "default_max_vips")]
    pub max_vips: u32,
    /// How many reals, over all services, the data plane's maps are sized for
    /// (`director.max_reals`); a real listed in two services takes two.
    #[serde(default = "default_max_reals")]
    pub max_reals: u32,
}

/// The most `recover` steps a service may list.
pub const MAX_RECOVER_STEPS: usize = 16;

/// `director.max_vips` when the config does not say.
pub const DEFAULT_MAX_VIPS: u32 = lb_common::MAX_VIPS;
/// `director.max_reals` when the config does not say.
pub const DEFAULT_MAX_REALS: u32 = lb_common::MAX_REALS;
/// The largest `director.max_vips` accepted.
pub const LIMIT_MAX_VIPS: u32 = lb_common::VIPS_LIMIT;
/// The largest `director.max_reals` accepted.
pub const LIMIT_MAX_REALS: u32 = lb_common::REALS_LIMIT;

pub fn default_pin_root() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/lbd")
}

pub fn default_socket() -> PathBuf {
    PathBuf::from("/run/lbd/lbd.sock")
}

fn default_max_vips() -> u32 {
    DEFAULT_MAX_VIPS
}

fn default_max_reals() -> u32 {
    DEFAULT_MAX_REALS
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    #[serde(default)]
    pub forwarding: Forwarding,
    #[serde(default)]
    pub scheduler: Scheduler,
    #[serde(default)]
    pub persistence: Persistence,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// The sorry server: in the service's table only while none of its reals can take
    /// new connections (ldirectord's `fallback`).
    #[serde(default)]
    pub fallback: Option<RealAddress>,
    /// Run on every transition of a real, with UP or DOWN, and LBD_SERVICE, LBD_VIP,
    /// LBD_REAL in its environment.
    #[serde(default)]
    pub notify: Option<PathBuf>,
    /// Commands run while a real stays down, each once per outage (3RC's escalation).
    #[serde(default)]
    pub recover: Vec<RecoverStep>,
    #[serde(default)]
    pub check: Option<Check>,
    #[serde(default)]
    pub checks: Option<Vec<Check>>,
    pub reals: Vec<Real>,
}

/// One step of `recover`: `command` (by `/bin/sh -c`) once a real has been down `after`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverStep {
    #[serde(deserialize_with = "after")]
    pub after: Duration,
    pub command: String,
}

fn after<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    duration(d, "after", Some((Duration::from_secs(7 * 24 * 3600), "a recover step may wait")))
}

impl Service {
    /// The checks a real of this service must all pass to be up (none: always up).
    pub fn all_checks(&self) -> Vec<Check> {
        match (&self.check, &self.checks) {
            (Some(c), _) => vec![c.clone()],
            (None, Some(cs)) => cs.clone(),
            (None, None) => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }
}

/// The `ha` section: VRRPv3 between two or three directors.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ha {
    /// Where adverts go and the VIPs are added.
    pub interface: String,
    pub vrid: u8,
    /// 1..=254: the highest alive director is master.
    pub priority: u8,
    /// VRRPv3's advertisement interval, 10ms..=40.95s in centiseconds.
    #[serde(default = "default_advert_interval", deserialize_with = "advert_interval")]
    pub advert_interval: Duration,
    #[serde(default = "default_true")]
    pub preempt: bool,
    #[serde(default, deserialize_with = "preempt_delay")]
    pub preempt_delay: Duration,
    /// The addresses that move (`192.0.2.10/32`, or without a prefix); none: every
    /// service VIP.
    #[serde(default)]
    pub vips: Option<Vec<HaVip>>,
    /// Unicast peers; none: the multicast group.
    #[serde(default)]
    pub peers: Vec<IpAddr>,
    /// Ping nodes (a gateway, a core switch): losing every one of them means FAULT.
    #[serde(default)]
    pub track_ping: Vec<IpAddr>,
    #[serde(default)]
    pub notify: Option<PathBuf>,
    #[serde(default, deserialize_with = "sync")]
    pub sync: Option<NotBuilt>,
}

impl Ha {
    /// The addresses that move with mastership: `vips`, else every service VIP, each once.
    pub fn vips(&self, services: &[Service]) -> Vec<IpAddr> {
        let mut vips: Vec<IpAddr> = match &self.vips {
            Some(v) => v.iter().map(|v| v.0).collect(),
            None => services.iter().map(|s| s.vip.ip()).collect(),
        };
        vips.sort();
        vips.dedup();
        vips
    }

    /// The interval in centiseconds, as adverts carry it.
    pub fn interval_cs(&self) -> u16 {
        (self.advert_interval.as_millis() / 10).clamp(1, 4095) as u16
    }
}

/// One address of `ha.vips`: `192.0.2.10/32`, `2001:db8::10/128` or a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaVip(pub IpAddr);

impl<'de> Deserialize<'de> for HaVip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (ip, prefix) = s.split_once('/').unwrap_or((&s, ""));
        let ip: IpAddr = ip.parse().map_err(|_| {
            D::Error::custom(format!(
                "`{s}` is not an address: write 192.0.2.10/32 or 2001:db8::10/128"
            ))
        })?;
        let full = if ip.is_ipv4() { "32" } else { "128" };
        if !prefix.is_empty() && prefix != full {
            return Err(D::Error::custom(format!(
                "`{s}`: a VIP is one address: write /{full} or no prefix"
            )));
        }
        Ok(HaVip(ip))
    }
}

fn default_advert_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_true() -> bool {
    true
}

fn advert_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let t = duration(
        d,
        "advert_interval",
        Some((Duration::from_millis(40_950), "VRRPv3's 12 bits of centiseconds allow")),
    )?;
    if t < Duration::from_millis(10) || t.as_nanos() % 10_000_000 != 0 {
        return Err(D::Error::custom(format!(
            "advert_interval: {t:?} is not a whole number of centiseconds from 10ms (VRRPv3's resolution)"
        )));
    }
    Ok(t)
}

fn preempt_delay<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    duration(d, "preempt_delay", Some((Duration::from_secs(3600), "preempt_delay may be")))
}

/// `sync`, refused under its own key (not built yet).
fn sync<'de, D: Deserializer<'de>>(_: D) -> Result<Option<NotBuilt>, D::Error> {
    Err(D::Error::custom("sync: connection sync is not built yet in this version of lbd"))
}

/// A key that SPEC.md defines but this build does not implement yet: refused with a
/// message that says so, rather than accepted and ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct NotBuilt;

impl<'de> Deserialize<'de> for NotBuilt {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(D::Error::custom("is not built yet in this version of lbd"))
    }
}

/// Parses a lowercase keyword, telling apart the keywords of SPEC.md that are not built yet.
/// Errors of single values name their key first (`key: message`): the parser marks such
/// errors at the enclosing mapping, and [`parse`] moves the mark to the key's own position.
fn keyword<'de, D: Deserializer<'de>>(
    d: D,
    built: &[&str],
    planned: &[&str],
    key: &str,
) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if built.contains(&s.as_str()) {
        Ok(s)
    } else if planned.contains(&s.as_str()) {
        Err(D::Error::custom(format!(
            "{key}: `{s}` is not built yet in this version of lbd (built: {})",
            built.join(", ")
        )))
    } else {
        Err(D::Error::custom(format!(
            "{key}: unknown value `{s}`, expected one of: {}",
            built.iter().chain(planned).copied().collect::<Vec<_>>().join(", ")
        )))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Direct routing (LVS gatewaying).
    #[default]
    Dr,
    /// NAT (LVS masquerading): the reals' route back goes through the director.
    Nat,
    /// IP-in-IP (LVS tunnel): the reals decapsulate and answer directly.
    Tunnel,
}

impl<'de> Deserialize<'de> for Forwarding {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match keyword(d, &["dr", "nat", "tunnel"], &[], "forwarding")?.as_str() {
            "nat" => Ok(Forwarding::Nat),
            "tunnel" => Ok(Forwarding::Tunnel),
            _ => Ok(Forwarding::Dr),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduler {
    #[default]
    Maglev,
}

impl<'de> Deserialize<'de> for Scheduler {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let planned = ["rr", "wrr", "lc", "wlc", "sh", "dh", "mh", "sed", "nq"];
        keyword(d, &["maglev"], &planned, "scheduler").map(|_| Scheduler::Maglev)
    }
}

/// Client affinity: only `0s` (off) is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Persistence;

impl<'de> Deserialize<'de> for Persistence {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = duration(d, "persistence", None)?;
        if t.is_zero() {
            Ok(Persistence)
        } else {
            Err(D::Error::custom(
                "persistence: other than 0s is not built yet in this version of lbd",
            ))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Weight 0: no new connections, established ones go on (ldirectord's quiescent=yes).
    #[default]
    Quiesce,
    /// Taken out of the service; its flows are scheduled again.
    Remove,
}

/// A duration written with its unit (`100ms`, `2s`, `5m`), as SPEC.md requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

/// The most checks a service may list (each real runs every one of them).
pub const MAX_CHECKS: usize = 16;
/// The longest path a Unix socket may have (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The longest a check's `interval` or `timeout` may be.
pub const MAX_CHECK_PERIOD: Duration = Duration::from_secs(3600);

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let too_long = || format!("`{}` is too long for a duration", s.trim());
        let n = nanos(s)?.ok_or_else(too_long)?;
        let secs = u64::try_from(n / 1_000_000_000).map_err(|_| too_long())?;
        Ok(Seconds(Duration::new(secs, (n % 1_000_000_000) as u32)))
    }
}

/// The nanoseconds a duration string says, exactly as written in decimal (a fraction past
/// the nanosecond is dropped), or None when that is past any number lbd keeps. Parsing
/// through floating point made `0.3s` and `300ms` differ, and panicked past `Duration`.
fn nanos(s: &str) -> Result<Option<u128>, String> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err(format!("`{s}` is negative: write 0s or more"));
    }
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let (whole, fraction) = num.split_once('.').unwrap_or((num, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(format!(
            "`{s}` is not a duration: write a number and a unit, like 2s or 100ms"
        ));
    }
    let unit: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => return Err(format!("`{s}` has no unit: write {s}s or {s}ms")),
        other => {
            return Err(format!("unknown unit `{other}` in `{s}`: use ms, s, m or h"));
        }
    };
    let digits = |d: &str| {
        d.bytes().try_fold(0u128, |n, b| n.checked_mul(10)?.checked_add(u128::from(b - b'0')))
    };
    // 20 digits of fraction are more than a nanosecond of an hour needs, and fit a u128.
    let fraction = &fraction[..fraction.len().min(20)];
    let Some(scale) = 10u128.checked_pow(fraction.len() as u32) else { return Ok(None) };
    let part = digits(fraction).map_or(0, |f| f * unit / scale);
    Ok(digits(whole).and_then(|w| w.checked_mul(unit)).and_then(|w| w.checked_add(part)))
}

/// Deserializes the duration under `key`, at most `max` (`what` says what the bound is
/// for); a bare number (`interval: 2`) is refused.
fn duration<'de, D: Deserializer<'de>>(
    d: D,
    key: &str,
    max: Option<(Duration, &str)>,
) -> Result<Duration, D::Error> {
    let s = match yaml_serde::Value::deserialize(d)? {
        yaml_serde::Value::String(s) => s,
        yaml_serde::Value::Number(n) if n.as_f64().is_some_and(|f| f.is_finite() && f >= 0.0) => {
            return Err(D::Error::custom(format!("{key}: `{n}` has no unit: write {n}s or {n}ms")));
        }
        yaml_serde::Value::Number(n) => {
            return Err(D::Error::custom(format!(
                "{key}: `{n}` is not a duration: write a number and a unit, like 2s or 100ms"
            )));
        }
        _ => {
            return Err(D::Error::custom(format!(
                "{key}: expected a duration such as 2s or 100ms"
            )));
        }
    };
    let n = nanos(&s).map_err(|e| D::Error::custom(format!("{key}: {e}")))?;
    if let Some((max, what)) = max
        && n.is_none_or(|n| n > max.as_nanos())
    {
        return Err(D::Error::custom(format!(
            "{key}: `{}` is longer than {}, the most {what}",
            s.trim(),
            human(max)
        )));
    }
    s.parse::<Seconds>().map(|s| s.0).map_err(|e| D::Error::custom(format!("{key}: {e}")))
}

/// A bound as the config writes durations (`1h`, `90s`, `100ms`).
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        _ if ms.is_multiple_of(3_600_000) && ms > 0 => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) && ms > 0 => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

const CHECK_PERIOD: Option<(Duration, &str)> =
    Some((MAX_CHECK_PERIOD, "a check's interval or timeout may be"));

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d, "interval", CHECK_PERIOD).map(Some)
}

fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d, "timeout", CHECK_PERIOD).map(Some)
}

/// The `type` key of a check, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckType {
    Tcp,
    Udp,
    Http,
    Https,
    Dns,
    Ldap,
    Ping,
    Exec,
    None,
}

impl<'de> Deserialize<'de> for CheckType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let built = ["tcp", "udp", "http", "https", "dns", "ldap", "ping", "exec", "none"];
        match keyword(d, &built, &[], "type")?.as_str() {
            "tcp" => Ok(CheckType::Tcp),
            "udp" => Ok(CheckType::Udp),
            "http" => Ok(CheckType::Http),
            "https" => Ok(CheckType::Https),
            "dns" => Ok(CheckType::Dns),
            "ldap" => Ok(CheckType::Ldap),
            "ping" => Ok(CheckType::Ping),
            "exec" => Ok(CheckType::Exec),
            _ => Ok(CheckType::None),
        }
    }
}

/// One health check: what every type shares, with the defaults of SPEC.md's example
/// filled in, and the probe with only its own type's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub probe: Probe,
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// The state before the first result (`initial`); None: the first result decides.
    pub initial: Option<Initial>,
}

/// A check's state before its first result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Initial {
    Up,
    Down,
}

/// What a check sends and what counts as up: one variant per `type`, each holding its
/// own keys. The checkers dispatch on it in one place (health::probe).
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// Up when a connection to the port completes.
    Tcp,
    /// Up when `send` gets an answer (holding `expect`, if given).
    Udp(UdpCheck),
    Http(HttpCheck),
    /// HTTP over TLS: `host` also sent as SNI; the certificate taken as it comes unless
    /// `tls_verify` (against `ca_file`), as ldirectord and keepalived take it.
    Https(HttpsCheck),
    /// Up when `query` is answered NOERROR (with `expect` among the answers, if given).
    Dns(DnsCheck),
    /// Up when a search of `base` with `filter` (anonymous, or bound as `bind_dn`) finds
    /// an entry.
    Ldap(LdapCheck),
    /// Up when an ICMP or ICMPv6 echo is answered.
    Ping,
    /// Up when the command exits 0; an integer on its stdout becomes the real's weight.
    Exec(ExecCheck),
    /// Always up.
    None,
}

impl Probe {
    /// The `type` keyword, for logs and status.
    pub fn name(&self) -> &'static str {
        match self {
            Probe::Tcp => "tcp",
            Probe::Udp(_) => "udp",
            Probe::Http(_) => "http",
            Probe::Https(_) => "https",
            Probe::Dns(_) => "dns",
            Probe::Ldap(_) => "ldap",
            Probe::Ping => "ping",
            Probe::Exec(_) => "exec",
            Probe::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpsCheck {
    pub http: HttpCheck,
    /// Verify the real's certificate (against `ca_file`); default false: a real's
    /// self-signed certificate still counts as up.
    pub tls_verify: bool,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecCheck {
    /// A command line, run by `/bin/sh -c` as keepalived runs a MISC_CHECK's.
    pub command: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UdpCheck {
    /// The datagram's payload, as written (UTF-8).
    pub send: String,
    pub expect: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsCheck {
    /// The name asked for, checked as a domain name when read.
    pub query: String,
    /// The record type asked for (`A`, `AAAA`, `TXT`, `SOA`, ...), checked when read.
    pub qtype: String,
    /// An answer that must be among the records, as it prints (`192.0.2.1`, a TXT's text).
    pub expect: Option<String>,
    /// As written; None: the service's own protocol, so a DNS service offered over UDP and
    /// TCP is checked over each ([`parse`] fills it in).
    pub transport: Option<DnsTransport>,
}

impl DnsCheck {
    /// The transport the query goes over (UDP where no service said otherwise).
    pub fn transport(&self) -> DnsTransport {
        self.transport.unwrap_or(DnsTransport::Udp)
    }
}

/// An LDAP search, as ldirectord's `checktype = ldap`: one entry at `base` that matches
/// `filter` (a base-scope search: it reads one entry, however large the directory).
#[derive(Debug, Clone, PartialEq)]
pub struct LdapCheck {
    /// The entry searched; the default, empty, is the root DSE, which every server has.
    pub base: String,
    /// An RFC 4515 filter, checked when read; default `(objectClass=*)`.
    pub filter: String,
    /// Bound as this DN (simple bind) with the password in `password_file`; anonymous
    /// when absent.
    pub bind: Option<LdapBind>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LdapBind {
    pub dn: String,
    /// Read at each probe, so a rotated password needs no reload; its trailing newline is
    /// not part of the password.
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsTransport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    pub path: String,
    pub host: Option<String>,
    pub expect_status: u16,
    pub expect_body: Option<String>,
}

/// Every key any check type takes, as the parser sees them: one flat mapping, so an
/// unknown key is reported at its own line. [`Check::try_from`] sorts them by type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(rename = "type")]
    kind: CheckType,
    port: Option<u16>,
    #[serde(default, deserialize_with = "interval")]
    interval: Option<Duration>,
    #[serde(default, deserialize_with = "timeout")]
    timeout: Option<Duration>,
    rise: Option<u32>,
    fall: Option<u32>,
    initial: Option<Initial>,
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<u16>,
    expect_body: Option<String>,
    send: Option<String>,
    expect: Option<String>,
    query: Option<String>,
    qtype: Option<String>,
    transport: Option<DnsTransport>,
    command: Option<String>,
    tls_verify: Option<bool>,
    ca_file: Option<PathBuf>,
    base: Option<String>,
    filter: Option<String>,
    bind_dn: Option<String>,
    password_file: Option<PathBuf>,
}

/// A check is read as its [`RawCheck`] and then sorted by type, inside the check's own
/// mapping: so the parser names a problem found in the sorting by the check's path
/// (`services[0].checks[1]: ...`) and marks it there, not at the service.
impl<'de> Deserialize<'de> for Check {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = Check;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("struct RawCheck")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Check, A::Error> {
                let raw = RawCheck::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Check::try_from(raw).map_err(A::Error::custom)
            }
        }
        d.deserialize_map(Keys)
    }
}

impl TryFrom<RawCheck> for Check {
    type Error = String;
    fn try_from(r: RawCheck) -> Result<Self, String> {
        let interval = r.interval.unwrap_or(Duration::from_secs(2));
        let timeout = r.timeout.unwrap_or(Duration::from_secs(1));
        let rise = r.rise.unwrap_or(2);
        let fall = r.fall.unwrap_or(3);
        if interval < Duration::from_millis(10) {
            return Err("interval must be at least 10ms".into());
        }
        if timeout.is_zero() || timeout > interval {
            return Err(format!(
                "timeout ({timeout:?}) must be above zero and at most the interval ({interval:?})"
            ));
        }
        if rise == 0 || fall == 0 {
            return Err("rise and fall must be at least 1".into());
        }
        if r.port == Some(0) {
            return Err(
                "port: 0 is not a port: write 1 to 65535, or leave port out for the real's".into(),
            );
        }
        let http_keys = r.path.is_some()
            || r.host.is_some()
            || r.expect_status.is_some()
            || r.expect_body.is_some();
        let tls_keys = r.tls_verify.is_some() || r.ca_file.is_some();
        if tls_keys && r.kind != CheckType::Https {
            return Err("tls_verify and ca_file apply to https checks".into());
        }
        if r.tls_verify == Some(true) && r.ca_file.is_none() {
            return Err("tls_verify: verifying needs ca_file, the CA to verify the real's certificate against".into());
        }
        let probe = match r.kind {
            CheckType::Http | CheckType::Https => {
                let path = r.path.unwrap_or_else(|| "/".into());
                // Written into the request line and its Host header as they are.
                let clean = |s: &str| !s.chars().any(|c| c.is_whitespace() || c.is_control());
                if !path.starts_with('/') || !clean(&path) {
                    return Err(format!(
                        "path: `{path}` is not a request path: start it with / and leave out spaces and control characters"
                    ));
                }
                if let Some(host) = r.host.as_deref().filter(|h| h.is_empty() || !clean(h)) {
                    return Err(format!(
                        "host: `{host}` is not a host name: leave out spaces and control characters"
                    ));
                }
                let expect_status = r.expect_status.unwrap_or(200);
                if !(100..=599).contains(&expect_status) {
                    return Err(format!(
                        "expect_status: {expect_status} is not an HTTP status: write 100 to 599"
                    ));
                }
                let http =
                    HttpCheck { path, host: r.host, expect_status, expect_body: r.expect_body };
                if r.kind == CheckType::Https {
                    Probe::Https(HttpsCheck {
                        http,
                        tls_verify: r.tls_verify.unwrap_or(false),
                        ca_file: r.ca_file,
                    })
                } else {
                    Probe::Http(http)
                }
            }
            other if http_keys => {
                return Err(format!(
                    "path, host, expect_status and expect_body apply to http checks, not to {}",
                    format!("{other:?}").to_lowercase()
                ));
            }
            CheckType::Udp => {
                if r.query.is_some() || r.qtype.is_some() || r.transport.is_some() {
                    return Err("query, qtype and transport apply to dns checks, not to udp".into());
                }
                let send = r.send.ok_or("send: a udp check needs the datagram to send")?;
                if send.is_empty() {
                    return Err("send: an empty datagram draws no answer: give it content".into());
                }
                Probe::Udp(UdpCheck { send, expect: r.expect })
            }
            CheckType::Dns => {
                if r.send.is_some() {
                    return Err("send applies to udp checks: a dns check sends its query".into());
                }
                let query = r.query.ok_or("query: a dns check needs the name to ask for")?;
                hickory_proto::rr::Name::from_ascii(&query)
                    .map_err(|e| format!("query: `{query}` is not a domain name: {e}"))?;
                let qtype = r.qtype.unwrap_or_else(|| "A".into()).to_ascii_uppercase();
                qtype.parse::<hickory_proto::rr::RecordType>().map_err(|_| {
                    format!("qtype: `{qtype}` is not a DNS record type (A, AAAA, TXT, SOA, ...)")
                })?;
                Probe::Dns(DnsCheck { query, qtype, expect: r.expect, transport: r.transport })
            }
            other
                if r.send.is_some()
                    || r.expect.is_some()
                    || r.query.is_some()
                    || r.qtype.is_some()
                    || r.transport.is_some() =>
            {
                return Err(format!(
                    "send, expect, query, qtype and transport apply to udp and dns checks, not to {}",
                    format!("{other:?}").to_lowercase()
                ));
            }
            CheckType::Ldap => {
                Probe::Ldap(ldap_check(r.base, r.filter, r.bind_dn, r.password_file)?)
            }
            _ if r.base.is_some()
                || r.filter.is_some()
                || r.bind_dn.is_some()
                || r.password_file.is_some() =>
            {
                return Err("base, filter, bind_dn and password_file apply to ldap checks".into());
            }
            CheckType::Exec => {
                let command = r.command.ok_or("command: an exec check needs the command to run")?;
                if command.trim().is_empty() || command.contains('\0') {
                    return Err("command: give a command line to run".into());
                }
                Probe::Exec(ExecCheck { command })
            }
            _ if r.command.is_some() => {
                return Err("command applies to exec checks".into());
            }
            CheckType::Tcp => Probe::Tcp,
            CheckType::Ping => Probe::Ping,
            CheckType::None => Probe::None,
        };
        Ok(Check { probe, port: r.port, interval, timeout, rise, fall, initial: r.initial })
    }
}

/// An ldap check's own keys, checked: a filter that parses, a DN and its password together.
fn ldap_check(
    base: Option<String>,
    filter: Option<String>,
    bind_dn: Option<String>,
    password_file: Option<PathBuf>,
) -> Result<LdapCheck, String> {
    let filter = filter.unwrap_or_else(|| "(objectClass=*)".into());
    if ldap3::parse_filter(&filter).is_err() {
        return Err(format!(
            "filter: `{filter}` is not an LDAP filter: write one as RFC 4515 does, like (objectClass=*) or (&(uid=check)(objectClass=person))"
        ));
    }
    let bind = match (bind_dn, password_file) {
        (Some(dn), Some(password_file)) if !dn.trim().is_empty() => {
            Some(LdapBind { dn, password_file })
        }
        (Some(_), Some(_)) => return Err("bind_dn: give the DN to bind as".into()),
        (Some(_), None) => {
            return Err("bind_dn: a bind needs password_file, the file holding its password".into());
        }
        (None, Some(_)) => {
            return Err("password_file: a password needs bind_dn, the DN it is for".into());
        }
        (None, None) => None,
    };
    Ok(LdapCheck { base: base.unwrap_or_default(), filter, bind })
}

/// A real server: `address` is an IP, optionally with a port (`10.0.0.11:8080`,
/// `[2001:db8::11]:80`); without one it takes the VIP's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Real {
    pub address: RealAddress,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealAddress {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl<'de> Deserialize<'de> for RealAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(RealAddress { ip, port: None });
        }
        match s.parse::<SocketAddr>() {
            Ok(sa) => Ok(RealAddress { ip: sa.ip(), port: Some(sa.port()) }),
            Err(_) => Err(D::Error::custom(format!(
                "address: `{s}` is not an address: write 10.0.0.11, 10.0.0.11:80 or [2001:db8::11]:80"
            ))),
        }
    }
}

impl Real {
    pub fn socket_addr(&self, vip: &SocketAddr) -> SocketAddr {
        self.address.socket_addr(vip)
    }
}

impl RealAddress {
    /// With the VIP's port when it names none.
    pub fn socket_addr(&self, vip: &SocketAddr) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.unwrap_or(vip.port()))
    }
}

/// The most bytes of a config file lbd reads.
pub const MAX_CONFIG_BYTES: usize = 16 << 20;
/// The deepest collections may nest in a config (the schema nests 5: the services, a
/// service, its checks, a check).
pub const MAX_DEPTH: usize = 64;
/// The most nodes a config may have, counting every node an alias repeats (1024 services
/// of 64 reals take under 400,000).
pub const MAX_NODES: usize = 1 << 20;

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, Invalid> {
    use std::io::Read as _;
    let refuse = |line, column, message: String| {
        Invalid(vec![Problem { file: path.into(), line, column, message }])
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| refuse(0, 0, format!("cannot read: {e}")))?;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(refuse(1, 1, too_large()));
    }
    match String::from_utf8(bytes) {
        Ok(text) => parse(path, &text),
        Err(e) => {
            let bytes = e.as_bytes();
            let bad = e.utf8_error().valid_up_to();
            let (line, column) = position(bytes, bad);
            Err(refuse(
                line,
                column,
                format!(
                    "not UTF-8: byte 0x{:02x} does not begin a character here; write the config as UTF-8 text",
                    bytes[bad]
                ),
            ))
        }
    }
}

fn too_large() -> String {
    format!(
        "the file is larger than {} MiB, the most lbd reads of a config",
        MAX_CONFIG_BYTES >> 20
    )
}

/// What makes a document too costly to read, found in one pass over the events of
/// saphyr-parser before serde sees it: collections nested deeper than [`MAX_DEPTH`]
/// (serde's parser takes time quadratic in the depth), more than [`MAX_NODES`] nodes
/// counting what aliases repeat (a "billion laughs"), an alias inside the node it names,
/// and YAML that does not parse. Stops at the first, with its location (line, column).
fn shape_problem(text: &str) -> Option<((usize, usize), String)> {
    use saphyr_parser::{Event, Parser};
    struct Open {
        anchor: usize,
        /// `nodes` when it opened.
        nodes_before: usize,
        /// Collections nested in it, itself included.
        height: usize,
    }
    let deep = || {
        format!("collections nested more than {MAX_DEPTH} deep (lbd's schema nests 5): flatten it")
    };
    let mut open: Vec<Open> = Vec::new();
    // Anchored nodes by id, once closed: (nodes, height).
    let mut anchors: std::collections::HashMap<usize, (usize, usize)> = Default::default();
    let mut nodes = 0usize;
    // The top-level key whose value is being read, to name the section in messages.
    let mut section: Option<String> = None;
    let (mut root_map, mut root_key_next) = (false, false);
    for event in Parser::new_from_str(text) {
        let (event, span) = match event {
            Ok(e) => e,
            Err(e) => {
                let at = (e.marker().line(), e.marker().col() + 1);
                // saphyr stops at 255 flow levels, before it hands out the 65th.
                let message = if e.info() == "recursion limit exceeded" {
                    deep()
                } else {
                    format!("invalid YAML: {}", e.info())
                };
                return Some((at, named(&section, message)));
            }
        };
        let at = (span.start.line(), span.start.col() + 1);
        if open.len() == 1 && root_map {
            // The value of a top-level key, or the next key.
            match &event {
                Event::Scalar(key, ..) if root_key_next => {
                    section = Some(key.to_string());
                    root_key_next = false;
                }
                Event::SequenceEnd | Event::MappingEnd => {}
                _ => root_key_next = true,
            }
        }
        let (added, height) = match event {
            Event::Scalar(_, _, anchor, _) => {
                if anchor != 0 {
                    anchors.insert(anchor, (1, 0));
                }
                (1, 0)
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(&(n, h)) => (n, h),
                None if open.iter().any(|o| o.anchor == id) => {
                    let message = "this alias names a node it is inside of, which has no end";
                    return Some((at, named(&section, message.into())));
                }
                None => (0, 0),
            },
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if open.len() >= MAX_DEPTH {
                    return Some((at, named(&section, deep())));
                }
                nodes += 1;
                if open.is_empty() {
                    root_map = matches!(event, Event::MappingStart(..));
                    root_key_next = root_map;
                    section = None;
                }
                open.push(Open { anchor, nodes_before: nodes - 1, height: 1 });
                (0, 0)
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(done) = open.pop() else { continue };
                if done.anchor != 0 {
                    anchors.insert(done.anchor, (nodes - done.nodes_before, done.height));
                }
                if let Some(parent) = open.last_mut() {
                    parent.height = parent.height.max(done.height + 1);
                }
                (0, 0)
            }
            Event::DocumentStart(_) => {
                section = None;
                continue;
            }
            _ => continue,
        };
        if open.len() + height > MAX_DEPTH {
            return Some((at, named(&section, deep())));
        }
        if let Some(parent) = open.last_mut() {
            parent.height = parent.height.max(height + 1);
        }
        nodes = nodes.saturating_add(added);
        if nodes > MAX_NODES {
            let message =
                format!("more than {MAX_NODES} nodes, counting every node an alias repeats");
            return Some((at, named(&section, message)));
        }
    }
    None
}

/// `message` under the top-level key it concerns, if there is one.
fn named(section: &Option<String>, message: String) -> String {
    match section {
        Some(key) => format!("{key}: {message}"),
        None => message,
    }
}

/// `at` (line, column), moved into the text if the parser put it past the end: the end of
/// a text without a last newline is marked on a line after the last, and a column past a
/// line's end is that end. `lines` holds the length of each line, in characters.
fn within(lines: &[usize], (line, column): (usize, usize)) -> (usize, usize) {
    match lines.get(line.max(1) - 1) {
        Some(&length) => (line.max(1), column.clamp(1, length + 1)),
        None => (lines.len().max(1), lines.last().map_or(0, |&l| l) + 1),
    }
}

/// Line and column (1-based, the column in characters) of byte `at` of `bytes`, whose
/// first `at` bytes are UTF-8.
fn position(bytes: &[u8], at: usize) -> (usize, usize) {
    let before = std::str::from_utf8(&bytes[..at]).unwrap_or_default();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// Parses and validates config text; `path` only names the file in problems.
pub fn parse(path: &Path, text: &str) -> Result<Config, Invalid> {
    // The length of each line, in characters, counted once however many problems.
    let lines: std::cell::OnceCell<Vec<usize>> = std::cell::OnceCell::new();
    let problem = |at: (usize, usize), message: String| {
        let lines = lines.get_or_init(|| text.split('\n').map(|l| l.chars().count()).collect());
        let (line, column) = within(lines, at);
        Problem { file: path.into(), line, column, message: one_line(&message) }
    };
    if text.len() > MAX_CONFIG_BYTES {
        return Err(Invalid(vec![problem((1, 1), too_large())]));
    }
    if let Some((at, message)) = shape_problem(text) {
        return Err(Invalid(vec![problem(at, message)]));
    }
    let mut config: Config = yaml_serde::from_str(text).map_err(|e| {
        let (at, message) = parser_problem(&Spans::of(text), &e);
        Invalid(vec![problem(at, message)])
    })?;
    fill_service_defaults(&mut config);
    let found = validate(&config);
    if found.is_empty() {
        return Ok(config);
    }
    let spans = Spans::of(text);
    Err(Invalid(
        found.into_iter().map(|(node, message)| problem(spans.key(&node), message)).collect(),
    ))
}

/// What a reload from the config lbd started with to `new` leaves for a restart, as the
/// keys an operator changed: the director section (interfaces, socket, maps), and of `ha`
/// all but `priority` (the failover tasks, their sockets, fence and VIP set are made at
/// start), the VIP addresses it moves among them. A reload still applies the services; the
/// answer says what waits, so nothing is left unsaid.
pub fn restart_only(started: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (&started.director, &new.director);
    // Every field of both sections is compared below or is a reload's own (priority,
    // sync, which is refused): a field added later fails to compile until it is sorted.
    let Director {
        interfaces: _,
        xdp_mode: _,
        socket: _,
        metrics: _,
        pin_root: _,
        max_vips: _,
        max_reals: _,
    } = a;
    if let Some(Ha {
        interface: _,
        vrid: _,
        priority: _,
        advert_interval: _,
        preempt: _,
        preempt_delay: _,
        vips: _,
        peers: _,
        track_ping: _,
        notify: _,
        sync: _,
    }) = &started.ha
    {}
    // The keys whose values differ.
    let changed = |keys: &[(&str, bool)]| -> Vec<String> {
        keys.iter().filter(|(_, differs)| *differs).map(|(key, _)| key.to_string()).collect()
    };
    let mut keys = changed(&[
        ("director.interfaces", a.interfaces != b.interfaces),
        ("director.xdp_mode", a.xdp_mode != b.xdp_mode),
        ("director.socket", a.socket != b.socket),
        ("director.metrics", a.metrics != b.metrics),
        ("director.pin_root", a.pin_root != b.pin_root),
        ("director.max_vips", a.max_vips != b.max_vips),
        ("director.max_reals", a.max_reals != b.max_reals),
    ]);
    match (&started.ha, &new.ha) {
        (None, None) => {}
        (None, Some(_)) => keys.push("ha (added)".into()),
        (Some(_), None) => keys.push("ha (removed)".into()),
        (Some(a), Some(b)) => {
            keys.extend(changed(&[
                ("ha.interface", a.interface != b.interface),
                ("ha.vrid", a.vrid != b.vrid),
                ("ha.advert_interval", a.advert_interval != b.advert_interval),
                ("ha.preempt", a.preempt != b.preempt),
                ("ha.preempt_delay", a.preempt_delay != b.preempt_delay),
                ("ha.peers", a.peers != b.peers),
                ("ha.track_ping", a.track_ping != b.track_ping),
                ("ha.notify", a.notify != b.notify),
            ]));
            // `ha.vips`, or every service VIP when it is not given: a service on a new
            // address is served, but not moved (added, announced) on failover yet.
            let (was, now) = (a.vips(&started.services), b.vips(&new.services));
            let added: Vec<String> =
                now.iter().filter(|v| !was.contains(v)).map(ToString::to_string).collect();
            let gone: Vec<String> =
                was.iter().filter(|v| !now.contains(v)).map(ToString::to_string).collect();
            if !added.is_empty() {
                keys.push(format!("the VIPs failover moves ({} added)", added.join(", ")));
            }
            if !gone.is_empty() {
                keys.push(format!("the VIPs failover moves ({} gone)", gone.join(", ")));
            }
        }
    }
    keys
}

/// The defaults of a check that depend on its service: a dns check without `transport`
/// asks over the service's own protocol, so the UDP and the TCP service of one DNS VIP are
/// each checked the way their clients reach them.
fn fill_service_defaults(config: &mut Config) {
    for s in &mut config.services {
        let transport = match s.protocol {
            Protocol::Udp => DnsTransport::Udp,
            Protocol::Tcp => DnsTransport::Tcp,
        };
        for c in s.check.iter_mut().chain(s.checks.iter_mut().flatten()) {
            if let Probe::Dns(d) = &mut c.probe {
                d.transport.get_or_insert(transport);
            }
        }
    }
}

/// What `lbd --check` warns of in a valid config: a check that cannot see the service it
/// guards (a TCP connect to a UDP DNS service: the wrong-monitoring mistake of classic
/// LVS sites), a timeout that leaves no pause between probes. Warnings change nothing: the
/// config is valid. Each is located at its check, as `FILE:LINE:COLUMN: warning: ...`.
pub fn warnings(path: &Path, text: &str, config: &Config) -> Vec<Problem> {
    let found = lint(config);
    if found.is_empty() {
        return Vec::new();
    }
    let spans = Spans::of(text);
    let lines: Vec<usize> = text.split('\n').map(|l| l.chars().count()).collect();
    found
        .into_iter()
        .map(|(node, message)| {
            let (line, column) = within(&lines, spans.key(&node));
            Problem { file: path.into(), line, column, message: format!("warning: {message}") }
        })
        .collect()
}

/// The warnings of [`warnings`], each with the path of the check it is about.
pub fn lint(config: &Config) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (i, s) in config.services.iter().enumerate() {
        let checks: Vec<(String, &Check)> = match (&s.check, &s.checks) {
            (Some(c), _) => vec![(format!("services[{i}].check"), c)],
            (None, Some(cs)) => cs
                .iter()
                .enumerate()
                .map(|(j, c)| (format!("services[{i}].checks[{j}]"), c))
                .collect(),
            (None, None) => Vec::new(),
        };
        let udp = s.protocol == Protocol::Udp;
        let service = if udp { "UDP" } else { "TCP" };
        for (path, c) in checks {
            let sees = match &c.probe {
                Probe::Tcp | Probe::Http(_) | Probe::Https(_) => !udp,
                Probe::Udp(_) => udp,
                Probe::Dns(d) => (d.transport() == DnsTransport::Udp) == udp,
                Probe::Ldap(_) => !udp,
                Probe::Ping | Probe::Exec(_) | Probe::None => true,
            };
            // A check on another port looks at another service, on purpose.
            if !sees && c.port.is_none_or(|p| p == s.vip.port()) {
                let kind = match &c.probe {
                    Probe::Dns(d) => format!("a dns check over {:?}", d.transport())
                        .to_lowercase()
                        .replace("over udp", "over UDP")
                        .replace("over tcp", "over TCP"),
                    other => format!("a {} check", other.name()),
                };
                let better = if udp {
                    "dns (transport: udp) or udp"
                } else {
                    "tcp, http, ldap or dns (transport: tcp)"
                };
                found.push((
                    path.clone(),
                    format!("{path}: {kind} cannot see the {service} service {} it guards: check it with {better}", s.vip),
                ));
            }
            // Read by the checker at each probe: lbd starts without them, and the check
            // fails until they can be read.
            let files = match &c.probe {
                Probe::Https(h) => h.ca_file.as_deref().map(|f| ("ca_file", f)),
                Probe::Ldap(l) => l.bind.as_ref().map(|b| ("password_file", &*b.password_file)),
                _ => None,
            };
            if let Some((key, file)) = files
                && let Err(e) = std::fs::File::open(file)
            {
                found.push((
                    path.clone(),
                    format!(
                        "{path}: {key}: cannot read {} (as the user running this): {e}: the check fails while lbd cannot",
                        file.display()
                    ),
                ));
            }
            if c.timeout >= c.interval {
                found.push((
                    path.clone(),
                    format!(
                        "{path}: the timeout ({:?}) is not below the interval ({:?}): a real that hangs is probed again at once, back to back",
                        c.timeout, c.interval
                    ),
                ));
            }
        }
    }
    found
}

/// The location and message of an error of the parser. Its message starts with the path of
/// the node it concerns (`services[0].vip: ...`), and its location is that node's. Where the
/// message names a key inside that node (`services[0].check: interval: ...`, as [`keyword`]
/// and [`duration`] write them), the parser marks the mapping: the key's own position comes
/// from `spans`, and the key joins the path.
fn parser_problem(spans: &Spans, e: &yaml_serde::Error) -> ((usize, usize), String) {
    let full = e.to_string();
    let message = match full.rsplit_once(" at line ") {
        Some((m, _)) => m.to_string(),
        None => full,
    };
    let node = message.split_once(": ").filter(|(node, _)| !node.contains(' '));
    if let Some((node, rest)) = node
        && let Some((key, detail)) = rest.split_once(": ")
        && !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && let Some(spot) = spans.get(&join(node, key))
    {
        return (spot.key, format!("{node}.{key}: {detail}"));
    }
    let at = match e.location() {
        Some(l) => (l.line(), l.column()),
        // Unmarked: at the value of the node the message names, if it does.
        None => node.and_then(|(node, _)| spans.get(node)).map_or((1, 1), |spot| spot.value),
    };
    (at, message)
}

/// A message on one line: control characters (a newline in an offending value) are
/// escaped as Rust writes them (`\n`), so every line of the output starts with a location.
fn one_line(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// The path of `key` inside the node at `node`, written as the parser writes paths.
fn join(node: &str, key: &str) -> String {
    if node.is_empty() || node == "." { key.to_string() } else { format!("{node}.{key}") }
}

/// Where a node is in the text: line and column (1-based, the column in characters) of
/// its key and of its value. An item of a sequence has no key: both are the item's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spot {
    key: (usize, usize),
    value: (usize, usize),
}

/// Every node of the first document of a YAML text, by its path as the parser's errors
/// write it (`director.interfaces`, `services[1].reals[0].address`), from the positions
/// of the events of a YAML parser that reports them (saphyr), not from searching the text.
#[derive(Debug, Default)]
struct Spans(std::collections::HashMap<String, Spot>);

impl Spans {
    /// Indexes `text` as far as it parses.
    fn of(text: &str) -> Spans {
        use saphyr_parser::{Event, Parser};
        enum Open {
            Seq {
                path: String,
                next: usize,
            },
            /// A mapping, with the path and position of the key whose value comes next.
            Map {
                path: String,
                key: Option<(String, (usize, usize))>,
            },
        }
        let mut nodes = std::collections::HashMap::new();
        let mut open: Vec<Open> = Vec::new();
        for event in Parser::new_from_str(text) {
            let Ok((event, span)) = event else { break };
            let at = (span.start.line(), span.start.col() + 1);
            let seq = match event {
                Event::SequenceStart(..) => Some(true),
                Event::MappingStart(..) => Some(false),
                Event::Scalar(..) | Event::Alias(_) => None,
                Event::SequenceEnd | Event::MappingEnd => {
                    open.pop();
                    continue;
                }
                Event::DocumentEnd | Event::StreamEnd => break,
                _ => continue,
            };
            // The node's path, or None for a key (whose own inside, if it is a mapping
            // or a sequence, is not indexed).
            let path = match open.last_mut() {
                None => Some(String::new()),
                Some(Open::Seq { path, next }) => {
                    let p = format!("{path}[{next}]");
                    *next += 1;
                    nodes.entry(p.clone()).or_insert(Spot { key: at, value: at });
                    Some(p)
                }
                Some(Open::Map { path, key }) => match key.take() {
                    Some((p, key_at)) => {
                        nodes.entry(p.clone()).or_insert(Spot { key: key_at, value: at });
                        Some(p)
                    }
                    None => {
                        let name = match &event {
                            Event::Scalar(name, ..) => join(path, name),
                            _ => join(path, "?"),
                        };
                        *key = Some((name, at));
                        None
                    }
                },
            };
            if let Some(seq) = seq {
                let path = path.unwrap_or_else(|| "?".into());
                open.push(if seq {
                    Open::Seq { path, next: 0 }
                } else {
                    Open::Map { path, key: None }
                });
            }
        }
        Spans(nodes)
    }

    fn get(&self, path: &str) -> Option<Spot> {
        self.0.get(path).copied()
    }

    /// The position of the key of the node at `path`, or of its nearest ancestor that is
    /// in the text (a node reached through an alias is not), or 1:1.
    fn key(&self, path: &str) -> (usize, usize) {
        let mut path = path;
        loop {
            if let Some(spot) = self.get(path) {
                return spot.key;
            }
            match path.rfind(['.', '[']) {
                Some(i) => path = &path[..i],
                None => return (1, 1),
            }
        }
    }
}

/// The `ha` section's values and how they fit the services.
fn validate_ha(ha: &Ha, config: &Config, problems: &mut Vec<(String, String)>) {
    if !(1..=254).contains(&ha.priority) {
        problems.push((
            "ha.priority".into(),
            format!(
                "ha.priority: {} is not in 1..254 (255, the address owner, is not offered)",
                ha.priority
            ),
        ));
    }
    if ha.vrid == 0 {
        problems.push(("ha.vrid".into(), "ha.vrid: 0 is not a virtual router id: 1 to 255".into()));
    }
    if ha.interface.is_empty() || ha.interface.len() > 15 {
        problems.push((
            "ha.interface".into(),
            format!("ha.interface: `{}` is not an interface name", ha.interface),
        ));
    }
    let vips = ha.vips(&config.services);
    if vips.is_empty() {
        problems.push(("ha".into(), "ha: no VIP to move: list ha.vips or define a service".into()));
    }
    if vips.len() > 255 {
        problems.push((
            "ha.vips".into(),
            format!("ha.vips: {} addresses, more than an advert carries (255)", vips.len()),
        ));
    }
    if let Some(listed) = &ha.vips {
        for (i, s) in config.services.iter().enumerate() {
            if !listed.iter().any(|v| v.0 == s.vip.ip()) {
                problems.push((
                    format!("services[{i}].vip"),
                    format!(
                        "services[{i}].vip: {} is not in ha.vips: it would stay behind on failover",
                        s.vip.ip()
                    ),
                ));
            }
        }
    }
    for (i, p) in ha.peers.iter().enumerate() {
        if p.is_unspecified() || p.is_multicast() {
            problems.push((
                format!("ha.peers[{i}]"),
                format!("ha.peers[{i}]: {p} is not a peer's address"),
            ));
        }
    }
    for (i, p) in ha.track_ping.iter().enumerate() {
        let why = match p {
            _ if p.is_unspecified() || p.is_multicast() => Some("is not a node's address"),
            IpAddr::V4(a) if a.is_broadcast() => Some("is not a node's address"),
            // A link-local node needs a scope the list cannot give, and a mapped IPv4
            // address is an IPv4 node: write it as one.
            IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => {
                Some("is link-local: give the node's global or unique-local address")
            }
            IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
                Some("is an IPv4-mapped address: write the IPv4 address")
            }
            _ => None,
        };
        if let Some(why) = why {
            problems
                .push((format!("ha.track_ping[{i}]"), format!("ha.track_ping[{i}]: {p} {why}")));
        }
    }
}

/// Checks that span several keys. Each problem comes with the path of the node it is
/// located at.
fn validate(config: &Config) -> Vec<(String, String)> {
    let mut problems: Vec<(String, String)> = Vec::new();
    let d = &config.director;
    if let Some(ha) = &config.ha {
        validate_ha(ha, config, &mut problems);
    }
    for (i, sv) in config.services.iter().enumerate() {
        if sv.recover.len() > MAX_RECOVER_STEPS {
            problems.push((
                format!("services[{i}].recover"),
                format!(
                    "services[{i}].recover: {} steps, more than {MAX_RECOVER_STEPS}",
                    sv.recover.len()
                ),
            ));
        }
        for (j, step) in sv.recover.iter().enumerate() {
            if step.command.trim().is_empty() || step.command.contains('\0') {
                problems.push((
                    format!("services[{i}].recover[{j}].command"),
                    format!("services[{i}].recover[{j}].command: give a command line to run"),
                ));
            }
        }
    }
    let broadcast = |ip: IpAddr| matches!(ip, IpAddr::V4(a) if a.is_broadcast());
    if let Some(addr) = d.metrics
        && (addr.port() == 0 || addr.ip().is_multicast() || broadcast(addr.ip()))
    {
        problems.push((
            "director.metrics".into(),
            format!(
                "director.metrics: {addr} is not an address to listen on: give ADDR:PORT, like 127.0.0.1:9469"
            ),
        ));
    }
    if d.interfaces.is_empty() {
        problems.push((
            "director.interfaces".into(),
            "director.interfaces: name at least one interface".into(),
        ));
    }
    let mut interfaces = std::collections::HashSet::new();
    for (i, name) in d.interfaces.iter().enumerate() {
        let node = format!("director.interfaces[{i}]");
        // As the kernel's dev_valid_name: below IFNAMSIZ (16) bytes, no `/`, `:` or space.
        let valid = (1..16).contains(&name.len())
            && name != "."
            && name != ".."
            && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        if !valid {
            problems.push((
                node.clone(),
                format!(
                    "{node}: `{name}` is not an interface name: 1 to 15 bytes, without `/`, `:` or spaces"
                ),
            ));
        } else if !interfaces.insert(name) {
            problems.push((node.clone(), format!("{node}: {name} is listed twice")));
        }
    }
    if !d.pin_root.is_absolute() {
        problems.push((
            "director.pin_root".into(),
            format!(
                "director.pin_root: `{}` is not an absolute path (a directory on a bpffs)",
                d.pin_root.display()
            ),
        ));
    }
    let socket = d.socket.as_os_str().len();
    if socket == 0 {
        problems.push(("director.socket".into(), "director.socket: name a path".into()));
    } else if socket > MAX_SOCKET_PATH {
        problems.push((
            "director.socket".into(),
            format!(
                "director.socket: `{}` is longer than {MAX_SOCKET_PATH} bytes, the most a Unix socket's path may be",
                d.socket.display()
            ),
        ));
    }
    let max_vips_ok = (1..=LIMIT_MAX_VIPS).contains(&d.max_vips);
    if !max_vips_ok {
        problems.push((
            "director.max_vips".into(),
            format!(
                "director.max_vips: {} is out of range: the data plane holds 1 to {LIMIT_MAX_VIPS} services",
                d.max_vips
            ),
        ));
    }
    let max_reals_ok = (1..=LIMIT_MAX_REALS).contains(&d.max_reals);
    if !max_reals_ok {
        problems.push((
            "director.max_reals".into(),
            format!(
                "director.max_reals: {} is out of range: the data plane holds 1 to {LIMIT_MAX_REALS} reals",
                d.max_reals
            ),
        ));
    }
    if max_vips_ok && config.services.len() > d.max_vips as usize {
        problems.push((
            "services".into(),
            format!(
                "services: {} services, more than director.max_vips ({}): raise director.max_vips (at most {LIMIT_MAX_VIPS})",
                config.services.len(),
                d.max_vips
            ),
        ));
    }
    let total_reals: usize =
        config.services.iter().map(|s| s.reals.len() + usize::from(s.fallback.is_some())).sum();
    if max_reals_ok && total_reals > d.max_reals as usize {
        let limit = d.max_reals as usize;
        let mut before = 0;
        let first = config.services.iter().enumerate().find_map(|(i, s)| {
            let j = limit - before;
            before += s.reals.len();
            (j < s.reals.len()).then_some((i, j))
        });
        if let Some((i, j)) = first {
            problems.push((
                format!("services[{i}].reals[{j}]"),
                format!(
                    "services[{i}].reals[{j}]: {total_reals} reals in all services (a real in two services counts twice), more than director.max_reals ({limit}): raise director.max_reals (at most {LIMIT_MAX_REALS})"
                ),
            ));
        }
    }
    let mut seen = std::collections::HashMap::new();
    for (i, s) in config.services.iter().enumerate() {
        if let Some(first) = seen.insert((s.vip, s.protocol), i) {
            problems.push((
                format!("services[{i}].vip"),
                format!(
                    "services[{i}].vip: {} {} is already service {} ({})",
                    format!("{:?}", s.protocol).to_uppercase(),
                    s.vip,
                    first,
                    config.services[first].name
                ),
            ));
        }
        if let Some(checks) = s.checks.as_ref().filter(|c| c.len() > MAX_CHECKS) {
            problems.push((
                format!("services[{i}].checks"),
                format!(
                    "services[{i}].checks: {} checks, more than the {MAX_CHECKS} a service may have",
                    checks.len()
                ),
            ));
        }
        if s.check.is_some() && s.checks.is_some() {
            problems.push((
                format!("services[{i}]"),
                format!("services[{i}]: give either check or checks, not both"),
            ));
        }
        if s.reals.is_empty() {
            problems.push((
                format!("services[{i}].reals"),
                format!("services[{i}].reals: list at least one real server"),
            ));
        }
        if s.vip.port() == 0 {
            problems.push((
                format!("services[{i}].vip"),
                format!("services[{i}].vip: port 0 is not a port a VIP can have: write 1 to 65535"),
            ));
        }
        if !usable(s.vip.ip()) {
            problems.push((
                format!("services[{i}].vip"),
                format!("services[{i}].vip: {} is not an address a VIP can have", s.vip.ip()),
            ));
        }
        let mut reals = std::collections::HashSet::new();
        // The fallback is a real of the service's table too, held to the same rules.
        let fallback = s
            .fallback
            .map(|address| (format!("services[{i}].fallback"), Real { address, weight: 1 }));
        let listed = s
            .reals
            .iter()
            .enumerate()
            .map(|(j, r)| (format!("services[{i}].reals[{j}]"), r.clone()));
        for (node, r) in listed.chain(fallback) {
            let fallback = node.ends_with(".fallback");
            // Problems of the fallback are at its key, not at an `.address` below it.
            let at =
                |node: &str| if fallback { node.to_string() } else { format!("{node}.address") };
            let addr = r.socket_addr(&s.vip);
            if !usable(r.address.ip) {
                problems.push((
                    at(&node),
                    format!(
                        "{}: {} is not an address a real server can have",
                        at(&node),
                        r.address.ip
                    ),
                ));
            }
            if r.address.port == Some(0) {
                problems.push((
                    at(&node),
                    format!(
                        "{}: port 0 is not a port a real server can have: write 1 to 65535, or leave it out for the VIP's",
                        at(&node)
                    ),
                ));
            }
            if addr.is_ipv4() != s.vip.is_ipv4() {
                problems.push((
                    at(&node),
                    format!("{}: {addr} is not of the VIP's address family", at(&node)),
                ));
            }
            if s.forwarding != Forwarding::Nat && r.address.port.is_some_and(|p| p != s.vip.port())
            {
                problems.push((
                    at(&node),
                    format!(
                        "{}: a port other than the VIP's ({}) needs forwarding: nat",
                        at(&node),
                        s.vip.port()
                    ),
                ));
            }
            if !reals.insert(addr) {
                problems.push((at(&node), format!("{}: {addr} is listed twice", at(&node))));
            }
            if r.weight > 65535 {
                problems.push((
                    format!("{node}.weight"),
                    format!("{node}.weight: {} is above 65535 (ipvsadm's range)", r.weight),
                ));
            }
        }
    }
    if let Some(i) = first_vip_that_does_not_fit(&config.services) {
        let s = &config.services[i];
        problems.push((
            format!("services[{i}].vip"),
            format!(
                "services[{i}].vip: {} {} does not fit the data plane's VIPS table: with the VIPs before it, more than {} hash to the slots next to its own; give this service another address or port",
                format!("{:?}", s.protocol).to_uppercase(),
                s.vip,
                lb_common::VIP_PROBES
            ),
        ));
    }
    problems
}

/// An address traffic can be sent to: not unspecified (0.0.0.0, ::), not multicast, not
/// the IPv4 broadcast address.
fn usable(ip: IpAddr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast() || matches!(ip, IpAddr::V4(a) if a.is_broadcast()))
}

/// The first service (in config order) whose VIP, with those before it, cannot be laid out
/// in the data plane's VIPS table, laid out as the director lays it out
/// ([`crate::core::tables::vip_slots`] over [`crate::core::vip_key`]), so `--check` and a
/// reload agree. None when every VIP fits (or there are more services than the table
/// could ever hold, which is reported as such).
fn first_vip_that_does_not_fit(services: &[Service]) -> Option<usize> {
    use crate::core::{tables::vip_slots, vip_key};
    if services.len() > LIMIT_MAX_VIPS as usize {
        return None;
    }
    let vips = |n: usize| {
        services[..n]
            .iter()
            .map(|s| (vip_key(s), lb_common::VipInfo::default()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    vip_slots(&vips(services.len())).err()?;
    // The layout follows the keys' order, not the config's: the first prefix that does
    // not fit names the service that made it so.
    (1..=services.len()).find(|&n| vip_slots(&vips(n)).is_err()).map(|n| n - 1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const GOOD: &str = "\
director:
  interfaces: [eth0]
services:
  - name: web
    vip: 192.0.2.10:80
    protocol: tcp
    forwarding: dr
    check:
      type: http
      path: /healthz
      interval: 2s
      timeout: 1s
      rise: 2
      fall: 3
    reals:
      - address: 10.0.0.11
        weight: 100
      - address: 10.0.0.12
";

    fn problems(text: &str) -> Vec<String> {
        match parse(Path::new("lb.yaml"), text) {
            Ok(_) => vec![],
            Err(Invalid(p)) => p.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_spec_example_parses() {
        let c = parse(Path::new("lb.yaml"), GOOD).expect("valid");
        let s = &c.services[0];
        assert_eq!(s.vip, "192.0.2.10:80".parse().unwrap());
        assert_eq!(s.reals[1].weight, 1);
        let check = s.check.as_ref().unwrap();
        let Probe::Http(http) = &check.probe else { panic!("{check:?}") };
        assert_eq!(http.path, "/healthz");
        assert_eq!((check.rise, check.fall), (2, 3));
        assert_eq!(c.director.socket, default_socket());
    }

    /// GOOD with its check's type line and keys replaced by `check`'s lines.
    fn with_check(check: &str) -> String {
        let start = GOOD.find("      type: http\n").unwrap();
        let end = GOOD.find("      interval: 2s\n").unwrap();
        format!("{}{check}{}", &GOOD[..start], &GOOD[end..])
    }

    #[test]
    fn udp_dns_and_ping_checks_read_their_own_keys() {
        let c = parse(Path::new("lb.yaml"), &with_check("      type: dns\n      query: whoami.lab\n      qtype: txt\n      expect: real1\n      transport: tcp\n")).unwrap();
        let Some(Probe::Dns(dns)) = c.services[0].check.as_ref().map(|c| &c.probe) else {
            panic!()
        };
        assert_eq!(
            (dns.query.as_str(), dns.qtype.as_str(), dns.expect.as_deref()),
            ("whoami.lab", "TXT", Some("real1"))
        );
        assert_eq!(dns.transport, Some(DnsTransport::Tcp));
        // Without `transport`, each service is asked over its own protocol: a DNS VIP
        // offered over UDP and TCP gets a check on each.
        let written = with_check("      type: dns\n      query: example.org\n");
        for (protocol, transport) in [("tcp", DnsTransport::Tcp), ("udp", DnsTransport::Udp)] {
            let text = written.replace("protocol: tcp", &format!("protocol: {protocol}"));
            let c = parse(Path::new("lb.yaml"), &text).unwrap();
            let Some(Probe::Dns(dns)) = c.services[0].check.as_ref().map(|c| &c.probe) else {
                panic!()
            };
            assert_eq!((dns.qtype.as_str(), dns.transport), ("A", Some(transport)), "{protocol}");
            assert!(lint(&c).is_empty(), "{protocol}: {:?}", lint(&c));
        }
        let c = parse(
            Path::new("lb.yaml"),
            &with_check("      type: ldap\n      base: dc=lab\n      filter: (description=real1)\n      bind_dn: cn=admin,dc=lab\n      password_file: /etc/lbd/ldap.secret\n"),
        )
        .unwrap();
        assert_eq!(
            c.services[0].check.as_ref().unwrap().probe,
            Probe::Ldap(LdapCheck {
                base: "dc=lab".into(),
                filter: "(description=real1)".into(),
                bind: Some(LdapBind {
                    dn: "cn=admin,dc=lab".into(),
                    password_file: "/etc/lbd/ldap.secret".into()
                }),
            })
        );
        let c = parse(Path::new("lb.yaml"), &with_check("      type: ldap\n")).unwrap();
        assert_eq!(
            c.services[0].check.as_ref().unwrap().probe,
            Probe::Ldap(LdapCheck {
                base: String::new(),
                filter: "(objectClass=*)".into(),
                bind: None
            }),
            "the defaults: the root DSE, anonymously"
        );
        let c = parse(
            Path::new("lb.yaml"),
            &with_check("      type: udp\n      send: PING\n      expect: PONG\n"),
        )
        .unwrap();
        assert_eq!(
            c.services[0].check.as_ref().unwrap().probe,
            Probe::Udp(UdpCheck { send: "PING".into(), expect: Some("PONG".into()) })
        );
        let c = parse(Path::new("lb.yaml"), &with_check("      type: ping\n")).unwrap();
        assert_eq!(c.services[0].check.as_ref().unwrap().probe, Probe::Ping);
        let c = parse(Path::new("lb.yaml"), &with_check("      type: https\n      host: www.example.org\n      tls_verify: true\n      ca_file: /etc/lbd/ca.pem\n")).unwrap();
        let Some(Probe::Https(tls)) = c.services[0].check.as_ref().map(|c| &c.probe) else {
            panic!()
        };
        assert_eq!(
            (tls.http.host.as_deref(), tls.tls_verify, tls.ca_file.as_deref()),
            (Some("www.example.org"), true, Some(Path::new("/etc/lbd/ca.pem")))
        );
        let c = parse(Path::new("lb.yaml"), &with_check("      type: https\n")).unwrap();
        let Some(Probe::Https(tls)) = c.services[0].check.as_ref().map(|c| &c.probe) else {
            panic!()
        };
        assert!(!tls.tls_verify, "a real's self-signed certificate counts as up by default");
        for (check, says) in [
            ("      type: https\n      tls_verify: true\n", "verifying needs ca_file"),
            (
                "      type: http\n      ca_file: /ca.pem\n",
                "tls_verify and ca_file apply to https checks",
            ),
            (
                "      type: dns\n      query: whoami.lab\n      qtype: BOGUS\n",
                "qtype: `BOGUS` is not a DNS record type",
            ),
            ("      type: dns\n      query: \"a..b\"\n", "query: `a..b` is not a domain name"),
            (
                "      type: dns\n      query: x.lab\n      transport: sctp\n",
                "unknown variant `sctp`",
            ),
            ("      type: udp\n", "send: a udp check needs the datagram to send"),
            ("      type: ldap\n      filter: uid=x)\n", "filter: `uid=x)` is not an LDAP filter"),
            ("      type: ldap\n      bind_dn: cn=x\n", "a bind needs password_file"),
            ("      type: ldap\n      password_file: /p\n", "a password needs bind_dn"),
            (
                "      type: tcp\n      base: dc=lab\n",
                "base, filter, bind_dn and password_file apply to ldap checks",
            ),
            ("      type: ldap\n      expect: x\n", "apply to udp and dns checks, not to ldap"),
            (
                "      type: udp\n      send: x\n      qtype: A\n",
                "query, qtype and transport apply to dns checks",
            ),
            ("      type: ping\n      expect: x\n", "apply to udp and dns checks, not to ping"),
            ("      type: tcp\n      query: x.lab\n", "apply to udp and dns checks, not to tcp"),
        ] {
            let p = problems(&with_check(check));
            assert!(p.len() == 1 && p[0].contains(says), "{check:?}: {p:?}");
        }
    }

    #[test]
    fn a_reload_says_which_changes_wait_for_a_restart() {
        let ha = "ha:\n  interface: eth0\n  vrid: 51\n  priority: 100\n";
        let started = parse(Path::new("lb.yaml"), &format!("{GOOD}{ha}")).unwrap();
        let same = |text: &str| restart_only(&started, &parse(Path::new("lb.yaml"), text).unwrap());
        // The services and the priority are a reload's own.
        let reweighted = format!("{GOOD}{ha}").replace("weight: 100", "weight: 7");
        assert!(same(&reweighted).is_empty());
        assert!(same(&format!("{GOOD}{ha}").replace("priority: 100", "priority: 90")).is_empty());
        let changed = format!("{GOOD}{ha}  advert_interval: 100ms\n  track_ping: [192.0.2.1]\n")
            .replace("interfaces: [eth0]", "interfaces: [eth0, eth1]");
        assert_eq!(same(&changed), ["director.interfaces", "ha.advert_interval", "ha.track_ping"]);
        // A service on a new address: served at once, moved on failover after a restart.
        let moved = format!("{GOOD}{ha}").replace("vip: 192.0.2.10:80", "vip: 192.0.2.99:80");
        assert_eq!(
            same(&moved),
            [
                "the VIPs failover moves (192.0.2.99 added)",
                "the VIPs failover moves (192.0.2.10 gone)"
            ]
        );
        assert_eq!(same(GOOD), ["ha (removed)"]);
    }

    #[test]
    fn check_warns_of_checks_that_cannot_see_their_service() {
        let udp_dns = GOOD
            .replace(
                "vip: 192.0.2.10:80\n    protocol: tcp",
                "vip: 192.0.2.10:53\n    protocol: udp",
            )
            .replace("      type: http\n      path: /healthz\n", "      type: tcp\n");
        let c = parse(Path::new("lb.yaml"), &udp_dns).expect("valid: warnings do not fail");
        let w: Vec<String> =
            warnings(Path::new("lb.yaml"), &udp_dns, &c).iter().map(ToString::to_string).collect();
        assert_eq!(
            w,
            [
                "lb.yaml:8:5: warning: services[0].check: a tcp check cannot see the UDP service 192.0.2.10:53 it guards: check it with dns (transport: udp) or udp"
            ]
        );
        let fixed =
            udp_dns.replace("      type: tcp\n", "      type: dns\n      query: example.org\n");
        let c = parse(Path::new("lb.yaml"), &fixed).unwrap();
        assert!(warnings(Path::new("lb.yaml"), &fixed, &c).is_empty());
        let over_tcp =
            fixed.replace("query: example.org\n", "query: example.org\n      transport: tcp\n");
        let c = parse(Path::new("lb.yaml"), &over_tcp).unwrap();
        assert!(
            warnings(Path::new("lb.yaml"), &over_tcp, &c)[0]
                .message
                .contains("a dns check over TCP cannot see the UDP service")
        );
        // Another port is another service, looked at on purpose.
        let other_port =
            udp_dns.replace("      type: tcp\n", "      type: tcp\n      port: 8080\n");
        let c = parse(Path::new("lb.yaml"), &other_port).unwrap();
        assert!(warnings(Path::new("lb.yaml"), &other_port, &c).is_empty());
        let unreadable = with_check(
            "      type: ldap\n      bind_dn: cn=check,dc=lab\n      password_file: /nonexistent/ldap.secret\n",
        );
        let c = parse(Path::new("lb.yaml"), &unreadable).expect("valid: the file may come later");
        let w = warnings(Path::new("lb.yaml"), &unreadable, &c);
        assert!(
            w.len() == 1
                && w[0].message.contains("password_file: cannot read /nonexistent/ldap.secret"),
            "{w:?}"
        );
        let ca = with_check(
            "      type: https\n      tls_verify: true\n      ca_file: /nonexistent/ca.pem\n",
        );
        let c = parse(Path::new("lb.yaml"), &ca).unwrap();
        let w = warnings(Path::new("lb.yaml"), &ca, &c);
        assert!(
            w.len() == 1 && w[0].message.contains("ca_file: cannot read /nonexistent/ca.pem"),
            "{w:?}"
        );
        let back_to_back = GOOD.replace("timeout: 1s", "timeout: 2s");
        let c = parse(Path::new("lb.yaml"), &back_to_back).unwrap();
        let w = warnings(Path::new("lb.yaml"), &back_to_back, &c);
        assert!(w.len() == 1 && w[0].message.contains("is not below the interval"), "{w:?}");
        assert!(
            warnings(Path::new("lb.yaml"), GOOD, &parse(Path::new("lb.yaml"), GOOD).unwrap())
                .is_empty()
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = GOOD.replace("    forwarding: dr\n", "    forwarding: dr\n    colour: blue\n");
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("lb.yaml:8:5: services[0]: unknown field `colour`"), "{p:?}");
    }

    #[test]
    fn unbuilt_forwarding_is_refused_clearly() {
        let p = problems(&GOOD.replace("forwarding: dr", "forwarding: gre"));
        assert!(p[0].starts_with("lb.yaml:7:"), "{p:?}");
        assert!(
            p[0].contains(
                "services[0].forwarding: unknown value `gre`, expected one of: dr, nat, tunnel"
            ),
            "{p:?}"
        );
    }

    #[test]
    fn durations_need_units() {
        let p = problems(&GOOD.replace("interval: 2s", "interval: 2"));
        assert_eq!(
            p,
            ["lb.yaml:11:7: services[0].check.interval: `2` has no unit: write 2s or 2ms"]
        );
    }

    #[test]
    fn durations_out_of_range_are_refused_at_their_keys() {
        // Too large for a Duration: once a panic of `lbd --check`, and of lbd on reload.
        let p = problems(&GOOD.replace("interval: 2s", "interval: 99999999999999999999s"));
        assert_eq!(
            p,
            [
                "lb.yaml:11:7: services[0].check.interval: `99999999999999999999s` is longer than 1h, the most a check's interval or timeout may be"
            ]
        );
        let p = problems(&GOOD.replace("timeout: 1s", "timeout: 2h"));
        assert_eq!(
            p,
            [
                "lb.yaml:12:7: services[0].check.timeout: `2h` is longer than 1h, the most a check's interval or timeout may be"
            ]
        );
        // An hour is allowed (and the timeout within it).
        let text =
            GOOD.replace("interval: 2s", "interval: 60m").replace("timeout: 1s", "timeout: 1h");
        assert!(problems(&text).is_empty(), "{:?}", problems(&text));
        let p = problems(&GOOD.replace("interval: 2s", "interval: -1s"));
        assert_eq!(
            p,
            ["lb.yaml:11:7: services[0].check.interval: `-1s` is negative: write 0s or more"]
        );
        for odd in ["nans", "infs", ".s", "1e400s", "1.5.5s", "s", "0x10s"] {
            let p = problems(&GOOD.replace("interval: 2s", &format!("interval: \"{odd}\"")));
            assert_eq!(p.len(), 1, "{odd}: {p:?}");
            assert!(p[0].starts_with("lb.yaml:11:7: services[0].check.interval: "), "{odd}: {p:?}");
        }
        for odd in [".nan", ".inf", "-.inf", "-2"] {
            let p = problems(&GOOD.replace("interval: 2s", &format!("interval: {odd}")));
            assert_eq!(
                p,
                [format!(
                    "lb.yaml:11:7: services[0].check.interval: `{odd}` is not a duration: write a number and a unit, like 2s or 100ms"
                )],
            );
        }
        // Persistence has no bound of its own, but a value past any Duration is refused too.
        let text = GOOD.replace(
            "    forwarding: dr\n",
            "    forwarding: dr\n    persistence: 999999999999999999999999h\n",
        );
        assert_eq!(
            problems(&text),
            [
                "lb.yaml:8:5: services[0].persistence: `999999999999999999999999h` is too long for a duration"
            ]
        );
        assert_eq!("1.5m".parse::<Seconds>(), Ok(Seconds(Duration::from_secs(90))));
        // Exact, as written: not through floating point.
        let exact = |s: &str| s.parse::<Seconds>().map(|s| s.0);
        assert_eq!(exact("3599999.999999999ms"), Ok(Duration::new(3599, 999_999_999)));
        assert_eq!(exact("0.3s"), exact("300ms"));
        assert_eq!(exact("0.1h"), Ok(Duration::from_secs(360)));
        assert_eq!(exact("1.0000000019s"), Ok(Duration::new(1, 1)));
        assert_eq!(exact(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(exact("5.s"), Ok(Duration::from_secs(5)));
        assert_eq!(exact("18446744073709551615s"), Ok(Duration::from_secs(u64::MAX)));
        assert_eq!(
            exact("18446744073709551616s"),
            Err("`18446744073709551616s` is too long for a duration".into())
        );
        assert_eq!(exact(&format!("{}1ms", "0".repeat(100_000))), Ok(Duration::from_millis(1)));
        assert!("1e400h".parse::<Seconds>().is_err());
        assert!("99999999999999999999999s".parse::<Seconds>().is_err());
    }

    #[test]
    fn deep_documents_are_refused_at_the_first_node_past_the_limit() {
        // Flow: director(2) interfaces(3), then 70 more: the 65th collection is the 63rd `[`.
        let text = GOOD.replace("[eth0]", &format!("{}eth0{}", "[".repeat(70), "]".repeat(70)));
        assert_eq!(
            problems(&text),
            [
                "lb.yaml:2:77: director: collections nested more than 64 deep (lbd's schema nests 5): flatten it"
            ]
        );
        // Block: a sequence of sequences on one line, 100 deep; the 65th starts at 129.
        let text = format!("{}x\n", "- ".repeat(100));
        assert_eq!(
            problems(&text),
            [
                "lb.yaml:1:129: collections nested more than 64 deep (lbd's schema nests 5): flatten it"
            ]
        );
        // 64 is allowed (here refused later, by the schema).
        let text = GOOD.replace("[eth0]", &format!("{}eth0{}", "[".repeat(62), "]".repeat(62)));
        assert!(!problems(&text)[0].contains("nested"), "{:?}", problems(&text));
        // 100,000 deep in 200 KB: serde took 21 s (quadratic in the depth); now refused at
        // once, where the parser stops (past 255 flow levels it stops before the 65th).
        let deep = |open: &str, close: &str| {
            format!("director: {}{}\n", open.repeat(100_000), close.repeat(100_000))
        };
        for text in [deep("[", "]"), deep("{a: ", "}"), format!("{}x\n", "- ".repeat(100_000))] {
            let started = std::time::Instant::now();
            let p = problems(&text);
            let took = started.elapsed();
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(p[0].starts_with("lb.yaml:1:"), "{p:?}");
            assert!(p[0].contains("nested more than 64 deep"), "{p:?}");
            assert!(took < Duration::from_millis(500), "{took:?}");
        }
    }

    #[test]
    fn aliases_may_not_blow_a_document_up() {
        // An alias of a check is fine.
        let text = GOOD.replace("    check:\n", "    check: &c\n")
            + "  - {name: api, vip: 192.0.2.11:80, protocol: tcp, check: *c, reals: [{address: 10.0.0.21}]}\n";
        let c = parse(Path::new("lb.yaml"), &text).expect("valid");
        assert_eq!(c.services[1].check, c.services[0].check);
        // A billion laughs: 9 levels of 10 aliases of the level below.
        let mut laughs = String::from(
            "director:\n  interfaces: [eth0]\nservices: []\nha:\n  l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n",
        );
        for i in 1..9 {
            let below = format!("*l{}", i - 1);
            laughs += &format!("  l{i}: &l{i} [{}]\n", vec![below; 10].join(", "));
        }
        let p = problems(&laughs);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("lb.yaml:10:")
                && p[0]
                    .contains("ha: more than 1048576 nodes, counting every node an alias repeats"),
            "{p:?}"
        );
        // An alias inside the node it names.
        let p = problems("director: &d {interfaces: *d}\nservices: []\n");
        assert_eq!(
            p,
            ["lb.yaml:1:27: director: this alias names a node it is inside of, which has no end"]
        );
        // A deep anchor used deep counts as deep.
        let text = format!(
            "director: {{interfaces: [eth0]}}\nservices: []\nha: {{a: &a {}x{}, b: {}*a{}}}\n",
            "[".repeat(40),
            "]".repeat(40),
            "[".repeat(40),
            "]".repeat(40)
        );
        let p = problems(&text);
        assert!(p[0].starts_with("lb.yaml:3:") && p[0].contains("nested more than 64"), "{p:?}");
    }

    #[test]
    fn a_config_larger_than_16_mib_is_refused_unread() {
        let dir = std::env::temp_dir().join(format!("lb-config-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.yaml");
        let mut text = GOOD.to_string();
        text += &format!("# {}\n", "x".repeat(16 << 20));
        std::fs::write(&path, &text).unwrap();
        let got = load(&path).map(|_| ()).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got,
            format!(
                "{}:1:1: the file is larger than 16 MiB, the most lbd reads of a config",
                path.display()
            )
        );
        assert_eq!(
            problems(&text),
            ["lb.yaml:1:1: the file is larger than 16 MiB, the most lbd reads of a config"]
        );
    }

    #[test]
    fn yaml_syntax_errors_are_located() {
        // Found by saphyr-parser in the pass that bounds the depth, before serde reads.
        let p = problems(&GOOD.replace("    protocol: tcp\n", "    protocol: tcp\n  bad\n"));
        assert_eq!(p, ["lb.yaml:8:15: services: invalid YAML: simple key expect ':'"]);
        let p = problems("director: [eth0\n");
        assert_eq!(
            p,
            [
                "lb.yaml:2:1: director: invalid YAML: while parsing a flow sequence, expected ',' or ']'"
            ]
        );
    }

    #[test]
    fn port_0_is_refused_for_a_vip_a_nat_real_and_a_check() {
        let p = problems(&GOOD.replace("vip: 192.0.2.10:80", "vip: 192.0.2.10:0"));
        assert_eq!(
            p,
            ["lb.yaml:5:5: services[0].vip: port 0 is not a port a VIP can have: write 1 to 65535"]
        );
        let nat = GOOD.replace("forwarding: dr", "forwarding: nat");
        let p = problems(&nat.replace("address: 10.0.0.11", "address: 10.0.0.11:0"));
        assert_eq!(
            p,
            [
                "lb.yaml:16:9: services[0].reals[0].address: port 0 is not a port a real server can have: write 1 to 65535, or leave it out for the VIP's"
            ]
        );
        let p = problems(
            &GOOD.replace("      path: /healthz\n", "      path: /healthz\n      port: 0\n"),
        );
        assert_eq!(
            p,
            [
                "lb.yaml:11:7: services[0].check.port: 0 is not a port: write 1 to 65535, or leave port out for the real's"
            ]
        );
        assert!(problems(&GOOD.replace("path: /healthz", "port: 8080")).is_empty());
        assert!(problems(&nat.replace("address: 10.0.0.11", "address: 10.0.0.11:8080")).is_empty());
        let metrics = |at: &str| {
            problems(&GOOD.replace(
                "  interfaces: [eth0]\n",
                &format!("  interfaces: [eth0]\n  metrics: {at}\n"),
            ))
        };
        assert_eq!(
            metrics("127.0.0.1:0"),
            [
                "lb.yaml:3:3: director.metrics: 127.0.0.1:0 is not an address to listen on: give ADDR:PORT, like 127.0.0.1:9469"
            ]
        );
        assert!(metrics("127.0.0.1:9469").is_empty());
    }

    /// `n` ports of 192.0.2.10 whose TCP VIPs share one home slot in VIPS.
    pub(crate) fn colliding_ports(n: usize) -> Vec<u16> {
        let template = parse(Path::new("lb.yaml"), GOOD).unwrap().services[0].clone();
        let mut by_home: std::collections::HashMap<u32, Vec<u16>> = Default::default();
        for port in 1..=u16::MAX {
            let s = Service { vip: SocketAddr::new(template.vip.ip(), port), ..template.clone() };
            let ports = by_home.entry(lb_common::vip_home(&crate::core::vip_key(&s))).or_default();
            ports.push(port);
            if ports.len() == n {
                return ports.clone();
            }
        }
        unreachable!("65535 ports over 4096 slots: some slot has {n}")
    }

    #[test]
    fn vips_that_do_not_fit_vips_are_refused_at_the_first_that_does_not() {
        let ports = colliding_ports(lb_common::VIP_PROBES as usize + 1);
        let service = |i: usize, port: u16| {
            format!(
                "  - name: s{i}\n    vip: 192.0.2.10:{port}\n    protocol: tcp\n    reals: [{{address: 10.0.0.{i}}}]\n"
            )
        };
        let mut text = String::from("director:\n  interfaces: [eth0]\nservices:\n");
        for (i, port) in ports.iter().enumerate() {
            text += &service(i + 1, *port);
        }
        // services[8] starts at line 4 + 8 * 4 = 36; its vip is the next line.
        assert_eq!(
            problems(&text),
            [format!(
                "lb.yaml:37:5: services[8].vip: TCP 192.0.2.10:{} does not fit the data plane's VIPS table: with the VIPs before it, more than 8 hash to the slots next to its own; give this service another address or port",
                ports[8]
            )]
        );
        // Eight fit, and another protocol is another key.
        let eight: String = text.lines().take(3 + 8 * 4).map(|l| format!("{l}\n")).collect();
        assert!(problems(&eight).is_empty(), "{:?}", problems(&eight));
        let udp = text.replacen("protocol: tcp", "protocol: udp", 1);
        assert!(problems(&udp).is_empty(), "{:?}", problems(&udp));
    }

    #[test]
    fn unspecified_and_multicast_addresses_are_refused() {
        let p = problems(&GOOD.replace("vip: 192.0.2.10:80", "vip: 0.0.0.0:80"));
        assert_eq!(p, ["lb.yaml:5:5: services[0].vip: 0.0.0.0 is not an address a VIP can have"]);
        let p = problems(&GOOD.replace("address: 10.0.0.11", "address: 224.0.0.1"));
        assert_eq!(
            p,
            [
                "lb.yaml:16:9: services[0].reals[0].address: 224.0.0.1 is not an address a real server can have"
            ]
        );
        let p = problems(&GOOD.replace("address: 10.0.0.12", "address: 0.0.0.0"));
        assert_eq!(
            p,
            [
                "lb.yaml:18:9: services[0].reals[1].address: 0.0.0.0 is not an address a real server can have"
            ]
        );
    }

    #[test]
    fn what_the_director_cannot_use_is_refused() {
        // Interfaces: as the kernel names them (at most 15 bytes, no `/`, `:` or space).
        let p = problems(&GOOD.replace("[eth0]", "[eth0, eth0, \"a/b\", 0123456789abcdef, \"\"]"));
        assert_eq!(
            p,
            [
                "lb.yaml:2:22: director.interfaces[1]: eth0 is listed twice",
                "lb.yaml:2:28: director.interfaces[2]: `a/b` is not an interface name: 1 to 15 bytes, without `/`, `:` or spaces",
                "lb.yaml:2:35: director.interfaces[3]: `0123456789abcdef` is not an interface name: 1 to 15 bytes, without `/`, `:` or spaces",
                "lb.yaml:2:53: director.interfaces[4]: `` is not an interface name: 1 to 15 bytes, without `/`, `:` or spaces",
            ]
        );
        // The socket: a Unix socket's path is at most 107 bytes.
        let long = format!("/run/{}.sock", "x".repeat(100));
        let p = problems(&GOOD.replace("[eth0]\n", &format!("[eth0]\n  socket: {long}\n")));
        assert_eq!(
            p,
            [format!(
                "lb.yaml:3:3: director.socket: `{long}` is longer than 107 bytes, the most a Unix socket's path may be"
            )]
        );
        let p = problems(&GOOD.replace("[eth0]\n", "[eth0]\n  socket: \"\"\n"));
        assert_eq!(p, ["lb.yaml:3:3: director.socket: name a path"]);
        // HTTP: a path the request line can carry, a status that exists.
        let p = problems(&GOOD.replace("path: /healthz", "path: \"/a b\\r\\nX: y\""));
        assert_eq!(
            p,
            [
                "lb.yaml:10:7: services[0].check.path: `/a b\\r\\nX: y` is not a request path: start it with / and leave out spaces and control characters"
            ]
        );
        let p = problems(&GOOD.replace("path: /healthz", "path: healthz"));
        assert_eq!(p.len(), 1, "{p:?}");
        let p = problems(&GOOD.replace("path: /healthz", "host: \"a\\nb\""));
        assert_eq!(
            p,
            [
                "lb.yaml:10:7: services[0].check.host: `a\\nb` is not a host name: leave out spaces and control characters"
            ]
        );
        let p = problems(&GOOD.replace("path: /healthz", "expect_status: 1000"));
        assert_eq!(
            p,
            [
                "lb.yaml:10:7: services[0].check.expect_status: 1000 is not an HTTP status: write 100 to 599"
            ]
        );
        // Checks: at most 16 a service.
        let checks = format!("    checks: [{}]\n", vec!["{type: none}"; 17].join(", "));
        let text = cut_check(GOOD).replace("    reals:\n", &format!("{checks}    reals:\n"));
        assert_eq!(
            problems(&text),
            ["lb.yaml:8:5: services[0].checks: 17 checks, more than the 16 a service may have"]
        );
        let text = text.replacen("{type: none}, ", "", 1);
        assert!(problems(&text).is_empty(), "{:?}", problems(&text));
    }

    #[test]
    fn a_problem_at_the_end_of_a_file_without_a_last_newline_is_on_its_last_line() {
        // The parser marks the end of the stream on a line after the last.
        let p = problems("director:\n  interfaces:\n    - eth0\ns.");
        assert_eq!(p, ["lb.yaml:4:3: director: invalid YAML: simple key expected"]);
        let p = problems("director: [eth0");
        assert_eq!(
            p,
            [
                "lb.yaml:1:16: director: invalid YAML: while parsing a flow sequence, expected ',' or ']'"
            ]
        );
    }

    #[test]
    fn cross_key_problems_are_all_reported_with_lines() {
        let text = GOOD.replace(
            "      - address: 10.0.0.12\n",
            "      - address: 10.0.0.11\n        weight: 70000\n",
        );
        let p = problems(&text);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p.iter().any(|l| l.contains("reals[1].address: 10.0.0.11:80 is listed twice")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|l| l.starts_with("lb.yaml:19:") && l.contains("above 65535")),
            "{p:?}"
        );
    }

    #[test]
    fn http_keys_on_a_tcp_check_are_refused() {
        let p = problems(&GOOD.replace("type: http", "type: tcp"));
        assert!(p[0].contains("apply to http checks"), "{p:?}");
    }

    /// GOOD with a second service (its first line is line 19).
    fn two_services(second: &str) -> String {
        format!("{GOOD}{second}")
    }

    #[test]
    fn a_real_twice_in_the_second_service_is_reported_there() {
        // 10.0.0.11 is also in services[0]: the problem is where it is listed twice.
        let p = problems(&two_services(
            "  - name: api
    vip: 192.0.2.11:80
    protocol: tcp
    reals:
      - address: 10.0.0.11
      - address: 10.0.0.11
",
        ));
        assert_eq!(p, ["lb.yaml:24:9: services[1].reals[1].address: 10.0.0.11:80 is listed twice"]);
    }

    #[test]
    fn a_duplicated_vip_is_reported_at_the_second_services_vip() {
        let p = problems(&two_services(
            "  - name: again
    vip: 192.0.2.10:80
    protocol: tcp
    reals: [{address: 10.0.0.21}]
",
        ));
        assert_eq!(
            p,
            ["lb.yaml:20:5: services[1].vip: TCP 192.0.2.10:80 is already service 0 (web)"]
        );
        // Another protocol on the same address and port is another service.
        let p = problems(&two_services(
            "  - name: dns
    vip: 192.0.2.10:80
    protocol: udp
    reals: [{address: 10.0.0.21}]
",
        ));
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn problems_inside_flow_sequences_are_located_at_their_keys() {
        let text = "\
director: {interfaces: []}
services:
  - {name: web, vip: 192.0.2.10:80, protocol: tcp,
     reals: [{address: 10.0.0.11}, {address: 10.0.0.11, weight: 70000}]}
";
        assert_eq!(
            problems(text),
            [
                "lb.yaml:1:12: director.interfaces: name at least one interface",
                "lb.yaml:4:37: services[0].reals[1].address: 10.0.0.11:80 is listed twice",
                "lb.yaml:4:57: services[0].reals[1].weight: 70000 is above 65535 (ipvsadm's range)",
            ]
        );
        // A key's error that the parser marks at its flow mapping moves to the key.
        let text =
            GOOD.replace("forwarding: dr", "checks: [{type: tcp}, {type: tcp, interval: 2}]");
        let text = cut_check(&text);
        assert_eq!(
            problems(&text),
            ["lb.yaml:7:39: services[0].checks[1].interval: `2` has no unit: write 2s or 2ms"]
        );
    }

    /// `text` without its `check:` section (the lines from `check:` to `reals:`).
    fn cut_check(text: &str) -> String {
        let start = text.find("    check:\n").unwrap();
        let end = text.find("    reals:\n").unwrap();
        format!("{}{}", &text[..start], &text[end..])
    }

    #[test]
    fn problems_in_a_checks_list_name_the_check() {
        let checks = "    checks:
      - type: tcp
        port: 8080
      - type: http
        interval: 1s
        timeout: 2s
      - type: none
        rise: x
";
        let text = cut_check(GOOD).replace("    reals:\n", &format!("{checks}    reals:\n"));
        assert_eq!(
            problems(&text),
            [
                "lb.yaml:11:9: services[0].checks[1]: timeout (2s) must be above zero and at most the interval (1s)"
            ]
        );
        let text = text.replace("        timeout: 2s\n", "");
        assert_eq!(
            problems(&text),
            ["lb.yaml:14:15: services[0].checks[2].rise: invalid type: string \"x\", expected u32"]
        );
        let text = text.replace("        rise: x\n", "        interval: 5\n");
        assert_eq!(
            problems(&text),
            ["lb.yaml:14:9: services[0].checks[2].interval: `5` has no unit: write 5s or 5ms"]
        );
        let text = text.replace("        interval: 5\n", "").replace("type: none", "type: snmp");
        assert_eq!(
            problems(&text),
            [
                "lb.yaml:13:9: services[0].checks[2].type: unknown value `snmp`, expected one of: tcp, udp, http, https, dns, ldap, ping, exec, none"
            ]
        );
        let text = text.replace("type: snmp", "type: dns");
        assert_eq!(
            problems(&text),
            ["lb.yaml:13:9: services[0].checks[2]: query: a dns check needs the name to ask for"]
        );
        let text = text.replace("type: dns", "type: none");
        assert!(problems(&text).is_empty(), "{:?}", problems(&text));
        let both = GOOD.replace("    reals:\n", &format!("{checks}    reals:\n"));
        assert_eq!(
            problems(&both.replace("        rise: x\n", "").replace("timeout: 2s", "timeout: 1s")),
            ["lb.yaml:4:5: services[0]: give either check or checks, not both"]
        );
    }

    #[test]
    fn a_file_that_is_not_utf8_is_located_at_its_first_bad_byte() {
        let dir = std::env::temp_dir().join(format!("lb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latin1.yaml");
        // Latin-1 after UTF-8 on the same line: the column counts characters.
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes.extend_from_slice("    # café, ".as_bytes());
        bytes.extend_from_slice(b"r\xe9seau\n");
        std::fs::write(&path, &bytes).unwrap();
        let got = load(&path).map(|_| ()).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got,
            format!(
                "{}:19:14: not UTF-8: byte 0xe9 does not begin a character here; write the config as UTF-8 text",
                path.display()
            )
        );
    }

    #[test]
    fn a_value_with_a_newline_stays_on_its_located_line() {
        let text = GOOD.replace("forwarding: dr", "forwarding: \"gr\\ne\"");
        let p = problems(&text);
        assert_eq!(
            p,
            [
                "lb.yaml:7:5: services[0].forwarding: unknown value `gr\\ne`, expected one of: dr, nat, tunnel"
            ]
        );
        let text = two_services(
            "  - name: \"line one\\nline two\"
    vip: 192.0.2.10:80
    protocol: tcp
    reals: [{address: 10.0.0.21}]
",
        )
        .replace("name: web", "name: \"w\\re\\tb\"");
        let Err(e) = parse(Path::new("lb.yaml"), &text) else { panic!() };
        assert_eq!(
            e.to_string(),
            "lb.yaml:20:5: services[1].vip: TCP 192.0.2.10:80 is already service 0 (w\\re\\tb)"
        );
    }

    #[test]
    fn capacity_keys_default_and_are_read() {
        let c = parse(Path::new("lb.yaml"), GOOD).unwrap();
        assert_eq!(
            (c.director.max_vips, c.director.max_reals),
            (DEFAULT_MAX_VIPS, DEFAULT_MAX_REALS)
        );
        assert_eq!((DEFAULT_MAX_VIPS, DEFAULT_MAX_REALS), (512, 16384));
        let text = GOOD.replace("[eth0]\n", "[eth0]\n  max_vips: 1024\n  max_reals: 65534\n");
        let c = parse(Path::new("lb.yaml"), &text).unwrap();
        assert_eq!((c.director.max_vips, c.director.max_reals), (LIMIT_MAX_VIPS, LIMIT_MAX_REALS));
        let text = GOOD.replace("[eth0]\n", "[eth0]\n  max_vips: 1\n  max_reals: 2\n");
        assert!(problems(&text).is_empty(), "{:?}", problems(&text));
    }

    #[test]
    fn capacity_keys_out_of_range_are_refused() {
        let text = GOOD.replace("[eth0]\n", "[eth0]\n  max_vips: 0\n  max_reals: 65535\n");
        assert_eq!(
            problems(&text),
            [
                "lb.yaml:3:3: director.max_vips: 0 is out of range: the data plane holds 1 to 1024 services",
                "lb.yaml:4:3: director.max_reals: 65535 is out of range: the data plane holds 1 to 65534 reals",
            ]
        );
        let text = GOOD.replace("[eth0]\n", "[eth0]\n  max_vips: 1025\n  max_reals: 0\n");
        assert_eq!(
            problems(&text),
            [
                "lb.yaml:3:3: director.max_vips: 1025 is out of range: the data plane holds 1 to 1024 services",
                "lb.yaml:4:3: director.max_reals: 0 is out of range: the data plane holds 1 to 65534 reals",
            ]
        );
        let text = GOOD.replace("[eth0]\n", "[eth0]\n  max_vips: -1\n");
        assert_eq!(
            problems(&text),
            ["lb.yaml:3:13: director.max_vips: invalid type: integer `-1`, expected u32"]
        );
    }

    #[test]
    fn more_services_than_max_vips_are_refused_at_services() {
        let text = two_services(
            "  - name: api
    vip: 192.0.2.11:80
    protocol: tcp
    reals: [{address: 10.0.0.21}]
",
        )
        .replace("[eth0]\n", "[eth0]\n  max_vips: 1\n");
        assert_eq!(
            problems(&text),
            [
                "lb.yaml:4:1: services: 2 services, more than director.max_vips (1): raise director.max_vips (at most 1024)"
            ]
        );
        assert!(problems(&text.replace("max_vips: 1", "max_vips: 2")).is_empty());
    }

    #[test]
    fn more_reals_than_max_reals_are_refused_at_the_first_that_does_not_fit() {
        // services[0] has 2 reals, services[1] 2 more: the 4th counts though it is also
        // in services[0].
        let text = two_services(
            "  - name: api
    vip: 192.0.2.11:80
    protocol: tcp
    reals:
      - address: 10.0.0.21
      - address: 10.0.0.11
",
        )
        .replace("[eth0]\n", "[eth0]\n  max_reals: 3\n");
        assert_eq!(
            problems(&text),
            [
                "lb.yaml:25:9: services[1].reals[1]: 4 reals in all services (a real in two services counts twice), more than director.max_reals (3): raise director.max_reals (at most 65534)"
            ]
        );
        assert_eq!(
            problems(&text.replace("max_reals: 3", "max_reals: 1")),
            [
                "lb.yaml:19:9: services[0].reals[1]: 4 reals in all services (a real in two services counts twice), more than director.max_reals (1): raise director.max_reals (at most 65534)"
            ]
        );
        assert!(problems(&text.replace("max_reals: 3", "max_reals: 4")).is_empty());
    }

    #[test]
    fn the_index_knows_keys_and_values_of_block_and_flow_nodes() {
        let spans = Spans::of(
            "director:\n  interfaces: [eth0, eth1]\nservices:\n  - name: web\n    reals: [{address: 10.0.0.1}]\n",
        );
        let spot = |p: &str| spans.get(p).map(|s| (s.key, s.value));
        assert_eq!(spot("director"), Some(((1, 1), (2, 3))));
        assert_eq!(spot("director.interfaces"), Some(((2, 3), (2, 15))));
        assert_eq!(spot("director.interfaces[1]"), Some(((2, 22), (2, 22))));
        assert_eq!(spot("services[0]"), Some(((4, 5), (4, 5))));
        assert_eq!(spot("services[0].name"), Some(((4, 5), (4, 11))));
        assert_eq!(spot("services[0].reals[0].address"), Some(((5, 14), (5, 23))));
        assert_eq!(spans.key("services[0].reals[3].weight"), (5, 5));
        assert_eq!(spans.key("nowhere"), (1, 1));
    }

    #[test]
    fn single_value_errors_are_located_at_their_keys() {
        // The parser marks these at the mapping (here the real's first key, `weight`).
        let text = GOOD
            .replace("      - address: 10.0.0.12\n", "      - weight: 3\n        address: nope\n");
        assert_eq!(
            problems(&text),
            [
                "lb.yaml:19:9: services[0].reals[1].address: `nope` is not an address: write 10.0.0.11, 10.0.0.11:80 or [2001:db8::11]:80"
            ]
        );
        let text = GOOD
            .replace("    forwarding: dr\n", "    forwarding: dr\n    fallback: 10.0.0.99:80\n");
        assert!(problems(&text).is_empty(), "the VIP's port: {:?}", problems(&text));
        let text = GOOD
            .replace("    forwarding: dr\n", "    forwarding: dr\n    fallback: 10.0.0.99:8080\n");
        assert_eq!(
            problems(&text),
            [
                "lb.yaml:8:5: services[0].fallback: a port other than the VIP's (80) needs forwarding: nat"
            ]
        );
        let text =
            GOOD.replace("    forwarding: dr\n", "    forwarding: dr\n    fallback: 10.0.0.12\n");
        assert_eq!(
            problems(&text),
            ["lb.yaml:8:5: services[0].fallback: 10.0.0.12:80 is listed twice"]
        );
        let text =
            GOOD.replace("    forwarding: dr\n", "    forwarding: dr\n    persistence: 5m\n");
        assert_eq!(
            problems(&text),
            [
                "lb.yaml:8:5: services[0].persistence: other than 0s is not built yet in this version of lbd"
            ]
        );
    }

    const HA: &str = "ha:\n  interface: eth0\n  vrid: 51\n  priority: 150\n  advert_interval: 100ms\n  preempt_delay: 5s\n  vips: [192.0.2.10/32]\n  peers: [192.0.2.3]\n  notify: /etc/lbd/notify.sh\n";

    #[test]
    fn the_ha_section_of_spec_parses() {
        let c = parse(Path::new("lb.yaml"), &format!("{GOOD}{HA}")).expect("valid");
        let ha = c.ha.expect("ha");
        assert_eq!((ha.vrid, ha.priority, ha.interval_cs(), ha.preempt), (51, 150, 10, true));
        assert_eq!(ha.preempt_delay, Duration::from_secs(5));
        assert_eq!(ha.vips(&c.services), ["192.0.2.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(ha.peers, ["192.0.2.3".parse::<IpAddr>().unwrap()]);
        // Without vips: every service VIP.
        let c = parse(
            Path::new("lb.yaml"),
            &format!("{GOOD}{}", HA.replace("  vips: [192.0.2.10/32]\n", "")),
        )
        .unwrap();
        assert_eq!(c.ha.unwrap().vips(&c.services), ["192.0.2.10".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn ha_values_the_election_cannot_use_are_refused_at_their_keys() {
        let at = |from: &str, to: &str| problems(&format!("{GOOD}{}", HA.replace(from, to)));
        let p = at("priority: 150", "priority: 255");
        assert!(p[0].starts_with("lb.yaml:22:3: ha.priority: 255 is not in 1..254"), "{p:?}");
        let p = at("advert_interval: 100ms", "advert_interval: 5ms");
        assert!(
            p[0].contains("ha.advert_interval: 5ms is not a whole number of centiseconds"),
            "{p:?}"
        );
        let p = at("advert_interval: 100ms", "advert_interval: 41s");
        assert!(p[0].contains("advert_interval: `41s` is longer than 40950ms"), "{p:?}");
        let p = at("[192.0.2.10/32]", "[192.0.2.0/24]");
        assert!(p[0].contains("a VIP is one address: write /32"), "{p:?}");
        let p = at("[192.0.2.10/32]", "[192.0.2.99/32]");
        assert!(p[0].contains("services[0].vip: 192.0.2.10 is not in ha.vips"), "{p:?}");
        let p = at("  notify:", "  track_ping: [0.0.0.0]\n  notify:");
        assert!(p[0].contains("ha.track_ping[0]: 0.0.0.0 is not a node's address"), "{p:?}");
        let p = at("  notify:", "  track_ping: [192.0.2.1, \"fe80::1\"]\n  notify:");
        assert!(p[0].contains("ha.track_ping[1]: fe80::1 is link-local"), "{p:?}");
        let p = at("  notify:", "  sync: {port: 8849}\n  notify:");
        assert!(p[0].contains("ha.sync: connection sync is not built yet"), "{p:?}");
    }
}
