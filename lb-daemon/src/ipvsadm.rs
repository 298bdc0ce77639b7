//! ipvsadm's listing formats, line for line (ipvsadm 1.31, ipvsadm.c: list_all,
//! print_title, print_service_entry, print_largenum), so people and scripts such as
//! ldirectord that read `ipvsadm -L -n` read `lbadm -L -n` unchanged.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::config::{Forwarding, Protocol};
use crate::control::{RealView, ServiceView, Stats};

/// Which listing: `-L -n` or `-L -n --stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Default,
    Stats,
}

/// The name IPVS gives the Maglev scheduler; `-S` output stays loadable by ipvsadm -R.
pub const MAGLEV_SCHEDULER: &str = "mh";

/// `ipvsadm -L -n [--stats]`: the version line, the title, every service. `-t|-u` (one
/// service) prints no version line, as list_service does.
pub fn list(
    services: &[ServiceView],
    listing: Listing,
    one: Option<(Protocol, SocketAddr)>,
) -> String {
    let mut out = String::new();
    if one.is_none() {
        // size: the connection table's size, as IPVS prints its hash table size.
        writeln!(out, "IP Virtual Server version 1.2.1 (size={})", lb_common::MAX_FLOWS).ok();
    }
    out.push_str(title(listing));
    for s in services.iter().filter(|s| one.is_none_or(|(p, v)| s.protocol == p && s.vip == v)) {
        service(&mut out, s, listing);
    }
    out
}

fn title(listing: Listing) -> &'static str {
    match listing {
        Listing::Default => {
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        }
        Listing::Stats => {
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n  -> RemoteAddress:Port\n"
        }
    }
}

/// `%s%s%s:%u` with brackets around IPv6; IPv4 names are cut as ipvsadm cuts them.
fn name(addr: &SocketAddr, width: usize) -> String {
    let mut s = addr.to_string();
    if addr.is_ipv4() {
        s.truncate(width);
    }
    s
}

fn service(out: &mut String, s: &ServiceView, listing: Listing) {
    let proto = match s.protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    };
    let mut svc = format!("{proto:<4} {}", s.vip);
    if s.vip.is_ipv4() {
        svc.truncate(33);
    }
    match listing {
        Listing::Default => {
            let scheduler =
                if s.scheduler == "maglev" { MAGLEV_SCHEDULER } else { s.scheduler.as_str() };
            writeln!(out, "{svc} {scheduler}").ok();
            for r in &s.reals {
                real_default(out, r);
            }
        }
        Listing::Stats => {
            write!(out, "{svc:<33}").ok();
            largenums(out, &s.stats);
            out.push('\n');
            for r in &s.reals {
                write!(out, "  -> {:<28}", name(&r.address, 28)).ok();
                largenums(out, &r.stats);
                out.push('\n');
            }
        }
    }
}

fn real_default(out: &mut String, r: &RealView) {
    let forward = match r.forwarding {
        Forwarding::Dr => "Route",
        Forwarding::Nat => "Masq",
        Forwarding::Tunnel => "Tunnel",
    };
    writeln!(
        out,
        "  -> {:<28} {:<7} {:<6} {:<10} {:<10}",
        name(&r.address, 28),
        forward,
        r.weight,
        r.active_conns,
        r.inactive_conns
    )
    .ok();
}

fn largenums(out: &mut String, s: &Stats) {
    for n in [s.conns, s.in_packets, s.out_packets, s.in_bytes, s.out_bytes] {
        largenum(out, n);
    }
}

/// print_largenum: 9 columns, scaled to K, M, G, T beyond eight digits.
fn largenum(out: &mut String, n: u64) {
    if n < 100_000_000 {
        write!(out, "{n:>9}").ok();
    } else if n < 1_000_000_000 {
        write!(out, "{:>8}K", n / 1000).ok();
    } else if n < 100_000_000_000 {
        write!(out, "{:>8}M", n / 1_000_000).ok();
    } else if n < 100_000_000_000_000 {
        write!(out, "{:>8}G", n / 1_000_000_000).ok();
    } else {
        write!(out, "{:>8}T", n / 1_000_000_000_000).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real(addr: &str, weight: u32, active: u64, inactive: u64, stats: Stats) -> RealView {
        RealView {
            address: addr.parse().unwrap(),
            forwarding: Forwarding::Dr,
            weight,
            configured_weight: weight,
            active_conns: active,
            inactive_conns: inactive,
            stats,
        }
    }

    fn web() -> ServiceView {
        ServiceView {
            name: "web".into(),
            protocol: Protocol::Tcp,
            vip: "192.0.2.10:80".parse().unwrap(),
            scheduler: "maglev".into(),
            stats: Stats {
                conns: 113786,
                in_packets: 19495479,
                out_packets: 0,
                in_bytes: 2110345678,
                out_bytes: 0,
            },
            reals: vec![
                real(
                    "10.0.0.11:80",
                    1,
                    12,
                    30,
                    Stats {
                        conns: 12883,
                        in_packets: 1679941,
                        in_bytes: 181747000,
                        ..Stats::default()
                    },
                ),
                real("10.0.0.12:80", 0, 3, 41, Stats::default()),
            ],
        }
    }

    // Expected lines are ipvsadm's, from shared/reference/ipvsadm-formats.txt (the rendered
    // examples), with `mh` where ipvsadm printed `wlc`.
    #[test]
    fn list_numeric_matches_ipvsadm() {
        let want = concat!(
            "IP Virtual Server version 1.2.1 (size=262144)\n",
            "Prot LocalAddress:Port Scheduler Flags\n",
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n",
            "TCP  192.0.2.10:80 mh\n",
            "  -> 10.0.0.11:80                 Route   1      12         30        \n",
            "  -> 10.0.0.12:80                 Route   0      3          41        \n",
        );
        assert_eq!(list(&[web()], Listing::Default, None), want);
    }

    #[test]
    fn list_stats_matches_ipvsadm() {
        let want = concat!(
            "IP Virtual Server version 1.2.1 (size=262144)\n",
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n",
            "  -> RemoteAddress:Port\n",
            "TCP  192.0.2.10:80                  113786 19495479        0    2110M        0\n",
            "  -> 10.0.0.11:80                    12883  1679941        0  181747K        0\n",
            "  -> 10.0.0.12:80                        0        0        0        0        0\n",
        );
        assert_eq!(list(&[web()], Listing::Stats, None), want);
    }

    #[test]
    fn one_service_has_no_version_line_and_ipv6_has_brackets() {
        let mut dns = web();
        dns.protocol = Protocol::Udp;
        dns.vip = "[2001:db8::10]:53".parse().unwrap();
        dns.reals = vec![real("[2001:db8::11]:53", 5, 0, 7, Stats::default())];
        let out = list(
            &[web(), dns],
            Listing::Default,
            Some((Protocol::Udp, "[2001:db8::10]:53".parse().unwrap())),
        );
        let want = concat!(
            "Prot LocalAddress:Port Scheduler Flags\n",
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n",
            "UDP  [2001:db8::10]:53 mh\n",
            "  -> [2001:db8::11]:53            Route   5      0          7         \n",
        );
        assert_eq!(out, want);
    }

    #[test]
    fn ldirectord_parses_our_lines() {
        // ld_read_ipvsadm's patterns, checked by hand: service `^(\w+)\s+(addr:port)\s+(\w+)`,
        // real `^  ->\s+(addr:port)\s+(\w+)\s+(\d+)`.
        let out = list(&[web()], Listing::Default, None);
        let lines: Vec<&str> = out.lines().skip(3).collect();
        let svc: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(svc, ["TCP", "192.0.2.10:80", "mh"]);
        let r: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(&r[..4], ["->", "10.0.0.11:80", "Route", "1"]);
        assert!(lines[1].starts_with("  -> "));
    }
}
