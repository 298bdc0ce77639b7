//! A fuzzer of the data plane: the real XDP program, through BPF_PROG_TEST_RUN, on frames
//! made from valid ones of every service of `common::dataplane()` (DR, NAT, tunnel; IPv4,
//! IPv6; TCP, UDP), NAT replies, ICMP errors quoting flows, other ICMP, fragments, IPv6
//! extension headers, VLAN tags, IPv4 and TCP options, Ethernet padding, not-IP frames;
//! then mutated as structures (lengths, IHL, data offset, protocol, ethertype, fragment
//! bits, version, cuts, extensions, inserted or removed bytes, flipped bytes) with a
//! seeded PRNG. Each frame's verdict is checked by a strict oracle (docs/ARCHITECTURE.md,
//! "Input policy: frames"):
//!
//! - the program returns XDP_PASS, XDP_TX, XDP_DROP or XDP_REDIRECT, and exactly one
//!   reason counter moves, by one, matching the action; never `pass_internal`;
//! - a frame the policy refuses (not IP, cut short, malformed, a fragment, an extension
//!   header, another protocol) passes, untouched, under the reason the policy names, which
//!   `policy` below computes on its own from the bytes;
//! - a passed frame is untouched; a forwarded one is exactly what its mode makes of the
//!   input: DR only the MACs; NAT the real's address and port (or the VIP's, back), with
//!   every checksum as correct as it came (an IPv4 UDP checksum of 0 stays 0); tunnel an
//!   outer header built by etherparse to the real from the tunnel source, and the input's
//!   IP packet inside; too big to tunnel, the ICMP error the docs define or a drop; and it
//!   parses with etherparse, its IP length consistent with the frame;
//! - an ICMP error is forwarded only when addressed to the source of the packet it quotes,
//!   and never answered with another ICMP error;
//! - at the end, the reason counters sum to the number of frames sent.
//!
//! `LB_FUZZ_FRAMES` sets the number of frames (default 100 000, about a second),
//! `LB_FUZZ_SEED` the seed (printed; random by default). A failure prints the frame in
//! hex, the seed and its index; `LB_FUZZ_REPLAY=HEX[,HEX...]` runs given frames alone
//! through the same oracle. The MACs are never mutated: the program does not read them,
//! only stores them as NAT's way back, which the oracle then knows. The test data plane
//! reaches every real through the ingress interface, so forwarded frames are XDP_TX.

mod common;

use std::time::Instant;

use common::*;
use etherparse::{
    EtherType, Ethernet2Header, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpNumber,
    Ipv4Header, Ipv6Header, SlicedPacket, icmpv4::DestUnreachableHeader,
};
use lb_common::{FAMILY_V4, FAMILY_V6, Forwarding, PROTO_TCP, PROTO_UDP, Reason};
use lb_daemon::dataplane::Dataplane;

const DEFAULT_FRAMES: u64 = 100_000;
/// Well inside what BPF_PROG_TEST_RUN takes for XDP (a page less head- and tailroom).
const MAX_FRAME: usize = 1600;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
/// The IPv6 next headers the program treats as extension headers.
const IPV6_EXT: [u8; 11] = [0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254];
const ROUTER4: [u8; 4] = [203, 0, 113, 1];
const ROUTER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

#[test]
fn fuzz_dataplane() {
    lb_lab::needs_root!();
    if let Ok(frames) = std::env::var("LB_FUZZ_REPLAY") {
        return replay(&frames);
    }
    let seed = env_u64("LB_FUZZ_SEED").unwrap_or_else(|| fastrand::u64(..));
    let frames = env_u64("LB_FUZZ_FRAMES").unwrap_or(DEFAULT_FRAMES);
    eprintln!("fuzz_dataplane: seed {seed}, {frames} frames (LB_FUZZ_SEED, LB_FUZZ_FRAMES)");
    let mut dp = dataplane();
    let services = services();
    let mut rng = fastrand::Rng::with_seed(seed);
    let start = Instant::now();
    let first = reasons(&dp);
    let mut before = first.clone();
    let mut by_reason = vec![0u64; Reason::ALL.len()];
    // What each kind of frame came to: how much of each path the run reached.
    let mut by_kind: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    let mut mutated = 0u64;
    for i in 0..frames {
        let made = generate(&mut rng);
        mutated += !made.mutations.is_empty() as u64;
        let (action, out) = run(&mut dp, &made.frame);
        let after = reasons(&dp);
        let verdict = moved(&before, &after)
            .and_then(|reason| check(&services, &made.frame, action, reason, &out).map(|_| reason));
        match verdict {
            Ok(reason) => {
                by_reason[reason as usize] += 1;
                by_kind.entry(made.kind).or_insert_with(|| vec![0; Reason::ALL.len()])
                    [reason as usize] += 1;
            }
            Err(problem) => panic!(
                "fuzz_dataplane: frame {i} of seed {seed} ({}, mutations {:?}): {problem}\n\
                 input  {}\noutput {} (action {action})\n\
                 replay: LB_FUZZ_SEED={seed} LB_FUZZ_FRAMES={} (flows from the frames \
                 before it included), or LB_FUZZ_REPLAY={} alone",
                made.kind,
                made.mutations,
                hex(&made.frame),
                hex(&out),
                i + 1,
                hex(&made.frame),
            ),
        }
        before = after;
    }
    let counted: u64 = before.iter().zip(&first).map(|(a, b)| a - b).sum();
    assert_eq!(counted, frames, "the reason counters sum to the frames sent");
    let elapsed = start.elapsed();
    eprintln!(
        "fuzz_dataplane: seed {seed}: {frames} frames ({mutated} mutated) in {:.1} s, \
         {:.0} frames/s, all as the policy says",
        elapsed.as_secs_f64(),
        frames as f64 / elapsed.as_secs_f64()
    );
    for (reason, n) in Reason::ALL.iter().zip(by_reason) {
        eprintln!("  {:22} {n}", reason.name());
    }
    for (kind, counts) in by_kind {
        let counts: Vec<String> = Reason::ALL
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{} {n}", r.name()))
            .collect();
        eprintln!("  {kind}: {}", counts.join(", "));
    }
}

/// Runs frames given in hex (comma-separated) through the oracle, on a fresh data plane.
fn replay(frames: &str) {
    let mut dp = dataplane();
    let services = services();
    let mut before = reasons(&dp);
    for text in frames.split(',') {
        let frame = unhex(text.trim());
        let (action, out) = run(&mut dp, &frame);
        let after = reasons(&dp);
        let verdict = moved(&before, &after)
            .and_then(|reason| check(&services, &frame, action, reason, &out).map(|_| reason));
        eprintln!("replay: action {action} {verdict:?}\n  input  {}\n  output {}", text, hex(&out));
        verdict.unwrap();
        before = after;
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.trim().replace('_', "").parse().unwrap_or_else(|_| panic!("{name}={value}")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap()).collect()
}

fn reasons(dp: &Dataplane) -> Vec<u64> {
    dp.reasons().unwrap().into_iter().map(|(_, n)| n).collect()
}

/// The one reason whose counter moved, by one.
fn moved(before: &[u64], after: &[u64]) -> Result<Reason, String> {
    let moved: Vec<_> = (0..after.len()).filter(|&i| after[i] != before[i]).collect();
    match moved[..] {
        [i] if after[i] == before[i] + 1 => Ok(Reason::ALL[i]),
        _ => Err(format!("reason counters moved: {before:?} -> {after:?}")),
    }
}

// ---- Checksums (the Internet checksum, summed here, independently of the program) ----

fn sum(data: &[u8]) -> u64 {
    data.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64).sum()
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The pseudo-header's sum: addresses, protocol, upper-layer length.
fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    sum(src) + sum(dst) + proto as u64 + len as u64
}

fn ipv4_header_ok(header: &[u8]) -> bool {
    fold(sum(header)) == 0xffff
}

/// Where the addresses are in an IP header at `l3`, and how long they are.
fn addr_span(v6: bool) -> (usize, usize, usize) {
    if v6 { (8, 24, 16) } else { (12, 16, 4) }
}

/// Whether the TCP, UDP, ICMP or ICMPv6 checksum of the segment at `l4` of the IP packet
/// at `l3` (ending at `end`) is correct; an IPv4 UDP checksum of 0 ("none") counts as
/// correct. UDP's covers its own length, which the caller has checked fits.
fn l4_ok(f: &[u8], l3: usize, v6: bool, proto: u8, l4: usize, end: usize) -> bool {
    let (s, d, n) = addr_span(v6);
    let (src, dst) = (&f[l3 + s..l3 + s + n], &f[l3 + d..l3 + d + n]);
    let seg = match proto {
        PROTO_UDP => {
            let len = u16::from_be_bytes([f[l4 + 4], f[l4 + 5]]) as usize;
            if !v6 && f[l4 + 6..l4 + 8] == [0, 0] {
                return true;
            }
            &f[l4..l4 + len.min(end - l4)]
        }
        _ => &f[l4..end],
    };
    let s = match proto {
        PROTO_ICMP => sum(seg),
        _ => pseudo(src, dst, proto, seg.len()) + sum(seg),
    };
    fold(s) == 0xffff
}

// ---- The policy, written here from the docs' table, not from the program ----

/// What the policy finds in a frame it accepts.
#[derive(Clone, Debug)]
struct Parsed {
    tci: Option<u16>,
    l3: usize,
    v6: bool,
    ihl: usize,
    df: bool,
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    l4: usize,
    /// The IP packet's end, by its header's length.
    end: usize,
    sport: u16,
    dport: u16,
    quote: Option<Quote>,
}

/// The packet an ICMP error quotes.
#[derive(Clone, Debug)]
struct Quote {
    at: usize,
    l4: usize,
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
}

fn addresses(f: &[u8], l3: usize, v6: bool) -> ([u8; 16], [u8; 16]) {
    let (s, d, n) = addr_span(v6);
    let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
    src[..n].copy_from_slice(&f[l3 + s..l3 + s + n]);
    dst[..n].copy_from_slice(&f[l3 + d..l3 + d + n]);
    (src, dst)
}

/// The input policy: `Err(reason)` for a frame that passes untouched under that reason
/// whatever the tables hold, else what the rest of the path works on. Each layer's own
/// fields are checked before the next is looked at; every header must lie in the IP
/// packet, and the IP packet in the frame (bytes after it are padding).
fn policy(f: &[u8]) -> Result<Parsed, Reason> {
    use Reason::*;
    let be16 = |i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
    let (mut ethertype, mut l3, mut tci) = (be16(12), 14, None);
    if ethertype == 0x8100 {
        if f.len() < 18 {
            return Err(PassTruncated);
        }
        (tci, ethertype, l3) = (Some(be16(14)), be16(16), 18);
    }
    let v6 = match ethertype {
        0x0800 => false,
        0x86dd => true,
        _ => return Err(PassNotIp),
    };
    let (ihl, end, proto, df);
    if v6 {
        if f.len() < l3 + 40 {
            return Err(PassTruncated);
        }
        if f[l3] >> 4 != 6 {
            return Err(PassMalformed);
        }
        end = l3 + 40 + be16(l3 + 4) as usize;
        if end > f.len() {
            return Err(PassTruncated);
        }
        proto = f[l3 + 6];
        if IPV6_EXT.contains(&proto) {
            return Err(PassIpv6ExtHeader);
        }
        if ![PROTO_TCP, PROTO_UDP, PROTO_ICMPV6].contains(&proto) {
            return Err(PassOtherProto);
        }
        (ihl, df) = (40, false);
    } else {
        if f.len() < l3 + 20 {
            return Err(PassTruncated);
        }
        if f[l3] >> 4 != 4 {
            return Err(PassMalformed);
        }
        ihl = (f[l3] & 0x0f) as usize * 4;
        let total = be16(l3 + 2) as usize;
        if ihl < 20 || total < ihl {
            return Err(PassMalformed);
        }
        if l3 + total > f.len() {
            return Err(PassTruncated);
        }
        if be16(l3 + 6) & 0x3fff != 0 {
            return Err(PassFragment);
        }
        proto = f[l3 + 9];
        if ![PROTO_TCP, PROTO_UDP, PROTO_ICMP].contains(&proto) {
            return Err(PassOtherProto);
        }
        (end, df) = (l3 + total, f[l3 + 6] & 0x40 != 0);
    }
    let (src, dst) = addresses(f, l3, v6);
    let l4 = l3 + ihl;
    let mut p =
        Parsed { tci, l3, v6, ihl, df, proto, src, dst, l4, end, sport: 0, dport: 0, quote: None };
    match proto {
        PROTO_TCP => {
            if l4 + 20 > end {
                return Err(PassTruncated);
            }
            let doff = (f[l4 + 12] >> 4) as usize * 4;
            if doff < 20 {
                return Err(PassMalformed);
            }
            if l4 + doff > end {
                return Err(PassTruncated);
            }
        }
        PROTO_UDP => {
            if l4 + 8 > end {
                return Err(PassTruncated);
            }
            let len = be16(l4 + 4) as usize;
            if len < 8 {
                return Err(PassMalformed);
            }
            if l4 + len > end {
                return Err(PassTruncated);
            }
        }
        _ => {
            // ICMP: destination unreachable (ICMPv6 also packet too big) with a TCP or UDP
            // quote: the quoted IP header (IPv4 without options) and its ports.
            if l4 + 8 > end {
                return Err(PassTruncated);
            }
            let error = if v6 { f[l4] == 1 || f[l4] == 2 } else { f[l4] == 3 };
            if !error {
                return Err(PassOtherProto);
            }
            let at = l4 + 8;
            let hlen = if v6 { 40 } else { 20 };
            if at + hlen > end {
                return Err(PassTruncated);
            }
            if (v6 && f[at] >> 4 != 6) || (!v6 && f[at] != 0x45) {
                return Err(PassMalformed);
            }
            let qproto = f[at + if v6 { 6 } else { 9 }];
            if qproto != PROTO_TCP && qproto != PROTO_UDP {
                return Err(PassOtherProto);
            }
            let ql4 = at + hlen;
            if ql4 + 4 > end {
                return Err(PassTruncated);
            }
            let (qsrc, qdst) = addresses(f, at, v6);
            p.quote = Some(Quote {
                at,
                l4: ql4,
                proto: qproto,
                src: qsrc,
                dst: qdst,
                sport: be16(ql4),
                dport: be16(ql4 + 2),
            });
            return Ok(p);
        }
    }
    (p.sport, p.dport) = (be16(l4), be16(l4 + 2));
    Ok(p)
}

/// The reasons `policy` gives: the program may give them only where the policy does.
fn is_parse_reason(r: Reason) -> bool {
    use Reason::*;
    matches!(
        r,
        PassNotIp
            | PassOtherProto
            | PassTruncated
            | PassMalformed
            | PassFragment
            | PassIpv6ExtHeader
    )
}

// ---- The oracle ----

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn family(v6: bool) -> u8 {
    if v6 { FAMILY_V6 } else { FAMILY_V4 }
}

fn check(
    services: &[Service],
    f: &[u8],
    action: u32,
    reason: Reason,
    out: &[u8],
) -> Result<(), String> {
    use Reason::*;
    let wanted = match reason {
        Transmitted | TooBigSent => XDP_TX,
        Redirected => XDP_REDIRECT,
        DropTooBig => XDP_DROP,
        PassInternal => return Err("pass_internal: a lookup that cannot fail did".into()),
        _ => XDP_PASS,
    };
    ensure!(action == wanted, "action {action} under reason {}", reason.name());
    if action == XDP_PASS {
        ensure!(out == f, "passed to the kernel, but changed");
    }
    let p = match policy(f) {
        Err(want) => {
            ensure!(reason == want, "{} where the policy says {}", reason.name(), want.name());
            return Ok(());
        }
        Ok(p) => p,
    };
    ensure!(!is_parse_reason(reason), "{} for a frame the policy takes", reason.name());
    if action == XDP_TX || action == XDP_REDIRECT {
        well_formed(f, out)?;
    }
    let fam = family(p.v6);
    let vip = |addr: &[u8; 16], port: u16, proto: u8| {
        services
            .iter()
            .find(|s| s.vip == *addr && s.port == port && s.proto == proto && s.family == fam)
    };
    let nat_real = |addr: &[u8; 16], port: u16, proto: u8| {
        services.iter().find(|s| {
            s.forwarding == Forwarding::Nat
                && s.real == *addr
                && s.real_port == port
                && s.proto == proto
                && s.family == fam
        })
    };
    match &p.quote {
        None => {
            if let Some(s) = vip(&p.dst, p.dport, p.proto) {
                return to_real(f, &p, s, reason, out);
            }
            match (reason, nat_real(&p.src, p.sport, p.proto)) {
                (PassNotVip, _) => Ok(()),
                (Transmitted, Some(s)) => nat_reply(f, &p, s, out),
                _ => Err(format!("{} for a frame to no VIP", reason.name())),
            }
        }
        Some(q) => {
            // Addressed to the quoted packet's source: the VIP, or a NAT request's client.
            let addressed = p.dst == q.src;
            if let Some(s) = vip(&q.src, q.sport, q.proto) {
                if reason == PassIcmpNoFlow {
                    return Ok(());
                }
                ensure!(addressed, "{}: an error not addressed to the VIP", reason.name());
                return to_real(f, &p, s, reason, out);
            }
            match (reason, nat_real(&q.dst, q.dport, q.proto)) {
                (PassNotVip, _) => Ok(()),
                (Transmitted, Some(s)) if addressed => nat_icmp_to_client(f, &p, s, out),
                _ => Err(format!("{} for an ICMP error about no flow of ours", reason.name())),
            }
        }
    }
}

/// Every forwarded frame parses with etherparse, holds its (outer) IP packet whole, and
/// has a correct IPv4 header checksum if the input had one.
fn well_formed(f: &[u8], out: &[u8]) -> Result<(), String> {
    let sliced = SlicedPacket::from_ethernet(out).map_err(|e| format!("output: {e}"))?;
    ensure!(sliced.net.is_some(), "output without an IP header");
    let (l3, v6) = ip_at(out).ok_or("output: no IP header where its ethertype says")?;
    let be16 = |i: usize| u16::from_be_bytes([out[i], out[i + 1]]) as usize;
    let len = if v6 { 40 + be16(l3 + 4) } else { be16(l3 + 2) };
    ensure!(l3 + len <= out.len(), "output: IP length {len} beyond the frame");
    let header_ok = |x: &[u8]| match ip_at(x) {
        Some((l3, false)) => {
            let ihl = (x[l3] & 0x0f) as usize * 4;
            ihl >= 20 && l3 + ihl <= x.len() && ipv4_header_ok(&x[l3..l3 + ihl])
        }
        _ => true,
    };
    ensure!(!header_ok(f) || header_ok(out), "output: IPv4 header checksum");
    Ok(())
}

/// A VIP's packet, or an ICMP error about one of its flows, sent on by the service's mode.
fn to_real(f: &[u8], p: &Parsed, s: &Service, reason: Reason, out: &[u8]) -> Result<(), String> {
    use Reason::*;
    let icmp = p.quote.is_some();
    match s.forwarding {
        Forwarding::Dr => {
            ensure!(reason == Transmitted, "dr: {}", reason.name());
            let mut want = f.to_vec();
            want[..12].copy_from_slice(&[REAL_MAC, DIRECTOR_MAC].concat());
            ensure!(out == want, "dr: more than the MACs changed");
        }
        Forwarding::Tunnel => {
            let outer = if p.v6 { 40 } else { 20 };
            if p.end - p.l3 + outer > s.mtu as usize {
                // Answered only untagged, IPv4 with DF and without options, and never
                // about an ICMP error (RFC 1122 3.2.2, RFC 4443 2.4).
                let answered = !icmp && p.tci.is_none() && (p.v6 || (p.ihl == 20 && p.df));
                if !answered {
                    ensure!(reason == DropTooBig, "too big, not answerable: {}", reason.name());
                    return Ok(());
                }
                ensure!(reason == TooBigSent, "too big: {}", reason.name());
                let want = too_big_answer(f, p, s.mtu as u32 - outer as u32);
                ensure!(out == want, "too big: not the ICMP error wanted: {}", hex(&want));
            } else {
                ensure!(reason == Transmitted, "tunnel: {}", reason.name());
                let want = tunnelled(&f[p.l3..p.end], p.tci);
                ensure!(out == want, "tunnel: not the frame wanted: {}", hex(&want));
                let inner = &out[want.len() - (p.end - p.l3)..];
                SlicedPacket::from_ip(inner).map_err(|e| format!("tunnel: inner packet: {e}"))?;
            }
        }
        Forwarding::Nat => {
            ensure!(reason == Transmitted, "nat: {}", reason.name());
            let macs = [REAL_MAC, DIRECTOR_MAC];
            if icmp {
                nat_icmp(f, p, out, macs, true, &s.real, s.real_port)?;
            } else {
                nat_rewrite(f, p, out, macs, true, &s.real, s.real_port)?;
            }
        }
    }
    Ok(())
}

fn nat_reply(f: &[u8], p: &Parsed, s: &Service, out: &[u8]) -> Result<(), String> {
    nat_rewrite(f, p, out, [CLIENT_MAC, DIRECTOR_MAC], false, &s.vip, s.port)
}

fn nat_icmp_to_client(f: &[u8], p: &Parsed, s: &Service, out: &[u8]) -> Result<(), String> {
    nat_icmp(f, p, out, [CLIENT_MAC, DIRECTOR_MAC], false, &s.vip, s.port)
}

/// Where a TCP or UDP checksum is.
fn l4_csum_at(proto: u8) -> usize {
    if proto == PROTO_UDP { 6 } else { 16 }
}

/// Writes `addr` (its family's length) and `port` at an end of a packet: the destination
/// if `dst`, else the source.
fn put_end(want: &mut [u8], l3: usize, l4: usize, v6: bool, dst: bool, addr: &[u8; 16], port: u16) {
    let (s, d, n) = addr_span(v6);
    let at = l3 + if dst { d } else { s };
    want[at..at + n].copy_from_slice(&addr[..n]);
    let at = l4 + if dst { 2 } else { 0 };
    want[at..at + 2].copy_from_slice(&port.to_be_bytes());
}

/// Takes the bytes at `at..at + 2` from `out`: a checksum the oracle checks by itself.
fn take(want: &mut [u8], out: &[u8], at: usize) {
    want[at..at + 2].copy_from_slice(&out[at..at + 2]);
}

/// NAT's request (to the real: `dst`) or reply (from the VIP: source) rewrite: the frame
/// as it came but for MACs, that end's address and port and the checksums, each as correct
/// as it came; an IPv4 UDP checksum of 0 stays 0.
fn nat_rewrite(
    f: &[u8],
    p: &Parsed,
    out: &[u8],
    macs: [[u8; 6]; 2],
    dst: bool,
    addr: &[u8; 16],
    port: u16,
) -> Result<(), String> {
    ensure!(out.len() == f.len(), "nat: length changed");
    let mut want = f.to_vec();
    want[..12].copy_from_slice(&macs.concat());
    put_end(&mut want, p.l3, p.l4, p.v6, dst, addr, port);
    if !p.v6 {
        take(&mut want, out, p.l3 + 10);
    }
    let csum = p.l4 + l4_csum_at(p.proto);
    take(&mut want, out, csum);
    ensure!(out == want, "nat: not the rewrite wanted (checksums aside): {}", hex(&want));
    if !p.v6 {
        let header = p.l3..p.l3 + p.ihl;
        ensure!(
            ipv4_header_ok(&f[header.clone()]) == ipv4_header_ok(&out[header]),
            "nat: IPv4 header checksum"
        );
    }
    ensure!(
        l4_ok(f, p.l3, p.v6, p.proto, p.l4, p.end) == l4_ok(out, p.l3, p.v6, p.proto, p.l4, p.end),
        "nat: TCP/UDP checksum"
    );
    if !p.v6 && p.proto == PROTO_UDP && f[csum..csum + 2] == [0, 0] {
        ensure!(out[csum..csum + 2] == [0, 0], "nat: an absent UDP checksum was filled in");
    }
    Ok(())
}

/// NAT's ICMP translation: toward the real (`to_real`: the outer destination and the quoted
/// source become the real's) or the client (the outer source and the quoted destination
/// become the VIP's), with the outer IPv4, ICMP, quoted IPv4 and (when quoted) quoted
/// TCP/UDP checksums each as correct as they came.
fn nat_icmp(
    f: &[u8],
    p: &Parsed,
    out: &[u8],
    macs: [[u8; 6]; 2],
    to_real: bool,
    addr: &[u8; 16],
    port: u16,
) -> Result<(), String> {
    let q = p.quote.as_ref().unwrap();
    ensure!(out.len() == f.len(), "nat icmp: length changed");
    let mut want = f.to_vec();
    want[..12].copy_from_slice(&macs.concat());
    let (s, d, n) = addr_span(p.v6);
    let outer = p.l3 + if to_real { d } else { s };
    want[outer..outer + n].copy_from_slice(&addr[..n]);
    put_end(&mut want, q.at, q.l4, p.v6, !to_real, addr, port);
    take(&mut want, out, p.l4 + 2);
    if !p.v6 {
        take(&mut want, out, p.l3 + 10);
        take(&mut want, out, q.at + 10);
    }
    let quoted_csum = q.l4 + l4_csum_at(q.proto);
    let csum_quoted = quoted_csum + 2 <= p.end;
    if csum_quoted {
        take(&mut want, out, quoted_csum);
    }
    ensure!(out == want, "nat icmp: not the rewrite wanted (checksums aside): {}", hex(&want));
    let same = |what: &str, ok: &dyn Fn(&[u8]) -> bool| {
        ensure!(ok(f) == ok(out), "nat icmp: {what} checksum");
        Ok(())
    };
    if !p.v6 {
        same("outer IPv4 header", &|x| ipv4_header_ok(&x[p.l3..p.l3 + p.ihl]))?;
        same("quoted IPv4 header", &|x| ipv4_header_ok(&x[q.at..q.at + 20]))?;
    }
    same("ICMP", &|x| l4_ok(x, p.l3, p.v6, p.proto, p.l4, p.end))?;
    // The quoted packet whole (its IP length is what is quoted): its TCP/UDP checksum.
    let quoted_len = if p.v6 {
        40 + u16::from_be_bytes([f[q.at + 4], f[q.at + 5]]) as usize
    } else {
        u16::from_be_bytes([f[q.at + 2], f[q.at + 3]]) as usize
    };
    let whole = quoted_len == p.end - q.at
        && (q.proto == PROTO_TCP && q.l4 + 20 <= p.end
            || q.proto == PROTO_UDP
                && q.l4 + 8 <= p.end
                && u16::from_be_bytes([f[q.l4 + 4], f[q.l4 + 5]]) as usize <= p.end - q.l4);
    if whole {
        same("quoted TCP/UDP", &|x| l4_ok(x, q.at, p.v6, q.proto, q.l4, p.end))?;
    }
    if csum_quoted && !p.v6 && q.proto == PROTO_UDP && f[quoted_csum..quoted_csum + 2] == [0, 0] {
        ensure!(out[quoted_csum..quoted_csum + 2] == [0, 0], "nat icmp: quoted UDP checksum");
    }
    Ok(())
}

/// The ICMP fragmentation-needed (IPv4) or packet-too-big (IPv6) the director sends back
/// for an untagged frame too big to tunnel: from the VIP to the client, MACs swapped,
/// quoting the IP header and 8 bytes, built by etherparse.
fn too_big_answer(f: &[u8], p: &Parsed, mtu: u32) -> Vec<u8> {
    let mut want = Vec::new();
    let (source, destination) = (f[..6].try_into().unwrap(), f[6..12].try_into().unwrap());
    let ether_type = if p.v6 { EtherType::IPV6 } else { EtherType::IPV4 };
    Ethernet2Header { source, destination, ether_type }.write(&mut want).unwrap();
    let quote = &f[p.l3..p.l3 + if p.v6 { 48 } else { 28 }];
    if p.v6 {
        let (src, dst) = (p.dst, p.src);
        Ipv6Header {
            payload_length: 8 + 48,
            next_header: IpNumber::IPV6_ICMP,
            hop_limit: 64,
            source: src,
            destination: dst,
            ..Default::default()
        }
        .write(&mut want)
        .unwrap();
        let kind = Icmpv6Type::PacketTooBig { mtu };
        Icmpv6Header::with_checksum(kind, src, dst, quote).unwrap().write(&mut want).unwrap();
    } else {
        let (src, dst) = (p.dst[..4].try_into().unwrap(), p.src[..4].try_into().unwrap());
        let mut ip = Ipv4Header::new(8 + 28, 64, IpNumber::ICMP, src, dst).unwrap();
        ip.dont_fragment = false;
        ip.write(&mut want).unwrap();
        let kind = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: mtu as u16,
        });
        Icmpv4Header::with_checksum(kind, quote).write(&mut want).unwrap();
    }
    want.extend_from_slice(quote);
    want
}

// ---- Frames: valid ones first, then mutated ----

/// A generated frame, what it was made as, and how it was mutated.
struct Made {
    frame: Vec<u8>,
    kind: &'static str,
    mutations: Vec<&'static str>,
}

/// An IP header to build.
struct Ip {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    /// IPv4 flags and fragment offset (bytes 6-7); DF alone for most.
    frag: u16,
    /// IPv4 TOS, IPv6 traffic class.
    tos: u8,
    /// IPv4 options (a multiple of 4 bytes, at most 40).
    options: Vec<u8>,
    /// IPv6 extension headers, as bytes, and the first one's type.
    ext: Vec<u8>,
    first_ext: u8,
}

impl Ip {
    fn new(v6: bool, src: [u8; 16], dst: [u8; 16], proto: u8) -> Ip {
        Ip { v6, src, dst, proto, frag: 0x4000, tos: 0, options: vec![], ext: vec![], first_ext: 0 }
    }

    fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        if self.v6 {
            let len = (self.ext.len() + payload.len()) as u16;
            let next = if self.ext.is_empty() { self.proto } else { self.first_ext };
            v.extend_from_slice(&[0x60 | self.tos >> 4, self.tos << 4, 0, 0]);
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(&[next, 64]);
            v.extend_from_slice(&self.src);
            v.extend_from_slice(&self.dst);
            v.extend_from_slice(&self.ext);
        } else {
            let ihl = 5 + self.options.len() / 4;
            let total = (ihl * 4 + payload.len()) as u16;
            v.extend_from_slice(&[0x40 | ihl as u8, self.tos]);
            v.extend_from_slice(&total.to_be_bytes());
            v.extend_from_slice(&[0x12, 0x34]);
            v.extend_from_slice(&self.frag.to_be_bytes());
            v.extend_from_slice(&[64, self.proto, 0, 0]);
            v.extend_from_slice(&self.src[..4]);
            v.extend_from_slice(&self.dst[..4]);
            v.extend_from_slice(&self.options);
        }
        v.extend_from_slice(payload);
        v
    }
}

fn tcp_segment(sport: u16, dport: u16, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let doff = (20 + options.len()) / 4;
    let mut v = Vec::new();
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&[0, 0, 3, 0xe8, 0, 0, 0, 1, (doff as u8) << 4, flags, 0xfa, 0xf0]);
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(options);
    v.extend_from_slice(payload);
    v
}

fn udp_segment(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

/// Ethernet (and maybe a tag) around an IP packet (or anything, with `ethertype`).
fn ethernet(macs: ([u8; 6], [u8; 6]), tci: Option<u16>, ethertype: u16, body: &[u8]) -> Vec<u8> {
    let mut v = [macs.1, macs.0].concat();
    if let Some(tci) = tci {
        v.extend_from_slice(&[0x81, 0x00]);
        v.extend_from_slice(&tci.to_be_bytes());
    }
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Where the frame's IP header is, if it has one: (offset, IPv6).
fn ip_at(f: &[u8]) -> Option<(usize, bool)> {
    let be16 = |i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
    let (ethertype, l3) = match be16(12) {
        0x8100 if f.len() >= 18 => (be16(16), 18),
        e => (e, 14),
    };
    match ethertype {
        0x0800 if f.len() >= l3 + 20 => Some((l3, false)),
        0x86dd if f.len() >= l3 + 40 => Some((l3, true)),
        _ => None,
    }
}

/// Makes the checksums right for whatever the headers now say, where they can be: the
/// IPv4 header's, and the outer TCP, UDP, ICMP or ICMPv6 checksum (over the IP packet, or
/// what the frame holds of it). An IPv4 UDP checksum of 0 stays "none".
fn fix_checksums(f: &mut [u8]) {
    let Some((l3, v6)) = ip_at(f) else { return };
    let be16 = |f: &[u8], i: usize| u16::from_be_bytes([f[i], f[i + 1]]) as usize;
    let (l4, end, proto) = if v6 {
        (l3 + 40, (l3 + 40 + be16(f, l3 + 4)).min(f.len()), f[l3 + 6])
    } else {
        let ihl = (f[l3] & 0x0f) as usize * 4;
        if ihl < 20 || l3 + ihl > f.len() {
            return;
        }
        f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
        let c = !fold(sum(&f[l3..l3 + ihl]));
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        (l3 + ihl, (l3 + be16(f, l3 + 2)).min(f.len()), f[l3 + 9])
    };
    let at = match proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        PROTO_ICMP if !v6 => 2,
        PROTO_ICMPV6 if v6 => 2,
        _ => return,
    };
    if l4 + at + 2 > end {
        return;
    }
    let mut seg_end = end;
    if proto == PROTO_UDP {
        if !v6 && f[l4 + 6..l4 + 8] == [0, 0] {
            return;
        }
        let len = be16(f, l4 + 4);
        if len >= 8 && l4 + len <= end {
            seg_end = l4 + len;
        }
    }
    f[l4 + at..l4 + at + 2].copy_from_slice(&[0, 0]);
    let (s, d, n) = addr_span(v6);
    let seg = &f[l4..seg_end];
    let total = if proto == PROTO_ICMP {
        sum(seg)
    } else {
        pseudo(&f[l3 + s..l3 + s + n], &f[l3 + d..l3 + d + n], proto, seg.len()) + sum(seg)
    };
    let mut c = !fold(total);
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    f[l4 + at..l4 + at + 2].copy_from_slice(&c.to_be_bytes());
}

fn bytes(rng: &mut fastrand::Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.u8(..)).collect()
}

fn pick<'a, T>(rng: &mut fastrand::Rng, items: &'a [T]) -> &'a T {
    &items[rng.usize(..items.len())]
}

fn client(rng: &mut fastrand::Rng, v6: bool) -> [u8; 16] {
    let host = 7 + rng.u8(0..4);
    if v6 {
        addr16(&[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, host])
    } else {
        addr16(&[198, 51, 100, host])
    }
}

fn client_port(rng: &mut fastrand::Rng) -> u16 {
    40000 + rng.u16(0..8)
}

fn payload(rng: &mut fastrand::Rng) -> Vec<u8> {
    let len = match rng.u8(0..10) {
        0..=2 => 0,
        3..=6 => rng.usize(1..64),
        7..=8 => rng.usize(64..300),
        _ => rng.usize(300..1400),
    };
    std::iter::repeat_with(|| rng.u8(..)).take(len).collect()
}

fn tcp_flags(rng: &mut fastrand::Rng) -> u8 {
    let any = rng.u8(..);
    *pick(rng, &[0x02, 0x10, 0x18, 0x11, 0x04, 0x12, 0x14, any])
}

/// TCP options: NOPs, an MSS, random bytes, to a multiple of 4 (at most 40).
fn tcp_options(rng: &mut fastrand::Rng) -> Vec<u8> {
    if rng.u8(0..100) >= 15 {
        return vec![];
    }
    let mut o = match rng.u8(0..3) {
        0 => vec![2, 4, 5, 0xb4],
        1 => vec![1; rng.usize(1..8)],
        _ => {
            let n = rng.usize(1..40);
            bytes(rng, n)
        }
    };
    o.resize(o.len().div_ceil(4) * 4, 0);
    o
}

/// IPv4 options: NOPs and EOL, a record route, or random bytes, to a multiple of 4.
fn ipv4_options(rng: &mut fastrand::Rng) -> Vec<u8> {
    if rng.u8(0..100) >= 12 {
        return vec![];
    }
    let mut o = match rng.u8(0..3) {
        0 => vec![1, 1, 1, 0],
        1 => vec![7, 7, 4, 0, 0, 0, 0, 0],
        _ => {
            let n = rng.usize(1..=40);
            bytes(rng, n)
        }
    };
    o.resize(o.len().div_ceil(4) * 4, 0);
    o
}

fn tci(rng: &mut fastrand::Rng) -> Option<u16> {
    (rng.u8(0..100) < 20).then(|| rng.u16(..))
}

/// A TCP or UDP segment, checksum to be filled in.
fn segment(rng: &mut fastrand::Rng, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    if proto == PROTO_TCP {
        tcp_segment(sport, dport, tcp_flags(rng), &tcp_options(rng), &payload(rng))
    } else {
        udp_segment(sport, dport, &payload(rng))
    }
}

fn frame_of(rng: &mut fastrand::Rng, macs: ([u8; 6], [u8; 6]), ip: &Ip, l4: &[u8]) -> Vec<u8> {
    let ethertype = if ip.v6 { 0x86dd } else { 0x0800 };
    let mut f = ethernet(macs, tci(rng), ethertype, &ip.packet(l4));
    fix_checksums(&mut f);
    // An IPv4 UDP datagram without a checksum, now and then.
    if let Some((l3, false)) = ip_at(&f) {
        let l4 = l3 + (f[l3] & 0x0f) as usize * 4;
        if f[l3 + 9] == PROTO_UDP && l4 + 8 <= f.len() && rng.u8(0..10) == 0 {
            f[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
        }
    }
    f
}

/// A request from a client to a service's VIP.
fn request(rng: &mut fastrand::Rng, s: &Service) -> Vec<u8> {
    let v6 = s.family == FAMILY_V6;
    let mut ip = Ip::new(v6, client(rng, v6), s.vip, s.proto);
    ip.options = if v6 { vec![] } else { ipv4_options(rng) };
    ip.tos = if rng.bool() { 0 } else { rng.u8(..) };
    if rng.u8(0..10) == 0 {
        ip.frag = 0; // no DF: too big to tunnel, it cannot be answered
    }
    let sport = client_port(rng);
    let l4 = segment(rng, s.proto, sport, s.port);
    frame_of(rng, (CLIENT_MAC, DIRECTOR_MAC), &ip, &l4)
}

/// The real's answer to a client, as it left the real (NAT) or the VIP (the others).
fn answer(rng: &mut fastrand::Rng, s: &Service, nat_side: bool) -> (Ip, Vec<u8>) {
    let v6 = s.family == FAMILY_V6;
    let (src, sport) = if nat_side { (s.real, s.real_port) } else { (s.vip, s.port) };
    let ip = Ip::new(v6, src, client(rng, v6), s.proto);
    let dport = client_port(rng);
    let l4 = segment(rng, s.proto, sport, dport);
    (ip, l4)
}

/// An ICMP error (or another ICMP message) from `from` to `to` quoting `quoted` (an IP
/// packet) whole or cut.
fn icmp_frame(
    rng: &mut fastrand::Rng,
    macs: ([u8; 6], [u8; 6]),
    (from, to): ([u8; 16], [u8; 16]),
    v6: bool,
    kind: (u8, u8, [u8; 4]),
    quoted: &[u8],
) -> Vec<u8> {
    let hlen = if v6 { 40 } else { 20 };
    let cut = match rng.u8(0..10) {
        0..=3 => quoted.len(),
        4..=6 => (hlen + 8).min(quoted.len()),
        _ => rng.usize(0..=quoted.len()),
    };
    let mut body = vec![kind.0, kind.1, 0, 0];
    body.extend_from_slice(&kind.2);
    body.extend_from_slice(&quoted[..cut]);
    let proto = if v6 { PROTO_ICMPV6 } else { PROTO_ICMP };
    let ip = Ip::new(v6, from, to, proto);
    frame_of(rng, macs, &ip, &body)
}

/// An ICMP error's type, code and the 4 bytes after the checksum: mostly the ones the
/// data plane handles (too big / unreachable), sometimes others.
fn icmp_kind(rng: &mut fastrand::Rng, v6: bool) -> (u8, u8, [u8; 4]) {
    let mtu = [0, 0, 0x05, 0x78];
    match (v6, rng.u8(0..10)) {
        (false, 0..=5) => (3, 4, mtu),
        (false, 6..=7) => (3, rng.u8(0..16), [0; 4]),
        (false, 8) => (11, 0, [0; 4]),
        (true, 0..=4) => (2, 0, mtu),
        (true, 5..=7) => (1, rng.u8(0..8), [0; 4]),
        (true, 8) => (3, 0, [0; 4]),
        _ => (rng.u8(..), rng.u8(..), [0; 4]),
    }
}

/// Somewhere an error may be addressed other than where it should be.
fn elsewhere(rng: &mut fastrand::Rng, v6: bool) -> [u8; 16] {
    match rng.u8(0..3) {
        0 => TUNNEL_SRC[v6 as usize],
        1 => client(rng, v6),
        _ if v6 => VIP6,
        _ => addr16(&VIP4),
    }
}

fn router(v6: bool) -> [u8; 16] {
    if v6 { ROUTER6 } else { addr16(&ROUTER4) }
}

fn generate(rng: &mut fastrand::Rng) -> Made {
    let services = services();
    let s = *pick(rng, &services);
    let v6 = s.family == FAMILY_V6;
    let nat: Vec<Service> =
        services.iter().filter(|s| s.forwarding == Forwarding::Nat).copied().collect();
    let n = *pick(rng, &nat);
    let nv6 = n.family == FAMILY_V6;
    let (kind, mut frame) = match rng.u8(0..100) {
        0..=34 => ("request", request(rng, &s)),
        35..=44 => {
            let (ip, l4) = answer(rng, &n, true);
            ("nat reply", frame_of(rng, (REAL_MAC, DIRECTOR_MAC), &ip, &l4))
        }
        45..=59 => {
            // About a VIP's answer to a client, mostly to the VIP.
            let (ip, l4) = answer(rng, &s, false);
            let quoted = ip.packet(&l4);
            let mut q = ethernet((REAL_MAC, CLIENT_MAC), None, 0, &quoted);
            fix_quoted(&mut q, v6);
            let to = if rng.u8(0..10) < 8 { s.vip } else { elsewhere(rng, v6) };
            let from = if rng.bool() { router(v6) } else { ip.dst };
            let kind = icmp_kind(rng, v6);
            ("icmp about a vip flow", icmp_frame(rng, MACS_IN, (from, to), v6, kind, &q[14..]))
        }
        60..=66 => {
            // About a NAT request as it reached the real, mostly to the client.
            let mut ip = Ip::new(nv6, client(rng, nv6), n.real, n.proto);
            ip.frag = 0x4000;
            let sport = client_port(rng);
            let l4 = segment(rng, n.proto, sport, n.real_port);
            let mut q = ethernet((DIRECTOR_MAC, REAL_MAC), None, 0, &ip.packet(&l4));
            fix_quoted(&mut q, nv6);
            let to = if rng.u8(0..10) < 8 { ip.src } else { elsewhere(rng, nv6) };
            let from = if rng.bool() { n.real } else { router(nv6) };
            let kind = icmp_kind(rng, nv6);
            let macs = (REAL_MAC, DIRECTOR_MAC);
            ("icmp about a nat request", icmp_frame(rng, macs, (from, to), nv6, kind, &q[14..]))
        }
        67..=73 => {
            // Echo, neighbour discovery, time exceeded, anything: to the VIP.
            let any = rng.u8(..);
            let kind = if v6 {
                (*pick(rng, &[128, 129, 133, 134, 135, 136, 137, 3, 4, any]), 0, [0; 4])
            } else {
                (*pick(rng, &[0, 8, 5, 11, 12, 13, any]), 0, [0; 4])
            };
            let body = payload(rng);
            let from = client(rng, v6);
            ("other icmp", icmp_frame(rng, MACS_IN, (from, s.vip), v6, kind, &body))
        }
        74..=83 => {
            // To no VIP: the VIP's address on another port, another address, another protocol.
            let mut ip = Ip::new(v6, client(rng, v6), s.vip, s.proto);
            let mut dport = s.port;
            match rng.u8(0..3) {
                0 => dport = rng.u16(..),
                1 => ip.dst = s.real,
                _ => {
                    let any = rng.u8(..);
                    ip.proto = *pick(rng, &[132, 47, 4, 41, 2, any])
                }
            }
            let l4 = segment(rng, if ip.proto == PROTO_UDP { 17 } else { 6 }, 40000, dport);
            ("not for a vip", frame_of(rng, MACS_IN, &ip, &l4))
        }
        84..=91 => {
            // Fragments, and IPv6 extension headers before the transport header.
            let mut ip = Ip::new(v6, client(rng, v6), s.vip, s.proto);
            if v6 {
                let (first, ext) = ipv6_extensions(rng, s.proto);
                (ip.first_ext, ip.ext) = (first, ext);
            } else {
                let offset = rng.u16(1..0x2000);
                ip.frag = *pick(rng, &[0x2000, 0x2000 | offset, offset]);
            }
            let sport = client_port(rng);
            let l4 = segment(rng, s.proto, sport, s.port);
            ("fragment or extension", frame_of(rng, MACS_IN, &ip, &l4))
        }
        _ => ("not ip", not_ip(rng, &s)),
    };
    let mut mutations = vec![];
    if rng.u8(0..100) < 45 {
        for _ in 0..rng.usize(1..=3) {
            mutations.push(mutate(rng, &mut frame));
        }
        if rng.u8(0..100) < 65 {
            fix_checksums(&mut frame);
            mutations.push("checksums fixed");
        }
    }
    // Ethernet pads short frames to 60 bytes; and now and then bytes follow the packet.
    if frame.len() < 60 && rng.u8(0..10) < 7 {
        frame.resize(60, *pick(rng, &[0, 0xa5]));
    } else if rng.u8(0..100) < 5 {
        let n = rng.usize(1..32);
        frame.extend(bytes(rng, n));
    }
    frame.truncate(MAX_FRAME);
    Made { frame, kind, mutations }
}

const MACS_IN: ([u8; 6], [u8; 6]) = (CLIENT_MAC, DIRECTOR_MAC);

/// The checksums of a packet to be quoted, made right (it left its sender whole).
fn fix_quoted(q: &mut [u8], v6: bool) {
    q[12..14].copy_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
    fix_checksums(q);
}

/// A chain of 1-3 IPv6 extension headers ending in `proto`: (first type, bytes).
fn ipv6_extensions(rng: &mut fastrand::Rng, proto: u8) -> (u8, Vec<u8>) {
    let types: Vec<u8> = (0..rng.usize(1..=3)).map(|_| *pick(rng, &[0, 43, 44, 60])).collect();
    let mut bytes = vec![];
    for (i, &t) in types.iter().enumerate() {
        let next = types.get(i + 1).copied().unwrap_or(proto);
        if t == 44 {
            bytes.extend_from_slice(&[next, 0, 0, rng.u8(0..2), 0, 0, 0x12, 0x34]);
        } else {
            let units = rng.usize(0..3);
            bytes.extend_from_slice(&[next, units as u8]);
            bytes.extend(std::iter::repeat_n(1u8, 6 + 8 * units)); // PadN-ish filler
        }
    }
    (types[0], bytes)
}

fn not_ip(rng: &mut fastrand::Rng, s: &Service) -> Vec<u8> {
    let n = rng.usize(0..100);
    let body = bytes(rng, n);
    match rng.u8(0..6) {
        0 => ethernet(MACS_IN, None, 0x0806, &[&[0, 1, 8, 0, 6, 4, 0, 1][..], &[0; 20]].concat()),
        1 => ethernet(MACS_IN, None, 0x88cc, &body),
        2 => ethernet(MACS_IN, None, rng.u16(..), &body),
        3 => {
            // QinQ: an outer 802.1ad tag, then a request's 802.1Q tag.
            let inner = request(rng, s);
            let tagged = vlan_tagged(&inner[..], rng.u16(..));
            let mut f = tagged.clone();
            f[12..14].copy_from_slice(&[0x88, 0xa8]);
            f
        }
        4 => {
            // Two 802.1Q tags: the program takes one.
            let tagged = vlan_tagged(&request(rng, s), rng.u16(..));
            vlan_tagged(&tagged, rng.u16(..))
        }
        _ => ethernet(MACS_IN, None, 0x8847, &body),
    }
}

/// One structure-aware mutation; returns its name.
fn mutate(rng: &mut fastrand::Rng, f: &mut Vec<u8>) -> &'static str {
    let ip = ip_at(f);
    let be16 = |f: &[u8], i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
    let set16 = |f: &mut Vec<u8>, i: usize, v: u16| f[i..i + 2].copy_from_slice(&v.to_be_bytes());
    // A nearby or random length: fields are hit at their edges most.
    let near = |rng: &mut fastrand::Rng, v: u16| match rng.u8(0..4) {
        0 => rng.u16(..),
        1 => v.wrapping_add(rng.u16(1..8)),
        2 => v.wrapping_sub(rng.u16(1..8)),
        _ => rng.u16(0..64),
    };
    let l4 = ip.map(|(l3, v6)| {
        if v6 { (l3 + 40, f[l3 + 6]) } else { (l3 + (f[l3] & 0x0f) as usize * 4, f[l3 + 9]) }
    });
    match rng.u8(0..13) {
        0 => {
            let i = rng.usize(12..f.len());
            f[i] ^= 1 << rng.u8(0..8);
            "bit flipped"
        }
        1 => {
            let i = rng.usize(12..f.len());
            f[i] = rng.u8(..);
            "byte set"
        }
        2 if f.len() > 14 => {
            f.truncate(rng.usize(14..f.len()));
            "cut"
        }
        3 => {
            let n = rng.usize(1..64);
            f.extend(bytes(rng, n));
            "extended"
        }
        4 => match ip {
            Some((l3, false)) => {
                let v = near(rng, be16(f, l3 + 2));
                set16(f, l3 + 2, v);
                "ipv4 total length"
            }
            Some((l3, true)) => {
                let v = near(rng, be16(f, l3 + 4));
                set16(f, l3 + 4, v);
                "ipv6 payload length"
            }
            None => "none",
        },
        5 => match ip {
            Some((l3, false)) => {
                f[l3] = 0x40 | rng.u8(0..16);
                "ihl"
            }
            _ => "none",
        },
        6 => match l4 {
            Some((l4, PROTO_TCP)) if l4 + 13 <= f.len() => {
                f[l4 + 12] = rng.u8(0..16) << 4 | (f[l4 + 12] & 0x0f);
                "tcp data offset"
            }
            Some((l4, PROTO_UDP)) if l4 + 6 <= f.len() => {
                let v = near(rng, be16(f, l4 + 4));
                set16(f, l4 + 4, v);
                "udp length"
            }
            _ => "none",
        },
        7 => {
            let at = if be16(f, 12) == 0x8100 && f.len() >= 18 { 16 } else { 12 };
            let any = rng.u16(..);
            let v = *pick(rng, &[0x0800, 0x86dd, 0x8100, 0x88a8, any]);
            set16(f, at, v);
            "ethertype"
        }
        8 => match ip {
            Some((l3, v6)) => {
                let any = rng.u8(..);
                let v = *pick(rng, &[1, 6, 17, 58, 0, 43, 44, 60, 4, 41, 132, any]);
                f[l3 + if v6 { 6 } else { 9 }] = v;
                "protocol"
            }
            None => "none",
        },
        9 => match ip {
            Some((l3, false)) => {
                let any = rng.u16(..);
                let v = *pick(rng, &[0, 0x4000, 0x2000, 0x0001, 0x8000, any]);
                set16(f, l3 + 6, v);
                "fragment bits"
            }
            _ => "none",
        },
        10 => match ip {
            Some((l3, _)) => {
                f[l3] = rng.u8(0..16) << 4 | (f[l3] & 0x0f);
                "version"
            }
            None => "none",
        },
        11 => {
            let at = rng.usize(12..=f.len());
            let n = rng.usize(1..9);
            if rng.bool() {
                let bytes: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(n).collect();
                f.splice(at..at, bytes);
                "bytes inserted"
            } else {
                let end = (at + n).min(f.len());
                if f.len() - (end - at) >= 14 {
                    f.drain(at..end);
                }
                "bytes removed"
            }
        }
        _ => {
            // A VLAN tag added or removed.
            if be16(f, 12) == 0x8100 && f.len() >= 18 {
                f.drain(12..16);
                "tag removed"
            } else {
                *f = vlan_tagged(f, rng.u16(..));
                "tag added"
            }
        }
    }
}
