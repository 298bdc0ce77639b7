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
    /// Failover is not built yet: its presence is refused by validation.
    #[serde(default)]
    pub ha: Option<yaml_serde::Value>,
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
}

pub fn default_socket() -> PathBuf {
    PathBuf::from("/run/lbd/lbd.sock")
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
    #[serde(default)]
    pub fallback: Option<NotBuilt>,
    #[serde(default)]
    pub check: Option<Check>,
    #[serde(default)]
    pub checks: Option<Vec<Check>>,
    pub reals: Vec<Real>,
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
/// errors at the enclosing mapping, and [`parse`] moves the mark to the key's own line.
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
        let t = duration(d, "persistence")?;
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

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().map_err(|_| {
            format!("`{s}` is not a duration: write a number and a unit, like 2s or 100ms")
        })?;
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("`{s}` has no unit: write {s}s or {s}ms")),
            other => {
                return Err(format!("unknown unit `{other}` in `{s}`: use ms, s, m or h"));
            }
        };
        Ok(Seconds(Duration::from_secs_f64(n * scale)))
    }
}

/// Deserializes the duration under `key`; a bare number (`interval: 2`) is refused.
fn duration<'de, D: Deserializer<'de>>(d: D, key: &str) -> Result<Duration, D::Error> {
    match yaml_serde::Value::deserialize(d)? {
        yaml_serde::Value::String(s) => {
            s.parse::<Seconds>().map(|s| s.0).map_err(|e| D::Error::custom(format!("{key}: {e}")))
        }
        yaml_serde::Value::Number(n) => {
            Err(D::Error::custom(format!("{key}: `{n}` has no unit: write {n}s or {n}ms")))
        }
        _ => Err(D::Error::custom(format!("{key}: expected a duration such as 2s or 100ms"))),
    }
}

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d, "interval").map(Some)
}

fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d, "timeout").map(Some)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    Tcp,
    Http,
    None,
}

impl<'de> Deserialize<'de> for CheckType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let planned = ["udp", "https", "dns", "ldap", "ping", "exec"];
        match keyword(d, &["tcp", "http", "none"], &planned, "type")?.as_str() {
            "tcp" => Ok(CheckType::Tcp),
            "http" => Ok(CheckType::Http),
            _ => Ok(CheckType::None),
        }
    }
}

/// One health check, with the defaults of SPEC.md's example filled in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawCheck")]
pub struct Check {
    pub kind: CheckType,
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub http: Option<HttpCheck>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    pub path: String,
    pub host: Option<String>,
    pub expect_status: u16,
    pub expect_body: Option<String>,
}

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
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<u16>,
    expect_body: Option<String>,
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
        let http_keys = r.path.is_some()
            || r.host.is_some()
            || r.expect_status.is_some()
            || r.expect_body.is_some();
        let http = match r.kind {
            CheckType::Http => Some(HttpCheck {
                path: r.path.unwrap_or_else(|| "/".into()),
                host: r.host,
                expect_status: r.expect_status.unwrap_or(200),
                expect_body: r.expect_body,
            }),
            other if http_keys => {
                return Err(format!(
                    "path, host, expect_status and expect_body apply to http checks, not to {}",
                    format!("{other:?}").to_lowercase()
                ));
            }
            _ => None,
        };
        Ok(Check { kind: r.kind, port: r.port, interval, timeout, rise, fall, http })
    }
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
                "`{s}` is not an address: write 10.0.0.11, 10.0.0.11:80 or [2001:db8::11]:80"
            ))),
        }
    }
}

impl Real {
    pub fn socket_addr(&self, vip: &SocketAddr) -> SocketAddr {
        SocketAddr::new(self.address.ip, self.address.port.unwrap_or(vip.port()))
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, Invalid> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Invalid(vec![Problem {
            file: path.into(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        }])
    })?;
    parse(path, &text)
}

/// Parses and validates config text; `path` only names the file in problems.
pub fn parse(path: &Path, text: &str) -> Result<Config, Invalid> {
    let config: Config = yaml_serde::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        let full = e.to_string();
        let message = match full.rsplit_once(" at line ") {
            Some((m, _)) => m.to_string(),
            None => full,
        };
        let (line, column, message) = refine(text, line, column, message);
        Invalid(vec![Problem { file: path.into(), line, column, message }])
    })?;
    let problems = validate(&config, text)
        .into_iter()
        .map(|(needle, message)| {
            let (line, column) = locate(text, &needle);
            Problem { file: path.into(), line, column, message }
        })
        .collect::<Vec<_>>();
    if problems.is_empty() { Ok(config) } else { Err(Invalid(problems)) }
}

/// Moves a `path: key: message` error, which the parser marks at the mapping holding
/// `key`, to the line of `key` itself and joins the key to the path.
fn refine(text: &str, line: usize, column: usize, message: String) -> (usize, usize, String) {
    let (path, rest) = match message.split_once(": ") {
        Some((p, r)) if !p.contains(' ') => (p, r),
        _ => return (line, column, message),
    };
    let Some((key, detail)) = rest.split_once(": ") else {
        return (line, column, message);
    };
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return (line, column, message);
    }
    let prefix = format!("{key}:");
    let found = text.lines().enumerate().skip(line.saturating_sub(1)).find_map(|(i, l)| {
        let body = l.trim_start().trim_start_matches("- ");
        body.starts_with(&prefix).then(|| (i + 1, l.len() - body.len() + 1))
    });
    match found {
        Some((line, column)) => (line, column, format!("{path}.{key}: {detail}")),
        None => (line, column, message),
    }
}

/// Checks that span several keys. Each problem comes with the text to locate it by.
fn validate(config: &Config, text: &str) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if config.ha.is_some() {
        problems.push((
            "ha:".into(),
            "ha: VIP failover between directors is not built yet in this version of lbd".into(),
        ));
    }
    if config.director.metrics.is_some() {
        problems.push((
            "metrics:".into(),
            "director.metrics: the Prometheus endpoint is not built yet in this version of lbd"
                .into(),
        ));
    }
    if config.director.interfaces.is_empty() {
        problems.push((
            "interfaces:".into(),
            "director.interfaces: name at least one interface".into(),
        ));
    }
    let mut seen = std::collections::HashMap::new();
    for (i, s) in config.services.iter().enumerate() {
        let at = |key: &str| format!("{key}: {}", find_value(text, key, i));
        if let Some(first) = seen.insert((s.vip, s.protocol), i) {
            problems.push((
                at("vip"),
                format!(
                    "services[{i}].vip: {} {} is already service {} ({})",
                    format!("{:?}", s.protocol).to_uppercase(),
                    s.vip,
                    first,
                    config.services[first].name
                ),
            ));
        }
        if s.check.is_some() && s.checks.is_some() {
            problems.push((
                format!("name: {}", s.name),
                format!("services[{i}]: give either check or checks, not both"),
            ));
        }
        if s.reals.is_empty() {
            problems.push((
                format!("name: {}", s.name),
                format!("services[{i}].reals: list at least one real server"),
            ));
        }
        let mut reals = std::collections::HashSet::new();
        for (j, r) in s.reals.iter().enumerate() {
            let addr = r.socket_addr(&s.vip);
            if addr.is_ipv4() != s.vip.is_ipv4() {
                problems.push((
                    format!("address: {}", raw_address(r)),
                    format!("services[{i}].reals[{j}].address: {addr} is not of the VIP's address family"),
                ));
            }
            if s.forwarding != Forwarding::Nat && r.address.port.is_some_and(|p| p != s.vip.port())
            {
                problems.push((
                    format!("address: {}", raw_address(r)),
                    format!(
                        "services[{i}].reals[{j}].address: a port other than the VIP's ({}) needs forwarding: nat",
                        s.vip.port()
                    ),
                ));
            }
            if !reals.insert(addr) {
                problems.push((
                    format!("address: {}", raw_address(r)),
                    format!("services[{i}].reals[{j}].address: {addr} is listed twice"),
                ));
            }
            if r.weight > 65535 {
                problems.push((
                    format!("weight: {}", r.weight),
                    format!(
                        "services[{i}].reals[{j}].weight: {} is above 65535 (ipvsadm's range)",
                        r.weight
                    ),
                ));
            }
        }
    }
    if config.services.len() > lb_common::MAX_VIPS as usize {
        problems.push((
            "services:".into(),
            format!(
                "services: {} services, the data plane holds {}",
                config.services.len(),
                lb_common::MAX_VIPS
            ),
        ));
    }
    problems
}

fn raw_address(r: &Real) -> String {
    match (r.address.ip, r.address.port) {
        (ip, None) => ip.to_string(),
        (ip, Some(p)) => SocketAddr::new(ip, p).to_string(),
    }
}

/// The value text of the `n`-th occurrence of `key:` (services are in order in the file).
fn find_value(text: &str, key: &str, n: usize) -> String {
    let prefix = format!("{key}:");
    text.lines()
        .filter_map(|l| l.trim_start().trim_start_matches("- ").strip_prefix(&prefix))
        .nth(n)
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// Line and column (1-based) of the first line holding `needle`, or 1:1.
fn locate(text: &str, needle: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, c + 1)))
        .unwrap_or((1, 1))
}

#[cfg(test)]
mod tests {
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
        assert_eq!(check.http.as_ref().unwrap().path, "/healthz");
        assert_eq!((check.rise, check.fall), (2, 3));
        assert_eq!(c.director.socket, default_socket());
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
        let p = problems(
            &GOOD.replace("type: http", "type: ldap").replace("      path: /healthz\n", ""),
        );
        assert!(p[0].contains("check.type: `ldap` is not built yet"), "{p:?}");
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
}
