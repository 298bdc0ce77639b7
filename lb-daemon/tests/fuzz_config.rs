//! Property tests of the config reader (proptest), in-process and through `lbd --check`.
//!
//! Configs are generated from SPEC.md's schema, valid by construction, then rendered as
//! YAML in block and flow styles, and mutated: wrong types, unknown, missing and duplicate
//! keys, huge, negative and odd numbers and durations, deep nesting, anchors and aliases,
//! tags, scalars with newlines and control characters, then bytes: cuts, stray
//! characters, tabs, carriage returns, non-UTF-8 bytes. Every case checks:
//!
//! - parsing does not panic, and answers Ok or Err;
//! - every problem is one line starting `lb.yaml:LINE:COLUMN: `, LINE and COLUMN 1-based
//!   and within the text: LINE a line of it (the empty one after a last newline included,
//!   so at most its lines + 1), COLUMN at most that line's length + 1, in characters;
//! - reading takes milliseconds (at most 2 s for the few hundred kilobytes made here);
//! - a config generated valid is accepted, and one accepted holds what the director
//!   needs (ports not 0, addresses it can send to, checks it can run, within capacity);
//! - an accepted config, written back from its typed fields in either style (and its
//!   own rendering in the other style), reads back equal, and the director's core plans
//!   it without refusal (so `--check` and a reload agree).
//!
//! Bounded by default (`cargo xtask test` stays fast); `LB_FUZZ_CASES=100000` for more,
//! `LB_FUZZ_SEED=N` to replay a run (or `random`). The case count and seed are printed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lb_daemon::config::{self, Config, Invalid};
use lb_daemon::control::Response;
use lb_daemon::core::{Answer, Capacity, Core, Effect, Input, Time};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};

// --- the model: a YAML tree ------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
    /// A string: quoted when plain would not read back as the same string.
    Str(String),
    /// Written as it is (numbers, durations, keywords, odd values).
    Raw(String),
    /// A collection written in flow style even inside block style.
    Flow(Box<Node>),
    /// `&name node`
    Anchor(String, Box<Node>),
    /// `*name`
    Alias(String),
    /// `!!tag value`
    Tagged(String, Box<Node>),
}

fn s(v: &str) -> Node {
    Node::Str(v.into())
}

fn raw(v: impl ToString) -> Node {
    Node::Raw(v.to_string())
}

fn map(entries: Vec<(&str, Node)>) -> Node {
    Node::Map(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

// --- rendering ---------------------------------------------------------------------------

/// Whether `v` reads back as this string when written plain, in block and flow context.
fn plain_ok(v: &str) -> bool {
    let first = v.chars().next();
    first.is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c == '.' || c == '_')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || "/._:-".contains(c))
        && !v.ends_with(':')
        && !v.contains("::")
        && !matches!(
            v.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null" | ".inf" | ".nan"
        )
        && v.parse::<f64>().is_err()
}

fn double_quoted(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // What YAML does not print as it is (C0 and C1 controls, line and paragraph
            // separators, the byte order mark, U+FFFE and U+FFFF) is escaped.
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}') =>
            {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A key written as it is (a merge key, a complex key, an alias), not as a string.
const RAW_KEY: &str = "\u{0}raw:";

fn scalar(v: &str) -> String {
    if let Some(raw) = v.strip_prefix(RAW_KEY) {
        raw.to_string()
    } else if plain_ok(v) {
        v.to_string()
    } else {
        double_quoted(v)
    }
}

/// One line's worth of `node` (flow style).
fn flow(node: &Node) -> String {
    match node {
        Node::Map(entries) => {
            let items: Vec<String> =
                entries.iter().map(|(k, v)| format!("{}: {}", scalar(k), flow(v))).collect();
            format!("{{{}}}", items.join(", "))
        }
        Node::Seq(items) => {
            format!("[{}]", items.iter().map(flow).collect::<Vec<_>>().join(", "))
        }
        Node::Str(v) => scalar(v),
        Node::Raw(v) => v.clone(),
        Node::Flow(n) => flow(n),
        Node::Anchor(name, n) => format!("&{name} {}", flow(n)),
        Node::Alias(name) => format!("*{name}"),
        Node::Tagged(tag, n) => format!("{tag} {}", flow(n)),
    }
}

fn is_block(node: &Node) -> bool {
    matches!(node, Node::Map(e) if !e.is_empty()) || matches!(node, Node::Seq(i) if !i.is_empty())
}

/// `node` in block style at `indent`; `first` is what the first line already holds (a
/// sequence's `- `), so the first line is not indented again.
fn block(node: &Node, indent: usize, first: bool, out: &mut String) {
    let pad = " ".repeat(indent);
    match node {
        Node::Map(entries) => {
            for (i, (k, v)) in entries.iter().enumerate() {
                if !(first && i == 0) {
                    out.push_str(&pad);
                }
                out.push_str(&scalar(k));
                out.push(':');
                if is_block(v) {
                    out.push('\n');
                    block(v, indent + 2, false, out);
                } else {
                    out.push(' ');
                    out.push_str(&flow(v));
                    out.push('\n');
                }
            }
        }
        Node::Seq(items) => {
            for (i, v) in items.iter().enumerate() {
                if !(first && i == 0) {
                    out.push_str(&pad);
                }
                out.push_str("- ");
                if is_block(v) {
                    block(v, indent + 2, true, out);
                } else {
                    out.push_str(&flow(v));
                    out.push('\n');
                }
            }
        }
        other => {
            if !first {
                out.push_str(&pad);
            }
            out.push_str(&flow(other));
            out.push('\n');
        }
    }
}

fn render(doc: &Node, flow_style: bool) -> String {
    if flow_style || !is_block(doc) {
        format!("{}\n", flow(doc))
    } else {
        let mut out = String::new();
        block(doc, 0, false, &mut out);
        out
    }
}

// --- valid configs from the schema ----------------------------------------------------

/// A duration of `ms` milliseconds, written in one of the units that says it exactly.
fn duration_text(ms: u64, unit: u8) -> String {
    match unit % 4 {
        1 if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        2 if ms.is_multiple_of(100) => format!("{}.{}s", ms / 1000, (ms % 1000) / 100),
        3 if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        0 if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ => format!("{ms}ms"),
    }
}

/// One check of any type, with some of its own keys: every key a type takes is drawn
/// here, so the fuzzer writes each the way an operator might.
fn check_strategy() -> impl Strategy<Value = Node> {
    let http = (
        proptest::option::of("/[a-z0-9._-]{0,12}"),
        proptest::option::of("[a-z]{1,8}\\.example"),
        proptest::option::of(100u16..=599),
        proptest::option::of(".{0,12}"),
    );
    let tls =
        (proptest::option::of(any::<bool>()), proptest::option::of("/etc/lbd/[a-z]{1,8}\\.pem"));
    let udp = ("[A-Za-z0-9 ]{1,12}", proptest::option::of("[A-Za-z0-9]{0,8}"));
    let dns = (
        "[a-z]{1,8}(\\.[a-z]{1,6}){0,2}",
        proptest::option::of(proptest::sample::select(vec!["A", "aaaa", "TXT", "SOA", "MX"])),
        proptest::option::of(any::<bool>()),
    );
    let ldap = (
        proptest::option::of("(dc=[a-z]{1,6},){0,2}dc=[a-z]{1,6}"),
        proptest::option::of(proptest::sample::select(vec![
            "(objectClass=*)",
            "(uid=check)",
            "(&(objectClass=person)(cn=a*))",
        ])),
        any::<bool>(),
    );
    (
        0u8..9,
        proptest::option::of(1u16..=65535),
        proptest::option::of((10u64..=3_600_000, any::<u8>(), any::<u8>(), any::<u16>())),
        proptest::option::of((1u32..=10, 1u32..=10)),
        proptest::option::of(any::<bool>()),
        (http, tls),
        (udp, dns),
        (ldap, "[a-z][a-z0-9 /$_.-]{0,20}"),
    )
        .prop_map(|(kind, port, timing, rise_fall, initial, web, datagram, other)| {
            let ((path, host, status, body), (verify, ca)) = web;
            let ((send, expect), (query, qtype, over_tcp)) = datagram;
            let ((base, filter, bound), command) = other;
            let kinds = ["tcp", "http", "none", "https", "udp", "dns", "ldap", "ping", "exec"];
            let kind = kinds[kind as usize];
            let mut e: Vec<(&str, Node)> = vec![("type", s(kind))];
            if let Some(p) = port {
                e.push(("port", raw(p)));
            }
            if let Some((interval, iu, tu, t)) = timing {
                let timeout = 1 + u64::from(t) * interval / 65536;
                e.push(("interval", raw(duration_text(interval, iu))));
                e.push(("timeout", raw(duration_text(timeout.min(interval), tu))));
            }
            if let Some((rise, fall)) = rise_fall {
                e.push(("rise", raw(rise)));
                e.push(("fall", raw(fall)));
            }
            if let Some(up) = initial {
                e.push(("initial", s(if up { "up" } else { "down" })));
            }
            match kind {
                "http" | "https" => {
                    if let Some(p) = path {
                        e.push(("path", s(&p)));
                    }
                    if let Some(h) = host {
                        e.push(("host", s(&h)));
                    }
                    if let Some(st) = status {
                        e.push(("expect_status", raw(st)));
                    }
                    if let Some(b) = body {
                        e.push(("expect_body", s(&b)));
                    }
                    if kind == "https" {
                        // Verifying needs a CA to verify against.
                        if let Some(v) = verify {
                            e.push(("tls_verify", raw(v && ca.is_some())));
                        }
                        if let Some(ca) = ca {
                            e.push(("ca_file", s(&ca)));
                        }
                    }
                }
                "udp" => {
                    e.push(("send", s(&send)));
                    if let Some(x) = expect {
                        e.push(("expect", s(&x)));
                    }
                }
                "dns" => {
                    e.push(("query", s(&query)));
                    if let Some(q) = qtype {
                        e.push(("qtype", s(q)));
                    }
                    if let Some(tcp) = over_tcp {
                        e.push(("transport", s(if tcp { "tcp" } else { "udp" })));
                    }
                    if let Some(x) = expect {
                        e.push(("expect", s(&x)));
                    }
                }
                "ldap" => {
                    if let Some(b) = base {
                        e.push(("base", s(&b)));
                    }
                    if let Some(f) = filter {
                        e.push(("filter", s(f)));
                    }
                    if bound {
                        e.push(("bind_dn", s("cn=check,dc=example")));
                        e.push(("password_file", s("/etc/lbd/ldap.secret")));
                    }
                }
                "exec" => e.push(("command", s(&command))),
                _ => {}
            }
            map(e)
        })
}

#[derive(Debug, Clone)]
struct ServiceSpec {
    v6: bool,
    port: u16,
    udp: bool,
    forwarding: Option<u8>,
    keywords: (bool, bool, Option<bool>),
    checks: (u8, Vec<Node>),
    reals: Vec<(Option<u16>, Option<u32>)>,
    name: String,
}

fn service_strategy() -> impl Strategy<Value = ServiceSpec> {
    (
        any::<bool>(),
        1u16..=65535,
        any::<bool>(),
        proptest::option::of(0u8..3),
        (any::<bool>(), any::<bool>(), proptest::option::of(any::<bool>())),
        (0u8..3, proptest::collection::vec(check_strategy(), 1..4)),
        proptest::collection::vec(
            (proptest::option::of(1u16..=65535), proptest::option::of(0u32..=65535)),
            1..6,
        ),
        "[a-z][a-z0-9 _-]{0,10}",
    )
        .prop_map(|(v6, port, udp, forwarding, keywords, checks, reals, name)| ServiceSpec {
            v6,
            port,
            udp,
            forwarding,
            keywords,
            checks,
            reals,
            name,
        })
}

fn service_node(i: usize, spec: &ServiceSpec) -> Node {
    let vip = if spec.v6 {
        format!("[2001:db8::{:x}]:{}", i + 1, spec.port)
    } else {
        format!("192.0.2.{}:{}", i + 1, spec.port)
    };
    let nat = spec.forwarding == Some(1);
    let mut e: Vec<(&str, Node)> = vec![
        ("name", s(&spec.name)),
        ("vip", s(&vip)),
        ("protocol", s(if spec.udp { "udp" } else { "tcp" })),
    ];
    if let Some(f) = spec.forwarding {
        e.push(("forwarding", s(["dr", "nat", "tunnel"][f as usize])));
    }
    if spec.keywords.0 {
        e.push(("scheduler", s("maglev")));
    }
    if spec.keywords.1 {
        e.push(("persistence", raw("0s")));
    }
    if let Some(remove) = spec.keywords.2 {
        e.push(("on_failure", s(if remove { "remove" } else { "quiesce" })));
    }
    match spec.checks.0 {
        1 => e.push(("check", spec.checks.1[0].clone())),
        2 => e.push(("checks", Node::Seq(spec.checks.1.clone()))),
        _ => {}
    }
    let reals = spec
        .reals
        .iter()
        .enumerate()
        .map(|(j, (port, weight))| {
            let ip = if spec.v6 {
                format!("2001:db8:1:{:x}::{:x}", i + 1, j + 1)
            } else {
                format!("10.0.{}.{}", i + 1, j + 1)
            };
            // A port of its own only with NAT (or the VIP's own).
            let address = match port {
                Some(p) if nat => {
                    if spec.v6 {
                        format!("[{ip}]:{p}")
                    } else {
                        format!("{ip}:{p}")
                    }
                }
                Some(_) if j % 2 == 0 => {
                    if spec.v6 {
                        format!("[{ip}]:{}", spec.port)
                    } else {
                        format!("{ip}:{}", spec.port)
                    }
                }
                _ => ip,
            };
            let mut r: Vec<(&str, Node)> = vec![("address", s(&address))];
            if let Some(w) = weight {
                r.push(("weight", raw(w)));
            }
            map(r)
        })
        .collect();
    e.push(("reals", Node::Seq(reals)));
    map(e)
}

/// A valid config, as a tree.
fn valid_strategy() -> impl Strategy<Value = Node> {
    (
        proptest::sample::subsequence(vec!["eth0", "eth1", "ens3", "veth-a", "bond0.10"], 1..4),
        proptest::option::of(0u8..3),
        proptest::option::of("/run/lbd/[a-z]{1,10}\\.sock"),
        proptest::option::of((0u32..=1019, 0u32..=60_000)),
        proptest::collection::vec(service_strategy(), 1..6),
        proptest::option::of((any::<bool>(), 1u16..=65535)),
    )
        .prop_map(|(interfaces, xdp, socket, capacity, services, metrics)| {
            let mut d: Vec<(&str, Node)> =
                vec![("interfaces", Node::Seq(interfaces.iter().map(|i| s(i)).collect()))];
            if let Some(x) = xdp {
                d.push(("xdp_mode", s(["auto", "native", "generic"][x as usize])));
            }
            if let Some(p) = socket {
                d.push(("socket", s(&p)));
            }
            if let Some((v6, port)) = metrics {
                let at = if v6 { format!("[::1]:{port}") } else { format!("127.0.0.1:{port}") };
                d.push(("metrics", s(&at)));
            }
            if let Some((vips, reals)) = capacity {
                let total: usize = services.iter().map(|s| s.reals.len()).sum();
                d.push(("max_vips", raw(services.len() as u32 + vips)));
                d.push(("max_reals", raw(total as u32 + reals)));
            }
            let services = services.iter().enumerate().map(|(i, s)| service_node(i, s)).collect();
            map(vec![("director", map(d)), ("services", Node::Seq(services))])
        })
}

// --- mutations -----------------------------------------------------------------------

/// Values a hostile or careless user might write anywhere.
const ODD: &[&str] = &[
    "99999999999999999999999999",
    "-1",
    "-0",
    "0",
    "4294967296",
    "65536",
    "1e309",
    "-1e309",
    ".inf",
    "-.inf",
    ".nan",
    "0x10",
    "0o17",
    "1_000",
    "~",
    "null",
    "yes",
    "true",
    "''",
    "\"\"",
    "99999999999999999999s",
    "1e400h",
    "-1s",
    "1.5.5ms",
    "0.0000000001ms",
    "10 s",
    "2S",
    "nans",
    "\"\u{661}s\"",
    "\"a\\nb\"",
    "\"\\t\\r\\x00\\x1b[31m\"",
    "\"\u{2028}x\u{85}\"",
    "\"0.0.0.0:0\"",
    "\"[::]:0\"",
    "\"192.0.2.1:0\"",
    "\"10.0.0.1:99999\"",
    "\"[2001:db8::1]\"",
    "\"fe80::1%eth0\"",
    "\"224.0.0.1\"",
    "\"a/b\"",
    "\"0123456789abcdef\"",
    "\"/healthz now\"",
    "\"/\\r\\nX-Evil: 1\"",
    "[]",
    "{}",
    "[[]]",
    "{a: {b: {c: d}}}",
    "!!binary aGVsbG8=",
    "!!str 80",
    "!!int \"80\"",
    "!custom x",
    "&x 5",
    "|\n  literal\n  text",
    ">-\n  folded",
];

/// Odd values for keys of a known kind: where a value of the right type but the wrong
/// size or shape breaks what a generic mutation would rarely reach.
const ODD_DURATIONS: &[&str] = &[
    "99999999999999999999s",
    "18446744073709551616s",
    "1e400h",
    "\"340282366920938463463374607431768211456h\"",
    "-1s",
    "-0s",
    "0s",
    "0ms",
    "0.0000000001ms",
    "9ms",
    "10ms",
    "1h",
    "60m",
    "3600.000000001s",
    "61m",
    "3599999.999999999ms",
    ".5s",
    "5.s",
    ".s",
    "1.5.5ms",
    "nans",
    "infs",
    "1 s",
    "1S",
    "1d",
    "\"\u{661}s\"",
    "2",
    "-2",
    ".inf",
    ".nan",
    "~",
];
const ODD_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "65535",
    "65536",
    "99",
    "100",
    "599",
    "600",
    "1024",
    "1025",
    "65534",
    "4294967295",
    "4294967296",
    "18446744073709551616",
    "1e3",
    "1.5",
    "0x10",
    "0o10",
    "+5",
    "\"80\"",
    ".inf",
    "~",
];
const ODD_ADDRESSES: &[&str] = &[
    "\"192.0.2.1:0\"",
    "\"0.0.0.0:80\"",
    "\"[::]:80\"",
    "\"255.255.255.255:80\"",
    "\"224.0.0.1:80\"",
    "\"[ff02::1]:80\"",
    "\"10.0.0.1:0\"",
    "\"10.0.0.1:65536\"",
    "\"10.0.0.1\"",
    "\"0.0.0.0\"",
    "\"::\"",
    "\"[2001:db8::1]:80\"",
    "\"2001:db8::1\"",
    "\"[2001:db8::1]\"",
    "\"fe80::1%eth0\"",
    "\"192.0.2.1\"",
    "\"192.0.2.1:80:80\"",
    "\"localhost:80\"",
    "\"1.2.3.4.5:80\"",
];

#[derive(Debug, Clone)]
enum Mutation {
    Odd(Index, Index),
    /// An odd value for a key of a known kind (durations, numbers, addresses).
    Typed(Index, Index),
    WrongType(Index, u8),
    UnknownKey(Index, String),
    RemoveKey(Index, Index),
    DuplicateKey(Index, Index),
    Deep(Index, usize, bool),
    Alias(Index, Index),
    Tag(Index, u8),
    Many(Index, usize),
    RawKey(Index, Index),
}

/// Keys that are not plain strings.
const ODD_KEYS: &[&str] = &[
    "<<",
    "? [a]",
    "? {a: b}",
    "1",
    "~",
    "null",
    "[x]",
    "!!binary aGk=",
    "&k key",
    "*k",
    "\"\"",
    "\"a\\nb\"",
    "'it''s'",
    "ä",
    "a b",
    "#",
    "-",
    "? ",
];

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Odd(a, b)),
        4 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Typed(a, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(a, t)| Mutation::WrongType(a, t)),
        2 => (any::<Index>(), "[a-z_]{1,10}").prop_map(|(a, k)| Mutation::UnknownKey(a, k)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::RemoveKey(a, b)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::DuplicateKey(a, b)),
        1 => (any::<Index>(), prop_oneof![Just(10usize), Just(62), Just(63), Just(64), Just(65), 1usize..300, Just(300)], any::<bool>())
            .prop_map(|(a, d, m)| Mutation::Deep(a, d, m)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Alias(a, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(a, t)| Mutation::Tag(a, t)),
        1 => (any::<Index>(), prop_oneof![Just(9usize), Just(100), Just(1100)])
            .prop_map(|(a, n)| Mutation::Many(a, n)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, k)| Mutation::RawKey(a, k)),
    ]
}

/// Paths (child indexes) of every node in pre-order, the root first.
fn paths(node: &Node, at: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    out.push(at.clone());
    let children: Vec<&Node> = match node {
        Node::Map(e) => e.iter().map(|(_, v)| v).collect(),
        Node::Seq(items) => items.iter().collect(),
        Node::Flow(n) | Node::Anchor(_, n) | Node::Tagged(_, n) => vec![n],
        _ => vec![],
    };
    for (i, c) in children.into_iter().enumerate() {
        at.push(i);
        paths(c, at, out);
        at.pop();
    }
}

fn get_mut<'a>(node: &'a mut Node, path: &[usize]) -> &'a mut Node {
    let Some((&i, rest)) = path.split_first() else { return node };
    let child = match node {
        Node::Map(e) => &mut e[i].1,
        Node::Seq(items) => &mut items[i],
        Node::Flow(n) | Node::Anchor(_, n) | Node::Tagged(_, n) => n,
        _ => unreachable!("paths() gives only existing children"),
    };
    get_mut(child, rest)
}

/// The values of keys of a known kind, with the odd values for that kind.
fn typed_paths(doc: &Node) -> Vec<(Vec<usize>, &'static [&'static str])> {
    fn walk(
        node: &Node,
        at: &mut Vec<usize>,
        out: &mut Vec<(Vec<usize>, &'static [&'static str])>,
    ) {
        match node {
            Node::Map(e) => {
                for (i, (k, v)) in e.iter().enumerate() {
                    at.push(i);
                    let kind: Option<&'static [&'static str]> = match k.as_str() {
                        "interval" | "timeout" | "persistence" => Some(ODD_DURATIONS),
                        "port" | "weight" | "rise" | "fall" | "max_vips" | "max_reals"
                        | "expect_status" => Some(ODD_NUMBERS),
                        "vip" | "address" | "metrics" => Some(ODD_ADDRESSES),
                        _ => None,
                    };
                    if let Some(kind) = kind {
                        out.push((at.clone(), kind));
                    }
                    walk(v, at, out);
                    at.pop();
                }
            }
            Node::Seq(items) => {
                for (i, v) in items.iter().enumerate() {
                    at.push(i);
                    walk(v, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(doc, &mut Vec::new(), &mut out);
    out
}

fn all_paths(doc: &Node) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    paths(doc, &mut Vec::new(), &mut out);
    out
}

fn mutate(doc: &mut Node, m: &Mutation, anchors: &mut usize) {
    let list = all_paths(doc);
    let pick = |i: &Index| list[i.index(list.len())].clone();
    match m {
        Mutation::Odd(at, v) => *get_mut(doc, &pick(at)) = raw(ODD[v.index(ODD.len())]),
        Mutation::Typed(at, v) => {
            let typed = typed_paths(doc);
            if !typed.is_empty() {
                let (path, values) = &typed[at.index(typed.len())];
                *get_mut(doc, path) = raw(values[v.index(values.len())]);
            }
        }
        Mutation::WrongType(at, t) => {
            let node = get_mut(doc, &pick(at));
            *node = match (t % 4, &*node) {
                (0, Node::Map(_) | Node::Seq(_)) => s("oops"),
                (0, other) => Node::Seq(vec![other.clone()]),
                (1, other) => map(vec![("value", other.clone())]),
                (2, _) => raw("42"),
                _ => Node::Flow(Box::new(node.clone())),
            };
        }
        Mutation::UnknownKey(at, key) => {
            if let Node::Map(e) = get_mut(doc, &pick(at)) {
                e.push((key.clone(), s("x")));
            }
        }
        Mutation::RemoveKey(at, k) => {
            if let Node::Map(e) = get_mut(doc, &pick(at))
                && !e.is_empty()
            {
                e.remove(k.index(e.len()));
            }
        }
        Mutation::DuplicateKey(at, k) => {
            if let Node::Map(e) = get_mut(doc, &pick(at))
                && !e.is_empty()
            {
                let dup = e[k.index(e.len())].clone();
                e.push(dup);
            }
        }
        Mutation::Deep(at, depth, as_map) => {
            let mut n = s("deep");
            for _ in 0..*depth {
                n = if *as_map { map(vec![("a", n)]) } else { Node::Seq(vec![n]) };
            }
            *get_mut(doc, &pick(at)) = Node::Flow(Box::new(n));
        }
        Mutation::Alias(a, b) => {
            // Anchor the earlier node in document order, alias it from the later one (which
            // may be inside it: an alias that names a node it is in).
            let (x, y) = (a.index(list.len()), b.index(list.len()));
            let (first, second) = (list[x.min(y)].clone(), list[x.max(y)].clone());
            *anchors += 1;
            let name = format!("a{anchors}");
            let node = get_mut(doc, &first);
            *node = Node::Anchor(name.clone(), Box::new(Node::Flow(Box::new(node.clone()))));
            if x != y {
                let mut second = second;
                if second.starts_with(&first) {
                    // Now through the Anchor and Flow wrappers.
                    second.splice(first.len()..first.len(), [0, 0]);
                }
                *get_mut(doc, &second) = Node::Alias(name);
            }
        }
        Mutation::Tag(at, t) => {
            let node = get_mut(doc, &pick(at));
            let tag = ["!!str", "!!int", "!!map", "!!seq", "!custom", "!!null"][*t as usize % 6];
            *node = Node::Tagged(tag.into(), Box::new(Node::Flow(Box::new(node.clone()))));
        }
        Mutation::RawKey(at, k) => {
            if let Node::Map(e) = get_mut(doc, &pick(at)) {
                e.push((format!("{RAW_KEY}{}", ODD_KEYS[k.index(ODD_KEYS.len())]), s("x")));
            }
        }
        Mutation::Many(at, n) => {
            if let Node::Seq(items) = get_mut(doc, &pick(at))
                && let Some(first) = items.first().cloned()
            {
                items.resize(*n, first);
            }
        }
    }
}

/// Changes to the text itself.
#[derive(Debug, Clone)]
enum Edit {
    Insert(Index, char),
    Delete(Index, usize),
    Cut(Index),
    DuplicateLine(Index),
    Bom,
    Directive(u8),
    SecondDocument,
    Crlf,
    Bytes(Index, Vec<u8>),
    /// Collections nested `depth` deep, written into the text (the tree would take as
    /// deep a recursion to render).
    Nest(Index, usize, u8),
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), prop_oneof![
            Just('\t'), Just('\r'), Just('\n'), Just(' '), Just(':'), Just('-'), Just('['), Just('{'),
            Just('"'), Just('\''), Just('#'), Just('&'), Just('*'), Just('!'), Just('|'), Just('>'),
            Just('%'), Just('@'), Just('\0'), Just('\u{85}'), Just('\u{2028}'), Just('\u{feff}'), Just('é'),
            any::<char>()
        ]).prop_map(|(i, c)| Edit::Insert(i, c)),
        2 => (any::<Index>(), 1usize..40).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => any::<Index>().prop_map(Edit::Cut),
        1 => any::<Index>().prop_map(Edit::DuplicateLine),
        1 => Just(Edit::Bom),
        1 => (any::<Index>(), prop_oneof![Just(65usize), Just(256), Just(5000), Just(20_000)], any::<u8>())
            .prop_map(|(i, d, k)| Edit::Nest(i, d, k)),
        1 => any::<u8>().prop_map(Edit::Directive),
        1 => Just(Edit::SecondDocument),
        1 => Just(Edit::Crlf),
        2 => (any::<Index>(), prop_oneof![
            Just(vec![0xffu8]), Just(vec![0xc3]), Just(vec![0xed, 0xa0, 0x80]), Just(vec![0x80, 0x80]),
            Just(vec![0xf4, 0x90, 0x80, 0x80]), proptest::collection::vec(any::<u8>(), 1..4)
        ]).prop_map(|(i, b)| Edit::Bytes(i, b)),
    ]
}

/// Applies `edit` to `bytes` (a char boundary is kept where the edit is textual).
fn apply_edit(bytes: &mut Vec<u8>, edit: &Edit) {
    let boundary = |bytes: &[u8], i: &Index| {
        let mut at = i.index(bytes.len() + 1);
        while at < bytes.len() && (bytes[at] & 0xc0) == 0x80 {
            at += 1;
        }
        at
    };
    match edit {
        Edit::Insert(i, c) => {
            let at = boundary(bytes, i);
            let mut buf = [0u8; 4];
            bytes.splice(at..at, c.encode_utf8(&mut buf).bytes());
        }
        Edit::Delete(i, n) => {
            let at = boundary(bytes, i);
            let mut end = (at + n).min(bytes.len());
            while end < bytes.len() && (bytes[end] & 0xc0) == 0x80 {
                end += 1;
            }
            bytes.drain(at..end);
        }
        Edit::Cut(i) => {
            let at = boundary(bytes, i);
            bytes.truncate(at);
        }
        Edit::DuplicateLine(i) => {
            let at = boundary(bytes, i);
            let start = bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            let end =
                bytes[at..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |p| at + p + 1);
            let line = bytes[start..end].to_vec();
            bytes.splice(end..end, line);
        }
        Edit::Bom => bytes.splice(0..0, "\u{feff}".bytes()).for_each(drop),
        Edit::Directive(d) => {
            let head = [
                "%YAML 1.1\n---\n",
                "%YAML 1.2\n---\n",
                "%YAML 2.0\n---\n",
                "%TAG !e! tag:example.com,2000:\n---\n",
                "--- !custom\n",
                "---\n",
                "...\n",
                "# a comment\n",
            ][*d as usize % 8];
            bytes.splice(0..0, head.bytes()).for_each(drop);
        }
        Edit::SecondDocument => bytes.extend_from_slice(b"---\ndirector: {interfaces: [eth0]}\n"),
        Edit::Crlf => {
            let text: Vec<u8> = bytes
                .iter()
                .flat_map(|&b| if b == b'\n' { vec![b'\r', b'\n'] } else { vec![b] })
                .collect();
            *bytes = text;
        }
        Edit::Nest(i, depth, kind) => {
            let at = boundary(bytes, i);
            let (open, close) = [("[", "]"), ("{a: ", "}"), ("- ", "")][*kind as usize % 3];
            let nest = format!("{}x{}", open.repeat(*depth), close.repeat(*depth));
            bytes.splice(at..at, nest.bytes());
        }
        Edit::Bytes(i, b) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, b.iter().copied());
        }
    }
}

/// A generated case: the document, how it was changed, and the file's bytes.
#[derive(Debug, Clone)]
struct Case {
    doc: Node,
    flow_style: bool,
    mutations: Vec<Mutation>,
    edits: Vec<Edit>,
}

impl Case {
    fn valid(&self) -> bool {
        self.mutations.is_empty() && self.edits.is_empty()
    }

    fn tree(&self) -> Node {
        let mut doc = self.doc.clone();
        let mut anchors = 0;
        for m in &self.mutations {
            mutate(&mut doc, m, &mut anchors);
        }
        doc
    }

    fn bytes(&self) -> Vec<u8> {
        let mut bytes = render(&self.tree(), self.flow_style).into_bytes();
        for e in &self.edits {
            apply_edit(&mut bytes, e);
        }
        bytes
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        valid_strategy(),
        any::<bool>(),
        prop_oneof![
            1 => Just(Vec::new()),
            3 => proptest::collection::vec(mutation_strategy(), 1..4),
        ],
        prop_oneof![
            3 => Just(Vec::new()),
            1 => proptest::collection::vec(edit_strategy(), 1..4),
        ],
    )
        .prop_map(|(doc, flow_style, mutations, edits)| Case {
            doc,
            flow_style,
            mutations,
            edits,
        })
}

// --- the properties ------------------------------------------------------------------

/// Every line of `problems` is `FILE:LINE:COLUMN: message`, LINE and COLUMN within `text`.
fn check_located(file: &str, problems: &str, bytes: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.split('\n').collect();
    if problems.is_empty() {
        return Err("no problem reported".into());
    }
    for line in problems.lines() {
        let rest = line
            .strip_prefix(file)
            .and_then(|r| r.strip_prefix(':'))
            .ok_or_else(|| format!("not located at {file}: {line:?}"))?;
        let mut parts = rest.splitn(3, ':');
        let (l, c, message) = (parts.next(), parts.next(), parts.next());
        let l: usize =
            l.and_then(|l| l.parse().ok()).ok_or_else(|| format!("no line: {line:?}"))?;
        let c: usize =
            c.and_then(|c| c.parse().ok()).ok_or_else(|| format!("no column: {line:?}"))?;
        let message = message.unwrap_or_default();
        if !message.starts_with(' ') || message.trim().is_empty() {
            return Err(format!("no message after the location: {line:?}"));
        }
        if l == 0 || c == 0 || l > lines.len() {
            return Err(format!(
                "line {l}, column {c} outside the text ({} lines): {line:?}",
                lines.len()
            ));
        }
        let width = lines[l - 1].chars().count();
        if c > width + 1 {
            return Err(format!("column {c} beyond line {l}'s {width} characters: {line:?}"));
        }
    }
    Ok(())
}

/// A duration as the config writes it, exactly: milliseconds with six decimals.
fn duration_exact(d: std::time::Duration) -> Node {
    let n = d.as_nanos();
    raw(format!("{}.{:06}ms", n / 1_000_000, n % 1_000_000))
}

/// The YAML that says `config`, from its typed fields.
fn serialise(config: &Config) -> Node {
    let lower = |v: &dyn std::fmt::Debug| format!("{v:?}").to_lowercase();
    let d = &config.director;
    let mut director = vec![
        ("interfaces", Node::Seq(d.interfaces.iter().map(|i| s(i)).collect())),
        ("xdp_mode", s(&lower(&d.xdp_mode))),
        ("socket", s(&d.socket.display().to_string())),
        ("pin_root", s(&d.pin_root.display().to_string())),
        ("max_vips", raw(d.max_vips)),
        ("max_reals", raw(d.max_reals)),
    ];
    if let Some(at) = d.metrics {
        director.push(("metrics", s(&at.to_string())));
    }
    let director = map(director);
    let check = |c: &config::Check| {
        let mut e = vec![("type", s(c.probe.name()))];
        if let Some(p) = c.port {
            e.push(("port", raw(p)));
        }
        e.push(("interval", duration_exact(c.interval)));
        e.push(("timeout", duration_exact(c.timeout)));
        e.push(("rise", raw(c.rise)));
        e.push(("fall", raw(c.fall)));
        if let Some(initial) = c.initial {
            e.push(("initial", s(&lower(&initial))));
        }
        match &c.probe {
            config::Probe::Http(h) => {
                e.push(("path", s(&h.path)));
                if let Some(host) = &h.host {
                    e.push(("host", s(host)));
                }
                e.push(("expect_status", raw(h.expect_status)));
                if let Some(body) = &h.expect_body {
                    e.push(("expect_body", s(body)));
                }
            }
            config::Probe::Https(t) => {
                e.push(("path", s(&t.http.path)));
                if let Some(host) = &t.http.host {
                    e.push(("host", s(host)));
                }
                e.push(("expect_status", raw(t.http.expect_status)));
                if let Some(body) = &t.http.expect_body {
                    e.push(("expect_body", s(body)));
                }
                e.push(("tls_verify", raw(t.tls_verify)));
                if let Some(ca) = &t.ca_file {
                    e.push(("ca_file", s(&ca.display().to_string())));
                }
            }
            config::Probe::Udp(u) => {
                e.push(("send", s(&u.send)));
                if let Some(x) = &u.expect {
                    e.push(("expect", s(x)));
                }
            }
            config::Probe::Dns(d) => {
                e.push(("query", s(&d.query)));
                e.push(("qtype", s(&d.qtype)));
                if let Some(x) = &d.expect {
                    e.push(("expect", s(x)));
                }
                if let Some(t) = &d.transport {
                    e.push(("transport", s(&lower(t))));
                }
            }
            config::Probe::Ldap(l) => {
                e.push(("base", s(&l.base)));
                e.push(("filter", s(&l.filter)));
                if let Some(b) = &l.bind {
                    e.push(("bind_dn", s(&b.dn)));
                    e.push(("password_file", s(&b.password_file.display().to_string())));
                }
            }
            config::Probe::Exec(x) => e.push(("command", s(&x.command))),
            config::Probe::Tcp | config::Probe::Ping | config::Probe::None => {}
        }
        map(e)
    };
    let services = config
        .services
        .iter()
        .map(|sv| {
            let mut e = vec![
                ("name", s(&sv.name)),
                ("vip", s(&sv.vip.to_string())),
                ("protocol", s(&lower(&sv.protocol))),
                ("forwarding", s(&lower(&sv.forwarding))),
                ("scheduler", s("maglev")),
                ("persistence", raw("0s")),
                ("on_failure", s(&lower(&sv.on_failure))),
            ];
            if let Some(c) = &sv.check {
                e.push(("check", check(c)));
            }
            if let Some(cs) = &sv.checks {
                e.push(("checks", Node::Seq(cs.iter().map(check).collect())));
            }
            let written = |a: &config::RealAddress| match a.port {
                Some(p) => std::net::SocketAddr::new(a.ip, p).to_string(),
                None => a.ip.to_string(),
            };
            if let Some(f) = &sv.fallback {
                e.push(("fallback", s(&written(f))));
            }
            if let Some(n) = &sv.notify {
                e.push(("notify", s(&n.display().to_string())));
            }
            if !sv.recover.is_empty() {
                let steps = sv
                    .recover
                    .iter()
                    .map(|st| {
                        map(vec![("after", duration_exact(st.after)), ("command", s(&st.command))])
                    })
                    .collect();
                e.push(("recover", Node::Seq(steps)));
            }
            let reals = sv
                .reals
                .iter()
                .map(|r| map(vec![("address", s(&written(&r.address))), ("weight", raw(r.weight))]))
                .collect();
            e.push(("reals", Node::Seq(reals)));
            map(e)
        })
        .collect();
    map(vec![("director", director), ("services", Node::Seq(services))])
}

/// Whether `node` holds what reads differently in block and flow style: a block scalar,
/// a key written raw (`#` starts a comment, `? ` a complex key).
fn style_dependent(node: &Node) -> bool {
    match node {
        Node::Map(e) => e.iter().any(|(k, v)| k.starts_with(RAW_KEY) || style_dependent(v)),
        Node::Seq(items) => items.iter().any(style_dependent),
        Node::Raw(v) => v.contains('\n'),
        Node::Flow(n) | Node::Anchor(_, n) | Node::Tagged(_, n) => style_dependent(n),
        Node::Str(_) | Node::Alias(_) => false,
    }
}

/// What the director needs of every config `--check` accepts, checked here independently
/// of the validation that should ensure it.
fn director_can_apply(c: &Config) -> Result<(), String> {
    let hour = std::time::Duration::from_secs(3600);
    let fail = |what: String| Err(format!("accepted, but {what}"));
    if c.director.interfaces.is_empty() || c.services.len() > c.director.max_vips as usize {
        return fail("no interface, or more services than max_vips".into());
    }
    let listenable = |m: std::net::SocketAddr| {
        m.port() != 0
            && !m.ip().is_multicast()
            && !matches!(m.ip(), std::net::IpAddr::V4(a) if a.is_broadcast())
    };
    if c.director.metrics.is_some_and(|m| !listenable(m)) {
        return fail(format!("metrics at {:?}, where nothing can listen", c.director.metrics));
    }
    let reals: usize = c.services.iter().map(|s| s.reals.len()).sum();
    if reals > c.director.max_reals as usize || c.director.max_reals > 65534 {
        return fail(format!("{reals} reals for max_reals {}", c.director.max_reals));
    }
    for s in &c.services {
        let usable = |ip: std::net::IpAddr| !ip.is_unspecified() && !ip.is_multicast();
        if s.vip.port() == 0 || !usable(s.vip.ip()) || s.reals.is_empty() {
            return fail(format!("the VIP {} (or its reals) cannot be served", s.vip));
        }
        for r in &s.reals {
            let addr = r.socket_addr(&s.vip);
            if addr.port() == 0 || !usable(addr.ip()) || addr.is_ipv4() != s.vip.is_ipv4() {
                return fail(format!("the real {addr} of {} cannot be reached", s.vip));
            }
            if r.weight > 65535 {
                return fail(format!("weight {}", r.weight));
            }
        }
        for check in s.all_checks() {
            if check.port == Some(0)
                || check.interval > hour
                || check.timeout > check.interval
                || check.timeout.is_zero()
                || check.rise == 0
                || check.fall == 0
            {
                return fail(format!("a check of {} cannot run: {check:?}", s.vip));
            }
        }
    }
    Ok(())
}

/// The core plans `config` without refusing it, as a reload would.
fn core_accepts(config: &Config) -> Result<(), String> {
    let capacity = Capacity { vips: config.director.max_vips, reals: config.director.max_reals };
    let mut core = Core::new(capacity, Vec::new(), Vec::new(), 1);
    let input = Input::Config {
        config: Box::new(config.clone()),
        source: "lb.yaml".into(),
        reply: Some(1),
    };
    for effect in core.handle(Time::from_secs(1), input) {
        if let Effect::Answer(_, Answer::Done(Response::Error { message })) = effect {
            return Err(format!("--check accepted what the core refuses: {message}"));
        }
    }
    Ok(())
}

/// How a case ended, for the run's summary.
#[derive(Default)]
struct Tally {
    accepted: std::sync::atomic::AtomicUsize,
    accepted_mutated: std::sync::atomic::AtomicUsize,
    refused: std::sync::atomic::AtomicUsize,
}

fn check_case(case: &Case, dir: &Path, tally: &Tally) -> Result<(), String> {
    use std::sync::atomic::Ordering::Relaxed;
    let bytes = case.bytes();
    let started = Instant::now();
    let result = match String::from_utf8(bytes.clone()) {
        Ok(text) => std::panic::catch_unwind(|| config::parse(Path::new("lb.yaml"), &text)),
        Err(_) => {
            // Not UTF-8: through the file, as lbd reads it.
            let path = dir.join("lb.yaml");
            std::fs::write(&path, &bytes).map_err(|e| e.to_string())?;
            let loaded = std::panic::catch_unwind(|| config::load(&path));
            loaded.map(|r| {
                r.map_err(|Invalid(p)| {
                    Invalid(
                        p.into_iter()
                            .map(|p| config::Problem { file: "lb.yaml".into(), ..p })
                            .collect(),
                    )
                })
            })
        }
    };
    let result = result.map_err(|_| "the parser panicked".to_string())?;
    let took = started.elapsed();
    // Linear in the text: a few hundred kilobytes at most here, read in milliseconds.
    if took > std::time::Duration::from_secs(2) {
        return Err(format!("reading {} bytes took {took:?}", bytes.len()));
    }
    match result {
        Err(invalid) => {
            tally.refused.fetch_add(1, Relaxed);
            if case.valid() {
                return Err(format!("a valid config was refused: {invalid}"));
            }
            check_located("lb.yaml", &invalid.to_string(), &bytes)
        }
        Ok(config) => {
            tally.accepted.fetch_add(1, Relaxed);
            if !case.valid() {
                tally.accepted_mutated.fetch_add(1, Relaxed);
            }
            // Written back from the typed config, in either style: reads back equal.
            for flow_style in [false, true] {
                let again = render(&serialise(&config), flow_style);
                match config::parse(Path::new("lb.yaml"), &again) {
                    Ok(c) if c == config => {}
                    Ok(c) => {
                        return Err(format!("written back, it reads differently:\n{again}\n{c:?}"));
                    }
                    Err(e) => return Err(format!("written back, it is refused: {e}\n{again}")),
                }
            }
            // In the other style, where the text is still the rendering (and holds nothing
            // that reads differently there): equal too.
            if case.edits.is_empty() && !style_dependent(&case.tree()) {
                let other = render(&case.tree(), !case.flow_style);
                match config::parse(Path::new("lb.yaml"), &other) {
                    Ok(c) if c == config => {}
                    Ok(_) => {
                        return Err(format!("in the other style, it reads differently:\n{other}"));
                    }
                    Err(e) => {
                        return Err(format!("in the other style, it is refused: {e}\n{other}"));
                    }
                }
            }
            director_can_apply(&config)?;
            core_accepts(&config)
        }
    }
}

// --- running -------------------------------------------------------------------------

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The seed of this run: `LB_FUZZ_SEED`, a fresh one for `random`, else a fixed one (a
/// test suite's run is reproducible; `LB_FUZZ_SEED=random` explores).
fn seed() -> u64 {
    match std::env::var("LB_FUZZ_SEED").as_deref() {
        Ok("random") => {
            use std::hash::{BuildHasher as _, RandomState};
            RandomState::new().hash_one(std::time::SystemTime::now())
        }
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("LB_FUZZ_SEED={v}: a number or random")),
        Err(_) => 0x6c62_6421_6675_7a7a,
    }
}

fn runner(cases: u32, seed: u64) -> TestRunner {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(
            &(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes(),
        );
    }
    let config = RunnerConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..RunnerConfig::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

/// Printed past the test harness's capture, so every run shows its count and seed.
fn say(line: String) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lb-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn generated_configs_parse_or_fail_located() {
    let cases = env_number("LB_FUZZ_CASES").unwrap_or(1000) as u32;
    let seed = seed();
    let dir = temp_dir("parse");
    let started = Instant::now();
    let tally = Tally::default();
    let mut runner = runner(cases, seed);
    let result = runner.run(&case_strategy(), |case| {
        check_case(&case, &dir, &tally).map_err(|e| {
            TestCaseError::fail(format!(
                "{e}\n--- the file:\n{}",
                String::from_utf8_lossy(&case.bytes())
            ))
        })
    });
    std::fs::remove_dir_all(&dir).ok();
    let count = |n: &std::sync::atomic::AtomicUsize| n.load(std::sync::atomic::Ordering::Relaxed);
    say(format!(
        "fuzz_config: {cases} cases, seed {seed} (LB_FUZZ_SEED={seed} LB_FUZZ_CASES={cases} to replay), {:.1?}: {} accepted ({} of them mutated), {} refused, located",
        started.elapsed(),
        count(&tally.accepted),
        count(&tally.accepted_mutated),
        count(&tally.refused),
    ));
    if let Err(e) = result {
        panic!("seed {seed}: {e}");
    }
}

#[test]
fn lbd_check_exits_0_or_1_with_located_problems() {
    let cases = env_number("LB_FUZZ_BIN_CASES").unwrap_or(24) as u32;
    let seed = seed() ^ 1;
    let dir = temp_dir("bin");
    let path = dir.join("lb.yaml");
    let file = path.display().to_string();
    let started = Instant::now();
    let mut runner = runner(cases, seed);
    let result = runner.run(&case_strategy(), |case| {
        let bytes = case.bytes();
        std::fs::write(&path, &bytes).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_lbd"))
            .arg("--config")
            .arg(&path)
            .arg("--check")
            .env("LBD_LOG", "off")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let shown =
            || format!("stderr:\n{stderr}\n--- the file:\n{}", String::from_utf8_lossy(&bytes));
        // What the library says of the same file, for the binary to agree with.
        let library = config::load(&path);
        match out.status.code() {
            Some(0) => {
                let Ok(accepted) = &library else {
                    return Err(TestCaseError::fail(format!(
                        "lbd accepted what the library refuses: {}",
                        shown()
                    )));
                };
                // The library's warnings, located, each on a line; then the verdict.
                let text = String::from_utf8_lossy(&bytes);
                let warned: String = config::warnings(&path, &text, accepted)
                    .iter()
                    .map(|w| format!("{w}\n"))
                    .collect();
                prop_assert!(
                    stderr.starts_with(&format!("{warned}{file}: configuration is valid (")),
                    "{}",
                    shown()
                );
            }
            Some(1) => {
                let Err(invalid) = library else {
                    return Err(TestCaseError::fail(format!(
                        "lbd refused what the library accepts: {}",
                        shown()
                    )));
                };
                prop_assert_eq!(&stderr, &format!("{invalid}\n"), "{}", shown());
                check_located(&file, &stderr, &bytes)
                    .map_err(|e| TestCaseError::fail(format!("{e}\n{}", shown())))?;
            }
            other => {
                return Err(TestCaseError::fail(format!(
                    "lbd --check exited {other:?}: {}",
                    shown()
                )));
            }
        }
        Ok(())
    });
    std::fs::remove_dir_all(&dir).ok();
    say(format!(
        "fuzz_config: lbd --check on {cases} files, seed {seed}, {:.1?}",
        started.elapsed()
    ));
    if let Err(e) = result {
        panic!("seed {seed}: {e}");
    }
}

#[test]
fn the_renderer_writes_what_the_spec_example_says() {
    // The harness's own check: a fixed document renders in both styles to one config.
    let doc = map(vec![
        ("director", map(vec![("interfaces", Node::Seq(vec![s("eth0")]))])),
        (
            "services",
            Node::Seq(vec![map(vec![
                ("name", s("web 1")),
                ("vip", s("[2001:db8::10]:80")),
                ("protocol", s("tcp")),
                (
                    "check",
                    map(vec![
                        ("type", s("http")),
                        ("interval", raw("1.5s")),
                        ("expect_body", s("o\"k\n")),
                    ]),
                ),
                (
                    "reals",
                    Node::Seq(vec![map(vec![("address", s("2001:db8::11")), ("weight", raw(3))])]),
                ),
            ])]),
        ),
    ]);
    let block = config::parse(Path::new("lb.yaml"), &render(&doc, false));
    let flow = config::parse(Path::new("lb.yaml"), &render(&doc, true));
    let block = block.unwrap_or_else(|e| panic!("{e}\n{}", render(&doc, false)));
    let flow = flow.unwrap_or_else(|e| panic!("{e}\n{}", render(&doc, true)));
    assert_eq!(block, flow);
    assert_eq!(block.services[0].name, "web 1");
    assert_eq!(block.services[0].reals[0].weight, 3);
}
