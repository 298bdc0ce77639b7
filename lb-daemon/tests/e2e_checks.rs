//! The check types against real servers in namespaces: dns over UDP and over TCP against
//! dnsmasq, ping against the reals' kernels, udp against a responder this test runs on
//! each real, exec, https against nginx, ldap against slapd. For each: the server stopped
//! takes its real out within interval x fall + timeout, started again brings it back
//! within interval x rise + timeout (with slack for a busy machine), and new requests
//! through the VIP keep being answered meanwhile.

mod e2e;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::{Director, dig};
use lb_daemon::health::Health;
use lb_lab::{Lab, REALS, ROLE_CLIENT, VIP, real_role};

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(150);
const RISE: u32 = 2;
const FALL: u32 = 2;
const SLACK: Duration = Duration::from_secs(2);
const ECHO_PORT: u16 = 7000;

fn config(socket: &std::path::Path) -> String {
    let reals: String = REALS.iter().map(|r| format!("      - address: {r}\n")).collect();
    let timing = format!(
        "interval: {}ms, timeout: {}ms, rise: {RISE}, fall: {FALL}",
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    );
    format!(
        "director:\n  interfaces: [eth0]\n  socket: {}\nservices:\n\
         - name: dns\n    vip: {VIP}:53\n    protocol: udp\n    \
         notify: {dir}/notify.sh\n    \
         recover: [ {{ after: 500ms, command: \"echo recover $LBD_REAL >> {dir}/hooks\" }} ]\n    \
         check: {{ type: dns, query: whoami.lab, qtype: TXT, {timing} }}\n    reals:\n{reals}\
         - name: dns-tcp\n    vip: {VIP}:53\n    protocol: tcp\n    \
         check: {{ type: dns, transport: tcp, query: whoami.lab, qtype: TXT, {timing} }}\n    reals:\n{reals}\
         - name: web\n    vip: {VIP}:80\n    protocol: tcp\n    \
         check: {{ type: ping, {timing} }}\n    reals:\n{reals}\
         - name: echo\n    vip: {VIP}:{ECHO_PORT}\n    protocol: udp\n    \
         check: {{ type: udp, send: PING, expect: PONG, {timing} }}\n    reals:\n{reals}\
         - name: web-exec\n    vip: {VIP}:8080\n    protocol: tcp\n    \
         check: {{ type: exec, command: \"cat {}/weight-$LBD_SERVICE-$LBD_REAL\", {timing} }}\n    reals:\n{reals}",
        socket.display(),
        socket.parent().unwrap().display(),
        dir = socket.parent().unwrap().display(),
    )
    .replace("\n- name", "\n  - name")
    .replace("services:\n- name", "services:\n  - name")
}

/// A UDP responder on real `i`: "PONG" to every datagram, until `stop`. It listens on
/// the real's own address, for the checks, and on the VIP (on the real's lo, as direct
/// routing has it), for clients: each socket answers from the address it was asked at.
fn responder(lab: &Lab, i: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let netns = PathBuf::from("/run/netns").join(lab.ns(&real_role(i)));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).unwrap();
        // SAFETY: setns on this thread only, with a namespace fd we hold open.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let sockets = [REALS[i], VIP].map(|a| {
            let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(a), ECHO_PORT)).unwrap();
            socket.set_read_timeout(Some(Duration::from_millis(25))).unwrap();
            socket
        });
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            for socket in &sockets {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(b"PONG", from);
                }
            }
        }
    });
    ready.recv().unwrap();
    handle
}

/// `n` clients asking the echo service through the VIP, each from a new socket (a new
/// flow); how many were answered PONG within a second.
fn echoes_through_vip(lab: &Lab, n: usize) -> usize {
    lab.in_ns(ROLE_CLIENT, move || {
        (0..n)
            .filter(|_| {
                let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                socket.send_to(b"PING", SocketAddr::new(IpAddr::V4(VIP), ECHO_PORT)).unwrap();
                let mut buf = [0u8; 16];
                socket.recv(&mut buf).is_ok_and(|len| &buf[..len] == b"PONG")
            })
            .count()
    })
    .unwrap()
}

/// Asserts that every one of `answers`, requests through the VIP, was answered, and by a
/// real other than `down` (index).
fn assert_served_without(answers: &[Result<String, String>], n: usize, down: usize) {
    assert_eq!(answers.len(), n, "{answers:?}");
    assert!(
        answers.iter().all(|a| a.as_ref().is_ok_and(|r| *r != real_role(down))),
        "through the VIP while real{} is down: {answers:?}",
        down + 1
    );
}

fn health(d: &Director, service: &str, i: usize) -> Option<Health> {
    let s = d.status()?;
    let r =
        s.reals.iter().find(|r| r.service == service && r.address.ip() == IpAddr::V4(REALS[i]))?;
    Some(r.health)
}

/// Waits until `service`'s real `i` is `want`; returns how long it took.
fn wait_health(d: &Director, service: &str, i: usize, want: Health, bound: Duration) -> Duration {
    let start = Instant::now();
    while health(d, service, i) != Some(want) {
        assert!(
            start.elapsed() < bound + SLACK,
            "{service} real{}: not {want:?} within {bound:?} + {SLACK:?}: {:#?}",
            i + 1,
            d.status().map(|s| s.reals)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn each_check_type_takes_its_real_out_and_back_while_the_vip_keeps_answering() {
    lb_lab::needs_root!();
    let lab = Lab::new("chk").expect("lab");
    // The exec check's verdict and weight, per real: what a site's own script would say.
    let weight_file =
        |dir: &std::path::Path, i: usize| dir.join(format!("weight-web-exec-{}:8080", REALS[i]));
    for i in 0..REALS.len() {
        std::fs::write(weight_file(lab.dir(), i), "1\n").unwrap();
    }
    // The dns service's notify script writes down each transition it is told of.
    let hooks = lab.dir().join("hooks");
    let notify = lab.dir().join("notify.sh");
    std::fs::write(
        &notify,
        format!("#!/bin/sh\necho \"$1 $LBD_SERVICE $LBD_VIP $LBD_REAL\" >> {}\n", hooks.display()),
    )
    .unwrap();
    std::fs::set_permissions(&notify, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let stops: Vec<Arc<AtomicBool>> = (0..REALS.len()).map(|_| Arc::default()).collect();
    let mut responders: Vec<_> =
        (0..REALS.len()).map(|i| Some(responder(&lab, i, stops[i].clone()))).collect();
    // Director::start runs nginx and dnsmasq on every real and waits for all to be up.
    let d = Director::start(lab, config);
    let down_within = INTERVAL * FALL + TIMEOUT;
    let up_within = INTERVAL * RISE + TIMEOUT;
    let vip = IpAddr::V4(VIP);

    // dns, both transports: dnsmasq on real 1 stopped and started again.
    let mut d = d;
    d.lab.stop(&real_role(0), "dnsmasq").unwrap();
    for service in ["dns", "dns-tcp"] {
        let took = wait_health(&d, service, 0, Health::Down, down_within);
        eprintln!("{service}: real1 down after {took:?} (bound {down_within:?})");
    }
    let answers = dig(&d.lab, vip, 20);
    assert_eq!(answers.len(), 20, "DNS through the VIP meanwhile: {answers:?}");
    assert!(answers.iter().all(|a| a != "real1"), "{answers:?}");
    let status = d.lbadm(&["status"]);
    assert!(status.contains("dns          198.51.100.11:53"), "{status}");
    // Kept down past 500 ms: the recover step ran, once, for real 1 alone.
    let real1 = format!("{}:53", REALS[0]);
    let recovered = format!("recover {real1}");
    let read = || std::fs::read_to_string(&hooks).unwrap_or_default();
    let start = Instant::now();
    while !read().contains(&recovered) {
        assert!(
            start.elapsed() < Duration::from_millis(500) + SLACK,
            "no recover step: {:?}",
            read()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.lab.start_dns(0).unwrap();
    for service in ["dns", "dns-tcp"] {
        let took = wait_health(&d, service, 0, Health::Up, up_within);
        eprintln!("{service}: real1 up after {took:?} (bound {up_within:?})");
    }
    // notify said DOWN then UP, with the service, VIP and real; recover ran once and no more.
    let start = Instant::now();
    let up = format!("UP dns {VIP}:53 {real1}");
    while !read().contains(&up) {
        assert!(start.elapsed() < SLACK, "no UP notified: {:?}", read());
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines: Vec<String> = read().lines().map(String::from).collect();
    assert_eq!(lines, [format!("DOWN dns {VIP}:53 {real1}"), recovered.clone(), up], "{lines:?}");

    // ping: real 2's kernel stops answering echoes, then answers again.
    let ignore = |on: &str| {
        let key = format!("net.ipv4.icmp_echo_ignore_all={on}");
        d.lab.exec_ok(&real_role(1), &["sysctl", "-q", "-w", &key]).unwrap();
    };
    ignore("1");
    let took = wait_health(&d, "web", 1, Health::Down, down_within);
    eprintln!("ping: real2 down after {took:?}");
    let answered = d.lab.http_gets(ROLE_CLIENT, SocketAddr::new(vip, 80), 20).unwrap();
    assert_served_without(&answered, 20, 1);
    ignore("0");
    let took = wait_health(&d, "web", 1, Health::Up, up_within);
    eprintln!("ping: real2 up after {took:?}");

    // udp: real 3's responder stopped and started again; the others stay up.
    stops[2].store(true, Ordering::Relaxed);
    responders[2].take().unwrap().join().unwrap();
    let took = wait_health(&d, "echo", 2, Health::Down, down_within);
    eprintln!("udp: real3 down after {took:?}");
    assert_eq!(
        (health(&d, "echo", 0), health(&d, "echo", 1)),
        (Some(Health::Up), Some(Health::Up))
    );
    // Real 3 answers nothing now: every new client is answered by real 1 or 2.
    assert_eq!(echoes_through_vip(&d.lab, 20), 20, "UDP through the VIP meanwhile");
    let again = Arc::new(AtomicBool::new(false));
    responders[2] = Some(responder(&d.lab, 2, again.clone()));
    let took = wait_health(&d, "echo", 2, Health::Up, up_within);
    eprintln!("udp: real3 up after {took:?}");
    again.store(true, Ordering::Relaxed);

    // exec: real 1's script prints weight 3, then fails (no file), then passes again.
    let weight = |i: usize| {
        let s = d.status().unwrap();
        s.reals
            .iter()
            .find(|r| r.service == "web-exec" && r.address.ip() == IpAddr::V4(REALS[i]))
            .map(|r| r.weight)
    };
    std::fs::write(weight_file(d.lab.dir(), 0), "3\n").unwrap();
    let start = Instant::now();
    while weight(0) != Some(3) {
        assert!(
            start.elapsed() < INTERVAL * 2 + TIMEOUT + SLACK,
            "weight 3 not applied: {:?}",
            d.status().map(|s| s.reals)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.lbadm(&["-L", "-n"]).contains(&format!("{}:8080", REALS[0])));
    std::fs::remove_file(weight_file(d.lab.dir(), 0)).unwrap();
    let took = wait_health(&d, "web-exec", 0, Health::Down, down_within);
    eprintln!("exec: real1 down after {took:?}");
    let answered = d.lab.http_gets(ROLE_CLIENT, SocketAddr::new(vip, 8080), 20).unwrap();
    assert_served_without(&answered, 20, 0);
    std::fs::write(weight_file(d.lab.dir(), 0), "2\n").unwrap();
    let took = wait_health(&d, "web-exec", 0, Health::Up, up_within);
    eprintln!("exec: real1 up after {took:?}");
    let start = Instant::now();
    while weight(0) != Some(2) {
        assert!(start.elapsed() < INTERVAL * 2 + TIMEOUT + SLACK, "weight 2 not applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    for s in &stops {
        s.store(true, Ordering::Relaxed);
    }
    for r in responders.into_iter().flatten() {
        r.join().unwrap();
    }
}

#[test]
fn the_fallback_answers_while_every_real_is_down_and_leaves_when_one_is_back() {
    lb_lab::needs_root!();
    let lab = Lab::new("sry").expect("lab");
    let d = Director::start(lab, |socket| {
        format!(
            "director:\n  interfaces: [eth0]\n  socket: {}\nservices:\n  - name: web\n    vip: {VIP}:80\n    \
             protocol: tcp\n    fallback: {}\n    \
             check: {{ type: http, path: /healthz, interval: 200ms, timeout: 150ms, rise: {RISE}, fall: {FALL} }}\n    \
             reals:\n      - address: {}\n      - address: {}\n",
            socket.display(),
            REALS[2],
            REALS[0],
            REALS[1]
        )
    });
    let mut d = d;
    let vip = SocketAddr::new(IpAddr::V4(VIP), 80);
    let fallback = format!("{}:80", REALS[2]);
    assert!(!d.lbadm(&["-L", "-n"]).contains(&fallback), "not listed while the reals serve");
    let served = |d: &Director| -> Vec<String> {
        d.lab
            .http_gets(lb_lab::ROLE_CLIENT, vip, 20)
            .unwrap()
            .into_iter()
            .map(|a| a.unwrap_or_else(|e| e))
            .collect()
    };
    assert!(served(&d).iter().all(|r| r == "real1" || r == "real2"));
    d.lab.stop(&real_role(0), "nginx").unwrap();
    d.lab.stop(&real_role(1), "nginx").unwrap();
    let down_within = INTERVAL * FALL + TIMEOUT;
    wait_health(&d, "web", 0, Health::Down, down_within);
    wait_health(&d, "web", 1, Health::Down, down_within);
    assert_eq!(served(&d), vec!["real3".to_string(); 20], "the sorry server answers");
    assert!(d.lbadm(&["-L", "-n"]).contains(&fallback), "listed while it serves");
    d.lab.start_nginx(0).unwrap();
    wait_health(&d, "web", 0, Health::Up, INTERVAL * RISE + TIMEOUT);
    assert_eq!(served(&d), vec!["real1".to_string(); 20], "a real back: the fallback leaves");
    assert!(!d.lbadm(&["-L", "-n"]).contains(&fallback));
}

#[test]
fn checks_never_leave_from_a_vip_even_when_the_kernel_would_pick_one() {
    lb_lab::needs_root!();
    let lab = Lab::new("src").expect("lab");
    // The IPv6 VIP as operators add it, preferred: the kernel's source for the reals.
    let vip6 = format!("{}/128", lb_lab::VIP6);
    lab.exec_ok(
        lb_lab::ROLE_DIRECTOR,
        &["ip", "addr", "change", &vip6, "dev", "eth0", "nodad", "preferred_lft", "forever"],
    )
    .unwrap();
    let route = lab
        .exec_ok(
            lb_lab::ROLE_DIRECTOR,
            &["ip", "-6", "route", "get", &lb_lab::REALS6[0].to_string()],
        )
        .unwrap();
    assert!(route.contains(&format!("src {}", lb_lab::VIP6)), "the trap is set: {route}");
    // Every real up (Director::start waits for it): the checks left from the director's own
    // address, or the reals would have answered their own copy of the VIP.
    let reals: String =
        lb_lab::REALS6.iter().map(|r| format!("      - address: \"{r}\"\n")).collect();
    let d = Director::start(lab, |socket| {
        format!(
            "director:\n  interfaces: [eth0]\n  socket: {}\nservices:\n  - name: web6\n    \
             vip: \"[{}]:80\"\n    protocol: tcp\n    check: {{ type: http, path: /healthz, interval: 200ms, timeout: 150ms }}\n    \
             reals:\n{reals}  - name: dns6\n    vip: \"[{}]:53\"\n    protocol: udp\n    \
             check: {{ type: dns, query: whoami.lab, qtype: TXT, interval: 200ms, timeout: 150ms }}\n    reals:\n{reals}",
            socket.display(),
            lb_lab::VIP6,
            lb_lab::VIP6
        )
    });
    let status = d.status().unwrap();
    assert!(status.reals.iter().all(|r| r.health == Health::Up), "{:#?}", status.reals);
}

#[test]
fn https_checks_take_a_self_signed_real_as_up_and_verify_against_a_ca_when_asked() {
    lb_lab::needs_root!();
    let lab = Lab::new("tls").expect("lab");
    let (ca, _) = lab.tls_certificate().unwrap();
    let reals: String = REALS.iter().map(|r| format!("      - address: {r}\n")).collect();
    let timing = format!(
        "interval: {}ms, timeout: {}ms, rise: {RISE}, fall: {FALL}",
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    );
    let d = Director::start(lab, |socket| {
        format!(
            "director:\n  interfaces: [eth0]\n  socket: {}\nservices:\n  - name: tls\n    vip: {VIP}:8443\n    \
             protocol: tcp\n    checks:\n      - {{ type: https, path: /healthz, expect_body: ok, {timing} }}\n      \
             - {{ type: https, host: lab, tls_verify: true, ca_file: {}, {timing} }}\n    reals:\n{reals}",
            socket.display(),
            ca.display()
        )
    });
    // Up with both checks (Director::start waited): the self-signed one taken as it
    // comes, the verified one against the lab's CA with SNI `lab`.
    let status = d.status().unwrap();
    let kinds: Vec<&str> = status.reals[0].checks.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["https", "https"]);
    let mut d = d;
    d.lab.stop(&real_role(0), "nginx").unwrap();
    let took = wait_health(&d, "tls", 0, Health::Down, INTERVAL * FALL + TIMEOUT);
    eprintln!("https: real1 down after {took:?}");
    // New TLS clients through the VIP (curl, each its own connection) reach real 2 or 3.
    let answers = d.lab.https_gets(SocketAddr::new(IpAddr::V4(VIP), 8443), 20).unwrap();
    assert_served_without(&answers, 20, 0);
    d.lab.start_nginx(0).unwrap();
    let took = wait_health(&d, "tls", 0, Health::Up, INTERVAL * RISE + TIMEOUT);
    eprintln!("https: real1 up after {took:?}");
}

#[test]
fn ldap_checks_search_slapd_anonymously_and_bound_and_follow_it_down_and_back() {
    lb_lab::needs_root!();
    let mut lab = Lab::new("ldp").expect("lab");
    for i in 0..REALS.len() {
        lab.start_ldap(i).expect("slapd");
    }
    let secret = lab.dir().join("ldap.secret");
    std::fs::write(&secret, format!("{}\n", lb_lab::LDAP_PASSWORD)).unwrap();
    let reals: String = REALS.iter().map(|r| format!("      - address: {r}\n")).collect();
    let timing = format!(
        "interval: {}ms, timeout: {}ms, rise: {RISE}, fall: {FALL}",
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    );
    let base = lb_lab::LDAP_BASE;
    let d = Director::start(lab, |socket| {
        format!(
            "director:\n  interfaces: [eth0]\n  socket: {}\nservices:\n  - name: ldap\n    vip: {VIP}:389\n    \
             protocol: tcp\n    checks:\n      \
             - {{ type: ldap, base: \"{base}\", filter: \"(objectClass=dcObject)\", {timing} }}\n      \
             - {{ type: ldap, base: \"{base}\", bind_dn: \"{}\", password_file: {}, {timing} }}\n    \
             reals:\n{reals}",
            socket.display(),
            lb_lab::LDAP_ADMIN,
            secret.display()
        )
    });
    // Up with both (Director::start waited): the anonymous search, and the bound one.
    let status = d.status().unwrap();
    let kinds: Vec<&str> = status.reals[0].checks.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["ldap", "ldap"]);
    let vip = IpAddr::V4(VIP);
    let mut d = d;
    d.lab.stop(&real_role(1), "slapd").unwrap();
    let took = wait_health(&d, "ldap", 1, Health::Down, INTERVAL * FALL + TIMEOUT);
    eprintln!("ldap: real2 down after {took:?}");
    assert_served_without(&d.lab.ldap_searches(vip, 20).unwrap(), 20, 1);
    d.lab.start_ldap(1).unwrap();
    let took = wait_health(&d, "ldap", 1, Health::Up, INTERVAL * RISE + TIMEOUT);
    eprintln!("ldap: real2 up after {took:?}");
    // The password is read at each probe: a wrong one fails the bound check, with the
    // server's reason, and the right one brings the reals back without a reload.
    std::fs::write(&secret, "wrong\n").unwrap();
    let took = wait_health(&d, "ldap", 0, Health::Down, INTERVAL * FALL + TIMEOUT);
    eprintln!("ldap: a wrong password takes real1 down after {took:?}");
    let status = d.lbadm(&["status"]);
    assert!(status.contains("invalidCredentials"), "{status}");
    std::fs::write(&secret, lb_lab::LDAP_PASSWORD).unwrap();
    wait_health(&d, "ldap", 0, Health::Up, INTERVAL * RISE + TIMEOUT);
    // A search the server answers without the entry is down too: a directory that lost
    // its data answers, and must not be sent clients.
    let path = d.lab.dir().join("lb.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("(objectClass=dcObject)", "(description=nobody)")).unwrap();
    assert!(d.lbadm(&["reload"]).contains("reloaded"));
    wait_health(&d, "ldap", 0, Health::Down, INTERVAL * FALL + TIMEOUT);
    let status = d.lbadm(&["status"]);
    assert!(
        status.contains("search of \"dc=lab\" with (description=nobody) found no entry"),
        "{status}"
    );
}
