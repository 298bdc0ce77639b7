//! End to end, NAT: the client and the director's eth0 on one segment, the director's eth1
//! and three reals (nginx on 8080, dnsmasq) on another, the director their gateway with IP
//! forwarding off, so only the XDP program can carry requests and replies across.
//! IPv4 and IPv6, TCP and UDP, a real port other than the VIP's, and the reals' ICMP
//! errors translated back to the client. Needs root.

mod e2e;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use e2e::{Director, assert_shares, dig, tally};
use lb_lab::{BACK_REALS, BACK_REALS6, Lab, ROLE_CLIENT, ROLE_DIRECTOR, VIP, VIP6};

fn config(socket: &Path) -> String {
    let service = |name: &str, vip: &str, proto: &str, check: &str, reals: String| {
        format!(
            "  - name: {name}\n    vip: \"{vip}\"\n    protocol: {proto}\n    forwarding: nat\n    check:\n{check}      interval: 500ms\n      timeout: 300ms\n    reals:\n{reals}"
        )
    };
    let http = "      type: http\n      path: /healthz\n      expect_body: ok\n";
    let tcp53 = "      type: tcp\n      port: 53\n";
    let reals4 = |port: u16| -> String {
        BACK_REALS.iter().map(|a| format!("      - address: \"{a}:{port}\"\n")).collect()
    };
    let reals6 = |port: u16| -> String {
        BACK_REALS6.iter().map(|a| format!("      - address: \"[{a}]:{port}\"\n")).collect()
    };
    [
        format!(
            "director:\n  interfaces: [eth0, eth1]\n  socket: {}\nservices:\n",
            socket.display()
        ),
        service("web", &format!("{VIP}:80"), "tcp", http, reals4(8080)),
        service("dns", &format!("{VIP}:53"), "udp", tcp53, reals4(53)),
        service("web6", &format!("[{VIP6}]:80"), "tcp", http, reals6(8080)),
        service("dns6", &format!("[{VIP6}]:53"), "udp", tcp53, reals6(53)),
        // Nothing listens on the reals' port 5399: they answer with ICMP port unreachable.
        service("closed", &format!("{VIP}:5300"), "udp", tcp53, reals4(5399)),
        service("closed6", &format!("[{VIP6}]:5300"), "udp", tcp53, reals6(5399)),
    ]
    .concat()
}

/// The counters (Conns, InPkts, OutPkts, InBytes, OutBytes) of the service line of
/// `lbadm -L -n --stats` that starts with `service` ("TCP  192.0.2.1:80").
fn service_stats(stats: &str, service: &str) -> Vec<u64> {
    let line = stats.lines().find(|l| l.starts_with(service)).expect(stats);
    line.split_whitespace().skip(2).map(|c| c.parse().unwrap()).collect()
}

#[test]
fn nat_carries_http_and_dns_both_ways_over_ipv4_and_ipv6() {
    lb_lab::needs_root!();
    let d = Director::start(Lab::split("lbn").expect("lab"), config);
    // The kernel does not forward: every answer below crossed the director through XDP.
    let forward = d.lab.exec_ok(ROLE_DIRECTOR, &["sysctl", "-n", "net.ipv4.ip_forward"]).unwrap();
    assert_eq!(forward.trim(), "0");
    let forward6 =
        d.lab.exec_ok(ROLE_DIRECTOR, &["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).unwrap();
    assert_eq!(forward6.trim(), "0");

    for vip in [IpAddr::from(VIP), IpAddr::from(VIP6)] {
        let count = tally(&d.lab.http_gets(ROLE_CLIENT, SocketAddr::new(vip, 80), 300).unwrap());
        assert_shares(&count, &[1.0, 1.0, 1.0]);
        let answers = dig(&d.lab, vip, 20);
        assert_eq!(answers.len(), 20, "{vip}: {answers:?}");
    }

    let list = d.lbadm(&["-L", "-n"]);
    assert!(
        list.contains(&format!("  -> {:<28} Masq    1      ", format!("{}:8080", BACK_REALS[0]))),
        "{list}"
    );
    // NAT sees the replies: OutPkts counts them (at least one per request).
    let stats = d.lbadm(&["-L", "-n", "--stats"]);
    let cols = service_stats(&stats, &format!("TCP  {VIP}:80"));
    assert_eq!(cols[0], 300, "{stats}");
    assert!(cols[2] >= 300, "OutPkts {}: {stats}", cols[2]);
    let cols = service_stats(&stats, &format!("UDP  {VIP}:53"));
    assert_eq!((cols[1], cols[2]), (20, 20), "every query answered through the director: {stats}");
}

/// A real's "port unreachable" about a NAT request reaches the client translated (from the
/// VIP, quoting the request as the client sent it), so the client's stack matches it to its
/// socket: dig reports the refusal at once instead of timing out. Without the translation
/// the error, addressed to the client from the real's address, dies in the director's
/// kernel (forwarding is off).
#[test]
fn a_reals_port_unreachable_reaches_the_client_from_the_vip() {
    lb_lab::needs_root!();
    let d = Director::start(Lab::split("lbi").expect("lab"), config);
    for vip in [IpAddr::from(VIP), IpAddr::from(VIP6)] {
        let family = if vip.is_ipv6() { "-6" } else { "-4" };
        let at = format!("@{vip}");
        let out = d
            .lab
            .exec(ROLE_CLIENT, &["dig", family, "-p", "5300", "+tries=1", "+time=3", &at, "a.lab"])
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.contains("connection refused"), "{vip}: {out}");
    }
    let stats = d.lbadm(&["-L", "-n", "--stats"]);
    for vip in [format!("{VIP}:5300"), format!("[{VIP6}]:5300")] {
        let cols = service_stats(&stats, &format!("UDP  {vip}"));
        // One query in, its ICMP error out through the director.
        assert_eq!((cols[1], cols[2]), (1, 1), "{stats}");
    }
}
