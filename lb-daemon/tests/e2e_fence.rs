//! The fence against a split brain: lbd master, pinned, keepalived 2.2.7 the backup. lbd
//! killed with -9 leaves its VIP on its interface (as keepalived does) and its data plane
//! running; once the lease lapses, the data plane drops ARP requests for the VIP, so every
//! ARP request a host sends is answered by the new master alone. lbd started again
//! preempts under the election's rules, and the dead data plane's drops are in its
//! counters. ARP replies are counted on the wire, every one of them (a client's kernel
//! keeps the first and hides the second: TOOLCHAIN.md).

mod e2e;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::Director;
use lb_daemon::health::Health;
use lb_lab::{Lab, REALS, ROLE_CLIENT, ROLE_DIRECTOR, VIP};

fn config(socket: &Path, pin_root: &Path) -> String {
    let reals: String = REALS.iter().map(|r| format!("      - address: {r}\n")).collect();
    format!(
        "director:\n  interfaces: [eth0]\n  socket: {}\n  pin_root: {}\nha:\n  interface: eth0\n  \
         vrid: 51\n  priority: 200\n  advert_interval: 100ms\n  vips: [{VIP}/32]\nservices:\n  \
         - name: web\n    vip: {VIP}:80\n    protocol: tcp\n    check: {{ type: tcp, interval: 1s, timeout: 500ms }}\n    \
         reals:\n{reals}",
        socket.display(),
        pin_root.display()
    )
}

/// Sends ARP requests for the VIP from real 1's eth0 (a host with no copy of the VIP that
/// answers) and returns the MAC of every reply, collected for `window` after each of
/// `probes` requests.
fn arp_answerers(lab: &Lab, probes: usize, window: Duration) -> BTreeSet<[u8; 6]> {
    lab.in_ns(&lb_lab::real_role(0), move || {
        let link = lb_daemon::link::LinkInfo::read("eth0").unwrap();
        // SAFETY: a packet socket of our own, closed on return.
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (0x0806u16).to_be() as i32) };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (0x0806u16).to_be();
        addr.sll_ifindex = link.ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        let bound = unsafe { libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len) };
        assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
        let tvp = &tv as *const _ as *const libc::c_void;
        let tvl = std::mem::size_of::<libc::timeval>() as u32;
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, tvp, tvl) };
        let request = [
            &[0xff; 6][..],
            &link.mac,
            &[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1],
            &link.mac,
            &REALS[0].octets(),
            &[0; 6],
            &VIP.octets(),
        ]
        .concat();
        let mut answerers = BTreeSet::new();
        for _ in 0..probes {
            let sent = unsafe {
                libc::sendto(
                    fd,
                    request.as_ptr() as *const libc::c_void,
                    request.len(),
                    0,
                    &addr as *const _ as *const libc::sockaddr,
                    len,
                )
            };
            assert_eq!(sent, request.len() as isize, "{}", std::io::Error::last_os_error());
            let until = Instant::now() + window;
            while Instant::now() < until {
                let mut buf = [0u8; 128];
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, 128, 0) };
                // An ARP reply (op 2) from the VIP to us: its sender's MAC.
                if n >= 42 && buf[20..22] == [0, 2] && buf[28..32] == VIP.octets() {
                    answerers.insert(<[u8; 6]>::try_from(&buf[22..28]).unwrap());
                }
            }
        }
        unsafe { libc::close(fd) };
        answerers
    })
    .unwrap()
}

fn mac_of(lab: &Lab, role: &str) -> [u8; 6] {
    lab.in_ns(role, || lb_daemon::link::LinkInfo::read("eth0").unwrap().mac).unwrap()
}

fn wait_log(lab: &Lab, role: &str, name: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lab.log(role, name).contains(text) {
        assert!(Instant::now() < deadline, "{name} never said {text:?}:\n{}", lab.log(role, name));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_master_killed_with_9_fences_itself_and_only_the_new_master_answers_arp() {
    lb_lab::needs_root!();
    let mut lab = Lab::new("fen").expect("lab");
    lab.exec_ok(ROLE_DIRECTOR, &["ip", "addr", "del", &format!("{VIP}/32"), "dev", "lo"]).unwrap();
    let bpffs = lab.bpffs().unwrap();
    let pin_root = bpffs.join("lbd");
    for i in 0..REALS.len() {
        lab.start_nginx(i).unwrap();
    }
    let socket = lab.dir().join("lbd.sock");
    let path = lab.dir().join("lb.yaml");
    std::fs::write(&path, config(&socket, &pin_root)).unwrap();
    let lbd = env!("CARGO_BIN_EXE_lbd");
    let args = [lbd, "--config", path.to_str().unwrap()];
    lab.spawn_net(ROLE_DIRECTOR, "lbd", &args).unwrap();
    let mut d = Director { lab, socket };
    d.wait_until("lbd master, its reals up", Duration::from_secs(20), |s| {
        s.director.ha_state == "MASTER" && s.reals.iter().all(|r| r.health == Health::Up)
    });
    d.lab.start_keepalived(ROLE_CLIENT, "keepalived", 100, VIP.into()).unwrap();
    wait_log(&d.lab, ROLE_CLIENT, "keepalived", "Entering BACKUP STATE");
    let (director, other) = (mac_of(&d.lab, ROLE_DIRECTOR), mac_of(&d.lab, ROLE_CLIENT));
    let window = Duration::from_millis(300);
    assert_eq!(arp_answerers(&d.lab, 3, window), BTreeSet::from([director]), "lbd master");

    // kill -9: the VIP stays on the dead director's eth0, its data plane runs on.
    let out = Command::new("ip").args(["netns", "pids", &d.lab.ns(ROLE_DIRECTOR)]).output();
    let pids = String::from_utf8(out.unwrap().stdout).unwrap();
    for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "lbd") {
            // SAFETY: kill(2) of the lbd this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    d.lab.stop(ROLE_DIRECTOR, "lbd").unwrap();
    wait_log(&d.lab, ROLE_CLIENT, "keepalived", "Entering MASTER STATE");
    let shown = d.lab.exec_ok(ROLE_DIRECTOR, &["ip", "-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(shown.contains(&format!("inet {VIP}/32")), "the dead master keeps its VIP: {shown}");
    assert!(d.lab.exec_ok(ROLE_DIRECTOR, &["ip", "link", "show", "eth0"]).unwrap().contains("xdp"));
    // Every request, many times over: the new master alone answers.
    assert_eq!(arp_answerers(&d.lab, 10, window), BTreeSet::from([other]), "split brain");

    // lbd again, on its pinned data plane: backup first, then it preempts (priority 200
    // over 100) and answers alone again; the dead data plane's drops were counted.
    d.lab.spawn_net(ROLE_DIRECTOR, "lbd-again", &args).unwrap();
    d.wait_until("lbd master again", Duration::from_secs(20), |s| s.director.ha_state == "MASTER");
    wait_log(&d.lab, ROLE_CLIENT, "keepalived", "Entering BACKUP STATE");
    let status = d.lbadm(&["status"]);
    assert!(status.contains("drop_fenced_neighbour"), "{status}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let heard = arp_answerers(&d.lab, 3, window);
        if heard == BTreeSet::from([director]) {
            break;
        }
        // keepalived gives the VIP up when it hears the higher priority, within an advert.
        assert!(Instant::now() < deadline, "after lbd came back: {heard:?}");
    }
}
