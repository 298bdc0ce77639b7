//! End to end, direct routing: a client, the director running the real lbd with the real
//! XDP program, and three real servers running Debian's nginx and dnsmasq, in network
//! namespaces. Needs root; run by `cargo xtask test`.

mod e2e;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{Director, tally};
use lb_daemon::health::Health;
use lb_lab::{self as lab, Lab, REALS, REALS6, ROLE_CLIENT, ROLE_DIRECTOR, VIP, VIP6};

const INTERVAL_MS: u64 = 500;
const TIMEOUT_MS: u64 = 300;
const RISE: u64 = 2;
const FALL: u64 = 2;

/// The test's config: web (http check, quiesce) and dns (tcp check, remove) on the VIP,
/// the three reals weighted as given.
fn config_text(socket: &Path, weights: [u32; 3]) -> String {
    let reals = |port: u16| -> String {
        REALS
            .iter()
            .zip(weights)
            .map(|(a, w)| format!("      - address: {a}:{port}\n        weight: {w}\n"))
            .collect()
    };
    let reals6 = |port: u16| -> String {
        REALS6.iter().map(|a| format!("      - address: \"[{a}]:{port}\"\n")).collect()
    };
    let check = |kind: &str, extra: &str| {
        format!(
            "    check:\n      type: {kind}\n{extra}      interval: {INTERVAL_MS}ms\n      timeout: {TIMEOUT_MS}ms\n      rise: {RISE}\n      fall: {FALL}\n"
        )
    };
    [
        "director:\n  interfaces: [eth0]\n".to_string(),
        format!("  socket: {}\n", socket.display()),
        "services:\n".into(),
        format!("  - name: web\n    vip: {VIP}:80\n    protocol: tcp\n    forwarding: dr\n    on_failure: quiesce\n"),
        check("http", "      path: /healthz\n      expect_body: ok\n"),
        format!("    reals:\n{}", reals(80)),
        format!("  - name: dns\n    vip: {VIP}:53\n    protocol: udp\n    forwarding: dr\n    on_failure: remove\n"),
        check("tcp", "      port: 53\n"),
        format!("    reals:\n{}", reals(53)),
        format!("  - name: web6\n    vip: \"[{VIP6}]:80\"\n    protocol: tcp\n    forwarding: dr\n"),
        check("http", "      path: /healthz\n"),
        format!("    reals:\n{}", reals6(80)),
        format!("  - name: dns6\n    vip: \"[{VIP6}]:53\"\n    protocol: udp\n    forwarding: dr\n"),
        check("tcp", "      port: 53\n"),
        format!("    reals:\n{}", reals6(53)),
    ]
    .concat()
}

fn web() -> SocketAddr {
    SocketAddr::new(VIP.into(), 80)
}

impl Director {
    fn dr() -> Director {
        Director::start(Lab::new("lbt").expect("lab"), |socket| config_text(socket, [1, 1, 2]))
    }
}

fn web_health(d: &Director, real: usize) -> Option<Health> {
    let addr = SocketAddr::new(REALS[real].into(), 80);
    d.status()?.reals.iter().find(|r| r.service == "web" && r.address == addr).map(|r| r.health)
}

#[test]
fn http_and_dns_through_the_vip_follow_the_weights() {
    lb_lab::needs_root!();
    let d = Director::dr();
    // 800 connections: for a real of weight 1 (want 200), 30 % is about five binomial
    // standard deviations of the client ports' draw (400 once fell just outside); a
    // real whose weight were ignored (267) falls outside all the same.
    let n = 800;
    let answers = d.lab.http_gets(ROLE_CLIENT, web(), n).unwrap();
    let count = tally(&answers);
    let weights = [1.0, 1.0, 2.0];
    for (i, w) in weights.iter().enumerate() {
        let want = n as f64 * w / 4.0;
        let got = *count.get(&lab::real_role(i)).unwrap_or(&0) as f64;
        assert!(
            (got - want).abs() <= want * 0.3,
            "real{}: {got} of {n}, want {want} +-30% ({count:?})",
            i + 1
        );
    }

    let mut dig = vec!["dig", "+short", "+tries=1", "+time=2"];
    let server = format!("@{VIP}");
    dig.push(&server);
    for _ in 0..40 {
        dig.extend(["whoami.lab", "TXT"]);
    }
    let out = d.lab.exec_ok(ROLE_CLIENT, &dig).unwrap();
    let answers: Vec<&str> = out.lines().filter(|l| l.starts_with("\"real")).collect();
    assert_eq!(answers.len(), 40, "dig output:\n{out}");
    assert!(
        answers.iter().collect::<std::collections::HashSet<_>>().len() >= 2,
        "all DNS answers from one real: {out}"
    );

    // The counters saw every connection and datagram.
    let stats = d.lbadm(&["-L", "-n", "--stats"]);
    let web_line = stats.lines().find(|l| l.starts_with(&format!("TCP  {VIP}:80"))).expect(&stats);
    let conns: u64 = web_line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(conns >= n as u64, "{stats}");
    let dns_line = stats.lines().find(|l| l.starts_with(&format!("UDP  {VIP}:53"))).expect(&stats);
    let column = |n: usize| -> u64 { dns_line.split_whitespace().nth(n).unwrap().parse().unwrap() };
    // Every query is one packet; a UDP flow is a (source port) 5-tuple, and dig's random
    // ports may repeat within 40 queries, so a connection may carry two of them.
    assert_eq!(column(3), 40, "{stats}");
    assert!((35..=40).contains(&column(2)), "{stats}");

    let list = d.lbadm(&["-L", "-n"]);
    assert!(list.contains(&format!("TCP  {VIP}:80 mh\n")), "{list}");
    assert!(
        list.contains(&format!("  -> {:<28} Route   2      ", format!("{}:80", REALS[2]))),
        "{list}"
    );
}

#[test]
fn an_established_connection_stays_when_its_real_is_quiesced() {
    lb_lab::needs_root!();
    let d = Director::dr();
    let mut conn = d.lab.connect(ROLE_CLIENT, web()).unwrap();
    let owner = lab::http_get_on(&mut conn).unwrap();
    let i: usize = owner.trim_start_matches("real").parse::<usize>().unwrap() - 1;
    d.lbadm(&["-e", "-t", &format!("{VIP}:80"), "-r", &REALS[i].to_string(), "-w", "0"]);
    let one = d.lbadm(&["-L", "-n", "-t", &format!("{VIP}:80")]);
    assert!(
        one.contains(&format!(
            "  -> {:<28} Route   0      1          ",
            format!("{}:80", REALS[i])
        )),
        "{one}"
    );

    for _ in 0..5 {
        assert_eq!(lab::http_get_on(&mut conn).unwrap(), owner, "the long-lived connection moved");
    }
    let fresh = tally(&d.lab.http_gets(ROLE_CLIENT, web(), 60).unwrap());
    assert!(
        !fresh.contains_key(&owner),
        "a new connection went to the quiesced {owner}: {fresh:?}"
    );
    assert_eq!(lab::http_get_on(&mut conn).unwrap(), owner);
}

#[test]
fn a_dead_real_leaves_in_time_and_comes_back() {
    lb_lab::needs_root!();
    let mut d = Director::dr();
    let victim = 0;
    d.lab.stop(&lab::real_role(victim), "nginx").unwrap();
    let bound = Duration::from_millis(INTERVAL_MS * FALL + TIMEOUT_MS + 1000);
    let took = d.wait_until("real1 down", bound, |s| {
        s.reals.iter().any(|r| {
            r.service == "web" && r.address.ip() == REALS[victim] && r.health == Health::Down
        })
    });
    eprintln!("real1 went down {took:?} after nginx stopped (bound {bound:?})");
    let count = tally(&d.lab.http_gets(ROLE_CLIENT, web(), 100).unwrap());
    assert!(!count.contains_key("real1"), "{count:?}");
    assert_eq!(web_health(&d, victim), Some(Health::Down));
    // on_failure: quiesce keeps the dead real listed with weight 0.
    let list = d.lbadm(&["-L", "-n", "-t", &format!("{VIP}:80")]);
    assert!(
        list.contains(&format!("  -> {:<28} Route   0      ", format!("{}:80", REALS[victim]))),
        "{list}"
    );

    // on_failure: remove takes a dead DNS real out of the listing.
    d.lab.stop(&lab::real_role(1), "dnsmasq").unwrap();
    let bound = Duration::from_millis(INTERVAL_MS * FALL + TIMEOUT_MS + 1000);
    d.wait_until("real2's DNS down", bound, |s| {
        s.reals
            .iter()
            .any(|r| r.service == "dns" && r.address.ip() == REALS[1] && r.health == Health::Down)
    });
    let list = d.lbadm(&["-L", "-n", "-u", &format!("{VIP}:53")]);
    assert!(!list.contains(&REALS[1].to_string()), "{list}");
    let reals_listed =
        list.lines().filter(|l| l.starts_with("  -> ") && l.contains(":53 ")).count();
    assert_eq!(reals_listed, 2, "{list}");

    d.lab.start_nginx(victim).unwrap();
    let bound = Duration::from_millis(INTERVAL_MS * RISE + TIMEOUT_MS + 1000);
    let took = d.wait_until("real1 up again", bound, |s| {
        s.reals.iter().filter(|r| r.service == "web").all(|r| r.health == Health::Up)
    });
    eprintln!("real1 came back {took:?} after nginx started (bound {bound:?})");
    let count = tally(&d.lab.http_gets(ROLE_CLIENT, web(), 100).unwrap());
    assert!(
        count.contains_key("real1"),
        "real1 gets no new connections after coming back: {count:?}"
    );
}

#[test]
fn a_reload_applies_a_diff_and_a_bad_one_changes_nothing() {
    lb_lab::needs_root!();
    let d = Director::dr();
    let path = d.lab.dir().join("lb.yaml");
    let mut conn = d.lab.connect(ROLE_CLIENT, web()).unwrap();
    let owner = lab::http_get_on(&mut conn).unwrap();
    let before = d.lbadm(&["-L", "-n"]);

    // A config with an error: refused, nothing changes, the error names file and line.
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replacen("protocol: tcp", "protocol: sctp", 1)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lbadm"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("reload")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:", path.display())) && err.contains("sctp"), "{err}");
    assert_eq!(d.lbadm(&["-L", "-n"]), before);

    // A valid one with new weights, by SIGHUP: applied, the established connection stays.
    std::fs::write(&path, config_text(&d.socket, [3, 0, 1])).unwrap();
    d.lab.signal(ROLE_DIRECTOR, "lbd", libc::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let want = format!("  -> {:<28} Route   3      ", format!("{}:80", REALS[0]));
    while !d.lbadm(&["-L", "-n"]).contains(&want) {
        assert!(Instant::now() < deadline, "reload not applied: {}", d.lbadm(&["-L", "-n"]));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        lab::http_get_on(&mut conn).unwrap(),
        owner,
        "the reload moved an established connection"
    );
    let count = tally(&d.lab.http_gets(ROLE_CLIENT, web(), 80).unwrap());
    assert!(!count.contains_key("real2"), "weight 0 real got new connections: {count:?}");
    assert!(
        count.get("real1").copied().unwrap_or(0) > count.get("real3").copied().unwrap_or(0),
        "{count:?}"
    );
}

#[test]
fn ipv6_http_and_dns_through_the_vip() {
    lb_lab::needs_root!();
    let d = Director::dr();
    let n = 300;
    let count = tally(&d.lab.http_gets(ROLE_CLIENT, SocketAddr::new(VIP6.into(), 80), n).unwrap());
    for i in 0..REALS6.len() {
        let got = *count.get(&lab::real_role(i)).unwrap_or(&0) as f64;
        let want = n as f64 / 3.0;
        assert!((got - want).abs() <= want * 0.3, "real{}: {got} of {n} ({count:?})", i + 1);
    }
    let mut dig = vec!["dig", "-6", "+short", "+tries=1", "+time=2"];
    let server = format!("@{VIP6}");
    dig.push(&server);
    for _ in 0..20 {
        dig.extend(["whoami.lab", "TXT"]);
    }
    let out = d.lab.exec_ok(ROLE_CLIENT, &dig).unwrap();
    assert_eq!(out.lines().filter(|l| l.starts_with("\"real")).count(), 20, "dig output:\n{out}");
    // The reals' MACs came from IPv6 neighbour discovery.
    let status = d.status().unwrap();
    assert!(status.reals.iter().filter(|r| r.address.is_ipv6()).all(|r| r.mac.is_some()));
    let list = d.lbadm(&["-L", "-n", "-t", &format!("[{VIP6}]:80")]);
    assert!(list.contains(&format!("TCP  [{VIP6}]:80 mh\n")), "{list}");
}
