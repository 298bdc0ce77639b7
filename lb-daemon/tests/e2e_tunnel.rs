//! End to end, tunnel: bare real servers prepared by `lbadm realserver setup --mode
//! tunnel` (VIP on lo, ARP sysctls, the decapsulation program pinned), the director
//! wrapping client packets in IP-in-IP to them, the reals answering the client directly.
//! Debian's tshark, on the wire between director and real, decodes what it sees. Root.

mod e2e;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{Director, assert_shares, dig, tally};
use lb_lab::{self as lab, Lab, REALS, ROLE_CLIENT, VIP, VIP6};

/// Tunnelled web and DNS services over IPv4 and IPv6 to `reals`; with `dr_too`,
/// also a direct-routing web service on port 8080 to the same reals.
fn config(reals: &[(Ipv4Addr, Ipv6Addr)], socket: &Path, dr_too: bool) -> String {
    let service = |name: &str, vip: &str, proto: &str, mode: &str, check: &str, reals: &str| {
        format!(
            "  - name: {name}\n    vip: \"{vip}\"\n    protocol: {proto}\n    forwarding: {mode}\n    check:\n{check}      interval: 500ms\n      timeout: 300ms\n    reals:\n{reals}"
        )
    };
    let http = "      type: http\n      path: /healthz\n";
    let tcp53 = "      type: tcp\n      port: 53\n";
    let reals4: String = reals.iter().map(|r| format!("      - address: {}\n", r.0)).collect();
    let reals6: String = reals.iter().map(|r| format!("      - address: \"{}\"\n", r.1)).collect();
    let mut text = [
        format!("director:\n  interfaces: [eth0]\n  socket: {}\nservices:\n", socket.display()),
        service("web", &format!("{VIP}:80"), "tcp", "tunnel", http, &reals4),
        service("dns", &format!("{VIP}:53"), "udp", "tunnel", tcp53, &reals4),
        service("web6", &format!("[{VIP6}]:80"), "tcp", "tunnel", http, &reals6),
        service("dns6", &format!("[{VIP6}]:53"), "udp", "tunnel", tcp53, &reals6),
    ]
    .concat();
    if dr_too {
        text += &service("web-dr", &format!("{VIP}:8080"), "tcp", "dr", http, &reals4);
    }
    text
}

/// `lbadm realserver setup --mode tunnel` for both VIPs on every real, its pins below
/// the lab's directory; returns the pin root.
fn prepare_reals(lab: &mut Lab) -> String {
    let pins = lab.dir().join("bpf");
    lab.track_mount(pins.clone());
    let pins = pins.to_str().unwrap().to_string();
    for i in 0..REALS.len() {
        for vip in [VIP.to_string(), VIP6.to_string()] {
            let out = lbadm_on(lab, i, &setup_args("setup", &vip, &pins));
            assert!(out.contains(&format!("{vip} is decapsulated on eth0")), "{out}");
        }
    }
    pins
}

fn setup_args<'a>(verb: &'a str, vip: &'a str, pins: &'a str) -> [&'a str; 9] {
    [verb, "--vip", vip, "--mode", "tunnel", "--interface", "eth0", "--pin-root", pins]
}

fn lbadm_on(lab: &Lab, real: usize, args: &[&str]) -> String {
    let mut cmd = vec![env!("CARGO_BIN_EXE_lbadm"), "realserver"];
    cmd.extend(args);
    let out = lab.exec_net(&lab::real_role(real), &cmd).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lbadm {args:?} on real{}: {}{text}",
        real + 1,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// POSTs `len` bytes through `vip` from the client and waits until the real has
/// acknowledged all of them (TCP_INFO's bytes_acked); the answer's status line.
fn upload(lab: &Lab, vip: SocketAddr, len: usize) -> String {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let mut s = lab.connect(ROLE_CLIENT, vip).unwrap();
    // A stalled path (nothing acknowledged) fails the write instead of hanging the test.
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    let head = format!("POST / HTTP/1.1\r\nHost: lab\r\nContent-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if let Err(e) = s.write_all(&vec![b'x'; len]) {
        panic!("uploading {len} bytes through {vip}: {e}");
    }
    let sent = (head.len() + len) as u64;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // SAFETY: an all-zero tcp_info is valid; getsockopt fills at most `size` bytes.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut size = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut size,
            )
        };
        assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        if info.tcpi_bytes_acked >= sent {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {sent} bytes to {vip} acknowledged",
            info.tcpi_bytes_acked
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 512];
    while !answer.contains(&b'\n') {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_string()
}

/// Uploads through both VIPs' port 80 until the real has every byte, and asserts that
/// the client learnt path MTU `mtu4` to the IPv4 VIP and `mtu6` to the IPv6 one.
fn upload_learning_mtu(lab: &Lab, mtu4: u32, mtu6: u32) {
    for (vip, family, mtu) in [(IpAddr::from(VIP), "-4", mtu4), (IpAddr::from(VIP6), "-6", mtu6)] {
        let status = upload(lab, SocketAddr::new(vip, 80), 200_000);
        assert!(status.starts_with("HTTP/1.1 200"), "upload through {vip}: {status}");
        let route = lab.exec_ok(ROLE_CLIENT, &["ip", family, "route", "get", &vip.to_string()]);
        let route = route.unwrap();
        assert!(route.contains(&format!("mtu {mtu}")), "client's route to {vip}: {route}");
    }
}

/// The switch's port to real1 (the lab numbers ports client, director, then the reals).
const REAL1_PORT: &str = "port2";

/// Waits until the tshark on [`REAL1_PORT`] captures. tshark says "Capturing on 'IFACE'"
/// before its dumpcap has even opened the port, so that line is only the first sign: then
/// requests through the IPv4 VIP, one at a time, until one has gone through the tunnel to
/// real1 and tshark has written one of its frames. Those frames are the same traffic the
/// test checks, and count among the capture's five.
fn wait_until_capturing(lab: &Lab) {
    let limit = Duration::from_secs(60);
    let log = || lab.log("switch", "tshark");
    let start = Instant::now();
    let started = format!("Capturing on '{REAL1_PORT}'");
    while !log().contains(&started) {
        assert!(start.elapsed() < limit, "tshark did not start within {limit:?}:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let start = Instant::now();
    let web = SocketAddr::new(VIP.into(), 80);
    let mut answers = Vec::new();
    while !log().lines().any(|l| l.starts_with("4,")) {
        assert!(
            start.elapsed() < limit,
            "tshark captured no tunnel frame within {limit:?} of requests ({answers:?}):\n{}",
            log()
        );
        answers.extend(lab.http_gets(ROLE_CLIENT, web, 1).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tunnel_through_the_shipped_decapsulation_over_ipv4_and_ipv6() {
    lb_lab::needs_root!();
    let mut lab = Lab::bare("lbu").expect("lab");
    let pins = prepare_reals(&mut lab);
    for i in 0..REALS.len() {
        // Set up twice: nothing new, nothing broken.
        let again = lbadm_on(&lab, i, &setup_args("setup", &VIP.to_string(), &pins));
        assert!(again.contains("already on lo") && !again.contains("attached"), "{again}");
    }
    let reals: Vec<_> = (0..REALS.len()).map(|i| lab.real(i)).collect();
    let config = move |socket: &Path| config(&reals, socket, false);
    let mut d = Director::start(lab, config);

    // tshark on the switch's port to real1: the frames there are the director's tunnel.
    let capture = [
        "tshark",
        "-l",
        "-n",
        "-i",
        REAL1_PORT,
        "-f",
        "ip proto 4",
        "-c",
        "5",
        "-a",
        "duration:20",
        "-o",
        "ip.check_checksum:TRUE",
        "-T",
        "fields",
        "-e",
        "ip.proto",
        "-e",
        "ip.src",
        "-e",
        "ip.dst",
        "-e",
        "ip.checksum.status",
        "-e",
        "tcp.checksum.status",
        "-o",
        "tcp.check_checksum:TRUE",
    ];
    d.lab.spawn("switch", "tshark", &capture).unwrap();
    wait_until_capturing(&d.lab);

    for vip in [IpAddr::from(VIP), IpAddr::from(VIP6)] {
        let count = tally(&d.lab.http_gets(ROLE_CLIENT, SocketAddr::new(vip, 80), 300).unwrap());
        assert_shares(&count, &[1.0, 1.0, 1.0]);
    }
    for vip in [IpAddr::from(VIP), IpAddr::from(VIP6)] {
        let answers = dig(&d.lab, vip, 20);
        assert_eq!(answers.len(), 20, "DNS through {vip}: {answers:?}");
    }
    let list = d.lbadm(&["-L", "-n", "-t", &format!("{VIP}:80")]);
    assert!(
        list.contains(&format!("  -> {:<28} Tunnel  1      ", format!("{}:80", REALS[0]))),
        "{list}"
    );

    // The capture: IP-in-IP from the director to real1, both headers' checksums good.
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut log = d.lab.log("switch", "tshark");
    while log.lines().filter(|l| l.starts_with("4,")).count() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        log = d.lab.log("switch", "tshark");
    }
    let packets: Vec<&str> = log.lines().filter(|l| l.starts_with("4,")).collect();
    assert_eq!(packets.len(), 5, "tshark saw:\n{log}");
    for p in packets {
        // proto "4,6" (outer IPIP, inner TCP), src "director,client", dst "real1,VIP",
        // IP checksum status "1,1" (good, good), TCP checksum status 1 (good).
        let cols: Vec<&str> = p.split('\t').collect();
        assert_eq!(cols[0], "4,6", "{p}");
        assert_eq!(cols[1], format!("{},{}", lab::DIRECTOR, lab::CLIENT), "{p}");
        assert_eq!(cols[2], format!("{},{VIP}", REALS[0]), "{p}");
        assert_eq!(cols[3], "1,1", "{p}");
        assert_eq!(cols[4], "1", "{p}");
    }

    // Client packets of 1500 bytes are too big to tunnel over the director's 1500-byte
    // link: it answers ICMP fragmentation-needed / packet-too-big from the VIP, the
    // client's kernel lowers its path MTU to the VIP, and TCP resends in smaller segments.
    // Every byte of the upload is acknowledged by the real: nothing is silently dropped.
    upload_learning_mtu(&d.lab, 1480, 1460);
    let status = d.status().unwrap();
    let too_big = status.packets.iter().find(|c| c.reason == "too_big_sent").unwrap();
    assert!(too_big.packets >= 2, "{:?}", status.packets);

    for i in 0..REALS.len() {
        lbadm_on(&d.lab, i, &setup_args("teardown", &VIP6.to_string(), &pins));
        let out = lbadm_on(&d.lab, i, &setup_args("teardown", &VIP.to_string(), &pins));
        assert!(out.contains("lb_decap detached from eth0"), "{out}");
    }
}

/// Reals in another network, behind a router: the tunnel goes to the router's MAC, the
/// kernel's route says so, and the reals answer the client through the router. The path
/// beyond the router is narrower (1400 bytes): lbd learns it from the router's ICMP about
/// the tunnel packets, and later from a route that narrows it further, and the director
/// sizes its too-big answers to clients by it. Direct routing cannot reach the reals (its
/// frames keep the VIP as destination), and lbd says so instead of sending them there.
#[test]
fn tunnel_reaches_reals_behind_a_router_and_direct_routing_refuses_them() {
    lb_lab::needs_root!();
    let mut lab = Lab::routed("lbr").expect("lab");
    prepare_reals(&mut lab);
    let router_mac = |dev: &str| {
        let out = lab.exec_ok(lab::ROLE_ROUTER, &["cat", &format!("/sys/class/net/{dev}/address")]);
        out.unwrap().trim().to_string()
    };
    let router_mac = router_mac("eth0");
    lab.exec_ok(lab::ROLE_ROUTER, &["ip", "link", "set", "eth1", "mtu", "1400"]).unwrap();
    for i in 0..REALS.len() {
        lab.exec_ok(&lab::real_role(i), &["ip", "link", "set", "eth0", "mtu", "1400"]).unwrap();
    }
    let reals: Vec<_> = (0..REALS.len()).map(|i| lab.real(i)).collect();
    let config = move |socket: &Path| config(&reals, socket, true);
    let d = Director::start(lab, config);

    for vip in [IpAddr::from(VIP), IpAddr::from(VIP6)] {
        let count = tally(&d.lab.http_gets(ROLE_CLIENT, SocketAddr::new(vip, 80), 300).unwrap());
        assert_shares(&count, &[1.0, 1.0, 1.0]);
        let answers = dig(&d.lab, vip, 20);
        assert_eq!(answers.len(), 20, "DNS through {vip}: {answers:?}");
    }

    // Full-size client packets: too big for the path beyond the router once tunnelled.
    // The router drops them and tells the director, whose kernel cannot use it (no ipip
    // module); unless lbd learns the path MTU from it, the upload stalls.
    upload_learning_mtu(&d.lab, 1380, 1360);
    let log = d.lab.log(lab::ROLE_DIRECTOR, "lbd");
    assert!(log.contains("tunnel path MTU learnt"), "{log}");
    // The operator narrows the routes further: the director's answers follow them.
    for (family, net, router, mtu) in [
        ("-4", "203.0.113.0/24", lab::ROUTER.to_string(), "1300"),
        ("-6", "2001:db8:200::/64", lab::ROUTER6.to_string(), "1340"),
    ] {
        let route = ["ip", family, "route", "change", net, "via", &router, "mtu", mtu];
        d.lab.exec_ok(lab::ROLE_DIRECTOR, &route).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let applied = |log: &str| log.contains("mtu=Some(1300)") && log.contains("mtu=Some(1340)");
    while !applied(&d.lab.log(lab::ROLE_DIRECTOR, "lbd")) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    upload_learning_mtu(&d.lab, 1280, 1300);

    let status = d.status().unwrap();
    for r in &status.reals {
        let router =
            if r.address.is_ipv4() { IpAddr::from(lab::ROUTER) } else { lab::ROUTER6.into() };
        assert_eq!(r.via, Some(router), "{r:?}");
        assert_eq!(r.mac.as_deref(), Some(router_mac.as_str()), "{r:?}");
        if r.service == "web-dr" {
            let why = r.unreachable.as_deref().unwrap_or_default();
            assert!(why.contains("direct routing needs it on the director's segment"), "{r:?}");
        } else {
            assert_eq!(r.unreachable, None, "{r:?}");
        }
    }
    let list = d.lbadm(&["status"]);
    assert!(list.contains(&format!("reached via {}", lab::ROUTER)), "{list}");
    assert!(list.contains("no new connections: direct routing needs"), "{list}");
    let log = d.lab.log(lab::ROLE_DIRECTOR, "lbd");
    assert!(log.contains("direct routing needs it on the director's segment"), "{log}");
    // Nothing of web-dr went anywhere: the data plane has no real to schedule it to.
    assert!(
        d.lab.http_gets(ROLE_CLIENT, SocketAddr::new(VIP.into(), 8080), 1).unwrap()[0].is_err()
    );
    let list = d.lbadm(&["-L", "-n", "--stats", "-t", &format!("{VIP}:8080")]);
    let reals: Vec<&str> = list.lines().filter(|l| l.starts_with("  -> 203.0.113.")).collect();
    assert_eq!(reals.len(), 3, "{list}");
    assert!(reals.iter().all(|l| l.split_whitespace().nth(2) == Some("0")), "{list}");
}
